//! The denoising loop written by hand, as diffusers' docs take a Stable
//! Diffusion pipeline apart ("Deconstruct the Stable Diffusion pipeline"):
//! load the tokenizer, text encoder, UNet, VAE and a scheduler, encode the
//! prompt and the empty prompt, loop over the timesteps with
//! classifier-free guidance, decode the latents with the VAE.
//!
//! ```sh
//! cargo run --release -p examples --example denoising_loop -- --prompt "a photograph of an astronaut riding a horse" --output astronaut.png
//! ```
//!
//! Without `--model` it runs offline on the tiny random-weight Stable
//! Diffusion 1.x pipeline of the parity tests (a 32×32 image of noise, about
//! a second). With a real model (`--model stable-diffusion-v1-5/stable-diffusion-v1-5`,
//! a Hub repo id, or a diffusers folder) it draws the picture. The loop gives
//! the image `txt2img` gives with the same scheduler, steps, guidance and seed.
//!
//! An unconditional DDPM/DDIM model (`--model google/ddpm-cat-256`, or
//! `--model crates/diffusion-cli/assets/default-model`: a handwritten digit,
//! offline) runs the shorter loop of diffusers' quicktour instead: a
//! `UNet2DModel` and its scheduler, no text and no VAE.
//!
//! Flags: `--prompt`, `--steps` (default 25), `--guidance` (default 7.5),
//! `--scheduler` (a diffusers class; default `UniPCMultistepScheduler` as in
//! the docs, the repo's own for unconditional models), `--seed` (default 0),
//! `--output` (default `denoising_loop.png`).

use std::path::Path;
use std::process::ExitCode;

use burn::tensor::Tensor;
use diffusion_hub::resolve::{ResolveOptions, Resolved, ResolvedModel, resolve};
use diffusion_hub::tokenizer::ClipTokenizer;
use diffusion_models::Precision;
use diffusion_models::autoencoder_kl::AutoencoderKL;
use diffusion_models::clip::CLIPTextModel;
use diffusion_models::config::read_config;
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_pipelines::{Generator, Images, Latents, SeededNoise};
use diffusion_schedulers::{
    SCHEDULER_CLASSES, Scheduler, StepOptions, from_config_as, parse_config_text,
};
use support::{Args, usage};

type B = diffusion_models::backend::Cpu;

const HELP: &str = "
cargo run --release -p examples --example denoising_loop -- [--model HUB_ID|DIR] [--prompt TEXT] [--steps N]
    [--guidance SCALE] [--scheduler CLASS] [--seed N] [--output PNG]
";

/// What the command line asks for.
struct Run {
    prompt: String,
    steps: usize,
    guidance_scale: f64,
    scheduler: Option<String>,
    seed: u64,
    output: String,
}

fn main() -> ExitCode {
    support::run(HELP, |mut args: Args| {
        let model = args.model()?;
        let run = Run {
            prompt: args
                .string("--prompt")?
                .unwrap_or_else(|| "a photograph of an astronaut riding a horse".into()),
            steps: args.count("--steps", 25)?,
            guidance_scale: args.value("--guidance", 7.5)?,
            scheduler: args.string("--scheduler")?,
            seed: args.value("--seed", 0)?,
            output: args
                .string("--output")?
                .unwrap_or_else(|| "denoising_loop.png".into()),
        };
        args.finish()?;
        if let Some(class) = run
            .scheduler
            .as_deref()
            .filter(|c| !SCHEDULER_CLASSES.contains(c))
        {
            return Err(usage(format!(
                "--scheduler {class}: not a scheduler class (one of {})",
                SCHEDULER_CLASSES.join(", ")
            )));
        }
        let model = match model {
            Some(m) => m,
            None => support::tiny_pipeline("sd1")?,
        };
        let Resolved::Pipeline(repo) = resolve(&model, &ResolveOptions::from_env())? else {
            return Err(format!("{model}: not a diffusers pipeline (no model_index.json)").into());
        };
        match repo.model_index.class_name.as_str() {
            "DDPMPipeline" | "DDIMPipeline" => unconditional(&repo, &run),
            "StableDiffusionPipeline" => text_to_image(&repo, &run),
            other => Err(format!(
                "{model}: a {other}; this loop is Stable Diffusion 1.x/2.x's or an unconditional \
                 model's (the pipelines run the others)"
            )
            .into()),
        }
    })
}

