//! One `step` of every scheduler on a 2x4x128x128 f32 latent (SDXL-sized, batch 2
//! for guidance), beside a plain copy of the same buffer as the floor.
//!
//! `cargo bench -p diffusion-schedulers --bench step` (or `cargo xtask bench`).
//!
//! Steady state: each scheduler walks a 50-step schedule with its multistep
//! history filling as in a real run, and only the `step` calls are timed (a new
//! scheduler is built, untimed, whenever a schedule runs out). Stochastic
//! schedulers get their noise from a source that hands out a tensor written
//! just before the timed call (a copy of a fixed tensor, untimed): the step is
//! timed given its noise, as given its model output; drawing noise is the
//! caller's generator's cost (at least a copy's). Each scheduler is timed with
//! diffusers' outputs and again as `CLASS-prev-only`, without
//! `pred_original_sample` (what the pipelines ask for).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use diffusion_schedulers::{
    CpuTensor, NoiseSource, SCHEDULER_CLASSES, Scheduler, SchedulerError, StepOptions,
    from_config_as,
};
use serde_json::json;

const SHAPE: [usize; 4] = [2, 4, 128, 128];
const STEPS: usize = 50;

fn latent(seed: u32) -> CpuTensor {
    let n: usize = SHAPE.iter().product();
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let data = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect();
    CpuTensor::new(data, SHAPE.to_vec()).unwrap()
}

/// Hands out the tensor prepared before the timed call (a copy of one fixed
/// tensor), or a copy made on the spot for a second draw.
struct PreparedNoise {
    fixed: CpuTensor,
    next: Option<CpuTensor>,
}

impl PreparedNoise {
    fn prepare(&mut self) {
        self.next = Some(self.fixed.clone());
    }
}

impl NoiseSource<CpuTensor> for PreparedNoise {
    fn noise(&mut self, _like: &CpuTensor) -> Result<CpuTensor, SchedulerError> {
        Ok(self.next.take().unwrap_or_else(|| self.fixed.clone()))
    }
}

fn fresh(class: &str) -> (Box<dyn Scheduler<CpuTensor>>, Vec<f64>) {
    let mut s = from_config_as::<CpuTensor>(class, &json!({}))
        .unwrap()
        .scheduler;
    s.set_timesteps(STEPS).unwrap();
    let ts = s.timesteps().to_vec();
    (s, ts)
}

fn bench(c: &mut Criterion) {
    let x = latent(1);
    let mut noise = PreparedNoise {
        fixed: latent(2),
        next: None,
    };
    let mut group = c.benchmark_group("scheduler_step_2x4x128x128");
    group.sample_size(30);
    group.bench_function("copy", |b| b.iter(|| black_box(x.clone())));
    // Each scheduler twice: with diffusers' outputs (`prev_sample` and, where
    // it has one, `pred_original_sample`), and `-prev-only` as the pipelines
    // call it (`pred_original_sample: Some(false)`).
    let lean = StepOptions {
        pred_original_sample: Some(false),
        ..StepOptions::default()
    };
    let variants = [("", StepOptions::default()), ("-prev-only", lean)];
    for (class, (suffix, options)) in SCHEDULER_CLASSES
        .iter()
        .flat_map(|c| variants.iter().map(move |v| (c, v)))
    {
        group.bench_function(format!("{class}{suffix}"), |b| {
            b.iter_custom(|iters| {
                let (mut s, mut ts) = fresh(class);
                let mut pos = 0;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if pos == ts.len() {
                        (s, ts) = fresh(class);
                        pos = 0;
                    }
                    noise.prepare();
                    let start = Instant::now();
                    let out = s.step(&x, ts[pos], &x, options, &mut noise).unwrap();
                    total += start.elapsed();
                    black_box(out);
                    pos += 1;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
