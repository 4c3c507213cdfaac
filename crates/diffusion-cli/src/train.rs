//! `diffuse train`: diffusers' `train_unconditional.py` on a folder of images.
//!
//! The flags keep the script's names (with dashes) and defaults. Outputs in
//! `--output-dir`: the trained pipeline (`model_index.json`, `unet/`,
//! `scheduler/`; the moving average when `--use-ema`), `checkpoint-N/`
//! folders to resume from, `samples/step-N.png` grids, and the loss curve as
//! `loss.csv` and `loss.png`. Every file is written atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::ArgMatches;
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_pipelines::components::build_scheduler;
use diffusion_pipelines::image::write_atomic;
use diffusion_pipelines::training::{
    AdamWConfig, BatchSampler, Crop, EmaConfig, ImageDataset, LrSchedule, LrScheduleKind,
    MixedPrecision, Objective, PredictionType, StepStats, TrainConfig, Trainer, build_model,
    check_training_size,
};
use diffusion_pipelines::{Generator, Images, Params, SchedulerChoice, Unconditional};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::error::{CliError, Result, usage};

/// The settings of one run.
#[derive(Debug, Clone)]
pub struct TrainArgs {
    /// `--train-data-dir`.
    pub data_dir: PathBuf,
    /// `--output-dir`.
    pub output_dir: PathBuf,
    /// `--model-config`: a UNet2DModel `config.json` (default: the script's UNet).
    pub model_config: Option<PathBuf>,
    /// `--resolution`.
    pub resolution: usize,
    /// `--train-batch-size`.
    pub batch_size: usize,
    /// `--max-train-steps`.
    pub max_train_steps: u64,
    /// `--max-train-steps` as given: on resume, a new total extends (or
    /// shortens) the run and stretches its LR schedule.
    pub max_train_steps_given: Option<u64>,
    /// `--random-flip`.
    pub random_flip: bool,
    /// `--random-crop`.
    pub random_crop: bool,
    /// `--seed`.
    pub seed: u64,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// `--mixed-precision` as given: on resume it switches the precision of
    /// the steps to come (the checkpoint's other hyper-parameters stay).
    pub mixed_precision_given: Option<MixedPrecision>,
    /// `--ddpm-num-steps`, `--ddpm-beta-schedule`, `--prediction-type`: the noise scheduler.
    pub scheduler_config: Value,
    /// `--checkpointing-steps`.
    pub checkpointing_steps: u64,
    /// `--checkpoints-total-limit`.
    pub checkpoints_total_limit: Option<usize>,
    /// `--resume-from-checkpoint` (`latest` or a folder).
    pub resume: Option<String>,
    /// `--save-images-steps`: sample grid every N steps (0: only at the end).
    pub save_images_steps: u64,
    /// `--eval-batch-size`.
    pub eval_batch_size: usize,
    /// `--num-inference-steps` of the DDIM sampler used for grids.
    pub num_inference_steps: usize,
    /// `--pipeline-class`: DDPMPipeline (diffusers' default) or DDIMPipeline.
    pub pipeline_class: String,
    /// `--quiet`: no progress bar.
    pub quiet: bool,
}

fn get<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Option<T> {
    m.get_one::<T>(id).cloned()
}

