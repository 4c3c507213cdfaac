//! Property tests of the model configs: the parsers' property tests
//! (diffusion-hub's `weights_fuzz`, `torch_pickle_fuzz`) extended to
//! `UNet2DConfig`, `UNet2DConditionConfig`, `AutoencoderKLConfig`,
//! `AutoencoderTinyConfig`, `CLIPTextConfig`, `ControlNetConfig` and
//! `T2IAdapterConfig`.
//!
//! Each case mutates one of the tiny test fixtures' `config.json` (one to
//! four mutations: a field set to 0, 1, a small odd number, a huge or
//! negative number, a float, a string naming an unknown or another block
//! type, `null`, a value of the wrong type; a value changed within its type
//! (a small number, another known string, a flipped bool), also one list
//! entry; a list emptied or resized; every per-block list resized together;
//! a field removed; unknown keys added) and checks that the config either
//!
//! - is refused by [`parse_config`] with a [`ModelError::Config`] whose field
//!   is one of the config's fields (`norm_num_groups`, `block_out_channels[2]`),
//!   serde's type errors included; or
//! - is accepted, saves and reloads unchanged, and, when it is small enough to
//!   build in milliseconds, builds with random weights and runs one forward at
//!   a tiny size, which returns the expected shape or a [`ModelError::Input`]
//!   naming the input (a config the loader refuses after `validate` accepted
//!   it is a failure: `validate` must catch it).
//!
//! Nothing may panic: parsing, building and the forward run under
//! `catch_unwind`, and a failure prints the config's JSON. The runs are
//! reproducible (a fixed RNG seed, no failure persistence; the random
//! weights do not decide the outcome, only shapes and errors are checked).

use diffusion_models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use diffusion_models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use diffusion_models::backend::Cpu;
use diffusion_models::burn::tensor::{Tensor, TensorData};
use diffusion_models::clip::{
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTextOutput,
};
use diffusion_models::config::{ModelConfig, parse_config};
use diffusion_models::controlnet::{ControlNetConfig, ControlNetModel, ResidualScale};
use diffusion_models::t2i_adapter::{T2IAdapter, T2IAdapterConfig};
use diffusion_models::unet_2d::{ClassLabels, UNet2DConfig, UNet2DModel};
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_models::{Loader, ModelError, Precision};
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::cell::Cell;
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

type B = Cpu;

/// Cases per config type.
const CASES: u32 = 512;

/// The RNG seed of every run (CI reproducibility).
const SEED: u64 = 0x00c0_ff1c_f022;

/// The name configs are parsed under (it appears in every error).
const SOURCE: &str = "fuzz/config.json";

/// `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override `CASES` and `SEED`
/// (for longer local runs); CI sets neither.
fn runner() -> TestRunner {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    TestRunner::new(ProptestConfig {
        cases: env("PROPTEST_CASES").map_or(CASES, |c: u64| c as u32),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(env("PROPTEST_RNG_SEED").unwrap_or(SEED)),
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    })
}

/// One config type: the fixture configs mutated, the struct's fields, and
/// the lists holding one entry per block.
struct Kind {
    bases: Vec<Value>,
    fields: Vec<String>,
    level_lists: &'static [&'static str],
}

impl Kind {
    fn new<T: ModelConfig>(fixtures: &[&str], level_lists: &'static [&'static str]) -> Self {
        let bases = fixtures
            .iter()
            .map(|name| {
                let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
                    .iter()
                    .collect::<PathBuf>()
                    .join("config.json");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                serde_json::from_str(&text).unwrap()
            })
            .collect();
        let default: T = serde_json::from_str("{}").expect("every field has a default");
        let fields = match serde_json::to_value(&default).unwrap() {
            Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("a config serializes to an object, not {other}"),
        };
        Kind {
            bases,
            fields,
            level_lists,
        }
    }
}

/// An edit of a config's JSON object.
#[derive(Debug, Clone)]
enum Mutation {
    /// The field (added if absent) set to the value.
    Set(String, Value),
    /// Entry `i % len` of a non-empty list set to the value (a non-list: the field).
    SetElement(String, usize, Value),
    /// The list cut or extended (by repeating its last entry) to this length;
    /// a single value becomes a list of copies.
    Resize(String, usize),
    /// A value of the same type (the likeliest to be accepted): a number
    /// becomes `small`, a string one of [`STRINGS`] (`pick`), a bool flips,
    /// `null` becomes `small`; in a list, entry `pick % len` changes so.
    Nudge(String, usize, u64),
    /// Every per-block list resized to this length at once.
    ResizeLevels(usize),
    /// The field removed (its default applies).
    Remove(String),
}

