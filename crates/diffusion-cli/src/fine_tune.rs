//! Fine-tuning a Stable Diffusion 1.x/2.x/XL UNet on captioned images:
//! `diffuse train-lora` is diffusers' `train_text_to_image_lora.py` (and
//! `train_dreambooth_lora.py` with an instance folder and prompt),
//! `diffuse train-text-to-image` is `train_text_to_image.py` (every UNet
//! weight, optional EMA).
//!
//! The flags keep the scripts' names (with dashes) and defaults. Outputs in
//! `--output-dir`: `pytorch_lora_weights.safetensors` (diffusers'
//! `save_lora_weights` format: `diffuse generate --lora` and diffusers'
//! `load_lora_weights` read it; with `--output-kohya-format` also
//! `pytorch_lora_weights_kohya.safetensors` for A1111/ComfyUI) or, for a full fine-tune, a pipeline folder
//! (the base's components with the trained `unet/`); `checkpoint-N/` folders
//! (`--resume-from-checkpoint`), `validation/step-N.png` grids for
//! `--validation-prompt`, and the loss curve (`loss.csv`, `loss.png`).
//! Every file is written atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::ArgMatches;
use diffusion_hub::resolve::{Resolved, resolve};
use diffusion_models::LoraFactors;
use diffusion_models::trainable_lora::LoraConfig;
use diffusion_models::unet_2d_condition::UNet2DConditionModel;
use diffusion_pipelines::components::open_component_weights;
use diffusion_pipelines::image::write_atomic;
use diffusion_pipelines::lora::{Component, MissingComponent};
use diffusion_pipelines::training::{
    AdamWConfig, BatchSampler, CaptionedDataset, Captions, Crop, EmaConfig, Interpolation,
    LatentCache, LoraLayers, LrSchedule, LrScheduleKind, MixedPrecision, Objective, PredictionType,
    StepStats, TextToImageBatches, TrainConfig, Trainer, build_model, config_json,
    save_lora_weights, save_lora_weights_kohya, save_model_folder,
};
use diffusion_pipelines::{
    DiffusionPipeline, Generator, LoadOptions, Params, PipelineError, StableDiffusion, Task,
};
use serde_json::{Value, json};

use crate::error::{CliError, Result, usage};
use crate::model::HubArgs;
use crate::train::{
    Summary, latest_checkpoint, nullable_rows, progress, prune_checkpoints,
    remove_stale_temporaries, write_losses,
};

/// What a run trains.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// A LoRA of this rank (`r = lora_alpha`) on the attention projections.
    Lora {
        /// `--rank`.
        rank: usize,
    },
    /// Every UNet weight, with a moving average when `--use-ema`.
    Full {
        /// `--use-ema`: diffusers' `EMAModel` defaults.
        ema: Option<EmaConfig>,
    },
}

/// DreamBooth's prior preservation (`--with-prior-preservation`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    /// `--class-data-dir`: class images, completed by generation.
    pub class_data_dir: PathBuf,
    /// `--class-prompt`: the caption of every class image, and the prompt
    /// the missing ones are generated from.
    pub class_prompt: String,
    /// `--num-class-images`: how many class images there must be.
    pub num_class_images: usize,
    /// `--sample-batch-size`: images per generation call.
    pub sample_batch_size: usize,
}

