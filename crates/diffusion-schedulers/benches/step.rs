//! One `step` of every scheduler on a 2x4x128x128 f32 latent (SDXL-sized, batch 2
//! for guidance), beside a plain copy of the same buffer as the floor.
//!
//! `cargo bench -p diffusion-schedulers --bench step`
//!
//! Each measured step runs on a scheduler already 3 steps into a 20-step
//! schedule, so multistep schedulers have a full history.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use diffusion_schedulers::{
    CpuTensor, QueuedNoise, SCHEDULER_CLASSES, Scheduler, StepOptions, from_config_as,
};
use serde_json::json;

const SHAPE: [usize; 4] = [2, 4, 128, 128];

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

fn warmed(
    class: &str,
    x: &CpuTensor,
    noise: &[CpuTensor],
) -> (Box<dyn Scheduler<CpuTensor>>, QueuedNoise<CpuTensor>, f64) {
    let mut s = from_config_as::<CpuTensor>(class, &json!({}))
        .unwrap()
        .scheduler;
    s.set_timesteps(20).unwrap();
    let mut q = QueuedNoise::new(noise.iter().cloned());
    let ts = s.timesteps().to_vec();
    let mut v = x.clone();
    for &t in &ts[..3] {
        v = s
            .step(x, t, &v, &StepOptions::default(), &mut q)
            .unwrap()
            .prev_sample;
    }
    (s, q, ts[3])
}

fn bench(c: &mut Criterion) {
    let x = latent(1);
    let noise: Vec<CpuTensor> = (0..8).map(|i| latent(10 + i)).collect();
    let mut group = c.benchmark_group("scheduler_step_2x4x128x128");
    group.sample_size(20);
    group.bench_function("copy", |b| b.iter(|| black_box(x.clone())));
    for class in SCHEDULER_CLASSES {
        group.bench_function(*class, |b| {
            b.iter_batched(
                || warmed(class, &x, &noise),
                |(mut s, mut q, t)| {
                    black_box(s.step(&x, t, &x, &StepOptions::default(), &mut q).unwrap())
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
