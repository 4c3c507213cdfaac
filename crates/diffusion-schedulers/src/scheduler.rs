//! The interface every scheduler implements, mirroring diffusers' `SchedulerMixin`.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, SchedulerError};
use crate::tensor::{NoiseSource, SchedulerTensor};

/// What `step` returns: diffusers' `prev_sample` and, where diffusers returns it,
/// the model's estimate of the clean sample (`pred_original_sample`, or
/// `denoised` for the LCM/TCD family).
#[derive(Debug, Clone)]
pub struct StepOutput<T> {
    pub prev_sample: T,
    pub pred_original_sample: Option<T>,
}

/// The optional keyword arguments of diffusers' `step`. `None` takes the
/// scheduler's own default (e.g. `eta = 0.0` for DDIM, `0.3` for TCD). An option
/// the scheduler does not have is ignored, as in a pipeline that passes `eta` to
/// whatever scheduler it holds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepOptions {
    /// DDIM/TCD stochasticity.
    pub eta: Option<f64>,
    /// DDIM: recompute epsilon from the clipped x0.
    pub use_clipped_model_output: Option<bool>,
    /// Euler/EDM "churn" (Karras et al. 2022, Algorithm 2).
    pub s_churn: Option<f64>,
    pub s_tmin: Option<f64>,
    pub s_tmax: Option<f64>,
    pub s_noise: Option<f64>,
    /// LMS: the multistep order of this step (diffusers' default 4).
    pub order: Option<usize>,
    /// Whether `step` returns `pred_original_sample` where the scheduler has
    /// one (default: yes, as diffusers). `Some(false)` skips writing it, a
    /// latent-sized tensor, for callers that only read `prev_sample` (the
    /// pipelines).
    pub pred_original_sample: Option<bool>,
}

impl StepOptions {
    /// Whether the caller wants `pred_original_sample` (unless told otherwise, yes).
    pub fn wants_pred_original_sample(&self) -> bool {
        self.pred_original_sample.unwrap_or(true)
    }
}

/// The arguments of diffusers' `set_timesteps`: a step count, or a custom list of
/// timesteps or sigmas, plus the scheduler-specific extras.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestepSpec {
    pub num_inference_steps: Option<usize>,
    /// Custom timesteps, descending (schedulers that accept them).
    pub timesteps: Option<Vec<f64>>,
    /// Custom sigmas, descending (schedulers that accept them).
    pub sigmas: Option<Vec<f64>>,
    /// FlowMatchEuler dynamic shifting parameter.
    pub mu: Option<f64>,
    /// LCM/TCD: the original (distillation) step count.
    pub original_inference_steps: Option<usize>,
    /// LCM/TCD img2img strength.
    pub strength: Option<f64>,
}

impl TimestepSpec {
    pub fn steps(n: usize) -> Self {
        Self {
            num_inference_steps: Some(n),
            ..Self::default()
        }
    }
}

/// A diffusion scheduler over tensors `T`.
pub trait Scheduler<T: SchedulerTensor>: Send {
    /// diffusers' class name, e.g. `"EulerDiscreteScheduler"`.
    fn class_name(&self) -> &'static str;

    /// The full config with every field (defaults filled in) and `_class_name`,
    /// as diffusers would save it in `scheduler_config.json`.
    fn config(&self) -> Value;

    /// Number of model evaluations per `step` in diffusers' sense (Heun: 2).
    fn order(&self) -> usize;

    /// Length of the training schedule.
    fn num_train_timesteps(&self) -> usize;

    /// Lay out the inference schedule.
    fn set_timesteps_with(&mut self, spec: &TimestepSpec) -> Result<()>;

