//! PyTorch pickle checkpoints (`.ckpt`, `.bin`, `.pt`, `.pth`) in the zip-based
//! `torch.save` format (PyTorch 1.6 and later, the format of every SD checkpoint).
//!
//! Such a file is a zip archive (entries stored, not compressed) holding
//! `<name>/data.pkl` (the pickled object) and one `<name>/data/<key>` entry per
//! tensor storage. The pickle is run on a small, safe virtual machine that only
//! builds data (no code is executed, no module imported): tensors are
//! recognised by `torch._utils._rebuild_tensor_v2` (and `_rebuild_tensor`,
//! `_rebuild_parameter`) over persistent `storage` references, dicts by
//! `collections.OrderedDict`; the results of other calls are opaque values.
//!
//! # Globals: torch's `weights_only` rule
//!
//! A pickle names Python functions and classes (the GLOBAL and STACK_GLOBAL
//! opcodes) and calls them (REDUCE, NEWOBJ). Although nothing is ever called
//! here, a global that torch's own safe loader refuses
//! (`torch.load(weights_only=True)`, the default since torch 2.6;
//! `_get_allowed_globals` in `torch/_weights_only_unpickler.py`) is refused
//! by default too, as [`WeightsError::UnsafeGlobal`] naming it (`os.system`).
//! A file that names `os.system`, `builtins.eval` or `subprocess.Popen` is not
//! a plain checkpoint: reading its tensors while silently dropping those
//! entries would hide that the same file runs code under a plain
//! `torch.load`. The allow-list is torch's (see `torch_allows`): its tensor
//! rebuild functions (`torch._utils._rebuild_*`,
//! `torch._tensor._rebuild_from_type_v2`), storage and legacy tensor classes,
//! dtypes, quantization schemes, `torch.Size`, `torch.device`, `torch.Tensor`,
//! `torch.nn.parameter.Parameter`, `collections.OrderedDict` and `Counter`,
//! `builtins.set`, `bytearray` and `complex`, and `_codecs.encode`. Module
//! names are read as torch reads them (`__builtin__`, what protocol 2
//! writes, is `builtins`). STACK_GLOBAL (protocol 4), which torch's loader
//! does not read at all, is held to the same list.
//!
//! Deliberately, that includes PyTorch Lightning checkpoints saved with their
//! training state (some original latent-diffusion `.ckpt` releases are): their
//! `callbacks` entry pickles a
//! `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`, which
//! torch 2.6+ refuses as well. The error says how to opt in:
//! [`PickleOptions::skip_unsafe_globals`] makes such a global a skipped value
//! instead of an error (the top-level keys of the values it would have built
//! are listed in [`TorchFile::other_keys`], the globals in
//! [`TorchFile::skipped_globals`]). Skipped or refused, a global is never
//! executed: the opt-in only decides whether a file that names one loads.
//!
//! # State dict and tensors
//!
//! The state dict is the top-level dict's `state_dict` entry when that is a dict
//! (SD checkpoints), else the top-level dict itself (`pytorch_model.bin`). Each
//! tensor is kept as a view into the memory-mapped file; a non-contiguous tensor
//! is gathered into an owned buffer at open time.
//!
//! This module reads the format itself (a few hundred lines) rather than
//! through burn-store 0.21's PyTorch reader, which hands tensors over as burn
//! `TensorData` and would pull burn-core/burn-tensor into this otherwise
//! tensor-library-free crate; every malformed input is a [`WeightsError`]
//! naming the file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use memmap2::Mmap;

use crate::weights::{Dtype, TensorInfo, TensorView, WeightsError};

/// Most pickle stack/memo entries accepted before the file is called corrupt.
const MAX_ITEMS: usize = 50_000_000;

/// A pickled value, as far as this reader needs to know it. Payloads that are
/// only ever printed (in error messages, through `Debug`) are kept for that.
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum Obj {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Obj>),
    List(Vec<Obj>),
    Dict(Vec<(Obj, Obj)>),
    Global(String, String),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// The result of a call this reader does not model.
    Opaque(String),
}

#[derive(Debug)]
struct StorageRef {
    dtype: Dtype,
    key: String,
}

#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
enum Location {
    /// A byte range of the mapped file.
    Mapped(usize, usize),
    /// An index into the owned buffers (gathered non-contiguous tensors).
    Owned(usize),
}

