//! Errors of this crate. Each names what was wrong: the config field, the
//! weight key (with both shapes), or the input.

use diffusion_hub::weights::WeightsError;

/// Everything that can go wrong building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A `config.json` that does not parse, or a value this crate does not
    /// support. With no field (the file as a whole is bad), the message alone.
    #[error("{source_name}: {}{message}", config_field(field))]
    Config {
        /// The config file (or a description of where the config came from).
        source_name: String,
        /// The offending field (a serde path such as `block_out_channels[2]`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the module needs is not in the weights.
    #[error("{source_name}: missing weight `{key}` (shape {shape:?})")]
    MissingKey {
        /// The weight file(s).
        source_name: String,
        /// The diffusers key.
        key: String,
        /// The shape the module expects.
        shape: Vec<usize>,
    },
    /// Weights that no module parameter consumed.
    #[error("{source_name}: {} unexpected weight(s): {}", keys.len(), keys.join(", "))]
    UnexpectedKeys {
        /// The weight file(s).
        source_name: String,
        /// The unconsumed keys, sorted.
        keys: Vec<String>,
    },
    /// A weight with a different shape than the config implies.
    #[error("{source_name}: weight `{key}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// The weight file(s).
        source_name: String,
        /// The diffusers key.
        key: String,
        /// The shape the module expects.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A weight stored in a type that is not a float this crate converts.
    #[error("{source_name}: weight `{key}` has dtype {dtype}, expected F32, F16, BF16 or F64")]
    UnsupportedDtype {
        /// The weight file(s).
        source_name: String,
        /// The diffusers key.
        key: String,
        /// The stored type.
        dtype: String,
    },
    /// A stored weight holding NaN or infinity (a corrupt file).
    #[error("{source_name}: weight `{key}` holds NaN or infinite values")]
    NonFiniteWeight {
        /// The weight file(s).
        source_name: String,
        /// The diffusers key.
        key: String,
    },
    /// A model input with the wrong shape or value.
    #[error("input `{name}`: {message}")]
    Input {
        /// The argument (e.g. `sample`, `encoder_hidden_states`).
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The weight files themselves could not be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ModelError {
    /// A config error for `field` of `source_name`.
    pub fn config(
        source_name: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ModelError::Config {
            source_name: source_name.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// An input error for argument `name`.
    pub fn input(name: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError::Input {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// `config field `x`: ` before a message about field `x`; nothing when the
/// error is about the whole file.
fn config_field(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("config field `{field}`: ")
    }
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
