//! Single-file conversion round trips on the tiny checkpoints written by
//! `scripts/hub/gen_single_file_fixtures.py` from random diffusers models.
//!
//! Each converted folder must reproduce every original diffusers tensor exactly
//! (names, dtypes, shapes, bytes: sha256 prefixes recorded by the generator), match
//! the per-component digests of diffusers' own conversion of the same file
//! (`single_file_utils` converters and `from_single_file`), and carry configs equal
//! to the originals' on every recorded field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use diffusion_hub::save::{OwnedTensor, save_safetensors};
use diffusion_hub::single_file::{
    Checkpoint, ConvertOptions, ConvertReport, ModelType, SingleFileError, convert, convert_file,
    convert_file_with,
};
use diffusion_hub::torch_pickle::{PickleOptions, TorchFile};
use diffusion_hub::weights::{Weights, WeightsError};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/single_file")
}

fn sha16(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn digest(hashes: &BTreeMap<String, String>) -> String {
    let text: String = hashes.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    sha16(text.as_bytes())
}

fn expected(kind: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{kind}.expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn options(exp: &Value) -> ConvertOptions {
    let mut opts = ConvertOptions::default();
    for (comp, o) in exp["overrides"].as_object().unwrap() {
        opts.overrides
            .insert(comp.clone(), o.as_object().unwrap().clone());
    }
    opts
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn round_trip(kind: &str, ext: &str, model_type: ModelType) {
    round_trip_file(
        kind,
        &fixtures().join(format!("{kind}.{ext}")),
        ext,
        model_type,
        &PickleOptions::default(),
    );
}

fn round_trip_file(
    kind: &str,
    ckpt: &Path,
    ext: &str,
    model_type: ModelType,
    pickle: &PickleOptions,
) -> ConvertReport {
    let exp = expected(kind);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    let report = convert_file_with(ckpt, &out, &options(&exp), pickle).unwrap();
    assert_eq!(report.model_type, model_type);

    let index = read_json(&out.join("model_index.json"));
    assert_eq!(index["_class_name"], model_type.pipeline_class(false));
    let sched = read_json(&out.join("scheduler/scheduler_config.json"));
    assert_eq!(sched["prediction_type"], "epsilon");

    let tensors = exp["tensors"].as_object().unwrap();
    assert_eq!(
        report.tensors.len(),
        tensors.len(),
        "{kind}.{ext}: components"
    );
    for (comp, want) in tensors {
        let want = want.as_object().unwrap();
        assert!(
            index[comp].is_array(),
            "{comp} missing from model_index.json"
        );
        let file = if comp.starts_with("text_encoder") {
            "model.safetensors"
        } else {
            "diffusion_pytorch_model.safetensors"
        };
        let w = Weights::open(&out.join(comp).join(file)).unwrap();
        let got_names: Vec<&str> = w.tensors().map(|(k, _)| k).collect();
        let want_names: Vec<&str> = want.keys().map(String::as_str).collect();
        let missing: Vec<_> = want_names
            .iter()
            .filter(|n| !w.contains(n))
            .take(5)
            .collect();
        let extra: Vec<_> = got_names
            .iter()
            .filter(|n| !want.contains_key(**n))
            .take(5)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{kind}.{ext}/{comp}: missing {missing:?}, extra {extra:?}"
        );
        let mut hashes = BTreeMap::new();
        for (name, e) in want {
            let t = w.tensor(name).unwrap();
            let e = e.as_array().unwrap();
            assert_eq!(t.dtype.as_str(), e[0], "{kind}.{ext}/{comp}/{name}: dtype");
            let shape: Vec<usize> = e[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape, &shape[..], "{kind}.{ext}/{comp}/{name}: shape");
            let h = sha16(t.data);
            assert_eq!(h, e[2], "{kind}.{ext}/{comp}/{name}: bytes differ");
            hashes.insert(name.clone(), h);
        }
        // diffusers' own conversion of the same file gave the same tensors.
        let d = digest(&hashes);
        assert_eq!(
            d, exp["diffusers_converter"][comp],
            "{comp}: vs diffusers' converter"
        );
        if !exp["from_single_file"].is_null() {
            assert_eq!(
                d, exp["from_single_file"][comp],
                "{comp}: vs from_single_file"
            );
        }

        let config = read_json(&out.join(comp).join("config.json"));
        for (key, value) in exp["configs"][comp].as_object().unwrap() {
            assert_eq!(
                &config[key], value,
                "{kind}.{ext}/{comp}: config field `{key}`"
            );
        }
    }
    // No temporary folder is left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("converted")]);
    report
}

#[test]
fn sd1_safetensors_round_trip() {
    round_trip("sd1", "safetensors", ModelType::Sd1);
}

#[test]
fn sd1_ckpt_round_trip() {
    round_trip("sd1", "ckpt", ModelType::Sd1);
}

const MODEL_CHECKPOINT: &str = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint";

/// `sd1.ckpt` as PyTorch Lightning saves a training checkpoint: a top-level
/// `callbacks` dict keyed by the `ModelCheckpoint` class, so its pickle names
/// that class (GLOBAL). Written to `path`, the archive otherwise unchanged.
fn lightning_sd1(path: &Path) {
    use std::io::{Read, Write};
    let bytes = std::fs::read(fixtures().join("sd1.ckpt")).unwrap();
    let mut src = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut dst = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..src.len() {
        let mut entry = src.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if name.ends_with("/data.pkl") {
            // The top-level dict's items end with SETITEMS, STOP: add
            // `"callbacks": {ModelCheckpoint: {}}` as its last item.
            assert!(data.ends_with(b"u."));
            let (module, class) = MODEL_CHECKPOINT.rsplit_once('.').unwrap();
            let mut item = b"X".to_vec();
            item.extend_from_slice(&9u32.to_le_bytes());
            item.extend_from_slice(b"callbacks}");
            item.extend_from_slice(format!("c{module}\n{class}\n}}s").as_bytes());
            data.splice(data.len() - 2..data.len() - 2, item);
        }
        dst.start_file(name, stored).unwrap();
        dst.write_all(&data).unwrap();
    }
    dst.finish().unwrap();
}

/// A Lightning training checkpoint is refused by default, as torch 2.6+
/// refuses it with `weights_only=True`, and converts with the opt-in to the
/// same folder as the checkpoint without its training state.
#[test]
fn lightning_checkpoint_needs_the_opt_in() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("lightning.ckpt");
    lightning_sd1(&ckpt);

    let out = tmp.path().join("strict");
    let err = convert_file(&ckpt, &out, &ConvertOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            SingleFileError::Weights(WeightsError::UnsafeGlobal { global, .. })
                if global == MODEL_CHECKPOINT
        ),
        "{err}"
    );
    assert!(err.to_string().contains("lightning.ckpt"), "{err}");
    assert!(!out.exists());
    assert!(Checkpoint::open(&ckpt).is_err());

    let skip = PickleOptions::default().skip_unsafe_globals(true);
    let ckpt_opened = Checkpoint::open_with(&ckpt, &skip).unwrap();
    assert_eq!(ckpt_opened.weights().skipped_globals(), [MODEL_CHECKPOINT]);
    let report = round_trip_file("sd1", &ckpt, "ckpt", ModelType::Sd1, &skip);
    assert_eq!(report.skipped_globals, [MODEL_CHECKPOINT]);
}

