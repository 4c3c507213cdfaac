//! Config enums shared by the schedulers, and the strict-but-tolerant parser.
//!
//! Every scheduler has its own config struct whose field names are diffusers'
//! `scheduler_config.json` names and whose `Default` is diffusers' defaults. The
//! parser below fills missing fields from that default, names the field of any
//! value that fails to parse, and reports (rather than rejects) keys the scheduler
//! does not know, as diffusers' `from_config` does when a config of one scheduler
//! is loaded into another.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, SchedulerError};

/// How `betas` are laid out over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, N)`.
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2` (Stable Diffusion).
    ScaledLinear,
    /// Glide's cosine schedule, betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
    /// `sigmoid(linspace(-6, 6, N)) * (beta_end - beta_start) + beta_start` (DDPM only in diffusers).
    Sigmoid,
}

/// What the denoising network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
    /// Flow matching velocity (FlowMatchEulerDiscrete; accepted there only).
    FlowPrediction,
}

/// How inference timesteps are spaced over the training range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// The sigma appended after the last inference step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    Zero,
    SigmaMin,
}

/// `"continuous"` or `"discrete"` timesteps (Euler's `timestep_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepType {
    Discrete,
    Continuous,
}

/// Parse `json` into the config struct `C`, diffusers-style: missing fields take
/// `C::default()`, keys starting with `_` (`_class_name`, `_diffusers_version`)
/// are metadata, and the other keys `C` does not know are returned (they are
/// tolerated, as diffusers does, so that one scheduler's config builds another).
pub fn parse_config<C>(json: &Value) -> Result<(C, Vec<String>)>
where
    C: DeserializeOwned + Serialize,
{
    let object = json
        .as_object()
        .ok_or_else(|| SchedulerError::InvalidJson(format!("expected an object, got {json}")))?;
    // Metadata keys never reach serde; `null` means "use the default" for every
    // field, as diffusers treats `None`; fields listed in `_use_default_values`
    // took the source class's default and take ours instead (diffusers'
    // `extract_init_dict`).
    let used_defaults = used_default_fields(json);
    let fields: Map<String, Value> = object
        .iter()
        .filter(|(k, v)| !k.starts_with('_') && !v.is_null() && !used_defaults.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config: C =
        serde_path_to_error::deserialize(Value::Object(fields.clone())).map_err(|e| {
            let field = e.path().to_string();
            SchedulerError::InvalidConfig {
                field,
                message: e.into_inner().to_string(),
            }
        })?;
    let known =
        serde_json::to_value(&config).map_err(|e| SchedulerError::InvalidJson(e.to_string()))?;
    let known = known.as_object().cloned().unwrap_or_default();
    let mut ignored: Vec<String> = fields
        .keys()
        .filter(|k| !known.contains_key(*k))
        .cloned()
        .collect();
    ignored.sort();
    Ok((config, ignored))
}

/// The names in a config's `_use_default_values` list.
fn used_default_fields(json: &Value) -> Vec<String> {
    json.get("_use_default_values")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The fields a config sets explicitly: present, not `null`, not metadata, not
/// listed in `_use_default_values`.
pub(crate) fn given_fields(json: &Value) -> Vec<String> {
    let used_defaults = used_default_fields(json);
    json.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| !k.starts_with('_') && !v.is_null() && !used_defaults.contains(*k))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Shorthand for building an [`SchedulerError::InvalidValue`].
pub(crate) fn invalid(
    field: &str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> SchedulerError {
    SchedulerError::InvalidValue {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The most training timesteps a config may declare: schedules are tables of
/// that many f64 values (a few arrays of them), and released models use 1,000
/// (a few use up to 4,000); a larger count is a typo, not a schedule.
pub const MAX_TRAIN_TIMESTEPS: usize = 1 << 20;

/// `num_train_timesteps` in `min..=MAX_TRAIN_TIMESTEPS`.
pub(crate) fn check_train_timesteps(num_train_timesteps: usize, min: usize) -> Result<()> {
    if !(min..=MAX_TRAIN_TIMESTEPS).contains(&num_train_timesteps) {
        return Err(invalid(
            "num_train_timesteps",
            num_train_timesteps,
            format!("must be in {min}..={MAX_TRAIN_TIMESTEPS}"),
        ));
    }
    Ok(())
}

/// Checks shared by every scheduler that derives its noise levels from betas.
pub(crate) fn validate_betas(
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    beta_schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
) -> Result<()> {
    check_train_timesteps(num_train_timesteps, 2)?;
    if let Some(betas) = trained_betas {
        if betas.len() != num_train_timesteps {
            return Err(invalid(
                "trained_betas",
                format!("{} values", betas.len()),
                format!("must hold num_train_timesteps = {num_train_timesteps} values"),
            ));
        }
        if let Some(b) = betas
            .iter()
            .find(|b| !(b.is_finite() && **b > 0.0 && **b <= 1.0))
        {
            return Err(invalid("trained_betas", b, "every beta must lie in (0, 1]"));
        }
        return Ok(());
    }
    if matches!(
        beta_schedule,
        BetaSchedule::Linear | BetaSchedule::ScaledLinear | BetaSchedule::Sigmoid
    ) {
        if !(beta_start.is_finite() && beta_start > 0.0 && beta_start < 1.0) {
            return Err(invalid("beta_start", beta_start, "must lie in (0, 1)"));
        }
        if !(beta_end.is_finite() && beta_end > 0.0 && beta_end < 1.0) {
            return Err(invalid("beta_end", beta_end, "must lie in (0, 1)"));
        }
        if beta_end < beta_start {
            return Err(invalid(
                "beta_end",
                beta_end,
                format!("must not be below beta_start = {beta_start}"),
            ));
        }
    }
    Ok(())
}

/// [`validate_betas`] for the schedulers that implement neither the sigmoid
/// beta schedule nor `flow_prediction` (all but DDPM, DPM-Solver, DEIS and
/// UniPC): diffusers raises for both, so they are refused at construction
/// with the class named in the error.
pub(crate) fn validate_betas_without_sigmoid_or_flow(
    class: &str,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Demo {
        steps: usize,
        schedule: BetaSchedule,
        opt: Option<f64>,
    }
    impl Default for Demo {
        fn default() -> Self {
            Self {
                steps: 7,
                schedule: BetaSchedule::Linear,
                opt: None,
            }
        }
    }

    #[test]
    fn defaults_unknown_and_errors() {
        let json = serde_json::json!({"_class_name": "X", "schedule": "scaled_linear", "foo": 1, "opt": null});
        let (c, ignored): (Demo, _) = parse_config(&json).unwrap();
        assert_eq!(
            c,
            Demo {
                steps: 7,
                schedule: BetaSchedule::ScaledLinear,
                opt: None
            }
        );
        assert_eq!(ignored, vec!["foo".to_string()]);
        let err = parse_config::<Demo>(&serde_json::json!({"schedule": "cubic"})).unwrap_err();
        assert!(
            matches!(err, SchedulerError::InvalidConfig { ref field, .. } if field == "schedule"),
            "{err}"
        );
    }
}
