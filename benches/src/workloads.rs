//! The workloads of one preset on backend `B`, timed.

use crate::args::Args;
use crate::memory::{device_reserved_mib, host_peak_mib, reset_host_peak};
use crate::{BenchError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use diffusion_hub::tokenizer::ClipTokenizer;
use diffusion_models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use diffusion_models::clip::{CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection};
use diffusion_models::config::{ModelConfig, parse_config};
use diffusion_models::controlnet::{ControlNetConfig, ControlNetModel, ResidualScale};
use diffusion_models::formulation::{AttentionFormulation, ConvFormulation, Formulation};
use diffusion_models::profile;
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_models::{Loader, Precision};
use diffusion_pipelines::components::build_scheduler;
use diffusion_pipelines::text::{TextEncoder, TextModel};
use diffusion_pipelines::{Generator, Latents, Params, StableDiffusion, Task};
use diffusion_schedulers::{
    NoNoise, NoiseSource, SCHEDULER_CLASSES, SchedulerError, StepOptions, from_config_as,
};
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The prompt of every text and pipeline workload (both sides).
pub const PROMPT: &str = "An image of a squirrel in Picasso style";
/// Token ids of the text workload: start, a few words, end, end-padding (both sides).
pub fn text_ids() -> Vec<i64> {
    let mut ids = vec![49406, 550, 2867, 539, 320, 14004, 530, 15749, 1844, 49407];
    ids.resize(77, 49407);
    ids
}

/// One entry of `benches/presets.json`.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: String,
    pub unet: PathBuf,
    pub vae: PathBuf,
    pub text_encoder: PathBuf,
    pub text_encoder_2: Option<PathBuf>,
    pub scheduler: PathBuf,
    pub latent: usize,
}

impl Preset {
    pub fn load(root: &Path, name: &str) -> Result<Self> {
        let path = root.join("benches/presets.json");
        let all: Value = read_json(&path)?;
        let p = all
            .get(name)
            .filter(|_| !name.starts_with('_'))
            .ok_or_else(|| {
                let known: Vec<&str> = all
                    .as_object()
                    .map(|o| {
                        o.keys()
                            .map(String::as_str)
                            .filter(|k| !k.starts_with('_'))
                            .collect()
                    })
                    .unwrap_or_default();
                BenchError::Usage(format!(
                    "--preset {name}: not in {} (known: {})",
                    path.display(),
                    known.join(", ")
                ))
            })?;
        let file = |key: &str| -> Result<Option<PathBuf>> {
            match p.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(root.join(s))),
                Some(v) => Err(BenchError::Invalid {
                    what: format!("{}: {name}.{key}", path.display()),
                    reason: format!("expected a path, got {v}"),
                }),
            }
        };
        let need = |key: &str| -> Result<PathBuf> {
            file(key)?.ok_or_else(|| BenchError::Invalid {
                what: format!("{}: {name}.{key}", path.display()),
                reason: "missing".into(),
            })
        };
        let latent = p
            .get("latent")
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .ok_or_else(|| BenchError::Invalid {
                what: format!("{}: {name}.latent", path.display()),
                reason: "expected a latent side > 0".into(),
            })? as usize;
        Ok(Preset {
            name: name.to_string(),
            unet: need("unet")?,
            vae: need("vae")?,
            text_encoder: need("text_encoder")?,
            text_encoder_2: file("text_encoder_2")?,
            scheduler: need("scheduler")?,
            latent,
        })
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| BenchError::Invalid {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn config<T: ModelConfig>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_config::<T>(&text, &path.display().to_string())?.config)
}

