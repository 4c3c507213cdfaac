//! diffusion-models (skeleton)
