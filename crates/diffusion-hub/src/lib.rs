//! diffusion-hub (skeleton)
