//! Pieces shared by the DPM-Solver family of multistep-style schedulers
//! (`dpmsolver_multistep`, `dpmsolver_singlestep`, `deis_multistep`,
//! `unipc_multistep`).
//!
//! diffusers implements these four classes by copy-and-paste (`# Copied from
//! ...DPMSolverMultistepScheduler...`): the same timestep spacing, flow-matching
//! sigmas, `_sigma_to_alpha_sigma_t`, `_threshold_sample`, `add_noise` and
//! `convert_model_output` appear in each. Keeping one Rust copy here means a
//! parity fix lands in all four at once. Every scalar that diffusers evaluates as
//! a `float32` tensor is evaluated in `f32` here too, in the same order, so the
//! schedulers stay bit-compatible with diffusers.

use serde::{Deserialize, Serialize};

use crate::common::{self, StepIndex};
use crate::config::{FinalSigmasType, PredictionType, TimestepSpacing, invalid};
use crate::error::{Result, SchedulerError};
use crate::scheduler::check_batch_timesteps;
use crate::tensor::SchedulerTensor;

/// `solver_type` of the multistep DPM-Solver and DEIS. DPM-Solver uses
/// `midpoint`/`heun` and loads UniPC's `bh1`/`bh2` and DEIS' `logrho` as
/// `midpoint`; DEIS loads every one of them as `logrho`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultistepSolverType {
    Midpoint,
    Heun,
    Logrho,
    Bh1,
    Bh2,
}

/// `variance_type` of a model that also predicts its variance (output
/// channels: the prediction, then the variance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    Learned,
    LearnedRange,
}

/// How `mu` shifts a flow schedule (`use_dynamic_shifting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeShiftType {
    /// `e^mu / (e^mu + (1 / t - 1))`.
    Exponential,
    /// `mu / (mu + (1 / t - 1))`.
    Linear,
}

/// The integer inference timesteps of the DPM-Solver family: `n + 1` points
/// spaced up to `last_timestep` with the first dropped (`last_timestep` is the
/// training length, or less where `lambda_min_clipped` cuts the schedule).
pub(crate) fn solver_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    train: usize,
    last_timestep: usize,
    steps_offset: usize,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let grid = common::linspace(0.0, last_timestep as f64 - 1.0, n + 1);
            grid[1..]
                .iter()
                .rev()
                .map(|&t| common::round_half_even(t) as i64)
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = (last_timestep / (n + 1)) as i64;
            (1..=n as i64)
                .rev()
                .map(|i| i * ratio + steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            common::np_arange(last_timestep as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| common::round_half_even(t) as i64 - 1)
                .collect()
        }
    }
}

/// Flow-matching sigmas `shift * s / (1 + (shift - 1) * s)` for `n` steps,
/// highest first (without the final sigma).
pub(crate) fn flow_sigmas(n: usize, train: usize, shift: f64) -> Vec<f64> {
    let alphas = common::linspace(1.0, 1.0 / train as f64, n + 1);
    let shifted: Vec<f64> = alphas
        .iter()
        .map(|a| {
            let s = 1.0 - a;
            shift * s / (1.0 + (shift - 1.0) * s)
        })
        .collect();
    shifted[1..].iter().rev().copied().collect()
}

/// `_sigma_to_alpha_sigma_t` in `f32` (diffusers keeps sigmas in `float32`), for
/// the whole DPM-Solver family: VP `(1 / sqrt(sigma^2 + 1), sigma * alpha)`,
/// or flow `(1 - sigma, sigma)`.
#[inline]
pub(crate) fn alpha_sigma(sigma: f32, flow: bool) -> (f32, f32) {
    if flow {
        (1.0 - sigma, sigma)
    } else {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }
}

/// Dynamic thresholding as diffusers' `_threshold_sample`. With `max < 1`
/// torch's `clamp(s, min=1, max)` always yields `max`, so the threshold is fixed.
pub(crate) fn threshold_sample<T: SchedulerTensor>(x: &T, ratio: f64, max: f64) -> T {
    if max < 1.0 {
        x.clamp(-max, max).scale(1.0 / max)
    } else {
        x.dynamic_threshold(ratio, max)
    }
}