/// A strided (non-contiguous) view is copied out of its storage only while
/// it stays below this many times the file's size ...
const MAX_VIEW_GROWTH: usize = 8;
/// ... or below this many bytes.
const MIN_VIEW_LIMIT: usize = 256 << 20;

/// How a PyTorch pickle is read; the default is torch's `weights_only` rule.
///
/// Built with [`PickleOptions::default`] and its setters, so that fields can
/// be added later without breaking callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PickleOptions {
    /// Skip, rather than refuse, the globals that torch's `weights_only`
    /// loader refuses (`os.system`, `builtins.eval`, PyTorch Lightning's
    /// `ModelCheckpoint` callback...): what they would build is left out and
    /// the tensors load. They are never executed either way (see the module
    /// docs); opt in only for a file you mean to load despite it naming code,
    /// such as a Lightning training checkpoint.
    pub skip_unsafe_globals: bool,
}

impl PickleOptions {
    /// Sets [`PickleOptions::skip_unsafe_globals`].
    pub fn skip_unsafe_globals(mut self, yes: bool) -> Self {
        self.skip_unsafe_globals = yes;
        self
    }
}

/// An opened PyTorch pickle checkpoint.
#[derive(Debug)]
pub struct TorchFile {
    path: PathBuf,
    mmap: Mmap,
    tensors: BTreeMap<String, (TensorInfo, Location)>,
    owned: Vec<Vec<u8>>,
    /// Top-level keys that are not tensors (e.g. `global_step`), for information.
    other_keys: Vec<String>,
    /// Globals outside torch's allow-list that were skipped (opt-in only).
    skipped_globals: Vec<String>,
    /// Top-level string entries (an A1111 embedding's `name`).
    strings: BTreeMap<String, String>,
}

fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::Bool,
        _ => return None,
    })
}

impl TorchFile {
    /// Opens and parses a zip-based `torch.save` file with the default
    /// [`PickleOptions`]: a global that torch's `weights_only` loader refuses
    /// is [`WeightsError::UnsafeGlobal`].
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        Self::open_with(path, &PickleOptions::default())
    }

    /// Opens and parses a zip-based `torch.save` file as `options` say.
    pub fn open_with(path: &Path, options: &PickleOptions) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath is the same
        // hazard as for the safetensors reader and is documented there.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let Parsed {
            tensors,
            owned,
            other_keys,
            skipped_globals,
            strings,
        } = parse(&mmap, path, options)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            tensors,
            owned,
            other_keys,
            skipped_globals,
            strings,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tensors in the state dict.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the state dict holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Tensor names and infos, sorted by name (`data_offsets` are not meaningful here).
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.tensors.iter().map(|(k, (i, _))| (k.as_str(), i))
    }

    /// The dtype and shape of one tensor, if present.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|(info, _)| info)
    }

    /// Whether the state dict holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Top-level entries beside the tensors (e.g. `global_step`, `epoch`).
    pub fn other_keys(&self) -> &[String] {
        &self.other_keys
    }

    /// The top-level entries that are strings (an A1111 embedding's `name`).
    pub fn strings(&self) -> &BTreeMap<String, String> {
        &self.strings
    }

    /// The globals (`module.name`, sorted) outside torch's `weights_only`
    /// allow-list that were skipped under
    /// [`PickleOptions::skip_unsafe_globals`]; always empty otherwise, since
    /// such a file does not open. For telling the user what was left out.
    pub fn skipped_globals(&self) -> &[String] {
        &self.skipped_globals
    }

    /// One tensor's bytes (little-endian, row-major).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, WeightsError> {
        let Some((key, (info, loc))) = self.tensors.get_key_value(name) else {
            return Err(WeightsError::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_string(),
            });
        };
        let data = match *loc {
            Location::Mapped(a, b) => &self.mmap[a..b],
            Location::Owned(i) => &self.owned[i],
        };
        Ok(TensorView {
            name: key,
            dtype: &info.dtype,
            shape: &info.shape,
            data,
            file: &self.path,
        })
    }
}

struct Parsed {
    tensors: BTreeMap<String, (TensorInfo, Location)>,
    owned: Vec<Vec<u8>>,
    other_keys: Vec<String>,
    skipped_globals: Vec<String>,
    strings: BTreeMap<String, String>,
}

