//! The encoder half of the text-conditioned UNet: its embeddings (time,
//! class, SDXL's text/time), its down path and its middle block, built from a
//! [`UNet2DConditionConfig`] and run as diffusers runs them. Both
//! [`crate::unet_2d_condition::UNet2DConditionModel`] and
//! [`crate::controlnet::ControlNetModel`] (a trainable copy of this half, as
//! diffusers' `ControlNetModel.from_unet` makes it) are built from these parts,
//! so the two load the same keys and compute the same states.

use crate::config::unsupported;
use crate::embeddings::{TimestepEmbedding, Timesteps};
use crate::error::{ModelError, Result};
use crate::load::{Init, Loader};
use crate::mid_block::{MidBlockConfig, UNetMidBlock2D};
use crate::nn::{Activation, Linear, to_dtype};
use crate::resnet::ResnetConfig;
use crate::unet_2d::{ClassEmbedding, ClassLabels, OneOrMany, batch_timesteps, strip_unet_res};
use crate::unet_2d_blocks::{
    BlockConfig, CrossAttnConfig, CrossAttnDownBlock2D, DownBlock, DownBlock2D,
    UNetMidBlock2DCrossAttn,
};
use crate::unet_2d_condition::UNet2DConditionConfig;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

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
    /// ControlNet residuals added to the down-path states (one per state, in
    /// order; `[N, C, 1, 1]` ones, from a global-pool ControlNet, broadcast).
    pub down_block_additional_residuals: Option<Vec<Tensor<B, 4>>>,
    /// ControlNet residual added to the middle block's output.
    pub mid_block_additional_residual: Option<Tensor<B, 4>>,
    /// T2I-Adapter features added inside the down path: after the last
    /// resnet/attention pair of each cross-attention down block, after each
    /// plain down block (downsampler included), and one more after the middle
    /// block when its shape fits (SDXL's adapters), as diffusers'
    /// `down_intrablock_additional_residuals`.
    pub down_intrablock_additional_residuals: Option<Vec<Tensor<B, 4>>>,
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
            down_intrablock_additional_residuals: None,
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

/// The time embedding and what joins it: class labels, SDXL's pooled text and
/// size/crop ids; `[N, width]` for every resnet of the network.
#[derive(Module, Debug)]
pub struct ConditionEmbedding<B: Backend> {
    /// Sinusoidal timestep features.
    pub time_proj: Timesteps,
    /// Timestep MLP (with `cond_proj` for LCM).
    pub time_embedding: TimestepEmbedding<B>,
    /// Class conditioning.
    pub class_embedding: Option<ClassEmbedding<B>>,
    /// SDXL's text/time conditioning.
    pub add_embedding: Option<TextTimeEmbedding<B>>,
    /// Class embedding concatenated rather than added.
    pub class_embeddings_concat: bool,
    /// `time_embedding_act_fn`, applied to the sum.
    #[module(skip)]
    pub act: Option<Activation>,
    /// Width of the result (twice the time embedding's when concatenating).
    pub width: usize,
}

impl<B: Backend> ConditionEmbedding<B> {
    /// Builds the embeddings of `cfg` (keys `time_embedding.*`,
    /// `class_embedding.*`, `add_embedding.*`).
    pub fn load(loader: &Loader<B>, cfg: &UNet2DConditionConfig, source: &str) -> Result<Self> {
        let c0 = cfg.block_out_channels[0];
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
        Ok(ConditionEmbedding {
            time_proj,
            time_embedding,
            class_embedding,
            add_embedding,
            class_embeddings_concat: cfg.class_embeddings_concat,
            act: cfg.time_embedding_act_fn,
            width: if cfg.class_embeddings_concat {
                2 * time_embed_dim
            } else {
                time_embed_dim
            },
        })
    }

