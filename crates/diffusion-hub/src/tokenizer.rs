//! (being written)

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("not yet implemented: {0}")]
    Unimplemented(&'static str),
}
