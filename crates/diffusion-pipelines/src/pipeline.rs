//! `DiffusionPipeline::from_pretrained`: name a model as in diffusers (Hub repo
//! id, local diffusers folder, or a single-file checkpoint) and get the
//! pipeline its `model_index.json` names.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use diffusion_hub::resolve::{ResolveOptions, Resolved, ResolvedModel, resolve};
use diffusion_hub::single_file::ConvertOptions;

use crate::components::{LoadOptions, SchedulerChoice, convert_checkpoint};
use crate::error::{PipelineError, Result};
use crate::params::Params;
use crate::stable_diffusion::{Output, StableDiffusion, Task};
use crate::unconditional::Unconditional;

/// A loaded pipeline, one variant per diffusers pipeline class.
#[derive(Debug)]
pub enum DiffusionPipeline<B: Backend> {
    /// `DDPMPipeline`.
    DDPMPipeline(Unconditional<B>),
    /// `DDIMPipeline`.
    DDIMPipeline(Unconditional<B>),
    /// `StableDiffusionPipeline` (text-to-image).
    StableDiffusionPipeline(StableDiffusion<B>),
    /// `StableDiffusionImg2ImgPipeline`.
    StableDiffusionImg2ImgPipeline(StableDiffusion<B>),
    /// `StableDiffusionInpaintPipeline`.
    StableDiffusionInpaintPipeline(StableDiffusion<B>),
    /// `StableDiffusionXLPipeline`.
    StableDiffusionXLPipeline(StableDiffusion<B>),
    /// `StableDiffusionXLImg2ImgPipeline`.
    StableDiffusionXLImg2ImgPipeline(StableDiffusion<B>),
    /// `StableDiffusionXLInpaintPipeline`.
    StableDiffusionXLInpaintPipeline(StableDiffusion<B>),
}

/// The pipeline classes [`DiffusionPipeline::from_pretrained`] loads.
pub const PIPELINE_CLASSES: &[&str] = &[
    "DDPMPipeline",
    "DDIMPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "StableDiffusionControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionControlNetInpaintPipeline",
    "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLControlNetImg2ImgPipeline",
    "StableDiffusionXLControlNetInpaintPipeline",
];

impl<B: Backend> DiffusionPipeline<B> {
    /// Resolves `model` (downloading what is missing unless offline) and loads
    /// the pipeline named by its `model_index.json`. A single-file checkpoint is
    /// converted to a temporary diffusers folder first (it must carry its
    /// tokenizer folders next to it for text models; see diffusion-hub).
    pub fn from_pretrained(model: &str, options: &LoadOptions<B>) -> Result<Self> {
        let mut resolve_options = ResolveOptions::from_env();
        if let Some(v) = &options.variant {
            resolve_options = resolve_options.variant(v.clone());
        }
        if let Some(r) = &options.revision {
            resolve_options = resolve_options.revision(r.clone());
        }
        if options.local_files_only {
            resolve_options = resolve_options.local_files_only(true);
        }
        if let Some(dir) = &options.cache_dir {
            resolve_options.cache_dir = dir.clone();
        }
        match resolve(model, &resolve_options)? {
            Resolved::Pipeline(m) => Self::from_resolved(&m, options),
            Resolved::Model(c) => Err(PipelineError::WrongModel {
                model: model.to_string(),
                message: format!(
                    "a single model folder ({}), not a pipeline: no model_index.json",
                    c.dir.display()
                ),
            }),
            Resolved::Checkpoint(path) => {
                let tmp = TempDir::new()?;
                let out = tmp.path.join("model");
                convert_checkpoint(&path, &out, &ConvertOptions::default(), &options.pickle)?;
                let out_str = out.to_string_lossy().into_owned();
                match resolve(&out_str, &ResolveOptions::from_env().local_files_only(true))? {
                    Resolved::Pipeline(m) => Self::from_resolved(&m, options),
                    _ => Err(PipelineError::WrongModel {
                        model: model.to_string(),
                        message: "the converted checkpoint is not a pipeline".into(),
                    }),
                }
            }
        }
    }

    /// Loads the pipeline of an already resolved folder.
    pub fn from_resolved(model: &ResolvedModel, options: &LoadOptions<B>) -> Result<Self> {
        let class = model.model_index.class_name.as_str();
        Ok(match class {
            "DDPMPipeline" => Self::DDPMPipeline(Unconditional::load(model, options, false)?),
            "DDIMPipeline" => Self::DDIMPipeline(Unconditional::load(model, options, true)?),
            // The ControlNet classes are the plain ones with `controlnet`
            // components (which `StableDiffusion::load` loads).
            "StableDiffusionPipeline" | "StableDiffusionControlNetPipeline" => {
                Self::StableDiffusionPipeline(StableDiffusion::load(model, options)?)
            }
            "StableDiffusionImg2ImgPipeline" | "StableDiffusionControlNetImg2ImgPipeline" => {
                Self::StableDiffusionImg2ImgPipeline(StableDiffusion::load(model, options)?)
            }
            "StableDiffusionInpaintPipeline" | "StableDiffusionControlNetInpaintPipeline" => {
                Self::StableDiffusionInpaintPipeline(StableDiffusion::load(model, options)?)
            }
            "StableDiffusionXLPipeline" | "StableDiffusionXLControlNetPipeline" => {
                Self::StableDiffusionXLPipeline(StableDiffusion::load(model, options)?)
            }
            "StableDiffusionXLImg2ImgPipeline" | "StableDiffusionXLControlNetImg2ImgPipeline" => {
                Self::StableDiffusionXLImg2ImgPipeline(StableDiffusion::load(model, options)?)
            }
            "StableDiffusionXLInpaintPipeline" | "StableDiffusionXLControlNetInpaintPipeline" => {
                Self::StableDiffusionXLInpaintPipeline(StableDiffusion::load(model, options)?)
            }
            other => {
                return Err(PipelineError::WrongModel {
                    model: model.source.display_name(),
                    message: format!(
                        "pipeline class `{other}` is not supported (supported: {})",
                        PIPELINE_CLASSES.join(", ")
                    ),
                });
            }
        })
    }

