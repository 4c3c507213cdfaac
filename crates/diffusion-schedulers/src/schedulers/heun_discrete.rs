//! `HeunDiscreteScheduler`: Heun's second-order method over the discrete sigmas of
//! a beta schedule (Karras et al. 2022, Algorithm 1 with `gamma = 0`).
//!
//! Every inference step but the last takes two model evaluations: the schedule is
//! `[t0, t1, t1, t2, t2, ...]`. The first evaluation of a pair takes an Euler step
//! and remembers its derivative, `dt` and the sample it started from; the second
//! averages both derivatives and redoes the step from the remembered sample. The
//! final step (to sigma 0) is a plain Euler step.
//!
//! This file also holds the sigma-table helpers shared with the two KDPM2
//! schedulers (`k_dpm_2_discrete`, `k_dpm_2_ancestral_discrete`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex};
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid};
use crate::error::{Result, SchedulerError};
use crate::fused::{Arith, Kernel};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec};
use crate::sigmas::{
    SigmaSpacing, interp_sigmas, sigma_add_noise, spaced_timesteps, validate_sigma_betas,
};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "HeunDiscreteScheduler";

/// The beta schedules Heun accepts: diffusers' three shared ones plus `"exp"`
/// (`betas_for_alpha_bar` with `alpha_bar(t) = exp(-12 t)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeunBetaSchedule {
    Linear,
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
    Exp,
}

/// diffusers' `HeunDiscreteScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeunDiscreteConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: HeunBetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Default for HeunDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: HeunBetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Sigma-table helpers shared by Heun, KDPM2 and KDPM2 ancestral.
// ---------------------------------------------------------------------------

/// `betas_for_alpha_bar` with `alpha_bar(t) = exp(-12 t)`, as `f32`.
pub(crate) fn exp_betas(n: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| (t * -12.0).exp();
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            common::f32r((1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999))
        })
        .collect()
}

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
    pub(crate) fn sigma_to_t_f32(&self, sigma: f32) -> f32 {
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
/// `_sigma_to_t` (rounded when `round_timesteps`, as KDPM2 does for Karras).
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

/// `x0` from a model output at noise level `sigma` (epsilon or v-prediction of a
/// variance-exploding model; `sample` returns the output itself).
#[inline(always)]
pub(crate) fn sigma_prediction<A: Arith>(
    a: &mut A,
    prediction_type: PredictionType,
    model_output: A::V,
    sample: A::V,
    sigma: f64,
) -> A::V {
    match prediction_type {
        PredictionType::Epsilon => a.linear([(1.0, sample), (-sigma, model_output)]),
        PredictionType::VPrediction => {
            let s2 = common::f32r(common::f32r(sigma * sigma) + 1.0);
            let c_out = common::f32r(-sigma / common::f32r(s2.sqrt()));
            a.linear([(c_out, model_output), (1.0 / s2, sample)])
        }
        _ => model_output,
    }
}

/// `(sample - x0) / sigma`, with the difference rounded first as in torch.
#[inline(always)]
pub(crate) fn ode_derivative<A: Arith>(a: &mut A, sample: A::V, x0: A::V, sigma: f64) -> A::V {
    let difference = a.linear([(1.0, sample), (-1.0, x0)]);
    a.scale(difference, 1.0 / sigma)
}

/// The `x0` of a two-evaluation step (Heun, KDPM2) at noise level `sigma`,
/// clamped to `[-clip, clip]` when `clip` is set (Heun's `clip_sample`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SigmaX0 {
    pub prediction_type: PredictionType,
    pub sigma: f64,
    pub clip: Option<f64>,
}

impl SigmaX0 {
    #[inline(always)]
    fn apply<A: Arith>(&self, a: &mut A) -> [A::V; 3] {
        let (m, s) = (a.input(0), a.input(1));
        let x0 = sigma_prediction(a, self.prediction_type, m, s, self.sigma);
        let x0 = match self.clip {
            Some(r) => a.clamp(x0, -r, r),
            None => x0,
        };
        [m, s, x0]
    }
}

