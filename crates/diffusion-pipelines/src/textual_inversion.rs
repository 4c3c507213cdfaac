//! Textual-inversion embeddings, as diffusers' `load_textual_inversion`: new
//! tokens in the tokenizer and their vectors appended to the text encoder's
//! token embedding.
//!
//! | format | content | token |
//! |---|---|---|
//! | diffusers (`learned_embeds.safetensors` / `.bin`) | one tensor `{token: [n, d]}` | its key |
//! | A1111 (`.pt`) | `string_to_param: {"*": [n, d]}`, `name` | `name` |
//! | kohya | `emb_params: [n, d]` | — |
//! | SDXL | `clip_l: [n, 768]` and `clip_g: [n, 1280]`, into `text_encoder` and `text_encoder_2` | — |
//!
//! The caller's token wins; without one, a format that names none takes the
//! file's stem (as A1111 does). An embedding of `n > 1` vectors becomes the
//! tokens `tok`, `tok_1`, … `tok_{n-1}`, and a prompt naming `tok` is encoded
//! with all of them (diffusers' `maybe_convert_prompt`).

use crate::error::{PipelineError, Result};
use crate::text::{TextEncoder, TextModel};
use diffusion_hub::torch_pickle::PickleOptions;
use diffusion_hub::weights::{WeightFile, Weights};
use diffusion_models::clip::CLIPTextTransformer;
use std::path::Path;

/// One embedding file: its token (when the file names one) and the vectors
/// for each text encoder.
#[derive(Debug, Clone)]
pub struct EmbeddingFile {
    /// The file, for messages.
    pub file: String,
    /// The token the file names (diffusers' key, A1111's `name`).
    pub token: Option<String>,
    /// `[n, d]` rows for `text_encoder` (row-major) and their width.
    pub first: Option<(Vec<f32>, usize)>,
    /// `[n, d]` rows for `text_encoder_2` (SDXL files' `clip_g`).
    pub second: Option<(Vec<f32>, usize)>,
}

