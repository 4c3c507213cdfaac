//! AutoencoderKL and AutoencoderTiny against diffusers 0.42.1
//! (fixtures: scripts/models/gen_vae.py; each model is a diffusers folder
//! loaded through `from_dir`, next to an `io.safetensors` of inputs/outputs).

use diffusion_hub::weights::Weights;
use diffusion_models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use diffusion_models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use diffusion_models::backend::Cpu;
use diffusion_models::burn::tensor::{DType, Tensor};
use diffusion_models::config::parse_config;
use diffusion_models::load::StoredTensor;
use diffusion_models::testing::{Fixture, assert_close};
use diffusion_models::{Loader, ModelError, Precision, TensorMap, WeightSource};
use std::path::{Path, PathBuf};

type B = Cpu;
const TOL: f64 = 1e-4;

fn dir(name: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", "vae", name]
        .iter()
        .collect()
}

fn io(name: &str) -> Fixture {
    Fixture::open(&dir(name).join("io.safetensors"))
}

fn kl(name: &str) -> AutoencoderKL<B> {
    AutoencoderKL::from_dir(&dir(name), &Default::default(), Precision::F32).unwrap()
}

fn input(f: &Fixture, name: &str) -> Tensor<B, 4> {
    f.tensor(name, &Default::default(), Precision::F32)
}

/// Checks and reports (run with `--nocapture` to see the figures).
fn check<const D: usize>(f: &Fixture, what: &str, name: &str, got: Tensor<B, D>) {
    let err = assert_close(f, name, got, TOL);
    eprintln!("{what}: {name}: rel L2 {err:.2e}");
}

/// Encode (mean, std, logvar, a sample with the fixture's noise, KL), decode,
/// and the pipelines' latent scaling.
fn check_kl_model(name: &str, vae: &AutoencoderKL<B>) {
    let f = io(name);
    let posterior = vae.encode(input(&f, "input.image")).unwrap();
    check(&f, name, "output.encode.mean", posterior.mean.clone());
    check(&f, name, "output.encode.std", posterior.std.clone());
    check(&f, name, "output.encode.logvar", posterior.logvar.clone());
    check(&f, name, "output.encode.kl", posterior.kl());
    let sample = posterior.sample(input(&f, "input.noise")).unwrap();
    check(&f, name, "output.encode.sample", sample);
    check(
        &f,
        name,
        "output.scaled",
        vae.scale_latents(posterior.mode()),
    );
    let latents = input(&f, "input.latents");
    check(
        &f,
        name,
        "output.unscaled",
        vae.unscale_latents(latents.clone()),
    );
    check(&f, name, "output.decode", vae.decode(latents).unwrap());
}

#[test]
fn kl_sd_like() {
    check_kl_model("kl", &kl("kl"));
}

#[test]
fn kl_sdxl_like_upcasts_f16() {
    let dev = Default::default();
    // Asked for F16 with `force_upcast: true`: the VAE is held and run in F32
    // (the CPU backend could not even hold F16 weights).
    let vae = AutoencoderKL::<B>::from_dir(&dir("kl_sdxl"), &dev, Precision::F16).unwrap();
    assert!(vae.config.force_upcast && vae.upcast);
    assert_eq!(vae.dtype(), DType::F32);
    assert!(vae.config.latents_mean.is_some());
    check_kl_model("kl_sdxl", &vae);
    // F32 is never "upcast"; `force_upcast: false` turns the policy off.
    let f32_vae = kl("kl_sdxl");
    assert!(!f32_vae.upcast);
    let mut cfg = vae.config.clone();
    cfg.force_upcast = false;
    let weights =
        Weights::open(&dir("kl_sdxl").join("diffusion_pytorch_model.safetensors")).unwrap();
    let loader = Loader::<B>::new(&weights, &dev, Precision::F32);
    assert!(!AutoencoderKL::load(&loader, &cfg).unwrap().upcast);
}

#[test]
fn kl_flux_like_shift_no_quant_convs() {
    let vae = kl("kl_flux");
    assert!(vae.quant_conv.is_none() && vae.post_quant_conv.is_none());
    assert_eq!(vae.config.shift_factor, Some(0.1159));
    assert!(vae.encoder.mid_block.attentions.is_empty());
    check_kl_model("kl_flux", &vae);
}

