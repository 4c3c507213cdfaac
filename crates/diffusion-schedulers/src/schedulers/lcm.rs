//! `LCMScheduler`: latent consistency models (Luo et al. 2023).
//!
//! The inference timesteps are a subset of the distillation schedule of
//! `original_inference_steps` points (`k - 1, 2k - 1, ...` with
//! `k = num_train_timesteps / original_inference_steps`). Each step maps the
//! sample to its consistency-function estimate `denoised` and, except at the
//! last step, re-noises it to the next timestep.
//!
//! `timestep_spacing` and `steps_offset` are accepted for config compatibility
//! but, as in diffusers, do not influence the schedule.

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

pub const CLASS_NAME: &str = "LCMScheduler";

/// diffusers' `LCMScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LCMConfig {
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

impl Default for LCMConfig {
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

/// The LCM multistep sampler.
#[derive(Debug, Clone)]
pub struct LCMScheduler {
    config: LCMConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// diffusers' `num_inference_steps`: for a custom schedule, its length before
    /// `strength` trims it (which decides the last, noise-free step).
    num_inference_steps: Option<usize>,
    index: StepIndex,
}

impl LCMScheduler {
    pub fn new(config: LCMConfig) -> Result<Self> {
        validate_distilled_config(
            CLASS_NAME,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.prediction_type,
            config.original_inference_steps,
            Some(config.timestep_scaling),
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

    pub fn config(&self) -> &LCMConfig {
        &self.config
    }

    /// The consistency-model boundary scalings `(c_skip, c_out)` at `t`
    /// (`f32`, as diffusers computes them from a tensor timestep).
    fn boundary_scalings(&self, t: f64) -> (f32, f32) {
        let scaled = t as f32 * self.config.timestep_scaling as f32;
        let denom = scaled * scaled + 0.25;
        (0.25 / denom, scaled / denom.sqrt())
    }
}

pub(crate) fn build<T: SchedulerTensor>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, LCMConfig, LCMScheduler>(json, LCMScheduler::new)
}

impl<T: SchedulerTensor> Scheduler<T> for LCMScheduler {
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
        let original_steps = spec
            .original_inference_steps
            .unwrap_or(self.config.original_inference_steps);
        if original_steps == 0 || original_steps > train {
            return Err(SchedulerError::InvalidArgument {
                field: "original_inference_steps",
                value: original_steps.to_string(),
                reason: format!("must lie in [1, num_train_timesteps = {train}]"),
            });
        }
        let strength = spec_strength(spec)?;
        let origin = distillation_origin(train, original_steps, strength);
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
        let c = &self.config;
        let alpha_prod_t = alpha_f32(&self.alphas_cumprod, t)?;

        // 1. get previous step value
        let step_index = self.index.peek(t, &self.timesteps)?;
        if step_index >= self.timesteps.len() {
            return Err(SchedulerError::PastLastStep(step_index));
        }
        let prev_timestep = self.timesteps.get(step_index + 1).copied().unwrap_or(t);