/// The settings of one run.
#[derive(Debug, Clone)]
pub struct FineTuneArgs {
    /// Prior preservation, when asked.
    pub prior: Option<Prior>,
    /// What trains.
    pub mode: Mode,
    /// `--pretrained-model-name-or-path` and the Hub flags.
    pub hub: HubArgs,
    /// `--train-data-dir` or `--instance-data-dir`.
    pub data_dir: PathBuf,
    /// Captions: `metadata.jsonl` / sidecars (`--caption-column`), or
    /// `--instance-prompt`.
    pub captions: Captions,
    /// `--output-dir`.
    pub output_dir: PathBuf,
    /// `--resolution`.
    pub resolution: usize,
    /// `--center-crop` (else a random crop per draw, as the scripts).
    pub center_crop: bool,
    /// `--random-flip`.
    pub random_flip: bool,
    /// `--train-batch-size`.
    pub batch_size: usize,
    /// `--max-train-steps`.
    pub max_train_steps: u64,
    /// `--proportion-empty-prompts`.
    pub proportion_empty_prompts: f64,
    /// `--seed`.
    pub seed: u64,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// `--checkpointing-steps`.
    pub checkpointing_steps: u64,
    /// `--checkpoints-total-limit`.
    pub checkpoints_total_limit: Option<usize>,
    /// `--resume-from-checkpoint` (`latest` or a folder).
    pub resume: Option<String>,
    /// `--validation-prompt`.
    pub validation_prompt: Option<String>,
    /// `--num-validation-images`.
    pub num_validation_images: usize,
    /// `--validation-steps` (0: at the end only).
    pub validation_steps: u64,
    /// `--num-inference-steps` of the validation images.
    pub num_inference_steps: usize,
    /// `--image-interpolation-mode`: the training resize's filter.
    pub interpolation: Interpolation,
    /// `--cache-latents`: encode every image once up front.
    pub cache_latents: bool,
    /// `--output-kohya-format`: also write the LoRA in kohya-ss's format.
    pub output_kohya_format: bool,
    /// `--quiet`.
    pub quiet: bool,
}

fn get<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Option<T> {
    m.get_one::<T>(id).cloned()
}

