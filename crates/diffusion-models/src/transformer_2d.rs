//! diffusers' `Transformer2DModel` for continuous (image-feature) input, the
//! spatial transformer of Stable Diffusion's UNet, and the
//! `BasicTransformerBlock` it stacks: self-attention, cross-attention on the
//! text states, and a GEGLU feed-forward, each pre-normed with a LayerNorm
//! and added back.

use crate::attention::{Attention, AttentionConfig};
use crate::error::Result;
use crate::formulation::LinearFormulation;
use crate::kernels::{self, Isa};
use crate::load::Loader;
use crate::nn::{GroupNorm, LayerNorm, Linear};
use crate::profile;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, activation};

/// Settings of a `Transformer2DModel` as the UNet's cross-attention blocks
/// build it (`norm_type="layer_norm"`, `activation_fn="geglu"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Transformer2DConfig {
    /// Heads.
    pub num_attention_heads: usize,
    /// Width of one head (`in_channels / num_attention_heads` in the UNet).
    pub attention_head_dim: usize,
    /// Input (and output) channels.
    pub in_channels: usize,
    /// Number of `BasicTransformerBlock`s (`transformer_layers_per_block`).
    pub num_layers: usize,
    /// Groups of the input GroupNorm (its epsilon is always 1e-6).
    pub norm_num_groups: usize,
    /// Width of the text states (`None`: no cross-attention).
    pub cross_attention_dim: Option<usize>,
    /// `proj_in`/`proj_out` are Linear layers (SD2, SDXL) rather than 1×1 convs (SD1).
    pub use_linear_projection: bool,
    /// `attn1` attends to the text states too (no self-attention).
    pub only_cross_attention: bool,
    /// Attention scores in f32 (SD2.1 needs it in half precision).
    pub upcast_attention: bool,
    /// Bias on the q/k/v projections.
    pub attention_bias: bool,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
}

impl Transformer2DConfig {
    /// The UNet's transformer: `heads` heads over `channels`, `layers` blocks.
    pub fn new(channels: usize, heads: usize, layers: usize, norm_num_groups: usize) -> Self {
        Transformer2DConfig {
            num_attention_heads: heads,
            attention_head_dim: channels / heads,
            in_channels: channels,
            num_layers: layers,
            norm_num_groups,
            cross_attention_dim: None,
            use_linear_projection: false,
            only_cross_attention: false,
            upcast_attention: false,
            attention_bias: false,
            norm_eps: 1e-5,
        }
    }

    fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}

/// diffusers' `FeedForward` with its default GEGLU: `net.0.proj` produces a
/// value and a gate half, `value * gelu(gate)`, then `net.2` projects back.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `dim → 2 · inner` (`net.0.proj`).
    pub proj_in: Linear<B>,
    /// `inner → dim` (`net.2`).
    pub proj_out: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    /// Loads `net.0.proj` and `net.2` with the default `inner = 4 · dim`.
    pub fn load(loader: &Loader<B>, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(FeedForward {
            proj_in: Linear::load(&loader.pp("net.0.proj"), dim, 2 * inner, true)?,
            proj_out: Linear::load(&loader.pp("net.2"), inner, dim, true)?,
        })
    }

    /// `x` `[B, L, dim]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.proj_in.formulation == LinearFormulation::Packed
            && !self.proj_in.has_active_adapters()
            && let Some(bias) = &self.proj_in.bias
        {
            let fused = profile::op!(x, "geglu {:?} fused", x.dims() => {
                kernels::host_geglu(&x, &self.proj_in.weight.val(), &bias.val(), Isa::detect())
            });
            if let Some(gated) = fused {
                return self.proj_out.forward(gated);
            }
        }
        let h = self.proj_in.forward(x);
        let inner = h.dims()[2] / 2;
        let gated = profile::op!(h, "geglu {:?}", h.dims() => {
            let value = h.clone().narrow(2, 0, inner);
            let gate = h.narrow(2, inner, inner);
            value * activation::gelu(gate)
        });
        self.proj_out.forward(gated)
    }
}

/// diffusers' `BasicTransformerBlock` with `norm_type="layer_norm"`.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// Before `attn1`.
    pub norm1: LayerNorm<B>,
    /// Self-attention (cross-attention with `only_cross_attention`).
    pub attn1: Attention<B>,
    /// Before `attn2`.
    pub norm2: Option<LayerNorm<B>>,
    /// Cross-attention on the text states.
    pub attn2: Option<Attention<B>>,
    /// Before `ff`.
    pub norm3: LayerNorm<B>,
    /// GEGLU feed-forward.
    pub ff: FeedForward<B>,
    /// `attn1` takes the text states as keys and values.
    pub only_cross_attention: bool,
}