/// The first half of a two-evaluation step (Heun, KDPM2): an Euler step of
/// `dt` with the derivative at `sigma`. Inputs: model output, sample.
/// Outputs: `[prev, derivative, sample, x0]` (the second half needs the
/// derivative or the sample).
pub(crate) struct FirstHalfStep {
    pub x0: SigmaX0,
    pub sigma: f64,
    pub dt: f64,
}

impl Kernel<4> for FirstHalfStep {
    #[inline(always)]
    fn apply<A: Arith>(&self, a: &mut A) -> [A::V; 4] {
        let [_, s, x0] = self.x0.apply(a);
        let derivative = ode_derivative(a, s, x0, self.sigma);
        let prev = a.linear([(1.0, s), (self.dt, derivative)]);
        [prev, derivative, s, x0]
    }
}

/// The second half: from the first half's sample `start`, a step of `dt`
/// along the derivative at `sigma` (Heun: averaged with the first half's
/// derivative `d1`), then `noise` times fresh noise (KDPM2 ancestral).
/// Inputs: model output, sample, then `d1` (Heun), `start`, the noise.
/// Outputs: `[prev, x0]`.
pub(crate) struct SecondHalfStep {
    pub x0: SigmaX0,
    pub sigma: f64,
    pub dt: f64,
    pub average: bool,
    pub noise: Option<f64>,
}

impl Kernel<2> for SecondHalfStep {
    #[inline(always)]
    fn apply<A: Arith>(&self, a: &mut A) -> [A::V; 2] {
        let [_, s, x0] = self.x0.apply(a);
        // `d1` (when averaging) and `start`, then the noise.
        let (d1, start) = if self.average {
            (Some(a.input(2)), a.input(3))
        } else {
            (None, a.input(2))
        };
        let d2 = ode_derivative(a, s, x0, self.sigma);
        let derivative = match d1 {
            Some(d1) => a.linear([(0.5, d1), (0.5, d2)]),
            None => d2,
        };
        let mut prev = a.linear([(1.0, start), (self.dt, derivative)]);
        if let Some(sigma_up) = self.noise {
            let z = a.input(if self.average { 4 } else { 3 });
            prev = a.linear([(1.0, prev), (sigma_up, z)]);
        }
        [prev, x0]
    }
}

/// `init_noise_sigma` of the Karras family: the largest sigma, or
/// `sqrt(max^2 + 1)` (in `f32`) for `leading` spacing.
pub(crate) fn karras_init_noise_sigma(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s)) as f32;
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
    }
}

/// `sample / sqrt(sigma^2 + 1)` with the denominator in `f32`.
pub(crate) fn karras_scale_input<T: SchedulerTensor>(sample: &T, sigma: f64) -> T {
    let s = sigma as f32;
    let d = (s * s + 1.0).sqrt();
    sample.scale(1.0 / d as f64)
}

/// The training `alphas_cumprod` of the Karras-family configs, with the betas
/// built exactly as diffusers' `float32` torch code builds them.
pub(crate) fn karras_alphas_cumprod(
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    schedule: HeunBetaSchedule,
    trained_betas: Option<&[f64]>,
) -> Vec<f64> {
    let n = num_train_timesteps;
    let betas = match (trained_betas, schedule) {
        (None, HeunBetaSchedule::Exp) => exp_betas(n),
        _ => {
            let schedule = match schedule {
                HeunBetaSchedule::Linear => BetaSchedule::Linear,
                HeunBetaSchedule::ScaledLinear => BetaSchedule::ScaledLinear,
                // `exp` with trained betas: the schedule is not used.
                HeunBetaSchedule::SquaredcosCapV2 | HeunBetaSchedule::Exp => {
                    BetaSchedule::SquaredcosCapV2
                }
            };
            common::make_betas(n, beta_start, beta_end, schedule, trained_betas)
        }
    };
    common::cumprod_alphas(&betas)
}

