//! diffusers' `UNet2DConditionModel`: the text-conditioned latent UNet of
//! Stable Diffusion 1.x/2.x, SDXL, their inpainting variants (9 input
//! channels) and LCM-distilled models (`time_cond_proj_dim`).

use crate::config::{FieldCheck, MAX_LAYERS, ModelConfig, unsupported};
use crate::error::{ModelError, Result};
use crate::load::{Loader, Precision};
use crate::nn::{Activation, Conv2d, GroupNorm, to_dtype};
use crate::resnet::TimeEmbeddingNorm;
use crate::unet_2d::{OneOrMany, open_model_dir, strip_unet_res};
use crate::unet_2d_blocks::{CrossAttnUpBlock2D, DownBlock, UpBlock, UpBlock2D};
use crate::unet_encoder::BlockPlan;
pub use crate::unet_encoder::{
    ConditionEmbedding, ConditionMidBlock, TextTimeEmbedding, UNetConditions,
};
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `config.json` of a `UNet2DConditionModel` (diffusers' field names and defaults).
///
/// diffusers' naming quirk: with `num_attention_heads` null (every released
/// SD/SDXL config), `attention_head_dim` is the number of *heads*.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionConfig {
    /// Latent size the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<OneOrMany<usize>>,
    /// Input channels (4; 9 for inpainting).
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Output channels.
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [-1, 1] first.
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub center_input_sample: bool,
    /// cos before sin in the sinusoidal embeddings.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the sinusoidal embeddings.
    #[serde(default)]
    pub freq_shift: f64,
    /// `DownBlock2D` / `CrossAttnDownBlock2D` per resolution.
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    /// `"UNetMidBlock2DCrossAttn"`, `"UNetMidBlock2D"` or null.
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` / `CrossAttnUpBlock2D` per resolution (deepest first).
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    /// `attn1` attends to the text too (per down block, or for all).
    #[serde(default = "no_one")]
    pub only_cross_attention: OneOrMany<bool>,
    /// Channels per resolution.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "two_one")]
    pub layers_per_block: OneOrMany<usize>,
    /// Padding of the downsampling convs.
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// Output divisor of the middle block's resnets.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Dropout (inference ignores it).
    #[serde(default)]
    pub dropout: f64,
    /// Activation of the resnets and the time MLP.
    #[serde(default)]
    pub act_fn: Activation,
    /// GroupNorm groups (null is not supported).
    #[serde(default = "thirty_two")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    #[serde(default = "eps_1e5")]
    pub norm_eps: f64,
    /// Width of the text states (per down block, or for all).
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: OneOrMany<usize>,
    /// Transformer blocks per attention (for all blocks, per block, or per block and layer).
    #[serde(default = "one_layer")]
    pub transformer_layers_per_block: OneOrMany<OneOrMany<usize>>,
    /// Per up block and layer, for asymmetric UNets.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<OneOrMany<usize>>>,
    /// Unsupported (`text_proj` etc.): must be null.
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Unsupported: must be null.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Heads per block when `num_attention_heads` is null (see the type docs).
    #[serde(default = "eight_one")]
    pub attention_head_dim: OneOrMany<usize>,
    /// diffusers itself refuses a non-null value; so does this crate.
    #[serde(default)]
    pub num_attention_heads: Option<OneOrMany<usize>>,
    /// Unsupported: must be false.
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub dual_cross_attention: bool,
    /// Linear `proj_in`/`proj_out` in the transformers (SD2, SDXL).
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub use_linear_projection: bool,
    /// null, `"timestep"`, `"identity"`, `"projection"` or `"simple_projection"`.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// null or `"text_time"` (SDXL).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each `time_ids` entry's sinusoidal embedding (`"text_time"`).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Classes of the class embedding table.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Attention scores in f32.
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub upcast_attention: bool,
    /// `"default"` or `"scale_shift"`.
    #[serde(default)]
    pub resnet_time_scale_shift: TimeEmbeddingNorm,
    /// Unsupported (simple cross-attention blocks only): must be false.
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub resnet_skip_time_act: bool,
    /// Unsupported (simple cross-attention blocks only): must be 1.
    #[serde(default = "one_f")]
    pub resnet_out_scale_factor: f64,
    /// `"positional"` (`"fourier"` is not supported).
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default `4 · block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Activation applied to the summed embedding before the blocks.
    #[serde(default)]
    pub time_embedding_act_fn: Option<Activation>,
    /// Activation after the time MLP.
    #[serde(default)]
    pub timestep_post_act: Option<Activation>,
    /// Width of `timestep_cond` (LCM's guidance embedding) projected into the time MLP.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel of `conv_in`.
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out`.
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    /// Input width of the `"text_time"` embedding (and of projection class embeddings).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// `"default"` only.
    #[serde(default = "default_str")]
    pub attention_type: String,
    /// Concatenates the class embedding to the time embedding instead of adding it.
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub class_embeddings_concat: bool,
    /// Used by simple cross-attention mid blocks only.
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Unsupported (simple cross-attention blocks only): must be null.
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Heads of the `"text"` addition embedding (unsupported type).
    #[serde(default = "sixty_four")]
    pub addition_embed_type_num_heads: usize,
}

fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn sixty_four() -> usize {
    64
}
fn thirty_two() -> Option<usize> {
    Some(32)
}
fn one_f() -> f64 {
    1.0
}
fn eps_1e5() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn no_one() -> OneOrMany<bool> {
    OneOrMany::One(false)
}
fn two_one() -> OneOrMany<usize> {
    OneOrMany::One(2)
}
fn eight_one() -> OneOrMany<usize> {
    OneOrMany::One(8)
}
fn one_layer() -> OneOrMany<OneOrMany<usize>> {
    OneOrMany::One(OneOrMany::One(1))
}
fn default_cross_attention_dim() -> OneOrMany<usize> {
    OneOrMany::One(1280)
}
fn positional() -> String {
    "positional".into()
}
fn default_str() -> String {
    "default".into()
}
fn default_down_blocks() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up_blocks() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}

/// diffusers' `UNet2DConditionModel`.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// Input conv.
    pub conv_in: Conv2d<B>,
    /// The time embedding and what joins it (class labels, SDXL's text/time ids).
    pub embedding: ConditionEmbedding<B>,
    /// Down path.
    pub down_blocks: Vec<DownBlock<B>>,
    /// Middle block.
    pub mid_block: Option<ConditionMidBlock<B>>,
    /// Up path.
    pub up_blocks: Vec<UpBlock<B>>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output conv.
    pub conv_out: Conv2d<B>,
    /// The resnet activation (also after `conv_norm_out`).
    #[module(skip)]
    pub act: Activation,
    /// Input channels.
    pub in_channels: usize,
    /// Width of the text states each attention expects (one per cross-attention block, deduplicated).
    pub cross_attention_dims: Vec<usize>,
    /// `2x - 1` on the input.
    pub center_input_sample: bool,
    /// The adapters on its layers ([`crate::adapter`]).
    #[module(skip)]
    pub adapters: crate::adapter::AdapterTable,
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Loads a diffusers folder (`config.json` + weights), strictly.
    pub fn from_dir(dir: &Path, device: &B::Device, precision: Precision) -> Result<Self> {
        let (config, source, weights) = open_model_dir::<UNet2DConditionConfig>(dir)?;
        let loader = Loader::new(&weights, device, precision);
        let model = Self::load_named(&loader, &config, &source)?;
        loader.finish(&[])?;
        Ok(model)
    }

    /// Builds the model from `loader` (call `loader.finish` afterwards for strictness).
    pub fn load(loader: &Loader<B>, config: &UNet2DConditionConfig) -> Result<Self> {
        Self::load_named(loader, config, "UNet2DConditionModel config")
    }

    fn load_named(loader: &Loader<B>, cfg: &UNet2DConditionConfig, source: &str) -> Result<Self> {
        cfg.validate(source)?;
        let channels = &cfg.block_out_channels;
        let n = channels.len();
        let c0 = channels[0];
        let embedding = ConditionEmbedding::load(loader, cfg, source)?;
        let plan = BlockPlan::new(cfg, source, embedding.width)?;
        let groups = plan.groups;
        let reverse_transformer_layers = match &cfg.reverse_transformer_layers_per_block {
            Some(r) if r.len() != n => {
                return Err(ModelError::config(
                    source,
                    "reverse_transformer_layers_per_block",
                    format!("has {} entries, expected {n}", r.len()),
                ));
            }
            Some(r) => r.clone(),
            None => {
                if plan
                    .transformer_layers
                    .iter()
                    .any(|t| matches!(t, OneOrMany::Many(_)))
                {
                    return Err(ModelError::config(
                        source,
                        "reverse_transformer_layers_per_block",
                        "is required when transformer_layers_per_block has per-layer lists",
                    ));
                }
                plan.transformer_layers.iter().rev().cloned().collect()
            }
        };
        let (down_blocks, mut attention_dims) = plan.load_down_blocks(loader)?;
        let (mid_block, mid_dim) = plan.load_mid_block(loader)?;
        attention_dims.extend(mid_dim);

        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = reversed[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev = out_ch;
            out_ch = reversed[i];
            let in_ch = reversed[(i + 1).min(n - 1)];
            let r = n - 1 - i;
            let num_layers = plan.layers[r] + 1;
            let mut bc = plan.block(i, num_layers, in_ch, out_ch);
            bc.prev_output_channel = prev;
            let l = loader.pp("up_blocks").pp(i);
            up_blocks.push(match strip_unet_res(kind) {
                "UpBlock2D" => UpBlock::Plain(UpBlock2D::load(&l, &bc)?),
                "CrossAttnUpBlock2D" => {
                    bc.cross = Some(plan.cross(
                        r,
                        &reverse_transformer_layers[i],
                        num_layers,
                        plan.only_cross[r],
                    )?);
                    attention_dims.push(plan.cross_dims[r]);
                    UpBlock::CrossAttn(CrossAttnUpBlock2D::load(&l, &bc)?)
                }
                other => return Err(unsupported(source, &format!("up_block_types[{i}]"), other)),
            });
        }
        attention_dims.sort_unstable();
        attention_dims.dedup();

        let out_pad = (cfg.conv_out_kernel - 1) / 2;
        let in_pad = (cfg.conv_in_kernel - 1) / 2;
        Ok(UNet2DConditionModel {
            adapters: loader.adapters(),
            conv_in: Conv2d::load(
                &loader.pp("conv_in"),
                cfg.in_channels,
                c0,
                cfg.conv_in_kernel,
                1,
                in_pad,
                true,
            )?,
            embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&loader.pp("conv_norm_out"), groups, c0, cfg.norm_eps)?,
            conv_out: Conv2d::load(
                &loader.pp("conv_out"),
                c0,
                cfg.out_channels,
                cfg.conv_out_kernel,
                1,
                out_pad,
                true,
            )?,
            act: cfg.act_fn,
            in_channels: cfg.in_channels,
            cross_attention_dims: attention_dims,
            center_input_sample: cfg.center_input_sample,
        })
    }

    /// Predicts the noise (or v) for `sample` `[N, C, H, W]` at `timesteps`
    /// (`[N]`, or `[1]` for the whole batch), attending to
    /// `encoder_hidden_states` `[N, S, cross_attention_dim]`.
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        conditions: UNetConditions<B>,
    ) -> Result<Tensor<B, 4>> {
        let [batch, channels, height, width] = sample.dims();
        if channels != self.in_channels {
            return Err(ModelError::input(
                "sample",
                format!(
                    "has {channels} channels, the model takes {}",
                    self.in_channels
                ),
            ));
        }
        let [eb, _, ed] = encoder_hidden_states.dims();
        if eb != batch {
            return Err(ModelError::input(
                "encoder_hidden_states",
                format!("batch {eb}, the sample's is {batch}"),
            ));
        }
        if let Some(want) = self.cross_attention_dims.iter().find(|d| **d != ed) {
            return Err(ModelError::input(
                "encoder_hidden_states",
                format!("has width {ed}, the model's cross-attention takes {want}"),
            ));
        }
        let dtype = sample.dtype();
        let context = to_dtype(encoder_hidden_states, dtype);
        // Sizes that the upsamplers' ×2 does not restore: pass each skip's size.
        let num_upsamplers = self.up_blocks.len().saturating_sub(1);
        let factor = 1usize << num_upsamplers;
        let forward_upsample_size = height % factor != 0 || width % factor != 0;
        let sample = if self.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };

        // Time, class and added embeddings.
        let emb = self
            .embedding
            .forward(timesteps, batch, dtype, &conditions)?;

        // Down path.
        let mut h = self.conv_in.forward(sample);
        let mut skips = vec![h.clone()];
        let mut intrablock = conditions
            .down_intrablock_additional_residuals
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i, to_dtype(r, dtype)))
            .peekable();
        for block in &self.down_blocks {
            let residual = intrablock.next().map(|(_, r)| r);
            let (out, states) = block.forward_with_residual(h, &emb, Some(&context), residual)?;
            h = out;
            skips.extend(states);
        }
        if let Some(residuals) = conditions.down_block_additional_residuals {
            if residuals.len() != skips.len() {
                return Err(ModelError::input(
                    "down_block_additional_residuals",
                    format!(
                        "{} residuals for {} down-path states",
                        residuals.len(),
                        skips.len()
                    ),
                ));
            }
            skips = skips
                .into_iter()
                .zip(residuals)
                .enumerate()
                .map(|(i, (s, r))| {
                    if !fits_state(&r, &s) {
                        return Err(ModelError::input(
                            "down_block_additional_residuals",
                            format!(
                                "entry {i} has shape {:?}, the state is {:?}",
                                r.dims(),
                                s.dims()
                            ),
                        ));
                    }
                    let r = to_dtype(r, dtype).expand(s.dims());
                    Ok(s + r)
                })
                .collect::<Result<_>>()?;
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(h, &emb, &context);
            // SDXL's adapters have one feature more than the down path: it
            // joins the middle block's output when the shapes agree.
            if let Some((_, r)) = intrablock.next_if(|(_, r)| r.dims() == h.dims()) {
                h = h + r;
            }
        }
        if let Some((i, r)) = intrablock.next() {
            return Err(ModelError::input(
                "down_intrablock_additional_residuals",
                format!(
                    "entry {i} {:?} is one more than the down path takes",
                    r.dims()
                ),
            ));
        }
        if let Some(r) = conditions.mid_block_additional_residual {
            if !fits_state(&r, &h) {
                return Err(ModelError::input(
                    "mid_block_additional_residual",
                    format!(
                        "has shape {:?}, the middle output is {:?}",
                        r.dims(),
                        h.dims()
                    ),
                ));
            }
            let r = to_dtype(r, dtype).expand(h.dims());
            h = h + r;
        }

        // Up path.
        let last = self.up_blocks.len().saturating_sub(1);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let n = block.num_resnets();
            let mut block_skips = skips.split_off(skips.len() - n);
            let size = match (i < last && forward_upsample_size, skips.last()) {
                (true, Some(s)) => {
                    let [_, _, sh, sw] = s.dims();
                    Some([sh, sw])
                }
                _ => None,
            };
            h = block.forward(h, &mut block_skips, &emb, Some(&context), size);
        }
        let h = match self.act {
            Activation::Silu => self.conv_norm_out.forward_silu(h),
            act => act.forward(self.conv_norm_out.forward(h)),
        };
        Ok(self.conv_out.forward(h))
    }
}

/// A ControlNet residual fits a state of its shape, or `[N, C, 1, 1]` (a
/// global-pool ControlNet's means, broadcast over the state).
fn fits_state<B: Backend>(r: &Tensor<B, 4>, state: &Tensor<B, 4>) -> bool {
    let [n, c, h, w] = r.dims();
    let [sn, sc, sh, sw] = state.dims();
    n == sn && c == sc && ((h, w) == (sh, sw) || (h, w) == (1, 1))
}

/// Refuses what the model cannot be built or run with, naming the field:
/// values this crate does not implement, and ranges and relations the layers
/// need (groups dividing every width, heads dividing the attention widths,
/// one entry per block in every list).
impl ModelConfig for UNet2DConditionConfig {
    fn validate(&self, source: &str) -> Result<()> {
        let cfg = self;
        let check = FieldCheck::new(source);
        let channels = &cfg.block_out_channels;
        check.levels("block_out_channels", channels)?;
        // The timestep embedding (and a `"timestep"` class embedding's) is
        // `block_out_channels[0]` wide.
        check.sinusoidal_width("block_out_channels[0]", channels[0])?;
        let n = channels.len();
        for (field, len) in [
            ("down_block_types", cfg.down_block_types.len()),
            ("up_block_types", cfg.up_block_types.len()),
        ] {
            if len != n {
                return Err(check.error(
                    field,
                    format!("has {len} entries, block_out_channels has {n}"),
                ));
            }
        }
        if let Some(heads) = &cfg.num_attention_heads {
            return Err(check.error(
                "num_attention_heads",
                format!(
                    "{heads:?}: diffusers refuses this field too (its `attention_head_dim` holds the head count)"
                ),
            ));
        }
        if cfg.time_embedding_type != "positional" {
            return Err(unsupported(
                source,
                "time_embedding_type",
                &cfg.time_embedding_type,
            ));
        }
        if cfg.attention_type != "default" {
            return Err(unsupported(source, "attention_type", &cfg.attention_type));
        }
        if cfg.dual_cross_attention {
            return Err(unsupported(source, "dual_cross_attention", true));
        }
        if let Some(v) = &cfg.encoder_hid_dim_type {
            return Err(unsupported(source, "encoder_hid_dim_type", v));
        }
        if let Some(v) = cfg.encoder_hid_dim {
            return Err(unsupported(source, "encoder_hid_dim", v));
        }
        if cfg.resnet_skip_time_act {
            return Err(unsupported(source, "resnet_skip_time_act", true));
        }
        if cfg.resnet_out_scale_factor != 1.0 {
            return Err(unsupported(
                source,
                "resnet_out_scale_factor",
                cfg.resnet_out_scale_factor,
            ));
        }
        if let Some(v) = &cfg.cross_attention_norm {
            return Err(unsupported(source, "cross_attention_norm", v));
        }
        for (field, k) in [
            ("conv_in_kernel", cfg.conv_in_kernel),
            ("conv_out_kernel", cfg.conv_out_kernel),
        ] {
            // Odd kernels keep the size (padding (k - 1) / 2), as the skips need.
            if k % 2 == 0 || k > 31 {
                return Err(unsupported(source, field, k));
            }
        }
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            if !matches!(strip_unet_res(kind), "DownBlock2D" | "CrossAttnDownBlock2D") {
                return Err(unsupported(source, &format!("down_block_types[{i}]"), kind));
            }
        }
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            if !matches!(strip_unet_res(kind), "UpBlock2D" | "CrossAttnUpBlock2D") {
                return Err(unsupported(source, &format!("up_block_types[{i}]"), kind));
            }
        }
        if let Some(kind) = cfg.mid_block_type.as_deref()
            && !matches!(kind, "UNetMidBlock2DCrossAttn" | "UNetMidBlock2D")
        {
            return Err(unsupported(source, "mid_block_type", kind));
        }

        // Ranges.
        check.width("in_channels", cfg.in_channels)?;
        check.width("out_channels", cfg.out_channels)?;
        if let Some(size) = &cfg.sample_size {
            match size {
                OneOrMany::One(v) => check.sample_size("sample_size", *v)?,
                OneOrMany::Many(v) => {
                    if v.len() != 2 {
                        return Err(check.error(
                            "sample_size",
                            format!("has {} entries, expected [height, width]", v.len()),
                        ));
                    }
                    for (i, s) in v.iter().enumerate() {
                        check.sample_size(&format!("sample_size[{i}]"), *s)?;
                    }
                }
            }
        }
        let groups = cfg
            .norm_num_groups
            .ok_or_else(|| unsupported(source, "norm_num_groups", "null"))?;
        for (i, c) in channels.iter().enumerate() {
            check.divides(
                &format!("block_out_channels[{i}]"),
                *c,
                "norm_num_groups",
                groups,
            )?;
        }
        check.positive("norm_eps", cfg.norm_eps)?;
        check.finite("freq_shift", cfg.freq_shift)?;
        check.positive("mid_block_scale_factor", cfg.mid_block_scale_factor)?;
        check.fraction("dropout", cfg.dropout)?;
        if cfg.downsample_padding > 1 {
            // 0 pads right and bottom by one, 1 both sides: either halves an
            // even size, as the up path's skips need; more does not.
            return Err(unsupported(
                source,
                "downsample_padding",
                cfg.downsample_padding,
            ));
        }
        for (field, v) in [
            ("time_embedding_dim", cfg.time_embedding_dim),
            ("addition_time_embed_dim", cfg.addition_time_embed_dim),
            ("num_class_embeds", cfg.num_class_embeds),
            ("time_cond_proj_dim", cfg.time_cond_proj_dim),
            (
                "projection_class_embeddings_input_dim",
                cfg.projection_class_embeddings_input_dim,
            ),
        ] {
            if let Some(v) = v {
                check.width(field, v)?;
            }
        }
        // `text_time` embeds each time id sinusoidally at this width.
        if let Some(d) = cfg.addition_time_embed_dim {
            check.sinusoidal_width("addition_time_embed_dim", d)?;
        }

        // The class and addition embeddings the loader builds, and the
        // widths they need (the loader would refuse them otherwise).
        match cfg.class_embed_type.as_deref() {
            None | Some("timestep" | "identity") => {}
            Some(kind @ ("projection" | "simple_projection")) => {
                if cfg.projection_class_embeddings_input_dim.is_none() {
                    return Err(check.error(
                        "projection_class_embeddings_input_dim",
                        format!("is required by class_embed_type {kind:?}"),
                    ));
                }
            }
            Some(other) => return Err(unsupported(source, "class_embed_type", other)),
        }
        // Concatenating doubles the blocks' time-embedding width, so there
        // must be a class embedding to concatenate (diffusers fails too).
        if cfg.class_embeddings_concat
            && cfg.class_embed_type.is_none()
            && cfg.num_class_embeds.is_none()
        {
            return Err(check.error(
                "class_embeddings_concat",
                "is true, but there is no class embedding (class_embed_type and \
                 num_class_embeds are null)",
            ));
        }
        // diffusers adds the addition embedding (`time_embed_dim` wide) to
        // the concatenated, doubled one: a shape error there, a panic here.
        if cfg.class_embeddings_concat && cfg.addition_embed_type.is_some() {
            return Err(check.error(
                "class_embeddings_concat",
                "cannot be combined with an addition_embed_type (the widths differ)",
            ));
        }
        match cfg.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") => {
                for (field, v) in [
                    ("addition_time_embed_dim", cfg.addition_time_embed_dim),
                    (
                        "projection_class_embeddings_input_dim",
                        cfg.projection_class_embeddings_input_dim,
                    ),
                ] {
                    if v.is_none() {
                        return Err(
                            check.error(field, "is required by addition_embed_type \"text_time\"")
                        );
                    }
                }
            }
            Some(other) => return Err(unsupported(source, "addition_embed_type", other)),
        }

        // Per-block lists: one entry per block, each in range.
        let heads = cfg
            .attention_head_dim
            .expand(n, source, "attention_head_dim")?;
        let cross_dims = cfg
            .cross_attention_dim
            .expand(n, source, "cross_attention_dim")?;
        let layers = cfg.layers_per_block.expand(n, source, "layers_per_block")?;
        cfg.only_cross_attention
            .expand(n, source, "only_cross_attention")?;
        let transformer_layers =
            cfg.transformer_layers_per_block
                .expand(n, source, "transformer_layers_per_block")?;
        for i in 0..n {
            check.layers(&format!("layers_per_block[{i}]"), layers[i])?;
            check.width(&format!("cross_attention_dim[{i}]"), cross_dims[i])?;
            for (j, t) in transformer_layers[i]
                .expand(
                    layers[i],
                    source,
                    &format!("transformer_layers_per_block[{i}]"),
                )?
                .iter()
                .enumerate()
            {
                if *t > MAX_LAYERS {
                    return Err(check.error(
                        format!("transformer_layers_per_block[{i}][{j}]"),
                        format!("{t} is larger than {MAX_LAYERS}"),
                    ));
                }
            }
            // `attention_head_dim` holds the head count (see the type docs):
            // every block with attention splits its width into that many heads.
            let down_attn = strip_unet_res(&cfg.down_block_types[i]) == "CrossAttnDownBlock2D";
            let up_attn = strip_unet_res(&cfg.up_block_types[n - 1 - i]) == "CrossAttnUpBlock2D";
            let mid_attn =
                i == n - 1 && cfg.mid_block_type.as_deref() == Some("UNetMidBlock2DCrossAttn");
            if down_attn || up_attn || mid_attn {
                let heads_field = match cfg.attention_head_dim {
                    OneOrMany::One(_) => "attention_head_dim".to_string(),
                    OneOrMany::Many(_) => format!("attention_head_dim[{i}]"),
                };
                // Not `check.divides`: the error names the field itself, and
                // says that it is a head count.
                if heads[i] == 0 {
                    return Err(check.error(heads_field, "0 heads (it holds the head count)"));
                }
                if !channels[i].is_multiple_of(heads[i]) {
                    return Err(check.error(
                        format!("block_out_channels[{i}]"),
                        format!(
                            "{} is not a multiple of {heads_field} {} (the head count)",
                            channels[i], heads[i]
                        ),
                    ));
                }
            }
        }
        // The up blocks' transformer counts: one entry per up block (deepest
        // first), each one count or one per resnet (`layers_per_block + 1`),
        // as the loader reads them; a huge count would build that many blocks.
        match &cfg.reverse_transformer_layers_per_block {
            Some(r) if r.len() != n => {
                return Err(check.error(
                    "reverse_transformer_layers_per_block",
                    format!("has {} entries, expected {n}", r.len()),
                ));
            }
            Some(r) => {
                for (i, per_layer) in r.iter().enumerate() {
                    let field = format!("reverse_transformer_layers_per_block[{i}]");
                    let counts = per_layer.expand(layers[n - 1 - i] + 1, source, &field)?;
                    if let Some((j, t)) = counts.iter().enumerate().find(|(_, t)| **t > MAX_LAYERS)
                    {
                        return Err(check.error(
                            format!("{field}[{j}]"),
                            format!("{t} is larger than {MAX_LAYERS}"),
                        ));
                    }
                }
            }
            None => {
                if transformer_layers
                    .iter()
                    .any(|t| matches!(t, OneOrMany::Many(_)))
                {
                    return Err(check.error(
                        "reverse_transformer_layers_per_block",
                        "is required when transformer_layers_per_block has per-layer lists",
                    ));
                }
            }
        }
        Ok(())
    }
}
