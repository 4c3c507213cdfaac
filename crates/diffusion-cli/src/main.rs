//! # diffuse
//!
//! A thin command line over `diffusion-pipelines`: diffusers' pipelines with
//! diffusers' parameter names, seeds that reproduce diffusers' CPU
//! `torch.Generator` images, and the parameters stored in every PNG.
//!
//! ```text
//! diffuse generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 \
//!     --prompt "a photo of an astronaut riding a horse on mars" --seed 0 -o astronaut.png
//! diffuse generate --model google/ddpm-cat-256 --steps 1000 --num-images 2 -o cat.png   # cat-0.png, cat-1.png
//! diffuse img2img --model ./sd15 --image in.png --strength 0.6 -p "oil painting" \
//!     --scheduler "DPM++ 2M Karras" --steps 30
//! diffuse inpaint --model ./sd15-inpainting --image in.png --mask mask.png -p "a red sofa"
//! diffuse generate --model ./sdxl -p "a cat" -p "a dog" --seeds 1,2 \
//!     --scheduler EulerDiscreteScheduler --scheduler-config timestep_spacing=trailing
//! diffuse convert model.safetensors ./model-diffusers
//! diffuse info --model stabilityai/stable-diffusion-xl-base-1.0
//! ```
//!
//! Flags follow diffusers' call parameters: `--prompt` (repeat for a batch),
//! `--negative-prompt`, `--prompt-2`/`--negative-prompt-2` (SDXL), `--steps`,
//! `--guidance`, `--guidance-rescale`, `--width`/`--height`, `--num-images`
//! (per prompt), `--eta`, `--clip-skip`, `--long-prompt` (chunk prompts over 77
//! tokens instead of truncating), `--strength`, `--image`, `--mask`,
//! `--original-size HxW`, `--crops-coords-top-left Y,X`, `--target-size HxW`,
//! `--denoising-end`. Randomness: `--seed N` is one generator for the batch,
//! `--seeds a,b,c` one per image (an image then does not depend on its batch);
//! without either a seed is drawn and recorded. `--latents FILE` passes
//! initial latents (a safetensors tensor `latents`), `--output-latents FILE`
//! writes the final ones. `--scheduler` takes a diffusers class or an A1111
//! name; `--scheduler-config KEY=VALUE` overrides the config (VALUE is JSON,
//! or a bare string). `--dtype f32|f16|bf16`, `--device cpu|cuda` (CUDA in
//! builds with the `cuda` feature), `--variant`, `--revision`, `--offline`.
//!
//! Outputs: `--output PATH` (default `output.png`; several images get `-0`,
//! `-1`, ... before the extension). Each PNG carries a `parameters` text entry
//! (the run's settings as JSON, with that image's prompt and seed) and the
//! main fields as separate entries; stdout gets one JSON line per image,
//! `{"path": ..., "parameters": {...}}`. Nothing is written unless the
//! pipeline succeeded.
//!
//! Masks must have the input image's size: diffusers would stretch a mask of
//! another size to the image's, which misplaces the repainted region when
//! the aspect ratios differ, so `diffuse` refuses it.
//!
//! The models run the op formulations measured fastest on the device
//! (`diffusion_models::Formulation::for_backend`); `DIFFUSION_ATTENTION=fused|matmul|tiled`,
//! `DIFFUSION_CONV=direct|im2col`, `DIFFUSION_GROUP_NORM=one-pass|two-stage` and
//! `DIFFUSION_LINEAR=matmul|packed` choose others (training always runs Burn's own ops).
//!
//! Errors are one `error: ...` line on stderr and a non-zero exit status.

mod args;
mod cli;
mod convert;
mod error;
mod fine_tune;
mod generate;
mod info;
mod model;
mod plot;
mod settings;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ArgMatches;
use clap::error::ErrorKind;
use diffusion_models::Formulation;
use diffusion_pipelines::Task;
use serde_json::json;

use crate::args::Device;
use crate::error::Result;
use crate::generate::Written;
use crate::model::HubArgs;
use crate::settings::Settings;

