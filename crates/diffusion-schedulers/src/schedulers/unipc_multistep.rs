//! `UniPCMultistepScheduler`: the unified predictor-corrector solver of Zhao et
//! al. (2023), "UniPC", in its B(h) variants `bh1` and `bh2`.
//!
//! Each `step` first corrects the sample it receives with UniC (using the new
//! model output and the sample the previous step started from), then predicts the
//! next sample with UniP from the history of converted model outputs. Both solve a
//! small Vandermonde system in the log-SNR ratios `r_k` for their weights.
//!
//! Scalars are evaluated in `f32` exactly where diffusers keeps them in `float32`
//! tensors (`alpha_t`, `sigma_t`, `lambda_t`, `h`, the `phi` recursion, `r_k`);
//! the linear systems are solved in `f64` and rounded to `f32`, like diffusers'
//! `torch.linalg.solve(...).to(x.dtype)`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex};
use crate::config::{
    BetaSchedule, FinalSigmasType, PredictionType, TimestepSpacing, invalid, validate_betas,
};
use crate::error::{Result, SchedulerError};
use crate::multistep::{
    Conversion, Form, TimeShiftType, alpha_sigma, convert_model_output, final_sigma, flow_shifted,
    lambda_f32, missing_steps, sigma_add_noise, sub,
};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "UniPCMultistepScheduler";

/// The B(h) function of the UniPC update. diffusers maps the DPM-Solver values
/// `"midpoint"`, `"heun"` and `"logrho"` to `"bh2"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UniPCSolverType {
    /// `B(h) = h`.
    Bh1,
    /// `B(h) = e^h - 1`.
    #[serde(alias = "midpoint", alias = "heun", alias = "logrho")]
    Bh2,
}

/// diffusers' `UniPCMultistepScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UniPCConfig {
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
    pub predict_x0: bool,
    pub solver_type: UniPCSolverType,
    pub lower_order_final: bool,
    /// Step indices whose following step skips the corrector.
    pub disable_corrector: Vec<usize>,
    /// Another scheduler used as predictor: not supported (must be absent/`null`).
    pub solver_p: Option<Value>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub final_sigmas_type: FinalSigmasType,
    pub rescale_betas_zero_snr: bool,
    pub use_dynamic_shifting: bool,
    pub time_shift_type: TimeShiftType,
    /// Overrides the smallest sigma of the Karras/exponential/beta schedules.
    pub sigma_min: Option<f64>,
    /// Overrides the largest sigma of the Karras/exponential/beta schedules.
    pub sigma_max: Option<f64>,
    /// Stretch a flow schedule so that it ends at this value.
    pub shift_terminal: Option<f64>,
}

impl Default for UniPCConfig {
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
            predict_x0: true,
            solver_type: UniPCSolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            solver_p: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            final_sigmas_type: FinalSigmasType::Zero,
            rescale_betas_zero_snr: false,
            use_dynamic_shifting: false,
            time_shift_type: TimeShiftType::Exponential,
            sigma_min: None,
            sigma_max: None,
            shift_terminal: None,
        }
    }
}

