//! diffusers' `AutoencoderTiny` (TAESD, `models/autoencoders/autoencoder_tiny.py`):
//! a small distilled VAE of plain conv/ReLU blocks that encodes to the same
//! latent space as the SD/SDXL VAEs, for fast previews.
//!
//! Its layers are `nn.Sequential`s in diffusers, so the keys are
//! `encoder.layers.N...` and `decoder.layers.N...`, `N` counting every entry
//! of the sequence, parameterless ones (activation, upsampling) included; the
//! loaders below count the same way.

use crate::config::{
    FieldCheck, Loaded, MAX_LAYERS, MAX_SAMPLE_SIZE, ModelConfig, read_config, unsupported,
};
use crate::error::{ModelError, Result};
use crate::load::{Loader, Precision};
use crate::nn::{Activation, Conv2d, to_dtype, to_f32};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor, TensorData, activation::relu};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn default_3() -> usize {
    3
}
fn default_4() -> usize {
    4
}
fn default_2() -> usize {
    2
}
fn default_widths() -> Vec<usize> {
    vec![64; 4]
}
fn default_encoder_blocks() -> Vec<usize> {
    vec![1, 3, 3, 3]
}
fn default_decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn default_relu() -> Activation {
    Activation::Relu
}
fn default_nearest() -> String {
    "nearest".into()
}
fn default_magnitude() -> f64 {
    3.0
}
fn default_shift() -> f64 {
    0.5
}
fn default_one() -> f64 {
    1.0
}

/// `AutoencoderTiny`'s `config.json`, with diffusers' field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderTinyConfig {
    /// Image channels in.
    #[serde(default = "default_3")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "default_3")]
    pub out_channels: usize,
    /// Width of each encoder stage (diffusers' layers only work when all are equal).
    #[serde(default = "default_widths")]
    pub encoder_block_out_channels: Vec<usize>,
    /// Width of each decoder stage (all equal, as for the encoder).
    #[serde(default = "default_widths")]
    pub decoder_block_out_channels: Vec<usize>,
    /// Activation inside the blocks (and after the decoder's first conv).
    #[serde(default = "default_relu")]
    pub act_fn: Activation,
    /// Upsampling mode (only `nearest`).
    #[serde(default = "default_nearest")]
    pub upsample_fn: String,
    /// Latent channels.
    #[serde(default = "default_4")]
    pub latent_channels: usize,
    /// Integer upsampling factor of each decoder stage.
    #[serde(default = "default_2")]
    pub upsampling_scaling_factor: usize,
    /// Blocks per encoder stage (each stage after the first starts with a stride-2 conv).
    #[serde(default = "default_encoder_blocks")]
    pub num_encoder_blocks: Vec<usize>,
    /// Blocks per decoder stage.
    #[serde(default = "default_decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    /// Range of the raw latents for [`AutoencoderTiny::scale_latents`].
    #[serde(default = "default_magnitude")]
    pub latent_magnitude: f64,
    /// Centre of the `[0, 1]` latents for [`AutoencoderTiny::scale_latents`].
    #[serde(default = "default_shift")]
    pub latent_shift: f64,
    /// Run in f32 when loaded in f16 (diffusers always registers `false`).
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub force_upcast: bool,
    /// Latent scaling applied by the pipelines (1.0: TAESD's latents are already scaled).
    #[serde(default = "default_one")]
    pub scaling_factor: f64,
    /// Latent shift applied by the pipelines.
    #[serde(default)]
    pub shift_factor: f64,
    /// diffusers registers `decoder_block_out_channels` again under this name.
    #[serde(default)]
    pub block_out_channels: Option<Vec<usize>>,
}

