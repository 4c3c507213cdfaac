//! One optimizer step of a denoising network, as diffusers' training scripts
//! take it: noise the batch with the noise scheduler, predict, weighted MSE,
//! backward, global-norm clipping, AdamW at the scheduled learning rate, then
//! the moving average. The caller supplies the noise and the timesteps (drawn
//! from its own seeded generator), so a step is a pure function of the batch
//! and the state: reproducible, resumable and comparable with PyTorch.

use super::adamw::{AdamW, AdamWConfig, clip_coefficient};
use super::ema::EmaConfig;
use super::lr::{LrSchedule, LrScheduleKind};
use super::objective::{Objective, PredictionType, snr};
use super::params::{FlatParam, flatten, gradients, replace, replace_autodiff, trainable_ids};
use super::precision::{GradScaler, MixedPrecision, cast_params};
use crate::error::{PipelineError, Result};
use crate::latents::Latents;
use burn::module::{AutodiffModule, Module, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, Tensor, TensorData};
use diffusion_models::Formulation;
use diffusion_models::config::ModelConfig;
use diffusion_models::load::{Loader, ParamKeys, Precision, WeightSource};
use diffusion_models::nn::to_dtype;
use diffusion_models::trainable_lora::LoraConfig;
use diffusion_models::unet_2d::{ClassLabels, UNet2DConfig, UNet2DModel};
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_schedulers::{CpuTensor, Scheduler};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// What a network is conditioned on besides the noisy sample and timestep.
#[derive(Debug, Clone)]
pub enum Condition<B: Backend> {
    /// Nothing (unconditional UNet2DModel).
    None,
    /// Class ids for a UNet2DModel with a class embedding.
    ClassLabels(Tensor<B, 1>),
    /// Text-encoder states `[N, tokens, dim]` (UNet2DConditionModel).
    Text(Tensor<B, 3>),
    /// Text-encoder states with SDXL's added conditions
    /// (`addition_embed_type="text_time"`: diffusers' `added_cond_kwargs`).
    TextTime {
        /// `[N, tokens, dim]`, both encoders' states side by side.
        states: Tensor<B, 3>,
        /// The pooled projection of the second encoder `[N, D]`.
        text_embeds: Tensor<B, 2>,
        /// Original size, crop corner and target size `[N, 6]`.
        time_ids: Tensor<B, 2>,
    },
}

impl<B: Backend> Condition<B> {
    /// The same conditioning in float type `dtype` (mixed precision).
    fn to_dtype(&self, dtype: DType) -> Self {
        match self {
            Condition::Text(states) => Condition::Text(to_dtype(states.clone(), dtype)),
            Condition::TextTime {
                states,
                text_embeds,
                time_ids,
            } => Condition::TextTime {
                states: to_dtype(states.clone(), dtype),
                text_embeds: to_dtype(text_embeds.clone(), dtype),
                time_ids: to_dtype(time_ids.clone(), dtype),
            },
            other => other.clone(),
        }
    }
}

/// A network the trainer can train: built from its config by a [`Loader`],
/// and predicting from a noisy batch.
pub trait Denoiser<B: Backend>: Module<B> + Sized {
    /// diffusers' class name (`config.json`'s `_class_name`).
    const CLASS_NAME: &'static str;
    /// Its `config.json`.
    type Config: ModelConfig + Clone + std::fmt::Debug;
    /// Builds it (random or stored weights, by the loader).
    fn build(loader: &Loader<B>, config: &Self::Config) -> diffusion_models::Result<Self>;
    /// The prediction for `noisy` at `timesteps`.
    fn denoise(
        &self,
        noisy: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        condition: &Condition<B>,
    ) -> Result<Tensor<B, 4>>;
}

impl<B: Backend> Denoiser<B> for UNet2DModel<B> {
    const CLASS_NAME: &'static str = "UNet2DModel";
    type Config = UNet2DConfig;
    fn build(loader: &Loader<B>, config: &UNet2DConfig) -> diffusion_models::Result<Self> {
        UNet2DModel::load(loader, config)
    }
    fn denoise(
        &self,
        noisy: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        condition: &Condition<B>,
    ) -> Result<Tensor<B, 4>> {
        let labels = match condition {
            Condition::None => None,
            Condition::ClassLabels(l) => Some(ClassLabels::Values(l.clone())),
            Condition::Text(_) | Condition::TextTime { .. } => {
                return Err(PipelineError::parameter(
                    "condition",
                    "UNet2DModel takes no text conditioning",
                ));
            }
        };
        Ok(self.forward(noisy, timesteps, labels)?)
    }
}

