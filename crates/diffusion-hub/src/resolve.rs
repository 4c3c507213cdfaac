//! Resolving a model name, as a diffusers user writes it, to files on disk.
//!
//! A name is a local diffusers folder, a single checkpoint file, or a Hub repo
//! id (`org/name`); see [`ModelSource::parse`]. Hub repos go through the
//! standard Hugging Face cache shared with Python (`$HF_HUB_CACHE`, by default
//! `$HF_HOME/hub` = `~/.cache/huggingface/hub`):
//!
//! ```text
//! models--{org}--{name}/refs/{revision}          the commit hash a branch or tag points to
//! models--{org}--{name}/snapshots/{hash}/{file}  the files of that commit (often symlinks into blobs/)
//! ```
//!
//! so a model downloaded by Python is used without a download, and one this
//! crate downloads (through `hf-hub`, which writes that same layout) is seen by
//! Python.
//!
//! Only the files the pipeline needs are fetched: `model_index.json`, then for
//! each component it lists, the component's config and its weights, chosen by
//! diffusers' rules:
//! - safetensors over PyTorch pickles: a `.bin` is never fetched for a component
//!   that has a `.safetensors` (diffusers decides this for the whole pipeline and,
//!   when one component lacks safetensors, falls back to `.bin` for all; here the
//!   choice is per component, which fetches less and loads the same tensors);
//! - a requested variant (`fp16`) is used where the component has it
//!   (`diffusion_pytorch_model.fp16.safetensors`, `model.fp16.safetensors`,
//!   shards `*.fp16-00001-of-00002.safetensors` with `*.safetensors.index.fp16.json`)
//!   and the component falls back to its non-variant files where it does not,
//!   reported in [`ResolvedModel::variant_fallbacks`]; if no component has the
//!   variant at all, that is an error, as in diffusers;
//! - a variant in another format does not beat the preferred format: with
//!   `diffusion_pytorch_model.fp16.bin` and `diffusion_pytorch_model.safetensors`,
//!   the safetensors file is used (diffusers filters by extension first, too);
//! - sharded weights are found through their index json, whose `weight_map`
//!   names the shards.
//!
//! Offline mode (`HF_HUB_OFFLINE=1`/`true`, or [`ResolveOptions::local_files_only`])
//! reads the cache only; a file that is not there is a [`ResolveError::NotCached`]
//! naming the file and the cache folder.
//!
//! Online, one request asks the Hub for the revision's commit and file list
//! (with each file's blob name). Each needed file not yet in that snapshot is
//! then linked to its blob when the cache already holds it (from another
//! commit), else downloaded from that commit (not the branch, which may move
//! meanwhile): a metadata probe, then the content, following the Hub's
//! redirect for LFS files and resuming a `.part` left by an interrupted
//! download. A branch's ref is written with its snapshot folder. The tests run
//! this path against a local server that answers as huggingface.co does
//! (`tests/support/mock_hub.rs`, `tests/download.rs`). Checked by hand, not
//! by the tests: Python's huggingface_hub 2.4 reads a cache written this way
//! (`scan_cache_dir` without warnings, `hf_hub_download(...,
//! local_files_only=True)` for two revisions).

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::model_index::{ComponentKind, ModelIndex, ModelIndexError};
use crate::torch_pickle::PickleOptions;
use crate::weights::{ShardIndex, Weights, WeightsError};

/// Extensions taken as single-file checkpoints (original LDM/SGM layouts).
/// (`safetensors` and [`crate::weights::PICKLE_EXTENSIONS`].)
pub const CHECKPOINT_EXTENSIONS: &[&str] = &["safetensors", "ckpt", "bin", "pt", "pth"];

/// Weight file stems, in order of preference: diffusers models, then transformers
/// models (`model.safetensors`, `pytorch_model.bin`).
const WEIGHT_STEMS: &[&str] = &["diffusion_pytorch_model", "model", "pytorch_model"];

/// Tokenizer files fetched when present (`tokenizer.json` or `vocab.json` +
/// `merges.txt` must be).
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "added_tokens.json",
];