impl Default for AutoencoderTinyConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// Checks what diffusers would fail on (or this crate does not implement),
/// naming the field.
impl ModelConfig for AutoencoderTinyConfig {
    fn validate(&self, source: &str) -> Result<()> {
        let check = FieldCheck::new(source);
        for (widths_field, widths, blocks_field, blocks) in [
            (
                "encoder_block_out_channels",
                &self.encoder_block_out_channels,
                "num_encoder_blocks",
                &self.num_encoder_blocks,
            ),
            (
                "decoder_block_out_channels",
                &self.decoder_block_out_channels,
                "num_decoder_blocks",
                &self.num_decoder_blocks,
            ),
        ] {
            if widths.is_empty() {
                return Err(ModelError::config(
                    source,
                    widths_field,
                    "must not be empty",
                ));
            }
            if widths.len() != blocks.len() {
                return Err(ModelError::config(
                    source,
                    blocks_field,
                    format!(
                        "{} entries, {widths_field} has {}",
                        blocks.len(),
                        widths.len()
                    ),
                ));
            }
            // diffusers' stage convs map `c_i → c_i` although their input has
            // `c_{i-1}` channels: anything but equal widths fails in its forward.
            check.levels(widths_field, widths)?;
            for (i, b) in blocks.iter().enumerate() {
                if *b > MAX_LAYERS {
                    return Err(check.error(
                        format!("{blocks_field}[{i}]"),
                        format!("{b} is larger than {MAX_LAYERS}"),
                    ));
                }
            }
            if let Some(i) = widths.iter().position(|c| *c != widths[0] || *c == 0) {
                return Err(ModelError::config(
                    source,
                    format!("{widths_field}[{i}]"),
                    "diffusers' tiny autoencoder needs equal, positive widths in every stage",
                ));
            }
        }
        if self.upsample_fn != "nearest" {
            return Err(unsupported(source, "upsample_fn", &self.upsample_fn));
        }
        if matches!(self.act_fn, Activation::GeluTanh | Activation::QuickGelu) {
            // diffusers' get_activation knows swish/silu, mish, gelu, relu only.
            return Err(unsupported(source, "act_fn", self.act_fn));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            check.width(field, v)?;
        }
        // Each decoder stage multiplies the side by it.
        if !(1..=16).contains(&self.upsampling_scaling_factor) {
            return Err(check.error(
                "upsampling_scaling_factor",
                format!("{} is not in 1..=16", self.upsampling_scaling_factor),
            ));
        }
        // Every decoder stage but the last upsamples by it: one latent decodes
        // to a side of factor^(stages - 1), which must stay a sample size
        // (TAESD: 2^3), not an allocation of 16^15 pixels.
        let stages = self.decoder_block_out_channels.len() as u32;
        let upscale = self.upsampling_scaling_factor.checked_pow(stages - 1);
        if upscale.is_none_or(|u| u > MAX_SAMPLE_SIZE) {
            return Err(check.error(
                "upsampling_scaling_factor",
                format!(
                    "{} over {} decoder stages upscales beyond {MAX_SAMPLE_SIZE}",
                    self.upsampling_scaling_factor,
                    stages - 1
                ),
            ));
        }
        check.positive("scaling_factor", self.scaling_factor)?;
        check.finite("shift_factor", self.shift_factor)?;
        check.positive("latent_magnitude", self.latent_magnitude)?;
        check.finite("latent_shift", self.latent_shift)?;
        Ok(())
    }
}

/// diffusers' `AutoencoderTinyBlock`: `relu(conv(act(conv(act(conv(x))))) + skip(x))`.
#[derive(Module, Debug)]
pub struct AutoencoderTinyBlock<B: Backend> {
    /// `conv.0`, `conv.2`, `conv.4` (3×3, bias).
    pub convs: Vec<Conv2d<B>>,
    /// `skip` (1×1, no bias) when the channels change.
    pub skip: Option<Conv2d<B>>,
    /// Activation between the convs.
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> AutoencoderTinyBlock<B> {
    /// Loads the block.
    pub fn load(loader: &Loader<B>, cin: usize, cout: usize, act: Activation) -> Result<Self> {
        let convs = [(0, cin), (2, cout), (4, cout)]
            .into_iter()
            .map(|(i, c)| Conv2d::load(&loader.pp("conv").pp(i), c, cout, 3, 1, 1, true))
            .collect::<Result<Vec<_>>>()?;
        let skip = if cin != cout {
            Some(Conv2d::load(&loader.pp("skip"), cin, cout, 1, 1, 0, false)?)
        } else {
            None
        };
        Ok(AutoencoderTinyBlock { convs, skip, act })
    }

    /// `[N, Cin, H, W]` → `[N, Cout, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.convs[0].forward(x.clone());
        let h = self.convs[1].forward(self.act.forward(h));
        let h = self.convs[2].forward(self.act.forward(h));
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        relu(h + skip)
    }
}

