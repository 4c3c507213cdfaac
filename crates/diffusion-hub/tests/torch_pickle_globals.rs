//! Pickle globals follow torch's `weights_only` rule: a `torch.save` archive
//! whose pickle names a function or class torch's safe loader refuses
//! (`os.system`, `builtins.eval`, `subprocess.Popen`...) is an error naming
//! the file and the global, however the pickle names and calls it; with
//! `PickleOptions::skip_unsafe_globals` it loads with those entries skipped;
//! the globals torch allows (storages, rebuild functions, `torch.Size`,
//! dtypes...) load either way. The archives are built here byte by byte (no
//! torch on the test machines), with the opcodes torch.save writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use diffusion_hub::torch_pickle::{PickleOptions, TorchFile};
use diffusion_hub::weights::{Weights, WeightsError};

/// BINUNICODE (protocol 2, as torch.save writes strings).
fn unicode(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

/// SHORT_BINUNICODE (protocol 4).
fn short_unicode(s: &str) -> Vec<u8> {
    let mut out = vec![0x8c, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// GLOBAL (`c`): module and name as text lines.
fn global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

/// STACK_GLOBAL (protocol 4): module and name as strings on the stack.
fn stack_global(module: &str, name: &str) -> Vec<u8> {
    [short_unicode(module), short_unicode(name), vec![0x93]].concat()
}

/// BININT1.
fn int(v: u8) -> Vec<u8> {
    vec![b'K', v]
}

/// A tuple of small ints.
fn ints(values: &[u8]) -> Vec<u8> {
    let mut out = vec![b'('];
    for &v in values {
        out.extend(int(v));
    }
    out.push(b't');
    out
}

/// `_rebuild_tensor_v2(storage, 0, shape, contiguous stride, False,
/// OrderedDict())` over storage `key` of type `storage_module.storage_type`,
/// as torch.save pickles a tensor.
fn tensor(storage_module: &str, storage_type: &str, key: &str, shape: &[u8]) -> Vec<u8> {
    let numel: u8 = shape.iter().product();
    let mut stride = vec![1u8; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    [
        global("torch._utils", "_rebuild_tensor_v2"),
        b"((".to_vec(),
        unicode("storage"),
        global(storage_module, storage_type),
        unicode(key),
        unicode("cpu"),
        int(numel),
        b"tQ".to_vec(),
        int(0),
        ints(shape),
        ints(&stride),
        vec![0x89],
        global("collections", "OrderedDict"),
        b")Rt".to_vec(),
        b"R".to_vec(),
    ]
    .concat()
}

/// The values of tensor `w`.
const W: [f32; 3] = [1.0, 2.0, 3.0];

/// Writes a `torch.save`-shaped archive: a top-level dict holding the F32
/// tensor `w` (storage `0`) and then `extra` (key/value pickle items), with
/// `storages` beside `0`. `proto` is the pickle protocol written.
fn archive(
    dir: &Path,
    file: &str,
    proto: u8,
    extra: &[u8],
    storages: &[(&str, Vec<u8>)],
) -> PathBuf {
    let pickle = [
        vec![0x80, proto, b'}', b'('],
        unicode("w"),
        tensor("torch", "FloatStorage", "0", &[3]),
        extra.to_vec(),
        b"u.".to_vec(),
    ]
    .concat();
    let w: Vec<u8> = W.iter().flat_map(|x| x.to_le_bytes()).collect();
    let path = dir.join(file);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut entries = vec![
        ("archive/data.pkl".to_string(), pickle),
        ("archive/byteorder".to_string(), b"little".to_vec()),
        ("archive/data/0".to_string(), w),
        ("archive/version".to_string(), b"3\n".to_vec()),
    ];
    for (key, bytes) in storages {
        entries.push((format!("archive/data/{key}"), bytes.clone()));
    }
    for (name, bytes) in entries {
        zip.start_file(name, stored).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

fn skip() -> PickleOptions {
    PickleOptions::default().skip_unsafe_globals(true)
}

/// Pickle items `evil: <call>` naming a global torch refuses, each with the
/// protocol it is written in and the global it names.
fn refused_cases() -> Vec<(&'static str, u8, Vec<u8>, &'static str)> {
    let call = |callee: Vec<u8>, arg: &str, op: u8| {
        [callee, b"(".to_vec(), unicode(arg), vec![b't', op]].concat()
    };
    vec![
        (
            "GLOBAL then REDUCE",
            2,
            call(global("os", "system"), "echo pwned", b'R'),
            "os.system",
        ),
        (
            "STACK_GLOBAL then REDUCE",
            4,
            call(stack_global("os", "system"), "echo pwned", b'R'),
            "os.system",
        ),
        (
            "eval through REDUCE",
            2,
            call(global("builtins", "eval"), "__import__('os')", b'R'),
            "builtins.eval",
        ),
        (
            "a class through NEWOBJ",
            4,
            call(stack_global("subprocess", "Popen"), "ls", 0x81),
            "subprocess.Popen",
        ),
        (
            "Python 2's spelling of builtins",
            2,
            call(global("__builtin__", "eval"), "1", b'R'),
            "__builtin__.eval",
        ),
        (
            "an allowed module, another name",
            2,
            call(global("torch", "load"), "x.pt", b'R'),
            "torch.load",
        ),
        (
            "a global never called (a dict key, as Lightning's callbacks)",
            2,
            [
                b"}".to_vec(),
                global(
                    "pytorch_lightning.callbacks.model_checkpoint",
                    "ModelCheckpoint",
                ),
                b"}s".to_vec(),
            ]
            .concat(),
            "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        ),
    ]
}

#[test]
fn unsafe_globals_are_refused_by_default_naming_file_and_global() {
    let tmp = tempfile::tempdir().unwrap();
    for (what, proto, value, name) in refused_cases() {
        let extra = [unicode("evil"), value].concat();
        let path = archive(tmp.path(), "x.ckpt", proto, &extra, &[]);
        for err in [
            TorchFile::open(&path).unwrap_err(),
            Weights::open(&path).unwrap_err(),
        ] {
            assert!(
                matches!(&err, WeightsError::UnsafeGlobal { global, .. } if global == name),
                "{what}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("x.ckpt"), "{what}: {msg}");
            assert!(msg.contains(&format!("`{name}`")), "{what}: {msg}");
            assert!(msg.contains("skip_unsafe_globals"), "{what}: {msg}");
        }
    }
}

#[test]
fn unsafe_globals_are_skipped_with_the_opt_in() {
    let tmp = tempfile::tempdir().unwrap();
    for (what, proto, value, name) in refused_cases() {
        let extra = [unicode("evil"), value].concat();
        let path = archive(tmp.path(), "x.ckpt", proto, &extra, &[]);
        let file = TorchFile::open_with(&path, &skip()).unwrap();
        assert_eq!(file.skipped_globals(), [name], "{what}");
        assert_eq!(file.other_keys(), ["evil"], "{what}");
        assert_eq!(file.len(), 1, "{what}");
        let w = Weights::open_with(&path, &skip()).unwrap();
        assert_eq!(w.tensor("w").unwrap().to_f32_vec().unwrap(), W, "{what}");
        assert_eq!(w.skipped_globals(), [name], "{what}");
    }
}

/// The globals torch allows that this reader does not model (`torch.Size`,
/// `torch.device`, dtypes, `collections.Counter`, protocol 2's
/// `__builtin__.set` and `_codecs.encode`) load under the strict default,
/// as do parameters (`_rebuild_parameter`) and CUDA storages.
#[test]
fn allowed_globals_load_strictly() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = [
        unicode("size"),
        global("torch", "Size"),
        b"(".to_vec(),
        ints(&[2, 3]),
        b"tR".to_vec(),
        unicode("device"),
        global("torch", "device"),
        b"(".to_vec(),
        unicode("cuda"),
        b"tR".to_vec(),
        unicode("dtype"),
        global("torch", "bfloat16"),
        unicode("counter"),
        global("collections", "Counter"),
        b")R".to_vec(),
        unicode("set"),
        global("__builtin__", "set"),
        b"(]tR".to_vec(),
        unicode("bytes"),
        global("_codecs", "encode"),
        b"(".to_vec(),
        unicode("abc"),
        unicode("latin1"),
        b"tR".to_vec(),
        unicode("param"),
        global("torch._utils", "_rebuild_parameter"),
        b"(".to_vec(),
        tensor("torch", "FloatStorage", "0", &[3]),
        vec![0x88],
        global("collections", "OrderedDict"),
        b")RtR".to_vec(),
        unicode("half"),
        tensor("torch.cuda", "HalfStorage", "1", &[2]),
    ]
    .concat();
    let half = [0x3c00u16, 0xc000]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let path = archive(tmp.path(), "ok.pt", 2, &extra, &[("1", half)]);
    let file = TorchFile::open(&path).unwrap();
    assert!(file.skipped_globals().is_empty());
    let names: Vec<&str> = file.tensors().map(|(k, _)| k).collect();
    assert_eq!(names, ["half", "param", "w"]);
    let mut others = file.other_keys().to_vec();
    others.sort();
    assert_eq!(
        others,
        ["bytes", "counter", "device", "dtype", "set", "size"]
    );
    assert_eq!(file.tensor("param").unwrap().to_f32_vec().unwrap(), W);
    assert_eq!(
        file.tensor("half").unwrap().to_f32_vec().unwrap(),
        [1.0, -2.0]
    );
}