/// Strings the generated values draw from: the block types, activations
/// and embedding kinds of every config (valid in one field, unknown in most),
/// and plain garbage.
const STRINGS: &[&str] = &[
    "DownBlock2D",
    "AttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "UpBlock2D",
    "AttnUpBlock2D",
    "CrossAttnUpBlock2D",
    "UNetMidBlock2D",
    "UNetMidBlock2DCrossAttn",
    "UNetResDownBlock2D",
    "SimpleCrossAttnDownBlock2D",
    "DownEncoderBlock2D",
    "UpDecoderBlock2D",
    "silu",
    "swish",
    "gelu",
    "gelu_pytorch_tanh",
    "quick_gelu",
    "mish",
    "relu",
    "positional",
    "fourier",
    "conv",
    "resnet",
    "default",
    "scale_shift",
    "timestep",
    "identity",
    "projection",
    "simple_projection",
    "text_time",
    "text",
    "nearest",
    "bilinear",
    "clip_text_model",
    "clip",
    "",
    "Bogus2D",
];

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0u64..=9).prop_map(Value::from),
        2 => prop::sample::select(vec![
            16u64,
            32,
            64,
            255,
            1_000_000,
            1 << 20,
            (1 << 20) + 1,
            1 << 40,
            u64::MAX / 2,
            u64::MAX,
        ])
        .prop_map(Value::from),
        2 => prop::sample::select(vec![-1i64, -3, -1_000_000, i64::MIN]).prop_map(Value::from),
        2 => prop::sample::select(vec![
            0.0f64, 0.5, 1.5, -0.5, -1.0, 1e-30, 1e6, 1e300, -1e300,
        ])
        .prop_map(Value::from),
        3 => prop::sample::select(STRINGS.to_vec()).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => prop::collection::vec(0u64..=9, 0..4).prop_map(|v| json!(v)),
        1 => Just(json!({ "a": 1 })),
        1 => Just(json!([[1, 2], [3]])),
    ]
}

/// Small numbers, the likeliest to build (1, 2, 3 and 4 the most).
fn small() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1u64..=4, 2 => 0u64..=9, 1 => Just(16u64), 1 => Just(32u64)]
}

fn mutation(fields: &[String]) -> impl Strategy<Value = Mutation> + use<> {
    let mut keys = fields.to_vec();
    // Unknown keys must be ignored, never refused.
    keys.extend(["not_a_field".to_string(), "_class_name".to_string()]);
    let field = prop::sample::select(keys);
    let len =
        prop_oneof![4 => 0usize..=4, 1 => Just(7usize), 1 => Just(17usize), 1 => Just(65usize)];
    prop_oneof![
        4 => (field.clone(), value()).prop_map(|(f, v)| Mutation::Set(f, v)),
        4 => (field.clone(), 0usize..8, value())
            .prop_map(|(f, i, v)| Mutation::SetElement(f, i, v)),
        6 => (field.clone(), 0usize..64, small())
            .prop_map(|(f, pick, v)| Mutation::Nudge(f, pick, v)),
        1 => (field.clone(), len.clone()).prop_map(|(f, n)| Mutation::Resize(f, n)),
        1 => len.prop_map(Mutation::ResizeLevels),
        1 => field.prop_map(Mutation::Remove),
    ]
}

/// A fixture and the mutations applied to it.
fn case(kind: &Kind) -> impl Strategy<Value = (usize, Vec<Mutation>)> + use<> {
    (
        0..kind.bases.len(),
        prop::collection::vec(mutation(&kind.fields), 1..=4),
    )
}

fn resize(v: &mut Value, n: usize) {
    match v {
        Value::Array(a) => {
            let last = a.last().cloned().unwrap_or(json!(1));
            a.resize(n, last);
        }
        other => *other = Value::Array(vec![other.clone(); n]),
    }
}

