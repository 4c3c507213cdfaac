//! # diffusion-pipelines
//!
//! diffusers' pipelines in Rust: name a model as in diffusers and generate.
//!
//! ```no_run
//! use diffusion_pipelines::{DiffusionPipeline, LoadOptions, Params, Generator};
//! type B = diffusion_models::backend::Cpu;
//! let mut pipe = DiffusionPipeline::<B>::from_pretrained(
//!     "stable-diffusion-v1-5/stable-diffusion-v1-5",
//!     &LoadOptions::default(),
//! )?;
//! let mut params = Params::prompt("a photo of an astronaut riding a horse on mars");
//! params.generator = Some(Generator::Seed(0));
//! let out = pipe.call(params)?;
//! out.images.unwrap().save_png(0, "astronaut.png".as_ref(), &[])?;
//! # Ok::<(), diffusion_pipelines::PipelineError>(())
//! ```
//!
//! [`DiffusionPipeline::from_pretrained`] dispatches on `model_index.json`'s
//! `_class_name`; every call follows the diffusers pipeline of that class step
//! by step, including the order of its random draws, so a seed gives the
//! same image as diffusers with a CPU `torch.Generator` (see [`noise`]).

pub mod components;
pub mod controlnet;
pub mod error;
pub mod image;
pub mod latents;
pub mod lora;
pub mod memory;
pub mod noise;
pub mod params;
pub mod pipeline;
pub mod preprocess;
pub mod preview;
pub(crate) mod progress;
pub mod stable_diffusion;
pub mod t2i_adapter;
pub mod text;
pub mod textual_inversion;
pub mod training;
pub mod unconditional;

pub use components::{LoadOptions, SchedulerChoice};
pub use error::{PipelineError, Result};
pub use image::Images;
pub use latents::Latents;
pub use noise::{Generator, SeededNoise};
pub use params::{Control, OutputType, Params, StepInfo};
pub use pipeline::{DiffusionPipeline, PIPELINE_CLASSES};
pub use preview::preview;
pub use stable_diffusion::{Output, StableDiffusion, Task};
pub use text::{LongPrompt, PromptEmbeds};
pub use unconditional::Unconditional;
