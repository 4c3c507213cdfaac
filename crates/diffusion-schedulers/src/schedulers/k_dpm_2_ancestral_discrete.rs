//! `KDPM2AncestralDiscreteScheduler`: DPM-Solver-2 with ancestral sampling
//! (k-diffusion's `sample_dpm_2_ancestral`).
//!
//! Each step splits the move from `sigma_i` to `sigma_{i+1}` into a deterministic
//! part down to `sigma_down` and fresh noise of size `sigma_up`, with
//! `sigma_down^2 + sigma_up^2 = sigma_{i+1}^2`. The first evaluation of a pair
//! steps to the log-midpoint of `sigma_i` and `sigma_down`; the second steps from
//! the remembered sample to `sigma_down` and adds `sigma_up` times one noise
//! tensor. The final step (to sigma 0) is a noiseless Euler step, so a run of `n`
//! steps draws `n - 1` noise tensors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex};
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec};
use crate::sigmas::{
    SigmaSpacing, SigmaTable, check_step_tensors, init_noise_sigma_f32, interleave_tail_f32,
    kdpm2_base, kdpm2_table, lerp_half, scale_model_input_f32, sigma_add_noise,
    sigma_pred_original_sample,
};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "KDPM2AncestralDiscreteScheduler";

/// diffusers' `KDPM2AncestralDiscreteScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KDPM2AncestralDiscreteConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Default for KDPM2AncestralDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

/// The ancestral DPM-Solver-2 sampler.
#[derive(Debug, Clone)]
pub struct KDPM2AncestralDiscreteScheduler<T> {
    config: KDPM2AncestralDiscreteConfig,
    kind: SigmaSpacing,
    table: SigmaTable,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_interpol: Vec<f64>,
    sigmas_up: Vec<f64>,
    sigmas_down: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
    /// The sample at the start of a two-evaluation step (diffusers' `self.sample`).
    first_sample: Option<T>,
}

impl<T: SchedulerTensor> KDPM2AncestralDiscreteScheduler<T> {
    pub fn new(config: KDPM2AncestralDiscreteConfig) -> Result<Self> {
        let c = &config;
        let (kind, table) = kdpm2_table(
            CLASS_NAME,
            c.num_train_timesteps,
            c.beta_start,
            c.beta_end,
            c.beta_schedule,
            c.trained_betas.as_deref(),
            c.prediction_type,
            (
                c.use_karras_sigmas,
                c.use_exponential_sigmas,
                c.use_beta_sigmas,
            ),
        )?;
        let mut s = Self {
            config,
            kind,
            table,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            sigmas_interpol: Vec::new(),
            sigmas_up: Vec::new(),
            sigmas_down: Vec::new(),
            num_inference_steps: None,
            index: StepIndex::default(),
            first_sample: None,
        };
        // diffusers lays out the full training schedule at construction.
        s.layout(s.config.num_train_timesteps);
        Ok(s)
    }

    pub fn config(&self) -> &KDPM2AncestralDiscreteConfig {
        &self.config
    }

    /// Whether the next `step` is the first evaluation of a pair (or the final Euler step).
    pub fn state_in_first_order(&self) -> bool {
        self.first_sample.is_none()
    }

