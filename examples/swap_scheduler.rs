//! Swapping a pipeline's scheduler, by diffusers class name
//! (`pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)`)
//! and by A1111 / ComfyUI sampler name (`DPM++ 2M Karras`, `euler_ancestral`),
//! generating one image with each:
//!
//! ```sh
//! cargo run --release -p examples --example swap_scheduler -- --class EulerDiscreteScheduler --sampler "DPM++ 2M Karras"
//! ```
//!
//! Writes `swap_scheduler-class.png` and `swap_scheduler-sampler.png`
//! (`--output PREFIX` changes the prefix). The new scheduler is built from
//! the repo's scheduler config (betas, timestep spacing, prediction type), as
//! `from_config` does; a sampler name adds its config fields (`Karras`:
//! `use_karras_sigmas = true`).
//!
//! Without `--model` it runs offline on the tiny random-weight Stable
//! Diffusion 1.x pipeline of the parity tests (32×32 noise, about a second);
//! for real images pass a Hub repo id (`--model stable-diffusion-v1-5/stable-diffusion-v1-5`)
//! or a diffusers folder. Other flags: `--prompt`, `--steps` (default 25), `--seed` (default 0).

use std::process::ExitCode;

use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params, SchedulerChoice};
use diffusion_schedulers::{SCHEDULER_CLASSES, from_sampler_name};
use support::{Args, usage};

type B = diffusion_models::backend::Cpu;

const HELP: &str = "
cargo run --release -p examples --example swap_scheduler -- [--model HUB_ID|DIR] [--class CLASS] [--sampler NAME]
    [--prompt TEXT] [--steps N] [--seed N] [--output PREFIX]
";

fn main() -> ExitCode {
    support::run(HELP, swap_scheduler)
}

fn swap_scheduler(mut args: Args) -> support::Result {
    let model = args.model()?;
    let class = args
        .string("--class")?
        .unwrap_or_else(|| "EulerDiscreteScheduler".into());
    let sampler = args
        .string("--sampler")?
        .unwrap_or_else(|| "DPM++ 2M Karras".into());
    let prompt = args
        .string("--prompt")?
        .unwrap_or_else(|| "a lighthouse at dusk".into());
    let steps = args.count("--steps", 25)?;
    let seed: u64 = args.value("--seed", 0)?;
    let prefix = args
        .string("--output")?
        .unwrap_or_else(|| "swap_scheduler".into());
    args.finish()?;
    if !SCHEDULER_CLASSES.contains(&class.as_str()) {
        return Err(usage(format!(
            "--class {class}: not a scheduler class (one of {})",
            SCHEDULER_CLASSES.join(", ")
        )));
    }
    if let Err(e) = from_sampler_name(&sampler) {
        return Err(usage(format!("--sampler: {e}")));
    }
    let model = match model {
        Some(m) => m,
        None => support::tiny_pipeline("sd1")?,
    };

    let mut pipe = DiffusionPipeline::<B>::from_pretrained(&model, &LoadOptions::default())?;
    println!("the repo's scheduler: {}", pipe.scheduler_name());

    // pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_scheduler(&SchedulerChoice {
        name: Some(class.clone()),
        ..SchedulerChoice::default()
    })?;
    generate(
        &mut pipe,
        &prompt,
        steps,
        seed,
        &format!("{prefix}-class.png"),
    )?;

    // By sampler name: "DPM++ 2M Karras" is DPMSolverMultistepScheduler with
    // use_karras_sigmas = true; `overrides` sets further config fields.
    pipe.set_scheduler(&SchedulerChoice {
        name: Some(sampler.clone()),
        ..SchedulerChoice::default()
    })?;
    generate(
        &mut pipe,
        &prompt,
        steps,
        seed,
        &format!("{prefix}-sampler.png"),
    )?;
    Ok(())
}

/// One image with the pipeline's current scheduler.
fn generate(
    pipe: &mut DiffusionPipeline<B>,
    prompt: &str,
    steps: usize,
    seed: u64,
    output: &str,
) -> support::Result {
    let mut params = if pipe.is_unconditional() {
        Params::default()
    } else {
        Params::prompt(prompt)
    };
    params.num_inference_steps = Some(steps);
    params.generator = Some(Generator::Seed(seed));
    let out = pipe.call(params)?;
    out.images
        .ok_or("no images")?
        .save_png(0, output.as_ref(), &[])?;
    println!(
        "{}: {} steps → {output}",
        pipe.scheduler_name(),
        out.timesteps.len()
    );
    Ok(())
}
