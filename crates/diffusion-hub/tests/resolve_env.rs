//! `ResolveOptions::from_env_vars`: the environment rules of huggingface_hub,
//! tested as a pure function over a given map (no process env is touched).

use std::collections::HashMap;
use std::path::PathBuf;

use diffusion_hub::resolve::{ResolveOptions, env_flag};

fn opts(vars: &[(&str, &str)]) -> ResolveOptions {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ResolveOptions::from_env_vars(|k| map.get(k).cloned())
}

#[test]
fn cache_dir_precedence() {
    let home = [("HOME", "/home/u")];
    assert_eq!(
        opts(&home).cache_dir,
        PathBuf::from("/home/u/.cache/huggingface/hub")
    );
    assert_eq!(
        opts(&[("USERPROFILE", "/users/u")]).cache_dir,
        PathBuf::from("/users/u/.cache/huggingface/hub")
    );
    assert_eq!(
        opts(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]).cache_dir,
        PathBuf::from("/xdg/huggingface/hub")
    );
    assert_eq!(
        opts(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_HOME", "/hf")
        ])
        .cache_dir,
        PathBuf::from("/hf/hub")
    );
    assert_eq!(
        opts(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]).cache_dir,
        PathBuf::from("/legacy")
    );
    assert_eq!(
        opts(&[
            ("HF_HOME", "/hf"),
            ("HUGGINGFACE_HUB_CACHE", "/legacy"),
            ("HF_HUB_CACHE", "/cache")
        ])
        .cache_dir,
        PathBuf::from("/cache")
    );
    // `~` expands from HOME, as Python's expanduser does; empty values are unset.
    assert_eq!(
        opts(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "~/hf"),
            ("HF_HUB_CACHE", "")
        ])
        .cache_dir,
        PathBuf::from("/home/u/hf/hub")
    );
    assert_eq!(
        opts(&[("HOME", "/home/u"), ("HF_HUB_CACHE", "~")]).cache_dir,
        PathBuf::from("/home/u")
    );
    // `~user` is left alone.
    assert_eq!(
        opts(&[("HOME", "/home/u"), ("HF_HUB_CACHE", "~bob/c")]).cache_dir,
        PathBuf::from("~bob/c")
    );
}

#[test]
fn offline_flag_values() {
    for on in ["1", "true", "TRUE", "True", "yes", "ON", " 1 "] {
        assert!(opts(&[("HF_HUB_OFFLINE", on)]).local_files_only, "{on}");
        assert!(env_flag(Some(on)));
    }
    for off in ["0", "false", "", "no", "off", "2"] {
        assert!(!opts(&[("HF_HUB_OFFLINE", off)]).local_files_only, "{off}");
    }
    assert!(!opts(&[]).local_files_only);
    assert!(!env_flag(None));
}

#[test]
fn other_variables_and_defaults() {
    let o = opts(&[
        ("HF_ENDPOINT", "https://mirror.example"),
        ("HF_TOKEN", "hf_x"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ]);
    assert_eq!(o.endpoint.as_deref(), Some("https://mirror.example"));
    assert_eq!(o.token.as_deref(), Some("hf_x"));
    assert!(!o.progress);
    let d = opts(&[("HOME", "/h")]);
    assert_eq!(d.revision, "main");
    assert_eq!(d.variant, None);
    assert_eq!(d.endpoint, None);
    assert_eq!(d.token, None);
    assert!(d.progress);
    assert_eq!(
        d.repo_cache_dir("stabilityai/sdxl-turbo"),
        PathBuf::from("/h/.cache/huggingface/hub/models--stabilityai--sdxl-turbo")
    );
}
