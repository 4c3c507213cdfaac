//! Text-to-image in a few lines, as diffusers' one-liner
//! (`DiffusionPipeline.from_pretrained(model)(prompt, generator=torch.manual_seed(seed)).images[0].save(path)`):
//!
//! ```sh
//! cargo run --release -p examples --example txt2img -- --prompt "a squirrel in Picasso style" --output squirrel.png
//! ```
//!
//! Without `--model` it runs offline on the tiny random-weight Stable
//! Diffusion 1.x pipeline of the parity tests: a 32×32 image of noise in
//! about a second, through the same code as a real model. For a real image
//! name a model: a Hub repo id (`--model stable-diffusion-v1-5/stable-diffusion-v1-5`,
//! downloaded into the Hugging Face cache on first use, 512×512, minutes on a
//! CPU) or a local diffusers folder (`--model crates/diffusion-cli/assets/default-model`
//! draws a 16×16 handwritten digit, ignoring the prompt: it is unconditional).
//! A single-file `.safetensors`/`.ckpt` checkpoint carries no tokenizer: see
//! the `single_file` example.
//!
//! Flags: `--model`, `--prompt`, `--steps` (default 25), `--seed` (default 0;
//! the same seed gives diffusers' image for a CPU `torch.Generator`),
//! `--output` (default `txt2img.png`).

use std::process::ExitCode;

use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params};
use support::Args;

type B = diffusion_models::backend::Cpu;

const HELP: &str = "
cargo run --release -p examples --example txt2img -- [--model HUB_ID|DIR] [--prompt TEXT] [--steps N] [--seed N] [--output PNG]
";

fn main() -> ExitCode {
    support::run(HELP, txt2img)
}

fn txt2img(mut args: Args) -> support::Result {
    let model = args.model()?;
    let prompt = args
        .string("--prompt")?
        .unwrap_or_else(|| "a squirrel in Picasso style".into());
    let steps = args.count("--steps", 25)?;
    let seed: u64 = args.value("--seed", 0)?;
    let output = args
        .string("--output")?
        .unwrap_or_else(|| "txt2img.png".into());
    args.finish()?;
    let model = match model {
        Some(m) => m,
        None => support::tiny_pipeline("sd1")?,
    };

    // pipe = DiffusionPipeline.from_pretrained(model)
    let mut pipe = DiffusionPipeline::<B>::from_pretrained(&model, &LoadOptions::default())?;

    // image = pipe(prompt, num_inference_steps=steps, generator=torch.manual_seed(seed)).images[0]
    let mut params = if pipe.is_unconditional() {
        Params::default() // DDPM/DDIM pipelines take no prompt
    } else {
        Params::prompt(prompt)
    };
    params.num_inference_steps = Some(steps);
    params.generator = Some(Generator::Seed(seed));
    let images = pipe.call(params)?.images.ok_or("no images")?;

    // image.save(output)
    images.save_png(0, output.as_ref(), &[])?;
    println!(
        "{}: {}×{} → {output}",
        pipe.class_name(),
        images.width,
        images.height
    );
    Ok(())
}
