//! `TCDScheduler`: trajectory consistency distillation (Zheng et al. 2024).
//!
//! Strategic stochastic sampling: each step predicts `x0` and `eps`, moves to an
//! intermediate timestep `s = floor((1 - eta) * t_prev)` along the deterministic
//! trajectory, then re-noises from `s` to `t_prev`. `eta` (the paper's gamma,
//! default 0.3) sets the stochasticity; `eta = 0` is deterministic.
//!
//! As in diffusers, `clip_sample`, `thresholding`, `timestep_spacing` and
//! `steps_offset` are config fields only: the step does not use them.
//!
//! `step` reports the predicted `x0` as `pred_original_sample`; diffusers'
//! second output is instead the re-noised `pred_noised_sample` (which equals
//! `prev_sample` when no noise is added).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alpha::{
    self, alpha_f32, check_threshold_config, distillation_origin, distilled_timesteps,
    spec_strength, validate_distilled_config,
};
use crate::common::{self, StepIndex};
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{
    Scheduler, StepOptions, StepOutput, TimestepSpec, alpha_add_noise, alpha_velocity,
};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "TCDScheduler";

/// The `eta` of `step` when the caller gives none.
pub const DEFAULT_ETA: f64 = 0.3;

/// diffusers' `TCDScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TCDConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub original_inference_steps: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    pub timestep_scaling: f64,
    pub rescale_betas_zero_snr: bool,
}

impl Default for TCDConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            original_inference_steps: 50,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            timestep_scaling: 10.0,
            rescale_betas_zero_snr: false,
        }
    }
}

/// The TCD sampler.
#[derive(Debug, Clone)]
pub struct TCDScheduler {
    config: TCDConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// diffusers' `num_inference_steps` (for a custom schedule, its untrimmed length).
    num_inference_steps: Option<usize>,
    index: StepIndex,
}

impl TCDScheduler {
    pub fn new(config: TCDConfig) -> Result<Self> {
        validate_distilled_config(
            CLASS_NAME,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.prediction_type,
            config.original_inference_steps,
            None,
        )?;
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
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0] as f32
        };
        let timesteps = (0..config.num_train_timesteps)
            .rev()
            .map(|t| t as f64)
            .collect();
        Ok(Self {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            num_inference_steps: None,
            index: StepIndex::default(),
        })
    }

    pub fn config(&self) -> &TCDConfig {
        &self.config
    }

    fn alpha_or_final(&self, t: f64) -> Result<f32> {
        if t >= 0.0 {
            alpha_f32(&self.alphas_cumprod, t)
        } else {
            Ok(self.final_alpha_cumprod)
        }
    }
}

pub(crate) fn build<T: SchedulerTensor>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, TCDConfig, TCDScheduler>(json, TCDScheduler::new)
}

impl<T: SchedulerTensor> Scheduler<T> for TCDScheduler {
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
        let train = self.config.num_train_timesteps;
        let strength = spec_strength(spec)?;
        // diffusers: an explicit `original_inference_steps` makes every training
        // timestep (up to `strength`) a candidate; the config value uses the
        // distillation grid.
        let (original_steps, origin) = match spec.original_inference_steps {
            Some(os) => {
                let count = (train as f64 * strength).trunc() as i64;
                (os, (0..count).collect::<Vec<i64>>())
            }
            None => {
                let os = self.config.original_inference_steps;
                if os > train {
                    return Err(SchedulerError::InvalidArgument {
                        field: "original_inference_steps",
                        value: os.to_string(),
                        reason: format!("cannot exceed num_train_timesteps = {train}"),
                    });
                }
                (os, distillation_origin(train, os, strength))
            }
        };
        let (timesteps, n) =
            distilled_timesteps(spec, CLASS_NAME, train, &origin, original_steps, strength)?;
        self.timesteps = timesteps.into_iter().map(|t| t as f64).collect();
        self.num_inference_steps = Some(n);
        self.index.reset();
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
        let num_inference_steps = self
            .num_inference_steps
            .ok_or(SchedulerError::NotInitialized("step"))?;
        common::check_step_shapes(model_output, sample)?;
        let eta = options.eta.unwrap_or(DEFAULT_ETA);
        if !(0.0..=1.0).contains(&eta) {
            return Err(SchedulerError::InvalidArgument {
                field: "eta",
                value: eta.to_string(),
                reason: "TCD's gamma must lie in [0, 1]".into(),
            });
        }
        let alpha_prod_t = alpha_f32(&self.alphas_cumprod, t)?;

        // 1. get previous step value
        let step_index = self.index.peek(t, &self.timesteps)?;
        if step_index >= self.timesteps.len() {
            return Err(SchedulerError::PastLastStep(step_index));
        }
        let prev_timestep = self.timesteps.get(step_index + 1).copied().unwrap_or(0.0);
        // torch: floor(float32(1 - eta) * float32(prev_timestep)).
        let timestep_s = ((1.0 - eta) as f32 * prev_timestep as f32).floor() as f64;

