//! Inpainting, as diffusers' `AutoPipelineForInpainting`
//! (`pipe(prompt, image=init_image, mask_image=mask).images[0]`): the white
//! part of the mask is repainted from the prompt, the rest kept.
//!
//! ```sh
//! cargo run --release -p examples --example inpaint -- --prompt "a red sofa" --output inpaint.png
//! ```
//!
//! Without `--model` it runs offline on the tiny random-weight inpainting
//! pipeline of the parity tests (a 9-channel UNet, as
//! `stable-diffusion-v1-5/stable-diffusion-inpainting`), and without
//! `--image`/`--mask` on the tests' 32×32 photo and disc mask
//! (`crates/diffusion-pipelines/tests/fixtures/inputs/`): noise out, in about
//! a second. For a real result pass an inpainting repo
//! (`--model stable-diffusion-v1-5/stable-diffusion-inpainting`) or any
//! text-to-image repo (its 4-channel UNet then inpaints in diffusers' legacy
//! mode, blending the noised original outside the mask at every step), with
//! your own `--image` and `--mask` of the same size.
//!
//! Flags: `--strength` (0..1, default 1: the masked part starts from pure
//! noise), `--steps` (default 25), `--seed` (default 0), `--output` (default `inpaint.png`).

use std::process::ExitCode;

use diffusion_pipelines::image::load_image;
use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params, Task};
use support::{Args, usage};

type B = diffusion_models::backend::Cpu;

const HELP: &str = "
cargo run --release -p examples --example inpaint -- [--model HUB_ID|DIR] [--image PNG] [--mask PNG] [--prompt TEXT]
    [--strength 0..1] [--steps N] [--seed N] [--output PNG]
";

fn main() -> ExitCode {
    support::run(HELP, inpaint)
}

fn inpaint(mut args: Args) -> support::Result {
    let model = args.model()?;
    let image = args.input_file("--image", || support::test_input("photo_a_32x32.png"))?;
    let mask = args.input_file("--mask", || support::test_input("mask_disc_32x32_RGB.png"))?;
    let prompt = args
        .string("--prompt")?
        .unwrap_or_else(|| "a red sofa".into());
    let strength: f64 = args.value("--strength", 1.0)?;
    let steps = args.count("--steps", 25)?;
    let seed: u64 = args.value("--seed", 0)?;
    let output = args
        .string("--output")?
        .unwrap_or_else(|| "inpaint.png".into());
    args.finish()?;
    if !(0.0..=1.0).contains(&strength) {
        return Err(usage(format!("--strength {strength}: must be in [0, 1]")));
    }
    let model = match model {
        Some(m) => m,
        None => support::tiny_pipeline("inpaint")?,
    };

    // pipe = AutoPipelineForInpainting.from_pretrained(model)
    let mut pipe = DiffusionPipeline::<B>::from_pretrained(&model, &LoadOptions::default())?;

    // image = pipe(prompt, image=init_image, mask_image=mask, generator=torch.manual_seed(seed)).images[0]
    let mut params = Params::prompt(prompt);
    params.image = Some(load_image(&image)?);
    params.mask_image = Some(load_image(&mask)?);
    params.strength = Some(strength);
    params.num_inference_steps = Some(steps);
    params.generator = Some(Generator::Seed(seed));
    let out = pipe.run(Task::Inpaint, params)?;

    let images = out.images.ok_or("no images")?;
    images.save_png(0, output.as_ref(), &[])?;
    println!(
        "{}: {} steps, {}×{} → {output}",
        pipe.class_name(),
        out.timesteps.len(),
        images.width,
        images.height
    );
    Ok(())
}
