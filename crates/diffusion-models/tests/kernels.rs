//! The host kernels through Burn tensors: the tiled attention formulation
//! against Burn's attention op on burn-flex (strided views as the layers make
//! them, causal masks, f16/bf16, every instruction set this CPU has), the
//! packed linear, GEGLU, convolution and group-norm kernels against Burn's
//! ops, and the fallback to Burn's op where the backend is not burn-flex
//! (autodiff).

use burn::backend::{Autodiff, Flex};
use burn::tensor::module::attention;
use burn::tensor::module::conv2d;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, FloatDType, Tensor};
use diffusion_models::attention::scaled_dot_product_attention;
use diffusion_models::formulation::AttentionFormulation;
use diffusion_models::kernels::{
    Isa, host_attention, host_conv2d, host_geglu, host_group_norm, host_linear,
};

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

#[test]
fn packed_linear_geglu_and_convolution_equal_burns_ops() {
    let device = Default::default();
    for isa in Isa::all_available() {
        for [rows, k, n] in [[1, 1, 1], [77, 40, 33], [300, 129, 64]] {
            let x = Tensor::<Flex, 3>::random([2, rows, k], Distribution::Normal(0., 1.), &device);
            let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0., 1.), &device);
            let b = Tensor::<Flex, 1>::random([n], Distribution::Normal(0., 1.), &device);
            let want = x.clone().matmul(w.clone().unsqueeze()) + b.clone().reshape([1, 1, n]);
            let got = host_linear(&x, &w, Some(&b), isa).unwrap();
            assert!(
                rel_l2(got, want) < 1e-5,
                "linear {:?} {isa:?}",
                [rows, k, n]
            );
            // A transposed (strided) weight view is read as it is.
            let wt = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0., 1.), &device);
            let want = x.clone().matmul(wt.clone().transpose().unsqueeze());
            let got = host_linear(&x, &wt.transpose(), None, isa).unwrap();
            assert!(rel_l2(got, want) < 1e-5);
        }
        let (dim, inner) = (24, 40);
        let x = Tensor::<Flex, 3>::random([2, 50, dim], Distribution::Normal(0., 1.), &device);
        let w = Tensor::<Flex, 2>::random([dim, 2 * inner], Distribution::Normal(0., 1.), &device);
        let b = Tensor::<Flex, 1>::random([2 * inner], Distribution::Normal(0., 1.), &device);
        let h = x.clone().matmul(w.clone().unsqueeze()) + b.clone().reshape([1, 1, 2 * inner]);
        let want = h.clone().narrow(2, 0, inner)
            * burn::tensor::activation::gelu(h.narrow(2, inner, inner));
        let got = host_geglu(&x, &w, &b, isa).unwrap();
        assert!(rel_l2(got, want) < 1e-5, "geglu {isa:?}");

        for [n, c, hw, co, k, stride, pad] in [
            [2, 3, 9, 5, 3, 1, 1],
            [1, 8, 16, 12, 3, 2, 1],
            [2, 6, 7, 4, 1, 1, 0],
        ] {
            let x = Tensor::<Flex, 4>::random(
                [n, c, hw, hw + 1],
                Distribution::Normal(0., 1.),
                &device,
            );
            let w = Tensor::<Flex, 4>::random([co, c, k, k], Distribution::Normal(0., 1.), &device);
            let b = Tensor::<Flex, 1>::random([co], Distribution::Normal(0., 1.), &device);
            let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
            let want = conv2d(x.clone(), w.clone(), Some(b.clone()), options);
            let got = host_conv2d(&x, &w, Some(&b), stride, pad, isa).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(
                rel_l2(got, want) < 1e-5,
                "conv {:?} {isa:?}",
                [n, c, hw, co, k, stride, pad]
            );
        }
    }
}

#[test]
fn host_group_norm_equals_the_layer_on_burns_ops_in_every_dtype() {
    use diffusion_models::formulation::{Formulation, GroupNormFormulation};
    use diffusion_models::nn::GroupNorm;
    use diffusion_models::{Loader, Precision};
    let device = Default::default();
    let x = Tensor::<Flex, 4>::random([2, 12, 5, 7], Distribution::Normal(3.0, 2.0), &device);
    let build = |group_norm| {
        let loader = Loader::<Flex>::random_seeded(&device, Precision::F32, 3).with_formulation(
            Formulation {
                group_norm,
                ..Formulation::BURN_OPS
            },
        );
        let mut norm = GroupNorm::load(&loader, 4, 12, 1e-6).unwrap();
        // Non-trivial affine parameters.
        norm.weight = norm
            .weight
            .map(|w| w + Tensor::random([12], Distribution::Normal(0., 1.), &device));
        norm.bias = norm
            .bias
            .map(|b| b + Tensor::random([12], Distribution::Normal(0., 1.), &device));
        norm
    };
    let burn_norm = build(GroupNormFormulation::OnePass);
    let mut host_norm = build(GroupNormFormulation::Host);
    host_norm.weight = burn_norm.weight.clone();
    host_norm.bias = burn_norm.bias.clone();
    let want = burn_norm.forward(x.clone());
    assert!(rel_l2(host_norm.forward(x.clone()), want.clone()) < 1e-5);
    let want_silu = burn::tensor::activation::silu(want);
    assert!(rel_l2(host_norm.forward_silu(x.clone()), want_silu.clone()) < 1e-5);
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        let xh = x.clone().cast(dtype);
        let three = xh.clone().reshape([2, 12, 35]);
        let w = host_norm.weight.val();
        let b = host_norm.bias.val();
        let got = host_group_norm(
            &three,
            &w.clone().cast(dtype),
            &b.clone().cast(dtype),
            4,
            1e-6,
            true,
            Isa::detect(),
        )
        .unwrap();
        assert_eq!(got.dtype(), xh.dtype());
        // Half input and weights, f32 arithmetic, one rounding of the output.
        let reference = burn_norm.forward_silu(x.clone().cast(dtype).cast(FloatDType::F32));
        let tol = if dtype == FloatDType::F16 { 5e-3 } else { 3e-2 };
        let rel = rel_l2(got.reshape([2, 12, 5, 7]).cast(FloatDType::F32), reference);
        assert!(rel < tol, "{dtype:?}: {rel:e}");
    }
}
