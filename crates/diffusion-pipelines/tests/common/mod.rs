//! Test-side access to the pipeline parity fixtures written by
//! `scripts/pipelines/gen_pipelines.py` (see its docstring for the layout).
//!
//! The committed pipeline folders lack what several of them share (the CLIP
//! text encoders, the SD VAE, the unconditional UNet: `shared/`) and what is
//! derived (the 49408-token CLIP `vocab.json` + `merges.txt`, rebuilt from
//! diffusion-hub's open-clip `bpe_simple_vocab_16e6.txt.gz`). [`pipeline_dir`]
//! assembles a complete diffusers folder in a temp dir, exactly as the
//! generator did before running diffusers on it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// `crates/diffusion-pipelines/tests/fixtures`.
/// (Through `../diffusion-pipelines` so that diffusion-cli's tests can include
/// this module too.)
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("diffusion-pipelines")
        .join("tests")
        .join("fixtures")
}

/// The open-clip BPE file the CLIP vocabulary is rebuilt from.
fn bpe_gz() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("diffusion-hub")
        .join("tests")
        .join("fixtures")
        .join("tokenizer")
        .join("bpe_simple_vocab_16e6.txt.gz")
}

/// `pipelines/<name>/assemble.json`: which shared file goes where, and which
/// tokenizer folders get the vocabulary files.
#[derive(Debug, Deserialize)]
pub struct Assemble {
    /// Destination path inside the pipeline folder -> file name under `shared/`.
    pub shared: BTreeMap<String, String>,
    /// Tokenizer folders (e.g. `tokenizer`, `tokenizer_2`) that need `vocab.json` + `merges.txt`.
    pub vocab: Vec<String>,
}

/// The names of all fixture pipelines (`sd1`, `sd2`, `sdxl`, `inpaint`, `ddpm`, `ddim`).
pub fn pipeline_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("pipelines"))
        .expect("read fixtures/pipelines")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

pub fn read_assemble(name: &str) -> Assemble {
    let path = fixtures()
        .join("pipelines")
        .join(name)
        .join("assemble.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to)
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", entry.path().display(), to.display()));
        }
    }
}

/// The decompressed open-clip BPE text (read once per call; ~1.3 MB).
pub fn bpe_text() -> String {
    let path = bpe_gz();
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text
}

/// Fixture pipeline `name` assembled and loaded on `B` with default options
/// (keep the folder alive while the pipeline is used).
pub fn load_pipeline<B: burn::tensor::backend::Backend>(
    name: &str,
) -> (tempfile::TempDir, diffusion_pipelines::DiffusionPipeline<B>) {
    load_pipeline_in(name, diffusion_models::Precision::F32)
}

/// [`load_pipeline`] with its models in `precision`.
pub fn load_pipeline_in<B: burn::tensor::backend::Backend>(
    name: &str,
    precision: diffusion_models::Precision,
) -> (tempfile::TempDir, diffusion_pipelines::DiffusionPipeline<B>) {
    use diffusion_hub::resolve::{ResolveOptions, Resolved, resolve};
    let dir = pipeline_dir(name);
    let opts = ResolveOptions::with_cache_dir(dir.path().join("no-cache")).local_files_only(true);
    let Resolved::Pipeline(model) = resolve(dir.path().to_str().unwrap(), &opts).unwrap() else {
        panic!("{name} is not a pipeline folder")
    };
    let options = diffusion_pipelines::LoadOptions::<B> {
        progress: false,
        precision,
        ..Default::default()
    };
    let pipe = diffusion_pipelines::DiffusionPipeline::from_resolved(&model, &options).unwrap();
    (dir, pipe)
}

/// A complete diffusers folder for fixture pipeline `name` in a fresh temp dir
/// (the folder is `.path()`; it is deleted when the value drops).
pub fn pipeline_dir(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    let src = fixtures().join("pipelines").join(name);
    assert!(src.is_dir(), "no fixture pipeline {}", src.display());
    copy_tree(&src, tmp.path());
    let spec = read_assemble(name);
    for (dest, shared) in &spec.shared {
        let from = fixtures().join("shared").join(shared);
        let to = tmp.path().join(dest);
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
    }
    if !spec.vocab.is_empty() {
        let text = bpe_text();
        for tok in &spec.vocab {
            diffusion_hub::tokenizer::write_clip_vocab_files(
                &text,
                &bpe_gz(),
                &tmp.path().join(tok),
            )
            .unwrap_or_else(|e| panic!("vocab files for {name}/{tok}: {e}"));
        }
    }
    tmp
}

/// One seed, or one per image (diffusers' list of generators).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Seeds {
    One(u64),
    PerImage(Vec<u64>),
}

