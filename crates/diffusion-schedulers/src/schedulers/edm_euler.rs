//! `EDMEulerScheduler`: the Euler sampler of Karras et al. (2022) in the EDM
//! formulation, with the model's input and output preconditioning
//! (`c_in`, `c_skip`, `c_out`, `c_noise = ln(sigma) / 4`) done by the scheduler.
//!
//! The sigmas are Karras (`rho`) or exponential between `sigma_max` and
//! `sigma_min`; timesteps are `c_noise(sigma)`. Custom `sigmas` in
//! `set_timesteps` are, as in diffusers, the *ramp* in `[0, 1]` fed to the sigma
//! schedule (not noise levels).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex, f32r};
use crate::config::{FinalSigmasType, PredictionType, invalid};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec};
use crate::sigmas::{
    begin_index_beyond, check_step_tensors, churn_gamma, churn_sample, input_sigma,
    sigma_add_noise, step_position,
};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "EDMEulerScheduler";

/// The sigma schedule of an EDM scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigmaSchedule {
    /// `(max^(1/rho) + ramp * (min^(1/rho) - max^(1/rho)))^rho`.
    Karras,
    /// Log-linear from `sigma_max` down to `sigma_min`.
    Exponential,
}

/// diffusers' `EDMEulerScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EDMEulerConfig {
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub sigma_data: f64,
    pub sigma_schedule: SigmaSchedule,
    pub num_train_timesteps: usize,
    pub prediction_type: PredictionType,
    pub rho: f64,
    pub final_sigmas_type: FinalSigmasType,
}

impl Default for EDMEulerConfig {
    fn default() -> Self {
        Self {
            sigma_min: 0.002,
            sigma_max: 80.0,
            sigma_data: 0.5,
            sigma_schedule: SigmaSchedule::Karras,
            num_train_timesteps: 1000,
            prediction_type: PredictionType::Epsilon,
            rho: 7.0,
            final_sigmas_type: FinalSigmasType::Zero,
        }
    }
}

/// The EDM Euler sampler.
#[derive(Debug, Clone)]
pub struct EDMEulerScheduler {
    config: EDMEulerConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
}

impl EDMEulerScheduler {
    pub fn new(config: EDMEulerConfig) -> Result<Self> {
        for (field, v) in [
            ("sigma_min", config.sigma_min),
            ("sigma_max", config.sigma_max),
            ("sigma_data", config.sigma_data),
            ("rho", config.rho),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(field, v, "must be a finite positive number"));
            }
        }
        crate::config::check_train_timesteps(config.num_train_timesteps, 1)?;
        if !matches!(
            config.prediction_type,
            PredictionType::Epsilon | PredictionType::VPrediction
        ) {
            // diffusers accepts the config and raises in `step`.
            return Err(invalid(
                "prediction_type",
                format!("{:?}", config.prediction_type),
                "EDMEulerScheduler supports epsilon and v_prediction",
            ));
        }
        let n = config.num_train_timesteps;
        let ramp: Vec<f64> = (0..=n).map(|i| i as f64 / n as f64).collect();
        let mut s = Self {
            config,
            timesteps: vec![],
            sigmas: vec![],
            num_inference_steps: None,
            index: StepIndex::default(),
        };
        s.lay_out(&ramp);
        Ok(s)
    }

    pub fn config(&self) -> &EDMEulerConfig {
        &self.config
    }

    /// The `f32` sigmas of the schedule at `ramp`.
    fn sigmas_at(&self, ramp: &[f64]) -> Vec<f64> {
        let c = &self.config;
        match c.sigma_schedule {
            SigmaSchedule::Karras => {
                let min_inv = c.sigma_min.powf(1.0 / c.rho);
                let max_inv = c.sigma_max.powf(1.0 / c.rho);
                ramp.iter()
                    .map(|r| f32r((max_inv + r * (min_inv - max_inv)).powf(c.rho)))
                    .collect()
            }
            // diffusers ignores the ramp's values here (only its length counts)
            // and works in f32.
            SigmaSchedule::Exponential => {
                common::torch_linspace_f32_unfused(c.sigma_min.ln(), c.sigma_max.ln(), ramp.len())
                    .into_iter()
                    .rev()
                    .map(|v| (v as f32).exp() as f64)
                    .collect()
            }
        }
    }

    fn lay_out(&mut self, ramp: &[f64]) {
        let mut sigmas = self.sigmas_at(ramp);
        self.timesteps = sigmas
            .iter()
            .map(|&s| (0.25f32 * (s as f32).ln()) as f64)
            .collect();
        let last = match self.config.final_sigmas_type {
            FinalSigmasType::SigmaMin => sigmas[sigmas.len() - 1],
            FinalSigmasType::Zero => 0.0,
        };
        sigmas.push(last);
        self.sigmas = sigmas;
        self.index.reset();
    }

    /// `c_skip * sample + c_out * model_output` at noise level `sigma` (f32
    /// scalars, as diffusers).
    fn precondition_outputs<T: SchedulerTensor>(
        &self,
        sample: &T,
        model_output: &T,
        sigma: f64,
    ) -> T {
        let (s, sd) = (sigma as f32, self.config.sigma_data);
        let sd2 = (sd * sd) as f32;
        let denom = s * s + sd2;
        let c_skip = sd2 / denom;
        let c_out = s * sd as f32 / denom.sqrt();
        let c_out = match self.config.prediction_type {
            PredictionType::VPrediction => -c_out,
            _ => c_out,
        };
        T::linear_combination(&[(c_skip as f64, sample), (c_out as f64, model_output)])
    }
}

