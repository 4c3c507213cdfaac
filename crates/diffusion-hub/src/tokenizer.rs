//! CLIP tokenizers as the Stable Diffusion pipelines use them.
//!
//! [`ClipTokenizer::from_dir`] loads a tokenizer folder (a repo's `tokenizer/` or
//! `tokenizer_2/`): either `tokenizer.json`, or `vocab.json` + `merges.txt` (what the
//! SD repos ship), together with `tokenizer_config.json` and `special_tokens_map.json`
//! (special tokens, `model_max_length`, `added_tokens_decoder`; `do_lower_case` has no
//! effect in transformers' CLIPTokenizer, which always lowercases). The
//! pad token is where SD1 and SD2 differ: SD1 pads with `<|endoftext|>` (49407), SD2
//! with `!` (0); `!` then also becomes a special token, so a `!` in a SD2 prompt is
//! id 0 instead of the BPE token `!</w>`, exactly as in transformers.
//!
//! Two behaviours are available ([`ClipFlavor`]), both checked id for id against
//! Python on the fixture prompts (`tests/tokenizer_parity.rs`):
//!
//! * [`ClipFlavor::Transformers5`] (the default): transformers 5's `CLIPTokenizer`,
//!   the tokenizers-backed class diffusers loads (normalizer NFC, `\s+` -> " ",
//!   lowercase; split on CLIP's pattern; byte-level; BPE with `</w>`; special tokens
//!   matched as transformers registers them). It is also what transformers 4's
//!   `CLIPTokenizerFast` does, except that transformers 5 registers `<|endoftext|>` as a
//!   non-normalized token when the config's pad token is the plain string
//!   `"<|endoftext|>"` (SD1), so `<|ENDOFTEXT|>` in upper case is not a special token.
//! * [`ClipFlavor::SlowV4`]: transformers 4's pure-Python `CLIPTokenizer` without
//!   `ftfy` (its `BasicTokenizer` fallback: control and format characters removed
//!   (zero-width space, soft hyphen, ZWJ, BOM, U+FFFD), CJK ideographs split into
//!   single characters, lowercasing per word, whitespace collapsed). It differs from
//!   the default only on prompts with such characters.
//!
//! All encodings are `BOS ids EOS`; [`ClipTokenizer::encode`] truncates to
//! `model_max_length` (keeping the EOS) and pads with the pad id, like
//! `tokenizer(prompt, padding="max_length", max_length=77, truncation=True)`. No
//! attention mask is produced: the SD text encoders are called without one.
//!
//! Long prompts: [`ClipTokenizer::encode_chunks`] implements the scheme of the
//! community "long prompt weighting" pipelines and A1111's webui (without A1111's
//! back-off to the last comma): the untruncated ids without BOS/EOS are cut into
//! windows of `model_max_length - 2` ids; each window becomes `BOS window EOS` padded
//! to `model_max_length`. The text encoder runs on each window and the hidden states
//! are concatenated along the sequence axis (the negative prompt is chunked the same
//! way and padded with empty chunks to the same count). A prompt that fits gives one
//! chunk, equal to [`ClipTokenizer::encode`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value, json};
use tokenizers::models::ModelWrapper;
use tokenizers::utils::SysRegex;
use tokenizers::{Model, Tokenizer};

/// `model_max_length` when the config has none (CLIP's 77 positions).
pub const DEFAULT_MODEL_MAX_LENGTH: usize = 77;

/// The number of merges the CLIP vocabulary uses (49152 - 256 - 2); the slow
/// transformers 4 tokenizer reads at most this many lines of `merges.txt`.
pub const CLIP_NUM_MERGES: usize = 49152 - 256 - 2;

/// transformers writes `model_max_length` = int(1e30) for "no limit".
const HUGE_MAX_LENGTH: f64 = 1e29;

/// CLIP's pre-tokenization pattern (transformers' `CLIPTokenizer`).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Errors of this module; each names the file (or field) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{dir}: no tokenizer files (expected tokenizer.json, or vocab.json and merges.txt)")]
    NoTokenizerFiles { dir: PathBuf },
    #[error("{path}: {field} = {token:?} is not in the vocabulary")]
    UnknownSpecialToken {
        path: PathBuf,
        field: String,
        token: String,
    },
    #[error("{path}: cannot build the tokenizer: {reason}")]
    Build { path: PathBuf, reason: String },
    #[error("cannot tokenize {prompt:?}: {reason}")]
    Encode { prompt: String, reason: String },
    #[error("token {token:?}: {reason}")]
    AddToken { token: String, reason: String },
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// Which transformers behaviour to reproduce (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClipFlavor {
    /// transformers 5 `CLIPTokenizer` (tokenizers-backed), as diffusers loads it.
    #[default]
    Transformers5,
    /// transformers 4 slow `CLIPTokenizer` without ftfy (BasicTokenizer fallback).
    SlowV4,
}

