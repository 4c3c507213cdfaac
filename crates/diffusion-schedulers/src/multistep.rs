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

use crate::common::{self, StepIndex};
use crate::config::{FinalSigmasType, PredictionType, TimestepSpacing, invalid};
use crate::error::{Result, SchedulerError};
use crate::fused::{Arith, Kernel};
use crate::scheduler::check_batch_timesteps;
use crate::tensor::SchedulerTensor;

/// The integer inference timesteps of the multistep solvers (`last_timestep` is
/// the training length, or less where `lambda_min_clipped` cuts the schedule).
pub(crate) fn spaced_timesteps(
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

/// How `(sample - c * model_output) / d` is evaluated in [`Prediction`]'s
/// kinds of prediction.
///
/// For an `f32` tensor such as `CpuTensor` both forms round identically; a
/// backend that accumulates [`SchedulerTensor::linear_combination`] in a wider
/// type does not. Each scheduler keeps the form it was validated with, so no
/// backend sees its numbers change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Difference {
    /// `sub(sample, &model_output.scale(c))`: torch's two roundings, spelled out.
    ScaledFirst,
    /// `linear_combination([(1, sample), (-c, model_output)])`: one expression.
    OneExpression,
}

impl Difference {
    #[inline(always)]
    fn apply<A: Arith>(self, a: &mut A, sample: A::V, c: f64, model_output: A::V) -> A::V {
        match self {
            Difference::ScaledFirst => {
                let scaled = a.scale(model_output, c);
                a.linear([(1.0, sample), (-1.0, scaled)])
            }
            Difference::OneExpression => a.linear([(1.0, sample), (-c, model_output)]),
        }
    }
}

/// diffusers' `convert_model_output` before any thresholding, shared by
/// DPM-Solver(++), the singlestep solver, DEIS and UniPC: the data prediction
/// `x0` (`data`), or the noise prediction `eps` of the noise-integrating
/// algorithms (`dpmsolver`, UniPC with `predict_x0 = false`). Inputs: model
/// output, sample. Built by [`Prediction::data`] / [`Prediction::noise`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prediction {
    data: bool,
    prediction_type: PredictionType,
    form: Difference,
    /// `(alpha_t, sigma_t)` from [`alpha_sigma`].
    at: (f32, f32),
    /// The coefficient of a flow prediction, as each scheduler has always
    /// computed it.
    flow_sigma: f64,
}

impl Prediction {
    pub(crate) fn data(
        prediction_type: PredictionType,
        form: Difference,
        at: (f32, f32),
        flow_sigma: f64,
    ) -> Self {
        Self {
            data: true,
            prediction_type,
            form,
            at,
            flow_sigma,
        }
    }

    /// `None` for `flow_prediction`, which diffusers cannot convert to noise;
    /// the caller reports that in its own terms.
    pub(crate) fn noise(
        prediction_type: PredictionType,
        form: Difference,
        at: (f32, f32),
    ) -> Option<Self> {
        (prediction_type != PredictionType::FlowPrediction).then_some(Self {
            data: false,
            prediction_type,
            form,
            at,
            flow_sigma: 0.0,
        })
    }

    #[inline(always)]
    pub(crate) fn apply<A: Arith>(&self, a: &mut A, model_output: A::V, sample: A::V) -> A::V {
        let (al, s) = (self.at.0 as f64, self.at.1 as f64);
        let (m, x) = (model_output, sample);
        match (self.data, self.prediction_type) {
            // `(sample - sigma_t * model_output) / alpha_t`, in torch's order:
            // the difference cancels heavily at high noise.
            (true, PredictionType::Epsilon) => {
                let d = self.form.apply(a, x, s, m);
                a.scale(d, 1.0 / al)
            }
            (true, PredictionType::Sample) => m,
            (true, PredictionType::VPrediction) => a.linear([(al, x), (-s, m)]),
            (true, PredictionType::FlowPrediction) => a.linear([(1.0, x), (-self.flow_sigma, m)]),
            (false, PredictionType::Epsilon) => m,
            (false, PredictionType::Sample) => {
                let d = self.form.apply(a, x, al, m);
                a.scale(d, 1.0 / s)
            }
            (false, PredictionType::VPrediction) => a.linear([(al, m), (s, x)]),
            // Refused by `Prediction::noise`.
            (false, PredictionType::FlowPrediction) => m,
        }
    }

    /// For a step's kernel: this prediction to compute in the step's pass, or,
    /// when `threshold` is given (a per-item quantile of the whole `x0`,
    /// which no element-wise pass can take), the thresholded tensor computed
    /// here by a pass of its own.
    pub(crate) fn fused_or_thresholded<T: SchedulerTensor>(
        self,
        model_output: &T,
        sample: &T,
        threshold: Option<impl FnOnce(&T) -> T>,
    ) -> Result<(Option<Prediction>, Option<T>)> {
        match threshold {
            None => Ok((Some(self), None)),
            Some(threshold) => Ok((None, Some(threshold(&self.run(model_output, sample)?)))),
        }
    }

    /// This prediction of `model_output` and `sample` as a pass of its own.
    pub(crate) fn run<T: SchedulerTensor>(&self, model_output: &T, sample: &T) -> Result<T> {
        let [value] = common::run_step(self, &[model_output, sample], [true])?;
        common::required(value)
    }
}

impl Kernel<1> for Prediction {
    #[inline(always)]
    fn apply<A: Arith>(&self, a: &mut A) -> [A::V; 1] {
        let (m, x) = (a.input(0), a.input(1));
        [Prediction::apply(self, a, m, x)]
    }
}
