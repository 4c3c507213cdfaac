//! Single-file checkpoints (the original LDM/SGM layouts of SD1.x, SD2.x, SDXL
//! base and refiner, as `.safetensors` or `.ckpt`) converted to a diffusers folder.
//!
//! The model type is read from the keys:
//! - SD1.x: `model.diffusion_model.*` with CLIP-L at `cond_stage_model.transformer.*`;
//! - SD2.x: OpenCLIP-H at `cond_stage_model.model.*`;
//! - SDXL base: CLIP-L at `conditioner.embedders.0.transformer.*`, OpenCLIP-bigG at
//!   `conditioner.embedders.1.model.*` and `model.diffusion_model.label_emb`;
//! - SDXL refiner: OpenCLIP-bigG alone at `conditioner.embedders.0.model.*` and
//!   `label_emb` (five time ids: the aesthetic score replaces the target size),
//!   written as `StableDiffusionXLImg2ImgPipeline` with `text_encoder` null and
//!   `requires_aesthetics_score`, as the refiner's diffusers repo.
//!
//! Every key of the UNet (`model.diffusion_model.`), the VAE (`first_stage_model.`)
//! and the text encoders is mapped to its diffusers name, as diffusers'
//! `single_file_utils` does (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
//! `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`); a key under one of
//! those prefixes that has no mapping is an error, never silently dropped. Keys outside
//! them (`betas`, `alphas_cumprod`, `model_ema.*`, CLIP's `position_ids`, OpenCLIP's
//! `logit_scale`) are skipped and listed in [`Converted::skipped`]. Tensors keep their
//! dtype and bytes: only names change, except the VAE mid-block attention 1×1 convs
//! (reshaped `[C, C, 1, 1]` → `[C, C]`), OpenCLIP's `in_proj_weight/bias` (split into
//! q/k/v) and `text_projection` (transposed).
//!
//! Configs are read from the tensor shapes (channels, block types, layers per block,
//! transformer depth, cross-attention width, linear projection, text-encoder widths,
//! layers and vocabulary). What the weights cannot tell comes from the per-type
//! defaults of the released models and can be overridden
//! ([`ConvertOptions::overrides`]; `diffuse convert --set COMPONENT.FIELD=VALUE`):
//! attention heads (SD1: 8; SD2/SDXL: channels/64;
//! CLIP: hidden/64), group-norm groups (32), sample sizes, the VAE scaling factor,
//! activation functions, `projection_dim` of CLIP-L. SD2: the checkpoint holds all
//! 24 OpenCLIP-H layers but the diffusers text encoder uses 23 (SD2 conditions on the
//! penultimate layer), so the last resblock and `text_projection` are dropped, as
//! diffusers does. Whether an SD2 checkpoint is v-prediction (768-v) cannot be known
//! from its keys: the scheduler says `epsilon` unless [`ConvertOptions::prediction_type`]
//! says otherwise.
//!
//! Variants: a UNet with 9 input channels (latents, mask, masked-image
//! latents) makes the folder an inpainting pipeline
//! (`StableDiffusionInpaintPipeline`, SDXL: `StableDiffusionXLInpaintPipeline`),
//! as diffusers' `infer_diffusers_model_type` decides; with
//! [`ConvertOptions::extract_ema`] the UNet comes from the checkpoint's EMA copy.
//!
//! Tokenizers are not part of a single-file checkpoint: the folder's
//! `model_index.json` declares `tokenizer` (and `tokenizer_2`) as `[null, null]`;
//! take `tokenizer/` from the base model's diffusers repo.
//!
//! [`write_diffusers_folder`] builds the folder in a sibling temporary directory,
//! fsyncs it and renames it into place, so a failed conversion leaves nothing behind.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::torch_pickle::PickleOptions;
use crate::weights::{Dtype, TensorView, Weights, WeightsError};

/// The diffusers version written into configs.
const DIFFUSERS_VERSION: &str = "0.42.1";

/// Errors of single-file conversion; each names the checkpoint (and key) or folder.
#[derive(Debug, thiserror::Error)]
pub enum SingleFileError {
    /// The checkpoint could not be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// EMA weights were asked for and the checkpoint has none.
    #[error("{path}: no EMA weights (`model_ema.*` keys) to extract")]
    NoEma {
        /// The checkpoint.
        path: PathBuf,
    },
    /// The keys match none of the supported layouts.
    #[error(
        "{path}: unknown checkpoint layout (not SD1.x, SD2.x, SDXL base or refiner in LDM/SGM layout); {n_keys} keys, e.g. {sample:?}"
    )]
    UnknownLayout {
        /// The checkpoint.
        path: PathBuf,
        /// How many tensors it has.
        n_keys: usize,
        /// A few of its keys.
        sample: Vec<String>,
    },
    /// A tensor the conversion needs is absent.
    #[error("{path}: {component}: required key `{key}` is missing")]
    MissingKey {
        /// The checkpoint.
        path: PathBuf,
        /// The component being converted.
        component: &'static str,
        /// The missing key.
        key: String,
    },
    /// A key under a component's prefix has no diffusers name.
    #[error("{path}: {component}: key `{key}` has no diffusers mapping")]
    UnmappedKey {
        /// The checkpoint.
        path: PathBuf,
        /// The component being converted.
        component: &'static str,
        /// The key.
        key: String,
    },
    /// A tensor has a shape the conversion cannot use.
    #[error("{path}: `{key}`: {reason}")]
    BadShape {
        /// The checkpoint.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Two checkpoint keys map to the same diffusers name.
    #[error("{path}: `{first}` and `{second}` both map to `{target}`")]
    DuplicateTarget {
        /// The checkpoint.
        path: PathBuf,
        /// One source key.
        first: String,
        /// The other source key.
        second: String,
        /// The diffusers name.
        target: String,
    },
    /// An override is not a JSON object or names an unknown component.
    #[error("invalid config override for `{component}`: {reason}")]
    BadOverride {
        /// The component named.
        component: String,
        /// What is wrong.
        reason: String,
    },
    /// The output folder exists and is not empty.
    #[error("{path}: the output folder already exists and is not empty; refusing to overwrite it")]
    OutputExists {
        /// The output folder.
        path: PathBuf,
    },
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The safetensors serializer failed.
    #[error("{path}: cannot write safetensors: {reason}")]
    Serialize {
        /// The file being written.
        path: PathBuf,
        /// The serializer's message.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, SingleFileError>;

/// A single-file checkpoint of either format (`.safetensors`, or a PyTorch
/// pickle `.ckpt` / `.bin` / `.pt` / `.pth`), read through [`Weights`].
#[derive(Debug)]
pub struct Checkpoint {
    weights: Weights,
}

impl Checkpoint {
    /// Opens a checkpoint, choosing the reader by extension (see
    /// [`Weights::open`]); a pickle naming a global that torch's
    /// `weights_only` loader refuses is [`WeightsError::UnsafeGlobal`].
    pub fn open(path: &Path) -> std::result::Result<Self, WeightsError> {
        Self::open_with(path, &PickleOptions::default())
    }

    /// [`Checkpoint::open`], reading a pickle as `pickle` says (e.g.
    /// [`PickleOptions::skip_unsafe_globals`] for a PyTorch Lightning
    /// training checkpoint, whose `callbacks` entry torch refuses too).
    pub fn open_with(
        path: &Path,
        pickle: &PickleOptions,
    ) -> std::result::Result<Self, WeightsError> {
        Ok(Self {
            weights: Weights::open_with(path, pickle)?,
        })
    }

    /// The file it was opened from.
    pub fn path(&self) -> &Path {
        self.weights.source()
    }

    /// The tensors, whatever the file format.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> Vec<&str> {
        self.weights.tensors().map(|(k, _)| k).collect()
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(name)
    }

    /// One tensor.
    pub fn tensor(&self, name: &str) -> std::result::Result<TensorView<'_>, WeightsError> {
        self.weights.tensor(name)
    }

    /// Whether the UNet takes 9 input channels (latents, mask, masked-image
    /// latents): an inpainting checkpoint.
    pub fn is_inpaint(&self) -> bool {
        self.tensor(&format!("{UNET}input_blocks.0.0.weight"))
            .is_ok_and(|t| t.shape.get(1) == Some(&9))
    }
}

