//! Helpers shared by the alpha-parameterised (DDPM-family) schedulers: DDPM,
//! DDIM, PNDM, LCM and TCD.
//!
//! diffusers copies these pieces between the classes (`# Copied from
//! ...DDPMScheduler...`): the integer timestep layouts, the validation of custom
//! timesteps, the clip/threshold config fields, the `float32` lookups into
//! `alphas_cumprod`, the `pred_original_sample`/`pred_epsilon` of a model output
//! and the distilled schedules of LCM and TCD. One Rust copy keeps the five
//! schedulers from drifting apart.

use std::borrow::Cow;

use crate::common;
use crate::config::validate_betas_without_sigmoid_or_flow;
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid};
use crate::error::{Result, SchedulerError};
use crate::scheduler::TimestepSpec;
use crate::tensor::{NoiseSource, SchedulerTensor};

/// Shared validation of the clip/threshold fields of the DDPM family.
pub(crate) fn check_threshold_config(
    clip_sample_range: f64,
    dynamic_thresholding_ratio: f64,
    sample_max_value: f64,
) -> Result<()> {
    if !(clip_sample_range.is_finite() && clip_sample_range > 0.0) {
        return Err(invalid(
            "clip_sample_range",
            clip_sample_range,
            "must be finite and positive",
        ));
    }
    if !(0.0..=1.0).contains(&dynamic_thresholding_ratio) {
        return Err(invalid(
            "dynamic_thresholding_ratio",
            dynamic_thresholding_ratio,
            "must lie in [0, 1] (a quantile)",
        ));
    }
    if !(sample_max_value.is_finite() && sample_max_value > 0.0) {
        return Err(invalid(
            "sample_max_value",
            sample_max_value,
            "must be finite and positive",
        ));
    }
    Ok(())
}

/// `alphas_cumprod[t]` as the `f32` diffusers holds, for an integer training timestep.
pub(crate) fn alpha_f32(alphas_cumprod: &[f64], t: f64) -> Result<f32> {
    Ok(crate::scheduler::alpha_lookup(alphas_cumprod, &[t])?[0] as f32)
}