/// The CLIP tokenizer folders both sides read (`tokenizer`, and SDXL's
/// `tokenizer_2` with `!` as padding), written from open-clip's vocabulary
/// file in the repository.
pub fn write_tokenizers(root: &Path) -> Result<PathBuf> {
    let out = root.join("target/bench/tokenizers");
    let gz =
        root.join("crates/diffusion-hub/tests/fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| BenchError::Io { path, source }
    };
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz).map_err(io(&gz))?)
        .read_to_string(&mut text)
        .map_err(io(&gz))?;
    for (dir, pad) in [("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")] {
        let dir = out.join(dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        diffusion_hub::tokenizer::write_clip_vocab_files(&text, &gz, &dir)?;
        let cfg = json!({
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": pad,
            "model_max_length": 77,
            "do_lower_case": true,
            "tokenizer_class": "CLIPTokenizer",
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, cfg.to_string()).map_err(io(&path))?;
    }
    Ok(out)
}

/// Attaches adapter `bench`, rank `rank`, to every attention projection
/// (`to_q`, `to_k`, `to_v`, `to_out.0`: the training scripts' targets) with
/// small pseudo-random factors; how many layers it adapts.
fn attach_random_lora<B: Backend>(unet: &UNet2DConditionModel<B>, rank: usize) -> Result<usize> {
    use diffusion_models::adapter::{Delta, HostTensor, LayerDelta, LayerShape};
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
            })
            .collect()
    };
    let targets = [".to_q", ".to_k", ".to_v", ".to_out.0"];
    let mut entries = Vec::new();
    for (key, layer) in unet.adapters.layers() {
        let LayerShape::Linear {
            in_features,
            out_features,
        } = layer.shape
        else {
            continue;
        };
        if !targets.iter().any(|t| key.ends_with(t)) {
            continue;
        }
        entries.push(LayerDelta {
            layer: key,
            delta: Delta::LowRank {
                down: HostTensor::new(vec![rank, in_features], values(rank * in_features)),
                up: HostTensor::new(vec![out_features, rank], values(out_features * rank)),
                mid: None,
            },
            scale: 1.0,
        });
    }
    let n = entries.len();
    unet.adapters.attach("bench", entries)?;
    Ok(n)
}

fn sync<B: Backend>(device: &B::Device) {
    let _ = B::sync(device);
}

/// First call apart, then `runs` timed calls, each ending with a device sync.
fn measure<B: Backend + 'static>(
    device: &B::Device,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Value> {
    sync::<B>(device);
    reset_host_peak();
    let t0 = Instant::now();
    f()?;
    sync::<B>(device);
    let first = t0.elapsed().as_secs_f64() * 1e3;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        sync::<B>(device);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        0.5 * (ms[ms.len() / 2 - 1] + ms[ms.len() / 2])
    };
    Ok(json!({
        "first_ms": first,
        "median_ms": median,
        "min_ms": ms[0],
        "max_ms": ms[ms.len() - 1],
        "runs": runs,
        "host_peak_mib": host_peak_mib(),
        "device_mib": device_reserved_mib::<B>(device),
    }))
}

/// Hands out the same noise tensor at every draw (the steps' own cost is
/// timed, not the generator's).
struct SameNoise<B: Backend>(Latents<B, 4>);

impl<B: Backend> NoiseSource<Latents<B, 4>> for SameNoise<B> {
    fn noise(
        &mut self,
        _like: &Latents<B, 4>,
    ) -> std::result::Result<Latents<B, 4>, SchedulerError> {
        Ok(self.0.clone())
    }
}

