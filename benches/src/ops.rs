//! The `ops` component (Rust only): single ops at the shapes of a preset's
//! UNet, each in the formulations worth choosing between on a backend (Burn's
//! fused attention op vs two matmuls and a softmax; Burn's conv2d vs im2col +
//! one matmul), so that a profile can be acted on from one run.

use crate::Result;
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, conv2d};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn::tensor::{Distribution, Tensor};
use diffusion_models::Precision;
use diffusion_models::attention::attention_matmul;
use diffusion_models::nn::conv2d_im2col;
use serde_json::{Value, json};
use std::time::Instant;

fn time<B: Backend>(device: &B::Device, runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let _ = B::sync(device);
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f();
        let _ = B::sync(device);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    ms[ms.len() / 2]
}

/// Times every formulation at the UNet's shapes for `batch` and `latent`.
pub fn run<B: Backend>(
    device: &B::Device,
    precision: Precision,
    batch: usize,
    latent: usize,
    channels: &[usize],
    runs: usize,
) -> Result<Value> {
    let dtype = precision.dtype();
    let normal = Distribution::Normal(0.0, 1.0);
    let rand4 = |s: [usize; 4]| Tensor::<B, 4>::random(s, normal, (device, dtype));
    let mut rows = Vec::new();
    let mut push = |op: String, variant: &str, ms: f64, flop: f64| {
        let tflops = flop / (ms * 1e-3) / 1e12;
        eprintln!("  {op:<44} {variant:<16} {ms:>9.3} ms {tflops:>7.1} TFLOP/s");
        rows.push(json!({"op": op, "variant": variant, "ms": ms, "tflops": tflops}));
    };
    let heads = 8;
    let mut side = latent;
    for &c in channels {
        let l = side * side;
        let d = c / heads;
        let scale = 1.0 / (d as f64).sqrt();
        for kv in [l, 77] {
            let q = rand4([batch, heads, l, d]);
            let k = rand4([batch, heads, kv, d]);
            let v = rand4([batch, heads, kv, d]);
            let flop = 4.0 * (batch * heads * l * kv * d) as f64;
            let op = format!("attention b{batch} h{heads} q{l} kv{kv} d{d}");
            let opts = AttentionModuleOptions {
                scale: Some(scale),
                softcap: None,
                is_causal: false,
            };
            let ms = time::<B>(device, runs, || {
                let _ = attention(q.clone(), k.clone(), v.clone(), None, None, opts);
            });
            push(op.clone(), "burn_attention", ms, flop);
            let ms = time::<B>(device, runs, || {
                let _ = attention_matmul(q.clone(), k.clone(), v.clone(), scale, false);
            });
            push(op, "matmul_softmax", ms, flop);
        }
        let x = rand4([batch, c, side, side]);
        let w = rand4([c, c, 3, 3]);
        let flop = 2.0 * (batch * c * c * 9 * l) as f64;
        let op = format!("conv3x3 {c}->{c} {batch}x{side}x{side}");
        let ms = time::<B>(device, runs, || {
            let _ = conv2d(
                x.clone(),
                w.clone(),
                None,
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            );
        });
        push(op.clone(), "burn_conv2d", ms, flop);
        let ms = time::<B>(device, runs, || {
            let _ = conv2d_im2col(x.clone(), w.clone(), None, 1, 1);
        });
        push(op, "im2col_matmul", ms, flop);
        // The transformer's linears: [b·l, c] x [c, 4c] (GEGLU's half width).
        let a = Tensor::<B, 2>::random([batch * l, c], normal, (device, dtype));
        let m = Tensor::<B, 2>::random([c, 4 * c], normal, (device, dtype));
        let ms = time::<B>(device, runs, || {
            let _ = a.clone().matmul(m.clone());
        });
        push(
            format!("matmul [{}x{c}]x[{c}x{}]", batch * l, 4 * c),
            "2d",
            ms,
            2.0 * (batch * l * c * 4 * c) as f64,
        );
        side /= 2;
    }
    Ok(json!({"median_ms": null, "ops": rows}))
}