/// The tokens of an embedding of `vectors` vectors: `token`, `token_1`, …
pub fn embedding_token_names(token: &str, vectors: usize) -> Vec<String> {
    (0..vectors)
        .map(|i| match i {
            0 => token.to_string(),
            i => format!("{token}_{i}"),
        })
        .collect()
}

/// A CLIP BPE tokenizer with the ids layout of the SD text encoders.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    slow: Option<SlowClip>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    model_max_length: usize,
    /// Textual-inversion tokens with more than one vector, and their counts.
    multi_vector: BTreeMap<String, usize>,
}

impl ClipTokenizer {
    /// Loads a tokenizer folder with the default flavor ([`ClipFlavor::Transformers5`]).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_dir_with(dir, ClipFlavor::default())
    }

    /// Loads a tokenizer folder: `tokenizer.json` if present, else `vocab.json` +
    /// `merges.txt`; `tokenizer_config.json` and `special_tokens_map.json` if present.
    pub fn from_dir_with(dir: impl AsRef<Path>, flavor: ClipFlavor) -> Result<Self> {
        let dir = dir.as_ref();
        let config = Config::load(dir)?;
        let tokenizer_json = dir.join("tokenizer.json");
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let (source, mut doc) = if tokenizer_json.is_file() {
            let doc = read_json(&tokenizer_json)?;
            (tokenizer_json, doc)
        } else if vocab_path.is_file() && merges_path.is_file() {
            let doc = pipeline_from_vocab(&vocab_path, &merges_path, &config)?;
            (vocab_path, doc)
        } else {
            return Err(TokenizerError::NoTokenizerFiles {
                dir: dir.to_path_buf(),
            });
        };
        let vocab = model_vocab(&doc, &source)?;
        set_added_tokens(&mut doc, &config, &vocab, &source)?;
        let tokenizer =
            Tokenizer::from_str(&doc.to_string()).map_err(|e| TokenizerError::Build {
                path: source.clone(),
                reason: e.to_string(),
            })?;
        let id_of = |field: &str, token: &Option<TokenSpec>| -> Result<Option<u32>> {
            match token {
                None => Ok(None),
                Some(t) => tokenizer.token_to_id(&t.content).map(Some).ok_or_else(|| {
                    TokenizerError::UnknownSpecialToken {
                        path: config.source_of(field),
                        field: field.to_string(),
                        token: t.content.clone(),
                    }
                }),
            }
        };
        let required = |field: &str, token: &Option<TokenSpec>| -> Result<u32> {
            id_of(field, token)?.ok_or_else(|| TokenizerError::Invalid {
                path: config.source_of(field),
                reason: format!("{field} is null; a CLIP tokenizer needs it"),
            })
        };
        let bos_id = required("bos_token", &config.special("bos_token"))?;
        let eos_id = required("eos_token", &config.special("eos_token"))?;
        let pad_id = required("pad_token", &config.special("pad_token"))?;
        // Checked only: the BPE model maps unknown pieces to it itself.
        id_of("unk_token", &config.special("unk_token"))?;
        let slow = match flavor {
            ClipFlavor::Transformers5 => None,
            ClipFlavor::SlowV4 => Some(SlowClip::new(&config, &tokenizer, &source)?),
        };
        let model_max_length = config.model_max_length.unwrap_or(DEFAULT_MODEL_MAX_LENGTH);
        if model_max_length < 2 {
            return Err(TokenizerError::Invalid {
                path: config.source_of("model_max_length"),
                reason: format!(
                    "model_max_length = {model_max_length}: at least 2 needed (BOS and EOS)"
                ),
            });
        }
        Ok(Self {
            tokenizer,
            slow,
            bos_id,
            eos_id,
            pad_id,
            model_max_length,
            multi_vector: BTreeMap::new(),
        })
    }

    /// Whether `token` is in the vocabulary or was added.
    pub fn contains(&self, token: &str) -> bool {
        self.tokenizer.token_to_id(token).is_some()
    }

    /// Number of ids, added tokens included (`len(tokenizer)`).
    pub fn len(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Whether the tokenizer has no ids at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a textual-inversion token of `vectors` vectors as diffusers'
    /// `load_textual_inversion` does: `token`, then `token_1` … for the
    /// further vectors, each matched whole before BPE (transformers'
    /// `add_tokens`), with the next free ids, which are returned. A prompt
    /// naming `token` is then encoded with all its vectors (diffusers'
    /// `maybe_convert_prompt`). A token already in the vocabulary is an
    /// error, and nothing is added.
    pub fn add_embedding_tokens(&mut self, token: &str, vectors: usize) -> Result<Vec<u32>> {
        let names = embedding_token_names(token, vectors);
        let err = |token: &str, reason: &str| TokenizerError::AddToken {
            token: token.to_string(),
            reason: reason.to_string(),
        };
        if self.slow.is_some() {
            return Err(err(
                token,
                "the slow (transformers 4) flavor takes no added tokens",
            ));
        }
        if token.trim().is_empty() || vectors == 0 {
            return Err(err(token, "an empty token or no vectors"));
        }
        if let Some(t) = names.iter().find(|t| self.contains(t)) {
            return Err(err(t, "already in the tokenizer's vocabulary"));
        }
        let added: Vec<tokenizers::AddedToken> = names
            .iter()
            .map(|t| tokenizers::AddedToken::from(t.clone(), false))
            .collect();
        self.tokenizer.add_tokens(&added);
        let ids = names
            .iter()
            .map(|t| {
                self.tokenizer
                    .token_to_id(t)
                    .ok_or_else(|| err(t, "was not added"))
            })
            .collect::<Result<Vec<u32>>>()?;
        if vectors > 1 {
            self.multi_vector.insert(token.to_string(), vectors);
        }
        Ok(ids)
    }

    /// diffusers' `maybe_convert_prompt`: every multi-vector token the prompt
    /// holds becomes `token token_1 …`.
    fn expand_multi_vector(&self, prompt: &str, ids: &[u32]) -> Option<String> {
        let mut out = None::<String>;
        for (token, &n) in &self.multi_vector {
            let id = self.tokenizer.token_to_id(token)?;
            if ids.contains(&id) {
                let text = out.get_or_insert_with(|| prompt.to_string());
                *text = text.replace(token, &embedding_token_names(token, n).join(" "));
            }
        }
        out
    }

    /// Token ids of `prompt` without BOS/EOS, not truncated.
    pub fn encode_tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        let encode_err = |reason: String| TokenizerError::Encode {
            prompt: prompt.to_string(),
            reason,
        };
        match &self.slow {
            Some(slow) => slow.encode(prompt).map_err(encode_err),
            None => {
                let encode = |p: &str| {
                    self.tokenizer
                        .encode_fast(p, false)
                        .map(|e| e.get_ids().to_vec())
                        .map_err(|e| encode_err(e.to_string()))
                };
                let ids = encode(prompt)?;
                match self.expand_multi_vector(prompt, &ids) {
                    Some(expanded) => encode(&expanded),
                    None => Ok(ids),
                }
            }
        }
    }

    /// `BOS ids EOS`, neither truncated nor padded (`tokenizer(prompt).input_ids`).
    pub fn encode_unpadded(&self, prompt: &str) -> Result<Vec<u32>> {
        let tokens = self.encode_tokens(prompt)?;
        let mut ids = Vec::with_capacity(tokens.len() + 2);
        ids.push(self.bos_id);
        ids.extend(tokens);
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// `model_max_length` ids: BOS, at most `model_max_length - 2` tokens, EOS, then
    /// pad ids (`padding="max_length", truncation=True`).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let tokens = self.encode_tokens(prompt)?;
        let keep = tokens.len().min(self.model_max_length - 2);
        Ok(self.wrap(&tokens[..keep]))
    }

    /// [`Self::encode`] for each prompt.
    pub fn encode_batch<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Vec<Vec<u32>>> {
        prompts.iter().map(|p| self.encode(p.as_ref())).collect()
    }

    /// Long-prompt chunks (see the module documentation): one or more rows of
    /// `model_max_length` ids, each `BOS window EOS pad...`.
    pub fn encode_chunks(&self, prompt: &str) -> Result<Vec<Vec<u32>>> {
        let tokens = self.encode_tokens(prompt)?;
        if tokens.is_empty() {
            return Ok(vec![self.wrap(&[])]);
        }
        let window = (self.model_max_length - 2).max(1);
        Ok(tokens.chunks(window).map(|c| self.wrap(c)).collect())
    }

    fn wrap(&self, tokens: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.model_max_length.max(tokens.len() + 2));
        ids.push(self.bos_id);
        ids.extend_from_slice(tokens);
        ids.push(self.eos_id);
        ids.resize(self.model_max_length.max(ids.len()), self.pad_id);
        ids
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }
    /// The underlying `tokenizers` pipeline (the Transformers5 flavor's encoder).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