impl FineTuneArgs {
    /// Reads `diffuse train-lora`'s (`full`: `train-text-to-image`'s) flags.
    pub fn from_matches(m: &ArgMatches, full: bool) -> Result<Self> {
        let hub = HubArgs {
            model: get(m, "pretrained_model_name_or_path"),
            variant: get(m, "variant"),
            revision: get(m, "revision"),
            offline: m.get_flag("offline"),
            skip_unsafe_globals: false,
        };
        let (data_dir, captions) = match (
            get::<String>(m, "train_data_dir"),
            get::<String>(m, "instance_data_dir"),
            get::<String>(m, "instance_prompt"),
        ) {
            (Some(d), None, None) => (
                d,
                Captions::Files {
                    column: get(m, "caption_column").unwrap_or_else(|| "text".into()),
                },
            ),
            (None, Some(d), Some(p)) => (d, Captions::Prompt(p)),
            (None, Some(_), None) => {
                return Err(usage("--instance-data-dir needs --instance-prompt"));
            }
            (None, None, _) => {
                return Err(usage(
                    "give --train-data-dir (captioned images) or --instance-data-dir with --instance-prompt",
                ));
            }
            _ => {
                return Err(usage(
                    "--train-data-dir and --instance-data-dir/--instance-prompt exclude each other",
                ));
            }
        };
        let positive = |flag: &str, v: usize| {
            if v == 0 {
                Err(usage(format!("--{flag} 0: expected at least 1")))
            } else {
                Ok(v)
            }
        };
        let resolution = positive("resolution", get(m, "resolution").unwrap_or(512))?;
        if !resolution.is_multiple_of(8) {
            return Err(usage(format!(
                "--resolution {resolution}: not a multiple of 8 (the VAE's downscale)"
            )));
        }
        let mode = if full {
            Mode::Full {
                ema: m.get_flag("use_ema").then(|| EmaConfig {
                    decay: 0.9999,
                    use_ema_warmup: false,
                    inv_gamma: 1.0,
                    power: 2.0 / 3.0,
                    ..EmaConfig::default()
                }),
            }
        } else {
            Mode::Lora {
                rank: positive("rank", get(m, "rank").unwrap_or(4))?,
            }
        };
        let batch_size = positive("train-batch-size", get(m, "train_batch_size").unwrap_or(16))?;
        let max_train_steps: u64 = get(m, "max_train_steps").unwrap_or(1000);
        if max_train_steps == 0 {
            return Err(usage("--max-train-steps 0: expected at least 1"));
        }
        let schedule_name: String = get(m, "lr_scheduler").unwrap_or_else(|| "constant".into());
        let kind = LrScheduleKind::parse(&schedule_name).ok_or_else(|| {
            usage(format!(
                "--lr-scheduler {schedule_name}: expected one of {}",
                LrScheduleKind::NAMES.join(", ")
            ))
        })?;
        let prediction_type = match get::<String>(m, "prediction_type").as_deref() {
            None => None,
            Some(p) => Some(
                serde_json::from_value::<PredictionType>(json!(p))
                    .ok()
                    .filter(|p| matches!(p, PredictionType::Epsilon | PredictionType::VPrediction))
                    .ok_or_else(|| {
                        usage(format!(
                            "--prediction-type {p}: expected epsilon or v_prediction"
                        ))
                    })?,
            ),
        };
        let precision_name: String = get(m, "mixed_precision").unwrap_or_else(|| "no".into());
        let mixed_precision = MixedPrecision::parse(&precision_name).ok_or_else(|| {
            usage(format!(
                "--mixed-precision {precision_name}: expected one of {}",
                MixedPrecision::NAMES.join(", ")
            ))
        })?;
        let max_grad_norm: f64 = get(m, "max_grad_norm").unwrap_or(1.0);
        let config = TrainConfig {
            learning_rate: get(m, "learning_rate").unwrap_or(1e-4),
            optimizer: AdamWConfig {
                beta1: get(m, "adam_beta1").unwrap_or(0.9),
                beta2: get(m, "adam_beta2").unwrap_or(0.999),
                eps: get(m, "adam_epsilon").unwrap_or(1e-8),
                weight_decay: get(m, "adam_weight_decay").unwrap_or(1e-2),
            },
            lr_schedule: LrSchedule::new(
                kind,
                get(m, "lr_warmup_steps").unwrap_or(500),
                max_train_steps,
            ),
            max_grad_norm: (max_grad_norm != 0.0).then_some(max_grad_norm),
            ema: match &mode {
                Mode::Full { ema } => *ema,
                Mode::Lora { .. } => None,
            },
            objective: Objective {
                prediction_type,
                snr_gamma: get(m, "snr_gamma"),
                noise_offset: get(m, "noise_offset").unwrap_or(0.0),
                prior_loss_weight: m
                    .get_flag("with_prior_preservation")
                    .then(|| get(m, "prior_loss_weight").unwrap_or(1.0)),
            },
            mixed_precision,
        };
        config.validate().map_err(|e| match e {
            PipelineError::Parameter { name, message } => {
                usage(format!("--{}: {message}", name.replace('_', "-")))
            }
            other => other.into(),
        })?;
        let prior = if m.get_flag("with_prior_preservation") {
            let (Some(dir), Some(prompt)) = (
                get::<String>(m, "class_data_dir"),
                get::<String>(m, "class_prompt"),
            ) else {
                return Err(usage(
                    "--with-prior-preservation needs --class-data-dir and --class-prompt",
                ));
            };
            Some(Prior {
                class_data_dir: PathBuf::from(dir),
                class_prompt: prompt,
                num_class_images: positive(
                    "num-class-images",
                    get(m, "num_class_images").unwrap_or(100),
                )?,
                sample_batch_size: positive(
                    "sample-batch-size",
                    get(m, "sample_batch_size").unwrap_or(4),
                )?,
            })
        } else {
            None
        };
        if m.get_flag("cache_latents") && (m.get_flag("random_flip") || !m.get_flag("center_crop"))
        {
            return Err(usage(
                "--cache-latents caches each image's centre crop: give --center-crop, and no --random-flip",
            ));
        }
        // As the scripts: the LoRA text-to-image ones resize with Lanczos by
        // default, DreamBooth and the full fine-tune bilinearly.
        let lanczos = !full && matches!(captions, Captions::Files { .. });
        let interpolation = match get::<String>(m, "image_interpolation_mode") {
            None if lanczos => Interpolation::Lanczos,
            None => Interpolation::Bilinear,
            Some(name) => Interpolation::parse(&name).ok_or_else(|| {
                usage(format!(
                    "--image-interpolation-mode {name}: expected one of {}",
                    Interpolation::NAMES.join(", ")
                ))
            })?,
        };
        let proportion_empty_prompts: f64 = get(m, "proportion_empty_prompts").unwrap_or(0.0);
        if !(0.0..=1.0).contains(&proportion_empty_prompts) {
            return Err(usage(format!(
                "--proportion-empty-prompts {proportion_empty_prompts}: must be in [0, 1]"
            )));
        }
        let output_dir = PathBuf::from(
            get::<String>(m, "output_dir").unwrap_or_else(|| "sd-model-finetuned-lora".into()),
        );
        let data_dir = PathBuf::from(data_dir);
        for (flag, dir) in [("data dir", &data_dir), ("--output-dir", &output_dir)] {
            if dir.as_os_str().is_empty() {
                return Err(usage(format!("{flag} \"\": an empty path")));
            }
        }
        Ok(FineTuneArgs {
            prior,
            mode,
            hub,
            data_dir,
            captions,
            output_dir,
            resolution,
            center_crop: m.get_flag("center_crop"),
            random_flip: m.get_flag("random_flip"),
            batch_size,
            max_train_steps,
            proportion_empty_prompts,
            seed: get(m, "seed").unwrap_or(0),
            config,
            checkpointing_steps: get(m, "checkpointing_steps").unwrap_or(500),
            checkpoints_total_limit: get(m, "checkpoints_total_limit"),
            resume: get(m, "resume_from_checkpoint"),
            validation_prompt: get(m, "validation_prompt"),
            num_validation_images: positive(
                "num-validation-images",
                get(m, "num_validation_images").unwrap_or(4),
            )?,
            validation_steps: get(m, "validation_steps").unwrap_or(0),
            num_inference_steps: positive(
                "num-inference-steps",
                get(m, "num_inference_steps").unwrap_or(30),
            )?,
            interpolation,
            cache_latents: m.get_flag("cache_latents"),
            output_kohya_format: !full && m.get_flag("output_kohya_format"),
            quiet: m.get_flag("quiet"),
        })
    }

