//! Weight reading: PyTorch pickles through the same API, and safetensors:
//! valid single and sharded files (written by the
//! `safetensors` crate, the reference writer), and a regression corpus of
//! broken files, each of which must give a typed error naming the file.

use std::path::{Path, PathBuf};

use diffusion_hub::torch_pickle::TorchFile;
use diffusion_hub::weights::{
    Dtype, Header, SafetensorsFile, ShardIndex, WeightFile, Weights, WeightsError, f16_to_f32,
};
use safetensors::tensor::TensorView;

/// Serializes tensors with the reference writer.
fn st(tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A raw file: 8-byte header length, header text, data.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn single_file_dtypes_shapes_and_values() {
    let tmp = tempfile::tempdir().unwrap();
    let half: Vec<u8> = [0x3c00u16, 0xc000, 0x3555, 0x0001]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [0x3f80u16, 0xc040]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let bytes = st(&[
        (
            "w",
            safetensors::Dtype::F32,
            vec![2, 3],
            f32_bytes(&[1., 2., 3., 4., 5., 6.]),
        ),
        ("h", safetensors::Dtype::F16, vec![4], half),
        ("b", safetensors::Dtype::BF16, vec![1, 2], bf16),
        ("ids", safetensors::Dtype::I64, vec![3], vec![0u8; 24]),
        ("scalar", safetensors::Dtype::F32, vec![], f32_bytes(&[7.5])),
        ("empty", safetensors::Dtype::F32, vec![0, 4], vec![]),
    ]);
    let path = write(tmp.path(), "model.safetensors", &bytes);
    let w = Weights::open(&path).unwrap();
    assert_eq!(w.len(), 6);
    let listed: Vec<(&str, String, Vec<usize>)> = w
        .tensors()
        .map(|(n, i)| (n, i.dtype.to_string(), i.shape.clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("b", "BF16".into(), vec![1, 2]),
            ("empty", "F32".into(), vec![0, 4]),
            ("h", "F16".into(), vec![4]),
            ("ids", "I64".into(), vec![3]),
            ("scalar", "F32".into(), vec![]),
            ("w", "F32".into(), vec![2, 3]),
        ]
    );
    assert_eq!(w.non_float_tensors(), vec![("ids", &Dtype::I64)]);
    let t = w.tensor("w").unwrap();
    assert_eq!(t.shape, &[2, 3]);
    assert_eq!(t.data.len(), 24);
    assert_eq!(t.to_f32_vec().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
    assert_eq!(
        w.tensor("h").unwrap().to_f32_vec().unwrap(),
        vec![1.0, -2.0, 0.333_251_95, 5.960_464_5e-8]
    );
    assert_eq!(
        w.tensor("b").unwrap().to_f32_vec().unwrap(),
        vec![1.0, -3.0]
    );
    assert_eq!(w.tensor("scalar").unwrap().to_f32_vec().unwrap(), vec![7.5]);
    assert!(w.tensor("empty").unwrap().is_empty());
    let err = w.tensor("ids").unwrap().to_f32_vec().unwrap_err();
    assert!(
        matches!(err, WeightsError::UnsupportedDtype { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors") && err.to_string().contains("ids"));
    let err = w.tensor("nope").unwrap_err();
    assert!(matches!(err, WeightsError::TensorNotFound { .. }));
    assert!(err.to_string().contains("nope") && err.to_string().contains("model.safetensors"));
}

#[test]
fn metadata_and_unknown_dtypes() {
    let bytes = raw(
        r#"{"__metadata__":{"format":"pt"},"q":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}"#,
        &[0, 0],
    );
    let h = Header::parse(&bytes, Path::new("x.safetensors")).unwrap();
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(h.tensors["q"].dtype, Dtype::Other("F4".into()));
}

#[test]
fn f16_conversion_is_exact_for_every_bit_pattern() {
    for h in 0..=u16::MAX {
        let got = f16_to_f32(h);
        let sign = if h & 0x8000 != 0 { -1.0f64 } else { 1.0 };
        let exp = i32::from((h >> 10) & 0x1f);
        let mant = f64::from(h & 0x3ff);
        let want = match exp {
            0 => sign * mant * 2f64.powi(-24),
            31 if mant == 0.0 => sign * f64::INFINITY,
            31 => f64::NAN,
            _ => sign * (1.0 + mant / 1024.0) * 2f64.powi(exp - 15),
        };
        if want.is_nan() {
            assert!(got.is_nan(), "{h:#06x}");
        } else {
            assert_eq!(f64::from(got), want, "{h:#06x}");
            assert_eq!(got.is_sign_negative(), sign < 0.0, "{h:#06x}");
        }
    }
}

fn shard(name: &str, v: f32) -> Vec<u8> {
    st(&[(name, safetensors::Dtype::F32, vec![1], f32_bytes(&[v]))])
}

fn index(map: &[(&str, &str)]) -> Vec<u8> {
    let wm: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    serde_json::to_vec(&serde_json::json!({"metadata": {"total_size": 8}, "weight_map": wm}))
        .unwrap()
}

const S1: &str = "model-00001-of-00002.safetensors";
const S2: &str = "model-00002-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";

#[test]
fn sharded_ok() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), S1, &shard("a", 1.0));
    write(tmp.path(), S2, &shard("b", 2.0));
    let idx = write(tmp.path(), INDEX, &index(&[("b", S2), ("a", S1)]));
    let w = Weights::open(&idx).unwrap();
    assert_eq!(w.source(), idx);
    assert_eq!(
        w.files()
            .iter()
            .map(|f| f.path().file_name().unwrap().to_str().unwrap())
            .collect::<Vec<_>>(),
        vec![S1, S2]
    );
    assert_eq!(w.tensor("a").unwrap().to_f32_vec().unwrap(), vec![1.0]);
    assert_eq!(w.tensor("b").unwrap().to_f32_vec().unwrap(), vec![2.0]);
    let err = w.tensor("c").unwrap_err();
    assert!(err.to_string().contains(INDEX), "{err}");
    let parsed = ShardIndex::from_file(&idx).unwrap();
    assert_eq!(parsed.shards(), vec![S1, S2]);
    assert!(parsed.metadata.is_some());
}

#[test]
fn sharded_missing_shard_names_shard_and_index() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), S1, &shard("a", 1.0));
    let idx = write(tmp.path(), INDEX, &index(&[("a", S1), ("b", S2)]));
    let err = Weights::open(&idx).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::ShardMissing { .. }), "{msg}");
    assert!(
        msg.contains(S2) && msg.contains(INDEX) && msg.contains("`b`"),
        "{msg}"
    );
}