/// One encoder stage: a conv (stride 2 after the first stage), then blocks.
#[derive(Module, Debug)]
pub struct TinyEncoderStage<B: Backend> {
    /// The stage's conv.
    pub conv: Conv2d<B>,
    /// The stage's blocks.
    pub blocks: Vec<AutoencoderTinyBlock<B>>,
}

/// diffusers' `EncoderTiny`.
#[derive(Module, Debug)]
pub struct EncoderTiny<B: Backend> {
    /// The stages.
    pub stages: Vec<TinyEncoderStage<B>>,
    /// The last conv, to the latent channels.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> EncoderTiny<B> {
    /// Loads `layers.N` (`cfg` validated by the caller).
    pub fn load(loader: &Loader<B>, cfg: &AutoencoderTinyConfig) -> Result<Self> {
        let layers = loader.pp("layers");
        let mut index = 0;
        let mut stages = Vec::new();
        let widths = &cfg.encoder_block_out_channels;
        for (i, (&c, &n)) in widths.iter().zip(&cfg.num_encoder_blocks).enumerate() {
            let conv = if i == 0 {
                Conv2d::load(&layers.pp(index), cfg.in_channels, c, 3, 1, 1, true)?
            } else {
                Conv2d::load(&layers.pp(index), c, c, 3, 2, 1, false)?
            };
            index += 1;
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                blocks.push(AutoencoderTinyBlock::load(
                    &layers.pp(index),
                    c,
                    c,
                    cfg.act_fn,
                )?);
                index += 1;
            }
            stages.push(TinyEncoderStage { conv, blocks });
        }
        let last = *widths.last().expect("validated non-empty");
        let conv_out = Conv2d::load(&layers.pp(index), last, cfg.latent_channels, 3, 1, 1, true)?;
        Ok(EncoderTiny { stages, conv_out })
    }

    /// Image in `[-1, 1]` → latents (mapped to TAESD's `[0, 1]` input first).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = (x + 1.0) / 2.0;
        for stage in &self.stages {
            h = stage.conv.forward(h);
            for block in &stage.blocks {
                h = block.forward(h);
            }
        }
        self.conv_out.forward(h)
    }
}

/// One decoder stage: blocks, then (except in the last stage) an upsampling,
/// then a conv (to the image channels, with bias, in the last stage).
#[derive(Module, Debug)]
pub struct TinyDecoderStage<B: Backend> {
    /// The stage's blocks.
    pub blocks: Vec<AutoencoderTinyBlock<B>>,
    /// Nearest-neighbour upsampling factor (`None` in the last stage).
    #[module(skip)]
    pub upsample: Option<usize>,
    /// The stage's conv.
    pub conv: Conv2d<B>,
}

/// diffusers' `DecoderTiny`.
#[derive(Module, Debug)]
pub struct DecoderTiny<B: Backend> {
    /// `layers.0`: latents to the first stage's width.
    pub conv_in: Conv2d<B>,
    /// `layers.1`, applied after `conv_in`.
    #[module(skip)]
    pub act: Activation,
    /// The stages.
    pub stages: Vec<TinyDecoderStage<B>>,
}

impl<B: Backend> DecoderTiny<B> {
    /// Loads `layers.N` (`cfg` validated by the caller).
    pub fn load(loader: &Loader<B>, cfg: &AutoencoderTinyConfig) -> Result<Self> {
        let layers = loader.pp("layers");
        let widths = &cfg.decoder_block_out_channels;
        let conv_in = Conv2d::load(&layers.pp(0), cfg.latent_channels, widths[0], 3, 1, 1, true)?;
        // layers.1 is the activation.
        let mut index = 2;
        let mut stages = Vec::new();
        for (i, (&c, &n)) in widths.iter().zip(&cfg.num_decoder_blocks).enumerate() {
            let is_final = i == widths.len() - 1;
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                blocks.push(AutoencoderTinyBlock::load(
                    &layers.pp(index),
                    c,
                    c,
                    cfg.act_fn,
                )?);
                index += 1;
            }
            let upsample = if is_final {
                None
            } else {
                index += 1;
                Some(cfg.upsampling_scaling_factor)
            };
            let cout = if is_final { cfg.out_channels } else { c };
            let conv = Conv2d::load(&layers.pp(index), c, cout, 3, 1, 1, is_final)?;
            index += 1;
            stages.push(TinyDecoderStage {
                blocks,
                upsample,
                conv,
            });
        }
        Ok(DecoderTiny {
            conv_in,
            act: cfg.act_fn,
            stages,
        })
    }

    /// Latents → image in `[-1, 1]`: the latents are soft-clamped to
    /// `(-3, 3)` by `tanh(x / 3) · 3` first, and the `[0, 1]` output of the
    /// layers is mapped to `[-1, 1]` (`x · 2 − 1`), as diffusers does.
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = (z / 3.0).tanh() * 3.0;
        let mut h = self.act.forward(self.conv_in.forward(x));
        for stage in &self.stages {
            for block in &stage.blocks {
                h = block.forward(h);
            }
            if let Some(f) = stage.upsample {
                h = upsample_nearest(h, f);
            }
            h = stage.conv.forward(h);
        }
        h * 2.0 - 1.0
    }
}

