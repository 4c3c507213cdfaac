//! The CLIP text encoders of Stable Diffusion: transformers'
//! `CLIPTextModel` (SD 1.x: OpenAI CLIP ViT-L/14 with `quick_gelu`; SD 2.x:
//! OpenCLIP ViT-H with `gelu`; SDXL's first encoder) and
//! `CLIPTextModelWithProjection` (SDXL's second encoder, OpenCLIP bigG, whose
//! projected pooled output conditions the UNet).
//!
//! The module tree and parameter names are transformers' exactly
//! (`text_model.encoder.layers.N.self_attn.q_proj.weight`, …), so the Hub's
//! `text_encoder/model.safetensors` loads as stored. The encoder is a pre-norm
//! transformer with a causal mask; the pooled output is the final-normed state
//! at the end-of-text token.

use crate::adapter::AdapterTable;
use crate::attention::scaled_dot_product_attention;
use crate::config::{FieldCheck, Loaded, ModelConfig, read_config};
use crate::error::{ModelError, Result};
use crate::formulation::AttentionFormulation;
use crate::load::{Init, Loader, Precision};
use crate::nn::{Activation, LayerNorm, Linear};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{DType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Keys that may be in a checkpoint without being parameters: older
/// transformers releases saved the `position_ids` buffer (`arange(max_pos)`,
/// int64) with the weights.
pub const IGNORABLE_KEYS: &[&str] = &["embeddings.position_ids"];

/// The `eos_token_id` with which transformers keeps the pre-#24773 pooling
/// (argmax of the ids, the tokenizer's end-of-text being its highest id):
/// every SD 1.x `text_encoder/config.json` says 2.
const LEGACY_EOS_TOKEN_ID: i64 = 2;

/// A token id field, which transformers allows to be a single id or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenId {
    /// One id.
    One(i64),
    /// Several ids (not used by CLIP's pooling; rejected at load).
    Many(Vec<i64>),
}

