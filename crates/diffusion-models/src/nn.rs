//! The layers every network here is made of, with PyTorch's parameter names
//! and layouts (so keys and shapes match diffusers' safetensors), and with the
//! numerics diffusers relies on: normalisation statistics always in f32.

use crate::adapter::{AdapterSlot, Layer, LayerShape};
use crate::error::Result;
use crate::formulation::{ConvFormulation, GroupNormFormulation, LinearFormulation};
use crate::kernels::{self, Isa};
use crate::load::{Init, Loader};
use crate::profile;
use crate::trainable_lora::{TrainableConvLora, TrainableLora};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{DType, FloatDType, Tensor, activation, s};
use serde::{Deserialize, Serialize};

/// `torch.nn.Linear`. The weight is held as `[in, out]` (Burn's layout; the
/// file's `[out, in]` is transposed once at load).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in_features, out_features]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out_features]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Burn's matmul or the crate's packed GEMM.
    pub formulation: LinearFormulation,
    /// Where the layer's adapters (LoRA …) are found.
    #[module(skip)]
    pub adapters: AdapterSlot,
    /// A LoRA being trained on this layer (see [`Loader::with_lora`]).
    pub lora: Option<TrainableLora<B>>,
}

impl<B: Backend> Linear<B> {
    /// Loads `weight` (`[out, in]` in the file) and, when `bias`, `bias`.
    pub fn load(
        loader: &Loader<B>,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        Self::load_stored(
            loader,
            &[out_features, in_features],
            in_features,
            out_features,
            bias,
        )
    }

    /// Loads a Linear whose weight is stored with shape `stored` (`[out, in]`,
    /// or `[out, in, 1, 1]` for a 1×1 conv used as a Linear).
    pub fn load_stored(
        loader: &Loader<B>,
        stored: &[usize],
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = loader.linear_param("weight", stored, out_features, in_features)?;
        let bias = if bias {
            Some(loader.param("bias", [out_features], Init::fan_in(in_features))?)
        } else {
            None
        };
        let adapters = loader.adapter_slot(Layer {
            shape: LayerShape::Linear {
                in_features,
                out_features,
            },
            weight: weight.id,
            bias: bias.as_ref().map(|b| b.id),
        });
        let lora = loader.trainable_lora(in_features, out_features, stored.len() == 4)?;
        Ok(Linear {
            weight,
            bias,
            formulation: loader.formulation().linear,
            adapters,
            lora,
        })
    }

    /// Like [`Linear::load`], accepting a `[out, in, 1, 1]` 1×1-conv weight too
    /// (legacy VAE attention, LDM `proj_in`/`proj_out`).
    pub fn load_maybe_conv(
        loader: &Loader<B>,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let conv_shape = [out_features, in_features, 1, 1];
        if loader.stored_shape("weight").as_deref() == Some(&conv_shape[..]) {
            return Self::load_stored(loader, &conv_shape, in_features, out_features, bias);
        }
        Self::load(loader, in_features, out_features, bias)
    }