// ------------------------------------------------------------------------ config

/// A special token as written in the configs: a string, or an AddedToken object.
#[derive(Debug, Clone, PartialEq)]
struct TokenSpec {
    content: String,
    /// None: a plain string (transformers registers it non-normalized).
    normalized: Option<bool>,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

impl TokenSpec {
    fn parse(value: &Value, path: &Path, field: &str) -> Result<Option<Self>> {
        let bad = |reason: &str| TokenizerError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{field}: {reason}"),
        };
        match value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(Self {
                content: s.clone(),
                normalized: None,
                lstrip: false,
                rstrip: false,
                single_word: false,
            })),
            Value::Object(o) => {
                let content = o
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("an AddedToken object needs a string \"content\""))?;
                let flag = |k: &str| -> Result<Option<bool>> {
                    match o.get(k) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::Bool(b)) => Ok(Some(*b)),
                        Some(_) => Err(bad(&format!("\"{k}\" must be a boolean"))),
                    }
                };
                Ok(Some(Self {
                    content: content.to_string(),
                    // AddedToken(special=True) defaults to normalized=False.
                    normalized: Some(flag("normalized")?.unwrap_or(false)),
                    lstrip: flag("lstrip")?.unwrap_or(false),
                    rstrip: flag("rstrip")?.unwrap_or(false),
                    single_word: flag("single_word")?.unwrap_or(false),
                }))
            }
            _ => Err(bad("expected a string, an AddedToken object or null")),
        }
    }
}