    fn layout(&mut self, n: usize) {
        let (ts, s32) = kdpm2_base(
            &self.table,
            self.kind,
            self.config.timestep_spacing,
            self.config.num_train_timesteps,
            n,
            self.config.steps_offset,
        );
        let len = s32.len();
        // All in f32 as diffusers' tensors: sigma_up, sigma_down and the log-midpoint
        // of sigma and sigma_down (the last two midpoints are set to 0).
        let mut up = Vec::with_capacity(len);
        let mut down = Vec::with_capacity(len);
        for i in 0..len {
            let s = s32[i];
            let next = if i + 1 < len { s32[i + 1] } else { 0.0 };
            let u = (next * next * (s * s - next * next) / (s * s)).sqrt();
            let d = if i + 1 < len {
                (next * next - u * u).sqrt()
            } else {
                0.0
            };
            up.push(u);
            down.push(d);
        }
        let interpol: Vec<f32> = (0..len)
            .map(|i| {
                if i + 2 >= len {
                    0.0
                } else {
                    lerp_half(s32[i].ln(), down[i].ln()).exp()
                }
            })
            .collect();
        // Timesteps: [t0, ti0, t1, ti1, t2, ..., ti_{n-2}, t_{n-1}].
        let mut timesteps = Vec::with_capacity(2 * n);
        timesteps.push(ts[0]);
        for k in 1..n {
            timesteps.push(self.table.sigma_to_t_torch_f32(interpol[k - 1]) as f64);
            timesteps.push(ts[k]);
        }
        let expand =
            |v: &[f32]| -> Vec<f64> { interleave_tail_f32(v).into_iter().map(f64::from).collect() };
        self.timesteps = timesteps;
        self.sigmas = expand(&s32);
        self.sigmas_interpol = expand(&interpol);
        self.sigmas_up = expand(&up);
        self.sigmas_down = expand(&down);
        self.index.reset();
        self.first_sample = None;
    }
}

pub(crate) fn build<T: SchedulerTensor + Send + 'static>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, KDPM2AncestralDiscreteConfig, KDPM2AncestralDiscreteScheduler<T>>(
        json,
        KDPM2AncestralDiscreteScheduler::new,
    )
}

impl<T: SchedulerTensor + Send> Scheduler<T> for KDPM2AncestralDiscreteScheduler<T> {
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
        let n = common::require_steps(spec, CLASS_NAME)?;
        common::check_num_steps(n, self.config.num_train_timesteps)?;
        self.layout(n);
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
        let sigma = if self.first_sample.is_none() {
            self.sigmas.get(i)
        } else {
            i.checked_sub(1).and_then(|j| self.sigmas_interpol.get(j))
        };
        let sigma = *sigma.ok_or(SchedulerError::PastLastStep(i))?;
        Ok(scale_model_input_f32(sample, sigma))
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
        let i = self.index.peek(t, &self.timesteps)?;
        let first_order = self.first_sample.is_none();
        if i >= self.timesteps.len() || (!first_order && i == 0) {
            return Err(SchedulerError::PastLastStep(i));
        }
        let j = if first_order { i } else { i - 1 };
        let (sigma, sigma_interpol, sigma_up, sigma_down) = (
            self.sigmas[j],
            self.sigmas_interpol[j],
            self.sigmas_up[j],
            self.sigmas_down[j],
        );
        let noise = if first_order {
            None
        } else {
            Some(common::step_noise(noise, model_output, sample)?)
        };
        check_step_tensors(model_output, sample, self.first_sample.iter().chain(&noise))?;