/// Solve the small dense system `a x = b` (Gaussian elimination with partial
/// pivoting, in `f64`). `None` when the matrix is singular.
fn solve_dense(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col] == 0.0 || !a[pivot][col].is_finite() {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let (upper, lower) = a.split_at_mut(row);
            for (dst, src) in lower[0][col..].iter_mut().zip(&upper[col][col..]) {
                *dst -= f * src;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// The UniPC sampler. Generic over the tensor type because it keeps the recent
/// converted model outputs and the last sample for the corrector.
#[derive(Debug, Clone)]
pub struct UniPCMultistepScheduler<T> {
    config: UniPCConfig,
    /// `float32` training sigma table.
    sigma_table: Vec<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    /// The last `solver_order` converted model outputs, newest last.
    model_outputs: Vec<Option<T>>,
    lower_order_nums: usize,
    /// The (corrected) sample the previous predictor started from.
    last_sample: Option<T>,
    /// The order of the previous predictor, used by the next corrector.
    this_order: usize,
    index: StepIndex,
}

impl<T: SchedulerTensor> UniPCMultistepScheduler<T> {
    pub fn new(config: UniPCConfig) -> Result<Self> {
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
                "not implemented for UniPCMultistepScheduler",
            ));
        }
        let sigma_options = [
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        ];
        if sigma_options.iter().filter(|&&b| b).count() > 1 {
            return Err(invalid(
                "use_karras_sigmas",
                true,
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be set",
            ));
        }
        if config.solver_order == 0 {
            return Err(invalid("solver_order", 0, "must be at least 1"));
        }
        if config.solver_p.is_some() {
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: "`solver_p` (another scheduler as predictor)".into(),
            });
        }
        if config.shift_terminal.is_some() && !config.use_flow_sigmas {
            return Err(invalid(
                "shift_terminal",
                config.shift_terminal.unwrap_or_default(),
                "only supported with use_flow_sigmas",
            ));
        }
        if config.shift_terminal == Some(1.0) {
            return Err(invalid("shift_terminal", 1.0, "must not be 1"));
        }
        if !config.predict_x0 && config.prediction_type == PredictionType::FlowPrediction {
            return Err(invalid(
                "prediction_type",
                "flow_prediction",
                "not supported with predict_x0 = false",
            ));
        }
        if config.thresholding
            && !(config.dynamic_thresholding_ratio.is_finite()
                && (0.0..=1.0).contains(&config.dynamic_thresholding_ratio))
        {
            return Err(invalid(
                "dynamic_thresholding_ratio",
                config.dynamic_thresholding_ratio,
                "must lie in [0, 1]",
            ));
        }
        if config.use_flow_sigmas && !(config.flow_shift.is_finite() && config.flow_shift > 0.0) {
            return Err(invalid("flow_shift", config.flow_shift, "must be positive"));
        }
        for (field, v) in [
            ("sigma_min", config.sigma_min),
            ("sigma_max", config.sigma_max),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(invalid(field, v, "must be positive"));
            }
        }
        let ac = common::sigma_alphas_cumprod(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.rescale_betas_zero_snr,
        );
        let sigma_table = common::sigmas_from_alphas_cumprod(&ac);
        let n = config.num_train_timesteps;
        let timesteps = (0..n).rev().map(|t| t as f64).collect();
        let model_outputs = vec![None; config.solver_order];
        Ok(Self {
            sigmas: sigma_table.clone(),
            config,
            sigma_table,
            timesteps,
            num_inference_steps: None,
            model_outputs,
            lower_order_nums: 0,
            last_sample: None,
            this_order: 1,
            index: StepIndex::default(),
        })
    }

    pub fn config(&self) -> &UniPCConfig {
        &self.config
    }

    fn flow(&self) -> bool {
        self.config.use_flow_sigmas
    }

    fn alpha_sigma(&self, i: usize) -> (f32, f32) {
        alpha_sigma(self.sigmas[i] as f32, self.flow())
    }

    /// diffusers' `convert_model_output`: `x0_pred` when `predict_x0`, else
    /// the noise `epsilon`.
    fn convert_model_output(&self, model_output: &T, sample: &T, step_index: usize) -> Result<T> {
        let c = &self.config;
        let conversion = Conversion {
            prediction_type: c.prediction_type,
            use_flow_sigmas: c.use_flow_sigmas,
            // diffusers' UniPC thresholds `x0_pred` only.
            thresholding: (c.thresholding && c.predict_x0)
                .then_some((c.dynamic_thresholding_ratio, c.sample_max_value)),
            form: Form::OneExpression,
        };
        let sigma = self.sigmas[step_index] as f32;
        convert_model_output(model_output, sample, sigma, c.predict_x0, &conversion)
    }

    fn degenerate(&self, what: &str, idx: usize) -> SchedulerError {
        SchedulerError::Unsupported {
            class: CLASS_NAME,
            what: format!(
                "the {what} at step {idx} with these sigmas: its coefficients are not finite \
                 (diffusers returns NaN/inf here; with final_sigmas_type `zero` use solver_type \
                 `bh2`, predict_x0 = true and lower_order_final = true)"
            ),
        }
    }

    /// The scalars `multistep_uni_p_bh_update` and `multistep_uni_c_bh_update`
    /// compute alike: from `sigmas[s0]` to `sigmas[t]`, with the older
    /// outputs at the sigmas `older` (newest first).
    fn uni_bh(
        &self,
        t: usize,
        s0: usize,
        older: &[usize],
        what: &str,
        step_index: usize,
    ) -> Result<UniBh> {
        let (alpha_t, sigma_t) = self.alpha_sigma(t);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(s0);
        let lambda_t = lambda_f32(alpha_t, sigma_t);
        let lambda_s0 = lambda_f32(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;

        let mut rks: Vec<f32> = Vec::with_capacity(older.len() + 1);
        for &si in older {
            let (alpha_si, sigma_si) = self.alpha_sigma(si);
            let rk = (lambda_f32(alpha_si, sigma_si) - lambda_s0) / h;
            if !(rk.is_finite() && rk != 0.0) {
                return Err(self.degenerate(what, step_index));
            }
            rks.push(rk);
        }
        let inv_rks = rks.iter().map(|&rk| f64::from(1.0 / rk)).collect();
        rks.push(1.0);

        let predict_x0 = self.config.predict_x0;
        let hh = if predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1(); // h phi_1(h) = e^h - 1
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial_i = 1.0f64;
        let b_h = match self.config.solver_type {
            UniPCSolverType::Bh1 => hh,
            UniPCSolverType::Bh2 => hh.exp_m1(),
        };
        let order = rks.len();
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(
                rks.iter()
                    .map(|&rk| f64::from(rk.powi(i as i32 - 1)))
                    .collect(),
            );
            b.push(f64::from(h_phi_k * factorial_i as f32 / b_h));
            factorial_i *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - (1.0 / factorial_i) as f32;
        }

        // x_t = x_scale * x - m0_scale * m0 - res_scale * res
        let (x_scale, m0_scale, res_scale) = if predict_x0 {
            (sigma_t / sigma_s0, alpha_t * h_phi_1, alpha_t * b_h)
        } else {
            (alpha_t / alpha_s0, sigma_t * h_phi_1, sigma_t * b_h)
        };
        let (x_scale, m0_scale, res_scale) = (x_scale as f64, m0_scale as f64, res_scale as f64);
        if !(x_scale.is_finite() && m0_scale.is_finite() && res_scale.is_finite()) {
            return Err(self.degenerate(what, step_index));
        }
        Ok(UniBh {
            inv_rks,
            r,
            b,
            x_scale,
            m0_scale,
            res_scale,
        })
    }

    /// diffusers' `multistep_uni_p_bh_update`: from `sample` at step
    /// `step_index` to the next, `m0` this step's converted output and
    /// `previous` the older ones, newest first.
    fn multistep_uni_p_bh_update(
        &self,
        m0: &T,
        previous: &[&T],
        sample: &T,
        step_index: usize,
    ) -> Result<T> {
        let what = "predictor";
        let order = previous.len() + 1;
        let older: Vec<usize> = (1..order).map(|i| step_index - i).collect();
        let bh = self.uni_bh(step_index + 1, step_index, &older, what, step_index)?;
        let rhos_p = match order {
            1 => Vec::new(),
            // For order 2, a simplified version.
            2 => vec![0.5],
            _ => {
                let k = order - 1;
                let r = bh.r[..k].iter().map(|row| row[..k].to_vec()).collect();
                solve_dense(r, bh.b[..k].to_vec())
                    .ok_or_else(|| self.degenerate(what, step_index))?
            }
        };
        let d1s = previous
            .iter()
            .zip(&bh.inv_rks)
            .map(|(&mi, &inv_rk)| sub(mi, m0).scale(inv_rk));
        let pred_res = weighted_sum(rhos_p.into_iter().map(common::f32r).zip(d1s));
        Ok(bh.x_t(sample, m0, pred_res))
    }

    /// diffusers' `multistep_uni_c_bh_update`: corrects `this_sample` from
    /// `last_sample` at the previous step, `m0` the previous step's converted
    /// output, `previous` the older ones (newest first) and
    /// `this_model_output` this step's.
    fn multistep_uni_c_bh_update(
        &self,
        this_model_output: &T,
        m0: &T,
        previous: &[&T],
        last_sample: &T,
        step_index: usize,
    ) -> Result<T> {
        let what = "corrector";
        let order = previous.len() + 1;
        let older: Vec<usize> = (1..order).map(|i| step_index - (i + 1)).collect();
        let bh = self.uni_bh(step_index, step_index - 1, &older, what, step_index)?;
        let rhos_c = match order {
            // For order 1, a simplified version.
            1 => vec![0.5],
            _ => solve_dense(bh.r.clone(), bh.b.clone())
                .ok_or_else(|| self.degenerate(what, step_index))?,
        };
        let d1s = previous
            .iter()
            .zip(&bh.inv_rks)
            .map(|(&mi, &inv_rk)| sub(mi, m0).scale(inv_rk));
        let d1_t = sub(this_model_output, m0);
        // corr_res + rhos_c[-1] * D1_t, accumulated as one sum
        let corr_res = weighted_sum(
            rhos_c
                .into_iter()
                .map(common::f32r)
                .zip(d1s.chain(std::iter::once(d1_t))),
        );
        Ok(bh.x_t(last_sample, m0, corr_res))
    }
}

