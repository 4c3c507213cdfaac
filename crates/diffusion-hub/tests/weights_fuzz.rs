//! Property tests of the safetensors header and shard-index parsers: no input
//! panics, every truncation of a valid file is an error naming the file, and
//! whatever is accepted is in bounds. Inputs that ever fail here belong in the
//! explicit corpus of tests/weights.rs.

use std::path::Path;

use diffusion_hub::weights::{Header, ShardIndex};
use proptest::prelude::*;
use safetensors::tensor::TensorView;

const NAME: &str = "fuzz.safetensors";

/// Tensors for a valid file: (name, dtype, shape).
fn tensors() -> impl Strategy<Value = Vec<(String, safetensors::Dtype, Vec<usize>)>> {
    let dtype = prop_oneof![
        Just(safetensors::Dtype::F32),
        Just(safetensors::Dtype::F16),
        Just(safetensors::Dtype::BF16),
        Just(safetensors::Dtype::I64),
        Just(safetensors::Dtype::U8),
    ];
    prop::collection::btree_map(
        "[a-z._0-9]{1,12}",
        (dtype, prop::collection::vec(0usize..5, 0..4)),
        0..6,
    )
    .prop_map(|m| m.into_iter().map(|(n, (d, s))| (n, d, s)).collect())
}

fn serialize(tensors: &[(String, safetensors::Dtype, Vec<usize>)]) -> Vec<u8> {
    let buffers: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, (_, d, s))| {
            let n = s.iter().product::<usize>() * d.bitsize() / 8;
            (0..n).map(|j| (i * 31 + j) as u8).collect()
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .zip(&buffers)
        .map(|((n, d, s), b)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// If the header was accepted, every tensor must lie inside the data section.
fn check_accepted(bytes: &[u8], header: &Header) {
    let data_len = bytes.len() - 8 - header.header_len;
    for info in header.tensors.values() {
        let (b, e) = info.data_offsets;
        assert!(b <= e && e <= data_len);
        if let Some(size) = info.dtype.size() {
            assert_eq!(info.shape.iter().product::<usize>() * size, e - b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(h) = Header::parse(&bytes, Path::new(NAME)) {
            check_accepted(&bytes, &h);
        }
    }

    #[test]
    fn random_header_text_never_panics(len_delta in -4i64..4, text in "\\PC{0,80}", data in prop::collection::vec(any::<u8>(), 0..32)) {
        let mut bytes = ((text.len() as i64 + len_delta).max(0) as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(&data);
        if let Ok(h) = Header::parse(&bytes, Path::new(NAME)) {
            check_accepted(&bytes, &h);
        }
    }

    #[test]
    fn json_shaped_headers_never_panic(
        dtype in prop_oneof![Just("F32".to_string()), Just("F16".to_string()), Just("BF16".to_string()), "[A-Z0-9_]{0,6}"],
        shape in prop::collection::vec(prop_oneof![any::<u64>().prop_map(|v| v.to_string()), (0u64..8).prop_map(|v| v.to_string()), Just("-1".to_string()), Just("1.5".to_string()), Just("null".to_string())], 0..4),
        begin in prop_oneof![0u64..64, any::<u64>()],
        end in prop_oneof![0u64..64, any::<u64>()],
        data_len in 0usize..64,
    ) {
        let header = format!(
            r#"{{"t":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{begin},{end}]}}}}"#,
            shape.join(",")
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data_len));
        if let Ok(h) = Header::parse(&bytes, Path::new(NAME)) {
            check_accepted(&bytes, &h);
        }
    }

    #[test]
    fn valid_files_parse_and_every_truncation_is_an_error(ts in tensors(), cut in any::<prop::sample::Index>()) {
        let bytes = serialize(&ts);
        let h = Header::parse(&bytes, Path::new(NAME)).unwrap();
        prop_assert_eq!(h.tensors.len(), ts.len());
        for (name, _, shape) in &ts {
            prop_assert_eq!(&h.tensors[name].shape, shape);
        }
        check_accepted(&bytes, &h);
        let cut = cut.index(bytes.len());
        let truncated = &bytes[..cut];
        // Any proper prefix is broken: either the header length points past the
        // end, or the last tensor's data does.
        let err = Header::parse(truncated, Path::new(NAME)).expect_err("truncated");
        prop_assert!(err.to_string().contains(NAME));
    }

    #[test]
    fn mutated_valid_files_never_panic(ts in tensors(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = serialize(&ts);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(h) = Header::parse(&bytes, Path::new(NAME)) {
            check_accepted(&bytes, &h);
        }
    }

    #[test]
    fn index_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = ShardIndex::parse(&bytes, Path::new("fuzz.index.json"));
    }

    #[test]
    fn index_json_shaped_never_panics(
        keys in prop::collection::vec("\\PC{0,6}", 0..4),
        shards in prop::collection::vec(prop_oneof!["\\PC{0,12}", Just("..".to_string()), Just("a/b".to_string())], 0..4),
        wrap in 0u8..3,
    ) {
        let wm: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .zip(shards.iter().cycle())
            .map(|(k, s)| (k.clone(), serde_json::json!(s)))
            .collect();
        let value = match wrap {
            0 => serde_json::json!({"weight_map": wm}),
            1 => serde_json::json!({"weight_map": [wm]}),
            _ => serde_json::json!(wm),
        };
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(index) = ShardIndex::parse(&bytes, Path::new("fuzz.index.json")) {
            for shard in index.shards() {
                prop_assert!(!shard.contains('/') && shard != ".." && !shard.is_empty());
            }
        }
    }
}
