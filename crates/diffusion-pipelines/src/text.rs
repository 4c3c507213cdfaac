//! Prompt encoding as diffusers' `encode_prompt` does it.
//!
//! SD 1.x/2.x: the text encoder's `last_hidden_state`, or with `clip_skip = k`
//! the output `k` layers before the last, passed through `final_layer_norm`
//! (the negative prompt ignores `clip_skip`, as in diffusers). SDXL: both
//! encoders' penultimate hidden states (`clip_skip` moves further back, again
//! for the prompt only) concatenated on the channel axis, plus the second
//! encoder's projected pooled output.
//!
//! Prompts are tokenized to 77 ids and truncated beyond, as diffusers does.
//! [`LongPrompt::Chunk`] instead encodes every 75-token window separately and
//! concatenates the windows on the sequence axis (the "long prompt weighting"
//! community approach; the UNet attends over any number of tokens).

use burn::tensor::{Tensor, backend::Backend};
use diffusion_hub::tokenizer::ClipTokenizer;
use diffusion_models::clip::{CLIPTextModel, CLIPTextModelWithProjection, CLIPTextOutput};

use crate::error::{PipelineError, Result};

/// How prompts over the tokenizer's 77 ids are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LongPrompt {
    /// Cut at 77 ids (diffusers' behaviour; parity with it).
    #[default]
    Truncate,
    /// Encode 75-token windows and concatenate them.
    Chunk,
}

/// One of the CLIP text encoders of a pipeline (a few hundred bytes of
/// handles either way; the weights live in the backend).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum TextModel<B: Backend> {
    /// `CLIPTextModel` (SD's encoder, SDXL's first).
    Plain(CLIPTextModel<B>),
    /// `CLIPTextModelWithProjection` (SDXL's second).
    WithProjection(CLIPTextModelWithProjection<B>),
}

impl<B: Backend> TextModel<B> {
    fn forward_ids(&self, ids: &[Vec<u32>]) -> Result<CLIPTextOutput<B>> {
        Ok(match self {
            TextModel::Plain(m) => m.forward_ids(ids)?,
            TextModel::WithProjection(m) => m.forward_ids(ids)?,
        })
    }

    fn final_layer_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            TextModel::Plain(m) => m.text_model.final_layer_norm.forward(x),
            TextModel::WithProjection(m) => m.text_model.final_layer_norm.forward(x),
        }
    }

    /// The number of hidden states (`num_hidden_layers + 1`), for `clip_skip` checks.
    fn num_layers(&self) -> usize {
        match self {
            TextModel::Plain(m) => m.text_model.layers.len(),
            TextModel::WithProjection(m) => m.text_model.layers.len(),
        }
    }

    /// `projection_dim` for the with-projection model.
    pub fn projection_dim(&self) -> Option<usize> {
        match self {
            TextModel::Plain(_) => None,
            TextModel::WithProjection(m) => Some(m.text_projection.weight.dims()[1]),
        }
    }
}

/// A tokenizer and its text encoder.
#[derive(Debug)]
pub struct TextEncoder<B: Backend> {
    pub tokenizer: ClipTokenizer,
    pub model: TextModel<B>,
}

/// Which hidden state a prompt is read from.
#[derive(Debug, Clone, Copy)]
enum Layer {
    /// `last_hidden_state` (final-normed).
    Last,
    /// `hidden_states[-n]`, final-normed.
    FromEndNormed(usize),
    /// `hidden_states[-n]`, raw (SDXL).
    FromEnd(usize),
}

impl<B: Backend> TextEncoder<B> {
    /// Token rows for each prompt: one row each (truncated), or several chunks
    /// padded to the same count across the batch with empty-prompt chunks.
    fn rows(
        &self,
        prompts: &[String],
        long: LongPrompt,
        chunks: usize,
    ) -> Result<Vec<Vec<Vec<u32>>>> {
        match long {
            LongPrompt::Truncate => prompts
                .iter()
                .map(|p| Ok(vec![self.tokenizer.encode(p)?]))
                .collect(),
            LongPrompt::Chunk => {
                let empty = self.tokenizer.encode("")?;
                prompts
                    .iter()
                    .map(|p| {
                        let mut c = self.tokenizer.encode_chunks(p)?;
                        c.resize(chunks.max(c.len()), empty.clone());
                        Ok(c)
                    })
                    .collect()
            }
        }
    }

