//! Parity with diffusers 0.42: every fixture written by
//! `scripts/schedulers/gen_fixtures.py` is replayed through the Rust scheduler.
//!
//! Per case: timesteps equal (to f32 precision, as diffusers stores them), sigmas
//! within 1e-5 relative, init_noise_sigma within 1e-5 relative, the noise drawn
//! exactly as often as diffusers drew it, and the final sample of the trace loop
//! within 1e-5 relative L2.
//!
//! `FIXTURE=substring cargo test -p diffusion-schedulers --test parity` runs a subset.

use std::path::Path;

use diffusion_schedulers::testing::dummy_model;
use diffusion_schedulers::{
    CpuTensor, QueuedNoise, Scheduler, SchedulerTensor, StepOptions, TimestepSpec, from_config_as,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct FixtureFile {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    class_name: String,
    source_class: Option<String>,
    config: Value,
    set_timesteps: TimestepSpec,
    step_kwargs: StepOptions,
    shape: Vec<usize>,
    sample: Vec<f32>,
    noise: Vec<Vec<f32>>,
    /// img2img: diffusers' img2img pipeline's strength and its `add_noise` noise.
    img2img_strength: Option<f64>,
    init_noise: Option<Vec<f32>>,
    expected: Expected,
}

#[derive(Deserialize)]
struct Expected {
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    order: usize,
    sample: Vec<f64>,
}

fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

fn build(case: &Case) -> Result<Box<dyn Scheduler<CpuTensor>>, String> {
    let config = match &case.source_class {
        // diffusers' `Class.from_config(Source(**config).config)`.
        Some(src) => from_config_as::<CpuTensor>(src, &case.config)
            .map_err(|e| e.to_string())?
            .scheduler
            .config(),
        None => case.config.clone(),
    };
    Ok(from_config_as::<CpuTensor>(&case.class_name, &config)
        .map_err(|e| e.to_string())?
        .scheduler)
}

fn check(case: &Case) -> Result<f64, String> {
    let mut s = build(case)?;
    s.set_timesteps_with(&case.set_timesteps)
        .map_err(|e| format!("set_timesteps: {e}"))?;
    let exp = &case.expected;
    let ts = s.timesteps();
    if ts.len() != exp.timesteps.len() {
        return Err(format!(
            "timesteps: {} vs diffusers {}: {ts:?} vs {:?}",
            ts.len(),
            exp.timesteps.len(),
            exp.timesteps
        ));
    }
    for (i, (a, b)) in ts.iter().zip(&exp.timesteps).enumerate() {
        // diffusers keeps float timesteps in f32: equal as f32, or, for timesteps
        // interpolated through logarithms (where numpy's and Rust's `log` may differ
        // in the last bit), within one f32 ulp.
        if (*a as f32) != (*b as f32) && (a - b).abs() > 1e-6 * b.abs().max(1.0) {
            return Err(format!("timestep {i}: {a} vs diffusers {b}"));
        }
    }
    match (s.sigmas(), &exp.sigmas) {
        (Some(a), Some(b)) => {
            if a.len() != b.len() {
                return Err(format!("sigmas: {} vs diffusers {}", a.len(), b.len()));
            }
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if (x - y).abs() > 1e-5 * y.abs() + 1e-7 * scale.max(1.0) {
                    return Err(format!("sigma {i}: {x} vs diffusers {y}"));
                }
            }
        }
        (None, Some(_)) => return Err("diffusers has sigmas, Rust none".into()),
        _ => {}
    }
    let ins = s.init_noise_sigma();
    if (ins - exp.init_noise_sigma).abs() > 1e-5 * exp.init_noise_sigma.abs().max(1e-6) {
        return Err(format!(
            "init_noise_sigma {ins} vs diffusers {}",
            exp.init_noise_sigma
        ));
    }
    if s.order() != exp.order {
        return Err(format!("order {} vs diffusers {}", s.order(), exp.order));
    }
    let sample =
        CpuTensor::new(case.sample.clone(), case.shape.clone()).map_err(|e| e.to_string())?;
    let noise: Vec<CpuTensor> = case
        .noise
        .iter()
        .map(|z| CpuTensor::new(z.clone(), case.shape.clone()).unwrap())
        .collect();
    let mut noise = QueuedNoise::new(noise);
    // img2img as diffusers' StableDiffusionImg2ImgPipeline drives a scheduler:
    // skip the first steps, set_begin_index, add_noise at the first kept timestep.
    let (mut x, start) = match (case.img2img_strength, &case.init_noise) {
        (Some(strength), Some(init_noise)) => {
            let n = case
                .set_timesteps
                .num_inference_steps
                .ok_or("img2img needs num_inference_steps")?;
            let init_timestep = ((n as f64 * strength) as usize).min(n);
            let start = n.saturating_sub(init_timestep) * s.order();
            s.set_begin_index(start);
            let z = CpuTensor::new(init_noise.clone(), case.shape.clone())
                .map_err(|e| e.to_string())?;
            let t0 = *s
                .timesteps()
                .get(start)
                .ok_or("img2img start past the schedule")?;
            (
                s.add_noise(&sample, &z, &[t0])
                    .map_err(|e| format!("add_noise({t0}): {e}"))?,
                start,
            )
        }
        _ => (sample.scale(ins), 0),
    };
    let loop_timesteps: Vec<f64> = s.timesteps()[start..].to_vec();
    for t in loop_timesteps {
        let m = s
            .scale_model_input(&x, t)
            .map_err(|e| format!("scale_model_input({t}): {e}"))?;
        let eps = dummy_model(&m, t);
        x = s
            .step(&eps, t, &x, &case.step_kwargs, &mut noise)
            .map_err(|e| format!("step({t}): {e}"))?
            .prev_sample;
    }
    if noise.used() != case.noise.len() {
        return Err(format!(
            "drew {} noise tensors, diffusers drew {}",
            noise.used(),
            case.noise.len()
        ));
    }
    let err = rel_l2(x.data(), &exp.sample);
    if err.is_nan() || err > 1e-5 {
        return Err(format!("final sample rel L2 error {err:.3e}"));
    }
    Ok(err)
}

#[test]
fn diffusers_parity() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let filter = std::env::var("FIXTURE").unwrap_or_default();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (mut passed, mut failures) = (0usize, Vec::new());
    let mut worst = (0.0f64, String::new());
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let file: FixtureFile = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        for case in &file.cases {
            let id = format!("{stem}/{}", case.name);
            if !id.contains(&filter) {
                continue;
            }
            match check(case) {
                Ok(err) => {
                    passed += 1;
                    if err > worst.0 {
                        worst = (err, id.clone());
                    }
                }
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
    }
    eprintln!(
        "{passed} fixture cases passed; largest final-sample rel L2 error {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(
        passed > 0 || !filter.is_empty(),
        "no fixture cases found in {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        passed + failures.len(),
        failures.join("\n")
    );
}
