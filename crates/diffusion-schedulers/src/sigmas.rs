//! The shared math of the k-diffusion ("sigma") schedulers: Euler, Euler
//! ancestral, LMS, EDM Euler, Heun, KDPM2, KDPM2 ancestral and flow-match
//! Euler. These schedulers index a `sigmas` tensor instead of `alphas_cumprod`,
//! and diffusers builds that tensor, finds the step in it and predicts `x0`
//! from it the same way in each of them, so the pieces live here once. Where
//! diffusers' classes differ in precision, the helper's name says which
//! (`_f64`/`_f32`, `numpy`/`torch`).

use crate::common::{self, StepIndex, f32r};
use crate::config::validate_betas_without_sigmoid_or_flow;
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{StepOptions, check_batch_timesteps};
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
pub(crate) fn fractional_timesteps(
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

// ---------------------------------------------------------------------------
// Stepping: where a step is, its inputs, its `x0`.
// ---------------------------------------------------------------------------

/// The index into the sigmas of a step at timestep `t`, with the checks that the
/// step and its successor exist.
pub(crate) fn step_position(
    index: &StepIndex,
    t: f64,
    schedule: &[f64],
    sigmas: &[f64],
) -> Result<usize> {
    let i = index.peek(t, schedule)?;
    if i + 1 >= sigmas.len() {
        return Err(SchedulerError::PastLastStep(i));
    }
    Ok(i)
}

/// The sigma at the current (or first) step, for `scale_model_input`.
pub(crate) fn input_sigma(
    index: &mut StepIndex,
    t: f64,
    schedule: &[f64],
    sigmas: &[f64],
) -> Result<f64> {
    let i = index.current(t, schedule)?;
    sigmas
        .get(i)
        .copied()
        .ok_or(SchedulerError::PastLastStep(i))
}

/// Refuse the tensors of a step before it computes anything: every other
/// input (noise, a stored derivative or sample) shaped like `sample`, then
/// `model_output` and `sample` finite, in that order. The noise and the stored
/// state are taken as they are.
pub(crate) fn check_step_tensors<'a, T: SchedulerTensor + 'a>(
    model_output: &T,
    sample: &T,
    others: impl IntoIterator<Item = &'a T>,
) -> Result<()> {
    common::check_state_shapes(sample, others)?;
    common::check_finite(model_output, sample)
}

/// diffusers' step 1, "compute predicted original sample (x_0) from
/// sigma-scaled predicted noise", of a variance-exploding model at noise level
/// `sigma` (an `f32` value). The v-prediction coefficients are computed in
/// `f32`, as torch does with the `f32` sigma; `sample` prediction returns the
/// model output.
pub(crate) fn sigma_pred_original_sample<T: SchedulerTensor>(
    prediction_type: PredictionType,
    model_output: &T,
    sample: &T,
    sigma: f64,
) -> T {
    match prediction_type {
        PredictionType::Epsilon => T::linear_combination(&[(1.0, sample), (-sigma, model_output)]),
        PredictionType::VPrediction => {
            let s = sigma as f32;
            let s2 = s * s + 1.0;
            let c_out = -s / s2.sqrt();
            T::linear_combination(&[(c_out as f64, model_output), (1.0 / s2 as f64, sample)])
        }
        // `sample`; flow_prediction is refused at construction.
        _ => model_output.clone(),
    }
}

/// The Karras "churn" factor `gamma` of a step at `sigma` (0 outside `[s_tmin, s_tmax]`).
pub(crate) fn churn_gamma(options: &StepOptions, sigma: f64, num_sigmas: usize) -> f64 {
    let s_churn = options.s_churn.unwrap_or(0.0);
    let s_tmin = options.s_tmin.unwrap_or(0.0);
    let s_tmax = options.s_tmax.unwrap_or(f64::INFINITY);
    // torch compares the f32 sigma with the bounds cast to f32.
    let sig = sigma as f32;
    if (s_tmin as f32) <= sig && sig <= (s_tmax as f32) {
        (s_churn / (num_sigmas - 1) as f64).min(2f64.sqrt() - 1.0)
    } else {
        0.0
    }
}

/// The churned sample `sample + noise * s_noise * (sigma_hat^2 - sigma^2) ** 0.5`,
/// the square root in `f32` as torch's.
pub(crate) fn churn_sample<T: SchedulerTensor>(
    sample: &T,
    noise: T,
    sigma: f64,
    sigma_hat: f32,
    options: &StepOptions,
) -> T {
    let s_noise = options.s_noise.unwrap_or(1.0);
    let eps = if s_noise == 1.0 {
        noise
    } else {
        noise.scale(s_noise)
    };
    let sigma = sigma as f32;
    let extra = (sigma_hat * sigma_hat - sigma * sigma).max(0.0).sqrt();
    T::linear_combination(&[(1.0, sample), (extra as f64, &eps)])
}

/// `init_noise_sigma` of Euler, Euler ancestral and LMS: the largest sigma, or
/// `sqrt(max^2 + 1)` evaluated in `f64` for `leading` spacing.
pub(crate) fn init_noise_sigma_f64(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => f32r((max * max + 1.0).sqrt()),
    }
}