/// One `step` of every scheduler class (built from the preset's scheduler
/// config) on the latent the pipeline steps (batch 1), `--runs` times after
/// ten untimed steps that fill a multistep history, each as the pipeline
/// calls it (`prev_sample` only). With `unet_ms` (a `unet` forward of the
/// same run), each step's share of it.
fn scheduler_steps<B: Backend + 'static>(
    args: &Args,
    preset: &Preset,
    unet_ms: Option<f64>,
    device: &B::Device,
) -> Result<Vec<Value>> {
    let base = read_json(&preset.scheduler)?;
    let shape = [1, 4, preset.latent, preset.latent];
    let normal = Distribution::Normal(0.0, 1.0);
    let dtype = args.precision.dtype();
    let random = || Latents(Tensor::<B, 4>::random(shape, normal, (device, dtype)));
    let (x, eps) = (random(), random());
    let options = StepOptions {
        pred_original_sample: Some(false),
        ..StepOptions::default()
    };
    let mut rows = Vec::new();
    for class in SCHEDULER_CLASSES {
        let mut scheduler = match from_config_as::<Latents<B, 4>>(class, &base) {
            Ok(loaded) => loaded.scheduler,
            Err(e) => {
                eprintln!("  {class}: not built from the preset's config ({e})");
                continue;
            }
        };
        scheduler.set_timesteps(10 + 2 * (args.runs + 1))?;
        let timesteps = scheduler.timesteps().to_vec();
        let mut noise = SameNoise(random());
        let mut next = timesteps.iter().copied();
        let mut step = || -> Result<()> {
            let t = next.next().ok_or_else(|| BenchError::Invalid {
                what: class.to_string(),
                reason: "ran out of timesteps".into(),
            })?;
            scheduler.step(&eps, t, &x, &options, &mut noise)?;
            Ok(())
        };
        for _ in 0..10 {
            step()?;
        }
        let mut row = measure::<B>(device, args.runs, &mut step)?;
        let median = row["median_ms"].as_f64().unwrap_or(f64::NAN);
        row["class"] = json!(class);
        if let Some(unet) = unet_ms {
            row["share_of_unet"] = json!(median / unet);
        }
        eprintln!(
            "  {class:<34} {median:>9.3} ms{}",
            unet_ms.map_or(String::new(), |u| format!(
                "  {:>8.4}% of a unet forward",
                100.0 * median / u
            ))
        );
        rows.push(row);
    }
    Ok(rows)
}

/// Models of a preset, loaded on first use.
struct Models<B: Backend> {
    unet: Option<(UNet2DConditionModel<B>, UNet2DConditionConfig)>,
    vae: Option<AutoencoderKL<B>>,
    text: Option<CLIPTextModel<B>>,
    text_2: Option<CLIPTextModelWithProjection<B>>,
}

/// Latents, timesteps, text states and extra conditions of one UNet call.
type UNetInputs<B> = (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 3>, UNetConditions<B>);

fn unet_inputs<B: Backend>(
    cfg: &UNet2DConditionConfig,
    batch: usize,
    latent: usize,
    precision: Precision,
    device: &B::Device,
) -> Result<UNetInputs<B>> {
    let dtype = precision.dtype();
    let normal = Distribution::Normal(0.0, 1.0);
    let sample = Tensor::<B, 4>::random(
        [batch, cfg.in_channels, latent, latent],
        normal,
        (device, dtype),
    );
    let cross = cfg
        .cross_attention_dim
        .get(0)
        .ok_or_else(|| BenchError::Invalid {
            what: "UNet config cross_attention_dim".into(),
            reason: "missing".into(),
        })?;
    let context = Tensor::<B, 3>::random([batch, 77, cross], normal, (device, dtype));
    let t = Tensor::<B, 1>::from_floats(vec![500.0f32; batch].as_slice(), device);
    let mut cond = UNetConditions::default();
    if cfg.addition_embed_type.as_deref() == Some("text_time") {
        let invalid = |f: &str| BenchError::Invalid {
            what: format!("UNet config {f}"),
            reason: "needed for text_time conditioning".into(),
        };
        let time_dim = cfg
            .addition_time_embed_dim
            .ok_or_else(|| invalid("addition_time_embed_dim"))?;
        let total = cfg
            .projection_class_embeddings_input_dim
            .ok_or_else(|| invalid("projection_class_embeddings_input_dim"))?;
        let pooled = total.checked_sub(6 * time_dim).ok_or_else(|| {
            invalid("projection_class_embeddings_input_dim (< 6 · addition_time_embed_dim)")
        })?;
        let side = (latent * 8) as f32;
        cond.text_embeds = Some(Tensor::random([batch, pooled], normal, (device, dtype)));
        cond.time_ids = Some(
            Tensor::<B, 1>::from_floats([side, side, 0.0, 0.0, side, side], device)
                .unsqueeze::<2>()
                .repeat_dim(0, batch),
        );
    }
    Ok((sample, t, context, cond))
}

