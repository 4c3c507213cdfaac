//! diffusers' `Attention` module (the `AttnProcessor2_0` path) and the
//! scaled-dot-product attention it runs: Burn's fused attention op, two
//! matmuls, or the crate's tiled host kernel, as the layer's formulation says.

use crate::error::Result;
use crate::formulation::AttentionFormulation;
use crate::kernels::{self, Isa};
use crate::load::Loader;
use crate::nn::{GroupNorm, Linear, to_dtype, to_f32};
use crate::profile;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor, activation::softmax};

/// Softmax(q kᵀ · scale) v for `[B, H, L, D]` tensors, as `formulation` says
/// (a causal mask runs on Burn's attention op or the tiled kernel, which both
/// take it; the matmul form has none). With `upcast` (diffusers'
/// `upcast_attention` / `upcast_softmax`) and half-precision inputs, q, k and
/// v are cast to f32 first, as diffusers does. Without it the backend decides:
/// burn-flex computes f16/bf16 attention in f32 internally (measured here:
/// tests/half.rs); burn-cuda runs its flash-attention kernels in the inputs'
/// type (the GPU parity check runs in f32, so these f16 results are not
/// compared with PyTorch's f16 SDPA; docs/gpu.md). The tiled kernel always
/// computes in f32, so `upcast` changes nothing there.
pub fn scaled_dot_product_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    causal: bool,
    upcast: bool,
    formulation: AttentionFormulation,
) -> Tensor<B, 4> {
    let formulation = match (causal, formulation) {
        (true, AttentionFormulation::Matmul) => AttentionFormulation::Fused,
        _ => formulation,
    };
    profile::op!(q, "attention q={:?} kv={:?} {formulation}", q.dims(), k.dims() => {
        match formulation {
            AttentionFormulation::Fused => sdpa(q, k, v, scale, causal, upcast),
            AttentionFormulation::Matmul => attention_matmul(q, k, v, scale, upcast),
            AttentionFormulation::Tiled => {
                match kernels::host_attention(&q, &k, &v, scale, causal, Isa::detect()) {
                    Some(out) => out,
                    None => sdpa(q, k, v, scale, causal, upcast),
                }
            }
        }
    })
}

/// Burn's attention op, with the f32 upcast where asked.
fn sdpa<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    causal: bool,
    upcast: bool,
) -> Tensor<B, 4> {
    let dtype = q.dtype();
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: causal,
    };
    if upcast && dtype != DType::F32 {
        let out = attention(to_f32(q), to_f32(k), to_f32(v), None, None, options);
        to_dtype(out, dtype)
    } else {
        attention(q, k, v, None, None, options)
    }
}

/// Softmax(q kᵀ · scale) v as two batched matmuls ([`AttentionFormulation::Matmul`]):
/// the scores are formed in the inputs' type (f32 with `upcast`), the softmax
/// is taken in f32 and its result cast back, as PyTorch's math SDPA does.
/// Needs the whole `[B, H, L, S]` score tensor in memory.
pub fn attention_matmul<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
    upcast: bool,
) -> Tensor<B, 4> {
    let dtype = q.dtype();
    let (q, k, v) = if upcast && dtype != DType::F32 {
        (to_f32(q), to_f32(k), to_f32(v))
    } else {
        (q, k, v)
    };
    let inner = v.dtype();
    let scores = q.mul_scalar(scale).matmul(k.swap_dims(2, 3));
    let p = to_dtype(softmax(to_f32(scores), 3), inner);
    to_dtype(p.matmul(v), dtype)
}

/// Settings of one `Attention` module, as diffusers' constructor takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionConfig {
    /// Input width (`query_dim`).
    pub query_dim: usize,
    /// Width of the keys' source (`cross_attention_dim`); `None` = self-attention.
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
    /// Bias on `to_q`, `to_k`, `to_v`.
    pub bias: bool,
    /// Bias on `to_out.0`.
    pub out_bias: bool,
    /// Output width (`out_dim`, defaults to `query_dim`).
    pub out_dim: Option<usize>,
    /// Compute scores/softmax in f32 (`upcast_attention` or `upcast_softmax`).
    pub upcast: bool,
    /// GroupNorm on the input (`norm_num_groups`), with `eps`.
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Adds the input back (`residual_connection`).
    pub residual_connection: bool,
    /// Divides the output by this (`rescale_output_factor`).
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// diffusers' defaults for a self-attention of `heads` × `dim_head` on `query_dim`.
    pub fn new(query_dim: usize, heads: usize, dim_head: usize) -> Self {
        AttentionConfig {
            query_dim,
            cross_attention_dim: None,
            heads,
            dim_head,
            bias: false,
            out_bias: true,
            out_dim: None,
            upcast: false,
            norm_num_groups: None,
            eps: 1e-5,
            residual_connection: false,
            rescale_output_factor: 1.0,
        }
    }
}