/// Errors of this module; each names the model, file and folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name is empty or otherwise unusable.
    #[error("invalid model name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why.
        reason: String,
    },
    /// Not an existing path, and not a valid Hub repo id.
    #[error(
        "{id:?} is neither an existing local path nor a valid Hub repo id (`org/name`): {reason}"
    )]
    InvalidRepoId {
        /// The name given.
        id: String,
        /// What is wrong with it as a repo id.
        reason: String,
    },
    /// A name that is clearly a path does not exist.
    #[error("{path}: no such file or folder")]
    PathNotFound {
        /// The path.
        path: PathBuf,
    },
    /// A local folder with neither `model_index.json` nor `config.json`.
    #[error(
        "{path} is not a diffusers folder: it has neither model_index.json (a pipeline) nor config.json (a model)"
    )]
    NotAModelFolder {
        /// The folder.
        path: PathBuf,
    },
    /// A local file that is not a checkpoint.
    #[error(
        "{path} is not a checkpoint file (expected one of .safetensors, .ckpt, .bin, .pt, .pth)"
    )]
    UnsupportedFile {
        /// The file.
        path: PathBuf,
    },
    /// A single-file checkpoint where a diffusers layout is needed.
    #[error(
        "{path} is a single-file checkpoint; convert it to a diffusers folder first (diffusion-hub's `convert`)"
    )]
    SingleFileCheckpoint {
        /// The checkpoint.
        path: PathBuf,
    },
    /// The revision cannot name a ref in the cache.
    #[error("invalid revision {revision:?}: {reason}")]
    InvalidRevision {
        /// The revision given.
        revision: String,
        /// Why.
        reason: &'static str,
    },
    /// A file the model needs is missing from a local folder.
    #[error("{file} is missing from the local model folder {folder}")]
    MissingFile {
        /// The missing file.
        file: PathBuf,
        /// The model folder.
        folder: PathBuf,
    },
    /// Offline (or local-files-only) and the file is not in the cache.
    #[error(
        "{file} of {repo_id} (revision {revision}) is not in the cache folder {cache_dir} ({reason}), and downloads are off (HF_HUB_OFFLINE or local_files_only)"
    )]
    NotCached {
        /// The repo id.
        repo_id: String,
        /// The revision asked for.
        revision: String,
        /// The file (relative to the repo root).
        file: String,
        /// The repo's cache folder (`.../models--org--name`).
        cache_dir: PathBuf,
        /// What was missing (the ref, the snapshot, or the file itself).
        reason: String,
    },
    /// The file is not in the Hub repo.
    #[error("{file} is not in the Hub repo {repo_id} (revision {revision})")]
    NotInRepo {
        /// The repo id.
        repo_id: String,
        /// The revision.
        revision: String,
        /// The file (relative to the repo root).
        file: String,
    },
    /// A ref file in the cache does not hold a commit hash.
    #[error("{path} should hold a 40-hex commit hash but holds {content:?}")]
    CorruptRef {
        /// The ref file.
        path: PathBuf,
        /// What it holds (truncated).
        content: String,
    },
    /// A Hub request failed.
    #[error("Hub request for {what} of {repo_id} (revision {revision}) failed: {source}")]
    Hub {
        /// The repo id.
        repo_id: String,
        /// The revision.
        revision: String,
        /// The file, or `repo info`.
        what: String,
        /// hf-hub's error.
        source: Box<ApiError>,
    },
    /// A variant was asked for and no component has it.
    #[error(
        "no component of {source_name} has `{variant}` weights (e.g. diffusion_pytorch_model.{variant}.safetensors)"
    )]
    VariantNotFound {
        /// The variant.
        variant: String,
        /// The model, as named.
        source_name: String,
    },
    /// Reading a folder or file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `model_index.json` is malformed.
    #[error(transparent)]
    ModelIndex(#[from] ModelIndexError),
    /// A shard index is malformed.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// A model as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hub repo id, `org/name`.
    Hub {
        /// The repo id.
        repo_id: String,
    },
    /// A local diffusers folder.
    LocalFolder {
        /// The folder.
        path: PathBuf,
        /// Whether it holds `model_index.json` (a pipeline) rather than only
        /// `config.json` (a single model).
        has_model_index: bool,
    },
    /// A single checkpoint file, returned as such (conversion is separate).
    Checkpoint {
        /// The file.
        path: PathBuf,
    },
}

impl ModelSource {
    /// Classifies a name: an existing folder (with `model_index.json` or
    /// `config.json`), an existing checkpoint file, or else a Hub repo id, which
    /// must be `org/name`. A name that looks like a path (starts with `/`, `.`
    /// or `~`, or has a checkpoint extension) but does not exist is
    /// [`ResolveError::PathNotFound`] rather than a confusing repo-id error.
    pub fn parse(name: &str) -> Result<Self, ResolveError> {
        if name.trim().is_empty() {
            return Err(ResolveError::InvalidName {
                name: name.to_string(),
                reason: "empty".into(),
            });
        }
        let path = Path::new(name);
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                if path.join("model_index.json").is_file() {
                    Ok(ModelSource::LocalFolder {
                        path: path.to_path_buf(),
                        has_model_index: true,
                    })
                } else if path.join("config.json").is_file() {
                    Ok(ModelSource::LocalFolder {
                        path: path.to_path_buf(),
                        has_model_index: false,
                    })
                } else {
                    Err(ResolveError::NotAModelFolder {
                        path: path.to_path_buf(),
                    })
                }
            }
            Ok(_) => {
                if has_checkpoint_extension(path) {
                    Ok(ModelSource::Checkpoint {
                        path: path.to_path_buf(),
                    })
                } else {
                    Err(ResolveError::UnsupportedFile {
                        path: path.to_path_buf(),
                    })
                }
            }
            Err(_) => {
                let looks_like_path = name.starts_with(['/', '.', '~', '\\'])
                    || name.contains('\\')
                    || name.matches('/').count() > 1
                    || has_checkpoint_extension(path);
                if looks_like_path {
                    return Err(ResolveError::PathNotFound {
                        path: path.to_path_buf(),
                    });
                }
                validate_repo_id(name)?;
                Ok(ModelSource::Hub {
                    repo_id: name.to_string(),
                })
            }
        }
    }

    /// A short display name (repo id or path).
    pub fn display_name(&self) -> String {
        match self {
            ModelSource::Hub { repo_id } => repo_id.clone(),
            ModelSource::LocalFolder { path, .. } | ModelSource::Checkpoint { path } => {
                path.display().to_string()
            }
        }
    }
}