impl TrainArgs {
    /// Reads `diffuse train`'s flags.
    pub fn from_matches(m: &ArgMatches) -> Result<Self> {
        let schedule_name: String = get(m, "lr_scheduler").unwrap_or_else(|| "cosine".into());
        let kind = LrScheduleKind::parse(&schedule_name).ok_or_else(|| {
            usage(format!(
                "--lr-scheduler {schedule_name}: expected one of {}",
                LrScheduleKind::NAMES.join(", ")
            ))
        })?;
        let max_train_steps: u64 = get(m, "max_train_steps").unwrap_or(10_000);
        if max_train_steps == 0 {
            return Err(usage("--max-train-steps must be at least 1"));
        }
        let batch_size: usize = get(m, "train_batch_size").unwrap_or(16);
        if batch_size == 0 {
            return Err(usage("--train-batch-size must be at least 1"));
        }
        let learning_rate: f64 = get(m, "learning_rate").unwrap_or(1e-4);
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(usage(format!(
                "--learning-rate {learning_rate}: must be positive"
            )));
        }
        let prediction_type: Option<String> = get(m, "prediction_type");
        let prediction = match prediction_type.as_deref() {
            None => None,
            Some(p) => Some(
                serde_json::from_value::<PredictionType>(json!(p))
                    .ok()
                    .filter(|p| *p != PredictionType::FlowPrediction)
                    .ok_or_else(|| {
                        usage(format!(
                            "--prediction-type {p}: expected epsilon, v_prediction or sample"
                        ))
                    })?,
            ),
        };
        let ema = m.get_flag("use_ema").then(|| EmaConfig {
            decay: get(m, "ema_max_decay").unwrap_or(0.9999),
            use_ema_warmup: true,
            inv_gamma: get(m, "ema_inv_gamma").unwrap_or(1.0),
            power: get(m, "ema_power").unwrap_or(0.75),
            ..EmaConfig::default()
        });
        let max_grad_norm: f64 = get(m, "max_grad_norm").unwrap_or(1.0);
        let precision_name: String = get(m, "mixed_precision").unwrap_or_else(|| "no".into());
        let mixed_precision = MixedPrecision::parse(&precision_name).ok_or_else(|| {
            usage(format!(
                "--mixed-precision {precision_name}: expected one of {}",
                MixedPrecision::NAMES.join(", ")
            ))
        })?;
        let config = TrainConfig {
            learning_rate,
            optimizer: AdamWConfig {
                beta1: get(m, "adam_beta1").unwrap_or(0.95),
                beta2: get(m, "adam_beta2").unwrap_or(0.999),
                eps: get(m, "adam_epsilon").unwrap_or(1e-8),
                weight_decay: get(m, "adam_weight_decay").unwrap_or(1e-6),
            },
            lr_schedule: LrSchedule::new(
                kind,
                get(m, "lr_warmup_steps").unwrap_or(500),
                max_train_steps,
            ),
            // 0 turns clipping off; anything else is checked by `validate`.
            max_grad_norm: (max_grad_norm != 0.0).then_some(max_grad_norm),
            ema,
            objective: Objective {
                prediction_type: prediction,
                snr_gamma: get(m, "snr_gamma"),
                noise_offset: get(m, "noise_offset").unwrap_or(0.0),
                prior_loss_weight: None,
            },
            mixed_precision,
        };
        let mut scheduler_config = json!({
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": get::<usize>(m, "ddpm_num_steps").unwrap_or(1000),
            "beta_schedule": get::<String>(m, "ddpm_beta_schedule").unwrap_or_else(|| "linear".into()),
            "prediction_type": prediction_type.unwrap_or_else(|| "epsilon".into()),
        });
        // The full config, every default filled in, as diffusers saves it.
        // A bad value is told as the flag that set it.
        scheduler_config =
            build_scheduler::<diffusion_models::backend::Cpu>(&scheduler_config, None)
                .map_err(|e| {
                    let text = e.to_string();
                    let flag = [
                        ("num_train_timesteps", "--ddpm-num-steps"),
                        ("beta_schedule", "--ddpm-beta-schedule"),
                        ("prediction_type", "--prediction-type"),
                    ]
                    .into_iter()
                    .find(|(field, _)| text.contains(field));
                    match flag {
                        Some((_, flag)) => usage(format!("{flag}: {text}")),
                        None => CliError::from(e),
                    }
                })?
                .config();
        let pipeline_class: String =
            get(m, "pipeline_class").unwrap_or_else(|| "DDPMPipeline".into());
        if !matches!(pipeline_class.as_str(), "DDPMPipeline" | "DDIMPipeline") {
            return Err(usage(format!(
                "--pipeline-class {pipeline_class}: expected DDPMPipeline or DDIMPipeline"
            )));
        }
        let eval_batch_size: usize = get(m, "eval_batch_size").unwrap_or(16);
        let num_inference_steps: usize = get(m, "num_inference_steps").unwrap_or(50);
        for (flag, v) in [
            ("--eval-batch-size", eval_batch_size),
            ("--num-inference-steps", num_inference_steps),
        ] {
            if v == 0 {
                return Err(usage(format!("{flag} 0: expected at least 1")));
            }
        }
        // The library's checks, told as the flags (`adam_beta1` → `--adam-beta1`).
        config.validate().map_err(|e| match e {
            diffusion_pipelines::PipelineError::Parameter { name, message } => {
                usage(format!("--{}: {message}", name.replace('_', "-")))
            }
            other => other.into(),
        })?;
        let data_dir = PathBuf::from(get::<String>(m, "train_data_dir").expect("required"));
        let output_dir = PathBuf::from(get::<String>(m, "output_dir").expect("required"));
        for (flag, dir) in [
            ("--train-data-dir", &data_dir),
            ("--output-dir", &output_dir),
        ] {
            if dir.as_os_str().is_empty() {
                return Err(usage(format!("{flag} \"\": an empty path")));
            }
        }
        let train_steps = scheduler_config["num_train_timesteps"]
            .as_u64()
            .unwrap_or(1000) as usize;
        if num_inference_steps > train_steps {
            return Err(usage(format!(
                "--num-inference-steps {num_inference_steps}: more than the {train_steps} training timesteps (--ddpm-num-steps)"
            )));
        }
        Ok(TrainArgs {
            data_dir,
            output_dir,
            model_config: get::<String>(m, "model_config").map(PathBuf::from),
            resolution: get(m, "resolution").unwrap_or(64),
            batch_size,
            max_train_steps,
            max_train_steps_given: get(m, "max_train_steps"),
            mixed_precision_given: m.contains_id("mixed_precision").then_some(mixed_precision),
            random_flip: m.get_flag("random_flip"),
            random_crop: m.get_flag("random_crop"),
            seed: get(m, "seed").unwrap_or(0),
            config,
            scheduler_config,
            checkpointing_steps: get(m, "checkpointing_steps").unwrap_or(500),
            checkpoints_total_limit: get(m, "checkpoints_total_limit"),
            resume: get(m, "resume_from_checkpoint"),
            save_images_steps: get(m, "save_images_steps").unwrap_or(0),
            eval_batch_size,
            num_inference_steps,
            pipeline_class,
            quiet: m.get_flag("quiet"),
        })
    }
}

