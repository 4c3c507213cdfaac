//! (being written)

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("not yet implemented: {0}")]
    Unimplemented(&'static str),
}
