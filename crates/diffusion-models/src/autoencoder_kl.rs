//! diffusers' `AutoencoderKL`: the VAE of Stable Diffusion 1.x/2.x, SDXL,
//! SD3 and Flux (`models/autoencoders/autoencoder_kl.py`), with diffusers'
//! tiled encode/decode and batch slicing.
//!
//! `encode` returns the posterior ([`DiagonalGaussianDistribution`]),
//! `decode` takes latents *unscaled*, as diffusers' `vae.decode` does; the
//! pipelines' scaling lives in [`AutoencoderKL::scale_latents`] and
//! [`AutoencoderKL::unscale_latents`].
//!
//! ## `force_upcast`
//!
//! SDXL's VAE overflows in f16, so its config says `force_upcast: true` and
//! diffusers' SDXL pipelines move the VAE to f32 (and cast the latents or
//! image to f32) around every `decode` and `encode` when the VAE is f16.
//! Here the same policy is applied once, at load: when the loader's precision
//! is [`Precision::F16`] and the config's `force_upcast` is true, every
//! parameter of the VAE is loaded in F32 instead ([`AutoencoderKL::upcast`]
//! says so), and `encode`/`decode` cast their input to F32 and return F32
//! tensors (the posterior and the decoded image), which the caller casts to its
//! working precision as diffusers' pipelines do (`latents.to(dtype)`). BF16 is
//! never upcast (diffusers' condition is `dtype == float16`). Set
//! `force_upcast = false` in the config before loading to run an f16 VAE in
//! f16 (what diffusers' SD 1.x/2.x pipelines do, whose VAE configs default
//! `force_upcast` to true but which never read it; diffusion-pipelines does
//! the same for them).

use crate::config::{FieldCheck, Loaded, ModelConfig, read_config, unsupported};
use crate::error::{ModelError, Result};
use crate::load::{Loader, Precision};
use crate::nn::{Activation, Conv2d, to_dtype};
use crate::vae::{Decoder, DiagonalGaussianDistribution, Encoder, VaeBlocksConfig};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn default_3() -> usize {
    3
}
fn default_4() -> usize {
    4
}
fn default_1() -> usize {
    1
}
fn default_32() -> usize {
    32
}
fn default_true() -> bool {
    true
}
fn default_down_blocks() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn default_up_blocks() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_sample_size() -> SampleSize {
    SampleSize::Square(32)
}
fn default_scaling_factor() -> f64 {
    0.18215
}

/// `sample_size`: an int, or (in a few configs) `[height, width]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// One size for both sides.
    Square(usize),
    /// `[height, width]`.
    Sides(Vec<usize>),
}

impl SampleSize {
    /// The size the tiling uses: diffusers' `tile_latent_min_size` reads the
    /// first element of a list (its `tile_sample_min_size` keeps the list and
    /// would fail to compare; the first element is used for both here).
    pub fn first(&self) -> Option<usize> {
        match self {
            SampleSize::Square(s) => Some(*s),
            SampleSize::Sides(v) => v.first().copied(),
        }
    }
}