const SPECIAL_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

fn class_default(key: &str) -> Option<&'static str> {
    match key {
        "bos_token" => Some("<|startoftext|>"),
        "eos_token" | "unk_token" | "pad_token" => Some("<|endoftext|>"),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Config {
    config_path: Option<PathBuf>,
    map_path: Option<PathBuf>,
    /// key -> (value, file it came from); explicit nulls are kept as None.
    specials: HashMap<String, (Option<TokenSpec>, PathBuf)>,
    additional: Vec<TokenSpec>,
    /// `added_tokens_decoder` of tokenizer_config.json: (id, token, special).
    added_tokens_decoder: Vec<(u32, TokenSpec, bool)>,
    model_max_length: Option<usize>,
    dir: PathBuf,
}

impl Config {
    fn load(dir: &Path) -> Result<Self> {
        let mut cfg = Config {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        let config_path = dir.join("tokenizer_config.json");
        if config_path.is_file() {
            let v = read_json(&config_path)?;
            let o = as_object(&v, &config_path)?;
            cfg.read_specials(o, &config_path)?;
            if let Some(m) = o.get("model_max_length") {
                cfg.model_max_length = parse_max_length(m, &config_path)?;
            }
            if let Some(atd) = o.get("added_tokens_decoder") {
                let atd = atd.as_object().ok_or_else(|| TokenizerError::Invalid {
                    path: config_path.clone(),
                    reason: "added_tokens_decoder must be an object".into(),
                })?;
                for (id, tok) in atd {
                    let field = format!("added_tokens_decoder[{id:?}]");
                    let id: u32 = id.parse().map_err(|_| TokenizerError::Invalid {
                        path: config_path.clone(),
                        reason: format!("{field}: the key is not a token id"),
                    })?;
                    let Some(spec) = TokenSpec::parse(tok, &config_path, &field)? else {
                        continue;
                    };
                    let special = tok.get("special").and_then(Value::as_bool).unwrap_or(false);
                    cfg.added_tokens_decoder.push((id, spec, special));
                }
                cfg.added_tokens_decoder.sort_by_key(|t| t.0);
            }
            cfg.config_path = Some(config_path);
        }
        // special_tokens_map.json overrides tokenizer_config.json (as transformers does).
        let map_path = dir.join("special_tokens_map.json");
        if map_path.is_file() {
            let v = read_json(&map_path)?;
            let o = as_object(&v, &map_path)?;
            cfg.read_specials(o, &map_path)?;
            cfg.map_path = Some(map_path);
        }
        Ok(cfg)
    }

    fn read_specials(&mut self, o: &Map<String, Value>, path: &Path) -> Result<()> {
        for key in SPECIAL_KEYS {
            if let Some(v) = o.get(key) {
                let spec = TokenSpec::parse(v, path, key)?;
                self.specials
                    .insert(key.to_string(), (spec, path.to_path_buf()));
            }
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            match o.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    self.additional.clear();
                    for (i, item) in items.iter().enumerate() {
                        if let Some(s) = TokenSpec::parse(item, path, &format!("{key}[{i}]"))? {
                            self.additional.push(s);
                        }
                    }
                }
                // extra_special_tokens may be a name -> token map (multimodal models).
                Some(Value::Object(_)) => {}
                Some(_) => {
                    return Err(TokenizerError::Invalid {
                        path: path.to_path_buf(),
                        reason: format!("{key} must be a list"),
                    });
                }
            }
        }
        Ok(())
    }

    fn special(&self, key: &str) -> Option<TokenSpec> {
        match self.specials.get(key) {
            Some((spec, _)) => spec.clone(),
            None => class_default(key).map(|c| TokenSpec {
                content: c.to_string(),
                normalized: None,
                lstrip: false,
                rstrip: false,
                single_word: false,
            }),
        }
    }

    /// The file a field was read from (for error messages).
    fn source_of(&self, key: &str) -> PathBuf {
        if let Some((_, p)) = self.specials.get(key) {
            return p.clone();
        }
        self.config_path
            .clone()
            .unwrap_or_else(|| self.dir.join("tokenizer_config.json"))
    }

    /// The special tokens in transformers' registration order (bos, eos, unk, sep,
    /// pad, cls, mask, additional).
    fn special_tokens(&self) -> Vec<(&'static str, TokenSpec)> {
        let mut out: Vec<(&'static str, TokenSpec)> = SPECIAL_KEYS
            .iter()
            .filter_map(|k| Some((*k, self.special(k)?)))
            .collect();
        out.extend(
            self.additional
                .iter()
                .map(|t| ("additional_special_tokens", t.clone())),
        );
        out
    }
}

fn parse_max_length(v: &Value, path: &Path) -> Result<Option<usize>> {
    let bad = || TokenizerError::Invalid {
        path: path.to_path_buf(),
        reason: format!("model_max_length = {v}: expected a positive integer"),
    };
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return usize::try_from(u).map(Some).map_err(|_| bad());
            }
            match n.as_f64() {
                Some(f) if f >= HUGE_MAX_LENGTH => Ok(None),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn as_object<'a>(v: &'a Value, path: &Path) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| TokenizerError::Invalid {
        path: path.to_path_buf(),
        reason: "expected a JSON object".into(),
    })
}