/// `v` changed to another value of its type (see [`Mutation::Nudge`]).
fn nudge(v: &mut Value, pick: usize, small: u64) {
    match v {
        Value::Array(a) if !a.is_empty() => {
            let len = a.len();
            nudge(&mut a[pick % len], pick / len, small);
        }
        Value::Bool(b) => *b = !*b,
        Value::String(s) => *s = STRINGS[pick % STRINGS.len()].to_string(),
        Value::Object(_) => {}
        other => *other = Value::from(small),
    }
}

/// The JSON of fixture `base` after `mutations`.
fn mutated(kind: &Kind, base: usize, mutations: &[Mutation]) -> String {
    let mut config = kind.bases[base].clone();
    let map = config.as_object_mut().expect("a config is an object");
    for m in mutations {
        match m {
            Mutation::Set(field, v) => {
                map.insert(field.clone(), v.clone());
            }
            Mutation::SetElement(field, i, v) => match map.get_mut(field) {
                Some(Value::Array(a)) if !a.is_empty() => {
                    let len = a.len();
                    a[i % len] = v.clone();
                }
                _ => {
                    map.insert(field.clone(), v.clone());
                }
            },
            Mutation::Nudge(field, pick, small) => {
                if let Some(v) = map.get_mut(field) {
                    nudge(v, *pick, *small);
                }
            }
            Mutation::Resize(field, n) => {
                if let Some(v) = map.get_mut(field) {
                    resize(v, *n);
                }
            }
            Mutation::ResizeLevels(n) => {
                for field in kind.level_lists {
                    if let Some(v @ Value::Array(_)) = map.get_mut(*field) {
                        resize(v, *n);
                    }
                }
            }
            Mutation::Remove(field) => {
                map.remove(field);
            }
        }
    }
    serde_json::to_string(&config).unwrap()
}

/// `field` is one of `fields`, possibly followed by `[i]` indices.
fn names_field(field: &str, fields: &[String]) -> bool {
    let top = field.split('[').next().unwrap_or_default();
    let mut rest = &field[top.len()..];
    while let Some(r) = rest.strip_prefix('[') {
        let Some((index, after)) = r.split_once(']') else {
            return false;
        };
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        rest = after;
    }
    rest.is_empty() && fields.iter().any(|f| f == top)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs `f`, turning an error or a panic into a failure that shows `json`.
fn guarded<R>(
    json: &str,
    what: &str,
    f: impl FnOnce() -> Result<R, String>,
) -> Result<R, TestCaseError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(message)) => Err(TestCaseError::fail(format!(
            "{what}: {message}\nconfig: {json}"
        ))),
        Err(panic) => Err(TestCaseError::fail(format!(
            "{what} panicked: {}\nconfig: {json}",
            panic_message(panic.as_ref())
        ))),
    }
}

/// The largest integer a config may hold in `field` for the model to be
/// built here (`None`: any; the field does not size a layer).
fn build_cap(field: &str) -> Option<u64> {
    match field {
        "sample_size"
        | "num_train_timesteps"
        | "addition_embed_type_num_heads"
        | "downsample_padding"
        | "pad_token_id"
        | "bos_token_id"
        | "eos_token_id" => None,
        "layers_per_block"
        | "transformer_layers_per_block"
        | "reverse_transformer_layers_per_block"
        | "num_hidden_layers"
        | "num_encoder_blocks"
        | "num_decoder_blocks"
        | "upsampling_scaling_factor" => Some(4),
        "conv_in_kernel" | "conv_out_kernel" => Some(7),
        // The pixel-unshuffle factor multiplies the input width by its square.
        "downscale_factor" => Some(8),
        "vocab_size" | "max_position_embeddings" | "num_class_embeds" => Some(4096),
        "time_embedding_dim"
        | "projection_class_embeddings_input_dim"
        | "time_cond_proj_dim"
        | "addition_time_embed_dim"
        | "cross_attention_dim"
        | "hidden_size"
        | "intermediate_size"
        | "projection_dim" => Some(256),
        // Channels, group and head counts.
        _ => Some(64),
    }
}

fn within(v: &Value, cap: u64, max_len: usize) -> bool {
    match v {
        Value::Number(n) => n.as_u64().is_none_or(|x| x <= cap),
        Value::Array(a) => a.len() <= max_len && a.iter().all(|x| within(x, cap, max_len)),
        _ => true,
    }
}

