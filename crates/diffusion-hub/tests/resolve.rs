//! Resolution against HF-cache-shaped folders built by the tests
//! (`models--org--name/refs/main`, `snapshots/<hash>/...` symlinked into
//! `blobs/`), and against plain local folders. No test touches the network:
//! every Hub resolution runs with `local_files_only`, and options are passed
//! explicitly rather than through the process environment.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use diffusion_hub::model_index::ComponentKind;
use diffusion_hub::resolve::{
    ModelSource, ResolveError, ResolveOptions, Resolved, WeightFormat, resolve, resolve_model,
    resolve_pipeline, validate_repo_id,
};
use safetensors::tensor::TensorView;

const REPO: &str = "test-org/tiny-sd";
const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A safetensors file holding one F32 tensor `name` filled with `value`.
fn st(name: &str, value: f32) -> Vec<u8> {
    let data: Vec<u8> = [value, value]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    safetensors::serialize([(name, view)], None).unwrap()
}

/// A fake HF hub cache holding one repo.
struct Cache {
    _tmp: tempfile::TempDir,
    hub: PathBuf,
    repo_dir: PathBuf,
}

impl Cache {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        let repo_dir = hub.join(format!("models--{}", REPO.replace('/', "--")));
        std::fs::create_dir_all(&repo_dir).unwrap();
        Cache {
            _tmp: tmp,
            hub,
            repo_dir,
        }
    }

    fn set_ref(&self, name: &str, commit: &str) {
        let path = self.repo_dir.join("refs").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, commit).unwrap();
    }

    /// Writes `bytes` as a blob and links `snapshots/<commit>/<rel>` to it with a
    /// relative symlink, as huggingface_hub does.
    fn add(&self, commit: &str, rel: &str, bytes: &[u8]) {
        let mut h = DefaultHasher::new();
        (rel, bytes).hash(&mut h);
        let blob_name = format!("{:016x}", h.finish());
        let blob = self.repo_dir.join("blobs").join(&blob_name);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, bytes).unwrap();
        let link = self.repo_dir.join("snapshots").join(commit).join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let ups = "../".repeat(rel.split('/').count() + 1);
        symlink(Path::new(&format!("{ups}blobs/{blob_name}")), &link);
    }

    fn options(&self) -> ResolveOptions {
        ResolveOptions::with_cache_dir(&self.hub).local_files_only(true)
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) {
    let resolved = link.parent().unwrap().join(target);
    std::fs::copy(resolved, link).unwrap();
}