// ------------------------------------------------------------------------ pipeline

/// The tokenizer.json document transformers 5's `CLIPTokenizer.__init__` builds from
/// vocab.json + merges.txt.
fn pipeline_from_vocab(vocab_path: &Path, merges_path: &Path, config: &Config) -> Result<Value> {
    let vocab = read_json(vocab_path)?;
    let vocab_obj = as_object(&vocab, vocab_path)?;
    for (token, id) in vocab_obj {
        if id.as_u64().is_none_or(|i| i > u32::MAX as u64) {
            return Err(TokenizerError::Invalid {
                path: vocab_path.to_path_buf(),
                reason: format!("the id of {token:?} is {id}, not a token id"),
            });
        }
    }
    let text = std::fs::read_to_string(merges_path).map_err(|source| TokenizerError::Io {
        path: merges_path.to_path_buf(),
        source,
    })?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push(json!([a, b]));
            }
            _ => {
                return Err(TokenizerError::Invalid {
                    path: merges_path.to_path_buf(),
                    reason: format!("line {}: {line:?} is not a merge \"a b\"", i + 1),
                });
            }
        }
    }
    let unk = config.special("unk_token").map(|t| t.content);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
        }
    }))
}

fn model_vocab(doc: &Value, source: &Path) -> Result<HashMap<String, u32>> {
    let vocab = doc
        .pointer("/model/vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| TokenizerError::Invalid {
            path: source.to_path_buf(),
            reason: "model.vocab is missing (not a BPE tokenizer?)".into(),
        })?;
    let ty = doc.pointer("/model/type").and_then(Value::as_str);
    if ty.is_some_and(|t| t != "BPE") {
        return Err(TokenizerError::Invalid {
            path: source.to_path_buf(),
            reason: format!("model.type = {ty:?}; a CLIP tokenizer is BPE"),
        });
    }
    Ok(vocab
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), u32::try_from(v.as_u64()?).ok()?)))
        .collect())
}

