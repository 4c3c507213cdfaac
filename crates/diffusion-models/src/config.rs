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

/// A model's `config.json`: parsed by serde, then checked as a whole.
///
/// `validate` checks each field's range and the relations between fields that
/// the layer constructors and the forward pass rely on (group counts dividing
/// channels, head counts dividing widths, list lengths matching), so that a
/// malformed config is a [`ModelError::Config`] naming the field at load time,
/// never a division by zero, a reshape panic or an absurd allocation later.
/// [`parse_config`] and [`read_config`] call it, so every entry point
/// (`from_dir`, the pipelines, training, `diffuse info`) gets it; the models'
/// `load` calls it again for configs built in code.
pub trait ModelConfig: DeserializeOwned + Serialize {
    /// Checks the config; `source` names it in the error (its file).
    fn validate(&self, source: &str) -> Result<()>;
}

/// The largest `sample_size` (a side, in latent or pixel units) a config may
/// declare: one f32 plane of that side is already 16 GiB, and a larger value
/// is a typo, not a model.
pub const MAX_SAMPLE_SIZE: usize = 1 << 16;

/// The widest layer (channels, hidden size, vocabulary) a config may declare:
/// far above any released model (SDXL's widest is 10,240 channels, CLIP-G's
/// vocabulary 49,408), low enough that `width²` weights fit a `usize`.
pub const MAX_WIDTH: usize = 1 << 20;

/// The most layers a config may stack in one block or encoder (SDXL stacks
/// 10 transformer layers, CLIP-G 32 encoder layers).
pub const MAX_LAYERS: usize = 1024;

/// The most resolution levels (entries of `block_out_channels`, stages of
/// the tiny autoencoder) a config may declare. SD's UNets and VAEs have 4;
/// each level but the last halves the sample, so past 17 levels even a
/// [`MAX_SAMPLE_SIZE`] side is one pixel, and the downscale factor
/// `2^(levels - 1)` must fit a `usize` (65 levels overflow its shift).
pub const MAX_LEVELS: usize = 16;

/// Field checks of one config, each an error naming `source` and the field.
#[derive(Debug, Clone, Copy)]
pub struct FieldCheck<'a> {
    /// The config's name in messages (its file).
    pub source: &'a str,
}

impl<'a> FieldCheck<'a> {
    /// Checks of the config called `source`.
    pub fn new(source: &'a str) -> Self {
        FieldCheck { source }
    }

    /// An error for `field`.
    pub fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ModelError {
        ModelError::config(self.source, field, message)
    }

    /// `1 ..= MAX_WIDTH`.
    pub fn width(&self, field: &str, v: usize) -> Result<()> {
        if v == 0 {
            return Err(self.error(field, "must be at least 1, found 0"));
        }
        if v > MAX_WIDTH {
            return Err(self.error(field, format!("{v} is larger than {MAX_WIDTH}")));
        }
        Ok(())
    }

    /// A layer count, `1 ..= MAX_LAYERS`.
    pub fn layers(&self, field: &str, v: usize) -> Result<()> {
        if v == 0 || v > MAX_LAYERS {
            return Err(self.error(field, format!("{v} is not in 1..={MAX_LAYERS}")));
        }
        Ok(())
    }

    /// Each entry `1 ..= MAX_WIDTH` (`field[i]` in the message); not empty.
    pub fn widths(&self, field: &str, v: &[usize]) -> Result<()> {
        if v.is_empty() {
            return Err(self.error(field, "must not be empty"));
        }
        for (i, w) in v.iter().enumerate() {
            self.width(&format!("{field}[{i}]"), *w)?;
        }
        Ok(())
    }

    /// Per-level widths: `1 ..= MAX_LEVELS` entries, each `1 ..= MAX_WIDTH`.
    pub fn levels(&self, field: &str, v: &[usize]) -> Result<()> {
        if v.len() > MAX_LEVELS {
            return Err(self.error(
                field,
                format!("has {} levels, at most {MAX_LEVELS} are supported", v.len()),
            ));
        }
        self.widths(field, v)
    }

    /// The width of a sinusoidal (timestep) embedding, `2 ..= MAX_WIDTH`:
    /// width 1 has no sin/cos pair, and its empty frequency tensor panics in
    /// the backend's ops.
    pub fn sinusoidal_width(&self, field: &str, v: usize) -> Result<()> {
        self.width(field, v)?;
        if v < 2 {
            return Err(self.error(
                field,
                format!("{v} is too narrow for a sinusoidal embedding (at least 2)"),
            ));
        }
        Ok(())
    }