const SD_INDEX: &str = r#"{
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.30.0",
  "feature_extractor": [null, null],
  "safety_checker": [null, null],
  "requires_safety_checker": false,
  "scheduler": ["diffusers", "PNDMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}"#;

/// Files of a tiny SD-shaped repo (relative path, bytes); `extra` is appended.
fn sd_files(extra: &[(&str, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("model_index.json".into(), SD_INDEX.into()),
        ("scheduler/scheduler_config.json".into(), b"{}".to_vec()),
        ("text_encoder/config.json".into(), b"{}".to_vec()),
        ("text_encoder/model.safetensors".into(), st("te", 1.0)),
        ("tokenizer/vocab.json".into(), b"{}".to_vec()),
        ("tokenizer/merges.txt".into(), b"#version: 0.2\n".to_vec()),
        ("tokenizer/tokenizer_config.json".into(), b"{}".to_vec()),
        ("tokenizer/special_tokens_map.json".into(), b"{}".to_vec()),
        ("unet/config.json".into(), b"{}".to_vec()),
        (
            "unet/diffusion_pytorch_model.safetensors".into(),
            st("unet", 1.0),
        ),
        ("vae/config.json".into(), b"{}".to_vec()),
        (
            "vae/diffusion_pytorch_model.safetensors".into(),
            st("vae", 1.0),
        ),
        ("README.md".into(), b"readme".to_vec()),
    ];
    for (rel, bytes) in extra {
        files.retain(|(r, _)| r != rel);
        files.push((rel.to_string(), bytes.clone()));
    }
    files
}

fn cached_sd(extra: &[(&str, Vec<u8>)], without: &[&str]) -> Cache {
    let cache = Cache::new();
    cache.set_ref("main", COMMIT_A);
    for (rel, bytes) in sd_files(extra) {
        if !without.contains(&rel.as_str()) {
            cache.add(COMMIT_A, &rel, &bytes);
        }
    }
    cache
}

fn hub() -> ModelSource {
    ModelSource::parse(REPO).unwrap()
}

fn file_name(p: &Path) -> &str {
    p.file_name().unwrap().to_str().unwrap()
}

#[test]
fn repo_id_resolves_through_refs_main() {
    let cache = cached_sd(&[], &[]);
    let model = resolve_pipeline(&hub(), &cache.options()).unwrap();
    let snapshot = cache.repo_dir.join("snapshots").join(COMMIT_A);
    assert_eq!(model.root, snapshot);
    assert_eq!(model.commit.as_deref(), Some(COMMIT_A));
    assert_eq!(model.model_index.class_name, "StableDiffusionPipeline");
    assert_eq!(
        model.components.keys().collect::<Vec<_>>(),
        vec!["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    );
    let unet = &model.components["unet"];
    assert_eq!(unet.kind, ComponentKind::Model);
    assert_eq!(unet.dir, snapshot.join("unet"));
    assert_eq!(
        unet.config.as_deref(),
        Some(snapshot.join("unet/config.json").as_path())
    );
    assert_eq!(
        unet.weights,
        vec![snapshot.join("unet/diffusion_pytorch_model.safetensors")]
    );
    assert_eq!(unet.weight_format, Some(WeightFormat::Safetensors));
    assert!(!unet.used_variant);
    // The path goes through the symlink to the blob, and the weights open.
    let weights = unet.open_weights().unwrap();
    assert_eq!(
        weights.tensor("unet").unwrap().to_f32_vec().unwrap(),
        vec![1.0, 1.0]
    );

    assert_eq!(
        file_name(&model.components["text_encoder"].weights[0]),
        "model.safetensors"
    );
    assert_eq!(
        model.components["scheduler"]
            .config
            .as_deref()
            .map(file_name),
        Some("scheduler_config.json")
    );
    let tok = &model.components["tokenizer"];
    assert_eq!(tok.kind, ComponentKind::Tokenizer);
    assert_eq!(
        tok.config.as_deref().map(file_name),
        Some("tokenizer_config.json")
    );
    let mut tok_files: Vec<&str> = tok.files.iter().map(|p| file_name(p)).collect();
    tok_files.sort();
    assert_eq!(
        tok_files,
        vec![
            "merges.txt",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "vocab.json"
        ]
    );
    assert!(tok.weights.is_empty());
    assert!(model.variant_fallbacks.is_empty());
    assert!(model.unknown_components.is_empty());
}

#[test]
fn revision_hash_and_other_branches() {
    let cache = cached_sd(&[], &[]);
    // A second commit whose unet differs; `main` still points at A.
    for (rel, bytes) in sd_files(&[("unet/diffusion_pytorch_model.safetensors", st("unet", 2.0))]) {
        cache.add(COMMIT_B, &rel, &bytes);
    }
    let value = |opts: &ResolveOptions| {
        let model = resolve_pipeline(&hub(), opts).unwrap();
        let w = model.components["unet"].open_weights().unwrap();
        (
            model.commit.unwrap(),
            w.tensor("unet").unwrap().to_f32_vec().unwrap()[0],
        )
    };
    assert_eq!(value(&cache.options()), (COMMIT_A.to_string(), 1.0));
    // A 40-hex revision is the snapshot itself, with no ref needed.
    assert_eq!(
        value(&cache.options().revision(COMMIT_B)),
        (COMMIT_B.to_string(), 2.0)
    );
    // A branch or tag goes through its ref, including refs with a slash.
    cache.set_ref("v2", COMMIT_B);
    cache.set_ref("pr/7", COMMIT_B);
    assert_eq!(value(&cache.options().revision("v2")).1, 2.0);
    assert_eq!(value(&cache.options().revision("pr/7")).1, 2.0);
    // An unknown branch is not cached: the error names the first file and the repo's cache folder.
    let err = resolve_pipeline(&hub(), &cache.options().revision("nope")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ResolveError::NotCached { .. }), "{msg}");
    assert!(
        msg.contains("model_index.json") && msg.contains("refs/nope"),
        "{msg}"
    );
    assert!(msg.contains(&cache.repo_dir.display().to_string()), "{msg}");
    // Revisions that would escape the refs folder are refused.
    let err = resolve_pipeline(&hub(), &cache.options().revision("../../x")).unwrap_err();
    assert!(matches!(err, ResolveError::InvalidRevision { .. }), "{err}");
}

#[test]
fn variant_present_is_used() {
    let cache = cached_sd(
        &[
            (
                "unet/diffusion_pytorch_model.fp16.safetensors",
                st("unet", 16.0),
            ),
            (
                "vae/diffusion_pytorch_model.fp16.safetensors",
                st("vae", 16.0),
            ),
            ("text_encoder/model.fp16.safetensors", st("te", 16.0)),
        ],
        &[],
    );
    let model = resolve_pipeline(&hub(), &cache.options().variant("fp16")).unwrap();
    for name in ["unet", "vae", "text_encoder"] {
        let c = &model.components[name];
        assert!(c.used_variant, "{name}");
        assert!(file_name(&c.weights[0]).contains(".fp16."), "{name}");
    }
    assert!(model.variant_fallbacks.is_empty());
    assert_eq!(model.variant.as_deref(), Some("fp16"));
}

#[test]
fn variant_missing_falls_back_per_component_and_is_reported() {
    let cache = cached_sd(
        &[(
            "unet/diffusion_pytorch_model.fp16.safetensors",
            st("unet", 16.0),
        )],
        &[],
    );
    let model = resolve_pipeline(&hub(), &cache.options().variant("fp16")).unwrap();
    assert!(model.components["unet"].used_variant);
    let vae = &model.components["vae"];
    assert!(!vae.used_variant);
    assert_eq!(
        file_name(&vae.weights[0]),
        "diffusion_pytorch_model.safetensors"
    );
    assert_eq!(model.variant_fallbacks, vec!["text_encoder", "vae"]);
}

#[test]
fn variant_missing_everywhere_is_an_error() {
    let cache = cached_sd(&[], &[]);
    let err = resolve_pipeline(&hub(), &cache.options().variant("fp16")).unwrap_err();
    assert!(matches!(err, ResolveError::VariantNotFound { .. }), "{err}");
    assert!(err.to_string().contains("fp16") && err.to_string().contains(REPO));
}

#[test]
fn bin_is_ignored_when_safetensors_exist() {
    let cache = cached_sd(
        &[
            ("unet/diffusion_pytorch_model.bin", b"pickle".to_vec()),
            ("text_encoder/pytorch_model.bin", b"pickle".to_vec()),
            // A .bin of the requested variant does not beat safetensors either.
            ("vae/diffusion_pytorch_model.fp16.bin", b"pickle".to_vec()),
            (
                "unet/diffusion_pytorch_model.fp16.safetensors",
                st("unet", 16.0),
            ),
        ],
        &[],
    );
    let model = resolve_pipeline(&hub(), &cache.options().variant("fp16")).unwrap();
    for c in model
        .components
        .values()
        .filter(|c| c.kind == ComponentKind::Model)
    {
        assert_eq!(
            c.weight_format,
            Some(WeightFormat::Safetensors),
            "{}",
            c.name
        );
        assert!(
            c.weights
                .iter()
                .all(|w| file_name(w).ends_with(".safetensors"))
        );
    }
    assert_eq!(
        file_name(&model.components["vae"].weights[0]),
        "diffusion_pytorch_model.safetensors"
    );
}

#[test]
fn bin_is_used_when_it_is_the_only_format() {
    let pickle = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/single_file/misc.pt"),
    )
    .unwrap();
    let cache = cached_sd(
        &[
            ("vae/diffusion_pytorch_model.bin", pickle),
            ("text_encoder/pytorch_model.bin", b"not a pickle".to_vec()),
        ],
        &[
            "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors",
        ],
    );
    let model = resolve_pipeline(&hub(), &cache.options()).unwrap();
    let vae = &model.components["vae"];
    assert_eq!(vae.weight_format, Some(WeightFormat::PytorchBin));
    assert_eq!(file_name(&vae.weights[0]), "diffusion_pytorch_model.bin");
    let text_encoder = &model.components["text_encoder"];
    assert_eq!(file_name(&text_encoder.weights[0]), "pytorch_model.bin");
    // Pickles open through the same reader API as safetensors.
    let weights = vae.open_weights().unwrap();
    assert!(weights.contains("tied") && weights.contains("view_offset"));
    // A broken one is a typed error naming the file, not a panic.
    let err = text_encoder.open_weights().unwrap_err();
    assert!(err.to_string().contains("pytorch_model.bin"), "{err}");
}

fn index_json(map: &[(&str, &str)]) -> Vec<u8> {
    let wm: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::to_vec(&serde_json::json!({"metadata": {"total_size": 16}, "weight_map": wm}))
        .unwrap()
}

#[test]
fn sharded_weights_through_the_index() {
    let cache = cached_sd(
        &[
            (
                "unet/diffusion_pytorch_model.safetensors.index.json",
                index_json(&[
                    ("b", "diffusion_pytorch_model-00002-of-00002.safetensors"),
                    ("a", "diffusion_pytorch_model-00001-of-00002.safetensors"),
                ]),
            ),
            (
                "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                st("a", 1.0),
            ),
            (
                "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
                st("b", 2.0),
            ),
            // Variant shards, named as diffusers writes them.
            (
                "vae/diffusion_pytorch_model.safetensors.index.fp16.json",
                index_json(&[
                    (
                        "x",
                        "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                    ),
                    (
                        "y",
                        "diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
                    ),
                ]),
            ),
            (
                "vae/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                st("x", 3.0),
            ),
            (
                "vae/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
                st("y", 4.0),
            ),
        ],
        &["unet/diffusion_pytorch_model.safetensors"],
    );
    let model = resolve_pipeline(&hub(), &cache.options().variant("fp16")).unwrap();
    let unet = &model.components["unet"];
    assert_eq!(
        unet.weights
            .iter()
            .map(|p| file_name(p))
            .collect::<Vec<_>>(),
        vec![
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00002-of-00002.safetensors"
        ]
    );
    assert_eq!(
        unet.weight_index.as_deref().map(file_name),
        Some("diffusion_pytorch_model.safetensors.index.json")
    );
    assert!(!unet.used_variant);
    let w = unet.open_weights().unwrap();
    assert_eq!(w.tensor("b").unwrap().to_f32_vec().unwrap(), vec![2.0, 2.0]);

    let vae = &model.components["vae"];
    assert!(vae.used_variant);
    assert_eq!(vae.weights.len(), 2);
    assert_eq!(vae.open_weights().unwrap().len(), 2);
    assert_eq!(model.variant_fallbacks, vec!["text_encoder", "unet"]);
}

#[test]
fn missing_shard_offline_names_the_shard_and_cache() {
    let cache = cached_sd(
        &[
            (
                "unet/diffusion_pytorch_model.safetensors.index.json",
                index_json(&[
                    ("a", "diffusion_pytorch_model-00001-of-00002.safetensors"),
                    ("b", "diffusion_pytorch_model-00002-of-00002.safetensors"),
                ]),
            ),
            (
                "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                st("a", 1.0),
            ),
        ],
        &[],
    );
    let err = resolve_pipeline(&hub(), &cache.options()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ResolveError::NotCached { .. }), "{msg}");
    assert!(
        msg.contains("unet/diffusion_pytorch_model-00002-of-00002.safetensors"),
        "{msg}"
    );
    assert!(msg.contains(&cache.repo_dir.display().to_string()), "{msg}");
}

#[test]
fn missing_file_offline_names_the_file_and_cache() {
    for (missing, expected) in [
        ("unet/config.json", "unet/config.json"),
        (
            "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ),
        (
            "scheduler/scheduler_config.json",
            "scheduler/scheduler_config.json",
        ),
        ("tokenizer/merges.txt", "tokenizer/merges.txt"),
        ("model_index.json", "model_index.json"),
    ] {
        let cache = cached_sd(&[], &[missing]);
        let err = resolve_pipeline(&hub(), &cache.options()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ResolveError::NotCached { .. }),
            "{missing}: {msg}"
        );
        assert!(msg.contains(expected), "{missing}: {msg}");
        assert!(msg.contains(&cache.repo_dir.display().to_string()), "{msg}");
        assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    }
}

#[test]
fn repo_not_cached_at_all() {
    let cache = Cache::new();
    let err = resolve_pipeline(&hub(), &cache.options()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ResolveError::NotCached { .. }), "{msg}");
    assert!(
        msg.contains("model_index.json") && msg.contains("refs/main"),
        "{msg}"
    );
    assert!(msg.contains("models--test-org--tiny-sd"), "{msg}");
    // A ref to a snapshot that is gone.
    cache.set_ref("main", COMMIT_B);
    let msg = resolve_pipeline(&hub(), &cache.options())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("snapshots/{COMMIT_B}")), "{msg}");
}