/// Registers the special tokens as transformers 5 does after loading: the config's
/// `added_tokens_decoder` entries as written, then bos, eos, unk, sep, pad, cls, mask
/// and additional special tokens (a plain string is a non-normalized token; when two
/// fields name the same token, the later one's flags win).
fn set_added_tokens(
    doc: &mut Value,
    config: &Config,
    vocab: &HashMap<String, u32>,
    source: &Path,
) -> Result<()> {
    let mut existing: Vec<Value> = match doc.get("added_tokens") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => {
            return Err(TokenizerError::Invalid {
                path: source.to_path_buf(),
                reason: "added_tokens must be a list".into(),
            });
        }
    };
    let mut from_decoder = HashSet::new();
    fn upsert(existing: &mut Vec<Value>, id: u32, spec: &TokenSpec, special: bool) {
        let entry = json!({
            "id": id,
            "content": spec.content,
            "single_word": spec.single_word,
            "lstrip": spec.lstrip,
            "rstrip": spec.rstrip,
            "normalized": spec.normalized.unwrap_or(false),
            "special": special,
        });
        let same = |t: &Value| {
            t.get("content").and_then(Value::as_str) == Some(spec.content.as_str())
                || t.get("id").and_then(Value::as_u64) == Some(id as u64)
        };
        existing.retain(|t| !same(t));
        existing.push(entry);
    }
    for (id, spec, special) in &config.added_tokens_decoder {
        upsert(&mut existing, *id, spec, *special);
        from_decoder.insert(spec.content.clone());
    }
    let mut next_id = vocab.values().copied().max().map_or(0, |m| m + 1);
    for t in &existing {
        if let Some(id) = t.get("id").and_then(Value::as_u64) {
            next_id = next_id.max(id as u32 + 1);
        }
    }
    for (key, spec) in config.special_tokens() {
        if from_decoder.contains(&spec.content) || spec.content.is_empty() {
            continue;
        }
        let id = match vocab.get(&spec.content) {
            Some(id) => *id,
            None => {
                let known = existing.iter().find_map(|t| {
                    (t.get("content").and_then(Value::as_str) == Some(spec.content.as_str()))
                        .then(|| t.get("id").and_then(Value::as_u64))
                        .flatten()
                });
                match known {
                    Some(id) => id as u32,
                    // transformers would append it as a new token, an id past the
                    // text encoder's embedding table: refuse it instead.
                    None if ["bos_token", "eos_token", "unk_token", "pad_token"].contains(&key) => {
                        return Err(TokenizerError::UnknownSpecialToken {
                            path: config.source_of(key),
                            field: key.to_string(),
                            token: spec.content.clone(),
                        });
                    }
                    None => {
                        next_id += 1;
                        next_id - 1
                    }
                }
            }
        };
        upsert(&mut existing, id, &spec, true);
    }
    existing.sort_by_key(|t| t.get("id").and_then(Value::as_u64).unwrap_or(u64::MAX));
    doc["added_tokens"] = Value::Array(existing);
    Ok(())
}

// ------------------------------------------------------------------------ slow (v4)

/// transformers 4's slow `CLIPTokenizer` without ftfy.
#[derive(Debug, Clone)]
struct SlowClip {
    /// Added tokens, longest first: matched in the raw text before anything else.
    added: Vec<(String, u32)>,
    pattern: std::sync::Arc<SysRegex>,
    control: std::sync::Arc<SysRegex>,
    space_sep: std::sync::Arc<SysRegex>,
    byte_chars: [char; 256],
    bos_eos: [(String, u32); 2],
    model: ModelWrapper,
}

impl SlowClip {
    fn new(config: &Config, tokenizer: &Tokenizer, source: &Path) -> Result<Self> {
        let build_err = |e: Box<dyn std::error::Error + Send + Sync>| TokenizerError::Build {
            path: source.to_path_buf(),
            reason: e.to_string(),
        };
        let mut added: Vec<(String, u32)> = Vec::new();
        let mut add = |content: &str| match tokenizer.token_to_id(content) {
            Some(id) if !content.is_empty() && !added.iter().any(|(c, _)| c == content) => {
                added.push((content.to_string(), id));
            }
            _ => {}
        };
        for (_, spec, _) in &config.added_tokens_decoder {
            add(&spec.content);
        }
        for (_, spec) in config.special_tokens() {
            add(&spec.content);
        }
        added.sort_by_key(|a| std::cmp::Reverse(a.0.len()));
        let token_id = |t: &str| -> Result<u32> {
            tokenizer.get_model().token_to_id(t).ok_or_else(|| {
                TokenizerError::UnknownSpecialToken {
                    path: source.to_path_buf(),
                    field: "vocabulary".into(),
                    token: t.into(),
                }
            })
        };
        let bos_eos = [
            ("<|startoftext|>".to_string(), token_id("<|startoftext|>")?),
            ("<|endoftext|>".to_string(), token_id("<|endoftext|>")?),
        ];
        let model = limited_merges(tokenizer, source)?;
        Ok(Self {
            added,
            pattern: std::sync::Arc::new(
                SysRegex::new(&format!("(?i){CLIP_PATTERN}")).map_err(build_err)?,
            ),
            control: std::sync::Arc::new(SysRegex::new(r"\A\p{C}\z").map_err(build_err)?),
            space_sep: std::sync::Arc::new(SysRegex::new(r"\A\p{Zs}\z").map_err(build_err)?),
            byte_chars: bytes_to_unicode(),
            bos_eos,
            model,
        })
    }

    fn encode(&self, prompt: &str) -> std::result::Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        let mut rest = prompt;
        let mut plain = String::new();
        while !rest.is_empty() {
            if let Some((content, id)) = self
                .added
                .iter()
                .find(|(c, _)| rest.starts_with(c.as_str()))
            {
                self.encode_plain(&plain, &mut ids)?;
                plain.clear();
                ids.push(*id);
                rest = &rest[content.len()..];
            } else {
                let ch = rest.chars().next().unwrap_or_default();
                plain.push(ch);
                rest = &rest[ch.len_utf8()..];
            }
        }
        self.encode_plain(&plain, &mut ids)?;
        Ok(ids)
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> std::result::Result<(), String> {
        if text.is_empty() {
            return Ok(());
        }
        let cleaned = self.basic_tokenize(text);
        for (start, end) in self.pattern.find_iter(&cleaned) {
            let piece = &cleaned[start..end];
            if let Some((_, id)) = self.bos_eos.iter().find(|(c, _)| c == piece) {
                ids.push(*id);
                continue;
            }
            let word: String = piece.bytes().map(|b| self.byte_chars[b as usize]).collect();
            let tokens = self.model.tokenize(&word).map_err(|e| e.to_string())?;
            for t in tokens {
                ids.push(t.id);
            }
        }
        Ok(())
    }

