//! The halves of diffusers' `AutoencoderKL` (`models/autoencoders/vae.py`):
//! the [`Encoder`] (image → moments of a diagonal Gaussian), the [`Decoder`]
//! (latents → image), their blocks [`DownEncoderBlock2D`] and
//! [`UpDecoderBlock2D`], and the [`DiagonalGaussianDistribution`] the encoder's
//! moments describe.
//!
//! Keys are diffusers': `conv_in`, `down_blocks.i.resnets.j`,
//! `down_blocks.i.downsamplers.0.conv`, `mid_block`, `up_blocks.i.resnets.j`,
//! `up_blocks.i.upsamplers.0.conv`, `conv_norm_out`, `conv_out`.

use crate::error::{ModelError, Result};
use crate::load::Loader;
use crate::mid_block::{MidBlockConfig, UNetMidBlock2D};
use crate::nn::{Activation, Conv2d, GroupNorm};
use crate::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The VAE's normalisation epsilon (hard-coded in diffusers' Encoder/Decoder).
const EPS: f64 = 1e-6;

/// Settings shared by the [`Encoder`] and the [`Decoder`] (the subset of
/// `AutoencoderKLConfig` they are built from).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeBlocksConfig {
    /// Channels of the image side (encoder input / decoder output).
    pub image_channels: usize,
    /// Channels of the latent side.
    pub latent_channels: usize,
    /// Width of each resolution level, highest resolution first.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (the decoder has one more per block).
    pub layers_per_block: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Activation of the resnets (`act_fn`). The encoder's and decoder's
    /// final activation is always SiLU, as in diffusers.
    pub act: Activation,
    /// Whether the mid blocks have their attention.
    pub mid_block_add_attention: bool,
}

impl VaeBlocksConfig {
    fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetConfig {
        let mut cfg = ResnetConfig::new(in_channels, out_channels, None);
        cfg.groups = self.norm_num_groups;
        cfg.eps = EPS;
        cfg.act = self.act;
        cfg
    }

    /// The mid block: one resnet, one single-head attention, one resnet.
    fn mid_block(&self) -> MidBlockConfig {
        let channels = *self.block_out_channels.last().expect("validated non-empty");
        MidBlockConfig {
            resnet: self.resnet(channels, channels),
            num_layers: 1,
            add_attention: self.mid_block_add_attention,
            attention_head_dim: Some(channels),
        }
    }
}

/// diffusers' `DownEncoderBlock2D`: resnets without time embedding, then a
/// stride-2 conv (padding right/bottom by one, the VAE's `downsample_padding=0`).
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    /// `resnets.j`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `downsamplers.0` (absent in the last block).
    pub downsampler: Option<Downsample2D<B>>,
}

impl<B: Backend> DownEncoderBlock2D<B> {
    /// Loads `num_layers` resnets `in_channels → out_channels` and, when
    /// `add_downsample`, the downsampler.
    pub fn load(
        loader: &Loader<B>,
        cfg: &VaeBlocksConfig,
        in_channels: usize,
        out_channels: usize,
        add_downsample: bool,
    ) -> Result<Self> {
        let resnets = (0..cfg.layers_per_block)
            .map(|j| {
                let cin = if j == 0 { in_channels } else { out_channels };
                ResnetBlock2D::load(&loader.pp("resnets").pp(j), &cfg.resnet(cin, out_channels))
            })
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if add_downsample {
            Some(Downsample2D::load(
                &loader.pp("downsamplers").pp(0),
                out_channels,
                true,
                out_channels,
                0,
            )?)
        } else {
            None
        };
        Ok(DownEncoderBlock2D {
            resnets,
            downsampler,
        })
    }

    /// `[N, Cin, H, W]` → `[N, Cout, H/2, W/2]` (or same size in the last block).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = x;
        for resnet in &self.resnets {
            h = resnet.forward(h, None);
        }
        match &self.downsampler {
            Some(d) => d.forward(h),
            None => h,
        }
    }
}

/// diffusers' `UpDecoderBlock2D`: resnets without time embedding, then a
/// nearest ×2 upsampling and 3×3 conv.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    /// `resnets.j`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `upsamplers.0` (absent in the last block).
    pub upsampler: Option<Upsample2D<B>>,
}