#[cfg(unix)]
#[test]
fn dangling_symlink_reads_as_not_cached() {
    let cache = cached_sd(&[], &[]);
    let link = cache
        .repo_dir
        .join("snapshots")
        .join(COMMIT_A)
        .join("vae/diffusion_pytorch_model.safetensors");
    let target = std::fs::read_link(&link).unwrap();
    std::fs::remove_file(link.parent().unwrap().join(&target)).unwrap();
    let err = resolve_pipeline(&hub(), &cache.options()).unwrap_err();
    assert!(
        err.to_string()
            .contains("vae/diffusion_pytorch_model.safetensors"),
        "{err}"
    );
}

#[test]
fn corrupt_ref_is_an_error_naming_it() {
    let cache = cached_sd(&[], &[]);
    cache.set_ref("main", "<html>not a hash</html>");
    let err = resolve_pipeline(&hub(), &cache.options()).unwrap_err();
    assert!(matches!(err, ResolveError::CorruptRef { .. }), "{err}");
    assert!(err.to_string().contains("refs/main"), "{err}");
}

#[test]
fn corrupt_model_index_names_the_file() {
    let cache = cached_sd(&[("model_index.json", b"{\"_class_name\": ".to_vec())], &[]);
    let err = resolve_pipeline(&hub(), &cache.options()).unwrap_err();
    assert!(matches!(err, ResolveError::ModelIndex(_)), "{err}");
    assert!(err.to_string().contains("model_index.json"), "{err}");
}