/// Whether an accepted config is small enough to build and run in
/// milliseconds: every width at most 64 (a few at most 256 or 4096), at most
/// 4 layers per block and 4 blocks.
fn buildable(kind: &Kind, config: &impl serde::Serialize) -> bool {
    let value = serde_json::to_value(config).unwrap();
    value.as_object().unwrap().iter().all(|(field, v)| {
        let max_len = if kind.level_lists.contains(&field.as_str()) {
            4
        } else {
            64
        };
        match build_cap(field) {
            Some(cap) => within(v, cap, max_len),
            None => true,
        }
    })
}

/// What happened to the cases of one run.
#[derive(Default)]
struct Tally {
    refused: Cell<usize>,
    accepted: Cell<usize>,
    too_large: Cell<usize>,
    built: Cell<usize>,
    input_errors: Cell<usize>,
}

fn bump(c: &Cell<usize>) {
    c.set(c.get() + 1);
}

/// Checks one generated config (see the module docs).
fn check_case<T: ModelConfig + PartialEq + Debug>(
    kind: &Kind,
    tally: &Tally,
    json: &str,
    run: fn(&T) -> Result<Outcome, String>,
    accessors: fn(&T) -> Result<(), String>,
) -> Result<(), TestCaseError> {
    let parsed = guarded(json, "parse_config", || Ok(parse_config::<T>(json, SOURCE)))?;
    let config = match parsed {
        Ok(loaded) => loaded.config,
        Err(ModelError::Config { field, message, .. }) => {
            bump(&tally.refused);
            if !names_field(&field, &kind.fields) {
                return Err(TestCaseError::fail(format!(
                    "refused without naming a field (field {field:?}): {message}\nconfig: {json}"
                )));
            }
            return Ok(());
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "refused with a non-config error: {e}\nconfig: {json}"
            )));
        }
    };
    bump(&tally.accepted);
    // What `diffuse convert` and the trainer save must load again.
    let saved = serde_json::to_string(&config).unwrap();
    match parse_config::<T>(&saved, "saved config.json") {
        Ok(again) if again.config == config => {}
        Ok(again) => {
            return Err(TestCaseError::fail(format!(
                "saved config reloads as {:?}\nconfig: {json}",
                again.config
            )));
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "saved config does not reload: {e}\nsaved: {saved}\nconfig: {json}"
            )));
        }
    }
    guarded(json, "config accessors", || accessors(&config))?;
    if !buildable(kind, &config) {
        bump(&tally.too_large);
        return Ok(());
    }
    match guarded(json, "build + forward", || run(&config))? {
        Outcome::Ran => bump(&tally.built),
        Outcome::InputError => {
            bump(&tally.built);
            bump(&tally.input_errors);
        }
        Outcome::Skipped => bump(&tally.too_large),
    }
    Ok(())
}

/// Generates `CASES` configs of `kind` and checks each.
fn fuzz<T: ModelConfig + PartialEq + Debug>(
    name: &str,
    kind: &Kind,
    run: fn(&T) -> Result<Outcome, String>,
    accessors: fn(&T) -> Result<(), String>,
) {
    // The fixtures themselves load and run.
    for (i, base) in kind.bases.iter().enumerate() {
        let json = serde_json::to_string(base).unwrap();
        let config = parse_config::<T>(&json, SOURCE)
            .unwrap_or_else(|e| panic!("{name} fixture {i}: {e}"))
            .config;
        assert!(buildable(kind, &config), "{name} fixture {i} is too large");
        assert_eq!(
            run(&config),
            Ok(Outcome::Ran),
            "{name} fixture {i} does not run"
        );
    }
    let tally = Tally::default();
    let result = runner().run(&case(kind), |(base, mutations)| {
        let json = mutated(kind, base, &mutations);
        check_case::<T>(kind, &tally, &json, run, accessors)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    println!(
        "{name}: {} refused, {} accepted ({} too large to build here), \
         {} built and run ({} refused their inputs)",
        tally.refused.get(),
        tally.accepted.get(),
        tally.too_large.get(),
        tally.built.get(),
        tally.input_errors.get(),
    );
    // The generator must reach the models, not only the parser.
    assert!(
        tally.built.get() > 0,
        "{name}: no generated config was built"
    );
}

// ----- Building and running ------------------------------------------------

/// What a forward did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Returned the expected shape.
    Ran,
    /// Refused an input by name.
    InputError,
    /// Not run: its output would be too large to be quick.
    Skipped,
}

fn loader() -> Loader<'static, B> {
    Loader::random(&Default::default(), Precision::F32)
}

