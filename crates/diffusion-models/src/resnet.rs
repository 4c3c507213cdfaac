//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`.

use crate::error::Result;
use crate::load::Loader;
use crate::nn::{Activation, Conv2d, GroupNorm, to_dtype, to_f32};
use crate::profile;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, interpolate};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// How the time embedding enters a resnet block (`resnet_time_scale_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeEmbeddingNorm {
    /// Added after `conv1`.
    #[default]
    Default,
    /// Split into scale and shift applied after `norm2`.
    ScaleShift,
}

/// Settings of a `ResnetBlock2D`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResnetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the time embedding (`None`: no `time_emb_proj`).
    pub temb_channels: Option<usize>,
    /// GroupNorm groups of `norm1`.
    pub groups: usize,
    /// GroupNorm groups of `norm2` (defaults to `groups`).
    pub groups_out: Option<usize>,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Activation.
    pub act: Activation,
    /// `resnet_time_scale_shift`.
    pub time_embedding_norm: TimeEmbeddingNorm,
    /// Output divisor.
    pub output_scale_factor: f64,
    /// Bias on the 1×1 shortcut conv.
    pub conv_shortcut_bias: bool,
}

impl ResnetConfig {
    /// diffusers' defaults (groups 32, eps 1e-6, SiLU).
    pub fn new(in_channels: usize, out_channels: usize, temb_channels: Option<usize>) -> Self {
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels,
            groups: 32,
            groups_out: None,
            eps: 1e-6,
            act: Activation::Silu,
            time_embedding_norm: TimeEmbeddingNorm::Default,
            output_scale_factor: 1.0,
            conv_shortcut_bias: true,
        }
    }
}

/// diffusers' `ResnetBlock2D`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// First norm.
    pub norm1: GroupNorm<B>,
    /// First 3×3 conv.
    pub conv1: Conv2d<B>,
    /// Time embedding projection.
    pub time_emb_proj: Option<crate::nn::Linear<B>>,
    /// Second norm.
    pub norm2: GroupNorm<B>,
    /// Second 3×3 conv.
    pub conv2: Conv2d<B>,
    /// 1×1 conv when channels change.
    pub conv_shortcut: Option<Conv2d<B>>,
    /// Activation.
    #[module(skip)]
    pub act: Activation,
    /// Time embedding mode.
    #[module(skip)]
    pub time_embedding_norm: TimeEmbeddingNorm,
    /// Output divisor.
    pub output_scale_factor: f64,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// Loads the block.
    pub fn load(loader: &Loader<B>, cfg: &ResnetConfig) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => {
                let width = match cfg.time_embedding_norm {
                    TimeEmbeddingNorm::Default => cout,
                    TimeEmbeddingNorm::ScaleShift => 2 * cout,
                };
                Some(crate::nn::Linear::load(
                    &loader.pp("time_emb_proj"),
                    t,
                    width,
                    true,
                )?)
            }
            None => None,
        };
        let conv_shortcut = if cin != cout {
            Some(Conv2d::load(
                &loader.pp("conv_shortcut"),
                cin,
                cout,
                1,
                1,
                0,
                cfg.conv_shortcut_bias,
            )?)
        } else {
            None
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&loader.pp("norm1"), cfg.groups, cin, cfg.eps)?,
            conv1: Conv2d::load(&loader.pp("conv1"), cin, cout, 3, 1, 1, true)?,
            time_emb_proj,
            norm2: GroupNorm::load(
                &loader.pp("norm2"),
                cfg.groups_out.unwrap_or(cfg.groups),
                cout,
                cfg.eps,
            )?,
            conv2: Conv2d::load(&loader.pp("conv2"), cout, cout, 3, 1, 1, true)?,
            conv_shortcut,
            act: cfg.act,
            time_embedding_norm: cfg.time_embedding_norm,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `x` `[N, C, H, W]`, `temb` `[N, T]`.
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        let h = self.conv1.forward(self.norm_act(&self.norm1, x.clone()));
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let t = proj.forward(self.act.forward(to_dtype(temb, h.dtype())));
                let [n, c] = t.dims();
                Some(t.reshape([n, c, 1, 1]))
            }
            _ => None,
        };
        let h = match (self.time_embedding_norm, t) {
            (TimeEmbeddingNorm::Default, Some(t)) => self.norm_act(&self.norm2, h + t),
            (TimeEmbeddingNorm::ScaleShift, Some(t)) => {
                let c = t.dims()[1] / 2;
                let scale = t.clone().narrow(1, 0, c);
                let shift = t.narrow(1, c, c);
                self.act
                    .forward(self.norm2.forward(h) * (scale + 1.0) + shift)
            }
            (_, None) => self.norm_act(&self.norm2, h),
        };
        let h = self.conv2.forward(h);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor != 1.0 {
            out / self.output_scale_factor
        } else {
            out
        }
    }
}

