//! diffusers' `UNet2DConditionModel`: the text-conditioned latent UNet of
//! Stable Diffusion 1.x/2.x, SDXL, their inpainting variants (9 input
//! channels) and LCM-distilled models (`time_cond_proj_dim`).

use crate::config::{FieldCheck, MAX_LAYERS, ModelConfig, unsupported};
use crate::embeddings::{TimestepEmbedding, Timesteps};
use crate::error::{ModelError, Result};
use crate::load::{Init, Loader, Precision};
use crate::mid_block::{MidBlockConfig, UNetMidBlock2D};
use crate::nn::{Activation, Conv2d, GroupNorm, Linear, to_dtype};
use crate::resnet::{ResnetConfig, TimeEmbeddingNorm};
use crate::unet_2d::{
    ClassEmbedding, ClassLabels, OneOrMany, batch_timesteps, open_model_dir, strip_unet_res,
};
use crate::unet_2d_blocks::{
    BlockConfig, CrossAttnConfig, CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock, DownBlock2D,
    UNetMidBlock2DCrossAttn, UpBlock, UpBlock2D,
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

/// The inputs beside the sample, the timesteps and the text states.
#[derive(Debug, Clone)]
pub struct UNetConditions<B: Backend> {
    /// SDXL's pooled text embedding `[N, D]` (`addition_embed_type="text_time"`).
    pub text_embeds: Option<Tensor<B, 2>>,
    /// SDXL's size/crop conditioning `[N, k]` (6 for the base model).
    pub time_ids: Option<Tensor<B, 2>>,
    /// LCM's guidance-scale embedding `[N, time_cond_proj_dim]`.
    pub timestep_cond: Option<Tensor<B, 2>>,
    /// Class labels, for models with a class embedding.
    pub class_labels: Option<ClassLabels<B>>,
    /// ControlNet residuals added to the down-path states (one per state, in order).
    pub down_block_additional_residuals: Option<Vec<Tensor<B, 4>>>,
    /// ControlNet residual added to the middle block's output.
    pub mid_block_additional_residual: Option<Tensor<B, 4>>,
}

impl<B: Backend> Default for UNetConditions<B> {
    fn default() -> Self {
        UNetConditions {
            text_embeds: None,
            time_ids: None,
            timestep_cond: None,
            class_labels: None,
            down_block_additional_residuals: None,
            mid_block_additional_residual: None,
        }
    }
}

/// SDXL's `"text_time"` addition embedding: sinusoidal features of each
/// `time_ids` entry, concatenated after the pooled text embedding, then an MLP.
#[derive(Module, Debug)]
pub struct TextTimeEmbedding<B: Backend> {
    /// Sinusoidal features of the time ids (`add_time_proj`).
    pub add_time_proj: Timesteps,
    /// The MLP (`add_embedding`).
    pub add_embedding: TimestepEmbedding<B>,
    /// Its input width.
    pub input_dim: usize,
}

/// The middle of the conditional UNet.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ConditionMidBlock<B: Backend> {
    /// `UNetMidBlock2DCrossAttn`.
    CrossAttn(UNetMidBlock2DCrossAttn<B>),
    /// `UNetMidBlock2D` (resnet only).
    Plain(UNetMidBlock2D<B>),
}

