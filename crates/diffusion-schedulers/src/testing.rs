//! Test helpers that reproduce diffusers' scheduler test fixtures
//! (`tests/schedulers/test_schedulers.py`), so that the published values of
//! diffusers' own test-suite can be checked here.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::from_config_as;
use crate::scheduler::{Scheduler, StepOptions, TimestepSpec};
use crate::tensor::{CpuTensor, NoiseSource, QueuedNoise, SchedulerTensor};

/// diffusers' `dummy_sample_deter`: `arange(4*3*8*8)` laid out as (C, H, W, B),
/// divided by the element count, permuted to (B, C, H, W).
pub fn dummy_sample_deter() -> CpuTensor {
    let (b, c, h, w) = (4usize, 3usize, 8usize, 8usize);
    let n = b * c * h * w;
    let mut data = vec![0f32; n];
    for bi in 0..b {
        for ci in 0..c {
            for hi in 0..h {
                for wi in 0..w {
                    let src = ((ci * h + hi) * w + wi) * b + bi;
                    data[((bi * c + ci) * h + hi) * w + wi] = (src as f64 / n as f64) as f32;
                }
            }
        }
    }
    CpuTensor::new(data, vec![b, c, h, w]).expect("shape")
}

/// diffusers' `dummy_noise_deter`: the reversed ramp of [`dummy_sample_deter`].
pub fn dummy_noise_deter() -> CpuTensor {
    let (b, c, h, w) = (4usize, 3usize, 8usize, 8usize);
    let n = b * c * h * w;
    let mut data = vec![0f32; n];
    for bi in 0..b {
        for ci in 0..c {
            for hi in 0..h {
                for wi in 0..w {
                    let src = ((ci * h + hi) * w + wi) * b + bi;
                    data[((bi * c + ci) * h + hi) * w + wi] = (n - 1 - src) as f32 / n as f32;
                }
            }
        }
    }
    CpuTensor::new(data, vec![b, c, h, w]).expect("shape")
}

/// diffusers' `dummy_model`: `sample * t / (t + 1)`, evaluated as torch does in
/// `float32` (a product, then a quotient), so the model output is bit-identical.
pub fn dummy_model(sample: &CpuTensor, t: f64) -> CpuTensor {
    let t = t as f32;
    let data = sample.data().iter().map(|v| v * t / (t + 1.0)).collect();
    CpuTensor::new(data, sample.shape()).expect("same shape")
}

/// The trace loop of the parity suite: `x = sample * init_noise_sigma`, then for
/// each timestep `m = scale_model_input(x, t)`, `eps = dummy_model(m, t)`,
/// `x = step(eps, t, x)`.
pub fn full_loop(
    scheduler: &mut dyn Scheduler<CpuTensor>,
    sample: &CpuTensor,
    options: &StepOptions,
    noise: &mut dyn NoiseSource<CpuTensor>,
) -> crate::Result<CpuTensor> {
    let mut x = sample.scale(scheduler.init_noise_sigma());
    let timesteps = scheduler.timesteps().to_vec();
    for t in timesteps {
        let m = scheduler.scale_model_input(&x, t)?;
        let eps = dummy_model(&m, t);
        x = scheduler.step(&eps, t, &x, options, noise)?.prev_sample;
    }
    Ok(x)
}

/// The loop of diffusers' own tests of the k-diffusion schedulers, which
/// (unlike [`full_loop`]) feeds the *scaled* sample back into `step`:
/// `x = scale_model_input(x, t)`, `x = step(dummy_model(x, t), t, x)`.
pub fn scaled_loop(
    scheduler: &mut dyn Scheduler<CpuTensor>,
    start: CpuTensor,
    timesteps: &[f64],
) -> CpuTensor {
    let mut x = start;
    for &t in timesteps {
        x = scheduler.scale_model_input(&x, t).unwrap();
        let eps = dummy_model(&x, t);
        x = scheduler
            .step(&eps, t, &x, &StepOptions::default(), &mut crate::NoNoise)
            .unwrap()
            .prev_sample;
    }
    x
}

/// `(sum |x|, mean |x|)` as diffusers' tests report them.
pub fn abs_sum_mean(x: &CpuTensor) -> (f64, f64) {
    let sum: f64 = x.data().iter().map(|v| v.abs() as f64).sum();
    (sum, sum / x.data().len() as f64)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    class_name: String,
    #[serde(default = "empty_object")]
    config: Value,
    num_inference_steps: Option<usize>,
    set_timesteps: Option<TimestepSpec>,
    shape: Vec<usize>,
    sample: Vec<f32>,
    #[serde(default)]
    noise: Vec<Vec<f32>>,
    #[serde(default)]
    step_kwargs: StepOptions,
}