        // 2. compute alphas, betas
        let alpha_prod_t_prev = self.alpha_or_final(prev_timestep)?;
        let alpha_prod_s = alpha_f32(&self.alphas_cumprod, timestep_s)?;
        let beta_prod_s = 1.0 - alpha_prod_s;

        // 3. compute the predicted noised sample x_s based on the model parameterization
        let prediction_type = self.config.prediction_type;
        let pred_original_sample =
            alpha::pred_original_sample(prediction_type, model_output, sample, alpha_prod_t as f64);
        let pred_epsilon =
            alpha::pred_epsilon(prediction_type, model_output, sample, alpha_prod_t as f64);

        // The noise of 4. (when eta > 0, every step but the last), drawn before
        // the inputs are checked (see `alpha::draw_noise`).
        let noise = if eta > 0.0 && step_index + 1 != num_inference_steps {
            Some(alpha::draw_noise(noise, model_output, sample)?)
        } else {
            None
        };
        common::check_finite(model_output, sample)?;

        let pred_noised_sample = T::linear_combination(&[
            (alpha_prod_s.sqrt() as f64, &*pred_original_sample),
            (beta_prod_s.sqrt() as f64, &*pred_epsilon),
        ]);

        // 4. sample and inject noise z ~ N(0, I) for multistep inference
        let prev_sample = match noise {
            Some(noise) => {
                let ratio = alpha_prod_t_prev / alpha_prod_s;
                T::linear_combination(&[
                    (ratio.sqrt() as f64, &pred_noised_sample),
                    ((1.0 - ratio).sqrt() as f64, &noise),
                ])
            }
            None => pred_noised_sample,
        };

        self.index.advance_from(step_index);
        Ok(StepOutput {
            prev_sample,
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

    fn tcd(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    /// diffusers' `TCDSchedulerTest.test_full_loop_*_deter` (eta = 0) published values.
    #[test]
    fn published_full_loops() {
        let config = json!({"num_train_timesteps": 1000, "beta_start": 0.00085,
            "beta_end": 0.0120, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"});
        let opts = StepOptions {
            eta: Some(0.0),
            ..StepOptions::default()
        };
        for (steps, exp_sum, exp_mean) in [(1, 29.8715, 0.0389), (10, 181.2040, 0.2359)] {
            let mut s = tcd(config.clone());
            s.set_timesteps(steps).unwrap();
            let x = full_loop(s.as_mut(), &dummy_sample_deter(), &opts, &mut NoNoise).unwrap();
            let (sum, mean) = abs_sum_mean(&x);
            assert!(
                (sum - exp_sum).abs() < 1e-3 && (mean - exp_mean).abs() < 1e-3,
                "{steps}: {sum} {mean}"
            );
        }
    }

    #[test]
    fn explicit_original_steps_use_every_training_timestep() {
        let mut s = tcd(json!({}));
        s.set_timesteps_with(&TimestepSpec {
            num_inference_steps: Some(4),
            original_inference_steps: Some(50),
            ..TimestepSpec::default()
        })
        .unwrap();
        assert_eq!(s.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 759.0, 499.0, 259.0]);
    }

    #[test]
    fn rejects_bad_configs_and_calls() {
        for (cfg, field) in [
            (
                json!({"original_inference_steps": 0}),
                "original_inference_steps",
            ),
            (json!({"beta_schedule": "sigmoid"}), "beta_schedule"),
            (
                json!({"dynamic_thresholding_ratio": -0.5}),
                "dynamic_thresholding_ratio",
            ),
        ] {
            let err = crate::from_config_as::<CpuTensor>(CLASS_NAME, &cfg).unwrap_err();
            assert!(
                matches!(&err, SchedulerError::InvalidValue { field: f, .. } if f == field),
                "{err}"
            );
        }
        let mut s = tcd(json!({}));
        let x = CpuTensor::zeros(vec![1, 2]);
        let opts = StepOptions::default();
        assert!(matches!(
            s.step(&x, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NotInitialized(_))
        ));
        assert!(s.set_timesteps(0).is_err());
        assert!(s.set_timesteps(51).is_err());
        let both = TimestepSpec {
            num_inference_steps: Some(4),
            timesteps: Some(vec![999.0, 0.0]),
            ..TimestepSpec::default()
        };
        assert!(s.set_timesteps_with(&both).is_err());
        s.set_timesteps(4).unwrap();
        for eta in [-0.1, 1.5, f64::NAN] {
            let o = StepOptions {
                eta: Some(eta),
                ..StepOptions::default()
            };
            assert!(matches!(
                s.step(&x, 999.0, &x, &o, &mut NoNoise),
                Err(SchedulerError::InvalidArgument { field: "eta", .. })
            ));
        }
        // Default eta = 0.3 draws noise on every step but the last.
        assert!(matches!(
            s.step(&x, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NoiseExhausted { .. })
        ));
        let nan = CpuTensor::new(vec![f32::NAN, 0.0], vec![1, 2]).unwrap();
        assert!(matches!(
            s.step(&x, 999.0, &nan, &opts, &mut NoNoise),
            Err(SchedulerError::NonFinite(_))
        ));
    }
}
