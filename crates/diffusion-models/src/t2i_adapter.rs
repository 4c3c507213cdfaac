//! diffusers' `T2IAdapter`: a small convolutional network that turns a
//! control image (sketch, depth, pose, …) into one feature map per UNet
//! resolution, added inside the UNet's down path
//! ([`UNetConditions::down_intrablock_additional_residuals`](crate::unet_encoder::UNetConditions)).
//! Its three architectures (`adapter_type`): `full_adapter` (SD 1.x/2.x),
//! `full_adapter_xl` (SDXL) and `light_adapter`.

use crate::config::{FieldCheck, ModelConfig, unsupported};
use crate::error::{ModelError, Result};
use crate::load::{Loader, Precision};
use crate::nn::{Conv2d, to_dtype};
use crate::unet_2d::open_model_dir;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::avg_pool2d;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `config.json` of a `T2IAdapter` (diffusers' field names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T2IAdapterConfig {
    /// Channels of the control image (3, or 1 for sketches).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Channels of each feature map (one per UNet resolution).
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// Residual blocks per stage.
    #[serde(default = "two")]
    pub num_res_blocks: usize,
    /// The pixel-unshuffle factor of the input (8; SDXL's 16).
    #[serde(default = "eight")]
    pub downscale_factor: usize,
    /// `"full_adapter"`, `"full_adapter_xl"` or `"light_adapter"`.
    #[serde(default = "full")]
    pub adapter_type: String,
}

fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn eight() -> usize {
    8
}
fn full() -> String {
    "full_adapter".into()
}
fn default_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}

/// The most stages (each may halve the size) a config may declare.
const MAX_STAGES: usize = 16;

impl T2IAdapterConfig {
    /// The factor between the control image and the first feature map
    /// (diffusers' `total_downscale_factor` is this times the stages' halvings).
    pub fn unshuffle_factor(&self) -> usize {
        self.downscale_factor
    }
}

impl ModelConfig for T2IAdapterConfig {
    fn validate(&self, source: &str) -> Result<()> {
        let check = FieldCheck::new(source);
        check.width("in_channels", self.in_channels)?;
        if self.channels.is_empty() || self.channels.len() > MAX_STAGES {
            return Err(check.error(
                "channels",
                format!("has {} entries (1 to {MAX_STAGES})", self.channels.len()),
            ));
        }
        check.widths("channels", &self.channels)?;
        check.layers("num_res_blocks", self.num_res_blocks)?;
        if self.downscale_factor == 0 || self.downscale_factor > 64 {
            return Err(check.error(
                "downscale_factor",
                format!("{} is outside 1..=64", self.downscale_factor),
            ));
        }
        check.width(
            "in_channels × downscale_factor²",
            self.in_channels * self.downscale_factor * self.downscale_factor,
        )?;
        match self.adapter_type.as_str() {
            "full_adapter" | "full_adapter_xl" => {}
            "light_adapter" => {
                for (i, c) in self.channels.iter().enumerate() {
                    if *c < 4 {
                        return Err(check.error(
                            format!("channels[{i}]"),
                            format!("{c}: light_adapter blocks work at a quarter of it"),
                        ));
                    }
                }
            }
            other => return Err(unsupported(source, "adapter_type", other)),
        }
        Ok(())
    }
}

/// `AdapterResnetBlock` (3×3, ReLU, 1×1) and `LightAdapterResnetBlock`
/// (3×3, ReLU, 3×3), each added to its input.
#[derive(Module, Debug)]
pub struct AdapterResnetBlock<B: Backend> {
    /// `block1` (3×3).
    pub block1: Conv2d<B>,
    /// `block2` (1×1 in full adapters, 3×3 in light ones).
    pub block2: Conv2d<B>,
}