/// The inference timesteps of `timestep_spacing` as the DDPM family lays them
/// out: integers in `[0, train)`, descending (the DPM-Solver family spaces
/// `n + 1` points instead: `multistep::solver_timesteps`; the sigma family keeps
/// fractions: `sigmas::fractional_timesteps`).
pub(crate) fn integer_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    train: usize,
    steps_offset: usize,
) -> Result<Vec<i64>> {
    let timesteps: Vec<i64> = match spacing {
        TimestepSpacing::Linspace => common::linspace(0.0, (train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| common::round_half_even(t) as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (train / n) as i64;
            (0..n as i64)
                .rev()
                .map(|i| i * ratio + steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            common::arange(train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| common::round_half_even(t) as i64 - 1)
                .collect()
        }
    };
    if let Some(bad) = timesteps.iter().find(|&&t| t < 0 || t as usize >= train) {
        return Err(invalid(
            "steps_offset",
            steps_offset,
            format!("puts timestep {bad} outside [0, {train})"),
        ));
    }
    Ok(timesteps)
}

/// Validate a custom, strictly descending list of integer training timesteps.
pub(crate) fn custom_timesteps(timesteps: &[f64], train: usize) -> Result<Vec<i64>> {
    let bad = |t: f64, reason: &str| SchedulerError::InvalidArgument {
        field: "timesteps",
        value: format!("{t}"),
        reason: reason.into(),
    };
    if timesteps.is_empty() {
        return Err(SchedulerError::InvalidArgument {
            field: "timesteps",
            value: "[]".into(),
            reason: "must hold at least one timestep".into(),
        });
    }
    for &t in timesteps {
        if !(t.is_finite() && t.fract() == 0.0 && t >= 0.0) {
            return Err(bad(t, "every timestep must be a non-negative integer"));
        }
    }
    if let Some(w) = timesteps.windows(2).find(|w| w[1] >= w[0]) {
        return Err(bad(w[1], "custom timesteps must be in descending order"));
    }
    if timesteps[0] >= train as f64 {
        return Err(bad(
            timesteps[0],
            &format!("must start before num_train_timesteps = {train}"),
        ));
    }
    Ok(timesteps.iter().map(|&t| t as i64).collect())
}

/// Config checks shared by LCM and TCD.
#[allow(clippy::too_many_arguments)]
pub(crate) fn validate_distilled_config(
    class: &'static str,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    beta_schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
    prediction_type: PredictionType,
    original_inference_steps: usize,
    timestep_scaling: Option<f64>,
) -> Result<()> {
    validate_betas_without_sigmoid_or_flow(
        class,
        num_train_timesteps,
        beta_start,
        beta_end,
        beta_schedule,
        trained_betas,
        prediction_type,
    )?;
    if original_inference_steps == 0 {
        return Err(invalid("original_inference_steps", 0, "must be at least 1"));
    }
    if let Some(s) = timestep_scaling
        && !s.is_finite()
    {
        return Err(invalid("timestep_scaling", s, "must be finite"));
    }
    Ok(())
}

/// The distilled-schedule layout shared by LCM and TCD: a custom list (trimmed
/// by `strength`) or `n` points picked evenly from `origin` (ascending).
/// Returns the timesteps and diffusers' `num_inference_steps`.
pub(crate) fn distilled_timesteps(
    spec: &TimestepSpec,
    class: &'static str,
    train: usize,
    origin: &[i64],
    original_steps: usize,
    strength: f64,
) -> Result<(Vec<i64>, usize)> {
    if spec.sigmas.is_some() {
        return Err(SchedulerError::Unsupported {
            class,
            what: "custom sigmas".into(),
        });
    }
    let (timesteps, n) = match (&spec.timesteps, spec.num_inference_steps) {
        (Some(_), Some(_)) => {
            return Err(SchedulerError::InvalidArgument {
                field: "timesteps",
                value: "custom list".into(),
                reason: "pass either num_inference_steps or timesteps, not both".into(),
            });
        }
        (None, None) => {
            return Err(SchedulerError::InvalidArgument {
                field: "num_inference_steps",
                value: "None".into(),
                reason: "pass num_inference_steps or timesteps".into(),
            });
        }
        (Some(custom), None) => {
            let all = custom_timesteps(custom, train)?;
            let n = all.len();
            let init = ((n as f64 * strength).trunc() as usize).min(n);
            let ts = all[n - init..].to_vec();
            if ts.is_empty() {
                return Err(SchedulerError::InvalidArgument {
                    field: "strength",
                    value: strength.to_string(),
                    reason: "leaves no timestep of the custom schedule".into(),
                });
            }
            (ts, n)
        }
        (None, Some(n)) => {
            common::check_num_steps(n, train)?;
            if origin.len() / n < 1 {
                return Err(SchedulerError::InvalidArgument {
                    field: "num_inference_steps",
                    value: n.to_string(),
                    reason: format!(
                        "exceeds the {} timesteps of the distillation schedule \
                         (original_inference_steps = {original_steps} x strength = {strength})",
                        origin.len()
                    ),
                });
            }
            if n > original_steps {
                return Err(SchedulerError::InvalidArgument {
                    field: "num_inference_steps",
                    value: n.to_string(),
                    reason: format!("cannot exceed original_inference_steps = {original_steps}"),
                });
            }
            // np.floor(np.linspace(0, L, n, endpoint=False)) over the descending origin.
            let len = origin.len();
            let step = len as f64 / n as f64;
            let ts = (0..n)
                .map(|i| origin[len - 1 - (i as f64 * step).floor() as usize])
                .collect();
            (ts, n)
        }
    };
    if let Some(&bad) = timesteps.iter().find(|&&t| t as usize >= train) {
        return Err(SchedulerError::InvalidArgument {
            field: "strength",
            value: strength.to_string(),
            reason: format!("puts timestep {bad} outside [0, {train})"),
        });
    }
    Ok((timesteps, n))
}

/// `strength` of a spec (default 1), which must be finite and positive.
pub(crate) fn spec_strength(spec: &TimestepSpec) -> Result<f64> {
    let s = spec.strength.unwrap_or(1.0);
    if !(s.is_finite() && s > 0.0) {
        return Err(SchedulerError::InvalidArgument {
            field: "strength",
            value: s.to_string(),
            reason: "must be finite and positive".into(),
        });
    }
    Ok(s)
}

/// `k - 1, 2k - 1, ..` for `int(original_steps * strength)` points, `k = train / original_steps`.
pub(crate) fn distillation_origin(train: usize, original_steps: usize, strength: f64) -> Vec<i64> {
    let k = (train / original_steps) as i64;
    let count = (original_steps as f64 * strength).trunc() as i64;
    (1..=count).map(|i| i * k - 1).collect()
}

/// diffusers' `pred_original_sample` ("predicted x_0") of a model output at a
/// timestep whose cumulative alpha is `alpha_prod_t`. A `sample` prediction is
/// the model output itself (borrowed).
pub(crate) fn pred_original_sample<'a, T: SchedulerTensor>(
    prediction_type: PredictionType,
    model_output: &'a T,
    sample: &T,
    alpha_prod_t: f64,
) -> Cow<'a, T> {
    let (sqrt_alpha, sqrt_beta) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    match prediction_type {
        PredictionType::Sample => Cow::Borrowed(model_output),
        PredictionType::VPrediction => Cow::Owned(T::linear_combination(&[
            (sqrt_alpha, sample),
            (-sqrt_beta, model_output),
        ])),
        // `epsilon` (every alpha scheduler's config refuses `flow_prediction`).
        _ => Cow::Owned(T::linear_combination(&[
            (1.0 / sqrt_alpha, sample),
            (-sqrt_beta / sqrt_alpha, model_output),
        ])),
    }
}

