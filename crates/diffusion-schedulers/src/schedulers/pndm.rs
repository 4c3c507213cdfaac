//! `PNDMScheduler`: pseudo numerical methods for diffusion models (Liu et al. 2022).
//!
//! Without `skip_prk_steps` the schedule opens with three Runge-Kutta (PRK)
//! steps of four model evaluations each (12 timesteps with half-step points),
//! then continues with linear multistep (PLMS) steps; `set_timesteps(n)` thus
//! yields `n + 9` timesteps. With `skip_prk_steps` (Stable Diffusion's "PLMS")
//! the multistep method warms up on its own and the schedule holds `n + 1`
//! timesteps (the second-to-last training point is visited twice). Either way
//! diffusers' `order` is 1: one model evaluation per `step`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alpha::{alpha_f32, integer_timesteps};
use crate::common;
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid, validate_betas};
use crate::error::{Result, SchedulerError};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec, alpha_add_noise};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "PNDMScheduler";

/// Number of past model outputs the PLMS update combines.
const PNDM_ORDER: usize = 4;

/// diffusers' `PNDMScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PNDMConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub skip_prk_steps: bool,
    pub set_alpha_to_one: bool,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Default for PNDMConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            skip_prk_steps: false,
            set_alpha_to_one: false,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
        }
    }
}

/// The PNDM sampler; keeps the recent model outputs, hence generic over the tensor.
#[derive(Debug, Clone)]
pub struct PNDMScheduler<T> {
    config: PNDMConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f32,
    num_inference_steps: Option<usize>,
    /// Number of PRK timesteps at the head of `timesteps` (0 or 12).
    prk_len: usize,
    timesteps: Vec<f64>,
    counter: usize,
    /// Model outputs kept for the multistep formula (diffusers' `ets`).
    ets: Vec<T>,
    /// Running Runge-Kutta combination of the current PRK step.
    cur_model_output: Option<T>,
    /// The sample a PRK step (or the PLMS warm-up pair) starts from.
    cur_sample: Option<T>,
    begin_index: Option<usize>,
}