#[test]
fn sharded_key_in_wrong_shard() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), S1, &shard("a", 1.0));
    write(tmp.path(), S2, &shard("b", 2.0));
    let idx = write(tmp.path(), INDEX, &index(&[("a", S2), ("b", S2)]));
    let err = Weights::open(&idx).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::KeyNotInShard { .. }), "{msg}");
    assert!(
        msg.contains("`a`") && msg.contains(S2) && msg.contains(INDEX),
        "{msg}"
    );
}

#[test]
fn sharded_duplicate_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), S1, &shard("a", 1.0));
    write(
        tmp.path(),
        S2,
        &st(&[
            ("a", safetensors::Dtype::F32, vec![1], f32_bytes(&[3.0])),
            ("b", safetensors::Dtype::F32, vec![1], f32_bytes(&[2.0])),
        ]),
    );
    let idx = write(tmp.path(), INDEX, &index(&[("a", S1), ("b", S2)]));
    let err = Weights::open(&idx).unwrap_err();
    assert!(matches!(err, WeightsError::DuplicateTensor { .. }), "{err}");
    assert!(
        err.to_string().contains(S1) && err.to_string().contains(S2),
        "{err}"
    );
}

#[test]
fn sharded_corrupt_shard_names_that_shard() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), S1, &shard("a", 1.0));
    let mut bad = shard("b", 2.0);
    bad.truncate(bad.len() - 1);
    write(tmp.path(), S2, &bad);
    let idx = write(tmp.path(), INDEX, &index(&[("a", S1), ("b", S2)]));
    let err = Weights::open(&idx).unwrap_err();
    assert!(err.to_string().contains(S2), "{err}");
}

fn pickle_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/single_file")
        .join(name)
}