fn empty_object() -> Value {
    json!({})
}

/// The trace example's request handling: parse, run, and return the JSON result,
/// or one line naming what is wrong with the request.
pub fn trace_request(text: &str) -> Result<Value, String> {
    let req: Request = serde_json::from_str(text).map_err(|e| format!("invalid request: {e}"))?;
    let numel: usize = req.shape.iter().product();
    if req.shape.is_empty() || numel != req.sample.len() {
        return Err(format!(
            "`sample` has {} values but `shape` {:?} needs {numel}",
            req.sample.len(),
            req.shape
        ));
    }
    if let Some((i, z)) = req.noise.iter().enumerate().find(|(_, z)| z.len() != numel) {
        return Err(format!(
            "`noise[{i}]` has {} values, expected {numel}",
            z.len()
        ));
    }
    let spec = match (req.set_timesteps, req.num_inference_steps) {
        (Some(spec), None) => spec,
        (None, Some(n)) => TimestepSpec::steps(n),
        (Some(_), Some(_)) => {
            return Err("give `num_inference_steps` or `set_timesteps`, not both".into());
        }
        (None, None) => return Err("missing `num_inference_steps`".into()),
    };
    let loaded =
        from_config_as::<CpuTensor>(&req.class_name, &req.config).map_err(|e| e.to_string())?;
    let mut s = loaded.scheduler;
    s.set_timesteps_with(&spec).map_err(|e| e.to_string())?;
    let sample = CpuTensor::new(req.sample, req.shape.clone()).map_err(|e| e.to_string())?;
    let noise = req
        .noise
        .into_iter()
        .map(|z| CpuTensor::new(z, req.shape.clone()));
    let mut noise = QueuedNoise::new(
        noise
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?,
    );
    let mut x = sample.scale(s.init_noise_sigma());
    for t in s.timesteps().to_vec() {
        let m = s.scale_model_input(&x, t).map_err(|e| e.to_string())?;
        let eps = dummy_model(&m, t);
        x = s
            .step(&eps, t, &x, &req.step_kwargs, &mut noise)
            .map_err(|e| e.to_string())?
            .prev_sample;
    }
    Ok(json!({
        "timesteps": s.timesteps(),
        "sigmas": s.sigmas(),
        "init_noise_sigma": s.init_noise_sigma(),
        "sample": x.data(),
    }))
}

#[cfg(test)]
mod tests {
    use super::trace_request;

    #[test]
    fn bad_trace_requests_name_the_problem() {
        let ok = r#"{"class_name":"DDIMScheduler","num_inference_steps":3,"shape":[1,2],"sample":[0.5,-0.5]}"#;
        let out = trace_request(ok).unwrap();
        assert_eq!(out["timesteps"], serde_json::json!([666.0, 333.0, 0.0]));
        let cases = [
            (
                r#"{"class_name":"Nope","num_inference_steps":3,"shape":[1,2],"sample":[0,0]}"#,
                "Nope",
            ),
            (
                r#"{"class_name":"DDIMScheduler","config":{"beta_schedule":"cubic"},"num_inference_steps":3,"shape":[1,2],"sample":[0,0]}"#,
                "beta_schedule",
            ),
            (
                r#"{"class_name":"DDIMScheduler","num_inference_steps":3,"shape":[1,3],"sample":[0,0]}"#,
                "sample",
            ),
            (
                r#"{"class_name":"DDIMScheduler","num_inference_steps":3,"shape":[1,2],"sample":[0,0],"step_kwargs":{"eta":1.0}}"#,
                "noise",
            ),
            (
                r#"{"class_name":"DDIMScheduler","num_inference_steps":0,"shape":[1,2],"sample":[0,0]}"#,
                "num_inference_steps",
            ),
            (
                r#"{"class_name":"DDIMScheduler","shape":[1,2],"sample":[0,0]}"#,
                "num_inference_steps",
            ),
            (
                r#"{"class_name":"DDIMScheduler","num_inference_steps":3,"shape":[1,2],"sample":[0,0],"step_kwargs":{"etta":1}}"#,
                "etta",
            ),
        ];
        for (req, needle) in cases {
            let err = trace_request(req).unwrap_err();
            assert!(err.contains(needle), "{req}: {err}");
        }
    }
}
