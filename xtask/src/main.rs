//! `cargo xtask <command>`: project automation.
//!
//! - `bench [FLAGS]`: build `diffusion-bench` (benches/) in release, with
//!   `--features cuda` when `--backend cuda` is asked, and run it with FLAGS:
//!   component and pipeline timings for a preset (tiny … SD1.5 … SDXL), and
//!   with `--compare diffusers` the same workloads in PyTorch side by side
//!   (`cargo xtask bench --help` lists the flags). Writes
//!   target/bench/report.json unless `--json` says otherwise.
//! - `bench schedulers`: what a scheduler step costs against a UNet forward
//!   at the same latent size on the pipelines' backend (`diffusion-bench
//!   --component unet,steps`, mid and SD1.5 presets on the CPU), then the
//!   criterion bench of every step on the crate's own `CpuTensor`.
//! - `bench models [--no-compare]`: criterion benches of a mid-size UNet
//!   forward, a VAE decode and a CLIP-L encode on the default CPU backend,
//!   beside the same workloads in PyTorch (same configs and thread count).
//! - `fixtures [module ...]`: regenerate the diffusers parity fixtures with the
//!   Python generator (needs python3 with torch, diffusers 0.42 and scipy;
//!   `PYTHON` selects the interpreter).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// Median point estimate (ns) of one criterion benchmark.
fn estimate_ns(group_dir: &Path, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(group_dir.join(name).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn bench(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("schedulers") => bench_schedulers(),
        Some("models") => bench_models(&args[1..]),
        None => bench_components(args),
        Some(flag) if flag.starts_with('-') => bench_components(args),
        Some(what) => Err(format!(
            "unknown bench `{what}` (available: FLAGS for the component bench, schedulers, models)"
        )),
    }
}

/// Builds and runs `diffusion-bench` with `args` (see benches/src/args.rs).
fn bench_components(args: &[String]) -> Result<(), String> {
    let cuda = args
        .windows(2)
        .any(|w| w[0] == "--backend" && w[1].starts_with("cuda"));
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(root())
        .args(["build", "--release", "-p", "diffusion-bench"]);
    if cuda {
        build.args(["--features", "cuda"]);
        // cudarc picks the CUDA API version at build time; without nvcc here it
        // must be told (the driver is loaded at run time).
        if std::env::var_os("CUDARC_CUDA_VERSION").is_none() {
            build.env("CUDARC_CUDA_VERSION", "13000");
        }
    }
    run(&mut build)?;
    let mut cmd = Command::new(root().join("target/release/diffusion-bench"));
    cmd.current_dir(root()).args(args);
    if !args
        .iter()
        .any(|a| a == "--json" || a == "-h" || a == "--help")
    {
        cmd.args(["--json", "target/bench/report.json"]);
    }
    run(&mut cmd)
}

/// Runs the criterion model benches (burn-flex, the default CPU backend, all
/// cores) and, unless `--no-compare`, the same workloads in PyTorch with the
/// same thread count (`PYTHON`, default python3, with torch, diffusers and
/// transformers); prints both and the ratios, writes target/bench-models.json.
fn bench_models(args: &[String]) -> Result<(), String> {
    let compare = !args.iter().any(|a| a == "--no-compare");
    let started = std::time::SystemTime::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    run(Command::new(env!("CARGO"))
        .current_dir(root())
        .env("RAYON_NUM_THREADS", threads.to_string())
        .args(["bench", "-p", "diffusion-models", "--bench", "models"]))?;
    let torch_json = root().join("target/bench-models-torch.json");
    let torch: Option<serde_json::Value> = if compare {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(python).current_dir(root()).args([
            "scripts/models/bench_torch.py",
            "--threads",
            &threads.to_string(),
            "--out",
            torch_json.to_str().ok_or("non-UTF-8 path")?,
        ]))?;
        let text = std::fs::read_to_string(&torch_json).map_err(|e| e.to_string())?;
        Some(serde_json::from_str(&text).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut rows = Vec::new();
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "workload", "rust (ms)", "torch (ms)", "ratio"
    );
    for (group, torch_key) in [
        ("unet_mid_forward", "unet_mid_forward"),
        ("vae_mid_decode", "vae_mid_decode"),
        ("clip_l_encode", "clip_l_encode"),
    ] {
        let dir = root().join("target/criterion").join(group);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != "report")
            // Only this run's results (criterion keeps other backends' old ones).
            .filter(|n| {
                std::fs::metadata(dir.join(n).join("new/estimates.json"))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= started)
            })
            .collect();
        names.sort();
        let torch_ms = torch
            .as_ref()
            .and_then(|t| t[torch_key]["median_ms"].as_f64());
        for name in names {
            let Some(ns) = estimate_ns(&dir, &name) else {
                continue;
            };
            let ms = ns / 1e6;
            let ratio = torch_ms.map(|t| ms / t);
            println!(
                "{:<34} {:>12.1} {:>12} {:>8}",
                format!("{group}/{name}"),
                ms,
                torch_ms.map_or("-".into(), |t| format!("{t:.1}")),
                ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            );
            rows.push(serde_json::json!({
                "workload": group, "rust": name, "rust_ms": ms,
                "torch_fp32_ms": torch_ms, "ratio_rust_over_torch": ratio,
            }));
        }
    }
    let out = root().join("target/bench-models.json");
    let json = serde_json::json!({"threads": threads, "rows": rows, "torch": torch});
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap())
        .map_err(|e| e.to_string())?;
    println!(
        "(ratio = rust / torch fp32 on the CPU, {threads} threads; wrote {})",
        out.display()
    );
    Ok(())
}

fn bench_schedulers() -> Result<(), String> {
    // The step against the model it follows, on the same backend and latent.
    for preset in ["mid", "sd15"] {
        bench_components(&[
            "--preset".into(),
            preset.into(),
            "--component".into(),
            "unet,steps".into(),
            "--batch".into(),
            "2".into(),
            "--runs".into(),
            "3".into(),
            "--json".into(),
            format!("target/bench/schedulers-{preset}.json"),
        ])?;
    }
    // Every step on `CpuTensor` (the crate's reference tensor), absolute times.
    run(Command::new(env!("CARGO")).current_dir(root()).args([
        "bench",
        "-p",
        "diffusion-schedulers",
        "--bench",
        "step",
    ]))
}

fn fixtures(args: &[String]) -> Result<(), String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(python)
        .current_dir(root())
        .arg("scripts/schedulers/gen_fixtures.py")
        .args(args))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("fixtures") => fixtures(&args[1..]),
        _ => Err("usage: cargo xtask <bench [FLAGS | schedulers | models [--no-compare]] | fixtures [module ...]>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