/// `nn.Upsample(scale_factor=f, mode="nearest")` (bf16 through f32, as the
/// foundation's `Upsample2D` does).
fn upsample_nearest<B: Backend>(x: Tensor<B, 4>, f: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let dtype = x.dtype();
    let x = if dtype == DType::BF16 { to_f32(x) } else { x };
    let x = interpolate(
        x,
        [h * f, w * f],
        InterpolateOptions::new(InterpolateMode::Nearest),
    );
    to_dtype(x, dtype)
}

/// diffusers' `AutoencoderTiny`, with its batch slicing and its tiling.
#[derive(Module, Debug)]
pub struct AutoencoderTiny<B: Backend> {
    /// `encoder`.
    pub encoder: EncoderTiny<B>,
    /// `decoder`.
    pub decoder: DecoderTiny<B>,
    /// The config it was built from.
    #[module(skip)]
    pub config: AutoencoderTinyConfig,
    /// Loaded in F32 although F16 was asked (`force_upcast`, as `AutoencoderKL`).
    #[module(skip)]
    pub upcast: bool,
    /// Encode/decode one image at a time (diffusers' `enable_slicing`).
    #[module(skip)]
    pub use_slicing: bool,
    /// Encode/decode in overlapping, mask-blended tiles (diffusers' `enable_tiling`).
    #[module(skip)]
    pub use_tiling: bool,
    /// Image tile side (512, diffusers' constant).
    #[module(skip)]
    pub tile_sample_min_size: usize,
    /// Latent tile side (`tile_sample_min_size / spatial_scale_factor`).
    #[module(skip)]
    pub tile_latent_min_size: usize,
    /// Overlap of neighbouring tiles, as a fraction of the tile (0.125).
    #[module(skip)]
    pub tile_overlap_factor: f64,
    /// Pixels per latent as the tiling computes it: diffusers sets
    /// `2 ** out_channels` (8 for RGB), which is TAESD's real factor for its
    /// four-stage configs; kept as is for parity.
    #[module(skip)]
    pub spatial_scale_factor: usize,
}

impl<B: Backend> AutoencoderTiny<B> {
    /// Builds the model from `loader` (strict) after validating `config`.
    pub fn load(loader: &Loader<B>, config: &AutoencoderTinyConfig) -> Result<Self> {
        config.validate("AutoencoderTiny config")?;
        let upcast = config.force_upcast && loader.precision() == Precision::F16;
        let loader = if upcast {
            loader.with_precision(Precision::F32)
        } else {
            loader.clone()
        };
        let model = AutoencoderTiny {
            encoder: EncoderTiny::load(&loader.pp("encoder"), config)?,
            decoder: DecoderTiny::load(&loader.pp("decoder"), config)?,
            config: config.clone(),
            upcast,
            use_slicing: false,
            use_tiling: false,
            tile_sample_min_size: 512,
            tile_latent_min_size: 512 >> config.out_channels.min(9),
            tile_overlap_factor: 0.125,
            spatial_scale_factor: 1 << config.out_channels.min(9),
        };
        loader.finish(&[])?;
        Ok(model)
    }

