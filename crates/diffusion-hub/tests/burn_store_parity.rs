//! The crate's own `torch.save` reader (`TorchFile`, used so that
//! diffusion-hub does not depend on Burn) against burn-store's `PytorchReader`,
//! the reader the project's dependency list names: on every pickle fixture
//! (LDM checkpoints of SD1/SD2/SDXL in f32/f16/bf16), both give the same
//! keys, dtypes, shapes and bytes.
//!
//! burn-store 0.21 cannot parse pickle protocol 4 (`torch.save(...,
//! pickle_protocol=4)`: opcode 0x95, FRAME), which `misc.pt` uses: for that
//! file the test checks that this is the reason (and compares it if a later
//! burn-store reads it). So the corner cases of `misc.pt` are checked against
//! the tensors torch wrote (tests/single_file.rs), not against burn-store; the
//! LDM checkpoints (protocol 2, torch's default) must agree with burn-store.

use std::path::{Path, PathBuf};

use burn_store::pytorch::PytorchReader;
use diffusion_hub::torch_pickle::TorchFile;
use diffusion_hub::weights::Weights;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/single_file")
        .join(name)
}

fn dtype_name(d: burn_tensor::DType) -> &'static str {
    use burn_tensor::DType;
    match d {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U8 => "U8",
        DType::Bool(_) => "BOOL",
        _ => "other",
    }
}

#[test]
fn torch_file_reads_what_burn_store_reads() {
    for name in ["misc.pt", "sd1.ckpt", "sd2.ckpt", "sdxl.ckpt"] {
        let path = fixture(name);
        let ours = TorchFile::open(&path).unwrap();
        // LDM checkpoints keep their weights under `state_dict`, which
        // TorchFile flattens; burn-store is told the key.
        let burn = if name.ends_with(".ckpt") {
            PytorchReader::with_top_level_key(&path, "state_dict")
        } else {
            PytorchReader::new(&path)
        };
        let burn = match burn {
            Ok(b) => b,
            Err(e) if name == "misc.pt" => {
                let why = format!("{e:?}");
                assert!(why.contains("InvalidOpCode(149)"), "{name}: {why}");
                println!("{name}: burn-store cannot read it: {why}");
                continue;
            }
            Err(e) => panic!("{name}: burn-store: {e:?}"),
        };
        let mut burn_keys = burn.keys();
        burn_keys.sort();
        let our_keys: Vec<String> = ours.tensors().map(|(k, _)| k.to_string()).collect();
        assert_eq!(our_keys, burn_keys, "{name}: keys");
        // Through the format-independent reader too.
        let weights = Weights::open(&path).unwrap();
        for key in &our_keys {
            let snapshot = burn.get(key).unwrap();
            let view = weights.tensor(key).unwrap();
            assert_eq!(
                view.dtype.as_str(),
                dtype_name(snapshot.dtype),
                "{name}: {key}"
            );
            assert_eq!(view.shape, &snapshot.shape.to_vec()[..], "{name}: {key}");
            let data = snapshot.to_data().unwrap();
            assert_eq!(view.data, data.as_bytes(), "{name}: {key}");
        }
        println!("{name}: {} tensors equal", our_keys.len());
    }
}