/// The scalars of a UniP or UniC update ([`UniPCMultistepScheduler::uni_bh`]).
struct UniBh {
    /// `1 / r_k` of the older outputs, newest first.
    inv_rks: Vec<f64>,
    /// The B(h) system `R rho = b`: `R[i][k] = r_k^i` (with `r = 1` last).
    r: Vec<Vec<f64>>,
    b: Vec<f64>,
    x_scale: f64,
    m0_scale: f64,
    res_scale: f64,
}

impl UniBh {
    /// `x_t = x_scale * x - m0_scale * m0 - res_scale * res` (no `res`: none).
    fn x_t<T: SchedulerTensor>(&self, x: &T, m0: &T, res: Option<T>) -> T {
        let x_t_ = T::linear_combination(&[(self.x_scale, x), (-self.m0_scale, m0)]);
        match res {
            Some(res) => T::linear_combination(&[(1.0, &x_t_), (-self.res_scale, &res)]),
            None => x_t_,
        }
    }
}

/// `sum_k rho_k D_k` (diffusers' `einsum("k,bkc...->bc...", rhos, D1s)`),
/// accumulated left to right; `None` without terms.
fn weighted_sum<T: SchedulerTensor>(terms: impl IntoIterator<Item = (f64, T)>) -> Option<T> {
    terms.into_iter().fold(None, |sum, (rho, d)| {
        Some(match sum {
            None => d.scale(rho),
            Some(sum) => T::linear_combination(&[(1.0, &sum), (rho, &d)]),
        })
    })
}

