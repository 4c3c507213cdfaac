//! Weight files: single and sharded safetensors and PyTorch pickles, memory-mapped.
//!
//! A safetensors file is an 8-byte little-endian header length `N`, `N` bytes of
//! JSON (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}}`),
//! then the tensor data, with offsets relative to the end of the header. This
//! module parses the header itself rather than through the `safetensors` crate so
//! that every way a downloaded file can be broken (short, truncated, bad JSON,
//! offsets out of range or overlapping, a shape that does not match the byte
//! count) becomes a [`WeightsError`] naming the file and tensor; the parser is
//! fuzzed for panics (tests/weights_fuzz.rs). The checks follow the
//! `safetensors` crate's: the tensors must tile the data section exactly.
//!
//! Sharded checkpoints (`*.safetensors.index.json` or `*.bin.index.json`,
//! `weight_map: name -> shard`)
//! open every shard and check that each shard exists and really holds every key
//! the index assigns to it, so a partial download is caught at open time rather
//! than as a missing tensor deep inside model loading.
//!
//! PyTorch pickles (`.bin`, `.ckpt`, `.pt`, `.pth`, and shard indexes of
//! them) open through the same [`Weights`] API: each file is a [`WeightFile`],
//! read by [`crate::torch_pickle::TorchFile`] (no code execution) when it is a
//! pickle; a pickle naming a global that torch's `weights_only` loader refuses
//! is an error unless opened with [`Weights::open_with`] and
//! [`PickleOptions::skip_unsafe_globals`]. Older Hub repos ship only `diffusion_pytorch_model.bin`, and
//! transformers' sharded `pytorch_model.bin.index.json`, so a caller should not
//! have to care which format a folder holds.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use crate::torch_pickle::{PickleOptions, TorchFile};

