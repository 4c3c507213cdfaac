//! Helpers for the parity tests (here and in the pipeline crate): reading the
//! generator's safetensors fixtures and comparing tensors by relative L2.

use crate::load::{Precision, WeightSource};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use diffusion_hub::weights::Weights;
use std::path::Path;

/// A fixture file of named f32 tensors.
pub struct Fixture {
    weights: Weights,
}

impl Fixture {
    /// Opens `path` (a safetensors file); panics with the path when absent,
    /// since fixtures are committed.
    pub fn open(path: &Path) -> Self {
        Fixture {
            weights: Weights::open(path)
                .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display())),
        }
    }

    /// Whether the fixture holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(name)
    }

    /// The raw values of `name` (as f32) and its shape.
    pub fn values(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let view = self
            .weights
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        (
            view.shape.to_vec(),
            view.to_f32_vec().expect("float fixture"),
        )
    }

    /// `name` as a tensor of rank `D` in `precision`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
        precision: Precision,
    ) -> Tensor<B, D> {
        let (shape, values) = self.values(name);
        assert_eq!(
            shape.len(),
            D,
            "fixture tensor {name} has rank {}",
            shape.len()
        );
        let t = Tensor::<B, D>::from_data(TensorData::new(values, shape), (device, DType::F32));
        crate::nn::to_dtype(t, precision.dtype())
    }

    /// The underlying weights (e.g. to build a model from a fixture file).
    pub fn source(&self) -> &dyn WeightSource {
        &self.weights
    }
}

/// `||got - want|| / ||want||` over all elements (f64 accumulation).
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        let d = f64::from(*g) - f64::from(*w);
        num += d * d;
        den += f64::from(*w) * f64::from(*w);
    }
    (num / den.max(1e-30)).sqrt()
}

/// The tensor's values as f32.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    crate::nn::to_f32(t)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}

/// Asserts `got` matches fixture tensor `name` within `tol` relative L2
/// (and in shape); returns the error.
pub fn assert_close<B: Backend, const D: usize>(
    fixture: &Fixture,
    name: &str,
    got: Tensor<B, D>,
    tol: f64,
) -> f64 {
    let (shape, want) = fixture.values(name);
    assert_eq!(got.dims().to_vec(), shape, "{name}: shape");
    let err = rel_l2(&values(got), &want);
    assert!(
        err <= tol,
        "{name}: relative L2 error {err:.3e} > {tol:.0e}"
    );
    err
}