/// Validate the thresholding parameters where thresholding is on.
pub(crate) fn validate_thresholding(thresholding: bool, ratio: f64, max: f64) -> Result<()> {
    if !thresholding {
        return Ok(());
    }
    if !(ratio.is_finite() && (0.0..=1.0).contains(&ratio)) {
        return Err(invalid(
            "dynamic_thresholding_ratio",
            ratio,
            "must lie in [0, 1]",
        ));
    }
    if !(max.is_finite() && max > 0.0) {
        return Err(invalid("sample_max_value", max, "must be positive"));
    }
    Ok(())
}

/// The sigma-based forward process of the DPM-Solver family (multistep,
/// singlestep, DEIS, UniPC):
/// `alpha(sigma) * x + sigma_t(sigma) * noise`, with diffusers' index rules.
pub(crate) fn sigma_add_noise<T: SchedulerTensor>(
    index: &StepIndex,
    timesteps: &[f64],
    sigmas: &[f64],
    flow: bool,
    original: &T,
    noise: &T,
    at: &[f64],
) -> Result<T> {
    check_batch_timesteps(original, noise, at)?;
    let indices = index.add_noise_indices(at, timesteps)?;
    let mut alphas = Vec::with_capacity(indices.len());
    let mut sigma_ts = Vec::with_capacity(indices.len());
    for &i in &indices {
        let sigma = *sigmas.get(i).ok_or(SchedulerError::PastLastStep(i))?;
        let (a, s) = alpha_sigma(sigma as f32, flow);
        alphas.push(a as f64);
        sigma_ts.push(s as f64);
    }
    Ok(T::linear_combination(&[
        (1.0, &original.scale_batch(&alphas)),
        (1.0, &noise.scale_batch(&sigma_ts)),
    ]))
}

/// `a - b`, exactly as torch evaluates it in `f32`.
#[inline]
pub(crate) fn sub<T: SchedulerTensor>(a: &T, b: &T) -> T {
    T::linear_combination(&[(1.0, a), (-1.0, b)])
}

/// `log(alpha_t) - log(sigma_t)` in `float32` (`+inf` at `sigma_t = 0`).
pub(crate) fn lambda_f32(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// The flow-matching shift `s * x / (1 + (s - 1) * x)`.
pub(crate) fn flow_shifted(x: f64, shift: f64) -> f64 {
    shift * x / (1.0 + (shift - 1.0) * x)
}

/// Error for `set_timesteps` without a usable step count.
pub(crate) fn missing_steps() -> SchedulerError {
    SchedulerError::InvalidArgument {
        field: "num_inference_steps",
        value: "None".into(),
        reason: "required (or pass custom timesteps/sigmas where supported)".into(),
    }
}

/// The last entry diffusers appends to the sigma schedule (`final_sigmas_type`):
/// the smallest training sigma, or zero. Every solver of the family ends its
/// schedule this way.
#[inline]
pub(crate) fn final_sigma(kind: FinalSigmasType, sigma_min: f64) -> f64 {
    match kind {
        FinalSigmasType::SigmaMin => sigma_min,
        FinalSigmasType::Zero => 0.0,
    }
}

/// The two ways the family's schedulers evaluate [`convert_model_output`].
/// For an `f32` tensor such as `CpuTensor` the two differences round alike;
/// a backend that accumulates [`SchedulerTensor::linear_combination`] in a
/// wider type does not, and with `sample_max_value < 1` the two thresholds
/// round differently. Each scheduler keeps the form it was validated with,
/// so that no backend sees its numbers change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// The multistep DPM-Solver and DEIS: `c * model_output` is rounded
    /// before it is subtracted (torch's two roundings, spelled out), and
    /// `_threshold_sample` is [`threshold_sample`].
    ScaledFirst,
    /// The singlestep DPM-Solver and UniPC: `sample - c * model_output` is
    /// one linear combination, and `_threshold_sample` is
    /// [`SchedulerTensor::dynamic_threshold`].
    OneExpression,
}