// ---------------------------------------------------------------------------
// The Heun scheduler.
// ---------------------------------------------------------------------------

/// State kept between the two halves of a Heun step.
#[derive(Debug, Clone)]
struct FirstHalf<T> {
    derivative: T,
    dt: f64,
    sample: T,
}

/// Heun's method over discrete sigmas.
#[derive(Debug, Clone)]
pub struct HeunDiscreteScheduler<T> {
    config: HeunDiscreteConfig,
    kind: SigmaSpacing,
    table: SigmaTable,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
    first_half: Option<FirstHalf<T>>,
}

impl<T: SchedulerTensor> HeunDiscreteScheduler<T> {
    pub fn new(config: HeunDiscreteConfig) -> Result<Self> {
        let kind = SigmaSpacing::from_flags(
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        let shared_schedule = match config.beta_schedule {
            HeunBetaSchedule::Linear => BetaSchedule::Linear,
            HeunBetaSchedule::ScaledLinear => BetaSchedule::ScaledLinear,
            _ => BetaSchedule::SquaredcosCapV2,
        };
        validate_sigma_betas(
            CLASS_NAME,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            shared_schedule,
            config.trained_betas.as_deref(),
            config.prediction_type,
        )?;
        if config.clip_sample
            && !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0)
        {
            return Err(invalid(
                "clip_sample_range",
                config.clip_sample_range,
                "must be a positive number",
            ));
        }
        let ac = karras_alphas_cumprod(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
        );
        let table = SigmaTable::new(&ac);
        let mut s = Self {
            config,
            kind,
            table,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            num_inference_steps: None,
            index: StepIndex::default(),
            first_half: None,
        };
        // diffusers lays out the full training schedule at construction.
        let train = s.config.num_train_timesteps;
        let ts = spaced_timesteps(
            s.config.timestep_spacing,
            train,
            train,
            s.config.steps_offset,
        );
        s.layout(ts, train);
        Ok(s)
    }

    pub fn config(&self) -> &HeunDiscreteConfig {
        &self.config
    }

    /// Whether the next `step` is the first half of a Heun pair (or a lone Euler step).
    pub fn state_in_first_order(&self) -> bool {
        self.first_half.is_none()
    }

    fn layout(&mut self, timesteps: Vec<f64>, num_inference_steps: usize) {
        let (ts, sigmas) = inference_sigmas(
            &self.table,
            timesteps,
            num_inference_steps,
            self.kind,
            false,
        );
        let mut s32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        s32.push(0.0);
        // [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0]
        let mut expanded = Vec::with_capacity(2 * s32.len());
        expanded.push(s32[0]);
        for &v in &s32[1..s32.len() - 1] {
            expanded.push(v);
            expanded.push(v);
        }
        expanded.push(s32[s32.len() - 1]);
        self.sigmas = expanded.into_iter().map(f64::from).collect();
        let mut timesteps = Vec::with_capacity(2 * ts.len());
        timesteps.push(common::f32r(ts[0]));
        for &t in &ts[1..] {
            timesteps.push(common::f32r(t));
            timesteps.push(common::f32r(t));
        }
        self.timesteps = timesteps;
        self.index.reset();
        self.first_half = None;
    }
}

pub(crate) fn build<T: SchedulerTensor + Send + 'static>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, HeunDiscreteConfig, HeunDiscreteScheduler<T>>(
        json,
        HeunDiscreteScheduler::new,
    )
}