/// The pipelines recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Stable Diffusion 1.x (CLIP-L text encoder, 768-wide context).
    Sd1,
    /// Stable Diffusion 2.x (OpenCLIP-H text encoder, 1024-wide context).
    Sd2,
    /// Stable Diffusion XL base (CLIP-L + OpenCLIP-bigG, 2048-wide context).
    Sdxl,
    /// Stable Diffusion XL refiner (OpenCLIP-bigG alone, 1280-wide context,
    /// aesthetic-score conditioning): an img2img pipeline.
    SdxlRefiner,
}

impl ModelType {
    /// The diffusers pipeline class, for a text-to-image or (a 9-channel
    /// UNet) an inpainting checkpoint.
    pub fn pipeline_class(self, inpaint: bool) -> &'static str {
        match (self, inpaint) {
            (Self::Sd1 | Self::Sd2, false) => "StableDiffusionPipeline",
            (Self::Sd1 | Self::Sd2, true) => "StableDiffusionInpaintPipeline",
            (Self::Sdxl, false) => "StableDiffusionXLPipeline",
            (Self::Sdxl | Self::SdxlRefiner, true) => "StableDiffusionXLInpaintPipeline",
            (Self::SdxlRefiner, false) => "StableDiffusionXLImg2ImgPipeline",
        }
    }

    /// SDXL base or refiner (`text_time` conditioning, SDXL's VAE and scheduler).
    pub fn is_xl(self) -> bool {
        matches!(self, Self::Sdxl | Self::SdxlRefiner)
    }
}

impl std::fmt::Display for ModelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sd1 => "SD1.x",
            Self::Sd2 => "SD2.x",
            Self::Sdxl => "SDXL base",
            Self::SdxlRefiner => "SDXL refiner",
        })
    }
}

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP_SD1: &str = "cond_stage_model.transformer.";
const OPENCLIP_SD2: &str = "cond_stage_model.model.";
const CLIP_SDXL: &str = "conditioner.embedders.0.transformer.";
const OPENCLIP_SDXL: &str = "conditioner.embedders.1.model.";
const OPENCLIP_REFINER: &str = "conditioner.embedders.0.model.";

/// Detects the model type from the key names.
pub fn detect<S: AsRef<str>>(path: &Path, keys: &[S]) -> Result<ModelType> {
    let has = |prefix: &str| keys.iter().any(|k| k.as_ref().starts_with(prefix));
    let unet = has(UNET);
    let label_emb = has("model.diffusion_model.label_emb.");
    if unet && has(CLIP_SDXL) && has(OPENCLIP_SDXL) && label_emb {
        return Ok(ModelType::Sdxl);
    }
    if unet && has(OPENCLIP_REFINER) && label_emb {
        return Ok(ModelType::SdxlRefiner);
    }
    if unet && has(OPENCLIP_SD2) {
        return Ok(ModelType::Sd2);
    }
    if unet && has(CLIP_SD1) {
        return Ok(ModelType::Sd1);
    }
    Err(SingleFileError::UnknownLayout {
        path: path.to_path_buf(),
        n_keys: keys.len(),
        sample: keys
            .iter()
            .take(5)
            .map(|k| k.as_ref().to_string())
            .collect(),
    })
}

/// Conversion options.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// The scheduler's `prediction_type` (default `epsilon`; SD2 768-v models need `v_prediction`).
    pub prediction_type: Option<String>,
    /// Config fields to set per component (`unet`, `vae`, `text_encoder`,
    /// `text_encoder_2`, `scheduler`), applied after inference.
    pub overrides: BTreeMap<String, Map<String, Value>>,
    /// Take the UNet's weights from the checkpoint's EMA copy (`model_ema.*`,
    /// diffusers' `extract_ema=True`): `model.diffusion_model.a.b.weight` is
    /// read from `model_ema.diffusion_modelabweight` (LDM's EMA keys drop the
    /// dots). A checkpoint without EMA weights is [`SingleFileError::NoEma`],
    /// a UNet key without its EMA copy a `MissingKey` naming that copy
    /// (diffusers instead warns and keeps the live weights when a checkpoint
    /// has no more than 100 `model_ema` keys). The live UNet weights are then
    /// listed in [`Converted::skipped`].
    pub extract_ema: bool,
}

/// LDM's name for the EMA copy of a UNet key: `model_ema.` and the key
/// without its leading `model.`, dots removed.
pub fn ema_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix(UNET)?;
    Some(format!(
        "model_ema.diffusion_model{}",
        rest.replace('.', "")
    ))
}

/// One output tensor: dtype, shape and bytes (borrowed from the checkpoint where possible).
#[derive(Debug, Clone)]
pub struct OutTensor<'a> {
    /// Element type (that of the checkpoint).
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian row-major bytes.
    pub data: Cow<'a, [u8]>,
}

/// One converted component.
#[derive(Debug, Clone)]
pub struct Component<'a> {
    /// Folder name (`unet`, `vae`, `text_encoder`, `text_encoder_2`).
    pub name: &'static str,
    /// `(library, class)` for `model_index.json`.
    pub class: (&'static str, &'static str),
    /// `config.json`.
    pub config: Value,
    /// The weights file name inside the folder.
    pub weights_file: &'static str,
    /// Tensors by diffusers name.
    pub tensors: BTreeMap<String, OutTensor<'a>>,
}

/// A converted checkpoint, ready to write.
#[derive(Debug, Clone)]
pub struct Converted<'a> {
    /// The detected type.
    pub model_type: ModelType,
    /// The model components.
    pub components: Vec<Component<'a>>,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: Value,
    /// `model_index.json`.
    pub model_index: Value,
    /// Checkpoint keys not converted (outside every component, or known extras).
    pub skipped: Vec<String>,
}

/// Collects one component's tensors, checking that every key maps once.
struct Builder<'c> {
    ckpt: &'c Checkpoint,
    component: &'static str,
    out: BTreeMap<String, OutTensor<'c>>,
    source: HashMap<String, String>,
    /// Read UNet keys from their EMA copies ([`ConvertOptions::extract_ema`]).
    ema: bool,
}

impl<'c> Builder<'c> {
    fn new(ckpt: &'c Checkpoint, component: &'static str) -> Self {
        Self {
            ckpt,
            component,
            out: BTreeMap::new(),
            source: HashMap::new(),
            ema: false,
        }
    }

    fn view(&self, key: &str) -> Result<TensorView<'c>> {
        let ema = if self.ema { ema_key(key) } else { None };
        let key = ema.as_deref().unwrap_or(key);
        self.ckpt.tensor(key).map_err(|e| match e {
            WeightsError::TensorNotFound { .. } => SingleFileError::MissingKey {
                path: self.ckpt.path().to_path_buf(),
                component: self.component,
                key: key.to_string(),
            },
            other => other.into(),
        })
    }

    fn insert(&mut self, from: &str, to: String, t: OutTensor<'c>) -> Result<()> {
        if let Some(first) = self.source.get(&to) {
            return Err(SingleFileError::DuplicateTarget {
                path: self.ckpt.path().to_path_buf(),
                first: first.clone(),
                second: from.to_string(),
                target: to,
            });
        }
        self.source.insert(to.clone(), from.to_string());
        self.out.insert(to, t);
        Ok(())
    }

    /// Copies `from` to `to` unchanged.
    fn copy(&mut self, from: &str, to: String) -> Result<()> {
        let v = self.view(from)?;
        let t = OutTensor {
            dtype: v.dtype.clone(),
            shape: v.shape.to_vec(),
            data: Cow::Borrowed(v.data),
        };
        self.insert(from, to, t)
    }

    fn unmapped(&self, key: &str) -> SingleFileError {
        SingleFileError::UnmappedKey {
            path: self.ckpt.path().to_path_buf(),
            component: self.component,
            key: key.to_string(),
        }
    }

    fn bad_shape(&self, key: &str, reason: String) -> SingleFileError {
        SingleFileError::BadShape {
            path: self.ckpt.path().to_path_buf(),
            key: key.to_string(),
            reason,
        }
    }

    fn shape(&self, key: &str) -> Result<Vec<usize>> {
        Ok(self.view(key)?.shape.to_vec())
    }

    /// Dimension `dim` of the output tensor `name`, converted from checkpoint key
    /// `ldm` (named in the error when it is missing).
    fn out_dim(&self, name: &str, ldm: &str, dim: usize) -> Result<usize> {
        let t = self
            .out
            .get(name)
            .ok_or_else(|| SingleFileError::MissingKey {
                path: self.ckpt.path().to_path_buf(),
                component: self.component,
                key: ldm.to_string(),
            })?;
        t.shape.get(dim).copied().ok_or_else(|| {
            self.bad_shape(
                self.source.get(name).map(String::as_str).unwrap_or(ldm),
                format!(
                    "expected at least {} dimensions, got {:?}",
                    dim + 1,
                    t.shape
                ),
            )
        })
    }
}

