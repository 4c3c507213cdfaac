//! `DDPMScheduler`: denoising diffusion probabilistic models (Ho et al. 2020).
//!
//! Ancestral sampling: every step predicts `x0`, forms the posterior mean of
//! `x_{t-1}` and adds posterior noise (for `t > 0`). The previous timestep is the
//! next entry of the schedule (or `t - 1` over the full training schedule before
//! `set_timesteps`, as diffusers allows).
//!
//! The scalar coefficients are computed in `f32`, the precision of diffusers'
//! 0-dim torch tensors: `1 - a_t / a_prev` cancels badly for close timesteps, and
//! reproducing that rounding is what keeps long schedules at parity.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alpha::{self, alpha_f32, check_threshold_config, custom_timesteps, integer_timesteps};
use crate::common;
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid, validate_betas};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{
    Scheduler, StepOptions, StepOutput, TimestepSpec, alpha_add_noise, alpha_velocity,
};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "DDPMScheduler";

/// How the posterior variance of a step is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// The posterior variance `beta~_t`.
    FixedSmall,
    /// `beta~_t`, computed through its logarithm.
    FixedSmallLog,
    /// `beta_t`.
    FixedLarge,
    /// `log(beta_t)` (diffusers then takes its square root, which is NaN).
    FixedLargeLog,
    /// Predicted by the model (needs a model output with twice the channels).
    Learned,
    /// Interpolated in log space by the model's extra channels.
    LearnedRange,
}

/// diffusers' `DDPMScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DDPMConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub variance_type: VarianceType,
    pub clip_sample: bool,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub clip_sample_range: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDPMConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

/// The DDPM ancestral sampler.
#[derive(Debug, Clone)]
pub struct DDPMScheduler {
    config: DDPMConfig,
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<f64>,
    /// Whether `set_timesteps` ran: the previous timestep then comes from the schedule.
    scheduled: bool,
    begin_index: Option<usize>,
}

impl DDPMScheduler {
    pub fn new(config: DDPMConfig) -> Result<Self> {
        validate_betas(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
        )?;
        if config.prediction_type == PredictionType::FlowPrediction {
            return Err(invalid(
                "prediction_type",
                "flow_prediction",
                "not supported by DDPMScheduler",
            ));
        }
        match config.variance_type {
            VarianceType::Learned | VarianceType::LearnedRange => {
                return Err(SchedulerError::Unsupported {
                    class: CLASS_NAME,
                    what: format!(
                        "variance_type `{}` (it needs the model's extra variance channels, \
                         which this crate does not split off the model output)",
                        if config.variance_type == VarianceType::Learned {
                            "learned"
                        } else {
                            "learned_range"
                        }
                    ),
                });
            }
            VarianceType::FixedLargeLog => {
                return Err(invalid(
                    "variance_type",
                    "fixed_large_log",
                    "diffusers' DDPMScheduler takes the square root of log(beta_t) < 0, \
                     so every noisy step would be NaN",
                ));
            }
            _ => {}
        }
        check_threshold_config(
            config.clip_sample_range,
            config.dynamic_thresholding_ratio,
            config.sample_max_value,
        )?;
        let (_, alphas_cumprod) = common::alphas_cumprod(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.rescale_betas_zero_snr,
        );
        let timesteps = (0..config.num_train_timesteps)
            .rev()
            .map(|t| t as f64)
            .collect();
        Ok(Self {
            config,
            alphas_cumprod,
            timesteps,
            scheduled: false,
            begin_index: None,
        })
    }

    pub fn config(&self) -> &DDPMConfig {
        &self.config
    }

    /// diffusers' `previous_timestep`: the next schedule entry (-1 after the last),
    /// or `t - 1` before `set_timesteps`.
    fn previous_timestep(&self, t: i64) -> Result<i64> {
        if !self.scheduled {
            return Ok(t - 1);
        }
        let i = self
            .timesteps
            .iter()
            .position(|&v| v == t as f64)
            .ok_or(SchedulerError::UnknownTimestep(t as f64))?;
        Ok(self.timesteps.get(i + 1).map_or(-1, |&v| v as i64))
    }

    /// The standard deviation of the noise diffusers adds at a step: the square
    /// root of its `_get_variance` (for `fixed_small_log`, `_get_variance`
    /// itself, already one), in `f32`.
    fn noise_std(&self, alpha_prod_t: f32, alpha_prod_t_prev: f32) -> f32 {
        let current_beta_t = 1.0 - alpha_prod_t / alpha_prod_t_prev;
        let variance =
            ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
        match self.config.variance_type {
            VarianceType::FixedSmallLog => (0.5 * variance.ln()).exp(),
            VarianceType::FixedLarge => current_beta_t.sqrt(),
            _ => variance.sqrt(),
        }
    }
}

pub(crate) fn build<T: SchedulerTensor>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, DDPMConfig, DDPMScheduler>(json, DDPMScheduler::new)
}

