//! `DEISMultistepScheduler`: diffusion exponential integrator sampler
//! (Zhang & Chen 2022), the log-rho multistep variant of orders 1 to 3.
//!
//! Integrates the noise prediction in `rho = sigma / alpha` with polynomial
//! extrapolation in `log(rho)` over the last `solver_order` model outputs. The
//! per-step scalars are evaluated in `f32`, in diffusers' order (see
//! [`super::dpmsolver_multistep`]; the shared schedule helpers are in
//! `crate::multistep`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex};
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid, validate_betas};
use crate::error::{Result, SchedulerError};
use crate::multistep::{
    Conversion, Form, MultistepSolverType, alpha_sigma, convert_model_output, flow_sigmas,
    lambda_f32, sigma_add_noise, solver_timesteps, sub, validate_thresholding,
};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "DEISMultistepScheduler";

/// `algorithm_type` of DEIS; DPM-Solver's names load as `deis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeisAlgorithmType {
    #[serde(rename = "deis")]
    Deis,
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
}

/// diffusers' `DEISMultistepScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DEISMultistepConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub algorithm_type: DeisAlgorithmType,
    pub solver_type: MultistepSolverType,
    pub lower_order_final: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub use_dynamic_shifting: bool,
    pub time_shift_type: String,
}

impl Default for DEISMultistepConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            algorithm_type: DeisAlgorithmType::Deis,
            solver_type: MultistepSolverType::Logrho,
            lower_order_final: true,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            use_dynamic_shifting: false,
            time_shift_type: "exponential".into(),
        }
    }
}

/// The DEIS multistep sampler.
#[derive(Debug, Clone)]
pub struct DEISMultistepScheduler<T> {
    config: DEISMultistepConfig,
    alphas_cumprod: Vec<f64>,
    train_sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    model_outputs: Vec<Option<T>>,
    lower_order_nums: usize,
    index: StepIndex,
}

/// `np.log` of a `float32`, as numpy's SIMD loop (AVX2/AVX512F) computes it:
/// `x = m * 2^e` with `m` in `(sqrt(1/2), sqrt(2)]`, `log(m)` from a (5, 5)
/// rational approximation in `m - 1` evaluated with fused multiply-adds, plus
/// `e * ln 2`. diffusers evaluates the DEIS coefficients with `np.log`, and those
/// coefficients cancel (differences of terms ~100x larger), so the last bit of
/// each logarithm matters; numpy's result differs from the correctly rounded
/// one for a few percent of inputs.
#[allow(clippy::excessive_precision)]
fn ln(x: f32) -> f32 {
    const P: [f32; 6] = [
        0.0,
        9.999_999_999_999_998e-1,
        2.112_677_543_073_053,
        1.480_000_633_576_506_6,
        3.808_837_741_388_408e-1,
        2.589_979_117_907_922_7e-2,
    ];
    const Q: [f32; 6] = [
        1.0,
        2.612_677_543_073_109,
        2.453_006_071_784_736_3,
        9.864_942_958_519_419e-1,
        1.546_476_374_983_906_7e-1,
        5.875_095_403_124_574e-3,
    ];
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f32::INFINITY;
    }
    // Normalise subnormals first (exact scaling by 2^100).
    let (x, bias) = if x < f32::MIN_POSITIVE {
        (x * f32::from_bits(0x7180_0000), 100.0f32)
    } else {
        (x, 0.0)
    };
    let bits = x.to_bits();
    let mut exponent = ((bits >> 23) as i32 - 126) as f32 - bias;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | (126 << 23));
    if m <= std::f32::consts::FRAC_1_SQRT_2 {
        m = m + m;
        exponent -= 1.0;
    }
    let y = m - 1.0;
    let mut num = P[5].mul_add(y, P[4]);
    let mut den = Q[5].mul_add(y, Q[4]);
    for k in (0..4).rev() {
        num = num.mul_add(y, P[k]);
        den = den.mul_add(y, Q[k]);
    }
    exponent.mul_add(std::f32::consts::LN_2, num / den)
}

