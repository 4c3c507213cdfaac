//! `DPMSolverSinglestepScheduler`: singlestep DPM-Solver and DPM-Solver++
//! (Lu et al. 2022), orders 1 to 3.
//!
//! A "singlestep" solver of order `k` spends `k` model evaluations on one
//! `k`-th order update from the sample it started from: the schedule is cut into
//! groups by an order list (`[1, 2, 1, 2, ...]` for order 2), the sample at the
//! start of each group is kept, and the model outputs gathered inside the group
//! feed the update of its last step.
//!
//! Scalars are evaluated in `f32` exactly where diffusers keeps them in `float32`
//! tensors (the sigma table, `alpha_t`, `sigma_t`, `lambda_t` and the update
//! coefficients), so that the solver matches diffusers to `f32` rounding.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex};
use crate::config::{BetaSchedule, FinalSigmasType, PredictionType, invalid, validate_betas};
use crate::error::{Result, SchedulerError};
use crate::multistep::{
    Conversion, Form, alpha_sigma, convert_model_output, final_sigma, flow_shifted, lambda_f32,
    missing_steps, sde_noise, sigma_add_noise, sub,
};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "DPMSolverSinglestepScheduler";

/// Which solver family `step` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SinglestepAlgorithm {
    /// DPM-Solver: the model output is turned into a noise prediction.
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// DPM-Solver++: the model output is turned into a data (`x0`) prediction.
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    /// Stochastic DPM-Solver++ (draws one noise tensor per step).
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    /// DEIS's value, accepted as diffusers does: construction replaces it by
    /// `dpmsolver++` (after refusing `final_sigmas_type = "zero"`, as diffusers does).
    #[serde(rename = "deis")]
    Deis,
}

/// The second/third order update formula. diffusers maps the UniPC/DEIS values
/// `"logrho"`, `"bh1"` and `"bh2"` to `"midpoint"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinglestepSolverType {
    #[serde(alias = "logrho", alias = "bh1", alias = "bh2")]
    Midpoint,
    Heun,
}

pub use crate::multistep::{TimeShiftType, VarianceType};

/// diffusers' `DPMSolverSinglestepScheduler` config, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DPMSolverSinglestepConfig {
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
    pub algorithm_type: SinglestepAlgorithm,
    pub solver_type: SinglestepSolverType,
    pub lower_order_final: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub final_sigmas_type: FinalSigmasType,
    /// `-inf` by default (serialized as `null`, which parses back to the default).
    pub lambda_min_clipped: f64,
    pub variance_type: Option<VarianceType>,
    pub use_dynamic_shifting: bool,
    pub time_shift_type: TimeShiftType,
}

impl Default for DPMSolverSinglestepConfig {
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
            algorithm_type: SinglestepAlgorithm::DpmSolverPlusPlus,
            solver_type: SinglestepSolverType::Midpoint,
            lower_order_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            use_dynamic_shifting: false,
            time_shift_type: TimeShiftType::Exponential,
        }
    }
}

// ---------------------------------------------------------------------------
// The scheduler
// ---------------------------------------------------------------------------

/// The singlestep DPM-Solver(++) sampler. Generic over the tensor type because it
/// keeps the model outputs of the current group and the group's start sample.
#[derive(Debug, Clone)]
pub struct DPMSolverSinglestepScheduler<T> {
    config: DPMSolverSinglestepConfig,
    /// Training tables (`float32` values).
    sigma_table: Vec<f64>,
    lambda_table: Vec<f64>,
    /// `flow_shift`, replaced by `exp(mu)` when `set_timesteps` receives `mu`
    /// (diffusers overwrites the config attribute; the saved config keeps the old value).
    flow_shift: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    order_list: Vec<usize>,
    /// The last `solver_order` converted model outputs, newest last.
    model_outputs: Vec<Option<T>>,
    /// The sample at the start of the current singlestep group.
    group_sample: Option<T>,
    index: StepIndex,
}