    /// How many chunks the longest of `prompts` needs.
    fn chunk_count(&self, prompts: &[String], long: LongPrompt) -> Result<usize> {
        if long == LongPrompt::Truncate {
            return Ok(1);
        }
        let mut n = 1;
        for p in prompts {
            n = n.max(self.tokenizer.encode_chunks(p)?.len());
        }
        Ok(n)
    }

    /// Encodes `prompts` (`chunks` windows each) and returns `[B, 77·chunks, C]`
    /// and, for the with-projection model, the pooled `[B, P]` of the first window.
    fn encode(
        &self,
        prompts: &[String],
        layer: Layer,
        long: LongPrompt,
        chunks: usize,
    ) -> Result<(Tensor<B, 3>, Option<Tensor<B, 2>>)> {
        let rows = self.rows(prompts, long, chunks)?;
        let n_chunks = rows.iter().map(Vec::len).max().unwrap_or(1);
        let mut states = Vec::with_capacity(n_chunks);
        let mut pooled = None;
        for c in 0..n_chunks {
            let ids: Vec<Vec<u32>> = rows.iter().map(|r| r[c].clone()).collect();
            let out = self.model.forward_ids(&ids)?;
            if c == 0 {
                pooled = out.text_embeds.clone();
            }
            let h = match layer {
                Layer::Last => out.last_hidden_state,
                Layer::FromEndNormed(n) => {
                    self.model.final_layer_norm(self.hidden_from_end(&out, n)?)
                }
                Layer::FromEnd(n) => self.hidden_from_end(&out, n)?,
            };
            states.push(h);
        }
        Ok((Tensor::cat(states, 1), pooled))
    }

    fn hidden_from_end(&self, out: &CLIPTextOutput<B>, n: usize) -> Result<Tensor<B, 3>> {
        out.hidden_state_from_end(n).ok_or_else(|| {
            PipelineError::parameter(
                "clip_skip",
                format!(
                    "skips past the text encoder's {} layers",
                    self.model.num_layers()
                ),
            )
        })
    }
}

/// Prompt embeddings ready for the UNet (classifier-free guidance batches
/// the negative half first, as diffusers concatenates `[negative, positive]`).
#[derive(Debug, Clone)]
pub struct PromptEmbeds<B: Backend> {
    /// `[B, S, C]` text states of the prompts.
    pub prompt: Tensor<B, 3>,
    /// `[B, S, C]` of the negative prompts (`None` without guidance).
    pub negative: Option<Tensor<B, 3>>,
    /// SDXL: `[B, P]` pooled prompt embedding.
    pub pooled: Option<Tensor<B, 2>>,
    /// SDXL: `[B, P]` pooled negative embedding.
    pub negative_pooled: Option<Tensor<B, 2>>,
}

/// The text inputs of a call.
#[derive(Debug, Clone, Default)]
pub struct PromptInputs<'a> {
    pub prompt: &'a [String],
    pub negative_prompt: Option<&'a [String]>,
    pub prompt_2: Option<&'a [String]>,
    pub negative_prompt_2: Option<&'a [String]>,
    pub clip_skip: Option<usize>,
    pub long_prompt: LongPrompt,
}

/// `negative` broadcast to the batch as diffusers does: absent is `""` for
/// every prompt; one prompt goes with any batch; otherwise the sizes match.
fn negatives(negative: Option<&[String]>, batch: usize, name: &'static str) -> Result<Vec<String>> {
    match negative {
        None => Ok(vec![String::new(); batch]),
        Some([one]) => Ok(vec![one.clone(); batch]),
        Some(list) if list.len() == batch => Ok(list.to_vec()),
        Some(list) => Err(PipelineError::parameter(
            name,
            format!("{} prompts for a batch of {batch} prompts", list.len()),
        )),
    }
}

/// SD 1.x/2.x `encode_prompt`.
pub fn encode_sd<B: Backend>(
    encoder: &TextEncoder<B>,
    inputs: &PromptInputs<'_>,
    guidance: bool,
) -> Result<PromptEmbeds<B>> {
    let batch = inputs.prompt.len();
    let layer = match inputs.clip_skip {
        None => Layer::Last,
        Some(k) => Layer::FromEndNormed(k + 1),
    };
    let neg = if guidance {
        Some(negatives(inputs.negative_prompt, batch, "negative_prompt")?)
    } else {
        None
    };
    let mut all: Vec<String> = inputs.prompt.to_vec();
    if let Some(n) = &neg {
        all.extend(n.iter().cloned());
    }
    let chunks = encoder.chunk_count(&all, inputs.long_prompt)?;
    let (prompt, _) = encoder.encode(inputs.prompt, layer, inputs.long_prompt, chunks)?;
    let negative = match neg {
        Some(n) => Some(
            encoder
                .encode(&n, Layer::Last, inputs.long_prompt, chunks)?
                .0,
        ),
        None => None,
    };
    Ok(PromptEmbeds {
        prompt,
        negative,
        pooled: None,
        negative_pooled: None,
    })
}