fn has_checkpoint_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CHECKPOINT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Checks a Hub repo id: `org/name`, each part of ASCII letters, digits, `-`,
/// `_`, `.`, starting and ending with a letter, digit or `_`, no `--` or `..`,
/// not ending in `.git`, at most 96 characters (huggingface_hub's rules, with
/// the namespace required: a bare word is far more often a mistyped folder than
/// one of the few legacy namespace-less repos).
pub fn validate_repo_id(id: &str) -> Result<(), ResolveError> {
    let fail = |reason: &str| {
        Err(ResolveError::InvalidRepoId {
            id: id.to_string(),
            reason: reason.to_string(),
        })
    };
    if id.len() > 96 {
        return fail("longer than 96 characters");
    }
    let Some((org, name)) = id.split_once('/') else {
        return fail("expected `org/name`");
    };
    if name.contains('/') {
        return fail("more than one `/`");
    }
    for part in [org, name] {
        if part.is_empty() {
            return fail("empty org or name");
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return fail(&format!("character {c:?} is not allowed"));
        }
        let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !edge_ok(part.chars().next()) || !edge_ok(part.chars().last()) {
            return fail("org and name must start and end with a letter, digit or `_`");
        }
    }
    if id.contains("--") || id.contains("..") {
        return fail("`--` and `..` are not allowed");
    }
    if id.ends_with(".git") {
        return fail("must not end in `.git`");
    }
    Ok(())
}

/// Whether a revision is a full commit hash (used directly, no ref lookup).
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether an environment value means "true" to huggingface_hub (`1`, `ON`, `YES`, `TRUE`, any case).
pub fn env_flag(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

/// How to resolve a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Branch, tag or 40-hex commit hash (default `main`).
    pub revision: String,
    /// Weight variant such as `fp16`.
    pub variant: Option<String>,
    /// Never download; use the cache (or the local folder) only.
    pub local_files_only: bool,
    /// The hub cache folder (`$HF_HUB_CACHE`), holding `models--org--name`.
    pub cache_dir: PathBuf,
    /// Hub endpoint (`$HF_ENDPOINT`); `None` for huggingface.co.
    pub endpoint: Option<String>,
    /// Access token (`$HF_TOKEN`); `None` uses the cache's token file, as hf-hub does.
    pub token: Option<String>,
    /// Show download progress bars.
    pub progress: bool,
    /// Components not to resolve (e.g. `safety_checker` when it will not be used).
    pub skip_components: BTreeSet<String>,
}

impl ResolveOptions {
    /// Defaults for a given cache folder, ignoring the environment: revision
    /// `main`, no variant, downloads allowed, no progress bars.
    pub fn with_cache_dir(cache_dir: impl Into<PathBuf>) -> Self {
        ResolveOptions {
            revision: "main".into(),
            variant: None,
            local_files_only: false,
            cache_dir: cache_dir.into(),
            endpoint: None,
            token: None,
            progress: false,
            skip_components: BTreeSet::new(),
        }
    }

    /// Options from the process environment (see [`ResolveOptions::from_env_vars`]),
    /// with progress bars only when stderr is a terminal.
    pub fn from_env() -> Self {
        let mut options = Self::from_env_vars(|key| std::env::var(key).ok());
        options.progress &= std::io::stderr().is_terminal();
        options
    }

    /// Options from an environment given as a lookup, so that tests need not
    /// mutate the process environment. Reads, as huggingface_hub does:
    /// `HF_HUB_CACHE` (or legacy `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`,
    /// with `HF_HOME` defaulting to `$XDG_CACHE_HOME/huggingface`, else
    /// `~/.cache/huggingface` (`~` from `HOME`, else `USERPROFILE`);
    /// `HF_HUB_OFFLINE`; `HF_ENDPOINT`; `HF_TOKEN`; `HF_HUB_DISABLE_PROGRESS_BARS`.
    pub fn from_env_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let nonempty = |key: &str| get(key).filter(|v| !v.is_empty());
        let home = nonempty("HOME").or_else(|| nonempty("USERPROFILE"));
        let expand = |p: String| -> PathBuf {
            match (p.strip_prefix('~'), &home) {
                (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with(['/', '\\']) => {
                    PathBuf::from(format!("{home}{rest}"))
                }
                _ => PathBuf::from(p),
            }
        };
        let hf_home = match nonempty("HF_HOME") {
            Some(h) => expand(h),
            None => {
                let cache = nonempty("XDG_CACHE_HOME")
                    .map(expand)
                    .unwrap_or_else(|| expand("~/.cache".into()));
                cache.join("huggingface")
            }
        };
        let cache_dir = nonempty("HF_HUB_CACHE")
            .or_else(|| nonempty("HUGGINGFACE_HUB_CACHE"))
            .map(expand)
            .unwrap_or_else(|| hf_home.join("hub"));
        let mut options = Self::with_cache_dir(cache_dir);
        options.local_files_only = env_flag(get("HF_HUB_OFFLINE").as_deref());
        options.endpoint = nonempty("HF_ENDPOINT");
        options.token = nonempty("HF_TOKEN");
        options.progress = !env_flag(get("HF_HUB_DISABLE_PROGRESS_BARS").as_deref());
        options
    }

    /// Sets the revision.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// Sets the variant.
    pub fn variant(mut self, variant: impl Into<String>) -> Self {
        self.variant = Some(variant.into());
        self
    }

    /// Sets local-files-only mode.
    pub fn local_files_only(mut self, yes: bool) -> Self {
        self.local_files_only = yes;
        self
    }

