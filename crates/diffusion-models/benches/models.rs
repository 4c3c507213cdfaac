//! Criterion benches of the networks on mid-size configs with random weights
//! (`benches/configs/`): a UNet2DCondition forward on every CPU backend this
//! build enables (the default-backend choice in docs/backends.md comes from
//! this), and on the default backend a VAE decode and a CLIP encode.
//! `cargo xtask bench models` runs this and the same workloads in PyTorch.
//!
//!     cargo bench -p diffusion-models --features flex,candle --bench models

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use diffusion_models::config::parse_config;
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_models::{Loader, Precision};
use std::time::Duration;

const BATCH: usize = 2;
const SEQ: usize = 77;

fn config<T: serde::de::DeserializeOwned + serde::Serialize>(name: &str) -> T {
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

fn benches(c: &mut Criterion) {
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
