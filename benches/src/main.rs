//! `diffusion-bench`: times the components of a Stable Diffusion-class model
//! and a whole pipeline on a chosen backend, dtype and batch, with random
//! weights built from real configs (`benches/presets.json`), and with
//! `--compare diffusers` runs the same workloads in PyTorch diffusers
//! (`scripts/bench/bench_diffusers.py`) in the same invocation and prints the
//! ratios. `cargo xtask bench` builds and runs it.
//!
//! Each workload is called once untimed-apart (the first call: kernel
//! compilation and autotuning on a GPU, allocation everywhere), then `--runs`
//! times, each call ending with a device sync; the table shows the median and
//! the spread (min–max). Memory: the process's peak resident set during the
//! workload (Linux `VmHWM`, reset per workload) and, on CUDA, the device
//! memory the allocator holds after it (its pools only grow during a
//! workload, so that is its peak).
//!
//! Workloads (the same on both sides):
//! - `unet`: one UNet2DCondition forward, `--batch` latents (2 = classifier-free
//!   guidance), 77 text states; SDXL with its pooled-text and time-id inputs.
//! - `vae-decode` / `vae-encode`: one image through the VAE (its `force_upcast`
//!   honoured in f16, as diffusers' SDXL pipeline does).
//! - `text`: the text encoder(s) on `--batch` sequences of 77 tokens.
//! - `scheduler`: one DDIM step on the latents (on the device).
//! - `pipeline`: a whole text-to-image call with guidance, `--steps` steps,
//!   the preset's scheduler, images back on the host.
//! - `profile` (Rust only): one UNet forward with per-op timing
//!   (`diffusion_models::profile`): where the time goes.
//! - `ops` (Rust only): attention, 3×3 conv and linear at the UNet's shapes,
//!   each in the formulations a backend might run fastest.

// The CPU device is `Copy`, the CUDA one is not: clone for both.
#![allow(clippy::clone_on_copy)]

mod args;
mod compare;
mod memory;
mod ops;
mod training;
mod workloads;

use args::Args;
use serde_json::{Value, json};
use std::process::ExitCode;

/// Failures of a bench run, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(transparent)]
    Model(#[from] diffusion_models::error::ModelError),
    #[error(transparent)]
    Pipeline(#[from] diffusion_pipelines::PipelineError),
    #[error(transparent)]
    Scheduler(#[from] diffusion_schedulers::SchedulerError),
    #[error(transparent)]
    Tokenizer(#[from] diffusion_hub::tokenizer::TokenizerError),
    #[error("diffusers side: {0}")]
    Peer(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

fn run() -> Result<()> {
    let mut args = Args::parse(std::env::args().skip(1))?;
    if args.help {
        println!("{}", args::USAGE);
        return Ok(());
    }
    args.formulation = args
        .formulation
        .with_vars(|var| std::env::var(var).ok())
        .map_err(|e| BenchError::Usage(e.to_string()))?;
    if args.backend.starts_with("cuda") {
        probe_cuda()?;
    }
    if args.write_tokenizers {
        let dir = workloads::write_tokenizers(&args.root)?;
        eprintln!("wrote {}", dir.display());
        return Ok(());
    }
    let mut rows: Vec<Value> = Vec::new();
    let header = json!({
        "backend": args.backend,
        "dtype": args.dtype_name(),
        "batch": args.batch,
        "runs": args.runs,
        "steps": args.steps,
        "threads": args.threads,
        "formulation": {
            "attention": args.formulation.attention.name(),
            "conv": args.formulation.conv.name(),
            "group_norm": args.formulation.group_norm.name(),
            "linear": args.formulation.linear.name(),
        },
    });
    eprintln!("diffusion-bench {header}");
    for preset in &args.presets {
        let mut got = match args.backend.as_str() {
            "cpu" => workloads::run_preset::<diffusion_models::backend::Cpu>(&args, preset)?,
            #[cfg(feature = "cuda")]
            "cuda" => workloads::run_preset::<diffusion_models::backend::Cuda>(&args, preset)?,
            #[cfg(feature = "cuda")]
            "cuda-nofusion" => workloads::run_preset::<
                burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>,
            >(&args, preset)?,
            other => {
                return Err(BenchError::Usage(format!(
                    "--backend {other}: this build has {} (build with `--features cuda` for cuda)",
                    if cfg!(feature = "cuda") {
                        "cpu, cuda, cuda-nofusion"
                    } else {
                        "cpu"
                    }
                )));
            }
        };
        rows.append(&mut got);
    }
    let peer = if args.compare {
        Some(compare::run_diffusers(&args)?)
    } else {
        None
    };
    let report = compare::report(&header, &rows, peer.as_ref());
    compare::print_table(&report);
    if let Some(path) = &args.json {
        memory::write_atomic(
            path,
            &serde_json::to_string_pretty(&report).unwrap_or_default(),
        )?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A usable CUDA driver with at least one device, asked of the driver library
/// itself: cudarc panics when either is missing.
#[cfg(feature = "cuda")]
fn probe_cuda() -> Result<()> {
    type Init = unsafe extern "C" fn(u32) -> i32;
    type DeviceCount = unsafe extern "C" fn(*mut i32) -> i32;
    let name = if cfg!(windows) {
        "nvcuda.dll"
    } else {
        "libcuda.so.1"
    };
    let fail = |what: String| BenchError::Usage(format!("--backend cuda: {what}"));
    // SAFETY: loading the driver library runs no initialiser with
    // preconditions, and `cuInit` / `cuDeviceGetCount` have these C signatures
    // in every CUDA driver API version.
    unsafe {
        let lib = libloading::Library::new(name)
            .map_err(|e| fail(format!("no CUDA driver ({name}): {e}")))?;
        let init: libloading::Symbol<Init> = lib
            .get(b"cuInit\0")
            .map_err(|e| fail(format!("{name} has no cuInit: {e}")))?;
        let code = init(0);
        if code != 0 {
            return Err(fail(format!("cuInit failed (CUDA error {code})")));
        }
        let count: libloading::Symbol<DeviceCount> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| fail(format!("{name} has no cuDeviceGetCount: {e}")))?;
        let mut devices = 0;
        let code = count(&mut devices);
        if code != 0 || devices < 1 {
            return Err(fail(format!(
                "no CUDA device (cuDeviceGetCount: {devices} devices, CUDA error {code})"
            )));
        }
        // Keep the initialised driver loaded: cudarc opens it again.
        std::mem::forget(lib);
    }
    Ok(())
}

/// Without the `cuda` feature the backend is refused when it is matched.
#[cfg(not(feature = "cuda"))]
fn probe_cuda() -> Result<()> {
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diffusion-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