fn parse_idx(s: Option<&&str>) -> Option<usize> {
    s.and_then(|s| s.parse().ok())
}

fn resnet_name(rest: &str) -> Option<String> {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    MAP.iter()
        .find_map(|(a, b)| rest.strip_prefix(a).map(|t| format!("{b}{t}")))
}

/// Layers per block of an LDM UNet (or ControlNet) from its input-block
/// keys `ukeys` (without `prefix`): the first downsampler sits at input
/// block `layers + 1`.
fn layers_per_block(b: &Builder<'_>, ukeys: &[&str], prefix: &str) -> Result<usize> {
    let mut n_input = 0usize;
    let mut first_op: Option<usize> = None;
    for k in ukeys {
        let p: Vec<&str> = k.split('.').collect();
        if p.first() == Some(&"input_blocks")
            && let Some(i) = parse_idx(p.get(1))
        {
            n_input = n_input.max(i + 1);
            if p.get(2) == Some(&"0") && p.get(3) == Some(&"op") {
                first_op = Some(first_op.map_or(i, |f: usize| f.min(i)));
            }
        }
    }
    let layers = match first_op {
        Some(i) if i >= 2 => i - 1,
        Some(_) => {
            return Err(b.bad_shape(
                &format!("{prefix}input_blocks.1.0.op.weight"),
                "a downsampler before any resnet".into(),
            ));
        }
        None => n_input.saturating_sub(1),
    };
    if layers == 0 {
        return Err(SingleFileError::MissingKey {
            path: b.ckpt.path().to_path_buf(),
            component: b.component,
            key: format!("{prefix}input_blocks.1.0.in_layers.0.weight"),
        });
    }
    Ok(layers)
}