impl<T: SchedulerTensor> PNDMScheduler<T> {
    pub fn new(config: PNDMConfig) -> Result<Self> {
        validate_betas(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
        )?;
        if config.beta_schedule == BetaSchedule::Sigmoid && config.trained_betas.is_none() {
            return Err(invalid(
                "beta_schedule",
                "sigmoid",
                "not implemented for PNDMScheduler",
            ));
        }
        if !matches!(
            config.prediction_type,
            PredictionType::Epsilon | PredictionType::VPrediction
        ) {
            return Err(invalid(
                "prediction_type",
                serde_json::to_value(config.prediction_type)
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .unwrap_or_default(),
                "PNDMScheduler supports `epsilon` and `v_prediction` only",
            ));
        }
        let (_, alphas_cumprod) = common::alphas_cumprod(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            false,
        );
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0] as f32
        };
        Ok(Self {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: None,
            prk_len: 0,
            timesteps: Vec::new(),
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
            begin_index: None,
        })
    }

    pub fn config(&self) -> &PNDMConfig {
        &self.config
    }

    /// `alphas_cumprod` at `timestep` and at `prev_timestep` (before 0,
    /// `final_alpha_cumprod`), in `f32` as diffusers' 0-dim tensors.
    fn alphas(&self, timestep: i64, prev_timestep: i64) -> Result<(f32, f32)> {
        let alpha_prod_t = alpha_f32(&self.alphas_cumprod, timestep as f64)?;
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            alpha_f32(&self.alphas_cumprod, prev_timestep as f64)?
        } else {
            self.final_alpha_cumprod
        };
        Ok((alpha_prod_t, alpha_prod_t_prev))
    }

    /// diffusers' `_get_prev_sample`: formula (9) of the PNDM paper, moving
    /// `sample` from the timestep of `alphas.0` to that of `alphas.1` along the
    /// model output (scalar factors in `f32`, as torch).
    fn get_prev_sample(&self, sample: &T, alphas: (f32, f32), model_output: &T) -> T {
        let (alpha_prod_t, alpha_prod_t_prev) = alphas;
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let model_output = match self.config.prediction_type {
            PredictionType::VPrediction => Cow::Owned(T::linear_combination(&[
                (alpha_prod_t.sqrt() as f64, model_output),
                (beta_prod_t.sqrt() as f64, sample),
            ])),
            _ => Cow::Borrowed(model_output),
        };
        // the factor of x_t in formula (9)
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        // the denominator of e_theta(x_t, t) in formula (9)
        let model_output_denom_coeff = alpha_prod_t * beta_prod_t_prev.sqrt()
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        // full formula (9)
        T::linear_combination(&[
            (sample_coeff as f64, sample),
            (
                -(((alpha_prod_t_prev - alpha_prod_t) / model_output_denom_coeff) as f64),
                &*model_output,
            ),
        ])
    }

    /// diffusers' `step_prk`: one of the four evaluations of a Runge-Kutta step.
    fn step_prk(
        &mut self,
        model_output: &T,
        timestep: i64,
        sample: &T,
        num_inference_steps: usize,
    ) -> Result<T> {
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            (self.config.num_train_timesteps / num_inference_steps / 2) as i64
        };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.timesteps[self.counter / 4 * 4] as i64;
        let alphas = self.alphas(timestep, prev_timestep)?;
        let cur_sample = if self.counter.is_multiple_of(4) {
            sample
        } else {
            self.cur_sample.as_ref().unwrap_or(sample)
        };
        check_state_shapes(sample, self.cur_model_output.iter().chain([cur_sample]))?;
        common::check_finite(model_output, sample)?;

        // diffusers' `cur_model_output` starts at 0 (here `None`) and goes back
        // to 0 after the fourth evaluation.
        let cur_model_output_plus = |c: f64| match &self.cur_model_output {
            Some(cur) => T::linear_combination(&[(1.0, cur), (c, model_output)]),
            None => model_output.scale(c),
        };
        let (cur_model_output, prk_output) = match self.counter % 4 {
            0 => (
                Some(cur_model_output_plus(1.0 / 6.0)),
                Cow::Borrowed(model_output),
            ),
            1 | 2 => (
                Some(cur_model_output_plus(1.0 / 3.0)),
                Cow::Borrowed(model_output),
            ),
            _ => (None, Cow::Owned(cur_model_output_plus(1.0 / 6.0))),
        };
        let prev_sample = self.get_prev_sample(cur_sample, alphas, &prk_output);

        if self.counter.is_multiple_of(4) {
            self.ets.push(model_output.clone());
            self.cur_sample = Some(sample.clone());
        }
        self.cur_model_output = cur_model_output;
        Ok(prev_sample)
    }

    /// diffusers' `step_plms`: the linear multistep combination of the model
    /// outputs (`ets`), then `_get_prev_sample`.
    fn step_plms(
        &mut self,
        model_output: &T,
        timestep: i64,
        sample: &T,
        num_inference_steps: usize,
    ) -> Result<T> {
        let step = (self.config.num_train_timesteps / num_inference_steps) as i64;
        let (mut timestep, mut prev_timestep) = (timestep, timestep - step);
        // diffusers' `ets` after this step, oldest first: the last three model
        // outputs and this one; the second step (which evaluates the first
        // step's target point again) adds none.
        let mut ets: Vec<&T> = Vec::with_capacity(PNDM_ORDER);
        if self.counter != 1 {
            ets.extend(&self.ets[self.ets.len().saturating_sub(3)..]);
            ets.push(model_output);
        } else {
            ets.extend(&self.ets);
            prev_timestep = timestep;
            timestep += step;
        }
        let alphas = self.alphas(timestep, prev_timestep)?;
        // The second step starts again from the first one's sample.
        let second_step = ets.len() == 1 && self.counter == 1;
        let cur_sample = match &self.cur_sample {
            Some(cur_sample) if second_step => cur_sample,
            _ => sample,
        };
        check_state_shapes(sample, ets.iter().copied().chain([cur_sample]))?;
        common::check_finite(model_output, sample)?;

        // e1 is ets[-1] (the newest), e2 ets[-2], ...
        let plms_output = match ets[..] {
            [.., e4, e3, e2, e1] => Cow::Owned(
                T::linear_combination(&[(55.0, e1), (-59.0, e2), (37.0, e3), (-9.0, e4)])
                    .scale(1.0 / 24.0),
            ),
            [e3, e2, e1] => Cow::Owned(
                T::linear_combination(&[(23.0, e1), (-16.0, e2), (5.0, e3)]).scale(1.0 / 12.0),
            ),
            [e2, e1] => Cow::Owned(T::linear_combination(&[(3.0, e1), (-1.0, e2)]).scale(0.5)),
            [e1] if second_step => {
                Cow::Owned(T::linear_combination(&[(1.0, model_output), (1.0, e1)]).scale(0.5))
            }
            // The first step: the model output as it is.
            _ => Cow::Borrowed(model_output),
        };
        let first_step = ets.len() == 1 && self.counter == 0;
        let prev_sample = self.get_prev_sample(cur_sample, alphas, &plms_output);

        if self.counter != 1 {
            let drop = self.ets.len().saturating_sub(3);
            self.ets.drain(..drop);
            self.ets.push(model_output.clone());
        }
        if first_step {
            self.cur_sample = Some(sample.clone());
        } else if second_step {
            self.cur_sample = None;
        }
        Ok(prev_sample)
    }
}