/// transformers' `CLIPTextConfig`, with its field names and defaults (those
/// of `openai/clip-vit-base-patch32`). A text encoder's `config.json` is this
/// config itself; `architectures`, `dtype`/`torch_dtype`,
/// `transformers_version` and the like are reported as ignored fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CLIPTextConfig {
    /// Token vocabulary (49408 for every SD encoder).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Output width of `text_projection` (with projection only).
    #[serde(default = "default_projection_dim")]
    pub projection_dim: Option<usize>,
    /// Encoder layers (12 for CLIP-L, 23 for SD 2's truncated OpenCLIP-H, 32 for bigG).
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Longest token sequence (77).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// MLP activation: `quick_gelu` (OpenAI CLIP) or `gelu` (OpenCLIP).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Training only.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Training only.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Training only.
    #[serde(default = "default_initializer_factor")]
    pub initializer_factor: f64,
    /// Padding id (the tokenizer pads; the model does not look at it).
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: Option<i64>,
    /// Start-of-text id (informational).
    #[serde(default = "default_bos_token_id")]
    pub bos_token_id: Option<i64>,
    /// End-of-text id, which selects the pooled position; 2 means the legacy
    /// argmax rule (see [`CLIPTextTransformer::pool_positions`]).
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: Option<TokenId>,
    /// `clip_text_model` (checked: a full CLIP config nests the text config).
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_vocab_size() -> usize {
    49408
}
fn default_hidden_size() -> usize {
    512
}
fn default_intermediate_size() -> usize {
    2048
}
fn default_projection_dim() -> Option<usize> {
    Some(512)
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    8
}
fn default_max_position_embeddings() -> usize {
    77
}
fn default_hidden_act() -> Activation {
    Activation::QuickGelu
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_initializer_factor() -> f64 {
    1.0
}
fn default_pad_token_id() -> Option<i64> {
    Some(1)
}
fn default_bos_token_id() -> Option<i64> {
    Some(49406)
}
fn default_eos_token_id() -> Option<TokenId> {
    Some(TokenId::One(49407))
}

impl Default for CLIPTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl CLIPTextConfig {
    /// Reads and validates `config.json` (any path).
    pub fn read(path: &Path) -> Result<Loaded<Self>> {
        read_config(path)
    }

    /// The single end-of-text id, if any.
    fn eos_id(&self) -> Option<i64> {
        match self.eos_token_id {
            Some(TokenId::One(id)) => Some(id),
            _ => None,
        }
    }
}

/// Checks what the model cannot be built with, naming the field.
impl ModelConfig for CLIPTextConfig {
    fn validate(&self, source_name: &str) -> Result<()> {
        let check = FieldCheck::new(source_name);
        if let Some(t) = &self.model_type
            && t != "clip_text_model"
        {
            let hint = if t == "clip" {
                ": a full CLIP config nests the text encoder's under `text_config`; \
                 point at a text encoder's config.json"
            } else {
                ""
            };
            return Err(ModelError::config(
                source_name,
                "model_type",
                format!("expected \"clip_text_model\", found {t:?}{hint}"),
            ));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            check.width(field, value)?;
        }
        if let Some(p) = self.projection_dim {
            check.width("projection_dim", p)?;
        }
        // At least one: the pipelines read `hidden_states[-2]` (SDXL's
        // penultimate layer, `clip_skip`), which 0 layers do not have.
        check.layers("num_hidden_layers", self.num_hidden_layers)?;
        check.positive("layer_norm_eps", self.layer_norm_eps)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::config(
                source_name,
                "num_attention_heads",
                format!(
                    "hidden_size {} is not a multiple of {} heads",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if let Some(TokenId::Many(ids)) = &self.eos_token_id {
            return Err(ModelError::config(
                source_name,
                "eos_token_id",
                format!("a list of ids ({ids:?}) does not say which token CLIP pools at"),
            ));
        }
        Ok(())
    }
}

/// `CLIPTextEmbeddings`: token plus learned absolute position embeddings.
#[derive(Module, Debug)]
pub struct CLIPTextEmbeddings<B: Backend> {
    /// `[vocab_size, hidden_size]`.
    pub token_embedding: Param<Tensor<B, 2>>,
    /// `[max_position_embeddings, hidden_size]`.
    pub position_embedding: Param<Tensor<B, 2>>,
}

impl<B: Backend> CLIPTextEmbeddings<B> {
    /// Loads `token_embedding.weight` and `position_embedding.weight`.
    pub fn load(loader: &Loader<B>, cfg: &CLIPTextConfig) -> Result<Self> {
        // transformers initialises both embeddings from N(0, 0.02).
        let init = Init::Normal(cfg.initializer_range * cfg.initializer_factor);
        Ok(CLIPTextEmbeddings {
            token_embedding: loader.pp("token_embedding").param(
                "weight",
                [cfg.vocab_size, cfg.hidden_size],
                init,
            )?,
            position_embedding: loader.pp("position_embedding").param(
                "weight",
                [cfg.max_position_embeddings, cfg.hidden_size],
                init,
            )?,
        })
    }

    /// `[B, L]` ids (validated by the caller) to `[B, L, C]`; positions `0..L`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, l] = input_ids.dims();
        let tokens = embedding(self.token_embedding.val(), input_ids);
        let positions = self.position_embedding.val().narrow(0, 0, l);
        tokens + positions.unsqueeze::<3>()
    }
}

/// `CLIPAttention`: multi-head self-attention with `q_proj`, `k_proj`,
/// `v_proj`, `out_proj` (all with bias), causal in the text model.
#[derive(Module, Debug)]
pub struct CLIPAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    /// Heads.
    pub heads: usize,
    /// `head_dim^-0.5`.
    pub scale: f64,
    /// Fused op or two matmuls (the causal mask always runs fused).
    pub formulation: AttentionFormulation,
}

impl<B: Backend> CLIPAttention<B> {
    /// Loads the four projections.
    pub fn load(loader: &Loader<B>, cfg: &CLIPTextConfig) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(CLIPAttention {
            q_proj: Linear::load(&loader.pp("q_proj"), c, c, true)?,
            k_proj: Linear::load(&loader.pp("k_proj"), c, c, true)?,
            v_proj: Linear::load(&loader.pp("v_proj"), c, c, true)?,
            out_proj: Linear::load(&loader.pp("out_proj"), c, c, true)?,
            heads: cfg.num_attention_heads,
            scale: 1.0 / ((c / cfg.num_attention_heads) as f64).sqrt(),
            formulation: loader.formulation().attention,
        })
    }

    /// Self-attention over `x` `[B, L, C]`; each position sees itself and the
    /// positions before it when `causal`.
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let [b, l, c] = x.dims();
        let split = |t: Tensor<B, 3>| {
            t.reshape([b, l, self.heads, c / self.heads])
                .swap_dims(1, 2)
        };
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let out =
            scaled_dot_product_attention(q, k, v, self.scale, causal, false, self.formulation);
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, l, c]))
    }
}