fn parse(bytes: &[u8], path: &Path, options: &PickleOptions) -> Result<Parsed, WeightsError> {
    let err = |reason: String| WeightsError::Pickle {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.first() == Some(&0x80) {
        return Err(err(
            "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a recent PyTorch or convert it to .safetensors".into(),
        ));
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        err(format!(
            "not a readable zip-based torch.save archive (truncated or corrupt?): {e}"
        ))
    })?;
    let mut pkl: Option<(usize, usize)> = None;
    let mut storages: HashMap<String, (usize, usize)> = HashMap::new();
    let mut big_endian = false;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| err(format!("zip entry {i}: {e}")))?;
        let name = entry.name().to_string();
        let stored = entry.compression() == zip::CompressionMethod::Stored;
        let start = entry.data_start().unwrap_or(u64::MAX);
        let size = entry.size();
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(s, n)| Some((s, s.checked_add(n)?)))
            .filter(|&(_, e)| e <= bytes.len());
        let Some(range) = range else {
            return Err(err(format!(
                "zip entry `{name}` lies outside the file (truncated?)"
            )));
        };
        let mut parts = name.rsplitn(3, '/');
        let last = parts.next().unwrap_or_default();
        let parent = parts.next().unwrap_or_default();
        if last == "data.pkl" || last == "byteorder" || parent == "data" {
            if !stored {
                return Err(err(format!(
                    "zip entry `{name}` is compressed; torch.save stores entries uncompressed"
                )));
            }
        } else {
            continue;
        }
        if last == "data.pkl" {
            pkl = Some(range);
        } else if last == "byteorder" {
            big_endian = &bytes[range.0..range.1] == b"big";
        } else {
            storages.insert(last.to_string(), range);
        }
    }
    if big_endian {
        return Err(err("big-endian checkpoints are not supported".into()));
    }
    let Some((a, b)) = pkl else {
        return Err(err("no `data.pkl` entry: not a torch.save archive".into()));
    };
    let mut skipped = BTreeSet::new();
    let root = run_pickle(&bytes[a..b], options, &mut skipped).map_err(|e| match e {
        VmError::Malformed(reason) => err(format!("data.pkl: {reason}")),
        VmError::Refused(global) => WeightsError::UnsafeGlobal {
            path: path.to_path_buf(),
            global,
        },
    })?;

    let Obj::Dict(top) = root else {
        return Err(err(
            "the pickled object is not a dict (state dict expected)".into(),
        ));
    };
    let mut other_keys = Vec::new();
    let mut items = None;
    for (k, v) in &top {
        if let (Obj::Str(k), Obj::Dict(d)) = (k, v)
            && k == "state_dict"
        {
            items = Some(d.clone());
        }
    }
    let items = match items {
        Some(d) => {
            for (k, _) in &top {
                if let Obj::Str(k) = k
                    && k != "state_dict"
                {
                    other_keys.push(k.clone());
                }
            }
            d
        }
        None => top,
    };
    // A dict of tensors one level down is read as `outer.inner` (an A1111
    // embedding's `string_to_param: {"*": tensor}`); top-level strings are kept.
    let mut strings = BTreeMap::new();
    let mut flat = Vec::with_capacity(items.len());
    for (k, v) in items {
        match (k, v) {
            (Obj::Str(outer), Obj::Dict(inner))
                if inner
                    .iter()
                    .any(|(ik, iv)| matches!((ik, iv), (Obj::Str(_), Obj::Tensor(_)))) =>
            {
                for (ik, iv) in inner {
                    match (ik, iv) {
                        (Obj::Str(ik), t @ Obj::Tensor(_)) => {
                            flat.push((Obj::Str(format!("{outer}.{ik}")), t))
                        }
                        (Obj::Str(ik), _) => other_keys.push(format!("{outer}.{ik}")),
                        _ => {}
                    }
                }
            }
            (Obj::Str(k), Obj::Str(v)) => {
                strings.insert(k.clone(), v);
                other_keys.push(k);
            }
            (k, v) => flat.push((k, v)),
        }
    }
    let items = flat;

    let mut tensors = BTreeMap::new();
    let mut owned = Vec::new();
    for (k, v) in items {
        let (Obj::Str(name), Obj::Tensor(t)) = (&k, &v) else {
            if let Obj::Str(name) = k {
                other_keys.push(name);
            }
            continue;
        };
        let tensor_err = |reason: String| WeightsError::TensorInvalid {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        let Some(&(sa, sb)) = storages.get(&t.storage.key) else {
            return Err(tensor_err(format!(
                "its storage `data/{}` is missing from the archive (truncated?)",
                t.storage.key
            )));
        };
        let elem = t.storage.dtype.size().unwrap_or(1);
        let storage_numel = (sb - sa) / elem;
        if t.shape.len() != t.stride.len() {
            return Err(tensor_err(format!(
                "shape {:?} and stride {:?} differ in rank",
                t.shape, t.stride
            )));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| tensor_err("element count overflows".into()))?;
        let nbytes = numel
            .checked_mul(elem)
            .ok_or_else(|| tensor_err("byte count overflows".into()))?;
        let info = TensorInfo {
            dtype: t.storage.dtype.clone(),
            shape: t.shape.clone(),
            data_offsets: (0, nbytes),
        };
        if numel == 0 {
            tensors.insert(name.clone(), (info, Location::Mapped(sa, sa)));
            continue;
        }
        // Highest element index touched, checked against the storage.
        let mut last = t.offset;
        for (&d, &s) in t.shape.iter().zip(&t.stride) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| tensor_err("strides overflow".into()))?;
        }
        if last >= storage_numel {
            return Err(tensor_err(format!(
                "reads element {last} of a storage of {storage_numel} (truncated or corrupt)"
            )));
        }
        let mut expect = 1usize;
        let mut contiguous = true;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            if d != 1 && s != expect {
                contiguous = false;
            }
            expect *= d;
        }
        let loc = if contiguous {
            let begin = sa + t.offset * elem;
            Location::Mapped(begin, begin + nbytes)
        } else {
            // A strided view is copied out. Stride-0 (expanded) views may be
            // larger than their storage, but a view far larger than the whole
            // file is a corrupt or hostile file, not a checkpoint: refuse it
            // rather than try to allocate it.
            let limit = bytes
                .len()
                .saturating_mul(MAX_VIEW_GROWTH)
                .max(MIN_VIEW_LIMIT);
            if nbytes > limit {
                return Err(tensor_err(format!(
                    "a strided view of {nbytes} bytes from a file of {} bytes (corrupt?)",
                    bytes.len()
                )));
            }
            let storage = &bytes[sa..sb];
            let mut out = Vec::with_capacity(nbytes);
            let mut idx = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let pos = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                out.extend_from_slice(&storage[pos * elem..(pos + 1) * elem]);
                for ax in (0..idx.len()).rev() {
                    idx[ax] += 1;
                    if idx[ax] < t.shape[ax] {
                        break;
                    }
                    idx[ax] = 0;
                }
            }
            owned.push(out);
            Location::Owned(owned.len() - 1)
        };
        tensors.insert(name.clone(), (info, loc));
    }
    Ok(Parsed {
        tensors,
        owned,
        other_keys,
        skipped_globals: skipped.into_iter().collect(),
        strings,
    })
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("unexpected end of the pickle at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len_prefixed(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length overflows".to_string())?;
        self.take(n)
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("unterminated text line")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "non-UTF-8 text line")?;
        self.pos += n + 1;
        Ok(s)
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".to_string())
}

