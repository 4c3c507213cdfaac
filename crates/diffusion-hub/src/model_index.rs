//! `model_index.json`: the table of contents of a diffusers pipeline.
//!
//! The file maps each component folder of the repo (`unet`, `vae`, ...) to the
//! `[library, class]` that loads it, plus `_class_name` (the pipeline class) and
//! pipeline options such as `requires_safety_checker`. Optional components that
//! a repo leaves out are written `[null, null]`.
//!
//! Parsing is lenient where diffusers is: a component name this crate does not
//! know (a newer pipeline's `transformer`, a community pipeline's extra model) is
//! kept and listed in [`ModelIndex::unknown`], so the caller can report it, but
//! it never fails the parse. Malformed entries (a component that is half null,
//! a class that is not a string) are errors naming the file and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Component names the pipelines of this project know: those of diffusers'
/// SD 1.x/2.x, SDXL, inpainting, ControlNet, T2I-Adapter and DDPM pipelines.
pub const KNOWN_COMPONENTS: &[&str] = &[
    "unet",
    "controlnet",
    "adapter",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
    "safety_checker",
    "feature_extractor",
    "image_encoder",
];

/// Errors of this module; each names the file (or `<memory>` for parsed text) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ModelIndexError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The `model_index.json` path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The `model_index.json` path.
        path: PathBuf,
        /// The parser's error (with line and column).
        source: serde_json::Error,
    },
    /// The top level is not a JSON object.
    #[error("{path}: the top level must be a JSON object, found {found}")]
    NotAnObject {
        /// The `model_index.json` path.
        path: PathBuf,
        /// The JSON type found.
        found: &'static str,
    },
    /// A required key is absent.
    #[error("{path}: missing key `{key}`")]
    MissingKey {
        /// The `model_index.json` path.
        path: PathBuf,
        /// The missing key.
        key: &'static str,
    },
    /// A key has a value of the wrong form.
    #[error("{path}: key `{key}`: {reason}")]
    InvalidValue {
        /// The `model_index.json` path.
        path: PathBuf,
        /// The offending key.
        key: String,
        /// What was expected.
        reason: String,
    },
}

/// What kind of files a component folder holds, derived from its class.
///
/// This decides which files resolution fetches for it: a model has a
/// `config.json` and weights, a scheduler only `scheduler_config.json`, a
/// tokenizer its vocabulary files, an image processor `preprocessor_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// A network with `config.json` and weight files (UNet, VAE, text encoders, ...).
    Model,
    /// A scheduler (`scheduler_config.json` only).
    Scheduler,
    /// A tokenizer (`vocab.json` + `merges.txt` and/or `tokenizer.json`, with its configs).
    Tokenizer,
    /// An image processor / feature extractor (`preprocessor_config.json`).
    ImageProcessor,
}

/// One present component: the library and class diffusers would load it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// `diffusers` or `transformers` (or a community module).
    pub library: String,
    /// e.g. `UNet2DConditionModel`, `CLIPTextModel`, `PNDMScheduler`.
    pub class: String,
}

impl Component {
    /// The kind of folder this component is, from its class name (and, for a
    /// scheduler whose class does not say so, the component name).
    pub fn kind(&self, name: &str) -> ComponentKind {
        let class = self.class.as_str();
        if class.ends_with("Scheduler") || name == "scheduler" {
            ComponentKind::Scheduler
        } else if class.contains("Tokenizer") {
            ComponentKind::Tokenizer
        } else if class.contains("ImageProcessor") || class.contains("FeatureExtractor") {
            ComponentKind::ImageProcessor
        } else {
            ComponentKind::Model
        }
    }
}

