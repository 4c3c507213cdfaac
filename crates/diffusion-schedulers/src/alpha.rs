//! Helpers shared by the alpha-parameterised (DDPM-family) schedulers: DDPM,
//! DDIM, PNDM, LCM and TCD.
//!
//! diffusers copies these pieces between the classes (`# Copied from
//! ...DDPMScheduler...`): the integer timestep layouts, the validation of custom
//! timesteps, the clip/threshold config fields and the `float32` lookups into
//! `alphas_cumprod`. One Rust copy keeps the five schedulers from drifting apart;
//! the arithmetic is unchanged from the per-scheduler versions it replaces.

use crate::common;
use crate::config::{BetaSchedule, PredictionType, TimestepSpacing, invalid, validate_betas};
use crate::error::{Result, SchedulerError};

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

/// diffusers' integer timestep layouts (DDPM/DDIM), in descending order.
pub(crate) fn spaced_timesteps(
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
    validate_alpha_schedule(
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

/// The beta-table and prediction-type checks of the alpha-parameterised
/// schedulers that implement neither the sigmoid beta schedule nor
/// `flow_prediction` (DDIM, LCM, TCD): diffusers raises for both, so they are
/// refused at construction with the class named in the error.
pub(crate) fn validate_alpha_schedule(
    class: &'static str,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    beta_schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
    prediction_type: PredictionType,
) -> Result<()> {
    validate_betas(
        num_train_timesteps,
        beta_start,
        beta_end,
        beta_schedule,
        trained_betas,
    )?;
    if beta_schedule == BetaSchedule::Sigmoid && trained_betas.is_none() {
        return Err(invalid(
            "beta_schedule",
            "sigmoid",
            format!("not implemented for {class}"),
        ));
    }
    if prediction_type == PredictionType::FlowPrediction {
        return Err(invalid(
            "prediction_type",
            "flow_prediction",
            format!("not supported by {class}"),
        ));
    }
    Ok(())
}