/// `CLIPMLP`: `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct CLIPMLP<B: Backend> {
    /// Widening projection.
    pub fc1: Linear<B>,
    /// Narrowing projection.
    pub fc2: Linear<B>,
    /// `hidden_act`.
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> CLIPMLP<B> {
    /// Loads `fc1` and `fc2`.
    pub fn load(loader: &Loader<B>, cfg: &CLIPTextConfig) -> Result<Self> {
        Ok(CLIPMLP {
            fc1: Linear::load(
                &loader.pp("fc1"),
                cfg.hidden_size,
                cfg.intermediate_size,
                true,
            )?,
            fc2: Linear::load(
                &loader.pp("fc2"),
                cfg.intermediate_size,
                cfg.hidden_size,
                true,
            )?,
            act: cfg.hidden_act,
        })
    }

    /// Applies the MLP over the last dimension.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2.forward(self.fc1.forward_act(x, self.act))
    }
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP, each with a residual.
#[derive(Module, Debug)]
pub struct CLIPEncoderLayer<B: Backend> {
    /// Attention.
    pub self_attn: CLIPAttention<B>,
    /// Norm before attention.
    pub layer_norm1: LayerNorm<B>,
    /// MLP.
    pub mlp: CLIPMLP<B>,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm<B>,
}

impl<B: Backend> CLIPEncoderLayer<B> {
    /// Loads one `encoder.layers.N`.
    pub fn load(loader: &Loader<B>, cfg: &CLIPTextConfig) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(CLIPEncoderLayer {
            self_attn: CLIPAttention::load(&loader.pp("self_attn"), cfg)?,
            layer_norm1: LayerNorm::load(&loader.pp("layer_norm1"), c, cfg.layer_norm_eps)?,
            mlp: CLIPMLP::load(&loader.pp("mlp"), cfg)?,
            layer_norm2: LayerNorm::load(&loader.pp("layer_norm2"), c, cfg.layer_norm_eps)?,
        })
    }

    /// One layer, causal attention.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), true);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// What the text encoders return (transformers' output with
/// `output_hidden_states=True`).
#[derive(Debug, Clone)]
pub struct CLIPTextOutput<B: Backend> {
    /// The embeddings' output followed by every layer's output (`num_hidden_layers + 1`
    /// tensors `[B, L, C]`, none final-normed).
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// The last layer's output after `final_layer_norm` `[B, L, C]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `last_hidden_state` at each sequence's end-of-text position `[B, C]`.
    pub pooler_output: Tensor<B, 2>,
    /// `text_projection(pooler_output)` `[B, projection_dim]`
    /// ([`CLIPTextModelWithProjection`] only).
    pub text_embeds: Option<Tensor<B, 2>>,
}

impl<B: Backend> CLIPTextOutput<B> {
    /// `hidden_states[-n]` in Python's terms: `n = 1` is the last layer's
    /// output (before `final_layer_norm`), `n = 2` the penultimate one that
    /// SDXL conditions on, `n = clip_skip + 1` what SD's `clip_skip` picks.
    /// `None` when `n` is 0 or beyond the embeddings' output.
    pub fn hidden_state_from_end(&self, n: usize) -> Option<Tensor<B, 3>> {
        let len = self.hidden_states.len();
        (n >= 1 && n <= len).then(|| self.hidden_states[len - n].clone())
    }

    /// The penultimate layer's output, `hidden_states[-2]` (SDXL's prompt embeddings).
    pub fn penultimate(&self) -> Tensor<B, 3> {
        self.hidden_state_from_end(2)
            .expect("a CLIP text model has at least one layer")
    }
}

