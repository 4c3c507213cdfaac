//! Training a small `UNet2DModel` from scratch on a folder of images, as
//! diffusers' `train_unconditional.py` does, with
//! `diffusion_pipelines::training::Trainer` (one optimizer step per call:
//! noise the batch, predict, MSE, AdamW, moving average), then saving a
//! diffusers `DDPMPipeline` folder and sampling an image from it:
//!
//! ```sh
//! cargo run --release -p examples --example train -- --steps 20 --output-dir train-run
//! ```
//!
//! Without `--train-data-dir` it trains offline on the small PNGs (photos and masks) of the
//! pipeline tests (`crates/diffusion-pipelines/tests/fixtures/inputs/`) at
//! 16×16: twenty steps take a few seconds and show the loss falling; it
//! does not learn to draw in that time. The written folder
//! (`train-run/`: `model_index.json`, `unet/`, `scheduler/`) loads in Python
//! with `DDPMPipeline.from_pretrained("train-run")`, and here with
//! `DiffusionPipeline::from_pretrained` (`txt2img --model train-run`).
//! For a real run use your own images and thousands of steps, or the
//! `diffuse train` command (checkpoints, resume, sample grids, loss curve;
//! see docs/training.md).
//!
//! Flags: `--train-data-dir DIR`, `--resolution` (default 16), `--channels`
//! (1 or 3, default 3), `--batch-size` (default 4), `--steps` (default 20),
//! `--learning-rate` (default 1e-3), `--seed` (default 0), `--output-dir`
//! (default `train-run`; files in it are replaced).

use std::path::PathBuf;
use std::process::ExitCode;

use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_pipelines::training::{
    BatchSampler, CpuTraining, ImageDataset, LrSchedule, LrScheduleKind, TrainConfig, Trainer,
    build_model,
};
use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params};
use serde_json::json;
use support::{Args, usage};

/// Training runs on Burn's autodiff over the CPU backend; sampling on the
/// CPU backend itself.
type T = CpuTraining;
type B = diffusion_models::backend::Cpu;

const HELP: &str = "
cargo run --release -p examples --example train -- [--train-data-dir DIR] [--resolution N] [--channels 1|3]
    [--batch-size N] [--steps N] [--learning-rate LR] [--seed N] [--output-dir DIR]
";

fn main() -> ExitCode {
    support::run(HELP, train)
}

fn train(mut args: Args) -> support::Result {
    let data_dir = args
        .string("--train-data-dir")?
        .map(PathBuf::from)
        .unwrap_or_else(support::test_inputs_dir);
    let resolution = args.count("--resolution", 16)?;
    let channels = args.count("--channels", 3)?;
    let batch_size = args.count("--batch-size", 4)?;
    let steps = args.count("--steps", 20)?;
    let learning_rate: f64 = args.value("--learning-rate", 1e-3)?;
    let seed: u64 = args.value("--seed", 0)?;
    let output_dir = PathBuf::from(
        args.string("--output-dir")?
            .unwrap_or_else(|| "train-run".into()),
    );
    args.finish()?;
    if !data_dir.is_dir() {
        return Err(usage(format!(
            "--train-data-dir: {} is not a folder",
            data_dir.display()
        )));
    }
    if channels != 1 && channels != 3 {
        return Err(usage(format!(
            "--channels {channels}: 1 (grayscale) or 3 (RGB)"
        )));
    }
    if resolution % 2 != 0 {
        return Err(usage(format!(
            "--resolution {resolution}: must be even (the UNet halves it once)"
        )));
    }
    if !(learning_rate > 0.0 && learning_rate.is_finite()) {
        return Err(usage(format!(
            "--learning-rate {learning_rate}: must be positive"
        )));
    }
    let device = Default::default();

    // dataset = load_dataset("imagefolder", data_dir=...) with Resize, CenterCrop, Normalize([0.5], [0.5])
    let data = ImageDataset::load(&data_dir, resolution, channels)?;
    println!(
        "{} images from {}, {resolution}×{resolution}",
        data.len(),
        data_dir.display()
    );

    // model = UNet2DModel(...): a small one, trained from random weights
    let model_config: UNet2DConfig = serde_json::from_value(json!({
        "sample_size": resolution, "in_channels": channels, "out_channels": channels,
        "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8
    }))?;
    // noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    let noise_scheduler = json!({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"});
    // optimizer = AdamW(...), lr_scheduler = get_scheduler("cosine", ...), ema_model = EMAModel(...):
    // the script's defaults, with a shorter warm-up and a higher rate for a short run
    let config = TrainConfig {
        learning_rate,
        lr_schedule: LrSchedule::new(LrScheduleKind::Cosine, (steps / 10) as u64, steps as u64),
        ..TrainConfig::default()
    };
    let (model, keys) = build_model::<T, UNet2DModel<T>>(&model_config, None, &device, seed)?;
    let mut trainer =
        Trainer::from_parts(model, model_config, keys, noise_scheduler, config, device)?;

    // for step, batch in enumerate(train_dataloader): noise, timesteps, noisy_images, loss, backward, step
    let sampler = BatchSampler {
        seed,
        batch_size,
        random_flip: true,
    };
    let report_every = (steps / 10).max(1);
    let started = std::time::Instant::now();
    for step in 0..steps as u64 {
        let batch =
            sampler.batch::<T>(&data, step, trainer.num_train_timesteps(), trainer.device())?;
        let stats = trainer.step(&batch)?;
        if (step + 1) % report_every as u64 == 0 || step == 0 {
            println!(
                "step {:>4}/{steps}: loss {:.4}, grad norm {:.3}, lr {:.2e}",
                stats.step, stats.loss, stats.grad_norm, stats.lr
            );
        }
    }
    println!("{steps} steps in {:.1} s", started.elapsed().as_secs_f64());

    // pipeline = DDPMPipeline(unet=ema_model, scheduler=noise_scheduler); pipeline.save_pretrained(output_dir)
    trainer.save_pipeline(&output_dir, "DDPMPipeline", None)?;

    // images = pipeline(generator=torch.manual_seed(0), num_inference_steps=50).images
    let mut pipe = DiffusionPipeline::<B>::from_pretrained(
        &output_dir.to_string_lossy(),
        &LoadOptions::default(),
    )?;
    let params = Params {
        num_inference_steps: Some(50),
        generator: Some(Generator::Seed(0)),
        ..Params::default()
    };
    let sample = output_dir.join("sample.png");
    pipe.call(params)?
        .images
        .ok_or("no images")?
        .save_png(0, &sample, &[])?;
    println!(
        "saved the pipeline to {}, a sample to {}",
        output_dir.display(),
        sample.display()
    );
    Ok(())
}
