//! The PyTorch diffusers peer, the merged report and its table.

use crate::args::Args;
use crate::workloads::write_tokenizers;
use crate::{BenchError, Result};
use serde_json::{Value, json};
use std::process::Command;

/// Runs `scripts/bench/bench_diffusers.py` with the same workloads; its rows.
pub fn run_diffusers(args: &Args) -> Result<Value> {
    if let Some(path) = &args.peer_json {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
            path: path.display().to_string(),
            source,
        })?;
        return serde_json::from_str(&text).map_err(|e| BenchError::Invalid {
            what: path.display().to_string(),
            reason: e.to_string(),
        });
    }
    let script = args.root.join("scripts/bench/bench_diffusers.py");
    let tokenizers = write_tokenizers(&args.root)?;
    let out = args.root.join(format!(
        "target/bench/diffusers-{}.json",
        std::process::id()
    ));
    eprintln!(
        "running the diffusers side: {} {}",
        args.python,
        script.display()
    );
    let status = Command::new(&args.python)
        .arg(&script)
        .args(args.peer_flags())
        .arg("--tokenizers")
        .arg(&tokenizers)
        .arg("--json")
        .arg(&out)
        .status()
        .map_err(|e| BenchError::Peer(format!("cannot start {}: {e}", args.python)))?;
    if !status.success() {
        return Err(BenchError::Peer(format!(
            "{} {} failed ({status}); needs torch, diffusers and transformers",
            args.python,
            script.display()
        )));
    }
    let text = std::fs::read_to_string(&out).map_err(|source| BenchError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text).map_err(|e| BenchError::Invalid {
        what: out.display().to_string(),
        reason: e.to_string(),
    })
}

/// Both sides' rows and, where both timed a workload, Rust / diffusers.
pub fn report(header: &Value, rows: &[Value], peer: Option<&Value>) -> Value {
    let peer_rows: Vec<Value> = peer
        .and_then(|p| p.get("rows"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ratios = Vec::new();
    for r in rows {
        let found = peer_rows
            .iter()
            .find(|p| p["preset"] == r["preset"] && p["component"] == r["component"]);
        let theirs = found.and_then(|p| p["median_ms"].as_f64());
        if let (Some(theirs), Some(ours)) = (theirs, r["median_ms"].as_f64()) {
            ratios.push(json!({
                "preset": r["preset"],
                "component": r["component"],
                "rust_ms": ours,
                "diffusers_ms": theirs,
                "rust_over_diffusers": ours / theirs,
            }));
        }
    }
    json!({
        "header": header,
        "rust": rows,
        "diffusers": peer.cloned(),
        "ratios": ratios,
    })
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 1.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

fn mib(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.0}"))
}

/// Prints the side-by-side table (and the profile, when one was taken).
pub fn print_table(report: &Value) {
    let empty = Vec::new();
    let rust = report["rust"].as_array().unwrap_or(&empty);
    let peer: Vec<Value> = report["diffusers"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!("{}", report["header"]);
    if let Some(env) = report["diffusers"].get("env") {
        println!("diffusers side: {env}");
    }
    println!(
        "{:<6} {:<11} | {:>9} {:>19} {:>9} {:>7} {:>7} | {:>9} {:>19} {:>9} {:>7} {:>7} | {:>7}",
        "preset",
        "component",
        "rust ms",
        "(min-max)",
        "first",
        "hostMiB",
        "devMiB",
        "torch ms",
        "(min-max)",
        "first",
        "hostMiB",
        "devMiB",
        "ratio"
    );
    let rust_only = |r: &&Value| {
        crate::args::RUST_ONLY
            .iter()
            .any(|c| r["component"].as_str() == Some(c))
    };
    for r in rust.iter().filter(|r| !rust_only(r)) {
        let p = peer
            .iter()
            .find(|p| p["preset"] == r["preset"] && p["component"] == r["component"]);
        let side = |v: Option<&Value>| match v {
            Some(v) => format!(
                "{:>9} {:>19} {:>9} {:>7} {:>7}",
                ms(&v["median_ms"]),
                format!("({}-{})", ms(&v["min_ms"]), ms(&v["max_ms"])),
                ms(&v["first_ms"]),
                mib(&v["host_peak_mib"]),
                mib(&v["device_mib"])
            ),
            None => format!("{:>9} {:>19} {:>9} {:>7} {:>7}", "-", "", "", "", ""),
        };
        let ratio = match (
            r["median_ms"].as_f64(),
            p.and_then(|p| p["median_ms"].as_f64()),
        ) {
            (Some(a), Some(b)) => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        println!(
            "{:<6} {:<11} | {} | {} | {:>7}",
            r["preset"].as_str().unwrap_or(""),
            r["component"].as_str().unwrap_or(""),
            side(Some(r)),
            side(p),
            ratio
        );
    }
    println!("ratio = Rust median / diffusers median (below 1: Rust is faster)");
    for r in rust.iter().filter(|r| r["component"] == "ops") {
        println!("\nops [{}]:", r["preset"].as_str().unwrap_or(""));
        for e in r["ops"].as_array().unwrap_or(&empty) {
            println!(
                "  {:<44} {:<16} {:>9} ms {:>7.1} TFLOP/s",
                e["op"].as_str().unwrap_or(""),
                e["variant"].as_str().unwrap_or(""),
                ms(&e["ms"]),
                e["tflops"].as_f64().unwrap_or(0.0)
            );
        }
        for v in r["unet_variants"].as_array().unwrap_or(&empty) {
            println!(
                "  UNet forward, {:<6} attention, {:<6} conv:   {:>9} ms ({}-{}), first {} ms",
                v["attention"].as_str().unwrap_or(""),
                v["conv"].as_str().unwrap_or(""),
                ms(&v["median_ms"]),
                ms(&v["min_ms"]),
                ms(&v["max_ms"]),
                ms(&v["first_ms"])
            );
        }
    }
    for r in rust.iter().filter(|r| r["component"] == "profile") {
        println!(
            "\nprofile [{}] UNet forward: unprofiled {} ms, profiled {} ms ({} ms in the ops below, {} ms between them)",
            r["preset"].as_str().unwrap_or(""),
            ms(&r["unprofiled_ms"]),
            ms(&r["profiled_ms"]),
            ms(&r["attributed_ms"]),
            ms(&r["unattributed_ms"])
        );
        for (title, key) in [("by op kind", "by_kind"), ("largest ops", "top_ops")] {
            println!("  {title}:");
            for e in r[key].as_array().unwrap_or(&empty) {
                println!(
                    "    {:>9} ms {:>5.1}% {:>4}x  {}",
                    ms(&e["ms"]),
                    e["share"].as_f64().unwrap_or(0.0) * 100.0,
                    e["calls"],
                    e["op"].as_str().unwrap_or("")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_rows_by_preset_and_component() {
        let rows = vec![
            json!({"preset": "tiny", "component": "unet", "median_ms": 4.0}),
            json!({"preset": "tiny", "component": "text", "median_ms": 1.0}),
        ];
        let peer = json!({"rows": [
            {"preset": "tiny", "component": "unet", "median_ms": 2.0},
            {"preset": "mid", "component": "text", "median_ms": 1.0}
        ]});
        let r = report(&json!({}), &rows, Some(&peer));
        let ratios = r["ratios"].as_array().unwrap();
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0]["rust_over_diffusers"], 2.0);
        let r = report(&json!({}), &rows, None);
        assert!(r["ratios"].as_array().unwrap().is_empty());
    }
}
