//! # diffusion-schedulers
//!
//! Noise schedulers for diffusion models as pure math, giving the same numbers as
//! Hugging Face diffusers 0.42. No tensor library: schedule math runs in `f64`, and
//! the element-wise updates go through the small [`SchedulerTensor`] trait, which
//! this crate implements for [`CpuTensor`] and the model crates implement for Burn.
//!
//! Build any scheduler from a diffusers `scheduler_config.json`:
//!
//! ```
//! use diffusion_schedulers::{from_config, CpuTensor, NoNoise, StepOptions};
//! let json = serde_json::json!({"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear",
//!     "beta_start": 0.00085, "beta_end": 0.012});
//! let mut s = from_config::<CpuTensor>(&json)?.scheduler;
//! s.set_timesteps(20)?;
//! let x = CpuTensor::zeros(vec![1, 4, 8, 8]);
//! let t = s.timesteps()[0];
//! let m = s.scale_model_input(&x, t)?;
//! let out = s.step(&m, t, &x, &StepOptions::default(), &mut NoNoise)?;
//! # Ok::<(), diffusion_schedulers::SchedulerError>(())
//! ```
//!
//! Swap schedulers as diffusers' `from_config` does: [`from_config_as`] builds a
//! named class from another scheduler's config, ignoring fields it does not know
//! and reporting them in [`Loaded::ignored_fields`].
//!
//! Seeds: [`TorchGenerator`] reproduces `torch.Generator("cpu").manual_seed(seed)`
//! and `torch.randn` bit for bit, and [`TorchNoise`] draws as diffusers'
//! `randn_tensor` does (one generator, or one per batch item), so a seed gives the
//! same latents and sampler noise as in diffusers.
//!
//! ## Schedulers
//!
#![doc = include_str!("../SCHEDULERS.md")]

pub(crate) mod alpha;
pub mod common;
pub mod config;
pub mod error;
pub(crate) mod multistep;
pub mod names;
pub mod scheduler;
pub mod schedulers;
pub(crate) mod sigmas;
pub mod tensor;
#[doc(hidden)]
pub mod testing;
pub mod torch_rng;

pub use config::{BetaSchedule, FinalSigmasType, PredictionType, TimestepSpacing, TimestepType};
pub use error::{Result, SchedulerError};
pub use names::{SamplerName, from_sampler_name};
pub use scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec};
pub use tensor::{CpuTensor, NoNoise, NoiseSource, QueuedNoise, SchedulerTensor};
pub use torch_rng::{BoxMuller, TorchGenerator, TorchNoise};

use serde_json::Value;

/// A scheduler built from a config, with the config keys it did not use.
pub struct Loaded<T: SchedulerTensor> {
    pub scheduler: Box<dyn Scheduler<T>>,
    /// Config keys this scheduler does not know (tolerated, as in diffusers).
    pub ignored_fields: Vec<String>,
}

impl<T: SchedulerTensor> std::fmt::Debug for Loaded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("class_name", &self.scheduler.class_name())
            .field("ignored_fields", &self.ignored_fields)
            .finish()
    }
}

/// Every scheduler class of this crate, by diffusers' class name.
pub const SCHEDULER_CLASSES: &[&str] = &[
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "LCMScheduler",
    "TCDScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "EDMEulerScheduler",
];

/// Build the scheduler named by the config's `_class_name`.
pub fn from_config<T: SchedulerTensor + Send + 'static>(json: &Value) -> Result<Loaded<T>> {
    let class = json
        .get("_class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| SchedulerError::InvalidConfig {
            field: "_class_name".into(),
            message: "missing or not a string".into(),
        })?;
    from_config_as(class, json)
}

/// Build scheduler `class_name` from `json`, which may be another scheduler's
/// config (diffusers' `SomeScheduler.from_config(other.config)`).
pub fn from_config_as<T: SchedulerTensor + Send + 'static>(
    class_name: &str,
    json: &Value,
) -> Result<Loaded<T>> {
    use schedulers::*;
    let (scheduler, ignored_fields) = match class_name {
        "DDPMScheduler" => ddpm::build::<T>(json)?,
        "DDIMScheduler" => ddim::build::<T>(json)?,
        "PNDMScheduler" => pndm::build::<T>(json)?,
        "LMSDiscreteScheduler" => lms_discrete::build::<T>(json)?,
        "EulerDiscreteScheduler" => euler_discrete::build::<T>(json)?,
        "EulerAncestralDiscreteScheduler" => euler_ancestral_discrete::build::<T>(json)?,
        "HeunDiscreteScheduler" => heun_discrete::build::<T>(json)?,
        "KDPM2DiscreteScheduler" => k_dpm_2_discrete::build::<T>(json)?,
        "KDPM2AncestralDiscreteScheduler" => k_dpm_2_ancestral_discrete::build::<T>(json)?,
        "DPMSolverMultistepScheduler" => dpmsolver_multistep::build::<T>(json)?,
        "DPMSolverSinglestepScheduler" => dpmsolver_singlestep::build::<T>(json)?,
        "UniPCMultistepScheduler" => unipc_multistep::build::<T>(json)?,
        "DEISMultistepScheduler" => deis_multistep::build::<T>(json)?,
        "LCMScheduler" => lcm::build::<T>(json)?,
        "TCDScheduler" => tcd::build::<T>(json)?,
        "FlowMatchEulerDiscreteScheduler" => flow_match_euler_discrete::build::<T>(json)?,
        "EDMEulerScheduler" => edm_euler::build::<T>(json)?,
        other => return Err(SchedulerError::UnknownScheduler(other.to_string())),
    };
    Ok(Loaded {
        scheduler,
        ignored_fields,
    })
}

