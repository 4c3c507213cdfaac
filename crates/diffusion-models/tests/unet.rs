//! UNet2DModel and UNet2DConditionModel against diffusers, loaded through
//! `from_dir` from the folders `save_pretrained` wrote
//! (fixtures: scripts/models/gen_unet.py).

use diffusion_models::backend::Cpu;
use diffusion_models::burn::tensor::Tensor;
use diffusion_models::testing::{Fixture, assert_close, rel_l2, values};
use diffusion_models::unet_2d::{ClassLabels, UNet2DModel};
use diffusion_models::unet_2d_condition::{UNet2DConditionModel, UNetConditions};
use diffusion_models::{ModelError, Precision};
use std::path::{Path, PathBuf};
use std::time::Instant;

type B = Cpu;
const TOL: f64 = 1e-4;

fn dir(name: &str) -> PathBuf {
    [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "unet",
        name,
    ]
    .iter()
    .collect()
}

fn io(dir: &Path) -> Fixture {
    Fixture::open(&dir.join("io.safetensors"))
}

fn t<const D: usize>(f: &Fixture, name: &str) -> Tensor<B, D> {
    f.tensor(name, &Default::default(), Precision::F32)
}

fn opt<const D: usize>(f: &Fixture, name: &str) -> Option<Tensor<B, D>> {
    f.contains(name).then(|| t(f, name))
}

/// Class labels as the fixture stores them: `[N]` values.
fn labels(f: &Fixture) -> Option<ClassLabels<B>> {
    opt::<1>(f, "input.class_labels").map(ClassLabels::Values)
}

fn run_unet2d(name: &str) -> f64 {
    let d = dir(name);
    let f = io(&d);
    let model = UNet2DModel::<B>::from_dir(&d, &Default::default(), Precision::F32).unwrap();
    let y = model
        .forward(t(&f, "input.sample"), t(&f, "input.timesteps"), labels(&f))
        .unwrap();
    let err = assert_close(&f, "output.sample", y, TOL);
    println!("{name}: rel L2 {err:.2e}");
    err
}

fn conditions(f: &Fixture) -> UNetConditions<B> {
    UNetConditions {
        text_embeds: opt(f, "input.text_embeds"),
        time_ids: opt(f, "input.time_ids"),
        timestep_cond: opt(f, "input.timestep_cond"),
        class_labels: labels(f),
        ..Default::default()
    }
}

fn load_condition(name: &str) -> (UNet2DConditionModel<B>, Fixture) {
    let d = dir(name);
    let model =
        UNet2DConditionModel::<B>::from_dir(&d, &Default::default(), Precision::F32).unwrap();
    (model, io(&d))
}

fn run_condition(name: &str) -> f64 {
    let (model, f) = load_condition(name);
    let y = model
        .forward(
            t(&f, "input.sample"),
            t(&f, "input.timesteps"),
            t(&f, "input.encoder_hidden_states"),
            conditions(&f),
        )
        .unwrap();
    let err = assert_close(&f, "output.sample", y, TOL);
    println!("{name}: rel L2 {err:.2e}");
    err
}

#[test]
fn unet2d_ddpm_with_attention() {
    run_unet2d("ddpm_attn");
}

#[test]
fn unet2d_from_a_pytorch_pickle_folder() {
    // The same model saved with `safe_serialization=False` (config.json +
    // diffusion_pytorch_model.bin only), as older Hub repos ship it.
    let d = dir("ddpm_attn_bin");
    assert!(!d.join("diffusion_pytorch_model.safetensors").exists());
    let f = io(&dir("ddpm_attn"));
    let model = UNet2DModel::<B>::from_dir(&d, &Default::default(), Precision::F32).unwrap();
    let y = model
        .forward(t(&f, "input.sample"), t(&f, "input.timesteps"), labels(&f))
        .unwrap();
    let err = assert_close(&f, "output.sample", y, TOL);
    println!("ddpm_attn from .bin: rel L2 {err:.2e}");
}

#[test]
fn unet2d_class_embedding_table_and_centred_input() {
    run_unet2d("ddpm_class");
}

#[test]
fn unet2d_scale_shift_and_timestep_class_embedding() {
    run_unet2d("ddpm_scale_shift");
}

#[test]
fn sd1_like() {
    run_condition("sd1");
}