/// transformers' `CLIPTextTransformer`-shaped body (in transformers 5 named
/// `CLIPTextModel`): embeddings, encoder, final norm and EOS pooling. It is
/// the `text_model` of both top-level models.
#[derive(Module, Debug)]
pub struct CLIPTextTransformer<B: Backend> {
    /// Token and position embeddings.
    pub embeddings: CLIPTextEmbeddings<B>,
    /// `encoder.layers`.
    pub layers: Vec<CLIPEncoderLayer<B>>,
    /// Norm on the last layer's output.
    pub final_layer_norm: LayerNorm<B>,
    /// `vocab_size`, for validating ids.
    pub vocab_size: usize,
    /// `max_position_embeddings`, for validating lengths.
    pub max_position_embeddings: usize,
    /// The pooling rule's end-of-text id (`None`: transformers then pools at position 0).
    #[module(skip)]
    pub eos_token_id: Option<i64>,
}

impl<B: Backend> CLIPTextTransformer<B> {
    /// Loads `embeddings`, `encoder.layers.*` and `final_layer_norm` under `loader`.
    pub fn load(loader: &Loader<B>, cfg: &CLIPTextConfig) -> Result<Self> {
        cfg.validate("config")?;
        let embeddings = CLIPTextEmbeddings::load(&loader.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| CLIPEncoderLayer::load(&loader.pp("encoder.layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(CLIPTextTransformer {
            embeddings,
            layers,
            final_layer_norm: LayerNorm::load(
                &loader.pp("final_layer_norm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            vocab_size: cfg.vocab_size,
            max_position_embeddings: cfg.max_position_embeddings,
            eos_token_id: cfg.eos_id(),
        })
    }

    /// Appends textual-inversion rows to the token embedding (transformers'
    /// `resize_token_embeddings`, then the new rows set): `rows` holds whole
    /// rows of `hidden_size` values for ids `first_id..`, and `first_id` must
    /// be the current vocabulary size (the tokenizer's and the encoder's
    /// counts agree). Returns the new vocabulary size; on an error nothing
    /// changes.
    pub fn append_token_embeddings(&mut self, first_id: usize, rows: &[f32]) -> Result<usize> {
        let [vocab, hidden] = self.embeddings.token_embedding.dims();
        if first_id != vocab {
            return Err(ModelError::input(
                "token embedding",
                format!(
                    "the new tokens start at id {first_id}, but the text encoder has {vocab} embeddings (tokenizer and encoder disagree)"
                ),
            ));
        }
        if rows.is_empty() || !rows.len().is_multiple_of(hidden) {
            return Err(ModelError::input(
                "token embedding",
                format!(
                    "{} values are not whole rows of the encoder's width {hidden}",
                    rows.len()
                ),
            ));
        }
        let n = rows.len() / hidden;
        let weight = self.embeddings.token_embedding.val();
        let (device, dtype) = (weight.device(), weight.dtype());
        let data = TensorData::new(rows.to_vec(), [n, hidden]);
        let new = Tensor::<B, 2>::from_data(data, (&device, DType::F32));
        let new = crate::nn::to_dtype(new, dtype);
        self.embeddings.token_embedding = self
            .embeddings
            .token_embedding
            .clone()
            .map(|t| Tensor::cat(vec![t, new], 0));
        self.vocab_size = vocab + n;
        Ok(self.vocab_size)
    }

    /// The width of a token embedding (`hidden_size`).
    pub fn hidden_size(&self) -> usize {
        self.embeddings.token_embedding.dims()[1]
    }

    /// Checks `[B, L]` ids against the vocabulary and the position table and
    /// returns them row by row.
    pub fn validate_ids(&self, input_ids: &Tensor<B, 2, Int>) -> Result<Vec<Vec<i64>>> {
        let [b, l] = input_ids.dims();
        if b == 0 || l == 0 {
            return Err(ModelError::input(
                "input_ids",
                format!("empty batch or sequence (shape [{b}, {l}])"),
            ));
        }
        if l > self.max_position_embeddings {
            return Err(ModelError::input(
                "input_ids",
                format!(
                    "sequence length {l} exceeds max_position_embeddings {}",
                    self.max_position_embeddings
                ),
            ));
        }
        let flat: Vec<i64> = input_ids
            .to_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| ModelError::input("input_ids", format!("unreadable ids: {e:?}")))?;
        let rows: Vec<Vec<i64>> = flat.chunks(l).map(<[i64]>::to_vec).collect();
        for (row, ids) in rows.iter().enumerate() {
            if let Some((col, &id)) = ids
                .iter()
                .enumerate()
                .find(|(_, id)| **id < 0 || **id as u64 >= self.vocab_size as u64)
            {
                return Err(ModelError::input(
                    "input_ids",
                    format!(
                        "token id {id} at [{row}, {col}] is outside the vocabulary (vocab_size {})",
                        self.vocab_size
                    ),
                ));
            }
        }
        Ok(rows)
    }

    /// Where each sequence is pooled, by transformers' rule: with the legacy
    /// `eos_token_id == 2`, the position of the highest id (its first
    /// occurrence: CLIP's end-of-text is the last id of its vocabulary, and
    /// SD 1.x pads with it); otherwise the first position holding
    /// `eos_token_id` (padding may repeat it), or 0 when none does, as
    /// `argmax` of an all-false mask gives.
    pub fn pool_positions(&self, rows: &[Vec<i64>]) -> Vec<usize> {
        rows.iter()
            .map(|ids| match self.eos_token_id {
                Some(LEGACY_EOS_TOKEN_ID) => first_argmax(ids),
                Some(eos) => ids.iter().position(|&id| id == eos).unwrap_or(0),
                None => 0,
            })
            .collect()
    }

    /// Runs the encoder on validated ids.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<CLIPTextOutput<B>> {
        let rows = self.validate_ids(&input_ids)?;
        let [b, l] = input_ids.dims();
        let device = input_ids.device();
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        let mut x = self.embeddings.forward(input_ids);
        hidden_states.push(x.clone());
        for layer in &self.layers {
            x = layer.forward(x);
            hidden_states.push(x.clone());
        }
        let last_hidden_state = self.final_layer_norm.forward(x);
        let c = last_hidden_state.dims()[2];
        let flat_positions: Vec<i64> = self
            .pool_positions(&rows)
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i * l + p) as i64)
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat_positions, [b]), &device);
        let pooler_output = last_hidden_state
            .clone()
            .reshape([b * l, c])
            .select(0, index);
        Ok(CLIPTextOutput {
            hidden_states,
            last_hidden_state,
            pooler_output,
            text_embeds: None,
        })
    }
}