    /// `BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize`, joined
    /// by single spaces.
    fn basic_tokenize(&self, text: &str) -> String {
        let mut cleaned = String::with_capacity(text.len());
        let mut buf = [0u8; 4];
        for ch in text.chars() {
            if ch == '\0' || ch == '\u{FFFD}' {
                continue;
            }
            if matches!(ch, ' ' | '\t' | '\n' | '\r') {
                cleaned.push(' ');
                continue;
            }
            let s = ch.encode_utf8(&mut buf);
            if self.control.find_iter(s).next().is_some() {
                continue;
            }
            if self.space_sep.find_iter(s).next().is_some() {
                cleaned.push(' ');
            } else if is_cjk(ch) {
                cleaned.push(' ');
                cleaned.push(ch);
                cleaned.push(' ');
            } else {
                cleaned.push(ch);
            }
        }
        let mut normalized = tokenizers::NormalizedString::from(cleaned.as_str());
        normalized.nfc();
        let words: Vec<String> = normalized
            .get()
            .split(py_isspace)
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        words
            .join(" ")
            .split(py_isspace)
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The slow tokenizer reads only the first [`CLIP_NUM_MERGES`] merges.
fn limited_merges(tokenizer: &Tokenizer, source: &Path) -> Result<ModelWrapper> {
    let model = tokenizer.get_model().clone();
    let mut value = serde_json::to_value(&model).map_err(|e| TokenizerError::Build {
        path: source.to_path_buf(),
        reason: e.to_string(),
    })?;
    match value.get_mut("merges") {
        Some(Value::Array(m)) if m.len() > CLIP_NUM_MERGES => m.truncate(CLIP_NUM_MERGES),
        _ => return Ok(model),
    }
    serde_json::from_value(value).map_err(|e| TokenizerError::Build {
        path: source.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Python's `str.isspace`.
fn py_isspace(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{20}'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// BasicTokenizer's "Chinese character" ranges.
fn is_cjk(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B820..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// The CLIP vocabulary (`vocab.json` order) and merges from open-clip's
/// `bpe_simple_vocab_16e6.txt` (already decompressed): byte characters, the
/// same with `</w>`, one token per merge, then the two specials, exactly as
/// openai/clip-vit-large-patch14's `vocab.json` + `merges.txt` lay them out.
/// `source` names the file in errors.
pub fn clip_vocab_from_bpe(bpe_text: &str, source: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let merges: Vec<String> = bpe_text
        .split('\n')
        .skip(1)
        .take(CLIP_NUM_MERGES)
        .map(str::to_string)
        .collect();
    if merges.len() != CLIP_NUM_MERGES || merges.iter().any(|m| m.split(' ').count() != 2) {
        return Err(TokenizerError::Invalid {
            path: source.to_path_buf(),
            reason: format!(
                "expected {CLIP_NUM_MERGES} merges of two symbols after the header line"
            ),
        });
    }
    let mut bytes: Vec<char> = bytes_to_unicode().to_vec();
    bytes.sort_by_key(|c| *c as u32);
    let mut vocab: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    vocab.extend(bytes.iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    Ok((vocab, merges))
}

/// Writes `vocab.json` and `merges.txt` (the layout SD repos ship) into `dir`
/// from open-clip's decompressed `bpe_simple_vocab_16e6.txt`.
pub fn write_clip_vocab_files(bpe_text: &str, source: &Path, dir: &Path) -> Result<()> {
    let (vocab, merges) = clip_vocab_from_bpe(bpe_text, source)?;
    let map: Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| TokenizerError::Io { path, source })
    };
    write("vocab.json", Value::Object(map).to_string())?;
    write(
        "merges.txt",
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
}

/// GPT-2's reversible byte -> character table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// A toy vocabulary: bytes, bytes + "</w>", a few merges, the two specials.
    fn toy_dir(config: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        // Ordered as CLIP's vocab.json: printable bytes first.
        let mut bytes: Vec<char> = bytes_to_unicode().to_vec();
        bytes.sort_by_key(|c| *c as u32);
        let mut vocab: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
        vocab.extend(bytes.iter().map(|c| format!("{c}</w>")));
        let merges = ["c a", "ca t</w>", "d o", "do g</w>"];
        vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let map: Map<String, Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        write(dir.path(), "vocab.json", &Value::Object(map).to_string());
        write(
            dir.path(),
            "merges.txt",
            &format!("#version: 0.2\n{}\n", merges.join("\n")),
        );
        if let Some(c) = config {
            write(dir.path(), "tokenizer_config.json", c);
        }
        dir
    }

    const CAT: u32 = 513; // "cat</w>"
    const DOG: u32 = 515; // "dog</w>"
    const BOS: u32 = 516;
    const EOS: u32 = 517;

    #[test]
    fn bytes_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[b' ' as usize], '\u{120}');
        assert_eq!(t[255], '\u{ff}');
        let distinct: HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn toy_encode_pad_truncate_chunks() {
        let dir = toy_dir(Some(r#"{"model_max_length": 5}"#));
        for flavor in [ClipFlavor::Transformers5, ClipFlavor::SlowV4] {
            let tok = ClipTokenizer::from_dir_with(dir.path(), flavor).unwrap();
            assert_eq!(tok.model_max_length(), 5);
            assert_eq!(
                tok.encode_unpadded("Cat  DOG").unwrap(),
                [BOS, CAT, DOG, EOS]
            );
            assert_eq!(tok.encode("cat").unwrap(), [BOS, CAT, EOS, EOS, EOS]);
            assert_eq!(
                tok.encode("cat dog cat dog").unwrap(),
                [BOS, CAT, DOG, CAT, EOS]
            );
            assert_eq!(
                tok.encode_chunks("cat dog cat dog").unwrap(),
                [vec![BOS, CAT, DOG, CAT, EOS], vec![BOS, DOG, EOS, EOS, EOS]]
            );
            assert_eq!(
                tok.encode_chunks("").unwrap(),
                [vec![BOS, EOS, EOS, EOS, EOS]]
            );
            assert_eq!(
                tok.encode_batch(&["dog", ""]).unwrap(),
                [vec![BOS, DOG, EOS, EOS, EOS], vec![BOS, EOS, EOS, EOS, EOS]]
            );
        }
    }

    #[test]
    fn pad_token_from_config_and_map() {
        let dir = toy_dir(Some(r#"{"pad_token": "!"}"#));
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.pad_id(), 0);
        assert_eq!(tok.model_max_length(), DEFAULT_MODEL_MAX_LENGTH);
        assert_eq!(tok.encode("cat").unwrap()[3..], [0; 74]);
        // special_tokens_map.json wins over tokenizer_config.json.
        write(
            dir.path(),
            "special_tokens_map.json",
            r#"{"pad_token": "<|endoftext|>"}"#,
        );
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.pad_id(), EOS);
    }

    #[test]
    fn huge_model_max_length_means_unset() {
        let dir = toy_dir(Some(r#"{"model_max_length": 1e30}"#));
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.model_max_length(), DEFAULT_MODEL_MAX_LENGTH);
    }

    fn err_of(dir: &Path) -> String {
        ClipTokenizer::from_dir(dir).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_file() {
        let empty = tempfile::tempdir().unwrap();
        assert!(err_of(empty.path()).contains("no tokenizer files"));

        let dir = toy_dir(Some("{not json"));
        let e = err_of(dir.path());
        assert!(
            e.contains("tokenizer_config.json") && e.contains("invalid JSON"),
            "{e}"
        );

        let dir = toy_dir(Some(r#"{"pad_token": "<|nope|>"}"#));
        let e = err_of(dir.path());
        assert!(e.contains("pad_token") && e.contains("<|nope|>"), "{e}");

        let dir = toy_dir(Some(r#"{"pad_token": null}"#));
        assert!(err_of(dir.path()).contains("pad_token is null"));

        let dir = toy_dir(Some(r#"{"model_max_length": "long"}"#));
        assert!(err_of(dir.path()).contains("model_max_length"));

        let dir = toy_dir(Some(r#"{"bos_token": 3}"#));
        assert!(err_of(dir.path()).contains("bos_token"));

        let dir = toy_dir(None);
        write(
            dir.path(),
            "merges.txt",
            "#version: 0.2\nc a\nbad line here\n",
        );
        let e = err_of(dir.path());
        assert!(e.contains("merges.txt") && e.contains("line 3"), "{e}");

        let dir = toy_dir(None);
        write(dir.path(), "vocab.json", r#"{"a": -1}"#);
        let e = err_of(dir.path());
        assert!(e.contains("vocab.json"), "{e}");

        let dir = toy_dir(None);
        write(
            dir.path(),
            "tokenizer.json",
            r#"{"model": {"type": "WordPiece", "vocab": {}}}"#,
        );
        let e = err_of(dir.path());
        assert!(e.contains("tokenizer.json") && e.contains("BPE"), "{e}");
    }
}