pub(crate) fn build<T: SchedulerTensor>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, EDMEulerConfig, EDMEulerScheduler>(json, EDMEulerScheduler::new)
}

impl<T: SchedulerTensor> Scheduler<T> for EDMEulerScheduler {
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
        if spec.timesteps.is_some() {
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: "custom timesteps".into(),
            });
        }
        let ramp = match (&spec.sigmas, spec.num_inference_steps) {
            (Some(ramp), _) => {
                if ramp.is_empty() || ramp.iter().any(|r| !r.is_finite()) {
                    return Err(SchedulerError::InvalidArgument {
                        field: "sigmas",
                        value: format!("{ramp:?}"),
                        reason: "need at least one finite ramp value".into(),
                    });
                }
                ramp.clone()
            }
            (None, Some(n)) => {
                // Same bounds as every scheduler: 1 ..= num_train_timesteps.
                common::check_num_steps(n, self.config.num_train_timesteps)?;
                common::linspace(0.0, 1.0, n)
            }
            (None, None) => {
                return Err(SchedulerError::InvalidArgument {
                    field: "num_inference_steps",
                    value: "None".into(),
                    reason: "required unless sigmas are given".into(),
                });
            }
        };
        self.lay_out(&ramp);
        self.num_inference_steps = Some(self.timesteps.len());
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        (self.config.sigma_max * self.config.sigma_max + 1.0).sqrt()
    }

    fn scale_model_input(&mut self, sample: &T, t: f64) -> Result<T> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("scale_model_input"));
        }
        let sigma = input_sigma(&mut self.index, t, &self.timesteps, &self.sigmas)? as f32;
        let sd = self.config.sigma_data;
        let c_in = 1.0 / (sigma * sigma + (sd * sd) as f32).sqrt();
        Ok(sample.scale(c_in as f64))
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

        // 1. x0 from the preconditioned model output.
        let pred_original_sample = self.precondition_outputs(sample, model_output, sigma_hat);
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
    use crate::testing::{abs_sum_mean, dummy_sample_deter, full_loop};
    use crate::{CpuTensor, NoNoise};
    use serde_json::json;

    fn scheduler(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    /// diffusers' `EDMEulerSchedulerTest.test_full_loop_no_noise`.
    #[test]
    fn published_full_loop() {
        let mut s =
            scheduler(json!({"num_train_timesteps": 256, "sigma_min": 0.002, "sigma_max": 80.0}));
        s.set_timesteps(10).unwrap();
        let x = full_loop(
            s.as_mut(),
            &dummy_sample_deter(),
            &StepOptions::default(),
            &mut NoNoise,
        )
        .unwrap();
        let (sum, mean) = abs_sum_mean(&x);
        assert!(
            (sum - 34.1855).abs() < 1e-3 && (mean - 0.044).abs() < 1e-3,
            "{sum} {mean}"
        );
    }

    /// Custom `sigmas` are a ramp in [0, 1]; values from diffusers 0.42.
    #[test]
    fn custom_sigmas_are_a_ramp() {
        let spec = TimestepSpec {
            sigmas: Some(vec![0.0, 0.3, 0.7, 1.0]),
            ..TimestepSpec::default()
        };
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= 1e-6 * y.abs().max(1e-3))
        };
        let mut s = scheduler(json!({}));
        s.set_timesteps_with(&spec).unwrap();
        assert!(close(
            s.sigmas().unwrap(),
            &[
                80.0,
                12.381574630737305,
                0.318283349275589,
                0.0020000000949949026,
                0.0
            ]
        ));
        assert!(close(
            s.timesteps(),
            &[
                1.0955066680908203,
                0.6290523409843445,
                -0.2862033247947693,
                -1.553652048110962
            ]
        ));
        let mut s = scheduler(json!({"sigma_schedule": "exponential"}));
        s.set_timesteps_with(&spec).unwrap();
        assert!(close(
            s.sigmas().unwrap(),
            &[
                80.0,
                2.339214324951172,
                0.06839902698993683,
                0.001999999862164259,
                0.0
            ]
        ));
    }

    #[test]
    fn rejects_bad_configs_and_calls() {
        for (config, field) in [
            (json!({"sigma_schedule": "linear"}), "sigma_schedule"),
            (json!({"prediction_type": "sample"}), "prediction_type"),
            (json!({"sigma_min": -0.1}), "sigma_min"),
            (json!({"sigma_data": 0.0}), "sigma_data"),
            (json!({"rho": 0.0}), "rho"),
        ] {
            match crate::from_config_as::<CpuTensor>(CLASS_NAME, &config) {
                Err(SchedulerError::InvalidValue { field: f, .. })
                | Err(SchedulerError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{config}: {:?}", other.map(|_| ())),
            }
        }
        let mut s = scheduler(json!({}));
        let x = CpuTensor::new(vec![0.1, 0.2], vec![2, 1]).unwrap();
        let t = s.timesteps()[0];
        assert!(matches!(
            s.step(&x, t, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NotInitialized("step"))
        ));
        let custom = TimestepSpec {
            timesteps: Some(vec![1.0, 0.5]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&custom),
            Err(SchedulerError::Unsupported { .. })
        ));
        assert!(s.set_timesteps(0).is_err());
        s.set_timesteps(4).unwrap();
        let t = s.timesteps()[0];
        let wrong = CpuTensor::zeros(vec![2, 2]);
        assert!(matches!(
            s.step(&wrong, t, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        // Churn inside [s_tmin, s_tmax] asks for noise.
        let churn = StepOptions {
            s_churn: Some(1.0),
            ..StepOptions::default()
        };
        assert!(matches!(
            s.step(&x, t, &x, &churn, &mut NoNoise),
            Err(SchedulerError::NoiseExhausted { .. })
        ));
    }

    #[test]
    fn scaling_and_final_sigma() {
        let mut s = scheduler(json!({"final_sigmas_type": "sigma_min"}));
        s.set_timesteps(5).unwrap();
        let sig = s.sigmas().unwrap().to_vec();
        assert_eq!(sig[5], sig[4]);
        assert!((s.init_noise_sigma() - (80f64 * 80.0 + 1.0).sqrt()).abs() < 1e-12);
        let x = CpuTensor::new(vec![1.0, -2.0], vec![2, 1]).unwrap();
        let t = s.timesteps()[0];
        let m = s.scale_model_input(&x, t).unwrap();
        let c_in = 1.0 / (80f64 * 80.0 + 0.25).sqrt();
        assert!((m.data()[0] as f64 - c_in).abs() < 1e-7);
    }
}