/// Largest header accepted, as in the `safetensors` crate (100 MB): a larger
/// length is a corrupt file, and refusing it early avoids a huge allocation.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Errors of this module; each names the file (and the tensor or key where there is one).
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be opened, read or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The weight or index file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file of a format this module does not read (by extension).
    #[error("{path}: {format} weights are not supported (safetensors or PyTorch pickles expected)")]
    Unsupported {
        /// The weight file.
        path: PathBuf,
        /// The format, from the extension (e.g. `unknown (extension "onnx")`).
        format: String,
    },
    /// The file is shorter than the 8-byte header length.
    #[error(
        "{path}: {len} bytes is too short for a safetensors file (8-byte header length expected)"
    )]
    TooShort {
        /// The weight file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// The header length is larger than the file or than [`MAX_HEADER_LEN`].
    #[error("{path}: header length {header_len} does not fit: {reason} (file is {file_len} bytes)")]
    HeaderLength {
        /// The weight file.
        path: PathBuf,
        /// The header length read from the first 8 bytes.
        header_len: u64,
        /// The file length.
        file_len: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The header is not UTF-8 JSON.
    #[error("{path}: the safetensors header is not valid JSON: {reason}")]
    HeaderJson {
        /// The weight file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// The header is JSON but not of the safetensors form.
    #[error("{path}: invalid safetensors header: {reason}")]
    HeaderInvalid {
        /// The weight file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One tensor's entry is malformed or its data does not fit the file.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    TensorInvalid {
        /// The weight file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A PyTorch pickle checkpoint is not a readable zip-based `torch.save` file.
    #[error("{path}: cannot read the PyTorch checkpoint: {reason}")]
    Pickle {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A PyTorch pickle names a global (a Python function or class) that
    /// torch's `weights_only` loader refuses, such as `os.system` or PyTorch
    /// Lightning's `ModelCheckpoint`; see [`crate::torch_pickle`]. It was not
    /// executed: opening with [`PickleOptions::skip_unsafe_globals`] loads the
    /// tensors and skips it.
    #[error(
        "{path}: unsupported global `{global}` in the pickle (torch's weights_only loader refuses it too); \
         it was not executed: to load the tensors and skip such entries, use the skip-unsafe-globals \
         opt-in (`PickleOptions::skip_unsafe_globals`)"
    )]
    UnsafeGlobal {
        /// The checkpoint file.
        path: PathBuf,
        /// The global as `module.name`, as the pickle spells it.
        global: String,
    },
    /// A tensor was asked for that the file (or shard set) does not contain.
    #[error("{path}: no tensor named `{tensor}`")]
    TensorNotFound {
        /// The weight file, or the index of a sharded checkpoint.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// A tensor's dtype cannot be converted as asked.
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, which cannot be converted to {target}")]
    UnsupportedDtype {
        /// The weight file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The tensor's dtype.
        dtype: String,
        /// The requested element type.
        target: &'static str,
    },
    /// A shard index is not JSON.
    #[error("{path}: the shard index is not valid JSON: {reason}")]
    IndexJson {
        /// The index file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// A shard index is JSON but not of the expected form.
    #[error("{path}: invalid shard index: {reason}")]
    IndexInvalid {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A shard named by an index does not exist next to it.
    #[error("{index}: shard {shard} (holding `{first_key}`) is missing: {source}")]
    ShardMissing {
        /// The index file.
        index: PathBuf,
        /// The expected shard path.
        shard: PathBuf,
        /// One key the index assigns to it.
        first_key: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An index assigns a key to a shard that does not hold it.
    #[error("{index}: `{key}` is mapped to {shard}, which does not contain it")]
    KeyNotInShard {
        /// The index file.
        index: PathBuf,
        /// The tensor name.
        key: String,
        /// The shard file.
        shard: PathBuf,
    },
    /// Two shards hold a tensor of the same name.
    #[error("tensor `{tensor}` is in both {first} and {second}")]
    DuplicateTensor {
        /// The tensor name.
        tensor: String,
        /// The first shard holding it.
        first: PathBuf,
        /// The second shard holding it.
        second: PathBuf,
    },
}

/// A safetensors element type.
///
/// The diffusion models here use `F32`, `F16` and `BF16`; other types are kept
/// (integer buffers such as CLIP's `position_ids` exist in real checkpoints) and
/// reported by [`Weights::non_float_tensors`]. Types this crate does not know by
/// name are kept as [`Dtype::Other`]; their byte size is not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 16-bit signed integer.
    I16,
    /// 8-bit signed integer.
    I8,
    /// 64-bit unsigned integer.
    U64,
    /// 32-bit unsigned integer.
    U32,
    /// 16-bit unsigned integer.
    U16,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean (one byte).
    Bool,
    /// 8-bit float, e4m3.
    F8E4M3,
    /// 8-bit float, e5m2.
    F8E5M2,
    /// 8-bit exponent-only float (e8m0, MX scales).
    F8E8M0,
    /// Complex of two 32-bit floats.
    C64,
    /// Any other dtype string (e.g. the sub-byte `F4`, `F6_E2M3`); size unchecked.
    Other(String),
}

impl Dtype {
    /// Parses the header's dtype string.
    pub fn parse(s: &str) -> Self {
        match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U64" => Dtype::U64,
            "U32" => Dtype::U32,
            "U16" => Dtype::U16,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E8M0" => Dtype::F8E8M0,
            "C64" => Dtype::C64,
            other => Dtype::Other(other.to_string()),
        }
    }

    /// The header's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U64 => "U64",
            Dtype::U32 => "U32",
            Dtype::U16 => "U16",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::C64 => "C64",
            Dtype::Other(s) => s,
        }
    }

    /// Bytes per element, when known.
    pub fn size(&self) -> Option<usize> {
        Some(match self {
            Dtype::F64 | Dtype::I64 | Dtype::U64 | Dtype::C64 => 8,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool | Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F8E8M0 => {
                1
            }
            Dtype::Other(_) => return None,
        })
    }

    /// Whether this is one of the float types the models load (F32, F16, BF16).
    pub fn is_model_float(&self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor's header entry, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Byte range within the data section (after the header) of a
    /// safetensors file; `(0, byte length)` for a tensor of a PyTorch pickle.
    pub data_offsets: (usize, usize),
}

/// A parsed, validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Length of the JSON header in bytes (the data section starts at `8 + header_len`).
    pub header_len: usize,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The `__metadata__` string map (e.g. `{"format": "pt"}`).
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// Parses and validates the header of a whole safetensors file held in
    /// `bytes`; `path` only names it in errors. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, WeightsError> {
        let file_len = bytes.len() as u64;
        let Some(len_bytes) = bytes.get(..8) else {
            return Err(WeightsError::TooShort {
                path: path.to_path_buf(),
                len: file_len,
            });
        };
        let mut n = [0u8; 8];
        n.copy_from_slice(len_bytes);
        let header_len = u64::from_le_bytes(n);
        let length_error = |reason| WeightsError::HeaderLength {
            path: path.to_path_buf(),
            header_len,
            file_len,
            reason,
        };
        if header_len > MAX_HEADER_LEN {
            return Err(length_error("larger than the 100 MB limit"));
        }
        if header_len > file_len - 8 {
            return Err(length_error("the file ends inside the header (truncated?)"));
        }
        let header_len = header_len as usize;
        let header = &bytes[8..8 + header_len];
        let data_len = bytes.len() - 8 - header_len;
        let text = std::str::from_utf8(header).map_err(|e| WeightsError::HeaderJson {
            path: path.to_path_buf(),
            reason: format!("not UTF-8: {e}"),
        })?;
        if !text.starts_with('{') {
            return Err(WeightsError::HeaderJson {
                path: path.to_path_buf(),
                reason: "the header does not start with `{`".into(),
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| WeightsError::HeaderJson {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(WeightsError::HeaderInvalid {
                path: path.to_path_buf(),
                reason: "the header is not a JSON object".into(),
            });
        };

        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, entry) in map {
            if name == "__metadata__" {
                let Value::Object(meta) = entry else {
                    return Err(WeightsError::HeaderInvalid {
                        path: path.to_path_buf(),
                        reason: "`__metadata__` is not an object".into(),
                    });
                };
                for (k, v) in meta {
                    let Value::String(v) = v else {
                        return Err(WeightsError::HeaderInvalid {
                            path: path.to_path_buf(),
                            reason: format!("`__metadata__.{k}` is not a string"),
                        });
                    };
                    metadata.insert(k, v);
                }
                continue;
            }
            let info = parse_tensor_entry(&entry, data_len).map_err(|reason| {
                WeightsError::TensorInvalid {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    reason,
                }
            })?;
            tensors.insert(name, info);
        }

        // The tensors must tile the data section: no gap, no overlap, nothing after.
        let mut spans: Vec<(&String, (usize, usize))> =
            tensors.iter().map(|(k, t)| (k, t.data_offsets)).collect();
        spans.sort_by_key(|&(_, (begin, end))| (begin, end));
        let mut cursor = 0usize;
        for (name, (begin, end)) in spans {
            if begin != cursor {
                let what = if begin < cursor {
                    "overlaps the previous tensor"
                } else {
                    "leaves a gap after the previous tensor"
                };
                return Err(WeightsError::TensorInvalid {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    reason: format!(
                        "data_offsets [{begin}, {end}] {what} (which ends at {cursor})"
                    ),
                });
            }
            cursor = end;
        }
        if cursor != data_len {
            return Err(WeightsError::HeaderInvalid {
                path: path.to_path_buf(),
                reason: format!(
                    "the tensors cover {cursor} bytes but the data section has {data_len} bytes"
                ),
            });
        }
        Ok(Header {
            header_len,
            tensors,
            metadata,
        })
    }
}

fn parse_tensor_entry(entry: &Value, data_len: usize) -> Result<TensorInfo, String> {
    let Value::Object(obj) = entry else {
        return Err("the entry is not an object".into());
    };
    let dtype = match obj.get("dtype") {
        Some(Value::String(s)) => Dtype::parse(s),
        Some(_) => return Err("`dtype` is not a string".into()),
        None => return Err("missing `dtype`".into()),
    };
    let shape = match obj.get("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or_else(|| format!("shape entry {d} is not a non-negative integer"))
            })
            .collect::<Result<Vec<usize>, String>>()?,
        Some(_) => return Err("`shape` is not an array".into()),
        None => return Err("missing `shape`".into()),
    };
    let (begin, end) = match obj.get("data_offsets") {
        Some(Value::Array(pair)) if pair.len() == 2 => {
            let get = |v: &Value| {
                v.as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| format!("data offset {v} is not a non-negative integer"))
            };
            (get(&pair[0])?, get(&pair[1])?)
        }
        Some(_) => return Err("`data_offsets` is not a pair [begin, end]".into()),
        None => return Err("missing `data_offsets`".into()),
    };
    if begin > end {
        return Err(format!("data_offsets [{begin}, {end}] run backwards"));
    }
    if end > data_len {
        return Err(format!(
            "data_offsets [{begin}, {end}] run past the data section ({data_len} bytes; truncated file?)"
        ));
    }
    let elements = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if let Some(size) = dtype.size() {
        let bytes = elements
            .checked_mul(size)
            .ok_or_else(|| format!("shape {shape:?} overflows"))?;
        if bytes != end - begin {
            return Err(format!(
                "{dtype} {shape:?} needs {bytes} bytes but data_offsets [{begin}, {end}] hold {}",
                end - begin
            ));
        }
    }
    Ok(TensorInfo {
        dtype,
        shape,
        data_offsets: (begin, end),
    })
}