/// `train_unconditional.py`'s default UNet for `resolution` and `channels`.
fn default_unet(resolution: usize, channels: usize) -> Value {
    json!({
        "sample_size": resolution,
        "in_channels": channels,
        "out_channels": channels,
        "layers_per_block": 2,
        "block_out_channels": [128, 128, 256, 256, 512, 512],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    })
}

fn model_config(args: &TrainArgs) -> Result<UNet2DConfig> {
    let (text, name) = match &args.model_config {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| CliError::Input {
                path: p.clone(),
                message: format!("cannot read: {e}"),
            })?,
            p.display().to_string(),
        ),
        None => (
            default_unet(args.resolution, 3).to_string(),
            "the default UNet".to_string(),
        ),
    };
    let config = diffusion_models::config::parse_config::<UNet2DConfig>(&text, &name)
        .map_err(diffusion_pipelines::PipelineError::from)?
        .config;
    if config.in_channels != config.out_channels || !matches!(config.in_channels, 1 | 3) {
        return Err(usage(format!(
            "{name}: in_channels {} / out_channels {}: image models here have 1 or 3 of both",
            config.in_channels, config.out_channels
        )));
    }
    Ok(config)
}

/// [`check_training_size`], its resolution complaint told as the flag, and
/// the memory of the sample grids.
fn size_check<B: Backend>(
    config: &UNet2DConfig,
    resolution: usize,
    batch_size: usize,
    eval_batch_size: usize,
    device: &B::Device,
) -> Result<()> {
    let host = diffusion_pipelines::memory::is_host_backend(&B::name(device));
    check_training_size(config, resolution, batch_size, host).map_err(|e| match e {
        diffusion_pipelines::PipelineError::Parameter { message, .. } => {
            usage(format!("--resolution {resolution}: {message}"))
        }
        other => other.into(),
    })?;
    // The sample grids too, before any step is run or checkpoint written.
    diffusion_pipelines::memory::check(
        &format!("--eval-batch-size {eval_batch_size} at resolution {resolution}"),
        diffusion_pipelines::memory::unconditional_bytes(
            config,
            eval_batch_size,
            resolution,
            resolution,
        ),
        host,
    )?;
    Ok(())
}

