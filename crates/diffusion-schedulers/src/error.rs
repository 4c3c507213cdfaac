//! Typed errors: every variant names the field, value or call at fault.

/// Everything a scheduler can refuse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// `_class_name` (or a requested class) is not a scheduler of this crate.
    #[error("unknown scheduler class `{0}`")]
    UnknownScheduler(String),

    /// A config field failed to parse (wrong type, unknown enum variant, ...).
    #[error("invalid scheduler config field `{field}`: {message}")]
    InvalidConfig { field: String, message: String },

    /// A config field parsed but its value is not allowed.
    #[error("invalid value for `{field}`: {value} ({reason})")]
    InvalidValue {
        field: String,
        value: String,
        reason: String,
    },

    /// The config is valid JSON but not an object.
    #[error("scheduler config is not valid JSON object: {0}")]
    InvalidJson(String),

    /// An argument of `set_timesteps` is out of range.
    #[error("invalid `{field}` = {value}: {reason}")]
    InvalidArgument {
        field: &'static str,
        value: String,
        reason: String,
    },

    /// `step` or `scale_model_input` ran before `set_timesteps`.
    #[error("`{0}` called before `set_timesteps`")]
    NotInitialized(&'static str),

    /// Two operands that must agree in shape do not.
    #[error("shape mismatch in {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        what: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// A non-finite value in an input that would poison the scheduler state.
    #[error("non-finite value (NaN or infinity) in `{0}`")]
    NonFinite(&'static str),

    /// A timestep passed to `step`/`scale_model_input`/`add_noise` is not on the schedule.
    #[error("timestep {0} is not in the scheduler's schedule")]
    UnknownTimestep(f64),

    /// The noise source ran dry.
    #[error("noise source exhausted: it could not provide noise tensor #{requested}")]
    NoiseExhausted { requested: usize },

    /// The scheduler finished its schedule; `step` was called once too often.
    #[error("`step` called after the last timestep (step index {0})")]
    PastLastStep(usize),

    /// This scheduler does not support the requested operation.
    #[error("{class} does not support {what}")]
    Unsupported { class: &'static str, what: String },
}

pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