#[test]
fn sd2_ckpt_round_trip() {
    round_trip("sd2", "ckpt", ModelType::Sd2);
}

/// SD2 as `.safetensors` (the generator writes SD2 as `.ckpt` only, to keep
/// the fixtures small): the same tensors re-encoded by this crate's writer
/// convert to the same folder.
#[test]
fn sd2_safetensors_round_trip() {
    let ckpt = Checkpoint::open(&fixtures().join("sd2.ckpt")).unwrap();
    let tensors: BTreeMap<String, OwnedTensor> = ckpt
        .keys()
        .into_iter()
        .map(|k| {
            let t = ckpt.tensor(k).unwrap();
            let owned = OwnedTensor {
                dtype: t.dtype.clone(),
                shape: t.shape.to_vec(),
                data: t.data.to_vec(),
            };
            (k.to_string(), owned)
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sd2.safetensors");
    save_safetensors(&path, &tensors, None).unwrap();
    round_trip_file(
        "sd2",
        &path,
        "safetensors",
        ModelType::Sd2,
        &PickleOptions::default(),
    );
}

#[test]
fn sdxl_safetensors_round_trip() {
    round_trip("sdxl", "safetensors", ModelType::Sdxl);
}

#[test]
fn sdxl_ckpt_round_trip() {
    round_trip("sdxl", "ckpt", ModelType::Sdxl);
}

#[test]
fn sdxl_refiner_safetensors_round_trip() {
    round_trip("sdxl_refiner", "safetensors", ModelType::SdxlRefiner);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("refiner");
    let ckpt = fixtures().join("sdxl_refiner.safetensors");
    convert_file(&ckpt, &out, &options(&expected("sdxl_refiner"))).unwrap();
    let index = read_json(&out.join("model_index.json"));
    assert_eq!(index["_class_name"], "StableDiffusionXLImg2ImgPipeline");
    assert_eq!(index["text_encoder"], serde_json::json!([null, null]));
    assert_eq!(index["requires_aesthetics_score"], true);
    assert!(!out.join("text_encoder").exists());
}

#[test]
fn generator_confirmed_diffusers_from_single_file() {
    // The generator ran diffusers' from_single_file offline (config= the tiny
    // diffusers folder); if that ever stops working the fixtures say why.
    for kind in ["sd1", "sd2", "sdxl", "sdxl_refiner"] {
        let exp = expected(kind);
        assert!(
            exp["from_single_file"].is_object(),
            "{kind}: {}",
            exp["from_single_file_error"]
        );
    }
}

#[test]
fn skipped_keys_are_reported() {
    let ckpt = Checkpoint::open(&fixtures().join("sd2.ckpt")).unwrap();
    let conv = convert(&ckpt, &ConvertOptions::default()).unwrap();
    // SD2: OpenCLIP-H's last resblock and text_projection are not used by diffusers.
    assert!(
        conv.skipped
            .iter()
            .any(|k| k == "cond_stage_model.model.text_projection")
    );
    assert!(
        conv.skipped
            .iter()
            .any(|k| k.starts_with("cond_stage_model.model.transformer.resblocks.23."))
    );
    let ckpt = Checkpoint::open(&fixtures().join("sd1.safetensors")).unwrap();
    let conv = convert(&ckpt, &ConvertOptions::default()).unwrap();
    assert_eq!(
        conv.skipped,
        vec!["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    );
}

#[test]
fn defaults_without_overrides_and_prediction_type() {
    let ckpt = Checkpoint::open(&fixtures().join("sd2.ckpt")).unwrap();
    let opts = ConvertOptions {
        prediction_type: Some("v_prediction".into()),
        ..Default::default()
    };
    let conv = convert(&ckpt, &opts).unwrap();
    assert_eq!(conv.scheduler["prediction_type"], "v_prediction");
    let te = &conv
        .components
        .iter()
        .find(|c| c.name == "text_encoder")
        .unwrap();
    assert_eq!(te.config["num_hidden_layers"], 23);
    assert_eq!(te.config["hidden_act"], "gelu");
    assert_eq!(te.config["torch_dtype"], "float16");
    let unet = &conv.components.iter().find(|c| c.name == "unet").unwrap();
    assert_eq!(unet.config["norm_num_groups"], 32);
    assert_eq!(unet.config["use_linear_projection"], true);
}

#[test]
fn bad_override_component() {
    let ckpt = Checkpoint::open(&fixtures().join("sd1.safetensors")).unwrap();
    let mut opts = ConvertOptions::default();
    opts.overrides
        .insert("text_encoder_2".into(), serde_json::Map::new());
    let err = convert(&ckpt, &opts).unwrap_err();
    assert!(matches!(err, SingleFileError::BadOverride { .. }), "{err}");
}

// ---------------------------------------------------------------- errors

fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn unknown_layout_lists_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("other.safetensors");
    write_safetensors(
        &path,
        &[
            ("transformer.blocks.0.weight", vec![2], vec![0; 8]),
            ("transformer.blocks.1.weight", vec![2], vec![0; 8]),
        ],
    );
    let out = tmp.path().join("out");
    let err = convert_file(&path, &out, &ConvertOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, SingleFileError::UnknownLayout { n_keys: 2, .. }),
        "{msg}"
    );
    assert!(msg.contains("transformer.blocks.0.weight"), "{msg}");
    assert!(msg.contains("other.safetensors"), "{msg}");
    assert!(!out.exists());
}

#[test]
fn truncated_files_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["sd1.ckpt", "sd1.safetensors"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            let path = tmp.path().join(format!("cut{cut}-{name}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let out = tmp.path().join(format!("out-{cut}"));
            let err = convert_file(&path, &out, &ConvertOptions::default()).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("cut{cut}-{name}")),
                "{name} cut at {cut}: {msg}"
            );
            assert!(!out.exists());
        }
    }
}