/// The run's state kept in checkpoints besides the trainer's own.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RunState {
    seed: u64,
    batch_size: usize,
    random_flip: bool,
    /// Absent from checkpoints written without this field: read as `false`.
    #[serde(default)]
    random_crop: bool,
    resolution: usize,
    max_train_steps: u64,
    /// `[step, loss, lr, grad_norm]` of every step so far. A skipped f16
    /// step has an infinite or NaN loss or norm, which JSON writes as `null`
    /// and which reads back as NaN.
    #[serde(deserialize_with = "nullable_rows")]
    losses: Vec<[f64; 4]>,
}

/// `[f64; 4]` rows whose non-finite values were written as `null`.
pub(crate) fn nullable_rows<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<[f64; 4]>, D::Error> {
    let rows: Vec<[Option<f64>; 4]> = serde::Deserialize::deserialize(d)?;
    Ok(rows
        .into_iter()
        .map(|row| row.map(|v| v.unwrap_or(f64::NAN)))
        .collect())
}

/// What a run did (printed as JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Where the pipeline was written.
    pub output_dir: PathBuf,
    /// Steps done in total.
    pub steps: u64,
    /// Steps done by this invocation.
    pub steps_this_run: u64,
    /// Steps per second of this invocation (training steps only).
    pub steps_per_second: f64,
    /// Mean loss of the last (up to) 100 steps.
    pub final_loss: f64,
    /// The checkpoint resumed from.
    pub resumed_from: Option<PathBuf>,
    /// `--mixed-precision`.
    pub mixed_precision: MixedPrecision,
    /// Steps (of the whole run) whose f16 gradients overflowed and left the
    /// weights as they were: the step count less the optimizer updates.
    pub skipped_steps: u64,
    /// The f16 loss scale at the end (`None` unless `fp16`).
    pub loss_scale: Option<f64>,
}