    fn lora(&self) -> Option<LoraConfig> {
        match self.mode {
            Mode::Lora { rank } => Some(LoraConfig::attention(rank)),
            Mode::Full { .. } => None,
        }
    }

    fn rank(&self) -> usize {
        self.lora().map_or(0, |l| l.r)
    }
}

/// The run's state kept in checkpoints besides the trainer's own.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RunState {
    seed: u64,
    batch_size: usize,
    random_flip: bool,
    center_crop: bool,
    resolution: usize,
    max_train_steps: u64,
    proportion_empty_prompts: f64,
    /// `[step, loss, lr, grad_norm]` of every step so far.
    #[serde(deserialize_with = "nullable_rows")]
    losses: Vec<[f64; 4]>,
}

/// Runs `diffuse train-lora` / `train-text-to-image` on backend `B`
/// (autodiff over the inference backend, where the frozen VAE and text
/// encoder run).
pub fn run<B: AutodiffBackend>(
    args: &FineTuneArgs,
    device: B::Device,
    inner_device: burn::tensor::Device<B::InnerBackend>,
) -> Result<Summary>
where
    UNet2DConditionModel<B>: AutodiffModule<B, InnerModule = UNet2DConditionModel<B::InnerBackend>>,
{
    let out = &args.output_dir;
    let name = args.hub.model.clone().ok_or_else(|| {
        usage("--pretrained-model-name-or-path is required (a diffusers folder or Hub repo)")
    })?;
    let resolved = match resolve(&name, &args.hub.resolve_options())? {
        Resolved::Pipeline(m) => m,
        _ => {
            return Err(CliError::WrongModel {
                model: name,
                message: "not a diffusers pipeline folder or repo (convert a single-file \
                          checkpoint with `diffuse convert` first)"
                    .into(),
            });
        }
    };
    let options = LoadOptions::<B::InnerBackend> {
        device: inner_device,
        variant: args.hub.variant.clone(),
        revision: args.hub.revision.clone(),
        local_files_only: args.hub.offline,
        progress: !args.quiet,
        ..LoadOptions::default()
    };
    let mut pipe = DiffusionPipeline::<B::InnerBackend>::from_resolved(&resolved, &options)?;
    let sd = pipe
        .stable_diffusion()
        .ok_or_else(|| CliError::WrongModel {
            model: name.clone(),
            message: "LoRA training needs a Stable Diffusion pipeline (UNet2DConditionModel)"
                .into(),
        })?;
    let factor = sd.vae_scale_factor()
        * (1usize << sd.unet_config.block_out_channels.len().saturating_sub(1));
    if !args.resolution.is_multiple_of(factor) {
        return Err(usage(format!(
            "--resolution {}: not a multiple of {factor} (the VAE's and UNet's downscales)",
            args.resolution
        )));
    }
    let unet_component = resolved
        .components
        .get("unet")
        .ok_or_else(|| CliError::WrongModel {
            model: name.clone(),
            message: "no unet component".into(),
        })?;
    let unet_weights = open_component_weights(unet_component, &args.hub.pickle_options())?;
    let unet_config = sd.unet_config.clone();
    let mut scheduler_config = sd.scheduler_config.clone();
    // As the scripts' `DDPMScheduler.from_pretrained(..., subfolder="scheduler")`.
    scheduler_config["_class_name"] = Value::from("DDPMScheduler");

    // Before the trainer's copy of the UNet and any step: the memory it needs.
    let unet_bytes: f64 = unet_weights
        .tensors()
        .map(|(_, t)| 4.0 * t.shape.iter().product::<usize>() as f64)
        .sum();
    let trained = match args.mode {
        Mode::Full { .. } => unet_bytes / 4.0,
        // An upper bound: every Linear of width w gets 2·r·w factors.
        Mode::Lora { rank } => unet_bytes / 4.0 * (2.0 * rank as f64 / 320.0).min(1.0),
    };
    let host = diffusion_pipelines::memory::is_host_backend(&B::name(&device));
    diffusion_pipelines::memory::check(
        &format!(
            "--train-batch-size {} at --resolution {}",
            args.batch_size, args.resolution
        ),
        diffusion_pipelines::memory::fine_tuning_bytes(
            &sd.unet_config,
            &sd.vae.config,
            unet_bytes,
            trained,
            args.batch_size * if args.prior.is_some() { 2 } else { 1 },
            args.resolution,
        ),
        host,
    )?;
    let resume_dir = match args.resume.as_deref() {
        None => None,
        Some("latest") => latest_checkpoint(out)?,
        Some(p) => Some(PathBuf::from(p)),
    };
    let fresh_state = || RunState {
        seed: args.seed,
        batch_size: args.batch_size,
        random_flip: args.random_flip,
        center_crop: args.center_crop,
        resolution: args.resolution,
        max_train_steps: args.max_train_steps,
        proportion_empty_prompts: args.proportion_empty_prompts,
        losses: Vec::new(),
    };
    let rank_error = |e: PipelineError| match e {
        PipelineError::Config { path, message } if path.ends_with("adapter_config.json") => usage(
            format!("--rank {}: {} ({})", args.rank(), message, path.display()),
        ),
        PipelineError::Model(m) if m.to_string().contains("`r`") => {
            usage(format!("--rank {}: {m}", args.rank()))
        }
        other => other.into(),
    };
    type Unet<B> = UNet2DConditionModel<B>;
    let (mut trainer, state) = match (&resume_dir, args.lora()) {
        (Some(dir), lora) => {
            let (trainer, extra) = match lora {
                Some(lora) => Trainer::<B, Unet<B>>::resume_lora(
                    dir,
                    &unet_weights,
                    &unet_config,
                    Some(&lora),
                    &device,
                )
                .map_err(rank_error)?,
                None => Trainer::<B, Unet<B>>::resume(dir, &device)?,
            };
            let state: RunState = serde_json::from_value(extra).map_err(|e| CliError::Input {
                path: dir.join("trainer_state.json"),
                message: format!("not a checkpoint of this command: {e}"),
            })?;
            (trainer, state)
        }
        (None, Some(lora)) => {
            let trainer = Trainer::<B, Unet<B>>::lora(
                &unet_weights,
                unet_config,
                lora,
                LoraFactors::Seeded(args.seed),
                scheduler_config,
                args.config.clone(),
                device.clone(),
            )
            .map_err(rank_error)?;
            (trainer, fresh_state())
        }
        (None, None) => {
            let (model, keys) =
                build_model::<B, Unet<B>>(&unet_config, Some(&unet_weights), &device, args.seed)?;
            let trainer = Trainer::from_parts(
                model,
                unet_config,
                keys,
                scheduler_config,
                args.config.clone(),
                device.clone(),
            )?;
            (trainer, fresh_state())
        }
    };
    let mut state = state;
    remove_stale_temporaries(out);
    let crop = if state.center_crop {
        Crop::Center
    } else {
        Crop::Random
    };
    let data = CaptionedDataset::load(
        &args.data_dir,
        state.resolution,
        crop,
        args.interpolation,
        &args.captions,
    )?;
    let class_data = match &args.prior {
        Some(prior) => {
            complete_class_images(sd, prior, args.seed, args.quiet)?;
            let captions = Captions::Prompt(prior.class_prompt.clone());
            Some(CaptionedDataset::load(
                &prior.class_data_dir,
                state.resolution,
                crop,
                args.interpolation,
                &captions,
            )?)
        }
        None => None,
    };
    let latent_cache = if args.cache_latents {
        Some(LatentCache::new(sd, &data, class_data.as_ref())?)
    } else {
        None
    };
    let sampler = BatchSampler {
        seed: state.seed,
        batch_size: state.batch_size,
        random_flip: state.random_flip,
    };
    let total = state.max_train_steps;
    let start = trainer.step_count();
    let bar = progress(total, start, args.quiet);
    let mut train_time = 0.0f64;
    while trainer.step_count() < total {
        let t0 = Instant::now();
        let batches = TextToImageBatches::<B> {
            pipeline: sd,
            data: &data,
            sampler,
            proportion_empty_prompts: state.proportion_empty_prompts,
            class_data: class_data.as_ref(),
            latent_cache: latent_cache.as_ref(),
        };
        let batch = batches.batch(trainer.step_count(), trainer.num_train_timesteps(), &device)?;
        let StepStats {
            step,
            loss,
            grad_norm,
            lr,
            ..
        } = trainer.step(&batch)?;
        train_time += t0.elapsed().as_secs_f64();
        state.losses.push([step as f64, loss, lr, grad_norm]);
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        let last = step == total;
        if (args.checkpointing_steps > 0 && step % args.checkpointing_steps == 0) || last {
            bar.suspend(|| -> Result<()> {
                let extra = serde_json::to_value(&state).expect("state serializes");
                trainer.save_checkpoint(&out.join(format!("checkpoint-{step}")), extra)?;
                prune_checkpoints(out, args.checkpoints_total_limit)?;
                write_losses(out, &state.losses)
            })?;
        }
        if args.validation_steps > 0 && step % args.validation_steps == 0 && !last {
            let trained = match args.lora() {
                Some(lora) => Trained::Lora(save(&trainer, &out.join("validation"), &lora)?),
                None => Trained::Unet,
            };
            bar.suspend(|| validate(sd, &trainer, args, &trained, step))?;
        }
    }
    bar.finish_and_clear();
    let trained = match args.lora() {
        Some(lora) => {
            if args.output_kohya_format {
                let factors = trainer.lora_state_dict()?;
                save_lora_weights_kohya(
                    out,
                    &[LoraLayers {
                        component: Component::Unet,
                        factors: &factors,
                        config: &lora,
                    }],
                )?;
            }
            Trained::Lora(save(&trainer, out, &lora)?)
        }
        None => {
            save_pipeline(&resolved.root, out, &trainer)?;
            Trained::Unet
        }
    };
    write_losses(out, &state.losses)?;
    validate(sd, &trainer, args, &trained, trainer.step_count())?;
    let steps_this_run = trainer.step_count() - start;
    let tail = &state.losses[state.losses.len().saturating_sub(100)..];
    let finite: Vec<f64> = tail
        .iter()
        .map(|l| l[1])
        .filter(|l| l.is_finite())
        .collect();
    Ok(Summary {
        output_dir: out.clone(),
        steps: trainer.step_count(),
        steps_this_run,
        steps_per_second: if train_time > 0.0 {
            steps_this_run as f64 / train_time
        } else {
            0.0
        },
        final_loss: finite.iter().sum::<f64>() / finite.len().max(1) as f64,
        resumed_from: resume_dir,
        mixed_precision: trainer.config().mixed_precision,
        skipped_steps: trainer
            .step_count()
            .saturating_sub(trainer.optimizer_steps()),
        loss_scale: trainer.grad_scaler().map(|s| s.scale),
    })
}