    /// `1 ..= MAX_SAMPLE_SIZE`.
    pub fn sample_size(&self, field: &str, v: usize) -> Result<()> {
        if v == 0 || v > MAX_SAMPLE_SIZE {
            return Err(self.error(field, format!("{v} is not in 1..={MAX_SAMPLE_SIZE}")));
        }
        Ok(())
    }

    /// `channels` is a multiple of `by` (a group or head count named `by_field`).
    pub fn divides(&self, field: &str, channels: usize, by_field: &str, by: usize) -> Result<()> {
        if by == 0 {
            return Err(self.error(by_field, "must be at least 1, found 0"));
        }
        if !channels.is_multiple_of(by) {
            return Err(self.error(
                field,
                format!("{channels} is not a multiple of {by_field} {by}"),
            ));
        }
        Ok(())
    }

    /// A finite number.
    pub fn finite(&self, field: &str, v: f64) -> Result<()> {
        if !v.is_finite() {
            return Err(self.error(field, format!("{v} is not a finite number")));
        }
        Ok(())
    }

    /// A finite number above zero (epsilons, scale factors).
    pub fn positive(&self, field: &str, v: f64) -> Result<()> {
        if !(v.is_finite() && v > 0.0) {
            return Err(self.error(field, format!("{v} is not a finite number above 0")));
        }
        Ok(())
    }

    /// A probability in `[0, 1]` (dropout).
    pub fn fraction(&self, field: &str, v: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&v) {
            return Err(self.error(field, format!("{v} is not in [0, 1]")));
        }
        Ok(())
    }
}

/// Parses `json` into `T` and validates it ([`ModelConfig::validate`]);
/// `source_name` is used in error messages.
///
/// `_`-prefixed bookkeeping keys (`_class_name`, `_diffusers_version`,
/// `_name_or_path`) never reach serde. `null` stays `null`: diffusers passes it
/// to the constructor as `None`, so fields that may be `null` are `Option`s.
pub fn parse_config<T: ModelConfig>(json: &str, source_name: &str) -> Result<Loaded<T>> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        let what = if e.is_eof() {
            "is truncated (the JSON ends early)"
        } else {
            "is not valid JSON"
        };
        ModelError::config(source_name, "", format!("{what}: {e}"))
    })?;
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
    config.validate(source_name)?;
    Ok(Loaded {
        config,
        ignored_fields: ignored,
    })
}

/// Reads, parses and validates a `config.json` file.
pub fn read_config<T: ModelConfig>(path: &Path) -> Result<Loaded<T>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use diffusion_hub::save::{OwnedTensor, save_safetensors};
    use std::collections::BTreeMap;

    /// A fresh folder under the system temp dir, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pickle(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../diffusion-hub/tests/fixtures/single_file")
            .join(name)
    }

    /// The order of `open_weights` (the resolver's): safetensors before
    /// pickles, a shard index before a single file; sharded pickles open.
    #[test]
    fn open_weights_prefers_safetensors_then_indexes() {
        let tmp = TempDir::new("open-weights-order");
        let dir = &tmp.0;
        // Sharded pickles only.
        let first = "diffusion_pytorch_model-00001-of-00002.bin";
        let second = "diffusion_pytorch_model-00002-of-00002.bin";
        std::fs::copy(pickle("misc.pt"), dir.join(first)).unwrap();
        std::fs::copy(pickle("sd2.ckpt"), dir.join(second)).unwrap();
        let mut map = serde_json::Map::new();
        for (file, shard) in [(pickle("misc.pt"), first), (pickle("sd2.ckpt"), second)] {
            for (key, _) in Weights::open(&file).unwrap().tensors() {
                map.insert(key.to_string(), shard.into());
            }
        }
        let n = map.len();
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(
            dir.join("diffusion_pytorch_model.bin.index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        // A single .bin beside the index loses to it.
        std::fs::copy(pickle("misc.pt"), dir.join("diffusion_pytorch_model.bin")).unwrap();
        let w = open_weights(dir, DIFFUSERS_WEIGHTS).unwrap();
        assert_eq!(w.len(), n);
        assert!(
            w.source()
                .ends_with("diffusion_pytorch_model.bin.index.json")
        );
        // Safetensors beat every pickle.
        let mut tensors = BTreeMap::new();
        tensors.insert("only".to_string(), OwnedTensor::f32(vec![1], &[3.0]));
        save_safetensors(
            &dir.join("diffusion_pytorch_model.safetensors"),
            &tensors,
            None,
        )
        .unwrap();
        let w = open_weights(dir, DIFFUSERS_WEIGHTS).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w.contains("only"));
        // Nothing at all: an error naming the files looked for.
        let empty = TempDir::new("open-weights-none");
        let err = open_weights(&empty.0, TRANSFORMERS_WEIGHTS).unwrap_err();
        assert!(err.to_string().contains("pytorch_model.bin"), "{err}");
    }
}