/// `AutoencoderKL`'s `config.json`, with diffusers' field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels in.
    #[serde(default = "default_3")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "default_3")]
    pub out_channels: usize,
    /// Encoder blocks (only `DownEncoderBlock2D`).
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    /// Decoder blocks (only `UpDecoderBlock2D`).
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    /// Width of each level, highest resolution first.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder: one more).
    #[serde(default = "default_1")]
    pub layers_per_block: usize,
    /// Resnet activation.
    #[serde(default)]
    pub act_fn: Activation,
    /// Latent channels.
    #[serde(default = "default_4")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "default_32")]
    pub norm_num_groups: usize,
    /// The training resolution; the tile size of tiled encode/decode.
    #[serde(default = "default_sample_size")]
    pub sample_size: SampleSize,
    /// Latent scaling applied by the pipelines.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Latent shift applied by SD3/Flux pipelines (`null` in SD/SDXL).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean (SDXL-pipeline normalisation, e.g. Playground v2.5).
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent standard deviation (with `latents_mean`).
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// Run in f32 when loaded in f16 (see the module docs).
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    /// Whether `quant_conv` exists.
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have attention.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// Checks what diffusers would fail on (or this crate does not implement),
/// naming the field; `source` is the config's name for the message.
impl ModelConfig for AutoencoderKLConfig {
    fn validate(&self, source: &str) -> Result<()> {
        let check = FieldCheck::new(source);
        check.levels("block_out_channels", &self.block_out_channels)?;
        let levels = self.block_out_channels.len();
        for (field, types, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != levels {
                return Err(ModelError::config(
                    source,
                    field,
                    format!("{} entries, block_out_channels has {levels}", types.len()),
                ));
            }
            if let Some((i, t)) = types.iter().enumerate().find(|(_, t)| *t != want) {
                return Err(unsupported(source, &format!("{field}[{i}]"), t));
            }
        }
        let groups = self.norm_num_groups;
        if groups == 0 {
            return Err(check.error("norm_num_groups", "must be at least 1, found 0"));
        }
        if let Some((i, c)) = self
            .block_out_channels
            .iter()
            .enumerate()
            .find(|(_, c)| **c == 0 || **c % groups != 0)
        {
            return Err(ModelError::config(
                source,
                format!("block_out_channels[{i}]"),
                format!("{c} is not a positive multiple of norm_num_groups {groups}"),
            ));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            check.width(field, v)?;
        }
        check.layers("layers_per_block", self.layers_per_block)?;
        let sizes: Vec<(String, usize)> = match &self.sample_size {
            SampleSize::Square(s) => vec![("sample_size".into(), *s)],
            SampleSize::Sides(v) if v.is_empty() => {
                return Err(check.error("sample_size", "must not be empty"));
            }
            SampleSize::Sides(v) => v
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("sample_size[{i}]"), *s))
                .collect(),
        };
        for (field, s) in sizes {
            check.sample_size(&field, s)?;
        }
        // The pipelines divide latents by it (and multiply them back).
        check.positive("scaling_factor", self.scaling_factor)?;
        if let Some(shift) = self.shift_factor {
            check.finite("shift_factor", shift)?;
        }
        for (field, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if let Some(v) = v
                && v.len() != self.latent_channels
            {
                return Err(ModelError::config(
                    source,
                    field,
                    format!(
                        "{} values for {} latent channels",
                        v.len(),
                        self.latent_channels
                    ),
                ));
            }
        }
        for (i, m) in self.latents_mean.iter().flatten().enumerate() {
            check.finite(&format!("latents_mean[{i}]"), *m)?;
        }
        for (i, s) in self.latents_std.iter().flatten().enumerate() {
            check.positive(&format!("latents_std[{i}]"), *s)?;
        }
        Ok(())
    }
}

impl AutoencoderKLConfig {
    /// Spatial compression factor: `2^(levels - 1)` (8 for SD's VAE).
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    fn blocks(&self) -> (VaeBlocksConfig, VaeBlocksConfig) {
        let enc = VaeBlocksConfig {
            image_channels: self.in_channels,
            latent_channels: self.latent_channels,
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            norm_num_groups: self.norm_num_groups,
            act: self.act_fn,
            mid_block_add_attention: self.mid_block_add_attention,
        };
        let dec = VaeBlocksConfig {
            image_channels: self.out_channels,
            ..enc.clone()
        };
        (enc, dec)
    }
}

/// diffusers' `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// `encoder`.
    pub encoder: Encoder<B>,
    /// `decoder`.
    pub decoder: Decoder<B>,
    /// `quant_conv` (1×1 on the moments; absent with `use_quant_conv: false`).
    pub quant_conv: Option<Conv2d<B>>,
    /// `post_quant_conv` (1×1 on the latents; absent with `use_post_quant_conv: false`).
    pub post_quant_conv: Option<Conv2d<B>>,
    /// The config it was built from.
    #[module(skip)]
    pub config: AutoencoderKLConfig,
    /// Whether the parameters were loaded in F32 although F16 was asked
    /// (`force_upcast`; see the module docs).
    #[module(skip)]
    pub upcast: bool,
    /// Encode/decode one image at a time (diffusers' `enable_slicing`).
    #[module(skip)]
    pub use_slicing: bool,
    /// Encode/decode in overlapping tiles above the tile size (diffusers' `enable_tiling`).
    #[module(skip)]
    pub use_tiling: bool,
    /// Image tile side (`sample_size`).
    #[module(skip)]
    pub tile_sample_min_size: usize,
    /// Latent tile side (`sample_size / 2^(levels - 1)`).
    #[module(skip)]
    pub tile_latent_min_size: usize,
    /// Overlap of neighbouring tiles, as a fraction of the tile (0.25).
    #[module(skip)]
    pub tile_overlap_factor: f64,
}