impl<B: Backend> UpDecoderBlock2D<B> {
    /// Loads `num_layers` resnets `in_channels → out_channels` and, when
    /// `add_upsample`, the upsampler.
    pub fn load(
        loader: &Loader<B>,
        cfg: &VaeBlocksConfig,
        num_layers: usize,
        in_channels: usize,
        out_channels: usize,
        add_upsample: bool,
    ) -> Result<Self> {
        let resnets = (0..num_layers)
            .map(|j| {
                let cin = if j == 0 { in_channels } else { out_channels };
                ResnetBlock2D::load(&loader.pp("resnets").pp(j), &cfg.resnet(cin, out_channels))
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if add_upsample {
            Some(Upsample2D::load(
                &loader.pp("upsamplers").pp(0),
                out_channels,
                true,
                out_channels,
            )?)
        } else {
            None
        };
        Ok(UpDecoderBlock2D { resnets, upsampler })
    }

    /// `[N, Cin, H, W]` → `[N, Cout, 2H, 2W]` (or same size in the last block).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = x;
        for resnet in &self.resnets {
            h = resnet.forward(h, None);
        }
        match &self.upsampler {
            Some(u) => u.forward(h, None),
            None => h,
        }
    }
}

/// diffusers' VAE `Encoder` with `double_z=True`: the image to the mean and
/// log-variance of the latent (`2 × latent_channels` channels).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// `conv_in`.
    pub conv_in: Conv2d<B>,
    /// `down_blocks.i`.
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    /// `mid_block`.
    pub mid_block: UNetMidBlock2D<B>,
    /// `conv_norm_out`.
    pub conv_norm_out: GroupNorm<B>,
    /// `conv_out`.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    /// Loads the encoder (`cfg` validated by the caller: non-empty
    /// `block_out_channels`, each divisible by `norm_num_groups`).
    pub fn load(loader: &Loader<B>, cfg: &VaeBlocksConfig) -> Result<Self> {
        let channels = &cfg.block_out_channels;
        let last = *channels.last().expect("validated non-empty");
        let conv_in = Conv2d::load(
            &loader.pp("conv_in"),
            cfg.image_channels,
            channels[0],
            3,
            1,
            1,
            true,
        )?;
        let mut down_blocks = Vec::with_capacity(channels.len());
        let mut output = channels[0];
        for (i, &c) in channels.iter().enumerate() {
            let input = output;
            output = c;
            let is_final = i == channels.len() - 1;
            down_blocks.push(DownEncoderBlock2D::load(
                &loader.pp("down_blocks").pp(i),
                cfg,
                input,
                output,
                !is_final,
            )?);
        }
        Ok(Encoder {
            conv_in,
            down_blocks,
            mid_block: UNetMidBlock2D::load(&loader.pp("mid_block"), &cfg.mid_block())?,
            conv_norm_out: GroupNorm::load(
                &loader.pp("conv_norm_out"),
                cfg.norm_num_groups,
                last,
                EPS,
            )?,
            conv_out: Conv2d::load(
                &loader.pp("conv_out"),
                last,
                2 * cfg.latent_channels,
                3,
                1,
                1,
                true,
            )?,
        })
    }

    /// `[N, C, H, W]` image → `[N, 2L, H/f, W/f]` moments (before `quant_conv`).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.conv_in.forward(x);
        for block in &self.down_blocks {
            h = block.forward(h);
        }
        let h = self.mid_block.forward(h, None);
        self.conv_out.forward(self.conv_norm_out.forward_silu(h))
    }
}

