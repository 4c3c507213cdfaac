//! The CLIP text encoders against transformers (fixtures: scripts/models/gen_clip.py).

use diffusion_hub::weights::Weights;
use diffusion_models::backend::Cpu;
use diffusion_models::burn::tensor::{Int, Tensor, TensorData};
use diffusion_models::clip::{
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTextOutput, TokenId,
};
use diffusion_models::config::{ModelConfig, parse_config};
use diffusion_models::nn::Activation;
use diffusion_models::testing::{Fixture, assert_close};
use diffusion_models::{Loader, ModelError, Precision};
use std::path::{Path, PathBuf};

type B = Cpu;
const TOL: f64 = 1e-4;

fn dir(name: &str) -> PathBuf {
    [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "clip",
        name,
    ]
    .iter()
    .collect()
}

fn io(dir: &Path) -> Fixture {
    Fixture::open(&dir.join("io.safetensors"))
}

/// The fixture's ids (stored as f32, exact) as `[B, L]` rows.
fn ids(f: &Fixture) -> Vec<Vec<u32>> {
    let (shape, values) = f.values("input.input_ids");
    values
        .chunks(shape[1])
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect()
}

fn ids_tensor(rows: &[Vec<i64>]) -> Tensor<B, 2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), rows[0].len()]),
        &Default::default(),
    )
}

/// Compares every output the fixture holds; returns the worst relative L2.
fn check(f: &Fixture, out: &CLIPTextOutput<B>, layers: usize) -> f64 {
    assert_eq!(out.hidden_states.len(), layers + 1, "hidden_states count");
    let mut worst = 0f64;
    for (i, h) in out.hidden_states.iter().enumerate() {
        let name = format!("output.hidden_states.{i}");
        worst = worst.max(assert_close(f, &name, h.clone(), TOL));
    }
    worst = worst.max(assert_close(
        f,
        "output.last_hidden_state",
        out.last_hidden_state.clone(),
        TOL,
    ));
    worst = worst.max(assert_close(
        f,
        "output.pooler_output",
        out.pooler_output.clone(),
        TOL,
    ));
    match &out.text_embeds {
        Some(t) => worst = worst.max(assert_close(f, "output.text_embeds", t.clone(), TOL)),
        None => assert!(!f.contains("output.text_embeds"), "text_embeds missing"),
    }
    worst
}

fn text_model(name: &str) -> (CLIPTextModel<B>, Fixture) {
    let d = dir(name);
    let m = CLIPTextModel::<B>::from_dir(&d, &Default::default(), Precision::F32)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (m, io(&d))
}

#[test]
fn sd1_quick_gelu_legacy_eos_with_position_ids() {
    // The checkpoint carries the int64 `text_model.embeddings.position_ids`
    // buffer; loading is strict otherwise, so this proves it is ignored.
    let weights = Weights::open(&dir("sd1").join("model.safetensors")).unwrap();
    assert!(weights.contains("text_model.embeddings.position_ids"));
    let (m, f) = text_model("sd1");
    assert_eq!(m.text_model.eos_token_id, Some(2));
    let out = m.forward_ids(&ids(&f)).unwrap();
    let worst = check(&f, &out, 3);
    println!("sd1 worst rel L2 {worst:.2e}");
}

#[test]
fn sd2_gelu_first_eos_shorter_than_max_positions() {
    let (m, f) = text_model("sd2");
    let rows: Vec<Vec<i64>> = ids(&f)
        .iter()
        .map(|r| r.iter().map(|&v| i64::from(v)).collect())
        .collect();
    // Padded with eos: the first occurrence is pooled.
    let eos = m.text_model.eos_token_id.unwrap();
    let first: Vec<usize> = rows
        .iter()
        .map(|r| r.iter().position(|&v| v == eos).unwrap())
        .collect();
    assert_eq!(m.text_model.pool_positions(&rows), first);
    let out = m.forward(ids_tensor(&rows)).unwrap();
    let worst = check(&f, &out, 3);
    println!("sd2 worst rel L2 {worst:.2e}");
}

