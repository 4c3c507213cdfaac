//! `ResolveOptions::from_env` against the real process environment. This is
//! the only test in this binary (each integration test file is its own
//! process), so setting variables cannot race another test.

use diffusion_hub::resolve::{ModelSource, ResolveOptions, resolve_pipeline};

#[test]
fn hf_hub_offline_and_cache_from_the_process_env() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--org--m");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(snap.join("scheduler")).unwrap();
    std::fs::write(
        snap.join("model_index.json"),
        r#"{"_class_name": "P", "scheduler": ["diffusers", "DDPMScheduler"]}"#,
    )
    .unwrap();
    std::fs::write(snap.join("scheduler/scheduler_config.json"), "{}").unwrap();

    // SAFETY: the only test in this process; nothing else reads the env concurrently.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", tmp.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let options = ResolveOptions::from_env();
    assert_eq!(options.cache_dir, tmp.path());
    assert!(options.local_files_only);
    let model = resolve_pipeline(&ModelSource::parse("org/m").unwrap(), &options).unwrap();
    assert_eq!(model.root, snap);
    // Not cached and offline: an error, never a network attempt.
    let err = resolve_pipeline(&ModelSource::parse("org/other").unwrap(), &options).unwrap_err();
    assert!(err.to_string().contains("models--org--other"), "{err}");
}