impl<T: SchedulerTensor> DPMSolverSinglestepScheduler<T> {
    pub fn new(mut config: DPMSolverSinglestepConfig) -> Result<Self> {
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
                "not implemented for DPMSolverSinglestepScheduler",
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
        if !(1..=3).contains(&config.solver_order) {
            return Err(invalid(
                "solver_order",
                config.solver_order,
                "must be 1, 2 or 3",
            ));
        }
        let algo = config.algorithm_type;
        if matches!(
            algo,
            SinglestepAlgorithm::DpmSolver | SinglestepAlgorithm::Deis
        ) && config.final_sigmas_type == FinalSigmasType::Zero
        {
            return Err(invalid(
                "final_sigmas_type",
                "zero",
                format!(
                    "not supported with algorithm_type `{}`; use `sigma_min`",
                    if algo == SinglestepAlgorithm::Deis {
                        "deis"
                    } else {
                        "dpmsolver"
                    }
                ),
            ));
        }
        if algo == SinglestepAlgorithm::Deis {
            config.algorithm_type = SinglestepAlgorithm::DpmSolverPlusPlus;
        }
        if algo == SinglestepAlgorithm::DpmSolver {
            if config.prediction_type == PredictionType::FlowPrediction {
                return Err(invalid(
                    "prediction_type",
                    "flow_prediction",
                    "not supported with algorithm_type `dpmsolver`",
                ));
            }
            if config.thresholding {
                // diffusers indexes its alpha table with `None` here and fails at step.
                return Err(invalid(
                    "thresholding",
                    true,
                    "not supported with algorithm_type `dpmsolver` (diffusers fails at step)",
                ));
            }
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
        if config.lambda_min_clipped.is_nan() {
            return Err(invalid(
                "lambda_min_clipped",
                config.lambda_min_clipped,
                "must be a number",
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
        let sigma_table = common::sigmas_from_alphas_cumprod(&alphas_cumprod);
        let lambda_table = alphas_cumprod
            .iter()
            .map(|&a| {
                let a = a as f32;
                (a.sqrt().ln() - (1.0f32 - a).sqrt().ln()) as f64
            })
            .collect();
        let n = config.num_train_timesteps;
        let timesteps = (0..n).rev().map(|t| t as f64).collect();
        let model_outputs = vec![None; config.solver_order];
        let flow_shift = config.flow_shift;
        Ok(Self {
            sigmas: sigma_table.clone(),
            config,
            sigma_table,
            lambda_table,
            flow_shift,
            timesteps,
            num_inference_steps: None,
            order_list: Vec::new(),
            model_outputs,
            group_sample: None,
            index: StepIndex::default(),
        })
    }

    pub fn config(&self) -> &DPMSolverSinglestepConfig {
        &self.config
    }

    /// The solver order of each step (diffusers' `order_list`).
    pub fn order_list(&self) -> &[usize] {
        &self.order_list
    }

    /// diffusers' `get_order_list`.
    fn get_order_list(&self, steps: usize) -> Vec<usize> {
        let order = self.config.solver_order;
        let repeat = |pattern: &[usize], times: usize| -> Vec<usize> {
            pattern
                .iter()
                .copied()
                .cycle()
                .take(pattern.len() * times)
                .collect()
        };
        let mut orders = if self.config.lower_order_final {
            match order {
                3 => match steps % 3 {
                    0 => [
                        repeat(&[1, 2, 3], (steps / 3).saturating_sub(1)),
                        vec![1, 2, 1],
                    ]
                    .concat(),
                    1 => [repeat(&[1, 2, 3], steps / 3), vec![1]].concat(),
                    _ => [repeat(&[1, 2, 3], steps / 3), vec![1, 2]].concat(),
                },
                2 => {
                    if steps.is_multiple_of(2) {
                        [repeat(&[1, 2], (steps / 2).saturating_sub(1)), vec![1, 1]].concat()
                    } else {
                        [repeat(&[1, 2], steps / 2), vec![1]].concat()
                    }
                }
                _ => vec![1; steps],
            }
        } else {
            match order {
                3 => repeat(&[1, 2, 3], steps / 3),
                2 => repeat(&[1, 2], steps / 2),
                _ => vec![1; steps],
            }
        };
        if self.config.final_sigmas_type == FinalSigmasType::Zero
            && let Some(last) = orders.last_mut()
        {
            *last = 1;
        }
        orders
    }

    fn flow(&self) -> bool {
        self.config.use_flow_sigmas
    }

    fn alpha_sigma(&self, i: usize) -> (f32, f32) {
        alpha_sigma(self.sigmas[i] as f32, self.flow())
    }

    /// diffusers' `convert_model_output`: `x0_pred` for DPM-Solver++, the
    /// noise `epsilon` for DPM-Solver.
    fn convert_model_output(&self, model_output: &T, sample: &T, step_index: usize) -> Result<T> {
        let c = &self.config;
        if c.variance_type.is_some()
            && c.prediction_type == PredictionType::Epsilon
            && model_output.shape().get(1).is_some_and(|&c| c > 3)
        {
            // diffusers keeps the first 3 channels of a learned-variance output; with
            // more than 3 sample channels its update cannot broadcast either.
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: "variance_type `learned`/`learned_range` with more than 3 channels".into(),
            });
        }
        let conversion = Conversion {
            prediction_type: c.prediction_type,
            use_flow_sigmas: c.use_flow_sigmas,
            thresholding: c
                .thresholding
                .then_some((c.dynamic_thresholding_ratio, c.sample_max_value)),
            form: Form::OneExpression,
        };
        let sigma = self.sigmas[step_index] as f32;
        let predict_x0 = c.algorithm_type != SinglestepAlgorithm::DpmSolver;
        convert_model_output(model_output, sample, sigma, predict_x0, &conversion)
    }

    /// `sum_i c_i x_i`, plus `sde-dpmsolver++`'s noise term
    /// `sigma_t * sqrt(1 - exp(-2h)) * noise`, as the updates end. diffusers
    /// returns NaN/inf where a coefficient is not finite; this refuses the
    /// step instead.
    fn combine(
        &self,
        terms: &[(f32, &T)],
        (sigma_t, h): (f32, f32),
        noise: Option<&T>,
        order: usize,
        step_index: usize,
    ) -> Result<T> {
        let mut terms: Vec<(f64, &T)> = terms.iter().map(|&(c, x)| (f64::from(c), x)).collect();
        if self.config.algorithm_type == SinglestepAlgorithm::SdeDpmSolverPlusPlus {
            let c = sigma_t * (1.0f32 - (-2.0f32 * h).exp()).sqrt();
            terms.push((f64::from(c), sde_noise(noise)?));
        }
        if !terms.iter().all(|(c, _)| c.is_finite()) {
            return Err(SchedulerError::Unsupported {
                class: CLASS_NAME,
                what: format!(
                    "an order-{order} update at step {step_index} with these sigmas (its coefficients are not finite)"
                ),
            });
        }
        Ok(T::linear_combination(&terms))
    }

    /// diffusers' `dpm_solver_first_order_update` (the scalars in `f32`, as
    /// diffusers evaluates them).
    fn dpm_solver_first_order_update(
        &self,
        model_output: &T,
        sample: &T,
        noise: Option<&T>,
        step_index: usize,
    ) -> Result<T> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index + 1);
        let (alpha_s, sigma_s) = self.alpha_sigma(step_index);
        let lambda_t = lambda_f32(alpha_t, sigma_t);
        let lambda_s = lambda_f32(alpha_s, sigma_s);
        let h = lambda_t - lambda_s;
        let terms = match self.config.algorithm_type {
            SinglestepAlgorithm::DpmSolverPlusPlus | SinglestepAlgorithm::Deis => [
                (sigma_t / sigma_s, sample),
                (-(alpha_t * ((-h).exp() - 1.0)), model_output),
            ],
            SinglestepAlgorithm::DpmSolver => [
                (alpha_t / alpha_s, sample),
                (-(sigma_t * (h.exp() - 1.0)), model_output),
            ],
            SinglestepAlgorithm::SdeDpmSolverPlusPlus => [
                (sigma_t / sigma_s * (-h).exp(), sample),
                (alpha_t * (1.0 - (-2.0 * h).exp()), model_output),
            ],
        };
        self.combine(&terms, (sigma_t, h), noise, 1, step_index)
    }

