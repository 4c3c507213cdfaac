//! The Hub download path, run end to end against a local stand-in for the Hub
//! (`support/mock_hub.rs`, answering as huggingface.co does): what is fetched,
//! where it lands in the HF cache, and what later offline runs see.

mod support;

use std::path::{Path, PathBuf};

use diffusion_hub::resolve::{
    ModelSource, ResolveError, ResolveOptions, Resolved, resolve, resolve_file, resolve_model,
    resolve_pipeline,
};
use safetensors::tensor::TensorView;
use support::mock_hub::{Logged, MockHub, MockRepo, sha256_hex};

const REPO: &str = "test-org/tiny-sd";
const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn st(name: &str, value: f32) -> Vec<u8> {
    let data: Vec<u8> = [value; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    safetensors::serialize([(name, view)], None).unwrap()
}

const SD_INDEX: &str = r#"{
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.30.0",
  "feature_extractor": ["transformers", "CLIPImageProcessor"],
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "PNDMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"],
  "watermarker": ["somelib", "Watermarker"]
}"#;

/// A repo shaped like the SD1.5 one: safetensors beside `.bin` twins, an
/// `fp16` variant, a README, an unknown component with its own files.
fn sd_repo_files(unet_value: f32) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("model_index.json".into(), SD_INDEX.into()),
        ("README.md".into(), b"# tiny".to_vec()),
        (
            "feature_extractor/preprocessor_config.json".into(),
            b"{\"size\": 8}".to_vec(),
        ),
        (
            "scheduler/scheduler_config.json".into(),
            b"{\"_class_name\": \"PNDMScheduler\"}".to_vec(),
        ),
        ("text_encoder/config.json".into(), b"{\"a\": 1}".to_vec()),
        ("text_encoder/model.safetensors".into(), st("te", 1.0)),
        ("text_encoder/pytorch_model.bin".into(), b"PK-te".to_vec()),
        ("tokenizer/vocab.json".into(), b"{\"a\": 0}".to_vec()),
        ("tokenizer/merges.txt".into(), b"#version: 0.2\n".to_vec()),
        (
            "tokenizer/tokenizer_config.json".into(),
            b"{\"x\": 1}".to_vec(),
        ),
        (
            "tokenizer/special_tokens_map.json".into(),
            b"{\"y\": 1}".to_vec(),
        ),
        ("unet/config.json".into(), b"{\"b\": 2}".to_vec()),
        (
            "unet/diffusion_pytorch_model.safetensors".into(),
            st("unet", unet_value),
        ),
        (
            "unet/diffusion_pytorch_model.fp16.safetensors".into(),
            st("unet16", unet_value),
        ),
        (
            "unet/diffusion_pytorch_model.bin".into(),
            b"PK-unet".to_vec(),
        ),
        ("vae/config.json".into(), b"{\"c\": 3}".to_vec()),
        (
            "vae/diffusion_pytorch_model.safetensors".into(),
            st("vae", 1.0),
        ),
        ("watermarker/config.json".into(), b"{\"d\": 4}".to_vec()),
        (
            "watermarker/diffusion_pytorch_model.safetensors".into(),
            st("wm", 1.0),
        ),
    ];
    files.sort();
    files
}

fn mock() -> MockHub {
    let mut repo = MockRepo::new(REPO, COMMIT_A, sd_repo_files(1.0));
    repo.add_commit("v2", COMMIT_B, sd_repo_files(2.0));
    MockHub::start(vec![repo])
}

fn options(hub: &MockHub, cache: &Path) -> ResolveOptions {
    let mut o = ResolveOptions::with_cache_dir(cache);
    o.endpoint = Some(hub.endpoint.clone());
    o
}