#[test]
fn corrupt_pickle_is_an_error() {
    // Flip bytes inside data.pkl: never a panic, an error naming the file (or a
    // successful read, when the flip lands in a string).
    let bytes = std::fs::read(fixtures().join("sd1.ckpt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("flipped.ckpt");
    for pos in (100..4000).step_by(37) {
        let mut b = bytes.clone();
        b[pos] ^= 0x5a;
        std::fs::write(&path, &b).unwrap();
        if let Err(e) = TorchFile::open(&path) {
            assert!(e.to_string().contains("flipped.ckpt"), "{e}");
        }
    }
}

#[test]
fn existing_output_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = convert_file(
        &fixtures().join("sd1.safetensors"),
        &out,
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, SingleFileError::OutputExists { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // An existing empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    convert_file(
        &fixtures().join("sd1.safetensors"),
        &empty,
        &ConvertOptions::default(),
    )
    .unwrap();
    assert!(empty.join("unet/config.json").exists());
}

/// Rewrites sd1.safetensors without `drop`.
fn sd1_without(dir: &Path, drop: &str) -> PathBuf {
    let src = Weights::open(&fixtures().join("sd1.safetensors")).unwrap();
    let mut tensors = Vec::new();
    for (name, _) in src.tensors() {
        if name == drop {
            continue;
        }
        let t = src.tensor(name).unwrap();
        tensors.push((
            name.to_string(),
            t.dtype.clone(),
            t.shape.to_vec(),
            t.data.to_vec(),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let dt = match d.as_str() {
                "F32" => safetensors::Dtype::F32,
                "I64" => safetensors::Dtype::I64,
                other => panic!("{other}"),
            };
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let path = dir.join("partial.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
    path
}

#[test]
fn missing_key_is_named_and_leaves_no_folder() {
    let tmp = tempfile::tempdir().unwrap();
    for drop in [
        "model.diffusion_model.input_blocks.0.0.weight",
        "first_stage_model.decoder.conv_in.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    ] {
        let path = sd1_without(tmp.path(), drop);
        let out = tmp.path().join("out");
        let err = convert_file(&path, &out, &ConvertOptions::default()).unwrap_err();
        match &err {
            SingleFileError::MissingKey { key, .. } => assert_eq!(key, drop),
            other => panic!("{drop}: {other}"),
        }
        assert!(err.to_string().contains("partial.safetensors"));
        assert!(!out.exists());
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["partial.safetensors"], "leftovers");
    }
}

#[test]
fn unmapped_key_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("sd1.safetensors");
    let w = Weights::open(&src).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, _) in w.tensors() {
        let t = w.tensor(name).unwrap();
        if t.dtype.as_str() != "F32" {
            continue;
        }
        tensors.push((name.to_string(), t.shape.to_vec(), t.data.to_vec()));
    }
    tensors.push((
        "model.diffusion_model.input_blocks.1.0.mystery.weight".into(),
        vec![2],
        vec![0; 8],
    ));
    let refs: Vec<(&str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), d.clone()))
        .collect();
    let path = tmp.path().join("odd.safetensors");
    write_safetensors(&path, &refs);
    let ckpt = Checkpoint::open(&path).unwrap();
    let err = convert(&ckpt, &ConvertOptions::default()).unwrap_err();
    assert!(
        matches!(&err, SingleFileError::UnmappedKey { key, .. } if key.ends_with("mystery.weight")),
        "{err}"
    );
}

// ------------------------------------------------------------ pickle reader

#[test]
fn pickle_reader_corner_cases() {
    let exp = read_json(&fixtures().join("misc.expected.json"));
    let f = TorchFile::open(&fixtures().join("misc.pt")).unwrap();
    assert_eq!(f.len(), exp.as_object().unwrap().len());
    assert_eq!(f.other_keys(), &["step".to_string()]);
    for (name, e) in exp.as_object().unwrap() {
        let t = f.tensor(name).unwrap();
        let e = e.as_array().unwrap();
        assert_eq!(t.dtype.as_str(), e[0], "{name}");
        let shape: Vec<usize> = e[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, &shape[..], "{name}");
        assert_eq!(sha16(t.data), e[2], "{name}");
    }
    let t = f.tensor("transposed").unwrap().to_f32_vec().unwrap();
    assert_eq!(t[..4], [0.0, 4.0, 8.0, 1.0]);
    let err = f.tensor("nope").unwrap_err();
    assert!(matches!(err, WeightsError::TensorNotFound { .. }));
}

#[test]
fn ckpt_and_safetensors_hold_the_same_tensors() {
    let a = Checkpoint::open(&fixtures().join("sdxl.ckpt")).unwrap();
    let b = Checkpoint::open(&fixtures().join("sdxl.safetensors")).unwrap();
    assert_eq!(a.keys(), b.keys());
    for k in a.keys() {
        let (x, y) = (a.tensor(k).unwrap(), b.tensor(k).unwrap());
        assert_eq!(
            (x.dtype, x.shape, x.data),
            (y.dtype, y.shape, y.data),
            "{k}"
        );
    }
}

#[test]
fn legacy_and_non_zip_pickles_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("legacy.bin");
    std::fs::write(&path, [0x80, 0x02, 0x8a, 0x0a]).unwrap();
    let err = TorchFile::open(&path).unwrap_err();
    assert!(err.to_string().contains("legacy"), "{err}");
    let path = tmp.path().join("junk.ckpt");
    std::fs::write(&path, b"PK\x03\x04 definitely not a zip").unwrap();
    let err = TorchFile::open(&path).unwrap_err();
    assert!(matches!(err, WeightsError::Pickle { .. }), "{err}");
    assert!(err.to_string().contains("junk.ckpt"));
}

