//! A step that fails leaves the scheduler as it was. A step fails on a
//! non-finite model output or when its noise source fails; for every
//! scheduler, deterministic and stochastic configs, such a failed step must
//! return an error and the run must then go on exactly as a run that never
//! failed, bit for bit. A scheduler that stored a history entry, moved its
//! step index or a half-step state before the error would diverge.

use diffusion_schedulers::{
    CpuTensor, NoiseSource, SCHEDULER_CLASSES, SchedulerError, SchedulerTensor, StepOptions,
    from_config_as,
};
use serde_json::json;

/// The same noise at every draw, or an error at every draw when `fail`.
struct Noise {
    fail: bool,
    requested: usize,
}

impl NoiseSource<CpuTensor> for Noise {
    fn noise(&mut self, like: &CpuTensor) -> Result<CpuTensor, SchedulerError> {
        self.requested += 1;
        if self.fail {
            return Err(SchedulerError::NoiseExhausted { requested: 1 });
        }
        let n = like.numel();
        let data = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.2).collect();
        CpuTensor::new(data, like.shape())
    }
}

fn noise(fail: bool) -> Noise {
    Noise { fail, requested: 0 }
}

fn tensor(shape: &[usize], seed: usize) -> CpuTensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i + seed) * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    CpuTensor::new(data, shape.to_vec()).unwrap()
}

fn with_nan(t: &CpuTensor) -> CpuTensor {
    let mut data = t.data().to_vec();
    let last = data.len() - 1;
    data[last] = f32::NAN;
    CpuTensor::new(data, t.shape()).unwrap()
}

fn bits(t: &CpuTensor) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn a_failed_step_changes_nothing() {
    let shape = [1, 4, 5, 7];
    // Stochastic where the scheduler can be: DDIM/DDPM eta, Euler churn,
    // SDE solvers; the ancestral ones always are.
    let options = StepOptions {
        eta: Some(0.5),
        s_churn: Some(1.0),
        ..StepOptions::default()
    };
    let configs = [
        json!({}),
        json!({"solver_order": 3, "skip_prk_steps": true}),
        json!({"algorithm_type": "sde-dpmsolver++", "stochastic_sampling": true, "variance_type": "fixed_small"}),
    ];
    let (mut nan_failures, mut noise_failures) = (0, 0);
    let mut runs = 0;
    for class in SCHEDULER_CLASSES {
        for (k, config) in configs.iter().enumerate() {
            let build = || {
                let mut s = from_config_as::<CpuTensor>(class, config).ok()?.scheduler;
                s.set_timesteps(8).unwrap();
                Some(s)
            };
            let (Some(mut clean), Some(mut tried)) = (build(), build()) else {
                // The SDE config names an algorithm only the DPM solvers have.
                assert_eq!(k, 2, "{class} refused {config}");
                continue;
            };
            runs += 1;
            let timesteps = clean.timesteps().to_vec();
            let mut x_clean = tensor(&shape, 0).scale(clean.init_noise_sigma());
            let mut x_tried = x_clean.clone();
            for (i, &t) in timesteps.iter().enumerate() {
                let model_output = tensor(&shape, i + 1);
                let what = format!("{class} {config}: step {i}");
                let mut b = None;
                if i % 3 == 2 {
                    let failed = tried.step(
                        &with_nan(&model_output),
                        t,
                        &x_tried,
                        &options,
                        &mut noise(false),
                    );
                    assert!(
                        matches!(failed, Err(SchedulerError::NonFinite(_))),
                        "{what}: a NaN model output was not refused"
                    );
                    nan_failures += 1;
                    // A failing noise source fails the step where the step
                    // draws noise; a step that draws none has taken its step.
                    let mut failing = noise(true);
                    match tried.step(&model_output, t, &x_tried, &options, &mut failing) {
                        Err(_) => {
                            assert!(failing.requested > 0, "{what}: failed without noise");
                            noise_failures += 1;
                        }
                        Ok(out) => {
                            assert_eq!(failing.requested, 0, "{what}: noise error ignored");
                            b = Some(out);
                        }
                    }
                }
                let a = clean
                    .step(&model_output, t, &x_clean, &options, &mut noise(false))
                    .unwrap();
                let b = match b {
                    Some(b) => b,
                    None => tried
                        .step(&model_output, t, &x_tried, &options, &mut noise(false))
                        .unwrap_or_else(|e| panic!("{what} after a failure: {e}")),
                };
                assert_eq!(
                    bits(&a.prev_sample),
                    bits(&b.prev_sample),
                    "{what} after a failure"
                );
                x_clean = a.prev_sample;
                x_tried = b.prev_sample;
            }
        }
    }
    assert!(
        nan_failures >= runs * 2,
        "{nan_failures} NaN failures in {runs} runs"
    );
    // Every ancestral or eta/churn/SDE step draws noise: at least the
    // stochastic schedulers failed through their noise source.
    assert!(noise_failures >= 20, "{noise_failures} noise failures");
}
