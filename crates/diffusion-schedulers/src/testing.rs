//! Test helpers that reproduce diffusers' scheduler test fixtures
//! (`tests/schedulers/test_schedulers.py`), so that the published values of
//! diffusers' own test-suite can be checked here.

use crate::scheduler::{Scheduler, StepOptions};
use crate::tensor::{CpuTensor, NoiseSource, SchedulerTensor};

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

/// diffusers' `dummy_model`: `sample * t / (t + 1)`.
pub fn dummy_model(sample: &CpuTensor, t: f64) -> CpuTensor {
    sample.scale(t / (t + 1.0))
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

/// `(sum |x|, mean |x|)` as diffusers' tests report them.
pub fn abs_sum_mean(x: &CpuTensor) -> (f64, f64) {
    let sum: f64 = x.data().iter().map(|v| v.abs() as f64).sum();
    (sum, sum / x.data().len() as f64)
}