    /// The cache folder of one repo: `{cache_dir}/models--{org}--{name}`.
    pub fn repo_cache_dir(&self, repo_id: &str) -> PathBuf {
        self.cache_dir
            .join(Repo::new(repo_id.to_string(), RepoType::Model).folder_name())
    }
}

/// The weight format chosen for a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `.safetensors` (single or sharded).
    Safetensors,
    /// PyTorch pickle `.bin` (only where no safetensors exist).
    PytorchBin,
}

/// The files of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedComponent {
    /// The component name (`unet`, ...), empty for a single model at the repo root.
    pub name: String,
    /// What kind of folder it is.
    pub kind: ComponentKind,
    /// The component folder.
    pub dir: PathBuf,
    /// Its config: `config.json`, `scheduler_config.json`, `preprocessor_config.json`,
    /// or `tokenizer_config.json` (absent only for a tokenizer without one).
    pub config: Option<PathBuf>,
    /// Other files fetched (tokenizer files).
    pub files: Vec<PathBuf>,
    /// Weight files; several are the shards of `weight_index`, in shard order.
    pub weights: Vec<PathBuf>,
    /// The shard index, for sharded weights.
    pub weight_index: Option<PathBuf>,
    /// The weight format, for components with weights.
    pub weight_format: Option<WeightFormat>,
    /// Whether the requested variant's weights are the ones used.
    pub used_variant: bool,
}

impl ResolvedComponent {
    /// Opens the weights (safetensors or `.bin`, single or sharded; see [`Weights::open`]).
    pub fn open_weights(&self) -> Result<Weights, WeightsError> {
        self.open_weights_with(&PickleOptions::default())
    }

    /// [`ResolvedComponent::open_weights`], reading `.bin` pickles as `pickle` says.
    pub fn open_weights_with(&self, pickle: &PickleOptions) -> Result<Weights, WeightsError> {
        match (&self.weight_index, self.weights.first()) {
            (Some(index), _) => Weights::open_with(index, pickle),
            (None, Some(file)) => Weights::open_with(file, pickle),
            (None, None) => Err(WeightsError::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("component `{}` has no weight files", self.name),
                ),
            }),
        }
    }
}

/// A resolved diffusers pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModel {
    /// What was resolved.
    pub source: ModelSource,
    /// The local folder or cache snapshot folder holding `model_index.json`.
    pub root: PathBuf,
    /// The commit hash, for Hub repos.
    pub commit: Option<String>,
    /// The parsed `model_index.json`.
    pub model_index: ModelIndex,
    /// Resolved components by name (known, present and not skipped).
    pub components: BTreeMap<String, ResolvedComponent>,
    /// The variant asked for.
    pub variant: Option<String>,
    /// Components that lack the variant and use their non-variant weights.
    pub variant_fallbacks: Vec<String>,
    /// Components listed in `model_index.json` that this crate does not know,
    /// left unresolved (nothing is fetched for them).
    pub unknown_components: Vec<String>,
}

/// What a name resolved to.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// A pipeline (`model_index.json`).
    Pipeline(Box<ResolvedModel>),
    /// A single model (`config.json` + weights at the root).
    Model(ResolvedComponent),
    /// A single checkpoint file, to convert.
    Checkpoint(PathBuf),
}

/// Resolves a name (see [`ModelSource::parse`]) into a pipeline, single model or checkpoint.
pub fn resolve(name: &str, options: &ResolveOptions) -> Result<Resolved, ResolveError> {
    let source = ModelSource::parse(name)?;
    if let ModelSource::Checkpoint { path } = &source {
        return Ok(Resolved::Checkpoint(path.clone()));
    }
    let store = Store::open(&source, options, "model_index.json")?;
    if store.has("model_index.json") || !store.has("config.json") {
        resolve_in_store(source, store, options).map(|m| Resolved::Pipeline(Box::new(m)))
    } else {
        let mut fallbacks = Vec::new();
        let component = resolve_component(
            &store,
            "",
            ComponentKind::Model,
            "diffusion_pytorch_model",
            options.variant.as_deref(),
            &mut fallbacks,
        )?;
        check_variant_used(options, &source, std::slice::from_ref(&component))?;
        Ok(Resolved::Model(component))
    }
}

/// Resolves a diffusers pipeline (`model_index.json` and its components).
pub fn resolve_pipeline(
    source: &ModelSource,
    options: &ResolveOptions,
) -> Result<ResolvedModel, ResolveError> {
    if let ModelSource::Checkpoint { path } = source {
        return Err(ResolveError::SingleFileCheckpoint { path: path.clone() });
    }
    let store = Store::open(source, options, "model_index.json")?;
    resolve_in_store(source.clone(), store, options)
}

/// One file of a Hub repo or local folder (diffusers' `weight_name=`, e.g.
/// a LoRA's `pytorch_lora_weights.safetensors`): its path, downloaded into
/// the HF cache alone when it is not there (offline: from the cache). A
/// single-file source is that file.
pub fn resolve_file(
    source: &ModelSource,
    file: &str,
    options: &ResolveOptions,
) -> Result<PathBuf, ResolveError> {
    if let ModelSource::Checkpoint { path } = source {
        return Ok(path.clone());
    }
    let rel = file.trim_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|p| p == ".." || p == "." || p.is_empty())
    {
        return Err(ResolveError::InvalidName {
            name: file.to_string(),
            reason: "a file in a repo is a relative path without `.` or `..`".into(),
        });
    }
    Store::open(source, options, rel)?.fetch(rel)
}