    /// Reads `dir/config.json` and `dir/diffusion_pytorch_model.safetensors`
    /// (or its sharded index).
    pub fn from_dir(dir: &Path, device: &B::Device, precision: Precision) -> Result<Self> {
        let Loaded { config, .. } = read_config::<AutoencoderTinyConfig>(&dir.join("config.json"))?;
        let weights = crate::config::open_weights(dir, crate::config::DIFFUSERS_WEIGHTS)?;
        Self::load(&Loader::new(&weights, device, precision), &config)
    }

    /// The float type the model computes in.
    pub fn dtype(&self) -> DType {
        self.decoder.conv_in.weight.val().dtype()
    }

    /// Turns slicing on (one image at a time).
    pub fn enable_slicing(&mut self) {
        self.use_slicing = true;
    }

    /// Turns slicing off.
    pub fn disable_slicing(&mut self) {
        self.use_slicing = false;
    }

    /// Turns tiling on (diffusers' `enable_tiling`; unlike `AutoencoderKL`'s,
    /// it tiles whatever the input size).
    pub fn enable_tiling(&mut self) {
        self.use_tiling = true;
    }

    /// Turns tiling off.
    pub fn disable_tiling(&mut self) {
        self.use_tiling = false;
    }

    /// Spatial compression factor: `2^(stages - 1)`.
    pub fn downscale_factor(&self) -> usize {
        1 << self
            .config
            .encoder_block_out_channels
            .len()
            .saturating_sub(1)
    }

    /// Images `[N, in_channels, H, W]` in `[-1, 1]` → latents
    /// `[N, latent_channels, H/f, W/f]` (deterministic: no posterior).
    pub fn encode(&self, image: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let [n, c, h, w] = image.dims();
        if c != self.config.in_channels || n == 0 || h == 0 || w == 0 {
            return Err(ModelError::input(
                "image",
                format!(
                    "shape {:?}, expected [N > 0, {}, H > 0, W > 0]",
                    image.dims(),
                    self.config.in_channels
                ),
            ));
        }
        let image = to_dtype(image, self.dtype());
        Ok(self.sliced(image, |x| {
            if self.use_tiling {
                self.tiled_encode(x)
            } else {
                self.encoder.forward(x)
            }
        }))
    }

    /// Latents `[N, latent_channels, h, w]` → images `[N, out_channels, h·f, w·f]` in `[-1, 1]`.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let [n, c, h, w] = latents.dims();
        if c != self.config.latent_channels || n == 0 || h == 0 || w == 0 {
            return Err(ModelError::input(
                "latents",
                format!(
                    "shape {:?}, expected [N > 0, {}, h > 0, w > 0]",
                    latents.dims(),
                    self.config.latent_channels
                ),
            ));
        }
        let latents = to_dtype(latents, self.dtype());
        Ok(self.sliced(latents, |z| {
            if self.use_tiling {
                self.tiled_decode(z)
            } else {
                self.decoder.forward(z)
            }
        }))
    }

    fn sliced(&self, x: Tensor<B, 4>, f: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>) -> Tensor<B, 4> {
        if self.use_slicing && x.dims()[0] > 1 {
            Tensor::cat(x.split(1, 0).into_iter().map(f).collect(), 0)
        } else {
            f(x)
        }
    }

    /// diffusers' `_tiled_encode`: image tiles of `tile_sample_min_size`,
    /// each encoded and written over the output through a mask that ramps
    /// from 0 to 1 across the overlap (except on the first row/column).
    pub fn tiled_encode(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let sf = self.spatial_scale_factor;
        let tile = self.tile_sample_min_size;
        let blend = (tile as f64 * self.tile_overlap_factor) as usize;
        let [n, _, h, w] = x.dims();
        let out = Tensor::zeros(
            [n, self.config.latent_channels, h / sf, w / sf],
            (&x.device(), x.dtype()),
        );
        // diffusers: arange(tile_size / sf) / (blend_size / sf - 1).
        let ramp = ramp(
            (tile as f64 / sf as f64).ceil() as usize,
            blend as f64 / sf as f64 - 1.0,
        );
        tiled_blend(
            x,
            out,
            tile,
            tile - blend,
            &ramp,
            |i| i / sf,
            |t| self.encoder.forward(t),
        )
    }

    /// diffusers' `_tiled_decode`: latent tiles of `tile_latent_min_size`,
    /// decoded and mask-blended as in [`AutoencoderTiny::tiled_encode`].
    pub fn tiled_decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let sf = self.spatial_scale_factor;
        let tile = self.tile_latent_min_size;
        let blend = (tile as f64 * self.tile_overlap_factor) as usize;
        let [n, _, h, w] = z.dims();
        let out = Tensor::zeros(
            [n, self.config.out_channels, h * sf, w * sf],
            (&z.device(), z.dtype()),
        );
        // diffusers: arange(tile_size * sf) / (blend_size * sf - 1).
        let ramp = ramp(tile * sf, (blend * sf) as f64 - 1.0);
        tiled_blend(
            z,
            out,
            tile,
            tile - blend,
            &ramp,
            |i| i * sf,
            |t| self.decoder.forward(t),
        )
    }

    /// diffusers' `scale_latents`: raw latents to `[0, 1]`
    /// (`x / (2·magnitude) + shift`, clamped), as TAESD stores previews. Not
    /// the pipelines' `scaling_factor` (1.0 for TAESD).
    pub fn scale_latents(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        (x / (2.0 * self.config.latent_magnitude) + self.config.latent_shift).clamp(0.0, 1.0)
    }

    /// diffusers' `unscale_latents`: `[0, 1]` back to raw latents.
    pub fn unscale_latents(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        (x - self.config.latent_shift) * (2.0 * self.config.latent_magnitude)
    }
}

