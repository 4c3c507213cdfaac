//! The alternative formulations of `diffusion_models::formulation` compute the
//! same values as Burn's ops, and the layers and models give the same outputs
//! with either: each layer and model is built with the formulation it runs,
//! so both run side by side in one process.

use burn::backend::Flex;
use burn::tensor::module::{attention, conv2d};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn::tensor::{Distribution, FloatDType, Tensor};
use diffusion_models::attention::{Attention, AttentionConfig, attention_matmul};
use diffusion_models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use diffusion_models::config::{DIFFUSERS_WEIGHTS, open_weights, read_config};
use diffusion_models::formulation::{
    AttentionFormulation, ConvFormulation, Formulation, GroupNormFormulation, LinearFormulation,
};
use diffusion_models::nn::{Conv2d, GroupNorm, conv2d_im2col};
use diffusion_models::testing::{Fixture, assert_close};
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_models::{Loader, Precision};
use std::path::PathBuf;

/// Every op in its other formulation than Burn's own.
const ALTERNATIVE: Formulation = Formulation {
    attention: AttentionFormulation::Matmul,
    conv: ConvFormulation::Im2col,
    group_norm: GroupNormFormulation::TwoStage,
    linear: LinearFormulation::Matmul,
};

/// The models' parity tolerance (tests/unet.rs, tests/vae.rs).
const MODEL_TOL: f64 = 1e-4;