/// A borrowed view of one tensor's bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: &'a Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// Raw little-endian bytes (not necessarily aligned).
    pub data: &'a [u8],
    /// The file it lives in (for error messages).
    pub file: &'a Path,
}

impl TensorView<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to `f32` (exactly: F16 and BF16 are subsets of F32).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, WeightsError> {
        match self.dtype {
            Dtype::F32 => Ok(self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            Dtype::F16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect()),
            Dtype::BF16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect()),
            other => Err(WeightsError::UnsupportedDtype {
                path: self.file.to_path_buf(),
                tensor: self.name.to_string(),
                dtype: other.to_string(),
                target: "f32",
            }),
        }
    }
}

/// IEEE binary16 bits to `f32` (exact), including subnormals, infinities and NaN.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: shift the mantissa up until its leading one is the implicit bit.
            let mut e: u32 = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// One memory-mapped safetensors file with its validated header.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    header: Header,
}

impl SafetensorsFile {
    /// Maps and validates a `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            // Mapping an empty file fails on some platforms; say what is wrong instead.
            return Err(WeightsError::TooShort {
                path: path.to_path_buf(),
                len,
            });
        }
        // SAFETY: the map is read-only. As with every mmap-based reader (safetensors,
        // candle), another process truncating or rewriting the file while it is
        // mapped is undefined behaviour; HF cache blobs are written once and renamed
        // into place, never modified.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = Header::parse(&mmap, path)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            header,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether the file holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.header.tensors.contains_key(name)
    }

    /// A view of one tensor.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, WeightsError> {
        let (key, info) = self.header.tensors.get_key_value(name).ok_or_else(|| {
            WeightsError::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_string(),
            }
        })?;
        let start = 8 + self.header.header_len;
        let (begin, end) = info.data_offsets;
        // Validated at open; `get` keeps this panic-free even so.
        let data = self.mmap.get(start + begin..start + end).ok_or_else(|| {
            WeightsError::TensorInvalid {
                path: self.path.clone(),
                tensor: name.to_string(),
                reason: "data out of range".into(),
            }
        })?;
        Ok(TensorView {
            name: key,
            dtype: &info.dtype,
            shape: &info.shape,
            data,
            file: &self.path,
        })
    }
}