/// Index of the first maximum, as `torch.argmax` returns it.
fn first_argmax(ids: &[i64]) -> usize {
    let mut best = 0;
    for (i, &id) in ids.iter().enumerate() {
        if id > ids[best] {
            best = i;
        }
    }
    best
}

/// Token ids from rows of equal length, as a `[B, L]` tensor.
pub fn ids_tensor<B: Backend>(rows: &[Vec<u32>], device: &B::Device) -> Result<Tensor<B, 2, Int>> {
    let l = rows.first().map_or(0, Vec::len);
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != l) {
        return Err(ModelError::input(
            "input_ids",
            format!("row {i} has {} ids, row 0 has {l}", r.len()),
        ));
    }
    let flat: Vec<i64> = rows.iter().flatten().map(|&id| i64::from(id)).collect();
    Ok(Tensor::from_data(
        TensorData::new(flat, [rows.len(), l]),
        device,
    ))
}

/// Which prefix a checkpoint stores the text model under: the Hub's files
/// (transformers 4 and everything SD ships) use `text_model.`; transformers 5
/// saves a freshly built `CLIPTextModel` without it (and strips it on load).
fn text_model_loader<'a, B: Backend>(loader: &Loader<'a, B>) -> Loader<'a, B> {
    let probe = "embeddings.token_embedding.weight";
    if !loader.contains(&format!("text_model.{probe}")) && loader.contains(probe) {
        loader.clone()
    } else {
        loader.pp("text_model")
    }
}

/// transformers' `CLIPTextModel` (SD 1.x/2.x `text_encoder`, SDXL's first).
#[derive(Module, Debug)]
pub struct CLIPTextModel<B: Backend> {
    /// The encoder.
    pub text_model: CLIPTextTransformer<B>,
    /// The adapters on its layers ([`crate::adapter`]).
    #[module(skip)]
    pub adapters: AdapterTable,
}