    /// `x @ W^T + b` over the last dimension.
    ///
    /// Leading dimensions are flattened into one 2-D matmul: on the CPU
    /// backends that is about 3× faster than Burn's batched `linear` op. With
    /// [`LinearFormulation::Packed`] on burn-flex, the crate's GEMM with the
    /// bias in its write-back.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut y = if self.adapters.is_active() {
            let y = self.forward_base(x.clone());
            self.adapters.add_linear(&x, y, &self.weight.val())
        } else if self.lora.is_some() {
            self.forward_base(x.clone())
        } else {
            return self.forward_base(x);
        };
        if let Some(lora) = &self.lora {
            y = y + lora.forward(x);
        }
        y
    }

    /// Whether adapter paths (loaded or trainable) run beside this layer now
    /// (fused kernels that read its weight directly must not be used then).
    pub fn has_active_adapters(&self) -> bool {
        self.adapters.is_active() || self.lora.is_some()
    }

    fn forward_base<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        profile::op!(x, "linear {:?} -> {} {}", x.dims(), self.weight.dims()[1], self.formulation => {
            let packed = match self.formulation {
                LinearFormulation::Packed => {
                    let bias = self.bias.as_ref().map(|b| b.val());
                    kernels::host_linear(&x, &self.weight.val(), bias.as_ref(), Isa::detect())
                }
                LinearFormulation::Matmul => None,
            };
            match packed {
                Some(y) => y,
                None if D < 2 => linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val())),
                None => self.matmul(x),
            }
        })
    }

    /// `act(self.forward(x))`; with [`LinearFormulation::Packed`] on burn-flex
    /// and a bias, the activation runs in the GEMM's write-back (GELU,
    /// QuickGELU and SiLU; the others after it).
    pub fn forward_act<const D: usize>(&self, x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
        let fused = match (self.formulation, &self.bias, act) {
            _ if self.has_active_adapters() => None,
            (
                LinearFormulation::Packed,
                Some(bias),
                Activation::Gelu | Activation::QuickGelu | Activation::Silu,
            ) => {
                let host_act = match act {
                    Activation::Gelu => kernels::gemm::Act::Gelu,
                    Activation::QuickGelu => kernels::gemm::Act::QuickGelu,
                    _ => kernels::gemm::Act::Silu,
                };
                profile::op!(x, "linear {:?} -> {} packed+{act:?}", x.dims(), self.weight.dims()[1] => {
                    kernels::host_linear_act(&x, &self.weight.val(), &bias.val(), host_act, Isa::detect())
                })
            }
            _ => None,
        };
        match fused {
            Some(y) => y,
            None => act.forward(self.forward(x)),
        }
    }

    fn matmul<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let [din, dout] = self.weight.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let mut y = x.reshape([rows, din]).matmul(self.weight.val());
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze::<2>();
        }
        let mut out = dims;
        out[D - 1] = dout;
        y.reshape(out)
    }
}

/// `torch.nn.Conv2d` (square kernel, symmetric padding, groups 1).
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Stride.
    pub stride: usize,
    /// Padding on every side.
    pub padding: usize,
    /// Burn's conv2d, im2col + matmul, or the crate's implicit GEMM.
    pub formulation: ConvFormulation,
    /// Where the layer's adapters (LoCon …) are found.
    #[module(skip)]
    pub adapters: AdapterSlot,
    /// A LoRA being trained on this layer (see [`Loader::with_lora`]).
    pub lora: Option<TrainableConvLora<B>>,
}

impl<B: Backend> Conv2d<B> {
    /// Loads `weight` `[out, in, k, k]` and, when `bias`, `bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        loader: &Loader<B>,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let init = Init::fan_in(in_channels * kernel * kernel);
        let weight = loader.param("weight", [out_channels, in_channels, kernel, kernel], init)?;
        let bias = if bias {
            Some(loader.param("bias", [out_channels], init)?)
        } else {
            None
        };
        let adapters = loader.adapter_slot(Layer {
            shape: LayerShape::Conv {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
            },
            weight: weight.id,
            bias: bias.as_ref().map(|b| b.id),
        });
        let lora =
            loader.trainable_conv_lora(in_channels, out_channels, kernel, stride, padding)?;
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
            formulation: loader.formulation().conv,
            adapters,
            lora,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Convolution of `x` `[N, C, H, W]`, plus the active adapters' paths.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut y = if self.adapters.is_active() {
            let y = self.forward_base(x.clone());
            self.adapters
                .add_conv(&x, y, self.stride, self.padding, &self.weight.val())
        } else if self.lora.is_some() {
            self.forward_base(x.clone())
        } else {
            return self.forward_base(x);
        };
        if let Some(lora) = &self.lora {
            y = y + lora.forward(x);
        }
        y
    }

    fn forward_base(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (weight, bias) = (self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        let (stride, padding) = (self.stride, self.padding);
        profile::op!(x, "{} {:?} {}", self.label(), x.dims(), self.formulation => {
            match self.formulation {
                ConvFormulation::Direct => conv2d(
                    x,
                    weight,
                    bias,
                    ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
                ),
                ConvFormulation::Im2col => conv2d_im2col(x, weight, bias, stride, padding),
                ConvFormulation::Packed => {
                    let host = kernels::host_conv2d(
                        &x,
                        &weight,
                        bias.as_ref(),
                        stride,
                        padding,
                        Isa::detect(),
                    );
                    match host {
                        Some(y) => y,
                        None => conv2d(
                            x,
                            weight,
                            bias,
                            ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
                        ),
                    }
                }
            }
        })
    }

    /// `conv3x3 s1 320->320`: the op kind first, for the profile's table.
    #[cfg(feature = "profile")]
    fn label(&self) -> String {
        let [o, c, k, _] = self.weight.dims();
        format!("conv{k}x{k} s{} {c}->{o}", self.stride)
    }
}

