//! Training-step workloads: one optimizer step of the preset's UNet
//! (forward, MSE, backward, clipping, AdamW) as diffusers' fine-tuning
//! scripts take it, with a LoRA (`train-lora`, the scripts' attention
//! targets at rank `--lora`), every weight (`train-full`), or a LoRA under
//! Burn's balanced checkpointing (`train-lora-checkpointing`: memory-bound
//! ops recomputed in the backward pass instead of kept; the PyTorch side
//! runs `unet.enable_gradient_checkpointing()`). f32 weights and steps.

use crate::Result;
use crate::args::Args;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use diffusion_models::trainable_lora::LoraConfig;
use diffusion_models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use diffusion_models::{Formulation, Loader, LoraFactors, Precision};
use diffusion_pipelines::training::params::freeze_except;
use diffusion_pipelines::training::{
    AdamWConfig, Batch, Condition, LrSchedule, LrScheduleKind, MixedPrecision, Objective,
    TrainConfig, Trainer,
};
use serde_json::{Value, json};

/// What one step trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trained {
    /// A LoRA of this rank on the attention projections.
    Lora(usize),
    /// Every weight.
    Full,
}

/// The row of training component `component` (`train-lora`, `train-full`,
/// `train-lora-checkpointing`).
pub fn train_component<B: Backend + 'static>(
    component: &str,
    cfg: &UNet2DConditionConfig,
    args: &Args,
    latent: usize,
    measure: impl FnOnce(&mut dyn FnMut() -> Result<()>) -> Result<Value>,
) -> Result<Value> {
    let trained = if component == "train-full" {
        Trained::Full
    } else {
        Trained::Lora(args.lora_rank)
    };
    if component == "train-lora-checkpointing" {
        train_step_row::<B, BalancedCheckpointing>(cfg, args, latent, trained, measure)
    } else {
        train_step_row::<B, NoCheckpointing>(cfg, args, latent, trained, measure)
    }
}

/// Times `args.runs` steps (after a first) of the UNet `cfg` at `latent`
/// on `Autodiff<B, C>`; the row as `measure` writes it, plus the trained
/// parameter count.
pub fn train_step_row<B: Backend + 'static, C: CheckpointStrategy>(
    cfg: &UNet2DConditionConfig,
    args: &Args,
    latent: usize,
    trained: Trained,
    measure: impl FnOnce(&mut dyn FnMut() -> Result<()>) -> Result<Value>,
) -> Result<Value> {
    type AB<B, C> = Autodiff<B, C>;
    let device = Default::default();
    let loader = Loader::<AB<B, C>>::random_seeded(&device, Precision::F32, 0)
        .with_formulation(Formulation::BURN_OPS);
    let loader = match trained {
        Trained::Lora(rank) => {
            loader.with_lora(LoraConfig::attention(rank), LoraFactors::Seeded(0))?
        }
        Trained::Full => loader,
    };
    let model = UNet2DConditionModel::<AB<B, C>>::load(&loader, cfg)?;
    let keys = loader.param_keys();
    let model = match trained {
        Trained::Lora(_) => {
            let lora = keys
                .iter()
                .filter(|(_, i)| i.key.contains(".lora_"))
                .map(|(id, _)| *id)
                .collect();
            freeze_except(model, &lora)
        }
        Trained::Full => model,
    };
    let trainable: usize = keys
        .values()
        .filter(|i| trained == Trained::Full || i.key.contains(".lora_"))
        .map(|i| i.stored.iter().product::<usize>())
        .sum();
    let scheduler = json!({"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear",
                           "beta_start": 0.00085, "beta_end": 0.012});
    let config = TrainConfig {
        learning_rate: 1e-4,
        optimizer: AdamWConfig::default(),
        lr_schedule: LrSchedule::new(LrScheduleKind::Constant, 0, 1_000_000),
        max_grad_norm: Some(1.0),
        ema: None,
        objective: Objective::default(),
        mixed_precision: MixedPrecision::No,
    };
    let mut trainer =
        Trainer::from_parts(model, cfg.clone(), keys, scheduler, config, device.clone())?;
    let b = args.batch;
    let normal = Distribution::Normal(0.0, 1.0);
    let shape = [b, cfg.in_channels, latent, latent];
    let cross = cfg.cross_attention_dim.get(0).unwrap_or(768);
    let states = Tensor::<AB<B, C>, 3>::random([b, 77, cross], normal, &device);
    let condition = match (
        cfg.addition_time_embed_dim,
        cfg.projection_class_embeddings_input_dim,
    ) {
        (Some(time), Some(total)) if cfg.addition_embed_type.as_deref() == Some("text_time") => {
            let side = (latent * 8) as f32;
            let ids: Vec<f32> = [side, side, 0.0, 0.0, side, side].repeat(b);
            Condition::TextTime {
                states,
                text_embeds: Tensor::random([b, total - 6 * time], normal, &device),
                time_ids: Tensor::from_data(burn::tensor::TensorData::new(ids, [b, 6]), &device),
            }
        }
        _ => Condition::Text(states),
    };
    let batch = Batch {
        x0: Tensor::random(shape, normal, &device),
        noise: Tensor::random(shape, normal, &device),
        offset_noise: None,
        timesteps: (0..b).map(|i| (100 + 300 * i as i64) % 1000).collect(),
        condition,
    };
    let mut row = measure(&mut || {
        trainer.step(&batch)?;
        Ok(())
    })?;
    row["trained_params"] = json!(trainable);
    if let Trained::Lora(rank) = trained {
        row["lora_rank"] = json!(rank);
    }
    Ok(row)
}