/// Nothing to call without building.
fn no_accessors<T>(_: &T) -> Result<(), String> {
    Ok(())
}

/// What the tiling and the pipelines compute from a VAE config alone (a tile
/// too small for the latent grid is legal: only a tiled encode/decode
/// refuses it, naming its input).
fn kl_accessors(cfg: &AutoencoderKLConfig) -> Result<(), String> {
    let f = cfg.downscale_factor();
    let tile = cfg.sample_size.first().ok_or("no sample_size")?;
    if f == 0 || tile == 0 {
        return Err(format!("a {tile} tile at factor {f}"));
    }
    Ok(())
}

/// A validated config the loader refuses is a gap in `validate`.
fn built<M>(model: Result<M, ModelError>) -> Result<M, String> {
    model.map_err(|e| format!("validate accepted the config, load refused it: {e}"))
}

/// A tensor of deterministic values in `[-1, 1]`.
fn fill<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// `Ok(Some(y))`, `Ok(None)` for an input error naming the input, or a
/// failure for any other error.
fn forward_result<T>(r: Result<T, ModelError>) -> Result<Option<T>, String> {
    match r {
        Ok(y) => Ok(Some(y)),
        Err(ModelError::Input { name, .. }) if !name.is_empty() => Ok(None),
        Err(e) => Err(format!("forward failed with a non-input error: {e}")),
    }
}

fn expect_dims<const D: usize>(
    what: &str,
    got: [usize; D],
    want: [usize; D],
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what} has shape {got:?}, expected {want:?}"))
    }
}

/// A sample side the UNets and VAEs halve `levels - 1` times down to 2.
fn side(levels: usize) -> usize {
    2 << levels.saturating_sub(1)
}

fn run_unet_2d(cfg: &UNet2DConfig) -> Result<Outcome, String> {
    let dev = Default::default();
    let model = built(UNet2DModel::<B>::load(&loader(), cfg))?;
    let s = side(cfg.block_out_channels.len());
    let time_embed_dim = cfg
        .time_embedding_dim
        .unwrap_or(4 * cfg.block_out_channels[0]);
    let labels = match (cfg.class_embed_type.as_deref(), cfg.num_class_embeds) {
        (None, None) => None,
        (None, Some(_)) => Some(ClassLabels::Values(Tensor::from_floats([0.0], &dev))),
        (Some("identity"), _) => Some(ClassLabels::Vectors(fill([1, time_embed_dim]))),
        (Some(_), _) => Some(ClassLabels::Values(Tensor::from_floats([3.0], &dev))),
    };
    let y = model.forward(
        fill([1, cfg.in_channels, s, s]),
        Tensor::from_floats([10.0], &dev),
        labels,
    );
    let Some(y) = forward_result(y)? else {
        return Ok(Outcome::InputError);
    };
    expect_dims("the output", y.dims(), [1, cfg.out_channels, s, s])?;
    Ok(Outcome::Ran)
}

fn run_unet_2d_condition(cfg: &UNet2DConditionConfig) -> Result<Outcome, String> {
    let dev = Default::default();
    let model = built(UNet2DConditionModel::<B>::load(&loader(), cfg))?;
    let s = side(cfg.block_out_channels.len());
    let time_embed_dim = cfg
        .time_embedding_dim
        .unwrap_or(4 * cfg.block_out_channels[0]);
    let projection = cfg.projection_class_embeddings_input_dim.unwrap_or(1);
    let class_labels = match (cfg.class_embed_type.as_deref(), cfg.num_class_embeds) {
        (None, None) => None,
        (None, Some(_)) => Some(ClassLabels::Values(Tensor::from_floats([0.0], &dev))),
        (Some("timestep"), _) => Some(ClassLabels::Values(Tensor::from_floats([3.0], &dev))),
        (Some("identity"), _) => Some(ClassLabels::Vectors(fill([1, time_embed_dim]))),
        (Some(_), _) => Some(ClassLabels::Vectors(fill([1, projection]))),
    };
    // `text_time`: text features plus two time ids fill the projection's input.
    let (text_embeds, time_ids) = match (&cfg.addition_embed_type, cfg.addition_time_embed_dim) {
        (Some(_), Some(d)) => {
            let text = projection.saturating_sub(2 * d).max(1);
            (Some(fill([1, text])), Some(fill([1, 2]) * 100.0))
        }
        _ => (None, None),
    };
    let conditions = UNetConditions {
        text_embeds,
        time_ids,
        timestep_cond: cfg.time_cond_proj_dim.map(|d| fill([1, d])),
        class_labels,
        ..Default::default()
    };
    // With several cross-attention widths no single context fits: an input error.
    let context = model.cross_attention_dims.first().copied().unwrap_or(4);
    let y = model.forward(
        fill([1, cfg.in_channels, s, s]),
        Tensor::from_floats([10.0], &dev),
        fill([1, 3, context]),
        conditions,
    );
    let Some(y) = forward_result(y)? else {
        return Ok(Outcome::InputError);
    };
    expect_dims("the output", y.dims(), [1, cfg.out_channels, s, s])?;
    Ok(Outcome::Ran)
}

