//! Which model a command uses, and how it is resolved and loaded.

use burn::tensor::backend::Backend;
use clap::ArgMatches;
use diffusion_hub::resolve::{ResolveOptions, Resolved, resolve};
use diffusion_pipelines::{DiffusionPipeline, LoadOptions, Task};

use crate::error::{CliError, Result};

/// `--model`, `--variant`, `--revision`, `--offline`.
#[derive(Debug, Clone, Default)]
pub struct HubArgs {
    /// `--model` as given.
    pub model: Option<String>,
    /// `--variant`.
    pub variant: Option<String>,
    /// `--revision`.
    pub revision: Option<String>,
    /// `--offline`.
    pub offline: bool,
}

impl HubArgs {
    /// Reads the flags of [`crate::cli`]'s `hub_args`.
    pub fn from_matches(m: &ArgMatches) -> Self {
        HubArgs {
            model: m.get_one::<String>("model").cloned(),
            variant: m.get_one::<String>("variant").cloned(),
            revision: m.get_one::<String>("revision").cloned(),
            offline: m.get_flag("offline"),
        }
    }

    /// The model to use: `--model`, or else the embedded default.
    pub fn model_name(&self) -> Result<String> {
        match &self.model {
            Some(m) => Ok(m.clone()),
            None => default_model(),
        }
    }

    /// Resolver options: the environment's (`HF_HOME`, `HF_HUB_OFFLINE`, ...)
    /// with the flags on top, as `DiffusionPipeline::from_pretrained` builds them.
    pub fn resolve_options(&self) -> ResolveOptions {
        let mut o = ResolveOptions::from_env();
        if let Some(v) = &self.variant {
            o = o.variant(v.clone());
        }
        if let Some(r) = &self.revision {
            o = o.revision(r.clone());
        }
        if self.offline {
            o = o.local_files_only(true);
        }
        o
    }
}

/// The model used when `--model` is absent. None is embedded yet; when one
/// is, this function materialises it (e.g. unpacks it to a cache folder) and
/// returns its folder.
pub fn default_model() -> Result<String> {
    Err(CliError::NoDefaultModel)
}

/// Resolves `name` and loads its pipeline for `task`. A diffusers folder or
/// repo is checked against `task` from its `model_index.json` before any
/// weight is read, so a wrong model fails at once; a single-file checkpoint
/// (always Stable Diffusion) goes through the library's conversion.
pub fn load_pipeline<B: Backend>(
    name: &str,
    task: Task,
    options: &LoadOptions<B>,
    resolve_options: &ResolveOptions,
) -> Result<DiffusionPipeline<B>> {
    let pipe = match resolve(name, resolve_options)? {
        Resolved::Pipeline(m) => {
            check_class(name, &m.model_index.class_name, task)?;
            DiffusionPipeline::from_resolved(&m, options)?
        }
        Resolved::Model(_) | Resolved::Checkpoint(_) => {
            DiffusionPipeline::from_pretrained(name, options)?
        }
    };
    check_unet_for_task(name, pipe, task)
}

/// Refuses unconditional models for anything but `generate`.
fn check_class(name: &str, class: &str, task: Task) -> Result<()> {
    let unconditional = matches!(class, "DDPMPipeline" | "DDIMPipeline");
    if unconditional && task != Task::TextToImage {
        return Err(CliError::WrongModel {
            model: name.to_string(),
            message: format!(
                "a {class} is unconditional: it can only `generate`, not {}",
                task_name(task)
            ),
        });
    }
    Ok(())
}

/// An inpainting UNet (latents + mask + masked image as input) only inpaints.
fn check_unet_for_task<B: Backend>(
    name: &str,
    mut pipe: DiffusionPipeline<B>,
    task: Task,
) -> Result<DiffusionPipeline<B>> {
    if let Some(sd) = pipe.stable_diffusion() {
        let (unet_in, latent) = (sd.unet_config.in_channels, sd.vae.config.latent_channels);
        if unet_in != latent && task != Task::Inpaint {
            return Err(CliError::WrongModel {
                model: name.to_string(),
                message: format!(
                    "an inpainting model ({unet_in}-channel UNet) can only `inpaint`, not {}",
                    task_name(task)
                ),
            });
        }
    }
    Ok(pipe)
}

/// The subcommand for `task`.
pub fn task_name(task: Task) -> &'static str {
    match task {
        Task::TextToImage => "`generate`",
        Task::ImageToImage => "`img2img`",
        Task::Inpaint => "`inpaint`",
    }
}