    /// diffusers' `singlestep_dpm_solver_second_order_update`: `m1` the
    /// group's first converted output, `m0` this step's.
    fn singlestep_dpm_solver_second_order_update(
        &self,
        [m0, m1]: [&T; 2],
        sample: &T,
        noise: Option<&T>,
        step_index: usize,
    ) -> Result<T> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index + 1);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(step_index);
        let (alpha_s1, sigma_s1) = self.alpha_sigma(step_index - 1);
        let lambda_t = lambda_f32(alpha_t, sigma_t);
        let lambda_s0 = lambda_f32(alpha_s0, sigma_s0);
        let lambda_s1 = lambda_f32(alpha_s1, sigma_s1);
        let (h, h_0) = (lambda_t - lambda_s1, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let (d0, d1) = (m1, &sub(m0, m1).scale(f64::from(1.0 / r0)));
        let heun = self.config.solver_type == SinglestepSolverType::Heun;
        let terms = match self.config.algorithm_type {
            SinglestepAlgorithm::DpmSolverPlusPlus | SinglestepAlgorithm::Deis => {
                let em1 = (-h).exp() - 1.0;
                [
                    (sigma_t / sigma_s1, sample),
                    (-(alpha_t * em1), d0),
                    if heun {
                        (alpha_t * (em1 / h + 1.0), d1)
                    } else {
                        (-(0.5 * (alpha_t * em1)), d1)
                    },
                ]
            }
            SinglestepAlgorithm::DpmSolver => {
                let ep1 = h.exp() - 1.0;
                [
                    (alpha_t / alpha_s1, sample),
                    (-(sigma_t * ep1), d0),
                    if heun {
                        (-(sigma_t * (ep1 / h - 1.0)), d1)
                    } else {
                        (-(0.5 * (sigma_t * ep1)), d1)
                    },
                ]
            }
            SinglestepAlgorithm::SdeDpmSolverPlusPlus => {
                let e2 = 1.0 - (-2.0 * h).exp();
                [
                    (sigma_t / sigma_s1 * (-h).exp(), sample),
                    (alpha_t * e2, d0),
                    if heun {
                        (alpha_t * (e2 / (-2.0 * h) + 1.0), d1)
                    } else {
                        (0.5 * (alpha_t * e2), d1)
                    },
                ]
            }
        };
        self.combine(&terms, (sigma_t, h), noise, 2, step_index)
    }

    /// diffusers' `singlestep_dpm_solver_third_order_update`: `m2` the
    /// group's first converted output, then `m1`, and `m0` this step's.
    fn singlestep_dpm_solver_third_order_update(
        &self,
        [m0, m1, m2]: [&T; 3],
        sample: &T,
        noise: Option<&T>,
        step_index: usize,
    ) -> Result<T> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index + 1);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(step_index);
        let (alpha_s1, sigma_s1) = self.alpha_sigma(step_index - 1);
        let (alpha_s2, sigma_s2) = self.alpha_sigma(step_index - 2);
        let lambda_t = lambda_f32(alpha_t, sigma_t);
        let lambda_s0 = lambda_f32(alpha_s0, sigma_s0);
        let lambda_s1 = lambda_f32(alpha_s1, sigma_s1);
        let lambda_s2 = lambda_f32(alpha_s2, sigma_s2);
        let (h, h_0, h_1) = (
            lambda_t - lambda_s2,
            lambda_s0 - lambda_s2,
            lambda_s1 - lambda_s2,
        );
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m2;
        let d1_0 = sub(m1, m2).scale(f64::from(1.0 / r1));
        let d1_1 = sub(m0, m2).scale(f64::from(1.0 / r0));
        let (em1, ep1, e2) = ((-h).exp() - 1.0, h.exp() - 1.0, 1.0 - (-2.0 * h).exp());
        let (x_coefficient, d0_coefficient, d1_coefficient) = match self.config.algorithm_type {
            SinglestepAlgorithm::DpmSolverPlusPlus | SinglestepAlgorithm::Deis => (
                sigma_t / sigma_s2,
                -(alpha_t * em1),
                alpha_t * (em1 / h + 1.0),
            ),
            SinglestepAlgorithm::DpmSolver => (
                alpha_t / alpha_s2,
                -(sigma_t * ep1),
                -(sigma_t * (ep1 / h - 1.0)),
            ),
            SinglestepAlgorithm::SdeDpmSolverPlusPlus => (
                sigma_t / sigma_s2 * (-h).exp(),
                alpha_t * e2,
                alpha_t * (e2 / (-2.0 * h) + 1.0),
            ),
        };
        let terms = [(x_coefficient, sample), (d0_coefficient, d0)];
        if self.config.solver_type == SinglestepSolverType::Midpoint {
            let terms = [terms[0], terms[1], (d1_coefficient, &d1_1)];
            return self.combine(&terms, (sigma_t, h), noise, 3, step_index);
        }
        // D1 = (r0 * D1_0 - r1 * D1_1) / (r0 - r1), D2 = 2 (D1_1 - D1_0) / (r0 - r1)
        let (r0_64, r1_64) = (f64::from(r0), f64::from(r1));
        let d1 = T::linear_combination(&[(r0_64, &d1_0), (-r1_64, &d1_1)]);
        let d1 = d1.scale(1.0 / f64::from(r0 - r1));
        let d2 = T::linear_combination(&[(2.0, &d1_1), (-2.0, &d1_0)]);
        let d2 = d2.scale(1.0 / f64::from(r0 - r1));
        let d2_coefficient = match self.config.algorithm_type {
            SinglestepAlgorithm::DpmSolverPlusPlus | SinglestepAlgorithm::Deis => {
                -(alpha_t * ((em1 + h) / (h * h) - 0.5))
            }
            SinglestepAlgorithm::DpmSolver => -(sigma_t * ((ep1 - h) / (h * h) - 0.5)),
            SinglestepAlgorithm::SdeDpmSolverPlusPlus => {
                let minus_2h = -2.0 * h;
                alpha_t * ((e2 + minus_2h) / (minus_2h * minus_2h) - 0.5)
            }
        };
        let terms = [
            terms[0],
            terms[1],
            (d1_coefficient, &d1),
            (d2_coefficient, &d2),
        ];
        self.combine(&terms, (sigma_t, h), noise, 3, step_index)
    }
}