        // 2. compute alphas, betas
        let alpha_prod_t_prev = if prev_timestep >= 0.0 {
            alpha_f32(&self.alphas_cumprod, prev_timestep)?
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;

        // 3. get scalings for boundary conditions
        let (c_skip, c_out) = self.boundary_scalings(t);

        // 4. compute the predicted original sample x_0 based on the model parameterization
        let predicted_original_sample = alpha::pred_original_sample(
            c.prediction_type,
            model_output,
            sample,
            alpha_prod_t as f64,
        );

        // 5. clip or threshold "predicted x_0"
        let predicted_original_sample =
            alpha::x0_bound!(c).apply(predicted_original_sample, model_output, sample)?;

        // The noise of 7. (every step but the last), drawn before the inputs are
        // checked (see `alpha::draw_noise`).
        let noise = if step_index + 1 != num_inference_steps {
            Some(alpha::draw_noise(noise, model_output, sample)?)
        } else {
            None
        };
        common::check_finite(model_output, sample)?;

        // 6. denoise model output using boundary conditions
        let denoised = T::linear_combination(&[
            (c_out as f64, &*predicted_original_sample),
            (c_skip as f64, sample),
        ]);
        let pred_original_sample = options
            .wants_pred_original_sample()
            .then(|| denoised.clone());

        // 7. sample and inject noise z ~ N(0, I) for multistep inference
        let prev_sample = match noise {
            Some(noise) => T::linear_combination(&[
                (alpha_prod_t_prev.sqrt() as f64, &denoised),
                (beta_prod_t_prev.sqrt() as f64, &noise),
            ]),
            None => denoised,
        };

        self.index.advance_from(step_index);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample,
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
    use crate::{CpuTensor, NoNoise, QueuedNoise};
    use serde_json::json;

    fn lcm(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    /// diffusers' `LCMSchedulerTest.test_full_loop_onestep` (one step draws no noise).
    #[test]
    fn published_onestep() {
        let mut s = lcm(json!({"num_train_timesteps": 1000, "beta_start": 0.00085,
            "beta_end": 0.0120, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}));
        s.set_timesteps(1).unwrap();
        let x = full_loop(
            s.as_mut(),
            &dummy_sample_deter(),
            &StepOptions::default(),
            &mut NoNoise,
        )
        .unwrap();
        let (sum, mean) = abs_sum_mean(&x);
        assert!(
            (sum - 18.7097).abs() < 1e-2 && (mean - 0.0244).abs() < 1e-3,
            "{sum} {mean}"
        );
    }

    #[test]
    fn schedules() {
        let mut s = lcm(json!({}));
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 759.0, 499.0, 259.0]);
        // Custom timesteps trimmed by strength keep diffusers' step count, so the
        // last remaining step still draws noise.
        s.set_timesteps_with(&TimestepSpec {
            timesteps: Some(vec![999.0, 759.0, 499.0, 259.0]),
            strength: Some(0.5),
            ..TimestepSpec::default()
        })
        .unwrap();
        assert_eq!(s.timesteps(), &[499.0, 259.0]);
        let x = CpuTensor::new(vec![0.5, -0.5], vec![1, 2]).unwrap();
        let mut q = QueuedNoise::new(vec![x.clone(), x.clone()]);
        let opts = StepOptions::default();
        s.step(&x, 499.0, &x, &opts, &mut q).unwrap();
        s.step(&x, 259.0, &x, &opts, &mut q).unwrap();
        assert_eq!(q.used(), 2);
        assert!(matches!(
            s.step(&x, 259.0, &x, &opts, &mut q),
            Err(SchedulerError::PastLastStep(2))
        ));
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
                json!({"prediction_type": "flow_prediction"}),
                "prediction_type",
            ),
            (json!({"clip_sample_range": -1.0}), "clip_sample_range"),
        ] {
            let err = crate::from_config_as::<CpuTensor>(CLASS_NAME, &cfg).unwrap_err();
            assert!(
                matches!(&err, SchedulerError::InvalidValue { field: f, .. } if f == field),
                "{err}"
            );
        }
        let mut s = lcm(json!({}));
        let x = CpuTensor::zeros(vec![1, 2]);
        let opts = StepOptions::default();
        assert!(matches!(
            s.step(&x, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NotInitialized(_))
        ));
        for n in [0, 51, 1001] {
            assert!(s.set_timesteps(n).is_err(), "{n}");
        }
        let spec = |f: fn(&mut TimestepSpec)| {
            let mut sp = TimestepSpec::steps(4);
            f(&mut sp);
            sp
        };
        for bad in [
            spec(|s| s.original_inference_steps = Some(1001)),
            spec(|s| s.original_inference_steps = Some(2)),
            spec(|s| s.strength = Some(0.0)),
            spec(|s| s.strength = Some(0.05)),
            spec(|s| s.strength = Some(1.5)),
            spec(|s| s.timesteps = Some(vec![999.0, 0.0])),
            spec(|s| s.sigmas = Some(vec![1.0, 0.0])),
            spec(|s| {
                s.num_inference_steps = None;
                s.timesteps = Some(vec![100.0, 87.0, 50.0, 51.0, 0.0]);
            }),
            spec(|s| {
                s.num_inference_steps = None;
                s.timesteps = Some(vec![1000.0]);
            }),
            spec(|s| s.num_inference_steps = None),
        ] {
            assert!(s.set_timesteps_with(&bad).is_err(), "{bad:?}");
        }
        s.set_timesteps(4).unwrap();
        let y = CpuTensor::zeros(vec![2, 1]);
        assert!(matches!(
            s.step(&x, 999.0, &y, &opts, &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            s.step(&x, 998.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
    }
}