impl<B: Backend> Denoiser<B> for UNet2DConditionModel<B> {
    const CLASS_NAME: &'static str = "UNet2DConditionModel";
    type Config = UNet2DConditionConfig;
    fn build(loader: &Loader<B>, config: &UNet2DConditionConfig) -> diffusion_models::Result<Self> {
        UNet2DConditionModel::load(loader, config)
    }
    fn denoise(
        &self,
        noisy: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        condition: &Condition<B>,
    ) -> Result<Tensor<B, 4>> {
        let (states, conditions) = match condition {
            Condition::Text(states) => (states.clone(), UNetConditions::default()),
            Condition::TextTime {
                states,
                text_embeds,
                time_ids,
            } => (
                states.clone(),
                UNetConditions {
                    text_embeds: Some(text_embeds.clone()),
                    time_ids: Some(time_ids.clone()),
                    ..UNetConditions::default()
                },
            ),
            _ => {
                return Err(PipelineError::parameter(
                    "condition",
                    "UNet2DConditionModel needs text-encoder states (Condition::Text or TextTime)",
                ));
            }
        };
        Ok(self.forward(noisy, timesteps, states, conditions)?)
    }
}

/// The hyper-parameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Base learning rate.
    pub learning_rate: f64,
    /// AdamW's other hyper-parameters.
    pub optimizer: AdamWConfig,
    /// Learning-rate schedule.
    pub lr_schedule: LrSchedule,
    /// Global gradient-norm limit (`clip_grad_norm_`); `None`: no clipping.
    pub max_grad_norm: Option<f64>,
    /// Moving average of the weights; `None`: none.
    pub ema: Option<EmaConfig>,
    /// Target and loss weighting.
    pub objective: Objective,
    /// f32, or f16/bf16 activations over f32 master weights
    /// ([`MixedPrecision`]; accelerate's `--mixed_precision`).
    #[serde(default)]
    pub mixed_precision: MixedPrecision,
}

impl TrainConfig {
    /// Refuses hyper-parameters no step can use, naming each as
    /// `train_unconditional.py`'s flag: a NaN or infinite value would
    /// silently poison the weights (or, for clipping, turn it off).
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, v: f64, rule: &str| {
            Err(PipelineError::parameter(
                name,
                format!("{v}: must be {rule}"),
            ))
        };
        let o = &self.optimizer;
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(
                "learning_rate",
                self.learning_rate,
                "a finite number above 0",
            );
        }
        for (name, v) in [("adam_beta1", o.beta1), ("adam_beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(name, v, "in [0, 1)");
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return bad("adam_epsilon", o.eps, "a finite number above 0");
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad(
                "adam_weight_decay",
                o.weight_decay,
                "a finite number, at least 0",
            );
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return bad("max_grad_norm", n, "a finite number above 0");
        }
        if let Some(ema) = &self.ema {
            if !(0.0..=1.0).contains(&ema.decay) {
                return bad("ema_max_decay", ema.decay, "in [0, 1]");
            }
            if !(0.0..=ema.decay).contains(&ema.min_decay) {
                return bad("ema_min_decay", ema.min_decay, "in [0, ema_max_decay]");
            }
            if !(ema.inv_gamma.is_finite() && ema.inv_gamma > 0.0) {
                return bad("ema_inv_gamma", ema.inv_gamma, "a finite number above 0");
            }
            if !(ema.power.is_finite() && ema.power > 0.0) {
                return bad("ema_power", ema.power, "a finite number above 0");
            }
        }
        if let Some(g) = self.objective.snr_gamma
            && !(g.is_finite() && g > 0.0)
        {
            return bad("snr_gamma", g, "a finite number above 0");
        }
        if let Some(w) = self.objective.prior_loss_weight
            && !(w.is_finite() && w >= 0.0)
        {
            return bad("prior_loss_weight", w, "a finite number, at least 0");
        }
        if !self.objective.noise_offset.is_finite() {
            return bad(
                "noise_offset",
                self.objective.noise_offset,
                "a finite number",
            );
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    /// diffusers' `train_unconditional.py` defaults.
    fn default() -> Self {
        TrainConfig {
            learning_rate: 1e-4,
            optimizer: AdamWConfig {
                beta1: 0.95,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-6,
            },
            lr_schedule: LrSchedule::new(LrScheduleKind::Cosine, 500, 10_000),
            max_grad_norm: Some(1.0),
            ema: Some(EmaConfig {
                decay: 0.9999,
                use_ema_warmup: true,
                inv_gamma: 1.0,
                power: 0.75,
                ..EmaConfig::default()
            }),
            objective: Objective::default(),
            mixed_precision: MixedPrecision::No,
        }
    }
}

/// One batch: clean samples, the noise to add, the training timesteps.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// Clean samples `[N, C, H, W]` in the model's range (`[-1, 1]` for images).
    pub x0: Tensor<B, 4>,
    /// Gaussian noise of the same shape.
    pub noise: Tensor<B, 4>,
    /// `[N, C, 1, 1]` Gaussian noise scaled by `noise_offset` and added to
    /// `noise` (needed only when the objective has a noise offset).
    pub offset_noise: Option<Tensor<B, 4>>,
    /// One training timestep per sample, in `0..num_train_timesteps`.
    pub timesteps: Vec<i64>,
    /// Conditioning.
    pub condition: Condition<B>,
}

