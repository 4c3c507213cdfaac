//! The CPU tensor's fused step (`CpuTensor::evaluate`: the step's kernel
//! applied to blocks of registers) against the operation-at-a-time path every
//! other tensor type gets by default (the kernel recorded as a `Program`): for
//! every scheduler and a spread of configs and step options, each step's
//! `prev_sample` and `pred_original_sample` must be the same bit for bit. The
//! latent (2 × 1031 = 2062 elements) is 64 whole 32-element blocks and a
//! 14-element end, ragged for every block width.

use diffusion_schedulers::{
    CpuTensor, NoiseSource, SCHEDULER_CLASSES, SchedulerError, SchedulerTensor, StepOptions,
    from_config_as,
};
use serde_json::{Value, json};

/// A CPU tensor that keeps the trait's defaults: steps are recorded into a
/// `Program` and applied one operation at a time.
#[derive(Clone, Debug)]
struct Plain(CpuTensor);

impl SchedulerTensor for Plain {
    fn shape(&self) -> Vec<usize> {
        self.0.shape()
    }
    fn linear_combination(terms: &[(f64, &Self)]) -> Self {
        let terms: Vec<(f64, &CpuTensor)> = terms.iter().map(|(c, t)| (*c, &t.0)).collect();
        Plain(CpuTensor::linear_combination(&terms))
    }
    fn scale_batch(&self, coeffs: &[f64]) -> Self {
        Plain(self.0.scale_batch(coeffs))
    }
    fn clamp(&self, min: f64, max: f64) -> Self {
        Plain(self.0.clamp(min, max))
    }
    fn dynamic_threshold(&self, ratio: f64, max: f64) -> Self {
        Plain(self.0.dynamic_threshold(ratio, max))
    }
    fn all_finite(&self) -> bool {
        self.0.all_finite()
    }
}

/// Deterministic noise, the same for both tensor types.
struct Noise(u32);

impl Noise {
    fn draw(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 17;
                self.0 ^= self.0 << 5;
                (self.0 as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }
}

impl NoiseSource<CpuTensor> for Noise {
    fn noise(&mut self, like: &CpuTensor) -> Result<CpuTensor, SchedulerError> {
        CpuTensor::new(self.draw(like.numel()), like.shape())
    }
}

impl NoiseSource<Plain> for Noise {
    fn noise(&mut self, like: &Plain) -> Result<Plain, SchedulerError> {
        Ok(Plain(CpuTensor::new(
            self.draw(like.numel()),
            like.shape(),
        )?))
    }
}

fn same_bits(a: &CpuTensor, b: &CpuTensor) -> bool {
    a.shape() == b.shape()
        && a.data()
            .iter()
            .zip(b.data())
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

fn compare(class: &str, config: &Value, options: &StepOptions, shape: &[usize]) {
    let label = format!("{class} {config} {options:?} {shape:?}");
    let mut fast = from_config_as::<CpuTensor>(class, config)
        .unwrap()
        .scheduler;
    let mut plain = from_config_as::<Plain>(class, config).unwrap().scheduler;
    fast.set_timesteps(12).unwrap();
    plain.set_timesteps(12).unwrap();
    let n: usize = shape.iter().product();
    let mut init = Noise(7);
    let x0 = CpuTensor::new(init.draw(n), shape.to_vec()).unwrap();
    let mut x_fast = x0.scale(fast.init_noise_sigma());
    let mut x_plain = Plain(x0.scale(plain.init_noise_sigma()));
    let (mut noise_fast, mut noise_plain) = (Noise(99), Noise(99));
    for (i, t) in fast.timesteps().to_vec().into_iter().enumerate() {
        let m_fast = fast.scale_model_input(&x_fast, t).unwrap();
        let m_plain = plain.scale_model_input(&x_plain, t).unwrap();
        assert!(same_bits(&m_fast, &m_plain.0), "{label}: input {i}");
        // A model output that depends on the step.
        let eps = CpuTensor::new(
            m_fast
                .data()
                .iter()
                .enumerate()
                .map(|(j, v)| v * 0.7 + ((j + i) % 13) as f32 * 0.05 - 0.3)
                .collect(),
            shape.to_vec(),
        )
        .unwrap();
        let a = fast
            .step(&eps, t, &x_fast, options, &mut noise_fast)
            .unwrap();
        let b = plain
            .step(&Plain(eps.clone()), t, &x_plain, options, &mut noise_plain)
            .unwrap();
        assert!(
            same_bits(&a.prev_sample, &b.prev_sample.0),
            "{label}: step {i}"
        );
        match (&a.pred_original_sample, &b.pred_original_sample) {
            (Some(x), Some(y)) => assert!(same_bits(x, &y.0), "{label}: x0 at step {i}"),
            (None, None) => {}
            _ => panic!("{label}: x0 present in one path only at step {i}"),
        }
        x_fast = a.prev_sample;
        x_plain = b.prev_sample;
    }
}

#[test]
fn fused_steps_equal_operation_at_a_time_steps_bit_for_bit() {
    let configs = [
        json!({}),
        json!({"prediction_type": "v_prediction"}),
        json!({"prediction_type": "sample", "clip_sample": true}),
        json!({"prediction_type": "epsilon", "thresholding": true}),
        json!({"stochastic_sampling": true}),
        json!({"solver_order": 3, "solver_type": "heun", "lower_order_final": false, "final_sigmas_type": "sigma_min"}),
        json!({"skip_prk_steps": true, "prediction_type": "v_prediction"}),
        json!({"solver_order": 3, "prediction_type": "v_prediction"}),
        json!({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
        json!({"algorithm_type": "sde-dpmsolver", "solver_type": "heun"}),
        json!({"algorithm_type": "dpmsolver", "solver_order": 3, "prediction_type": "sample"}),
        json!({"solver_order": 3, "solver_type": "bh1", "disable_corrector": [2], "final_sigmas_type": "sigma_min"}),
        json!({"predict_x0": false, "solver_order": 3, "final_sigmas_type": "sigma_min"}),
    ];
    let options = [
        StepOptions::default(),
        StepOptions {
            eta: Some(0.6),
            s_churn: Some(3.0),
            s_noise: Some(1.1),
            pred_original_sample: Some(false),
            use_clipped_model_output: Some(true),
            ..StepOptions::default()
        },
    ];
    let mut compared = 0;
    for class in SCHEDULER_CLASSES {
        for config in &configs {
            // Not every scheduler takes every config value (flow matching has
            // no prediction_type or clipping; some refuse thresholding).
            if from_config_as::<CpuTensor>(class, config).is_err() {
                continue;
            }
            if class.starts_with("FlowMatch") && config.get("prediction_type").is_some() {
                continue;
            }
            for opts in &options {
                compare(class, config, opts, &[2, 1031]);
                compared += 1;
            }
        }
    }
    // Every scheduler with at least its default config, both option sets, and
    // most with the other configs too.
    assert!(
        compared >= 2 * SCHEDULER_CLASSES.len() * 3,
        "{compared} runs"
    );
}