fn main() -> ExitCode {
    let matches = match cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let code = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    2
                } else {
                    0
                };
                let _ = e.print();
                return ExitCode::from(code);
            }
            // clap's message and tip without its usage block: one line.
            let text = e.render().to_string();
            let mut lines = text.lines();
            let mut line = lines.next().unwrap_or("error: bad arguments").to_string();
            // "the following required arguments were not provided:" lists
            // them on the indented lines below: keep them on this line.
            if line.ends_with(':') {
                let listed: Vec<&str> = lines
                    .take_while(|l| l.starts_with(' '))
                    .map(str::trim)
                    .collect();
                line = format!("{line} {}", listed.join(", "));
            }
            if let Some(tip) = text.lines().find_map(|l| l.trim().strip_prefix("tip: ")) {
                line = format!("{line} ({tip})");
            }
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    match run(&matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The library names its Rust opt-in; the user needs the flag.
            let message = e.to_string().replace('\n', " ").replace(
                "(`PickleOptions::skip_unsafe_globals`)",
                "(--skip-unsafe-globals)",
            );
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(matches: &ArgMatches) -> Result<()> {
    // Every command refuses a misspelt value, not only those that load a model.
    formulation_for(Device::Cpu)?;
    match matches.subcommand() {
        Some(("generate", m)) => generation(Task::TextToImage, m),
        Some(("img2img", m)) => generation(Task::ImageToImage, m),
        Some(("inpaint", m)) => generation(Task::Inpaint, m),
        Some(("preprocess", m)) => {
            let spec = m.get_one::<String>("method").expect("required");
            let (low, high) = diffusion_pipelines::preprocess::parse_canny(spec)
                .map_err(|e| error::usage(format!("METHOD {e}")))?;
            let input = PathBuf::from(m.get_one::<String>("input").expect("required"));
            let output = PathBuf::from(m.get_one::<String>("output").expect("required"));
            if output.as_os_str().is_empty() {
                return Err(error::usage("OUT \"\": an empty path"));
            }
            let image = diffusion_pipelines::image::load_image(&input)?;
            let edges = diffusion_pipelines::preprocess::canny(&image, low, high);
            let rgb = image::DynamicImage::ImageLuma8(edges).to_rgb8();
            let mut bytes = Vec::new();
            image::DynamicImage::ImageRgb8(rgb)
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .map_err(|e| error::usage(format!("{}: cannot encode: {e}", output.display())))?;
            diffusion_pipelines::image::write_atomic(&output, &bytes)?;
            println!(
                "{}: canny {low},{high} -> {}",
                input.display(),
                output.display()
            );
            Ok(())
        }
        Some(("convert", m)) => {
            let checkpoint = PathBuf::from(m.get_one::<String>("checkpoint").expect("required"));
            let out_dir = PathBuf::from(m.get_one::<String>("out_dir").expect("required"));
            let mut overrides: std::collections::BTreeMap<_, serde_json::Map<_, _>> =
                Default::default();
            for (component, field, value) in m
                .get_many::<(String, String, serde_json::Value)>("set")
                .into_iter()
                .flatten()
            {
                overrides
                    .entry(component.clone())
                    .or_default()
                    .insert(field.clone(), value.clone());
            }
            if out_dir.as_os_str().is_empty() {
                return Err(error::usage("OUT_DIR \"\": an empty path"));
            }
            if let Some(p) = m.get_one::<String>("prediction_type")
                && !matches!(p.as_str(), "epsilon" | "v_prediction" | "sample")
            {
                return Err(error::usage(format!(
                    "--prediction-type {p:?}: expected epsilon, v_prediction or sample"
                )));
            }
            let options = diffusion_hub::single_file::ConvertOptions {
                prediction_type: m.get_one::<String>("prediction_type").cloned(),
                extract_ema: m.get_flag("extract_ema"),
                overrides,
            };
            let pickle = diffusion_hub::torch_pickle::PickleOptions::default()
                .skip_unsafe_globals(m.get_flag("skip_unsafe_globals"));
            print!(
                "{}",
                convert::convert(&checkpoint, &out_dir, &options, &pickle)?
            );
            Ok(())
        }
        Some(("train", m)) => {
            let args = train::TrainArgs::from_matches(m)?;
            let device = m
                .get_one::<Device>("device")
                .copied()
                .unwrap_or(Device::Cpu);
            // Training builds its models with Burn's own ops
            // (`diffusion_pipelines::training::build_model`).
            let summary =
                match device {
                    Device::Cpu => train::run::<
                        burn::backend::Autodiff<diffusion_models::backend::Cpu>,
                    >(&args, Default::default())?,
                    #[cfg(feature = "cuda")]
                    Device::Cuda(n) => train::run::<
                        burn::backend::Autodiff<diffusion_models::backend::Cuda>,
                    >(
                        &args, burn::backend::cuda::CudaDevice::new(n)
                    )?,
                    #[cfg(not(feature = "cuda"))]
                    Device::Cuda(_) => return Err(error::CliError::NoCuda(device.name())),
                };
            println!(
                "{}",
                serde_json::to_string(&summary).expect("summary serializes")
            );
            Ok(())
        }
        Some((cmd @ ("train-lora" | "train-text-to-image"), m)) => {
            let args = fine_tune::FineTuneArgs::from_matches(m, cmd == "train-text-to-image")?;
            let device = m
                .get_one::<Device>("device")
                .copied()
                .unwrap_or(Device::Cpu);
            // `--gradient-checkpointing`: Burn's balanced strategy recomputes
            // memory-bound ops in the backward pass instead of keeping them.
            use burn::backend::Autodiff;
            use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
            let checkpointing = m.get_flag("gradient_checkpointing");
            let summary = match (device, checkpointing) {
                (Device::Cpu, false) => fine_tune::run::<Autodiff<diffusion_models::backend::Cpu>>(
                    &args,
                    Default::default(),
                    Default::default(),
                )?,
                (Device::Cpu, true) => fine_tune::run::<
                    Autodiff<diffusion_models::backend::Cpu, BalancedCheckpointing>,
                >(
                    &args, Default::default(), Default::default()
                )?,
                #[cfg(feature = "cuda")]
                (Device::Cuda(n), false) => {
                    fine_tune::run::<Autodiff<diffusion_models::backend::Cuda>>(
                        &args,
                        burn::backend::cuda::CudaDevice::new(n),
                        burn::backend::cuda::CudaDevice::new(n),
                    )?
                }
                #[cfg(feature = "cuda")]
                (Device::Cuda(n), true) => fine_tune::run::<
                    Autodiff<diffusion_models::backend::Cuda, BalancedCheckpointing>,
                >(
                    &args,
                    burn::backend::cuda::CudaDevice::new(n),
                    burn::backend::cuda::CudaDevice::new(n),
                )?,
                #[cfg(not(feature = "cuda"))]
                (Device::Cuda(_), _) => return Err(error::CliError::NoCuda(device.name())),
            };
            println!(
                "{}",
                serde_json::to_string(&summary).expect("summary serializes")
            );
            Ok(())
        }
        Some(("info", m)) => {
            let hub = HubArgs::from_matches(m);
            print!(
                "{}",
                info::info(
                    &hub.model_name()?,
                    m.get_one::<String>("base").map(String::as_str),
                    &hub.resolve_options(),
                    &hub.pickle_options()
                )?
            );
            Ok(())
        }
        _ => unreachable!("clap requires a known subcommand"),
    }
}

/// `generate` / `img2img` / `inpaint` on the chosen device.
fn generation(task: Task, m: &ArgMatches) -> Result<()> {
    let settings = Settings::from_matches(task, m)?;
    // Fail on a missing model before anything heavy.
    settings.hub.model_name()?;
    let written = on_device(&settings)?;
    for w in written {
        println!("{}", json!({"path": w.path, "parameters": w.parameters}));
    }
    Ok(())
}

/// The op formulations measured fastest on `device`
/// ([`Formulation::for_backend`]), each replaced by the one
/// `DIFFUSION_ATTENTION`, `DIFFUSION_CONV`, `DIFFUSION_GROUP_NORM` or `DIFFUSION_LINEAR` names.
fn formulation_for(device: Device) -> Result<Formulation> {
    Formulation::for_backend(&device.name())
        .with_vars(|var| std::env::var(var).ok())
        .map_err(|e| error::CliError::Usage(e.to_string()))
}

fn on_device(settings: &Settings) -> Result<Vec<Written>> {
    let formulation = formulation_for(settings.device)?;
    match settings.device {
        Device::Cpu => generate::run::<diffusion_models::backend::Cpu>(
            settings,
            Default::default(),
            formulation,
        ),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => generate::run::<diffusion_models::backend::Cuda>(
            settings,
            burn::backend::cuda::CudaDevice::new(n),
            formulation,
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(error::CliError::NoCuda(settings.device.name())),
    }
}