pub(crate) fn build<T: SchedulerTensor + Send + 'static>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, UniPCConfig, UniPCMultistepScheduler<T>>(
        json,
        UniPCMultistepScheduler::new,
    )
}

impl<T: SchedulerTensor + Send> Scheduler<T> for UniPCMultistepScheduler<T> {
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
        let c = &self.config;
        let train = c.num_train_timesteps;
        if spec.timesteps.is_some() {
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: "custom timesteps (pass custom sigmas with use_flow_sigmas)".into(),
            });
        }
        if c.use_dynamic_shifting && spec.mu.is_none() {
            return Err(SchedulerError::InvalidArgument {
                field: "mu",
                value: "None".into(),
                reason: "required when use_dynamic_shifting is set".into(),
            });
        }
        if let Some(mu) = spec.mu
            && !mu.is_finite()
        {
            return Err(SchedulerError::InvalidArgument {
                field: "mu",
                value: mu.to_string(),
                reason: "must be finite".into(),
            });
        }
        let custom = spec.sigmas.clone();
        let n = if let Some(s) = &custom {
            if !c.use_flow_sigmas {
                return Err(SchedulerError::Unsupported {
                    class: CLASS_NAME,
                    what: "custom sigmas without use_flow_sigmas".into(),
                });
            }
            if s.is_empty() {
                return Err(SchedulerError::InvalidArgument {
                    field: "sigmas",
                    value: "[]".into(),
                    reason: "must not be empty".into(),
                });
            }
            if let Some(bad) = s.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(SchedulerError::InvalidArgument {
                    field: "sigmas",
                    value: bad.to_string(),
                    reason: "must be finite and positive".into(),
                });
            }
            s.len()
        } else {
            let n = spec.num_inference_steps.ok_or_else(missing_steps)?;
            common::check_num_steps(n, train)?;
            n
        };

        // Timesteps from the spacing (replaced below by the sigma schedules).
        let spaced: Vec<f64> = match c.timestep_spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = common::linspace(0.0, (train - 1) as f64, n + 1)
                    .into_iter()
                    .map(common::round_half_even)
                    .collect();
                t.reverse();
                t.pop();
                t
            }
            TimestepSpacing::Leading => {
                let ratio = train / (n + 1);
                (0..n)
                    .rev()
                    .map(|i| ((i + 1) * ratio + c.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / n as f64;
                common::arange(train as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| common::round_half_even(t) - 1.0)
                    .collect()
            }
        };

        // The sigma table the Karras/exponential/beta schedules start from: the
        // custom sigmas (f64, as numpy holds a list) or the float32 training table.
        let (base, log_base) = match &custom {
            Some(s) => (s.clone(), s.iter().map(|v| v.ln()).collect::<Vec<f64>>()),
            None => (
                self.sigma_table.clone(),
                common::log_table_f32(&self.sigma_table),
            ),
        };
        // `in_sigmas = flip(base)`: its last entry is base[0], its first base[-1].
        let range = || {
            (
                c.sigma_min.unwrap_or(base[0]),
                c.sigma_max.unwrap_or(base[base.len() - 1]),
            )
        };
        let finish = |s: &[f64]| final_sigma(c.final_sigmas_type, s[s.len() - 1]);
        let (sigmas, timesteps, sigma_last): (Vec<f64>, Vec<f64>, f64) = if c.use_karras_sigmas {
            let (lo, hi) = range();
            let mut s = common::karras_sigmas(lo, hi, n);
            let t = if c.use_flow_sigmas {
                s = s.iter().map(|x| x / (x + 1.0)).collect();
                s.iter().map(|x| (x * train as f64).trunc()).collect()
            } else {
                s.iter()
                    .map(|&x| common::round_half_even(common::sigma_to_t(x, &log_base)))
                    .collect()
            };
            let last = finish(&s);
            (s, t, last)
        } else if c.use_exponential_sigmas || c.use_beta_sigmas {
            let (lo, hi) = range();
            let s = if c.use_exponential_sigmas {
                common::exponential_sigmas(lo, hi, n)
            } else {
                common::beta_sigmas(lo, hi, n)
            };
            let t = s
                .iter()
                .map(|&x| common::sigma_to_t(x, &log_base).trunc())
                .collect();
            let last = finish(&s);
            (s, t, last)
        } else if c.use_flow_sigmas {
            let mut s: Vec<f64> = match &custom {
                Some(s) => s.clone(),
                None => {
                    let mut v = common::linspace(1.0, 1.0 / train as f64, n + 1);
                    v.pop();
                    v
                }
            };
            if c.use_dynamic_shifting {
                let mu = spec.mu.unwrap_or_default();
                s = s
                    .iter()
                    .map(|&t| match c.time_shift_type {
                        TimeShiftType::Exponential => mu.exp() / (mu.exp() + (1.0 / t - 1.0)),
                        TimeShiftType::Linear => mu / (mu + (1.0 / t - 1.0)),
                    })
                    .collect();
            } else {
                s = s.iter().map(|&x| flow_shifted(x, c.flow_shift)).collect();
            }
            if let Some(term) = c.shift_terminal.filter(|v| *v != 0.0) {
                let scale = (1.0 - s[s.len() - 1]) / (1.0 - term);
                s = s.iter().map(|x| 1.0 - (1.0 - x) / scale).collect();
            }
            if (s[0] - 1.0).abs() < 1e-6 {
                s[0] -= 1e-6;
            }
            let t = s.iter().map(|x| (x * train as f64).trunc()).collect();
            let last = finish(&s);
            (s, t, last)
        } else {
            let xp: Vec<f64> = (0..self.sigma_table.len()).map(|i| i as f64).collect();
            let s = spaced
                .iter()
                .map(|&t| common::interp(t, &xp, &self.sigma_table))
                .collect();
            let last = final_sigma(c.final_sigmas_type, self.sigma_table[0]);
            (s, spaced, last)
        };
        if let Some(bad) = timesteps.iter().find(|t| !t.is_finite()) {
            return Err(SchedulerError::InvalidArgument {
                field: "sigmas",
                value: bad.to_string(),
                reason: "give a non-finite timestep".into(),
            });
        }
        let mut sigmas: Vec<f64> = sigmas.into_iter().map(common::f32r).collect();
        sigmas.push(common::f32r(sigma_last));
        if sigmas.iter().any(|s| !s.is_finite()) {
            return Err(SchedulerError::InvalidArgument {
                field: "sigmas",
                value: format!("{sigmas:?}"),
                reason: "the schedule is not finite".into(),
            });
        }

        self.num_inference_steps = Some(timesteps.len());
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
        self.last_sample = None;
        self.index.reset();
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
        // Committed (`advance_from`) only once the step has succeeded.
        let step_index = self.index.peek(t, &self.timesteps)?;
        let n = self.timesteps.len();
        if step_index >= n {
            return Err(SchedulerError::PastLastStep(step_index));
        }
        let k = self.config.solver_order;
        let history = |i: usize| {
            self.model_outputs[i]
                .as_ref()
                .ok_or(SchedulerError::PastLastStep(step_index))
        };
        let model_output_convert = self.convert_model_output(model_output, sample, step_index)?;
        // UniC corrects `sample` from the previous step's start, with its
        // converted output `m0` and the older ones (newest first).
        let corrector = match &self.last_sample {
            Some(last_sample)
                if step_index > 0 && !self.config.disable_corrector.contains(&(step_index - 1)) =>
            {
                let m0 = history(k - 1)?;
                let previous = (1..self.this_order)
                    .map(|i| history(k - 1 - i))
                    .collect::<Result<Vec<&T>>>()?;
                Some((last_sample, m0, previous))
            }
            _ => None,
        };
        let this_order = if self.config.lower_order_final {
            k.min(n - step_index)
        } else {
            k
        };
        // Warm-up of the multistep history.
        let this_order = this_order.min(self.lower_order_nums + 1);
        // UniP predicts from this step's converted output and the older ones, newest first.
        let previous = (1..this_order)
            .map(|i| history(k - i))
            .collect::<Result<Vec<&T>>>()?;
        let state = corrector.iter().flat_map(|(last_sample, m0, older)| {
            [*last_sample, *m0].into_iter().chain(older.clone())
        });
        common::check_state_shapes(model_output, state.chain(previous.clone()))?;
        common::check_finite(model_output, sample)?;

        let sample = match &corrector {
            Some((last_sample, m0, older)) => self.multistep_uni_c_bh_update(
                &model_output_convert,
                m0,
                older,
                last_sample,
                step_index,
            )?,
            None => sample.clone(),
        };
        let prev_sample =
            self.multistep_uni_p_bh_update(&model_output_convert, &previous, &sample, step_index)?;

        self.model_outputs.remove(0);
        self.model_outputs.push(Some(model_output_convert));
        self.last_sample = Some(sample);
        self.this_order = this_order;
        if self.lower_order_nums < k {
            self.lower_order_nums += 1;
        }
        self.index.advance_from(step_index);
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
            self.flow(),
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

    /// diffusers' `UniPCMultistepSchedulerTest.get_scheduler_config`.
    fn base() -> Value {
        json!({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "linear", "solver_order": 2, "solver_type": "bh2",
            "final_sigmas_type": "sigma_min"})
    }

    fn with(mut v: Value, pairs: &[(&str, Value)]) -> Value {
        for (k, val) in pairs {
            v[*k] = val.clone();
        }
        v
    }

    fn build_s(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    /// diffusers' published `test_full_loop_*` values.
    #[test]
    fn published_full_loops() {
        let v = ("prediction_type", json!("v_prediction"));
        let karras = ("use_karras_sigmas", json!(true));
        let cases = [
            (base(), 0.2464),
            (with(base(), std::slice::from_ref(&karras)), 0.2925),
            (with(base(), std::slice::from_ref(&v)), 0.1014),
            (with(base(), &[v, karras]), 0.1966),
        ];
        for (config, expected) in cases {
            let mut s = build_s(config.clone());
            s.set_timesteps(10).unwrap();
            let x = full_loop(
                s.as_mut(),
                &dummy_sample_deter(),
                &StepOptions::default(),
                &mut NoNoise,
            )
            .unwrap();
            let mean = abs_sum_mean(&x).1;
            assert!(
                (mean - expected).abs() < 1e-3,
                "{config}: {mean} vs {expected}"
            );
        }
    }

    /// diffusers' `test_full_loop_with_noise`: img2img from the ninth timestep.
    #[test]
    fn published_loop_with_noise() {
        let mut s = build_s(base());
        s.set_timesteps(10).unwrap();
        let sample = dummy_sample_deter();
        let n = sample.numel();
        let noise = CpuTensor::new(
            sample
                .data()
                .iter()
                .map(|v| ((n - 1) as f64 / n as f64 - *v as f64) as f32)
                .collect(),
            sample.shape(),
        )
        .unwrap();
        let timesteps = s.timesteps()[8..].to_vec();
        let mut x = s.add_noise(&sample, &noise, &timesteps[..1]).unwrap();
        for t in timesteps {
            let eps = dummy_model(&x, t);
            x = s
                .step(&eps, t, &x, &StepOptions::default(), &mut NoNoise)
                .unwrap()
                .prev_sample;
        }
        let (sum, mean) = abs_sum_mean(&x);
        assert!(
            (sum - 315.5757).abs() < 1e-2 && (mean - 0.4109).abs() < 1e-3,
            "{sum} {mean}"
        );
    }

    #[test]
    fn dense_solve() {
        let a = vec![
            vec![2.0, 1.0, 1.0],
            vec![1.0, 3.0, 2.0],
            vec![1.0, 0.0, 0.0],
        ];
        let x = solve_dense(a, vec![4.0, 5.0, 6.0]).unwrap();
        let want = [6.0, 15.0, -23.0];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{x:?}");
        }
        assert!(solve_dense(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 1.0]).is_none());
    }

    #[test]
    fn config_round_trips() {
        let s = build_s(
            json!({"solver_type": "midpoint", "disable_corrector": [0, 3],
            "use_karras_sigmas": true, "sigma_min": 0.1}),
        );
        let config = s.config();
        assert_eq!(config["solver_type"], "bh2");
        assert_eq!(config["disable_corrector"], json!([0, 3]));
        assert_eq!(build_s(config.clone()).config(), config);
    }

    fn config_err(config: Value) -> SchedulerError {
        match crate::from_config_as::<CpuTensor>(CLASS_NAME, &config) {
            Err(e) => e,
            Ok(_) => panic!("{config} was accepted"),
        }
    }

    #[test]
    fn rejects_bad_configs() {
        let field_of = |e: SchedulerError| match e {
            SchedulerError::InvalidValue { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(
            field_of(config_err(json!({"solver_order": 0}))),
            "solver_order"
        );
        assert_eq!(
            field_of(config_err(json!({"shift_terminal": 0.1}))),
            "shift_terminal"
        );
        assert_eq!(
            field_of(config_err(
                json!({"use_exponential_sigmas": true, "use_karras_sigmas": true})
            )),
            "use_karras_sigmas"
        );
        assert_eq!(
            field_of(config_err(
                json!({"predict_x0": false, "prediction_type": "flow_prediction"})
            )),
            "prediction_type"
        );
        assert_eq!(
            field_of(config_err(json!({"beta_schedule": "sigmoid"}))),
            "beta_schedule"
        );
        assert!(matches!(
            config_err(json!({"solver_p": {"_class_name": "DDIMScheduler"}})),
            SchedulerError::Unsupported { .. }
        ));
        assert!(matches!(
            config_err(json!({"solver_type": "bh3"})),
            SchedulerError::InvalidConfig { field, .. } if field == "solver_type"
        ));
        assert!(matches!(
            config_err(json!({"timestep_spacing": "even"})),
            SchedulerError::InvalidConfig { field, .. } if field == "timestep_spacing"
        ));
    }

    #[test]
    fn rejects_bad_calls() {
        let mut s = build_s(json!({}));
        let x = CpuTensor::zeros(vec![1, 3, 2, 2]);
        let opts = StepOptions::default();
        assert!(matches!(
            s.step(&x, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NotInitialized(_))
        ));
        assert!(s.set_timesteps(0).is_err());
        let sigmas = TimestepSpec {
            sigmas: Some(vec![1.0, 0.5]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&sigmas),
            Err(SchedulerError::Unsupported { .. })
        ));
        let timesteps = TimestepSpec {
            timesteps: Some(vec![900.0, 500.0]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&timesteps),
            Err(SchedulerError::Unsupported { .. })
        ));
        let mut dynamic = build_s(
            json!({"use_flow_sigmas": true, "use_dynamic_shifting": true,
            "prediction_type": "flow_prediction"}),
        );
        assert!(matches!(
            dynamic.set_timesteps(4),
            Err(SchedulerError::InvalidArgument { field: "mu", .. })
        ));

        s.set_timesteps(2).unwrap();
        let y = CpuTensor::zeros(vec![2, 3, 2, 2]);
        assert!(matches!(
            s.step(&y, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        let inf = CpuTensor::new(vec![f32::INFINITY; 12], vec![1, 3, 2, 2]).unwrap();
        assert!(matches!(
            s.step(&x, 999.0, &inf, &opts, &mut NoNoise),
            Err(SchedulerError::NonFinite("sample"))
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
            Err(SchedulerError::PastLastStep(2))
        ));
    }

    /// Where diffusers returns NaN/inf (the final zero sigma with bh1, noise
    /// prediction, or a higher-order last step), the Rust scheduler refuses the step.
    #[test]
    fn degenerate_final_step_is_an_error() {
        let x = dummy_sample_deter();
        for config in [
            json!({"solver_type": "bh1"}),
            json!({"predict_x0": false}),
            json!({"lower_order_final": false}),
        ] {
            let mut s = build_s(config.clone());
            s.set_timesteps(4).unwrap();
            let err = full_loop(s.as_mut(), &x, &StepOptions::default(), &mut NoNoise);
            assert!(
                matches!(err, Err(SchedulerError::Unsupported { .. })),
                "{config}: {err:?}"
            );
            let mut ok = build_s(with(config, &[("final_sigmas_type", json!("sigma_min"))]));
            ok.set_timesteps(4).unwrap();
            full_loop(ok.as_mut(), &x, &StepOptions::default(), &mut NoNoise).unwrap();
        }
    }
}