fn source() -> ModelSource {
    ModelSource::parse(REPO).unwrap()
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join("models--test-org--tiny-sd")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The files a pipeline needs, and nothing else, land in the HF cache layout
/// that huggingface_hub shares: blobs named by ETag (sha256 for LFS files),
/// `snapshots/<commit>/<file>` relative symlinks to them, `refs/main`.
#[test]
fn a_pipeline_downloads_only_what_it_needs_into_the_hf_cache() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let model = resolve_pipeline(&source(), &options(&hub, &cache)).unwrap();
    assert_eq!(model.commit.as_deref(), Some(COMMIT_A));
    assert_eq!(model.unknown_components, vec!["watermarker".to_string()]);

    let expected: Vec<String> = [
        "model_index.json",
        "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    .iter()
    .map(|f| format!("{COMMIT_A}/{f}"))
    .collect();
    // Downloads name the commit the repo info gave, not the branch.
    assert_eq!(sorted(hub.downloads()), sorted(expected));
    assert_eq!(
        hub.requests()
            .iter()
            .filter(|r| r.contains("/api/models/"))
            .count(),
        1,
        "{:?}",
        hub.requests()
    );

    let repo = repo_dir(&cache);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT_A
    );
    let snapshot = repo.join("snapshots").join(COMMIT_A);
    assert_eq!(model.root, snapshot);
    for (rel, bytes) in sd_repo_files(1.0) {
        let link = snapshot.join(&rel);
        if !hub.downloads().contains(&format!("{COMMIT_A}/{rel}")) {
            assert!(!link.exists(), "{rel} should not have been fetched");
            continue;
        }
        assert_eq!(std::fs::read(&link).unwrap(), bytes, "{rel}");
        #[cfg(unix)]
        {
            let target = std::fs::read_link(&link).unwrap();
            assert!(target.is_relative(), "{rel}: {target:?}");
            let blob = target.file_name().unwrap().to_str().unwrap().to_string();
            if rel.ends_with(".safetensors") {
                assert_eq!(blob, sha256_hex(&bytes), "{rel}");
            }
            assert_eq!(
                std::fs::read(repo.join("blobs").join(&blob)).unwrap(),
                bytes
            );
        }
    }
    // Only the branch's ref, as huggingface_hub writes (hf-hub alone would add
    // one named after the commit).
    let refs: Vec<String> = std::fs::read_dir(repo.join("refs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(refs, vec!["main".to_string()]);
    // No partial downloads are left behind (hf-hub keeps its empty
    // `<blob>.lock` files, which huggingface_hub ignores).
    for entry in std::fs::read_dir(repo.join("blobs")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(!name.ends_with(".part"), "{name}");
        if name.ends_with(".lock") {
            assert_eq!(entry.metadata().unwrap().len(), 0, "{name}");
        }
    }
    let unet = &model.components["unet"];
    let w = unet.open_weights().unwrap();
    assert_eq!(
        w.tensor("unet").unwrap().to_f32_vec().unwrap(),
        vec![1.0; 4]
    );
}

/// Once downloaded, a second online run asks the Hub for the commit only, and
/// an offline run (`HF_HUB_OFFLINE=1` / local_files_only) needs no network.
#[test]
fn cached_files_are_not_downloaded_again_and_work_offline() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let first = resolve_pipeline(&source(), &options(&hub, &cache)).unwrap();
    let fetched = hub.downloads().len();
    let requests = hub.requests().len();

    let second = resolve_pipeline(&source(), &options(&hub, &cache)).unwrap();
    assert_eq!(second, first);
    assert_eq!(hub.downloads().len(), fetched);
    assert_eq!(hub.requests().len(), requests + 1, "only the repo info");

    let offline =
        resolve_pipeline(&source(), &options(&hub, &cache).local_files_only(true)).unwrap();
    assert_eq!(offline, first);
    assert_eq!(hub.requests().len(), requests + 1, "offline: no request");

    // The environment route to the same switch.
    let env = |key: &str| match key {
        "HF_HUB_CACHE" => Some(cache.display().to_string()),
        "HF_HUB_OFFLINE" => Some("1".to_string()),
        "HF_ENDPOINT" => Some(hub.endpoint.clone()),
        _ => None,
    };
    let from_env = ResolveOptions::from_env_vars(env);
    assert!(from_env.local_files_only);
    assert_eq!(resolve_pipeline(&source(), &from_env).unwrap(), first);
    assert_eq!(hub.requests().len(), requests + 1);
}

/// A variant downloads the variant's weights, and the plain weights only for
/// the components that lack it (diffusers' fallback).
#[test]
fn a_variant_downloads_the_variant_files() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let model = resolve_pipeline(&source(), &options(&hub, &cache).variant("fp16")).unwrap();
    let downloads = hub.downloads();
    let fetched = |f: &str| downloads.contains(&format!("{COMMIT_A}/{f}"));
    assert!(fetched("unet/diffusion_pytorch_model.fp16.safetensors"));
    assert!(!fetched("unet/diffusion_pytorch_model.safetensors"));
    assert!(fetched("vae/diffusion_pytorch_model.safetensors"));
    assert_eq!(
        sorted(model.variant_fallbacks.clone()),
        vec!["text_encoder".to_string(), "vae".to_string()]
    );
    let w = model.components["unet"].open_weights().unwrap();
    assert!(w.contains("unet16"));
}

