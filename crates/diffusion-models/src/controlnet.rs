//! diffusers' `ControlNetModel`: a trainable copy of the text-conditioned
//! UNet's encoder half (embeddings, down path, middle block) whose input is
//! the noisy latents plus an embedded control image (edges, depth, pose …),
//! and whose outputs, through one zero-initialised 1×1 convolution per state,
//! are added to the UNet's skip connections and middle output
//! ([`UNetConditions::down_block_additional_residuals`]).
//!
//! SD 1.x/2.x and SDXL ControlNets load from their Hub folders as they are.
//! Not here yet: the "union" ControlNets (`ControlNetUnionModel`) and
//! ControlNet-XS; their configs are refused by class name in the pipelines.

use crate::config::{FieldCheck, ModelConfig, unsupported};
use crate::error::{ModelError, Result};
use crate::load::{Init, Loader, Precision, StoredTensor, TensorMap, WeightSource, seeded_values};
use crate::nn::{Activation, Conv2d, to_dtype};
use crate::resnet::TimeEmbeddingNorm;
use crate::unet_2d::{OneOrMany, open_model_dir, strip_unet_res};
use crate::unet_2d_blocks::DownBlock;
use crate::unet_2d_condition::UNet2DConditionConfig;
use crate::unet_encoder::{BlockPlan, ConditionEmbedding, ConditionMidBlock, UNetConditions};
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `config.json` of a `ControlNetModel` (diffusers' field names and defaults).
/// As in the UNet's config, `attention_head_dim` holds the head count when
/// `num_attention_heads` is null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlNetConfig {
    /// Latent channels of the sample.
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Channels of the control image (3: RGB).
    #[serde(default = "three")]
    pub conditioning_channels: usize,
    /// cos before sin in the sinusoidal embeddings.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the sinusoidal embeddings.
    #[serde(default)]
    pub freq_shift: f64,
    /// `DownBlock2D` / `CrossAttnDownBlock2D` per resolution.
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    /// `"UNetMidBlock2DCrossAttn"` or `"UNetMidBlock2D"`.
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    /// `attn1` attends to the text too (per block, or for all).
    #[serde(default = "no_one")]
    pub only_cross_attention: OneOrMany<bool>,
    /// Channels per resolution.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block.
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Padding of the downsampling convs.
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// Output divisor of the middle block's resnets.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Activation of the resnets and the time MLP.
    #[serde(default)]
    pub act_fn: Activation,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    #[serde(default = "eps_1e5")]
    pub norm_eps: f64,
    /// Width of the text states.
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: usize,
    /// Transformer blocks per attention (for all blocks, or per block).
    #[serde(default = "one_layer")]
    pub transformer_layers_per_block: OneOrMany<usize>,
    /// Unsupported: must be null.
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Unsupported: must be null.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Heads per block when `num_attention_heads` is null.
    #[serde(default = "eight_one")]
    pub attention_head_dim: OneOrMany<usize>,
    /// Refused when set, as in the UNet's config.
    #[serde(default)]
    pub num_attention_heads: Option<OneOrMany<usize>>,
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
    /// Input width of the `"text_time"` embedding.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// `"rgb"`, or `"bgr"` (the control image's channels are reversed first).
    #[serde(default = "rgb")]
    pub controlnet_conditioning_channel_order: String,
    /// Channels of the control image's embedding convs: one stride-2
    /// convolution between consecutive entries, so `2^(len − 1)` must be the
    /// VAE's scale factor (8 for every released model).
    #[serde(default = "default_embedding_channels")]
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// The outputs are spatial means (the "shuffle" ControlNets); implies
    /// guess mode in the pipelines.
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub global_pool_conditions: bool,
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
fn two() -> usize {
    2
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
fn eight_one() -> OneOrMany<usize> {
    OneOrMany::One(8)
}
fn one_layer() -> OneOrMany<usize> {
    OneOrMany::One(1)
}
fn default_cross_attention_dim() -> usize {
    1280
}
fn rgb() -> String {
    "rgb".into()
}
fn default_embedding_channels() -> Vec<usize> {
    vec![16, 32, 96, 256]
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
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}

impl ControlNetConfig {
    /// The UNet config whose encoder half this ControlNet copies: the same
    /// fields, with the up path mirrored (never built). Its validation and
    /// block plan are the UNet's.
    pub fn encoder_config(&self) -> UNet2DConditionConfig {
        let mut value = serde_json::to_value(self).expect("a config serialises");
        let up: Vec<String> = self
            .down_block_types
            .iter()
            .rev()
            .map(|d| match strip_unet_res(d) {
                "CrossAttnDownBlock2D" => "CrossAttnUpBlock2D".to_string(),
                "DownBlock2D" => "UpBlock2D".to_string(),
                // Unknown kinds stay as they are: validation names them.
                other => other.to_string(),
            })
            .collect();
        let map = value.as_object_mut().expect("a config is an object");
        map.insert("up_block_types".into(), serde_json::json!(up));
        map.insert(
            "transformer_layers_per_block".into(),
            serde_json::to_value(&self.transformer_layers_per_block).expect("serialises"),
        );
        serde_json::from_value(value).expect("a ControlNet config is a UNet config's subset")
    }

    /// The config diffusers' `ControlNetModel.from_unet` gives for `unet`,
    /// with its three ControlNet-only settings.
    pub fn from_unet(
        unet: &UNet2DConditionConfig,
        channel_order: &str,
        conditioning_embedding_out_channels: Vec<usize>,
        conditioning_channels: usize,
    ) -> Result<Self> {
        let source = "UNet2DConditionModel config";
        let layers = match &unet.layers_per_block {
            OneOrMany::One(n) => *n,
            OneOrMany::Many(_) => {
                return Err(unsupported(
                    source,
                    "layers_per_block",
                    "a per-block list (a ControlNet takes one count)",
                ));
            }
        };
        let cross = match &unet.cross_attention_dim {
            OneOrMany::One(n) => *n,
            OneOrMany::Many(_) => {
                return Err(unsupported(
                    source,
                    "cross_attention_dim",
                    "a per-block list (a ControlNet takes one width)",
                ));
            }
        };
        let transformer_layers = match &unet.transformer_layers_per_block {
            OneOrMany::One(OneOrMany::One(n)) => OneOrMany::One(*n),
            OneOrMany::Many(v) => OneOrMany::Many(
                v.iter()
                    .map(|t| match t {
                        OneOrMany::One(n) => Ok(*n),
                        OneOrMany::Many(_) => Err(unsupported(
                            source,
                            "transformer_layers_per_block",
                            "per-layer lists",
                        )),
                    })
                    .collect::<Result<_>>()?,
            ),
            OneOrMany::One(OneOrMany::Many(_)) => {
                return Err(unsupported(
                    source,
                    "transformer_layers_per_block",
                    "per-layer lists",
                ));
            }
        };
        let config = ControlNetConfig {
            in_channels: unet.in_channels,
            conditioning_channels,
            flip_sin_to_cos: unet.flip_sin_to_cos,
            freq_shift: unet.freq_shift,
            down_block_types: unet.down_block_types.clone(),
            mid_block_type: unet.mid_block_type.clone(),
            only_cross_attention: unet.only_cross_attention.clone(),
            block_out_channels: unet.block_out_channels.clone(),
            layers_per_block: layers,
            downsample_padding: unet.downsample_padding,
            mid_block_scale_factor: unet.mid_block_scale_factor,
            act_fn: unet.act_fn,
            norm_num_groups: unet.norm_num_groups,
            norm_eps: unet.norm_eps,
            cross_attention_dim: cross,
            transformer_layers_per_block: transformer_layers,
            encoder_hid_dim: unet.encoder_hid_dim,
            encoder_hid_dim_type: unet.encoder_hid_dim_type.clone(),
            attention_head_dim: unet.attention_head_dim.clone(),
            num_attention_heads: unet.num_attention_heads.clone(),
            use_linear_projection: unet.use_linear_projection,
            class_embed_type: unet.class_embed_type.clone(),
            addition_embed_type: unet.addition_embed_type.clone(),
            addition_time_embed_dim: unet.addition_time_embed_dim,
            num_class_embeds: unet.num_class_embeds,
            upcast_attention: unet.upcast_attention,
            resnet_time_scale_shift: unet.resnet_time_scale_shift,
            projection_class_embeddings_input_dim: unet.projection_class_embeddings_input_dim,
            controlnet_conditioning_channel_order: channel_order.to_string(),
            conditioning_embedding_out_channels,
            global_pool_conditions: false,
            addition_embed_type_num_heads: unet.addition_embed_type_num_heads,
        };
        config.validate("ControlNetModel config (from the UNet's)")?;
        Ok(config)
    }

    /// The spatial factor between the control image and the latents.
    pub fn conditioning_scale_factor(&self) -> usize {
        1 << self
            .conditioning_embedding_out_channels
            .len()
            .saturating_sub(1)
    }
}

/// Refuses what the model cannot be built or run with, naming the field: the
/// UNet config's checks on the shared fields, then the ControlNet's own.
impl ModelConfig for ControlNetConfig {
    fn validate(&self, source: &str) -> Result<()> {
        let check = FieldCheck::new(source);
        check.levels("block_out_channels", &self.block_out_channels)?;
        if self.down_block_types.len() != self.block_out_channels.len() {
            return Err(check.error(
                "down_block_types",
                format!(
                    "has {} entries, block_out_channels has {}",
                    self.down_block_types.len(),
                    self.block_out_channels.len()
                ),
            ));
        }
        if self.mid_block_type.is_none() {
            // diffusers: "unknown mid_block_type: None".
            return Err(unsupported(source, "mid_block_type", "null"));
        }
        if self.addition_embed_type.as_deref() == Some("text") {
            return Err(unsupported(source, "addition_embed_type", "text"));
        }
        self.encoder_config().validate(source)?;
        check.width("conditioning_channels", self.conditioning_channels)?;
        let emb = &self.conditioning_embedding_out_channels;
        if emb.is_empty() {
            return Err(check.error(
                "conditioning_embedding_out_channels",
                "is empty (at least one convolution)",
            ));
        }
        // One stride-2 conv per step: more than 2^16 would be no image at all.
        if emb.len() > 17 {
            return Err(check.error(
                "conditioning_embedding_out_channels",
                format!("has {} entries (at most 17)", emb.len()),
            ));
        }
        check.widths("conditioning_embedding_out_channels", emb)?;
        match self.controlnet_conditioning_channel_order.as_str() {
            "rgb" | "bgr" => {}
            other => {
                return Err(unsupported(
                    source,
                    "controlnet_conditioning_channel_order",
                    other,
                ));
            }
        }
        Ok(())
    }
}

/// The control image's embedding (`controlnet_cond_embedding`): a 3×3 conv,
/// pairs of (3×3, 3×3 stride 2) convs, all with SiLU, then a zero-initialised
/// 3×3 conv to the first block's width.
#[derive(Module, Debug)]
pub struct ControlNetConditioningEmbedding<B: Backend> {
    /// `conv_in`.
    pub conv_in: Conv2d<B>,
    /// `blocks.{k}`: same-size then stride-2 convs, alternating.
    pub blocks: Vec<Conv2d<B>>,
    /// `conv_out`.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> ControlNetConditioningEmbedding<B> {
    /// Loads the embedding from `channels` (the config's
    /// `conditioning_embedding_out_channels`) to `out_channels`.
    pub fn load(
        loader: &Loader<B>,
        conditioning_channels: usize,
        channels: &[usize],
        out_channels: usize,
    ) -> Result<Self> {
        let conv = |l: &Loader<B>, i, o, stride| Conv2d::load(l, i, o, 3, stride, 1, true);
        let mut blocks = Vec::new();
        for (k, pair) in channels.windows(2).enumerate() {
            let (c_in, c_out) = (pair[0], pair[1]);
            blocks.push(conv(&loader.pp("blocks").pp(2 * k), c_in, c_in, 1)?);
            blocks.push(conv(&loader.pp("blocks").pp(2 * k + 1), c_in, c_out, 2)?);
        }
        Ok(ControlNetConditioningEmbedding {
            conv_in: conv(&loader.pp("conv_in"), conditioning_channels, channels[0], 1)?,
            blocks,
            conv_out: conv(
                &loader.pp("conv_out"),
                channels[channels.len() - 1],
                out_channels,
                1,
            )?,
        })
    }

    /// The embedding of `image` `[N, C, H, W]`: `[N, out, H / 2^k, W / 2^k]`.
    pub fn forward(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let silu = Activation::Silu;
        let mut h = silu.forward(self.conv_in.forward(image));
        for block in &self.blocks {
            h = silu.forward(block.forward(h));
        }
        self.conv_out.forward(h)
    }
}

/// How a ControlNet's outputs are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResidualScale {
    /// `conditioning_scale` (the pipelines' `controlnet_conditioning_scale`
    /// times the guidance-window factor).
    pub conditioning_scale: f64,
    /// diffusers' guess mode: the states are weighted from 0.1 (the first)
    /// to 1.0 (the middle block's) on a log scale.
    pub guess_mode: bool,
}

/// What a ControlNet returns: one residual per UNet down-path state, and
/// one for the middle block's output.
#[derive(Debug, Clone)]
pub struct ControlNetOutput<B: Backend> {
    /// `down_block_res_samples`.
    pub down: Vec<Tensor<B, 4>>,
    /// `mid_block_res_sample`.
    pub mid: Tensor<B, 4>,
}

impl<B: Backend> ControlNetOutput<B> {
    /// The element-wise sum of two nets' outputs (diffusers'
    /// `MultiControlNetModel`), `self` first.
    pub fn sum(self, other: ControlNetOutput<B>) -> Self {
        ControlNetOutput {
            down: self
                .down
                .into_iter()
                .zip(other.down)
                .map(|(a, b)| a + b)
                .collect(),
            mid: self.mid + other.mid,
        }
    }
}

/// diffusers' `ControlNetModel`.
#[derive(Module, Debug)]
pub struct ControlNetModel<B: Backend> {
    /// Input conv (the UNet's).
    pub conv_in: Conv2d<B>,
    /// Time, class and SDXL text/time embeddings (the UNet's).
    pub embedding: ConditionEmbedding<B>,
    /// The control image's embedding.
    pub controlnet_cond_embedding: ControlNetConditioningEmbedding<B>,
    /// Down path (the UNet's).
    pub down_blocks: Vec<DownBlock<B>>,
    /// One zero-initialised 1×1 conv per down-path state.
    pub controlnet_down_blocks: Vec<Conv2d<B>>,
    /// Middle block (the UNet's).
    pub mid_block: ConditionMidBlock<B>,
    /// The zero conv of the middle block's output.
    pub controlnet_mid_block: Conv2d<B>,
    /// Latent channels taken.
    pub in_channels: usize,
    /// Control-image channels taken.
    pub conditioning_channels: usize,
    /// Spatial factor between control image and latents.
    pub conditioning_scale_factor: usize,
    /// Text widths the attentions take (deduplicated).
    pub cross_attention_dims: Vec<usize>,
    /// The control image's channels are reversed first.
    pub bgr: bool,
    /// Outputs are spatial means.
    pub global_pool_conditions: bool,
    /// The adapters on its layers ([`crate::adapter`]).
    #[module(skip)]
    pub adapters: crate::adapter::AdapterTable,
}

/// The UNet keys a ControlNet copies (diffusers' `from_unet`).
const FROM_UNET: [&str; 6] = [
    "conv_in.",
    "time_embedding.",
    "class_embedding.",
    "add_embedding.",
    "down_blocks.",
    "mid_block.",
];

/// A ControlNet's weights as `from_unet` makes them: the UNet's encoder
/// keys, and the ControlNet's own tensors (`own`).
struct FromUnet<'a> {
    unet: &'a dyn WeightSource,
    own: TensorMap,
}

