//! Errors of the pipelines. Each says what was wrong: the call parameter, the
//! component, the file; lower layers' errors pass through with their own
//! detail (the weight key, the config field).

use std::path::PathBuf;

/// Everything that can go wrong loading or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A call parameter with a bad value (diffusers' `ValueError`/`TypeError`).
    #[error("parameter `{name}`: {message}")]
    Parameter {
        /// The parameter, as diffusers names it (`height`, `strength`, ...).
        name: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A request larger than the memory there is ([`crate::memory`]).
    #[error("{request}: would need about {needed} of memory; {available}")]
    Memory {
        /// The sizes asked for, as given (`height 65536, width 65536, 1 image`).
        request: String,
        /// The estimate, in words (`17.0 GiB`).
        needed: String,
        /// What there is, in words (`6.0 GiB available`).
        available: String,
    },
    /// A component the pipeline needs is not in the model folder.
    #[error("{model}: component `{component}` is missing ({reason})")]
    MissingComponent {
        /// The model as the user named it.
        model: String,
        /// The component (`unet`, `vae`, ...).
        component: String,
        /// Why it is needed, or what was found instead.
        reason: String,
    },
    /// A pipeline class this crate does not have, or the wrong kind of model
    /// for what was asked (e.g. img2img on a DDPM model).
    #[error("{model}: {message}")]
    WrongModel {
        /// The model as the user named it.
        model: String,
        /// What is wrong.
        message: String,
    },
    /// The caller's callback asked to stop.
    #[error("cancelled at step {step}")]
    Cancelled {
        /// The step (0-based) after which the callback returned `Cancel`.
        step: usize,
    },
    /// A model failed to load or run.
    #[error(transparent)]
    Model(#[from] diffusion_models::ModelError),
    /// A scheduler failed to build or step.
    #[error("scheduler: {0}")]
    Scheduler(#[from] diffusion_schedulers::SchedulerError),
    /// Resolving the model (Hub, cache, folder) failed.
    #[error(transparent)]
    Resolve(#[from] diffusion_hub::resolve::ResolveError),
    /// A tokenizer failed to load or encode.
    #[error(transparent)]
    Tokenizer(#[from] diffusion_hub::tokenizer::TokenizerError),
    /// A weight file failed to open.
    #[error(transparent)]
    Weights(#[from] diffusion_hub::weights::WeightsError),
    /// A single-file checkpoint failed to convert.
    #[error(transparent)]
    SingleFile(#[from] diffusion_hub::single_file::SingleFileError),
    /// An image could not be read, decoded or written.
    #[error("{path}: {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing a safetensors file failed.
    #[error(transparent)]
    Save(#[from] diffusion_hub::save::SaveError),
    /// A training step that cannot go on (a non-finite loss or gradient).
    #[error("training step {step}: {message}")]
    Training {
        /// The optimizer step (1-based) that failed.
        step: u64,
        /// What went wrong.
        message: String,
    },
    /// An adapter file (LoRA, LyCORIS, embedding) that cannot be applied.
    #[error("{file}: `{key}`: {message}")]
    Adapter {
        /// The file.
        file: String,
        /// The key (or token, or component) at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A config file that does not parse.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl PipelineError {
    /// A bad call parameter.
    pub fn parameter(name: &'static str, message: impl Into<String>) -> Self {
        PipelineError::Parameter {
            name,
            message: message.into(),
        }
    }
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, PipelineError>;
