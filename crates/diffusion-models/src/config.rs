//! Reading diffusers' and transformers' `config.json` files.
//!
//! Configs are plain serde structs whose field names are the Hub's; missing
//! fields take diffusers' defaults (`#[serde(default)]`), unknown fields
//! (`_diffusers_version`, fields of newer diffusers releases) are tolerated and
//! reported, and a malformed value is an error that names the field.

use crate::error::{ModelError, Result};
use diffusion_hub::weights::Weights;
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

/// Opens a model folder's weights as diffusers does, safetensors first: the
/// shards of `{stem}.safetensors.index.json`, else `{stem}.safetensors`, else
/// the PyTorch pickle (shards of `*.bin.index.json`, else
/// `diffusion_pytorch_model.bin` / transformers' `pytorch_model.bin`).
/// diffusers names the stem `diffusion_pytorch_model`, transformers `model`.
pub fn open_weights(dir: &Path, stem: &str) -> Result<Weights> {
    let bin_stem = if stem == TRANSFORMERS_WEIGHTS {
        "pytorch_model"
    } else {
        stem
    };
    let single = dir.join(format!("{stem}.safetensors"));
    // diffusion-hub's resolver order: safetensors before pickles, a shard
    // index before a single file.
    let candidates = [
        dir.join(format!("{stem}.safetensors.index.json")),
        single.clone(),
        dir.join(format!("{bin_stem}.bin.index.json")),
        dir.join(format!("{bin_stem}.bin")),
    ];
    if let Some(file) = candidates.iter().find(|f| f.is_file()) {
        return Ok(Weights::open(file)?);
    }
    Err(ModelError::Io {
        path: single,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "none of {stem}.safetensors, {stem}.safetensors.index.json, {bin_stem}.bin or {bin_stem}.bin.index.json is in the folder"
            ),
        ),
    })
}

/// The stem diffusers gives a model's weight file.
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model";
/// The stem transformers gives a model's weight file.
pub const TRANSFORMERS_WEIGHTS: &str = "model";

/// Deserializes `null` as the type's default. diffusers writes `None`-valued
/// constructor arguments as `null` (SDXL's `"upcast_attention": null`) and
/// treats them as their falsy default; fields whose default is `T::default()`
/// use this so such configs load.
pub fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(deserializer)?.unwrap_or_default())
}