fn max_err(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) -> f32 {
    let a = a.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
    let b = b.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn rand(s: [usize; 4]) -> Tensor<Flex, 4> {
    Tensor::random(s, Distribution::Normal(0.0, 1.0), &Default::default())
}

#[test]
fn matmul_attention_equals_the_attention_op() {
    let (q, k, v) = (rand([2, 3, 9, 8]), rand([2, 3, 5, 8]), rand([2, 3, 5, 8]));
    let opts = AttentionModuleOptions {
        scale: Some(0.35),
        softcap: None,
        is_causal: false,
    };
    let want = attention(q.clone(), k.clone(), v.clone(), None, None, opts);
    let got = attention_matmul(q.clone(), k.clone(), v.clone(), 0.35, false);
    assert!(max_err(got, want.clone()) < 1e-5);
    // Half inputs, upcast: computed in f32, returned in f16.
    let h = |t: Tensor<Flex, 4>| t.cast(FloatDType::F16);
    let got = attention_matmul(h(q), h(k), h(v), 0.35, true);
    assert_eq!(got.dtype(), burn::tensor::DType::F16);
    assert!(max_err(got, want) < 5e-3);
}

#[test]
fn im2col_conv_equals_conv2d() {
    let x = rand([2, 3, 7, 6]);
    let w = rand([4, 3, 3, 3]);
    let b = Tensor::<Flex, 1>::from_floats([0.1, -0.2, 0.3, 0.0], &Default::default());
    for (stride, padding) in [(1, 1), (2, 1), (2, 0), (1, 0)] {
        let want = conv2d(
            x.clone(),
            w.clone(),
            Some(b.clone()),
            ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
        );
        let got = conv2d_im2col(x.clone(), w.clone(), Some(b.clone()), stride, padding);
        assert_eq!(got.dims(), want.dims(), "stride {stride} padding {padding}");
        assert!(
            max_err(got, want) < 1e-5,
            "stride {stride} padding {padding}"
        );
    }
    // 1×1: the matmul alone.
    let w1 = rand([4, 3, 1, 1]);
    let want = conv2d(
        x.clone(),
        w1.clone(),
        Some(b.clone()),
        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
    );
    let got = conv2d_im2col(x, w1, Some(b), 1, 0);
    assert!(max_err(got, want) < 1e-5);
    // Few output columns and a long reduction: split into partial products.
    let (x, w) = (rand([2, 256, 4, 3]), rand([5, 256, 3, 3]));
    assert_eq!(diffusion_models::nn::split_k(256 * 9, 2 * 4 * 3), 2);
    for (stride, padding) in [(1, 1), (2, 1)] {
        let want = conv2d(
            x.clone(),
            w.clone(),
            None,
            ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
        );
        let got = conv2d_im2col(x.clone(), w.clone(), None, stride, padding);
        assert_eq!(got.dims(), want.dims());
        let scale = max_err(want.clone(), want.clone() * 0.0);
        assert!(max_err(got, want) < 1e-5 * scale, "stride {stride}");
    }
    // Computed in bands of output rows when the columns pass the budget
    // (here: one, two or three rows at a time, strides 1 and 2).
    let x7 = rand([2, 3, 7, 6]);
    let w7 = rand([4, 3, 3, 3]);
    let row = 3 * 9 * 2 * 6 * 4; // bytes of columns per output row at stride 1
    for (stride, padding) in [(1, 1), (2, 1), (1, 0)] {
        let want = conv2d(
            x7.clone(),
            w7.clone(),
            None,
            ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
        );
        for budget in [1, row, 2 * row + 1, 3 * row] {
            let got = diffusion_models::nn::conv2d_im2col_banded(
                x7.clone(),
                w7.clone(),
                None,
                stride,
                padding,
                budget,
            );
            assert_eq!(got.dims(), want.dims());
            let err = max_err(got, want.clone());
            assert!(err < 1e-5, "stride {stride} budget {budget}: {err}");
        }
    }
    // Half inputs: computed in f32, returned in f16.
    let h = |t: Tensor<Flex, 4>| t.cast(FloatDType::F16);
    let got = conv2d_im2col(h(x.clone()), h(w.clone()), None, 1, 1);
    assert_eq!(got.dtype(), burn::tensor::DType::F16);
    let want = conv2d(x, w, None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
    let scale = max_err(want.clone(), want.clone() * 0.0);
    assert!(max_err(got, want) < 2e-2 * scale);
}

#[test]
fn layers_give_the_same_outputs_with_either_formulation() {
    let device = Default::default();
    // Seeded: both sets of layers get the same weights.
    let build = |formulation: Formulation| {
        let loader =
            Loader::<Flex>::random_seeded(&device, Precision::F32, 7).with_formulation(formulation);
        (
            Conv2d::load(&loader.pp("conv"), 3, 4, 3, 2, 1, true).unwrap(),
            Attention::load(&loader.pp("attn"), &AttentionConfig::new(8, 2, 4)).unwrap(),
            GroupNorm::load(&loader.pp("norm"), 2, 6, 1e-6).unwrap(),
        )
    };
    let x = rand([1, 3, 8, 8]);
    let seq = Tensor::<Flex, 3>::random([2, 6, 8], Distribution::Normal(0.0, 1.0), &device);
    // Offset, so that a variance taken around the wrong mean would show.
    let feat = rand([2, 6, 3, 5]) * 3.0 + 5.0;
    let run = |formulation: Formulation| {
        let (conv, attn, norm) = build(formulation);
        // Each layer keeps the choice it was built with.
        assert_eq!(conv.formulation, formulation.conv);
        assert_eq!(attn.formulation, formulation.attention);
        assert_eq!(norm.formulation, formulation.group_norm);
        (
            conv.forward(x.clone()),
            attn.forward(seq.clone(), None).unsqueeze::<4>(),
            norm.forward(feat.clone()),
        )
    };
    let (c0, a0, n0) = run(Formulation::BURN_OPS);
    let (c1, a1, n1) = run(ALTERNATIVE);
    let (dc, da, dn) = (max_err(c0, c1), max_err(a0, a1), max_err(n0.clone(), n1));
    assert!(dc < 1e-5 && da < 1e-5 && dn < 1e-5, "{dc} {da} {dn}");
    // The random loader gives a GroupNorm weight ones and bias zeros: each
    // group (3 channels × 15 values) comes out with mean 0 and variance 1.
    let v = n0.into_data().to_vec::<f32>().unwrap();
    for group in v.chunks(45) {
        let mean = group.iter().sum::<f32>() / 45.0;
        let var = group.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 45.0;
        assert!(
            mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
    }
}

fn fixture_dir(kind: &str, name: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", kind, name]
        .iter()
        .collect()
}

fn input<const D: usize>(f: &Fixture, name: &str) -> Tensor<Flex, D> {
    f.tensor(name, &Default::default(), Precision::F32)
}

/// A diffusers folder's model built with `formulation` by `load`, strictly.
fn load<C: diffusion_models::config::ModelConfig, M>(
    kind: &str,
    name: &str,
    formulation: Formulation,
    load: impl Fn(&Loader<Flex>, &C) -> diffusion_models::Result<M>,
) -> (M, Fixture) {
    let dir = fixture_dir(kind, name);
    let config = read_config::<C>(&dir.join("config.json")).unwrap().config;
    let weights = open_weights(&dir, DIFFUSERS_WEIGHTS).unwrap();
    let loader =
        Loader::new(&weights, &Default::default(), Precision::F32).with_formulation(formulation);
    let model = load(&loader, &config).unwrap();
    loader.finish(&[]).unwrap();
    (model, Fixture::open(&dir.join("io.safetensors")))
}

// The whole models at diffusers parity under either formulation, in one
// process (the CPU's default is Burn's own ops; the alternative is CUDA's
// default conv and group norm, with matmul attention).

#[test]
fn unet2d_condition_matches_diffusers_with_either_formulation() {
    for formulation in [
        Formulation::BURN_OPS,
        ALTERNATIVE,
        Formulation::HOST_KERNELS,
    ] {
        let (model, f) = load::<UNet2DConditionConfig, _>(
            "unet",
            "sd1",
            formulation,
            UNet2DConditionModel::load,
        );
        let y = model
            .forward(
                input(&f, "input.sample"),
                input(&f, "input.timesteps"),
                input(&f, "input.encoder_hidden_states"),
                UNetConditions::default(),
            )
            .unwrap();
        let err = assert_close(&f, "output.sample", y, MODEL_TOL);
        println!("sd1 UNet with {formulation:?}: rel L2 {err:.2e}");
    }
}

#[test]
fn unet2d_matches_diffusers_with_either_formulation() {
    for formulation in [
        Formulation::BURN_OPS,
        ALTERNATIVE,
        Formulation::HOST_KERNELS,
    ] {
        let (model, f) =
            load::<UNet2DConfig, _>("unet", "ddpm_attn", formulation, UNet2DModel::load);
        let y = model
            .forward(
                input(&f, "input.sample"),
                input(&f, "input.timesteps"),
                None,
            )
            .unwrap();
        let err = assert_close(&f, "output.sample", y, MODEL_TOL);
        println!("ddpm UNet with {formulation:?}: rel L2 {err:.2e}");
    }
}

#[test]
fn vae_matches_diffusers_with_either_formulation() {
    for formulation in [
        Formulation::BURN_OPS,
        ALTERNATIVE,
        Formulation::HOST_KERNELS,
    ] {
        let (vae, f) =
            load::<AutoencoderKLConfig, _>("vae", "kl", formulation, AutoencoderKL::load);
        let decoded = vae.decode(input(&f, "input.latents")).unwrap();
        let err = assert_close(&f, "output.decode", decoded, MODEL_TOL);
        let mean = vae.encode(input(&f, "input.image")).unwrap().mean;
        let err = err.max(assert_close(&f, "output.encode.mean", mean, MODEL_TOL));
        println!("VAE with {formulation:?}: rel L2 {err:.2e}");
    }
}
