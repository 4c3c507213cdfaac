//! Sigma-schedule helpers of the k-diffusion ("discrete") schedulers: Euler,
//! Euler ancestral, LMS, EDM Euler, Heun, KDPM2, KDPM2 ancestral and flow-match
//! Euler. These schedulers index a `sigmas` tensor instead of `alphas_cumprod`,
//! and diffusers builds that tensor the same way in each of them, so the pieces
//! live here once.

use crate::common::{self, StepIndex, f32r};
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid, validate_betas};
use crate::error::{Result, SchedulerError};
use crate::scheduler::check_batch_timesteps;
use crate::tensor::SchedulerTensor;

/// Which of Karras / exponential / beta sigmas a config asks for
/// (`use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigmaSpacing {
    Interpolated,
    Karras,
    Exponential,
    Beta,
}

impl SigmaSpacing {
    /// Resolve the three `use_*_sigmas` flags; diffusers refuses more than one.
    pub(crate) fn from_flags(karras: bool, exponential: bool, beta: bool) -> Result<Self> {
        match (karras, exponential, beta) {
            (false, false, false) => Ok(Self::Interpolated),
            (true, false, false) => Ok(Self::Karras),
            (false, true, false) => Ok(Self::Exponential),
            (false, false, true) => Ok(Self::Beta),
            _ => Err(invalid(
                "use_karras_sigmas",
                format!("karras={karras}, exponential={exponential}, beta={beta}"),
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be set",
            )),
        }
    }

    /// Re-space `n` sigmas between `sigma_min` and `sigma_max` (`None` for interpolated).
    pub(crate) fn respace(self, sigma_min: f64, sigma_max: f64, n: usize) -> Option<Vec<f64>> {
        match self {
            Self::Interpolated => None,
            Self::Karras => Some(common::karras_sigmas(sigma_min, sigma_max, n)),
            Self::Exponential => Some(common::exponential_sigmas(sigma_min, sigma_max, n)),
            Self::Beta => Some(common::beta_sigmas(sigma_min, sigma_max, n)),
        }
    }
}

/// The config checks shared by the beta-derived sigma schedulers: valid betas,
/// no `sigmoid` schedule (diffusers raises NotImplementedError) and no
/// `flow_prediction`.
pub(crate) fn validate_sigma_betas(
    class: &str,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    beta_schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
    prediction_type: PredictionType,
) -> Result<()> {
    validate_betas(
        num_train_timesteps,
        beta_start,
        beta_end,
        beta_schedule,
        trained_betas,
    )?;
    if beta_schedule == BetaSchedule::Sigmoid && trained_betas.is_none() {
        return Err(invalid(
            "beta_schedule",
            "sigmoid",
            format!("not implemented for {class}"),
        ));
    }
    if prediction_type == PredictionType::FlowPrediction {
        return Err(invalid(
            "prediction_type",
            "flow_prediction",
            format!("not supported by {class}"),
        ));
    }
    Ok(())
}

/// Check an optional `sigma_min`/`sigma_max` override.
pub(crate) fn validate_sigma_bound(field: &str, value: Option<f64>) -> Result<()> {
    match value {
        Some(v) if !(v.is_finite() && v > 0.0) => {
            Err(invalid(field, v, "must be a finite positive number"))
        }
        _ => Ok(()),
    }
}

/// The inference timesteps of `timestep_spacing` (descending). These schedulers
/// keep their timesteps as a `float32` tensor (not rounded to integers as the
/// DDPM family does), so each value is rounded to `f32`.
pub(crate) fn spaced_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    num_train_timesteps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    let train = num_train_timesteps as f64;
    match spacing {
        TimestepSpacing::Linspace => common::linspace(0.0, train - 1.0, n)
            .into_iter()
            .rev()
            .map(f32r)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (num_train_timesteps / n) as f64;
            (0..n)
                .rev()
                .map(|i| f32r(f32r(i as f64 * ratio) + steps_offset as f64))
                .collect()
        }
        TimestepSpacing::Trailing => common::arange(train, 0.0, -(train / n as f64))
            .into_iter()
            .map(|t| f32r(common::round_half_even(t)) - 1.0)
            .collect(),
    }
}

/// `np.interp` of the training sigma table at each (fractional) timestep.
pub(crate) fn interp_sigmas(timesteps: &[f64], table: &[f64]) -> Vec<f64> {
    let xp: Vec<f64> = (0..table.len()).map(|i| i as f64).collect();
    timesteps
        .iter()
        .map(|&t| common::interp(t, &xp, table))
        .collect()
}

/// The sigma-space forward process `x + sigma(t) * noise`, with diffusers' rules
/// for which step's sigma applies (see [`StepIndex::add_noise_indices`]).
/// `past_end(i)` is the error for an index beyond the sigmas.
pub(crate) fn sigma_add_noise<T: SchedulerTensor>(
    index: &StepIndex,
    schedule: &[f64],
    sigmas: &[f64],
    original: &T,
    noise: &T,
    at: &[f64],
    past_end: impl Fn(usize) -> SchedulerError,
) -> Result<T> {
    check_batch_timesteps(original, noise, at)?;
    let coeffs = index
        .add_noise_indices(at, schedule)?
        .into_iter()
        .map(|i| sigmas.get(i).copied().ok_or_else(|| past_end(i)))
        .collect::<Result<Vec<f64>>>()?;
    Ok(T::linear_combination(&[
        (1.0, original),
        (1.0, &noise.scale_batch(&coeffs)),
    ]))
}

/// The `add_noise` error of the Euler family for a begin index beyond the sigmas
/// (the Heun/KDPM2 family reports `PastLastStep` instead).
pub(crate) fn begin_index_beyond(num_sigmas: usize) -> impl Fn(usize) -> SchedulerError {
    move |i| SchedulerError::InvalidArgument {
        field: "begin_index",
        value: i.to_string(),
        reason: format!("beyond the {num_sigmas} sigmas of the schedule"),
    }
}