/// SDXL `encode_prompt` with both encoders (or, for refiners, only the
/// second, which then reads `prompt`, as diffusers zips the prompts with the
/// encoders present). `force_zeros_for_empty_prompt` (from
/// `model_index.json`) makes an absent negative prompt all zeros.
pub fn encode_sdxl<B: Backend>(
    encoders: &[&TextEncoder<B>],
    inputs: &PromptInputs<'_>,
    guidance: bool,
    force_zeros_for_empty_prompt: bool,
) -> Result<PromptEmbeds<B>> {
    let batch = inputs.prompt.len();
    let prompt_2 = match inputs.prompt_2 {
        Some(p) if p.len() == batch => p.to_vec(),
        Some([one]) => vec![one.clone(); batch],
        Some(p) => {
            return Err(PipelineError::parameter(
                "prompt_2",
                format!("{} prompts for a batch of {batch} prompts", p.len()),
            ));
        }
        None => inputs.prompt.to_vec(),
    };
    let skip = inputs.clip_skip.map_or(2, |k| k + 2);
    let zero_negative = inputs.negative_prompt.is_none() && force_zeros_for_empty_prompt;
    let (neg, neg_2) = if guidance && !zero_negative {
        let n = negatives(inputs.negative_prompt, batch, "negative_prompt")?;
        // diffusers: `negative_prompt_2 = negative_prompt_2 or negative_prompt`.
        let n2 = match inputs.negative_prompt_2 {
            Some(p) => negatives(Some(p), batch, "negative_prompt_2")?,
            None => n.clone(),
        };
        (Some(n), Some(n2))
    } else {
        (None, None)
    };
    let texts = [inputs.prompt.to_vec(), prompt_2];
    let negs = [neg, neg_2];
    let texts = &texts[..encoders.len().min(2)];
    let negs = &negs[..encoders.len().min(2)];
    let mut chunks = 1;
    for (e, (t, n)) in encoders.iter().zip(texts.iter().zip(negs.iter())) {
        chunks = chunks.max(e.chunk_count(t, inputs.long_prompt)?);
        if let Some(n) = n {
            chunks = chunks.max(e.chunk_count(n, inputs.long_prompt)?);
        }
    }
    let mut states = Vec::new();
    let mut neg_states = Vec::new();
    let mut pooled = None;
    let mut neg_pooled = None;
    for (e, (t, n)) in encoders.iter().zip(texts.iter().zip(negs.iter())) {
        let (h, p) = e.encode(t, Layer::FromEnd(skip), inputs.long_prompt, chunks)?;
        states.push(h);
        if p.is_some() {
            pooled = p;
        }
        if let Some(n) = n {
            let (h, p) = e.encode(n, Layer::FromEnd(2), inputs.long_prompt, chunks)?;
            neg_states.push(h);
            if p.is_some() {
                neg_pooled = p;
            }
        }
    }
    let prompt = Tensor::cat(states, 2);
    let pooled = pooled.ok_or_else(|| PipelineError::WrongModel {
        model: "text_encoder_2".into(),
        message: "SDXL needs a CLIPTextModelWithProjection as text_encoder_2".into(),
    })?;
    let (negative, negative_pooled) = if !guidance {
        (None, None)
    } else if zero_negative {
        (Some(prompt.zeros_like()), Some(pooled.zeros_like()))
    } else {
        (Some(Tensor::cat(neg_states, 2)), neg_pooled)
    };
    Ok(PromptEmbeds {
        prompt,
        negative,
        pooled: Some(pooled),
        negative_pooled,
    })
}

/// `x.repeat(1, n, 1).view(b * n, ...)`: each row repeated `n` times in place
/// (p0, p0, p1, p1), as diffusers expands embeddings per image.
pub fn repeat_interleave<B: Backend, const D: usize>(x: Tensor<B, D>, n: usize) -> Tensor<B, D> {
    if n == 1 {
        return x;
    }
    let rows: Vec<Tensor<B, D>> = x
        .iter_dim(0)
        .flat_map(|row| std::iter::repeat_n(row, n))
        .collect();
    Tensor::cat(rows, 0)
}