/// Another branch resolves to its own commit and snapshot, and is recorded in
/// `refs/` so that offline runs find it. Files whose content the cache already
/// holds (from the first commit) are linked, not downloaded again.
#[test]
fn a_branch_revision_gets_its_own_snapshot_and_ref() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    resolve_pipeline(&source(), &options(&hub, &cache)).unwrap();
    let before = hub.downloads().len();
    let model = resolve_pipeline(&source(), &options(&hub, &cache).revision("v2")).unwrap();
    assert_eq!(model.commit.as_deref(), Some(COMMIT_B));
    // Only the UNet weights differ between the two commits.
    assert_eq!(
        hub.downloads()[before..].to_vec(),
        vec![format!(
            "{COMMIT_B}/unet/diffusion_pytorch_model.safetensors"
        )]
    );
    assert_eq!(
        std::fs::read_to_string(repo_dir(&cache).join("refs/v2")).unwrap(),
        COMMIT_B
    );
    let snapshot = repo_dir(&cache).join("snapshots").join(COMMIT_B);
    for (rel, bytes) in sd_repo_files(2.0) {
        if snapshot.join(&rel).exists() {
            assert_eq!(std::fs::read(snapshot.join(&rel)).unwrap(), bytes, "{rel}");
        }
    }
    #[cfg(unix)]
    {
        let link = std::fs::read_link(snapshot.join("vae/config.json")).unwrap();
        assert!(
            link.is_relative() && link.starts_with("../../.."),
            "{link:?}"
        );
    }
    let w = model.components["unet"].open_weights().unwrap();
    assert_eq!(
        w.tensor("unet").unwrap().to_f32_vec().unwrap(),
        vec![2.0; 4]
    );
    let offline = resolve_pipeline(
        &source(),
        &options(&hub, &cache).revision("v2").local_files_only(true),
    )
    .unwrap();
    assert_eq!(offline.commit.as_deref(), Some(COMMIT_B));
    // A commit hash works the same, online, and writes no ref, also when it
    // downloads (a fresh cache).
    let fresh = tmp.path().join("fresh");
    let before = hub.downloads().len();
    let by_hash = resolve_pipeline(&source(), &options(&hub, &fresh).revision(COMMIT_A)).unwrap();
    assert_eq!(by_hash.commit.as_deref(), Some(COMMIT_A));
    assert!(hub.downloads().len() > before);
    let refs: Vec<_> = std::fs::read_dir(repo_dir(&fresh).join("refs"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(refs.is_empty(), "{refs:?}");
}

/// A push between the repo info and the downloads does not mix commits: every
/// file comes from the commit the info named.
#[test]
fn a_branch_moving_during_the_download_does_not_mix_commits() {
    let mut repo = MockRepo::new(REPO, COMMIT_A, sd_repo_files(1.0));
    repo.add_commit("v2", COMMIT_B, sd_repo_files(2.0));
    repo.move_after_info = Some(("main".into(), COMMIT_B.into()));
    let hub = MockHub::start(vec![repo]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let model = resolve_pipeline(&source(), &options(&hub, &cache)).unwrap();
    assert_eq!(model.commit.as_deref(), Some(COMMIT_A));
    let w = model.components["unet"].open_weights().unwrap();
    assert_eq!(
        w.tensor("unet").unwrap().to_f32_vec().unwrap(),
        vec![1.0; 4]
    );
    assert!(hub.downloads().iter().all(|d| d.starts_with(COMMIT_A)));
}

/// A component with only PyTorch weights, sharded: the index and its shards
/// are downloaded and open through the same reader as safetensors.
#[test]
fn sharded_pickle_weights_download_and_open() {
    let fixture = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/single_file")
            .join(name)
    };
    let shards = [
        (
            "diffusion_pytorch_model-00001-of-00002.bin",
            fixture("misc.pt"),
        ),
        (
            "diffusion_pytorch_model-00002-of-00002.bin",
            fixture("sd2.ckpt"),
        ),
    ];
    let mut map = serde_json::Map::new();
    let mut files = sd_repo_files(1.0);
    files.retain(|(rel, _)| !rel.starts_with("unet/diffusion_pytorch_model"));
    for (shard, path) in &shards {
        let file = diffusion_hub::torch_pickle::TorchFile::open(path).unwrap();
        for (key, _) in file.tensors() {
            map.insert(key.to_string(), (*shard).into());
        }
        files.push((format!("unet/{shard}"), std::fs::read(path).unwrap()));
    }
    let index =
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": map})).unwrap();
    files.push(("unet/diffusion_pytorch_model.bin.index.json".into(), index));
    let hub = MockHub::start(vec![MockRepo::new(REPO, COMMIT_A, files)]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let unet = resolve_model(&source(), Some("unet"), &options(&hub, &cache)).unwrap();
    assert_eq!(unet.weights.len(), 2);
    let w = unet.open_weights().unwrap();
    assert_eq!(w.len(), map.len());
    for (key, shard) in &map {
        let from = if shard == shards[0].0 {
            &shards[0].1
        } else {
            &shards[1].1
        };
        let want = diffusion_hub::torch_pickle::TorchFile::open(from).unwrap();
        assert_eq!(
            w.tensor(key).unwrap().data,
            want.tensor(key).unwrap().data,
            "{key}"
        );
    }
}

/// One model folder of a pipeline repo (`subfolder=`), and `resolve`'s
/// dispatch, download only that folder.
#[test]
fn a_subfolder_downloads_only_that_folder() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let vae = resolve_model(&source(), Some("vae"), &options(&hub, &cache)).unwrap();
    assert_eq!(
        sorted(hub.downloads()),
        vec![
            format!("{COMMIT_A}/vae/config.json"),
            format!("{COMMIT_A}/vae/diffusion_pytorch_model.safetensors"),
        ]
    );
    assert!(vae.open_weights().unwrap().contains("vae"));
    match resolve(REPO, &options(&hub, &cache)).unwrap() {
        Resolved::Pipeline(m) => assert_eq!(m.commit.as_deref(), Some(COMMIT_A)),
        other => panic!("{other:?}"),
    }
}

/// One file of a repo (a LoRA's `weight_name`) downloads alone, then
/// resolves offline from the cache; a path escaping the repo is refused.
#[test]
fn a_single_file_downloads_alone_and_resolves_offline() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let rel = "unet/diffusion_pytorch_model.safetensors";
    let path = resolve_file(&source(), rel, &options(&hub, &cache)).unwrap();
    assert_eq!(hub.downloads(), vec![format!("{COMMIT_A}/{rel}")]);
    assert!(path.starts_with(repo_dir(&cache).join("snapshots").join(COMMIT_A)));
    let offline = ResolveOptions::with_cache_dir(&cache).local_files_only(true);
    assert_eq!(resolve_file(&source(), rel, &offline).unwrap(), path);
    let missing = resolve_file(&source(), "nope.safetensors", &offline).unwrap_err();
    assert!(
        missing.to_string().contains("nope.safetensors"),
        "{missing}"
    );
    assert!(resolve_file(&source(), "../x.safetensors", &offline).is_err());
}

