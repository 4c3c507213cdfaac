//! The crate's own CPU kernels, behind the same entry points as Burn's ops.
//!
//! Where burn-flex's op is slow for diffusion shapes (attention with narrow
//! heads materialises its score matrix and takes scalar exponentials) the
//! crate runs its own host kernel on burn-flex's memory; every other backend
//! (CUDA, autodiff for training, ndarray, candle) gets Burn's op. Which runs is
//! a value the layer was built with ([`Formulation`](crate::Formulation)),
//! never process state; the instruction set is detected once per process
//! ([`Isa::detect`]) and can be forced per call for tests.
//!
//! - [`attention`]: tiled attention with an online softmax (flash-attention
//!   style), f32/f16/bf16 operands in f32 arithmetic.
//! - [`gemm`]: packed, cache-blocked matrix products with the bias or GEGLU
//!   fused into the write-back (linear layers, the GEGLU feed-forward), and
//!   convolutions as implicit GEMMs on the same blocks.
//! - [`norm`]: group normalisation in two passes, SiLU fused.

pub mod attention;
pub mod gemm;
pub mod norm;
pub mod simd;

#[cfg(feature = "flex")]
mod flex;

pub use simd::Isa;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// `softmax(q kᵀ · scale) v` for `[B, H, L, D]` tensors on the host kernel
/// ([`attention::attention`]) where `B` is burn-flex; `None` on any other
/// backend (or dtype), for the caller to run Burn's op.
pub fn host_attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    scale: f64,
    causal: bool,
    isa: Isa,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    {
        flex::attention(q, k, v, scale, causal, isa)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (q, k, v, scale, causal, isa);
        None
    }
}

/// `x · weight + bias` over the last dimension (`weight` `[in, out]`, Burn's
/// layout) on the packed GEMM ([`gemm::gemm`]) where `B` is burn-flex; `None`
/// on any other backend (or dtype), for the caller to run Burn's matmul.
pub fn host_linear<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    isa: Isa,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "flex")]
    {
        flex::linear(x, weight, bias, flex::Tail::Bias, isa)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, weight, bias, isa);
        None
    }
}

/// `act(x · weight + bias)` in one pass (the activation in the GEMM's
/// write-back) where `B` is burn-flex; `None` elsewhere.
pub fn host_linear_act<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: &Tensor<B, 1>,
    act: gemm::Act,
    isa: Isa,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "flex")]
    {
        flex::linear(x, weight, Some(bias), flex::Tail::Act(act), isa)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, weight, bias, act, isa);
        None
    }
}

/// diffusers' GEGLU, `value · gelu(gate)` of the two halves of
/// `x · weight + bias` (`weight` `[in, 2·inner]`), computed without writing
/// the projection out, where `B` is burn-flex; `None` elsewhere.
pub fn host_geglu<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: &Tensor<B, 1>,
    isa: Isa,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "flex")]
    {
        flex::linear(x, weight, Some(bias), flex::Tail::Geglu, isa)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, weight, bias, isa);
        None
    }
}

/// A square-kernel convolution of `x` `[N, C, H, W]` by `weight`
/// `[C_out, C, k, k]` (groups 1, dilation 1) as an implicit GEMM
/// ([`gemm::conv2d`]) where `B` is burn-flex; `None` elsewhere.
pub fn host_conv2d<B: Backend>(
    x: &Tensor<B, 4>,
    weight: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    stride: usize,
    padding: usize,
    isa: Isa,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    {
        flex::conv2d(x, weight, bias, stride, padding, isa)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, weight, bias, stride, padding, isa);
        None
    }
}

/// `GroupNorm` of `x` `[N, C, L]` with per-channel `weight` and `bias`, then
/// SiLU when `silu`, on the host kernel ([`norm::group_norm`]) where `B` is
/// burn-flex; `None` elsewhere.
pub fn host_group_norm<B: Backend>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    groups: usize,
    eps: f64,
    silu: bool,
    isa: Isa,
) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "flex")]
    {
        flex::group_norm(x, weight, bias, groups, eps, silu, isa)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, weight, bias, groups, eps, silu, isa);
        None
    }
}