/// One entry of `cases.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// Folder under `pipelines/`.
    pub pipeline: String,
    /// The diffusers pipeline class that ran, e.g. `StableDiffusionImg2ImgPipeline`.
    pub class: String,
    /// The scheduler class swapped in with `Cls.from_config(pipe.scheduler.config)`;
    /// `None`: the folder's own scheduler.
    pub scheduler: Option<String>,
    /// The scheduler's config as it ran (`pipe.scheduler.config` minus
    /// `_use_default_values` / `_diffusers_version`; `_class_name` is the
    /// folder's). `from_config` keeps only the keys the folder's JSON sets;
    /// the swapped-in class fills the others with its own defaults. A non-finite
    /// float is a string (`"-inf"`: DPM-Solver's `lambda_min_clipped`).
    pub scheduler_config: Value,
    /// The call's keyword arguments as JSON (`image` / `mask_image`: PNG paths
    /// relative to `fixtures()`; `latents`: the string "latents", meaning the
    /// tensor of that name in the case file). `generator` and `output_type`
    /// are not in it: see `seeds` and `output`.
    pub kwargs: Value,
    pub seeds: Seeds,
    /// How many `randn_tensor` calls diffusers made (`noise.0` ..).
    pub noise_draws: usize,
    pub noise_shapes: Vec<Vec<usize>>,
    /// Caller chain of each draw inside the pipeline's `__call__`, e.g.
    /// `prepare_latents.retrieve_latents.sample` (the VAE posterior sample).
    pub noise_sources: Vec<String>,
    /// `images` (output_type "np", [N, H, W, 3] in [0, 1]) or `latents_out` (output_type "latent").
    pub output: String,
    pub output_shape: Vec<usize>,
    /// Further expected tensors: `latents_final` (the Stable Diffusion pipelines:
    /// the last step's latents, after the legacy inpaint blend, before the VAE
    /// decode; [N, 4, h, w]). The decoder ends in a GroupNorm that hides a wrong
    /// latent scale, so compare these too.
    pub extra_outputs: Vec<String>,
    /// Tokenizer folder -> prompt text -> transformers' padded (77) ids.
    pub token_ids: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
    /// Fraction of output values at 0 or 1 (clamped); absent for latent outputs.
    #[serde(default)]
    pub saturated_fraction: Option<f64>,
}

impl Case {
    /// A keyword argument, if the call passed it.
    pub fn kw(&self, key: &str) -> Option<&Value> {
        self.kwargs.get(key)
    }

    /// A string or list-of-strings keyword argument as a list (`prompt`, `negative_prompt`, ...).
    pub fn kw_strings(&self, key: &str) -> Option<Vec<String>> {
        match self.kw(key)? {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(items) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().expect("string item").to_string())
                    .collect(),
            ),
            other => panic!("{}: {key} is not a string or list: {other}", self.name),
        }
    }

    pub fn kw_f64(&self, key: &str) -> Option<f64> {
        self.kw(key).map(|v| v.as_f64().expect("number"))
    }

    pub fn kw_usize(&self, key: &str) -> Option<usize> {
        self.kw(key).map(|v| v.as_u64().expect("integer") as usize)
    }

    /// `fixtures()`-relative path kwargs (`image`, `mask_image`) made absolute.
    pub fn kw_path(&self, key: &str) -> Option<PathBuf> {
        self.kw(key)
            .map(|v| fixtures().join(v.as_str().expect("path string")))
    }

    pub fn tensors_path(&self) -> PathBuf {
        fixtures()
            .join("cases")
            .join(format!("{}.safetensors", self.name))
    }
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub diffusers: String,
    pub torch: String,
    pub cases: Vec<Case>,
}

pub fn manifest() -> Manifest {
    let path = fixtures().join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn cases() -> Vec<Case> {
    manifest().cases
}

/// The case by name (panics if absent, naming it).
pub fn case(name: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name} in cases.json"))
}

/// Every tensor of the case file (all f32): `noise.<i>`, `latents`, `images` /
/// `latents_out`, `latents_final`.
pub fn read_case_tensors(case: &Case) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    read_tensors(&case.tensors_path())
}

/// Every tensor of an f32 safetensors file, by name.
pub fn read_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(
                view.dtype(),
                safetensors::Dtype::F32,
                "{}: {name} is not f32",
                path.display()
            );
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// The recorded draws `noise.0`, `noise.1`, ... in call order.
pub fn noise_draws(case: &Case) -> Vec<(Vec<usize>, Vec<f32>)> {
    let mut tensors = read_case_tensors(case);
    (0..case.noise_draws)
        .map(|i| {
            tensors
                .remove(&format!("noise.{i}"))
                .unwrap_or_else(|| panic!("{}: no noise.{i}", case.name))
        })
        .collect()
}

pub fn mean_abs_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    assert!(!a.is_empty(), "empty tensors");
    (a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .sum::<f64>()
        / a.len() as f64) as f32
}

pub fn max_abs_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A PNG's width, height, channel count (1 = L, 3 = RGB, 4 = RGBA) and 8-bit samples.
pub fn load_png(path: &Path) -> (u32, u32, usize, Vec<u8>) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (w, h) = (img.width(), img.height());
    let channels = img.color().channel_count() as usize;
    (w, h, channels, img.into_bytes())
}