impl<B: Backend> AutoencoderKL<B> {
    /// Builds the VAE from `loader` (strict: every key of the weights must be
    /// consumed) after validating `config`.
    pub fn load(loader: &Loader<B>, config: &AutoencoderKLConfig) -> Result<Self> {
        config.validate("AutoencoderKL config")?;
        let upcast = config.force_upcast && loader.precision() == Precision::F16;
        let loader = if upcast {
            loader.with_precision(Precision::F32)
        } else {
            loader.clone()
        };
        let (enc, dec) = config.blocks();
        let latent2 = 2 * config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::load(
                &loader.pp("quant_conv"),
                latent2,
                latent2,
                1,
                1,
                0,
                true,
            )?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            let l = config.latent_channels;
            Some(Conv2d::load(
                &loader.pp("post_quant_conv"),
                l,
                l,
                1,
                1,
                0,
                true,
            )?)
        } else {
            None
        };
        let model = AutoencoderKL {
            encoder: Encoder::load(&loader.pp("encoder"), &enc)?,
            decoder: Decoder::load(&loader.pp("decoder"), &dec)?,
            quant_conv,
            post_quant_conv,
            config: config.clone(),
            upcast,
            use_slicing: false,
            use_tiling: false,
            tile_sample_min_size: config.sample_size.first().expect("validated"),
            // diffusers: int(sample_size / 2 ** (len(block_out_channels) - 1)).
            tile_latent_min_size: config.sample_size.first().expect("validated")
                / config.downscale_factor(),
            tile_overlap_factor: 0.25,
        };
        loader.finish(&[])?;
        Ok(model)
    }

    /// Reads `dir/config.json` and `dir/diffusion_pytorch_model.safetensors`
    /// (or the sharded `diffusion_pytorch_model.safetensors.index.json`).
    pub fn from_dir(dir: &Path, device: &B::Device, precision: Precision) -> Result<Self> {
        let Loaded { config, .. } = read_config::<AutoencoderKLConfig>(&dir.join("config.json"))?;
        let weights = crate::config::open_weights(dir, crate::config::DIFFUSERS_WEIGHTS)?;
        Self::load(&Loader::new(&weights, device, precision), &config)
    }

    /// The float type the VAE computes in (F32 when upcast).
    pub fn dtype(&self) -> DType {
        self.encoder.conv_in.weight.val().dtype()
    }

    /// Turns tiling on (diffusers' `enable_tiling`).
    pub fn enable_tiling(&mut self) {
        self.use_tiling = true;
    }

    /// With tiling on, that the tile side (`sample_size`) lets tiled
    /// encode/decode step by three quarters of it on the latent grid: a
    /// multiple of `4 · 2^(levels − 1)`. Otherwise an edge tile narrower than
    /// the downsampling would reach the encoder's convs (a panic), and below
    /// `2^(levels − 1)` a latent tile is 0 wide (diffusers' loop would step by
    /// 0). Only tiling needs it, so such a config loads, as in diffusers.
    fn check_tiling(&self, input: &str) -> Result<()> {
        if !self.use_tiling {
            return Ok(());
        }
        let levels = self.config.block_out_channels.len();
        let unit = 4usize << (levels - 1).min(40);
        let tile = self.tile_sample_min_size;
        if !tile.is_multiple_of(unit) {
            return Err(ModelError::input(
                input,
                format!(
                    "tiled encode/decode with this VAE's sample_size {tile}: the tile must be \
                     a multiple of {unit} (4 · 2^(levels − 1) for {levels} levels); \
                     disable tiling"
                ),
            ));
        }
        Ok(())
    }

    /// Turns tiling off.
    pub fn disable_tiling(&mut self) {
        self.use_tiling = false;
    }

    /// Turns slicing on (diffusers' `enable_slicing`): batches are encoded and
    /// decoded one image at a time, to bound memory.
    pub fn enable_slicing(&mut self) {
        self.use_slicing = true;
    }

    /// Turns slicing off.
    pub fn disable_slicing(&mut self) {
        self.use_slicing = false;
    }

    /// Encodes images `[N, in_channels, H, W]` (values in `[-1, 1]`) to the
    /// posterior over latents `[N, latent_channels, H/f, W/f]`.
    pub fn encode(&self, image: Tensor<B, 4>) -> Result<DiagonalGaussianDistribution<B>> {
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
        if h > self.tile_sample_min_size || w > self.tile_sample_min_size {
            self.check_tiling("image")?;
        }
        let image = to_dtype(image, self.dtype());
        let moments = if self.use_slicing && n > 1 {
            let slices = image
                .split(1, 0)
                .into_iter()
                .map(|x| self.encode_moments(x));
            Tensor::cat(slices.collect(), 0)
        } else {
            self.encode_moments(image)
        };
        Ok(DiagonalGaussianDistribution::new(moments))
    }

    /// Decodes latents `[N, latent_channels, h, w]`, unscaled (as diffusers'
    /// `vae.decode` takes them; see [`AutoencoderKL::unscale_latents`]), to
    /// images `[N, out_channels, h·f, w·f]` in about `[-1, 1]`.
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
        if h > self.tile_latent_min_size || w > self.tile_latent_min_size {
            self.check_tiling("latents")?;
        }
        let latents = to_dtype(latents, self.dtype());
        Ok(if self.use_slicing && n > 1 {
            let slices = latents.split(1, 0).into_iter().map(|z| self.decode_one(z));
            Tensor::cat(slices.collect(), 0)
        } else {
            self.decode_one(latents)
        })
    }

    /// Encode then decode (diffusers' `forward`): through the posterior's
    /// mode, or a sample with the given `noise`.
    pub fn forward(
        &self,
        image: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>> {
        let posterior = self.encode(image)?;
        let z = match noise {
            Some(noise) => posterior.sample(noise)?,
            None => posterior.mode(),
        };
        self.decode(z)
    }

    /// Latents as the denoiser sees them, from the VAE's: `(z − shift) · scaling`
    /// (`shift_factor` null: 0), or, with `latents_mean` and `latents_std`,
    /// `(z − mean) · scaling / std` per channel (the SDXL pipelines' form).
    pub fn scale_latents(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let cfg = &self.config;
        if let Some((mean, std)) = self.channel_stats(&z) {
            return (z - mean) * cfg.scaling_factor / std;
        }
        match cfg.shift_factor {
            Some(shift) => (z - shift) * cfg.scaling_factor,
            None => z * cfg.scaling_factor,
        }
    }

    /// The inverse of [`AutoencoderKL::scale_latents`], applied before
    /// [`AutoencoderKL::decode`]: `z / scaling + shift`, or
    /// `z · std / scaling + mean` with `latents_mean`/`latents_std`.
    pub fn unscale_latents(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let cfg = &self.config;
        if let Some((mean, std)) = self.channel_stats(&z) {
            return z * std / cfg.scaling_factor + mean;
        }
        match cfg.shift_factor {
            Some(shift) => z / cfg.scaling_factor + shift,
            None => z / cfg.scaling_factor,
        }
    }

    /// `latents_mean`, `latents_std` as `[1, C, 1, 1]` tensors in `z`'s type.
    fn channel_stats(&self, z: &Tensor<B, 4>) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        let (mean, std) = (
            self.config.latents_mean.as_ref()?,
            self.config.latents_std.as_ref()?,
        );
        let device = z.device();
        let as_tensor = |v: &[f64]| {
            let values: Vec<f32> = v.iter().map(|x| *x as f32).collect();
            let t = Tensor::<B, 4>::from_data(
                TensorData::new(values, [1, v.len(), 1, 1]),
                (&device, DType::F32),
            );
            to_dtype(t, z.dtype())
        };
        Some((as_tensor(mean), as_tensor(std)))
    }

    /// diffusers' `_encode`: tiled above the tile size, else encoder + quant_conv.
    fn encode_moments(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        if self.use_tiling && (w > self.tile_sample_min_size || h > self.tile_sample_min_size) {
            return self.tiled_encode(x);
        }
        self.encode_tile(x)
    }

    fn encode_tile(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let moments = self.encoder.forward(x);
        match &self.quant_conv {
            Some(conv) => conv.forward(moments),
            None => moments,
        }
    }

    /// diffusers' `_decode`: tiled above the latent tile size, else
    /// post_quant_conv + decoder.
    fn decode_one(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = z.dims();
        if self.use_tiling && (w > self.tile_latent_min_size || h > self.tile_latent_min_size) {
            return self.tiled_decode(z);
        }
        self.decode_tile(z)
    }

    fn decode_tile(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        self.decoder.forward(z)
    }

    /// diffusers' `_tiled_encode`: image tiles of `tile_sample_min_size`,
    /// stepping by 75% of it, blended over 25% of the latent tile.
    pub fn tiled_encode(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let overlap =
            (self.tile_sample_min_size as f64 * (1.0 - self.tile_overlap_factor)) as usize;
        let blend = (self.tile_latent_min_size as f64 * self.tile_overlap_factor) as usize;
        let limit = self.tile_latent_min_size - blend;
        tiled(x, self.tile_sample_min_size, overlap, blend, limit, |t| {
            self.encode_tile(t)
        })
    }

    /// diffusers' `tiled_decode`: latent tiles of `tile_latent_min_size`,
    /// stepping by 75% of it, blended over 25% of the image tile.
    pub fn tiled_decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let overlap =
            (self.tile_latent_min_size as f64 * (1.0 - self.tile_overlap_factor)) as usize;
        let blend = (self.tile_sample_min_size as f64 * self.tile_overlap_factor) as usize;
        let limit = self.tile_sample_min_size - blend;
        tiled(z, self.tile_latent_min_size, overlap, blend, limit, |t| {
            self.decode_tile(t)
        })
    }
}