/// Resolves one model folder: `config.json` and weights at the root, or in
/// `subfolder` (e.g. `vae` of a pipeline repo, as diffusers' `subfolder=`).
pub fn resolve_model(
    source: &ModelSource,
    subfolder: Option<&str>,
    options: &ResolveOptions,
) -> Result<ResolvedComponent, ResolveError> {
    if let ModelSource::Checkpoint { path } = source {
        return Err(ResolveError::SingleFileCheckpoint { path: path.clone() });
    }
    let sub = subfolder.unwrap_or("").trim_matches('/');
    if sub.split('/').any(|p| p == ".." || p == ".") {
        return Err(ResolveError::InvalidName {
            name: sub.to_string(),
            reason: "a subfolder must not contain `.` or `..`".into(),
        });
    }
    let first = join_rel(sub, "config.json");
    let store = Store::open(source, options, &first)?;
    let mut fallbacks = Vec::new();
    let component = resolve_component(
        &store,
        sub,
        ComponentKind::Model,
        "diffusion_pytorch_model",
        options.variant.as_deref(),
        &mut fallbacks,
    )?;
    check_variant_used(options, source, std::slice::from_ref(&component))?;
    Ok(component)
}

fn resolve_in_store(
    source: ModelSource,
    store: Store,
    options: &ResolveOptions,
) -> Result<ResolvedModel, ResolveError> {
    let index_path = store.fetch("model_index.json")?;
    let model_index = ModelIndex::from_file(&index_path)?;
    let variant = options.variant.as_deref();
    let mut components = BTreeMap::new();
    let mut variant_fallbacks = Vec::new();
    for (name, component) in model_index.known_components() {
        if options.skip_components.contains(name) {
            continue;
        }
        let stem = if component.library == "transformers" {
            "model"
        } else {
            "diffusion_pytorch_model"
        };
        let resolved = resolve_component(
            &store,
            name,
            component.kind(name),
            stem,
            variant,
            &mut variant_fallbacks,
        )?;
        components.insert(name.to_string(), resolved);
    }
    let list: Vec<ResolvedComponent> = components.values().cloned().collect();
    check_variant_used(options, &source, &list)?;
    Ok(ResolvedModel {
        root: store.root().to_path_buf(),
        commit: store.commit().map(str::to_string),
        unknown_components: model_index.unknown.clone(),
        source,
        model_index,
        components,
        variant: options.variant.clone(),
        variant_fallbacks,
    })
}

/// diffusers raises when a variant is asked for and no weight file has it.
fn check_variant_used(
    options: &ResolveOptions,
    source: &ModelSource,
    components: &[ResolvedComponent],
) -> Result<(), ResolveError> {
    let Some(variant) = &options.variant else {
        return Ok(());
    };
    let has_weights = components.iter().any(|c| !c.weights.is_empty());
    if has_weights && !components.iter().any(|c| c.used_variant) {
        return Err(ResolveError::VariantNotFound {
            variant: variant.clone(),
            source_name: source.display_name(),
        });
    }
    Ok(())
}

fn join_rel(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

/// The weight files chosen for a component, as repo-relative paths.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WeightChoice {
    index: Option<String>,
    single: Option<String>,
    format: WeightFormat,
    variant: bool,
}

/// diffusers' choice of weight files in one folder (see the module docs):
/// safetensors before `.bin`; within a format, the variant before the plain
/// files; a shard index before a single file; diffusers' stem before
/// transformers' ones.
fn choose_weights(
    files: &BTreeSet<String>,
    dir: &str,
    variant: Option<&str>,
) -> Option<WeightChoice> {
    let formats = [
        ("safetensors", WeightFormat::Safetensors),
        ("bin", WeightFormat::PytorchBin),
    ];
    let variants: Vec<Option<&str>> = match variant {
        Some(v) => vec![Some(v), None],
        None => vec![None],
    };
    for (ext, format) in formats {
        for &v in &variants {
            for stem in WEIGHT_STEMS {
                let (indexes, single) = match v {
                    Some(v) => (
                        vec![
                            format!("{stem}.{ext}.index.{v}.json"),
                            format!("{stem}.{ext}.{v}.index.json"),
                        ],
                        format!("{stem}.{v}.{ext}"),
                    ),
                    None => (
                        vec![format!("{stem}.{ext}.index.json")],
                        format!("{stem}.{ext}"),
                    ),
                };
                let choice = |index: Option<String>, single: Option<String>| WeightChoice {
                    index,
                    single,
                    format,
                    variant: v.is_some(),
                };
                if let Some(index) = indexes
                    .iter()
                    .map(|i| join_rel(dir, i))
                    .find(|i| files.contains(i))
                {
                    return Some(choice(Some(index), None));
                }
                let single = join_rel(dir, &single);
                if files.contains(&single) {
                    return Some(choice(None, Some(single)));
                }
            }
        }
    }
    None
}