/// diffusers' `pred_epsilon` (the predicted noise) of a model output at a
/// timestep whose cumulative alpha is `alpha_prod_t`, from the unbounded
/// `x0` as diffusers computes it. An `epsilon` prediction is the model output
/// itself (borrowed).
pub(crate) fn pred_epsilon<'a, T: SchedulerTensor>(
    prediction_type: PredictionType,
    model_output: &'a T,
    sample: &T,
    alpha_prod_t: f64,
) -> Cow<'a, T> {
    let (sqrt_alpha, sqrt_beta) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    match prediction_type {
        PredictionType::Sample => Cow::Owned(T::linear_combination(&[
            (1.0 / sqrt_beta, sample),
            (-sqrt_alpha / sqrt_beta, model_output),
        ])),
        PredictionType::VPrediction => Cow::Owned(T::linear_combination(&[
            (sqrt_alpha, model_output),
            (sqrt_beta, sample),
        ])),
        // `epsilon` (every alpha scheduler's config refuses `flow_prediction`).
        _ => Cow::Borrowed(model_output),
    }
}

/// How `pred_original_sample` is bounded (diffusers' "clip or threshold
/// predicted x_0"): Imagen's dynamic thresholding when `thresholding` is set
/// (it wins), else `clip_sample`'s clamp to `[-clip_sample_range, clip_sample_range]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum X0Bound {
    None,
    Clip(f64),
    Threshold { ratio: f64, max: f64 },
}

/// The [`X0Bound`] of a config with diffusers' field names (`thresholding`,
/// `dynamic_thresholding_ratio`, `sample_max_value`, `clip_sample`,
/// `clip_sample_range`).
macro_rules! x0_bound {
    ($config:expr) => {{
        let c = &$config;
        $crate::alpha::X0Bound::from_config(
            c.thresholding,
            c.dynamic_thresholding_ratio,
            c.sample_max_value,
            c.clip_sample,
            c.clip_sample_range,
        )
    }};
}
pub(crate) use x0_bound;

impl X0Bound {
    pub(crate) fn from_config(
        thresholding: bool,
        ratio: f64,
        sample_max_value: f64,
        clip_sample: bool,
        clip_sample_range: f64,
    ) -> Self {
        if thresholding {
            Self::Threshold {
                ratio,
                max: sample_max_value,
            }
        } else if clip_sample {
            Self::Clip(clip_sample_range)
        } else {
            Self::None
        }
    }

    /// `pred_original_sample` bounded. Thresholding takes a quantile over each
    /// whole batch item, so it first refuses non-finite inputs.
    pub(crate) fn apply<'a, T: SchedulerTensor>(
        self,
        pred_original_sample: Cow<'a, T>,
        model_output: &T,
        sample: &T,
    ) -> Result<Cow<'a, T>> {
        Ok(match self {
            Self::None => pred_original_sample,
            Self::Clip(range) => Cow::Owned(T::clamp(&pred_original_sample, -range, range)),
            Self::Threshold { ratio, max } => {
                common::check_finite(model_output, sample)?;
                Cow::Owned(pred_original_sample.dynamic_threshold(ratio, max))
            }
        })
    }
}

/// The noise of a step (diffusers' `randn_tensor`), shaped like the sample.
///
/// A stochastic step draws it before [`common::check_finite`], so that a step
/// refused for a non-finite input has drawn the noise diffusers' step (which
/// does not check) draws, and a caller that goes on stays on diffusers' noise
/// stream; only thresholding ([`X0Bound::apply`]) checks the inputs earlier.
/// When the source fails and an input is non-finite, the non-finite input is
/// the error reported.
pub(crate) fn draw_noise<T: SchedulerTensor>(
    noise: &mut dyn NoiseSource<T>,
    model_output: &T,
    sample: &T,
) -> Result<T> {
    let z = common::step_noise(noise, model_output, sample)?;
    if z.shape() != sample.shape() {
        return Err(SchedulerError::ShapeMismatch {
            what: "noise",
            expected: sample.shape(),
            got: z.shape(),
        });
    }
    Ok(z)
}