fn as_usize(o: &Obj, what: &str) -> Result<usize, String> {
    match o {
        Obj::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!(
            "{what}: expected a non-negative int, got {other:?}"
        )),
    }
}

fn as_usizes(o: &Obj, what: &str) -> Result<Vec<usize>, String> {
    match o {
        Obj::Tuple(v) | Obj::List(v) => v.iter().map(|x| as_usize(x, what)).collect(),
        other => Err(format!("{what}: expected a tuple, got {other:?}")),
    }
}

fn rebuild_tensor(args: &[Obj]) -> Result<Obj, String> {
    let [storage, offset, shape, stride, ..] = args else {
        return Err("_rebuild_tensor: too few arguments".into());
    };
    let Obj::Storage(storage) = storage else {
        return Err(format!(
            "_rebuild_tensor: expected a storage, got {storage:?}"
        ));
    };
    Ok(Obj::Tensor(Rc::new(TensorRef {
        storage: storage.clone(),
        offset: as_usize(offset, "storage offset")?,
        shape: as_usizes(shape, "size")?,
        stride: as_usizes(stride, "stride")?,
    })))
}

fn call(func: Obj, args: Obj) -> Result<Obj, String> {
    let args = match args {
        Obj::Tuple(a) | Obj::List(a) => a,
        other => return Err(format!("call arguments are not a tuple: {other:?}")),
    };
    let Obj::Global(module, name) = &func else {
        return Ok(Obj::Opaque("call".into()));
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => rebuild_tensor(&args)?,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            args.into_iter().next().unwrap_or(Obj::None)
        }
        ("collections", "OrderedDict") => {
            let mut items = Vec::new();
            if let Some(Obj::List(pairs) | Obj::Tuple(pairs)) = args.into_iter().next() {
                for p in pairs {
                    if let Obj::Tuple(mut kv) | Obj::List(mut kv) = p
                        && kv.len() == 2
                    {
                        let v = kv.pop().unwrap_or(Obj::None);
                        let k = kv.pop().unwrap_or(Obj::None);
                        items.push((k, v));
                    }
                }
            }
            Obj::Dict(items)
        }
        _ => Obj::Opaque(format!("{module}.{name}")),
    })
}