    /// The embedding `[batch, width]` in `dtype` of `timesteps` (`[batch]` or
    /// `[1]`) and the conditions the model takes; errors name the input.
    pub fn forward(
        &self,
        timesteps: Tensor<B, 1>,
        batch: usize,
        dtype: DType,
        conditions: &UNetConditions<B>,
    ) -> Result<Tensor<B, 2>> {
        let timesteps = batch_timesteps(timesteps, batch)?;
        let t_emb = to_dtype(self.time_proj.forward(timesteps), dtype);
        let timestep_cond = match (&self.time_embedding.cond_proj, &conditions.timestep_cond) {
            (Some(proj), Some(c)) => {
                let want = proj.weight.dims()[0];
                if c.dims() != [batch, want] {
                    return Err(ModelError::input(
                        "timestep_cond",
                        format!("has shape {:?}, expected [{batch}, {want}]", c.dims()),
                    ));
                }
                Some(to_dtype(c.clone(), dtype))
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
        match (&self.class_embedding, &conditions.class_labels) {
            (Some(class), Some(labels)) => {
                let class_emb = class.forward(labels.clone(), &self.time_proj, batch, dtype)?;
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
            let text = conditions.text_embeds.clone().ok_or_else(|| {
                ModelError::input(
                    "text_embeds",
                    "required by addition_embed_type \"text_time\"",
                )
            })?;
            let ids = conditions.time_ids.clone().ok_or_else(|| {
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
        if let Some(act) = self.act {
            emb = act.forward(emb);
        }
        Ok(emb)
    }
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

impl<B: Backend> ConditionMidBlock<B> {
    /// Runs the block on `h` with the embedding and the text states.
    pub fn forward(
        &self,
        h: Tensor<B, 4>,
        emb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        match self {
            ConditionMidBlock::CrossAttn(mid) => mid.forward(h, emb, context),
            ConditionMidBlock::Plain(mid) => mid.forward(h, Some(emb.clone())),
        }
    }
}

/// The per-block lists of a config, expanded to one entry per block, from
/// which every block's settings are made.
#[derive(Debug, Clone)]
pub struct BlockPlan<'c> {
    cfg: &'c UNet2DConditionConfig,
    source: &'c str,
    /// GroupNorm groups.
    pub groups: usize,
    /// Head count per block.
    pub heads: Vec<usize>,
    /// Text width per block.
    pub cross_dims: Vec<usize>,
    /// Resnets per down block.
    pub layers: Vec<usize>,
    /// `only_cross_attention` per block.
    pub only_cross: Vec<bool>,
    /// Transformer depth per down block (one count, or one per resnet).
    pub transformer_layers: Vec<OneOrMany<usize>>,
    /// Width of the embedding every resnet takes.
    pub temb: usize,
}

impl<'c> BlockPlan<'c> {
    /// Expands `cfg`'s lists (a wrong length is an error naming the field).
    pub fn new(cfg: &'c UNet2DConditionConfig, source: &'c str, temb: usize) -> Result<Self> {
        let n = cfg.block_out_channels.len();
        Ok(BlockPlan {
            cfg,
            source,
            groups: cfg
                .norm_num_groups
                .ok_or_else(|| unsupported(source, "norm_num_groups", "null"))?,
            heads: cfg
                .attention_head_dim
                .expand(n, source, "attention_head_dim")?,
            cross_dims: cfg
                .cross_attention_dim
                .expand(n, source, "cross_attention_dim")?,
            layers: cfg.layers_per_block.expand(n, source, "layers_per_block")?,
            only_cross: cfg
                .only_cross_attention
                .expand(n, source, "only_cross_attention")?,
            transformer_layers: cfg.transformer_layers_per_block.expand(
                n,
                source,
                "transformer_layers_per_block",
            )?,
            temb,
        })
    }

    /// The settings of block `i` (heads of resolution `i`) with `num_layers`
    /// resnets from `in_ch` to `out_ch` channels, without attention.
    pub fn block(&self, i: usize, num_layers: usize, in_ch: usize, out_ch: usize) -> BlockConfig {
        let cfg = self.cfg;
        BlockConfig {
            num_layers,
            in_channels: in_ch,
            out_channels: out_ch,
            prev_output_channel: 0,
            temb_channels: self.temb,
            resnet_eps: cfg.norm_eps,
            resnet_act: cfg.act_fn,
            resnet_groups: self.groups,
            time_embedding_norm: cfg.resnet_time_scale_shift,
            output_scale_factor: 1.0,
            add_sample: i + 1 < cfg.block_out_channels.len(),
            downsample_padding: cfg.downsample_padding,
            attention_head_dim: self.heads[i],
            cross: None,
        }
    }

    /// The cross-attention settings of resolution `r`, with the transformer
    /// depths `per_layer` over `num_layers` resnets.
    pub fn cross(
        &self,
        r: usize,
        per_layer: &OneOrMany<usize>,
        num_layers: usize,
        only_cross: bool,
    ) -> Result<CrossAttnConfig> {
        Ok(CrossAttnConfig {
            num_attention_heads: self.heads[r],
            cross_attention_dim: self.cross_dims[r],
            transformer_layers: per_layer.expand(
                num_layers,
                self.source,
                "transformer_layers_per_block",
            )?,
            use_linear_projection: self.cfg.use_linear_projection,
            only_cross_attention: only_cross,
            upcast_attention: self.cfg.upcast_attention,
        })
    }

    /// The down blocks (keys `down_blocks.{i}.*`) and the text width of each
    /// one with attention.
    pub fn load_down_blocks<B: Backend>(
        &self,
        loader: &Loader<B>,
    ) -> Result<(Vec<DownBlock<B>>, Vec<usize>)> {
        let channels = &self.cfg.block_out_channels;
        let mut attention_dims = Vec::new();
        let mut blocks = Vec::with_capacity(channels.len());
        let mut out_ch = channels[0];
        for (i, kind) in self.cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = channels[i];
            let mut bc = self.block(i, self.layers[i], in_ch, out_ch);
            let l = loader.pp("down_blocks").pp(i);
            blocks.push(match strip_unet_res(kind) {
                "DownBlock2D" => DownBlock::Plain(DownBlock2D::load(&l, &bc)?),
                "CrossAttnDownBlock2D" => {
                    bc.cross = Some(self.cross(
                        i,
                        &self.transformer_layers[i],
                        self.layers[i],
                        self.only_cross[i],
                    )?);
                    attention_dims.push(self.cross_dims[i]);
                    DownBlock::CrossAttn(CrossAttnDownBlock2D::load(&l, &bc)?)
                }
                other => {
                    return Err(unsupported(
                        self.source,
                        &format!("down_block_types[{i}]"),
                        other,
                    ));
                }
            });
        }
        Ok((blocks, attention_dims))
    }

    /// The middle block (keys `mid_block.*`) and its text width when it attends.
    pub fn load_mid_block<B: Backend>(
        &self,
        loader: &Loader<B>,
    ) -> Result<(Option<ConditionMidBlock<B>>, Option<usize>)> {
        let cfg = self.cfg;
        let n = cfg.block_out_channels.len();
        let c_last = cfg.block_out_channels[n - 1];
        Ok(match cfg.mid_block_type.as_deref() {
            None => (None, None),
            Some("UNetMidBlock2DCrossAttn") => {
                let mut bc = self.block(n - 1, 1, c_last, c_last);
                bc.output_scale_factor = cfg.mid_block_scale_factor;
                // The middle block has one transformer: a per-layer list gives its first entry.
                let mid_layers = self.transformer_layers[n - 1].get(0).unwrap_or(1);
                bc.cross = Some(self.cross(n - 1, &OneOrMany::One(mid_layers), 1, false)?);
                (
                    Some(ConditionMidBlock::CrossAttn(UNetMidBlock2DCrossAttn::load(
                        &loader.pp("mid_block"),
                        &bc,
                    )?)),
                    Some(self.cross_dims[n - 1]),
                )
            }
            Some("UNetMidBlock2D") => {
                let mut resnet = ResnetConfig::new(c_last, c_last, Some(self.temb));
                resnet.groups = self.groups;
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
                (
                    Some(ConditionMidBlock::Plain(UNetMidBlock2D::load(
                        &loader.pp("mid_block"),
                        &mid,
                    )?)),
                    None,
                )
            }
            Some(other) => return Err(unsupported(self.source, "mid_block_type", other)),
        })
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
