//! Reading diffusers' and transformers' `config.json` files.
//!
//! Configs are plain serde structs whose field names are the Hub's; missing
//! fields take diffusers' defaults (`#[serde(default)]`), unknown fields
//! (`_diffusers_version`, fields of newer diffusers releases) are tolerated and
//! reported, and a malformed value is an error that names the field.

use crate::error::{ModelError, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::Path;

/// A parsed config and the fields it had that the struct does not know.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The config.
    pub config: T,
    /// Unknown fields (sorted), excluding the `_`-prefixed bookkeeping ones.
    pub ignored_fields: Vec<String>,
}

/// Parses `json` into `T`; `source_name` is used in error messages.
///
/// `_`-prefixed bookkeeping keys (`_class_name`, `_diffusers_version`,
/// `_name_or_path`) never reach serde. `null` stays `null`: diffusers passes it
/// to the constructor as `None`, so fields that may be `null` are `Option`s.
pub fn parse_config<T: DeserializeOwned + Serialize>(
    json: &str,
    source_name: &str,
) -> Result<Loaded<T>> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| ModelError::config(source_name, "", format!("not valid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| ModelError::config(source_name, "", "expected a JSON object"))?;
    let fields: Map<String, Value> = object
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config: T =
        serde_path_to_error::deserialize(Value::Object(fields.clone())).map_err(|e| {
            let field = e.path().to_string();
            ModelError::config(source_name, field, e.into_inner().to_string())
        })?;
    let known = serde_json::to_value(&config)
        .map_err(|e| ModelError::config(source_name, "", e.to_string()))?;
    let known = known.as_object().cloned().unwrap_or_default();
    let mut ignored: Vec<String> = fields
        .keys()
        .filter(|k| !known.contains_key(*k))
        .cloned()
        .collect();
    ignored.sort();
    Ok(Loaded {
        config,
        ignored_fields: ignored,
    })
}

/// Reads and parses a `config.json` file.
pub fn read_config<T: DeserializeOwned + Serialize>(path: &Path) -> Result<Loaded<T>> {
    let json = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(&json, &path.display().to_string())
}

/// An error for a config value this crate does not support.
pub fn unsupported(source_name: &str, field: &str, value: impl std::fmt::Debug) -> ModelError {
    ModelError::config(source_name, field, format!("unsupported value {value:?}"))
}

/// Opens a model folder's weights: `{stem}.safetensors`, else the shards of
/// `{stem}.safetensors.index.json`. diffusers names them
/// `diffusion_pytorch_model`, transformers `model`.
pub fn open_weights(dir: &Path, stem: &str) -> Result<diffusion_hub::weights::Weights> {
    use diffusion_hub::weights::Weights;
    let single = dir.join(format!("{stem}.safetensors"));
    if single.is_file() {
        return Ok(Weights::open(&single)?);
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        return Ok(Weights::open_sharded(&index)?);
    }
    Err(ModelError::Io {
        path: single,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "neither {stem}.safetensors nor {stem}.safetensors.index.json is in the folder"
            ),
        ),
    })
}

/// The stem diffusers gives a model's weight file.
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model";
/// The stem transformers gives a model's weight file.
pub const TRANSFORMERS_WEIGHTS: &str = "model";
