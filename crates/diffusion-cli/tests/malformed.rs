//! Malformed input, end to end: whatever a user or a downloaded file throws at
//! `diffuse`, the answer is one `error: ...` line on stderr that names the
//! culprit (the flag, the file as the user gave it, the config field, the
//! weight key), a non-zero exit status (1 or 2: never a panic's 101, never a
//! signal such as an allocation abort), nothing on stdout, and nothing left
//! behind: no output, no half-written file, no stray temporary.
//!
//! The cases are data tables (one [`Case`] per malformed input), one table
//! per command group, each run by one test function that collects every
//! failing case and reports them all at once:
//!
//! - [`generate_flags`]: `generate` flag values (sizes with no upper bound,
//!   NaN/infinite floats, seeds, schedulers and `--scheduler-config` keys,
//!   dtype/device, SDXL size flags, the `DIFFUSION_*` variables) and
//!   `--latents` files (garbage, truncated, wrong key/shape/dtype, NaN).
//! - [`outputs`]: output paths (missing folder, `-o ""`, a folder,
//!   `-o`/`--output-latents` collisions, an output equal to an input, a batch
//!   whose later file cannot be written: no earlier file may be left).
//! - [`pipeline_configs`]: `model_index.json` and the `config.json` files of
//!   the UNets, VAE, text encoder, scheduler and tokenizer: truncated or
//!   non-JSON files, wrong types, zero/huge/non-dividing group and head
//!   counts, sample sizes of 0 or 1000000, unknown libraries and classes.
//! - [`weight_files`]: safetensors files truncated, garbage, with absurd
//!   headers, missing keys, wrong shapes or dtypes.
//! - [`img2img_and_inpaint`]: input images and masks (garbage, empty,
//!   truncated, too small, headers claiming gigapixels, wrong mask size) and
//!   the flags only those commands take.
//! - [`convert_and_info`]: single-file checkpoints (garbage, truncated,
//!   pickles calling `os.system`), `--prediction-type`, `--set`, and `info`
//!   on broken folders and files.
//! - [`train`]: `diffuse train` flags, model configs, data folders and
//!   checkpoints.
//!
//! Every invocation runs under an address-space limit (`ulimit -v`, see
//! [`ADDRESS_SPACE_KB`]) so that an unbounded allocation shows as the abort it
//! would be on a smaller machine instead of swapping this one, and under a
//! timeout. [`valid_runs_pass_under_the_limits`] checks that the tiny models
//! run under the same limits, so a failure below is the input's, not the
//! harness's.
//!
//! Models: the tiny fixture pipelines of diffusion-pipelines (`ddpm`, `sd1`,
//! `inpaint`; 16×16 / 32×32 images, a run takes well under a second),
//! assembled once per test function; a case that breaks a model works on its
//! own copy (`m` in its working folder).
//!
//! `MALFORMED_VERBOSE=1 cargo test -p diffusion-cli --test malformed --
//! --nocapture` prints every case's exit status and error line.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

/// `ulimit -v` for every invocation, in KiB (4 GB): the valid runs of
/// [`valid_runs_pass_under_the_limits`] also pass under 1 GB, so this leaves
/// a wide margin while any allocation sized by a malformed input fails.
const ADDRESS_SPACE_KB: u64 = 4_000_000;

/// Longest one invocation may run: the error cases fail in well under a
/// second; a case that runs away is killed and reported.
const TIMEOUT: Duration = Duration::from_secs(40);

/// Invocations run at once within one test function.
const WORKERS: usize = 2;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// `crates/diffusion-pipelines/tests/fixtures`.
fn pipeline_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffusion-pipelines/tests/fixtures")
}

/// `crates/diffusion-hub/tests/fixtures`.
fn hub_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffusion-hub/tests/fixtures")
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to)
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", entry.path().display(), to.display()));
        }
    }
}

/// The decompressed open-clip BPE text the CLIP vocabulary is rebuilt from.
fn bpe_text(gz: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(gz).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// A complete diffusers folder for fixture pipeline `name` at `dst`, as
/// diffusion-pipelines' `tests/common::pipeline_dir` assembles it: the
/// committed tree, the shared weights of `assemble.json`, the CLIP vocabulary.
fn assemble(name: &str, dst: &Path, bpe: &mut Option<String>) {
    let src = pipeline_fixtures().join("pipelines").join(name);
    copy_tree(&src, dst);
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("assemble.json")).unwrap()).unwrap();
    for (dest, shared) in spec["shared"].as_object().unwrap() {
        std::fs::copy(
            pipeline_fixtures()
                .join("shared")
                .join(shared.as_str().unwrap()),
            dst.join(dest),
        )
        .unwrap();
    }
    let gz = hub_fixtures().join("tokenizer/bpe_simple_vocab_16e6.txt.gz");
    for tok in spec["vocab"].as_array().unwrap() {
        let text = bpe.get_or_insert_with(|| bpe_text(&gz));
        diffusion_hub::tokenizer::write_clip_vocab_files(
            text,
            &gz,
            &dst.join(tok.as_str().unwrap()),
        )
        .unwrap();
    }
    std::fs::remove_file(dst.join("assemble.json")).unwrap();
}

/// The pristine inputs of one test function, in a temp folder: the models
/// under `models/`, input images, training data; each case works in its own
/// folder under `work/`.
struct Env {
    root: tempfile::TempDir,
}

