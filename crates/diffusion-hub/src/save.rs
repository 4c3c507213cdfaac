//! Writing safetensors files atomically: the tensors go to a temporary file
//! in the target's folder, which is synced and then renamed over the target,
//! so a failed or interrupted write never leaves a half-written file.

use crate::weights::Dtype;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Errors of [`save_safetensors`], naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Creating, writing, syncing or renaming failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tensor's bytes do not match its shape and type, or serialisation failed.
    #[error("cannot write {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One tensor to write: type, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes (`shape.product() * dtype.size()`).
    pub data: Vec<u8>,
}

impl OwnedTensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        OwnedTensor {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

struct View<'a>(&'a OwnedTensor);

impl safetensors::View for View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        crate::single_file::st_dtype(&self.0.dtype)
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

/// Each tensor's bytes match its shape and dtype (`path` names the file).
fn check_sizes(path: &Path, tensors: &BTreeMap<String, OwnedTensor>) -> Result<(), SaveError> {
    for (name, t) in tensors {
        let expected = t
            .dtype
            .size()
            .map(|s| s * t.shape.iter().product::<usize>());
        if expected.is_some_and(|n| n != t.data.len()) {
            return Err(SaveError::Invalid {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor `{name}`: {} bytes for shape {:?} of {}",
                    t.data.len(),
                    t.shape,
                    t.dtype
                ),
            });
        }
    }
    Ok(())
}

/// `tensors` (sorted by name) serialized as a safetensors file in memory,
/// for callers that write several outputs all or nothing; `path` only names
/// the file in errors.
pub fn safetensors_bytes(
    path: &Path,
    tensors: &BTreeMap<String, OwnedTensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, SaveError> {
    check_sizes(path, tensors)?;
    let views: Vec<(&str, View<'_>)> = tensors.iter().map(|(k, t)| (k.as_str(), View(t))).collect();
    safetensors::tensor::serialize(views, metadata).map_err(|e| SaveError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes `tensors` (sorted by name) to `path` with optional string metadata.
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, OwnedTensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), SaveError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SaveError::Io { path: p, source }
    };
    check_sizes(path, tensors)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out.safetensors".into());
    let tmp = parent.join(format!(".{base}.tmp-{}", std::process::id()));
    let views: Vec<(&str, View<'_>)> = tensors.iter().map(|(k, t)| (k.as_str(), View(t))).collect();
    let result = safetensors::tensor::serialize_to_file(views, metadata, &tmp)
        .map_err(|e| SaveError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
        .and_then(|_| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(path))
        })
        .and_then(|_| std::fs::rename(&tmp, path).map_err(io(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Weights;

    #[test]
    fn round_trip_and_atomic_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "a".to_string(),
            OwnedTensor::f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
        );
        save_safetensors(&path, &tensors, None).unwrap();
        let w = Weights::open(&path).unwrap();
        assert_eq!(
            w.tensor("a").unwrap().to_f32_vec().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );

        // Inconsistent bytes: an error naming the tensor, and the old file is untouched.
        tensors.insert(
            "b".to_string(),
            OwnedTensor {
                dtype: Dtype::F32,
                shape: vec![3],
                data: vec![0; 4],
            },
        );
        let err = save_safetensors(&path, &tensors, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tensor `b`"), "{err}");
        assert!(Weights::open(&path).unwrap().contains("a"));
        // A folder that does not exist: an error, and no stray temporary file.
        let missing = dir.path().join("no/such/t.safetensors");
        tensors.remove("b");
        assert!(save_safetensors(&missing, &tensors, None).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