fn vae_factor(cfg: &AutoencoderKLConfig) -> usize {
    1 << cfg.block_out_channels.len().saturating_sub(1)
}

/// Runs the requested components of preset `name` on `B`; one JSON row each.
pub fn run_preset<B: Backend + 'static>(args: &Args, name: &str) -> Result<Vec<Value>> {
    let preset = Preset::load(&args.root, name)?;
    let device = B::Device::default();
    B::seed(&device, 0);
    let precision = args.precision;
    let loader = || Loader::random(&device, precision).with_formulation(args.formulation);
    let mut models = Models::<B> {
        unet: None,
        vae: None,
        text: None,
        text_2: None,
    };
    let mut rows: Vec<Value> = Vec::new();
    let mut load_ms = 0.0;
    let mut timed_load = |f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        f()?;
        sync::<B>(&device);
        load_ms += t.elapsed().as_secs_f64() * 1e3;
        Ok(())
    };
    // Load what the components need.
    let needs = |c: &[&str]| args.components.iter().any(|x| c.contains(&x.as_str()));
    if needs(&[
        "unet",
        "unet-lora",
        "unet-controlnet",
        "pipeline",
        "profile",
        "ops",
    ]) {
        timed_load(&mut || {
            let cfg: UNet2DConditionConfig = config(&preset.unet)?;
            let m = UNet2DConditionModel::<B>::load(&loader(), &cfg)?;
            models.unet = Some((m, cfg));
            Ok(())
        })?;
    }
    if needs(&["vae-decode", "vae-encode", "pipeline"]) {
        timed_load(&mut || {
            let mut cfg: AutoencoderKLConfig = config(&preset.vae)?;
            // As the pipelines: only SDXL honours force_upcast (diffusers' SD
            // 1.x pipelines run their VAE in f16).
            cfg.force_upcast &= preset.text_encoder_2.is_some();
            models.vae = Some(AutoencoderKL::<B>::load(&loader(), &cfg)?);
            Ok(())
        })?;
    }
    if needs(&["text", "pipeline"]) {
        timed_load(&mut || {
            let cfg: CLIPTextConfig = config(&preset.text_encoder)?;
            models.text = Some(CLIPTextModel::<B>::load(&loader(), &cfg)?);
            if let Some(p2) = &preset.text_encoder_2 {
                let cfg: CLIPTextConfig = config(p2)?;
                models.text_2 = Some(CLIPTextModelWithProjection::<B>::load(&loader(), &cfg)?);
            }
            Ok(())
        })?;
    }
    eprintln!("[{name}] models built with random weights in {load_ms:.0} ms");

    for component in &args.components {
        eprintln!("[{name}] {component} ...");
        let row = match component.as_str() {
            "unet" => {
                let (unet, cfg) = models.unet.as_ref().expect("loaded above");
                let (x, t, ctx, cond) =
                    unet_inputs::<B>(cfg, args.batch, preset.latent, precision, &device)?;
                measure::<B>(&device, args.runs, || {
                    unet.forward(x.clone(), t.clone(), ctx.clone(), cond.clone())?;
                    Ok(())
                })?
            }
            "unet-lora" => {
                let (unet, cfg) = models.unet.as_ref().expect("loaded above");
                let layers = attach_random_lora(unet, args.lora_rank)?;
                eprintln!(
                    "[{name}] rank-{} LoRA on {layers} attention projections",
                    args.lora_rank
                );
                let (x, t, ctx, cond) =
                    unet_inputs::<B>(cfg, args.batch, preset.latent, precision, &device)?;
                let row = measure::<B>(&device, args.runs, || {
                    unet.forward(x.clone(), t.clone(), ctx.clone(), cond.clone())?;
                    Ok(())
                });
                unet.adapters.remove("bench")?;
                let mut row = row?;
                row["lora_rank"] = json!(args.lora_rank);
                row["lora_layers"] = json!(layers);
                row
            }
            "train-lora" | "train-full" | "train-lora-checkpointing" => {
                let cfg: UNet2DConditionConfig = config(&preset.unet)?;
                let time = |f: &mut dyn FnMut() -> Result<()>| measure::<B>(&device, args.runs, f);
                crate::training::train_component::<B>(component, &cfg, args, preset.latent, time)?
            }
            "unet-controlnet" => {
                // A ControlNet made from the UNet (SD's conditioning
                // embedding), its residuals into the UNet: one guided step.
                let (unet, cfg) = models.unet.as_ref().expect("loaded above");
                let cn_cfg = ControlNetConfig::from_unet(cfg, "rgb", vec![16, 32, 96, 256], 3)?;
                let net = ControlNetModel::<B>::load(&loader(), &cn_cfg)?;
                let (x, t, ctx, cond) =
                    unet_inputs::<B>(cfg, args.batch, preset.latent, precision, &device)?;
                let side = preset.latent * cn_cfg.conditioning_scale_factor();
                let image = Tensor::<B, 4>::random(
                    [args.batch, 3, side, side],
                    Distribution::Uniform(0.0, 1.0),
                    (&device, precision.dtype()),
                );
                let scale = ResidualScale {
                    conditioning_scale: 1.0,
                    guess_mode: false,
                };
                measure::<B>(&device, args.runs, || {
                    let out = net.forward(
                        x.clone(),
                        t.clone(),
                        ctx.clone(),
                        image.clone(),
                        scale,
                        &cond,
                    )?;
                    let mut with = cond.clone();
                    with.down_block_additional_residuals = Some(out.down);
                    with.mid_block_additional_residual = Some(out.mid);
                    unet.forward(x.clone(), t.clone(), ctx.clone(), with)?;
                    Ok(())
                })?
            }
            "vae-decode" => {
                let vae = models.vae.as_ref().expect("loaded above");
                let z = Tensor::<B, 4>::random(
                    [1, vae.config.latent_channels, preset.latent, preset.latent],
                    Distribution::Normal(0.0, 1.0),
                    (&device, precision.dtype()),
                );
                measure::<B>(&device, args.runs, || {
                    vae.decode(z.clone())?;
                    Ok(())
                })?
            }
            "vae-encode" => {
                let vae = models.vae.as_ref().expect("loaded above");
                let side = preset.latent * vae_factor(&vae.config);
                let image = Tensor::<B, 4>::random(
                    [1, vae.config.in_channels, side, side],
                    Distribution::Uniform(-1.0, 1.0),
                    (&device, precision.dtype()),
                );
                measure::<B>(&device, args.runs, || {
                    let _ = vae.encode(image.clone())?.mean;
                    Ok(())
                })?
            }
            "text" => {
                let ids = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(text_ids().repeat(args.batch), [args.batch, 77]),
                    &device,
                );
                let text = models.text.as_ref().expect("loaded above");
                let text_2 = models.text_2.as_ref();
                measure::<B>(&device, args.runs, || {
                    text.forward(ids.clone())?;
                    if let Some(t2) = text_2 {
                        t2.forward(ids.clone())?;
                    }
                    Ok(())
                })?
            }
            "scheduler" => {
                let mut cfg = read_json(&preset.scheduler)?;
                cfg["_class_name"] = json!("DDIMScheduler");
                let mut scheduler = build_scheduler::<B>(&cfg, None)?;
                scheduler.set_timesteps(50)?;
                let t = scheduler.timesteps()[10];
                let shape = [1, 4, preset.latent, preset.latent];
                let normal = Distribution::Normal(0.0, 1.0);
                let dtype = precision.dtype();
                let x = Latents(Tensor::<B, 4>::random(shape, normal, (&device, dtype)));
                let eps = Latents(Tensor::<B, 4>::random(shape, normal, (&device, dtype)));
                measure::<B>(&device, args.runs, || {
                    scheduler.step(&eps, t, &x, &StepOptions::default(), &mut NoNoise)?;
                    Ok(())
                })?
            }
            "steps" => {
                let unet_ms = rows
                    .iter()
                    .find(|r| r["component"] == "unet")
                    .and_then(|r| r["median_ms"].as_f64());
                let steps = scheduler_steps::<B>(args, &preset, unet_ms, &device)?;
                json!({ "schedulers": steps, "unet_median_ms": unet_ms })
            }
            "pipeline" => {
                let mut sd = pipeline::<B>(args, &preset, &mut models, &device)?;
                let side = preset.latent * vae_factor(&sd.vae.config);
                let result = measure::<B>(&device, args.pipeline_runs(), || {
                    let out = sd.run(
                        Task::TextToImage,
                        Params {
                            prompt: vec![PROMPT.into()],
                            num_inference_steps: Some(args.steps),
                            guidance_scale: Some(7.5),
                            height: Some(side),
                            width: Some(side),
                            generator: Some(Generator::Seed(0)),
                            progress: false,
                            ..Params::default()
                        },
                    )?;
                    if out.images.is_none() {
                        return Err(BenchError::Invalid {
                            what: "pipeline".into(),
                            reason: "returned no images".into(),
                        });
                    }
                    Ok(())
                });
                // Give the models back for the components after this one.
                models.unet = Some((sd.unet, sd.unet_config));
                models.vae = Some(sd.vae);
                if let Some(TextEncoder {
                    model: TextModel::Plain(m),
                    ..
                }) = sd.text_encoder
                {
                    models.text = Some(m);
                }
                if let Some(TextEncoder {
                    model: TextModel::WithProjection(m),
                    ..
                }) = sd.text_encoder_2
                {
                    models.text_2 = Some(m);
                }
                result?
            }
            "profile" => {
                let (unet, cfg) = models.unet.as_ref().expect("loaded above");
                profile_unet::<B>(args, unet, cfg, &preset, &device)?
            }
            "ops" => {
                let (unet, cfg) = models.unet.as_ref().expect("loaded above");
                let mut row = crate::ops::run::<B>(
                    &device,
                    precision,
                    args.batch,
                    preset.latent,
                    &cfg.block_out_channels,
                    args.runs,
                )?;
                // The whole UNet forward under each formulation: a UNet built
                // with it (the loaded one where it already is).
                let (x, t, ctx, cond) =
                    unet_inputs::<B>(cfg, args.batch, preset.latent, precision, &device)?;
                let mut variants = Vec::new();
                for attention in [
                    AttentionFormulation::Fused,
                    AttentionFormulation::Matmul,
                    AttentionFormulation::Tiled,
                ] {
                    for conv in [ConvFormulation::Direct, ConvFormulation::Im2col] {
                        let formulation = Formulation {
                            attention,
                            conv,
                            ..args.formulation
                        };
                        let built;
                        let variant = if formulation == args.formulation {
                            unet
                        } else {
                            let loader = Loader::random(&device, precision);
                            built = UNet2DConditionModel::<B>::load(
                                &loader.with_formulation(formulation),
                                cfg,
                            )?;
                            &built
                        };
                        let mut m = measure::<B>(&device, args.runs, || {
                            variant.forward(x.clone(), t.clone(), ctx.clone(), cond.clone())?;
                            Ok(())
                        })?;
                        m["attention"] = json!(attention.name());
                        m["conv"] = json!(conv.name());
                        eprintln!("  unet with {attention} attention, {conv} conv: {m}");
                        variants.push(m);
                    }
                }
                row["unet_variants"] = json!(variants);
                row
            }
            other => unreachable!("component {other} validated in args"),
        };
        let mut row = row;
        row["side"] = json!("rust");
        row["preset"] = json!(name);
        row["component"] = json!(component);
        if component == "pipeline" {
            row["steps"] = json!(args.steps);
        }
        eprintln!("[{name}] {component}: {row}");
        rows.push(row);
    }
    Ok(rows)
}