/// `weight_stem` is the name a missing weight file is reported under
/// (`model` for transformers' components, `diffusion_pytorch_model` else).
fn resolve_component(
    store: &Store,
    name: &str,
    kind: ComponentKind,
    weight_stem: &str,
    variant: Option<&str>,
    variant_fallbacks: &mut Vec<String>,
) -> Result<ResolvedComponent, ResolveError> {
    let dir = name;
    let mut component = ResolvedComponent {
        name: name.to_string(),
        kind,
        dir: store.root().join(dir),
        config: None,
        files: Vec::new(),
        weights: Vec::new(),
        weight_index: None,
        weight_format: None,
        used_variant: false,
    };
    match kind {
        ComponentKind::Scheduler => {
            component.config = Some(store.fetch(&join_rel(dir, "scheduler_config.json"))?);
        }
        ComponentKind::ImageProcessor => {
            component.config = Some(store.fetch(&join_rel(dir, "preprocessor_config.json"))?);
        }
        ComponentKind::Tokenizer => {
            let has = |f: &str| store.has(&join_rel(dir, f));
            let complete = has("tokenizer.json") || (has("vocab.json") && has("merges.txt"));
            if !complete {
                let missing = if has("vocab.json") {
                    "merges.txt"
                } else {
                    "vocab.json"
                };
                return Err(store.missing(&join_rel(dir, missing)));
            }
            for file in TOKENIZER_FILES {
                if has(file) {
                    let path = store.fetch(&join_rel(dir, file))?;
                    if *file == "tokenizer_config.json" {
                        component.config = Some(path.clone());
                    }
                    component.files.push(path);
                }
            }
        }
        ComponentKind::Model => {
            component.config = Some(store.fetch(&join_rel(dir, "config.json"))?);
            let Some(choice) = choose_weights(store.files(), dir, variant) else {
                let expected = match variant {
                    Some(v) => format!("{weight_stem}.{v}.safetensors"),
                    None => format!("{weight_stem}.safetensors"),
                };
                return Err(store.missing(&join_rel(dir, &expected)));
            };
            if let Some(index_rel) = &choice.index {
                let index_path = store.fetch(index_rel)?;
                let index = ShardIndex::from_file(&index_path)?;
                for shard in index.shards() {
                    let rel = join_rel(dir, shard);
                    if !store.has(&rel) {
                        return Err(store.missing(&rel));
                    }
                    component.weights.push(store.fetch(&rel)?);
                }
                component.weight_index = Some(index_path);
            } else if let Some(single) = &choice.single {
                component.weights.push(store.fetch(single)?);
            }
            component.weight_format = Some(choice.format);
            component.used_variant = choice.variant;
            if variant.is_some() && !choice.variant {
                variant_fallbacks.push(name.to_string());
            }
        }
    }
    Ok(component)
}

/// Where a model's files come from.
enum Store {
    /// A local folder.
    Local {
        root: PathBuf,
        files: BTreeSet<String>,
    },
    /// A cache snapshot, read only.
    Cached {
        repo: RepoRef,
        commit: String,
        snapshot: PathBuf,
        files: BTreeSet<String>,
    },
    /// The Hub, through hf-hub, downloading what the cache lacks.
    Online {
        repo: RepoRef,
        commit: String,
        snapshot: PathBuf,
        files: BTreeSet<String>,
        /// Per file, the name of its blob in the cache (the LFS sha256, or
        /// the git blob id), when the Hub said: a blob already cached (from
        /// another commit) is linked, not downloaded again.
        blobs: BTreeMap<String, String>,
        /// Pinned to `commit`, so that every file comes from the same commit
        /// even if the branch moves during the resolution.
        api: Box<ApiRepo>,
    },
}

struct RepoRef {
    repo_id: String,
    revision: String,
    cache_dir: PathBuf,
}

impl Store {
    /// `first` names the first file the caller needs, for the error when the
    /// repo is not cached at all.
    fn open(
        source: &ModelSource,
        options: &ResolveOptions,
        first: &str,
    ) -> Result<Self, ResolveError> {
        match source {
            ModelSource::Checkpoint { path } => {
                Err(ResolveError::SingleFileCheckpoint { path: path.clone() })
            }
            ModelSource::LocalFolder { path, .. } => Ok(Store::Local {
                files: list_files(path)?,
                root: path.clone(),
            }),
            ModelSource::Hub { repo_id } => {
                validate_revision(&options.revision)?;
                let repo = RepoRef {
                    repo_id: repo_id.clone(),
                    revision: options.revision.clone(),
                    cache_dir: options.repo_cache_dir(repo_id),
                };
                if options.local_files_only {
                    return open_cached(repo, first);
                }
                open_online(repo, options, first)
            }
        }
    }

    fn files(&self) -> &BTreeSet<String> {
        match self {
            Store::Local { files, .. }
            | Store::Cached { files, .. }
            | Store::Online { files, .. } => files,
        }
    }

    fn has(&self, rel: &str) -> bool {
        self.files().contains(rel)
    }

    fn root(&self) -> &Path {
        match self {
            Store::Local { root, .. } => root,
            Store::Cached { snapshot, .. } | Store::Online { snapshot, .. } => snapshot,
        }
    }

    fn commit(&self) -> Option<&str> {
        match self {
            Store::Local { .. } => None,
            Store::Cached { commit, .. } | Store::Online { commit, .. } => Some(commit),
        }
    }

    fn missing(&self, rel: &str) -> ResolveError {
        match self {
            Store::Local { root, .. } => ResolveError::MissingFile {
                file: root.join(rel),
                folder: root.clone(),
            },
            Store::Cached { repo, commit, .. } => ResolveError::NotCached {
                repo_id: repo.repo_id.clone(),
                revision: repo.revision.clone(),
                file: rel.to_string(),
                cache_dir: repo.cache_dir.clone(),
                reason: format!("not in snapshot {commit}"),
            },
            Store::Online { repo, .. } => ResolveError::NotInRepo {
                repo_id: repo.repo_id.clone(),
                revision: repo.revision.clone(),
                file: rel.to_string(),
            },
        }
    }

