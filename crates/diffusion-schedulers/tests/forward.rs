//! The forward process against diffusers 0.42 (`scripts/schedulers/gen_forward.py`):
//! `add_noise` (FlowMatch: diffusers' `scale_noise`) with one timestep per batch
//! item, and `get_velocity` where diffusers defines it, for every scheduler after
//! `set_timesteps(10)`. Training and img2img rely on both.

use diffusion_schedulers::{CpuTensor, SchedulerError, from_config_as};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct File {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    class_name: String,
    config: Value,
    num_inference_steps: usize,
    shape: Vec<usize>,
    timesteps: Vec<f64>,
    sample: Vec<f32>,
    noise: Vec<f32>,
    noisy: Vec<f32>,
    velocity: Option<Vec<f32>>,
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn add_noise_and_velocity_match_diffusers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/forward/forward.json"
    );
    let file: File = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(file.cases.len(), 17);
    for case in &file.cases {
        let name = &case.class_name;
        let mut s = from_config_as::<CpuTensor>(name, &case.config)
            .unwrap()
            .scheduler;
        s.set_timesteps(case.num_inference_steps).unwrap();
        let x = CpuTensor::new(case.sample.clone(), case.shape.clone()).unwrap();
        let z = CpuTensor::new(case.noise.clone(), case.shape.clone()).unwrap();
        let noisy = s
            .add_noise(&x, &z, &case.timesteps)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = rel_l2(noisy.data(), &case.noisy);
        assert!(err <= 1e-6, "{name}: add_noise rel L2 error {err:.2e}");
        match (&case.velocity, s.get_velocity(&x, &z, &case.timesteps)) {
            (Some(expected), Ok(v)) => {
                let err = rel_l2(v.data(), expected);
                assert!(err <= 1e-6, "{name}: get_velocity rel L2 error {err:.2e}");
            }
            (None, Err(SchedulerError::Unsupported { .. })) => {}
            (expected, got) => panic!(
                "{name}: diffusers velocity {}, Rust {:?}",
                expected.is_some(),
                got.err()
            ),
        }
        // A timestep list that is neither one value nor one per batch item is refused.
        assert!(
            s.add_noise(&x, &z, &[case.timesteps[0]; 3]).is_err(),
            "{name}"
        );
    }
}