impl Form {
    /// `sample - c * model_output`.
    fn difference<T: SchedulerTensor>(self, sample: &T, c: f64, model_output: &T) -> T {
        match self {
            Form::ScaledFirst => sub(sample, &model_output.scale(c)),
            Form::OneExpression => T::linear_combination(&[(1.0, sample), (-c, model_output)]),
        }
    }

    /// diffusers' `_threshold_sample`.
    fn threshold<T: SchedulerTensor>(self, x0_pred: &T, ratio: f64, max: f64) -> T {
        match self {
            Form::ScaledFirst => threshold_sample(x0_pred, ratio, max),
            Form::OneExpression => x0_pred.dynamic_threshold(ratio, max),
        }
    }
}

/// What [`convert_model_output`] reads of a scheduler's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conversion {
    pub prediction_type: PredictionType,
    pub use_flow_sigmas: bool,
    /// `(dynamic_thresholding_ratio, sample_max_value)` when `thresholding`.
    pub thresholding: Option<(f64, f64)>,
    pub form: Form,
}

/// diffusers' `convert_model_output` of the DPM-Solver family at the sigma
/// `sigma`: the data prediction `x0_pred` when `predict_x0` (DPM-Solver++,
/// DEIS, UniPC), else the noise prediction `epsilon` (DPM-Solver, UniPC with
/// `predict_x0 = false`), thresholded as configured.
pub(crate) fn convert_model_output<T: SchedulerTensor>(
    model_output: &T,
    sample: &T,
    sigma: f32,
    predict_x0: bool,
    config: &Conversion,
) -> Result<T> {
    let form = config.form;
    if config.thresholding.is_some() {
        // The threshold is a quantile of the whole `x0`: a non-finite input
        // is refused before it is taken (and before the step draws noise).
        common::check_finite(model_output, sample)?;
    }
    let (alpha_t, sigma_t) = alpha_sigma(sigma, config.use_flow_sigmas);
    let (alpha_t, sigma_t) = (alpha_t as f64, sigma_t as f64);
    if predict_x0 {
        let x0_pred = match config.prediction_type {
            PredictionType::Epsilon => form
                .difference(sample, sigma_t, model_output)
                .scale(1.0 / alpha_t),
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                T::linear_combination(&[(alpha_t, sample), (-sigma_t, model_output)])
            }
            PredictionType::FlowPrediction => {
                let sigma_t = sigma as f64;
                T::linear_combination(&[(1.0, sample), (-sigma_t, model_output)])
            }
        };
        return Ok(match config.thresholding {
            Some((ratio, max)) => form.threshold(&x0_pred, ratio, max),
            None => x0_pred,
        });
    }
    let epsilon = match config.prediction_type {
        PredictionType::Epsilon => model_output.clone(),
        PredictionType::Sample => form
            .difference(sample, alpha_t, model_output)
            .scale(1.0 / sigma_t),
        PredictionType::VPrediction => {
            T::linear_combination(&[(alpha_t, model_output), (sigma_t, sample)])
        }
        // Each scheduler refuses this config when it is built.
        PredictionType::FlowPrediction => {
            return Err(invalid(
                "prediction_type",
                "flow_prediction",
                "has no noise prediction; use an algorithm that predicts x0",
            ));
        }
    };
    Ok(match config.thresholding {
        Some((ratio, max)) => {
            let x0_pred = form
                .difference(sample, sigma_t, &epsilon)
                .scale(1.0 / alpha_t);
            let x0_pred = form.threshold(&x0_pred, ratio, max);
            form.difference(sample, alpha_t, &x0_pred)
                .scale(1.0 / sigma_t)
        }
        None => epsilon,
    })
}

/// The noise of a stochastic update (diffusers' `assert noise is not None`);
/// `step` draws it for every stochastic variant.
pub(crate) fn sde_noise<T>(noise: Option<&T>) -> Result<&T> {
    noise.ok_or(SchedulerError::NoiseExhausted { requested: 1 })
}