impl FromUnet<'_> {
    fn copied(key: &str) -> bool {
        FROM_UNET.iter().any(|p| key.starts_with(p))
    }
}

impl WeightSource for FromUnet<'_> {
    fn name(&self) -> String {
        format!("{} (ControlNetModel.from_unet)", self.unet.name())
    }
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .unet
            .keys()
            .into_iter()
            .filter(|k| Self::copied(k))
            .collect();
        keys.extend(self.own.keys());
        keys
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        match self.own.shape(key) {
            Some(s) => Some(s),
            None if Self::copied(key) => self.unet.shape(key),
            None => None,
        }
    }
    fn dtype(&self, key: &str) -> Option<diffusion_hub::weights::Dtype> {
        match self.own.dtype(key) {
            Some(d) => Some(d),
            None if Self::copied(key) => self.unet.dtype(key),
            None => None,
        }
    }
    fn read(&self, key: &str) -> Result<StoredTensor> {
        if self.own.shape(key).is_some() {
            self.own.read(key)
        } else {
            self.unet.read(key)
        }
    }
}

impl<B: Backend> ControlNetModel<B> {
    /// diffusers' `ControlNetModel.from_unet(unet)`: `config` (from
    /// [`ControlNetConfig::from_unet`]) built with the UNet's encoder weights
    /// read from `unet_weights` (its conv_in, embeddings, down blocks and
    /// middle block, strictly: a missing or mis-shaped key is an error); the
    /// control-image embedding drawn as PyTorch initialises convolutions
    /// (uniform in ±1/√fan_in, from a generator keyed by `seed` and each
    /// key), its last conv and every zero convolution zero. A fresh net so
    /// made leaves the UNet's output unchanged, as diffusers'.
    pub fn from_unet(
        unet_weights: &dyn WeightSource,
        config: &ControlNetConfig,
        device: &B::Device,
        precision: Precision,
        seed: u64,
    ) -> Result<Self> {
        let source = "ControlNetModel config (from_unet)";
        config.validate(source)?;
        let mut own = TensorMap {
            name: "ControlNetModel.from_unet".into(),
            ..TensorMap::default()
        };
        let mut conv = |key: &str, out: usize, inp: usize, k: usize, zero: bool| {
            let fan_in = inp * k * k;
            for (name, shape) in [("weight", vec![out, inp, k, k]), ("bias", vec![out])] {
                let full = format!("{key}.{name}");
                let n = shape.iter().product();
                let values = if zero {
                    vec![0.0; n]
                } else {
                    seeded_values(seed, &full, n, Init::fan_in(fan_in))
                };
                own.insert_f32(full, shape, &values);
            }
        };
        let ch = &config.conditioning_embedding_out_channels;
        let c0 = config.block_out_channels[0];
        conv(
            "controlnet_cond_embedding.conv_in",
            ch[0],
            config.conditioning_channels,
            3,
            false,
        );
        for (k, pair) in ch.windows(2).enumerate() {
            let e = "controlnet_cond_embedding.blocks";
            conv(&format!("{e}.{}", 2 * k), pair[0], pair[0], 3, false);
            conv(&format!("{e}.{}", 2 * k + 1), pair[1], pair[0], 3, false);
        }
        conv(
            "controlnet_cond_embedding.conv_out",
            c0,
            ch[ch.len() - 1],
            3,
            true,
        );
        let n = config.block_out_channels.len();
        let mut zero = vec![c0];
        for (i, &c) in config.block_out_channels.iter().enumerate() {
            zero.extend(std::iter::repeat_n(
                c,
                config.layers_per_block + usize::from(i + 1 < n),
            ));
        }
        for (i, c) in zero.into_iter().enumerate() {
            conv(&format!("controlnet_down_blocks.{i}"), c, c, 1, true);
        }
        let last = config.block_out_channels[n - 1];
        conv("controlnet_mid_block", last, last, 1, true);
        let weights = FromUnet {
            unet: unet_weights,
            own,
        };
        let loader = Loader::new(&weights, device, precision);
        let model = Self::load_named(&loader, config, source)?;
        loader.finish(&[])?;
        Ok(model)
    }