impl<B: Backend> AdapterResnetBlock<B> {
    fn load(loader: &Loader<B>, channels: usize, second_kernel: usize) -> Result<Self> {
        Ok(AdapterResnetBlock {
            block1: Conv2d::load(&loader.pp("block1"), channels, channels, 3, 1, 1, true)?,
            block2: Conv2d::load(
                &loader.pp("block2"),
                channels,
                channels,
                second_kernel,
                1,
                second_kernel / 2,
                true,
            )?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = relu(self.block1.forward(x.clone()));
        self.block2.forward(h) + x
    }
}

/// One stage: an optional 2×2 average pool (ceil mode), an optional 1×1
/// `in_conv`, the resnets, and (light adapters) a 1×1 `out_conv`.
#[derive(Module, Debug)]
pub struct AdapterBlock<B: Backend> {
    /// Halves the size first.
    pub down: bool,
    /// `in_conv`.
    pub in_conv: Option<Conv2d<B>>,
    /// `resnets.{k}`.
    pub resnets: Vec<AdapterResnetBlock<B>>,
    /// `out_conv` (light adapters).
    pub out_conv: Option<Conv2d<B>>,
}

impl<B: Backend> AdapterBlock<B> {
    /// diffusers' `AdapterBlock`: `in_conv` only when the width changes.
    fn load_full(
        loader: &Loader<B>,
        in_ch: usize,
        out_ch: usize,
        resnets: usize,
        down: bool,
    ) -> Result<Self> {
        let in_conv = (in_ch != out_ch)
            .then(|| Conv2d::load(&loader.pp("in_conv"), in_ch, out_ch, 1, 1, 0, true))
            .transpose()?;
        Ok(AdapterBlock {
            down,
            in_conv,
            resnets: (0..resnets)
                .map(|k| AdapterResnetBlock::load(&loader.pp("resnets").pp(k), out_ch, 1))
                .collect::<Result<_>>()?,
            out_conv: None,
        })
    }

    /// diffusers' `LightAdapterBlock`: the resnets at a quarter of the width.
    fn load_light(
        loader: &Loader<B>,
        in_ch: usize,
        out_ch: usize,
        resnets: usize,
        down: bool,
    ) -> Result<Self> {
        let mid = out_ch / 4;
        Ok(AdapterBlock {
            down,
            in_conv: Some(Conv2d::load(
                &loader.pp("in_conv"),
                in_ch,
                mid,
                1,
                1,
                0,
                true,
            )?),
            resnets: (0..resnets)
                .map(|k| AdapterResnetBlock::load(&loader.pp("resnets").pp(k), mid, 3))
                .collect::<Result<_>>()?,
            out_conv: Some(Conv2d::load(
                &loader.pp("out_conv"),
                mid,
                out_ch,
                1,
                1,
                0,
                true,
            )?),
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = if self.down {
            // nn.AvgPool2d(2, 2, ceil_mode=True): a partial last window
            // averages what it covers.
            avg_pool2d(x, [2, 2], [2, 2], [0, 0], true, true)
        } else {
            x
        };
        if let Some(conv) = &self.in_conv {
            x = conv.forward(x);
        }
        for r in &self.resnets {
            x = r.forward(x);
        }
        match &self.out_conv {
            Some(conv) => conv.forward(x),
            None => x,
        }
    }
}

/// diffusers' `T2IAdapter`.
#[derive(Module, Debug)]
pub struct T2IAdapter<B: Backend> {
    /// `adapter.conv_in` (full adapters).
    pub conv_in: Option<Conv2d<B>>,
    /// `adapter.body.{i}`: one stage per feature map.
    pub body: Vec<AdapterBlock<B>>,
    /// The pixel-unshuffle factor.
    pub downscale_factor: usize,
    /// Channels of the control image.
    pub in_channels: usize,
}

impl<B: Backend> T2IAdapter<B> {
    /// Loads a diffusers folder (`config.json` + weights), strictly.
    pub fn from_dir(dir: &Path, device: &B::Device, precision: Precision) -> Result<Self> {
        let (config, source, weights) = open_model_dir::<T2IAdapterConfig>(dir)?;
        let loader = Loader::new(&weights, device, precision);
        config.validate(&source)?;
        let model = Self::load(&loader, &config)?;
        loader.finish(&[])?;
        Ok(model)
    }

    /// Builds the model from `loader` (keys `adapter.*`; call
    /// `loader.finish` afterwards for strictness).
    pub fn load(loader: &Loader<B>, cfg: &T2IAdapterConfig) -> Result<Self> {
        cfg.validate("T2IAdapter config")?;
        let l = loader.pp("adapter");
        let ch = &cfg.channels;
        let r = cfg.num_res_blocks;
        let unshuffled = cfg.in_channels * cfg.downscale_factor * cfg.downscale_factor;
        let body = |i: usize| l.pp("body").pp(i);
        let full =
            |i: usize, a: usize, b: usize, down| AdapterBlock::load_full(&body(i), a, b, r, down);
        let (conv_in, blocks) = match cfg.adapter_type.as_str() {
            "full_adapter" => {
                let mut blocks = vec![full(0, ch[0], ch[0], false)?];
                for i in 1..ch.len() {
                    blocks.push(full(i, ch[i - 1], ch[i], true)?);
                }
                (Some(ch[0]), blocks)
            }
            "full_adapter_xl" => {
                let blocks = (0..ch.len())
                    .map(|i| match i {
                        1 => full(1, ch[0], ch[1], false),
                        2 => full(2, ch[1], ch[2], true),
                        _ => full(i, ch[i], ch[i], false),
                    })
                    .collect::<Result<Vec<_>>>()?;
                (Some(ch[0]), blocks)
            }
            _ => {
                // light_adapter (validated).
                let light =
                    |i: usize, a, b, down| AdapterBlock::load_light(&body(i), a, b, r, down);
                let mut blocks = vec![light(0, unshuffled, ch[0], false)?];
                for i in 0..ch.len() - 1 {
                    blocks.push(light(i + 1, ch[i], ch[i + 1], true)?);
                }
                let last = ch[ch.len() - 1];
                blocks.push(light(ch.len(), last, last, true)?);
                (None, blocks)
            }
        };
        Ok(T2IAdapter {
            conv_in: conv_in
                .map(|c0| Conv2d::load(&l.pp("conv_in"), unshuffled, c0, 3, 1, 1, true))
                .transpose()?,
            body: blocks,
            downscale_factor: cfg.downscale_factor,
            in_channels: cfg.in_channels,
        })
    }

    /// The feature maps of `image` `[N, C, H, W]` (in `[0, 1]`; `H`, `W`
    /// multiples of the downscale factor), one per stage.
    pub fn forward(&self, image: Tensor<B, 4>) -> Result<Vec<Tensor<B, 4>>> {
        let [n, c, h, w] = image.dims();
        let r = self.downscale_factor;
        if c != self.in_channels || h % r != 0 || w % r != 0 || h == 0 || w == 0 {
            return Err(ModelError::input(
                "image",
                format!(
                    "has shape {:?}; the adapter takes {} channels and sides that are positive multiples of {r}",
                    [n, c, h, w],
                    self.in_channels
                ),
            ));
        }
        let dtype = self
            .body
            .first()
            .and_then(|b| b.resnets.first())
            .map(|res| res.block1.weight.val().dtype())
            .unwrap_or(image.dtype());
        let mut x = pixel_unshuffle(to_dtype(image, dtype), r);
        if let Some(conv) = &self.conv_in {
            x = conv.forward(x);
        }
        let mut features = Vec::with_capacity(self.body.len());
        for block in &self.body {
            x = block.forward(x);
            features.push(x.clone());
        }
        Ok(features)
    }
}

/// `nn.PixelUnshuffle(r)`: `[N, C, H, W]` → `[N, C·r², H/r, W/r]`, channel
/// `c·r² + i·r + j` holding the pixels at row offset `i`, column offset `j`.
pub fn pixel_unshuffle<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    if r == 1 {
        return x;
    }
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / r, r, w / r, r])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([n, c * r * r, h / r, w / r])
}
