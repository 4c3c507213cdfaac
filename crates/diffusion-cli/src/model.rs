//! Which model a command uses, and how it is resolved and loaded.

use burn::tensor::backend::Backend;
use clap::ArgMatches;
use diffusion_hub::resolve::{ResolveOptions, Resolved, resolve};
use diffusion_hub::torch_pickle::PickleOptions;
use diffusion_pipelines::{DiffusionPipeline, LoadOptions, Task};

use crate::error::{CliError, Result};

/// `--model`, `--variant`, `--revision`, `--offline`, `--skip-unsafe-globals`.
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
    /// `--skip-unsafe-globals`.
    pub skip_unsafe_globals: bool,
}

impl HubArgs {
    /// Reads the flags of [`crate::cli`]'s `hub_args`.
    pub fn from_matches(m: &ArgMatches) -> Self {
        HubArgs {
            model: m.get_one::<String>("model").cloned(),
            variant: m.get_one::<String>("variant").cloned(),
            revision: m.get_one::<String>("revision").cloned(),
            offline: m.get_flag("offline"),
            skip_unsafe_globals: m.get_flag("skip_unsafe_globals"),
        }
    }

    /// How PyTorch pickles are read (`--skip-unsafe-globals`).
    pub fn pickle_options(&self) -> PickleOptions {
        PickleOptions::default().skip_unsafe_globals(self.skip_unsafe_globals)
    }

    /// The model to use: `--model`, or else the embedded default.
    pub fn model_name(&self) -> Result<String> {
        match &self.model {
            Some(m) if m.trim().is_empty() => Err(CliError::Usage(format!(
                "--model {m:?}: empty; give a Hub repo id, a folder or a checkpoint"
            ))),
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

/// The embedded default model: a DDIM pipeline of a small UNet2DModel
/// trained by `diffuse train` on scikit-learn's handwritten digits
/// (docs/training.md), compiled into the binary so that `diffuse generate`
/// makes real images with no download and no flags.
const DEFAULT_MODEL: &[(&str, &[u8])] = &[
    (
        "model_index.json",
        include_bytes!("../assets/default-model/model_index.json"),
    ),
    (
        "scheduler/scheduler_config.json",
        include_bytes!("../assets/default-model/scheduler/scheduler_config.json"),
    ),
    (
        "unet/config.json",
        include_bytes!("../assets/default-model/unet/config.json"),
    ),
    (
        "unet/diffusion_pytorch_model.safetensors",
        include_bytes!("../assets/default-model/unet/diffusion_pytorch_model.safetensors"),
    ),
];

/// The model used when `--model` is absent: the embedded one, unpacked on
/// first use into a cache folder named by its content hash
/// (`$DIFFUSE_CACHE`, else `$XDG_CACHE_HOME/diffuse`, else `~/.cache/diffuse`,
/// else the system temp folder). The folder is written under a temporary name
/// and renamed when complete, so concurrent first runs are safe.
pub fn default_model() -> Result<String> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (name, bytes) in DEFAULT_MODEL {
        for b in name.bytes().chain(bytes.iter().copied()) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let root = cache_root();
    let dir = root.join(format!("default-model-{hash:016x}"));
    if DEFAULT_MODEL.iter().all(|(name, bytes)| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64)
    }) {
        return Ok(dir.display().to_string());
    }
    let tmp = root.join(format!(
        ".default-model-{hash:016x}.tmp-{}",
        std::process::id()
    ));
    let io = |path: &std::path::Path, e: std::io::Error| CliError::Input {
        path: path.to_path_buf(),
        message: format!("cannot unpack the embedded default model: {e}"),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    for (name, bytes) in DEFAULT_MODEL {
        let path = tmp.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
    }
    if dir.exists() {
        // An incomplete folder from an older, interrupted layout: replace it.
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have unpacked it first.
        if !dir.join("model_index.json").is_file() {
            return Err(io(&dir, e));
        }
    }
    Ok(dir.display().to_string())
}

fn cache_root() -> std::path::PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    env("DIFFUSE_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("diffuse")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("diffuse")))
        .unwrap_or_else(|| std::env::temp_dir().join("diffuse"))
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
