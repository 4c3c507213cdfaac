//! AdamW exactly as `torch.optim.AdamW` computes it (decoupled weight decay,
//! bias corrections applied to the step size and to the square root of the
//! second moment), and `torch.nn.utils.clip_grad_norm_`'s global-norm clipping.

use super::params::FlatParam;
use burn::module::ParamId;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// `torch.optim.AdamW`'s hyper-parameters (its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// The two moments of one parameter (flat).
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    /// `exp_avg`.
    pub exp_avg: Tensor<B, 1>,
    /// `exp_avg_sq`.
    pub exp_avg_sq: Tensor<B, 1>,
}

/// The optimizer: hyper-parameters, moments by parameter and the step count.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Moments by parameter (absent until the parameter's first update).
    pub state: HashMap<ParamId, Moments<B>>,
    /// Updates done so far (PyTorch's `state["step"]`, shared by all parameters here).
    pub steps: u64,
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            state: HashMap::new(),
            steps: 0,
        }
    }

    /// One update of every parameter that has a gradient, at learning rate
    /// `lr`; returns the new values by id. Gradients are scaled by
    /// `grad_scale` first (the clipping coefficient).
    pub fn update(
        &mut self,
        params: &[FlatParam<B>],
        grads: &HashMap<ParamId, Tensor<B, 1>>,
        lr: f64,
        grad_scale: f64,
    ) -> HashMap<ParamId, Tensor<B, 1>> {
        self.steps += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let t = self.steps as i32;
        let bias_correction1 = 1.0 - beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        let mut out = HashMap::with_capacity(params.len());
        for p in params {
            let Some(g) = grads.get(&p.id) else { continue };
            let g = if grad_scale == 1.0 {
                g.clone()
            } else {
                g.clone().mul_scalar(grad_scale as f32)
            };
            let value = p.value.clone().mul_scalar((1.0 - lr * weight_decay) as f32);
            let (m, v) = match self.state.remove(&p.id) {
                Some(s) => (s.exp_avg, s.exp_avg_sq),
                None => (g.zeros_like(), g.zeros_like()),
            };
            let m = m.mul_scalar(beta1 as f32) + g.clone().mul_scalar((1.0 - beta1) as f32);
            let v = v.mul_scalar(beta2 as f32) + (g.clone() * g).mul_scalar((1.0 - beta2) as f32);
            let denom = v
                .clone()
                .sqrt()
                .div_scalar(bias_correction2_sqrt as f32)
                .add_scalar(eps as f32);
            let value = value - (m.clone() / denom).mul_scalar(step_size as f32);
            out.insert(p.id, value);
            self.state.insert(
                p.id,
                Moments {
                    exp_avg: m,
                    exp_avg_sq: v,
                },
            );
        }
        out
    }
}

/// The global 2-norm of all gradients, and the factor
/// `torch.nn.utils.clip_grad_norm_(max_norm)` multiplies them by
/// (`min(1, max_norm / (norm + 1e-6))`; 1 without a limit). The squares are
/// summed in the order given (the module's parameter order), so the result
/// is reproducible to the last bit.
pub fn clip_coefficient<'a, B: Backend>(
    grads: impl IntoIterator<Item = &'a Tensor<B, 1>>,
    max_norm: Option<f64>,
) -> (f64, f64) {
    let mut sum = None::<Tensor<B, 1>>;
    for g in grads {
        let s = (g.clone() * g.clone()).sum();
        sum = Some(match sum {
            Some(acc) => acc + s,
            None => s,
        });
    }
    let norm = sum
        .map(|s| f64::from(s.into_scalar().to_f32_lossy()).sqrt())
        .unwrap_or(0.0);
    let coef = match max_norm {
        Some(max) => (max / (norm + 1e-6)).min(1.0),
        None => 1.0,
    };
    (norm, coef)
}

/// `into_scalar` as f32 whatever the element type.
trait ToF32 {
    fn to_f32_lossy(self) -> f32;
}

impl<E: burn::tensor::ElementConversion> ToF32 for E {
    fn to_f32_lossy(self) -> f32 {
        self.elem()
    }
}