/// An interrupted download (a `.part` file beside the blob, as hf-hub leaves
/// it) resumes from where it stopped, with a `Range` request.
#[test]
fn an_interrupted_download_resumes() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let bytes = st("vae", 1.0);
    let sha = sha256_hex(&bytes);
    let blobs = repo_dir(&cache).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.part")), &bytes[..10]).unwrap();
    let vae = resolve_model(&source(), Some("vae"), &options(&hub, &cache)).unwrap();
    assert_eq!(std::fs::read(&vae.weights[0]).unwrap(), bytes);
    assert!(
        hub.requests()
            .iter()
            .any(|r| r.contains("/lfs/") && r.ends_with("[bytes=10-]")),
        "{:?}",
        hub.requests()
    );
}

/// Hub errors name the repo and what was asked: an unknown repo, an unknown
/// revision, a file the repo lacks.
#[test]
fn hub_errors_name_the_repo_and_the_file() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let err = resolve_pipeline(
        &ModelSource::parse("test-org/absent").unwrap(),
        &options(&hub, &cache),
    )
    .unwrap_err();
    assert!(matches!(err, ResolveError::Hub { .. }), "{err}");
    assert!(err.to_string().contains("test-org/absent"), "{err}");

    let err = resolve_pipeline(&source(), &options(&hub, &cache).revision("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");

    let err = resolve_model(&source(), Some("controlnet"), &options(&hub, &cache)).unwrap_err();
    assert!(err.to_string().contains("controlnet/config.json"), "{err}");
    // The ref written for the failed resolution points at an existing
    // snapshot folder (a dangling ref is a corrupt cache to huggingface_hub).
    let commit = std::fs::read_to_string(repo_dir(&cache).join("refs/main")).unwrap();
    assert!(repo_dir(&cache).join("snapshots").join(commit).is_dir());
}