/// The diffusers name of LDM UNet key `k` (without its prefix), with `per`
/// input blocks per level; `None` when it has none.
fn unet_target(k: &str, per: usize, xl: bool) -> Option<String> {
    let p: Vec<&str> = k.splitn(4, '.').collect();
    let leaf = k.rsplit('.').next().unwrap_or_default();
    let stem = &k[..k.len() - leaf.len()];
    let top = match stem {
        "time_embed.0." => Some("time_embedding.linear_1"),
        "time_embed.2." => Some("time_embedding.linear_2"),
        "input_blocks.0.0." => Some("conv_in"),
        "out.0." => Some("conv_norm_out"),
        "out.2." => Some("conv_out"),
        "label_emb.0.0." if xl => Some("add_embedding.linear_1"),
        "label_emb.0.2." if xl => Some("add_embedding.linear_2"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(format!("{t}.{leaf}"));
    }
    match (p.first().copied(), parse_idx(p.get(1)), p.get(2).copied()) {
        (Some("input_blocks"), Some(i), Some(sub)) if i >= 1 => {
            let rest = p.get(3).copied().unwrap_or_default();
            let (blk, j) = ((i - 1) / per, (i - 1) % per);
            match sub {
                "0" if rest.starts_with("op.") => Some(format!(
                    "down_blocks.{blk}.downsamplers.0.conv.{}",
                    &rest[3..]
                )),
                "0" => resnet_name(rest).map(|r| format!("down_blocks.{blk}.resnets.{j}.{r}")),
                "1" => Some(format!("down_blocks.{blk}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        (Some("middle_block"), Some(i), Some(sub)) => {
            let rest = match p.get(3) {
                Some(r) => format!("{sub}.{r}"),
                None => sub.to_string(),
            };
            match i {
                0 | 2 => resnet_name(&rest).map(|r| format!("mid_block.resnets.{}.{r}", i / 2)),
                1 => Some(format!("mid_block.attentions.0.{rest}")),
                _ => None,
            }
        }
        (Some("output_blocks"), Some(i), Some(sub)) => {
            let rest = p.get(3).copied().unwrap_or_default();
            let (blk, j) = (i / per, i % per);
            match sub {
                "0" => resnet_name(rest).map(|r| format!("up_blocks.{blk}.resnets.{j}.{r}")),
                "1" | "2" if rest.starts_with("conv.") => {
                    Some(format!("up_blocks.{blk}.upsamplers.0.conv.{}", &rest[5..]))
                }
                "1" => Some(format!("up_blocks.{blk}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// What an LDM UNet's encoder half says about its config: the fields a
/// UNet and a ControlNet share, inferred from the converted tensors in `b`
/// (checkpoint keys under `prefix` named in errors).
struct EncoderShape {
    block_out: Vec<usize>,
    down_types: Vec<&'static str>,
    depth_value: Value,
    cross_dim: usize,
    linear: bool,
    in_channels: usize,
    heads: Value,
}

fn encoder_shape(b: &Builder<'_>, mt: ModelType, prefix: &str) -> Result<EncoderShape> {
    let n_levels = (0..)
        .take_while(|l| {
            b.out
                .contains_key(&format!("down_blocks.{l}.resnets.0.conv1.weight"))
        })
        .count();
    if n_levels == 0 {
        return Err(SingleFileError::MissingKey {
            path: b.ckpt.path().to_path_buf(),
            component: b.component,
            key: format!("{prefix}input_blocks.1.0.in_layers.2.weight"),
        });
    }
    let mut block_out = Vec::new();
    let mut down_types = Vec::new();
    let mut depth = Vec::new();
    for l in 0..n_levels {
        block_out.push(b.out_dim(&format!("down_blocks.{l}.resnets.0.conv1.weight"), "", 0)?);
        let attn = format!("down_blocks.{l}.attentions.0.");
        let has_attn = b.out.keys().any(|k| k.starts_with(&attn));
        down_types.push(if has_attn {
            "CrossAttnDownBlock2D"
        } else {
            "DownBlock2D"
        });
        let tb = format!("{attn}transformer_blocks.");
        let n = b
            .out
            .keys()
            .filter_map(|k| k.strip_prefix(&tb))
            .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(1, |m| m + 1);
        depth.push(n);
    }
    let any_attn = b
        .out
        .iter()
        .find(|(k, _)| k.contains(".attn2.to_k.weight"))
        .map(|(k, _)| k.clone());
    let cross_dim = match &any_attn {
        Some(k) => b.out_dim(k, "", 1)?,
        None => 768,
    };
    let linear = b
        .out
        .iter()
        .find(|(k, _)| k.ends_with(".proj_in.weight"))
        .is_some_and(|(_, t)| t.shape.len() == 2);
    let in_channels = b.out_dim(
        "conv_in.weight",
        &format!("{prefix}input_blocks.0.0.weight"),
        1,
    )?;
    // diffusers sizes the mid block from the last entry of
    // `transformer_layers_per_block`; levels without attention ignore theirs.
    let mid_tb = "mid_block.attentions.0.transformer_blocks.";
    let mid_depth = b
        .out
        .keys()
        .filter_map(|k| k.strip_prefix(mid_tb))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m + 1);
    let attn_depths: Vec<usize> = depth
        .iter()
        .zip(&down_types)
        .filter(|(_, t)| **t == "CrossAttnDownBlock2D")
        .map(|(d, _)| *d)
        .collect();
    let depth_value = match mid_depth {
        // One depth everywhere (SD1/SD2, the SDXL refiner): an integer, as
        // their configs write it.
        Some(m) if attn_depths.iter().all(|&d| d == m) => json!(m),
        Some(m) => {
            if down_types.last() == Some(&"DownBlock2D") {
                *depth.last_mut().expect("n_levels > 0") = m;
            } else if depth.last() != Some(&m) {
                return Err(b.bad_shape(
                    &format!("{prefix}middle_block.1.transformer_blocks.0.norm1.weight"),
                    format!(
                        "the mid block has {m} transformer blocks and the last level {}: \
                         diffusers' config cannot express that",
                        depth.last().copied().unwrap_or_default()
                    ),
                ));
            }
            json!(depth)
        }
        None if depth.iter().all(|&d| d == depth[0]) => json!(depth[0]),
        None => json!(depth),
    };
    let heads: Value = match mt {
        ModelType::Sd1 => json!(8),
        _ => json!(
            block_out
                .iter()
                .map(|c| (c / 64).max(1))
                .collect::<Vec<_>>()
        ),
    };
    Ok(EncoderShape {
        block_out,
        down_types,
        depth_value,
        cross_dim,
        linear,
        in_channels,
        heads,
    })
}

fn convert_unet<'c>(
    ckpt: &'c Checkpoint,
    mt: ModelType,
    keys: &[&str],
    text_embeds_dim: Option<usize>,
    extract_ema: bool,
) -> Result<Component<'c>> {
    let mut b = Builder::new(ckpt, "unet");
    b.ema = extract_ema;
    let ukeys: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix(UNET)).collect();
    let layers = layers_per_block(&b, &ukeys, UNET)?;
    let per = layers + 1;
    for k in &ukeys {
        let full = format!("{UNET}{k}");
        match unet_target(k, per, mt.is_xl()) {
            Some(t) => b.copy(&full, t)?,
            None => return Err(b.unmapped(&full)),
        }
    }

    let n_levels = (0..)
        .take_while(|l| {
            b.out
                .contains_key(&format!("down_blocks.{l}.resnets.0.conv1.weight"))
        })
        .count();
    let EncoderShape {
        block_out,
        down_types,
        depth_value,
        cross_dim,
        linear,
        in_channels,
        heads,
    } = encoder_shape(&b, mt, UNET)?;
    let up_types: Vec<&str> = (0..n_levels)
        .map(|l| {
            let attn = format!("up_blocks.{l}.attentions.");
            if b.out.keys().any(|k| k.starts_with(&attn)) {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let out_channels = b.out_dim("conv_out.weight", &format!("{UNET}out.2.weight"), 0)?;
    let mut config = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": null,
        "addition_time_embed_dim": null,
        "attention_head_dim": heads,
        "block_out_channels": block_out,
        "center_input_sample": false,
        "class_embed_type": null,
        "cross_attention_dim": cross_dim,
        "down_block_types": down_types,
        "downsample_padding": 1,
        "dual_cross_attention": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": layers,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "only_cross_attention": false,
        "out_channels": out_channels,
        "projection_class_embeddings_input_dim": null,
        "resnet_time_scale_shift": "default",
        "sample_size": match mt { ModelType::Sd1 => 64, ModelType::Sd2 => 96, _ => 128 },
        "time_embedding_type": "positional",
        "transformer_layers_per_block": depth_value,
        "up_block_types": up_types,
        "upcast_attention": false,
        "use_linear_projection": linear,
    });
    if mt.is_xl() {
        let adm = b.out_dim(
            "add_embedding.linear_1.weight",
            &format!("{UNET}label_emb.0.0.weight"),
            1,
        )?;
        let text = text_embeds_dim.unwrap_or(1280);
        // Base: original size, crop corner, target size; the refiner replaces
        // the target size with the aesthetic score.
        let ids = if mt == ModelType::Sdxl { 6 } else { 5 };
        if adm <= text || !(adm - text).is_multiple_of(ids) {
            return Err(b.bad_shape(
                &format!("{UNET}label_emb.0.0.weight"),
                format!("input width {adm} is not text_embeds ({text}) + {ids} x time ids"),
            ));
        }
        config["addition_embed_type"] = json!("text_time");
        config["addition_time_embed_dim"] = json!((adm - text) / ids);
        config["projection_class_embeddings_input_dim"] = json!(adm);
    }
    Ok(Component {
        name: "unet",
        class: ("diffusers", "UNet2DConditionModel"),
        config,
        weights_file: "diffusion_pytorch_model.safetensors",
        tensors: b.out,
    })
}

fn convert_vae<'c>(ckpt: &'c Checkpoint, mt: ModelType, keys: &[&str]) -> Result<Component<'c>> {
    let mut b = Builder::new(ckpt, "vae");
    let vkeys: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix(VAE)).collect();
    let n_up = vkeys
        .iter()
        .filter_map(|k| k.strip_prefix("decoder.up."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    for k in &vkeys {
        let full = format!("{VAE}{k}");
        let p: Vec<&str> = k.split('.').collect();
        let side = p[0];
        let target = match (side, p.get(1).copied()) {
            ("quant_conv" | "post_quant_conv", _) if p.len() == 2 => Some(k.to_string()),
            ("encoder" | "decoder", Some(part)) => {
                let rest = p[2..].join(".");
                match part {
                    "conv_in" | "conv_out" => Some(k.to_string()),
                    "norm_out" => Some(format!("{side}.conv_norm_out.{rest}")),
                    "down" | "up" => {
                        let i = parse_idx(p.get(2));
                        let enc = part == "down" && side == "encoder";
                        let dec = part == "up" && side == "decoder";
                        match (i, p.get(3).copied()) {
                            (Some(i), Some(kind)) if enc || dec => {
                                let (blocks, idx) = if enc {
                                    ("down_blocks", Some(i))
                                } else {
                                    ("up_blocks", n_up.checked_sub(i + 1))
                                };
                                let tail = p.get(4..).map(|t| t.join(".")).unwrap_or_default();
                                match (kind, idx) {
                                    ("block", Some(idx)) => {
                                        let mut q = tail.splitn(2, '.');
                                        let j = q.next().unwrap_or_default();
                                        let r = q.next().unwrap_or_default();
                                        let r = r.replacen("nin_shortcut", "conv_shortcut", 1);
                                        Some(format!("{side}.{blocks}.{idx}.resnets.{j}.{r}"))
                                    }
                                    ("downsample" | "upsample", Some(idx)) => Some(format!(
                                        "{side}.{blocks}.{idx}.{}samplers.0.{tail}",
                                        &kind[..kind.len() - 6]
                                    )),
                                    _ => None,
                                }
                            }
                            _ => None,
                        }
                    }
                    "mid" => {
                        let sub = p.get(2).copied().unwrap_or_default();
                        let tail = p.get(3..).map(|t| t.join(".")).unwrap_or_default();
                        if let Some(n) = sub
                            .strip_prefix("block_")
                            .and_then(|n| n.parse::<usize>().ok())
                        {
                            n.checked_sub(1).map(|n| {
                                format!(
                                    "{side}.mid_block.resnets.{n}.{}",
                                    tail.replacen("nin_shortcut", "conv_shortcut", 1)
                                )
                            })
                        } else if sub == "attn_1" {
                            let leaf = p.last().copied().unwrap_or_default();
                            let stem = &tail[..tail.len().saturating_sub(leaf.len() + 1)];
                            let name = match stem {
                                "norm" => Some("group_norm"),
                                "q" => Some("to_q"),
                                "k" => Some("to_k"),
                                "v" => Some("to_v"),
                                "proj_out" => Some("to_out.0"),
                                _ => None,
                            };
                            if let Some(name) = name {
                                let to = format!("{side}.mid_block.attentions.0.{name}.{leaf}");
                                if name != "group_norm" && leaf == "weight" {
                                    // 1x1 conv -> linear: [C, C, 1, 1] -> [C, C].
                                    let v = b.view(&full)?;
                                    let ok =
                                        v.shape.len() >= 2 && v.shape[2..].iter().all(|&d| d == 1);
                                    if !ok {
                                        return Err(b.bad_shape(
                                            &full,
                                            format!(
                                                "expected a 1x1 conv weight [C, C, 1, 1], got {:?}",
                                                v.shape
                                            ),
                                        ));
                                    }
                                    let t = OutTensor {
                                        dtype: v.dtype.clone(),
                                        shape: v.shape[..2].to_vec(),
                                        data: Cow::Borrowed(v.data),
                                    };
                                    b.insert(&full, to, t)?;
                                    continue;
                                }
                                Some(to)
                            } else {
                                None
                            }
                        } else {
                            None
                        }
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match target {
            Some(t) => b.copy(&full, t)?,
            None => return Err(b.unmapped(&full)),
        }
    }
    let n_down = (0..)
        .take_while(|l| {
            b.out
                .contains_key(&format!("encoder.down_blocks.{l}.resnets.0.conv1.weight"))
        })
        .count();
    if n_down == 0 {
        return Err(SingleFileError::MissingKey {
            path: ckpt.path().to_path_buf(),
            component: "vae",
            key: format!("{VAE}encoder.down.0.block.0.conv1.weight"),
        });
    }
    let mut block_out = Vec::new();
    for l in 0..n_down {
        block_out.push(b.out_dim(
            &format!("encoder.down_blocks.{l}.resnets.0.conv1.weight"),
            "",
            0,
        )?);
    }
    let layers = (0..)
        .take_while(|j| {
            b.out
                .contains_key(&format!("encoder.down_blocks.0.resnets.{j}.conv1.weight"))
        })
        .count();
    let config = json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": block_out,
        "down_block_types": vec!["DownEncoderBlock2D"; n_down],
        "force_upcast": true,
        "in_channels": b.out_dim("encoder.conv_in.weight", &format!("{VAE}encoder.conv_in.weight"), 1)?,
        "latent_channels": b.out_dim("decoder.conv_in.weight", &format!("{VAE}decoder.conv_in.weight"), 1)?,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": layers,
        "mid_block_add_attention": true,
        "norm_num_groups": 32,
        "out_channels": b.out_dim("decoder.conv_out.weight", &format!("{VAE}decoder.conv_out.weight"), 0)?,
        "sample_size": match mt { ModelType::Sd1 => 512, ModelType::Sd2 => 768, _ => 1024 },
        "scaling_factor": if mt.is_xl() { 0.13025 } else { 0.18215 },
        "shift_factor": null,
        "up_block_types": vec!["UpDecoderBlock2D"; n_down],
        "use_post_quant_conv": true,
        "use_quant_conv": true,
    });
    Ok(Component {
        name: "vae",
        class: ("diffusers", "AutoencoderKL"),
        config,
        weights_file: "diffusion_pytorch_model.safetensors",
        tensors: b.out,
    })
}

#[allow(clippy::too_many_arguments)]
fn clip_config(
    class: &str,
    vocab: usize,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    max_pos: usize,
    act: &str,
    projection_dim: usize,
) -> Value {
    json!({
        "architectures": [class],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": act,
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": max_pos,
        "model_type": "clip_text_model",
        "num_attention_heads": (hidden / 64).max(1),
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": projection_dim,
        "vocab_size": vocab,
    })
}

/// Layer count of `text_model.encoder.layers.N.*` names.
fn count_layers<'a>(names: impl Iterator<Item = &'a String>) -> usize {
    names
        .filter_map(|k| k.strip_prefix("text_model.encoder.layers."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1)
}

fn convert_clip<'c>(
    ckpt: &'c Checkpoint,
    name: &'static str,
    prefix: &str,
    keys: &[&str],
    skipped: &mut Vec<String>,
) -> Result<Component<'c>> {
    let mut b = Builder::new(ckpt, name);
    for k in keys {
        let Some(rest) = k.strip_prefix(prefix) else {
            continue;
        };
        if rest.ends_with("embeddings.position_ids") {
            skipped.push(k.to_string());
            continue;
        }
        let to = if rest.starts_with("text_model.") {
            rest.to_string()
        } else {
            format!("text_model.{rest}")
        };
        b.copy(k, to)?;
    }
    let tok = b.shape(&format!(
        "{prefix}text_model.embeddings.token_embedding.weight"
    ));
    let tok = match tok {
        Ok(s) => s,
        Err(_) => b.shape(&format!("{prefix}embeddings.token_embedding.weight"))?,
    };
    let [vocab, hidden] = tok[..] else {
        return Err(b.bad_shape(
            &format!("{prefix}text_model.embeddings.token_embedding.weight"),
            format!("expected 2 dimensions, got {tok:?}"),
        ));
    };
    let max_pos = b.out_dim(
        "text_model.embeddings.position_embedding.weight",
        &format!("{prefix}text_model.embeddings.position_embedding.weight"),
        0,
    )?;
    let inter = b.out_dim(
        "text_model.encoder.layers.0.mlp.fc1.weight",
        &format!("{prefix}text_model.encoder.layers.0.mlp.fc1.weight"),
        0,
    )?;
    let layers = count_layers(b.out.keys());
    Ok(Component {
        name,
        class: ("transformers", "CLIPTextModel"),
        config: clip_config(
            "CLIPTextModel",
            vocab,
            hidden,
            inter,
            layers,
            max_pos,
            "quick_gelu",
            768,
        ),
        weights_file: "model.safetensors",
        tensors: b.out,
    })
}

/// OpenCLIP text tower -> transformers CLIP text model. `drop_last` (SD2) drops
/// the last resblock and `text_projection`; otherwise (SDXL) `text_projection` is
/// transposed into `text_projection.weight`.
fn convert_open_clip<'c>(
    ckpt: &'c Checkpoint,
    name: &'static str,
    prefix: &str,
    keys: &[&str],
    drop_last: bool,
    skipped: &mut Vec<String>,
) -> Result<Component<'c>> {
    let mut b = Builder::new(ckpt, name);
    let rb = format!("{prefix}transformer.resblocks.");
    let n_blocks = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&rb))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let keep = if drop_last {
        n_blocks.saturating_sub(1)
    } else {
        n_blocks
    };
    for k in keys {
        let Some(rest) = k.strip_prefix(prefix) else {
            continue;
        };
        match rest {
            "positional_embedding" => {
                b.copy(k, "text_model.embeddings.position_embedding.weight".into())?;
                continue;
            }
            "token_embedding.weight" => {
                b.copy(k, "text_model.embeddings.token_embedding.weight".into())?;
                continue;
            }
            "ln_final.weight" | "ln_final.bias" => {
                b.copy(k, format!("text_model.final_layer_norm.{}", &rest[9..]))?;
                continue;
            }
            "logit_scale" => {
                skipped.push(k.to_string());
                continue;
            }
            "text_projection" if drop_last => {
                skipped.push(k.to_string());
                continue;
            }
            "text_projection" => {
                let v = b.view(k)?;
                let [w, p] = v.shape[..] else {
                    return Err(b.bad_shape(k, format!("expected [width, dim], got {:?}", v.shape)));
                };
                let s = v.dtype.size().unwrap_or(1);
                let mut out = vec![0u8; v.data.len()];
                for i in 0..w {
                    for j in 0..p {
                        let src = (i * p + j) * s;
                        let dst = (j * w + i) * s;
                        out[dst..dst + s].copy_from_slice(&v.data[src..src + s]);
                    }
                }
                let t = OutTensor {
                    dtype: v.dtype.clone(),
                    shape: vec![p, w],
                    data: Cow::Owned(out),
                };
                b.insert(k, "text_projection.weight".into(), t)?;
                continue;
            }
            _ => {}
        }
        let Some(r) = k.strip_prefix(&rb) else {
            return Err(b.unmapped(k));
        };
        let (idx, tail) = r.split_once('.').unwrap_or((r, ""));
        let Ok(i) = idx.parse::<usize>() else {
            return Err(b.unmapped(k));
        };
        if i >= keep {
            skipped.push(k.to_string());
            continue;
        }
        let to = format!("text_model.encoder.layers.{i}.");
        if let Some(leaf) = tail.strip_prefix("attn.in_proj_") {
            let v = b.view(k)?;
            let rows = v.shape.first().copied().unwrap_or(0);
            if rows == 0 || !rows.is_multiple_of(3) || !(leaf == "weight" || leaf == "bias") {
                return Err(b.bad_shape(k, format!("cannot split {:?} into q, k, v", v.shape)));
            }
            let part = v.data.len() / 3;
            for (n, qkv) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                let mut shape = v.shape.to_vec();
                shape[0] = rows / 3;
                let t = OutTensor {
                    dtype: v.dtype.clone(),
                    shape,
                    data: Cow::Borrowed(&v.data[n * part..(n + 1) * part]),
                };
                b.insert(k, format!("{to}self_attn.{qkv}.{leaf}"), t)?;
            }
            continue;
        }
        const MAP: [(&str, &str); 5] = [
            ("ln_1.", "layer_norm1."),
            ("ln_2.", "layer_norm2."),
            ("mlp.c_fc.", "mlp.fc1."),
            ("mlp.c_proj.", "mlp.fc2."),
            ("attn.out_proj.", "self_attn.out_proj."),
        ];
        match MAP
            .iter()
            .find_map(|(a, c)| tail.strip_prefix(a).map(|t| format!("{to}{c}{t}")))
        {
            Some(t) => b.copy(k, t)?,
            None => return Err(b.unmapped(k)),
        }
    }
    let tok = b.shape(&format!("{prefix}token_embedding.weight"))?;
    let [vocab, hidden] = tok[..] else {
        return Err(b.bad_shape(
            &format!("{prefix}token_embedding.weight"),
            format!("expected 2 dimensions, got {tok:?}"),
        ));
    };
    let max_pos = b.out_dim(
        "text_model.embeddings.position_embedding.weight",
        &format!("{prefix}positional_embedding"),
        0,
    )?;
    let inter = b.out_dim(
        "text_model.encoder.layers.0.mlp.fc1.weight",
        &format!("{rb}0.mlp.c_fc.weight"),
        0,
    )?;
    let layers = count_layers(b.out.keys());
    let (class, proj) = if drop_last {
        ("CLIPTextModel", 512)
    } else {
        (
            "CLIPTextModelWithProjection",
            b.out_dim(
                "text_projection.weight",
                &format!("{prefix}text_projection"),
                0,
            )?,
        )
    };
    Ok(Component {
        name,
        class: ("transformers", class),
        config: clip_config(class, vocab, hidden, inter, layers, max_pos, "gelu", proj),
        weights_file: "model.safetensors",
        tensors: b.out,
    })
}

fn scheduler_config(mt: ModelType, prediction: &str) -> Value {
    let mut c = json!({
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "prediction_type": prediction,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": null,
    });
    if mt.is_xl() {
        c["_class_name"] = json!("EulerDiscreteScheduler");
        c["interpolation_type"] = json!("linear");
        c["sample_max_value"] = json!(1.0);
        c["use_karras_sigmas"] = json!(false);
    } else {
        c["_class_name"] = json!("PNDMScheduler");
        c["clip_sample"] = json!(false);
    }
    c
}

/// Converts an opened checkpoint (names, shapes and configs; no file is written).
pub fn convert<'c>(ckpt: &'c Checkpoint, opts: &ConvertOptions) -> Result<Converted<'c>> {
    let keys = ckpt.keys();
    let mt = detect(ckpt.path(), &keys)?;
    for name in opts.overrides.keys() {
        let known = ["unet", "vae", "scheduler"].contains(&name.as_str())
            || (name == "text_encoder" && mt != ModelType::SdxlRefiner)
            || (name == "text_encoder_2" && mt.is_xl());
        if !known {
            return Err(SingleFileError::BadOverride {
                component: name.clone(),
                reason: format!("no such component in a {mt} pipeline"),
            });
        }
    }
    if opts.extract_ema
        && !keys
            .iter()
            .any(|k| k.starts_with("model_ema.diffusion_model"))
    {
        return Err(SingleFileError::NoEma {
            path: ckpt.path().to_path_buf(),
        });
    }
    let mut skipped = Vec::new();
    let mut components = Vec::new();
    let (te, te2) = match mt {
        ModelType::Sd1 => (
            Some(convert_clip(
                ckpt,
                "text_encoder",
                CLIP_SD1,
                &keys,
                &mut skipped,
            )?),
            None,
        ),
        ModelType::Sd2 => (
            Some(convert_open_clip(
                ckpt,
                "text_encoder",
                OPENCLIP_SD2,
                &keys,
                true,
                &mut skipped,
            )?),
            None,
        ),
        ModelType::SdxlRefiner => (
            None,
            Some(convert_open_clip(
                ckpt,
                "text_encoder_2",
                OPENCLIP_REFINER,
                &keys,
                false,
                &mut skipped,
            )?),
        ),
        ModelType::Sdxl => (
            Some(convert_clip(
                ckpt,
                "text_encoder",
                CLIP_SDXL,
                &keys,
                &mut skipped,
            )?),
            Some(convert_open_clip(
                ckpt,
                "text_encoder_2",
                OPENCLIP_SDXL,
                &keys,
                false,
                &mut skipped,
            )?),
        ),
    };
    let text_embeds = te2
        .as_ref()
        .and_then(|c| c.tensors.get("text_projection.weight"))
        .map(|t| t.shape[0]);
    components.push(convert_unet(
        ckpt,
        mt,
        &keys,
        text_embeds,
        opts.extract_ema,
    )?);
    components.push(convert_vae(ckpt, mt, &keys)?);
    components.extend(te);
    components.extend(te2);

    let prefixes: &[&str] = match mt {
        ModelType::Sd1 => &[UNET, VAE, CLIP_SD1],
        ModelType::Sd2 => &[UNET, VAE, OPENCLIP_SD2],
        ModelType::Sdxl => &[UNET, VAE, CLIP_SDXL, OPENCLIP_SDXL],
        ModelType::SdxlRefiner => &[UNET, VAE, OPENCLIP_REFINER],
    };
    for k in &keys {
        // With EMA weights, the UNet's own are the ones left out.
        let converted = if opts.extract_ema {
            (prefixes.iter().any(|p| k.starts_with(p)) && !k.starts_with(UNET))
                || k.starts_with("model_ema.diffusion_model")
        } else {
            prefixes.iter().any(|p| k.starts_with(p))
        };
        if !converted {
            skipped.push(k.to_string());
        }
    }
    skipped.sort();

    let mut scheduler = scheduler_config(mt, opts.prediction_type.as_deref().unwrap_or("epsilon"));
    for c in &mut components {
        if c.class.0 == "transformers" {
            let dtype = c.tensors.values().next().map(|t| match t.dtype {
                Dtype::F16 => "float16",
                Dtype::BF16 => "bfloat16",
                _ => "float32",
            });
            c.config["torch_dtype"] = json!(dtype.unwrap_or("float32"));
        }
        // Overrides last: what the user sets wins over anything inferred.
        if let Some(o) = opts.overrides.get(c.name) {
            for (k, v) in o {
                c.config[k.as_str()] = v.clone();
            }
        }
    }
    if let Some(o) = opts.overrides.get("scheduler") {
        for (k, v) in o {
            scheduler[k.as_str()] = v.clone();
        }
    }

    let mut index = Map::new();
    // A UNet that also takes the masked image and the mask (4 + 4 + 1 input
    // channels) is an inpainting model, as diffusers' from_single_file decides.
    index.insert(
        "_class_name".into(),
        json!(mt.pipeline_class(ckpt.is_inpaint())),
    );
    index.insert("_diffusers_version".into(), json!(DIFFUSERS_VERSION));
    for c in &components {
        index.insert(c.name.into(), json!([c.class.0, c.class.1]));
    }
    index.insert(
        "scheduler".into(),
        json!(["diffusers", scheduler["_class_name"].clone()]),
    );
    index.insert("tokenizer".into(), json!([null, null]));
    index.insert("feature_extractor".into(), json!([null, null]));
    index.insert("image_encoder".into(), json!([null, null]));
    if mt == ModelType::SdxlRefiner {
        // As the refiner's diffusers repo: no first text encoder, conditioned
        // on aesthetic scores.
        index.insert("text_encoder".into(), json!([null, null]));
        index.insert("tokenizer_2".into(), json!([null, null]));
        index.insert("requires_aesthetics_score".into(), json!(true));
        index.insert("force_zeros_for_empty_prompt".into(), json!(false));
    } else if mt == ModelType::Sdxl {
        index.insert("tokenizer_2".into(), json!([null, null]));
        index.insert("force_zeros_for_empty_prompt".into(), json!(true));
    } else {
        index.insert("safety_checker".into(), json!([null, null]));
        index.insert("requires_safety_checker".into(), json!(false));
    }

    Ok(Converted {
        model_type: mt,
        components,
        scheduler,
        model_index: Value::Object(index),
        skipped,
    })
}