/// A parsed shard index (`*.safetensors.index.json`, `*.bin.index.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardIndex {
    /// Tensor name to shard file name (relative to the index's folder).
    pub weight_map: BTreeMap<String, String>,
    /// The index's `metadata` object (e.g. `total_size`), if any.
    pub metadata: Option<Value>,
}

impl ShardIndex {
    /// Reads and parses an index file.
    pub fn from_file(path: &Path) -> Result<Self, WeightsError> {
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses the bytes of an index file; `path` only names it in errors. Never panics.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, WeightsError> {
        let invalid = |reason: String| WeightsError::IndexInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| WeightsError::IndexJson {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let Value::Object(mut map) = value else {
            return Err(invalid("the top level is not an object".into()));
        };
        let Some(Value::Object(wm)) = map.remove("weight_map") else {
            return Err(invalid("missing `weight_map` object".into()));
        };
        let mut weight_map = BTreeMap::new();
        for (key, shard) in wm {
            let Value::String(shard) = shard else {
                return Err(invalid(format!("`weight_map.{key}` is not a string")));
            };
            // A shard is a sibling file: refuse paths, so that an index cannot
            // point outside its folder.
            if shard.is_empty()
                || shard == "."
                || shard == ".."
                || shard.contains('/')
                || shard.contains('\\')
                || shard.contains('\0')
            {
                return Err(invalid(format!(
                    "`weight_map.{key}` = {shard:?} is not a plain file name"
                )));
            }
            weight_map.insert(key, shard);
        }
        if weight_map.is_empty() {
            return Err(invalid("`weight_map` is empty".into()));
        }
        Ok(ShardIndex {
            weight_map,
            metadata: map.remove("metadata"),
        })
    }

    /// The distinct shard file names, sorted (`-00001-of-00002` before `-00002-of-00002`).
    pub fn shards(&self) -> Vec<&str> {
        let mut shards: Vec<&str> = self.weight_map.values().map(String::as_str).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }
}

/// Extensions read as PyTorch pickles (zip-based `torch.save` files).
pub const PICKLE_EXTENSIONS: &[&str] = &["bin", "ckpt", "pt", "pth"];

fn lower_extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// One weight file of either format.
#[derive(Debug)]
pub enum WeightFile {
    /// A `.safetensors` file.
    Safetensors(SafetensorsFile),
    /// A zip-based `torch.save` file (`.bin`, `.ckpt`, `.pt`, `.pth`).
    Torch(TorchFile),
}

impl WeightFile {
    /// Opens a weight file, choosing the reader by extension: `.safetensors`,
    /// or `.bin` / `.ckpt` / `.pt` / `.pth` as a PyTorch pickle. Any other
    /// extension is [`WeightsError::Unsupported`]. Pickles are read with the
    /// default (strict) [`PickleOptions`].
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        Self::open_with(path, &PickleOptions::default())
    }

    /// [`WeightFile::open`], reading a pickle as `pickle` says.
    pub fn open_with(path: &Path, pickle: &PickleOptions) -> Result<Self, WeightsError> {
        let ext = lower_extension(path);
        if ext == "safetensors" {
            Ok(Self::Safetensors(SafetensorsFile::open(path)?))
        } else if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
            Ok(Self::Torch(TorchFile::open_with(path, pickle)?))
        } else {
            Err(WeightsError::Unsupported {
                path: path.to_path_buf(),
                format: format!("unknown (extension {ext:?})"),
            })
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Safetensors(f) => f.path(),
            Self::Torch(f) => f.path(),
        }
    }