/// A parsed `model_index.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIndex {
    /// The pipeline class, e.g. `StableDiffusionPipeline`.
    pub class_name: String,
    /// The diffusers version that wrote the file, when recorded.
    pub diffusers_version: Option<String>,
    /// Present components by name (the folder name in the repo).
    pub components: BTreeMap<String, Component>,
    /// Components declared `[null, null]` (optional ones the repo leaves out).
    pub absent: Vec<String>,
    /// Names of present or absent components not in [`KNOWN_COMPONENTS`].
    pub unknown: Vec<String>,
    /// Pipeline options (`requires_safety_checker`, `force_zeros_for_empty_prompt`, ...).
    pub options: BTreeMap<String, Value>,
    /// Other `_`-prefixed metadata (`_name_or_path`, ...), besides class and version.
    pub metadata: BTreeMap<String, Value>,
}

impl ModelIndex {
    /// Reads and parses a `model_index.json` file.
    pub fn from_file(path: &Path) -> Result<Self, ModelIndexError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelIndexError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `model_index.json`; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelIndexError> {
        let value: Value = serde_json::from_str(text).map_err(|source| ModelIndexError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(&value, path)
    }

    /// Builds the typed map from already parsed JSON; `path` only names it in errors.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self, ModelIndexError> {
        let invalid = |key: &str, reason: String| ModelIndexError::InvalidValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let Value::Object(map) = value else {
            return Err(ModelIndexError::NotAnObject {
                path: path.to_path_buf(),
                found: json_type(value),
            });
        };
        let class_name = match map.get("_class_name") {
            None => {
                return Err(ModelIndexError::MissingKey {
                    path: path.to_path_buf(),
                    key: "_class_name",
                });
            }
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(invalid(
                    "_class_name",
                    format!("expected a non-empty string, found {}", json_type(other)),
                ));
            }
        };
        let diffusers_version = match map.get("_diffusers_version") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(invalid(
                    "_diffusers_version",
                    format!("expected a string, found {}", json_type(other)),
                ));
            }
        };

        let mut index = ModelIndex {
            class_name,
            diffusers_version,
            components: BTreeMap::new(),
            absent: Vec::new(),
            unknown: Vec::new(),
            options: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        for (key, value) in map {
            if key == "_class_name" || key == "_diffusers_version" {
                continue;
            }
            if key.starts_with('_') {
                index.metadata.insert(key.clone(), value.clone());
                continue;
            }
            // A component is a two-element array; anything else is a pipeline option.
            let Value::Array(pair) = value else {
                index.options.insert(key.clone(), value.clone());
                continue;
            };
            if pair.len() != 2 {
                if KNOWN_COMPONENTS.contains(&key.as_str()) {
                    return Err(invalid(
                        key,
                        format!(
                            "a component must be [library, class], found an array of {}",
                            pair.len()
                        ),
                    ));
                }
                index.options.insert(key.clone(), value.clone());
                continue;
            }
            match (&pair[0], &pair[1]) {
                (Value::Null, Value::Null) => index.absent.push(key.clone()),
                (Value::String(library), Value::String(class)) => {
                    if library.is_empty() || class.is_empty() {
                        return Err(invalid(key, "library and class must not be empty".into()));
                    }
                    index.components.insert(
                        key.clone(),
                        Component {
                            library: library.clone(),
                            class: class.clone(),
                        },
                    );
                }
                (a, b) => {
                    return Err(invalid(
                        key,
                        format!(
                            "a component must be [library, class] (two strings) or [null, null], found [{}, {}]",
                            json_type(a),
                            json_type(b)
                        ),
                    ));
                }
            }
            if !KNOWN_COMPONENTS.contains(&key.as_str()) {
                index.unknown.push(key.clone());
            }
        }
        Ok(index)
    }

    /// The component with this name, if present (not `[null, null]`).
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.get(name)
    }

    /// Present components whose names this crate knows, in name order.
    pub fn known_components(&self) -> impl Iterator<Item = (&str, &Component)> {
        self.components
            .iter()
            .filter(|(name, _)| KNOWN_COMPONENTS.contains(&name.as_str()))
            .map(|(name, c)| (name.as_str(), c))
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