impl<B: Backend> ResnetBlock2D<B> {
    /// `act(norm(x))`, one pass over the data where the activation is SiLU
    /// ([`GroupNorm::forward_silu`]).
    fn norm_act(&self, norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.act {
            Activation::Silu => norm.forward_silu(x),
            act => act.forward(norm.forward(x)),
        }
    }
}

/// diffusers' `Downsample2D`: a stride-2 3×3 `conv` (with `padding` 1, or 0
/// after padding right/bottom by one as the VAE encoder does), or a 2×2
/// average pool without `use_conv`.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// The conv (`None`: average pooling).
    pub conv: Option<Conv2d<B>>,
    /// Conv padding (0 means: pad right and bottom by one first).
    pub padding: usize,
}

impl<B: Backend> Downsample2D<B> {
    /// Loads the block (`conv.weight`, `conv.bias`).
    pub fn load(
        loader: &Loader<B>,
        channels: usize,
        use_conv: bool,
        out_channels: usize,
        padding: usize,
    ) -> Result<Self> {
        let conv = if use_conv {
            Some(Conv2d::load(
                &loader.pp("conv"),
                channels,
                out_channels,
                3,
                2,
                padding,
                true,
            )?)
        } else {
            None
        };
        Ok(Downsample2D { conv, padding })
    }

    /// Halves height and width.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.conv {
            Some(conv) => {
                let x = if self.padding == 0 {
                    pad_right_bottom(x)
                } else {
                    x
                };
                conv.forward(x)
            }
            None => avg_pool2d(x, [2, 2], [2, 2], [0, 0], true, false),
        }
    }
}

/// Zero-pads one column on the right and one row at the bottom, in `x`'s
/// dtype (Burn 0.21's `pad` builds its zeros in the default float type, which
/// breaks f16/bf16 tensors on burn-flex).
fn pad_right_bottom<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let dtype = x.dtype();
    let x = Tensor::cat(vec![x, Tensor::zeros([n, c, h, 1], (&device, dtype))], 3);
    Tensor::cat(
        vec![x, Tensor::zeros([n, c, 1, w + 1], (&device, dtype))],
        2,
    )
}

/// diffusers' `Upsample2D`: nearest-neighbour ×2 (or to a given size), then a
/// 3×3 `conv` when `use_conv`.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    /// The conv after interpolation.
    pub conv: Option<Conv2d<B>>,
}

impl<B: Backend> Upsample2D<B> {
    /// Loads the block (`conv.weight`, `conv.bias`).
    pub fn load(
        loader: &Loader<B>,
        channels: usize,
        use_conv: bool,
        out_channels: usize,
    ) -> Result<Self> {
        let conv = if use_conv {
            Some(Conv2d::load(
                &loader.pp("conv"),
                channels,
                out_channels,
                3,
                1,
                1,
                true,
            )?)
        } else {
            None
        };
        Ok(Upsample2D { conv })
    }

    /// Doubles height and width, or resizes to `output_size` (the UNet passes
    /// the skip connection's size when the input was odd-sized).
    pub fn forward(&self, x: Tensor<B, 4>, output_size: Option<[usize; 2]>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let size = output_size.unwrap_or([2 * h, 2 * w]);
        // diffusers upcasts bf16 for the interpolation (no bf16 nearest kernel).
        let dtype = x.dtype();
        let x = profile::op!(x, "upsample_nearest {:?}", x.dims() => {
            let x = if dtype == DType::BF16 { to_f32(x) } else { x };
            let x = interpolate(x, size, InterpolateOptions::new(InterpolateMode::Nearest));
            to_dtype(x, dtype)
        });
        match &self.conv {
            Some(conv) => conv.forward(x),
            None => x,
        }
    }
}
