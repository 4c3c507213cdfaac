//! The few element-wise operations a scheduler needs, behind a trait.
//!
//! Schedulers never own a tensor library: the coefficients of every update are
//! computed in `f64` by the scheduler and applied through this trait. This crate
//! implements it for [`CpuTensor`] (a flat `f32` buffer plus a shape); the model and
//! pipeline crates implement it for Burn tensors so that the denoising loop never
//! leaves the device.

use crate::error::SchedulerError;

/// Element-wise operations over a tensor of any shape. All operands of one call
/// have the same shape; the first dimension is the batch.
pub trait SchedulerTensor: Clone {
    /// The tensor's shape, batch first.
    fn shape(&self) -> Vec<usize>;

    /// Number of elements.
    fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// `sum_i c_i * x_i`. `terms` is never empty and every `x_i` has the same shape.
    /// Implementations should evaluate it in `f32` (or wider) without intermediate
    /// rounding to a narrower type.
    fn linear_combination(terms: &[(f64, &Self)]) -> Self;

    /// Multiply batch item `i` by `coeffs[i]`; a single coefficient applies to
    /// every item. `coeffs.len()` is 1 or the batch size (checked by the caller).
    fn scale_batch(&self, coeffs: &[f64]) -> Self;

    /// Element-wise clamp to `[min, max]`.
    fn clamp(&self, min: f64, max: f64) -> Self;

    /// Imagen's dynamic thresholding, per batch item: `s` is the `ratio` quantile
    /// (linear interpolation, as `torch.quantile`) of `|x|` over the item, clamped
    /// to `[1, max]`; the item becomes `clamp(x, -s, s) / s`.
    fn dynamic_threshold(&self, ratio: f64, max: f64) -> Self;

    /// Whether every element is finite. Used to refuse inputs that would poison a
    /// multistep history.
    fn all_finite(&self) -> bool;

    /// `a * self`.
    fn scale(&self, a: f64) -> Self {
        Self::linear_combination(&[(a, self)])
    }
}

/// Where stochastic schedulers get their Gaussian noise. A scheduler asks for noise
/// exactly when diffusers calls `randn_tensor`, one tensor shaped like `like` per
/// call, so a caller can replay diffusers' noise stream.
pub trait NoiseSource<T> {
    /// A standard-normal tensor with the shape of `like`.
    fn noise(&mut self, like: &T) -> Result<T, SchedulerError>;
}

/// A noise source for deterministic calls: asking it for noise is an error.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNoise;

impl<T> NoiseSource<T> for NoNoise {
    fn noise(&mut self, _like: &T) -> Result<T, SchedulerError> {
        Err(SchedulerError::NoiseExhausted { requested: 1 })
    }
}

/// Replays a fixed list of noise tensors in order (e.g. noise recorded from diffusers).
#[derive(Debug, Clone)]
pub struct QueuedNoise<T> {
    queue: std::collections::VecDeque<T>,
    used: usize,
}

impl<T> QueuedNoise<T> {
    pub fn new(items: impl IntoIterator<Item = T>) -> Self {
        Self {
            queue: items.into_iter().collect(),
            used: 0,
        }
    }
    /// How many tensors have been handed out.
    pub fn used(&self) -> usize {
        self.used
    }
    /// How many are left.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl<T: SchedulerTensor> NoiseSource<T> for QueuedNoise<T> {
    fn noise(&mut self, like: &T) -> Result<T, SchedulerError> {
        let next = self
            .queue
            .pop_front()
            .ok_or(SchedulerError::NoiseExhausted {
                requested: self.used + 1,
            })?;
        if next.shape() != like.shape() {
            return Err(SchedulerError::ShapeMismatch {
                what: "noise",
                expected: like.shape(),
                got: next.shape(),
            });
        }
        self.used += 1;
        Ok(next)
    }
}

