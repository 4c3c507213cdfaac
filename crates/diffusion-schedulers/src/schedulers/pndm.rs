//! `PNDMScheduler`: pseudo numerical methods for diffusion models (Liu et al. 2022).
//!
//! Without `skip_prk_steps` the schedule opens with three Runge-Kutta (PRK)
//! steps of four model evaluations each (12 timesteps with half-step points),
//! then continues with linear multistep (PLMS) steps; `set_timesteps(n)` thus
//! yields `n + 9` timesteps. With `skip_prk_steps` (Stable Diffusion's "PLMS")
//! the multistep method warms up on its own and the schedule holds `n + 1`
//! timesteps (the second-to-last training point is visited twice). Either way
//! diffusers' `order` is 1: one model evaluation per `step`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alpha::{alpha_f32, spaced_timesteps};
use crate::common;
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid, validate_betas};
use crate::error::{Result, SchedulerError};
use crate::fused::{Arith, Kernel};
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

    /// diffusers' `_get_prev_sample`: move `sample` from `t` to `prev_t` along the
    /// noise estimate `model_output` (scalar factors in `f32`, as torch).
    fn prev_sample(&self, sample: &T, t: i64, prev_t: i64, model_output: &T) -> Result<T> {
        let c = self.prev_coefficients(t, prev_t)?;
        let eps = match c.v {
            Some((ca, cb)) => T::linear_combination(&[(ca, model_output), (cb, sample)]),
            None => model_output.clone(),
        };
        Ok(T::linear_combination(&[(c.sample, sample), (-c.eps, &eps)]))
    }

    fn step_prk(&mut self, model_output: &T, t: i64, sample: &T, n: usize) -> Result<T> {
        let train = self.config.num_train_timesteps;
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            (train / n / 2) as i64
        };
        let prev_t = t - diff_to_prev;
        let base_t = self.timesteps[self.counter / 4 * 4] as i64;
        let accumulate = |acc: Option<&T>, c: f64| match acc {
            Some(acc) => T::linear_combination(&[(1.0, acc), (c, model_output)]),
            None => model_output.scale(c),
        };
        let eps = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(accumulate(self.cur_model_output.as_ref(), 1.0 / 6.0));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 | 2 => {
                self.cur_model_output = Some(accumulate(self.cur_model_output.as_ref(), 1.0 / 3.0));
                model_output.clone()
            }
            _ => accumulate(self.cur_model_output.take().as_ref(), 1.0 / 6.0),
        };
        let start = self.cur_sample.as_ref().unwrap_or(sample);
        self.prev_sample(start, base_t, prev_t, &eps)
    }

    /// diffusers' `_get_prev_sample`'s coefficients (`f32`, as torch):
    /// `(sample_coeff, eps_coeff, v)`, `v` the `(sqrt(a_t), sqrt(1 - a_t))`
    /// that turn a v-prediction into noise.
    fn prev_coefficients(&self, t: i64, prev_t: i64) -> Result<PrevCoefficients> {
        let a_t = alpha_f32(&self.alphas_cumprod, t as f64)?;
        let a_prev = if prev_t >= 0 {
            alpha_f32(&self.alphas_cumprod, prev_t as f64)?
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        Ok(PrevCoefficients {
            sample: (a_prev / a_t).sqrt() as f64,
            eps: ((a_prev - a_t) / denom) as f64,
            v: (self.config.prediction_type == PredictionType::VPrediction)
                .then_some((a_t.sqrt() as f64, b_t.sqrt() as f64)),
        })
    }

    /// A PLMS step as one pass: the linear multistep combination of the new
    /// model output and the history, then `_get_prev_sample`. Also returns
    /// the model output's copy the history keeps.
    fn step_plms(&mut self, model_output: &T, t: i64, sample: &T, n: usize) -> Result<T> {
        let ratio = (self.config.num_train_timesteps / n) as i64;
        let (mut t, mut prev_t) = (t, t - ratio);
        // The history after this step, without the new model output (input 0).
        let keep = if self.counter != 1 {
            self.ets.len().min(3)
        } else {
            prev_t = t;
            t += ratio;
            self.ets.len()
        };
        let old = &self.ets[self.ets.len() - keep..];
        let k = keep + usize::from(self.counter != 1);
        let mut inputs = vec![model_output, sample];
        inputs.extend(old.iter());
        // The combination's values, newest first: the model output (input 0),
        // then the history from its newest (input `1 + keep`) back.
        let newest_first = |weights: &[f64]| -> Vec<(usize, f64)> {
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (if i == 0 { 0 } else { 2 + keep - i }, w))
                .collect()
        };
        let weights: Option<(Vec<(usize, f64)>, f64)> = if k == 1 && self.counter == 0 {
            None
        } else if k == 1 && self.counter == 1 {
            // The model output with the history's one entry (not yet joined).
            Some((vec![(0, 1.0), (2, 1.0)], 0.5))
        } else if k < 2 {
            return Err(SchedulerError::InvalidArgument {
                field: "step",
                value: format!("counter {}", self.counter),
                reason: "the multistep history is incomplete".into(),
            });
        } else if k == 2 {
            Some((newest_first(&[3.0, -1.0]), 0.5))
        } else if k == 3 {
            Some((newest_first(&[23.0, -16.0, 5.0]), 1.0 / 12.0))
        } else {
            Some((newest_first(&[55.0, -59.0, 37.0, -9.0]), 1.0 / 24.0))
        };
        // The second step of the start starts again from the first's sample.
        let restart = k == 1 && self.counter == 1 && self.cur_sample.is_some();
        if let (true, Some(s)) = (restart, self.cur_sample.as_ref()) {
            inputs.push(s);
        }
        let kernel = PlmsStep {
            weights,
            start: if restart { inputs.len() - 1 } else { 1 },
            prev: self.prev_coefficients(t, prev_t)?,
        };
        let [prev, copy] = common::run_step(&kernel, &inputs, [true, self.counter != 1])?;
        let prev = common::required(prev)?;
        if self.counter != 1 {
            let copy = common::required(copy)?;
            let drop = self.ets.len() - keep;
            self.ets.drain(..drop);
            self.ets.push(copy);
        }
        if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
        } else if restart {
            self.cur_sample = None;
        }
        Ok(prev)
    }
}

