//! The CLI's errors: each is printed as one `error: ...` line, naming the
//! flag or file at fault; the library errors pass through with their detail.

use std::path::PathBuf;

/// Everything `diffuse` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag with a bad value, or flags that do not go together.
    #[error("{0}")]
    Usage(String),
    /// `--device cuda` in a build without the `cuda` feature.
    #[cfg(not(feature = "cuda"))]
    #[error("--device {0}: this build has no CUDA support (rebuild with `--features cuda`)")]
    NoCuda(String),
    /// The model cannot do what the command asks.
    #[error("{model}: {message}")]
    WrongModel {
        /// The model as named.
        model: String,
        /// What is wrong.
        message: String,
    },
    /// An input file (`--latents`) that is unreadable or malformed.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Loading or running the pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] diffusion_pipelines::PipelineError),
    /// Resolving the model failed.
    #[error(transparent)]
    Resolve(#[from] diffusion_hub::resolve::ResolveError),
    /// A weight file failed to open.
    #[error(transparent)]
    Weights(#[from] diffusion_hub::weights::WeightsError),
    /// A checkpoint failed to convert.
    #[error(transparent)]
    SingleFile(#[from] diffusion_hub::single_file::SingleFileError),
    /// Writing the latents failed.
    #[error(transparent)]
    Save(#[from] diffusion_hub::save::SaveError),
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, CliError>;

/// A usage error.
pub fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}