/// A plain CPU tensor: row-major `f32` data and its shape. The reference
/// implementation of [`SchedulerTensor`]: plain loops, each product and sum
/// rounded to `f32` in the order the trait specifies.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl CpuTensor {
    /// A tensor from its data and shape; errors when the lengths disagree.
    pub fn new(data: Vec<f32>, shape: Vec<usize>) -> Result<Self, SchedulerError> {
        let numel: usize = shape.iter().product();
        if numel != data.len() || shape.is_empty() {
            return Err(SchedulerError::ShapeMismatch {
                what: "tensor data",
                expected: shape,
                got: vec![data.len()],
            });
        }
        Ok(Self { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

impl SchedulerTensor for CpuTensor {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn numel(&self) -> usize {
        self.data.len()
    }

    fn linear_combination(terms: &[(f64, &Self)]) -> Self {
        // Left to right, each product and sum rounded to f32 (Rust never
        // contracts `a * b + c` into a fused multiply-add).
        let (c0, x0) = terms[0];
        let c0 = c0 as f32;
        let mut data: Vec<f32> = x0.data.iter().map(|v| c0 * v).collect();
        for &(c, x) in &terms[1..] {
            let c = c as f32;
            for (d, v) in data.iter_mut().zip(&x.data) {
                *d += c * v;
            }
        }
        Self {
            shape: x0.shape.clone(),
            data,
        }
    }

    fn scale_batch(&self, coeffs: &[f64]) -> Self {
        if coeffs.len() == 1 {
            return self.scale(coeffs[0]);
        }
        let per = (self.data.len() / coeffs.len().max(1)).max(1);
        let data = self
            .data
            .chunks(per)
            .zip(coeffs)
            .flat_map(|(item, &c)| item.iter().map(move |v| v * c as f32))
            .collect();
        Self {
            shape: self.shape.clone(),
            data,
        }
    }

    fn clamp(&self, min: f64, max: f64) -> Self {
        let (lo, hi) = (min as f32, max as f32);
        // Comparisons, not `f32::clamp`: a NaN passes through, as in `torch.clamp`.
        let data = self
            .data
            .iter()
            .map(|&v| {
                let v = if v < lo { lo } else { v };
                if v > hi { hi } else { v }
            })
            .collect();
        Self {
            shape: self.shape.clone(),
            data,
        }
    }

    fn dynamic_threshold(&self, ratio: f64, max: f64) -> Self {
        let batch = self.shape[0].max(1);
        let per = (self.data.len() / batch).max(1);
        let mut data = Vec::with_capacity(self.data.len());
        for item in self.data.chunks(per) {
            let mut abs: Vec<f32> = item.iter().map(|v| v.abs()).collect();
            abs.sort_by(f32::total_cmp);
            // torch.clamp(s, min=1, max): `max` wins when it is below 1.
            let s = quantile_sorted(&abs, ratio).max(1.0).min(max) as f32;
            data.extend(item.iter().map(|v| v.max(-s).min(s) / s));
        }
        Self {
            shape: self.shape.clone(),
            data,
        }
    }

    fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}

/// `torch.quantile` with linear interpolation over an ascending slice.
fn quantile_sorted(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 1.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_combination_and_threshold() {
        let a = CpuTensor::new(vec![1.0, -2.0, 3.0, -4.0], vec![2, 2]).unwrap();
        let b = CpuTensor::new(vec![1.0, 1.0, 1.0, 1.0], vec![2, 2]).unwrap();
        let c = CpuTensor::linear_combination(&[(2.0, &a), (-1.0, &b)]);
        assert_eq!(c.data(), &[1.0, -5.0, 5.0, -9.0]);
        // Item 0: |x| = [1, 2], quantile 0.5 = 1.5 -> clamp(x, -1.5, 1.5) / 1.5.
        let t = a.dynamic_threshold(0.5, 10.0);
        assert!((t.data()[1] + 1.0).abs() < 1e-6 && (t.data()[0] - 1.0 / 1.5).abs() < 1e-6);
        assert!(CpuTensor::new(vec![1.0], vec![2]).is_err());
    }
}
