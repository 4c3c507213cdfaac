//! Criterion benches of the networks on mid-size configs with random weights
//! (`benches/configs/`): a UNet2DCondition forward on every CPU backend this
//! build enables (the default-backend choice in docs/backends.md comes from
//! this), and on burn-flex (the default) a VAE decode and a CLIP-L encode.
//! `cargo xtask bench models` runs this and the same workloads in PyTorch.
//!
//!     cargo bench -p diffusion-models --features flex,candle --bench models

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use diffusion_models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use diffusion_models::clip::{CLIPTextConfig, CLIPTextModel};
use diffusion_models::config::{ModelConfig, parse_config};
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_models::{Loader, Precision};
use std::time::Duration;

const BATCH: usize = 2;
const SEQ: usize = 77;

fn config<T: ModelConfig>(name: &str) -> T {
    let path = format!("{}/benches/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).expect("bench config");
    parse_config::<T>(&json, &path)
        .expect("valid bench config")
        .config
}

fn bench_unet<B: Backend>(c: &mut Criterion, backend: &str, precision: Precision) {
    let cfg: UNet2DConditionConfig = config("unet_mid.json");
    let device = B::Device::default();
    B::seed(&device, 0);
    let model = UNet2DConditionModel::<B>::load(&Loader::random(&device, precision), &cfg).unwrap();
    let side = 32;
    let dtype = precision.dtype();
    let sample = Tensor::<B, 4>::random(
        [BATCH, 4, side, side],
        Distribution::Normal(0.0, 1.0),
        (&device, dtype),
    );
    let text = Tensor::<B, 3>::random(
        [
            BATCH,
            SEQ,
            cfg.cross_attention_dim.get(0).expect("cross_attention_dim"),
        ],
        Distribution::Normal(0.0, 1.0),
        (&device, dtype),
    );
    let t = Tensor::<B, 1>::from_floats([500.0; BATCH], &device);
    let mut group = c.benchmark_group("unet_mid_forward");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function(format!("{backend}_{precision:?}").to_lowercase(), |b| {
        b.iter(|| {
            let y = model
                .forward(
                    sample.clone(),
                    t.clone(),
                    text.clone(),
                    UNetConditions::default(),
                )
                .unwrap();
            // Read back: the time includes finishing the computation.
            y.into_data()
        })
    });
    group.finish();
}

fn bench_vae<B: Backend>(c: &mut Criterion, backend: &str, precision: Precision) {
    let cfg: AutoencoderKLConfig = config("vae_mid.json");
    let device = B::Device::default();
    B::seed(&device, 0);
    let model = AutoencoderKL::<B>::load(&Loader::random(&device, precision), &cfg).unwrap();
    let latents = Tensor::<B, 4>::random(
        [1, 4, 32, 32],
        Distribution::Normal(0.0, 1.0),
        (&device, precision.dtype()),
    );
    let mut group = c.benchmark_group("vae_mid_decode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function(format!("{backend}_{precision:?}").to_lowercase(), |b| {
        b.iter(|| model.decode(latents.clone()).unwrap().into_data())
    });
    group.finish();
}

fn bench_clip<B: Backend>(c: &mut Criterion, backend: &str, precision: Precision) {
    let cfg: CLIPTextConfig = config("clip_l.json");
    let device = B::Device::default();
    B::seed(&device, 0);
    let model = CLIPTextModel::<B>::load(&Loader::random(&device, precision), &cfg).unwrap();
    // Two prompts (guidance): start token, 20 words, end token, padding.
    let row: Vec<u32> = (0..77)
        .map(|i| match i {
            0 => 49406,
            1..=20 => 320 + 7 * i as u32,
            _ => 49407,
        })
        .collect();
    let ids = vec![row.clone(), row];
    let mut group = c.benchmark_group("clip_l_encode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function(format!("{backend}_{precision:?}").to_lowercase(), |b| {
        b.iter(|| {
            model
                .forward_ids(&ids)
                .unwrap()
                .last_hidden_state
                .into_data()
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    #[cfg(feature = "flex")]
    {
        bench_vae::<diffusion_models::backend::Flex>(c, "flex", Precision::F32);
        bench_clip::<diffusion_models::backend::Flex>(c, "flex", Precision::F32);
    }
    #[cfg(feature = "ndarray")]
    bench_unet::<diffusion_models::backend::NdArray>(c, "ndarray", Precision::F32);
    #[cfg(feature = "flex")]
    {
        bench_unet::<diffusion_models::backend::Flex>(c, "flex", Precision::F32);
        bench_unet::<diffusion_models::backend::Flex>(c, "flex", Precision::F16);
        bench_unet::<diffusion_models::backend::Flex>(c, "flex", Precision::BF16);
    }
    #[cfg(feature = "candle")]
    bench_unet::<diffusion_models::backend::Candle>(c, "candle", Precision::F32);
}

criterion_group!(models, benches);
criterion_main!(models);
