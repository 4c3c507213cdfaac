//! # diffusion-models
//!
//! The networks of Stable Diffusion-class models on Burn: UNet2DModel,
//! UNet2DConditionModel, AutoencoderKL, AutoencoderTiny and the CLIP text
//! encoders, built from the Hub's `config.json` and loading diffusers'
//! safetensors keys as they are. The networks themselves arrive with the models
//! issue; this crate currently fixes the backend choice for the workspace.

pub use burn;

/// The backends this crate is compiled for.
pub mod backend {
    /// The default CPU backend.
    #[cfg(feature = "ndarray")]
    pub type Cpu = burn::backend::NdArray<f32>;

    /// NVIDIA GPUs (feature `cuda`).
    #[cfg(feature = "cuda")]
    pub type Cuda<F = f32> = burn::backend::Cuda<F>;
}