/// diffusers' `Attention`: `to_q`, `to_k`, `to_v`, `to_out.0`, optional `group_norm`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub to_q: Linear<B>,
    /// Key projection.
    pub to_k: Linear<B>,
    /// Value projection.
    pub to_v: Linear<B>,
    /// Output projection (`to_out.0`).
    pub to_out: Linear<B>,
    /// Input GroupNorm.
    pub group_norm: Option<GroupNorm<B>>,
    /// Heads.
    pub heads: usize,
    /// `dim_head^-0.5`.
    pub scale: f64,
    /// Scores in f32.
    pub upcast: bool,
    /// Adds the input back.
    pub residual_connection: bool,
    /// Output divisor.
    pub rescale_output_factor: f64,
    /// Fused op or two matmuls.
    pub formulation: AttentionFormulation,
}

impl<B: Backend> Attention<B> {
    /// Loads the module. Legacy VAE names (`query`, `key`, `value`,
    /// `proj_attn`) and 1×1-conv-shaped weights load too.
    pub fn load(loader: &Loader<B>, cfg: &AttentionConfig) -> Result<Self> {
        let inner = cfg.heads * cfg.dim_head;
        let kv_dim = cfg.cross_attention_dim.unwrap_or(cfg.query_dim);
        let out_dim = cfg.out_dim.unwrap_or(cfg.query_dim);
        let legacy = !loader.contains("to_q.weight") && loader.contains("query.weight");
        let (q, k, v, o) = if legacy {
            ("query", "key", "value", "proj_attn".to_string())
        } else {
            ("to_q", "to_k", "to_v", "to_out.0".to_string())
        };
        let group_norm = match cfg.norm_num_groups {
            Some(g) => Some(GroupNorm::load(
                &loader.pp("group_norm"),
                g,
                cfg.query_dim,
                cfg.eps,
            )?),
            None => None,
        };
        Ok(Attention {
            to_q: Linear::load_maybe_conv(&loader.pp(q), cfg.query_dim, inner, cfg.bias)?,
            to_k: Linear::load_maybe_conv(&loader.pp(k), kv_dim, inner, cfg.bias)?,
            to_v: Linear::load_maybe_conv(&loader.pp(v), kv_dim, inner, cfg.bias)?,
            to_out: Linear::load_maybe_conv(&loader.pp(o), inner, out_dim, cfg.out_bias)?,
            group_norm,
            heads: cfg.heads,
            scale: 1.0 / (cfg.dim_head as f64).sqrt(),
            upcast: cfg.upcast,
            residual_connection: cfg.residual_connection,
            rescale_output_factor: cfg.rescale_output_factor,
            formulation: loader.formulation().attention,
        })
    }

    /// Attention over a sequence `[B, L, C]`, keys from `context` `[B, S, Cc]`
    /// when given.
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        self.forward_masked(x, context, false)
    }

    /// As [`Attention::forward`], with a causal mask when `causal`.
    pub fn forward_masked(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        causal: bool,
    ) -> Tensor<B, 3> {
        let residual = x.clone();
        let x = match &self.group_norm {
            Some(norm) => norm.forward3(x.swap_dims(1, 2)).swap_dims(1, 2),
            None => x,
        };
        let q = self.to_q.forward(x.clone());
        let kv_in = context.unwrap_or(x);
        let k = self.to_k.forward(kv_in.clone());
        let v = self.to_v.forward(kv_in);
        let out = scaled_dot_product_attention(
            self.split_heads(q),
            self.split_heads(k),
            self.split_heads(v),
            self.scale,
            causal,
            self.upcast,
            self.formulation,
        );
        let [b, h, l, d] = out.dims();
        let out = out.swap_dims(1, 2).reshape([b, l, h * d]);
        let mut out = self.to_out.forward(out);
        if self.residual_connection {
            out = out + residual;
        }
        if self.rescale_output_factor != 1.0 {
            out = out / self.rescale_output_factor;
        }
        out
    }

    /// Attention over the pixels of `x` `[B, C, H, W]` (UNet2D/VAE attention blocks).
    pub fn forward_spatial(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let seq = x.reshape([b, c, h * w]).swap_dims(1, 2);
        self.forward(seq, None)
            .swap_dims(1, 2)
            .reshape([b, c, h, w])
    }

    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, l, c] = x.dims();
        x.reshape([b, l, self.heads, c / self.heads])
            .swap_dims(1, 2)
    }
}