impl Env {
    fn new(models: &[&str]) -> Env {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut bpe = None;
        for m in models {
            assemble(m, &r.join("models").join(m), &mut bpe);
        }
        for d in ["work", "logs", "hf-home", "cache", "inputs"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let inputs = pipeline_fixtures().join("inputs");
        std::fs::copy(inputs.join("photo_a_32x32.png"), r.join("inputs/photo.png")).unwrap();
        std::fs::copy(
            inputs.join("mask_rect_32x32_L.png"),
            r.join("inputs/mask.png"),
        )
        .unwrap();
        let data = r.join("inputs/data");
        std::fs::create_dir_all(&data).unwrap();
        for k in 0..8u32 {
            image::GrayImage::from_fn(8, 8, |_, y| image::Luma([if y == k { 255 } else { 10 }]))
                .save(data.join(format!("{k}.png")))
                .unwrap();
        }
        Env { root }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn model(&self, name: &str) -> PathBuf {
        self.root().join("models").join(name)
    }

    /// The value of a `{placeholder}` argument.
    fn placeholder(&self, name: &str) -> Option<PathBuf> {
        Some(match name {
            "sd1" | "inpaint" | "ddpm" => self.model(name),
            "img" => self.root().join("inputs/photo.png"),
            "mask" => self.root().join("inputs/mask.png"),
            "data" => self.root().join("inputs/data"),
            "train_config" => train_config(),
            "ckpt" => hub_fixtures().join("single_file/sd1.safetensors"),
            "ckpt_pt" => hub_fixtures().join("single_file/sd1.ckpt"),
            "misc_pt" => hub_fixtures().join("single_file/misc.pt"),
            "strided_pt" => hub_fixtures().join("single_file/strided_huge.pt"),
            _ => return None,
        })
    }

    /// `args` with each `{name}` replaced by its path.
    /// The arguments with their placeholders filled in; a `convert` also
    /// gets the tiny checkpoint's `--set` fields first ([`tiny_overrides`]),
    /// so that a case fails for its own reason, not for the converter's
    /// released-model defaults (a later `--set` of the case wins).
    fn expand(&self, args: &[String]) -> Vec<String> {
        let mut args: Vec<String> = args.to_vec();
        if args.first().map(String::as_str) == Some("convert") {
            let at = args.len().min(3);
            args.splice(at..at, tiny_overrides());
        }
        args.iter()
            .map(|a| {
                let mut a = a.clone();
                while let Some(start) = a.find('{') {
                    let Some(len) = a[start..].find('}') else {
                        break;
                    };
                    let key = &a[start + 1..start + len];
                    let Some(path) = self.placeholder(key) else {
                        break;
                    };
                    a = format!("{}{}{}", &a[..start], path.display(), &a[start + len + 1..]);
                }
                a
            })
            .collect()
    }
}

/// `--set` flags for the fields the tiny checkpoint's weights cannot tell
/// (its group and head counts are not the released models'), from
/// diffusion-hub's `sd1.expected.json`.
fn tiny_overrides() -> Vec<String> {
    let path = hub_fixtures().join("single_file/sd1.expected.json");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut args = Vec::new();
    for (component, fields) in expected["overrides"].as_object().unwrap() {
        for (field, value) in fields.as_object().unwrap() {
            args.push("--set".to_string());
            args.push(format!("{component}.{field}={value}"));
        }
    }
    args
}

fn train_config() -> PathBuf {
    pipeline_fixtures().join("training/unet/config.json")
}

// ---------------------------------------------------------------------------
// File builders: safetensors, PNG, torch zip, pickle
// ---------------------------------------------------------------------------

/// One tensor of a safetensors file, as stored.
#[derive(Clone)]
struct Tensor {
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// A safetensors file read by hand (header JSON + data), to be edited.
#[derive(Clone, Default)]
struct SafeTensors {
    tensors: BTreeMap<String, Tensor>,
    metadata: Option<Value>,
}

impl SafeTensors {
    fn read(path: &Path) -> SafeTensors {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut st = SafeTensors::default();
        for (k, v) in header {
            if k == "__metadata__" {
                st.metadata = Some(v);
                continue;
            }
            let off = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            st.tensors.insert(
                k,
                Tensor {
                    dtype: v["dtype"].as_str().unwrap().to_string(),
                    shape: serde_json::from_value(v["shape"].clone()).unwrap(),
                    data: data[a..b].to_vec(),
                },
            );
        }
        st
    }

    fn bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if let Some(m) = &self.metadata {
            header.insert("__metadata__".into(), m.clone());
        }
        let mut data = Vec::new();
        for (k, t) in &self.tensors {
            let start = data.len();
            data.extend_from_slice(&t.data);
            header.insert(
                k.clone(),
                json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
            );
        }
        with_header(&Value::Object(header).to_string(), &data)
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }

    fn tensor(&mut self, key: &str) -> &mut Tensor {
        self.tensors
            .get_mut(key)
            .unwrap_or_else(|| panic!("no tensor {key}"))
    }
}

/// A safetensors file from a header text and data (no checks).
fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// An f32 tensor of `shape` filled with `value` (or a ramp when `None`).
fn f32_tensor(shape: &[usize], value: Option<f32>) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .flat_map(|i| {
            value
                .unwrap_or(((i * 7919) % 97) as f32 / 48.0 - 1.0)
                .to_le_bytes()
        })
        .collect();
    Tensor {
        dtype: "F32".into(),
        shape: shape.to_vec(),
        data,
    }
}

/// A latents file: one tensor named `key`.
fn latents_file(key: &str, t: Tensor) -> Vec<u8> {
    let mut st = SafeTensors::default();
    st.tensors.insert(key.into(), t);
    st.bytes()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG of `w`×`h` RGB.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 8 % 256) as u8, (y * 8 % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A grayscale PNG mask of `w`×`h`, white in its left half.
fn png_mask(w: u32, h: u32) -> Vec<u8> {
    let img =
        image::GrayImage::from_fn(w, h, |x, _| image::Luma([if x < w / 2 { 255 } else { 0 }]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A well-formed PNG header claiming `w`×`h` RGB pixels, with (almost) no
/// pixel data: a decoder that trusts it allocates `3·w·h` bytes.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // An empty zlib stream.
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A zip archive of `entries`, stored (not compressed), as `torch.save` writes.
fn zip_stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    let cd_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A `torch.save` archive whose `data.pkl` is `pickle`.
fn torch_zip(pickle: &[u8]) -> Vec<u8> {
    zip_stored(&[
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little"),
        ("archive/version", b"3\n"),
    ])
}

fn pickle_str(p: &mut Vec<u8>, s: &str) {
    p.push(b'X'); // BINUNICODE
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

/// How a malicious pickle names its callable.
#[derive(Clone, Copy)]
enum Global {
    /// `GLOBAL 'module name'` (protocols 0-3).
    Text,
    /// `STACK_GLOBAL` over two strings (protocol 4+).
    Stack,
}

/// A pickle of `{"state_dict": {}, "payload": module.name("echo pwned")}`: what
/// a malicious checkpoint runs on `torch.load` without `weights_only`.
fn evil_pickle(module: &str, name: &str, how: Global) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    pickle_str(&mut p, "state_dict");
    p.push(b'}');
    pickle_str(&mut p, "payload");
    match how {
        Global::Text => {
            p.push(b'c');
            p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        }
        Global::Stack => {
            pickle_str(&mut p, module);
            pickle_str(&mut p, name);
            p.push(0x93);
        }
    }
    p.push(b'(');
    pickle_str(&mut p, "echo pwned");
    p.extend_from_slice(b"tRu.");
    p
}

/// A pickle whose top-level object is the call itself (`__reduce__`).
fn evil_pickle_root(module: &str, name: &str) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'c'];
    p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    p.push(b'(');
    pickle_str(&mut p, "echo pwned");
    p.extend_from_slice(b"tR.");
    p
}

// ---------------------------------------------------------------------------
// Setup helpers (run in a case's working folder)
// ---------------------------------------------------------------------------

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, bytes).unwrap();
}

fn mkdir(dir: &Path, rel: &str) {
    std::fs::create_dir_all(dir.join(rel)).unwrap();
}

/// A copy of fixture model `name` as `dir/m`.
fn copy_model(env: &Env, dir: &Path, name: &str) {
    copy_tree(&env.model(name), &dir.join("m"));
}

/// `value`'s keys set into the JSON object `path` (`null` removes a key).
fn patch_json(path: &Path, patch: &Value) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (k, x) in patch.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn truncated(bytes: &[u8], keep: usize) -> Vec<u8> {
    bytes[..keep.min(bytes.len())].to_vec()
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

type Setup = Box<dyn Fn(&Env, &Path) + Send + Sync>;

/// One malformed invocation.
struct Case {
    /// Unique within its table; reported on failure.
    name: String,
    /// Arguments after the binary; `{sd1}`, `{img}`, ... are fixture paths
    /// ([`Env::placeholder`]).
    args: Vec<String>,
    /// Prepares the working folder (the process's current directory).
    setup: Option<Setup>,
    /// What the error line must contain: alternatives separated by `|`,
    /// each all of its `&`-separated parts.
    needle: &'static str,
    /// Extra environment variables.
    env: Vec<(&'static str, &'static str)>,
}

impl Case {
    fn new(name: &str, args: Vec<String>, needle: &'static str) -> Case {
        Case {
            name: name.to_string(),
            args,
            setup: None,
            needle,
            env: Vec::new(),
        }
    }

    fn setup(mut self, f: impl Fn(&Env, &Path) + Send + Sync + 'static) -> Case {
        self.setup = Some(Box::new(f));
        self
    }

    fn env(mut self, key: &'static str, value: &'static str) -> Case {
        self.env.push((key, value));
        self
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Flags that take no value.
fn is_switch(flag: &str) -> bool {
    matches!(
        flag,
        "-q" | "--quiet"
            | "--long-prompt"
            | "--offline"
            | "--extract-ema"
            | "--use-ema"
            | "--random-flip"
            | "--random-crop"
    )
}

fn canonical(flag: &str) -> &str {
    match flag {
        "-p" => "--prompt",
        "-o" => "--output",
        "-m" => "--model",
        "-q" => "--quiet",
        f => f,
    }
}

/// `base` (a subcommand and its default flags) with `extra` appended; a flag
/// of `extra` replaces the same flag of `base` (all its occurrences), and
/// `!--flag` in `extra` only removes it. `--seeds` also removes `--seed`.
fn merge(base: &[&str], extra: &[&str]) -> Vec<String> {
    let mut drop: Vec<&str> = Vec::new();
    for e in extra {
        if let Some(f) = e.strip_prefix('!') {
            drop.push(canonical(f));
        } else if e.starts_with('-')
            && e.len() > 1
            && !e[1..].starts_with(|c: char| c.is_ascii_digit())
        {
            drop.push(canonical(e));
            if *e == "--seeds" {
                drop.push("--seed");
            }
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < base.len() {
        let a = base[i];
        if a.starts_with('-') {
            let takes_value = !is_switch(a);
            let unit = if takes_value {
                &base[i..i + 2]
            } else {
                &base[i..i + 1]
            };
            if !drop.contains(&canonical(a)) {
                out.extend(unit.iter().map(|s| s.to_string()));
            }
            i += unit.len();
        } else {
            out.push(a.to_string());
            i += 1;
        }
    }
    out.extend(
        extra
            .iter()
            .filter(|e| !e.starts_with('!'))
            .map(|s| s.to_string()),
    );
    out
}

/// `generate` on the unconditional DDPM pipeline (16×16 RGB).
fn ddpm(extra: &[&str]) -> Vec<String> {
    merge(
        &[
            "generate", "--model", "{ddpm}", "-q", "--steps", "2", "--seed", "0",
        ],
        extra,
    )
}

/// `generate` on the tiny SD1 pipeline (32×32, with tokenizer).
fn sd1(extra: &[&str]) -> Vec<String> {
    merge(
        &[
            "generate", "--model", "{sd1}", "-q", "--steps", "2", "--seed", "0", "-p", "a cat",
        ],
        extra,
    )
}

/// `img2img` on the tiny SD1 pipeline with a 32×32 photo.
fn img2img(extra: &[&str]) -> Vec<String> {
    merge(
        &[
            "img2img", "--model", "{sd1}", "-q", "--steps", "4", "--seed", "0", "-p", "a cat",
            "--image", "{img}",
        ],
        extra,
    )
}

/// `inpaint` on the tiny inpainting pipeline with a 32×32 photo and mask.
fn inpaint(extra: &[&str]) -> Vec<String> {
    merge(
        &[
            "inpaint",
            "--model",
            "{inpaint}",
            "-q",
            "--steps",
            "4",
            "--seed",
            "0",
            "-p",
            "a cat",
            "--image",
            "{img}",
            "--mask",
            "{mask}",
        ],
        extra,
    )
}

/// `train` on eight 8×8 images with the tiny training UNet, one step.
fn train_args(extra: &[&str]) -> Vec<String> {
    merge(
        &[
            "train",
            "--train-data-dir",
            "{data}",
            "--output-dir",
            "run",
            "--model-config",
            "{train_config}",
            "--resolution",
            "8",
            "--train-batch-size",
            "2",
            "--max-train-steps",
            "1",
            "--lr-warmup-steps",
            "0",
            "--eval-batch-size",
            "1",
            "--num-inference-steps",
            "2",
            "--checkpointing-steps",
            "0",
            "--quiet",
        ],
        extra,
    )
}

/// A case on a copy of model `model` (as `m`) whose file `rel` (JSON) gets
/// `patch`; run with `generate` (SD models with a prompt).
fn config_case(
    name: &str,
    model: &'static str,
    rel: &'static str,
    patch: Value,
    needle: &'static str,
) -> Case {
    Case::new(&format!("{model}_{name}"), generate_on_copy(model), needle).setup(move |env, dir| {
        copy_model(env, dir, model);
        patch_json(&dir.join("m").join(rel), &patch);
    })
}

/// A case on a copy of model `model` whose file `rel` is replaced by
/// `bytes(original)` (`None`: the file is removed).
fn file_case(
    name: &str,
    model: &'static str,
    rel: &'static str,
    bytes: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    needle: &'static str,
) -> Case {
    Case::new(&format!("{model}_{name}"), generate_on_copy(model), needle).setup(move |env, dir| {
        copy_model(env, dir, model);
        let p = dir.join("m").join(rel);
        let original = std::fs::read(&p).unwrap_or_default();
        match bytes(&original) {
            Some(b) => std::fs::write(&p, b).unwrap(),
            None => {
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).unwrap()
                } else {
                    std::fs::remove_file(&p).unwrap()
                }
            }
        }
    })
}

/// A case on a copy of model `model` whose safetensors file `rel` is edited.
fn weights_case(
    name: &str,
    model: &'static str,
    rel: &'static str,
    edit: impl Fn(&mut SafeTensors) + Send + Sync + 'static,
    needle: &'static str,
) -> Case {
    Case::new(&format!("{model}_{name}"), generate_on_copy(model), needle).setup(move |env, dir| {
        copy_model(env, dir, model);
        let p = dir.join("m").join(rel);
        let mut st = SafeTensors::read(&p);
        edit(&mut st);
        st.write(&p);
    })
}

fn generate_on_copy(model: &str) -> Vec<String> {
    match model {
        "ddpm" => ddpm(&["--model", "m"]),
        "inpaint" => inpaint(&["--model", "m"]),
        _ => sd1(&["--model", "m"]),
    }
}

// ---------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Dir,
    File(u64, Option<SystemTime>),
}

/// Every path under `dir` (relative), with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &p, out);
            } else {
                out.insert(rel, Entry::File(meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What the run left different in its working folder.
fn changes(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut v = Vec::new();
    for (p, e) in after {
        match before.get(p) {
            None => v.push(format!("left {}", p.display())),
            Some(b) if b != e => v.push(format!("modified {}", p.display())),
            _ => {}
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) {
            v.push(format!("removed {}", p.display()));
        }
    }
    v
}

/// The result of one invocation.
struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
    secs: f64,
}

/// Runs `diffuse args` in `dir` under the address-space limit and timeout.
fn invoke(env: &Env, name: &str, dir: &Path, args: &[String], vars: &[(&str, &str)]) -> Run {
    use std::os::unix::process::ExitStatusExt;
    let logs = env.root().join("logs");
    let out_path = logs.join(format!("{name}.stdout"));
    let err_path = logs.join(format!("{name}.stderr"));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -v {ADDRESS_SPACE_KB} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", env.root().join("hf-home"))
        .env("DIFFUSE_CACHE", env.root().join("cache"))
        .env_remove("DIFFUSION_ATTENTION")
        .env_remove("DIFFUSION_CONV")
        .env_remove("DIFFUSION_GROUP_NORM")
        .env_remove("DIFFUSION_LINEAR")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn sh");
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()).into_owned(),
        secs: start.elapsed().as_secs_f64(),
    }
}

fn abbreviate(s: &str, n: usize) -> String {
    let s = s.trim_end();
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// Runs one case; `Err` says everything that is wrong with its outcome.
fn run_case(env: &Env, case: &Case) -> Result<f64, String> {
    let dir = env.root().join("work").join(&case.name);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(setup) = &case.setup {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup(env, &dir)));
        if let Err(p) = done {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(format!("setup failed: {}", abbreviate(&msg, 400)));
        }
    }
    let before = snapshot(&dir);
    let args = env.expand(&case.args);
    let run = invoke(env, &case.name, &dir, &args, &case.env);
    let after = snapshot(&dir);
    let mut problems = Vec::new();
    if run.timed_out {
        problems.push(format!("timed out after {}s", TIMEOUT.as_secs()));
    } else if let Some(sig) = run.signal {
        problems.push(format!("killed by signal {sig}"));
    } else {
        match run.code {
            Some(0) => problems.push("exit status 0 (success)".into()),
            Some(101) => problems.push("exit status 101 (panic)".into()),
            Some(1 | 2) => {}
            other => problems.push(format!("exit status {other:?}")),
        }
    }
    let err = &run.stderr;
    let lines = err.lines().count();
    if lines != 1 {
        problems.push(format!("{lines} stderr lines"));
    }
    if !err.starts_with("error:") {
        problems.push("stderr does not start with `error:`".into());
    }
    let first = err.lines().next().unwrap_or("");
    if !case
        .needle
        .split('|')
        .any(|alt| alt.split('&').all(|part| first.contains(part)))
    {
        problems.push(format!("`{}` not named", case.needle));
    }
    // A culprit that lost its name: `config field ``: ...`, `error: : ...`.
    for empty in ["field ``", "key ``", "parameter ``", "error: :"] {
        if first.contains(empty) {
            problems.push(format!("an empty name (`{empty}`) in the message"));
        }
    }
    if err.contains("panicked") || err.contains("memory allocation of") {
        problems.push("panic/abort text".into());
    }
    if !run.stdout.is_empty() {
        problems.push(format!("stdout: {}", abbreviate(&run.stdout, 120)));
    }
    let left = changes(&before, &after);
    if !left.is_empty() {
        let shown: Vec<&str> = left.iter().take(4).map(String::as_str).collect();
        let more = if left.len() > 4 {
            format!(" (+{} more)", left.len() - 4)
        } else {
            String::new()
        };
        problems.push(format!("{}{more}", shown.join(", ")));
    }
    if std::env::var_os("MALFORMED_VERBOSE").is_some() {
        eprintln!("[{}] {:?} {}", case.name, run.code, abbreviate(first, 300));
    }
    if problems.is_empty() {
        // Keep the disk small: a passing case's folder is not needed.
        let _ = std::fs::remove_dir_all(&dir);
        Ok(run.secs)
    } else {
        Err(format!(
            "{}\n      stderr: {}",
            problems.join("; "),
            abbreviate(&err.replace('\n', " ⏎ "), 400)
        ))
    }
}

/// Runs every case of a table (a few at a time) and fails listing all
/// failing cases.
fn run_table(group: &str, env: &Env, cases: Vec<Case>) {
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    for w in names.windows(2) {
        assert_ne!(w[0], w[1], "duplicate case name");
    }
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let slowest = Mutex::new((0.0f64, String::new()));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = cases.get(i) else { break };
                    match run_case(env, case) {
                        Ok(secs) => {
                            let mut sl = slowest.lock().unwrap();
                            if secs > sl.0 {
                                *sl = (secs, case.name.clone());
                            }
                        }
                        Err(e) => failures.lock().unwrap().push((case.name.clone(), e)),
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    let (slow_secs, slow_name) = slowest.into_inner().unwrap();
    let mut per_command: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        *per_command.entry(case.args[0].as_str()).or_default() += 1;
    }
    eprintln!(
        "{group}: {} cases {per_command:?}, {} failing, {:.1}s (slowest passing: {slow_name} {slow_secs:.2}s)",
        cases.len(),
        failures.len(),
        start.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let list: Vec<String> = failures
            .iter()
            .map(|(n, e)| format!("  {n}: {e}"))
            .collect();
        panic!(
            "{group}: {} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            list.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// The tables
// ---------------------------------------------------------------------------

/// The harness's controls: valid runs of every command succeed under the
/// same address-space limit and timeout, and write what they should.
#[test]
fn valid_runs_pass_under_the_limits() {
    let env = Env::new(&["ddpm", "sd1", "inpaint"]);
    let runs: Vec<(&str, Vec<String>, &[&str])> = vec![
        (
            "ddpm",
            ddpm(&["--num-images", "2", "-o", "o.png"]),
            &["o-0.png", "o-1.png"][..],
        ),
        (
            "sd1",
            sd1(&["-o", "o.png", "--output-latents", "l.safetensors"]),
            &["o.png", "l.safetensors"],
        ),
        ("img2img", img2img(&["-o", "o.png"]), &["o.png"]),
        ("inpaint", inpaint(&["-o", "o.png"]), &["o.png"]),
        ("info", strings(&["info", "--model", "{sd1}"]), &[]),
        (
            "convert",
            strings(&["convert", "{ckpt}", "out"]),
            &["out/model_index.json"],
        ),
        ("train", train_args(&[]), &["run/model_index.json"]),
    ];
    let mut failures = Vec::new();
    for (name, args, expected) in runs {
        let dir = env.root().join("work").join(format!("control-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let run = invoke(
            &env,
            &format!("control-{name}"),
            &dir,
            &env.expand(&args),
            &[],
        );
        eprintln!("control {name}: {:.2}s", run.secs);
        if run.code != Some(0) {
            failures.push(format!(
                "{name}: status {:?} signal {:?} stderr {}",
                run.code,
                run.signal,
                abbreviate(&run.stderr, 400)
            ));
            continue;
        }
        for f in expected {
            if !dir.join(f).is_file() {
                failures.push(format!("{name}: {f} not written"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn generate_flags() {
    let env = Env::new(&["ddpm", "sd1"]);
    let c = Case::new;
    let mut t: Vec<Case> = vec![
        // Sizes.
        c("width_13", ddpm(&["--width", "13"]), "--width 13"),
        c("height_0", ddpm(&["--height", "0"]), "--height 0"),
        c("width_negative", ddpm(&["--width", "-8"]), "--width"),
        c("width_word", ddpm(&["--width", "wide"]), "--width"),
        c(
            "width_beyond_u64",
            ddpm(&["--width", "18446744073709551616"]),
            "--width",
        ),
        // Sizes with no upper bound: refused up front, saying how much memory
        // they would need (DDPM takes no width/height: refused by name).
        c(
            "sd1_width_height_65536",
            sd1(&["--width", "65536", "--height", "65536"]),
            "width&memory",
        ),
        c(
            "ddpm_width_height_65536",
            ddpm(&["--width", "65536", "--height", "65536"]),
            "width|height",
        ),
        c(
            "ddpm_width_2_pow_40",
            ddpm(&["--width", "1099511627776"]),
            "width",
        ),
        c(
            "sd1_width_2_pow_40",
            sd1(&["--width", "1099511627776"]),
            "width&memory",
        ),
        c(
            "sd1_height_2_pow_40",
            sd1(&["--height", "1099511627776"]),
            "height&memory",
        ),
        c(
            "sd1_width_2_pow_60",
            sd1(&["--width", "1152921504606846976"]),
            "width&memory",
        ),
        c(
            "num_images_1000000",
            ddpm(&["--num-images", "1000000"]),
            "--num-images|image&memory",
        ),
        c(
            "sd1_num_images_1000000",
            sd1(&["--num-images", "1000000"]),
            "--num-images|image&memory",
        ),
        c(
            "sd1_num_images_overflow_with_two_prompts",
            sd1(&["-p", "a", "-p", "b", "--num-images", "9223372036854775807"]),
            "--num-images|image&memory",
        ),
        c(
            "num_images_0",
            ddpm(&["--num-images", "0"]),
            "--num-images 0",
        ),
        c(
            "num_images_negative",
            ddpm(&["--num-images", "-1"]),
            "--num-images",
        ),
        // Steps.
        c("steps_word", ddpm(&["--steps", "many"]), "--steps"),
        c(
            "steps_0",
            ddpm(&["--steps", "0"]),
            "--steps|num_inference_steps",
        ),
        c("steps_negative", ddpm(&["--steps", "-3"]), "--steps"),
        c(
            "steps_above_train_timesteps",
            ddpm(&["--steps", "100000"]),
            "--steps|num_inference_steps",
        ),
        c(
            "steps_2_pow_40",
            ddpm(&["--steps", "1099511627776"]),
            "--steps|num_inference_steps",
        ),
        c(
            "sd1_steps_0",
            sd1(&["--steps", "0"]),
            "--steps|num_inference_steps",
        ),
        // Floats.
        c("guidance_nan", sd1(&["--guidance", "NaN"]), "--guidance"),
        c("guidance_inf", sd1(&["--guidance", "inf"]), "--guidance"),
        c(
            "guidance_minus_inf",
            sd1(&["--guidance=-inf"]),
            "--guidance",
        ),
        c(
            "guidance_word",
            sd1(&["--guidance", "strong"]),
            "--guidance",
        ),
        c(
            "guidance_rescale_nan",
            sd1(&["--guidance-rescale", "NaN"]),
            "--guidance-rescale",
        ),
        c(
            "guidance_rescale_inf",
            sd1(&["--guidance-rescale", "inf"]),
            "--guidance-rescale",
        ),
        c(
            "eta_nan",
            sd1(&["--scheduler", "DDIMScheduler", "--eta", "NaN"]),
            "--eta",
        ),
        c(
            "eta_inf",
            sd1(&["--scheduler", "DDIMScheduler", "--eta", "inf"]),
            "--eta",
        ),
        c(
            "ddpm_eta_nan",
            ddpm(&["--scheduler", "DDIMScheduler", "--eta", "NaN"]),
            "--eta",
        ),
        c(
            "denoising_end_2",
            sd1(&["--denoising-end", "2"]),
            "--denoising-end",
        ),
        c(
            "denoising_end_nan",
            sd1(&["--denoising-end", "NaN"]),
            "--denoising-end",
        ),
        // Seeds.
        c("seed_negative", ddpm(&["--seed", "-1"]), "--seed"),
        c("seed_word", ddpm(&["--seed", "abc"]), "--seed"),
        c(
            "seed_beyond_u64",
            ddpm(&["--seed", "18446744073709551616"]),
            "--seed",
        ),
        c(
            "seeds_empty_item",
            ddpm(&["--seeds", "1,,2", "--num-images", "2"]),
            "--seeds",
        ),
        c(
            "seeds_negative_item",
            ddpm(&["--seeds", "1,-2", "--num-images", "2"]),
            "--seeds",
        ),
        c(
            "seeds_more_than_images",
            ddpm(&["--seeds", "1,2,3", "--num-images", "2"]),
            "--seeds",
        ),
        c(
            "seeds_fewer_than_images",
            ddpm(&["--seeds", "1,2", "--num-images", "3"]),
            "--seeds",
        ),
        c(
            "seed_and_seeds",
            ddpm(&["--seeds", "2", "--seed", "1"]),
            "cannot be used with",
        ),
        // Schedulers.
        c(
            "scheduler_unknown",
            ddpm(&["--scheduler", "NoSuchScheduler"]),
            "NoSuchScheduler",
        ),
        c(
            "scheduler_unknown_a1111",
            ddpm(&["--scheduler", "DPM++ 9M Bogus"]),
            "DPM++ 9M Bogus",
        ),
        c(
            "scheduler_config_misspelt_key",
            ddpm(&["--scheduler-config", "timestep_spacin=trailing"]),
            "timestep_spacin",
        ),
        c(
            "sd1_scheduler_config_misspelt_key",
            sd1(&[
                "--scheduler",
                "EulerDiscreteScheduler",
                "--scheduler-config",
                "use_karas_sigmas=true",
            ]),
            "use_karas_sigmas",
        ),
        c(
            "scheduler_config_bad_value",
            ddpm(&["--scheduler-config", "timestep_spacing=sideways"]),
            "timestep_spacing",
        ),
        c(
            "scheduler_config_wrong_type",
            ddpm(&["--scheduler-config", "num_train_timesteps=abc"]),
            "num_train_timesteps",
        ),
        c(
            "scheduler_config_timesteps_0",
            ddpm(&["--scheduler-config", "num_train_timesteps=0"]),
            "num_train_timesteps",
        ),
        c(
            "scheduler_config_timesteps_huge",
            ddpm(&["--scheduler-config", "num_train_timesteps=10000000000000"]),
            "num_train_timesteps",
        ),
        c(
            "scheduler_config_beta_end_negative",
            ddpm(&["--scheduler-config", "beta_end=-1"]),
            "beta_end",
        ),
        c(
            "scheduler_config_beta_start_nan",
            ddpm(&["--scheduler-config", "beta_start=NaN"]),
            "beta_start",
        ),
        c(
            "scheduler_config_prediction_type",
            ddpm(&["--scheduler-config", "prediction_type=x0"]),
            "prediction_type",
        ),
        c(
            "scheduler_config_beta_schedule",
            ddpm(&["--scheduler-config", "beta_schedule=bogus"]),
            "beta_schedule",
        ),
        c(
            "scheduler_config_trained_betas_length",
            ddpm(&["--scheduler-config", "trained_betas=[0.5]"]),
            "trained_betas",
        ),
        c(
            "scheduler_config_no_equals",
            ddpm(&["--scheduler-config", "trailing"]),
            "--scheduler-config",
        ),
        c(
            "scheduler_config_empty_key",
            ddpm(&["--scheduler-config", "=1"]),
            "--scheduler-config",
        ),
        // Devices, dtypes, SDXL-only sizes, other flags.
        c("dtype_f8", ddpm(&["--dtype", "f8"]), "--dtype"),
        c("device_gpu", ddpm(&["--device", "gpu"]), "--device"),
        c(
            "device_cuda_colon_word",
            ddpm(&["--device", "cuda:x"]),
            "--device",
        ),
        c(
            "target_size_one_number",
            sd1(&["--target-size", "64"]),
            "--target-size",
        ),
        c(
            "original_size_zero",
            sd1(&["--original-size", "0x8"]),
            "--original-size",
        ),
        c(
            "crops_one_number",
            sd1(&["--crops-coords-top-left", "1"]),
            "--crops-coords-top-left",
        ),
        c(
            "strength_on_generate",
            ddpm(&["--strength", "0.5"]),
            "--strength",
        ),
        c("image_on_generate", ddpm(&["--image", "{img}"]), "--image"),
        c("mask_on_generate", ddpm(&["--mask", "{mask}"]), "--mask"),
        c("unknown_flag", ddpm(&["--frobnicate", "1"]), "--frobnicate"),
        c("prompt_on_unconditional", ddpm(&["-p", "a cat"]), "prompt"),
        c(
            "sd1_prompt_2_on_sd1",
            sd1(&["--prompt-2", "a dog"]),
            "prompt_2|--prompt-2",
        ),
        c(
            "sd1_negative_prompts_mismatch",
            sd1(&[
                "-p",
                "a",
                "-p",
                "b",
                "--negative-prompt",
                "x",
                "--negative-prompt",
                "y",
                "--negative-prompt",
                "z",
            ]),
            "negative_prompt|--negative-prompt",
        ),
        c(
            "sd1_clip_skip_beyond_layers",
            sd1(&["--clip-skip", "100"]),
            "--clip-skip|clip_skip",
        ),
        c(
            "sd1_clip_skip_word",
            sd1(&["--clip-skip", "x"]),
            "--clip-skip",
        ),
        c(
            "model_missing_folder",
            ddpm(&["--model", "./no-such-model"]),
            "no-such-model",
        ),
        c(
            "model_empty_string",
            ddpm(&["--model", ""]),
            "--model|model name",
        ),
        c(
            "model_is_a_text_file",
            ddpm(&["--model", "notes.txt"]),
            "notes.txt",
        )
        .setup(|_, d| write(d, "notes.txt", b"hello")),
        c(
            "model_empty_folder",
            ddpm(&["--model", "blank-model"]),
            "blank-model",
        )
        .setup(|_, d| mkdir(d, "blank-model")),
        c("sd1_variant_absent", sd1(&["--variant", "fp16"]), "fp16"),
        c(
            "negative_prompt_on_unconditional",
            ddpm(&["--negative-prompt", "blurry"]),
            "negative_prompt|--negative-prompt",
        ),
        c(
            "sd1_original_size_on_sd1",
            sd1(&["--original-size", "64x64"]),
            "original_size|--original-size",
        ),
        c(
            "sd1_scheduler_config_steps_offset_huge",
            sd1(&["--scheduler-config", "steps_offset=100000"]),
            "steps_offset",
        ),
        c(
            "scheduler_config_betas_above_1",
            ddpm(&[
                "--scheduler-config",
                Box::leak(
                    format!("trained_betas=[{}]", vec!["2.0"; 1000].join(",")).into_boxed_str(),
                ),
            ]),
            "trained_betas",
        ),
        c(
            "scheduler_config_rescale_zero_snr_string",
            ddpm(&[
                "--scheduler",
                "DDIMScheduler",
                "--scheduler-config",
                "rescale_betas_zero_snr=\"yes\"",
            ]),
            "rescale_betas_zero_snr",
        ),
        c(
            "variant_path_traversal",
            ddpm(&["--variant", "../../x"]),
            "--variant|`../../x`",
        ),
        c(
            "model_path_traversal_repo_id",
            ddpm(&["--model", "a/../../b"]),
            "a/../../b",
        ),
        c(
            "model_repo_id_not_cached_offline",
            ddpm(&["--model", "no-org/no-model"]),
            "no-org/no-model",
        ),
        c(
            "model_garbage_checkpoint",
            sd1(&["--model", "model.safetensors"]),
            "model.safetensors",
        )
        .setup(|_, d| write(d, "model.safetensors", b"<html>503</html>")),
        c(
            "model_truncated_checkpoint",
            sd1(&["--model", "model.ckpt"]),
            "model.ckpt",
        )
        .setup(|_, d| {
            let b = std::fs::read(hub_fixtures().join("single_file/sd1.ckpt")).unwrap();
            write(d, "model.ckpt", &truncated(&b, b.len() / 2));
        }),
        c(
            "model_checkpoint_calling_os_system",
            sd1(&["--model", "evil.ckpt"]),
            "os.system",
        )
        .setup(|_, d| {
            write(
                d,
                "evil.ckpt",
                &torch_zip(&evil_pickle("os", "system", Global::Text)),
            )
        }),
        c("env_attention_bogus", ddpm(&[]), "DIFFUSION_ATTENTION")
            .env("DIFFUSION_ATTENTION", "flash3"),
        c("env_conv_bogus", ddpm(&[]), "DIFFUSION_CONV").env("DIFFUSION_CONV", "fft"),
        c("env_group_norm_bogus", ddpm(&[]), "DIFFUSION_GROUP_NORM")
            .env("DIFFUSION_GROUP_NORM", "three-pass"),
    ];
    if !cfg!(feature = "cuda") {
        t.push(c(
            "device_cuda_without_feature",
            ddpm(&["--device", "cuda"]),
            "--device cuda",
        ));
    }

    // --latents files (the DDPM model's latents are [N, 3, 16, 16]).
    let lat = |name: &str, extra: &[&str], needle: &'static str, bytes: fn() -> Vec<u8>| {
        let mut args = vec!["--latents", "lat.safetensors"];
        args.extend_from_slice(extra);
        c(&format!("latents_{name}"), ddpm(&args), needle)
            .setup(move |_, d| write(d, "lat.safetensors", &bytes()))
    };
    let good = || latents_file("latents", f32_tensor(&[1, 3, 16, 16], None));
    t.extend([
        c("latents_missing_file", ddpm(&["--latents", "absent.safetensors"]), "absent.safetensors"),
        c("latents_is_a_folder", ddpm(&["--latents", "lat.safetensors"]), "lat.safetensors")
            .setup(|_, d| mkdir(d, "lat.safetensors")),
        lat("garbage", &[], "lat.safetensors", || b"\x89garbage, not safetensors at all".to_vec()),
        lat("empty_file", &[], "lat.safetensors", Vec::new),
        lat("truncated", &[], "lat.safetensors", || truncated(&latents_file("latents", f32_tensor(&[1, 3, 16, 16], None)), 200)),
        lat("header_length_u64_max", &[], "lat.safetensors", || {
            let mut b = u64::MAX.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        lat("header_length_past_the_end", &[], "lat.safetensors", || {
            let mut b = 1_000_000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{\"latents\":{}}");
            b
        }),
        lat("header_not_json", &[], "lat.safetensors", || with_header("{\"latents\": [1, 2", &[0; 16])),
        lat("header_is_a_list", &[], "lat.safetensors", || with_header("[1, 2, 3]", &[])),
        lat("offsets_past_the_data", &[], "lat.safetensors", || {
            with_header(r#"{"latents":{"dtype":"F32","shape":[1,3,16,16],"data_offsets":[0,3072]}}"#, &[0; 64])
        }),
        lat("offsets_not_matching_shape", &[], "lat.safetensors", || {
            with_header(r#"{"latents":{"dtype":"F32","shape":[1,3,16,16],"data_offsets":[0,64]}}"#, &[0; 64])
        }),
        lat("shape_of_2_pow_80_elements", &[], "lat.safetensors", || {
            with_header(
                r#"{"latents":{"dtype":"F32","shape":[1048576,1048576,1048576,1048576],"data_offsets":[0,16]}}"#,
                &[0; 16],
            )
        }),
        lat("dtype_bogus", &[], "lat.safetensors", || {
            with_header(r#"{"latents":{"dtype":"F33","shape":[1,3,16,16],"data_offsets":[0,3072]}}"#, &[0; 3072])
        }),
        lat("wrong_key", &[], "lat.safetensors", || latents_file("noise", f32_tensor(&[1, 3, 16, 16], None))),
        lat("three_dims", &[], "lat.safetensors", || latents_file("latents", f32_tensor(&[3, 16, 16], None))),
        lat("int64", &[], "lat.safetensors", || {
            latents_file(
                "latents",
                Tensor { dtype: "I64".into(), shape: vec![1, 3, 16, 16], data: vec![0; 768 * 8] },
            )
        }),
        lat("batch_1_for_2_images", &["--num-images", "2"], "latents", good),
        lat("five_channels", &[], "latents", || latents_file("latents", f32_tensor(&[1, 5, 16, 16], None))),
        lat("8x8_for_16x16", &[], "latents", || latents_file("latents", f32_tensor(&[1, 3, 8, 8], None))),
        lat("zero_batch", &[], "latents", || latents_file("latents", f32_tensor(&[0, 3, 16, 16], None))),
        lat("nan_values", &[], "latents", || latents_file("latents", f32_tensor(&[1, 3, 16, 16], Some(f32::NAN)))),
        lat("infinite_values", &[], "latents", || latents_file("latents", f32_tensor(&[1, 3, 16, 16], Some(f32::INFINITY)))),
        c("sd1_latents_8x8_for_16x16", sd1(&["--latents", "lat.safetensors"]), "latents")
            .setup(|_, d| write(d, "lat.safetensors", &latents_file("latents", f32_tensor(&[1, 4, 8, 8], None)))),
        c("sd1_latents_with_width_64", sd1(&["--latents", "lat.safetensors", "--width", "64"]), "latents|--width")
            .setup(|_, d| write(d, "lat.safetensors", &latents_file("latents", f32_tensor(&[1, 4, 16, 16], None)))),
    ]);
    run_table("generate_flags", &env, t);
}

#[test]
fn outputs() {
    let env = Env::new(&["ddpm", "sd1", "inpaint"]);
    let c = Case::new;
    let photo = |_: &Env, d: &Path| {
        std::fs::copy(
            pipeline_fixtures().join("inputs/photo_a_32x32.png"),
            d.join("photo.png"),
        )
        .unwrap();
    };
    let mask = |_: &Env, d: &Path| {
        std::fs::copy(
            pipeline_fixtures().join("inputs/mask_rect_32x32_L.png"),
            d.join("mask.png"),
        )
        .unwrap();
    };
    let good_latents = |_: &Env, d: &Path| {
        write(
            d,
            "lat.safetensors",
            &latents_file("latents", f32_tensor(&[1, 3, 16, 16], None)),
        )
    };
    let t: Vec<Case> = vec![
        c(
            "missing_folder",
            ddpm(&["-o", "missing/out.png"]),
            "missing",
        ),
        c("empty", ddpm(&["-o", ""]), "--output"),
        c("is_a_folder", ddpm(&["-o", "outdir"]), "outdir").setup(|_, d| mkdir(d, "outdir")),
        c("dot", ddpm(&["-o", "."]), "--output"),
        c("dot_dot", ddpm(&["-o", ".."]), "--output"),
        c("parent_is_a_file", ddpm(&["-o", "afile/out.png"]), "afile")
            .setup(|_, d| write(d, "afile", b"x")),
        c("trailing_slash", ddpm(&["-o", "out.png/"]), "out.png"),
        c(
            "same_as_output_latents",
            ddpm(&["-o", "x.png", "--output-latents", "x.png"]),
            "--output-latents",
        ),
        c(
            "same_as_output_latents_other_spelling",
            ddpm(&["-o", "x.png", "--output-latents", "./x.png"]),
            "--output-latents",
        ),
        c(
            "output_latents_is_a_batch_image",
            ddpm(&[
                "--num-images",
                "2",
                "-o",
                "x.png",
                "--output-latents",
                "x-1.png",
            ]),
            "--output-latents",
        ),
        c(
            "output_latents_missing_folder",
            ddpm(&["--output-latents", "missing/l.safetensors", "-o", "o.png"]),
            "missing",
        ),
        c(
            "output_latents_empty",
            ddpm(&["--output-latents", "", "-o", "o.png"]),
            "--output-latents",
        ),
        c(
            "output_latents_is_a_folder",
            ddpm(&["--output-latents", "latdir", "-o", "o.png"]),
            "latdir",
        )
        .setup(|_, d| mkdir(d, "latdir")),
        c(
            "output_is_the_latents_input",
            ddpm(&["--latents", "lat.safetensors", "-o", "lat.safetensors"]),
            "--output",
        )
        .setup(good_latents),
        c(
            "output_latents_is_the_latents_input",
            ddpm(&[
                "--latents",
                "lat.safetensors",
                "--output-latents",
                "lat.safetensors",
                "-o",
                "o.png",
            ]),
            "--output-latents",
        )
        .setup(good_latents),
        c(
            "batch_later_file_is_a_folder",
            ddpm(&["--num-images", "3", "-o", "out.png"]),
            "out-1.png",
        )
        .setup(|_, d| mkdir(d, "out-1.png")),
        c(
            "batch_last_file_is_a_folder_seeds",
            ddpm(&["--num-images", "3", "--seeds", "1,2,3", "-o", "out.png"]),
            "out-2.png",
        )
        .setup(|_, d| mkdir(d, "out-2.png")),
        c(
            "batch_later_file_blocked_with_latents",
            ddpm(&[
                "--num-images",
                "2",
                "-o",
                "out.png",
                "--output-latents",
                "lat.safetensors",
            ]),
            "out-1.png",
        )
        .setup(|_, d| mkdir(d, "out-1.png")),
        c(
            "batch_later_file_without_extension_is_a_folder",
            ddpm(&["--num-images", "2", "-o", "out"]),
            "out-1",
        )
        .setup(|_, d| mkdir(d, "out-1")),
        c(
            "sd1_batch_of_prompts_later_file_is_a_folder",
            sd1(&["-p", "a", "-p", "b", "-o", "o.png"]),
            "o-1.png",
        )
        .setup(|_, d| mkdir(d, "o-1.png")),
        c(
            "img2img_output_is_the_image",
            img2img(&["--image", "photo.png", "-o", "photo.png"]),
            "--output",
        )
        .setup(photo),
        c(
            "img2img_output_is_the_image_other_spelling",
            img2img(&["--image", "photo.png", "-o", "./photo.png"]),
            "--output",
        )
        .setup(photo),
        c(
            "img2img_output_latents_is_the_image",
            img2img(&[
                "--image",
                "photo.png",
                "--output-latents",
                "photo.png",
                "-o",
                "o.png",
            ]),
            "--output-latents",
        )
        .setup(photo),
        c("img2img_output_empty", img2img(&["-o", ""]), "--output"),
        c(
            "img2img_output_missing_folder",
            img2img(&["-o", "nowhere/x.png"]),
            "nowhere",
        ),
        c(
            "img2img_batch_later_file_is_a_folder",
            img2img(&["--num-images", "2", "-o", "out.png"]),
            "out-1.png",
        )
        .setup(|_, d| mkdir(d, "out-1.png")),
        c(
            "inpaint_output_is_the_mask",
            inpaint(&["--mask", "mask.png", "-o", "mask.png"]),
            "--output",
        )
        .setup(mask),
        c(
            "inpaint_output_is_the_image",
            inpaint(&["--image", "photo.png", "-o", "photo.png"]),
            "--output",
        )
        .setup(photo),
        c(
            "inpaint_output_missing_folder",
            inpaint(&["-o", "nowhere/x.png"]),
            "nowhere",
        ),
        c(
            "inpaint_batch_later_file_is_a_folder",
            inpaint(&["--num-images", "2", "-o", "out.png"]),
            "out-1.png",
        )
        .setup(|_, d| mkdir(d, "out-1.png")),
    ];
    run_table("outputs", &env, t);
}

#[test]
fn pipeline_configs() {
    let env = Env::new(&["ddpm", "sd1"]);
    let cfg = config_case;
    const MI: &str = "model_index.json";
    const UNET: &str = "unet/config.json";
    const VAE: &str = "vae/config.json";
    const TE: &str = "text_encoder/config.json";
    const SCHED: &str = "scheduler/scheduler_config.json";
    let mut t: Vec<Case> = vec![
        // model_index.json
        file_case("mi_truncated", "sd1", MI, |b| Some(truncated(b, 100)), MI),
        file_case(
            "mi_garbage",
            "sd1",
            MI,
            |_| Some(b"\x00\xffnot json".to_vec()),
            MI,
        ),
        file_case("mi_empty", "sd1", MI, |_| Some(Vec::new()), MI),
        file_case("mi_a_list", "sd1", MI, |_| Some(b"[]".to_vec()), MI),
        file_case("mi_missing", "sd1", MI, |_| None, MI),
        cfg(
            "mi_unknown_library",
            "sd1",
            MI,
            json!({"unet": ["mylib", "UNet2DConditionModel"]}),
            "mylib",
        ),
        cfg(
            "mi_unknown_scheduler_library",
            "sd1",
            MI,
            json!({"scheduler": ["schedulers_r_us", "PNDMScheduler"]}),
            "schedulers_r_us",
        ),
        cfg(
            "mi_unknown_unet_class",
            "sd1",
            MI,
            json!({"unet": ["diffusers", "NoSuchUNet"]}),
            "NoSuchUNet",
        ),
        cfg(
            "mi_unknown_scheduler_class",
            "sd1",
            MI,
            json!({"scheduler": ["diffusers", "NoSuchScheduler"]}),
            "NoSuchScheduler",
        ),
        cfg(
            "mi_unknown_pipeline_class",
            "sd1",
            MI,
            json!({"_class_name": "NoSuchPipeline"}),
            "NoSuchPipeline",
        ),
        cfg(
            "mi_class_name_a_number",
            "sd1",
            MI,
            json!({"_class_name": 7}),
            "_class_name",
        ),
        cfg(
            "mi_component_a_string",
            "sd1",
            MI,
            json!({"unet": "diffusers"}),
            "unet",
        ),
        cfg(
            "mi_component_one_item",
            "sd1",
            MI,
            json!({"unet": ["diffusers"]}),
            "unet",
        ),
        cfg(
            "mi_vae_null",
            "sd1",
            MI,
            json!({"vae": [null, null]}),
            "vae",
        ),
        cfg(
            "mi_unet_class_is_a_vae",
            "sd1",
            MI,
            json!({"unet": ["diffusers", "AutoencoderKL"]}),
            "unet",
        ),
        cfg(
            "sched_steps_offset_huge",
            "sd1",
            SCHED,
            json!({"steps_offset": 100000}),
            "steps_offset",
        ),
        cfg(
            "mi_unknown_library",
            "ddpm",
            MI,
            json!({"unet": ["mylib", "UNet2DModel"]}),
            "mylib",
        ),
        file_case("vae_folder_missing", "sd1", "vae", |_| None, "vae"),
        // UNet2DConditionModel config.json
        cfg(
            "unet_norm_num_groups_0",
            "sd1",
            UNET,
            json!({"norm_num_groups": 0}),
            "norm_num_groups",
        ),
        cfg(
            "unet_norm_num_groups_1000000",
            "sd1",
            UNET,
            json!({"norm_num_groups": 1000000}),
            "norm_num_groups",
        ),
        cfg(
            "unet_norm_num_groups_3",
            "sd1",
            UNET,
            json!({"norm_num_groups": 3}),
            "norm_num_groups",
        ),
        cfg(
            "unet_norm_num_groups_negative",
            "sd1",
            UNET,
            json!({"norm_num_groups": -1}),
            "norm_num_groups",
        ),
        cfg(
            "unet_norm_num_groups_fraction",
            "sd1",
            UNET,
            json!({"norm_num_groups": 1.5}),
            "norm_num_groups",
        ),
        cfg(
            "unet_norm_num_groups_string",
            "sd1",
            UNET,
            json!({"norm_num_groups": "four"}),
            "norm_num_groups",
        ),
        cfg(
            "unet_attention_head_dim_0",
            "sd1",
            UNET,
            json!({"attention_head_dim": 0}),
            "attention_head_dim",
        ),
        cfg(
            "unet_attention_head_dim_3",
            "sd1",
            UNET,
            json!({"attention_head_dim": 3}),
            "attention_head_dim",
        ),
        cfg(
            "unet_attention_head_dim_1000000",
            "sd1",
            UNET,
            json!({"attention_head_dim": 1000000}),
            "attention_head_dim",
        ),
        cfg(
            "unet_num_attention_heads_0",
            "sd1",
            UNET,
            json!({"num_attention_heads": 0}),
            "num_attention_heads",
        ),
        cfg(
            "unet_sample_size_0",
            "sd1",
            UNET,
            json!({"sample_size": 0}),
            "sample_size",
        ),
        cfg(
            "unet_sample_size_1000000",
            "sd1",
            UNET,
            json!({"sample_size": 1000000}),
            "sample_size",
        ),
        cfg(
            "unet_norm_eps_negative",
            "sd1",
            UNET,
            json!({"norm_eps": -1}),
            "norm_eps",
        ),
        cfg(
            "unet_norm_eps_string",
            "sd1",
            UNET,
            json!({"norm_eps": "small"}),
            "norm_eps",
        ),
        cfg(
            "unet_block_out_channels_empty",
            "sd1",
            UNET,
            json!({"block_out_channels": []}),
            "block_out_channels",
        ),
        cfg(
            "unet_block_out_channels_one_for_two_blocks",
            "sd1",
            UNET,
            json!({"block_out_channels": [8]}),
            "block_out_channels",
        ),
        cfg(
            "unet_block_out_channels_zero",
            "sd1",
            UNET,
            json!({"block_out_channels": [8, 0]}),
            "block_out_channels",
        ),
        cfg(
            "unet_block_out_channels_huge",
            "sd1",
            UNET,
            json!({"block_out_channels": [8, 1099511627776u64]}),
            "block_out_channels",
        ),
        cfg(
            "unet_block_out_channels_not_matching_weights",
            "sd1",
            UNET,
            json!({"block_out_channels": [16, 32]}),
            "block_out_channels|.weight`",
        ),
        cfg(
            "unet_layers_per_block_0",
            "sd1",
            UNET,
            json!({"layers_per_block": 0}),
            "layers_per_block",
        ),
        cfg(
            "unet_layers_per_block_1000000",
            "sd1",
            UNET,
            json!({"layers_per_block": 1000000}),
            "layers_per_block",
        ),
        cfg(
            "unet_in_channels_0",
            "sd1",
            UNET,
            json!({"in_channels": 0}),
            "in_channels",
        ),
        cfg(
            "unet_in_channels_5",
            "sd1",
            UNET,
            json!({"in_channels": 5}),
            "in_channels|conv_in.weight",
        ),
        cfg(
            "unet_out_channels_0",
            "sd1",
            UNET,
            json!({"out_channels": 0}),
            "out_channels",
        ),
        cfg(
            "unet_cross_attention_dim_0",
            "sd1",
            UNET,
            json!({"cross_attention_dim": 0}),
            "cross_attention_dim",
        ),
        cfg(
            "unet_cross_attention_dim_16",
            "sd1",
            UNET,
            json!({"cross_attention_dim": 16}),
            "cross_attention_dim|attn2.to_k.weight",
        ),
        cfg(
            "unet_down_block_type_unknown",
            "sd1",
            UNET,
            json!({"down_block_types": ["Bogus2D", "DownBlock2D"]}),
            "Bogus2D",
        ),
        cfg(
            "unet_down_block_types_one",
            "sd1",
            UNET,
            json!({"down_block_types": ["CrossAttnDownBlock2D"]}),
            "down_block_types",
        ),
        cfg(
            "unet_up_block_types_one",
            "sd1",
            UNET,
            json!({"up_block_types": ["UpBlock2D"]}),
            "up_block_types",
        ),
        cfg(
            "unet_mid_block_type_unknown",
            "sd1",
            UNET,
            json!({"mid_block_type": "Bogus"}),
            "mid_block_type",
        ),
        cfg(
            "unet_act_fn_unknown",
            "sd1",
            UNET,
            json!({"act_fn": "bogus"}),
            "act_fn",
        ),
        cfg(
            "unet_transformer_layers_0",
            "sd1",
            UNET,
            json!({"transformer_layers_per_block": 0}),
            "transformer_layers_per_block|unexpected weight",
        ),
        cfg(
            "unet_time_embedding_type_unknown",
            "sd1",
            UNET,
            json!({"time_embedding_type": "bogus"}),
            "time_embedding_type",
        ),
        cfg(
            "unet_resnet_time_scale_shift_unknown",
            "sd1",
            UNET,
            json!({"resnet_time_scale_shift": "bogus"}),
            "resnet_time_scale_shift",
        ),
        cfg(
            "unet_conv_in_kernel_0",
            "sd1",
            UNET,
            json!({"conv_in_kernel": 0}),
            "conv_in_kernel",
        ),
        cfg(
            "unet_conv_in_kernel_even",
            "sd1",
            UNET,
            json!({"conv_in_kernel": 4}),
            "conv_in_kernel",
        ),
        cfg(
            "unet_dropout_2",
            "sd1",
            UNET,
            json!({"dropout": 2.0}),
            "dropout",
        ),
        cfg(
            "unet_upcast_attention_string",
            "sd1",
            UNET,
            json!({"upcast_attention": "yes"}),
            "upcast_attention",
        ),
        file_case(
            "unet_config_truncated",
            "sd1",
            UNET,
            |b| Some(truncated(b, b.len() / 2)),
            "unet/config.json",
        ),
        file_case(
            "unet_config_garbage",
            "sd1",
            UNET,
            |_| Some(b"\x7fELF\x02\x01".to_vec()),
            "unet/config.json",
        ),
        file_case(
            "unet_config_a_list",
            "sd1",
            UNET,
            |_| Some(b"[4, 8]".to_vec()),
            "unet/config.json",
        ),
        file_case(
            "unet_config_missing",
            "sd1",
            UNET,
            |_| None,
            "unet/config.json",
        ),
        // UNet2DModel config.json
        cfg(
            "norm_num_groups_0",
            "ddpm",
            UNET,
            json!({"norm_num_groups": 0}),
            "norm_num_groups",
        ),
        cfg(
            "norm_num_groups_5",
            "ddpm",
            UNET,
            json!({"norm_num_groups": 5}),
            "norm_num_groups",
        ),
        cfg(
            "norm_num_groups_1000000",
            "ddpm",
            UNET,
            json!({"norm_num_groups": 1000000}),
            "norm_num_groups",
        ),
        cfg(
            "attention_head_dim_0",
            "ddpm",
            UNET,
            json!({"attention_head_dim": 0}),
            "attention_head_dim",
        ),
        cfg(
            "attention_head_dim_3",
            "ddpm",
            UNET,
            json!({"attention_head_dim": 3}),
            "attention_head_dim",
        ),
        cfg(
            "sample_size_0",
            "ddpm",
            UNET,
            json!({"sample_size": 0}),
            "sample_size",
        ),
        cfg(
            "sample_size_1000000",
            "ddpm",
            UNET,
            json!({"sample_size": 1000000}),
            "sample_size",
        ),
        cfg(
            "norm_eps_negative",
            "ddpm",
            UNET,
            json!({"norm_eps": -1}),
            "norm_eps",
        ),
        cfg(
            "in_channels_0",
            "ddpm",
            UNET,
            json!({"in_channels": 0}),
            "in_channels",
        ),
        cfg(
            "block_out_channels_zero",
            "ddpm",
            UNET,
            json!({"block_out_channels": [0, 16]}),
            "block_out_channels",
        ),
        cfg(
            "attn_norm_num_groups_3",
            "ddpm",
            UNET,
            json!({"attn_norm_num_groups": 3}),
            "attn_norm_num_groups",
        ),
        cfg(
            "layers_per_block_0",
            "ddpm",
            UNET,
            json!({"layers_per_block": 0}),
            "layers_per_block",
        ),
        cfg(
            "down_block_type_unknown",
            "ddpm",
            UNET,
            json!({"down_block_types": ["DownBlock2D", "Bogus2D"]}),
            "Bogus2D",
        ),
        file_case(
            "unet_config_truncated",
            "ddpm",
            UNET,
            |b| Some(truncated(b, 40)),
            "unet/config.json",
        ),
        // AutoencoderKL config.json
        cfg(
            "vae_norm_num_groups_0",
            "sd1",
            VAE,
            json!({"norm_num_groups": 0}),
            "norm_num_groups",
        ),
        cfg(
            "vae_norm_num_groups_3",
            "sd1",
            VAE,
            json!({"norm_num_groups": 3}),
            "norm_num_groups",
        ),
        cfg(
            "vae_latent_channels_0",
            "sd1",
            VAE,
            json!({"latent_channels": 0}),
            "latent_channels",
        ),
        cfg(
            "vae_latent_channels_8",
            "sd1",
            VAE,
            json!({"latent_channels": 8}),
            "latent_channels|quant_conv",
        ),
        cfg(
            "vae_scaling_factor_0",
            "sd1",
            VAE,
            json!({"scaling_factor": 0}),
            "scaling_factor",
        ),
        cfg(
            "vae_scaling_factor_negative",
            "sd1",
            VAE,
            json!({"scaling_factor": -1}),
            "scaling_factor",
        ),
        cfg(
            "vae_scaling_factor_string",
            "sd1",
            VAE,
            json!({"scaling_factor": "abc"}),
            "scaling_factor",
        ),
        cfg(
            "vae_block_out_channels_empty",
            "sd1",
            VAE,
            json!({"block_out_channels": []}),
            "block_out_channels",
        ),
        cfg(
            "vae_sample_size_0",
            "sd1",
            VAE,
            json!({"sample_size": 0}),
            "sample_size",
        ),
        cfg(
            "vae_layers_per_block_0",
            "sd1",
            VAE,
            json!({"layers_per_block": 0}),
            "layers_per_block",
        ),
        file_case(
            "vae_config_truncated",
            "sd1",
            VAE,
            |b| Some(truncated(b, b.len() - 3)),
            "vae/config.json",
        ),
        // CLIPTextModel config.json
        cfg(
            "te_hidden_size_0",
            "sd1",
            TE,
            json!({"hidden_size": 0}),
            "hidden_size",
        ),
        cfg(
            "te_hidden_size_16",
            "sd1",
            TE,
            json!({"hidden_size": 16}),
            "hidden_size|embeddings",
        ),
        cfg(
            "te_num_attention_heads_0",
            "sd1",
            TE,
            json!({"num_attention_heads": 0}),
            "num_attention_heads",
        ),
        cfg(
            "te_num_attention_heads_3",
            "sd1",
            TE,
            json!({"num_attention_heads": 3}),
            "num_attention_heads",
        ),
        cfg(
            "te_num_hidden_layers_0",
            "sd1",
            TE,
            json!({"num_hidden_layers": 0}),
            "num_hidden_layers|unexpected weight",
        ),
        cfg(
            "te_num_hidden_layers_1000000",
            "sd1",
            TE,
            json!({"num_hidden_layers": 1000000}),
            "num_hidden_layers",
        ),
        cfg(
            "te_max_position_embeddings_0",
            "sd1",
            TE,
            json!({"max_position_embeddings": 0}),
            "max_position_embeddings",
        ),
        cfg(
            "te_max_position_embeddings_10",
            "sd1",
            TE,
            json!({"max_position_embeddings": 10}),
            "max_position_embeddings|position_embedding",
        ),
        cfg(
            "te_vocab_size_10",
            "sd1",
            TE,
            json!({"vocab_size": 10}),
            "vocab_size|token_embedding",
        ),
        cfg(
            "te_vocab_size_2_pow_40",
            "sd1",
            TE,
            json!({"vocab_size": 1099511627776u64}),
            "vocab_size",
        ),
        cfg(
            "te_hidden_act_unknown",
            "sd1",
            TE,
            json!({"hidden_act": "bogus"}),
            "hidden_act",
        ),
        cfg(
            "te_layer_norm_eps_negative",
            "sd1",
            TE,
            json!({"layer_norm_eps": -1}),
            "layer_norm_eps",
        ),
        cfg(
            "te_intermediate_size_0",
            "sd1",
            TE,
            json!({"intermediate_size": 0}),
            "intermediate_size",
        ),
        file_case(
            "te_config_truncated",
            "sd1",
            TE,
            |b| Some(truncated(b, 10)),
            "text_encoder/config.json",
        ),
        // Scheduler config
        cfg(
            "sched_beta_schedule_unknown",
            "sd1",
            SCHED,
            json!({"beta_schedule": "bogus"}),
            "beta_schedule",
        ),
        cfg(
            "sched_num_train_timesteps_0",
            "sd1",
            SCHED,
            json!({"num_train_timesteps": 0}),
            "num_train_timesteps",
        ),
        cfg(
            "sched_num_train_timesteps_negative",
            "sd1",
            SCHED,
            json!({"num_train_timesteps": -5}),
            "num_train_timesteps",
        ),
        cfg(
            "sched_num_train_timesteps_huge",
            "sd1",
            SCHED,
            json!({"num_train_timesteps": 10000000000000u64}),
            "num_train_timesteps",
        ),
        cfg(
            "sched_beta_start_string",
            "sd1",
            SCHED,
            json!({"beta_start": "abc"}),
            "beta_start",
        ),
        cfg(
            "sched_beta_end_negative",
            "sd1",
            SCHED,
            json!({"beta_end": -1}),
            "beta_end",
        ),
        cfg(
            "sched_prediction_type_unknown",
            "sd1",
            SCHED,
            json!({"prediction_type": "bogus"}),
            "prediction_type",
        ),
        cfg(
            "sched_timestep_spacing_unknown",
            "sd1",
            SCHED,
            json!({"timestep_spacing": "bogus"}),
            "timestep_spacing",
        ),
        cfg(
            "sched_trained_betas_wrong_length",
            "sd1",
            SCHED,
            json!({"trained_betas": [0.5]}),
            "trained_betas",
        ),
        cfg(
            "sched_beta_schedule_unknown",
            "ddpm",
            SCHED,
            json!({"beta_schedule": "bogus"}),
            "beta_schedule",
        ),
        cfg(
            "sched_variance_type_unknown",
            "ddpm",
            SCHED,
            json!({"variance_type": "bogus"}),
            "variance_type",
        ),
        file_case(
            "sched_config_truncated",
            "sd1",
            SCHED,
            |b| Some(truncated(b, 50)),
            "scheduler_config.json",
        ),
        file_case(
            "sched_config_missing",
            "sd1",
            SCHED,
            |_| None,
            "scheduler_config.json",
        ),
        file_case(
            "sched_config_truncated",
            "ddpm",
            SCHED,
            |b| Some(truncated(b, 50)),
            "scheduler_config.json",
        ),
        // Tokenizer
        file_case(
            "tokenizer_vocab_truncated",
            "sd1",
            "tokenizer/vocab.json",
            |b| Some(truncated(b, 1000)),
            "vocab.json",
        ),
        file_case(
            "tokenizer_vocab_missing",
            "sd1",
            "tokenizer/vocab.json",
            |_| None,
            "vocab.json",
        ),
        file_case(
            "tokenizer_merges_missing",
            "sd1",
            "tokenizer/merges.txt",
            |_| None,
            "merges.txt",
        ),
        file_case(
            "tokenizer_config_truncated",
            "sd1",
            "tokenizer/tokenizer_config.json",
            |b| Some(truncated(b, 30)),
            "tokenizer_config.json",
        ),
    ];
    // `info` reads the same configs.
    for (name, rel, patch, needle) in [
        (
            "info_unet_norm_num_groups_0",
            UNET,
            json!({"norm_num_groups": 0}),
            "norm_num_groups",
        ),
        (
            "info_vae_latent_channels_0",
            VAE,
            json!({"latent_channels": 0}),
            "latent_channels",
        ),
        (
            "info_mi_unknown_library",
            MI,
            json!({"unet": ["mylib", "UNet2DConditionModel"]}),
            "mylib",
        ),
        (
            "info_sched_beta_schedule_unknown",
            SCHED,
            json!({"beta_schedule": "bogus"}),
            "beta_schedule",
        ),
    ] {
        t.push(
            Case::new(name, strings(&["info", "--model", "m"]), needle).setup(move |env, dir| {
                copy_model(env, dir, "sd1");
                patch_json(&dir.join("m").join(rel), &patch);
            }),
        );
    }
    for (name, rel, needle) in [
        ("info_mi_truncated", MI, MI),
        ("info_unet_config_truncated", UNET, "unet/config.json"),
        (
            "info_sched_config_truncated",
            SCHED,
            "scheduler_config.json",
        ),
    ] {
        t.push(
            Case::new(name, strings(&["info", "--model", "m"]), needle).setup(move |env, dir| {
                copy_model(env, dir, "sd1");
                let p = dir.join("m").join(rel);
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, truncated(&b, b.len() / 2)).unwrap();
            }),
        );
    }
    run_table("pipeline_configs", &env, t);
}

#[test]
fn weight_files() {
    let env = Env::new(&["ddpm", "sd1"]);
    const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
    const VAE: &str = "vae/diffusion_pytorch_model.safetensors";
    const TE: &str = "text_encoder/model.safetensors";
    const UNET_FILE: &str = "diffusion_pytorch_model.safetensors";
    let set_shape = |key: &'static str, shape: &'static [usize]| {
        move |st: &mut SafeTensors| {
            let t = st.tensor(key);
            let n: usize = shape.iter().product();
            let size = t.data.len() / t.shape.iter().product::<usize>().max(1);
            t.shape = shape.to_vec();
            t.data = vec![0; n * size];
        }
    };
    let mut t: Vec<Case> = Vec::new();
    for (model, rel, key) in [
        ("sd1", UNET, "conv_in.weight"),
        ("ddpm", UNET, "conv_in.weight"),
        ("sd1", VAE, "encoder.conv_in.weight"),
        ("sd1", TE, "embeddings.token_embedding.weight"),
    ] {
        let file = Path::new(rel).file_name().unwrap().to_str().unwrap();
        // The text encoder's file is transformers' `model.safetensors`.
        let file: &'static str = if file == UNET_FILE {
            UNET_FILE
        } else {
            "text_encoder/model.safetensors"
        };
        let part = rel.split('/').next().unwrap();
        let n = |s: &str| format!("{part}_{s}");
        t.extend([
            file_case(
                &n("truncated_half"),
                model,
                rel,
                |b| Some(truncated(b, b.len() / 2)),
                file,
            ),
            file_case(
                &n("truncated_to_header"),
                model,
                rel,
                |b| {
                    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                    Some(truncated(b, 8 + n))
                },
                file,
            ),
            file_case(
                &n("garbage"),
                model,
                rel,
                |_| Some(b"<html>404 Not Found</html>".repeat(40)),
                file,
            ),
            file_case(&n("empty"), model, rel, |_| Some(Vec::new()), file),
            file_case(&n("missing"), model, rel, |_| None, file),
            weights_case(
                &n("missing_key"),
                model,
                rel,
                move |st| {
                    st.tensors.remove(key);
                },
                key,
            ),
            weights_case(
                &n("wrong_dtype"),
                model,
                rel,
                move |st| {
                    let t = st.tensor(key);
                    t.dtype = "I64".into();
                    t.data = vec![0; t.shape.iter().product::<usize>() * 8];
                },
                key,
            ),
            weights_case(
                &n("wrong_shape"),
                model,
                rel,
                move |st| {
                    let t = st.tensor(key);
                    t.shape[0] += 1;
                    t.data = vec![0; t.shape.iter().product::<usize>() * 2];
                },
                key,
            ),
            weights_case(
                &n("wrong_rank"),
                model,
                rel,
                move |st| {
                    let t = st.tensor(key);
                    let n: usize = t.shape.iter().product();
                    t.shape = vec![n];
                },
                key,
            ),
        ]);
    }
    // Headers: absurd lengths, offsets and shapes (the SD1 UNet file).
    let header = |name: &str, f: fn(&[u8]) -> Vec<u8>| {
        file_case(name, "sd1", UNET, move |b| Some(f(b)), UNET_FILE)
    };
    t.extend([
        header("header_length_u64_max", |b| {
            let mut v = u64::MAX.to_le_bytes().to_vec();
            v.extend_from_slice(&b[8..]);
            v
        }),
        header("header_length_past_the_end", |b| {
            let mut v = (b.len() as u64 * 4).to_le_bytes().to_vec();
            v.extend_from_slice(&b[8..]);
            v
        }),
        header("header_not_json", |_| {
            with_header("{\"conv_in.weight\": {\"dtype\":", &[0; 64])
        }),
        header("header_a_list", |_| with_header("[]", &[])),
        header("metadata_a_number", |b| {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let mut h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
            h["__metadata__"] = json!(7);
            with_header(&h.to_string(), &b[8 + n..])
        }),
        header("offsets_reversed", |b| {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let mut h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
            let off = h["conv_in.weight"]["data_offsets"].clone();
            h["conv_in.weight"]["data_offsets"] = json!([off[1], off[0]]);
            with_header(&h.to_string(), &b[8 + n..])
        }),
        header("header_not_utf8", |_| {
            let mut v = 4u64.to_le_bytes().to_vec();
            v.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
            v
        }),
    ]);
    t.extend([
        // The last tensor's bytes cut off: the header points past the end.
        file_case(
            "unet_offsets_past_the_data",
            "sd1",
            UNET,
            |b| Some(truncated(b, b.len() - 100)),
            UNET_FILE,
        ),
        weights_case(
            "unet_shape_of_2_pow_80_elements",
            "sd1",
            UNET,
            |st| {
                let t = st.tensor("conv_in.weight");
                t.shape = vec![1 << 20, 1 << 20, 1 << 20, 1 << 20];
            },
            "conv_in.weight",
        ),
        weights_case(
            "unet_dtype_unknown",
            "sd1",
            UNET,
            |st| {
                st.tensor("conv_in.weight").dtype = "F12".into();
            },
            "conv_in.weight|F12",
        ),
        weights_case(
            "unet_conv_in_for_5_channels",
            "sd1",
            UNET,
            set_shape("conv_in.weight", &[8, 5, 3, 3]),
            "conv_in.weight",
        ),
        weights_case(
            "unet_nan_weights",
            "sd1",
            UNET,
            |st| {
                let t = st.tensor("conv_in.weight");
                // f16 NaN.
                t.data = [0x00u8, 0x7e].repeat(t.data.len() / 2);
            },
            "conv_in.weight|diffusion_pytorch_model.safetensors",
        ),
        weights_case(
            "vae_missing_decoder_key",
            "sd1",
            VAE,
            |st| {
                st.tensors.remove("decoder.conv_out.weight");
            },
            "decoder.conv_out.weight",
        ),
        weights_case(
            "unet_weights_in_vae_folder",
            "sd1",
            VAE,
            |st| {
                *st =
                    SafeTensors::read(&pipeline_fixtures().join("shared/unet_uncond.safetensors"));
            },
            "vae",
        ),
    ]);
    // `info` reads the headers too.
    for (name, f, needle) in [
        (
            "info_unet_truncated",
            (|b: &[u8]| truncated(b, 20)) as fn(&[u8]) -> Vec<u8>,
            UNET_FILE,
        ),
        (
            "info_unet_header_length_u64_max",
            |b: &[u8]| {
                let mut v = u64::MAX.to_le_bytes().to_vec();
                v.extend_from_slice(&b[8..]);
                v
            },
            UNET_FILE,
        ),
        (
            "info_unet_garbage",
            |_: &[u8]| b"garbage".to_vec(),
            UNET_FILE,
        ),
    ] {
        t.push(
            Case::new(name, strings(&["info", "--model", "m"]), needle).setup(move |env, dir| {
                copy_model(env, dir, "sd1");
                let p = dir.join("m").join(UNET);
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, f(&b)).unwrap();
            }),
        );
    }
    run_table("weight_files", &env, t);
}

#[test]
fn img2img_and_inpaint() {
    let env = Env::new(&["ddpm", "sd1", "inpaint"]);
    let c = Case::new;
    let img = |name: &str, bytes: fn() -> Vec<u8>| {
        c(
            &format!("img2img_image_{name}"),
            img2img(&["--image", "in.png"]),
            "in.png",
        )
        .setup(move |_, d| write(d, "in.png", &bytes()))
    };
    let t: Vec<Case> = vec![
        img("garbage", || b"GIF89a but not really".to_vec()),
        img("empty_file", Vec::new),
        img("truncated_png", || truncated(&png(32, 32), 120)),
        img("header_only", || truncated(&png(32, 32), 33)),
        img("claims_100000x100000", || png_claiming(100_000, 100_000)),
        img("claims_65536x65536", || png_claiming(65_536, 65_536)),
        img("claims_4_billion_wide", || png_claiming(u32::MAX / 2, 1)),
        // Too small for the model: the image is at fault, not a `height`.
        c(
            "img2img_image_1x1",
            img2img(&["--image", "in.png"]),
            "--image|in.png",
        )
        .setup(|_, d| write(d, "in.png", &png(1, 1))),
        c(
            "img2img_image_4x4",
            img2img(&["--image", "in.png"]),
            "--image|in.png",
        )
        .setup(|_, d| write(d, "in.png", &png(4, 4))),
        c(
            "img2img_image_7x7",
            img2img(&["--image", "in.png"]),
            "--image|in.png",
        )
        .setup(|_, d| write(d, "in.png", &png(7, 7))),
        c(
            "img2img_image_garbage_jpeg",
            img2img(&["--image", "in.jpg"]),
            "in.jpg",
        )
        .setup(|_, d| {
            write(
                d,
                "in.jpg",
                b"\xff\xd8\xff\xe0 garbage after the JPEG magic",
            )
        }),
        c(
            "img2img_image_missing",
            img2img(&["--image", "absent.png"]),
            "absent.png",
        ),
        c(
            "img2img_image_is_a_folder",
            img2img(&["--image", "pics"]),
            "pics",
        )
        .setup(|_, d| mkdir(d, "pics")),
        c(
            "img2img_image_empty_path",
            img2img(&["--image", ""]),
            "--image",
        ),
        c("img2img_without_image", img2img(&["!--image"]), "--image"),
        c(
            "img2img_strength_1_5",
            img2img(&["--strength", "1.5"]),
            "--strength",
        ),
        c(
            "img2img_strength_negative",
            img2img(&["--strength", "-0.1"]),
            "--strength",
        ),
        c(
            "img2img_strength_nan",
            img2img(&["--strength", "NaN"]),
            "--strength",
        ),
        c(
            "img2img_strength_0",
            img2img(&["--strength", "0"]),
            "--strength",
        ),
        c(
            "img2img_strength_too_small_for_steps",
            img2img(&["--strength", "0.01", "--steps", "2"]),
            "--strength",
        ),
        c(
            "img2img_steps_0",
            img2img(&["--steps", "0"]),
            "--steps|num_inference_steps",
        ),
        c(
            "img2img_guidance_nan",
            img2img(&["--guidance", "NaN"]),
            "--guidance",
        ),
        c(
            "img2img_num_images_1000000",
            img2img(&["--num-images", "1000000"]),
            "--num-images|image&memory",
        ),
        c(
            "img2img_with_mask",
            img2img(&["--mask", "{mask}"]),
            "--mask",
        ),
        c(
            "img2img_with_latents",
            img2img(&["--latents", "lat.safetensors"]),
            "--latents",
        )
        .setup(|_, d| {
            write(
                d,
                "lat.safetensors",
                &latents_file("latents", f32_tensor(&[1, 4, 16, 16], None)),
            )
        }),
        c(
            "img2img_unconditional_model",
            img2img(&["--model", "{ddpm}", "!-p"]),
            "unconditional",
        ),
        c(
            "img2img_inpainting_model",
            img2img(&["--model", "{inpaint}"]),
            "inpaint",
        ),
        c(
            "img2img_unknown_flag",
            img2img(&["--maks", "{mask}"]),
            "--maks",
        ),
        // inpaint
        c(
            "inpaint_mask_garbage",
            inpaint(&["--mask", "m.png"]),
            "m.png",
        )
        .setup(|_, d| write(d, "m.png", b"not a mask")),
        c(
            "inpaint_mask_empty_file",
            inpaint(&["--mask", "m.png"]),
            "m.png",
        )
        .setup(|_, d| write(d, "m.png", b"")),
        c(
            "inpaint_mask_truncated",
            inpaint(&["--mask", "m.png"]),
            "m.png",
        )
        .setup(|_, d| write(d, "m.png", &truncated(&png_mask(32, 32), 60))),
        c(
            "inpaint_mask_missing",
            inpaint(&["--mask", "absent-mask.png"]),
            "absent-mask.png",
        ),
        c(
            "inpaint_mask_is_a_folder",
            inpaint(&["--mask", "masks"]),
            "masks",
        )
        .setup(|_, d| mkdir(d, "masks")),
        c(
            "inpaint_mask_16x16_for_32x32",
            inpaint(&["--mask", "m.png"]),
            "--mask",
        )
        .setup(|_, d| write(d, "m.png", &png_mask(16, 16))),
        c(
            "inpaint_mask_32x16_for_32x32",
            inpaint(&["--mask", "m.png"]),
            "--mask",
        )
        .setup(|_, d| write(d, "m.png", &png_mask(16, 32))),
        c(
            "inpaint_mask_claims_100000x100000",
            inpaint(&["--mask", "m.png"]),
            "m.png",
        )
        .setup(|_, d| write(d, "m.png", &png_claiming(100_000, 100_000))),
        c(
            "inpaint_image_garbage",
            inpaint(&["--image", "in.png"]),
            "in.png",
        )
        .setup(|_, d| write(d, "in.png", b"\x89PNG\r\n\x1a\n garbage")),
        c(
            "inpaint_image_and_mask_1x1",
            inpaint(&["--image", "in.png", "--mask", "m.png"]),
            "--image|in.png",
        )
        .setup(|_, d| {
            write(d, "in.png", &png(1, 1));
            write(d, "m.png", &png_mask(1, 1));
        }),
        c("inpaint_without_mask", inpaint(&["!--mask"]), "--mask"),
        c(
            "inpaint_unconditional_model",
            inpaint(&["--model", "{ddpm}", "!-p"]),
            "unconditional",
        ),
        c(
            "inpaint_strength_nan",
            inpaint(&["--strength", "NaN"]),
            "--strength",
        ),
        c(
            "inpaint_strength_2",
            inpaint(&["--strength", "2"]),
            "--strength",
        ),
        c(
            "inpaint_guidance_rescale_nan",
            inpaint(&["--guidance-rescale", "NaN"]),
            "--guidance-rescale",
        ),
        c(
            "inpaint_num_images_1000000",
            inpaint(&["--num-images", "1000000"]),
            "--num-images|image&memory",
        ),
        c(
            "inpaint_width_height_65536",
            inpaint(&["--width", "65536", "--height", "65536"]),
            "width&memory",
        ),
        c(
            "inpaint_latents_wrong_shape",
            inpaint(&["--latents", "lat.safetensors"]),
            "latents",
        )
        .setup(|_, d| {
            write(
                d,
                "lat.safetensors",
                &latents_file("latents", f32_tensor(&[1, 4, 3, 3], None)),
            )
        }),
        c(
            "inpaint_latents_garbage",
            inpaint(&["--latents", "lat.safetensors"]),
            "lat.safetensors",
        )
        .setup(|_, d| write(d, "lat.safetensors", b"garbage")),
    ];
    run_table("img2img_and_inpaint", &env, t);
}

#[test]
fn convert_and_info() {
    let env = Env::new(&["ddpm"]);
    let c = Case::new;
    let conv = |name: &str, file: &'static str, bytes: fn() -> Vec<u8>, needle: &'static str| {
        c(
            &format!("convert_{name}"),
            strings(&["convert", file, "out"]),
            needle,
        )
        .setup(move |_, d| write(d, file, &bytes()))
    };
    let info = |name: &str, file: &'static str, bytes: fn() -> Vec<u8>, needle: &'static str| {
        c(
            &format!("info_{name}"),
            strings(&["info", "--model", file]),
            needle,
        )
        .setup(move |_, d| write(d, file, &bytes()))
    };
    let t: Vec<Case> = vec![
        // Checkpoint files.
        c(
            "convert_missing_file",
            strings(&["convert", "absent.safetensors", "out"]),
            "absent.safetensors",
        ),
        c(
            "convert_a_folder",
            strings(&["convert", "ckpt-folder", "out"]),
            "ckpt-folder",
        )
        .setup(|_, d| mkdir(d, "ckpt-folder")),
        conv(
            "garbage_safetensors",
            "model.safetensors",
            || b"<html>rate limited</html>".to_vec(),
            "model.safetensors",
        ),
        conv(
            "empty_safetensors",
            "model.safetensors",
            Vec::new,
            "model.safetensors",
        ),
        conv(
            "truncated_safetensors",
            "model.safetensors",
            || {
                let b = std::fs::read(hub_fixtures().join("single_file/sd1.safetensors")).unwrap();
                truncated(&b, b.len() / 2)
            },
            "model.safetensors",
        ),
        conv(
            "header_length_u64_max",
            "model.safetensors",
            || {
                let b = std::fs::read(hub_fixtures().join("single_file/sd1.safetensors")).unwrap();
                let mut v = u64::MAX.to_le_bytes().to_vec();
                v.extend_from_slice(&b[8..]);
                v
            },
            "model.safetensors",
        ),
        conv(
            "garbage_ckpt",
            "model.ckpt",
            || b"PK\x03\x04 garbage".to_vec(),
            "model.ckpt",
        ),
        conv("empty_ckpt", "model.ckpt", Vec::new, "model.ckpt"),
        conv(
            "truncated_ckpt",
            "model.ckpt",
            || {
                let b = std::fs::read(hub_fixtures().join("single_file/sd1.ckpt")).unwrap();
                truncated(&b, b.len() / 2)
            },
            "model.ckpt",
        ),
        conv(
            "ckpt_cut_before_the_central_directory",
            "model.ckpt",
            || {
                let b = std::fs::read(hub_fixtures().join("single_file/sd1.ckpt")).unwrap();
                truncated(&b, b.len() - 30)
            },
            "model.ckpt",
        ),
        conv(
            "legacy_pickle_ckpt",
            "model.ckpt",
            || vec![0x80, 2, b'}', b'.'],
            "model.ckpt",
        ),
        conv(
            "garbage_bin",
            "pytorch_model.bin",
            || vec![0u8; 4096],
            "pytorch_model.bin",
        ),
        conv(
            "zip_without_data_pkl",
            "model.ckpt",
            || zip_stored(&[("archive/version", b"3\n")]),
            "model.ckpt",
        ),
        conv(
            "pickle_garbage_opcodes",
            "model.ckpt",
            || torch_zip(b"\x80\x02\xff\xfe\xfd"),
            "model.ckpt",
        ),
        conv(
            "pickle_truncated",
            "model.ckpt",
            || torch_zip(&[0x80, 2, b'}', b'(']),
            "model.ckpt",
        ),
        conv(
            "pickle_os_system",
            "evil.ckpt",
            || torch_zip(&evil_pickle("os", "system", Global::Text)),
            "os.system",
        ),
        conv(
            "pickle_os_system_stack_global",
            "evil.ckpt",
            || torch_zip(&evil_pickle("os", "system", Global::Stack)),
            "os.system",
        ),
        conv(
            "pickle_os_system_at_the_root",
            "evil.ckpt",
            || torch_zip(&evil_pickle_root("os", "system")),
            "os.system",
        ),
        conv(
            "pickle_posix_system",
            "evil.ckpt",
            || torch_zip(&evil_pickle("posix", "system", Global::Text)),
            "posix.system",
        ),
        conv(
            "pickle_subprocess_popen",
            "evil.ckpt",
            || torch_zip(&evil_pickle("subprocess", "Popen", Global::Text)),
            "subprocess.Popen",
        ),
        conv(
            "pickle_builtins_eval",
            "evil.ckpt",
            || torch_zip(&evil_pickle("builtins", "eval", Global::Text)),
            "builtins.eval",
        ),
        conv(
            "pickle_os_system_as_bin",
            "pytorch_model.bin",
            || torch_zip(&evil_pickle("os", "system", Global::Text)),
            "os.system",
        ),
        conv(
            "not_a_stable_diffusion_checkpoint",
            "unet.safetensors",
            || std::fs::read(pipeline_fixtures().join("shared/unet_uncond.safetensors")).unwrap(),
            "unet.safetensors",
        ),
        conv(
            "checkpoint_missing_a_unet_key",
            "model.safetensors",
            || {
                let mut st = SafeTensors::read(&hub_fixtures().join("single_file/sd1.safetensors"));
                st.tensors
                    .remove("model.diffusion_model.input_blocks.0.0.weight");
                st.bytes()
            },
            "input_blocks.0.0.weight|conv_in.weight",
        ),
        conv(
            "checkpoint_wrong_shape",
            "model.safetensors",
            || {
                let mut st = SafeTensors::read(&hub_fixtures().join("single_file/sd1.safetensors"));
                let t = st.tensor("model.diffusion_model.input_blocks.0.0.weight");
                t.shape = vec![4, 4, 3, 4];
                t.data.extend(vec![0; 4 * 4 * 3 * 4]);
                t.data.truncate(4 * 4 * 3 * 4 * 4);
                st.bytes()
            },
            "input_blocks.0.0.weight|conv_in.weight",
        ),
        conv(
            "checkpoint_wrong_dtype",
            "model.safetensors",
            || {
                let mut st = SafeTensors::read(&hub_fixtures().join("single_file/sd1.safetensors"));
                st.tensor("model.diffusion_model.input_blocks.0.0.weight")
                    .dtype = "I32".into();
                st.bytes()
            },
            "input_blocks.0.0.weight|conv_in.weight",
        ),
        c(
            "convert_misc_pt",
            strings(&["convert", "{misc_pt}", "out"]),
            "misc.pt",
        ),
        c(
            "convert_strided_huge_pt",
            strings(&["convert", "{strided_pt}", "out"]),
            "strided_huge.pt",
        ),
        // Flags and destinations.
        c(
            "convert_prediction_type_bogus",
            strings(&["convert", "{ckpt}", "out", "--prediction-type", "bogus"]),
            "--prediction-type",
        ),
        c(
            "convert_prediction_type_empty",
            strings(&["convert", "{ckpt}", "out", "--prediction-type", ""]),
            "--prediction-type",
        ),
        c(
            "convert_set_sample_size_word",
            strings(&["convert", "{ckpt}", "out", "--set", "unet.sample_size=abc"]),
            "sample_size",
        ),
        c(
            "convert_set_norm_num_groups_0",
            strings(&[
                "convert",
                "{ckpt}",
                "out",
                "--set",
                "unet.norm_num_groups=0",
            ]),
            "norm_num_groups",
        ),
        c(
            "convert_set_misspelt_field",
            strings(&[
                "convert",
                "{ckpt}",
                "out",
                "--set",
                "unet.upcast_atention=true",
            ]),
            "upcast_atention",
        ),
        c(
            "convert_set_scaling_factor_negative",
            strings(&["convert", "{ckpt}", "out", "--set", "vae.scaling_factor=-1"]),
            "scaling_factor",
        ),
        c(
            "convert_set_beta_schedule_bogus",
            strings(&[
                "convert",
                "{ckpt}",
                "out",
                "--set",
                "scheduler.beta_schedule=bogus",
            ]),
            "beta_schedule",
        ),
        c(
            "convert_set_unknown_component",
            strings(&["convert", "{ckpt}", "out", "--set", "text_encoder_2.x=1"]),
            "text_encoder_2",
        ),
        c(
            "convert_set_no_component",
            strings(&["convert", "{ckpt}", "out", "--set", "x=1"]),
            "COMPONENT.FIELD=VALUE",
        ),
        c(
            "convert_set_no_value",
            strings(&["convert", "{ckpt}", "out", "--set", "unet.sample_size"]),
            "COMPONENT.FIELD=VALUE",
        ),
        c(
            "convert_extract_ema_without_ema",
            strings(&["convert", "--extract-ema", "{ckpt}", "out"]),
            "EMA",
        ),
        c(
            "convert_into_a_non_empty_folder",
            strings(&["convert", "{ckpt}", "out"]),
            "not empty",
        )
        .setup(|_, d| write(d, "out/keep.txt", b"mine")),
        c(
            "convert_onto_a_file",
            strings(&["convert", "{ckpt}", "out"]),
            "out:",
        )
        .setup(|_, d| write(d, "out", b"a file")),
        c(
            "convert_under_a_file",
            strings(&["convert", "{ckpt}", "afile/out"]),
            "afile:|afile/out:",
        )
        .setup(|_, d| write(d, "afile", b"a file")),
        c(
            "convert_empty_out_dir",
            strings(&["convert", "{ckpt}", ""]),
            "OUT_DIR|out_dir|output",
        ),
        c(
            "convert_unknown_flag",
            strings(&["convert", "{ckpt}", "out", "--prediction_type", "epsilon"]),
            "--prediction_type",
        ),
        // info
        c(
            "info_missing_model",
            strings(&["info", "--model", "./absent-model"]),
            "absent-model",
        ),
        c(
            "info_empty_model",
            strings(&["info", "--model", ""]),
            "--model|model name",
        ),
        c("info_without_model", strings(&["info"]), "--model"),
        c(
            "info_empty_folder",
            strings(&["info", "--model", "blank-model"]),
            "blank-model",
        )
        .setup(|_, d| mkdir(d, "blank-model")),
        info(
            "garbage_safetensors",
            "model.safetensors",
            || b"\x00\x01garbage".to_vec(),
            "model.safetensors",
        ),
        info(
            "truncated_safetensors",
            "model.safetensors",
            || {
                let b = std::fs::read(hub_fixtures().join("single_file/sd1.safetensors")).unwrap();
                truncated(&b, b.len() / 3)
            },
            "model.safetensors",
        ),
        info(
            "header_length_u64_max",
            "model.safetensors",
            || {
                let mut v = u64::MAX.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            "model.safetensors",
        ),
        info(
            "garbage_ckpt",
            "model.ckpt",
            || b"garbage".to_vec(),
            "model.ckpt",
        ),
        info(
            "truncated_ckpt",
            "model.ckpt",
            || {
                let b = std::fs::read(hub_fixtures().join("single_file/sd1.ckpt")).unwrap();
                truncated(&b, b.len() / 2)
            },
            "model.ckpt",
        ),
        info(
            "pickle_os_system",
            "evil.ckpt",
            || torch_zip(&evil_pickle("os", "system", Global::Text)),
            "os.system",
        ),
        info(
            "pickle_os_system_stack_global",
            "evil.ckpt",
            || torch_zip(&evil_pickle("os", "system", Global::Stack)),
            "os.system",
        ),
        info(
            "pickle_os_system_at_the_root",
            "evil.ckpt",
            || torch_zip(&evil_pickle_root("os", "system")),
            "os.system",
        ),
        info(
            "unknown_extension_garbage",
            "model.gguf",
            || b"GGUF garbage".to_vec(),
            "model.gguf",
        ),
    ];
    run_table("convert_and_info", &env, t);
}

/// How a resume case breaks a file of a finished run.
#[derive(Clone)]
enum Edit {
    /// Cut to half its size.
    Truncate,
    /// Replaced by bytes that are no format at all.
    Garbage,
    /// One JSON value (a JSON pointer) replaced.
    Json(&'static str, Value),
}

/// A finished one-step run (checkpoint at step 1) in `dir/run`, trained
/// by the binary itself, without the limits.
fn finished_run(env: &Env, dir: &Path) {
    let args = env.expand(&train_args(&["--checkpointing-steps", "1"]));
    let o = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(&args)
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "training the run to resume failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `train --resume-from-checkpoint latest` of a finished run whose file
/// `rel` (under `run/`) is broken by `edit`.
fn resume(name: &str, rel: &'static str, edit: Edit, needle: &'static str) -> Case {
    let args = train_args(&[
        "--resume-from-checkpoint",
        "latest",
        "--max-train-steps",
        "2",
    ]);
    Case::new(&format!("resume_{name}"), args, needle).setup(move |env, dir| {
        finished_run(env, dir);
        let p = dir.join("run").join(rel);
        let b = std::fs::read(&p).unwrap();
        let new = match &edit {
            Edit::Truncate => truncated(&b, b.len() / 2),
            Edit::Garbage => b"\x00garbage\xff".to_vec(),
            Edit::Json(pointer, v) => {
                let mut j: Value = serde_json::from_slice(&b).unwrap();
                *j.pointer_mut(pointer)
                    .unwrap_or_else(|| panic!("{pointer} not in {rel}")) = v.clone();
                j.to_string().into_bytes()
            }
        };
        std::fs::write(&p, new).unwrap();
    })
}

#[test]
fn train() {
    let env = Env::new(&[]);
    let c = Case::new;
    let tr = train_args;
    let mc = |name: &str, patch: Value, needle: &'static str| {
        c(
            &format!("model_config_{name}"),
            tr(&["--model-config", "unet.json"]),
            needle,
        )
        .setup(move |_, d| {
            std::fs::copy(train_config(), d.join("unet.json")).unwrap();
            patch_json(&d.join("unet.json"), &patch);
        })
    };
    let t: Vec<Case> = vec![
        c("resolution_7", tr(&["--resolution", "7"]), "--resolution"),
        c("resolution_0", tr(&["--resolution", "0"]), "--resolution"),
        c(
            "resolution_100000",
            tr(&["--resolution", "100000"]),
            "--resolution|resolution&memory",
        ),
        c(
            "resolution_2_pow_40",
            tr(&["--resolution", "1099511627776"]),
            "--resolution|resolution&memory",
        ),
        c(
            "resolution_word",
            tr(&["--resolution", "big"]),
            "--resolution",
        ),
        // A UNet with three levels halves its input twice: 10 does not divide.
        c(
            "resolution_10_for_three_levels",
            tr(&["--resolution", "10", "--model-config", "unet.json"]),
            "--resolution",
        )
        .setup(|_, d| {
            std::fs::copy(train_config(), d.join("unet.json")).unwrap();
            patch_json(
                &d.join("unet.json"),
                &json!({
                    "block_out_channels": [8, 16, 16],
                    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
                }),
            );
        }),
        c(
            "train_batch_size_0",
            tr(&["--train-batch-size", "0"]),
            "--train-batch-size",
        ),
        c(
            "train_batch_size_1000000000",
            tr(&["--train-batch-size", "1000000000"]),
            "--train-batch-size|batch&memory",
        ),
        c(
            "eval_batch_size_0",
            tr(&["--eval-batch-size", "0"]),
            "--eval-batch-size",
        ),
        c(
            "eval_batch_size_1000000000",
            tr(&["--eval-batch-size", "1000000000"]),
            "--eval-batch-size|image&memory",
        ),
        c(
            "num_inference_steps_0",
            tr(&["--num-inference-steps", "0"]),
            "--num-inference-steps",
        ),
        c(
            "num_inference_steps_above_train_steps",
            tr(&["--num-inference-steps", "100000"]),
            "--num-inference-steps|num_inference_steps",
        ),
        c(
            "max_train_steps_0",
            tr(&["--max-train-steps", "0"]),
            "--max-train-steps",
        ),
        c(
            "max_train_steps_negative",
            tr(&["--max-train-steps", "-1"]),
            "--max-train-steps",
        ),
        c(
            "learning_rate_nan",
            tr(&["--learning-rate", "NaN"]),
            "--learning-rate",
        ),
        c(
            "learning_rate_negative",
            tr(&["--learning-rate", "-1"]),
            "--learning-rate",
        ),
        c(
            "learning_rate_inf",
            tr(&["--learning-rate", "inf"]),
            "--learning-rate",
        ),
        c(
            "adam_beta1_nan",
            tr(&["--adam-beta1", "NaN"]),
            "--adam-beta1",
        ),
        c("adam_beta1_2", tr(&["--adam-beta1", "2"]), "--adam-beta1"),
        c(
            "adam_beta2_negative",
            tr(&["--adam-beta2", "-1"]),
            "--adam-beta2",
        ),
        c(
            "adam_epsilon_nan",
            tr(&["--adam-epsilon", "NaN"]),
            "--adam-epsilon",
        ),
        c(
            "adam_epsilon_negative",
            tr(&["--adam-epsilon", "-1"]),
            "--adam-epsilon",
        ),
        c(
            "adam_weight_decay_nan",
            tr(&["--adam-weight-decay", "NaN"]),
            "--adam-weight-decay",
        ),
        c(
            "max_grad_norm_nan",
            tr(&["--max-grad-norm", "NaN"]),
            "--max-grad-norm",
        ),
        c(
            "ema_max_decay_2",
            tr(&["--use-ema", "--ema-max-decay", "2"]),
            "--ema-max-decay",
        ),
        c(
            "ema_power_nan",
            tr(&["--use-ema", "--ema-power", "NaN"]),
            "--ema-power",
        ),
        c(
            "ema_inv_gamma_0",
            tr(&["--use-ema", "--ema-inv-gamma", "0"]),
            "--ema-inv-gamma",
        ),
        c("snr_gamma_nan", tr(&["--snr-gamma", "NaN"]), "--snr-gamma"),
        c(
            "snr_gamma_negative",
            tr(&["--snr-gamma", "-1"]),
            "--snr-gamma",
        ),
        c(
            "noise_offset_nan",
            tr(&["--noise-offset", "NaN"]),
            "--noise-offset",
        ),
        c(
            "ddpm_num_steps_0",
            tr(&["--ddpm-num-steps", "0"]),
            "--ddpm-num-steps",
        ),
        c(
            "ddpm_num_steps_huge",
            tr(&["--ddpm-num-steps", "10000000000000"]),
            "--ddpm-num-steps",
        ),
        c(
            "ddpm_beta_schedule_bogus",
            tr(&["--ddpm-beta-schedule", "bogus"]),
            "--ddpm-beta-schedule",
        ),
        c(
            "prediction_type_bogus",
            tr(&["--prediction-type", "bogus"]),
            "--prediction-type",
        ),
        c(
            "lr_scheduler_bogus",
            tr(&["--lr-scheduler", "exp"]),
            "--lr-scheduler",
        ),
        c(
            "mixed_precision_fp8",
            tr(&["--mixed-precision", "fp8"]),
            "--mixed-precision",
        ),
        c(
            "pipeline_class_bogus",
            tr(&["--pipeline-class", "StableDiffusionPipeline"]),
            "--pipeline-class",
        ),
        c("device_gpu", tr(&["--device", "gpu"]), "--device"),
        c(
            "unknown_flag",
            tr(&["--learning_rate", "1e-3"]),
            "--learning_rate",
        ),
        // Data.
        c(
            "data_dir_missing",
            tr(&["--train-data-dir", "no-data"]),
            "no-data",
        ),
        c(
            "data_dir_empty",
            tr(&["--train-data-dir", "empty-data"]),
            "empty-data",
        )
        .setup(|_, d| mkdir(d, "empty-data")),
        c(
            "data_dir_is_a_file",
            tr(&["--train-data-dir", "data.txt"]),
            "data.txt",
        )
        .setup(|_, d| write(d, "data.txt", b"x")),
        c(
            "data_image_garbage",
            tr(&["--train-data-dir", "data"]),
            "bad.png",
        )
        .setup(|_, d| {
            write(d, "data/good.png", &png(8, 8));
            write(d, "data/bad.png", b"not a png");
        }),
        c(
            "data_image_claims_100000x100000",
            tr(&["--train-data-dir", "data"]),
            "huge.png",
        )
        .setup(|_, d| {
            write(d, "data/good.png", &png(8, 8));
            write(d, "data/huge.png", &png_claiming(100_000, 100_000));
        }),
        c(
            "data_image_empty_file",
            tr(&["--train-data-dir", "data"]),
            "empty.png",
        )
        .setup(|_, d| {
            write(d, "data/good.png", &png(8, 8));
            write(d, "data/empty.png", b"");
        }),
        // Model configs.
        c(
            "model_config_missing",
            tr(&["--model-config", "absent.json"]),
            "absent.json",
        ),
        c(
            "model_config_truncated",
            tr(&["--model-config", "unet.json"]),
            "unet.json",
        )
        .setup(|_, d| {
            let b = std::fs::read(train_config()).unwrap();
            write(d, "unet.json", &truncated(&b, b.len() / 2));
        }),
        c(
            "model_config_garbage",
            tr(&["--model-config", "unet.json"]),
            "unet.json",
        )
        .setup(|_, d| write(d, "unet.json", b"\x00\x01\x02")),
        mc(
            "norm_num_groups_0",
            json!({"norm_num_groups": 0}),
            "norm_num_groups",
        ),
        mc(
            "norm_num_groups_3",
            json!({"norm_num_groups": 3}),
            "norm_num_groups",
        ),
        mc(
            "attention_head_dim_0",
            json!({"attention_head_dim": 0}),
            "attention_head_dim",
        ),
        mc(
            "sample_size_1000000",
            json!({"sample_size": 1000000}),
            "sample_size",
        ),
        mc("sample_size_0", json!({"sample_size": 0}), "sample_size"),
        mc("norm_eps_negative", json!({"norm_eps": -1}), "norm_eps"),
        mc(
            "in_channels_4",
            json!({"in_channels": 4, "out_channels": 4}),
            "in_channels",
        ),
        mc(
            "block_out_channels_huge",
            json!({"block_out_channels": [8, 1073741824]}),
            "block_out_channels",
        ),
        mc(
            "layers_per_block_1000000",
            json!({"layers_per_block": 1000000}),
            "layers_per_block",
        ),
        mc(
            "down_block_type_unknown",
            json!({"down_block_types": ["DownBlock2D", "Bogus2D"]}),
            "Bogus2D",
        ),
        mc(
            "norm_num_groups_string",
            json!({"norm_num_groups": "4"}),
            "norm_num_groups",
        ),
        // Checkpoints and the output folder.
        c(
            "resume_missing_checkpoint",
            tr(&["--resume-from-checkpoint", "no-ckpt"]),
            "no-ckpt",
        ),
        c(
            "resume_not_a_checkpoint",
            tr(&["--resume-from-checkpoint", "not-ckpt"]),
            "not-ckpt",
        )
        .setup(|_, d| write(d, "not-ckpt/readme.txt", b"x")),
        c(
            "resume_truncated_state",
            tr(&["--resume-from-checkpoint", "run/checkpoint-1"]),
            "trainer_state.json",
        )
        .setup(|_, d| {
            write(
                d,
                "run/checkpoint-1/trainer_state.json",
                b"{\"step\": 1, \"config\": {",
            );
        }),
        resume(
            "optimizer_truncated",
            "checkpoint-1/optimizer.safetensors",
            Edit::Truncate,
            "optimizer.safetensors",
        ),
        resume(
            "unet_weights_garbage",
            "checkpoint-1/unet/diffusion_pytorch_model.safetensors",
            Edit::Garbage,
            "diffusion_pytorch_model.safetensors",
        ),
        resume(
            "unet_config_truncated",
            "checkpoint-1/unet/config.json",
            Edit::Truncate,
            "config.json",
        ),
        resume(
            "state_truncated",
            "checkpoint-1/trainer_state.json",
            Edit::Truncate,
            "trainer_state.json",
        ),
        resume(
            "state_learning_rate_negative",
            "checkpoint-1/trainer_state.json",
            Edit::Json("/config/learning_rate", json!(-1.0)),
            "learning_rate",
        ),
        resume(
            "state_beta1_5",
            "checkpoint-1/trainer_state.json",
            Edit::Json("/config/optimizer/beta1", json!(5.0)),
            "beta1",
        ),
        resume(
            "state_resolution_100000",
            "checkpoint-1/trainer_state.json",
            Edit::Json("/extra/resolution", json!(100000)),
            "resolution",
        ),
        resume(
            "state_batch_size_0",
            "checkpoint-1/trainer_state.json",
            Edit::Json("/extra/batch_size", json!(0)),
            "batch_size",
        ),
        resume(
            "state_model_class_bogus",
            "checkpoint-1/trainer_state.json",
            Edit::Json("/model_class", json!("Bogus2DModel")),
            "model_class|Bogus2DModel",
        ),
        c(
            "output_dir_is_a_file",
            tr(&["--output-dir", "run.txt"]),
            "run.txt",
        )
        .setup(|_, d| write(d, "run.txt", b"x")),
        c(
            "output_dir_empty",
            tr(&["--output-dir", ""]),
            "--output-dir",
        ),
    ];
    run_table("train", &env, t);
}