fn error(file: &str, key: &str, message: impl Into<String>) -> PipelineError {
    PipelineError::Adapter {
        file: file.to_string(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// A tensor of `weights` as rows: `[d]` is one row, `[n, d]` n rows.
fn rows(weights: &Weights, file: &str, key: &str) -> Result<(Vec<f32>, usize)> {
    let view = weights.tensor(key)?;
    let width = match view.shape {
        [d] => *d,
        [_, d] => *d,
        other => {
            return Err(error(
                file,
                key,
                format!("shape {other:?}: an embedding is [d] or [vectors, d]"),
            ));
        }
    };
    if width == 0 || view.is_empty() {
        return Err(error(file, key, "an empty embedding"));
    }
    Ok((view.to_f32_vec()?, width))
}

impl EmbeddingFile {
    /// Reads an embedding file in any format of the module docs.
    pub fn open(path: &Path) -> Result<Self> {
        let weights = Weights::open_with(path, &PickleOptions::default())?;
        let file = path.display().to_string();
        let keys: Vec<String> = weights.tensors().map(|(k, _)| k.to_string()).collect();
        let has = |k: &str| keys.iter().any(|x| x == k);
        let name = weights.files().iter().find_map(|f| match f {
            WeightFile::Torch(t) => t.strings().get("name").cloned(),
            _ => None,
        });
        let mut out = EmbeddingFile {
            file: file.clone(),
            token: None,
            first: None,
            second: None,
        };
        if has("clip_l") || has("clip_g") {
            if has("clip_l") {
                out.first = Some(rows(&weights, &file, "clip_l")?);
            }
            if has("clip_g") {
                out.second = Some(rows(&weights, &file, "clip_g")?);
            }
        } else if has("emb_params") {
            out.first = Some(rows(&weights, &file, "emb_params")?);
        } else if has("string_to_param.*") {
            out.first = Some(rows(&weights, &file, "string_to_param.*")?);
            out.token = name;
        } else if keys.len() == 1 {
            out.first = Some(rows(&weights, &file, &keys[0])?);
            out.token = Some(keys[0].clone());
        } else {
            return Err(error(
                &file,
                keys.first().map(String::as_str).unwrap_or(""),
                format!(
                    "not an embedding file ({} tensors; expected one `{{token: tensor}}`, `string_to_param`, `emb_params` or `clip_l`/`clip_g`)",
                    keys.len()
                ),
            ));
        }
        Ok(out)
    }
}

impl<B: burn::tensor::backend::Backend> TextModel<B> {
    fn transformer_mut(&mut self) -> &mut CLIPTextTransformer<B> {
        match self {
            TextModel::Plain(m) => &mut m.text_model,
            TextModel::WithProjection(m) => &mut m.text_model,
        }
    }

    fn transformer(&self) -> &CLIPTextTransformer<B> {
        match self {
            TextModel::Plain(m) => &m.text_model,
            TextModel::WithProjection(m) => &m.text_model,
        }
    }
}

/// Checks that `rows` can go into `encoder` under `token`: the width, the
/// token not yet known, the tokenizer's and encoder's counts equal.
fn check<B: burn::tensor::backend::Backend>(
    encoder: &TextEncoder<B>,
    name: &str,
    file: &str,
    token: &str,
    (values, width): &(Vec<f32>, usize),
) -> Result<()> {
    let hidden = encoder.model.transformer().hidden_size();
    if *width != hidden {
        return Err(error(
            file,
            token,
            format!("an embedding of width {width} for the {name}, whose width is {hidden}"),
        ));
    }
    let vectors = values.len() / width;
    for t in diffusion_hub::tokenizer::embedding_token_names(token, vectors) {
        if encoder.tokenizer.contains(&t) {
            return Err(error(
                file,
                &t,
                format!("the token is already in the {name}'s tokenizer"),
            ));
        }
    }
    let (tokens, vocab) = (
        encoder.tokenizer.len(),
        encoder.model.transformer().vocab_size,
    );
    if tokens != vocab {
        return Err(error(
            file,
            token,
            format!("the {name}'s tokenizer has {tokens} ids but its encoder {vocab} embeddings"),
        ));
    }
    Ok(())
}

fn add<B: burn::tensor::backend::Backend>(
    encoder: &mut TextEncoder<B>,
    token: &str,
    (values, width): &(Vec<f32>, usize),
) -> Result<()> {
    let ids = encoder
        .tokenizer
        .add_embedding_tokens(token, values.len() / width)?;
    encoder
        .model
        .transformer_mut()
        .append_token_embeddings(ids[0] as usize, values)?;
    Ok(())
}

impl<B: burn::tensor::backend::Backend> crate::StableDiffusion<B> {
    /// diffusers' `load_textual_inversion(path, token)`: adds the file's
    /// token (or `token`; see the [module docs](crate::textual_inversion))
    /// to the tokenizer(s) and its vectors to the text encoder(s). Returns
    /// the tokens added. On an error (a token already known, a width that
    /// does not fit, an SDXL file for a pipeline with one encoder) nothing
    /// changes.
    pub fn load_textual_inversion(
        &mut self,
        path: &Path,
        token: Option<&str>,
    ) -> Result<Vec<String>> {
        let file = EmbeddingFile::open(path)?;
        self.add_embedding(&file, token)
    }

    /// [`crate::StableDiffusion::load_textual_inversion`] of a read file.
    pub fn add_embedding(
        &mut self,
        file: &EmbeddingFile,
        token: Option<&str>,
    ) -> Result<Vec<String>> {
        let stem = Path::new(&file.file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        let token = token
            .map(str::to_string)
            .or_else(|| file.token.clone())
            .or(stem)
            .ok_or_else(|| error(&file.file, "", "no token given and none in the file"))?;
        let mut plan = Vec::new();
        for (rows, encoder, name) in [
            (&file.first, &self.text_encoder, "text_encoder"),
            (&file.second, &self.text_encoder_2, "text_encoder_2"),
        ] {
            let Some(rows) = rows else { continue };
            let Some(encoder) = encoder else {
                return Err(error(
                    &file.file,
                    &token,
                    format!(
                        "the file has vectors for the {name}, which this pipeline does not have"
                    ),
                ));
            };
            check(encoder, name, &file.file, &token, rows)?;
            plan.push((name, rows));
        }
        for (name, rows) in plan {
            let encoder = match name {
                "text_encoder" => self.text_encoder.as_mut(),
                _ => self.text_encoder_2.as_mut(),
            }
            .expect("checked above");
            add(encoder, &token, rows)?;
        }
        let vectors = file
            .first
            .as_ref()
            .or(file.second.as_ref())
            .map(|(v, w)| v.len() / w)
            .unwrap_or(1);
        Ok(diffusion_hub::tokenizer::embedding_token_names(
            &token, vectors,
        ))
    }
}