/// `clamp(arange(len) / divisor, 0, 1)` in f32, as diffusers' blend masks.
fn ramp(len: usize, divisor: f64) -> Vec<f32> {
    let divisor = divisor as f32;
    (0..len)
        .map(|k| (k as f32 / divisor).clamp(0.0, 1.0))
        .collect()
}

/// The tiling loop of diffusers' `AutoencoderTiny._tiled_encode/_tiled_decode`:
/// for every `tile`×`tile` input window starting at multiples of `step` (row
/// major), `out[window'] = mask · f(window) + (1 − mask) · out[window']`, where
/// `window'` is the window mapped to output coordinates by `to_out` (clipped to
/// the output) and `mask[r][c] = ramp_i[r] · ramp_j[c]`, the ramp replaced by
/// ones in the first row (`i = 0`) and column (`j = 0`).
fn tiled_blend<B: Backend>(
    x: Tensor<B, 4>,
    mut out: Tensor<B, 4>,
    tile: usize,
    step: usize,
    ramp: &[f32],
    to_out: impl Fn(usize) -> usize,
    f: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let [_, oc, oh, ow] = out.dims();
    let step = step.max(1);
    let device = x.device();
    for i in (0..h).step_by(step) {
        for j in (0..w).step_by(step) {
            let t = f(x
                .clone()
                .slice([0..n, 0..c, i..(i + tile).min(h), j..(j + tile).min(w)]));
            let rows = to_out(i).min(oh)..to_out(i + tile).min(oh);
            let cols = to_out(j).min(ow)..to_out(j + tile).min(ow);
            // Where diffusers would fail on a size the factor does not divide,
            // the tile is cropped to the output window.
            let [_, _, th, tw] = t.dims();
            let (th, tw) = (th.min(rows.len()), tw.min(cols.len()));
            let t = t.slice([0..n, 0..oc, 0..th, 0..tw]);
            let mask_i: Vec<f32> = (0..th)
                .map(|r| if i == 0 { 1.0 } else { ramp[r] })
                .collect();
            let mask_j: Vec<f32> = (0..tw)
                .map(|q| if j == 0 { 1.0 } else { ramp[q] })
                .collect();
            let mask: Vec<f32> = mask_i
                .iter()
                .flat_map(|a| mask_j.iter().map(move |b| a * b))
                .collect();
            let mask = to_dtype(
                Tensor::<B, 4>::from_data(
                    TensorData::new(mask, [1, 1, th, tw]),
                    (&device, DType::F32),
                ),
                t.dtype(),
            );
            let region = [
                0..n,
                0..oc,
                rows.start..rows.start + th,
                cols.start..cols.start + tw,
            ];
            let current = out.clone().slice(region.clone());
            let blended = mask.clone() * t + (mask.neg() + 1.0) * current;
            out = out.slice_assign(region, blended);
        }
    }
    out
}