/// Runs `diffuse train` on backend `B` (autodiff over the inference backend).
pub fn run<B: AutodiffBackend>(args: &TrainArgs, device: B::Device) -> Result<Summary>
where
    UNet2DModel<B>: AutodiffModule<B, InnerModule = UNet2DModel<B::InnerBackend>>,
{
    let out = &args.output_dir;
    let resume_dir = match args.resume.as_deref() {
        None => None,
        Some("latest") => latest_checkpoint(out)?,
        Some(p) => Some(PathBuf::from(p)),
    };
    let (mut trainer, mut state) = match &resume_dir {
        Some(dir) => {
            let (trainer, extra) = Trainer::<B, UNet2DModel<B>>::resume(dir, &device)?;
            let mut state: RunState =
                serde_json::from_value(extra).map_err(|e| CliError::Input {
                    path: dir.join("trainer_state.json"),
                    message: format!("not a `diffuse train` checkpoint: {e}"),
                })?;
            let mut trainer = trainer;
            if let Some(total) = args
                .max_train_steps_given
                .filter(|&n| n != state.max_train_steps)
            {
                if total < trainer.step_count() {
                    return Err(usage(format!(
                        "--max-train-steps {total}: the checkpoint is already at step {}",
                        trainer.step_count()
                    )));
                }
                state.max_train_steps = total;
                trainer.set_total_steps(total);
            }
            if let Some(precision) = args.mixed_precision_given {
                trainer.set_mixed_precision(precision);
            }
            (trainer, state)
        }
        None => {
            let config = model_config(args)?;
            // Before the weights are allocated.
            size_check::<B>(
                &config,
                args.resolution,
                args.batch_size,
                args.eval_batch_size,
                &device,
            )?;
            let (model, keys) =
                build_model::<B, UNet2DModel<B>>(&config, None, &device, args.seed)?;
            let trainer = Trainer::from_parts(
                model,
                config,
                keys,
                args.scheduler_config.clone(),
                args.config.clone(),
                device.clone(),
            )?;
            let state = RunState {
                seed: args.seed,
                batch_size: args.batch_size,
                random_flip: args.random_flip,
                random_crop: args.random_crop,
                resolution: args.resolution,
                max_train_steps: args.max_train_steps,
                losses: Vec::new(),
            };
            (trainer, state)
        }
    };
    remove_stale_temporaries(out);
    size_check::<B>(
        trainer.model_config(),
        state.resolution,
        state.batch_size,
        args.eval_batch_size,
        &device,
    )?;
    let channels = trainer.model_config().in_channels;
    let crop = if state.random_crop {
        Crop::Random
    } else {
        Crop::Center
    };
    let data = ImageDataset::load_with(&args.data_dir, state.resolution, channels, crop)?;
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
        let batch = sampler.batch::<B>(
            &data,
            trainer.step_count(),
            trainer.num_train_timesteps(),
            &device,
        )?;
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
        if args.save_images_steps > 0 && (step % args.save_images_steps == 0 || last) {
            save_grid::<B>(
                &trainer,
                args,
                &out.join("samples").join(format!("step-{step:06}.png")),
            )?;
        }
        if (args.checkpointing_steps > 0 && step % args.checkpointing_steps == 0) || last {
            bar.suspend(|| -> Result<()> {
                let extra = serde_json::to_value(&state).expect("state serializes");
                trainer.save_checkpoint(&out.join(format!("checkpoint-{step}")), extra)?;
                prune_checkpoints(out, args.checkpoints_total_limit)?;
                write_losses(out, &state.losses)
            })?;
        }
    }
    bar.finish_and_clear();
    let ddim = args.pipeline_class == "DDIMPipeline";
    let scheduler = if ddim {
        Some(ddim_config::<B>(&trainer)?)
    } else {
        None
    };
    trainer.save_pipeline(out, &args.pipeline_class, scheduler.as_ref())?;
    if args.save_images_steps == 0 {
        save_grid::<B>(
            &trainer,
            args,
            &out.join("samples").join(format!("step-{total:06}.png")),
        )?;
    }
    write_losses(out, &state.losses)?;
    let steps_this_run = trainer.step_count() - start;
    let tail = &state.losses[state.losses.len().saturating_sub(100)..];
    Ok(Summary {
        output_dir: out.clone(),
        steps: trainer.step_count(),
        steps_this_run,
        steps_per_second: if train_time > 0.0 {
            steps_this_run as f64 / train_time
        } else {
            0.0
        },
        // Finite losses only: a skipped f16 step may have overflowed.
        final_loss: {
            let finite: Vec<f64> = tail
                .iter()
                .map(|l| l[1])
                .filter(|l| l.is_finite())
                .collect();
            finite.iter().sum::<f64>() / finite.len().max(1) as f64
        },
        resumed_from: resume_dir,
        mixed_precision: trainer.config().mixed_precision,
        skipped_steps: trainer
            .step_count()
            .saturating_sub(trainer.optimizer_steps()),
        loss_scale: trainer.grad_scaler().map(|s| s.scale),
    })
}

pub(crate) fn progress(total: u64, start: u64, quiet: bool) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "train {bar:30} {pos}/{len} [{elapsed} < {eta}, {per_sec}] {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// The DDIM scheduler config derived from the noise scheduler's (same betas).
fn ddim_config<B: AutodiffBackend>(trainer: &Trainer<B, UNet2DModel<B>>) -> Result<Value>
where
    UNet2DModel<B>: AutodiffModule<B, InnerModule = UNet2DModel<B::InnerBackend>>,
{
    let choice = SchedulerChoice {
        name: Some("DDIMScheduler".into()),
        ..SchedulerChoice::default()
    };
    Ok(build_scheduler::<B::InnerBackend>(trainer.scheduler_config(), Some(&choice))?.config())
}