/// The tiling algorithm shared by encode and decode, step for step
/// diffusers': every `tile`×`tile` window starting at multiples of `step` is
/// run through `f`; then, in row-major order, each output tile is blended
/// with the (already blended) tile above it over `blend` rows and with the one
/// to its left over `blend` columns, cropped to `limit`×`limit`, and the crops
/// are concatenated.
fn tiled<B: Backend>(
    x: Tensor<B, 4>,
    tile: usize,
    step: usize,
    blend: usize,
    limit: usize,
    f: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let step = step.max(1);
    let mut rows: Vec<Vec<Tensor<B, 4>>> = (0..h)
        .step_by(step)
        .map(|i| {
            (0..w)
                .step_by(step)
                .map(|j| {
                    f(x.clone()
                        .slice([0..n, 0..c, i..(i + tile).min(h), j..(j + tile).min(w)]))
                })
                .collect()
        })
        .collect();
    let mut result_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut result_row = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut t = rows[i][j].clone();
            if i > 0 {
                t = blend_v(&rows[i - 1][j], t, blend);
            }
            if j > 0 {
                t = blend_h(&rows[i][j - 1], t, blend);
            }
            rows[i][j] = t.clone();
            let [tn, tc, th, tw] = t.dims();
            result_row.push(t.slice([0..tn, 0..tc, 0..limit.min(th), 0..limit.min(tw)]));
        }
        result_rows.push(Tensor::cat(result_row, 3));
    }
    Tensor::cat(result_rows, 2)
}

