//! The hand-written denoising loop of diffusers' README, in Rust: a
//! `UNet2DModel`, a scheduler, and a loop.
//!
//! ```sh
//! cargo run --release -p diffusion-pipelines --example denoise_loop -- google/ddpm-cat-256 cat.png
//! ```
//!
//! The first argument is a Hub repo id or a local DDPM-style folder
//! (`unet/` + `scheduler/`); the second the PNG to write.

use burn::tensor::Tensor;
use diffusion_hub::resolve::{ResolveOptions, Resolved, resolve};
use diffusion_models::Precision;
use diffusion_models::config::read_config;
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_pipelines::{Generator, Images, Latents, SeededNoise};
use diffusion_schedulers::{StepOptions, from_config_str};

type B = diffusion_models::backend::Cpu;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "google/ddpm-cat-256".into());
    let output = args.next().unwrap_or_else(|| "sample.png".into());
    let Resolved::Pipeline(repo) = resolve(&name, &ResolveOptions::from_env())? else {
        return Err(format!("{name}: not a pipeline folder").into());
    };
    let (unet_dir, scheduler_dir) = (
        &repo.components["unet"].dir,
        &repo.components["scheduler"].dir,
    );

    // scheduler = DDPMScheduler.from_pretrained(...); model = UNet2DModel.from_pretrained(...)
    let device = Default::default();
    let model = UNet2DModel::<B>::from_dir(unet_dir, &device, Precision::F32)?;
    let config = read_config::<UNet2DConfig>(&unet_dir.join("config.json"))?.config;
    let text = std::fs::read_to_string(scheduler_dir.join("scheduler_config.json"))?;
    let mut scheduler = from_config_str::<Latents<B>>(&text)?.scheduler;
    scheduler.set_timesteps(50)?;

    // noise = torch.randn((1, 3, sample_size, sample_size), generator=torch.manual_seed(0))
    let size = config
        .sample_size
        .as_ref()
        .and_then(|s| s.get(0))
        .unwrap_or(64);
    let mut noise = SeededNoise::<B>::new(&Generator::Seed(0), 1, &device)?;
    let mut input = noise.randn([1, config.in_channels, size, size])?;

    for t in scheduler.timesteps().to_vec() {
        let timestep = Tensor::<B, 1>::from_floats([t as f32], &device);
        let noisy_residual = model.forward(input.clone(), timestep, None)?;
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
    Images::from_decoded(input).save_png(0, output.as_ref(), &[])?;
    println!("wrote {output}");
    Ok(())
}