/// Why the pickle machine stopped.
#[derive(Debug)]
enum VmError {
    /// The pickle is malformed, or uses what this reader does not read.
    Malformed(String),
    /// A global outside torch's `weights_only` allow-list (`module.name`).
    Refused(String),
}

impl From<String> for VmError {
    fn from(reason: String) -> Self {
        Self::Malformed(reason)
    }
}

impl From<&str> for VmError {
    fn from(reason: &str) -> Self {
        Self::Malformed(reason.to_string())
    }
}

/// Dtype names of torch's `<Type>Storage` and `<Type>Tensor` classes.
const LEGACY_TYPES: &[&str] = &[
    "Byte", "Char", "Short", "Int", "Long", "Half", "Float", "Double", "Bool", "BFloat16",
];

/// Whether torch's `weights_only` unpickler resolves `module.name`: the
/// globals of `_get_allowed_globals` in torch/_weights_only_unpickler.py, as
/// read from torch's source (legacy storage and tensor classes as torch
/// registers them, `torch.cuda` and `torch.sparse` included), so that a
/// pickle naming a global torch's safe loader refuses does not load by
/// default here either.
fn torch_allows(module: &str, name: &str) -> bool {
    // torch.save writes protocol 2, where Python 3 spells `builtins` as
    // Python 2's `__builtin__`; torch maps it back before looking it up.
    let module = if module == "__builtin__" {
        "builtins"
    } else {
        module
    };
    let storage = |types: &[&str]| {
        name.strip_suffix("Storage")
            .is_some_and(|t| types.contains(&t))
    };
    let tensor = |sparse: bool| {
        name.strip_suffix("Tensor")
            .is_some_and(|t| LEGACY_TYPES.contains(&t) && !(sparse && t == "Bool"))
    };
    match module {
        "collections" => matches!(name, "OrderedDict" | "Counter"),
        "builtins" => matches!(name, "set" | "bytearray" | "complex"),
        // How protocol 2 pickles `bytes`.
        "_codecs" => name == "encode",
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor"
                | "_rebuild_tensor_v2"
                | "_rebuild_tensor_v3"
                | "_rebuild_parameter"
                | "_rebuild_parameter_with_state"
                | "_rebuild_qtensor"
                | "_rebuild_sparse_tensor"
                | "_rebuild_meta_tensor_no_storage"
                | "_rebuild_wrapper_subclass"
                | "_rebuild_device_tensor_from_numpy"
                | "_rebuild_device_tensor_from_cpu_tensor"
        ),
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch.nn.parameter" => name == "Parameter",
        "torch.serialization" => name == "_get_layout",
        "torch.storage" => matches!(name, "UntypedStorage" | "TypedStorage"),
        "torch" => {
            matches!(name, "Size" | "Tensor" | "device")
                || TORCH_DTYPES.contains(&name)
                || matches!(
                    name,
                    "per_tensor_affine"
                        | "per_tensor_symmetric"
                        | "per_channel_affine"
                        | "per_channel_symmetric"
                        | "per_channel_affine_float_qparams"
                )
                || storage(LEGACY_TYPES)
                || storage(&[
                    "ComplexFloat",
                    "ComplexDouble",
                    "QUInt8",
                    "QInt8",
                    "QInt32",
                    "QUInt4x2",
                    "QUInt2x4",
                ])
                || tensor(false)
        }
        "torch.cuda" => {
            storage(LEGACY_TYPES) || storage(&["ComplexFloat", "ComplexDouble"]) || tensor(false)
        }
        "torch.sparse" | "torch.cuda.sparse" => tensor(true),
        _ => false,
    }
}

