//! diffusers' `UNet2DModel`: the unconditional (or class-conditional) pixel
//! UNet of DDPM, DDIM and their relatives (`google/ddpm-cifar10-32`,
//! `google/ddpm-cat-256`, ...).

use crate::config::{FieldCheck, ModelConfig, read_config, unsupported};
use crate::embeddings::{TimestepEmbedding, Timesteps};
use crate::error::{ModelError, Result};
use crate::load::{Init, Loader, Precision};
use crate::mid_block::{MidBlockConfig, UNetMidBlock2D};
use crate::nn::{Activation, Conv2d, GroupNorm, to_dtype};
use crate::resnet::{ResnetConfig, TimeEmbeddingNorm};
use crate::unet_2d_blocks::{
    AttnDownBlock2D, AttnUpBlock2D, BlockConfig, DownBlock, DownBlock2D, UpBlock, UpBlock2D,
};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An int, or one value per block (`sample_size`, `layers_per_block`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One value each (tried first, so that a list is never taken for a
    /// single nested value).
    Many(Vec<T>),
    /// One value for all.
    One(T),
}

impl<T: Clone> OneOrMany<T> {
    /// The value for entry `i` (the single value, or the `i`-th).
    pub fn get(&self, i: usize) -> Option<T> {
        match self {
            OneOrMany::One(v) => Some(v.clone()),
            OneOrMany::Many(v) => v.get(i).cloned(),
        }
    }

    /// `n` values, or an error naming `field` when a list has another length.
    pub fn expand(&self, n: usize, source: &str, field: &str) -> Result<Vec<T>> {
        match self {
            OneOrMany::One(v) => Ok(vec![v.clone(); n]),
            OneOrMany::Many(v) if v.len() == n => Ok(v.clone()),
            OneOrMany::Many(v) => Err(ModelError::config(
                source,
                field,
                format!("has {} entries, expected one per block ({n})", v.len()),
            )),
        }
    }
}

/// `config.json` of a `UNet2DModel` (diffusers' field names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConfig {
    /// Image size the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<OneOrMany<usize>>,
    /// Input channels.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Output channels.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [-1, 1] first.
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub center_input_sample: bool,
    /// `"positional"` (sinusoidal) is supported; `"fourier"` and `"learned"` are not.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default `4 · block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Frequency shift of the sinusoidal embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// cos before sin.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// `DownBlock2D` / `AttnDownBlock2D` per resolution.
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    /// `"UNetMidBlock2D"` or null.
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` / `AttnUpBlock2D` per resolution (deepest first).
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    /// Channels per resolution.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Output divisor of the middle block's resnets and attention.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Padding of the downsampling convs (0: pad right/bottom by one first).
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// `"conv"` (`"resnet"` is not supported).
    #[serde(default = "conv")]
    pub downsample_type: String,
    /// `"conv"` (`"resnet"` is not supported).
    #[serde(default = "conv")]
    pub upsample_type: String,
    /// Dropout (inference ignores it).
    #[serde(default)]
    pub dropout: f64,
    /// Resnet activation.
    #[serde(default)]
    pub act_fn: Activation,
    /// Width of one attention head (null: one head over all channels).
    #[serde(default = "eight")]
    pub attention_head_dim: Option<usize>,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// GroupNorm groups of the middle block's attention (null: `norm_num_groups`,
    /// or none with `scale_shift`).
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    #[serde(default = "eps_1e5")]
    pub norm_eps: f64,
    /// `"default"` or `"scale_shift"`.
    #[serde(default)]
    pub resnet_time_scale_shift: TimeEmbeddingNorm,
    /// Attention in the middle block.
    #[serde(default = "yes")]
    pub add_attention: bool,
    /// null (with `num_class_embeds`: an `nn.Embedding`), `"timestep"` or `"identity"`.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Number of classes of the class embedding.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// For `time_embedding_type="learned"` (unsupported).
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
}

/// Refuses what the model cannot be built or run with, naming the field.
impl ModelConfig for UNet2DConfig {
    fn validate(&self, source: &str) -> Result<()> {
        let cfg = self;
        let check = FieldCheck::new(source);
        let channels = &cfg.block_out_channels;
        check.levels("block_out_channels", channels)?;
        // The timestep embedding is `block_out_channels[0]` wide.
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
        if cfg.time_embedding_type != "positional" {
            return Err(unsupported(
                source,
                "time_embedding_type",
                &cfg.time_embedding_type,
            ));
        }
        for (field, value) in [
            ("downsample_type", &cfg.downsample_type),
            ("upsample_type", &cfg.upsample_type),
        ] {
            if value != "conv" {
                return Err(unsupported(source, field, value));
            }
        }
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            if !matches!(strip_unet_res(kind), "DownBlock2D" | "AttnDownBlock2D") {
                return Err(unsupported(source, &format!("down_block_types[{i}]"), kind));
            }
        }
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            if !matches!(strip_unet_res(kind), "UpBlock2D" | "AttnUpBlock2D") {
                return Err(unsupported(source, &format!("up_block_types[{i}]"), kind));
            }
        }
        if let Some(kind) = cfg.mid_block_type.as_deref()
            && kind != "UNetMidBlock2D"
        {
            return Err(unsupported(source, "mid_block_type", kind));
        }
        match (cfg.class_embed_type.as_deref(), cfg.num_class_embeds) {
            (None | Some("timestep" | "identity"), _) => {}
            (Some(other), _) => return Err(unsupported(source, "class_embed_type", other)),
        }

        check.width("in_channels", cfg.in_channels)?;
        check.width("out_channels", cfg.out_channels)?;
        check.layers("layers_per_block", cfg.layers_per_block)?;
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
        for (i, c) in channels.iter().enumerate() {
            check.divides(
                &format!("block_out_channels[{i}]"),
                *c,
                "norm_num_groups",
                cfg.norm_num_groups,
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
            ("num_class_embeds", cfg.num_class_embeds),
        ] {
            if let Some(v) = v {
                check.width(field, v)?;
            }
        }
        // `attention_head_dim` is the width of one head here (diffusers
        // splits each attention block's channels into `channels / dim` heads).
        let c_last = channels[n - 1];
        let mid_attention = cfg.mid_block_type.is_some() && cfg.add_attention;
        for (i, c) in channels.iter().enumerate() {
            let attention = strip_unet_res(&cfg.down_block_types[i]) == "AttnDownBlock2D"
                || strip_unet_res(&cfg.up_block_types[n - 1 - i]) == "AttnUpBlock2D"
                || (i == n - 1 && mid_attention);
            if let (true, Some(dim)) = (attention, cfg.attention_head_dim) {
                check.divides(
                    &format!("block_out_channels[{i}]"),
                    *c,
                    "attention_head_dim",
                    dim,
                )?;
            }
        }
        if let (Some(groups), true) = (cfg.attn_norm_num_groups, mid_attention) {
            check.divides(
                &format!("block_out_channels[{}]", n - 1),
                c_last,
                "attn_norm_num_groups",
                groups,
            )?;
        }
        Ok(())
    }
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn eight() -> Option<usize> {
    Some(8)
}
fn thirty_two() -> usize {
    32
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
fn positional() -> String {
    "positional".into()
}
fn conv() -> String {
    "conv".into()
}
fn default_down_blocks() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up_blocks() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn default_block_out_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}

/// The class embedding of the UNets: how class labels join the time embedding.
#[derive(Module, Debug)]
pub enum ClassEmbedding<B: Backend> {
    /// `nn.Embedding(num_class_embeds, time_embed_dim)`: labels are class ids.
    Table(Param<Tensor<B, 2>>),
    /// `"timestep"`: labels are embedded sinusoidally, then by this MLP.
    Timestep(TimestepEmbedding<B>),
    /// `"projection"`: label vectors go through this MLP.
    Projection(TimestepEmbedding<B>),
    /// `"simple_projection"`: label vectors go through this Linear.
    Linear(crate::nn::Linear<B>),
    /// `"identity"`: labels are embeddings already (of this width).
    Identity(usize),
}

/// Class labels for [`ClassEmbedding`].
#[derive(Debug, Clone)]
pub enum ClassLabels<B: Backend> {
    /// `[N]`: class ids (embedding table) or values to embed like timesteps.
    Values(Tensor<B, 1>),
    /// `[N, D]`: vectors (`identity`, `projection`, `simple_projection`).
    Vectors(Tensor<B, 2>),
}

impl<B: Backend> ClassEmbedding<B> {
    /// The embedding `[N, time_embed_dim]` of `labels`, `time_proj` embedding
    /// the `"timestep"` kind's values; errors name `class_labels`.
    pub(crate) fn forward(
        &self,
        labels: ClassLabels<B>,
        time_proj: &Timesteps,
        batch: usize,
        dtype: DType,
    ) -> Result<Tensor<B, 2>> {
        let bad = |want: &str| ModelError::input("class_labels", format!("expected {want}"));
        let emb = match (self, labels) {
            (ClassEmbedding::Table(table), ClassLabels::Values(ids)) => {
                let classes = table.dims()[0];
                let values = crate::testing::values(ids.clone());
                if let Some(v) = values
                    .iter()
                    .find(|v| v.fract() != 0.0 || **v < 0.0 || **v as usize >= classes)
                {
                    return Err(ModelError::input(
                        "class_labels",
                        format!("{v} is not a class id below {classes}"),
                    ));
                }
                table.val().select(0, ids.int())
            }
            (ClassEmbedding::Timestep(mlp), ClassLabels::Values(v)) => {
                mlp.forward(to_dtype(time_proj.forward(v), dtype), None)
            }
            (ClassEmbedding::Projection(mlp), ClassLabels::Vectors(v)) => {
                mlp.forward(to_dtype(v, dtype), None)
            }
            (ClassEmbedding::Linear(linear), ClassLabels::Vectors(v)) => {
                linear.forward(to_dtype(v, dtype))
            }
            (ClassEmbedding::Identity(_), ClassLabels::Vectors(v)) => to_dtype(v, dtype),
            (ClassEmbedding::Table(_) | ClassEmbedding::Timestep(_), _) => {
                return Err(bad("a [N] tensor of class values"));
            }
            (_, _) => return Err(bad("a [N, D] tensor of class vectors")),
        };
        if emb.dims()[0] != batch {
            return Err(ModelError::input(
                "class_labels",
                format!("{} labels for a batch of {batch}", emb.dims()[0]),
            ));
        }
        Ok(emb)
    }
}

/// Validates `timesteps` (`[N]` or `[1]`) and broadcasts it to the batch.
pub(crate) fn batch_timesteps<B: Backend>(
    timesteps: Tensor<B, 1>,
    batch: usize,
) -> Result<Tensor<B, 1>> {
    match timesteps.dims()[0] {
        n if n == batch => Ok(timesteps),
        1 => Ok(timesteps.expand([batch])),
        n => Err(ModelError::input(
            "timesteps",
            format!("{n} timesteps for a batch of {batch} (give {batch} or 1)"),
        )),
    }
}

/// Reads `config.json` and opens `diffusion_pytorch_model.safetensors` (or
/// its sharded index, or the `.bin` or its sharded index) in a diffusers
/// model folder.
pub(crate) fn open_model_dir<C>(dir: &Path) -> Result<(C, String, diffusion_hub::weights::Weights)>
where
    C: ModelConfig,
{
    let config_path = dir.join("config.json");
    let config = read_config::<C>(&config_path)?.config;
    let weights = crate::config::open_weights(dir, crate::config::DIFFUSERS_WEIGHTS)?;
    Ok((config, config_path.display().to_string(), weights))
}

/// diffusers' `UNet2DModel`.
#[derive(Module, Debug)]
pub struct UNet2DModel<B: Backend> {
    /// Input conv.
    pub conv_in: Conv2d<B>,
    /// Sinusoidal timestep features.
    pub time_proj: Timesteps,
    /// Timestep MLP.
    pub time_embedding: TimestepEmbedding<B>,
    /// Class conditioning.
    pub class_embedding: Option<ClassEmbedding<B>>,
    /// Down path.
    pub down_blocks: Vec<DownBlock<B>>,
    /// Middle block.
    pub mid_block: Option<UNetMidBlock2D<B>>,
    /// Up path.
    pub up_blocks: Vec<UpBlock<B>>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output conv.
    pub conv_out: Conv2d<B>,
    /// Input channels.
    pub in_channels: usize,
    /// `2x - 1` on the input.
    pub center_input_sample: bool,
}

impl<B: Backend> UNet2DModel<B> {
    /// Loads a diffusers folder (`config.json` + weights), strictly.
    pub fn from_dir(dir: &Path, device: &B::Device, precision: Precision) -> Result<Self> {
        let (config, source, weights) = open_model_dir::<UNet2DConfig>(dir)?;
        let loader = Loader::new(&weights, device, precision);
        let model = Self::load_named(&loader, &config, &source)?;
        loader.finish(&[])?;
        Ok(model)
    }

    /// Builds the model from `loader` (call `loader.finish` afterwards for strictness).
    pub fn load(loader: &Loader<B>, config: &UNet2DConfig) -> Result<Self> {
        Self::load_named(loader, config, "UNet2DModel config")
    }

    fn load_named(loader: &Loader<B>, cfg: &UNet2DConfig, source: &str) -> Result<Self> {
        cfg.validate(source)?;
        let channels = &cfg.block_out_channels;
        let n = channels.len();
        let c0 = channels[0];
        let time_embed_dim = cfg.time_embedding_dim.unwrap_or(4 * c0);
        let time_proj = Timesteps::new(c0, cfg.flip_sin_to_cos, cfg.freq_shift);
        let time_embedding = TimestepEmbedding::load(
            &loader.pp("time_embedding"),
            c0,
            time_embed_dim,
            Activation::Silu,
            None,
            None,
            None,
        )?;
        let class_embedding = match (cfg.class_embed_type.as_deref(), cfg.num_class_embeds) {
            (None, Some(classes)) => Some(ClassEmbedding::Table(loader.param(
                "class_embedding.weight",
                [classes, time_embed_dim],
                Init::Normal(1.0),
            )?)),
            (Some("timestep"), _) => Some(ClassEmbedding::Timestep(TimestepEmbedding::load(
                &loader.pp("class_embedding"),
                c0,
                time_embed_dim,
                Activation::Silu,
                None,
                None,
                None,
            )?)),
            (Some("identity"), _) => Some(ClassEmbedding::Identity(time_embed_dim)),
            (None, None) => None,
            (Some(other), _) => return Err(unsupported(source, "class_embed_type", other)),
        };

        let block = |i: usize, num_layers: usize, in_ch: usize, out_ch: usize| BlockConfig {
            num_layers,
            in_channels: in_ch,
            out_channels: out_ch,
            prev_output_channel: 0,
            temb_channels: time_embed_dim,
            resnet_eps: cfg.norm_eps,
            resnet_act: cfg.act_fn,
            resnet_groups: cfg.norm_num_groups,
            time_embedding_norm: cfg.resnet_time_scale_shift,
            output_scale_factor: 1.0,
            add_sample: i + 1 < n,
            downsample_padding: cfg.downsample_padding,
            attention_head_dim: cfg.attention_head_dim.unwrap_or(out_ch),
            cross: None,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = c0;
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = channels[i];
            let bc = block(i, cfg.layers_per_block, in_ch, out_ch);
            let l = loader.pp("down_blocks").pp(i);
            let field = format!("down_block_types[{i}]");
            down_blocks.push(match strip_unet_res(kind) {
                "DownBlock2D" => DownBlock::Plain(DownBlock2D::load(&l, &bc)?),
                "AttnDownBlock2D" => DownBlock::Attn(AttnDownBlock2D::load(&l, &bc)?),
                other => return Err(unsupported(source, &field, other)),
            });
        }

        let mid_block = match cfg.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2D") => {
                let c = channels[n - 1];
                let mut resnet = ResnetConfig::new(c, c, Some(time_embed_dim));
                resnet.groups = cfg.norm_num_groups;
                resnet.eps = cfg.norm_eps;
                resnet.act = cfg.act_fn;
                resnet.time_embedding_norm = cfg.resnet_time_scale_shift;
                resnet.output_scale_factor = cfg.mid_block_scale_factor;
                let mid_cfg = MidBlockConfig {
                    resnet,
                    num_layers: 1,
                    add_attention: cfg.add_attention,
                    attention_head_dim: Some(cfg.attention_head_dim.unwrap_or(c)),
                };
                let ml = loader.pp("mid_block");
                let mut mid = UNetMidBlock2D::load(&ml, &mid_cfg)?;
                // `attn_norm_num_groups` overrides the attention's GroupNorm
                // (which `scale_shift` otherwise leaves out); its weights have
                // the same shape whatever the group count.
                if let (Some(groups), true) = (cfg.attn_norm_num_groups, cfg.add_attention) {
                    for (j, attn) in mid.attentions.iter_mut().enumerate() {
                        attn.group_norm = Some(GroupNorm::load(
                            &ml.pp("attentions").pp(j).pp("group_norm"),
                            groups,
                            c,
                            cfg.norm_eps,
                        )?);
                    }
                }
                Some(mid)
            }
            Some(other) => return Err(unsupported(source, "mid_block_type", other)),
        };

        let mut up_blocks = Vec::with_capacity(n);
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut out_ch = reversed[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev = out_ch;
            out_ch = reversed[i];
            let in_ch = reversed[(i + 1).min(n - 1)];
            let mut bc = block(i, cfg.layers_per_block + 1, in_ch, out_ch);
            bc.prev_output_channel = prev;
            let l = loader.pp("up_blocks").pp(i);
            let field = format!("up_block_types[{i}]");
            up_blocks.push(match strip_unet_res(kind) {
                "UpBlock2D" => UpBlock::Plain(UpBlock2D::load(&l, &bc)?),
                "AttnUpBlock2D" => UpBlock::Attn(AttnUpBlock2D::load(&l, &bc)?),
                other => return Err(unsupported(source, &field, other)),
            });
        }

        Ok(UNet2DModel {
            conv_in: Conv2d::load(&loader.pp("conv_in"), cfg.in_channels, c0, 3, 1, 1, true)?,
            time_proj,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &loader.pp("conv_norm_out"),
                cfg.norm_num_groups,
                c0,
                cfg.norm_eps,
            )?,
            conv_out: Conv2d::load(&loader.pp("conv_out"), c0, cfg.out_channels, 3, 1, 1, true)?,
            in_channels: cfg.in_channels,
            center_input_sample: cfg.center_input_sample,
        })
    }

    /// Predicts the noise (or sample) for `sample` `[N, C, H, W]` at
    /// `timesteps` (`[N]`, or `[1]` for the whole batch); `class_labels` for
    /// class-conditional models.
    ///
    /// Each upsampler resizes to its skip state's size, so sizes that are not
    /// a multiple of the total downsampling work too (diffusers' UNet2DModel
    /// fails on them; for the others both agree).
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        class_labels: Option<ClassLabels<B>>,
    ) -> Result<Tensor<B, 4>> {
        let [batch, channels, _, _] = sample.dims();
        if channels != self.in_channels {
            return Err(ModelError::input(
                "sample",
                format!(
                    "has {channels} channels, the model takes {}",
                    self.in_channels
                ),
            ));
        }
        let dtype = sample.dtype();
        let sample = if self.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };
        let timesteps = batch_timesteps(timesteps, batch)?;
        let t_emb = to_dtype(self.time_proj.forward(timesteps), dtype);
        let mut emb = self.time_embedding.forward(t_emb, None);
        match (&self.class_embedding, class_labels) {
            (Some(class), Some(labels)) => {
                emb = emb + class.forward(labels, &self.time_proj, batch, dtype)?;
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

        let mut h = self.conv_in.forward(sample);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(h, &emb, None);
            h = out;
            skips.extend(states);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(h, Some(emb.clone()));
        }
        for block in &self.up_blocks {
            let n = block.num_resnets();
            let mut block_skips = skips.split_off(skips.len() - n);
            let size = skips.last().map(|s| {
                let [_, _, sh, sw] = s.dims();
                [sh, sw]
            });
            h = block.forward(h, &mut block_skips, &emb, None, size);
        }
        let h = self.conv_norm_out.forward_silu(h);
        Ok(self.conv_out.forward(h))
    }
}

/// diffusers strips a `UNetRes` prefix from block type names.
pub(crate) fn strip_unet_res(kind: &str) -> &str {
    kind.strip_prefix("UNetRes").unwrap_or(kind)
}