fn run_controlnet(cfg: &ControlNetConfig) -> Result<Outcome, String> {
    let f = cfg.conditioning_scale_factor();
    if f > 8 {
        return Ok(Outcome::Skipped);
    }
    let dev = Default::default();
    let model = built(ControlNetModel::<B>::load(&loader(), cfg))?;
    let n = cfg.block_out_channels.len();
    let s = side(n);
    let projection = cfg.projection_class_embeddings_input_dim.unwrap_or(1);
    let class_labels = match (cfg.class_embed_type.as_deref(), cfg.num_class_embeds) {
        (None, None) => None,
        (None, Some(_)) => Some(ClassLabels::Values(Tensor::from_floats([0.0], &dev))),
        (Some("timestep"), _) => Some(ClassLabels::Values(Tensor::from_floats([3.0], &dev))),
        (Some("identity"), _) => Some(ClassLabels::Vectors(fill([
            1,
            4 * cfg.block_out_channels[0],
        ]))),
        (Some(_), _) => Some(ClassLabels::Vectors(fill([1, projection]))),
    };
    let (text_embeds, time_ids) = match (&cfg.addition_embed_type, cfg.addition_time_embed_dim) {
        (Some(_), Some(d)) => {
            let text = projection.saturating_sub(2 * d).max(1);
            (Some(fill([1, text])), Some(fill([1, 2]) * 100.0))
        }
        _ => (None, None),
    };
    let conditions = UNetConditions {
        text_embeds,
        time_ids,
        class_labels,
        ..Default::default()
    };
    let context = model.cross_attention_dims.first().copied().unwrap_or(4);
    let out = model.forward(
        fill([1, cfg.in_channels, s, s]),
        Tensor::from_floats([10.0], &dev),
        fill([1, 3, context]),
        fill([1, cfg.conditioning_channels, s * f, s * f]),
        ResidualScale {
            conditioning_scale: 0.5,
            guess_mode: true,
        },
        &conditions,
    );
    let Some(out) = forward_result(out)? else {
        return Ok(Outcome::InputError);
    };
    // One residual per down-path state: conv_in's, each resnet's, each downsampler's.
    let states = 1 + cfg.layers_per_block * n + (n - 1);
    if out.down.len() != states {
        return Err(format!("{} residuals, expected {states}", out.down.len()));
    }
    let last = cfg.block_out_channels[n - 1];
    let mid = if cfg.global_pool_conditions {
        1
    } else {
        s >> (n - 1)
    };
    expect_dims("the middle residual", out.mid.dims(), [1, last, mid, mid])?;
    Ok(Outcome::Ran)
}

fn run_t2i_adapter(cfg: &T2IAdapterConfig) -> Result<Outcome, String> {
    let stages = cfg.channels.len() + usize::from(cfg.adapter_type == "light_adapter");
    if cfg.downscale_factor > 16 || stages > 6 {
        return Ok(Outcome::Skipped);
    }
    let model = built(T2IAdapter::<B>::load(&loader(), cfg))?;
    let s = cfg.downscale_factor << (stages - 1);
    let features = forward_result(model.forward(fill([1, cfg.in_channels, s, s])))?;
    let Some(features) = features else {
        return Ok(Outcome::InputError);
    };
    if features.len() != stages {
        return Err(format!(
            "{} feature maps, expected {stages}",
            features.len()
        ));
    }
    Ok(Outcome::Ran)
}