#[test]
fn unknown_component_is_reported_and_not_fetched() {
    let index = SD_INDEX.replace(
        "\"vae\":",
        "\"transformer\": [\"diffusers\", \"SD3Transformer2DModel\"],\n  \"vae\":",
    );
    // No transformer/ folder at all: resolution must still succeed.
    let cache = cached_sd(&[("model_index.json", index.into_bytes())], &[]);
    let model = resolve_pipeline(&hub(), &cache.options()).unwrap();
    assert_eq!(model.unknown_components, vec!["transformer"]);
    assert!(!model.components.contains_key("transformer"));
    assert!(model.model_index.component("transformer").is_some());
}

#[test]
fn skipped_components_are_not_resolved() {
    let index = SD_INDEX.replace(
        "\"safety_checker\": [null, null]",
        "\"safety_checker\": [\"stable_diffusion\", \"StableDiffusionSafetyChecker\"]",
    );
    let cache = cached_sd(&[("model_index.json", index.into_bytes())], &[]);
    // Present in model_index but not cached: an error unless skipped.
    let err = resolve_pipeline(&hub(), &cache.options()).unwrap_err();
    assert!(
        err.to_string().contains("safety_checker/config.json"),
        "{err}"
    );
    let mut opts = cache.options();
    opts.skip_components.insert("safety_checker".into());
    let model = resolve_pipeline(&hub(), &opts).unwrap();
    assert!(!model.components.contains_key("safety_checker"));
}