#[test]
fn kl_sliced() {
    let f = io("kl");
    let mut vae = kl("kl");
    vae.enable_slicing();
    let posterior = vae.encode(input(&f, "input.image")).unwrap();
    check(&f, "kl sliced", "output.sliced.mean", posterior.mean);
    check(&f, "kl sliced", "output.sliced.std", posterior.std);
    let decoded = vae.decode(input(&f, "input.latents")).unwrap();
    check(&f, "kl sliced", "output.sliced.decode", decoded);
}

/// A tile (`sample_size`) off the latent grid loads, as in diffusers, but a
/// tiled encode with it is refused, naming the input, instead of panicking
/// on an edge tile narrower than the downsampling.
#[test]
fn kl_tiles_off_the_latent_grid_are_refused_when_tiling() {
    let f = io("kl");
    let mut vae = kl("kl");
    vae.tile_sample_min_size = 12;
    // Tiling off: the tile size is not used.
    assert!(vae.encode(input(&f, "input.tiled.image")).is_ok());
    vae.enable_tiling();
    match vae.encode(input(&f, "input.tiled.image")) {
        Err(ModelError::Input { name, message }) => {
            assert_eq!(name, "image");
            assert!(message.contains("sample_size 12"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn kl_tiled() {
    let f = io("kl");
    let mut vae = kl("kl");
    vae.enable_tiling();
    assert_eq!(
        (vae.tile_sample_min_size, vae.tile_latent_min_size),
        (16, 8)
    );
    // A 40x28 image and 20x14 latents: 4x3 overlapping tiles, the last partial.
    let posterior = vae.encode(input(&f, "input.tiled.image")).unwrap();
    check(&f, "kl tiled", "output.tiled.mean", posterior.mean);
    check(&f, "kl tiled", "output.tiled.std", posterior.std);
    let latents = input(&f, "input.tiled.latents");
    check(
        &f,
        "kl tiled",
        "output.tiled.decode",
        vae.decode(latents.clone()).unwrap(),
    );
    // At the tile size, tiling is not used.
    let small = vae.decode(input(&f, "input.latents")).unwrap();
    check(&f, "kl tiled", "output.tiled_small.decode", small);
    // Tiling within slices gives the same values.
    vae.enable_slicing();
    check(
        &f,
        "kl tiled+sliced",
        "output.tiled.decode",
        vae.decode(latents).unwrap(),
    );
    let posterior = vae.encode(input(&f, "input.tiled.image")).unwrap();
    check(&f, "kl tiled+sliced", "output.tiled.mean", posterior.mean);
    // Without tiling the values differ (the fixture really is tiled).
    vae.disable_tiling();
    let plain = vae.encode(input(&f, "input.tiled.image")).unwrap();
    let (_, want) = f.values("output.tiled.mean");
    let err =
        diffusion_models::testing::rel_l2(&diffusion_models::testing::values(plain.mean), &want);
    assert!(
        err > 1e-3,
        "untiled encode matches the tiled reference ({err:.2e})"
    );
}

/// The kl fixture's weights with the mid-block attentions under their legacy
/// names (`query`, `key`, `value`, `proj_attn`) and 1x1-conv shapes, as old
/// VAE checkpoints store them.
fn legacy_weights() -> TensorMap {
    let weights = Weights::open(&dir("kl").join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut map = TensorMap {
        name: "legacy".into(),
        ..Default::default()
    };
    let mut renamed = 0;
    for key in WeightSource::keys(&weights) {
        let mut t: StoredTensor = weights.read(&key).unwrap();
        let mut new_key = key.clone();
        if key.contains(".attentions.") {
            for (new, old) in [
                (".to_q.", ".query."),
                (".to_k.", ".key."),
                (".to_v.", ".value."),
                (".to_out.0.", ".proj_attn."),
            ] {
                if key.contains(new) {
                    new_key = key.replace(new, old);
                    renamed += 1;
                    if key.ends_with(".weight") {
                        t.shape = vec![t.shape[0], t.shape[1], 1, 1];
                    }
                }
            }
        }
        map.tensors.insert(new_key, t);
    }
    assert_eq!(
        renamed, 16,
        "two attentions, four projections, weight and bias"
    );
    map
}

#[test]
fn kl_legacy_attention_names_load() {
    let map = legacy_weights();
    assert!(
        map.tensors
            .contains_key("decoder.mid_block.attentions.0.proj_attn.weight")
    );
    let cfg = kl("kl").config;
    let vae = AutoencoderKL::<B>::load(
        &Loader::new(&map, &Default::default(), Precision::F32),
        &cfg,
    )
    .unwrap();
    check_kl_model("kl", &vae);
}

#[test]
fn taesd() {
    let f = io("taesd");
    let mut vae =
        AutoencoderTiny::<B>::from_dir(&dir("taesd"), &Default::default(), Precision::F32).unwrap();
    assert_eq!(vae.downscale_factor(), 4);
    let image = input(&f, "input.image");
    let latents = input(&f, "input.latents");
    let enc = vae.encode(image.clone()).unwrap();
    check(&f, "taesd", "output.encode", enc.clone());
    check(
        &f,
        "taesd",
        "output.decode",
        vae.decode(latents.clone()).unwrap(),
    );
    // Large latents: the tanh(x / 3) * 3 clamp matters.
    check(
        &f,
        "taesd",
        "output.decode_large",
        vae.decode(latents.clone() * 5.0).unwrap(),
    );
    let scaled = vae.scale_latents(enc);
    check(&f, "taesd", "output.scale_latents", scaled.clone());
    check(
        &f,
        "taesd",
        "output.unscale_latents",
        vae.unscale_latents(scaled),
    );
    vae.enable_slicing();
    check(
        &f,
        "taesd sliced",
        "output.sliced.decode",
        vae.decode(latents).unwrap(),
    );
    check(
        &f,
        "taesd sliced",
        "output.sliced.encode",
        vae.encode(image).unwrap(),
    );
}

#[test]
fn taesd_tiled() {
    let f = io("taesd_tiled");
    let mut vae =
        AutoencoderTiny::<B>::from_dir(&dir("taesd_tiled"), &Default::default(), Precision::F32)
            .unwrap();
    assert_eq!(vae.spatial_scale_factor, 8);
    assert_eq!(
        (vae.tile_sample_min_size, vae.tile_latent_min_size),
        (512, 64)
    );
    // The generator shrinks diffusers' tile attributes the same way.
    (
        vae.tile_sample_min_size,
        vae.tile_latent_min_size,
        vae.tile_overlap_factor,
    ) = (32, 4, 0.5);
    let image = input(&f, "input.image");
    let latents = input(&f, "input.latents");
    check(
        &f,
        "taesd",
        "output.encode",
        vae.encode(image.clone()).unwrap(),
    );
    vae.enable_tiling();
    let tiled = vae.encode(image.clone()).unwrap();
    check(&f, "taesd tiled", "output.tiled.encode", tiled);
    check(
        &f,
        "taesd tiled",
        "output.tiled.decode",
        vae.decode(latents.clone()).unwrap(),
    );
    vae.enable_slicing();
    check(
        &f,
        "taesd tiled+sliced",
        "output.tiled.decode",
        vae.decode(latents).unwrap(),
    );
    // The tiles really blend: the tiled encoding differs from the plain one.
    let (_, plain) = f.values("output.encode");
    let (_, tiled) = f.values("output.tiled.encode");
    assert!(diffusion_models::testing::rel_l2(&tiled, &plain) > 1e-2);
}

#[test]
fn bad_inputs_are_named_errors() {
    let vae = kl("kl");
    let dev = Default::default();
    let wrong_latents = Tensor::<B, 4>::zeros([1, 3, 8, 8], &dev);
    match vae.decode(wrong_latents).unwrap_err() {
        ModelError::Input { name, message } => {
            assert_eq!(name, "latents");
            assert!(
                message.contains("[1, 3, 8, 8]") && message.contains('4'),
                "{message}"
            );
        }
        other => panic!("unexpected {other}"),
    }
    let wrong_image = Tensor::<B, 4>::zeros([1, 4, 16, 16], &dev);
    assert!(
        matches!(vae.encode(wrong_image), Err(ModelError::Input { name, .. }) if name == "image")
    );
    let posterior = vae.encode(Tensor::zeros([1, 3, 16, 16], &dev)).unwrap();
    let wrong_noise = Tensor::<B, 4>::zeros([1, 4, 4, 4], &dev);
    assert!(
        matches!(posterior.sample(wrong_noise), Err(ModelError::Input { name, .. }) if name == "noise")
    );

    let taesd = AutoencoderTiny::<B>::from_dir(&dir("taesd"), &dev, Precision::F32).unwrap();
    let wrong = Tensor::<B, 4>::zeros([1, 8, 4, 4], &dev);
    assert!(
        matches!(taesd.decode(wrong), Err(ModelError::Input { name, .. }) if name == "latents")
    );
}

#[test]
fn bad_weights_are_named_errors() {
    let dev = Default::default();
    let cfg = kl("kl").config;
    // A stored tensor of the wrong shape: the error names the key and both shapes.
    let mut map = legacy_weights();
    let key = "encoder.mid_block.attentions.0.query.weight";
    map.tensors.get_mut(key).unwrap().shape = vec![8, 32];
    match AutoencoderKL::<B>::load(&Loader::new(&map, &dev, Precision::F32), &cfg).unwrap_err() {
        ModelError::ShapeMismatch {
            key: k,
            expected,
            found,
            ..
        } => {
            assert_eq!(k, "encoder.mid_block.attentions.0.query.weight");
            // Neither the 1x1-conv nor the linear layout: reported as the latter.
            assert_eq!((expected, found), (vec![16, 16], vec![8, 32]));
        }
        other => panic!("unexpected {other}"),
    }
    // A config that disagrees with the weights (8 latent channels).
    let weights = Weights::open(&dir("kl").join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut wide = cfg.clone();
    wide.latent_channels = 8;
    match AutoencoderKL::<B>::load(&Loader::new(&weights, &dev, Precision::F32), &wide).unwrap_err()
    {
        ModelError::ShapeMismatch { key, .. } => assert_eq!(key, "quant_conv.weight"),
        other => panic!("unexpected {other}"),
    }
    // No quant convs in the config where the file has them: unexpected keys.
    let mut no_quant = cfg.clone();
    no_quant.use_quant_conv = false;
    let err = AutoencoderKL::<B>::load(&Loader::new(&weights, &dev, Precision::F32), &no_quant)
        .unwrap_err();
    assert!(
        matches!(&err, ModelError::UnexpectedKeys { keys, .. } if keys == &["quant_conv.bias", "quant_conv.weight"]),
        "{err}"
    );
    // A folder without weights.
    let err =
        AutoencoderKL::<B>::from_dir(Path::new("/nonexistent"), &dev, Precision::F32).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
}

#[test]
fn configs_have_diffusers_defaults_and_named_errors() {
    let cfg: AutoencoderKLConfig = parse_config("{}", "t").unwrap().config;
    assert_eq!(cfg.block_out_channels, vec![64]);
    assert_eq!(cfg.layers_per_block, 1);
    assert_eq!(cfg.scaling_factor, 0.18215);
    assert_eq!(cfg.shift_factor, None);
    assert!(cfg.force_upcast && cfg.use_quant_conv && cfg.use_post_quant_conv);
    assert!(cfg.mid_block_add_attention);
    let loaded = parse_config::<AutoencoderKLConfig>(
        r#"{"_class_name": "AutoencoderKL", "new_field": 1, "shift_factor": null}"#,
        "t",
    )
    .unwrap();
    assert_eq!(loaded.ignored_fields, vec!["new_field".to_string()]);

    let dev = Default::default();
    let mut bad = cfg.clone();
    bad.block_out_channels = vec![64, 128];
    bad.down_block_types = vec!["DownEncoderBlock2D".into(), "AttnDownEncoderBlock2D".into()];
    bad.up_block_types = vec!["UpDecoderBlock2D".into(); 2];
    let err = AutoencoderKL::<B>::load(&Loader::random(&dev, Precision::F32), &bad).unwrap_err();
    assert!(
        matches!(&err, ModelError::Config { field, .. } if field == "down_block_types[1]"),
        "{err}"
    );
    let err = parse_config::<AutoencoderKLConfig>(r#"{"act_fn": "tanh"}"#, "t").unwrap_err();
    assert!(
        matches!(&err, ModelError::Config { field, .. } if field == "act_fn"),
        "{err}"
    );

    let tiny: AutoencoderTinyConfig = parse_config("{}", "t").unwrap().config;
    assert_eq!(tiny.num_encoder_blocks, vec![1, 3, 3, 3]);
    assert_eq!((tiny.latent_magnitude, tiny.latent_shift), (3.0, 0.5));
    let mut bad = tiny.clone();
    bad.upsample_fn = "bilinear".into();
    let err = AutoencoderTiny::<B>::load(&Loader::random(&dev, Precision::F32), &bad).unwrap_err();
    assert!(
        matches!(&err, ModelError::Config { field, .. } if field == "upsample_fn"),
        "{err}"
    );
    let mut bad = tiny;
    bad.encoder_block_out_channels = vec![64, 64, 128, 64];
    let err = AutoencoderTiny::<B>::load(&Loader::random(&dev, Precision::F32), &bad).unwrap_err();
    assert!(
        matches!(&err, ModelError::Config { field, .. } if field == "encoder_block_out_channels[2]"),
        "{err}"
    );
}

#[test]
fn random_init_runs() {
    // Random weights through the same constructors: shapes line up end to end.
    let dev = Default::default();
    let cfg: AutoencoderKLConfig = parse_config(
        r#"{"block_out_channels": [8, 16], "norm_num_groups": 4,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}"#,
        "t",
    )
    .unwrap()
    .config;
    let vae = AutoencoderKL::<B>::load(&Loader::random(&dev, Precision::F32), &cfg).unwrap();
    let out = vae
        .forward(Tensor::zeros([1, 3, 12, 10], &dev), None)
        .unwrap();
    assert_eq!(out.dims(), [1, 3, 12, 10]);
}

/// SD1.5/SDXL-size VAEs with random weights, written by
/// `gen_vae.py --full` into target/full-fixtures/vae/ (not committed).
#[test]
#[ignore = "needs target/full-fixtures/vae (scripts/models/gen_vae.py --full); slow"]
fn full_size() {
    let root: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "target",
        "full-fixtures",
        "vae",
    ]
    .iter()
    .collect();
    for name in ["sd15", "sdxl"] {
        let d = root.join(name);
        if !d.is_dir() {
            eprintln!("{}: absent, skipped", d.display());
            continue;
        }
        let f = Fixture::open(&d.join("io.safetensors"));
        let vae = AutoencoderKL::<B>::from_dir(&d, &Default::default(), Precision::F32).unwrap();
        let t = std::time::Instant::now();
        let posterior = vae.encode(input(&f, "input.image")).unwrap();
        // Reading the values back forces the (possibly lazy) computation.
        let _ = diffusion_models::testing::values(posterior.mean.clone());
        eprintln!("{name}: encode 128x128 in {:.2?}", t.elapsed());
        check(&f, name, "output.encode.mean", posterior.mean);
        check(&f, name, "output.encode.std", posterior.std);
        let t = std::time::Instant::now();
        let decoded = vae.decode(input(&f, "input.latents")).unwrap();
        let _ = diffusion_models::testing::values(decoded.clone());
        eprintln!("{name}: decode 16x16 latents in {:.2?}", t.elapsed());
        check(&f, name, "output.decode", decoded);
    }
}

/// Writes `tensors` as a safetensors file (header JSON, then the bytes in order).
fn write_safetensors(path: &Path, tensors: &[(&String, &StoredTensor)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (key, t) in tensors {
        header.insert(
            key.to_string(),
            serde_json::json!({
                "dtype": t.dtype.as_str(),
                "shape": t.shape,
                "data_offsets": [offset, offset + t.bytes.len()],
            }),
        );
        offset += t.bytes.len();
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    for (_, t) in tensors {
        out.extend(&t.bytes);
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn kl_from_sharded_dir() {
    // The kl fixture split in two shards (encoder / the rest) with an index.
    let src = dir("kl");
    let weights = Weights::open(&src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let all: Vec<(String, StoredTensor)> = WeightSource::keys(&weights)
        .into_iter()
        .map(|k| {
            let t = weights.read(&k).unwrap();
            (k, t)
        })
        .collect();
    let out = std::env::temp_dir().join(format!("vae-sharded-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("config.json"), out.join("config.json")).unwrap();
    let mut weight_map = serde_json::Map::new();
    for (shard, encoder) in [
        ("diffusion_pytorch_model-00001-of-00002.safetensors", true),
        ("diffusion_pytorch_model-00002-of-00002.safetensors", false),
    ] {
        let part: Vec<(&String, &StoredTensor)> = all
            .iter()
            .filter(|(k, _)| k.starts_with("encoder.") == encoder)
            .map(|(k, t)| (k, t))
            .collect();
        for (k, _) in &part {
            weight_map.insert(k.to_string(), shard.into());
        }
        write_safetensors(&out.join(shard), &part);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        out.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let vae = AutoencoderKL::<B>::from_dir(&out, &Default::default(), Precision::F32);
    std::fs::remove_dir_all(&out).unwrap();
    check_kl_model("kl", &vae.unwrap());
}