pub(crate) fn build<T: SchedulerTensor + Send + 'static>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, DPMSolverSinglestepConfig, DPMSolverSinglestepScheduler<T>>(
        json,
        DPMSolverSinglestepScheduler::new,
    )
}

impl<T: SchedulerTensor + Send> Scheduler<T> for DPMSolverSinglestepScheduler<T> {
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
        if let Some(mu) = spec.mu {
            if !(self.config.use_dynamic_shifting
                && self.config.time_shift_type == TimeShiftType::Exponential)
            {
                return Err(SchedulerError::InvalidArgument {
                    field: "mu",
                    value: mu.to_string(),
                    reason: "needs use_dynamic_shifting with time_shift_type `exponential`".into(),
                });
            }
            if !mu.is_finite() {
                return Err(SchedulerError::InvalidArgument {
                    field: "mu",
                    value: mu.to_string(),
                    reason: "must be finite".into(),
                });
            }
        }
        let custom: Option<Vec<f64>> = match (&spec.num_inference_steps, &spec.timesteps) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(SchedulerError::InvalidArgument {
                    field: "num_inference_steps",
                    value: format!("{:?}", spec.num_inference_steps),
                    reason: "pass exactly one of num_inference_steps or timesteps".into(),
                });
            }
            (Some(n), None) => {
                common::check_num_steps(*n, train)?;
                None
            }
            (None, Some(ts)) => {
                let c = &self.config;
                if c.use_karras_sigmas || c.use_exponential_sigmas || c.use_beta_sigmas {
                    return Err(SchedulerError::Unsupported {
                        class: CLASS_NAME,
                        what: "custom timesteps with use_karras_sigmas, use_exponential_sigmas or use_beta_sigmas".into(),
                    });
                }
                if ts.is_empty() {
                    return Err(SchedulerError::InvalidArgument {
                        field: "timesteps",
                        value: "[]".into(),
                        reason: "must not be empty".into(),
                    });
                }
                if let Some(bad) = ts.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
                    return Err(SchedulerError::InvalidArgument {
                        field: "timesteps",
                        value: bad.to_string(),
                        reason: "must be finite and non-negative".into(),
                    });
                }
                // `np.array(timesteps).astype(np.int64)`.
                Some(ts.iter().map(|t| t.trunc()).collect())
            }
        };
        if let Some(mu) = spec.mu {
            self.flow_shift = mu.exp();
        }
        let n = spec
            .num_inference_steps
            .or(custom.as_ref().map(Vec::len))
            .ok_or_else(missing_steps)?;

        let table = &self.sigma_table;
        let log_sigmas = common::log_table_f32(table);
        let sigma_min = table[0];
        let sigma_max = table[table.len() - 1];
        let (sigmas, timesteps): (Vec<f64>, Vec<f64>) = if let Some(ts) = custom {
            let xp: Vec<f64> = (0..table.len()).map(|i| i as f64).collect();
            let s = ts.iter().map(|&t| common::interp(t, &xp, table)).collect();
            (s, ts)
        } else if self.config.use_karras_sigmas {
            let s = common::karras_sigmas(sigma_min, sigma_max, n);
            let t = s
                .iter()
                .map(|&x| common::round_half_even(common::sigma_to_t(x, &log_sigmas)))
                .collect();
            (s, t)
        } else if self.config.use_exponential_sigmas || self.config.use_beta_sigmas {
            let s = if self.config.use_exponential_sigmas {
                common::exponential_sigmas(sigma_min, sigma_max, n)
            } else {
                common::beta_sigmas(sigma_min, sigma_max, n)
            };
            let t = s
                .iter()
                .map(|&x| common::sigma_to_t(x, &log_sigmas).trunc())
                .collect();
            (s, t)
        } else if self.config.use_flow_sigmas {
            let shift = self.flow_shift;
            let alphas = common::linspace(1.0, 1.0 / train as f64, n + 1);
            let mut s: Vec<f64> = alphas
                .iter()
                .map(|a| flow_shifted(1.0 - a, shift))
                .collect();
            s.reverse();
            s.pop();
            let t = s.iter().map(|x| (x * train as f64).trunc()).collect();
            (s, t)
        } else {
            // Clip the high-noise end where lambda falls below `lambda_min_clipped`.
            let clip = self.config.lambda_min_clipped as f32;
            let clipped = self
                .lambda_table
                .iter()
                .filter(|&&l| (l as f32) < clip)
                .count();
            let top = (train - 1).saturating_sub(clipped) as f64;
            let mut t: Vec<f64> = common::linspace(0.0, top, n + 1)
                .into_iter()
                .map(common::round_half_even)
                .collect();
            t.reverse();
            t.pop();
            let xp: Vec<f64> = (0..table.len()).map(|i| i as f64).collect();
            let s = t.iter().map(|&x| common::interp(x, &xp, table)).collect();
            (s, t)
        };
        let sigma_last = final_sigma(self.config.final_sigmas_type, table[0]);
        let mut sigmas: Vec<f64> = sigmas.into_iter().map(common::f32r).collect();
        sigmas.push(common::f32r(sigma_last));

        self.sigmas = sigmas;
        self.timesteps = timesteps;
        self.num_inference_steps = Some(n);
        self.model_outputs = vec![None; self.config.solver_order];
        self.group_sample = None;
        if !self.config.lower_order_final && n % self.config.solver_order != 0 {
            self.config.lower_order_final = true;
        }
        if !self.config.lower_order_final && self.config.final_sigmas_type == FinalSigmasType::Zero
        {
            self.config.lower_order_final = true;
        }
        self.order_list = self.get_order_list(n);
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
        noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("step"));
        }
        common::check_step_shapes(model_output, sample)?;
        // Committed (`advance_from`) only once the step has succeeded.
        let step_index = self.index.peek(t, &self.timesteps)?;
        if step_index >= self.timesteps.len() || step_index >= self.order_list.len() {
            return Err(SchedulerError::PastLastStep(step_index));
        }
        let converted = self.convert_model_output(model_output, sample, step_index)?;
        let noise = match self.config.algorithm_type {
            SinglestepAlgorithm::SdeDpmSolverPlusPlus => {
                Some(common::step_noise(noise, model_output, sample)?)
            }
            _ => None,
        };
        let k = self.config.solver_order;
        // An img2img run may start where the order list asks for more outputs
        // than the history holds: lower the order until it does.
        let mut order = self.order_list[step_index].min(k);
        while order > 1 && self.model_outputs[k + 1 - order].is_none() {
            order -= 1;
        }
        // A group's update starts from the sample of its first (order-1) step.
        let start = match (order, &self.group_sample) {
            (1, _) | (_, None) => sample,
            (_, Some(group_sample)) => group_sample,
        };
        // The group's earlier converted outputs, newest first.
        let previous = (1..order)
            .map(|back| self.model_outputs[k - back].as_ref())
            .collect::<Option<Vec<&T>>>()
            .ok_or(SchedulerError::PastLastStep(step_index))?;
        let noise = noise.as_ref();
        common::check_state_shapes(
            model_output,
            [start].into_iter().chain(previous.clone()).chain(noise),
        )?;
        common::check_finite(model_output, sample)?;
        let prev_sample = match previous[..] {
            [] => self.dpm_solver_first_order_update(&converted, start, noise, step_index)?,
            [m1] => self.singlestep_dpm_solver_second_order_update(
                [&converted, m1],
                start,
                noise,
                step_index,
            )?,
            [m1, m2, ..] => self.singlestep_dpm_solver_third_order_update(
                [&converted, m1, m2],
                start,
                noise,
                step_index,
            )?,
        };
        if order == 1 {
            self.group_sample = Some(sample.clone());
        }
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));
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

    type S = DPMSolverSinglestepScheduler<CpuTensor>;

    /// diffusers' `DPMSolverSinglestepSchedulerTest.get_scheduler_config`.
    fn base() -> Value {
        json!({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "linear", "solver_order": 2, "prediction_type": "epsilon",
            "thresholding": false, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
            "solver_type": "midpoint", "variance_type": null,
            // The published values below were computed when `sigma_min` was the default.
            "final_sigmas_type": "sigma_min"})
    }

    fn with(mut v: Value, key: &str, val: Value) -> Value {
        v[key] = val;
        v
    }

    fn build_s(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    fn mean_of_loop(config: Value) -> f64 {
        let mut s = build_s(config);
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

    /// diffusers' published `test_full_loop_*` values.
    #[test]
    fn published_full_loops() {
        let cases = [
            (base(), 0.2791),
            (
                with(base(), "prediction_type", json!("v_prediction")),
                0.1453,
            ),
            (with(base(), "use_karras_sigmas", json!(true)), 0.2248),
            (
                with(
                    with(base(), "use_karras_sigmas", json!(true)),
                    "prediction_type",
                    json!("v_prediction"),
                ),
                0.0649,
            ),
        ];
        for (config, expected) in cases {
            let mean = mean_of_loop(config.clone());
            assert!(
                (mean - expected).abs() < 1e-3,
                "{config}: {mean} vs {expected}"
            );
        }
    }

    /// diffusers' `test_full_uneven_loop`: 50 steps, starting at the fourth timestep.
    #[test]
    fn published_uneven_loop() {
        let mut s = build_s(base());
        s.set_timesteps(50).unwrap();
        let mut x = dummy_sample_deter();
        let timesteps: Vec<f64> = s.timesteps()[3..].to_vec();
        for t in timesteps {
            let eps = dummy_model(&x, t);
            x = s
                .step(&eps, t, &x, &StepOptions::default(), &mut NoNoise)
                .unwrap()
                .prev_sample;
        }
        let mean = abs_sum_mean(&x).1;
        assert!((mean - 0.2574).abs() < 1e-3, "{mean}");
    }

    /// diffusers' `test_full_loop_with_noise`: img2img from the sixth timestep.
    #[test]
    fn published_loop_with_noise() {
        let mut s = build_s(base());
        s.set_timesteps(10).unwrap();
        let sample = dummy_sample_deter();
        let n = sample.numel();
        // `dummy_noise_deter`: the reversed ramp of `dummy_sample_deter`.
        let noise = CpuTensor::new(
            sample
                .data()
                .iter()
                .map(|v| ((n - 1) as f64 / n as f64 - *v as f64) as f32)
                .collect(),
            sample.shape(),
        )
        .unwrap();
        let timesteps = s.timesteps()[5..].to_vec();
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
            (sum - 269.2187).abs() < 1e-2 && (mean - 0.3505).abs() < 1e-3,
            "{sum} {mean}"
        );
    }

    #[test]
    fn order_lists_and_lower_order_final_as_diffusers() {
        let run = |extra: Value, n: usize| -> (Vec<usize>, bool) {
            let mut config = json!({});
            for (k, v) in extra.as_object().unwrap() {
                config[k] = v.clone();
            }
            let (c, _) = crate::config::parse_config::<DPMSolverSinglestepConfig>(&config).unwrap();
            let mut s = S::new(c).unwrap();
            Scheduler::<CpuTensor>::set_timesteps(&mut s, n).unwrap();
            (s.order_list().to_vec(), s.config().lower_order_final)
        };
        assert_eq!(
            run(json!({"solver_order": 3}), 7),
            (vec![1, 2, 3, 1, 2, 3, 1], true)
        );
        assert_eq!(
            run(json!({"solver_order": 3}), 9),
            (vec![1, 2, 3, 1, 2, 3, 1, 2, 1], true)
        );
        assert_eq!(
            run(
                json!({"solver_order": 3, "final_sigmas_type": "sigma_min"}),
                9
            ),
            (vec![1, 2, 3, 1, 2, 3, 1, 2, 3], false)
        );
        assert_eq!(
            run(json!({"solver_order": 2}), 6),
            (vec![1, 2, 1, 2, 1, 1], true)
        );
        assert_eq!(
            run(
                json!({"solver_order": 2, "final_sigmas_type": "sigma_min"}),
                5
            ),
            (vec![1, 2, 1, 2, 1], true)
        );
        // lambda_min_clipped trims the high-noise end (diffusers: [995, 796, 597, 398, 199]).
        let mut s =
            build_s(json!({"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}));
        s.set_timesteps(5).unwrap();
        assert_eq!(s.timesteps(), &[995.0, 796.0, 597.0, 398.0, 199.0]);
    }

    #[test]
    fn config_round_trips() {
        let s = build_s(json!({"algorithm_type": "deis", "solver_type": "bh1",
            "final_sigmas_type": "sigma_min", "lambda_min_clipped": -5.1}));
        let config = s.config();
        assert_eq!(config["algorithm_type"], "dpmsolver++");
        assert_eq!(config["solver_type"], "midpoint");
        assert_eq!(config["_class_name"], CLASS_NAME);
        let again = build_s(config.clone());
        assert_eq!(again.config(), config);
        // The default lambda_min_clipped (-inf) serializes as null and parses back.
        let d = build_s(json!({}));
        assert!(d.config()["lambda_min_clipped"].is_null());
        assert_eq!(build_s(d.config()).config(), d.config());
    }

    fn config_err(config: Value) -> SchedulerError {
        match crate::from_config_as::<CpuTensor>(CLASS_NAME, &config) {
            Err(e) => e,
            Ok(_) => panic!("{config} was accepted"),
        }
    }

    fn assert_field(err: SchedulerError, name: &str) {
        assert!(
            matches!(&err, SchedulerError::InvalidValue { field, .. } if field == name),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_configs() {
        assert_field(config_err(json!({"solver_order": 4})), "solver_order");
        assert_field(config_err(json!({"solver_order": 0})), "solver_order");
        assert_field(
            config_err(json!({"algorithm_type": "dpmsolver"})),
            "final_sigmas_type",
        );
        assert_field(
            config_err(json!({"algorithm_type": "deis"})),
            "final_sigmas_type",
        );
        assert_field(
            config_err(
                json!({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
                "thresholding": true}),
            ),
            "thresholding",
        );
        assert_field(
            config_err(
                json!({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
                "prediction_type": "flow_prediction"}),
            ),
            "prediction_type",
        );
        assert_field(
            config_err(json!({"use_karras_sigmas": true, "use_beta_sigmas": true})),
            "use_karras_sigmas",
        );
        assert_field(
            config_err(json!({"beta_schedule": "sigmoid"})),
            "beta_schedule",
        );
        assert!(matches!(
            config_err(json!({"algorithm_type": "dpmsolver+++"})),
            SchedulerError::InvalidConfig { field, .. } if field == "algorithm_type"
        ));
        assert!(matches!(
            config_err(json!({"solver_type": "euler"})),
            SchedulerError::InvalidConfig { field, .. } if field == "solver_type"
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
        assert!(s.set_timesteps(1001).is_err());
        let sigmas = TimestepSpec {
            sigmas: Some(vec![1.0, 0.5]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&sigmas),
            Err(SchedulerError::Unsupported { .. })
        ));
        let both = TimestepSpec {
            num_inference_steps: Some(3),
            timesteps: Some(vec![900.0, 500.0, 100.0]),
            ..TimestepSpec::default()
        };
        assert!(s.set_timesteps_with(&both).is_err());
        let mu = TimestepSpec {
            num_inference_steps: Some(3),
            mu: Some(0.5),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&mu),
            Err(SchedulerError::InvalidArgument { field: "mu", .. })
        ));
        let mut k = build_s(json!({"use_karras_sigmas": true}));
        let custom = TimestepSpec {
            timesteps: Some(vec![900.0, 500.0, 100.0]),
            ..TimestepSpec::default()
        };
        assert!(matches!(
            k.set_timesteps_with(&custom),
            Err(SchedulerError::Unsupported { .. })
        ));

        s.set_timesteps(2).unwrap();
        let y = CpuTensor::zeros(vec![1, 3, 2, 3]);
        assert!(matches!(
            s.step(&y, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
        let nan = CpuTensor::new(vec![f32::NAN; 12], vec![1, 3, 2, 2]).unwrap();
        assert!(matches!(
            s.step(&nan, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NonFinite("model_output"))
        ));
        assert!(matches!(
            s.step(&x, 998.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::UnknownTimestep(_))
        ));
        for t in s.timesteps().to_vec() {
            s.step(&x, t, &x, &opts, &mut NoNoise).unwrap();
        }
        assert!(matches!(
            s.step(&x, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::PastLastStep(2))
        ));

        // The SDE variant asks for one noise tensor per step.
        let mut sde = build_s(json!({"algorithm_type": "sde-dpmsolver++"}));
        sde.set_timesteps(2).unwrap();
        assert!(matches!(
            sde.step(&x, 999.0, &x, &opts, &mut NoNoise),
            Err(SchedulerError::NoiseExhausted { .. })
        ));
        let mut q = crate::QueuedNoise::new(vec![x.clone(), x.clone()]);
        for t in sde.timesteps().to_vec() {
            sde.step(&x, t, &x, &opts, &mut q).unwrap();
        }
        assert_eq!(q.used(), 2);
    }

    #[test]
    fn torch_linspace_is_bit_exact() {
        // torch.linspace(0.0001, 0.02, 1000, dtype=torch.float32)[[1, 7, 500, 998]]
        let v = common::torch_linspace_f32(0.0001, 0.02, 1000);
        let want = [
            0.00011991991777904332,
            0.00023943943961057812,
            0.010059959255158901,
            0.01998008042573929,
        ];
        for (i, w) in [1usize, 7, 500, 998].iter().zip(want) {
            assert_eq!(v[*i], w, "index {i}");
        }
    }
}
