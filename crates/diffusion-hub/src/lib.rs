//! # diffusion-hub
//!
//! Resolving a model named as in diffusers (a Hub repo id, a local diffusers
//! folder, or a single-file checkpoint) into typed component files: Hub access
//! through `hf-hub` 0.4 with the standard HF cache shared with Python,
//! `model_index.json`, safetensors (single and sharded), PyTorch pickle
//! checkpoints, single-file (LDM/SGM) checkpoint conversion and CLIP tokenizers.

pub mod model_index;
pub mod resolve;
pub mod save;
pub mod single_file;
pub mod tokenizer;
pub mod torch_pickle;
pub mod weights;

/// Every error of this crate; each module's error names the file, key or field.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error(transparent)]
    ModelIndex(#[from] model_index::ModelIndexError),
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error(transparent)]
    SingleFile(#[from] single_file::SingleFileError),
}