/// diffusers' VAE `Decoder` (`norm_type="group"`): latents to the image.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// `conv_in`.
    pub conv_in: Conv2d<B>,
    /// `mid_block`.
    pub mid_block: UNetMidBlock2D<B>,
    /// `up_blocks.i` (lowest resolution first).
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    /// `conv_norm_out`.
    pub conv_norm_out: GroupNorm<B>,
    /// `conv_out`.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    /// Loads the decoder (`cfg` validated by the caller).
    pub fn load(loader: &Loader<B>, cfg: &VaeBlocksConfig) -> Result<Self> {
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let first = *cfg.block_out_channels.first().expect("validated non-empty");
        let conv_in = Conv2d::load(
            &loader.pp("conv_in"),
            cfg.latent_channels,
            reversed[0],
            3,
            1,
            1,
            true,
        )?;
        let mid_block = UNetMidBlock2D::load(&loader.pp("mid_block"), &cfg.mid_block())?;
        let mut up_blocks = Vec::with_capacity(reversed.len());
        let mut output = reversed[0];
        for (i, &c) in reversed.iter().enumerate() {
            let prev = output;
            output = c;
            let is_final = i == reversed.len() - 1;
            up_blocks.push(UpDecoderBlock2D::load(
                &loader.pp("up_blocks").pp(i),
                cfg,
                cfg.layers_per_block + 1,
                prev,
                output,
                !is_final,
            )?);
        }
        Ok(Decoder {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &loader.pp("conv_norm_out"),
                cfg.norm_num_groups,
                first,
                EPS,
            )?,
            conv_out: Conv2d::load(
                &loader.pp("conv_out"),
                first,
                cfg.image_channels,
                3,
                1,
                1,
                true,
            )?,
        })
    }

    /// `[N, L, h, w]` latents (after `post_quant_conv`) → `[N, C, h·f, w·f]` image.
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.mid_block.forward(self.conv_in.forward(z), None);
        for block in &self.up_blocks {
            h = block.forward(h);
        }
        self.conv_out.forward(self.conv_norm_out.forward_silu(h))
    }
}

/// diffusers' `DiagonalGaussianDistribution`: the posterior the encoder's
/// moments describe. The log-variance is clamped to `[-30, 20]` as diffusers
/// does, before the standard deviation is derived from it.
#[derive(Debug, Clone)]
pub struct DiagonalGaussianDistribution<B: Backend> {
    /// Mean `[N, L, h, w]` (the first half of the moments' channels).
    pub mean: Tensor<B, 4>,
    /// Clamped log-variance (the second half).
    pub logvar: Tensor<B, 4>,
    /// `exp(0.5 · logvar)`.
    pub std: Tensor<B, 4>,
}

impl<B: Backend> DiagonalGaussianDistribution<B> {
    /// Splits `moments` `[N, 2L, h, w]` into mean and log-variance.
    pub fn new(moments: Tensor<B, 4>) -> Self {
        let mut halves = moments.chunk(2, 1);
        let logvar = halves.pop().expect("two chunks").clamp(-30.0, 20.0);
        let mean = halves.pop().expect("two chunks");
        let std = (logvar.clone() * 0.5).exp();
        DiagonalGaussianDistribution { mean, logvar, std }
    }

    /// `exp(logvar)`.
    pub fn var(&self) -> Tensor<B, 4> {
        self.logvar.clone().exp()
    }

    /// `mean + std · noise`. The caller draws `noise` (standard normal, the
    /// mean's shape) so that it controls the random stream, as diffusers'
    /// `sample(generator)` does with `randn_tensor`.
    pub fn sample(&self, noise: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        if noise.dims() != self.mean.dims() {
            return Err(ModelError::input(
                "noise",
                format!(
                    "shape {:?}, the posterior has shape {:?}",
                    noise.dims(),
                    self.mean.dims()
                ),
            ));
        }
        let noise = crate::nn::to_dtype(noise, self.mean.dtype());
        Ok(self.mean.clone() + self.std.clone() * noise)
    }

    /// The mode (= the mean).
    pub fn mode(&self) -> Tensor<B, 4> {
        self.mean.clone()
    }

    /// KL divergence to the standard normal, per sample: `0.5 · Σ(μ² + σ² − 1 − log σ²)`
    /// over channels, height and width (diffusers' `kl()`, the VAE's training loss term).
    pub fn kl(&self) -> Tensor<B, 1> {
        let [n, ..] = self.mean.dims();
        let terms = self.mean.clone().powi_scalar(2) + self.var() - 1.0 - self.logvar.clone();
        terms.reshape([n as i32, -1]).sum_dim(1).reshape([n]) * 0.5
    }
}