    /// Tensor names with dtype and shape, in name order. `data_offsets` are
    /// offsets into the data section for safetensors; for a pickle they are
    /// `(0, byte length)`.
    pub fn tensors(&self) -> Box<dyn Iterator<Item = (&str, &TensorInfo)> + '_> {
        match self {
            Self::Safetensors(f) => {
                Box::new(f.header().tensors.iter().map(|(k, i)| (k.as_str(), i)))
            }
            Self::Torch(f) => Box::new(f.tensors()),
        }
    }

    /// The information on one tensor, if present.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        match self {
            Self::Safetensors(f) => f.header().tensors.get(name),
            Self::Torch(f) => f.info(name),
        }
    }

    /// Whether the file holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::Safetensors(f) => f.contains(name),
            Self::Torch(f) => f.contains(name),
        }
    }

    /// A view of one tensor's bytes (little-endian, row-major).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, WeightsError> {
        match self {
            Self::Safetensors(f) => f.tensor(name),
            Self::Torch(f) => f.tensor(name),
        }
    }
}

/// The weights of one model: one file or every shard of an index, safetensors
/// or PyTorch pickles.
#[derive(Debug)]
pub struct Weights {
    /// The file named to [`Weights::open`] (a weight file or an index).
    source: PathBuf,
    files: Vec<WeightFile>,
    /// Tensor name to position in `files`.
    by_name: BTreeMap<String, usize>,
}