/// The prefix of a ControlNet's keys in a full LDM ControlNet checkpoint
/// (ControlNet 1.0's `control_sd15_*.pth`); 1.1 files have none.
pub const CONTROLNET: &str = "control_model.";

/// The prefix under which `keys` hold an original (LDM) ControlNet: its
/// control-image embedding `input_hint_block` is under `control_model.` or
/// at the root; `None` when there is none.
pub fn controlnet_prefix<S: AsRef<str>>(keys: &[S]) -> Option<&'static str> {
    [CONTROLNET, ""].into_iter().find(|p| {
        keys.iter()
            .any(|k| k.as_ref().starts_with(&format!("{p}input_hint_block.")))
    })
}

/// Converts an original ControlNet checkpoint (LDM keys: `input_hint_block`,
/// `zero_convs`, `middle_block_out` beside the UNet encoder's) to a diffusers
/// `ControlNetModel`, as diffusers' `convert_controlnet_checkpoint`: the
/// encoder keys as the UNet's, `zero_convs.{i}.0` to
/// `controlnet_down_blocks.{i}`, `middle_block_out.0` to
/// `controlnet_mid_block`, the hint block's first conv to
/// `controlnet_cond_embedding.conv_in`, its last to `conv_out`, those between
/// to `blocks.{k}`. The config is inferred from the shapes (the base model
/// from the text width: 768 SD1.x, 1024 SD2.x, 2048 SDXL); the returned
/// model type is the base's. Keys outside the ControlNet (a full ControlNet
/// 1.0 checkpoint also holds its SD model) are the returned skipped list.
pub fn convert_controlnet<'c>(
    ckpt: &'c Checkpoint,
    opts: &ConvertOptions,
) -> Result<(ModelType, Component<'c>, Vec<String>)> {
    let keys = ckpt.keys();
    let Some(prefix) = controlnet_prefix(&keys) else {
        return Err(SingleFileError::UnknownLayout {
            path: ckpt.path().to_path_buf(),
            n_keys: keys.len(),
            sample: keys.iter().take(5).map(|k| k.to_string()).collect(),
        });
    };
    for name in opts.overrides.keys() {
        if name != "controlnet" {
            return Err(SingleFileError::BadOverride {
                component: name.clone(),
                reason: "a ControlNet checkpoint has one component, `controlnet`".into(),
            });
        }
    }
    let mut b = Builder::new(ckpt, "controlnet");
    let ckeys: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix(prefix)).collect();
    let mut skipped: Vec<String> = keys
        .iter()
        .filter(|k| !k.starts_with(prefix) || (prefix.is_empty() && k.starts_with("model.")))
        .map(|k| k.to_string())
        .collect();
    skipped.sort();
    let ckeys: Vec<&str> = ckeys
        .into_iter()
        .filter(|k| !(prefix.is_empty() && k.starts_with("model.")))
        .collect();
    let xl = ckeys.iter().any(|k| k.starts_with("label_emb."));
    let layers = layers_per_block(&b, &ckeys, prefix)?;
    let per = layers + 1;
    // The hint block: convs at even indices (SiLUs between), the last one out.
    let hint_convs: Vec<usize> = {
        let mut v: Vec<usize> = ckeys
            .iter()
            .filter_map(|k| k.strip_prefix("input_hint_block."))
            .filter_map(|r| r.split('.').next()?.parse().ok())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let last_hint = hint_convs.last().copied().unwrap_or(0);
    for k in &ckeys {
        let full = format!("{prefix}{k}");
        let leaf = k.rsplit('.').next().unwrap_or_default();
        let p: Vec<&str> = k.split('.').collect();
        let target = match (p.first().copied(), parse_idx(p.get(1))) {
            (Some("zero_convs"), Some(i)) if p.get(2) == Some(&"0") && p.len() == 4 => {
                Some(format!("controlnet_down_blocks.{i}.{leaf}"))
            }
            (Some("middle_block_out"), Some(0)) if p.len() == 3 => {
                Some(format!("controlnet_mid_block.{leaf}"))
            }
            (Some("input_hint_block"), Some(j)) if p.len() == 3 && j % 2 == 0 => Some(match j {
                0 => format!("controlnet_cond_embedding.conv_in.{leaf}"),
                j if j == last_hint => format!("controlnet_cond_embedding.conv_out.{leaf}"),
                j => format!("controlnet_cond_embedding.blocks.{}.{leaf}", j / 2 - 1),
            }),
            (Some("out" | "output_blocks"), _) => None,
            _ => unet_target(k, per, xl),
        };
        match target {
            Some(t) => b.copy(&full, t)?,
            None => return Err(b.unmapped(&full)),
        }
    }

    let cross = b
        .out
        .iter()
        .find(|(k, _)| k.contains(".attn2.to_k.weight"))
        .map(|(_, t)| t.shape.get(1).copied().unwrap_or(0))
        .unwrap_or(768);
    let mt = match cross {
        1024 => ModelType::Sd2,
        2048 => ModelType::Sdxl,
        _ => ModelType::Sd1,
    };
    let shape = encoder_shape(&b, mt, prefix)?;
    // The embedding's widths: conv_in's, then each stride-2 conv's output.
    let mut embedding = vec![b.out_dim(
        "controlnet_cond_embedding.conv_in.weight",
        &format!("{prefix}input_hint_block.0.weight"),
        0,
    )?];
    let n_blocks = hint_convs.len().saturating_sub(2);
    for k in (1..n_blocks).step_by(2) {
        embedding.push(b.out_dim(
            &format!("controlnet_cond_embedding.blocks.{k}.weight"),
            &format!("{prefix}input_hint_block.{}.weight", 2 * k + 2),
            0,
        )?);
    }
    let conditioning_channels = b.out_dim(
        "controlnet_cond_embedding.conv_in.weight",
        &format!("{prefix}input_hint_block.0.weight"),
        1,
    )?;
    let mut config = json!({
        "_class_name": "ControlNetModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": null,
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": null,
        "attention_head_dim": shape.heads,
        "block_out_channels": shape.block_out,
        "class_embed_type": null,
        "conditioning_channels": conditioning_channels,
        "conditioning_embedding_out_channels": embedding,
        "controlnet_conditioning_channel_order": "rgb",
        "cross_attention_dim": shape.cross_dim,
        "down_block_types": shape.down_types,
        "downsample_padding": 1,
        "encoder_hid_dim": null,
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "global_pool_conditions": false,
        "in_channels": shape.in_channels,
        "layers_per_block": layers,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "num_attention_heads": null,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "projection_class_embeddings_input_dim": null,
        "resnet_time_scale_shift": "default",
        "transformer_layers_per_block": shape.depth_value,
        "upcast_attention": false,
        "use_linear_projection": shape.linear,
    });
    if xl {
        // SDXL's added embedding: pooled text (1280) and six time ids.
        let adm = b.out_dim(
            "add_embedding.linear_1.weight",
            &format!("{prefix}label_emb.0.0.weight"),
            1,
        )?;
        let text = 1280;
        if adm <= text || !(adm - text).is_multiple_of(6) {
            return Err(b.bad_shape(
                &format!("{prefix}label_emb.0.0.weight"),
                format!("input width {adm} is not text_embeds ({text}) + 6 x time ids"),
            ));
        }
        config["addition_embed_type"] = json!("text_time");
        config["addition_time_embed_dim"] = json!((adm - text) / 6);
        config["projection_class_embeddings_input_dim"] = json!(adm);
    }
    if let Some(o) = opts.overrides.get("controlnet") {
        for (k, v) in o {
            config[k.as_str()] = v.clone();
        }
    }
    Ok((
        mt,
        Component {
            name: "controlnet",
            class: ("diffusers", "ControlNetModel"),
            config,
            weights_file: "diffusion_pytorch_model.safetensors",
            tensors: b.out,
        },
        skipped,
    ))
}