/// `init_noise_sigma` of Heun and KDPM2: the largest sigma, or
/// `sqrt(max^2 + 1)` evaluated in `f32` for `leading` spacing.
pub(crate) fn init_noise_sigma_f32(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s)) as f32;
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
    }
}

/// `sample / sqrt(sigma^2 + 1)` with the denominator in `f32` (Heun, KDPM2).
pub(crate) fn scale_model_input_f32<T: SchedulerTensor>(sample: &T, sigma: f64) -> T {
    let s = sigma as f32;
    let d = (s * s + 1.0).sqrt();
    sample.scale(1.0 / d as f64)
}

/// diffusers' `_sigma_to_t` as numpy evaluates it on `float32` arrays (Euler's
/// custom sigmas): the weight in `f32`, the result promoted to `f64` by the
/// integer indices; a NaN sigma is clamped to `1e-10`.
pub(crate) fn sigma_to_t_numpy_f32(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = (sigma as f32).max(1e-10f32).ln();
    let n = log_sigmas.len();
    let count = log_sigmas
        .iter()
        .filter(|&&ls| log_sigma - ls as f32 >= 0.0)
        .count();
    let low_idx = if count == 0 {
        0
    } else {
        (count - 1).min(n - 2)
    };
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx] as f32;
    let high = log_sigmas[high_idx] as f32;
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0f32 - w) as f64 * low_idx as f64 + w as f64 * high_idx as f64
}

// ---------------------------------------------------------------------------
// The two-evaluation schedulers (Heun, KDPM2, KDPM2 ancestral).
// ---------------------------------------------------------------------------

/// The training sigma table `((1 - a) / a) ** 0.5` and its log, evaluated in
/// `f32` exactly as diffusers' `float32` tensors are.
#[derive(Debug, Clone)]
pub(crate) struct SigmaTable {
    pub sigmas: Vec<f64>,
    pub log_sigmas: Vec<f64>,
    log_sigmas_f32: Vec<f32>,
}

impl SigmaTable {
    pub(crate) fn new(alphas_cumprod: &[f64]) -> Self {
        let sigmas = common::sigmas_from_alphas_cumprod(alphas_cumprod);
        let log_sigmas = common::log_table_f32(&sigmas);
        Self {
            log_sigmas_f32: log_sigmas.iter().map(|&l| l as f32).collect(),
            sigmas,
            log_sigmas,
        }
    }

    /// `_sigma_to_t` for an `f64` sigma (diffusers' numpy path).
    pub(crate) fn sigma_to_t(&self, sigma: f64) -> f64 {
        common::sigma_to_t(sigma, &self.log_sigmas)
    }

    /// `_sigma_to_t` for an `f32` torch sigma (the interpolated timesteps of the
    /// KDPM2 schedulers): every operation in `f32`, NaN in -> NaN out.
    pub(crate) fn sigma_to_t_torch_f32(&self, sigma: f32) -> f32 {
        let table = &self.log_sigmas_f32;
        let log_sigma = if sigma.is_nan() {
            f32::NAN
        } else {
            sigma.max(1e-10f32).ln()
        };
        let count = table.iter().filter(|&&ls| log_sigma - ls >= 0.0).count();
        let low_idx = if count == 0 {
            0
        } else {
            (count - 1).min(table.len() - 2)
        };
        let high_idx = low_idx + 1;
        let (low, high) = (table[low_idx], table[high_idx]);
        let w = (low - log_sigma) / (low - high);
        let w = if w.is_nan() { w } else { w.clamp(0.0, 1.0) };
        (1.0 - w) * low_idx as f32 + w * high_idx as f32
    }
}

/// The inference sigmas (without the final 0) for `timesteps`, and the
/// timesteps that go with them: interpolated from the training table, or
/// replaced by a Karras/exponential/beta schedule whose timesteps come from
/// `_sigma_to_t` (rounded when `round_karras_timesteps`, as KDPM2 does).
pub(crate) fn inference_sigmas(
    table: &SigmaTable,
    timesteps: Vec<f64>,
    num_inference_steps: usize,
    kind: SigmaSpacing,
    round_karras_timesteps: bool,
) -> (Vec<f64>, Vec<f64>) {
    let sigmas = interp_sigmas(&timesteps, &table.sigmas);
    let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
    let Some(replaced) = kind.respace(min, max, num_inference_steps) else {
        return (timesteps, sigmas);
    };
    let ts = replaced
        .iter()
        .map(|&s| {
            let t = table.sigma_to_t(s);
            if round_karras_timesteps && kind == SigmaSpacing::Karras {
                common::round_half_even(t)
            } else {
                t
            }
        })
        .collect();
    (ts, replaced)
}