    /// Loads a diffusers folder (`config.json` + weights), strictly.
    pub fn from_dir(dir: &Path, device: &B::Device, precision: Precision) -> Result<Self> {
        let (config, source, weights) = open_model_dir::<ControlNetConfig>(dir)?;
        let loader = Loader::new(&weights, device, precision);
        let model = Self::load_named(&loader, &config, &source)?;
        loader.finish(&[])?;
        Ok(model)
    }

    /// Builds the model from `loader` (call `loader.finish` afterwards for strictness).
    pub fn load(loader: &Loader<B>, config: &ControlNetConfig) -> Result<Self> {
        Self::load_named(loader, config, "ControlNetModel config")
    }

    fn load_named(loader: &Loader<B>, cfg: &ControlNetConfig, source: &str) -> Result<Self> {
        cfg.validate(source)?;
        let unet = cfg.encoder_config();
        let channels = &cfg.block_out_channels;
        let n = channels.len();
        let c0 = channels[0];
        let embedding = ConditionEmbedding::load(loader, &unet, source)?;
        let plan = BlockPlan::new(&unet, source, embedding.width)?;
        let (down_blocks, mut attention_dims) = plan.load_down_blocks(loader)?;
        let (mid_block, mid_dim) = plan.load_mid_block(loader)?;
        let mid_block = mid_block.expect("validated: a ControlNet has a middle block");
        attention_dims.extend(mid_dim);
        attention_dims.sort_unstable();
        attention_dims.dedup();

        // One zero conv per state the down path keeps: conv_in's output, each
        // resnet's, each downsampler's.
        let zero = |k: usize, c: usize| {
            Conv2d::load(
                &loader.pp("controlnet_down_blocks").pp(k),
                c,
                c,
                1,
                1,
                0,
                true,
            )
        };
        let mut controlnet_down_blocks = vec![zero(0, c0)?];
        for (i, &c) in channels.iter().enumerate() {
            let states = cfg.layers_per_block + usize::from(i + 1 < n);
            for _ in 0..states {
                controlnet_down_blocks.push(zero(controlnet_down_blocks.len(), c)?);
            }
        }
        let c_last = channels[n - 1];
        Ok(ControlNetModel {
            adapters: loader.adapters(),
            conv_in: Conv2d::load(&loader.pp("conv_in"), cfg.in_channels, c0, 3, 1, 1, true)?,
            embedding,
            controlnet_cond_embedding: ControlNetConditioningEmbedding::load(
                &loader.pp("controlnet_cond_embedding"),
                cfg.conditioning_channels,
                &cfg.conditioning_embedding_out_channels,
                c0,
            )?,
            down_blocks,
            controlnet_down_blocks,
            mid_block,
            controlnet_mid_block: Conv2d::load(
                &loader.pp("controlnet_mid_block"),
                c_last,
                c_last,
                1,
                1,
                0,
                true,
            )?,
            in_channels: cfg.in_channels,
            conditioning_channels: cfg.conditioning_channels,
            conditioning_scale_factor: cfg.conditioning_scale_factor(),
            cross_attention_dims: attention_dims,
            bgr: cfg.controlnet_conditioning_channel_order == "bgr",
            global_pool_conditions: cfg.global_pool_conditions,
        })
    }