/// The SD / SDXL pipeline over the preset's models.
fn pipeline<B: Backend + 'static>(
    args: &Args,
    preset: &Preset,
    models: &mut Models<B>,
    device: &B::Device,
) -> Result<StableDiffusion<B>> {
    let dirs = write_tokenizers(&args.root)?;
    let (unet, unet_config) = models.unet.take().expect("loaded above");
    let scheduler_config = read_json(&preset.scheduler)?;
    let xl = models.text_2.is_some();
    Ok(StableDiffusion {
        text_encoder: Some(TextEncoder {
            tokenizer: ClipTokenizer::from_dir(dirs.join("tokenizer"))?,
            model: TextModel::Plain(models.text.take().expect("loaded above")),
        }),
        text_encoder_2: match models.text_2.take() {
            Some(m) => Some(TextEncoder {
                tokenizer: ClipTokenizer::from_dir(dirs.join("tokenizer_2"))?,
                model: TextModel::WithProjection(m),
            }),
            None => None,
        },
        unet,
        unet_config,
        vae: models.vae.take().expect("loaded above"),
        controlnets: Vec::new(),
        adapters: Vec::new(),
        scheduler: build_scheduler(&scheduler_config, None)?,
        scheduler_config,
        xl,
        force_zeros_for_empty_prompt: xl,
        requires_aesthetics_score: false,
        device: device.clone(),
        name: format!("{}-random", preset.name),
    })
}