/// Parse a `scheduler_config.json` text and build its scheduler.
///
/// Python's `json` writes non-finite floats as bare `Infinity`, `-Infinity` and
/// `NaN` (diffusers' default `lambda_min_clipped` is `-inf`); those read as `null`,
/// that is, as the field's default.
pub fn from_config_str<T: SchedulerTensor + Send + 'static>(text: &str) -> Result<Loaded<T>> {
    let json: Value = serde_json::from_str(&python_json_to_json(text))
        .map_err(|e| SchedulerError::InvalidJson(e.to_string()))?;
    from_config(&json)
}

/// Parse a `scheduler_config.json` text into JSON, reading Python's bare
/// `Infinity`/`NaN` as `null` (the field's default), for callers that edit
/// the config before building (a pipeline swapping its scheduler).
pub fn parse_config_text(text: &str) -> Result<Value> {
    serde_json::from_str(&python_json_to_json(text))
        .map_err(|e| SchedulerError::InvalidJson(e.to_string()))
}

/// Replace Python's bare `-Infinity`, `Infinity` and `NaN` tokens (outside strings) with `null`.
fn python_json_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string
            && let Some(token) = ["-Infinity", "Infinity", "NaN"]
                .iter()
                .find(|t| rest.starts_with(**t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Shared by the `build` function of every scheduler module: parse the config,
/// construct, and box, remembering which fields took their defaults.
pub(crate) fn build_boxed<T, C, S>(
    json: &Value,
    new: impl FnOnce(C) -> Result<S>,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)>
where
    T: SchedulerTensor,
    C: serde::de::DeserializeOwned + serde::Serialize,
    S: Scheduler<T> + 'static,
{
    let (config, ignored) = config::parse_config::<C>(json)?;
    let given = config::given_fields(json);
    let defaults = match serde_json::to_value(&config) {
        Ok(Value::Object(all)) => all
            .keys()
            .filter(|k| !given.contains(*k))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    Ok((
        Box::new(WithDefaults {
            inner: new(config)?,
            defaults,
        }),
        ignored,
    ))
}

/// A scheduler plus the config fields that took the class default, which its
/// `config()` reports as diffusers' `_use_default_values`: when that config
/// builds another class, those fields take the other class's defaults instead
/// (DDIM's `timestep_spacing = "leading"` does not leak into DPM-Solver).
struct WithDefaults<S> {
    inner: S,
    defaults: Vec<String>,
}

impl<T: SchedulerTensor, S: Scheduler<T>> Scheduler<T> for WithDefaults<S> {
    fn class_name(&self) -> &'static str {
        self.inner.class_name()
    }
    fn config(&self) -> Value {
        let mut v = self.inner.config();
        if let Some(map) = v.as_object_mut() {
            map.insert(
                "_use_default_values".into(),
                serde_json::json!(self.defaults),
            );
        }
        v
    }
    fn order(&self) -> usize {
        self.inner.order()
    }
    fn num_train_timesteps(&self) -> usize {
        self.inner.num_train_timesteps()
    }
    fn set_timesteps_with(&mut self, spec: &TimestepSpec) -> Result<()> {
        self.inner.set_timesteps_with(spec)
    }
    fn timesteps(&self) -> &[f64] {
        self.inner.timesteps()
    }
    fn sigmas(&self) -> Option<&[f64]> {
        self.inner.sigmas()
    }
    fn init_noise_sigma(&self) -> f64 {
        self.inner.init_noise_sigma()
    }
    fn scale_model_input(&mut self, sample: &T, t: f64) -> Result<T> {
        self.inner.scale_model_input(sample, t)
    }
    fn step(
        &mut self,
        model_output: &T,
        t: f64,
        sample: &T,
        options: &StepOptions,
        noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>> {
        self.inner.step(model_output, t, sample, options, noise)
    }
    fn add_noise(&self, original: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        self.inner.add_noise(original, noise, timesteps)
    }
    fn get_velocity(&self, sample: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        self.inner.get_velocity(sample, noise, timesteps)
    }
    fn set_begin_index(&mut self, begin: usize) {
        self.inner.set_begin_index(begin)
    }
    fn begin_index(&self) -> Option<usize> {
        self.inner.begin_index()
    }
}

/// Serialize a config with its `_class_name`, for [`Scheduler::config`].
pub(crate) fn config_json<C: serde::Serialize>(class_name: &str, config: &C) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("_class_name".into(), Value::String(class_name.into()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_floats_read_as_defaults() {
        let text = r#"{"_class_name": "DDIMScheduler", "clip_sample_range": NaN, "note": "NaN -Infinity", "x": -Infinity}"#;
        assert_eq!(
            python_json_to_json(text),
            r#"{"_class_name": "DDIMScheduler", "clip_sample_range": null, "note": "NaN -Infinity", "x": null}"#
        );
        let loaded = from_config_str::<CpuTensor>(text).unwrap();
        assert_eq!(
            loaded.scheduler.config()["clip_sample_range"],
            serde_json::json!(1.0)
        );
    }

    /// diffusers' `_use_default_values`: fields a config left at the source class's
    /// defaults take the target class's defaults.
    #[test]
    fn defaults_do_not_leak_between_classes() {
        let ddim =
            from_config_as::<CpuTensor>("DDIMScheduler", &serde_json::json!({"steps_offset": 1}))
                .unwrap();
        let config = ddim.scheduler.config();
        let defaults = config["_use_default_values"].as_array().unwrap();
        assert!(defaults.contains(&serde_json::json!("timestep_spacing")));
        assert!(!defaults.contains(&serde_json::json!("steps_offset")));
        let dpm = from_config_as::<CpuTensor>("DPMSolverMultistepScheduler", &config)
            .unwrap()
            .scheduler
            .config();
        assert_eq!(dpm["timestep_spacing"], serde_json::json!("linspace"));
        assert_eq!(dpm["steps_offset"], serde_json::json!(1));
    }

    /// `pred_original_sample: Some(false)` drops only that output: every
    /// scheduler's `prev_sample` is the same, bit for bit, with and without it
    /// (stochastic ones included, with the same noise and `eta`, churn on).
    #[test]
    fn opting_out_of_pred_original_sample_changes_nothing_else() {
        let shape = vec![2, 3, 5, 7];
        let n: usize = shape.iter().product();
        let wave = |k: f32| -> CpuTensor {
            let data = (0..n).map(|i| (i as f32 * 0.37 + k).sin()).collect();
            CpuTensor::new(data, shape.clone()).unwrap()
        };
        let noise = || QueuedNoise::new((0..40).map(|k| wave(k as f32 + 10.0)));
        let options = StepOptions {
            eta: Some(0.5),
            s_churn: Some(1.0),
            ..StepOptions::default()
        };
        let lean = StepOptions {
            pred_original_sample: Some(false),
            ..options.clone()
        };
        for class in SCHEDULER_CLASSES {
            let build = || {
                let mut s = from_config_as::<CpuTensor>(class, &serde_json::json!({}))
                    .unwrap()
                    .scheduler;
                s.set_timesteps(6).unwrap();
                s
            };
            let (mut full, mut slim) = (build(), build());
            let (mut noise_full, mut noise_slim) = (noise(), noise());
            let (mut x_full, mut x_slim) = (wave(0.0), wave(0.0));
            let mut returned = false;
            for (k, &t) in full.timesteps().to_vec().iter().enumerate() {
                let eps = wave(1.0 + k as f32);
                let a = full
                    .step(&eps, t, &x_full, &options, &mut noise_full)
                    .unwrap();
                let b = slim.step(&eps, t, &x_slim, &lean, &mut noise_slim).unwrap();
                assert_eq!(a.prev_sample, b.prev_sample, "{class} step {k}");
                assert!(b.pred_original_sample.is_none(), "{class} step {k}");
                returned |= a.pred_original_sample.is_some();
                (x_full, x_slim) = (a.prev_sample, b.prev_sample);
            }
            assert_eq!(noise_full.used(), noise_slim.used(), "{class}");
            let has_x0 = !matches!(
                *class,
                "PNDMScheduler"
                    | "DPMSolverMultistepScheduler"
                    | "DPMSolverSinglestepScheduler"
                    | "UniPCMultistepScheduler"
                    | "DEISMultistepScheduler"
                    | "FlowMatchEulerDiscreteScheduler"
            );
            assert_eq!(returned, has_x0, "{class}");
        }
    }
}