/// `torch.cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])`.
pub(crate) fn interleave_tail_f32(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(2 * x.len());
    out.push(x[0]);
    for &v in &x[1..] {
        out.push(v);
        out.push(v);
    }
    out.push(x[x.len() - 1]);
    out
}

/// The config checks and training sigma table of both KDPM2 variants (which
/// take the same config fields): beta schedule, sigma flags and prediction
/// type (`sample` is not implemented by diffusers' KDPM2 steps).
#[allow(clippy::too_many_arguments)]
pub(crate) fn kdpm2_table(
    class: &'static str,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    beta_schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
    prediction_type: PredictionType,
    (karras, exponential, beta): (bool, bool, bool),
) -> Result<(SigmaSpacing, SigmaTable)> {
    let kind = SigmaSpacing::from_flags(karras, exponential, beta)?;
    validate_betas_without_sigmoid_or_flow(
        class,
        num_train_timesteps,
        beta_start,
        beta_end,
        beta_schedule,
        trained_betas,
        prediction_type,
    )?;
    if prediction_type == PredictionType::Sample {
        return Err(invalid(
            "prediction_type",
            "sample",
            format!("not implemented for {class} (epsilon or v_prediction)"),
        ));
    }
    let alphas_cumprod = common::sigma_alphas_cumprod(
        num_train_timesteps,
        beta_start,
        beta_end,
        beta_schedule,
        trained_betas,
        false,
    );
    Ok((kind, SigmaTable::new(&alphas_cumprod)))
}

/// The base schedule of both KDPM2 variants: the inference timesteps (`f32`
/// values, or `f64` ones for Karras/exponential/beta sigmas as diffusers keeps
/// them) and the `f32` sigmas with the final 0 appended.
pub(crate) fn kdpm2_base(
    table: &SigmaTable,
    kind: SigmaSpacing,
    spacing: TimestepSpacing,
    train: usize,
    n: usize,
    steps_offset: usize,
) -> (Vec<f64>, Vec<f32>) {
    let ts = fractional_timesteps(spacing, n, train, steps_offset);
    let (ts, sigmas) = inference_sigmas(table, ts, n, kind, true);
    let mut s32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
    s32.push(0.0);
    (ts, s32)
}

/// torch's `a.lerp(b, 0.5)` in `f32`: `b - (b - a) * 0.5`.
pub(crate) fn lerp_half(a: f32, b: f32) -> f32 {
    b - (b - a) * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuTensor;

    #[test]
    fn step_tensors_are_checked_shapes_first_then_model_output_then_sample() {
        let t = |v: &[f32]| CpuTensor::new(v.to_vec(), vec![1, v.len()]).unwrap();
        let (good, nan, short) = (t(&[1.0, 2.0]), t(&[f32::NAN, 0.0]), t(&[1.0]));
        assert!(check_step_tensors(&good, &good, [&good]).is_ok());
        assert!(matches!(
            check_step_tensors(&nan, &nan, [&short]),
            Err(SchedulerError::ShapeMismatch {
                what: "step input",
                ..
            })
        ));
        assert!(matches!(
            check_step_tensors(&nan, &nan, []),
            Err(SchedulerError::NonFinite("model_output"))
        ));
        assert!(matches!(
            check_step_tensors(&good, &nan, []),
            Err(SchedulerError::NonFinite("sample"))
        ));
        // Noise and stored state are not checked for finiteness.
        assert!(check_step_tensors(&good, &good, [&nan]).is_ok());
    }

    #[test]
    fn x0_of_each_prediction_type() {
        let m = CpuTensor::new(vec![0.5, -1.0], vec![1, 2]).unwrap();
        let s = CpuTensor::new(vec![2.0, 3.0], vec![1, 2]).unwrap();
        let eps = sigma_pred_original_sample(PredictionType::Epsilon, &m, &s, 2.0);
        assert_eq!(eps.data(), &[1.0, 5.0]);
        // sigma = 0.75: c_out = -0.75 / 1.25, c_skip = 1 / 1.5625.
        let v = sigma_pred_original_sample(PredictionType::VPrediction, &m, &s, 0.75);
        assert_eq!(v.data(), &[-0.3 + 2.0 * 0.64, 0.6 + 3.0 * 0.64]);
        let x0 = sigma_pred_original_sample(PredictionType::Sample, &m, &s, 0.75);
        assert_eq!(x0, m);
    }
}