/// What a step measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Optimizer steps done, this one included.
    pub step: u64,
    /// The (weighted) loss before the update.
    pub loss: f64,
    /// Global gradient 2-norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Mixed precision (f16): the gradients overflowed at this loss scale, so
    /// the weights were left as they were and the scale backed off (as
    /// `GradScaler` skips `optimizer.step()`); the moving average still took
    /// its step, as in diffusers' scripts.
    #[serde(default)]
    pub skipped: bool,
    /// The loss scale this step used (f16 mixed precision only).
    #[serde(default)]
    pub loss_scale: Option<f64>,
}

/// A model being trained, with its optimizer, moving average and step count.
pub struct Trainer<B: AutodiffBackend, M: Denoiser<B> + AutodiffModule<B>> {
    pub(crate) model: M,
    pub(crate) model_config: M::Config,
    pub(crate) keys: ParamKeys,
    pub(crate) scheduler_config: Value,
    scheduler: Box<dyn Scheduler<Latents<B>>>,
    snr_scheduler: Box<dyn Scheduler<CpuTensor>>,
    prediction: PredictionType,
    num_train_timesteps: usize,
    pub(crate) config: TrainConfig,
    pub(crate) optimizer: AdamW<B::InnerBackend>,
    pub(crate) ema: Option<HashMap<ParamId, Tensor<B::InnerBackend, 1>>>,
    pub(crate) scaler: Option<GradScaler>,
    pub(crate) step: u64,
    /// Set when only a LoRA's factors train ([`Trainer::lora`]).
    pub(crate) lora: Option<LoraConfig>,
    device: B::Device,
}

