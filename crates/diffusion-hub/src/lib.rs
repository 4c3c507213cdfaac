//! # diffusion-hub
//!
//! Resolving a model named as in diffusers (a Hub repo id, a local diffusers
//! folder, or a single-file checkpoint) into typed component files: Hub access
//! through `hf-hub` 0.4, safetensors, single-file conversion and CLIP tokenizers.
//! Arrives with the hub issue; see docs/architecture.md for its place.
