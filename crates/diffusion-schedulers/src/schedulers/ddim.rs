//! `DDIMScheduler`: denoising diffusion implicit models (Song et al. 2020).
//!
//! Deterministic at `eta = 0`; `eta = 1` recovers DDPM's variance. Integer
//! timesteps; `step` maps `t` to the previous timestep `t - N / n`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alpha::{self, integer_timesteps};
use crate::common::{self, StepIndex};
use crate::config::validate_betas_without_sigmoid_or_flow;
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{
    Scheduler, StepOptions, StepOutput, TimestepSpec, alpha_add_noise, alpha_lookup, alpha_velocity,
};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "DDIMScheduler";

/// diffusers' `DDIMScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DDIMConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub clip_sample: bool,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub clip_sample_range: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDIMConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
        }
    }
}

/// The DDIM sampler.
#[derive(Debug, Clone)]
pub struct DDIMScheduler {
    config: DDIMConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    timesteps: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
}

impl DDIMScheduler {
    pub fn new(config: DDIMConfig) -> Result<Self> {
        validate_betas_without_sigmoid_or_flow(
            CLASS_NAME,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.prediction_type,
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
            alphas_cumprod[0]
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

    pub fn config(&self) -> &DDIMConfig {
        &self.config
    }

    fn alpha_prev(&self, prev_t: i64) -> f64 {
        if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }
}

pub(crate) fn build<T: SchedulerTensor>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, DDIMConfig, DDIMScheduler>(json, DDIMScheduler::new)
}

impl<T: SchedulerTensor> Scheduler<T> for DDIMScheduler {
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
        let n = common::require_steps(spec, CLASS_NAME)?;
        let train = self.config.num_train_timesteps;
        common::check_num_steps(n, train)?;
        let timesteps = integer_timesteps(
            self.config.timestep_spacing,
            n,
            train,
            self.config.steps_offset,
        )?;
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
        let eta = options.eta.unwrap_or(0.0);

        // 1. get previous step value (=t-1)
        let prev_timestep = t.round() as i64 - (c.num_train_timesteps / num_inference_steps) as i64;

        // 2. compute alphas, betas
        let alpha_prod_t = alpha_lookup(&self.alphas_cumprod, &[t])?[0];
        let alpha_prod_t_prev = self.alpha_prev(prev_timestep);
        let beta_prod_t = 1.0 - alpha_prod_t;

        // 3. compute predicted original sample ("predicted x_0" of formula (12))
        // and predicted epsilon from the model output
        let pred_original_sample =
            alpha::pred_original_sample(c.prediction_type, model_output, sample, alpha_prod_t);
        let mut pred_epsilon =
            alpha::pred_epsilon(c.prediction_type, model_output, sample, alpha_prod_t);

        // 4. clip or threshold "predicted x_0"
        let pred_original_sample =
            alpha::x0_bound!(c).apply(pred_original_sample, model_output, sample)?;

        // 5. compute variance: "sigma_t(eta)" -> see formula (16)
        let variance =
            (1.0 - alpha_prod_t_prev) / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = eta * variance.sqrt();

        if options.use_clipped_model_output.unwrap_or(false) {
            // the pred_epsilon is always re-derived from the clipped x_0 in Glide
            pred_epsilon = Cow::Owned(T::linear_combination(&[
                (1.0 / beta_prod_t.sqrt(), sample),
                (
                    -alpha_prod_t.sqrt() / beta_prod_t.sqrt(),
                    &*pred_original_sample,
                ),
            ]));
        }

        // diffusers draws `variance_noise` last; it is drawn before the inputs
        // are checked (see `alpha::draw_noise`).
        let variance_noise = if eta > 0.0 {
            Some(alpha::draw_noise(noise, model_output, sample)?)
        } else {
            None
        };
        common::check_finite(model_output, sample)?;

        // 6. compute "direction pointing to x_t" of formula (12): its coefficient
        // times pred_epsilon, a term of the combination of 7.
        let pred_sample_direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();

        // 7. compute x_t without "random noise" of formula (12)
        let mut prev_sample = T::linear_combination(&[
            (alpha_prod_t_prev.sqrt(), &*pred_original_sample),
            (pred_sample_direction_coeff, &*pred_epsilon),
        ]);
        if let Some(variance_noise) = variance_noise {
            prev_sample =
                T::linear_combination(&[(1.0, &prev_sample), (std_dev_t, &variance_noise)]);
        }

        self.index.advance();
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

    fn run(config: serde_json::Value) -> (f64, f64) {
        let mut s = crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler;
        s.set_timesteps(10).unwrap();
        let x = full_loop(
            s.as_mut(),
            &dummy_sample_deter(),
            &StepOptions::default(),
            &mut NoNoise,
        )
        .unwrap();
        abs_sum_mean(&x)
    }

    /// diffusers' `DDIMSchedulerTest.test_full_loop_*` published values.
    #[test]
    fn published_full_loops() {
        let base = serde_json::json!({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "linear", "clip_sample": true});
        let (sum, mean) = run(base.clone());
        assert!(
            (sum - 172.0067).abs() < 1e-2 && (mean - 0.223967).abs() < 1e-3,
            "{sum} {mean}"
        );
        let mut v = base.clone();
        v["prediction_type"] = "v_prediction".into();
        let (sum, mean) = run(v);
        assert!(
            (sum - 52.5302).abs() < 1e-2 && (mean - 0.0684).abs() < 1e-3,
            "{sum} {mean}"
        );
        let mut a = base.clone();
        a["beta_start"] = 0.01.into();
        let (sum, _) = run(a.clone());
        assert!((sum - 149.8295).abs() < 1e-2, "{sum}");
        a["set_alpha_to_one"] = false.into();
        let (sum, _) = run(a);
        assert!((sum - 149.0784).abs() < 1e-2, "{sum}");
    }

    #[test]
    fn rejects_bad_calls() {
        let mut s = DDIMScheduler::new(DDIMConfig::default()).unwrap();
        let x = CpuTensor::zeros(vec![1, 2]);
        let err = Scheduler::<CpuTensor>::step(
            &mut s,
            &x,
            10.0,
            &x,
            &StepOptions::default(),
            &mut NoNoise,
        );
        assert!(matches!(err, Err(SchedulerError::NotInitialized(_))));
        assert!(Scheduler::<CpuTensor>::set_timesteps(&mut s, 0).is_err());
        assert!(Scheduler::<CpuTensor>::set_timesteps(&mut s, 1001).is_err());
    }
}