    fn fetch(&self, rel: &str) -> Result<PathBuf, ResolveError> {
        let local = self.root().join(rel);
        match self {
            Store::Local { .. } | Store::Cached { .. } => {
                if self.has(rel) && local.is_file() {
                    Ok(local)
                } else {
                    Err(self.missing(rel))
                }
            }
            Store::Online {
                repo,
                commit,
                api,
                blobs,
                ..
            } => {
                if !self.has(rel) {
                    return Err(self.missing(rel));
                }
                if local.is_file() {
                    return Ok(local);
                }
                let hub_error = |source: ApiError| ResolveError::Hub {
                    repo_id: repo.repo_id.clone(),
                    revision: repo.revision.clone(),
                    what: rel.to_string(),
                    source: Box::new(source),
                };
                if let Some(blob) = blobs.get(rel) {
                    let blob = repo.cache_dir.join("blobs").join(blob);
                    if blob.is_file() {
                        link_blob(&blob, &local).map_err(|e| hub_error(e.into()))?;
                        return Ok(local);
                    }
                }
                let path = api.download(rel).map_err(hub_error)?;
                // hf-hub records the pinned commit as a ref of its own name,
                // which huggingface_hub never writes (not even when the
                // revision asked for is that hash): remove it.
                let _ = std::fs::remove_file(repo.cache_dir.join("refs").join(commit));
                Ok(path)
            }
        }
    }
}

/// Links `pointer` (a snapshot file) to an existing cache blob with a
/// relative symlink, as huggingface_hub does (a copy where symlinks are not
/// available).
fn link_blob(blob: &Path, pointer: &Path) -> std::io::Result<()> {
    if let Some(parent) = pointer.parent() {
        std::fs::create_dir_all(parent)?;
    }
    #[cfg(unix)]
    {
        // `pointer` is `snapshots/<commit>/<rel>`, `blob` is `blobs/<name>`
        // of the same repo folder.
        let repo_dir = blob
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        let depth = pointer
            .strip_prefix(repo_dir)
            .map(|p| p.components().count())
            .unwrap_or(1);
        let mut target = PathBuf::new();
        for _ in 1..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(target, pointer)
    }
    #[cfg(not(unix))]
    {
        std::fs::copy(blob, pointer).map(|_| ())
    }
}

fn validate_revision(revision: &str) -> Result<(), ResolveError> {
    let fail = |reason| {
        Err(ResolveError::InvalidRevision {
            revision: revision.to_string(),
            reason,
        })
    };
    if revision.is_empty() {
        return fail("empty");
    }
    if revision.starts_with('/') || revision.contains('\\') || revision.contains('\0') {
        return fail("must be a branch, tag or commit hash");
    }
    if revision
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return fail("empty, `.` or `..` path segment");
    }
    Ok(())
}

/// Opens the cached snapshot of `repo.revision` without touching the network.
fn open_cached(repo: RepoRef, first: &str) -> Result<Store, ResolveError> {
    let not_cached = |repo: &RepoRef, reason: String| ResolveError::NotCached {
        repo_id: repo.repo_id.clone(),
        revision: repo.revision.clone(),
        file: first.to_string(),
        cache_dir: repo.cache_dir.clone(),
        reason,
    };
    let commit = if is_commit_hash(&repo.revision) {
        repo.revision.clone()
    } else {
        let ref_path = repo.cache_dir.join("refs").join(&repo.revision);
        match std::fs::read_to_string(&ref_path) {
            Ok(content) => {
                let hash = content.trim();
                if !is_commit_hash(hash) {
                    return Err(ResolveError::CorruptRef {
                        path: ref_path,
                        content: hash.chars().take(80).collect(),
                    });
                }
                hash.to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let reason = format!("no refs/{}", repo.revision);
                return Err(not_cached(&repo, reason));
            }
            Err(source) => {
                return Err(ResolveError::Io {
                    path: ref_path,
                    source,
                });
            }
        }
    };
    let snapshot = repo.cache_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        let reason = format!("no snapshots/{commit}");
        return Err(not_cached(&repo, reason));
    }
    Ok(Store::Cached {
        files: list_files(&snapshot)?,
        repo,
        commit,
        snapshot,
    })
}