#[test]
fn sd1_like_with_controlnet_residuals() {
    let (model, f) = load_condition("sd1");
    let mut down = Vec::new();
    while f.contains(&format!("input.down_residual.{}", down.len())) {
        down.push(t(&f, &format!("input.down_residual.{}", down.len())));
    }
    assert!(down.len() > 3);
    let cond = UNetConditions {
        down_block_additional_residuals: Some(down),
        mid_block_additional_residual: Some(t(&f, "input.mid_residual")),
        ..conditions(&f)
    };
    let y = model
        .forward(
            t(&f, "input.sample"),
            t(&f, "input.timesteps"),
            t(&f, "input.encoder_hidden_states"),
            cond,
        )
        .unwrap();
    let err = assert_close(&f, "output.sample_controlnet", y, TOL);
    println!("sd1 + ControlNet residuals: rel L2 {err:.2e}");
}

#[test]
fn sd2_like_linear_projection_per_block_heads_upcast() {
    run_condition("sd2");
}

#[test]
fn sdxl_like_text_time_and_transformer_depth() {
    run_condition("sdxl");
}

#[test]
fn inpainting_nine_channels() {
    run_condition("inpaint");
}

#[test]
fn lcm_timestep_cond() {
    run_condition("lcm");
}

#[test]
fn odd_latent_size_uses_skip_sizes() {
    run_condition("odd_size");
}

