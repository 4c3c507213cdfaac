//! `KDPM2DiscreteScheduler`: DPM-Solver-2 (Karras et al. 2022, Algorithm 2 with
//! the midpoint in log-sigma), over the discrete sigmas of a beta schedule.
//!
//! Each inference step but the last takes two model evaluations: an Euler step
//! to the log-midpoint `sqrt(sigma_i * sigma_{i+1})` ("interpolated" sigma, whose
//! fractional timestep is interleaved into the schedule), then a step from the
//! remembered sample with the derivative evaluated at the midpoint. The final
//! step (to sigma 0) is a plain Euler step.

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

pub const CLASS_NAME: &str = "KDPM2DiscreteScheduler";

/// diffusers' `KDPM2DiscreteScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KDPM2DiscreteConfig {
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

impl Default for KDPM2DiscreteConfig {
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

/// The DPM-Solver-2 sampler.
#[derive(Debug, Clone)]
pub struct KDPM2DiscreteScheduler<T> {
    config: KDPM2DiscreteConfig,
    kind: SigmaSpacing,
    table: SigmaTable,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_interpol: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
    /// The sample at the start of a two-evaluation step (diffusers' `self.sample`).
    first_sample: Option<T>,
}

impl<T: SchedulerTensor> KDPM2DiscreteScheduler<T> {
    pub fn new(config: KDPM2DiscreteConfig) -> Result<Self> {
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
            num_inference_steps: None,
            index: StepIndex::default(),
            first_sample: None,
        };
        // diffusers lays out the full training schedule at construction.
        s.layout(s.config.num_train_timesteps);
        Ok(s)
    }

    pub fn config(&self) -> &KDPM2DiscreteConfig {
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
        // sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp(): the geometric midpoint
        // with the previous sigma (entry 0 wraps to the final 0 and is never used).
        let len = s32.len();
        let interpol: Vec<f32> = (0..len)
            .map(|i| {
                let prev = s32[(i + len - 1) % len];
                lerp_half(s32[i].ln(), prev.ln()).exp()
            })
            .collect();
        // Timesteps: [t0, ti1, t1, ti2, t2, ..., ti_{n-1}, t_{n-1}].
        let mut timesteps = Vec::with_capacity(2 * n);
        timesteps.push(ts[0]);
        for k in 1..n {
            timesteps.push(self.table.sigma_to_t_torch_f32(interpol[k]) as f64);
            timesteps.push(ts[k]);
        }
        self.timesteps = timesteps;
        self.sigmas = interleave_tail_f32(&s32)
            .into_iter()
            .map(f64::from)
            .collect();
        self.sigmas_interpol = interleave_tail_f32(&interpol)
            .into_iter()
            .map(f64::from)
            .collect();
        self.index.reset();
        self.first_sample = None;
    }
}

pub(crate) fn build<T: SchedulerTensor + Send + 'static>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, KDPM2DiscreteConfig, KDPM2DiscreteScheduler<T>>(
        json,
        KDPM2DiscreteScheduler::new,
    )
}