        // 1. x0, at sigma in the first half and at the midpoint in the second.
        let sigma_input = if first_order { sigma } else { sigma_interpol };
        let pred_original_sample = sigma_pred_original_sample(
            self.config.prediction_type,
            model_output,
            sample,
            sigma_input,
        );
        // 2. The ODE derivative at sigma_input; the first half steps to the
        // midpoint, the second from the first half's sample to sigma_down and
        // adds sigma_up of fresh noise.
        let derivative = T::linear_combination(&[(1.0, sample), (-1.0, &pred_original_sample)])
            .scale(1.0 / sigma_input);
        let prev_sample = match (self.first_sample.take(), noise) {
            (None, _) => {
                let dt = (sigma_interpol as f32 - sigma as f32) as f64;
                self.first_sample = Some(sample.clone());
                T::linear_combination(&[(1.0, sample), (dt, &derivative)])
            }
            (Some(first_sample), Some(noise)) => {
                let dt = (sigma_down as f32 - sigma as f32) as f64;
                let prev_sample = T::linear_combination(&[(1.0, &first_sample), (dt, &derivative)]);
                T::linear_combination(&[(1.0, &prev_sample), (sigma_up, &noise)])
            }
            (Some(_), None) => unreachable!("noise is drawn for every second half"),
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
    use crate::testing::{dummy_model, dummy_sample_deter};
    use crate::{CpuTensor, NoNoise, QueuedNoise};

    fn kdpm2a(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    /// One noise tensor per second-order step: `n - 1` for `n` inference steps.
    #[test]
    fn draws_noise_on_second_halves_only() {
        let mut s = kdpm2a(serde_json::json!({"beta_schedule": "scaled_linear"}));
        s.set_timesteps(4).unwrap();
        let ts = s.timesteps().to_vec();
        assert_eq!(ts.len(), 7);
        let x0 = dummy_sample_deter();
        let zeros = CpuTensor::zeros(x0.shape());
        let mut noise = QueuedNoise::new(vec![zeros.clone(); 3]);
        let mut x = x0.scale(s.init_noise_sigma());
        for (i, &t) in ts.iter().enumerate() {
            let m = s.scale_model_input(&x, t).unwrap();
            x = s
                .step(
                    &dummy_model(&m, t),
                    t,
                    &x,
                    &StepOptions::default(),
                    &mut noise,
                )
                .unwrap()
                .prev_sample;
            assert_eq!(noise.used(), i.div_ceil(2), "after step {i}");
        }
        assert_eq!(noise.remaining(), 0);
        assert!(x.all_finite());

        // Without a noise source the second half fails, as diffusers needs randn there.
        let mut s = kdpm2a(serde_json::json!({}));
        s.set_timesteps(3).unwrap();
        let ts = s.timesteps().to_vec();
        s.step(&x0, ts[0], &x0, &StepOptions::default(), &mut NoNoise)
            .unwrap();
        assert!(matches!(
            s.step(&x0, ts[1], &x0, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NoiseExhausted { .. })
        ));
    }

    #[test]
    fn sigma_tables() {
        let mut s = kdpm2a(serde_json::json!({"beta_schedule": "scaled_linear"}));
        s.set_timesteps(3).unwrap();
        let sig = s.sigmas().unwrap().to_vec();
        assert_eq!(sig.len(), 8);
        assert_eq!(sig[7], 0.0);
        // diffusers: timesteps [999, 499.4999, 499.5, 0, 0]
        let ts = s.timesteps();
        assert_eq!(ts.len(), 5);
        assert_eq!((ts[0], ts[2], ts[4]), (999.0, 499.5, 0.0));
        assert!((ts[1] - 499.4999).abs() < 1e-3, "{}", ts[1]);
    }

    #[test]
    fn rejects_bad_config_and_calls() {
        for json in [
            serde_json::json!({"prediction_type": "sample"}),
            serde_json::json!({"use_karras_sigmas": true, "use_exponential_sigmas": true}),
            serde_json::json!({"beta_schedule": "sigmoid"}),
            serde_json::json!({"num_train_timesteps": 1}),
        ] {
            assert!(
                crate::from_config_as::<CpuTensor>(CLASS_NAME, &json).is_err(),
                "{json}"
            );
        }
        let mut s = kdpm2a(serde_json::json!({}));
        let x = CpuTensor::zeros(vec![1, 2]);
        assert!(matches!(
            s.step(&x, 999.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NotInitialized("step"))
        ));
        let custom = TimestepSpec {
            sigmas: Some(vec![1.0, 0.5]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&custom),
            Err(SchedulerError::Unsupported { .. })
        ));
        s.set_timesteps(2).unwrap();
        assert!(matches!(
            s.step(&x, 5.5, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
        let nan = CpuTensor::new(vec![f32::NAN, 0.0], vec![1, 2]).unwrap();
        assert!(matches!(
            s.step(&nan, 999.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NonFinite(_))
        ));
    }
}