/// A square-kernel convolution as im2col + one matmul
/// ([`ConvFormulation::Im2col`]): the same sums as `conv2d`, in the backend's
/// matmul kernels.
///
/// The columns are gathered with plain (strided) slices of the zero-padded
/// input, one per kernel tap, stacked in the weight's `(c, kh, kw)` order:
/// Burn's `unfold4d` builds them with a convolution of its own, which on
/// burn-cuda 0.21 is slower than the convolution it replaces (93 ms against
/// 4.5 ms at SD1.5's 320-channel level, docs/gpu.md). A 1×1 kernel needs no
/// columns: it is the matmul alone.
///
/// The batch is folded into the matmul's columns (`[c·k², n·oh·ow]`), and
/// when those are few (SD1.5's 16×16 and 8×8 levels: 512 and 128) the long
/// reduction is split into [`split_k`] batched partial products that are
/// summed after: one matmul of 1280 rows by 128 columns gives a GPU too few
/// output tiles to keep busy through an 11,520-long reduction. When the
/// columns would pass [`IM2COL_BUDGET`] bytes (a VAE decoder at 512²: 2.4 GB
/// at 256 channels) the output is computed in bands of rows, each from its
/// own columns.
///
/// Half-precision inputs are upcast and the matmul runs in f32: CubeCL's f16
/// matmul accumulates in f16, and these reductions are up to nine times
/// longer than a linear layer's (`9 · 2560` at SD1.5's deepest level). The
/// result is returned in the input's dtype.
pub fn conv2d_im2col<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    conv2d_im2col_banded(x, weight, bias, stride, padding, IM2COL_BUDGET)
}

/// The most bytes of f32 columns [`conv2d_im2col`] gathers at once.
pub const IM2COL_BUDGET: usize = 256 << 20;

/// [`conv2d_im2col`] with its column budget in bytes (at least one output
/// row is computed at a time, whatever the budget).
pub fn conv2d_im2col_banded<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    padding: usize,
    budget: usize,
) -> Tensor<B, 4> {
    let dtype = x.dtype();
    let (x, weight) = (to_f32(x), to_f32(weight));
    let [n, c, h, w] = x.dims();
    let [o, _, k, _] = weight.dims();
    let oh = (h + 2 * padding - k) / stride + 1;
    let ow = (w + 2 * padding - k) / stride + 1;
    let rows = c * k * k;
    let weight = weight.reshape([o, rows]);
    // Channels first, so that the taps stack into `[c, k², n, oh, ow]`.
    let x = x.swap_dims(0, 1); // [c, n, h, w]
    let x = if padding > 0 {
        x.pad(
            [(padding, padding), (padding, padding)],
            PadMode::Constant(0.0),
        )
    } else {
        x
    };
    let row_bytes = rows * n * ow * std::mem::size_of::<f32>();
    let band = (budget / row_bytes.max(1)).clamp(1, oh);
    let bands: Vec<Tensor<B, 4>> = (0..oh)
        .step_by(band)
        .map(|r0| {
            let r1 = (r0 + band).min(oh);
            let x = if band == oh {
                x.clone()
            } else {
                x.clone()
                    .slice(s![.., .., r0 * stride..(r1 - 1) * stride + k, ..])
            };
            im2col_matmul(x, weight.clone(), k, stride, r1 - r0, ow)
        })
        .collect();
    let y = if bands.len() == 1 {
        bands.into_iter().next().expect("one band")
    } else {
        Tensor::cat(bands, 2)
    }; // [o, n, oh, ow]
    let y = y.swap_dims(0, 1);
    let y = match bias {
        Some(b) => y + to_f32(b).reshape([1, o, 1, 1]),
        None => y,
    };
    to_dtype(y, dtype)
}