// ------------------------------------------------- EMA and inpainting variants

/// `sd1.safetensors` with `edit` applied to its tensors (name → (dtype,
/// shape, bytes)), written to `path`.
fn edited_sd1(
    path: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(fixtures().join("sd1.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

fn unet_bytes(conv: &diffusion_hub::single_file::Converted<'_>) -> BTreeMap<String, Vec<u8>> {
    let unet = conv.components.iter().find(|c| c.name == "unet").unwrap();
    unet.tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.data.to_vec()))
        .collect()
}

#[test]
fn extract_ema_takes_the_unet_from_model_ema() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ema.safetensors");
    // EMA copies with every byte flipped in its lowest bit, under LDM's
    // dotless names.
    edited_sd1(&path, |t| {
        let ema: Vec<_> = t
            .iter()
            .filter_map(|(k, (d, s, b))| {
                let key = diffusion_hub::single_file::ema_key(k)?;
                Some((key, (*d, s.clone(), b.iter().map(|x| x ^ 1).collect())))
            })
            .collect();
        assert!(!ema.is_empty());
        t.extend(ema);
    });
    assert_eq!(
        diffusion_hub::single_file::ema_key("model.diffusion_model.input_blocks.0.0.weight")
            .as_deref(),
        Some("model_ema.diffusion_modelinput_blocks00weight")
    );
    let plain = Checkpoint::open(&fixtures().join("sd1.safetensors")).unwrap();
    let plain = convert(&plain, &ConvertOptions::default()).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    // Without the option the EMA copy is skipped and the live weights used.
    let live = convert(&ckpt, &ConvertOptions::default()).unwrap();
    assert_eq!(unet_bytes(&live), unet_bytes(&plain));
    assert!(live.skipped.iter().any(|k| k.starts_with("model_ema.")));
    let opts = ConvertOptions {
        extract_ema: true,
        ..Default::default()
    };
    let ema = convert(&ckpt, &opts).unwrap();
    let (want, got) = (unet_bytes(&plain), unet_bytes(&ema));
    assert_eq!(want.len(), got.len());
    for (k, w) in &want {
        let flipped: Vec<u8> = w.iter().map(|x| x ^ 1).collect();
        assert_eq!(&got[k], &flipped, "{k}");
    }
    assert!(!ema.skipped.iter().any(|k| k.starts_with("model_ema.")));
    // With the EMA weights extracted, the live UNet weights are the ones left out.
    assert!(
        ema.skipped
            .iter()
            .any(|k| k == "model.diffusion_model.out.2.bias")
    );
    // A checkpoint without EMA weights: a typed error.
    let err = convert(
        &Checkpoint::open(&fixtures().join("sd1.safetensors")).unwrap(),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(err, SingleFileError::NoEma { .. }), "{err}");
    // The other components keep their weights.
    let vae = |c: &diffusion_hub::single_file::Converted<'_>| {
        let v = c.components.iter().find(|c| c.name == "vae").unwrap();
        v.tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.data.to_vec()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(vae(&ema), vae(&plain));

    // An EMA copy missing: an error naming the EMA key.
    let path = tmp.path().join("ema_partial.safetensors");
    edited_sd1(&path, |t| {
        let ema: Vec<_> = t
            .iter()
            .filter(|(k, _)| !k.ends_with("out.2.bias"))
            .filter_map(|(k, v)| Some((diffusion_hub::single_file::ema_key(k)?, v.clone())))
            .collect();
        t.extend(ema);
    });
    let ckpt = Checkpoint::open(&path).unwrap();
    let err = convert(&ckpt, &opts).unwrap_err();
    match &err {
        SingleFileError::MissingKey { key, component, .. } => {
            assert_eq!(key, "model_ema.diffusion_modelout2bias");
            assert_eq!(*component, "unet");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_nine_channel_unet_is_an_inpainting_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("inpaint.safetensors");
    edited_sd1(&path, |t| {
        let (d, s, _) = t["model.diffusion_model.input_blocks.0.0.weight"].clone();
        assert_eq!(s[1], 4);
        let shape = vec![s[0], 9, s[2], s[3]];
        let n = shape.iter().product::<usize>() * 4;
        let data = (0..n).map(|i| (i % 7) as u8).collect();
        t.insert(
            "model.diffusion_model.input_blocks.0.0.weight".into(),
            (d, shape, data),
        );
    });
    let out = tmp.path().join("out");
    let report = convert_file(&path, &out, &ConvertOptions::default()).unwrap();
    assert_eq!(report.pipeline_class, "StableDiffusionInpaintPipeline");
    let index = read_json(&out.join("model_index.json"));
    assert_eq!(index["_class_name"], "StableDiffusionInpaintPipeline");
    assert_eq!(read_json(&out.join("unet/config.json"))["in_channels"], 9);
    // The text-to-image fixture stays text-to-image.
    let ckpt = Checkpoint::open(&fixtures().join("sd1.safetensors")).unwrap();
    assert!(!ckpt.is_inpaint());
}