impl<T: SchedulerTensor> Scheduler<T> for DDPMScheduler {
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
        if spec.sigmas.is_some() {
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: "custom sigmas".into(),
            });
        }
        let train = self.config.num_train_timesteps;
        let timesteps = match (&spec.timesteps, spec.num_inference_steps) {
            (Some(_), Some(_)) => {
                return Err(SchedulerError::InvalidArgument {
                    field: "timesteps",
                    value: "custom list".into(),
                    reason: "pass either num_inference_steps or timesteps, not both".into(),
                });
            }
            (Some(custom), None) => custom_timesteps(custom, train)?,
            (None, Some(n)) => {
                common::check_num_steps(n, train)?;
                integer_timesteps(
                    self.config.timestep_spacing,
                    n,
                    train,
                    self.config.steps_offset,
                )?
            }
            (None, None) => {
                return Err(SchedulerError::InvalidArgument {
                    field: "num_inference_steps",
                    value: "None".into(),
                    reason: "pass num_inference_steps or timesteps".into(),
                });
            }
        };
        self.timesteps = timesteps.into_iter().map(|t| t as f64).collect();
        self.scheduled = true;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &T,
        t: f64,
        sample: &T,
        options: &StepOptions,
        noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>> {
        common::check_step_shapes(model_output, sample)?;
        let c = &self.config;

        // 1. compute alphas, betas
        let alpha_prod_t = alpha_f32(&self.alphas_cumprod, t)?;
        let prev_t = self.previous_timestep(t as i64)?;
        let alpha_prod_t_prev = if prev_t >= 0 {
            alpha_f32(&self.alphas_cumprod, prev_t as f64)?
        } else {
            1.0
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        // 2. compute predicted original sample from predicted noise also called
        // "predicted x_0" of formula (15) from https://huggingface.co/papers/2006.11239
        let pred_original_sample = alpha::pred_original_sample(
            c.prediction_type,
            model_output,
            sample,
            alpha_prod_t as f64,
        );

        // 3. clip or threshold "predicted x_0"
        let pred_original_sample =
            alpha::x0_bound!(c).apply(pred_original_sample, model_output, sample)?;

        // 4. compute coefficients for pred_original_sample x_0 and current sample x_t
        // see formula (7) from https://huggingface.co/papers/2006.11239
        let pred_original_sample_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t;
        let current_sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;

        // The noise of 6., drawn before the inputs are checked (see `alpha::draw_noise`).
        let variance_noise = if t as i64 > 0 {
            Some(alpha::draw_noise(noise, model_output, sample)?)
        } else {
            None
        };
        common::check_finite(model_output, sample)?;

        // 5. compute predicted previous sample µ_t
        // see formula (7) from https://huggingface.co/papers/2006.11239
        let mut pred_prev_sample = T::linear_combination(&[
            (pred_original_sample_coeff as f64, &*pred_original_sample),
            (current_sample_coeff as f64, sample),
        ]);

        // 6. add noise
        if let Some(variance_noise) = variance_noise {
            let std_dev_t = self.noise_std(alpha_prod_t, alpha_prod_t_prev) as f64;
            pred_prev_sample =
                T::linear_combination(&[(1.0, &pred_prev_sample), (std_dev_t, &variance_noise)]);
        }

        Ok(StepOutput {
            prev_sample: pred_prev_sample,
            pred_original_sample: options
                .wants_pred_original_sample()
                .then(|| pred_original_sample.into_owned()),
        })
    }

    fn add_noise(&self, original: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        alpha_add_noise(&self.alphas_cumprod, original, noise, timesteps)
    }

    fn get_velocity(&self, sample: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        alpha_velocity(&self.alphas_cumprod, sample, noise, timesteps)
    }

    fn set_begin_index(&mut self, begin: usize) {
        self.begin_index = Some(begin);
    }

    fn begin_index(&self) -> Option<usize> {
        self.begin_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuTensor, NoNoise, QueuedNoise};
    use serde_json::json;

    fn ddpm(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    /// diffusers' `DDPMSchedulerTest.test_variance` published values.
    #[test]
    fn published_variance() {
        let s = DDPMScheduler::new(DDPMConfig::default()).unwrap();
        let var = |t: i64| {
            let a_t = alpha_f32(&s.alphas_cumprod, t as f64).unwrap();
            let prev = s.previous_timestep(t).unwrap();
            let a_prev = if prev >= 0 {
                alpha_f32(&s.alphas_cumprod, prev as f64).unwrap()
            } else {
                1.0
            };
            let std = s.noise_std(a_t, a_prev) as f64;
            std * std
        };
        assert!(var(0).abs() < 1e-5);
        assert!((var(487) - 0.00979).abs() < 1e-5, "{}", var(487));
        assert!((var(999) - 0.02).abs() < 1e-5, "{}", var(999));
    }

    /// diffusers' `test_custom_timesteps`: the previous timestep follows the custom list.
    #[test]
    fn custom_timesteps_previous() {
        let mut s = DDPMScheduler::new(DDPMConfig::default()).unwrap();
        let spec = TimestepSpec {
            timesteps: Some(vec![100.0, 87.0, 50.0, 1.0, 0.0]),
            ..TimestepSpec::default()
        };
        Scheduler::<CpuTensor>::set_timesteps_with(&mut s, &spec).unwrap();
        let prevs: Vec<i64> = [100, 87, 50, 1, 0]
            .iter()
            .map(|&t| s.previous_timestep(t).unwrap())
            .collect();
        assert_eq!(prevs, vec![87, 50, 1, 0, -1]);
        assert!(s.previous_timestep(3).is_err());
    }

    #[test]
    fn noise_only_for_positive_t() {
        let mut s = ddpm(json!({}));
        s.set_timesteps_with(&TimestepSpec {
            timesteps: Some(vec![10.0, 0.0]),
            ..TimestepSpec::default()
        })
        .unwrap();
        let x = CpuTensor::new(vec![0.5, -0.25], vec![1, 2]).unwrap();
        let opts = StepOptions::default();
        // t = 10 needs noise; t = 0 does not.
        assert!(matches!(
            s.step(&x, 10.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NoiseExhausted { .. })
        ));
        let mut q = QueuedNoise::new(vec![x.clone()]);
        s.step(&x, 10.0, &x, &opts, &mut q).unwrap();
        assert_eq!(q.used(), 1);
        s.step(&x, 0.0, &x, &opts, &mut NoNoise).unwrap();
    }

    #[test]
    fn rejects_bad_configs_and_calls() {
        for (cfg, field) in [
            (json!({"variance_type": "fixed_large_log"}), "variance_type"),
            (
                json!({"prediction_type": "flow_prediction"}),
                "prediction_type",
            ),
            (json!({"beta_start": -1.0}), "beta_start"),
            (
                json!({"dynamic_thresholding_ratio": 2.0}),
                "dynamic_thresholding_ratio",
            ),
        ] {
            let err = crate::from_config_as::<CpuTensor>(CLASS_NAME, &cfg).unwrap_err();
            assert!(
                matches!(&err, SchedulerError::InvalidValue { field: f, .. } if f == field),
                "{err}"
            );
        }
        for v in ["learned", "learned_range"] {
            let err = crate::from_config_as::<CpuTensor>(CLASS_NAME, &json!({"variance_type": v}))
                .unwrap_err();
            assert!(matches!(err, SchedulerError::Unsupported { .. }), "{err}");
        }
        let err =
            crate::from_config_as::<CpuTensor>(CLASS_NAME, &json!({"variance_type": "other"}))
                .unwrap_err();
        assert!(
            matches!(err, SchedulerError::InvalidConfig { ref field, .. } if field == "variance_type")
        );

        let mut s = ddpm(json!({}));
        assert!(s.set_timesteps(0).is_err());
        assert!(s.set_timesteps(1001).is_err());
        let custom = |ts: Vec<f64>| TimestepSpec {
            timesteps: Some(ts),
            ..TimestepSpec::default()
        };
        assert!(
            s.set_timesteps_with(&custom(vec![100.0, 87.0, 50.0, 51.0, 0.0]))
                .is_err()
        );
        assert!(s.set_timesteps_with(&custom(vec![1000.0])).is_err());
        assert!(s.set_timesteps_with(&custom(vec![])).is_err());
        assert!(s.set_timesteps_with(&custom(vec![10.5, 3.0])).is_err());
        let both = TimestepSpec {
            num_inference_steps: Some(5),
            timesteps: Some(vec![100.0, 0.0]),
            ..TimestepSpec::default()
        };
        assert!(s.set_timesteps_with(&both).is_err());
        let sigmas = TimestepSpec {
            sigmas: Some(vec![1.0, 0.0]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&sigmas),
            Err(SchedulerError::Unsupported { .. })
        ));
        let mut off = ddpm(json!({"steps_offset": 1}));
        assert!(off.set_timesteps(1000).is_err());

        s.set_timesteps(10).unwrap();
        let x = CpuTensor::zeros(vec![1, 2]);
        let y = CpuTensor::zeros(vec![2, 1]);
        let nan = CpuTensor::new(vec![f32::NAN, 0.0], vec![1, 2]).unwrap();
        let opts = StepOptions::default();
        assert!(matches!(
            s.step(&x, 0.0, &y, &opts, &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            s.step(&nan, 0.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NonFinite(_))
        ));
        assert!(matches!(
            s.step(&x, 5.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
        assert!(matches!(
            s.step(&x, 2000.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
    }

    #[test]
    fn add_noise_and_velocity() {
        let s = ddpm(json!({}));
        let x = CpuTensor::new(vec![1.0, 2.0], vec![2, 1]).unwrap();
        let z = CpuTensor::new(vec![0.5, -0.5], vec![2, 1]).unwrap();
        let noisy = s.add_noise(&x, &z, &[0.0, 999.0]).unwrap();
        let v = s.get_velocity(&x, &z, &[0.0, 999.0]).unwrap();
        assert_eq!(noisy.shape(), vec![2, 1]);
        assert_eq!(v.shape(), vec![2, 1]);
        assert!(s.add_noise(&x, &z, &[0.0, 1.0, 2.0]).is_err());
    }
}