/// `weight` `[o, c·k²]` times the columns of the padded, channels-first `x`
/// `[c, n, h, w]` for `oh × ow` outputs: `[o, n, oh, ow]`.
fn im2col_matmul<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 2>,
    k: usize,
    stride: usize,
    oh: usize,
    ow: usize,
) -> Tensor<B, 4> {
    let [c, n, h, w] = x.dims();
    let [o, rows] = weight.dims();
    let cols_n = n * oh * ow;
    let cols = if k == 1 && stride == 1 && (h, w) == (oh, ow) {
        x.reshape([rows, cols_n])
    } else {
        let taps: Vec<Tensor<B, 4>> = (0..k * k)
            .map(|tap| {
                let (i, j) = (tap / k, tap % k);
                let (hi, wj) = (i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1);
                x.clone()
                    .slice(s![.., .., i..hi;stride as isize, j..wj;stride as isize])
            })
            .collect();
        Tensor::stack::<5>(taps, 1).reshape([c * k * k, cols_n])
    };
    let splits = split_k(rows, cols_n);
    let y = if splits == 1 {
        weight.matmul(cols)
    } else {
        let part = rows / splits;
        let weight = weight.reshape([o, splits, part]).swap_dims(0, 1); // [s, o, part]
        let cols = cols.reshape([splits, part, cols_n]);
        weight.matmul(cols).sum_dim(0).reshape([o, cols_n])
    }; // [o, n·oh·ow]
    y.reshape([o, n, oh, ow])
}

/// Into how many parts [`conv2d_im2col`] splits a `rows`-long reduction
/// over `cols` output columns: one unless the columns are few (under 1,024)
/// and the reduction long (parts of at least 1,024, at most 16, dividing
/// `rows` evenly).
pub fn split_k(rows: usize, cols: usize) -> usize {
    if cols >= 1024 {
        return 1;
    }
    let mut s = (rows / 1024).clamp(1, 16);
    while !rows.is_multiple_of(s) {
        s -= 1;
    }
    s
}

/// Casts `x` to f32 when it is not already (statistics are computed in f32).
pub fn to_f32<const D: usize, B: Backend>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(FloatDType::F32)
    }
}

/// Casts `x` to `dtype` when it differs.
pub fn to_dtype<const D: usize, B: Backend>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        return x;
    }
    let float = match dtype {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    };
    x.cast(float)
}

/// `torch.nn.GroupNorm` over `[N, C, ...]` (affine), statistics in f32.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    /// `[C]`.
    pub weight: Param<Tensor<B, 1>>,
    /// `[C]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Number of groups.
    pub groups: usize,
    /// Added to the variance (diffusers mostly uses 1e-6, PyTorch's default is 1e-5).
    pub eps: f64,
    /// How the group statistics are taken.
    pub formulation: GroupNormFormulation,
}

impl<B: Backend> GroupNorm<B> {
    /// Loads `weight` and `bias` of `channels` elements.
    pub fn load(loader: &Loader<B>, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(GroupNorm {
            weight: loader.param("weight", [channels], Init::Ones)?,
            bias: loader.param("bias", [channels], Init::Zeros)?,
            groups,
            eps,
            formulation: loader.formulation().group_norm,
        })
    }