#[test]
fn unprefixed_sharded_transformers5_layout() {
    // transformers 5 writes a freshly built CLIPTextModel without the
    // `text_model.` prefix; this one is also sharded behind an index.
    let d = dir("unprefixed");
    assert!(d.join("model.safetensors.index.json").exists());
    assert!(!d.join("model.safetensors").exists());
    let (m, f) = text_model("unprefixed");
    let out = m.forward_ids(&ids(&f)).unwrap();
    let worst = check(&f, &out, 2);
    println!("unprefixed worst rel L2 {worst:.2e}");
}

#[test]
fn sdxl_second_encoder_with_projection() {
    let d = dir("sdxl2");
    let m = CLIPTextModelWithProjection::<B>::from_dir(&d, &Default::default(), Precision::F32)
        .unwrap();
    let f = io(&d);
    let rows: Vec<Vec<i64>> = ids(&f)
        .iter()
        .map(|r| r.iter().map(|&v| i64::from(v)).collect())
        .collect();
    // Prompt ids above eos: argmax would pool elsewhere than the eos rule.
    let positions = m.text_model.pool_positions(&rows);
    for (r, p) in rows.iter().zip(&positions) {
        assert_eq!(r[*p], 319);
        assert!(r.iter().any(|&v| v > 319));
    }
    let out = m.forward(ids_tensor(&rows)).unwrap();
    let worst = check(&f, &out, 2);
    // What SDXL conditions on: hidden_states[-2], not final-normed.
    assert_close(&f, "output.hidden_states.1", out.penultimate(), TOL);
    assert_close(
        &f,
        "output.hidden_states.2",
        out.hidden_state_from_end(1).unwrap(),
        TOL,
    );
    assert!(out.hidden_state_from_end(0).is_none());
    assert!(out.hidden_state_from_end(4).is_none());
    println!("sdxl2 worst rel L2 {worst:.2e}");
}

#[test]
fn clip_skip_is_final_norm_of_an_earlier_layer() {
    // diffusers' clip_skip: final_layer_norm(hidden_states[-(clip_skip + 1)]).
    // With clip_skip 0 that is last_hidden_state.
    let (m, f) = text_model("sd2");
    let out = m.forward_ids(&ids(&f)).unwrap();
    let normed = m
        .text_model
        .final_layer_norm
        .forward(out.hidden_state_from_end(1).unwrap());
    assert_close(&f, "output.last_hidden_state", normed, 1e-6);
}

