//! `EulerDiscreteScheduler`: the Euler sampler of Karras et al. (2022, Algorithm 2)
//! over a k-diffusion sigma schedule derived from the training betas.
//!
//! The sample lives at noise level `sigma` (`x = x0 + sigma * eps`); the model is
//! fed `x / sqrt(sigma^2 + 1)`. Timesteps are fractional training timesteps
//! (or `0.25 * ln(sigma)` for continuous v-prediction models). With `s_churn > 0`
//! noise is re-injected before the step ("churn").

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex, f32r};
use crate::config::validate_betas_without_sigmoid_or_flow;
use crate::config::{BetaSchedule, FinalSigmasType, PredictionType, TimestepSpacing, TimestepType};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec, check_batch_timesteps};
use crate::sigmas::{
    SigmaSpacing, begin_index_beyond, check_step_tensors, churn_gamma, churn_sample,
    fractional_timesteps, init_noise_sigma_f64, input_sigma, interp_sigmas, sigma_add_noise,
    sigma_pred_original_sample, sigma_to_t_numpy_f32, step_position, validate_sigma_bound,
};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "EulerDiscreteScheduler";

/// How the inference sigmas are read off the training sigma table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterpolationType {
    /// Linear interpolation of the table at the (fractional) timesteps.
    Linear,
    /// `n + 1` log-spaced sigmas between the largest and smallest table entry.
    LogLinear,
}

/// diffusers' `EulerDiscreteScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerDiscreteConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub interpolation_type: InterpolationType,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_spacing: TimestepSpacing,
    pub timestep_type: TimestepType,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    pub final_sigmas_type: FinalSigmasType,
}

impl Default for EulerDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            interpolation_type: InterpolationType::Linear,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            timestep_spacing: TimestepSpacing::Linspace,
            timestep_type: TimestepType::Discrete,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            final_sigmas_type: FinalSigmasType::Zero,
        }
    }
}

/// The Euler sampler over beta-derived sigmas.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    config: EulerDiscreteConfig,
    spacing: SigmaSpacing,
    alphas_cumprod: Vec<f64>,
    /// Training sigmas, ascending with the training timestep.
    table: Vec<f64>,
    log_table: Vec<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
}

impl EulerDiscreteScheduler {
    pub fn new(config: EulerDiscreteConfig) -> Result<Self> {
        validate_betas_without_sigmoid_or_flow(
            CLASS_NAME,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.prediction_type,
        )?;
        let spacing = SigmaSpacing::from_flags(
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        validate_sigma_bound("sigma_min", config.sigma_min)?;
        validate_sigma_bound("sigma_max", config.sigma_max)?;
        let alphas_cumprod = common::sigma_alphas_cumprod(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.rescale_betas_zero_snr,
        );
        let table = common::sigmas_from_alphas_cumprod(&alphas_cumprod);
        let log_table = common::log_table(&table);
        // Before `set_timesteps`: the whole training schedule, descending.
        let mut sigmas: Vec<f64> = table.iter().rev().copied().collect();
        let timesteps = if config.continuous_v() {
            continuous_timesteps(&sigmas)
        } else {
            (0..config.num_train_timesteps)
                .rev()
                .map(|t| t as f64)
                .collect()
        };
        sigmas.push(0.0);
        Ok(Self {
            config,
            spacing,
            alphas_cumprod,
            table,
            log_table,
            timesteps,
            sigmas,
            num_inference_steps: None,
            index: StepIndex::default(),
        })
    }

    pub fn config(&self) -> &EulerDiscreteConfig {
        &self.config
    }

    /// The schedule for a step count or custom timesteps: `(timesteps, sigmas)`.
    fn schedule(&self, n: usize, custom: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
        let c = &self.config;
        let mut timesteps = match custom {
            Some(ts) => ts.iter().map(|&t| f32r(t)).collect(),
            None => {
                fractional_timesteps(c.timestep_spacing, n, c.num_train_timesteps, c.steps_offset)
            }
        };
        let mut sigmas = match c.interpolation_type {
            InterpolationType::Linear => interp_sigmas(&timesteps, &self.table),
            InterpolationType::LogLinear => {
                let lo = f32r(self.table[0].ln());
                let hi = f32r(self.table[self.table.len() - 1].ln());
                common::torch_linspace_f32_unfused(hi, lo, n + 1)
                    .into_iter()
                    .map(|v| (v as f32).exp() as f64)
                    .collect()
            }
        };
        let sigma_min = c.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
        let sigma_max = c.sigma_max.unwrap_or(sigmas[0]);
        if let Some(respaced) = self.spacing.respace(sigma_min, sigma_max, n) {
            timesteps = respaced
                .iter()
                .map(|&s| f32r(common::sigma_to_t(s, &self.log_table)))
                .collect();
            sigmas = respaced;
        }
        let last = match c.final_sigmas_type {
            FinalSigmasType::SigmaMin => self.table[0],
            FinalSigmasType::Zero => 0.0,
        };
        sigmas.push(last);
        (timesteps, sigmas.into_iter().map(f32r).collect())
    }
}

impl EulerDiscreteConfig {
    fn continuous_v(&self) -> bool {
        self.timestep_type == TimestepType::Continuous
            && self.prediction_type == PredictionType::VPrediction
    }
}

/// `0.25 * ln(sigma)` per sigma, in `f32` (continuous v-prediction timesteps).
fn continuous_timesteps(sigmas: &[f64]) -> Vec<f64> {
    sigmas
        .iter()
        .map(|&s| (0.25f32 * (s as f32).ln()) as f64)
        .collect()
}

pub(crate) fn build<T: SchedulerTensor>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, EulerDiscreteConfig, EulerDiscreteScheduler>(
        json,
        EulerDiscreteScheduler::new,
    )
}

