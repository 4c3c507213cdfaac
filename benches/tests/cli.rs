//! `diffusion-bench` end to end on the CPU with the tiny preset: every
//! component runs and reports, and bad requests fail with one line that
//! names the problem.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_diffusion-bench"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn tiny_preset_reports_every_component() {
    let out = std::env::temp_dir().join(format!("bench-tiny-{}.json", std::process::id()));
    let o = bench(&[
        "--preset",
        "tiny",
        "--component",
        "unet,vae-decode,vae-encode,text,scheduler,pipeline,profile,ops",
        "--runs",
        "2",
        "--steps",
        "2",
        "--threads",
        "2",
        "--json",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).unwrap();
    let rows = report["rust"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows[..6] {
        let median = r["median_ms"].as_f64().unwrap();
        let (lo, hi) = (r["min_ms"].as_f64().unwrap(), r["max_ms"].as_f64().unwrap());
        assert!(median > 0.0 && lo <= median && median <= hi, "{r}");
        assert!(r["first_ms"].as_f64().unwrap() > 0.0, "{r}");
        if cfg!(target_os = "linux") {
            assert!(r["host_peak_mib"].as_f64().unwrap() > 1.0, "{r}");
        }
        assert!(
            r["device_mib"].is_null(),
            "no device memory on the CPU: {r}"
        );
    }
    // The profile books time to the UNet's layers by kind.
    let profile = &rows[6];
    let kinds: Vec<&str> = profile["by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["op"].as_str().unwrap())
        .collect();
    for kind in ["conv3x3", "attention", "group_norm", "linear", "geglu"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    assert!(profile["attributed_ms"].as_f64().unwrap() > 0.0);
    // ops: both formulations of each op, and the UNet under the 6 choices
    // (fused, matmul or tiled attention × direct or im2col convolutions).
    let ops = rows[7]["ops"].as_array().unwrap();
    assert!(ops.iter().any(|o| o["variant"] == "matmul_softmax"));
    assert!(ops.iter().any(|o| o["variant"] == "im2col_matmul"));
    assert_eq!(rows[7]["unet_variants"].as_array().unwrap().len(), 6);
    assert!(report["ratios"].as_array().unwrap().is_empty());
    // The table went to stdout.
    assert!(String::from_utf8_lossy(&o.stdout).contains("tiny   unet"));
}

#[test]
fn bad_requests_fail_with_one_named_problem() {
    for (args, needle) in [
        (&["--preset", "huge"][..], "--preset huge"),
        (
            &["--component", "unet,teleport"][..],
            "--component teleport",
        ),
        (&["--runs", "0"][..], "--runs 0"),
    ] {
        let o = bench(args);
        assert!(!o.status.success());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_diffusion-bench"))
        .current_dir(root())
        .args(["--preset", "tiny"])
        .env("DIFFUSION_CONV", "winograd")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("DIFFUSION_CONV=\"winograd\""));
    if !cfg!(feature = "cuda") {
        let o = bench(&["--preset", "tiny", "--backend", "cuda"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("--features cuda"));
    }
    let o = bench(&[
        "--preset",
        "tiny",
        "--component",
        "unet",
        "--runs",
        "1",
        "--compare",
        "diffusers",
        "--peer-json",
        "/nonexistent/peer.json",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/peer.json"));
}