/// A grid of `eval_batch_size` samples of the inference weights (DDIM, the
/// run's seed), written atomically.
fn save_grid<B: AutodiffBackend>(
    trainer: &Trainer<B, UNet2DModel<B>>,
    args: &TrainArgs,
    path: &Path,
) -> Result<()>
where
    UNet2DModel<B>: AutodiffModule<B, InnerModule = UNet2DModel<B::InnerBackend>>,
{
    let images = sample::<B>(
        trainer,
        args.eval_batch_size,
        args.num_inference_steps,
        args.seed,
    )?;
    let cols = (images.count as f64).sqrt().ceil() as usize;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Input {
            path: dir.to_path_buf(),
            message: format!("cannot create: {e}"),
        })?;
    }
    images.grid(cols, 2).save_png(0, path, &[])?;
    Ok(())
}

/// `count` DDIM samples of the trainer's inference weights.
pub fn sample<B: AutodiffBackend>(
    trainer: &Trainer<B, UNet2DModel<B>>,
    count: usize,
    steps: usize,
    seed: u64,
) -> Result<Images>
where
    UNet2DModel<B>: AutodiffModule<B, InnerModule = UNet2DModel<B::InnerBackend>>,
{
    let config = ddim_config::<B>(trainer)?;
    let mut pipe = Unconditional::<B::InnerBackend> {
        unet: trainer.inference_model(),
        unet_config: trainer.model_config().clone(),
        scheduler: build_scheduler::<B::InnerBackend>(&config, None)?,
        scheduler_config: config,
        ddim: true,
        device: burn::module::Module::devices(&trainer.raw_model())
            .into_iter()
            .next()
            .unwrap_or_default(),
    };
    let params = Params {
        num_images_per_prompt: count,
        num_inference_steps: Some(steps),
        generator: Some(Generator::Seed(seed)),
        progress: false,
        ..Params::default()
    };
    let out = pipe.run(params)?;
    out.images
        .ok_or_else(|| usage("the sampler returned no images"))
}

/// Temporary files and folders a killed run left in `dir` (`.name.tmp...`):
/// never complete, never read, removed before the run goes on.
pub(crate) fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp") {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// The checkpoint with the highest step in `dir`, if any.
pub(crate) fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoints(dir)?.pop().map(|(_, p)| p))
}

/// `checkpoint-N` folders of `dir`, by step.
fn checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

pub(crate) fn prune_checkpoints(dir: &Path, limit: Option<usize>) -> Result<()> {
    let Some(limit) = limit else { return Ok(()) };
    let found = checkpoints(dir)?;
    let excess = found.len().saturating_sub(limit.max(1));
    for (_, path) in &found[..excess] {
        std::fs::remove_dir_all(path).map_err(|e| CliError::Input {
            path: path.clone(),
            message: format!("cannot remove an old checkpoint: {e}"),
        })?;
    }
    Ok(())
}

/// `loss.csv` and `loss.png` in `dir`.
pub(crate) fn write_losses(dir: &Path, losses: &[[f64; 4]]) -> Result<()> {
    let mut csv = String::from("step,loss,lr,grad_norm\n");
    for [s, l, lr, g] in losses {
        csv.push_str(&format!("{s},{l},{lr},{g}\n"));
    }
    write_atomic(&dir.join("loss.csv"), csv.as_bytes())?;
    let png = crate::plot::loss_plot(losses);
    write_atomic(&dir.join("loss.png"), &png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A skipped f16 step's non-finite loss or norm goes into the checkpoint
    /// as `null` (all JSON has) and must read back, or the run could not resume.
    #[test]
    fn run_state_with_non_finite_losses_survives_a_checkpoint() {
        let state = RunState {
            seed: 1,
            batch_size: 2,
            random_flip: false,
            random_crop: false,
            resolution: 8,
            max_train_steps: 3,
            losses: vec![
                [1.0, 0.5, 1e-4, f64::NAN],
                [2.0, f64::INFINITY, 1e-4, f64::NAN],
            ],
        };
        let json = serde_json::to_value(&state).unwrap();
        assert!(json["losses"][1][1].is_null());
        let back: RunState = serde_json::from_value(json).unwrap();
        assert_eq!(back.losses[0][..3], [1.0, 0.5, 1e-4]);
        assert!(back.losses[0][3].is_nan() && back.losses[1][1].is_nan());
    }
}
