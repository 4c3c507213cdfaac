//! `cargo xtask <command>`: project automation.
//!
//! - `bench [schedulers]`: run the criterion benches and print each scheduler's
//!   step time beside a plain copy of the same buffer (ratio = step / copy).
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
    let what = args.first().map(String::as_str).unwrap_or("schedulers");
    if what != "schedulers" {
        return Err(format!("unknown bench `{what}` (available: schedulers)"));
    }
    run(Command::new(env!("CARGO")).current_dir(root()).args([
        "bench",
        "-p",
        "diffusion-schedulers",
        "--bench",
        "step",
    ]))?;
    let group = root().join("target/criterion/scheduler_step_2x4x128x128");
    let copy = estimate_ns(&group, "copy").ok_or("no criterion result for `copy`")?;
    let mut rows = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&group)
        .map_err(|e| e.to_string())?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if name == "copy" || name == "report" {
            continue;
        }
        if let Some(ns) = estimate_ns(&group, &name) {
            rows.push(serde_json::json!({"scheduler": name, "step_us": ns / 1e3, "ratio_to_copy": ns / copy}));
            println!("{name:<36} {:>9.1} us  {:>6.2}x copy", ns / 1e3, ns / copy);
        }
    }
    println!(
        "{:<36} {:>9.1} us  (2x4x128x128 f32 clone)",
        "copy",
        copy / 1e3
    );
    let out = root().join("target/bench-schedulers.json");
    let json = serde_json::json!({"copy_us": copy / 1e3, "steps": rows});
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap())
        .map_err(|e| e.to_string())?;
    println!("wrote {}", out.display());
    Ok(())
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
        _ => Err("usage: cargo xtask <bench [schedulers] | fixtures [module ...]>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