/// One UNet forward with per-op timing, after two warm-up calls; the table
/// by op kind and the largest single labels.
fn profile_unet<B: Backend + 'static>(
    args: &Args,
    unet: &UNet2DConditionModel<B>,
    cfg: &UNet2DConditionConfig,
    preset: &Preset,
    device: &B::Device,
) -> Result<Value> {
    let (x, t, ctx, cond) =
        unet_inputs::<B>(cfg, args.batch, preset.latent, args.precision, device)?;
    let forward = || -> Result<()> {
        unet.forward(x.clone(), t.clone(), ctx.clone(), cond.clone())?;
        sync::<B>(device);
        Ok(())
    };
    forward()?;
    forward()?;
    let t0 = Instant::now();
    forward()?;
    let plain_ms = t0.elapsed().as_secs_f64() * 1e3;
    let _ = profile::take();
    profile::set_enabled(true);
    let t0 = Instant::now();
    let result = forward();
    profile::set_enabled(false);
    let profiled_ms = t0.elapsed().as_secs_f64() * 1e3;
    result?;
    let rows = profile::take();
    let total: f64 = rows.iter().map(|r| r.1.seconds).sum::<f64>() * 1e3;
    let entry = |(label, e): &(String, profile::Entry)| {
        json!({"op": label, "calls": e.calls, "ms": e.seconds * 1e3,
               "share": e.seconds * 1e3 / profiled_ms})
    };
    Ok(json!({
        "median_ms": plain_ms,
        "unprofiled_ms": plain_ms,
        "profiled_ms": profiled_ms,
        "attributed_ms": total,
        "unattributed_ms": profiled_ms - total,
        "by_kind": profile::by_kind(&rows).iter().map(entry).collect::<Vec<_>>(),
        "top_ops": rows.iter().take(30).map(entry).collect::<Vec<_>>(),
    }))
}