impl<T: SchedulerTensor + Send> Scheduler<T> for KDPM2DiscreteScheduler<T> {
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
        let table = if self.first_sample.is_none() {
            &self.sigmas
        } else {
            &self.sigmas_interpol
        };
        let sigma = *table.get(i).ok_or(SchedulerError::PastLastStep(i))?;
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
        let first_order = self.first_sample.is_none();
        if i >= self.timesteps.len() || (!first_order && i == 0) {
            return Err(SchedulerError::PastLastStep(i));
        }
        let (sigma, sigma_interpol, sigma_next) = if first_order {
            (
                self.sigmas[i],
                self.sigmas_interpol[i + 1],
                self.sigmas[i + 1],
            )
        } else {
            (self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i])
        };
        check_step_tensors(model_output, sample, &self.first_sample)?;

        // 1. x0, at sigma in the first half and at the midpoint in the second.
        let sigma_input = if first_order { sigma } else { sigma_interpol };
        let pred_original_sample = sigma_pred_original_sample(
            self.config.prediction_type,
            model_output,
            sample,
            sigma_input,
        );
        // 2. The ODE derivative at sigma_input; the first half steps to the
        // midpoint, the second from the first half's sample to sigma_next.
        let derivative = T::linear_combination(&[(1.0, sample), (-1.0, &pred_original_sample)])
            .scale(1.0 / sigma_input);
        let prev_sample = match self.first_sample.take() {
            None => {
                let dt = (sigma_interpol as f32 - sigma as f32) as f64;
                self.first_sample = Some(sample.clone());
                T::linear_combination(&[(1.0, sample), (dt, &derivative)])
            }
            Some(first_sample) => {
                let dt = (sigma_next as f32 - sigma as f32) as f64;
                T::linear_combination(&[(1.0, &first_sample), (dt, &derivative)])
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
    use crate::testing::{abs_sum_mean, dummy_noise_deter, dummy_sample_deter, scaled_loop};
    use crate::{CpuTensor, NoNoise};

    /// The config of diffusers' KDPM2 tests.
    fn published_config() -> Value {
        serde_json::json!({"num_train_timesteps": 1100, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "linear"})
    }

    fn kdpm2(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    /// diffusers' `KDPM2DiscreteSchedulerTest.test_full_loop_*` published values.
    #[test]
    fn published_full_loops() {
        let mut s = kdpm2(published_config());
        s.set_timesteps(10).unwrap();
        let start = dummy_sample_deter().scale(s.init_noise_sigma());
        let ts = s.timesteps().to_vec();
        let (sum, mean) = abs_sum_mean(&scaled_loop(s.as_mut(), start, &ts));
        assert!(
            (sum - 20.4125).abs() < 1e-2 && (mean - 0.0266).abs() < 1e-3,
            "{sum} {mean}"
        );

        let mut config = published_config();
        config["prediction_type"] = "v_prediction".into();
        let mut s = kdpm2(config);
        s.set_timesteps(10).unwrap();
        let start = dummy_sample_deter().scale(s.init_noise_sigma());
        let ts = s.timesteps().to_vec();
        let (sum, mean) = abs_sum_mean(&scaled_loop(s.as_mut(), start, &ts));
        assert!(
            (sum - 4.6934e-07).abs() < 1e-2 && (mean - 6.1112e-10).abs() < 1e-3,
            "{sum} {mean}"
        );

        // test_full_loop_with_noise: img2img from step 8 of 10 via add_noise.
        let mut s = kdpm2(published_config());
        s.set_timesteps(10).unwrap();
        let start = dummy_sample_deter().scale(s.init_noise_sigma());
        let ts = s.timesteps()[8 * s.order()..].to_vec();
        let noisy = s.add_noise(&start, &dummy_noise_deter(), &ts[..1]).unwrap();
        let (sum, mean) = abs_sum_mean(&scaled_loop(s.as_mut(), noisy, &ts));
        assert!(
            (sum - 70408.4062).abs() < 1e-2 && (mean - 91.6776).abs() < 1e-3,
            "{sum} {mean}"
        );
    }

    #[test]
    fn schedule_interleaves_midpoints() {
        let mut s = kdpm2(serde_json::json!({"beta_schedule": "scaled_linear"}));
        s.set_timesteps(3).unwrap();
        let ts = s.timesteps().to_vec();
        // [t0, ti1, t1, ti2, t2]: the midpoint timesteps lie between their neighbours.
        assert_eq!(ts.len(), 5);
        assert_eq!((ts[0], ts[2], ts[4]), (999.0, 499.5, 0.0));
        assert!(ts[1] < ts[0] && ts[1] > ts[2] && ts[3] < ts[2] && ts[3] > ts[4]);
        let sig = s.sigmas().unwrap();
        assert_eq!(sig.len(), 8);
        assert_eq!(sig[1], sig[2]);
        assert_eq!(sig[7], 0.0);
        assert_eq!(s.init_noise_sigma(), sig[0]);
        let mut lead = kdpm2(serde_json::json!({"timestep_spacing": "leading"}));
        lead.set_timesteps(3).unwrap();
        let m = lead.sigmas().unwrap()[0];
        assert!((lead.init_noise_sigma() - (m * m + 1.0).sqrt()).abs() < 1e-5);
    }

    #[test]
    fn keeps_state_between_halves() {
        let mut s =
            KDPM2DiscreteScheduler::<CpuTensor>::new(KDPM2DiscreteConfig::default()).unwrap();
        Scheduler::<CpuTensor>::set_timesteps(&mut s, 3).unwrap();
        let x = dummy_sample_deter();
        let ts = Scheduler::<CpuTensor>::timesteps(&s).to_vec();
        let m = s.scale_model_input(&x, ts[0]).unwrap();
        s.step(&m, ts[0], &x, &StepOptions::default(), &mut NoNoise)
            .unwrap();
        assert!(!s.state_in_first_order());
        s.step(&m, ts[1], &x, &StepOptions::default(), &mut NoNoise)
            .unwrap();
        assert!(s.state_in_first_order());
    }

    #[test]
    fn rejects_bad_config_and_calls() {
        let field_of = |json: Value| match crate::from_config_as::<CpuTensor>(CLASS_NAME, &json) {
            Err(SchedulerError::InvalidValue { field, .. }) => field,
            Err(SchedulerError::InvalidConfig { field, .. }) => field,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted {json}"),
        };
        assert_eq!(
            field_of(serde_json::json!({"prediction_type": "sample"})),
            "prediction_type"
        );
        assert_eq!(
            field_of(serde_json::json!({"beta_schedule": "exp"})),
            "beta_schedule"
        );
        assert_eq!(
            field_of(serde_json::json!({"use_exponential_sigmas": true, "use_beta_sigmas": true})),
            "use_karras_sigmas"
        );
        assert_eq!(
            field_of(serde_json::json!({"beta_start": 0.5, "beta_end": 0.1})),
            "beta_end"
        );

        let mut s = kdpm2(serde_json::json!({}));
        let x = CpuTensor::zeros(vec![1, 2]);
        assert!(matches!(
            s.step(&x, 999.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NotInitialized("step"))
        ));
        assert!(matches!(
            s.scale_model_input(&x, 999.0),
            Err(SchedulerError::NotInitialized(_))
        ));
        let custom = TimestepSpec {
            timesteps: Some(vec![999.0, 500.0]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&custom),
            Err(SchedulerError::Unsupported { .. })
        ));
        assert!(s.set_timesteps(0).is_err());
        s.set_timesteps(2).unwrap();
        let y = CpuTensor::zeros(vec![2, 2]);
        assert!(matches!(
            s.step(&y, 999.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        let inf = CpuTensor::new(vec![f32::INFINITY, 0.0], vec![1, 2]).unwrap();
        assert!(matches!(
            s.step(&x, 999.0, &inf, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NonFinite("sample"))
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
}