/// diffusers' `UNet2DConditionModel`.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// Input conv.
    pub conv_in: Conv2d<B>,
    /// Sinusoidal timestep features.
    pub time_proj: Timesteps,
    /// Timestep MLP (with `cond_proj` for LCM).
    pub time_embedding: TimestepEmbedding<B>,
    /// Class conditioning.
    pub class_embedding: Option<ClassEmbedding<B>>,
    /// SDXL's text/time conditioning.
    pub add_embedding: Option<TextTimeEmbedding<B>>,
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
    /// `time_embedding_act_fn`.
    #[module(skip)]
    pub time_embed_act: Option<Activation>,
    /// The resnet activation (also after `conv_norm_out`).
    #[module(skip)]
    pub act: Activation,
    /// Input channels.
    pub in_channels: usize,
    /// Width of the text states each attention expects (one per cross-attention block, deduplicated).
    pub cross_attention_dims: Vec<usize>,
    /// `2x - 1` on the input.
    pub center_input_sample: bool,
    /// Class embedding concatenated rather than added.
    pub class_embeddings_concat: bool,
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
        let groups = cfg
            .norm_num_groups
            .ok_or_else(|| unsupported(source, "norm_num_groups", "null"))?;
        let heads = cfg
            .attention_head_dim
            .expand(n, source, "attention_head_dim")?;
        let cross_dims = cfg
            .cross_attention_dim
            .expand(n, source, "cross_attention_dim")?;
        let layers = cfg.layers_per_block.expand(n, source, "layers_per_block")?;
        let only_cross = cfg
            .only_cross_attention
            .expand(n, source, "only_cross_attention")?;
        let transformer_layers =
            cfg.transformer_layers_per_block
                .expand(n, source, "transformer_layers_per_block")?;
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
                if transformer_layers
                    .iter()
                    .any(|t| matches!(t, OneOrMany::Many(_)))
                {
                    return Err(ModelError::config(
                        source,
                        "reverse_transformer_layers_per_block",
                        "is required when transformer_layers_per_block has per-layer lists",
                    ));
                }
                transformer_layers.iter().rev().cloned().collect()
            }
        };

        // Time embedding.
        let time_embed_dim = cfg.time_embedding_dim.unwrap_or(4 * c0);
        let time_proj = Timesteps::new(c0, cfg.flip_sin_to_cos, cfg.freq_shift);
        let time_embedding = TimestepEmbedding::load(
            &loader.pp("time_embedding"),
            c0,
            time_embed_dim,
            cfg.act_fn,
            None,
            cfg.timestep_post_act,
            cfg.time_cond_proj_dim,
        )?;
        let class_embedding = load_class_embedding(loader, cfg, source, time_embed_dim, c0)?;
        let add_embedding = match cfg.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let need = |field: &str, v: Option<usize>| {
                    v.ok_or_else(|| {
                        ModelError::config(
                            source,
                            field,
                            "is required by addition_embed_type \"text_time\"",
                        )
                    })
                };
                let time_dim = need("addition_time_embed_dim", cfg.addition_time_embed_dim)?;
                let input_dim = need(
                    "projection_class_embeddings_input_dim",
                    cfg.projection_class_embeddings_input_dim,
                )?;
                Some(TextTimeEmbedding {
                    add_time_proj: Timesteps::new(time_dim, cfg.flip_sin_to_cos, cfg.freq_shift),
                    add_embedding: TimestepEmbedding::load(
                        &loader.pp("add_embedding"),
                        input_dim,
                        time_embed_dim,
                        Activation::Silu,
                        None,
                        None,
                        None,
                    )?,
                    input_dim,
                })
            }
            Some(other) => return Err(unsupported(source, "addition_embed_type", other)),
        };
        let blocks_temb = if cfg.class_embeddings_concat {
            2 * time_embed_dim
        } else {
            time_embed_dim
        };

        let block = |i: usize, num_layers: usize, in_ch: usize, out_ch: usize| BlockConfig {
            num_layers,
            in_channels: in_ch,
            out_channels: out_ch,
            prev_output_channel: 0,
            temb_channels: blocks_temb,
            resnet_eps: cfg.norm_eps,
            resnet_act: cfg.act_fn,
            resnet_groups: groups,
            time_embedding_norm: cfg.resnet_time_scale_shift,
            output_scale_factor: 1.0,
            add_sample: i + 1 < n,
            downsample_padding: cfg.downsample_padding,
            attention_head_dim: heads[i],
            cross: None,
        };
        let cross = |heads: usize, dim: usize, per_layer: &OneOrMany<usize>, num_layers, only| {
            Ok::<_, ModelError>(CrossAttnConfig {
                num_attention_heads: heads,
                cross_attention_dim: dim,
                transformer_layers: per_layer.expand(
                    num_layers,
                    source,
                    "transformer_layers_per_block",
                )?,
                use_linear_projection: cfg.use_linear_projection,
                only_cross_attention: only,
                upcast_attention: cfg.upcast_attention,
            })
        };

        let mut attention_dims = Vec::new();
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = c0;
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = channels[i];
            let mut bc = block(i, layers[i], in_ch, out_ch);
            let l = loader.pp("down_blocks").pp(i);
            down_blocks.push(match strip_unet_res(kind) {
                "DownBlock2D" => DownBlock::Plain(DownBlock2D::load(&l, &bc)?),
                "CrossAttnDownBlock2D" => {
                    bc.cross = Some(cross(
                        heads[i],
                        cross_dims[i],
                        &transformer_layers[i],
                        layers[i],
                        only_cross[i],
                    )?);
                    attention_dims.push(cross_dims[i]);
                    DownBlock::CrossAttn(CrossAttnDownBlock2D::load(&l, &bc)?)
                }
                other => {
                    return Err(unsupported(
                        source,
                        &format!("down_block_types[{i}]"),
                        other,
                    ));
                }
            });
        }

        let c_last = channels[n - 1];
        let mid_block = match cfg.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2DCrossAttn") => {
                let mut bc = block(n - 1, 1, c_last, c_last);
                bc.output_scale_factor = cfg.mid_block_scale_factor;
                // The middle block has one transformer: a per-layer list gives its first entry.
                let mid_layers = transformer_layers[n - 1].get(0).unwrap_or(1);
                bc.cross = Some(cross(
                    heads[n - 1],
                    cross_dims[n - 1],
                    &OneOrMany::One(mid_layers),
                    1,
                    false,
                )?);
                attention_dims.push(cross_dims[n - 1]);
                Some(ConditionMidBlock::CrossAttn(UNetMidBlock2DCrossAttn::load(
                    &loader.pp("mid_block"),
                    &bc,
                )?))
            }
            Some("UNetMidBlock2D") => {
                let mut resnet = ResnetConfig::new(c_last, c_last, Some(blocks_temb));
                resnet.groups = groups;
                resnet.eps = cfg.norm_eps;
                resnet.act = cfg.act_fn;
                resnet.time_embedding_norm = cfg.resnet_time_scale_shift;
                resnet.output_scale_factor = cfg.mid_block_scale_factor;
                let mid = MidBlockConfig {
                    resnet,
                    num_layers: 0,
                    add_attention: false,
                    attention_head_dim: None,
                };
                Some(ConditionMidBlock::Plain(UNetMidBlock2D::load(
                    &loader.pp("mid_block"),
                    &mid,
                )?))
            }
            Some(other) => return Err(unsupported(source, "mid_block_type", other)),
        };

        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = reversed[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev = out_ch;
            out_ch = reversed[i];
            let in_ch = reversed[(i + 1).min(n - 1)];
            let r = n - 1 - i;
            let num_layers = layers[r] + 1;
            let mut bc = block(i, num_layers, in_ch, out_ch);
            bc.prev_output_channel = prev;
            let l = loader.pp("up_blocks").pp(i);
            up_blocks.push(match strip_unet_res(kind) {
                "UpBlock2D" => UpBlock::Plain(UpBlock2D::load(&l, &bc)?),
                "CrossAttnUpBlock2D" => {
                    bc.cross = Some(cross(
                        heads[r],
                        cross_dims[r],
                        &reverse_transformer_layers[i],
                        num_layers,
                        only_cross[r],
                    )?);
                    attention_dims.push(cross_dims[r]);
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
            time_proj,
            time_embedding,
            class_embedding,
            add_embedding,
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
            time_embed_act: cfg.time_embedding_act_fn,
            act: cfg.act_fn,
            in_channels: cfg.in_channels,
            cross_attention_dims: attention_dims,
            center_input_sample: cfg.center_input_sample,
            class_embeddings_concat: cfg.class_embeddings_concat,
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
        let timesteps = batch_timesteps(timesteps, batch)?;
        let t_emb = to_dtype(self.time_proj.forward(timesteps), dtype);
        let timestep_cond = match (&self.time_embedding.cond_proj, conditions.timestep_cond) {
            (Some(proj), Some(c)) => {
                let want = proj.weight.dims()[0];
                if c.dims() != [batch, want] {
                    return Err(ModelError::input(
                        "timestep_cond",
                        format!("has shape {:?}, expected [{batch}, {want}]", c.dims()),
                    ));
                }
                Some(to_dtype(c, dtype))
            }
            (None, Some(_)) => {
                return Err(ModelError::input(
                    "timestep_cond",
                    "the model has no time_cond_proj_dim",
                ));
            }
            // diffusers skips `cond_proj` when no condition is given.
            (_, None) => None,
        };
        let mut emb = self.time_embedding.forward(t_emb, timestep_cond);
        match (&self.class_embedding, conditions.class_labels) {
            (Some(class), Some(labels)) => {
                let class_emb = class.forward(labels, &self.time_proj, batch, dtype)?;
                emb = if self.class_embeddings_concat {
                    Tensor::cat(vec![emb, class_emb], 1)
                } else {
                    emb + class_emb
                };
            }
            (Some(_), None) => {
                return Err(ModelError::input(
                    "class_labels",
                    "this model is class-conditional: class labels are required",
                ));
            }
            (None, Some(_)) => {
                return Err(ModelError::input(
                    "class_labels",
                    "this model has no class embedding",
                ));
            }
            (None, None) => {}
        }
        if let Some(add) = &self.add_embedding {
            let text = conditions.text_embeds.ok_or_else(|| {
                ModelError::input(
                    "text_embeds",
                    "required by addition_embed_type \"text_time\"",
                )
            })?;
            let ids = conditions.time_ids.ok_or_else(|| {
                ModelError::input("time_ids", "required by addition_embed_type \"text_time\"")
            })?;
            let [tb, td] = text.dims();
            let [ib, k] = ids.dims();
            let width = td + k * add.add_time_proj.num_channels;
            if tb != batch || ib != batch || width != add.input_dim {
                return Err(ModelError::input(
                    "text_embeds",
                    format!(
                        "text_embeds {:?} and time_ids {:?} give {width} features for batch {batch}, \
                         the model takes {} ({} per time id)",
                        [tb, td],
                        [ib, k],
                        add.input_dim,
                        add.add_time_proj.num_channels
                    ),
                ));
            }
            let time_embeds = add
                .add_time_proj
                .forward(ids.reshape([batch * k]))
                .reshape([batch, k * add.add_time_proj.num_channels]);
            let add_embeds =
                Tensor::cat(vec![to_dtype(text, dtype), to_dtype(time_embeds, dtype)], 1);
            emb = emb + add.add_embedding.forward(add_embeds, None);
        }
        if let Some(act) = self.time_embed_act {
            emb = act.forward(emb);
        }

        // Down path.
        let mut h = self.conv_in.forward(sample);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(h, &emb, Some(&context));
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
                    if s.dims() != r.dims() {
                        return Err(ModelError::input(
                            "down_block_additional_residuals",
                            format!(
                                "entry {i} has shape {:?}, the state is {:?}",
                                r.dims(),
                                s.dims()
                            ),
                        ));
                    }
                    Ok(s + to_dtype(r, dtype))
                })
                .collect::<Result<_>>()?;
        }
        match &self.mid_block {
            Some(ConditionMidBlock::CrossAttn(mid)) => h = mid.forward(h, &emb, &context),
            Some(ConditionMidBlock::Plain(mid)) => h = mid.forward(h, Some(emb.clone())),
            None => {}
        }
        if let Some(r) = conditions.mid_block_additional_residual {
            if r.dims() != h.dims() {
                return Err(ModelError::input(
                    "mid_block_additional_residual",
                    format!(
                        "has shape {:?}, the middle output is {:?}",
                        r.dims(),
                        h.dims()
                    ),
                ));
            }
            h = h + to_dtype(r, dtype);
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

fn load_class_embedding<B: Backend>(
    loader: &Loader<B>,
    cfg: &UNet2DConditionConfig,
    source: &str,
    time_embed_dim: usize,
    timestep_input_dim: usize,
) -> Result<Option<ClassEmbedding<B>>> {
    let l = loader.pp("class_embedding");
    let projection_dim = || {
        cfg.projection_class_embeddings_input_dim.ok_or_else(|| {
            ModelError::config(
                source,
                "projection_class_embeddings_input_dim",
                "is required by this class_embed_type",
            )
        })
    };
    Ok(
        match (cfg.class_embed_type.as_deref(), cfg.num_class_embeds) {
            (None, Some(classes)) => Some(ClassEmbedding::Table(l.param(
                "weight",
                [classes, time_embed_dim],
                Init::Normal(1.0),
            )?)),
            (None, None) => None,
            (Some("timestep"), _) => Some(ClassEmbedding::Timestep(TimestepEmbedding::load(
                &l,
                timestep_input_dim,
                time_embed_dim,
                cfg.act_fn,
                None,
                None,
                None,
            )?)),
            (Some("identity"), _) => Some(ClassEmbedding::Identity(time_embed_dim)),
            (Some("projection"), _) => Some(ClassEmbedding::Projection(TimestepEmbedding::load(
                &l,
                projection_dim()?,
                time_embed_dim,
                Activation::Silu,
                None,
                None,
                None,
            )?)),
            (Some("simple_projection"), _) => Some(ClassEmbedding::Linear(Linear::load(
                &l,
                projection_dim()?,
                time_embed_dim,
                true,
            )?)),
            (Some(other), _) => return Err(unsupported(source, "class_embed_type", other)),
        },
    )
}
