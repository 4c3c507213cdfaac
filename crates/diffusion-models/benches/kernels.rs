//! Criterion benches of the host kernels beside burn-flex's op on the same
//! tensors and threads (rayon's pool, `RAYON_NUM_THREADS`): attention at the
//! UNets' self- and cross-attention shapes (mid preset and SD1.5), linear
//! layers and the GEGLU projection at the mid and SD1.5 transformer shapes.
//!
//!     cargo bench -p diffusion-models --bench kernels
//!
//! PyTorch's side of the same shapes: `scripts/models/bench_kernels_torch.py`.

use burn::backend::Flex;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor, activation};
use criterion::{Criterion, criterion_group, criterion_main};
use diffusion_models::kernels::{Isa, host_attention, host_geglu, host_linear};
use std::time::Duration;

fn rand<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

/// [batch, heads, q_len, kv_len, head_dim]
const ATTENTION: [[usize; 5]; 6] = [
    [2, 8, 1024, 1024, 8],
    [2, 8, 1024, 77, 8],
    [2, 8, 256, 256, 16],
    [2, 8, 4096, 4096, 40],
    [2, 8, 4096, 77, 40],
    [2, 8, 1024, 1024, 80],
];

/// [rows, in, out]
const LINEAR: [[usize; 3]; 4] = [
    [2048, 64, 64],
    [128, 256, 256],
    [8192, 320, 320],
    [154, 768, 768],
];

/// [rows, dim] (GEGLU inner = 4·dim)
const GEGLU: [[usize; 2]; 3] = [[2048, 64], [512, 128], [8192, 320]];

fn bench_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for [b, h, lq, lk, d] in ATTENTION {
        let (q, k, v) = (
            rand([b, h, lq, d]),
            rand([b, h, lk, d]),
            rand([b, h, lk, d]),
        );
        let scale = 1.0 / (d as f64).sqrt();
        let name = format!("{b}x{h}x{lq}x{lk}x{d}");
        group.bench_function(format!("tiled/{name}"), |bench| {
            bench.iter(|| host_attention(&q, &k, &v, scale, false, Isa::detect()).unwrap())
        });
        let options = AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        };
        group.bench_function(format!("flex/{name}"), |bench| {
            bench.iter(|| {
                attention(q.clone(), k.clone(), v.clone(), None, None, options).into_data()
            })
        });
    }
    group.finish();
}

fn bench_linear(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for [m, k, n] in LINEAR {
        let (x, w, bias) = (rand([m, k]), rand([k, n]), rand([n]));
        let name = format!("{m}x{k}x{n}");
        group.bench_function(format!("packed/{name}"), |bench| {
            bench.iter(|| host_linear(&x, &w, Some(&bias), Isa::detect()).unwrap())
        });
        group.bench_function(format!("flex/{name}"), |bench| {
            bench.iter(|| (x.clone().matmul(w.clone()) + bias.clone().unsqueeze::<2>()).into_data())
        });
    }
    group.finish();
}

fn bench_geglu(c: &mut Criterion) {
    let mut group = c.benchmark_group("geglu");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for [m, dim] in GEGLU {
        let inner = 4 * dim;
        let (x, w, bias) = (rand([m, dim]), rand([dim, 2 * inner]), rand([2 * inner]));
        let name = format!("{m}x{dim}");
        group.bench_function(format!("fused/{name}"), |bench| {
            bench.iter(|| host_geglu(&x, &w, &bias, Isa::detect()).unwrap())
        });
        group.bench_function(format!("flex/{name}"), |bench| {
            bench.iter(|| {
                let h = x.clone().matmul(w.clone()) + bias.clone().unsqueeze::<2>();
                let value = h.clone().narrow(1, 0, inner);
                let gate = h.narrow(1, inner, inner);
                (value * activation::gelu(gate)).into_data()
            })
        });
    }
    group.finish();
}

criterion_group!(kernels, bench_attention, bench_linear, bench_geglu);
criterion_main!(kernels);