/// `torch.<dtype>` globals, as `str(dtype)` names them: the dtypes of legacy
/// storages, the newer ones saved as untyped storages, and the sub-byte
/// integers.
const TORCH_DTYPES: &[&str] = &[
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex128",
    "complex64",
    "complex32",
    "qint8",
    "qint32",
    "quint8",
    "quint4x2",
    "quint2x4",
    "float8_e5m2",
    "float8_e4m3fn",
    "float8_e5m2fnuz",
    "float8_e4m3fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "bits8",
    "bits16",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "uint16",
    "uint32",
    "uint64",
    "uint1",
    "uint2",
    "uint3",
    "uint4",
    "uint5",
    "uint6",
    "uint7",
    "int1",
    "int2",
    "int3",
    "int4",
    "int5",
    "int6",
    "int7",
];

/// The value a GLOBAL or STACK_GLOBAL pushes, or the refusal of a global
/// outside torch's allow-list (recorded in `skipped` under the opt-in).
fn global(
    module: String,
    name: String,
    options: &PickleOptions,
    skipped: &mut BTreeSet<String>,
) -> Result<Obj, VmError> {
    if !torch_allows(&module, &name) {
        let full = format!("{module}.{name}");
        if !options.skip_unsafe_globals {
            return Err(VmError::Refused(full));
        }
        skipped.insert(full);
    }
    Ok(Obj::Global(module, name))
}

fn persistent_load(pid: Obj) -> Result<Obj, String> {
    let Obj::Tuple(t) = pid else {
        return Err(format!("persistent id is not a tuple: {pid:?}"));
    };
    match t.as_slice() {
        [
            Obj::Str(kind),
            Obj::Global(_, ty),
            Obj::Str(key),
            _location,
            _numel,
            ..,
        ] if kind == "storage" => {
            let dtype =
                storage_dtype(ty).ok_or_else(|| format!("unsupported storage type `{ty}`"))?;
            Ok(Obj::Storage(Rc::new(StorageRef {
                dtype,
                key: key.clone(),
            })))
        }
        other => Err(format!("unsupported persistent id {other:?}")),
    }
}