impl<B: AutodiffBackend, M: Denoiser<B> + AutodiffModule<B>> Trainer<B, M>
where
    M::InnerModule: Module<B::InnerBackend>,
{
    /// A model built by `loader` (random weights to train from scratch, or a
    /// pretrained model's to fine-tune; in the loader's formulation, which
    /// [`build_model`] sets to Burn's own ops) under `scheduler_config` (the noise
    /// scheduler's `scheduler_config.json`: betas, timesteps, prediction type).
    pub fn new(
        loader: &Loader<B>,
        model_config: M::Config,
        scheduler_config: Value,
        config: TrainConfig,
    ) -> Result<Self> {
        let model = M::build(loader, &model_config)?;
        let keys = loader.param_keys();
        Self::from_parts(
            model,
            model_config,
            keys,
            scheduler_config,
            config,
            loader.device().clone(),
        )
    }

    /// A trainer for an already built `model` whose parameters `keys`
    /// describes (see [`build_model`]).
    pub fn from_parts(
        model: M,
        model_config: M::Config,
        keys: ParamKeys,
        scheduler_config: Value,
        config: TrainConfig,
        device: B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let scheduler =
            diffusion_schedulers::from_config::<Latents<B>>(&scheduler_config)?.scheduler;
        let snr_scheduler =
            diffusion_schedulers::from_config::<CpuTensor>(&scheduler_config)?.scheduler;
        let from_config = scheduler_config
            .get("prediction_type")
            .and_then(Value::as_str)
            .unwrap_or("epsilon");
        let prediction = match config.objective.prediction_type {
            Some(p) => p,
            None => serde_json::from_value(Value::String(from_config.into())).map_err(|_| {
                PipelineError::parameter(
                    "prediction_type",
                    format!("unknown value {from_config:?} in the scheduler config"),
                )
            })?,
        };
        if prediction == PredictionType::FlowPrediction {
            return Err(PipelineError::parameter(
                "prediction_type",
                "flow_prediction is not trainable here (epsilon, v_prediction or sample)",
            ));
        }
        let num_train_timesteps = scheduler_config
            .get("num_train_timesteps")
            .and_then(Value::as_u64)
            .unwrap_or(1000) as usize;
        // Averaged: the trained parameters (all of them, or a LoRA's factors).
        let trainable = trainable_ids(&model);
        let ema = config.ema.map(|_| {
            flatten(&model.valid())
                .into_iter()
                .filter(|p| trainable.contains(&p.id))
                .map(|p| (p.id, p.value))
                .collect()
        });
        Ok(Trainer {
            model,
            model_config,
            keys,
            scheduler_config,
            scheduler,
            snr_scheduler,
            prediction,
            num_train_timesteps,
            optimizer: AdamW::new(config.optimizer),
            scaler: config
                .mixed_precision
                .needs_loss_scaling()
                .then(GradScaler::default),
            config,
            ema,
            step: 0,
            lora: None,
            device,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Its config.
    pub fn model_config(&self) -> &M::Config {
        &self.model_config
    }

    /// The key, stored shape and layout of each parameter (for saving).
    pub fn param_keys(&self) -> &ParamKeys {
        &self.keys
    }

    /// The noise scheduler's config.
    pub fn scheduler_config(&self) -> &Value {
        &self.scheduler_config
    }

    /// The run's hyper-parameters.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The target the model learns.
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    /// Training timesteps of the noise scheduler (timesteps are drawn in `0..this`).
    pub fn num_train_timesteps(&self) -> usize {
        self.num_train_timesteps
    }

    /// Optimizer steps done.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The loss scaler (f16 mixed precision only).
    pub fn grad_scaler(&self) -> Option<&GradScaler> {
        self.scaler.as_ref()
    }

    /// Sets the loss scaler's state (e.g. another initial scale, as
    /// `GradScaler(init_scale=...)`); refused unless the run is in f16.
    pub fn set_grad_scaler(&mut self, scaler: GradScaler) -> Result<()> {
        if !self.config.mixed_precision.needs_loss_scaling() {
            return Err(PipelineError::parameter(
                "grad_scaler",
                "loss scaling applies to f16 mixed precision only",
            ));
        }
        scaler
            .validate()
            .map_err(|e| PipelineError::parameter("grad_scaler", e))?;
        self.scaler = Some(scaler);
        Ok(())
    }

    /// Switches the precision of the steps to come (e.g. a run resumed with
    /// another `--mixed-precision`). Entering f16 starts a fresh loss scaler
    /// unless one is running; leaving f16 drops it. The weights are f32
    /// either way, so nothing else changes.
    pub fn set_mixed_precision(&mut self, mixed_precision: MixedPrecision) {
        self.config.mixed_precision = mixed_precision;
        self.scaler = match (mixed_precision.needs_loss_scaling(), self.scaler) {
            (true, Some(running)) => Some(running),
            (true, None) => Some(GradScaler::default()),
            (false, _) => None,
        };
    }

    /// Optimizer updates taken: the step count less the steps skipped for
    /// overflowing f16 gradients. The learning-rate schedule follows it, as
    /// accelerate's scheduler does not step when the optimizer skipped.
    pub fn optimizer_steps(&self) -> u64 {
        self.optimizer.steps
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Stretches the learning-rate schedule to end at `total_steps` (a run
    /// resumed with a longer budget than it started with).
    pub fn set_total_steps(&mut self, total_steps: u64) {
        self.config.lr_schedule.total_steps = total_steps;
    }

    /// The learning rate the next step will use.
    pub fn next_lr(&self) -> f64 {
        self.config
            .lr_schedule
            .lr(self.config.learning_rate, self.optimizer.steps)
    }

    /// The model for inference: the moving average when there is one (what
    /// diffusers' scripts save), else the trained weights.
    pub fn inference_model(&self) -> M::InnerModule {
        let model = self.model.valid();
        match &self.ema {
            Some(shadow) => replace(model, shadow),
            None => model,
        }
    }

    /// The trained weights (not averaged), for inference.
    pub fn raw_model(&self) -> M::InnerModule {
        self.model.valid()
    }

    /// The loss of `batch` (a graph on the autodiff backend) and its value.
    pub fn loss(&self, batch: &Batch<B>) -> Result<Tensor<B, 1>> {
        let [n, ..] = batch.x0.dims();
        let dims = batch.x0.dims();
        if batch.noise.dims() != dims {
            return Err(PipelineError::parameter(
                "batch",
                format!("noise has shape {:?}, x0 has {dims:?}", batch.noise.dims()),
            ));
        }
        if batch.timesteps.len() != n {
            return Err(PipelineError::parameter(
                "batch",
                format!("{} timesteps for {n} samples", batch.timesteps.len()),
            ));
        }
        if let Some(t) = batch
            .timesteps
            .iter()
            .find(|&&t| t < 0 || t as usize >= self.num_train_timesteps)
        {
            return Err(PipelineError::parameter(
                "batch",
                format!("timestep {t} is outside 0..{}", self.num_train_timesteps),
            ));
        }
        let offset = self.config.objective.noise_offset;
        let noise = if offset != 0.0 {
            let extra = batch.offset_noise.clone().ok_or_else(|| {
                PipelineError::parameter("batch", "noise_offset is set but offset_noise is missing")
            })?;
            if extra.dims() != [dims[0], dims[1], 1, 1] {
                return Err(PipelineError::parameter(
                    "batch",
                    format!(
                        "offset_noise has shape {:?}, expected [N, C, 1, 1]",
                        extra.dims()
                    ),
                ));
            }
            batch.noise.clone() + extra.mul_scalar(offset as f32)
        } else {
            batch.noise.clone()
        };
        let ts: Vec<f64> = batch.timesteps.iter().map(|&t| t as f64).collect();
        let x0 = Latents(batch.x0.clone());
        let noise = Latents(noise);
        let noisy = self.scheduler.add_noise(&x0, &noise, &ts)?.0;
        let target = match self.prediction {
            PredictionType::Epsilon => noise.0,
            PredictionType::VPrediction => self.scheduler.get_velocity(&x0, &noise, &ts)?.0,
            PredictionType::Sample | PredictionType::FlowPrediction => x0.0,
        };
        let t = Tensor::<B, 1>::from_data(
            TensorData::new(batch.timesteps.iter().map(|&t| t as f32).collect(), [n]),
            &self.device,
        );
        let pred = match self.config.mixed_precision.dtype() {
            None => self.model.denoise(noisy, t, &batch.condition)?,
            Some(dtype) => {
                // Half-precision copies of the weights, recorded by autodiff:
                // the gradients land on the f32 weights.
                let half = cast_params(self.model.clone(), dtype);
                let condition = batch.condition.to_dtype(dtype);
                let pred = half.denoise(to_dtype(noisy, dtype), t, &condition)?;
                to_dtype(pred, DType::F32)
            }
        };
        if pred.dims() != dims {
            return Err(PipelineError::parameter(
                "batch",
                format!(
                    "the model predicts {:?} from a batch of {dims:?}",
                    pred.dims()
                ),
            ));
        }
        let diff = pred - target;
        let se = diff.clone() * diff;
        let objective = self.config.objective;
        if objective.snr_gamma.is_none() && objective.prior_loss_weight.is_none() {
            return Ok(se.mean());
        }
        let mut per_sample = se.reshape([n as i32, -1]).mean_dim(1).reshape([n]);
        if objective.snr_gamma.is_some() {
            let ones = CpuTensor::new(vec![1.0; n], vec![n, 1, 1, 1])?;
            let zeros = CpuTensor::zeros(vec![n, 1, 1, 1]);
            let signal = self.snr_scheduler.add_noise(&ones, &zeros, &ts)?;
            let noise_scale = self.snr_scheduler.add_noise(&zeros, &ones, &ts)?;
            let snr = snr(signal.data(), noise_scale.data());
            let w = objective.weights(self.prediction, &snr);
            let w = Tensor::<B, 1>::from_data(
                TensorData::new(w.iter().map(|&v| v as f32).collect(), [n]),
                &self.device,
            );
            per_sample = per_sample * w;
        }
        match objective.prior_loss_weight {
            None => Ok(per_sample.mean()),
            Some(weight) => {
                if n % 2 != 0 {
                    return Err(PipelineError::parameter(
                        "batch",
                        format!(
                            "prior preservation needs instance and class halves; the batch has {n} samples"
                        ),
                    ));
                }
                let half = n / 2;
                let instance = per_sample.clone().slice(0..half).mean();
                let class = per_sample.slice(half..n).mean();
                Ok(instance + class.mul_scalar(weight as f32))
            }
        }
    }

    /// One optimizer step on `batch`.
    ///
    /// A non-finite loss or gradient leaves the weights as they were: in f32
    /// and bf16 it is a [`PipelineError::Training`] naming the step; in f16 it
    /// is an overflow of the half-precision pass, so the step is skipped and
    /// the loss scale backs off (`StepStats::skipped`), as `GradScaler` does.
    pub fn step(&mut self, batch: &Batch<B>) -> Result<StepStats> {
        let step = self.step + 1;
        let lr = self.next_lr();
        let loss = self.loss(batch)?;
        let loss_value = f64::from(loss.clone().into_scalar().elem::<f32>());
        let loss_scale = self.scaler.map(|s| s.scale);
        let refuse = |what: &str, value: f64| PipelineError::Training {
            step,
            message: format!("the {what} is {value}; the weights were not updated"),
        };
        if !loss_value.is_finite() && loss_scale.is_none() {
            return Err(refuse("loss", loss_value));
        }
        let (grad_norm, update) = if loss_value.is_finite() {
            let grads = match loss_scale {
                Some(scale) => loss.mul_scalar(scale as f32).backward(),
                None => loss.backward(),
            };
            let ordered: Vec<(ParamId, Tensor<B::InnerBackend, 1>)> =
                gradients(&self.model, &grads)
                    .into_iter()
                    .filter_map(|(id, g)| g.map(|g| (id, g)))
                    .map(|(id, g)| match loss_scale {
                        // Unscaled before clipping, as accelerate's `clip_grad_norm_`.
                        Some(scale) => (id, g.mul_scalar((1.0 / scale) as f32)),
                        None => (id, g),
                    })
                    .collect();
            let (grad_norm, coef) =
                clip_coefficient(ordered.iter().map(|(_, g)| g), self.config.max_grad_norm);
            (grad_norm, Some((ordered, coef)))
        } else {
            // An f16 forward pass that overflowed: nothing to differentiate.
            (f64::NAN, None)
        };
        let skipped = !grad_norm.is_finite();
        match self.scaler.as_mut() {
            Some(scaler) => scaler.update(skipped),
            None if skipped => return Err(refuse("gradient norm", grad_norm)),
            None => {}
        }
        let params: Vec<FlatParam<B::InnerBackend>> = flatten(&self.model)
            .into_iter()
            .map(|p| FlatParam {
                id: p.id,
                dims: p.dims,
                value: p.value.inner(),
            })
            .collect();
        let updated = match update {
            Some((ordered, coef)) if !skipped => {
                let grads: HashMap<_, _> = ordered.into_iter().collect();
                let new_values = self.optimizer.update(&params, &grads, lr, coef);
                self.model = replace_autodiff(self.model.clone(), &new_values);
                new_values
            }
            _ => HashMap::new(),
        };
        self.step = step;
        // The moving average steps on a skipped step too (with the unchanged
        // weights), as diffusers' scripts call `ema_model.step` regardless.
        if let (Some(shadow), Some(ema)) = (self.ema.as_mut(), self.config.ema) {
            let one_minus = (1.0 - ema.decay_at(step)) as f32;
            for p in &params {
                let current = updated.get(&p.id).unwrap_or(&p.value);
                if let Some(s) = shadow.get_mut(&p.id) {
                    *s = s.clone() - (s.clone() - current.clone()).mul_scalar(one_minus);
                }
            }
        }
        Ok(StepStats {
            step,
            loss: loss_value,
            grad_norm,
            lr,
            skipped,
            loss_scale,
        })
    }
}

/// Builds a model on `device` from a config and optional weights (without:
/// PyTorch's default initialisation schemes, drawn from a host generator
/// keyed by `seed`, see [`Loader::random_seeded`]), returning it with its
/// parameter keys. The model runs Burn's own ops
/// ([`Formulation::BURN_OPS`], on every backend): the other formulations
/// were measured for inference only, and im2col's columns would be kept for
/// the backward pass.
pub fn build_model<B: Backend, M: Denoiser<B>>(
    config: &M::Config,
    weights: Option<&dyn WeightSource>,
    device: &B::Device,
    seed: u64,
) -> Result<(M, ParamKeys)> {
    let loader = match weights {
        Some(w) => Loader::new(w, device, Precision::F32),
        None => Loader::random_seeded(device, Precision::F32, seed),
    }
    .with_formulation(Formulation::BURN_OPS);
    let model = M::build(&loader, config)?;
    let keys = loader.param_keys();
    loader.finish(&[])?;
    Ok((model, keys))
}