#[test]
fn token_id_outside_vocabulary_is_an_input_error() {
    let (m, f) = text_model("sd1");
    let mut rows = ids(&f);
    rows[1][3] = 640;
    match m.forward_ids(&rows) {
        Err(ModelError::Input { name, message }) => {
            assert_eq!(name, "input_ids");
            assert!(
                message.contains("640") && message.contains("[1, 3]"),
                "{message}"
            );
        }
        other => panic!("expected an input error, got {:?}", other.map(|_| ())),
    }
    let negative = vec![vec![0i64, -1, 2]];
    match m.forward(ids_tensor(&negative)) {
        Err(ModelError::Input { message, .. }) => assert!(message.contains("-1"), "{message}"),
        other => panic!("expected an input error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn sequence_longer_than_positions_is_an_input_error() {
    let (m, _) = text_model("sd1");
    let rows = vec![vec![5u32; 25]];
    match m.forward_ids(&rows) {
        Err(ModelError::Input { name, message }) => {
            assert_eq!(name, "input_ids");
            assert!(
                message.contains("25") && message.contains("24"),
                "{message}"
            );
        }
        other => panic!("expected an input error, got {:?}", other.map(|_| ())),
    }
    // Exactly max_position_embeddings is fine.
    assert!(m.forward_ids(&[vec![5u32; 24]]).is_ok());
}

#[test]
fn ragged_and_empty_ids_are_input_errors() {
    let (m, _) = text_model("sd1");
    assert!(matches!(
        m.forward_ids(&[vec![1, 2, 3], vec![1, 2]]),
        Err(ModelError::Input { .. })
    ));
    assert!(matches!(m.forward_ids(&[]), Err(ModelError::Input { .. })));
}

fn sd1_config() -> CLIPTextConfig {
    CLIPTextConfig::read(&dir("sd1").join("config.json"))
        .unwrap()
        .config
}

#[test]
fn hidden_size_differing_from_weights_names_the_key() {
    let weights = Weights::open(&dir("sd1").join("model.safetensors")).unwrap();
    let mut cfg = sd1_config();
    cfg.hidden_size = 48;
    let loader = Loader::<B>::new(&weights, &Default::default(), Precision::F32);
    match CLIPTextModel::load(&loader, &cfg) {
        Err(ModelError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        }) => {
            assert_eq!(key, "text_model.embeddings.token_embedding.weight");
            assert_eq!(expected, vec![640, 48]);
            assert_eq!(found, vec![640, 32]);
        }
        other => panic!("expected a shape mismatch, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn fewer_layers_than_weights_leaves_unexpected_keys() {
    let weights = Weights::open(&dir("sd1").join("model.safetensors")).unwrap();
    let mut cfg = sd1_config();
    cfg.num_hidden_layers = 2;
    let loader = Loader::<B>::new(&weights, &Default::default(), Precision::F32);
    match CLIPTextModel::load(&loader, &cfg) {
        Err(ModelError::UnexpectedKeys { keys, .. }) => {
            assert!(
                keys.iter()
                    .all(|k| k.starts_with("text_model.encoder.layers.2."))
            );
            assert_eq!(keys.len(), 16);
        }
        other => panic!("expected unexpected keys, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn with_projection_needs_text_projection() {
    // A plain CLIPTextModel checkpoint has no text_projection.weight.
    let weights = Weights::open(&dir("sd2").join("model.safetensors")).unwrap();
    let cfg = CLIPTextConfig::read(&dir("sd2").join("config.json"))
        .unwrap()
        .config;
    let loader = Loader::<B>::new(&weights, &Default::default(), Precision::F32);
    match CLIPTextModelWithProjection::load(&loader, &cfg) {
        Err(ModelError::MissingKey { key, shape, .. }) => {
            assert_eq!(key, "text_projection.weight");
            assert_eq!(shape, vec![32, 32]);
        }
        other => panic!("expected a missing key, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn missing_weights_file_is_an_io_error() {
    let tmp = std::env::temp_dir().join(format!("clip-no-weights-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(dir("sd1").join("config.json"), tmp.join("config.json")).unwrap();
    let r = CLIPTextModel::<B>::from_dir(&tmp, &Default::default(), Precision::F32);
    std::fs::remove_dir_all(&tmp).unwrap();
    match r {
        Err(ModelError::Io { path, .. }) => assert!(path.ends_with("model.safetensors")),
        other => panic!("expected an io error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn config_defaults_and_ignored_fields() {
    // transformers' CLIPTextConfig() defaults.
    let d = CLIPTextConfig::default();
    assert_eq!(
        (
            d.vocab_size,
            d.hidden_size,
            d.intermediate_size,
            d.projection_dim
        ),
        (49408, 512, 2048, Some(512))
    );
    assert_eq!(
        (
            d.num_hidden_layers,
            d.num_attention_heads,
            d.max_position_embeddings
        ),
        (12, 8, 77)
    );
    assert_eq!(d.hidden_act, Activation::QuickGelu);
    assert_eq!(d.layer_norm_eps, 1e-5);
    assert_eq!(
        (d.pad_token_id, d.bos_token_id, d.eos_token_id.clone()),
        (Some(1), Some(49406), Some(TokenId::One(49407)))
    );

    // An SDXL text_encoder_2 config as transformers 4 wrote it.
    let json = r#"{
        "_name_or_path": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
        "architectures": ["CLIPTextModelWithProjection"],
        "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "gelu", "hidden_size": 1280, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 5120, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": 20, "num_hidden_layers": 32, "pad_token_id": 1,
        "projection_dim": 1280, "torch_dtype": "float16", "transformers_version": "4.32.0.dev0",
        "vocab_size": 49408
    }"#;
    let loaded = parse_config::<CLIPTextConfig>(json, "sdxl").unwrap();
    loaded.config.validate("sdxl").unwrap();
    assert_eq!(
        loaded.ignored_fields,
        vec![
            "architectures",
            "dropout",
            "torch_dtype",
            "transformers_version"
        ]
    );
    assert_eq!(loaded.config.hidden_act, Activation::Gelu);
    assert_eq!(loaded.config.num_hidden_layers, 32);

    // The fixtures' transformers 5 config (`dtype` instead of `torch_dtype`).
    let loaded = CLIPTextConfig::read(&dir("sd1").join("config.json")).unwrap();
    assert_eq!(
        loaded.ignored_fields,
        vec!["architectures", "dtype", "transformers_version"]
    );
}

#[test]
fn bad_config_values_name_the_field() {
    let field_of = |json: &str| -> String {
        let r = parse_config::<CLIPTextConfig>(json, "test")
            .and_then(|l| l.config.validate("test").map(|_| l));
        match r {
            Err(ModelError::Config { field, .. }) => field,
            other => panic!("expected a config error for {json}, got {other:?}"),
        }
    };
    assert_eq!(field_of(r#"{"hidden_act": "swiglu"}"#), "hidden_act");
    assert_eq!(field_of(r#"{"model_type": "clip"}"#), "model_type");
    assert_eq!(field_of(r#"{"eos_token_id": [2, 3]}"#), "eos_token_id");
    assert_eq!(
        field_of(r#"{"hidden_size": 30, "num_attention_heads": 4}"#),
        "num_attention_heads"
    );
    assert_eq!(
        field_of(r#"{"num_hidden_layers": "twelve"}"#),
        "num_hidden_layers"
    );
}

#[test]
fn random_init_builds_and_runs() {
    let cfg: CLIPTextConfig = parse_config(
        r#"{"vocab_size": 50, "hidden_size": 16, "intermediate_size": 24, "projection_dim": 8,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 10,
            "hidden_act": "gelu", "eos_token_id": 49}"#,
        "test",
    )
    .unwrap()
    .config;
    let loader = Loader::<B>::random(&Default::default(), Precision::F32);
    let m = CLIPTextModelWithProjection::load(&loader, &cfg).unwrap();
    let out = m
        .forward_ids(&[vec![48, 3, 49, 0], vec![48, 49, 0, 0]])
        .unwrap();
    assert_eq!(out.last_hidden_state.dims(), [2, 4, 16]);
    assert_eq!(out.pooler_output.dims(), [2, 16]);
    assert_eq!(out.text_embeds.unwrap().dims(), [2, 8]);
    assert_eq!(m.text_model.pool_positions(&[vec![48, 3, 49, 0]]), vec![2]);
}

/// Real-size random encoders written by `gen_clip.py --full` (CLIP-L as in
/// SD 1.x, OpenCLIP bigG as SDXL's second encoder); skipped when absent.
#[test]
#[ignore]
fn full_size() {
    let base: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "target",
        "full-fixtures",
        "clip",
    ]
    .iter()
    .collect();
    for name in ["clip_l", "bigg"] {
        let d = base.join(name);
        if !d.join("config.json").exists() {
            println!("{name}: absent ({}), skipped", d.display());
            continue;
        }
        let f = io(&d);
        let rows = ids(&f);
        let t = std::time::Instant::now();
        let cfg = CLIPTextConfig::read(&d.join("config.json")).unwrap().config;
        let (out, layers) = if name == "bigg" {
            let m =
                CLIPTextModelWithProjection::<B>::from_dir(&d, &Default::default(), Precision::F32)
                    .unwrap();
            println!("{name}: loaded in {:.2?}", t.elapsed());
            let t = std::time::Instant::now();
            let out = m.forward_ids(&rows).unwrap();
            println!("{name}: forward [2, 77] in {:.2?}", t.elapsed());
            (out, cfg.num_hidden_layers)
        } else {
            let m = CLIPTextModel::<B>::from_dir(&d, &Default::default(), Precision::F32).unwrap();
            println!("{name}: loaded in {:.2?}", t.elapsed());
            let t = std::time::Instant::now();
            let out = m.forward_ids(&rows).unwrap();
            println!("{name}: forward [2, 77] in {:.2?}", t.elapsed());
            (out, cfg.num_hidden_layers)
        };
        let worst = check(&f, &out, layers);
        println!("{name}: worst rel L2 {worst:.2e}");
    }
}
