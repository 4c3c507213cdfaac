//! `HeunDiscreteScheduler`: Heun's second-order method over the discrete sigmas of
//! a beta schedule (Karras et al. 2022, Algorithm 1 with `gamma = 0`).
//!
//! Every inference step but the last takes two model evaluations: the schedule is
//! `[t0, t1, t1, t2, t2, ...]`. The first evaluation of a pair takes an Euler step
//! and remembers its derivative, `dt` and the sample it started from; the second
//! averages both derivatives and redoes the step from the remembered sample. The
//! final step (to sigma 0) is a plain Euler step.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex};
use crate::config::validate_betas_without_sigmoid_or_flow;
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec};
use crate::sigmas::{
    SigmaSpacing, SigmaTable, check_step_tensors, fractional_timesteps, inference_sigmas,
    init_noise_sigma_f32, scale_model_input_f32, sigma_add_noise, sigma_pred_original_sample,
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

/// `betas_for_alpha_bar` with `alpha_bar(t) = exp(-12 t)`, as `f32`.
fn exp_betas(n: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| (t * -12.0).exp();
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            common::f32r((1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999))
        })
        .collect()
}

/// The training `alphas_cumprod`, with the betas built exactly as diffusers'
/// `float32` torch code builds them.
fn heun_alphas_cumprod(c: &HeunDiscreteConfig) -> Vec<f64> {
    let (n, trained_betas) = (c.num_train_timesteps, c.trained_betas.as_deref());
    let betas = match (trained_betas, c.beta_schedule) {
        (None, HeunBetaSchedule::Exp) => exp_betas(n),
        (_, schedule) => {
            let schedule = match schedule {
                HeunBetaSchedule::Linear => BetaSchedule::Linear,
                HeunBetaSchedule::ScaledLinear => BetaSchedule::ScaledLinear,
                // `exp` with trained betas: the schedule is not used.
                HeunBetaSchedule::SquaredcosCapV2 | HeunBetaSchedule::Exp => {
                    BetaSchedule::SquaredcosCapV2
                }
            };
            common::make_betas(n, c.beta_start, c.beta_end, schedule, trained_betas)
        }
    };
    common::cumprod_alphas(&betas)
}

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
        validate_betas_without_sigmoid_or_flow(
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
        let table = SigmaTable::new(&heun_alphas_cumprod(&config));
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
        let ts = fractional_timesteps(
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
                let ts = fractional_timesteps(
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
        init_noise_sigma_f32(&self.sigmas, self.config.timestep_spacing)
    }

    fn scale_model_input(&mut self, sample: &T, t: f64) -> Result<T> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("scale_model_input"));
        }
        let i = self.index.current(t, &self.timesteps)?;
        let sigma = *self.sigmas.get(i).ok_or(SchedulerError::PastLastStep(i))?;
        Ok(scale_model_input_f32(sample, sigma))
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
        let first_order = self.first_half.is_none();
        if i >= self.timesteps.len() || (!first_order && i == 0) {
            return Err(SchedulerError::PastLastStep(i));
        }
        let (sigma, sigma_next) = if first_order {
            (self.sigmas[i], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas[i])
        };
        let stored = self.first_half.iter();
        check_step_tensors(
            model_output,
            sample,
            stored.flat_map(|h| [&h.derivative, &h.sample]),
        )?;

        // 1. x0, at sigma in the first half and at sigma_next in the second.
        let sigma_input = if first_order { sigma } else { sigma_next };
        let mut pred_original_sample = sigma_pred_original_sample(
            self.config.prediction_type,
            model_output,
            sample,
            sigma_input,
        );
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            pred_original_sample = pred_original_sample.clamp(-r, r);
        }
        // 2. The ODE derivative at sigma_input; the second half averages it with
        // the first half's and steps again from the first half's sample.
        let derivative = T::linear_combination(&[(1.0, sample), (-1.0, &pred_original_sample)])
            .scale(1.0 / sigma_input);
        let prev_sample = match self.first_half.take() {
            None => {
                let dt = (sigma_next as f32 - sigma as f32) as f64;
                let prev_sample = T::linear_combination(&[(1.0, sample), (dt, &derivative)]);
                self.first_half = Some(FirstHalf {
                    derivative,
                    dt,
                    sample: sample.clone(),
                });
                prev_sample
            }
            Some(half) => {
                let derivative =
                    T::linear_combination(&[(0.5, &half.derivative), (0.5, &derivative)]);
                T::linear_combination(&[(1.0, &half.sample), (half.dt, &derivative)])
            }
        };

        self.index.advance_from(i);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: options
                .wants_pred_original_sample()
                .then_some(pred_original_sample),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{abs_sum_mean, dummy_sample_deter, scaled_loop};
    use crate::{CpuTensor, NoNoise};

    fn heun(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    fn published(extra: &[(&str, Value)]) -> (f64, f64) {
        let mut config = serde_json::json!({"num_train_timesteps": 1100, "beta_start": 0.0001,
            "beta_end": 0.02, "beta_schedule": "linear"});
        for (k, v) in extra {
            config[*k] = v.clone();
        }
        let mut s = heun(config);
        s.set_timesteps(10).unwrap();
        let start = dummy_sample_deter().scale(s.init_noise_sigma());
        let ts = s.timesteps().to_vec();
        abs_sum_mean(&scaled_loop(s.as_mut(), start, &ts))
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