/// Blend weights `(1 − k/extent, k/extent)` for `k < extent`, shaped for `dim`
/// (2: rows, 3: columns), computed in f64 and rounded once, as the Python
/// scalars diffusers multiplies by are.
fn blend_weights<B: Backend>(
    extent: usize,
    dim: usize,
    like: &Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let shape = if dim == 2 {
        [1, 1, extent, 1]
    } else {
        [1, 1, 1, extent]
    };
    let make = |f: &dyn Fn(f64) -> f64| {
        let values: Vec<f32> = (0..extent)
            .map(|k| f(k as f64 / extent as f64) as f32)
            .collect();
        let t =
            Tensor::<B, 4>::from_data(TensorData::new(values, shape), (&like.device(), DType::F32));
        to_dtype(t, like.dtype())
    };
    (make(&|r| 1.0 - r), make(&|r| r))
}

/// diffusers' `blend_v`: the first `extent` rows of `b` fade in from the last
/// `extent` rows of `a`.
fn blend_v<B: Backend>(a: &Tensor<B, 4>, b: Tensor<B, 4>, extent: usize) -> Tensor<B, 4> {
    let [_, _, ah, _] = a.dims();
    let [bn, bc, bh, bw] = b.dims();
    let extent = extent.min(ah).min(bh);
    if extent == 0 {
        return b;
    }
    let (wa, wb) = blend_weights(extent, 2, &b);
    let top = a.clone().narrow(2, ah - extent, extent) * wa + b.clone().narrow(2, 0, extent) * wb;
    b.slice_assign([0..bn, 0..bc, 0..extent, 0..bw], top)
}

/// diffusers' `blend_h`: the first `extent` columns of `b` fade in from the
/// last `extent` columns of `a`.
fn blend_h<B: Backend>(a: &Tensor<B, 4>, b: Tensor<B, 4>, extent: usize) -> Tensor<B, 4> {
    let [_, _, _, aw] = a.dims();
    let [bn, bc, bh, bw] = b.dims();
    let extent = extent.min(aw).min(bw);
    if extent == 0 {
        return b;
    }
    let (wa, wb) = blend_weights(extent, 3, &b);
    let left = a.clone().narrow(3, aw - extent, extent) * wa + b.clone().narrow(3, 0, extent) * wb;
    b.slice_assign([0..bn, 0..bc, 0..bh, 0..extent], left)
}
