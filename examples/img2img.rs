//! Image-to-image, as diffusers' `AutoPipelineForImage2Image`
//! (`pipe(prompt, image=init_image, strength=0.75).images[0]`): the input
//! image is encoded by the VAE, noised to `strength` of the schedule, and
//! denoised towards the prompt.
//!
//! ```sh
//! cargo run --release -p examples --example img2img -- --prompt "an oil painting" --strength 0.75 --output img2img.png
//! ```
//!
//! Without `--model` it runs offline on the tiny random-weight Stable
//! Diffusion 1.x pipeline of the parity tests, and without `--image` on the
//! tests' 32×32 photo (`crates/diffusion-pipelines/tests/fixtures/inputs/photo_a_32x32.png`):
//! noise out, in about a second. For a real result pass a Hub repo id
//! (`--model stable-diffusion-v1-5/stable-diffusion-v1-5`) or a diffusers
//! folder, and your own `--image` (PNG or JPEG; the output has its size,
//! rounded down to a multiple of 8). Any text-to-image repo does img2img:
//! the components are the same (diffusers' `from_pipe`).
//!
//! Flags: `--strength` (0..1, default 0.75), `--steps` (default 25; img2img
//! runs `strength` of them), `--seed` (default 0), `--output` (default `img2img.png`).

use std::process::ExitCode;

use diffusion_pipelines::image::load_image;
use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params, Task};
use support::{Args, usage};

type B = diffusion_models::backend::Cpu;

const HELP: &str = "
cargo run --release -p examples --example img2img -- [--model HUB_ID|DIR] [--image PNG] [--prompt TEXT]
    [--strength 0..1] [--steps N] [--seed N] [--output PNG]
";

fn main() -> ExitCode {
    support::run(HELP, img2img)
}

fn img2img(mut args: Args) -> support::Result {
    let model = args.model()?;
    let image = args.input_file("--image", || support::test_input("photo_a_32x32.png"))?;
    let prompt = args
        .string("--prompt")?
        .unwrap_or_else(|| "an oil painting".into());
    let strength: f64 = args.value("--strength", 0.75)?;
    let steps = args.count("--steps", 25)?;
    let seed: u64 = args.value("--seed", 0)?;
    let output = args
        .string("--output")?
        .unwrap_or_else(|| "img2img.png".into());
    args.finish()?;
    if !(0.0..=1.0).contains(&strength) {
        return Err(usage(format!("--strength {strength}: must be in [0, 1]")));
    }
    let model = match model {
        Some(m) => m,
        None => support::tiny_pipeline("sd1")?,
    };

    // pipe = AutoPipelineForImage2Image.from_pretrained(model)
    let mut pipe = DiffusionPipeline::<B>::from_pretrained(&model, &LoadOptions::default())?;

    // image = pipe(prompt, image=init_image, strength=strength, generator=torch.manual_seed(seed)).images[0]
    let mut params = Params::prompt(prompt);
    params.image = Some(load_image(&image)?);
    params.strength = Some(strength);
    params.num_inference_steps = Some(steps);
    params.generator = Some(Generator::Seed(seed));
    let out = pipe.run(Task::ImageToImage, params)?;

    let images = out.images.ok_or("no images")?;
    images.save_png(0, output.as_ref(), &[])?;
    println!(
        "{}: {} of {steps} steps at strength {strength}, {}×{} → {output}",
        pipe.class_name(),
        out.timesteps.len(),
        images.width,
        images.height
    );
    Ok(())
}