/// Writes the trained factors as `dir/pytorch_lora_weights.safetensors`.
fn save<B: AutodiffBackend>(
    trainer: &Trainer<B, UNet2DConditionModel<B>>,
    dir: &Path,
    lora: &LoraConfig,
) -> Result<PathBuf>
where
    UNet2DConditionModel<B>: AutodiffModule<B, InnerModule = UNet2DConditionModel<B::InnerBackend>>,
{
    let factors = trainer.lora_state_dict()?;
    Ok(save_lora_weights(
        dir,
        &[LoraLayers {
            component: Component::Unet,
            factors: &factors,
            config: lora,
        }],
    )?)
}

/// Generates the class images `prior.class_data_dir` lacks (fewer than
/// `--num-class-images` `.png`/`.jpg`/`.jpeg` files) with the base pipeline
/// and `--class-prompt`, `--sample-batch-size` per call, as the DreamBooth
/// scripts do before training; each is written atomically as
/// `{index}-{content hash}.png`, so an interrupted run completes them later.
fn complete_class_images<B: burn::tensor::backend::Backend>(
    sd: &mut StableDiffusion<B>,
    prior: &Prior,
    seed: u64,
    quiet: bool,
) -> Result<()> {
    let dir = &prior.class_data_dir;
    std::fs::create_dir_all(dir).map_err(|e| CliError::Input {
        path: dir.clone(),
        message: format!("cannot create: {e}"),
    })?;
    let count = std::fs::read_dir(dir)
        .map_err(|e| CliError::Input {
            path: dir.clone(),
            message: format!("cannot read: {e}"),
        })?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_ascii_lowercase();
            [".png", ".jpg", ".jpeg"].iter().any(|x| name.ends_with(x))
        })
        .count();
    let mut next = count;
    while next < prior.num_class_images {
        let n = prior.sample_batch_size.min(prior.num_class_images - next);
        if !quiet {
            eprintln!(
                "generating class images {}..{} of {} ({:?})",
                next + 1,
                next + n,
                prior.num_class_images,
                prior.class_prompt
            );
        }
        let params = Params {
            prompt: vec![prior.class_prompt.clone()],
            num_images_per_prompt: n,
            generator: Some(Generator::Seed(seed.wrapping_add(next as u64))),
            progress: false,
            ..Params::default()
        };
        let images = sd
            .run(Task::TextToImage, params)?
            .images
            .ok_or_else(|| usage("the pipeline returned no images"))?;
        for i in 0..images.count {
            let hash = images
                .to_u8(i)
                .iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
            let path = dir.join(format!("{}-{hash:016x}.png", next + i));
            images.save_png(i, &path, &[("prompt".into(), prior.class_prompt.clone())])?;
        }
        next += images.count.max(1);
    }
    Ok(())
}