/// Writes one converted model as a diffusers model folder (`config.json`
/// and its weights at the root), atomically as [`write_diffusers_folder`].
pub fn write_model_folder(c: &Component<'_>, out_dir: &Path) -> Result<()> {
    write_atomically(out_dir, |tmp| write_component(c, tmp))
}

struct SafeView<'a, 'b>(&'b OutTensor<'a>);

pub(crate) fn st_dtype(d: &Dtype) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        Dtype::F32 => S::F32,
        Dtype::F16 => S::F16,
        Dtype::BF16 => S::BF16,
        Dtype::F64 => S::F64,
        Dtype::I64 => S::I64,
        Dtype::I32 => S::I32,
        Dtype::I16 => S::I16,
        Dtype::I8 => S::I8,
        Dtype::U64 => S::U64,
        Dtype::U32 => S::U32,
        Dtype::U16 => S::U16,
        Dtype::U8 => S::U8,
        Dtype::Bool => S::BOOL,
        Dtype::F8E4M3 => S::F8_E4M3,
        Dtype::F8E5M2 => S::F8_E5M2,
        Dtype::F8E8M0 => S::F8_E8M0,
        Dtype::C64 => S::C64,
        // Unknown dtypes cannot come out of the readers' mapping paths used here.
        Dtype::Other(_) => S::U8,
    }
}