/// [`PNDMScheduler::prev_coefficients`].
#[derive(Debug, Clone, Copy)]
struct PrevCoefficients {
    sample: f64,
    eps: f64,
    v: Option<(f64, f64)>,
}

impl PrevCoefficients {
    /// `_get_prev_sample` of `start` along `eps`.
    #[inline(always)]
    fn apply<A: Arith>(&self, a: &mut A, start: A::V, eps: A::V) -> A::V {
        let eps = match self.v {
            Some((ca, cb)) => a.linear([(ca, eps), (cb, start)]),
            None => eps,
        };
        a.linear([(self.sample, start), (-self.eps, eps)])
    }
}

/// The element-wise part of a PLMS step. Inputs: model output, sample, the
/// history (oldest first), and the restart sample. `weights`: the
/// combination's inputs and coefficients, newest first, and its scale;
/// `None` takes the model output as it is. Outputs: `[prev, model output]`
/// (the history's copy).
struct PlmsStep {
    weights: Option<(Vec<(usize, f64)>, f64)>,
    start: usize,
    prev: PrevCoefficients,
}

impl Kernel<2> for PlmsStep {
    #[inline(always)]
    fn apply<A: Arith>(&self, a: &mut A) -> [A::V; 2] {
        let m = a.input(0);
        let start = a.input(self.start);
        let eps = match &self.weights {
            None => m,
            Some((w, scale)) => {
                let sum = match w[..] {
                    [(i0, w0), (i1, w1)] => {
                        let (e0, e1) = (a.input(i0), a.input(i1));
                        a.linear([(w0, e0), (w1, e1)])
                    }
                    [(i0, w0), (i1, w1), (i2, w2)] => {
                        let (e0, e1, e2) = (a.input(i0), a.input(i1), a.input(i2));
                        a.linear([(w0, e0), (w1, e1), (w2, e2)])
                    }
                    [(i0, w0), (i1, w1), (i2, w2), (i3, w3), ..] => {
                        let (e0, e1) = (a.input(i0), a.input(i1));
                        let (e2, e3) = (a.input(i2), a.input(i3));
                        a.linear([(w0, e0), (w1, e1), (w2, e2), (w3, e3)])
                    }
                    // Built with 2 to 4 terms.
                    _ => m,
                };
                a.scale(sum, *scale)
            }
        };
        [self.prev.apply(a, start, eps), m]
    }
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
        let mut base = spaced_timesteps(
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
        let n = self
            .num_inference_steps
            .ok_or(SchedulerError::NotInitialized("step"))?;
        common::check_step_shapes(model_output, sample)?;
        // Validate t before touching the multistep state.
        alpha_f32(&self.alphas_cumprod, t)?;
        let t = t as i64;
        let prev = if self.counter < self.prk_len {
            // (A PLMS step checks its inputs in its pass.)
            common::check_step_inputs(model_output, sample)?;
            self.step_prk(model_output, t, sample, n)?
        } else {
            self.step_plms(model_output, t, sample, n)?
        };
        self.counter += 1;
        Ok(StepOutput {
            prev_sample: prev,
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