#[test]
fn tokenizer_json_alone_is_enough() {
    let cache = cached_sd(
        &[("tokenizer/tokenizer.json", b"{}".to_vec())],
        &[
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json",
            "tokenizer/special_tokens_map.json",
        ],
    );
    let model = resolve_pipeline(&hub(), &cache.options()).unwrap();
    let tok = &model.components["tokenizer"];
    assert_eq!(tok.config, None);
    assert_eq!(tok.files.len(), 1);
    assert_eq!(file_name(&tok.files[0]), "tokenizer.json");
}

/// Writes the SD files into a plain folder (no symlinks).
fn local_sd(dir: &Path, extra: &[(&str, Vec<u8>)], without: &[&str]) {
    for (rel, bytes) in sd_files(extra) {
        if without.contains(&rel.as_str()) {
            continue;
        }
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn local_folder_resolves_like_the_cache() {
    let extra = [
        (
            "unet/diffusion_pytorch_model.fp16.safetensors",
            st("unet", 16.0),
        ),
        ("unet/diffusion_pytorch_model.bin", b"pickle".to_vec()),
    ];
    let cache = cached_sd(&extra, &[]);
    let tmp = tempfile::tempdir().unwrap();
    local_sd(tmp.path(), &extra, &[]);
    let source = ModelSource::parse(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(
        source,
        ModelSource::LocalFolder {
            path: tmp.path().to_path_buf(),
            has_model_index: true
        }
    );
    let opts = cache.options().variant("fp16");
    let local = resolve_pipeline(&source, &opts).unwrap();
    let cached = resolve_pipeline(&hub(), &opts).unwrap();
    assert_eq!(local.root, tmp.path());
    assert_eq!(local.commit, None);
    assert_eq!(local.model_index, cached.model_index);
    assert_eq!(local.variant_fallbacks, cached.variant_fallbacks);
    // Same components, same files relative to their roots.
    let rel = |m: &diffusion_hub::resolve::ResolvedModel| {
        m.components
            .values()
            .map(|c| {
                let strip = |p: &PathBuf| p.strip_prefix(&m.root).unwrap().to_path_buf();
                (
                    c.name.clone(),
                    c.kind,
                    c.config.as_ref().map(strip),
                    c.weights.iter().map(strip).collect::<Vec<_>>(),
                    c.files.iter().map(strip).collect::<Vec<_>>(),
                    c.used_variant,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(rel(&local), rel(&cached));
}

#[test]
fn local_folder_missing_file_names_file_and_folder() {
    let tmp = tempfile::tempdir().unwrap();
    local_sd(tmp.path(), &[], &["vae/config.json"]);
    let source = ModelSource::parse(tmp.path().to_str().unwrap()).unwrap();
    let err = resolve_pipeline(&source, &ResolveOptions::with_cache_dir("/unused")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ResolveError::MissingFile { .. }), "{msg}");
    assert!(msg.contains("vae/config.json"), "{msg}");
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
}

#[test]
fn single_model_repo_and_subfolder() {
    // A repo holding one model at its root (as e.g. a standalone VAE repo does).
    let cache = Cache::new();
    cache.set_ref("main", COMMIT_A);
    cache.add(COMMIT_A, "config.json", b"{}");
    cache.add(
        COMMIT_A,
        "diffusion_pytorch_model.safetensors",
        &st("w", 1.0),
    );
    match resolve(REPO, &cache.options()).unwrap() {
        Resolved::Model(c) => {
            assert_eq!(c.name, "");
            assert_eq!(c.dir, cache.repo_dir.join("snapshots").join(COMMIT_A));
            assert_eq!(c.weights.len(), 1);
        }
        other => panic!("expected a model, got {other:?}"),
    }
    // A component of a pipeline repo, as diffusers' `subfolder=`.
    let cache = cached_sd(&[], &[]);
    let vae = resolve_model(&hub(), Some("vae"), &cache.options()).unwrap();
    assert_eq!(
        file_name(&vae.weights[0]),
        "diffusion_pytorch_model.safetensors"
    );
    assert!(vae.dir.ends_with("vae"));
    match resolve(REPO, &cache.options()).unwrap() {
        Resolved::Pipeline(m) => assert_eq!(m.components.len(), 5),
        other => panic!("expected a pipeline, got {other:?}"),
    }
    let err = resolve_model(&hub(), Some("../x"), &cache.options()).unwrap_err();
    assert!(matches!(err, ResolveError::InvalidName { .. }), "{err}");
}

#[test]
fn parse_local_paths_and_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = dir.join("v1-5-pruned.ckpt");
    std::fs::write(&ckpt, b"x").unwrap();
    let sft = dir.join("sd_xl_base_1.0.safetensors");
    std::fs::write(&sft, b"x").unwrap();
    for path in [&ckpt, &sft] {
        let source = ModelSource::parse(path.to_str().unwrap()).unwrap();
        assert_eq!(source, ModelSource::Checkpoint { path: path.clone() });
        // resolve() returns it as such; resolve_pipeline() says to convert it.
        assert_eq!(
            resolve(
                path.to_str().unwrap(),
                &ResolveOptions::with_cache_dir("/unused")
            )
            .unwrap(),
            Resolved::Checkpoint(path.clone())
        );
        let err =
            resolve_pipeline(&source, &ResolveOptions::with_cache_dir("/unused")).unwrap_err();
        assert!(
            matches!(err, ResolveError::SingleFileCheckpoint { .. }),
            "{err}"
        );
    }
    let txt = dir.join("notes.txt");
    std::fs::write(&txt, b"x").unwrap();
    let err = ModelSource::parse(txt.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, ResolveError::UnsupportedFile { .. }), "{err}");

    let model_dir = dir.join("vae");
    std::fs::create_dir(&model_dir).unwrap();
    let err = ModelSource::parse(model_dir.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, ResolveError::NotAModelFolder { .. }), "{err}");
    std::fs::write(model_dir.join("config.json"), b"{}").unwrap();
    assert_eq!(
        ModelSource::parse(model_dir.to_str().unwrap()).unwrap(),
        ModelSource::LocalFolder {
            path: model_dir.clone(),
            has_model_index: false
        }
    );

    for missing in [
        "./nope",
        "/no/such/dir",
        "missing.safetensors",
        "a/b/c",
        "~/x",
    ] {
        let err = ModelSource::parse(missing).unwrap_err();
        assert!(
            matches!(err, ResolveError::PathNotFound { .. }),
            "{missing}: {err}"
        );
        assert!(err.to_string().contains(missing));
    }
}

#[test]
fn repo_ids() {
    for good in [
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "CompVis/stable-diffusion-v1-4",
        "google/ddpm-cifar10-32",
        "a_b/c.d",
    ] {
        validate_repo_id(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(
            ModelSource::parse(good).unwrap(),
            ModelSource::Hub {
                repo_id: good.into()
            }
        );
    }
    let long = format!("org/{}", "x".repeat(93));
    for bad in [
        "noslash",
        "org/",
        "/name",
        "org/na me",
        "org--x/name",
        "org/na..me",
        "-org/name",
        "org/name-",
        "org/name.git",
        "org/näme",
        long.as_str(),
    ] {
        let err = validate_repo_id(bad).unwrap_err();
        assert!(
            matches!(err, ResolveError::InvalidRepoId { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains(bad), "{bad}: {err}");
    }
    // Through parse, a bad id that is not path-like is an InvalidRepoId naming it.
    let err = ModelSource::parse("org/na me").unwrap_err();
    assert!(err.to_string().contains("\"org/na me\""), "{err}");
    assert!(matches!(
        ModelSource::parse(""),
        Err(ResolveError::InvalidName { .. })
    ));
}