/// Writes `tensors` (name, dtype, shape, bytes) as a safetensors file.
fn write_safetensors(path: &Path, tensors: &[(String, String, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn sharded_weights_load_through_the_index() {
    // Split the SDXL-like weights into two shards plus an index, as
    // `save_pretrained(max_shard_size=...)` does, and compare again.
    let src = dir("sdxl");
    let d = std::env::temp_dir().join(format!("unet-test-{}-sharded", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    let weights =
        diffusion_hub::weights::Weights::open(&src.join("diffusion_pytorch_model.safetensors"))
            .unwrap();
    let mut shards = [Vec::new(), Vec::new()];
    let mut weight_map = serde_json::Map::new();
    let names: Vec<String> = weights.tensors().map(|(k, _)| k.to_string()).collect();
    for (i, name) in names.iter().enumerate() {
        let view = weights.tensor(name).unwrap();
        let shard = usize::from(i >= names.len() / 2);
        let file = format!(
            "diffusion_pytorch_model-0000{}-of-00002.safetensors",
            shard + 1
        );
        weight_map.insert(name.clone(), file.into());
        shards[shard].push((
            name.clone(),
            view.dtype.to_string(),
            view.shape.to_vec(),
            view.data.to_vec(),
        ));
    }
    for (i, tensors) in shards.iter().enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        write_safetensors(&d.join(file), tensors);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        d.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let model = UNet2DConditionModel::<B>::from_dir(&d, &Default::default(), Precision::F32);
    std::fs::remove_dir_all(&d).ok();
    let model = model.unwrap();
    let f = io(&src);
    let y = model
        .forward(
            t(&f, "input.sample"),
            t(&f, "input.timesteps"),
            t(&f, "input.encoder_hidden_states"),
            conditions(&f),
        )
        .unwrap();
    assert_close(&f, "output.sample", y, TOL);
}

#[test]
fn legacy_attention_names_load() {
    // Early diffusers checkpoints (google/ddpm-*) name the spatial attention
    // `query`/`key`/`value`/`proj_attn`; diffusers renames them on load.
    let src = dir("ddpm_attn");
    let d = std::env::temp_dir().join(format!("unet-test-{}-legacy", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    let weights =
        diffusion_hub::weights::Weights::open(&src.join("diffusion_pytorch_model.safetensors"))
            .unwrap();
    let mut renamed = 0;
    let tensors: Vec<_> = weights
        .tensors()
        .map(|(name, _)| {
            let view = weights.tensor(name).unwrap();
            let mut new = name.to_string();
            for (from, to) in [
                (".to_q.", ".query."),
                (".to_k.", ".key."),
                (".to_v.", ".value."),
                (".to_out.0.", ".proj_attn."),
            ] {
                if new.contains(".attentions.") && new.contains(from) {
                    new = new.replace(from, to);
                    renamed += 1;
                }
            }
            (
                new,
                view.dtype.to_string(),
                view.shape.to_vec(),
                view.data.to_vec(),
            )
        })
        .collect();
    assert!(renamed >= 8, "{renamed}");
    write_safetensors(&d.join("diffusion_pytorch_model.safetensors"), &tensors);
    let model = UNet2DModel::<B>::from_dir(&d, &Default::default(), Precision::F32);
    std::fs::remove_dir_all(&d).ok();
    let f = io(&src);
    let y = model
        .unwrap()
        .forward(t(&f, "input.sample"), t(&f, "input.timesteps"), None)
        .unwrap();
    assert_close(&f, "output.sample", y, TOL);
}

/// Copies a fixture folder to a temporary one with `edit` applied to its config.
fn with_config(name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = dir(name);
    let dst = std::env::temp_dir().join(format!(
        "unet-test-{}-{name}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(
        src.join("diffusion_pytorch_model.safetensors"),
        dst.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dst.join("config.json"), config.to_string()).unwrap();
    dst
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn condition_err(d: &Path) -> ModelError {
    let err = UNet2DConditionModel::<B>::from_dir(d, &Default::default(), Precision::F32)
        .map(|_| ())
        .unwrap_err();
    std::fs::remove_dir_all(d).ok();
    err
}

#[test]
fn wrong_configs_and_inputs_are_named_errors() {
    // A cross_attention_dim the weights do not have: the first attn2 key is named.
    let d = with_config("sd1", |c| c["cross_attention_dim"] = 7.into());
    match condition_err(&d) {
        ModelError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(
                key,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
            );
            assert_eq!((expected, found), (vec![8, 7], vec![8, 6]));
        }
        other => panic!("unexpected {other}"),
    }
    // A block type this crate does not implement: a Config error naming the field.
    let d = with_config("sd1", |c| {
        c["down_block_types"][1] = "SimpleCrossAttnDownBlock2D".into()
    });
    match condition_err(&d) {
        ModelError::Config { field, message, .. } => {
            assert_eq!(field, "down_block_types[1]");
            assert!(message.contains("SimpleCrossAttnDownBlock2D"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    // Unsupported addition embedding.
    let d = with_config("sdxl", |c| c["addition_embed_type"] = "text".into());
    assert!(
        matches!(condition_err(&d), ModelError::Config { ref field, .. } if field == "addition_embed_type")
    );
    // SD1 weights read as SD2 (linear projections): proj_in's shape is wrong.
    let d = with_config("sd1", |c| c["use_linear_projection"] = true.into());
    match condition_err(&d) {
        ModelError::ShapeMismatch { key, .. } => {
            assert_eq!(key, "down_blocks.0.attentions.0.proj_in.weight")
        }
        other => panic!("unexpected {other}"),
    }
    // A malformed value: the serde path names the field.
    let d = with_config("sd1", |c| c["layers_per_block"] = "two".into());
    assert!(
        matches!(condition_err(&d), ModelError::Config { ref field, .. } if field == "layers_per_block")
    );
    // No class embedding although `class_embeddings_concat` concatenates one:
    // refused at the config, naming the field that needs it.
    let d = with_config("odd_size", |c| {
        c["num_class_embeds"] = serde_json::Value::Null
    });
    match condition_err(&d) {
        ModelError::Config { field, .. } => assert_eq!(field, "class_embeddings_concat"),
        other => panic!("unexpected {other}"),
    }
    let d = with_config("ddpm_class", |c| {
        c["num_class_embeds"] = serde_json::Value::Null
    });
    let err = UNet2DModel::<B>::from_dir(&d, &Default::default(), Precision::F32)
        .map(|_| ())
        .unwrap_err();
    std::fs::remove_dir_all(&d).ok();
    match err {
        ModelError::UnexpectedKeys { keys, .. } => {
            assert_eq!(keys, vec!["class_embedding.weight".to_string()])
        }
        other => panic!("unexpected {other}"),
    }
    // UNet2DModel: an unsupported time embedding names the field.
    let d = with_config("ddpm_attn", |c| c["time_embedding_type"] = "fourier".into());
    let err = UNet2DModel::<B>::from_dir(&d, &Default::default(), Precision::F32)
        .map(|_| ())
        .unwrap_err();
    std::fs::remove_dir_all(&d).ok();
    assert!(
        matches!(err, ModelError::Config { ref field, .. } if field == "time_embedding_type"),
        "{err}"
    );

    // Inputs.
    let (model, f) = load_condition("sd1");
    let input_err = |sample: Tensor<B, 4>, ctx: Tensor<B, 3>, cond: UNetConditions<B>| match model
        .forward(sample, t(&f, "input.timesteps"), ctx, cond)
    {
        Err(ModelError::Input { name, .. }) => name,
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("accepted a wrong input"),
    };
    let sample: Tensor<B, 4> = t(&f, "input.sample");
    let ctx: Tensor<B, 3> = t(&f, "input.encoder_hidden_states");
    assert_eq!(
        input_err(
            sample.clone().narrow(1, 0, 3),
            ctx.clone(),
            Default::default()
        ),
        "sample"
    );
    assert_eq!(
        input_err(
            sample.clone(),
            ctx.clone().narrow(2, 0, 5),
            Default::default()
        ),
        "encoder_hidden_states"
    );
    let cond = UNetConditions {
        timestep_cond: Some(Tensor::zeros([2, 6], &Default::default())),
        ..Default::default()
    };
    assert_eq!(
        input_err(sample.clone(), ctx.clone(), cond),
        "timestep_cond"
    );
    let (xl, fx) = load_condition("sdxl");
    let err = xl
        .forward(
            t(&fx, "input.sample"),
            t(&fx, "input.timesteps"),
            t(&fx, "input.encoder_hidden_states"),
            UNetConditions {
                time_ids: opt(&fx, "input.time_ids"),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Input { ref name, .. } if name == "text_embeds"),
        "{err}"
    );
    let d = dir("ddpm_class");
    let f = io(&d);
    let m = UNet2DModel::<B>::from_dir(&d, &Default::default(), Precision::F32).unwrap();
    let bad = Tensor::<B, 1>::from_floats([3.0, 7.0], &Default::default());
    let err = m
        .forward(
            t(&f, "input.sample"),
            t(&f, "input.timesteps"),
            Some(ClassLabels::Values(bad)),
        )
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Input { ref name, .. } if name == "class_labels"),
        "{err}"
    );
}

/// SD1.5- and SDXL-size random models written by
/// `python scripts/models/gen_unet.py --full` into `target/full-fixtures/unet/`.
#[test]
#[ignore = "needs `gen_unet.py --full` (GBs of random weights)"]
fn full_size_models() {
    let root: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "target",
        "full-fixtures",
        "unet",
    ]
    .iter()
    .collect();
    let mut ran = 0;
    for name in ["sd15", "sdxl"] {
        let d = root.join(name);
        if !d.join("config.json").exists() {
            println!("{name}: not generated ({})", d.display());
            continue;
        }
        let start = Instant::now();
        let model =
            UNet2DConditionModel::<B>::from_dir(&d, &Default::default(), Precision::F32).unwrap();
        let load = start.elapsed();
        let f = io(&d);
        let start = Instant::now();
        let y = model
            .forward(
                t(&f, "input.sample"),
                t(&f, "input.timesteps"),
                t(&f, "input.encoder_hidden_states"),
                conditions(&f),
            )
            .unwrap();
        let got = values(y);
        let forward = start.elapsed();
        let err = rel_l2(&got, &f.values("output.sample").1);
        println!(
            "{name}: rel L2 {err:.2e}, load {:.2} s, forward {:.2} s",
            load.as_secs_f64(),
            forward.as_secs_f64()
        );
        assert!(err <= TOL, "{name}: {err:.3e}");
        ran += 1;
    }
    assert!(
        ran > 0,
        "no full-size fixture found under {}",
        root.display()
    );
}

#[test]
fn random_init_builds_the_same_architecture() {
    // The benchmark/training path: same constructors, random weights.
    let d = dir("sdxl");
    let config = diffusion_models::config::read_config::<
        diffusion_models::unet_2d_condition::UNet2DConditionConfig,
    >(&d.join("config.json"))
    .unwrap();
    assert!(
        config.ignored_fields.is_empty(),
        "{:?}",
        config.ignored_fields
    );
    let ddpm = diffusion_models::config::read_config::<diffusion_models::unet_2d::UNet2DConfig>(
        &dir("ddpm_attn").join("config.json"),
    )
    .unwrap();
    assert!(ddpm.ignored_fields.is_empty(), "{:?}", ddpm.ignored_fields);
    let loader = diffusion_models::Loader::<B>::random(&Default::default(), Precision::F32);
    let model = UNet2DConditionModel::load(&loader, &config.config).unwrap();
    let f = io(&d);
    let y = model
        .forward(
            t(&f, "input.sample"),
            t(&f, "input.timesteps"),
            t(&f, "input.encoder_hidden_states"),
            conditions(&f),
        )
        .unwrap();
    assert_eq!(y.dims(), [2, 4, 8, 8]);
    assert!(values(y).iter().all(|v| v.is_finite()));
}