/// Runs the pickle program and returns the object it builds.
fn run_pickle(
    data: &[u8],
    options: &PickleOptions,
    skipped: &mut BTreeSet<String>,
) -> Result<Obj, VmError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Obj> = Vec::new();
    let mut memo: HashMap<u64, Obj> = HashMap::new();
    let pop = |stack: &mut Vec<Obj>| stack.pop().ok_or_else(|| "stack underflow".to_string());
    let pop_mark = |stack: &mut Vec<Obj>| -> Result<Vec<Obj>, String> {
        let m = stack
            .iter()
            .rposition(|o| matches!(o, Obj::Mark))
            .ok_or("MARK expected on the stack")?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        if stack.len() > MAX_ITEMS || memo.len() > MAX_ITEMS {
            return Err("too many pickle objects".into());
        }
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?;
            }
            0x95 => {
                r.u64()?;
            }
            b'.' => return Ok(pop(&mut stack)?),
            b'(' => stack.push(Obj::Mark),
            b'}' => stack.push(Obj::Dict(Vec::new())),
            b']' => stack.push(Obj::List(Vec::new())),
            b')' => stack.push(Obj::Tuple(Vec::new())),
            0x8f => stack.push(Obj::List(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Obj::Tuple(items));
            }
            b'l' | 0x91 => {
                let items = pop_mark(&mut stack)?;
                stack.push(Obj::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                if !items.len().is_multiple_of(2) {
                    return Err("DICT with an odd number of items".into());
                }
                let mut it = items.into_iter();
                let mut d = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                stack.push(Obj::Dict(d));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Obj::Tuple(items));
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => u64::from(r.u8()?),
                    b'r' => u64::from(r.u32()?),
                    _ => memo.len() as u64,
                };
                let top = stack.last().ok_or("memoize on an empty stack")?.clone();
                memo.insert(idx, top);
            }
            b'h' | b'j' => {
                let idx = if op == b'h' {
                    u64::from(r.u8()?)
                } else {
                    u64::from(r.u32()?)
                };
                let v = memo
                    .get(&idx)
                    .ok_or_else(|| format!("memo key {idx} missing"))?;
                stack.push(v.clone());
            }
            b'X' => {
                let n = u64::from(r.u32()?);
                stack.push(Obj::Str(utf8(r.len_prefixed(n)?)?));
            }
            0x8c => {
                let n = u64::from(r.u8()?);
                stack.push(Obj::Str(utf8(r.len_prefixed(n)?)?));
            }
            0x8d => {
                let n = r.u64()?;
                stack.push(Obj::Str(utf8(r.len_prefixed(n)?)?));
            }
            b'T' => {
                let n = u64::from(r.u32()?);
                stack.push(Obj::Str(String::from_utf8_lossy(r.len_prefixed(n)?).into()));
            }
            b'U' => {
                let n = u64::from(r.u8()?);
                stack.push(Obj::Str(String::from_utf8_lossy(r.len_prefixed(n)?).into()));
            }
            b'B' => {
                let n = u64::from(r.u32()?);
                stack.push(Obj::Bytes(r.len_prefixed(n)?.to_vec()));
            }
            b'C' => {
                let n = u64::from(r.u8()?);
                stack.push(Obj::Bytes(r.len_prefixed(n)?.to_vec()));
            }
            0x8e => {
                let n = r.u64()?;
                stack.push(Obj::Bytes(r.len_prefixed(n)?.to_vec()));
            }
            b'J' => stack.push(Obj::Int(i64::from(r.u32()? as i32))),
            b'K' => stack.push(Obj::Int(i64::from(r.u8()?))),
            b'M' => stack.push(Obj::Int(i64::from(r.u16()?))),
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    u64::from(r.u8()?)
                } else {
                    u64::from(r.u32()?)
                };
                let b = r.len_prefixed(n)?;
                let v = if b.is_empty() {
                    Obj::Int(0)
                } else if b.len() <= 8 {
                    let mut a = [if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 }; 8];
                    a[..b.len()].copy_from_slice(b);
                    Obj::Int(i64::from_le_bytes(a))
                } else {
                    Obj::Opaque("big int".into())
                };
                stack.push(v);
            }
            b'G' => {
                let b = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(Obj::Float(f64::from_be_bytes(a)));
            }
            b'I' => {
                let line = r.line()?;
                stack.push(match line {
                    "01" => Obj::Bool(true),
                    "00" => Obj::Bool(false),
                    s => Obj::Int(s.parse().map_err(|_| format!("bad INT {s:?}"))?),
                });
            }
            0x88 => stack.push(Obj::Bool(true)),
            0x89 => stack.push(Obj::Bool(false)),
            b'N' => stack.push(Obj::None),
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                stack.push(global(module, name, options, skipped)?);
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                let (Obj::Str(module), Obj::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL operands are not strings".into());
                };
                stack.push(global(module, name, options, skipped)?);
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                stack.push(call(func, args)?);
            }
            0x81 => {
                let args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                stack.push(call(cls, args)?);
            }
            0x92 => {
                let _kwargs = pop(&mut stack)?;
                let args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                stack.push(call(cls, args)?);
            }
            b'b' => {
                // Object state (e.g. an OrderedDict's `_metadata`): not needed.
                pop(&mut stack)?;
                if stack.is_empty() {
                    return Err("BUILD on an empty stack".into());
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Obj::Dict(d)) => d.push((k, v)),
                    Some(_) => {}
                    None => return Err("SETITEM on an empty stack".into()),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if !items.len().is_multiple_of(2) {
                    return Err("SETITEMS with an odd number of items".into());
                }
                match stack.last_mut() {
                    Some(Obj::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    Some(_) => {}
                    None => return Err("SETITEMS on an empty stack".into()),
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Obj::List(l)) => l.push(v),
                    Some(_) => {}
                    None => return Err("APPEND on an empty stack".into()),
                }
            }
            b'e' | 0x90 => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Obj::List(l)) => l.extend(items),
                    Some(_) => {}
                    None => return Err("APPENDS on an empty stack".into()),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent_load(pid)?);
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let top = stack.last().ok_or("DUP on an empty stack")?.clone();
                stack.push(top);
            }
            other => {
                return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {at}").into());
            }
        }
    }
}