    /// diffusers' class name of this pipeline.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::DDPMPipeline(_) => "DDPMPipeline",
            Self::DDIMPipeline(_) => "DDIMPipeline",
            // With ControlNets, the ControlNet class of the same task.
            Self::StableDiffusionPipeline(s) | Self::StableDiffusionXLPipeline(s) => {
                s.class_name(Task::TextToImage)
            }
            Self::StableDiffusionImg2ImgPipeline(s) | Self::StableDiffusionXLImg2ImgPipeline(s) => {
                s.class_name(Task::ImageToImage)
            }
            Self::StableDiffusionInpaintPipeline(s) | Self::StableDiffusionXLInpaintPipeline(s) => {
                s.class_name(Task::Inpaint)
            }
        }
    }

    /// The SD/SDXL components, if this is an SD-family pipeline.
    pub fn stable_diffusion(&mut self) -> Option<&mut StableDiffusion<B>> {
        match self {
            Self::DDPMPipeline(_) | Self::DDIMPipeline(_) => None,
            Self::StableDiffusionPipeline(s)
            | Self::StableDiffusionImg2ImgPipeline(s)
            | Self::StableDiffusionInpaintPipeline(s)
            | Self::StableDiffusionXLPipeline(s)
            | Self::StableDiffusionXLImg2ImgPipeline(s)
            | Self::StableDiffusionXLInpaintPipeline(s) => Some(s),
        }
    }

    /// Whether this is an unconditional (DDPM/DDIM) pipeline.
    pub fn is_unconditional(&self) -> bool {
        matches!(self, Self::DDPMPipeline(_) | Self::DDIMPipeline(_))
    }

    /// Replaces the scheduler, built from the repo's scheduler config.
    pub fn set_scheduler(&mut self, choice: &SchedulerChoice) -> Result<()> {
        match self {
            Self::DDPMPipeline(u) | Self::DDIMPipeline(u) => {
                u.scheduler =
                    crate::components::build_scheduler(&u.scheduler_config, Some(choice))?;
                Ok(())
            }
            _ => self
                .stable_diffusion()
                .expect("SD family")
                .set_scheduler(choice),
        }
    }

    /// The scheduler's class name.
    pub fn scheduler_name(&self) -> &'static str {
        match self {
            Self::DDPMPipeline(u) | Self::DDIMPipeline(u) => u.scheduler.class_name(),
            Self::StableDiffusionPipeline(s)
            | Self::StableDiffusionImg2ImgPipeline(s)
            | Self::StableDiffusionInpaintPipeline(s)
            | Self::StableDiffusionXLPipeline(s)
            | Self::StableDiffusionXLImg2ImgPipeline(s)
            | Self::StableDiffusionXLInpaintPipeline(s) => s.scheduler.class_name(),
        }
    }

    /// Runs the pipeline as its class does (diffusers' `pipe(...)`).
    pub fn call(&mut self, params: Params<'_, B>) -> Result<Output<B>> {
        match self {
            Self::DDPMPipeline(u) | Self::DDIMPipeline(u) => u.run(params),
            Self::StableDiffusionPipeline(s) | Self::StableDiffusionXLPipeline(s) => {
                s.run(Task::TextToImage, params)
            }
            Self::StableDiffusionImg2ImgPipeline(s) | Self::StableDiffusionXLImg2ImgPipeline(s) => {
                s.run(Task::ImageToImage, params)
            }
            Self::StableDiffusionInpaintPipeline(s) | Self::StableDiffusionXLInpaintPipeline(s) => {
                s.run(Task::Inpaint, params)
            }
        }
    }

    /// Runs `task` with these components whatever the class (diffusers'
    /// `AutoPipelineFor*.from_pipe`): img2img or inpainting with a text-to-image
    /// repo, text-to-image with an inpainting one.
    pub fn run(&mut self, task: Task, params: Params<'_, B>) -> Result<Output<B>> {
        let class = self.class_name();
        match self.stable_diffusion() {
            Some(s) => s.run(task, params),
            None if task == Task::TextToImage => self.call(params),
            None => Err(PipelineError::WrongModel {
                model: class.into(),
                message: format!("an unconditional model cannot do {task:?}"),
            }),
        }
    }
}

/// A folder removed on drop (single-file conversions).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("diffusion-convert-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| PipelineError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir { path })
    }

    #[allow(dead_code)]
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