impl safetensors::View for SafeView<'_, '_> {
    fn dtype(&self) -> safetensors::Dtype {
        st_dtype(&self.0.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0.data)
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

/// Removes the temporary folder unless disarmed.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SingleFileError + '_ {
    move |source| SingleFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `e` with a path under the temporary folder `tmp` shown under `out_dir`.
fn rebase(e: SingleFileError, tmp: &Path, out_dir: &Path) -> SingleFileError {
    let shown = |p: PathBuf| match p.strip_prefix(tmp) {
        Ok(rel) => out_dir.join(rel),
        Err(_) => p,
    };
    match e {
        SingleFileError::Io { path, source } => SingleFileError::Io {
            path: shown(path),
            source,
        },
        SingleFileError::Serialize { path, reason } => SingleFileError::Serialize {
            path: shown(path),
            reason,
        },
        other => other,
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
    text.push('\n');
    fs::write(path, text).map_err(io_err(path))?;
    sync(path)
}

fn sync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Whether `dir` exists and holds anything.
fn non_empty(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(true),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Writes the diffusers folder atomically: a sibling temporary folder is filled,
/// fsynced and renamed to `out_dir`; on any error it is removed. `out_dir` must
/// not exist or be an empty folder.
pub fn write_diffusers_folder(conv: &Converted<'_>, out_dir: &Path) -> Result<()> {
    write_atomically(out_dir, |tmp| {
        write_json(&tmp.join("model_index.json"), &conv.model_index)?;
        for c in &conv.components {
            let dir = tmp.join(c.name);
            fs::create_dir(&dir).map_err(io_err(&dir))?;
            write_component(c, &dir)?;
        }
        let sched = tmp.join("scheduler");
        fs::create_dir(&sched).map_err(io_err(&sched))?;
        write_json(&sched.join("scheduler_config.json"), &conv.scheduler)?;
        sync(&sched)
    })
}

/// `config.json` and the weights of `c` into the folder `dir`, synced.
fn write_component(c: &Component<'_>, dir: &Path) -> Result<()> {
    write_json(&dir.join("config.json"), &c.config)?;
    let file = dir.join(c.weights_file);
    let views: Vec<(&str, SafeView<'_, '_>)> = c
        .tensors
        .iter()
        .map(|(k, t)| (k.as_str(), SafeView(t)))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), &file).map_err(|e| {
        SingleFileError::Serialize {
            path: file.clone(),
            reason: e.to_string(),
        }
    })?;
    sync(&file)?;
    sync(dir)
}

/// Fills a sibling temporary folder with `fill`, fsyncs it and renames it to
/// `out_dir`; on any error it is removed. `out_dir` must not exist or be an
/// empty folder.
fn write_atomically(out_dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if non_empty(out_dir)? {
        return Err(SingleFileError::OutputExists {
            path: out_dir.to_path_buf(),
        });
    }
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(".{base}.tmp-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    fs::create_dir(&tmp).map_err(io_err(out_dir))?;
    let mut guard = TempDir(Some(tmp.clone()));

    // Errors name the files as they will be called, not the temporary folder.
    let filled = fill(&tmp).and_then(|()| sync(&tmp));
    filled.map_err(|e| rebase(e, &tmp, out_dir))?;

    if out_dir.exists() {
        // An empty folder (checked above): replace it.
        fs::remove_dir(out_dir).map_err(io_err(out_dir))?;
    }
    fs::rename(&tmp, out_dir).map_err(io_err(out_dir))?;
    guard.0 = None;
    sync(&parent)?;
    Ok(())
}

/// Summary of a conversion done by [`convert_file`].
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The detected type.
    pub model_type: ModelType,
    /// The pipeline class written to `model_index.json`.
    pub pipeline_class: String,
    /// Tensors written per component.
    pub tensors: Vec<(&'static str, usize)>,
    /// Checkpoint keys not converted.
    pub skipped: Vec<String>,
    /// Pickle globals skipped under [`PickleOptions::skip_unsafe_globals`]
    /// (`module.name`, sorted), for telling the user what was left out.
    pub skipped_globals: Vec<String>,
}

/// Opens `checkpoint`, converts it and writes the diffusers folder `out_dir`.
/// A pickle is read with the default [`PickleOptions`] (see
/// [`Checkpoint::open`]); [`convert_file_with`] takes others.
pub fn convert_file(
    checkpoint: &Path,
    out_dir: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport> {
    convert_file_with(checkpoint, out_dir, opts, &PickleOptions::default())
}

/// [`convert_file`], reading a pickle checkpoint as `pickle` says.
///
/// The pickle options are an argument rather than a [`ConvertOptions`]
/// field: they are about reading the file, not converting it, and other
/// crates build `ConvertOptions` field by field.
pub fn convert_file_with(
    checkpoint: &Path,
    out_dir: &Path,
    opts: &ConvertOptions,
    pickle: &PickleOptions,
) -> Result<ConvertReport> {
    if non_empty(out_dir)? {
        return Err(SingleFileError::OutputExists {
            path: out_dir.to_path_buf(),
        });
    }
    let ckpt = Checkpoint::open_with(checkpoint, pickle)?;
    let conv = convert(&ckpt, opts)?;
    write_diffusers_folder(&conv, out_dir)?;
    Ok(ConvertReport::of(&ckpt, &conv))
}

impl ConvertReport {
    /// What `conv`, converted from `ckpt`, holds.
    pub fn of(ckpt: &Checkpoint, conv: &Converted<'_>) -> Self {
        ConvertReport {
            model_type: conv.model_type,
            pipeline_class: conv.model_index["_class_name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            tensors: conv
                .components
                .iter()
                .map(|c| (c.name, c.tensors.len()))
                .collect(),
            skipped: conv.skipped.clone(),
            skipped_globals: ckpt
                .weights()
                .skipped_globals()
                .into_iter()
                .map(str::to_string)
                .collect(),
        }
    }
}