    /// Normalises `x` `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        self.forward3(x.reshape([n, c, h * w]))
            .reshape([n, c, h, w])
    }

    /// Normalises `x` `[N, C, L]`.
    pub fn forward3(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward3_then(x, false)
    }

    /// `silu(self.forward(x))`, in one pass over the data with
    /// [`GroupNormFormulation::Host`] (the ResNet blocks' `norm → SiLU`).
    pub fn forward_silu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        self.forward3_then(x.reshape([n, c, h * w]), true)
            .reshape([n, c, h, w])
    }

    fn forward3_then(&self, x: Tensor<B, 3>, silu: bool) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let host = match self.formulation {
            GroupNormFormulation::Host => {
                profile::op!(x, "group_norm {:?} host silu={silu}", x.dims() => {
                    kernels::host_group_norm(
                        &x,
                        &self.weight.val(),
                        &self.bias.val(),
                        self.groups,
                        self.eps,
                        silu,
                        Isa::detect(),
                    )
                })
            }
            _ => None,
        };
        if let Some(y) = host {
            return y;
        }
        let y = profile::op!(x, "group_norm {:?} {}", x.dims(), self.formulation => {
            to_dtype(self.normalize(x), dtype)
        });
        match silu {
            true => Activation::Silu.forward(y),
            false => y,
        }
    }

    /// `[N, C, L]` in, f32 out.
    ///
    /// The statistics are per group, the affine per channel; both fold into
    /// one per-(item, channel) scale and shift, so the full tensor is touched
    /// by a single multiply-add after the statistics.
    ///
    /// [`GroupNormFormulation::TwoStage`] takes the group mean and variance in two
    /// stages, first over each channel's `L` values and then over the group's
    /// channels (equal counts, so the mean of the means is the mean): one
    /// reduction over `C/G · L` values per group left too few rows for a GPU
    /// (2.1 ms a call at SD1.5's 320×64×64 level on burn-cuda 0.21, 0.5 ms in
    /// two stages, docs/gpu.md), while burn-flex runs the one-pass form 3–10×
    /// faster.
    fn normalize(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, c, _] = x.dims();
        let g = self.groups;
        let x = to_f32(x);
        let per_channel = |t: Tensor<B, 3>| t.expand([n, g, c / g]).reshape([n, c, 1]);
        let weight = to_f32(self.weight.val()).reshape([1, c, 1]);
        let bias = to_f32(self.bias.val()).reshape([1, c, 1]);
        if self.formulation == GroupNormFormulation::TwoStage {
            let group_mean = |t: Tensor<B, 3>| t.mean_dim(2).reshape([n, g, c / g]).mean_dim(2);
            let mean = per_channel(group_mean(x.clone())); // [n, c, 1]
            let centered = x - mean;
            let var = group_mean(centered.clone().square()); // biased, [n, g, 1]
            let inv_std = per_channel((var + self.eps).sqrt().recip());
            return centered * (inv_std * weight) + bias;
        }
        let [_, _, l] = x.dims();
        let (var, mean) = x.clone().reshape([n, g, (c / g) * l]).var_mean_bias(2);
        let inv_std = (var + self.eps).sqrt().recip(); // [n, g, 1]
        let scale = per_channel(inv_std) * weight;
        let shift = bias - per_channel(mean) * scale.clone();
        x * scale + shift
    }
}

/// `torch.nn.LayerNorm` over the last dimension, statistics in f32.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `[C]` (absent with `elementwise_affine=False`).
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// `[C]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance (PyTorch's default 1e-5).
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Loads `weight` and `bias` of `dim` elements.
    pub fn load(loader: &Loader<B>, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: Some(loader.param("weight", [dim], Init::Ones)?),
            bias: Some(loader.param("bias", [dim], Init::Zeros)?),
            eps,
        })
    }

    /// A LayerNorm without parameters.
    pub fn no_affine(eps: f64) -> Self {
        LayerNorm {
            weight: None,
            bias: None,
            eps,
        }
    }

    /// Normalises the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        profile::op!(x, "layer_norm {:?}", x.dims() => {
            let x = to_f32(x);
            let (var, mean) = x.clone().var_mean_bias(D - 1);
            let mut y = (x - mean) / (var + self.eps).sqrt();
            if let Some(w) = &self.weight {
                y = y * to_f32(w.val()).unsqueeze::<D>();
            }
            if let Some(b) = &self.bias {
                y = y + to_f32(b.val()).unsqueeze::<D>();
            }
            to_dtype(y, dtype)
        })
    }
}

/// The activations diffusers' and transformers' configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// SiLU (`"silu"` or `"swish"`).
    #[default]
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// Exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// tanh-approximated GELU (`"gelu_pytorch_tanh"`, `"gelu_new"`, `"gelu-approximate"`).
    #[serde(
        rename = "gelu_pytorch_tanh",
        alias = "gelu_new",
        alias = "gelu-approximate"
    )]
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (CLIP).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Mish.
    #[serde(rename = "mish")]
    Mish,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    /// Applies the activation.
    pub fn forward<const D: usize, B: Backend>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        profile::op!(x, "activation {self:?} {:?}", x.dims() => match self {
            Activation::Silu => activation::silu(x),
            Activation::Gelu => activation::gelu(x),
            Activation::GeluTanh => activation::gelu_approximate(x),
            Activation::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Activation::Mish => activation::mish(x),
            Activation::Relu => activation::relu(x),
        })
    }
}