/// A component's folder in the resolved repo.
fn folder<'r>(repo: &'r ResolvedModel, name: &str) -> support::Result<&'r Path> {
    match repo.components.get(name) {
        Some(c) => Ok(&c.dir),
        None => Err(format!("{}: no `{name}` component", repo.source.display_name()).into()),
    }
}

/// The repo's scheduler config, as the class `class` (default: the repo's).
fn scheduler(
    repo: &ResolvedModel,
    class: Option<&str>,
) -> support::Result<Box<dyn Scheduler<Latents<B>>>> {
    let path = folder(repo, "scheduler")?.join("scheduler_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = parse_config_text(&text)?;
    let repo_class = config["_class_name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(from_config_as(class.unwrap_or(&repo_class), &config)?.scheduler)
}

/// Stable Diffusion 1.x/2.x, step by step.
fn text_to_image(repo: &ResolvedModel, run: &Run) -> support::Result {
    let device = Default::default();

    // vae = AutoencoderKL.from_pretrained(repo, subfolder="vae"), and so on
    let vae = AutoencoderKL::<B>::from_dir(folder(repo, "vae")?, &device, Precision::F32)?;
    let tokenizer = ClipTokenizer::from_dir(folder(repo, "tokenizer")?)?;
    let text_encoder =
        CLIPTextModel::<B>::from_dir(folder(repo, "text_encoder")?, &device, Precision::F32)?;
    let unet = UNet2DConditionModel::<B>::from_dir(folder(repo, "unet")?, &device, Precision::F32)?;
    let unet_config =
        read_config::<UNet2DConditionConfig>(&folder(repo, "unet")?.join("config.json"))?.config;
    // scheduler = UniPCMultistepScheduler.from_pretrained(repo, subfolder="scheduler")
    let class = run
        .scheduler
        .as_deref()
        .unwrap_or("UniPCMultistepScheduler");
    let mut scheduler = scheduler(repo, Some(class))?;

    let vae_scale_factor = 1 << (vae.config.block_out_channels.len() - 1);
    let sample_size = unet_config
        .sample_size
        .as_ref()
        .and_then(|s| s.get(0))
        .unwrap_or(64);
    let (height, width) = (
        sample_size * vae_scale_factor,
        sample_size * vae_scale_factor,
    );

    // text_input = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    // text_embeddings = text_encoder(text_input.input_ids)[0]
    let text_input = tokenizer.encode(&run.prompt)?;
    let text_embeddings = text_encoder.forward_ids(&[text_input])?.last_hidden_state;
    // uncond_input = tokenizer([""], padding="max_length", ...)
    let uncond_input = tokenizer.encode("")?;
    let uncond_embeddings = text_encoder.forward_ids(&[uncond_input])?.last_hidden_state;
    let text_embeddings = Tensor::cat(vec![uncond_embeddings, text_embeddings], 0);

    // (The pipelines lay out the schedule before drawing the noise: some
    // schedulers' init_noise_sigma depends on it.)
    scheduler.set_timesteps(run.steps)?;

    // latents = torch.randn((1, unet.config.in_channels, height // 8, width // 8), generator=torch.manual_seed(seed))
    // latents = latents * scheduler.init_noise_sigma
    let mut noise = SeededNoise::<B>::new(&Generator::Seed(run.seed), 1, &device)?;
    let shape = [
        1,
        unet_config.in_channels,
        height / vae_scale_factor,
        width / vae_scale_factor,
    ];
    let mut latents = noise.randn(shape)?.mul_scalar(scheduler.init_noise_sigma());

    for t in scheduler.timesteps().to_vec() {
        // latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep=t)
        let latent_model_input = Tensor::cat(vec![latents.clone(), latents.clone()], 0);
        let latent_model_input = scheduler
            .scale_model_input(&Latents(latent_model_input), t)?
            .0;

        // noise_pred = unet(latent_model_input, t, encoder_hidden_states=text_embeddings).sample
        let timestep = Tensor::<B, 1>::from_floats([t as f32], &device);
        let noise_pred = unet.forward(
            latent_model_input,
            timestep,
            text_embeddings.clone(),
            UNetConditions::default(),
        )?;

        // noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        // noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        let noise_pred_uncond = noise_pred.clone().narrow(0, 0, 1);
        let noise_pred_text = noise_pred.narrow(0, 1, 1);
        let noise_pred = noise_pred_uncond.clone()
            + (noise_pred_text - noise_pred_uncond).mul_scalar(run.guidance_scale);

        // latents = scheduler.step(noise_pred, t, latents).prev_sample
        let step = scheduler.step(
            &Latents(noise_pred),
            t,
            &Latents(latents),
            &StepOptions::default(),
            &mut noise,
        )?;
        latents = step.prev_sample.0;
    }

    // image = vae.decode(latents / vae.config.scaling_factor).sample
    let image = vae.decode(latents.div_scalar(vae.config.scaling_factor))?;
    // image = (image / 2 + 0.5).clamp(0, 1)
    Images::from_decoded(image).save_png(0, run.output.as_ref(), &[])?;
    println!(
        "{class}, {} steps, guidance {}: {width}×{height} → {}",
        run.steps, run.guidance_scale, run.output
    );
    Ok(())
}

/// diffusers' quicktour: a `UNet2DModel`, its scheduler, and a loop.
fn unconditional(repo: &ResolvedModel, run: &Run) -> support::Result {
    let device = Default::default();

    // scheduler = DDPMScheduler.from_pretrained(repo); model = UNet2DModel.from_pretrained(repo)
    let unet_dir = folder(repo, "unet")?;
    let model = UNet2DModel::<B>::from_dir(unet_dir, &device, Precision::F32)?;
    let config = read_config::<UNet2DConfig>(&unet_dir.join("config.json"))?.config;
    let mut scheduler = scheduler(repo, run.scheduler.as_deref())?;
    scheduler.set_timesteps(run.steps)?;

    // noise = torch.randn((1, 3, sample_size, sample_size), generator=torch.manual_seed(seed))
    let size = config
        .sample_size
        .as_ref()
        .and_then(|s| s.get(0))
        .unwrap_or(64);
    let mut noise = SeededNoise::<B>::new(&Generator::Seed(run.seed), 1, &device)?;
    let mut input = noise.randn([1, config.in_channels, size, size])?;
    input = input.mul_scalar(scheduler.init_noise_sigma()); // 1 for DDPM and DDIM

    for t in scheduler.timesteps().to_vec() {
        // noisy_residual = model(input, t).sample
        let timestep = Tensor::<B, 1>::from_floats([t as f32], &device);
        let noisy_residual = model.forward(input.clone(), timestep, None)?;
        // input = scheduler.step(noisy_residual, t, input).prev_sample
        let step = scheduler.step(
            &Latents(noisy_residual),
            t,
            &Latents(input),
            &StepOptions::default(),
            &mut noise,
        )?;
        input = step.prev_sample.0;
    }

    // image = (input / 2 + 0.5).clamp(0, 1)
    Images::from_decoded(input).save_png(0, run.output.as_ref(), &[])?;
    println!(
        "{}, {} steps: {size}×{size} → {}",
        scheduler.class_name(),
        run.steps,
        run.output
    );
    Ok(())
}