impl<T: SchedulerTensor + Send> Scheduler<T> for HeunDiscreteScheduler<T> {
    fn class_name(&self) -> &'static str {
        CLASS_NAME
    }

    fn config(&self) -> Value {
        crate::config_json(CLASS_NAME, &self.config)
    }

    fn order(&self) -> usize {
        2
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }

    fn set_timesteps_with(&mut self, spec: &TimestepSpec) -> Result<()> {
        if spec.sigmas.is_some() {
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: "custom sigmas".into(),
            });
        }
        let train = self.config.num_train_timesteps;
        let (timesteps, n) = match (&spec.timesteps, spec.num_inference_steps) {
            (Some(_), Some(_)) => {
                return Err(SchedulerError::InvalidArgument {
                    field: "timesteps",
                    value: "custom timesteps and num_inference_steps".into(),
                    reason: "pass only one of them".into(),
                });
            }
            (None, None) => {
                return Err(SchedulerError::InvalidArgument {
                    field: "num_inference_steps",
                    value: "None".into(),
                    reason: "pass num_inference_steps or custom timesteps".into(),
                });
            }
            (Some(custom), None) => {
                if self.kind != SigmaSpacing::Interpolated {
                    return Err(SchedulerError::InvalidArgument {
                        field: "timesteps",
                        value: format!("{custom:?}"),
                        reason: "custom timesteps cannot be combined with use_karras_sigmas, \
                                 use_exponential_sigmas or use_beta_sigmas"
                            .into(),
                    });
                }
                if custom.is_empty() {
                    return Err(SchedulerError::InvalidArgument {
                        field: "timesteps",
                        value: "[]".into(),
                        reason: "must not be empty".into(),
                    });
                }
                if let Some(bad) = custom.iter().find(|t| !t.is_finite()) {
                    return Err(SchedulerError::InvalidArgument {
                        field: "timesteps",
                        value: bad.to_string(),
                        reason: "every timestep must be finite".into(),
                    });
                }
                (
                    custom.iter().map(|&t| common::f32r(t)).collect(),
                    custom.len(),
                )
            }
            (None, Some(n)) => {
                common::check_num_steps(n, train)?;
                let ts = spaced_timesteps(
                    self.config.timestep_spacing,
                    n,
                    train,
                    self.config.steps_offset,
                );
                (ts, n)
            }
        };
        self.layout(timesteps, n);
        self.num_inference_steps = Some(n);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        karras_init_noise_sigma(&self.sigmas, self.config.timestep_spacing)
    }

    fn scale_model_input(&mut self, sample: &T, t: f64) -> Result<T> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("scale_model_input"));
        }
        let i = self.index.current(t, &self.timesteps)?;
        let sigma = *self.sigmas.get(i).ok_or(SchedulerError::PastLastStep(i))?;
        Ok(karras_scale_input(sample, sigma))
    }

    fn step(
        &mut self,
        model_output: &T,
        t: f64,
        sample: &T,
        options: &StepOptions,
        _noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("step"));
        }
        common::check_step_shapes(model_output, sample)?;
        let i = self.index.peek(t, &self.timesteps)?;
        if i >= self.timesteps.len() || (self.first_half.is_some() && i == 0) {
            return Err(SchedulerError::PastLastStep(i));
        }
        let first = self.first_half.is_none();
        let (sigma, sigma_next) = if first {
            (self.sigmas[i], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas[i])
        };
        let sigma_input = if first { sigma } else { sigma_next };
        let x0 = SigmaX0 {
            prediction_type: self.config.prediction_type,
            sigma: sigma_input,
            clip: self
                .config
                .clip_sample
                .then_some(self.config.clip_sample_range),
        };
        let want_x0 = options.wants_pred_original_sample();
        // The state changes only once the pass has succeeded.
        let (prev, x0) = match &self.first_half {
            None => {
                let dt = (sigma_next as f32 - sigma as f32) as f64;
                let kernel = FirstHalfStep { x0, sigma, dt };
                let [prev, derivative, sample, x0] = common::run_step(
                    &kernel,
                    &[model_output, sample],
                    [true, true, true, want_x0],
                )?;
                let prev = common::required(prev)?;
                self.first_half = Some(FirstHalf {
                    derivative: common::required(derivative)?,
                    dt,
                    sample: common::required(sample)?,
                });
                (prev, x0)
            }
            Some(half) => {
                let kernel = SecondHalfStep {
                    x0,
                    sigma: sigma_next,
                    dt: half.dt,
                    average: true,
                    noise: None,
                };
                let inputs = [model_output, sample, &half.derivative, &half.sample];
                let [prev, x0] = common::run_step(&kernel, &inputs, [true, want_x0])?;
                let prev = common::required(prev)?;
                self.first_half = None;
                (prev, x0)
            }
        };
        self.index.advance_from(i);
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }

    fn add_noise(&self, original: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        sigma_add_noise(
            &self.index,
            &self.timesteps,
            &self.sigmas,
            original,
            noise,
            timesteps,
            SchedulerError::PastLastStep,
        )
    }

    fn set_begin_index(&mut self, begin: usize) {
        self.index.begin_index = Some(begin);
    }

    fn begin_index(&self) -> Option<usize> {
        self.index.begin_index
    }
}

