//! Half precision on the CPU (burn-flex has f16/bf16): the blocks run in
//! F16/BF16 against the f32 diffusers outputs, and GroupNorm/LayerNorm keep
//! their statistics in f32, so activations whose squares overflow f16
//! (|x| > 256) still normalise correctly.

use burn::tensor::{DType, Distribution, Tensor};
use diffusion_models::attention::{Attention, AttentionConfig};
use diffusion_models::backend::Flex;
use diffusion_models::mid_block::{MidBlockConfig, UNetMidBlock2D};
use diffusion_models::nn::{GroupNorm, LayerNorm, to_dtype};
use diffusion_models::resnet::{ResnetBlock2D, ResnetConfig};
use diffusion_models::testing::{Fixture, assert_close, rel_l2, values};
use diffusion_models::{Loader, Precision};
use std::path::PathBuf;

type B = Flex;

fn fixture(name: &str) -> Fixture {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "blocks",
        name,
    ]
    .iter()
    .collect();
    Fixture::open(&path)
}

/// f16 has a 10-bit mantissa (≈5e-4 relative per op), bf16 7 bits (≈4e-3).
fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::F32 => 1e-5,
        Precision::F16 => 2e-3,
        Precision::BF16 => 1.5e-2,
    }
}

#[test]
fn blocks_run_in_half_precision() {
    let dev = Default::default();
    for p in [Precision::F32, Precision::F16, Precision::BF16] {
        let f = fixture("resnet.safetensors");
        let mut cfg = ResnetConfig::new(8, 16, Some(12));
        cfg.groups = 4;
        let l = Loader::<B>::new(f.source(), &dev, p).pp("block");
        let m = ResnetBlock2D::<B>::load(&l, &cfg).unwrap();
        let y = m.forward(
            f.tensor("input.x", &dev, p),
            Some(f.tensor("input.temb", &dev, p)),
        );
        assert_eq!(
            y.dtype(),
            p.dtype(),
            "output stays in the model's precision"
        );
        let err = assert_close(&f, "output", y, tolerance(p));
        println!("resnet {p:?}: {err:.2e}");

        let f = fixture("mid_block.safetensors");
        let mut resnet = ResnetConfig::new(16, 16, Some(12));
        resnet.groups = 4;
        let cfg = MidBlockConfig {
            resnet,
            num_layers: 1,
            add_attention: true,
            attention_head_dim: Some(8),
        };
        let l = Loader::<B>::new(f.source(), &dev, p).pp("block");
        let m = UNetMidBlock2D::<B>::load(&l, &cfg).unwrap();
        let y = m.forward(
            f.tensor("input.x", &dev, p),
            Some(f.tensor("input.temb", &dev, p)),
        );
        let err = assert_close(&f, "output", y, tolerance(p));
        println!("mid block {p:?}: {err:.2e}");

        let f = fixture("attention_cross.safetensors");
        let mut cfg = AttentionConfig::new(16, 4, 6);
        cfg.cross_attention_dim = Some(12);
        let l = Loader::<B>::new(f.source(), &dev, p).pp("block");
        let m = Attention::<B>::load(&l, &cfg).unwrap();
        let y = m.forward(
            f.tensor("input.x", &dev, p),
            Some(f.tensor("input.context", &dev, p)),
        );
        let err = assert_close(&f, "output", y, tolerance(p));
        println!("cross attention {p:?}: {err:.2e}");
    }
}

#[test]
fn norms_keep_f32_statistics_in_f16() {
    let dev = Default::default();
    // Values around ±1000: their squares (1e6) overflow f16 (max 65504).
    let x = Tensor::<B, 4>::random([2, 8, 4, 4], Distribution::Uniform(-1000.0, 1000.0), &dev);
    let l = Loader::<B>::random(&dev, Precision::F32);
    let gn = GroupNorm::<B>::load(&l, 4, 8, 1e-6).unwrap();
    let want = values(gn.forward(x.clone()));
    let got = gn.forward(to_dtype(x.clone(), DType::F16));
    assert_eq!(got.dtype(), DType::F16);
    let got = values(got);
    assert!(got.iter().all(|v| v.is_finite()));
    let err = rel_l2(&got, &want);
    assert!(err < 2e-3, "group norm in f16: {err:.2e}");

    let ln = LayerNorm::<B>::load(&l, 4, 1e-5).unwrap();
    let want = values(ln.forward(x.clone()));
    let got = values(ln.forward(to_dtype(x, DType::F16)));
    let err = rel_l2(&got, &want);
    assert!(
        got.iter().all(|v| v.is_finite()) && err < 2e-3,
        "layer norm in f16: {err:.2e}"
    );
}

fn model_dir(kind: &str, name: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", kind, name]
        .iter()
        .collect()
}

/// Whole models in each precision against diffusers'/transformers' f32
/// outputs. Tolerances: f16 5e-3, bf16 3e-2 relative L2 (measured worst:
/// f16 2.3e-3, bf16 1.9e-2, on the SDXL-like UNet).
#[test]
fn models_run_in_half_precision() {
    use diffusion_models::autoencoder_kl::AutoencoderKL;
    use diffusion_models::clip::CLIPTextModel;
    use diffusion_models::unet_2d_condition::{UNet2DConditionModel, UNetConditions};
    let dev = Default::default();
    for (p, tol) in [(Precision::F16, 5e-3), (Precision::BF16, 3e-2)] {
        for name in ["sd1", "sdxl"] {
            let dir = model_dir("unet", name);
            let f = Fixture::open(&dir.join("io.safetensors"));
            let m = UNet2DConditionModel::<B>::from_dir(&dir, &dev, p).unwrap();
            let opt = |k: &str| f.contains(k).then(|| f.tensor::<B, 2>(k, &dev, p));
            let conditions = UNetConditions {
                text_embeds: opt("input.text_embeds"),
                time_ids: opt("input.time_ids"),
                ..Default::default()
            };
            let y = m
                .forward(
                    f.tensor("input.sample", &dev, p),
                    f.tensor("input.timesteps", &dev, Precision::F32),
                    f.tensor("input.encoder_hidden_states", &dev, p),
                    conditions,
                )
                .unwrap();
            assert_eq!(y.dtype(), p.dtype());
            println!(
                "unet {name} {p:?}: {:.2e}",
                assert_close(&f, "output.sample", y, tol)
            );
        }
        let dir = model_dir("vae", "kl");
        let f = Fixture::open(&dir.join("io.safetensors"));
        let m = AutoencoderKL::<B>::from_dir(&dir, &dev, p).unwrap();
        let y = m.decode(f.tensor("input.latents", &dev, p)).unwrap();
        println!(
            "vae decode {p:?}: {:.2e}",
            assert_close(&f, "output.decode", y, tol)
        );
        let d = m.encode(f.tensor("input.image", &dev, p)).unwrap();
        println!(
            "vae encode {p:?}: {:.2e}",
            assert_close(&f, "output.encode.mean", d.mean, tol)
        );

        let dir = model_dir("clip", "sd1");
        let f = Fixture::open(&dir.join("io.safetensors"));
        let m = CLIPTextModel::<B>::from_dir(&dir, &dev, p).unwrap();
        let (shape, ids) = f.values("input.input_ids");
        let rows: Vec<Vec<u32>> = ids
            .chunks(shape[1])
            .map(|r| r.iter().map(|&v| v as u32).collect())
            .collect();
        let o = m.forward_ids(&rows).unwrap();
        println!(
            "clip {p:?}: {:.2e}",
            assert_close(&f, "output.last_hidden_state", o.last_hidden_state, tol)
        );
    }
}