fn run_autoencoder_kl(cfg: &AutoencoderKLConfig) -> Result<Outcome, String> {
    let mut model = built(AutoencoderKL::<B>::load(&loader(), cfg))?;
    let levels = cfg.block_out_channels.len();
    let s = side(levels);
    let f = cfg.downscale_factor();
    let Some(y) = forward_result(model.forward(fill([1, cfg.in_channels, s, s]), None))? else {
        return Ok(Outcome::InputError);
    };
    expect_dims("the output", y.dims(), [1, cfg.out_channels, s, s])?;
    let z = fill([1, cfg.latent_channels, s / f, s / f]);
    let z = model.unscale_latents(model.scale_latents(z));
    expect_dims(
        "unscaled latents",
        z.dims(),
        [1, cfg.latent_channels, s / f, s / f],
    )?;
    // Tiled, when the tile (`sample_size`) is smaller than the input.
    if cfg.sample_size.first().is_some_and(|t| t < s) && levels <= 3 {
        model.enable_tiling();
        let Some(posterior) = forward_result(model.encode(fill([1, cfg.in_channels, s, s])))?
        else {
            return Ok(Outcome::InputError);
        };
        let [n, c, _, _] = posterior.mode().dims();
        expect_dims("the tiled latents", [n, c], [1, cfg.latent_channels])?;
        let Some(y) = forward_result(model.decode(z))? else {
            return Ok(Outcome::InputError);
        };
        let [n, c, _, _] = y.dims();
        expect_dims("the tiled decode", [n, c], [1, cfg.out_channels])?;
    }
    Ok(Outcome::Ran)
}

fn run_autoencoder_tiny(cfg: &AutoencoderTinyConfig) -> Result<Outcome, String> {
    let up = cfg.upsampling_scaling_factor;
    let decoder_stages = cfg.decoder_block_out_channels.len() as u32;
    // Latents 2×2 decode to this side; keep it small.
    let out_side = up.checked_pow(decoder_stages - 1).map(|f| 2 * f);
    let Some(out_side) = out_side.filter(|s| *s <= 64) else {
        return Ok(Outcome::Skipped);
    };
    let model = built(AutoencoderTiny::<B>::load(&loader(), cfg))?;
    let s = side(cfg.encoder_block_out_channels.len());
    let Some(z) = forward_result(model.encode(fill([1, cfg.in_channels, s, s])))? else {
        return Ok(Outcome::InputError);
    };
    expect_dims("the latents", z.dims(), [1, cfg.latent_channels, 2, 2])?;
    let Some(y) = forward_result(model.decode(fill([1, cfg.latent_channels, 2, 2])))? else {
        return Ok(Outcome::InputError);
    };
    expect_dims(
        "the decoded image",
        y.dims(),
        [1, cfg.out_channels, out_side, out_side],
    )?;
    Ok(Outcome::Ran)
}

fn run_clip(cfg: &CLIPTextConfig) -> Result<Outcome, String> {
    let vocab = cfg.vocab_size;
    let l = cfg.max_position_embeddings.min(3);
    // Ids below the vocabulary, ending with its last (the legacy end-of-text).
    let mut ids: Vec<u32> = (0..l).map(|i| ((i + 1) % vocab) as u32).collect();
    ids[l - 1] = (vocab - 1) as u32;
    let (out, projection): (Option<CLIPTextOutput<B>>, _) = match cfg.projection_dim {
        Some(p) => {
            let model = built(CLIPTextModelWithProjection::<B>::load(&loader(), cfg))?;
            (forward_result(model.forward_ids(&[ids]))?, Some(p))
        }
        None => {
            let model = built(CLIPTextModel::<B>::load(&loader(), cfg))?;
            (forward_result(model.forward_ids(&[ids]))?, None)
        }
    };
    let Some(out) = out else {
        return Ok(Outcome::InputError);
    };
    let h = cfg.hidden_size;
    expect_dims("last_hidden_state", out.last_hidden_state.dims(), [1, l, h])?;
    expect_dims("pooler_output", out.pooler_output.dims(), [1, h])?;
    if out.hidden_states.len() != cfg.num_hidden_layers + 1 {
        return Err(format!(
            "{} hidden states for {} layers",
            out.hidden_states.len(),
            cfg.num_hidden_layers
        ));
    }
    // What SDXL conditions on.
    expect_dims("the penultimate state", out.penultimate().dims(), [1, l, h])?;
    if let Some(p) = projection {
        let embeds = out.text_embeds.ok_or("no text_embeds")?;
        expect_dims("text_embeds", embeds.dims(), [1, p])?;
    }
    Ok(Outcome::Ran)
}

