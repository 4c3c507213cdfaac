//! `diffuse generate --model org/name` through the real download path: the
//! embedded default model served by a local stand-in for the Hub
//! (diffusion-hub's `tests/support/mock_hub.rs`, reached through
//! `HF_ENDPOINT`), downloaded into `HF_HUB_CACHE`, then used offline.

#[path = "../../diffusion-hub/tests/support/mock_hub.rs"]
mod mock_hub;

use std::path::Path;
use std::process::{Command, Output};

use mock_hub::{MockHub, MockRepo};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn default_model_files() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default-model");
    [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(root.join(f)).unwrap()))
    .collect()
}

fn diffuse(dir: &Path, hub: &MockHub, offline: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuse"));
    cmd.args(args)
        .current_dir(dir)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_CACHE", dir.join("hub"))
        .env("DIFFUSE_CACHE", dir.join("cache"))
        .env_remove("HF_HOME")
        .env_remove("HF_TOKEN");
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    } else {
        cmd.env_remove("HF_HUB_OFFLINE");
    }
    cmd.output().expect("run diffuse")
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().into_bytes()
}

#[test]
fn a_hub_model_is_downloaded_cached_and_used_offline() {
    let hub = MockHub::start(vec![MockRepo::new(
        "test-org/digits",
        COMMIT,
        default_model_files(),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gen_args = |model: Option<&str>, out: &'static str| {
        let mut a = vec!["generate", "--seed", "3", "--steps", "8", "-o", out];
        if let Some(m) = model {
            a.extend(["--model", m]);
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |model, out, offline| {
        let args = gen_args(model, out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        diffuse(dir, &hub, offline, &args)
    };

    let o = run(Some("test-org/digits"), "hub.png", false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut downloads = hub.downloads();
    downloads.sort();
    assert_eq!(
        downloads,
        default_model_files()
            .iter()
            .map(|(f, _)| format!("{COMMIT}/{f}"))
            .collect::<Vec<_>>()
    );
    let snapshot = dir
        .join("hub/models--test-org--digits/snapshots")
        .join(COMMIT);
    for (rel, bytes) in default_model_files() {
        assert_eq!(std::fs::read(snapshot.join(&rel)).unwrap(), bytes, "{rel}");
    }

    // The same model embedded in the binary gives the same image, and asks
    // the Hub for nothing.
    let before = hub.requests().len();
    let o = run(None, "embedded.png", false);
    assert_eq!(hub.requests().len(), before);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        pixels(&dir.join("hub.png")),
        pixels(&dir.join("embedded.png"))
    );

    // Offline (HF_HUB_OFFLINE=1): from the cache, without a request.
    let before = hub.requests().len();
    let o = run(Some("test-org/digits"), "offline.png", true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hub.requests().len(), before);
    assert_eq!(
        pixels(&dir.join("hub.png")),
        pixels(&dir.join("offline.png"))
    );

    // A repo the Hub does not have: one error line naming it, no image.
    let o = run(Some("test-org/absent"), "absent.png", false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("test-org/absent"), "{err}");
    assert!(!dir.join("absent.png").exists());
    // Offline and not cached: the error names the cache folder.
    let o = run(Some("test-org/absent"), "absent.png", true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("models--test-org--absent"), "{err}");
}
