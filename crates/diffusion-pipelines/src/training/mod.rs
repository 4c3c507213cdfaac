//! Training denoising networks on Burn's autodiff, as diffusers'
//! `train_unconditional.py` and the loss of `train_text_to_image.py` do.
//!
//! * [`Trainer`]: one optimizer step of a UNet2DModel or UNet2DConditionModel
//!   ([`Denoiser`]) on a [`Batch`]: the noise scheduler's `add_noise` and
//!   `get_velocity`, targets `epsilon` / `v_prediction` / `sample`, min-SNR-γ
//!   weighting and noise offset ([`Objective`]), global-norm gradient clipping,
//!   [`AdamW`] exactly as PyTorch's, a learning-rate schedule ([`LrSchedule`])
//!   and diffusers' `EMAModel` ([`EmaConfig`]); f32 or mixed precision
//!   (f16 with dynamic loss scaling, or bf16: [`MixedPrecision`]).
//! * LoRA fine-tuning ([`lora`]): a pretrained UNet frozen under trainable
//!   peft factors ([`build_lora_model`]), trained by the same step and
//!   written as diffusers' `save_lora_weights` ([`save_lora_weights`]).
//! * [`Trainer::save_pipeline`] writes a diffusers folder Python loads;
//!   [`Trainer::save_checkpoint`] / [`Trainer::resume`] continue a killed run
//!   exactly where its last checkpoint left it.
//!
//! The step is checked against PyTorch + diffusers (loss, gradients, weights
//! and moving average after several steps) by `tests/training.rs`.

pub mod adamw;
pub mod checkpoint;
pub mod data;
pub mod ema;
pub mod lora;
pub mod lr;
pub mod objective;
pub mod params;
pub mod precision;
pub mod text_to_image;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use checkpoint::{TrainerState, config_json, save_model_folder};
pub use data::{BatchSampler, Crop, DrawnImage, ImageDataset, Interpolation, check_training_size};
pub use ema::EmaConfig;
pub use lora::{
    KOHYA_WEIGHTS_NAME, LORA_WEIGHTS_NAME, LoraLayers, build_lora_model, save_lora_weights,
    save_lora_weights_kohya,
};
pub use lr::{LrSchedule, LrScheduleKind};
pub use objective::{Objective, PredictionType};
pub use precision::{GradScaler, MixedPrecision};
pub use text_to_image::{CaptionedDataset, Captions, LatentCache, TextToImageBatches};
pub use trainer::{Batch, Condition, Denoiser, StepStats, TrainConfig, Trainer, build_model};

/// The CPU training backend: burn-flex under Burn's autodiff.
#[cfg(feature = "flex")]
pub type CpuTraining = burn::backend::Autodiff<burn::backend::Flex>;