/// A full fine-tune's output: the base pipeline folder's files (every
/// component but `unet/`) copied, and the trained `unet/` (its moving
/// average when there is one, as the script saves), `model_index.json` last.
fn save_pipeline<B: AutodiffBackend>(
    base: &Path,
    out: &Path,
    trainer: &Trainer<B, UNet2DConditionModel<B>>,
) -> Result<()>
where
    UNet2DConditionModel<B>: AutodiffModule<B, InnerModule = UNet2DConditionModel<B::InnerBackend>>,
{
    let entries = std::fs::read_dir(base).map_err(|e| CliError::Input {
        path: base.to_path_buf(),
        message: format!("cannot read the base pipeline: {e}"),
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let from = entry.path();
        if name == "unet" || name == "model_index.json" || name.starts_with('.') || !from.is_dir() {
            continue;
        }
        copy_dir(&from, &out.join(&name))?;
    }
    save_model_folder(
        &out.join("unet"),
        &config_json("UNet2DConditionModel", trainer.model_config())?,
        &trainer.inference_state_dict()?,
    )?;
    let index = std::fs::read(base.join("model_index.json")).map_err(|e| CliError::Input {
        path: base.join("model_index.json"),
        message: format!("cannot read: {e}"),
    })?;
    write_atomic(&out.join("model_index.json"), &index)?;
    Ok(())
}

/// Copies the files of `from` (following links, as a Hub cache snapshot
/// has them) into `to`, each written atomically.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| CliError::Input {
        path: path.to_path_buf(),
        message: format!("cannot copy: {e}"),
    };
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let entry = entry.map_err(|e| io(from, e))?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
            write_atomic(&dest, &bytes)?;
        }
    }
    Ok(())
}

