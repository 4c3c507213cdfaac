//! # diffusion-models
//!
//! The networks of Stable Diffusion-class models on Burn: UNet2DModel,
//! UNet2DConditionModel, AutoencoderKL, AutoencoderTiny and the CLIP text
//! encoders, built from the Hub's `config.json` and loading diffusers'
//! safetensors keys as they are.
//!
//! Every module is built by a `load` constructor that takes a
//! [`load::Loader`]: the loader hands out each parameter by its diffusers key
//! with the shape the config implies, straight from the memory-mapped file
//! (or randomly initialised, for training and benchmarks), and refuses missing,
//! unexpected, mis-shaped and non-float keys by name. The loader also says
//! which formulation the layers run their heaviest ops in
//! ([`formulation::Formulation`]: the backend's measured fastest by default,
//! settable per model with [`Loader::with_formulation`]).

pub use burn;

pub mod adapter;
pub mod attention;
pub mod autoencoder_kl;
pub mod autoencoder_tiny;
pub mod clip;
pub mod config;
pub mod controlnet;
pub mod embeddings;
pub mod error;
pub mod formulation;
pub mod kernels;
pub mod load;
pub mod mid_block;
pub mod nn;
pub mod profile;
pub mod resnet;
pub mod state;
pub mod t2i_adapter;
pub mod testing;
pub mod trainable_lora;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
pub mod unet_encoder;
pub mod vae;

pub use error::{ModelError, Result};
pub use formulation::Formulation;
pub use load::{Loader, LoraFactors, ParamInfo, ParamKeys, Precision, TensorMap, WeightSource};

/// The backends this crate is compiled for.
pub mod backend {
    /// The default CPU backend: burn-flex, measured fastest of the CPU
    /// backends that build offline (docs/backends.md), and the one with f16/bf16.
    #[cfg(feature = "flex")]
    pub type Cpu = burn::backend::Flex;

    /// burn-ndarray (f32 only).
    #[cfg(feature = "ndarray")]
    pub type NdArray = burn::backend::NdArray<f32>;

    /// burn-flex: pure-Rust SIMD CPU backend with f16/bf16.
    #[cfg(feature = "flex")]
    pub type Flex = burn::backend::Flex;

    /// burn-candle on the CPU.
    #[cfg(feature = "candle")]
    pub type Candle = burn::backend::Candle<f32, i64>;

    /// NVIDIA GPUs (feature `cuda`).
    #[cfg(feature = "cuda")]
    pub type Cuda<F = f32> = burn::backend::Cuda<F>;
}