impl<B: Backend> CLIPTextModel<B> {
    /// Loads from `loader` (keys under `text_model.`, or at the root as
    /// transformers 5 saves them) and checks that no key is left over
    /// (`position_ids` excepted).
    pub fn load(loader: &Loader<B>, cfg: &CLIPTextConfig) -> Result<Self> {
        let text_model = CLIPTextTransformer::load(&text_model_loader(loader), cfg)?;
        loader.clone().finish(IGNORABLE_KEYS)?;
        Ok(CLIPTextModel {
            text_model,
            adapters: loader.adapters(),
        })
    }

    /// Reads `dir/config.json` and `dir/model.safetensors` (or its sharded index).
    pub fn from_dir(dir: &Path, device: &B::Device, precision: Precision) -> Result<Self> {
        let cfg = CLIPTextConfig::read(&dir.join("config.json"))?.config;
        let weights = crate::config::open_weights(dir, crate::config::TRANSFORMERS_WEIGHTS)?;
        Self::load(&Loader::new(&weights, device, precision), &cfg)
    }

    /// Encodes `[B, L]` token ids (`L ≤ max_position_embeddings`, ids `< vocab_size`).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<CLIPTextOutput<B>> {
        self.text_model.forward(input_ids)
    }

    /// [`CLIPTextModel::forward`] on rows of token ids of equal length.
    pub fn forward_ids(&self, ids: &[Vec<u32>]) -> Result<CLIPTextOutput<B>> {
        let device = self.text_model.embeddings.token_embedding.val().device();
        self.forward(ids_tensor(ids, &device)?)
    }
}

/// transformers' `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`):
/// the text model plus a bias-free `text_projection` of the pooled output.
#[derive(Module, Debug)]
pub struct CLIPTextModelWithProjection<B: Backend> {
    /// The encoder.
    pub text_model: CLIPTextTransformer<B>,
    /// `[hidden_size] → [projection_dim]`, no bias.
    pub text_projection: Linear<B>,
    /// The adapters on its layers ([`crate::adapter`]).
    #[module(skip)]
    pub adapters: AdapterTable,
}

impl<B: Backend> CLIPTextModelWithProjection<B> {
    /// Loads `text_model.*` and `text_projection.weight`, strictly.
    pub fn load(loader: &Loader<B>, cfg: &CLIPTextConfig) -> Result<Self> {
        let text_model = CLIPTextTransformer::load(&loader.pp("text_model"), cfg)?;
        let projection_dim = cfg.projection_dim.ok_or_else(|| {
            ModelError::config(
                "config",
                "projection_dim",
                "null, but CLIPTextModelWithProjection needs the projection's width",
            )
        })?;
        let text_projection = Linear::load(
            &loader.pp("text_projection"),
            cfg.hidden_size,
            projection_dim,
            false,
        )?;
        loader.clone().finish(IGNORABLE_KEYS)?;
        Ok(CLIPTextModelWithProjection {
            text_model,
            text_projection,
            adapters: loader.adapters(),
        })
    }

    /// Reads `dir/config.json` and `dir/model.safetensors` (or its sharded index).
    pub fn from_dir(dir: &Path, device: &B::Device, precision: Precision) -> Result<Self> {
        let cfg = CLIPTextConfig::read(&dir.join("config.json"))?.config;
        let weights = crate::config::open_weights(dir, crate::config::TRANSFORMERS_WEIGHTS)?;
        Self::load(&Loader::new(&weights, device, precision), &cfg)
    }

    /// Encodes `[B, L]` token ids; `text_embeds` is set.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<CLIPTextOutput<B>> {
        let mut out = self.text_model.forward(input_ids)?;
        out.text_embeds = Some(self.text_projection.forward(out.pooler_output.clone()));
        Ok(out)
    }

    /// [`CLIPTextModelWithProjection::forward`] on rows of token ids of equal length.
    pub fn forward_ids(&self, ids: &[Vec<u32>]) -> Result<CLIPTextOutput<B>> {
        let device = self.text_model.embeddings.token_embedding.val().device();
        self.forward(ids_tensor(ids, &device)?)
    }
}