/// Refuse a step whose sample's shape differs from that of the state it reads
/// from earlier steps.
fn check_state_shapes<'a, T: SchedulerTensor + 'a>(
    sample: &T,
    state: impl IntoIterator<Item = &'a T>,
) -> Result<()> {
    for kept in state {
        if kept.shape() != sample.shape() {
            return Err(SchedulerError::ShapeMismatch {
                what: "state from an earlier step",
                expected: sample.shape(),
                got: kept.shape(),
            });
        }
    }
    Ok(())
}

pub(crate) fn build<T: SchedulerTensor + Send + 'static>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, PNDMConfig, PNDMScheduler<T>>(json, PNDMScheduler::<T>::new)
}

impl<T: SchedulerTensor + Send> Scheduler<T> for PNDMScheduler<T> {
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
        if !self.config.skip_prk_steps && n < PNDM_ORDER {
            return Err(SchedulerError::InvalidArgument {
                field: "num_inference_steps",
                value: n.to_string(),
                reason: format!(
                    "must be >= {PNDM_ORDER} when skip_prk_steps is false (the Runge-Kutta \
                     warm-up uses the last {PNDM_ORDER} timesteps)"
                ),
            });
        }
        // diffusers lays the base schedule out ascending; it is the DDPM layout reversed.
        let mut base = integer_timesteps(
            self.config.timestep_spacing,
            n,
            train,
            self.config.steps_offset,
        )?;
        base.reverse();
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.config.skip_prk_steps {
            // [t_0, .., t_{n-2}, t_{n-2}, t_{n-1}] reversed (for n = 1 just [t_0]).
            let mut plms: Vec<i64> = base[..n - 1].to_vec();
            if n >= 2 {
                plms.push(base[n - 2]);
            }
            plms.push(base[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            let half = (train / n / 2) as i64;
            let tail = &base[n - PNDM_ORDER..];
            let pairs: Vec<i64> = tail.iter().flat_map(|&t| [t, t + half]).collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1]
                .iter()
                .flat_map(|&t| [t, t])
                .collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = base[..n - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        if let Some(&bad) = prk.iter().find(|&&t| t as usize >= train) {
            return Err(invalid(
                "steps_offset",
                self.config.steps_offset,
                format!("puts Runge-Kutta timestep {bad} outside [0, {train})"),
            ));
        }
        self.prk_len = prk.len();
        self.timesteps = prk.into_iter().chain(plms).map(|t| t as f64).collect();
        self.num_inference_steps = Some(n);
        self.counter = 0;
        self.ets.clear();
        self.cur_model_output = None;
        self.cur_sample = None;
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
        _options: &StepOptions,
        _noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>> {
        let num_inference_steps = self
            .num_inference_steps
            .ok_or(SchedulerError::NotInitialized("step"))?;
        common::check_step_shapes(model_output, sample)?;
        // A Runge-Kutta step reads `alphas_cumprod` at schedule entries only:
        // refuse an unknown `t` itself.
        alpha_f32(&self.alphas_cumprod, t)?;
        let t = t as i64;
        let prev_sample = if self.counter < self.prk_len {
            self.step_prk(model_output, t, sample, num_inference_steps)?
        } else {
            self.step_plms(model_output, t, sample, num_inference_steps)?
        };
        self.counter += 1;
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: None,
        })
    }

    fn add_noise(&self, original: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        alpha_add_noise(&self.alphas_cumprod, original, noise, timesteps)
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
    use crate::testing::{abs_sum_mean, dummy_sample_deter, full_loop};
    use crate::{CpuTensor, NoNoise};
    use serde_json::json;

    fn pndm(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    fn run(config: Value) -> (f64, f64) {
        let mut s = pndm(config);
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

    /// diffusers' `PNDMSchedulerTest.test_full_loop_*` published values.
    #[test]
    fn published_full_loops() {
        let base = json!({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "linear"});
        let (sum, mean) = run(base.clone());
        assert!(
            (sum - 198.1318).abs() < 1e-2 && (mean - 0.2580).abs() < 1e-3,
            "{sum} {mean}"
        );
        let mut v = base.clone();
        v["prediction_type"] = "v_prediction".into();
        let (sum, mean) = run(v);
        assert!(
            (sum - 67.3986).abs() < 1e-2 && (mean - 0.0878).abs() < 1e-3,
            "{sum} {mean}"
        );
        let mut a = base.clone();
        a["beta_start"] = 0.01.into();
        a["set_alpha_to_one"] = true.into();
        let (sum, mean) = run(a.clone());
        assert!(
            (sum - 230.0399).abs() < 1e-2 && (mean - 0.2995).abs() < 1e-3,
            "{sum} {mean}"
        );
        a["set_alpha_to_one"] = false.into();
        let (sum, mean) = run(a);
        assert!(
            (sum - 186.9482).abs() < 1e-2 && (mean - 0.2434).abs() < 1e-3,
            "{sum} {mean}"
        );
    }

    /// diffusers' `test_steps_offset` schedule (PRK adds nine timesteps).
    #[test]
    fn published_timesteps() {
        let mut s = pndm(json!({"steps_offset": 1}));
        s.set_timesteps(10).unwrap();
        let expected = [
            901, 851, 851, 801, 801, 751, 751, 701, 701, 651, 651, 601, 601, 501, 401, 301, 201,
            101, 1,
        ];
        assert_eq!(
            s.timesteps(),
            expected.iter().map(|&t| t as f64).collect::<Vec<_>>()
        );
        let mut p = pndm(json!({"skip_prk_steps": true}));
        p.set_timesteps(10).unwrap();
        assert_eq!(
            p.timesteps(),
            [900, 800, 800, 700, 600, 500, 400, 300, 200, 100, 0]
                .iter()
                .map(|&t| t as f64)
                .collect::<Vec<_>>()
        );
        p.set_timesteps(1).unwrap();
        assert_eq!(p.timesteps(), &[0.0]);
    }

    /// A step whose sample's shape differs from the kept model outputs (PLMS)
    /// or the running Runge-Kutta sum (PRK) is refused, and the run goes on as
    /// if it had not been tried.
    #[test]
    fn refuses_a_shape_change_mid_run() {
        let x = CpuTensor::new(vec![0.5, -0.25, 1.0], vec![1, 3]).unwrap();
        let other = CpuTensor::zeros(vec![3, 1]);
        let opts = StepOptions::default();
        for config in [json!({"skip_prk_steps": true}), json!({})] {
            let run = |fail_at: Option<usize>| {
                let mut s = pndm(config.clone());
                s.set_timesteps(5).unwrap();
                let mut sample = x.clone();
                for (i, t) in s.timesteps().to_vec().into_iter().enumerate() {
                    if fail_at == Some(i) {
                        let err = s.step(&other, t, &other, &opts, &mut NoNoise).unwrap_err();
                        assert!(
                            matches!(err, SchedulerError::ShapeMismatch { .. }),
                            "{config} step {i}: {err}"
                        );
                    }
                    let m = sample.scale(0.3);
                    sample = s
                        .step(&m, t, &sample, &opts, &mut NoNoise)
                        .unwrap()
                        .prev_sample;
                }
                sample
            };
            let clean = run(None);
            for at in [1, 2, 5] {
                assert_eq!(run(Some(at)), clean, "{config} failure at step {at}");
            }
        }
    }

    #[test]
    fn rejects_bad_configs_and_calls() {
        for (cfg, field) in [
            (json!({"prediction_type": "sample"}), "prediction_type"),
            (json!({"beta_schedule": "sigmoid"}), "beta_schedule"),
            (json!({"beta_end": 2.0}), "beta_end"),
        ] {
            let err = crate::from_config_as::<CpuTensor>(CLASS_NAME, &cfg).unwrap_err();
            assert!(
                matches!(&err, SchedulerError::InvalidValue { field: f, .. } if f == field),
                "{err}"
            );
        }
        let mut s = pndm(json!({}));
        let x = CpuTensor::zeros(vec![1, 2]);
        let opts = StepOptions::default();
        assert!(matches!(
            s.step(&x, 10.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NotInitialized(_))
        ));
        for n in [0, 1, 2, 3, 1001] {
            assert!(s.set_timesteps(n).is_err(), "{n}");
        }
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps().len(), 4 + 9);
        let custom = TimestepSpec {
            timesteps: Some(vec![10.0, 0.0]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&custom),
            Err(SchedulerError::Unsupported { .. })
        ));
        let y = CpuTensor::zeros(vec![2, 1]);
        let inf = CpuTensor::new(vec![f32::INFINITY, 0.0], vec![1, 2]).unwrap();
        assert!(matches!(
            s.step(&x, 750.0, &y, &opts, &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            s.step(&inf, 750.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NonFinite(_))
        ));
        assert!(matches!(
            s.step(&x, -1.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
        let mut off = pndm(json!({"steps_offset": 60, "skip_prk_steps": true}));
        assert!(off.set_timesteps(1000).is_err());
    }
}