/// What the validation images are made with.
enum Trained {
    /// The LoRA file written so far.
    Lora(PathBuf),
    /// The trainer's UNet (its moving average when there is one).
    Unet,
}

/// `--num-validation-images` images of `--validation-prompt` with what was
/// trained, as one grid `validation/step-N.png` (seeded by `--seed`).
fn validate<B: AutodiffBackend>(
    sd: &mut StableDiffusion<B::InnerBackend>,
    trainer: &Trainer<B, UNet2DConditionModel<B>>,
    args: &FineTuneArgs,
    trained: &Trained,
    step: u64,
) -> Result<()>
where
    UNet2DConditionModel<B>: AutodiffModule<B, InnerModule = UNet2DConditionModel<B::InnerBackend>>,
{
    let Some(prompt) = &args.validation_prompt else {
        return Ok(());
    };
    let base_unet = match trained {
        Trained::Lora(file) => {
            sd.unload_lora_weights()?;
            sd.load_lora_weights(file, Some("trained"), MissingComponent::Error)?;
            None
        }
        Trained::Unet => Some(std::mem::replace(&mut sd.unet, trainer.inference_model())),
    };
    let params = Params {
        prompt: vec![prompt.clone()],
        num_images_per_prompt: args.num_validation_images,
        num_inference_steps: Some(args.num_inference_steps),
        height: Some(args.resolution),
        width: Some(args.resolution),
        generator: Some(Generator::Seed(args.seed)),
        progress: false,
        ..Params::default()
    };
    let images = sd.run(Task::TextToImage, params);
    match base_unet {
        Some(unet) => sd.unet = unet,
        None => sd.unload_lora_weights()?,
    }
    let images = images?
        .images
        .ok_or_else(|| usage("the pipeline returned no images"))?;
    let dir = args.output_dir.join("validation");
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Input {
        path: dir.clone(),
        message: format!("cannot create: {e}"),
    })?;
    let cols = (images.count as f64).sqrt().ceil() as usize;
    let mut text = vec![("prompt".to_string(), prompt.clone())];
    if let Trained::Lora(file) = trained {
        text.push(("lora".to_string(), file.display().to_string()));
    }
    images
        .grid(cols, 2)
        .save_png(0, &dir.join(format!("step-{step:06}.png")), &text)?;
    Ok(())
}