/// Test helpers shared by the Karras-family test modules: diffusers' own
/// scheduler-test loop, which (unlike the parity trace loop) feeds the *scaled*
/// sample back into `step`.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::testing::dummy_model;
    use crate::{CpuTensor, NoNoise, Scheduler, StepOptions};

    /// `sample = scale_model_input(sample, t); sample = step(model(sample, t), t, sample)`.
    pub(crate) fn diffusers_test_loop(
        s: &mut dyn Scheduler<CpuTensor>,
        start: CpuTensor,
        timesteps: &[f64],
    ) -> CpuTensor {
        let mut x = start;
        for &t in timesteps {
            x = s.scale_model_input(&x, t).unwrap();
            let eps = dummy_model(&x, t);
            x = s
                .step(&eps, t, &x, &StepOptions::default(), &mut NoNoise)
                .unwrap()
                .prev_sample;
        }
        x
    }

    /// diffusers' `dummy_noise_deter`: the reversed ramp of `dummy_sample_deter`.
    pub(crate) fn dummy_noise_deter() -> CpuTensor {
        let (b, c, h, w) = (4usize, 3usize, 8usize, 8usize);
        let n = b * c * h * w;
        let mut data = vec![0f32; n];
        for bi in 0..b {
            for ci in 0..c {
                for hi in 0..h {
                    for wi in 0..w {
                        let src = ((ci * h + hi) * w + wi) * b + bi;
                        data[((bi * c + ci) * h + hi) * w + wi] = (n - 1 - src) as f32 / n as f32;
                    }
                }
            }
        }
        CpuTensor::new(data, vec![b, c, h, w]).unwrap()
    }

    /// The config of diffusers' Heun/KDPM2 tests.
    pub(crate) fn published_config() -> serde_json::Value {
        serde_json::json!({"num_train_timesteps": 1100, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "linear"})
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{diffusers_test_loop, published_config};
    use super::*;
    use crate::testing::{abs_sum_mean, dummy_sample_deter};
    use crate::{CpuTensor, NoNoise};

    fn heun(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    fn published(extra: &[(&str, Value)]) -> (f64, f64) {
        let mut config = published_config();
        for (k, v) in extra {
            config[*k] = v.clone();
        }
        let mut s = heun(config);
        s.set_timesteps(10).unwrap();
        let start = dummy_sample_deter().scale(s.init_noise_sigma());
        let ts = s.timesteps().to_vec();
        abs_sum_mean(&diffusers_test_loop(s.as_mut(), start, &ts))
    }

    /// diffusers' `HeunDiscreteSchedulerTest.test_full_loop_*` published values.
    #[test]
    fn published_full_loops() {
        let (sum, mean) = published(&[]);
        assert!(
            (sum - 0.1233).abs() < 1e-2 && (mean - 0.0002).abs() < 1e-3,
            "{sum} {mean}"
        );
        let (sum, mean) = published(&[("prediction_type", "v_prediction".into())]);
        assert!(
            (sum - 4.6934e-07).abs() < 1e-2 && (mean - 6.1112e-10).abs() < 1e-3,
            "{sum} {mean}"
        );
        let (sum, mean) = published(&[("use_karras_sigmas", true.into())]);
        assert!(
            (sum - 0.00015).abs() < 1e-2 && (mean - 1.9869554535034695e-07).abs() < 1e-2,
            "{sum} {mean}"
        );
    }

    #[test]
    fn schedule_is_interleaved() {
        let mut s = heun(serde_json::json!({}));
        s.set_timesteps(4).unwrap();
        assert_eq!(
            s.timesteps(),
            &[999.0, 666.0, 666.0, 333.0, 333.0, 0.0, 0.0]
        );
        let sig = s.sigmas().unwrap();
        assert_eq!(sig.len(), 8);
        assert_eq!(sig[1], sig[2]);
        assert_eq!(sig[7], 0.0);
        assert_eq!(s.order(), 2);
        assert_eq!(s.init_noise_sigma(), sig[0]);
    }

    #[test]
    fn keeps_state_between_halves() {
        let mut s = HeunDiscreteScheduler::<CpuTensor>::new(HeunDiscreteConfig::default()).unwrap();
        Scheduler::<CpuTensor>::set_timesteps(&mut s, 3).unwrap();
        let x = dummy_sample_deter();
        let ts = Scheduler::<CpuTensor>::timesteps(&s).to_vec();
        assert!(s.state_in_first_order());
        let out = s
            .step(&x, ts[0], &x, &StepOptions::default(), &mut NoNoise)
            .unwrap();
        assert!(!s.state_in_first_order());
        assert!(out.pred_original_sample.is_some());
        s.step(
            &x,
            ts[1],
            &out.prev_sample,
            &StepOptions::default(),
            &mut NoNoise,
        )
        .unwrap();
        assert!(s.state_in_first_order());
        // set_timesteps drops a half-finished step.
        s.step(&x, ts[2], &x, &StepOptions::default(), &mut NoNoise)
            .unwrap();
        Scheduler::<CpuTensor>::set_timesteps(&mut s, 3).unwrap();
        assert!(s.state_in_first_order());
    }

    #[test]
    fn custom_timesteps() {
        let mut s = heun(serde_json::json!({}));
        let spec = TimestepSpec {
            timesteps: Some(vec![900.0, 500.5, 10.0]),
            ..TimestepSpec::default()
        };
        s.set_timesteps_with(&spec).unwrap();
        assert_eq!(s.timesteps(), &[900.0, 500.5, 500.5, 10.0, 10.0]);
        let both = TimestepSpec {
            num_inference_steps: Some(3),
            ..spec.clone()
        };
        assert!(matches!(
            s.set_timesteps_with(&both),
            Err(SchedulerError::InvalidArgument { .. })
        ));
        let mut k = heun(serde_json::json!({"use_karras_sigmas": true}));
        assert!(matches!(
            k.set_timesteps_with(&spec),
            Err(SchedulerError::InvalidArgument {
                field: "timesteps",
                ..
            })
        ));
        let sigmas = TimestepSpec {
            sigmas: Some(vec![1.0, 0.5]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&sigmas),
            Err(SchedulerError::Unsupported { .. })
        ));
    }

    #[test]
    fn rejects_bad_config() {
        let field_of = |json: Value| match crate::from_config_as::<CpuTensor>(CLASS_NAME, &json) {
            Err(SchedulerError::InvalidValue { field, .. }) => field,
            Err(SchedulerError::InvalidConfig { field, .. }) => field,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted {json}"),
        };
        assert_eq!(
            field_of(serde_json::json!({"use_karras_sigmas": true, "use_beta_sigmas": true})),
            "use_karras_sigmas"
        );
        assert_eq!(
            field_of(serde_json::json!({"beta_schedule": "sigmoid"})),
            "beta_schedule"
        );
        assert_eq!(
            field_of(serde_json::json!({"prediction_type": "flow_prediction"})),
            "prediction_type"
        );
        assert_eq!(
            field_of(serde_json::json!({"trained_betas": [0.1, 0.2]})),
            "trained_betas"
        );
        assert_eq!(
            field_of(serde_json::json!({"timestep_spacing": "cubic"})),
            "timestep_spacing"
        );
        assert_eq!(
            field_of(serde_json::json!({"clip_sample": true, "clip_sample_range": -1.0})),
            "clip_sample_range"
        );
        // "exp" is a Heun-only beta schedule.
        let s = heun(serde_json::json!({"beta_schedule": "exp"}));
        assert_eq!(s.config()["beta_schedule"], "exp");
    }

    #[test]
    fn rejects_bad_calls() {
        let mut s = heun(serde_json::json!({}));
        let x = CpuTensor::zeros(vec![1, 2]);
        let err = s.step(&x, 999.0, &x, &StepOptions::default(), &mut NoNoise);
        assert!(matches!(err, Err(SchedulerError::NotInitialized("step"))));
        assert!(matches!(
            s.scale_model_input(&x, 999.0),
            Err(SchedulerError::NotInitialized(_))
        ));
        assert!(s.set_timesteps(0).is_err());
        assert!(s.set_timesteps(1001).is_err());
        s.set_timesteps(2).unwrap();
        let y = CpuTensor::zeros(vec![1, 3]);
        assert!(matches!(
            s.step(&y, 999.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        let nan = CpuTensor::new(vec![f32::NAN, 0.0], vec![1, 2]).unwrap();
        assert!(matches!(
            s.step(&nan, 999.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NonFinite("model_output"))
        ));
        assert!(matches!(
            s.step(&x, 123.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
        for t in s.timesteps().to_vec() {
            s.step(&x, t, &x, &StepOptions::default(), &mut NoNoise)
                .unwrap();
        }
        assert!(matches!(
            s.step(&x, 0.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::PastLastStep(_))
        ));
    }

    #[test]
    fn add_noise_uses_sigmas() {
        let mut s = heun(serde_json::json!({}));
        s.set_timesteps(4).unwrap();
        let x = CpuTensor::new(vec![1.0, 1.0], vec![2, 1]).unwrap();
        let z = CpuTensor::new(vec![1.0, -1.0], vec![2, 1]).unwrap();
        let sig = s.sigmas().unwrap().to_vec();
        let y = s.add_noise(&x, &z, &[999.0, 666.0]).unwrap();
        // 666 occurs twice: diffusers takes the second occurrence (same sigma).
        assert!((y.data()[0] as f64 - (1.0 + sig[0])).abs() < 1e-4);
        assert!((y.data()[1] as f64 - (1.0 - sig[2])).abs() < 1e-4);
        s.set_begin_index(3);
        let y = s.add_noise(&x, &z, &[1.0]).unwrap();
        assert!((y.data()[0] as f64 - (1.0 + sig[3])).abs() < 1e-4);
        assert!(s.add_noise(&x, &z, &[1.0, 2.0, 3.0]).is_err());
    }

    #[test]
    fn torch_linspace_is_bit_exact() {
        // torch.linspace(0.0001, 0.02, 1000, dtype=torch.float32) where it differs from the
        // f32-rounded float64 linspace.
        let v = common::torch_linspace_f32(0.0001, 0.02, 1000);
        for (i, torch) in [
            (2, 0.0001398398308083415),
            (6, 0.0002195195120293647),
            (11, 0.00031911913538351655),
            (993, 0.01988047920167446),
            (995, 0.019920319318771362),
        ] {
            assert_eq!(v[i], torch, "index {i}");
        }
        assert_eq!(v[0], 0.0001f32 as f64);
        assert_eq!(v[999], 0.02f32 as f64);
        assert_eq!(v.len(), 1000);
        assert_eq!(common::torch_linspace_f32(0.5, 0.5, 1), vec![0.5]);
    }
}
