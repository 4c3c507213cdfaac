//! One `step` of every scheduler against a plain copy of the same buffer, the
//! two timed alternately: `cargo run --release -p diffusion-schedulers
//! --example step_ratio [-- ITERATIONS [CLASS ...]]` (also run by
//! `cargo xtask bench schedulers`, after the criterion bench).
//!
//! Why beside criterion's bench (`benches/step.rs`): on a shared machine the
//! speed of a core changes for seconds at a time, and criterion times the copy
//! and each scheduler seconds apart, so one run's ratios move by ±40%. Here
//! every step is timed right after a copy, on the same latent
//! (2×4×128×128 `f32`) and in the same steady state as the criterion bench
//! (50-step schedules, history filled, noise prepared before the timed call),
//! and the ratios are of the minima (the machine at its best for both) and
//! of the medians (both in the same conditions). Prints a table and writes
//! `target/bench-schedulers-ratio.json`.

use std::hint::black_box;
use std::time::Instant;

use diffusion_schedulers::{
    CpuTensor, NoiseSource, SCHEDULER_CLASSES, SchedulerError, StepOptions, from_config_as,
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
    CpuTensor::new(data, SHAPE.to_vec()).expect("a latent of SHAPE")
}

/// Hands out the tensor prepared before the timed call.
struct PreparedNoise {
    fixed: CpuTensor,
    next: Option<CpuTensor>,
}

impl NoiseSource<CpuTensor> for PreparedNoise {
    fn noise(&mut self, _like: &CpuTensor) -> Result<CpuTensor, SchedulerError> {
        Ok(self.next.take().unwrap_or_else(|| self.fixed.clone()))
    }
}

/// Minimum and median, in microseconds.
fn stats(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[0] * 1e6, times[times.len() / 2] * 1e6)
}

/// `(copy, step)` times of `iterations` alternating calls.
fn measure(class: &str, options: &StepOptions, iterations: usize) -> (Vec<f64>, Vec<f64>) {
    let x = latent(1);
    let mut noise = PreparedNoise {
        fixed: latent(2),
        next: None,
    };
    let fresh = || {
        let mut s = from_config_as::<CpuTensor>(class, &json!({}))
            .expect("a scheduler class")
            .scheduler;
        s.set_timesteps(STEPS).expect("50 steps");
        let ts = s.timesteps().to_vec();
        (s, ts)
    };
    let (mut s, mut ts) = fresh();
    let (mut pos, mut copies, mut steps) = (0, Vec::new(), Vec::new());
    for _ in 0..iterations {
        if pos == ts.len() {
            (s, ts) = fresh();
            pos = 0;
        }
        let start = Instant::now();
        black_box(x.clone());
        copies.push(start.elapsed().as_secs_f64());
        noise.next = Some(noise.fixed.clone());
        let start = Instant::now();
        let out = s
            .step(&x, ts[pos], &x, options, &mut noise)
            .expect("a step");
        steps.push(start.elapsed().as_secs_f64());
        black_box(out);
        pos += 1;
    }
    (copies, steps)
}

/// One line naming the problem, and a non-zero exit.
fn fail(message: &str) -> ! {
    eprintln!("step_ratio: {message}");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations = match args.next().map(|n| n.parse::<usize>()) {
        None => 5000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => fail("ITERATIONS must be a positive integer"),
    };
    let classes: Vec<String> = args.collect();
    let classes: Vec<&str> = if classes.is_empty() {
        SCHEDULER_CLASSES.to_vec()
    } else {
        classes.iter().map(String::as_str).collect()
    };
    for class in &classes {
        if let Err(e) = from_config_as::<CpuTensor>(class, &json!({})) {
            fail(&format!("scheduler `{class}`: {e}"));
        }
    }
    let lean = StepOptions {
        pred_original_sample: Some(false),
        ..StepOptions::default()
    };
    let variants = [("", StepOptions::default()), ("-prev-only", lean)];
    println!(
        "{:<42} {:>9} {:>8} {:>10} {:>8}",
        "scheduler (alternating with a copy)", "min µs", "× copy", "median µs", "× copy"
    );
    let mut rows = Vec::new();
    for class in classes {
        for (suffix, options) in &variants {
            let (copies, steps) = measure(class, options, iterations);
            let ((copy_min, copy_median), (min, median)) = (stats(copies), stats(steps));
            let name = format!("{class}{suffix}");
            println!(
                "{name:<42} {min:>9.1} {:>8.2} {median:>10.1} {:>8.2}",
                min / copy_min,
                median / copy_median
            );
            rows.push(json!({
                "scheduler": name,
                "min_us": min, "copy_min_us": copy_min, "ratio_min": min / copy_min,
                "median_us": median, "copy_median_us": copy_median,
                "ratio_median": median / copy_median,
            }));
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let json = json!({"iterations": iterations, "shape": SHAPE, "steps": rows});
    let path = out.join("bench-schedulers-ratio.json");
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    ) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
