//! diffusion-pipelines (skeleton)