/// PyTorch pickles open through the same API as safetensors, under every
/// extension diffusers and model sites use, with the same tensors the pickle
/// reader sees.
#[test]
fn pickles_open_through_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = TorchFile::open(&pickle_fixture("misc.pt")).unwrap();
    for name in ["diffusion_pytorch_model.bin", "v1-5.ckpt", "m.PT", "m.pth"] {
        let p = tmp.path().join(name);
        std::fs::copy(pickle_fixture("misc.pt"), &p).unwrap();
        let w = Weights::open(&p).unwrap();
        assert_eq!(w.source(), p);
        assert!(matches!(w.files(), [WeightFile::Torch(_)]), "{name}");
        let names: Vec<_> = w.tensors().map(|(k, info)| (k, info.clone())).collect();
        let expected: Vec<_> = reference.tensors().map(|(k, i)| (k, i.clone())).collect();
        assert_eq!(names, expected, "{name}");
        for (key, _) in reference.tensors() {
            assert_eq!(
                w.tensor(key).unwrap().data,
                reference.tensor(key).unwrap().data
            );
        }
        let err = w.tensor("absent").unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
}

/// A broken pickle is a typed error naming the file; an unknown extension is
/// `Unsupported`, as is a JSON file that is not a shard index.
#[test]
fn broken_pickles_and_unknown_formats_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["diffusion_pytorch_model.bin", "v1-5.ckpt", "m.pt", "m.pth"] {
        let p = write(tmp.path(), name, b"PK\x03\x04");
        let err = Weights::open(&p).unwrap_err();
        // Read as a pickle (and found broken), not refused by extension.
        assert!(matches!(err, WeightsError::Pickle { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    let p = write(tmp.path(), "m.onnx", b"PK\x03\x04");
    let err = Weights::open(&p).unwrap_err();
    assert!(matches!(err, WeightsError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("m.onnx"), "{err}");
    let p = write(tmp.path(), "config.json", b"{}");
    assert!(matches!(
        Weights::open(&p),
        Err(WeightsError::Unsupported { .. })
    ));
}

/// A stride-0 view of a one-element storage shaped (2^20, 2^20) (4 TiB once
/// copied out; `scripts/hub/gen_hostile_pickle.py`) is refused by name, not
/// allocated.
#[test]
fn a_hostile_strided_view_is_refused_not_allocated() {
    let path = pickle_fixture("strided_huge.pt");
    let err = Weights::open(&path).unwrap_err();
    assert!(
        matches!(&err, WeightsError::TensorInvalid { tensor, .. } if tensor == "huge"),
        "{err}"
    );
    assert!(err.to_string().contains("strided view"), "{err}");
}

/// transformers' sharded pickles (`pytorch_model.bin.index.json`): the index
/// is checked against the shards as for safetensors, and shards of either
/// format can be mixed.
#[test]
fn sharded_pickles() {
    let tmp = tempfile::tempdir().unwrap();
    let a = "pytorch_model-00001-of-00002.bin";
    let b = "pytorch_model-00002-of-00002.bin";
    std::fs::copy(pickle_fixture("misc.pt"), tmp.path().join(a)).unwrap();
    std::fs::copy(pickle_fixture("sd2.ckpt"), tmp.path().join(b)).unwrap();
    let first = TorchFile::open(&tmp.path().join(a)).unwrap();
    let second = TorchFile::open(&tmp.path().join(b)).unwrap();
    let mut map: Vec<(&str, &str)> = first.tensors().map(|(k, _)| (k, a)).collect();
    map.extend(second.tensors().map(|(k, _)| (k, b)));
    let idx = write(tmp.path(), "pytorch_model.bin.index.json", &index(&map));
    let w = Weights::open(&idx).unwrap();
    assert_eq!(w.len(), first.len() + second.len());
    for (key, shard) in &map {
        let reference = if *shard == a { &first } else { &second };
        assert_eq!(
            w.tensor(key).unwrap().data,
            reference.tensor(key).unwrap().data
        );
    }
    // Mixed formats: one safetensors shard beside a pickle shard.
    write(tmp.path(), S1, &shard("extra", 3.0));
    let mut mixed = map.clone();
    mixed.push(("extra", S1));
    let idx = write(
        tmp.path(),
        "diffusion_pytorch_model.bin.index.json",
        &index(&mixed),
    );
    let w = Weights::open(&idx).unwrap();
    assert_eq!(w.tensor("extra").unwrap().to_f32_vec().unwrap(), vec![3.0]);
    // A key the index puts in the wrong pickle shard.
    let (key, _) = map[0];
    let mut wrong = map.clone();
    wrong[0] = (key, b);
    let idx = write(tmp.path(), "bad.bin.index.json", &index(&wrong));
    let err = Weights::open(&idx).unwrap_err();
    assert!(
        matches!(&err, WeightsError::KeyNotInShard { key: k, .. } if k == key),
        "{err}"
    );
}

#[test]
fn missing_file_is_io_error_naming_it() {
    let err = Weights::open(Path::new("/nonexistent/x.safetensors")).unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/x.safetensors"));
}

/// The regression corpus: each entry is a broken file, the error it must give,
/// and a phrase its message must hold. Found by hand and by the fuzzer
/// (tests/weights_fuzz.rs); add new findings here.
fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let t = |dtype: &str, shape: &str, offsets: &str| {
        format!(r#"{{"t":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}}}"#)
    };
    vec![
        ("empty file", vec![], "too short"),
        ("seven bytes", vec![1, 0, 0, 0, 0, 0, 0], "too short"),
        (
            "huge header length",
            u64::MAX.to_le_bytes().to_vec(),
            "100 MB",
        ),
        (
            "header length past the end",
            raw("{}", b"")[..9].to_vec(),
            "truncated",
        ),
        (
            "header length one over",
            {
                let mut b = raw("{}", b"");
                b[0] = 3;
                b
            },
            "truncated",
        ),
        (
            "zero header",
            0u64.to_le_bytes().to_vec(),
            "does not start with",
        ),
        (
            "header not utf-8",
            raw("{\u{1}}", b"")
                .into_iter()
                .map(|b| if b == 1 { 0xff } else { b })
                .collect(),
            "UTF-8",
        ),
        ("header is an array", raw("[]", b""), "does not start with"),
        ("header unterminated", raw("{\"t\":", b""), "not valid JSON"),
        (
            "header is a number after brace",
            raw("{1}", b""),
            "not valid JSON",
        ),
        (
            "entry not an object",
            raw(r#"{"t":5}"#, b""),
            "not an object",
        ),
        (
            "missing dtype",
            raw(r#"{"t":{"shape":[],"data_offsets":[0,0]}}"#, b""),
            "missing `dtype`",
        ),
        (
            "missing shape",
            raw(r#"{"t":{"dtype":"F32","data_offsets":[0,4]}}"#, &[0; 4]),
            "missing `shape`",
        ),
        (
            "missing offsets",
            raw(r#"{"t":{"dtype":"F32","shape":[1]}}"#, &[0; 4]),
            "missing `data_offsets`",
        ),
        (
            "dtype not a string",
            raw(&t("F32", "[1]", "[0,4]").replace("\"F32\"", "32"), &[0; 4]),
            "`dtype`",
        ),
        (
            "negative dim",
            raw(&t("F32", "[-1]", "[0,4]"), &[0; 4]),
            "non-negative",
        ),
        (
            "fractional dim",
            raw(&t("F32", "[1.5]", "[0,4]"), &[0; 4]),
            "non-negative",
        ),
        (
            "shape overflow",
            raw(
                &t("F32", "[4294967296,4294967296,4294967296]", "[0,4]"),
                &[0; 4],
            ),
            "overflows",
        ),
        (
            "bytes overflow",
            raw(&t("F64", "[4611686018427387904]", "[0,4]"), &[0; 4]),
            "overflows",
        ),
        (
            "offsets backwards",
            raw(&t("U8", "[0]", "[4,0]"), &[0; 4]),
            "backwards",
        ),
        (
            "offsets past data",
            raw(&t("F32", "[2]", "[0,8]"), &[0; 4]),
            "run past",
        ),
        (
            "offsets huge",
            raw(
                &t("F32", "[1]", "[18446744073709551611,18446744073709551615]"),
                &[0; 4],
            ),
            "run past",
        ),
        (
            "offsets not a pair",
            raw(&t("F32", "[1]", "[0]"), &[0; 4]),
            "pair",
        ),
        (
            "offsets not integers",
            raw(&t("F32", "[1]", "[0,\"4\"]"), &[0; 4]),
            "non-negative",
        ),
        (
            "size mismatch",
            raw(&t("F32", "[2]", "[0,4]"), &[0; 4]),
            "needs 8 bytes",
        ),
        (
            "f16 size mismatch",
            raw(&t("F16", "[3]", "[0,4]"), &[0; 4]),
            "needs 6 bytes",
        ),
        (
            "trailing bytes",
            raw(&t("F32", "[1]", "[0,4]"), &[0; 5]),
            "data section has 5",
        ),
        (
            "gap at start",
            raw(&t("F32", "[1]", "[1,5]"), &[0; 5]),
            "gap",
        ),
        (
            "overlap",
            raw(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
                &[0; 6],
            ),
            "overlaps",
        ),
        (
            "metadata not an object",
            raw(r#"{"__metadata__":[1]}"#, b""),
            "`__metadata__` is not an object",
        ),
        (
            "metadata value not a string",
            raw(r#"{"__metadata__":{"k":1}}"#, b""),
            "`__metadata__.k`",
        ),
        (
            "truncated valid file",
            {
                let mut b = st(&[("w", safetensors::Dtype::F32, vec![4], vec![0; 16])]);
                b.truncate(b.len() - 3);
                b
            },
            "run past",
        ),
    ]
}

#[test]
fn corpus_gives_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (what, bytes, phrase)) in corpus().into_iter().enumerate() {
        let path = write(tmp.path(), &format!("corpus-{i}.safetensors"), &bytes);
        // In memory and from disk (mmap), the same error.
        let mem = Header::parse(&bytes, &path).expect_err(what).to_string();
        let disk = SafetensorsFile::open(&path).expect_err(what).to_string();
        assert_eq!(mem, disk, "{what}");
        assert!(
            mem.contains(&format!("corpus-{i}.safetensors")),
            "{what}: {mem}"
        );
        assert!(mem.contains(phrase), "{what}: expected {phrase:?} in {mem}");
    }
}

#[test]
fn index_corpus() {
    let cases: &[(&str, &str)] = &[
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[]", "top level is not an object"),
        ("{}", "missing `weight_map`"),
        (r#"{"weight_map": []}"#, "missing `weight_map`"),
        (r#"{"weight_map": {}}"#, "empty"),
        (
            r#"{"weight_map": {"a": 1}}"#,
            "`weight_map.a` is not a string",
        ),
        (
            r#"{"weight_map": {"a": "../x.safetensors"}}"#,
            "not a plain file name",
        ),
        (
            r#"{"weight_map": {"a": "/etc/passwd"}}"#,
            "not a plain file name",
        ),
        (
            r#"{"weight_map": {"a": "sub\\x.safetensors"}}"#,
            "not a plain file name",
        ),
        (r#"{"weight_map": {"a": ""}}"#, "not a plain file name"),
        (r#"{"weight_map": {"a": ".."}}"#, "not a plain file name"),
    ];
    for (text, phrase) in cases {
        let err = ShardIndex::parse(text.as_bytes(), Path::new("dir/m.safetensors.index.json"))
            .expect_err(text)
            .to_string();
        assert!(
            err.contains("dir/m.safetensors.index.json"),
            "{text}: {err}"
        );
        assert!(err.contains(phrase), "{text}: expected {phrase:?} in {err}");
    }
    let err = ShardIndex::parse(&[0xff, 0xfe], Path::new("i.json")).unwrap_err();
    assert!(matches!(err, WeightsError::IndexJson { .. }));
}

#[test]
fn reference_writer_files_round_trip() {
    // Whatever the reference writer produces, the reader accepts with the same tensors.
    let bytes = st(&[
        ("z", safetensors::Dtype::U8, vec![3], vec![1, 2, 3]),
        ("a", safetensors::Dtype::BF16, vec![2, 1], vec![0, 0, 0, 0]),
        ("m", safetensors::Dtype::F64, vec![1], vec![0; 8]),
    ]);
    let h = Header::parse(&bytes, Path::new("r.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(h.tensors.len(), reference.len());
    for (name, view) in reference.tensors() {
        let info = &h.tensors[&name];
        assert_eq!(info.shape, view.shape());
        assert_eq!(info.dtype.to_string(), format!("{:?}", view.dtype()));
    }
}