impl<B: Backend> BasicTransformerBlock<B> {
    /// Loads the block for width `cfg.inner_dim()`.
    pub fn load(loader: &Loader<B>, cfg: &Transformer2DConfig) -> Result<Self> {
        let dim = cfg.inner_dim();
        let attention = |cross: Option<usize>| {
            let mut a = AttentionConfig::new(dim, cfg.num_attention_heads, cfg.attention_head_dim);
            a.cross_attention_dim = cross;
            a.bias = cfg.attention_bias;
            a.upcast = cfg.upcast_attention;
            a
        };
        let attn1_cross = if cfg.only_cross_attention {
            cfg.cross_attention_dim
        } else {
            None
        };
        let (norm2, attn2) = match cfg.cross_attention_dim {
            Some(c) => (
                Some(LayerNorm::load(&loader.pp("norm2"), dim, cfg.norm_eps)?),
                Some(Attention::load(&loader.pp("attn2"), &attention(Some(c)))?),
            ),
            None => (None, None),
        };
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&loader.pp("norm1"), dim, cfg.norm_eps)?,
            attn1: Attention::load(&loader.pp("attn1"), &attention(attn1_cross))?,
            norm2,
            attn2,
            norm3: LayerNorm::load(&loader.pp("norm3"), dim, cfg.norm_eps)?,
            ff: FeedForward::load(&loader.pp("ff"), dim)?,
            only_cross_attention: cfg.only_cross_attention,
        })
    }

    /// `x` `[B, L, dim]`, `context` `[B, S, cross_attention_dim]`.
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let self_context = if self.only_cross_attention {
            context.clone()
        } else {
            None
        };
        let mut h = self
            .attn1
            .forward(self.norm1.forward(x.clone()), self_context)
            + x;
        if let (Some(norm), Some(attn)) = (&self.norm2, &self.attn2) {
            h = attn.forward(norm.forward(h.clone()), context) + h;
        }
        self.ff.forward(self.norm3.forward(h.clone())) + h
    }
}

/// diffusers' `Transformer2DModel` on continuous input: GroupNorm, `proj_in`,
/// the transformer blocks over the `H·W` pixels, `proj_out`, plus the input.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// Input GroupNorm (eps 1e-6).
    pub norm: GroupNorm<B>,
    /// `in_channels → inner` (a 1×1 conv in SD1 files, loaded as the Linear it equals).
    pub proj_in: Linear<B>,
    /// The blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// `inner → in_channels`.
    pub proj_out: Linear<B>,
}

impl<B: Backend> Transformer2DModel<B> {
    /// Loads the model (`norm`, `proj_in`, `transformer_blocks.i`, `proj_out`).
    pub fn load(loader: &Loader<B>, cfg: &Transformer2DConfig) -> Result<Self> {
        let inner = cfg.inner_dim();
        let channels = cfg.in_channels;
        let transformer_blocks = (0..cfg.num_layers)
            .map(|i| BasicTransformerBlock::load(&loader.pp("transformer_blocks").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer2DModel {
            norm: GroupNorm::load(&loader.pp("norm"), cfg.norm_num_groups, channels, 1e-6)?,
            proj_in: load_projection(&loader.pp("proj_in"), channels, inner, cfg)?,
            transformer_blocks,
            proj_out: load_projection(&loader.pp("proj_out"), inner, channels, cfg)?,
        })
    }

    /// `x` `[B, C, H, W]`, `context` `[B, S, cross_attention_dim]`.
    pub fn forward(&self, x: Tensor<B, 4>, context: Option<Tensor<B, 3>>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let seq = self
            .norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let mut seq = self.proj_in.forward(seq);
        for block in &self.transformer_blocks {
            seq = block.forward(seq, context.clone());
        }
        let out = self.proj_out.forward(seq);
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

/// `proj_in`/`proj_out`: a Linear with `use_linear_projection`, otherwise a
/// 1×1 conv, which on `[B, H·W, C]` is the same Linear. The stored shape must
/// be the one the config names, so a wrong `use_linear_projection` is an error.
fn load_projection<B: Backend>(
    loader: &Loader<B>,
    in_features: usize,
    out_features: usize,
    cfg: &Transformer2DConfig,
) -> Result<Linear<B>> {
    if cfg.use_linear_projection {
        return Linear::load(loader, in_features, out_features, true);
    }
    Linear::load_stored(
        loader,
        &[out_features, in_features, 1, 1],
        in_features,
        out_features,
        true,
    )
}
