//! A step that fails leaves the scheduler as it was: for every scheduler, a
//! step whose tensor implementation drops one of the outputs the step asked
//! for (the last wanted one, so that the others have been computed) must
//! return an error, and the run must then go on exactly as a run that never
//! failed, bit for bit. A scheduler that stored a history entry, moved its
//! step index or a half-step state before the error would diverge.

use std::cell::Cell;

use diffusion_schedulers::fused::{Kernel, Program, Val, evaluate_unfused};
use diffusion_schedulers::{
    CpuTensor, NoiseSource, SCHEDULER_CLASSES, SchedulerError, SchedulerTensor, StepOptions,
    from_config_as,
};
use serde_json::json;

thread_local! {
    /// While set, `Flaky::evaluate` drops the last output it was asked for.
    static DROP_OUTPUT: Cell<bool> = const { Cell::new(false) };
}

#[derive(Clone, Debug)]
struct Flaky(CpuTensor);

impl SchedulerTensor for Flaky {
    fn shape(&self) -> Vec<usize> {
        self.0.shape()
    }
    fn linear_combination(terms: &[(f64, &Self)]) -> Self {
        let terms: Vec<(f64, &CpuTensor)> = terms.iter().map(|(c, t)| (*c, &t.0)).collect();
        Flaky(CpuTensor::linear_combination(&terms))
    }
    fn scale_batch(&self, coeffs: &[f64]) -> Self {
        Flaky(self.0.scale_batch(coeffs))
    }
    fn clamp(&self, min: f64, max: f64) -> Self {
        Flaky(self.0.clamp(min, max))
    }
    fn dynamic_threshold(&self, ratio: f64, max: f64) -> Self {
        Flaky(self.0.dynamic_threshold(ratio, max))
    }
    fn all_finite(&self) -> bool {
        self.0.all_finite()
    }
    fn evaluate<K: Kernel<M>, const M: usize>(
        _kernel: &K,
        program: &Program,
        outputs: &[Val; M],
        inputs: &[&Self],
        want: [bool; M],
    ) -> Result<[Option<Self>; M], SchedulerError> {
        let mut values = evaluate_unfused(program, outputs, inputs, want)?;
        if DROP_OUTPUT.get()
            && let Some(last) = (0..M).rev().find(|&o| want[o])
        {
            values[last] = None;
        }
        Ok(values)
    }
}

/// The same noise at every draw, so that a draw used by a failed step does
/// not shift the stream.
struct Constant;

impl NoiseSource<Flaky> for Constant {
    fn noise(&mut self, like: &Flaky) -> Result<Flaky, SchedulerError> {
        let n = like.numel();
        let data = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.2).collect();
        Ok(Flaky(CpuTensor::new(data, like.shape())?))
    }
}

fn tensor(shape: &[usize], seed: usize) -> Flaky {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i + seed) * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Flaky(CpuTensor::new(data, shape.to_vec()).unwrap())
}

fn bits(t: &Flaky) -> Vec<u32> {
    t.0.data().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn a_failed_step_changes_nothing() {
    let shape = [1, 4, 5, 7];
    let options = StepOptions {
        eta: Some(0.5),
        ..StepOptions::default()
    };
    let configs = [
        json!({}),
        json!({"solver_order": 3, "skip_prk_steps": true}),
    ];
    // These step as plain code over the trait's operations, without a kernel
    // (`evaluate`): no output to drop.
    let plain = [
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "DEISMultistepScheduler",
        "UniPCMultistepScheduler",
    ];
    let mut failed_steps = 0;
    for class in SCHEDULER_CLASSES.iter().filter(|c| !plain.contains(c)) {
        for config in &configs {
            // PNDM's Runge-Kutta warm-up runs an operation at a time: no
            // kernel output to drop.
            if *class == "PNDMScheduler" && config.get("skip_prk_steps").is_none() {
                continue;
            }
            let build = || {
                let mut s = from_config_as::<Flaky>(class, config).unwrap().scheduler;
                s.set_timesteps(8).unwrap();
                s
            };
            let (mut clean, mut tried) = (build(), build());
            let timesteps = clean.timesteps().to_vec();
            let mut x_clean = tensor(&shape, 0).0.scale(clean.init_noise_sigma());
            let mut x_tried = x_clean.clone();
            for (i, &t) in timesteps.iter().enumerate() {
                let model_output = tensor(&shape, i + 1);
                if i % 3 == 2 {
                    DROP_OUTPUT.set(true);
                    let failed = tried.step(
                        &model_output,
                        t,
                        &Flaky(x_tried.clone()),
                        &options,
                        &mut Constant,
                    );
                    DROP_OUTPUT.set(false);
                    assert!(failed.is_err(), "{class} {config}: step {i} did not fail");
                    failed_steps += 1;
                }
                let a = clean
                    .step(&model_output, t, &Flaky(x_clean), &options, &mut Constant)
                    .unwrap();
                let b = tried
                    .step(&model_output, t, &Flaky(x_tried), &options, &mut Constant)
                    .unwrap_or_else(|e| panic!("{class} {config}: step {i} after a failure: {e}"));
                assert_eq!(
                    bits(&a.prev_sample),
                    bits(&b.prev_sample),
                    "{class} {config}: step {i} after a failure"
                );
                x_clean = a.prev_sample.0;
                x_tried = b.prev_sample.0;
            }
        }
    }
    assert!(
        failed_steps >= ((SCHEDULER_CLASSES.len() - plain.len()) * 2 - 1) * 2,
        "{failed_steps} failures"
    );
}