/// Integral of the first-order Lagrange basis in `log(rho)`:
/// `t * (log t - log c - 1) / (log b - log c)`, in diffusers' `f32` order.
fn ind_fn2(t: f32, b: f32, c: f32) -> f32 {
    t * (-ln(c) + ln(t) - 1.0) / (ln(b) - ln(c))
}

/// Integral of the second-order Lagrange basis in `log(rho)`, in diffusers' `f32` order.
fn ind_fn3(t: f32, b: f32, c: f32, d: f32) -> f32 {
    let (lt, lc, ld) = (ln(t), ln(c), ln(d));
    let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    let denominator = (ln(b) - lc) * (ln(b) - ld);
    numerator / denominator
}

impl<T: SchedulerTensor> DEISMultistepScheduler<T> {
    pub fn new(mut config: DEISMultistepConfig) -> Result<Self> {
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
                "not implemented for DEISMultistepScheduler",
            ));
        }
        let sigma_flags = [
            config.use_beta_sigmas,
            config.use_exponential_sigmas,
            config.use_karras_sigmas,
        ];
        if sigma_flags.iter().filter(|&&f| f).count() > 1 {
            return Err(invalid(
                "use_karras_sigmas",
                "true",
                "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be set",
            ));
        }
        if !(1..=3).contains(&config.solver_order) {
            return Err(invalid(
                "solver_order",
                config.solver_order,
                "must be 1, 2 or 3",
            ));
        }
        validate_thresholding(
            config.thresholding,
            config.dynamic_thresholding_ratio,
            config.sample_max_value,
        )?;
        if config.use_flow_sigmas && !(config.flow_shift.is_finite() && config.flow_shift > 0.0) {
            return Err(invalid("flow_shift", config.flow_shift, "must be positive"));
        }
        config.algorithm_type = DeisAlgorithmType::Deis;
        config.solver_type = MultistepSolverType::Logrho;

        let (_, alphas_cumprod) = common::alphas_cumprod(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            false,
        );
        let train_sigmas = common::sigmas_from_alphas_cumprod(&alphas_cumprod);
        let timesteps = (0..config.num_train_timesteps)
            .rev()
            .map(|t| t as f64)
            .collect();
        let model_outputs = vec![None; config.solver_order];
        Ok(Self {
            config,
            alphas_cumprod,
            sigmas: train_sigmas.clone(),
            train_sigmas,
            timesteps,
            num_inference_steps: None,
            model_outputs,
            lower_order_nums: 0,
            index: StepIndex::default(),
        })
    }

    pub fn config(&self) -> &DEISMultistepConfig {
        &self.config
    }

    /// The cumulative alphas of the training schedule.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    fn alpha_sigma(&self, idx: usize) -> (f32, f32) {
        alpha_sigma(self.sigmas[idx] as f32, self.config.use_flow_sigmas)
    }

    /// diffusers' `convert_model_output`: DEIS integrates the noise implied
    /// by the (thresholded) data prediction `x0_pred`.
    fn convert_model_output(&self, model_output: &T, sample: &T, step_index: usize) -> Result<T> {
        let c = &self.config;
        let conversion = Conversion {
            prediction_type: c.prediction_type,
            use_flow_sigmas: c.use_flow_sigmas,
            thresholding: c
                .thresholding
                .then_some((c.dynamic_thresholding_ratio, c.sample_max_value)),
            form: Form::ScaledFirst,
        };
        let sigma = self.sigmas[step_index] as f32;
        let x0_pred = convert_model_output(model_output, sample, sigma, true, &conversion)?;
        let (alpha_t, sigma_t) = alpha_sigma(sigma, c.use_flow_sigmas);
        // (sample - alpha_t * x0_pred) / sigma_t
        Ok(sub(sample, &x0_pred.scale(f64::from(alpha_t))).scale(1.0 / f64::from(sigma_t)))
    }

    /// `(alpha, rho = sigma / alpha)` at sigma `idx`.
    fn rho(&self, idx: usize) -> (f32, f32) {
        let (alpha, sigma) = self.alpha_sigma(idx);
        (alpha, sigma / alpha)
    }

    /// diffusers' `deis_first_order_update` (the scalars in `f32`, as
    /// diffusers evaluates them).
    fn deis_first_order_update(&self, model_output: &T, sample: &T, step_index: usize) -> T {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index + 1);
        let (alpha_s, sigma_s) = self.alpha_sigma(step_index);
        let lambda_t = lambda_f32(alpha_t, sigma_t);
        let lambda_s = lambda_f32(alpha_s, sigma_s);
        let h = lambda_t - lambda_s;
        T::linear_combination(&[
            (f64::from(alpha_t / alpha_s), sample),
            (-f64::from(sigma_t * (h.exp() - 1.0)), model_output),
        ])
    }

    /// diffusers' `multistep_deis_second_order_update`, `m0` this step's
    /// converted output and `m1` the previous one.
    fn multistep_deis_second_order_update(
        &self,
        [m0, m1]: [&T; 2],
        sample: &T,
        step_index: usize,
    ) -> T {
        let (alpha_t, rho_t) = self.rho(step_index + 1);
        let (alpha_s0, rho_s0) = self.rho(step_index);
        let (_, rho_s1) = self.rho(step_index - 1);
        let coef1 = ind_fn2(rho_t, rho_s0, rho_s1) - ind_fn2(rho_s0, rho_s0, rho_s1);
        let coef2 = ind_fn2(rho_t, rho_s1, rho_s0) - ind_fn2(rho_s0, rho_s1, rho_s0);
        // alpha_t * (sample / alpha_s0 + coef1 * m0 + coef2 * m1)
        T::linear_combination(&[
            (1.0 / f64::from(alpha_s0), sample),
            (f64::from(coef1), m0),
            (f64::from(coef2), m1),
        ])
        .scale(f64::from(alpha_t))
    }

    /// diffusers' `multistep_deis_third_order_update`, `m0` this step's
    /// converted output, `m1` and `m2` the previous ones.
    fn multistep_deis_third_order_update(
        &self,
        [m0, m1, m2]: [&T; 3],
        sample: &T,
        step_index: usize,
    ) -> T {
        let (alpha_t, rho_t) = self.rho(step_index + 1);
        let (alpha_s0, rho_s0) = self.rho(step_index);
        let (_, rho_s1) = self.rho(step_index - 1);
        let (_, rho_s2) = self.rho(step_index - 2);
        let coef1 =
            ind_fn3(rho_t, rho_s0, rho_s1, rho_s2) - ind_fn3(rho_s0, rho_s0, rho_s1, rho_s2);
        let coef2 =
            ind_fn3(rho_t, rho_s1, rho_s2, rho_s0) - ind_fn3(rho_s0, rho_s1, rho_s2, rho_s0);
        let coef3 =
            ind_fn3(rho_t, rho_s2, rho_s0, rho_s1) - ind_fn3(rho_s0, rho_s2, rho_s0, rho_s1);
        // alpha_t * (sample / alpha_s0 + coef1 * m0 + coef2 * m1 + coef3 * m2)
        T::linear_combination(&[
            (1.0 / f64::from(alpha_s0), sample),
            (f64::from(coef1), m0),
            (f64::from(coef2), m1),
            (f64::from(coef3), m2),
        ])
        .scale(f64::from(alpha_t))
    }
}