/// Asks the Hub for the file list and commit of `repo.revision`; downloads
/// happen later, per needed file. When the Hub cannot be reached but the cache
/// holds the revision, the cache is used (as huggingface_hub does).
fn open_online(
    repo: RepoRef,
    options: &ResolveOptions,
    first: &str,
) -> Result<Store, ResolveError> {
    let mut builder = ApiBuilder::from_cache(Cache::new(options.cache_dir.clone()))
        .with_progress(options.progress);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if options.token.is_some() {
        builder = builder.with_token(options.token.clone());
    }
    let hub_error = |repo: &RepoRef, source: ApiError| ResolveError::Hub {
        repo_id: repo.repo_id.clone(),
        revision: repo.revision.clone(),
        what: "repo info".into(),
        source: Box::new(source),
    };
    let api = builder.build().map_err(|e| hub_error(&repo, e))?;
    let hf_repo = Repo::with_revision(repo.repo_id.clone(), RepoType::Model, repo.revision.clone());
    // The file list with each file's blob name (`blobs=true`), in one request.
    let info = api
        .repo(hf_repo.clone())
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| ApiError::from(Box::new(e)))
        .and_then(|answer| answer.into_json::<HubRepoInfo>().map_err(ApiError::from));
    let info = match info {
        Ok(info) => info,
        Err(e) => {
            // Unreachable Hub: fall back to the cache when it has the revision.
            let (repo_id, revision) = (repo.repo_id.clone(), repo.revision.clone());
            return open_cached(repo, first).map_err(|_| ResolveError::Hub {
                repo_id,
                revision,
                what: "repo info".into(),
                source: Box::new(e),
            });
        }
    };
    if !is_commit_hash(&info.sha) {
        return Err(ResolveError::CorruptRef {
            path: PathBuf::from(format!("(Hub answer for {})", repo.repo_id)),
            content: info.sha.chars().take(80).collect(),
        });
    }
    let snapshot = repo.cache_dir.join("snapshots").join(&info.sha);
    if !is_commit_hash(&repo.revision) {
        // Record the branch so that later offline runs (here or in Python) find
        // the snapshot; a read-only cache only loses that convenience. The
        // snapshot folder is made with it, so that the ref never points at
        // nothing (huggingface_hub's cache scan calls that corrupt).
        if std::fs::create_dir_all(&snapshot).is_ok() {
            let _ = Cache::new(options.cache_dir.clone())
                .repo(hf_repo)
                .create_ref(&info.sha);
        }
    }
    let mut files = BTreeSet::new();
    let mut blobs = BTreeMap::new();
    for sibling in info.siblings {
        let blob = sibling.lfs.map(|l| l.sha256).or(sibling.blob_id);
        // Blob names become file names: only plain hex digests are used.
        if let Some(blob) = blob
            .filter(|b| (40..=64).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            blobs.insert(sibling.rfilename.clone(), blob);
        }
        files.insert(sibling.rfilename);
    }
    let pinned = Repo::with_revision(repo.repo_id.clone(), RepoType::Model, info.sha.clone());
    Ok(Store::Online {
        repo,
        commit: info.sha,
        snapshot,
        files,
        blobs,
        api: Box::new(api.repo(pinned)),
    })
}

/// The Hub's answer to `GET /api/models/{repo}/revision/{rev}?blobs=true`,
/// the fields used.
#[derive(Debug, serde::Deserialize)]
struct HubRepoInfo {
    sha: String,
    siblings: Vec<HubSibling>,
}

#[derive(Debug, serde::Deserialize)]
struct HubSibling {
    rfilename: String,
    /// The git blob id: the ETag, and so the cache blob name, of a small file.
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    /// For LFS files: their sha256, the cache blob name.
    lfs: Option<HubLfs>,
}

#[derive(Debug, serde::Deserialize)]
struct HubLfs {
    sha256: String,
}

/// Repo-relative paths (`/`-separated) of the regular files (or symlinks to
/// them) under `root`, three levels deep: root files, component files, and one
/// more level for nested layouts. Dangling symlinks (interrupted downloads)
/// are left out, so they read as missing.
fn list_files(root: &Path) -> Result<BTreeSet<String>, ResolveError> {
    fn walk(
        dir: &Path,
        prefix: &str,
        depth: usize,
        out: &mut BTreeSet<String>,
    ) -> Result<(), ResolveError> {
        let entries = std::fs::read_dir(dir).map_err(|source| ResolveError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ResolveError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = entry.path();
            let rel = join_rel(prefix, &name);
            // `metadata` follows symlinks, as the HF cache needs.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    out.insert(rel);
                }
                Ok(m) if m.is_dir() && depth > 1 && !name.starts_with('.') => {
                    walk(&path, &rel, depth - 1, out)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(root, "", 3, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[&str]) -> BTreeSet<String> {
        files.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn checkpoint_extensions_are_safetensors_and_the_pickles() {
        let mut want: Vec<&str> = crate::weights::PICKLE_EXTENSIONS.to_vec();
        want.push("safetensors");
        want.sort();
        let mut got = CHECKPOINT_EXTENSIONS.to_vec();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn safetensors_beat_a_bin_variant() {
        let files = set(&[
            "unet/diffusion_pytorch_model.fp16.bin",
            "unet/diffusion_pytorch_model.safetensors",
        ]);
        let c = choose_weights(&files, "unet", Some("fp16")).unwrap();
        assert_eq!(
            c.single.as_deref(),
            Some("unet/diffusion_pytorch_model.safetensors")
        );
        assert!(!c.variant);
    }

    #[test]
    fn legacy_variant_index_is_found() {
        let files = set(&["te/model.safetensors.fp16.index.json"]);
        let c = choose_weights(&files, "te", Some("fp16")).unwrap();
        assert_eq!(
            c.index.as_deref(),
            Some("te/model.safetensors.fp16.index.json")
        );
        assert!(c.variant);
    }

    #[test]
    fn no_weights_is_none() {
        assert_eq!(
            choose_weights(&set(&["unet/config.json"]), "unet", None),
            None
        );
    }

    #[test]
    fn revisions() {
        assert!(validate_revision("main").is_ok());
        assert!(validate_revision("refs/pr/1").is_ok());
        assert!(validate_revision("../x").is_err());
        assert!(validate_revision("").is_err());
        assert!(validate_revision("/etc").is_err());
        assert!(is_commit_hash(&"a".repeat(40)));
        assert!(!is_commit_hash(&"A".repeat(40)));
        assert!(!is_commit_hash("main"));
    }
}