impl<T: SchedulerTensor> Scheduler<T> for EulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        CLASS_NAME
    }

    fn config(&self) -> Value {
        crate::config_json(CLASS_NAME, &self.config)
    }

    fn order(&self) -> usize {
        1
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }

    fn set_timesteps_with(&mut self, spec: &TimestepSpec) -> Result<()> {
        let c = &self.config;
        let given = [
            spec.num_inference_steps.is_some(),
            spec.timesteps.is_some(),
            spec.sigmas.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(SchedulerError::InvalidArgument {
                field: "num_inference_steps",
                value: format!("{:?}", spec.num_inference_steps),
                reason: "pass exactly one of num_inference_steps, timesteps or sigmas".into(),
            });
        }
        let (timesteps, sigmas) = if let Some(custom) = &spec.sigmas {
            if custom.len() < 2 || custom.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
                return Err(SchedulerError::InvalidArgument {
                    field: "sigmas",
                    value: format!("{custom:?}"),
                    reason:
                        "need at least two finite, non-negative sigmas (the last is the final one)"
                            .into(),
                });
            }
            let sigmas: Vec<f64> = custom.iter().map(|&s| f32r(s)).collect();
            let timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| f32r(sigma_to_t_numpy_f32(s, &self.log_table)))
                .collect();
            (timesteps, sigmas)
        } else if let Some(custom) = &spec.timesteps {
            if self.spacing != SigmaSpacing::Interpolated {
                return Err(SchedulerError::Unsupported {
                    class: CLASS_NAME,
                    what: "custom timesteps with use_karras_sigmas, use_exponential_sigmas or use_beta_sigmas".into(),
                });
            }
            if c.continuous_v() {
                return Err(SchedulerError::Unsupported {
                    class: CLASS_NAME,
                    what: "custom timesteps with continuous v-prediction timesteps".into(),
                });
            }
            if custom.is_empty() || custom.iter().any(|t| !t.is_finite()) {
                return Err(SchedulerError::InvalidArgument {
                    field: "timesteps",
                    value: format!("{custom:?}"),
                    reason: "need at least one finite timestep".into(),
                });
            }
            self.schedule(custom.len(), Some(custom))
        } else {
            let n = spec.num_inference_steps.unwrap_or_default();
            common::check_num_steps(n, c.num_train_timesteps)?;
            self.schedule(n, None)
        };
        self.timesteps = if c.continuous_v() {
            continuous_timesteps(&sigmas[..sigmas.len() - 1])
        } else {
            timesteps
        };
        self.num_inference_steps = Some(self.timesteps.len());
        self.sigmas = sigmas;
        self.index.reset();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        init_noise_sigma_f64(&self.sigmas, self.config.timestep_spacing)
    }

    fn scale_model_input(&mut self, sample: &T, t: f64) -> Result<T> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("scale_model_input"));
        }
        let sigma = input_sigma(&mut self.index, t, &self.timesteps, &self.sigmas)?;
        Ok(sample.scale(1.0 / (sigma * sigma + 1.0).sqrt()))
    }

    fn step(
        &mut self,
        model_output: &T,
        t: f64,
        sample: &T,
        options: &StepOptions,
        noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("step"));
        }
        common::check_step_shapes(model_output, sample)?;
        let i = step_position(&self.index, t, &self.timesteps, &self.sigmas)?;
        let (sigma, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
        let gamma = churn_gamma(options, sigma, self.sigmas.len());
        let sigma_hat = sigma as f32 * (gamma + 1.0) as f32;
        let noise = if gamma > 0.0 {
            Some(common::step_noise(noise, model_output, sample)?)
        } else {
            None
        };
        check_step_tensors(model_output, sample, &noise)?;
        let churned = noise.map(|noise| churn_sample(sample, noise, sigma, sigma_hat, options));
        let sample = churned.as_ref().unwrap_or(sample);
        let sigma_hat = sigma_hat as f64;

        // 1. x0; diffusers' v-prediction keeps the un-churned sigma.
        let prediction_type = self.config.prediction_type;
        let sigma_x0 = match prediction_type {
            PredictionType::VPrediction => sigma,
            _ => sigma_hat,
        };
        let pred_original_sample =
            sigma_pred_original_sample(prediction_type, model_output, sample, sigma_x0);
        // 2. The ODE derivative, and the Euler step along it.
        let derivative = T::linear_combination(&[(1.0, sample), (-1.0, &pred_original_sample)])
            .scale(1.0 / sigma_hat);
        let dt = f32r(sigma_next - sigma_hat);
        let prev_sample = T::linear_combination(&[(1.0, sample), (dt, &derivative)]);

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
            begin_index_beyond(self.sigmas.len()),
        )
    }

    /// As diffusers: the cumulative alpha is looked up at the *position* of each
    /// timestep in the inference schedule (not at the training timestep).
    fn get_velocity(&self, sample: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        check_batch_timesteps(sample, noise, timesteps)?;
        let mut sa = Vec::with_capacity(timesteps.len());
        let mut sb = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            let i = StepIndex::index_for_timestep(t, &self.timesteps)?;
            let a = self.alphas_cumprod[i.min(self.alphas_cumprod.len() - 1)];
            sa.push(a.sqrt());
            sb.push(-(1.0 - a).sqrt());
        }
        Ok(T::linear_combination(&[
            (1.0, &noise.scale_batch(&sa)),
            (1.0, &sample.scale_batch(&sb)),
        ]))
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
    use crate::testing::{abs_sum_mean, dummy_model, dummy_sample_deter};
    use crate::{CpuTensor, NoNoise, QueuedNoise};
    use serde_json::json;

    fn scheduler(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    /// The loop of diffusers' published Euler/LMS tests, which feed the *scaled*
    /// sample to `step` (`sample = scheduler.scale_model_input(sample, t)`).
    fn published_loop(s: &mut dyn Scheduler<CpuTensor>) -> (f64, f64) {
        s.set_timesteps(10).unwrap();
        let mut x = dummy_sample_deter().scale(s.init_noise_sigma());
        for t in s.timesteps().to_vec() {
            x = s.scale_model_input(&x, t).unwrap();
            let eps = dummy_model(&x, t);
            x = s
                .step(&eps, t, &x, &StepOptions::default(), &mut NoNoise)
                .unwrap()
                .prev_sample;
        }
        abs_sum_mean(&x)
    }

    fn run(config: Value) -> (f64, f64) {
        published_loop(scheduler(config).as_mut())
    }

    fn t2(data: [f32; 4]) -> CpuTensor {
        CpuTensor::new(data.to_vec(), vec![2, 2]).unwrap()
    }

    /// diffusers' `EulerDiscreteSchedulerTest.test_full_loop_*` published values
    /// (`s_churn = 0` draws no noise, so the generator plays no part).
    #[test]
    fn published_full_loops() {
        let base = json!({"num_train_timesteps": 1100, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "linear"});
        let (sum, mean) = run(base.clone());
        assert!(
            (sum - 10.0807).abs() < 1e-2 && (mean - 0.0131).abs() < 1e-3,
            "{sum} {mean}"
        );
        let mut v = base.clone();
        v["prediction_type"] = "v_prediction".into();
        let (sum, mean) = run(v);
        assert!(
            (sum - 0.0002).abs() < 1e-2 && (mean - 2.2676e-06).abs() < 1e-3,
            "{sum} {mean}"
        );
        let mut k = base;
        k["use_karras_sigmas"] = true.into();
        let (sum, mean) = run(k);
        assert!(
            (sum - 124.52299499511719).abs() < 1e-2 && (mean - 0.16213932633399963).abs() < 1e-3,
            "{sum} {mean}"
        );
    }

    fn config_error_field(config: Value) -> String {
        match crate::from_config_as::<CpuTensor>(CLASS_NAME, &config) {
            Err(SchedulerError::InvalidValue { field, .. })
            | Err(SchedulerError::InvalidConfig { field, .. }) => field,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("config accepted: {config}"),
        }
    }

    #[test]
    fn rejects_bad_configs() {
        assert_eq!(
            config_error_field(json!({"use_karras_sigmas": true, "use_beta_sigmas": true})),
            "use_karras_sigmas"
        );
        assert_eq!(config_error_field(json!({"sigma_min": -1.0})), "sigma_min");
        assert_eq!(config_error_field(json!({"sigma_max": 0.0})), "sigma_max");
        assert_eq!(
            config_error_field(json!({"beta_schedule": "sigmoid"})),
            "beta_schedule"
        );
        assert_eq!(
            config_error_field(json!({"prediction_type": "flow_prediction"})),
            "prediction_type"
        );
        assert_eq!(
            config_error_field(json!({"interpolation_type": "cubic"})),
            "interpolation_type"
        );
        assert_eq!(
            config_error_field(json!({"final_sigmas_type": "one"})),
            "final_sigmas_type"
        );
        assert_eq!(
            config_error_field(json!({"trained_betas": [0.1, 0.2]})),
            "trained_betas"
        );
    }

    #[test]
    fn rejects_bad_calls() {
        let mut s = scheduler(json!({}));
        let x = t2([0.0; 4]);
        let err = s.step(&x, 999.0, &x, &StepOptions::default(), &mut NoNoise);
        assert!(matches!(err, Err(SchedulerError::NotInitialized("step"))));
        assert!(matches!(
            s.scale_model_input(&x, 999.0),
            Err(SchedulerError::NotInitialized(_))
        ));
        assert!(s.set_timesteps(0).is_err());
        assert!(s.set_timesteps(1001).is_err());
        let both = TimestepSpec {
            num_inference_steps: Some(3),
            sigmas: Some(vec![1.0, 0.0]),
            ..TimestepSpec::default()
        };
        assert!(s.set_timesteps_with(&both).is_err());
        let one_sigma = TimestepSpec {
            sigmas: Some(vec![1.0]),
            ..TimestepSpec::default()
        };
        assert!(s.set_timesteps_with(&one_sigma).is_err());

        s.set_timesteps(2).unwrap();
        let t = s.timesteps()[0];
        let y = CpuTensor::zeros(vec![1, 4]);
        assert!(matches!(
            s.step(&y, t, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        let nan = t2([0.0, f32::NAN, 0.0, 0.0]);
        assert!(matches!(
            s.step(&nan, t, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NonFinite("model_output"))
        ));
        assert!(matches!(
            s.step(&x, 12345.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
        for t in s.timesteps().to_vec() {
            s.step(&x, t, &x, &StepOptions::default(), &mut NoNoise)
                .unwrap();
        }
        assert!(matches!(
            s.step(&x, t, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::PastLastStep(2))
        ));
    }

    #[test]
    fn custom_timesteps_rules() {
        let custom = TimestepSpec {
            timesteps: Some(vec![900.0, 500.0, 100.0]),
            ..TimestepSpec::default()
        };
        let mut k = scheduler(json!({"use_karras_sigmas": true}));
        assert!(matches!(
            k.set_timesteps_with(&custom),
            Err(SchedulerError::Unsupported { .. })
        ));
        let mut v =
            scheduler(json!({"timestep_type": "continuous", "prediction_type": "v_prediction"}));
        assert!(matches!(
            v.set_timesteps_with(&custom),
            Err(SchedulerError::Unsupported { .. })
        ));
        let mut s = scheduler(json!({}));
        s.set_timesteps_with(&custom).unwrap();
        assert_eq!(s.timesteps(), &[900.0, 500.0, 100.0]);
        assert_eq!(s.sigmas().unwrap().len(), 4);
    }

    #[test]
    fn log_linear_keeps_n_plus_two_sigmas() {
        let mut s = scheduler(json!({"interpolation_type": "log_linear"}));
        s.set_timesteps(5).unwrap();
        assert_eq!(s.timesteps().len(), 5);
        assert_eq!(s.sigmas().unwrap().len(), 7);
    }

    #[test]
    fn churn_draws_noise_only_when_gamma_is_positive() {
        let x = t2([0.1, 0.2, 0.3, 0.4]);
        let churn = StepOptions {
            s_churn: Some(1.0),
            ..StepOptions::default()
        };
        let mut s = scheduler(json!({}));
        s.set_timesteps(4).unwrap();
        let t = s.timesteps()[0];
        // No churn: deterministic.
        s.step(&x, t, &x, &StepOptions::default(), &mut NoNoise)
            .unwrap();
        // Churn inside the window: one noise tensor per step.
        let t = s.timesteps()[1];
        let mut q = QueuedNoise::new(vec![x.clone()]);
        s.step(&x, t, &x, &churn, &mut q).unwrap();
        assert_eq!(q.used(), 1);
        // Churn with every sigma above s_tmax: no noise.
        let outside = StepOptions {
            s_tmax: Some(1e-3),
            ..churn
        };
        let t = s.timesteps()[2];
        s.step(&x, t, &x, &outside, &mut NoNoise).unwrap();
    }

    #[test]
    fn add_noise_follows_the_index_rules() {
        let mut s = scheduler(json!({"beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear"}));
        s.set_timesteps(10).unwrap();
        let ts = s.timesteps().to_vec();
        let sig = s.sigmas().unwrap().to_vec();
        let x = t2([0.5, -1.0, 2.0, 0.25]);
        let z = t2([1.0, 0.5, -0.3, 2.0]);
        let expect = |i: usize, j: usize| {
            vec![
                (0.5 + 1.0 * sig[i]) as f32,
                (-1.0 + 0.5 * sig[i]) as f32,
                (2.0 - 0.3 * sig[j]) as f32,
                (0.25 + 2.0 * sig[j]) as f32,
            ]
        };
        let close = |a: &CpuTensor, b: Vec<f32>| {
            a.data()
                .iter()
                .zip(&b)
                .all(|(p, q)| (p - q).abs() <= 1e-5 * q.abs().max(1.0))
        };
        // begin_index unset: each timestep is looked up.
        let y = s.add_noise(&x, &z, &[ts[2], ts[5]]).unwrap();
        assert!(close(&y, expect(2, 5)));
        assert!(s.add_noise(&x, &z, &[123.5]).is_err());
        // begin_index set, before the first step: the begin index.
        s.set_begin_index(3);
        assert_eq!(s.begin_index(), Some(3));
        let y = s.add_noise(&x, &z, &[ts[0]]).unwrap();
        assert!(close(&y, expect(3, 3)));
        // ... and once stepping: the current step.
        s.step(&z, ts[3], &x, &StepOptions::default(), &mut NoNoise)
            .unwrap();
        let y = s.add_noise(&x, &z, &[ts[0], ts[0]]).unwrap();
        assert!(close(&y, expect(4, 4)));
        // set_timesteps clears the begin index.
        s.set_timesteps(10).unwrap();
        assert_eq!(s.begin_index(), None);
    }

    /// diffusers looks the cumulative alpha up at the timestep's *position* in the
    /// schedule; values from diffusers 0.42.
    #[test]
    fn get_velocity_matches_diffusers() {
        let mut s = scheduler(json!({"beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear"}));
        s.set_timesteps(10).unwrap();
        let ts = s.timesteps().to_vec();
        let sample = t2([1.0, 2.0, -0.5, 0.25]);
        let noise = t2([0.5, -0.5, 1.5, 0.75]);
        let v = s.get_velocity(&sample, &noise, &[ts[3], ts[6]]).unwrap();
        let expected = [0.44062945, -0.616171, 1.5343058, 0.7283151];
        for (a, b) in v.data().iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn init_noise_sigma_rules() {
        let mut s = scheduler(json!({"timestep_spacing": "leading"}));
        s.set_timesteps(10).unwrap();
        let max = s.sigmas().unwrap()[0];
        assert!((s.init_noise_sigma() - (max * max + 1.0).sqrt()).abs() < 1e-4);
        let mut s = scheduler(json!({"timestep_spacing": "trailing"}));
        s.set_timesteps(10).unwrap();
        assert_eq!(s.init_noise_sigma(), s.sigmas().unwrap()[0]);
    }
}
