//! A1111 / ComfyUI sampler names -> diffusers scheduler class and config overrides.
//!
//! The mapping follows diffusers' scheduler documentation ("DPM++ 2M Karras" is
//! `DPMSolverMultistepScheduler` with `use_karras_sigmas = true`). The sigma
//! schedule may be given as a suffix word (`Karras`, `Exponential`, `Beta`) in
//! A1111 style, or as ComfyUI's `_karras`-style suffix.

use serde_json::{Map, Value, json};

use crate::error::{Result, SchedulerError};

/// A resolved sampler name: the class to build and the config fields to override.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerName {
    pub class_name: &'static str,
    pub overrides: Map<String, Value>,
}

/// (A1111 name, ComfyUI name, diffusers class, overrides)
const TABLE: &[(&str, &str, &str, &str)] = &[
    ("DPM++ 2M", "dpmpp_2m", "DPMSolverMultistepScheduler", "{}"),
    (
        "DPM++ 2M SDE",
        "dpmpp_2m_sde",
        "DPMSolverMultistepScheduler",
        r#"{"algorithm_type":"sde-dpmsolver++"}"#,
    ),
    (
        "DPM++ 2S a",
        "dpmpp_2s_ancestral",
        "DPMSolverSinglestepScheduler",
        "{}",
    ),
    ("DPM2", "dpm_2", "KDPM2DiscreteScheduler", "{}"),
    (
        "DPM2 a",
        "dpm_2_ancestral",
        "KDPM2AncestralDiscreteScheduler",
        "{}",
    ),
    ("Euler", "euler", "EulerDiscreteScheduler", "{}"),
    (
        "Euler a",
        "euler_ancestral",
        "EulerAncestralDiscreteScheduler",
        "{}",
    ),
    ("Heun", "heun", "HeunDiscreteScheduler", "{}"),
    ("LMS", "lms", "LMSDiscreteScheduler", "{}"),
    ("DDIM", "ddim", "DDIMScheduler", "{}"),
    ("DDPM", "ddpm", "DDPMScheduler", "{}"),
    ("PLMS", "plms", "PNDMScheduler", "{}"),
    ("UniPC", "uni_pc", "UniPCMultistepScheduler", "{}"),
    (
        "UniPC bh2",
        "uni_pc_bh2",
        "UniPCMultistepScheduler",
        r#"{"solver_type":"bh2"}"#,
    ),
    ("DEIS", "deis", "DEISMultistepScheduler", "{}"),
    ("LCM", "lcm", "LCMScheduler", "{}"),
    ("TCD", "tcd", "TCDScheduler", "{}"),
];

/// Sigma-schedule suffixes: (A1111 word, ComfyUI suffix, config field).
const SCHEDULES: &[(&str, &str, &str)] = &[
    ("Karras", "karras", "use_karras_sigmas"),
    ("Exponential", "exponential", "use_exponential_sigmas"),
    ("Beta", "beta", "use_beta_sigmas"),
];

/// Resolve an A1111 name ("DPM++ 2M Karras", "Euler a") or a ComfyUI name
/// ("dpmpp_2m_karras", "euler_ancestral") to a scheduler class and overrides.
pub fn from_sampler_name(name: &str) -> Result<SamplerName> {
    let trimmed = name.trim();
    let mut base = trimmed;
    let mut schedule_field = None;
    for (word, comfy, field) in SCHEDULES {
        if let Some(rest) = trimmed.strip_suffix(word).and_then(|r| r.strip_suffix(' ')) {
            base = rest.trim_end();
            schedule_field = Some(*field);
        } else if let Some(rest) = trimmed
            .strip_suffix(comfy)
            .and_then(|r| r.strip_suffix('_'))
        {
            base = rest;
            schedule_field = Some(*field);
        }
    }
    let (_, _, class_name, overrides) = TABLE
        .iter()
        .find(|(a1111, comfy, _, _)| {
            a1111.eq_ignore_ascii_case(base) || comfy.eq_ignore_ascii_case(base)
        })
        .ok_or_else(|| SchedulerError::UnknownScheduler(name.to_string()))?;
    let mut overrides: Map<String, Value> = serde_json::from_str(overrides).unwrap_or_default();
    if let Some(field) = schedule_field {
        overrides.insert(field.to_string(), json!(true));
    }
    Ok(SamplerName {
        class_name,
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_a1111_and_comfy_names() {
        let s = from_sampler_name("DPM++ 2M Karras").unwrap();
        assert_eq!(s.class_name, "DPMSolverMultistepScheduler");
        assert_eq!(s.overrides.get("use_karras_sigmas"), Some(&json!(true)));
        let s = from_sampler_name("dpmpp_2m_sde_karras").unwrap();
        assert_eq!(
            s.overrides.get("algorithm_type"),
            Some(&json!("sde-dpmsolver++"))
        );
        assert_eq!(
            from_sampler_name("Euler a").unwrap().class_name,
            "EulerAncestralDiscreteScheduler"
        );
        assert!(matches!(
            from_sampler_name("Fancy 9"),
            Err(SchedulerError::UnknownScheduler(_))
        ));
    }
}