    /// The residuals for `sample` `[N, C, h, w]` at `timesteps` (`[N]` or
    /// `[1]`) with the text states `[N, S, D]` and the control image
    /// `controlnet_cond` `[N, 3, h·f, w·f]` in `[0, 1]` (f: the
    /// [conditioning scale factor](ControlNetConfig::conditioning_scale_factor)),
    /// scaled by `scale`; `conditions` gives SDXL's `text_embeds`/`time_ids`
    /// and class labels (the residual fields are not read).
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        controlnet_cond: Tensor<B, 4>,
        scale: ResidualScale,
        conditions: &UNetConditions<B>,
    ) -> Result<ControlNetOutput<B>> {
        let [batch, channels, height, width] = sample.dims();
        if channels != self.in_channels {
            return Err(ModelError::input(
                "sample",
                format!(
                    "has {channels} channels, the ControlNet takes {}",
                    self.in_channels
                ),
            ));
        }
        let [cb, cc, ch, cw] = controlnet_cond.dims();
        let f = self.conditioning_scale_factor;
        if cb != batch || cc != self.conditioning_channels || ch != height * f || cw != width * f {
            return Err(ModelError::input(
                "controlnet_cond",
                format!(
                    "has shape {:?}; for latents {:?} the ControlNet takes [{batch}, {}, {}, {}]",
                    [cb, cc, ch, cw],
                    [batch, channels, height, width],
                    self.conditioning_channels,
                    height * f,
                    width * f
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
                format!("has width {ed}, the ControlNet's cross-attention takes {want}"),
            ));
        }
        let dtype = sample.dtype();
        let context = to_dtype(encoder_hidden_states, dtype);
        let cond = to_dtype(controlnet_cond, dtype);
        let cond = if self.bgr { cond.flip([1]) } else { cond };

        let emb = self
            .embedding
            .forward(timesteps, batch, dtype, conditions)?;
        let mut h = self.conv_in.forward(sample) + self.controlnet_cond_embedding.forward(cond);
        let mut states = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, s) = block.forward(h, &emb, Some(&context));
            h = out;
            states.extend(s);
        }
        let h = self.mid_block.forward(h, &emb, &context);

        let n = states.len();
        let scales: Vec<f64> = if scale.guess_mode && !self.global_pool_conditions {
            // torch.logspace(-1, 0, n + 1): 0.1 … 1.0, the last for the middle.
            (0..=n)
                .map(|i| 10f64.powf(-1.0 + i as f64 / n as f64) * scale.conditioning_scale)
                .collect()
        } else {
            vec![scale.conditioning_scale; n + 1]
        };
        let pool = |x: Tensor<B, 4>| {
            if self.global_pool_conditions {
                x.mean_dim(2).mean_dim(3)
            } else {
                x
            }
        };
        let down = states
            .into_iter()
            .zip(&self.controlnet_down_blocks)
            .zip(&scales)
            .map(|((s, conv), &k)| pool(conv.forward(s).mul_scalar(k as f32)))
            .collect();
        let mid = pool(
            self.controlnet_mid_block
                .forward(h)
                .mul_scalar(scales[n] as f32),
        );
        Ok(ControlNetOutput { down, mid })
    }
}