    /// Lay out `num_inference_steps` inference steps.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepSpec::steps(num_inference_steps))
    }

    /// The timesteps to pass to the model, in order (after `set_timesteps`).
    fn timesteps(&self) -> &[f64];

    /// The noise levels, one more than the timesteps (the final one), where the
    /// scheduler defines them.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }

    /// Standard deviation of the initial noise.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Scale the denoising model input for timestep `t` (identity for most).
    fn scale_model_input(&mut self, sample: &T, _t: f64) -> Result<T> {
        Ok(sample.clone())
    }

    /// One reverse-diffusion step from `sample` at timestep `t`.
    fn step(
        &mut self,
        model_output: &T,
        t: f64,
        sample: &T,
        options: &StepOptions,
        noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>>;

    /// Forward diffusion: noise `original` to `timesteps` (one per batch item, or one for all).
    fn add_noise(&self, original: &T, noise: &T, timesteps: &[f64]) -> Result<T>;

    /// The v-prediction target (`sqrt(a) * noise - sqrt(1 - a) * sample`), where defined.
    fn get_velocity(&self, _sample: &T, _noise: &T, _timesteps: &[f64]) -> Result<T> {
        Err(SchedulerError::Unsupported {
            class: self.class_name(),
            what: "get_velocity".into(),
        })
    }

    /// Start the schedule at index `begin` (img2img pipelines), before the first step.
    fn set_begin_index(&mut self, begin: usize);

    /// The index set by `set_begin_index`, if any.
    fn begin_index(&self) -> Option<usize>;
}

/// Check the timestep list of `add_noise`/`get_velocity` against the batch.
pub(crate) fn check_batch_timesteps<T: SchedulerTensor>(
    x: &T,
    other: &T,
    timesteps: &[f64],
) -> Result<()> {
    if x.shape() != other.shape() {
        return Err(SchedulerError::ShapeMismatch {
            what: "add_noise operands",
            expected: x.shape(),
            got: other.shape(),
        });
    }
    let batch = x.shape().first().copied().unwrap_or(1);
    if timesteps.len() != 1 && timesteps.len() != batch {
        return Err(SchedulerError::ShapeMismatch {
            what: "timesteps (one per batch item, or one)",
            expected: vec![batch],
            got: vec![timesteps.len()],
        });
    }
    Ok(())
}

/// Cumulative-alpha forward process shared by the DDPM family:
/// `sqrt(a_t) * x + sqrt(1 - a_t) * noise`.
pub(crate) fn alpha_add_noise<T: SchedulerTensor>(
    alphas_cumprod: &[f64],
    original: &T,
    noise: &T,
    timesteps: &[f64],
) -> Result<T> {
    check_batch_timesteps(original, noise, timesteps)?;
    let a = alpha_lookup(alphas_cumprod, timesteps)?;
    let sa: Vec<f64> = a.iter().map(|a| a.sqrt()).collect();
    let sb: Vec<f64> = a.iter().map(|a| (1.0 - a).sqrt()).collect();
    Ok(T::linear_combination(&[
        (1.0, &original.scale_batch(&sa)),
        (1.0, &noise.scale_batch(&sb)),
    ]))
}

/// `sqrt(a_t) * noise - sqrt(1 - a_t) * sample` for the DDPM family.
pub(crate) fn alpha_velocity<T: SchedulerTensor>(
    alphas_cumprod: &[f64],
    sample: &T,
    noise: &T,
    timesteps: &[f64],
) -> Result<T> {
    check_batch_timesteps(sample, noise, timesteps)?;
    let a = alpha_lookup(alphas_cumprod, timesteps)?;
    let sa: Vec<f64> = a.iter().map(|a| a.sqrt()).collect();
    let sb: Vec<f64> = a.iter().map(|a| -(1.0 - a).sqrt()).collect();
    Ok(T::linear_combination(&[
        (1.0, &noise.scale_batch(&sa)),
        (1.0, &sample.scale_batch(&sb)),
    ]))
}

/// `alphas_cumprod[t]` for integer training timesteps.
pub(crate) fn alpha_lookup(alphas_cumprod: &[f64], timesteps: &[f64]) -> Result<Vec<f64>> {
    timesteps
        .iter()
        .map(|&t| {
            let i = t.round();
            if !(t.is_finite()
                && i >= 0.0
                && (i as usize) < alphas_cumprod.len()
                && (t - i).abs() < 1e-9)
            {
                return Err(SchedulerError::UnknownTimestep(t));
            }
            Ok(alphas_cumprod[i as usize])
        })
        .collect()
}
