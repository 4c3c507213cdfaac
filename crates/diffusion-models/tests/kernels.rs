//! The host kernels through Burn tensors: the tiled attention formulation
//! against Burn's attention op on burn-flex (strided views as the layers make
//! them, causal masks, f16/bf16, every instruction set this CPU has), and its
//! fallback to Burn's op where the backend is not burn-flex (autodiff).

use burn::backend::{Autodiff, Flex};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, FloatDType, Tensor};
use diffusion_models::attention::scaled_dot_product_attention;
use diffusion_models::formulation::AttentionFormulation;
use diffusion_models::kernels::{Isa, host_attention};

fn rel_l2<const D: usize, B: burn::tensor::backend::Backend>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> f64 {
    let a = a.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
    let b = b.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let err: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (err / norm.max(1e-30)).sqrt()
}

fn burn_attention<B: burn::tensor::backend::Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    causal: bool,
) -> Tensor<B, 4> {
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: causal,
    };
    attention(q, k, v, None, None, options)
}

/// `[B, L, H·D]` split into heads `[B, H, L, D]` the way `Attention` does: a
/// strided view, not a copy.
fn heads(x: Tensor<Flex, 3>, h: usize) -> Tensor<Flex, 4> {
    let [b, l, c] = x.dims();
    x.reshape([b, l, h, c / h]).swap_dims(1, 2)
}

#[test]
fn tiled_attention_equals_burns_op_on_strided_views_and_masks() {
    let device = Default::default();
    // [batch, heads, q_len, kv_len, head_dim]
    for [b, h, lq, lk, d] in [
        [2, 8, 64, 64, 8],
        [1, 3, 37, 77, 40],
        [2, 2, 300, 19, 12],
        [1, 5, 77, 77, 64],
        [1, 1, 130, 260, 160],
    ] {
        let q = Tensor::<Flex, 3>::random([b, lq, h * d], Distribution::Normal(0., 1.), &device);
        let k = Tensor::<Flex, 3>::random([b, lk, h * d], Distribution::Normal(0., 1.), &device);
        let v = Tensor::<Flex, 3>::random([b, lk, h * d], Distribution::Normal(0., 1.), &device);
        let (q, k, v) = (heads(q, h), heads(k, h), heads(v, h));
        let scale = 1.0 / (d as f64).sqrt();
        for causal in [false, true] {
            if causal && lq != lk {
                continue;
            }
            let want = burn_attention(q.clone(), k.clone(), v.clone(), scale, causal);
            for isa in Isa::all_available() {
                let got = host_attention(&q, &k, &v, scale, causal, isa).expect("flex tensors");
                let rel = rel_l2(got, want.clone());
                assert!(
                    rel < 1e-5,
                    "{:?} causal {causal} {isa:?}: {rel:e}",
                    [b, h, lq, lk, d]
                );
            }
            // Through the layer entry point, as a model built with `Tiled` runs it.
            let got = scaled_dot_product_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                scale,
                causal,
                false,
                AttentionFormulation::Tiled,
            );
            // The output is the [B, H, L, D] view the output projection reads.
            assert_eq!(got.dims(), [b, h, lq, d]);
            assert!(rel_l2(got, want) < 1e-5);
        }
    }
}

#[test]
fn tiled_attention_in_half_precision_is_f32_attention_rounded_once() {
    let device = Default::default();
    let shape = [2, 4, 70, 16];
    let q = Tensor::<Flex, 4>::random(shape, Distribution::Normal(0., 1.), &device);
    let k = Tensor::<Flex, 4>::random(shape, Distribution::Normal(0., 1.), &device);
    let v = Tensor::<Flex, 4>::random(shape, Distribution::Normal(0., 1.), &device);
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        let (qh, kh, vh) = (
            q.clone().cast(dtype),
            k.clone().cast(dtype),
            v.clone().cast(dtype),
        );
        // The reference: the same half inputs, attention in f32, one rounding.
        let want = burn_attention(
            qh.clone().cast(FloatDType::F32),
            kh.clone().cast(FloatDType::F32),
            vh.clone().cast(FloatDType::F32),
            0.25,
            false,
        )
        .cast(dtype);
        let got = host_attention(&qh, &kh, &vh, 0.25, false, Isa::detect()).unwrap();
        assert_eq!(got.dtype(), want.dtype());
        // One rounding of nearly equal f32 values: a few half ulps at most.
        let tol = if dtype == FloatDType::F16 { 2e-3 } else { 1e-2 };
        let rel = rel_l2(got, want);
        assert!(rel < tol, "{dtype:?}: {rel:e}");
    }
}

#[test]
fn other_backends_fall_back_to_burns_op_with_gradients() {
    type Ad = Autodiff<Flex>;
    let device = Default::default();
    let shape = [1, 2, 20, 8];
    let q = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0., 1.), &device).require_grad();
    let k = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0., 1.), &device);
    let v = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0., 1.), &device);
    // No host kernel under autodiff: the caller runs Burn's op instead.
    assert!(host_attention(&q, &k, &v, 0.3, false, Isa::detect()).is_none());
    let out = scaled_dot_product_attention(
        q.clone(),
        k.clone(),
        v.clone(),
        0.3,
        false,
        false,
        AttentionFormulation::Tiled,
    );
    let want = burn_attention(q.clone(), k, v, 0.3, false);
    assert!(rel_l2(out.clone(), want) < 1e-6);
    let grads = out.sum().backward();
    let grad = q.grad(&grads).expect("gradient through the fallback");
    assert!(grad.abs().sum().into_scalar() > 0.0);
}