// ----- The tests -----------------------------------------------------------

#[test]
fn unet_2d_configs() {
    let kind = Kind::new::<UNet2DConfig>(
        &["unet/ddpm_attn", "unet/ddpm_class", "unet/ddpm_scale_shift"],
        &["block_out_channels", "down_block_types", "up_block_types"],
    );
    fuzz::<UNet2DConfig>("UNet2DConfig", &kind, run_unet_2d, no_accessors);
}

#[test]
fn unet_2d_condition_configs() {
    let kind = Kind::new::<UNet2DConditionConfig>(
        &[
            "unet/sd1",
            "unet/sd2",
            "unet/sdxl",
            "unet/lcm",
            "unet/odd_size",
        ],
        &[
            "block_out_channels",
            "down_block_types",
            "up_block_types",
            "attention_head_dim",
            "cross_attention_dim",
            "layers_per_block",
            "only_cross_attention",
            "transformer_layers_per_block",
            "reverse_transformer_layers_per_block",
        ],
    );
    fuzz::<UNet2DConditionConfig>(
        "UNet2DConditionConfig",
        &kind,
        run_unet_2d_condition,
        no_accessors,
    );
}

#[test]
fn controlnet_configs() {
    let kind = Kind::new::<ControlNetConfig>(
        &["controlnet/sd1", "controlnet/sdxl", "controlnet/pool"],
        &[
            "block_out_channels",
            "down_block_types",
            "attention_head_dim",
            "only_cross_attention",
            "transformer_layers_per_block",
        ],
    );
    fuzz::<ControlNetConfig>("ControlNetConfig", &kind, run_controlnet, no_accessors);
}

#[test]
fn t2i_adapter_configs() {
    let kind = Kind::new::<T2IAdapterConfig>(
        &["t2i_adapter/full", "t2i_adapter/xl", "t2i_adapter/light"],
        &["channels"],
    );
    fuzz::<T2IAdapterConfig>("T2IAdapterConfig", &kind, run_t2i_adapter, no_accessors);
}

#[test]
fn autoencoder_kl_configs() {
    let kind = Kind::new::<AutoencoderKLConfig>(
        &["vae/kl", "vae/kl_flux", "vae/kl_sdxl"],
        &["block_out_channels", "down_block_types", "up_block_types"],
    );
    fuzz::<AutoencoderKLConfig>(
        "AutoencoderKLConfig",
        &kind,
        run_autoencoder_kl,
        kl_accessors,
    );
}

#[test]
fn autoencoder_tiny_configs() {
    let kind = Kind::new::<AutoencoderTinyConfig>(
        &["vae/taesd", "vae/taesd_tiled"],
        &[
            "encoder_block_out_channels",
            "decoder_block_out_channels",
            "num_encoder_blocks",
            "num_decoder_blocks",
            "block_out_channels",
        ],
    );
    fuzz::<AutoencoderTinyConfig>(
        "AutoencoderTinyConfig",
        &kind,
        run_autoencoder_tiny,
        no_accessors,
    );
}

#[test]
fn clip_text_configs() {
    let kind = Kind::new::<CLIPTextConfig>(
        &["clip/sd1", "clip/sd2", "clip/sdxl2", "clip/unprefixed"],
        &[],
    );
    fuzz::<CLIPTextConfig>("CLIPTextConfig", &kind, run_clip, no_accessors);
}

#[test]
fn field_names_are_checked() {
    let fields = ["block_out_channels".to_string(), "act_fn".to_string()];
    for ok in ["act_fn", "block_out_channels", "block_out_channels[2]"] {
        assert!(names_field(ok, &fields), "{ok}");
    }
    for bad in [
        "",
        "norm_num_groups",
        "act_fn (the head count)",
        "block_out_channels[]",
        "block_out_channels[x]",
        "block_out_channels.0",
    ] {
        assert!(!names_field(bad, &fields), "{bad}");
    }
}