pub(crate) fn build<T: SchedulerTensor + Send + 'static>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, DEISMultistepConfig, DEISMultistepScheduler<T>>(
        json,
        DEISMultistepScheduler::new,
    )
}

impl<T: SchedulerTensor + Send> Scheduler<T> for DEISMultistepScheduler<T> {
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
        if spec.timesteps.is_some()
            || spec.sigmas.is_some()
            || spec.original_inference_steps.is_some()
            || spec.strength.is_some()
        {
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: "custom timesteps/sigmas (or original_inference_steps/strength)".into(),
            });
        }
        let n = spec
            .num_inference_steps
            .ok_or(SchedulerError::InvalidArgument {
                field: "num_inference_steps",
                value: "None".into(),
                reason: "required".into(),
            })?;
        let c = &self.config;
        let train = c.num_train_timesteps;
        common::check_num_steps(n, train)?;
        let flow_shift = match spec.mu {
            Some(mu) => {
                if !(c.use_dynamic_shifting && c.time_shift_type == "exponential") {
                    return Err(SchedulerError::InvalidArgument {
                        field: "mu",
                        value: mu.to_string(),
                        reason: "needs use_dynamic_shifting and time_shift_type `exponential`"
                            .into(),
                    });
                }
                if !mu.is_finite() {
                    return Err(SchedulerError::InvalidArgument {
                        field: "mu",
                        value: mu.to_string(),
                        reason: "must be finite".into(),
                    });
                }
                mu.exp()
            }
            None => c.flow_shift,
        };
        let base = solver_timesteps(c.timestep_spacing, n, train, train, c.steps_offset);
        let table = &self.train_sigmas;
        let log_sigmas = common::log_table(table);
        let (sigma_min, sigma_max) = (table[0], table[train - 1]);
        let to_t = |sigmas: &[f64], round: bool| -> Vec<i64> {
            sigmas
                .iter()
                .map(|&s| {
                    let t = common::sigma_to_t(s, &log_sigmas);
                    let t = if round { common::round_half_even(t) } else { t };
                    t.trunc() as i64
                })
                .collect()
        };
        // The sigma schedules repeat their last sigma as the final one; the default
        // schedule ends at the smallest training sigma.
        let (mut sigmas, timesteps, last): (Vec<f64>, Vec<i64>, Option<f64>) =
            if c.use_karras_sigmas {
                let s = common::karras_sigmas(sigma_min, sigma_max, n);
                let t = to_t(&s, true);
                (s, t, None)
            } else if c.use_exponential_sigmas {
                let s = common::exponential_sigmas(sigma_min, sigma_max, n);
                let t = to_t(&s, false);
                (s, t, None)
            } else if c.use_beta_sigmas {
                let s = common::beta_sigmas(sigma_min, sigma_max, n);
                let t = to_t(&s, false);
                (s, t, None)
            } else if c.use_flow_sigmas {
                let s = flow_sigmas(n, train, flow_shift);
                let t = s
                    .iter()
                    .map(|s| (s * train as f64).trunc() as i64)
                    .collect();
                (s, t, None)
            } else {
                let grid: Vec<f64> = (0..train).map(|i| i as f64).collect();
                let s = base
                    .iter()
                    .map(|&t| common::interp(t as f64, &grid, table))
                    .collect();
                (s, base, Some(sigma_min))
            };
        let last = last.unwrap_or_else(|| *sigmas.last().expect("n >= 1"));
        sigmas.push(last);
        self.sigmas = sigmas.into_iter().map(common::f32r).collect();
        self.timesteps = timesteps.into_iter().map(|t| t as f64).collect();
        self.num_inference_steps = Some(self.timesteps.len());
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
        self.index.reset();
        self.config.flow_shift = flow_shift;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn step(
        &mut self,
        model_output: &T,
        t: f64,
        sample: &T,
        _options: &StepOptions,
        _noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("step"));
        }
        common::check_step_shapes(model_output, sample)?;
        let step_index = self.index.peek(t, &self.timesteps)?;
        let n = self.timesteps.len();
        if step_index >= n {
            return Err(SchedulerError::PastLastStep(step_index));
        }
        let c = &self.config;
        let lower_order_final = step_index == n - 1 && c.lower_order_final && n < 15;
        let lower_order_second = step_index + 2 == n && c.lower_order_final && n < 15;
        let order = if c.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if c.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        if step_index + 1 < order {
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: format!(
                    "an order-{order} step at step index {step_index} (set_begin_index changed mid-run?)"
                ),
            });
        }
        let converted = self.convert_model_output(model_output, sample, step_index)?;
        // The converted outputs of the previous steps, newest first.
        let k = self.model_outputs.len();
        let previous = (1..order)
            .map(|back| self.model_outputs[k - back].as_ref())
            .collect::<Option<Vec<&T>>>()
            .ok_or(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: "a multistep update without history".into(),
            })?;
        common::check_state_shapes(model_output, previous.iter().copied())?;
        common::check_finite(model_output, sample)?;
        let prev_sample = match previous[..] {
            [] => self.deis_first_order_update(&converted, sample, step_index),
            [m1] => self.multistep_deis_second_order_update([&converted, m1], sample, step_index),
            [m1, m2, ..] => {
                self.multistep_deis_third_order_update([&converted, m1, m2], sample, step_index)
            }
        };
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));
        if self.lower_order_nums < self.config.solver_order {
            self.lower_order_nums += 1;
        }
        self.index.step_index = Some(step_index + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: None,
        })
    }

    fn add_noise(&self, original: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        sigma_add_noise(
            &self.index,
            &self.timesteps,
            &self.sigmas,
            self.config.use_flow_sigmas,
            original,
            noise,
            timesteps,
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
    use crate::testing::{abs_sum_mean, dummy_model, dummy_sample_deter, full_loop};
    use crate::{CpuTensor, NoNoise};
    use serde_json::json;

    fn build_cpu(config: Value) -> Result<Box<dyn Scheduler<CpuTensor>>> {
        Ok(crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)?.scheduler)
    }

    /// diffusers' `DEISMultistepSchedulerTest.get_scheduler_config`.
    fn published_config() -> Value {
        json!({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "linear", "solver_order": 2})
    }

    fn mean_of_loop(config: Value) -> f64 {
        let mut s = build_cpu(config).unwrap();
        s.set_timesteps(10).unwrap();
        let x = full_loop(
            s.as_mut(),
            &dummy_sample_deter(),
            &StepOptions::default(),
            &mut NoNoise,
        )
        .unwrap();
        abs_sum_mean(&x).1
    }

    /// `test_full_loop_no_noise` / `test_full_loop_with_v_prediction` of diffusers'
    /// `test_scheduler_deis.py`.
    #[test]
    fn published_full_loops() {
        let mean = mean_of_loop(published_config());
        assert!((mean - 0.23916).abs() < 1e-3, "{mean}");
        let mut v = published_config();
        v["prediction_type"] = "v_prediction".into();
        let mean = mean_of_loop(v);
        assert!((mean - 0.091).abs() < 1e-3, "{mean}");
    }

    /// `test_switch` without the classes in between: DEIS -> DPM-Solver++ config -> DEIS.
    #[test]
    fn config_round_trip_through_dpm_solver() {
        let deis = build_cpu(published_config()).unwrap();
        let dpm_config = crate::from_config_as::<CpuTensor>(
            "DPMSolverMultistepScheduler",
            &json!({"algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                "beta_schedule": "linear", "solver_order": 2}),
        )
        .unwrap()
        .scheduler
        .config();
        let back = build_cpu(dpm_config).unwrap();
        assert_eq!(back.config()["algorithm_type"], "deis");
        assert_eq!(back.config()["solver_type"], "logrho");
        // Equal but for which fields were given explicitly (`_use_default_values`).
        let strip = |mut v: serde_json::Value| {
            v.as_object_mut().map(|m| m.remove("_use_default_values"));
            v
        };
        assert_eq!(strip(deis.config()), strip(back.config()));
        let mean = mean_of_loop(back.config());
        assert!((mean - 0.23916).abs() < 1e-3, "{mean}");
    }

    /// `test_full_loop_with_noise`: start at step 8 via `add_noise`.
    #[test]
    fn published_full_loop_with_noise() {
        let mut s = build_cpu(published_config()).unwrap();
        s.set_timesteps(10).unwrap();
        let timesteps = s.timesteps()[8..].to_vec();
        let x0 = dummy_sample_deter();
        let n = x0.numel() as f64;
        let noise_data = x0
            .data()
            .iter()
            .map(|&v| ((n - 1.0 - (v as f64 * n).round()) / n) as f32)
            .collect();
        let noise = CpuTensor::new(noise_data, x0.shape()).unwrap();
        let mut x = s.add_noise(&x0, &noise, &timesteps[..1]).unwrap();
        for t in timesteps {
            let eps = dummy_model(&x, t);
            x = s
                .step(&eps, t, &x, &StepOptions::default(), &mut NoNoise)
                .unwrap()
                .prev_sample;
        }
        let (sum, mean) = abs_sum_mean(&x);
        assert!(
            (sum - 315.3016).abs() < 1e-2 && (mean - 0.41054).abs() < 1e-3,
            "{sum} {mean}"
        );
    }

    /// `np.log` on float32 (numpy 2.4, AVX512F loop), bit patterns; the first six
    /// differ from the correctly rounded logarithm in the last bit.
    #[test]
    fn log_matches_numpy_bits() {
        let cases: [(u32, u32); 9] = [
            (0x4221_0766, 0x406c_7fa0),
            (0x3f99_d7fb, 0x3e3c_520a),
            (0x3f85_45d4, 0x3d25_588a),
            (0x3f8b_5494, 0x3dad_b4e7),
            (0x3d35_2966, 0xc047_937a),
            (0x4190_f762, 0x4039_696f),
            (0x3f00_0000, 0xbf31_7218),
            (0x4040_0000, 0x3f8c_9f54),
            (0x3f78_03ac, 0xbd01_ce47),
        ];
        for (x, y) in cases {
            assert_eq!(
                ln(f32::from_bits(x)).to_bits(),
                y,
                "log({})",
                f32::from_bits(x)
            );
        }
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
    }

    #[test]
    fn rejects_bad_configs() {
        let field_of = |config: Value| match build_cpu(config) {
            Err(SchedulerError::InvalidValue { field, .. }) => field,
            Err(SchedulerError::InvalidConfig { field, .. }) => field,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("config accepted"),
        };
        assert_eq!(
            field_of(json!({"algorithm_type": "sde-dpmsolver++"})),
            "algorithm_type"
        );
        assert_eq!(field_of(json!({"solver_type": "euler"})), "solver_type");
        assert_eq!(field_of(json!({"solver_order": 0})), "solver_order");
        assert_eq!(
            field_of(json!({"use_exponential_sigmas": true, "use_beta_sigmas": true})),
            "use_karras_sigmas"
        );
        assert_eq!(
            field_of(json!({"beta_schedule": "sigmoid"})),
            "beta_schedule"
        );
        assert_eq!(
            field_of(json!({"thresholding": true, "sample_max_value": 0.0})),
            "sample_max_value"
        );
    }

    #[test]
    fn rejects_bad_calls() {
        let mut s = build_cpu(json!({})).unwrap();
        let x = CpuTensor::zeros(vec![1, 3, 2, 2]);
        let opts = StepOptions::default();
        assert!(matches!(
            s.step(&x, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NotInitialized(_))
        ));
        assert!(s.set_timesteps(0).is_err());
        assert!(s.set_timesteps(1001).is_err());
        assert!(matches!(
            s.set_timesteps_with(&TimestepSpec {
                timesteps: Some(vec![999.0, 500.0]),
                ..TimestepSpec::default()
            }),
            Err(SchedulerError::Unsupported { .. })
        ));
        s.set_timesteps(3).unwrap();
        let y = CpuTensor::zeros(vec![1, 3, 2, 3]);
        assert!(matches!(
            s.step(&y, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        let inf = CpuTensor::new(vec![f32::INFINITY; 12], vec![1, 3, 2, 2]).unwrap();
        assert!(matches!(
            s.step(&x, 999.0, &inf, &opts, &mut NoNoise),
            Err(SchedulerError::NonFinite(_))
        ));
        assert!(matches!(
            s.step(&x, 1.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
        for t in s.timesteps().to_vec() {
            s.step(&x, t, &x, &opts, &mut NoNoise).unwrap();
        }
        assert!(matches!(
            s.step(&x, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::PastLastStep(3))
        ));
    }
}