/// With the Hub unreachable, a cached revision is used (as huggingface_hub
/// does); with nothing cached the error names the repo.
#[test]
fn an_unreachable_hub_falls_back_to_the_cache() {
    let hub = mock();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let online = resolve_pipeline(&source(), &options(&hub, &cache)).unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut o = ResolveOptions::with_cache_dir(&cache);
    o.endpoint = Some(dead.clone());
    assert_eq!(resolve_pipeline(&source(), &o).unwrap(), online);

    let mut o = ResolveOptions::with_cache_dir(tmp.path().join("empty"));
    o.endpoint = Some(dead);
    let err = resolve_pipeline(&source(), &o).unwrap_err();
    assert!(err.to_string().contains(REPO), "{err}");
}

/// A private repo: without a token the error names the repo; with one
/// (`HF_TOKEN` / `ResolveOptions::token`) every Hub request carries it, and
/// the content downloads from the content host (the CDN) do not. hf-hub 0.4.3
/// does send it with its one-byte size probe to the content host (its
/// `metadata` re-issues the redirect with its default headers): asserted here
/// so that a change of that behaviour is noticed; docs/dependencies.md says so.
#[test]
fn a_token_reaches_the_hub_and_the_content_downloads_go_without_it() {
    let mut repo = MockRepo::new(REPO, COMMIT_A, sd_repo_files(1.0));
    repo.token = Some("hf_secret".into());
    let hub = MockHub::start(vec![repo]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let err = resolve_pipeline(&source(), &options(&hub, &cache)).unwrap_err();
    assert!(matches!(err, ResolveError::Hub { .. }), "{err}");
    assert!(err.to_string().contains(REPO), "{err}");

    let env = |key: &str| match key {
        "HF_HUB_CACHE" => Some(cache.display().to_string()),
        "HF_ENDPOINT" => Some(hub.endpoint.clone()),
        "HF_TOKEN" => Some("hf_secret".to_string()),
        _ => None,
    };
    let mut o = ResolveOptions::from_env_vars(env);
    o.progress = false;
    let model = resolve_pipeline(&source(), &o).unwrap();
    assert_eq!(model.commit.as_deref(), Some(COMMIT_A));
    let logged = hub.logged();
    let to_cdn: Vec<_> = logged.iter().filter(|l| l.line.contains("/lfs/")).collect();
    let (probes, content): (Vec<&Logged>, Vec<&Logged>) = to_cdn
        .iter()
        .copied()
        .partition(|l| l.line.ends_with("[bytes=0-0]"));
    assert!(!content.is_empty());
    assert!(
        content.iter().all(|l| l.authorization.is_none()),
        "{content:?}"
    );
    assert!(
        probes
            .iter()
            .all(|l| l.authorization.as_deref() == Some("Bearer hf_secret")),
        "{probes:?}"
    );
    let to_hub: Vec<_> = logged
        .iter()
        .skip(1) // the refused first attempt
        .filter(|l| !l.line.contains("/lfs/"))
        .collect();
    assert!(
        to_hub
            .iter()
            .all(|l| l.authorization.as_deref() == Some("Bearer hf_secret")),
        "{to_hub:?}"
    );
}