impl Weights {
    /// Opens a weight file or a shard index: `.safetensors`; a PyTorch pickle
    /// (`.bin`, `.ckpt`, `.pt`, `.pth`); or a `*.safetensors.index*.json` /
    /// `*.bin.index*.json` shard index. Other files give
    /// [`WeightsError::Unsupported`]. Pickles are read with the default
    /// [`PickleOptions`]: one that names a global torch's `weights_only`
    /// loader refuses is [`WeightsError::UnsafeGlobal`].
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        Self::open_with(path, &PickleOptions::default())
    }

    /// [`Weights::open`], reading pickles as `pickle` says (e.g.
    /// [`PickleOptions::skip_unsafe_globals`] for a Lightning training
    /// checkpoint).
    pub fn open_with(path: &Path, pickle: &PickleOptions) -> Result<Self, WeightsError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let ext = lower_extension(path);
        if ext == "json" {
            if name.contains(".safetensors.") || name.contains(".bin.") {
                return Self::open_sharded_with(path, pickle);
            }
            return Err(WeightsError::Unsupported {
                path: path.to_path_buf(),
                format: "JSON (not a .safetensors or .bin shard index)".into(),
            });
        }
        Self::from_files(path, vec![WeightFile::open_with(path, pickle)?])
    }

    /// Opens every shard of an index and checks that each key is where the
    /// index says; pickle shards are read with the default [`PickleOptions`].
    pub fn open_sharded(index_path: &Path) -> Result<Self, WeightsError> {
        Self::open_sharded_with(index_path, &PickleOptions::default())
    }

    /// [`Weights::open_sharded`], reading pickle shards as `pickle` says.
    pub fn open_sharded_with(
        index_path: &Path,
        pickle: &PickleOptions,
    ) -> Result<Self, WeightsError> {
        let index = ShardIndex::from_file(index_path)?;
        let dir = index_path.parent().unwrap_or(Path::new(""));
        let mut files = Vec::new();
        let mut shard_pos = BTreeMap::new();
        for shard in index.shards() {
            let shard_path = dir.join(shard);
            let file = WeightFile::open_with(&shard_path, pickle).map_err(|e| match e {
                WeightsError::Io { source, .. } => WeightsError::ShardMissing {
                    index: index_path.to_path_buf(),
                    first_key: index
                        .weight_map
                        .iter()
                        .find(|(_, s)| s.as_str() == shard)
                        .map(|(k, _)| k.clone())
                        .unwrap_or_default(),
                    shard: shard_path.clone(),
                    source,
                },
                other => other,
            })?;
            shard_pos.insert(shard, files.len());
            files.push(file);
        }
        for (key, shard) in &index.weight_map {
            let file = &files[shard_pos[shard.as_str()]];
            if !file.contains(key) {
                return Err(WeightsError::KeyNotInShard {
                    index: index_path.to_path_buf(),
                    key: key.clone(),
                    shard: file.path().to_path_buf(),
                });
            }
        }
        Self::from_files(index_path, files)
    }

    fn from_files(source: &Path, files: Vec<WeightFile>) -> Result<Self, WeightsError> {
        let mut by_name = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            for (name, _) in file.tensors() {
                if let Some(first) = by_name.insert(name.to_string(), i) {
                    return Err(WeightsError::DuplicateTensor {
                        tensor: name.to_string(),
                        first: files[first].path().to_path_buf(),
                        second: file.path().to_path_buf(),
                    });
                }
            }
        }
        Ok(Weights {
            source: source.to_path_buf(),
            files,
            by_name,
        })
    }

    /// The file this was opened from (a weight file or an index).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The opened files, in shard order.
    pub fn files(&self) -> &[WeightFile] {
        &self.files
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every tensor name with its dtype and shape, in name order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.by_name
            .iter()
            .filter_map(|(name, &i)| self.files[i].info(name).map(|info| (name.as_str(), info)))
    }

    /// The pickle globals skipped under [`PickleOptions::skip_unsafe_globals`]
    /// across all files, sorted and without repeats (see
    /// [`TorchFile::skipped_globals`]); empty for strict opens and safetensors.
    pub fn skipped_globals(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .files
            .iter()
            .filter_map(|f| match f {
                WeightFile::Torch(t) => Some(t.skipped_globals()),
                WeightFile::Safetensors(_) => None,
            })
            .flatten()
            .map(String::as_str)
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Tensors whose dtype is not F32/F16/BF16 (name and dtype), for reporting.
    pub fn non_float_tensors(&self) -> Vec<(&str, &Dtype)> {
        self.tensors()
            .filter(|(_, info)| !info.dtype.is_model_float())
            .map(|(name, info)| (name, &info.dtype))
            .collect()
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// A view of one tensor's bytes.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, WeightsError> {
        match self.by_name.get(name) {
            Some(&i) => self.files[i].tensor(name),
            None => Err(WeightsError::TensorNotFound {
                path: self.source.clone(),
                tensor: name.to_string(),
            }),
        }
    }
}
