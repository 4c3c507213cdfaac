//! Command-line flags (shared with the PyTorch peer, which takes the same ones).

use crate::{BenchError, Result};
use diffusion_models::{Formulation, Precision};
use std::path::PathBuf;

pub const USAGE: &str = "\
diffusion-bench [FLAGS]   (usually through `cargo xtask bench [FLAGS]`)

  --preset P[,P...]      tiny | mid | sd15 | sd15-256 | sdxl (presets.json)   [mid]
  --component C[,C...]   unet, vae-decode, vae-encode, text, scheduler,
                         pipeline, or all (these six); unet-lora (the UNet
                         with an unfused LoRA of rank --lora on every
                         attention projection); unet-controlnet (a ControlNet
                         made from the UNet, then the UNet with its
                         residuals: one ControlNet step); train-lora,
                         train-full (one f32 training step of the UNet:
                         forward, MSE, backward, clipping, AdamW, with a
                         rank---lora LoRA on the attention projections or
                         every weight), train-lora-checkpointing (the LoRA
                         step with gradient checkpointing: Burn's balanced
                         strategy / diffusers' per-block); Rust only: profile (per-op times
                         of one UNet forward), ops (op formulations at the
                         UNet's shapes), steps (one step of every scheduler
                         class, and its share of a `unet` forward measured
                         in the same run)                                     [all]
  --backend B            cpu | cuda | cuda-nofusion (burn-cuda without its
                         fusion layer); cuda needs a `--features cuda` build  [cpu]
  --dtype D              f32 | f16 | bf16                                     [f32 on cpu, f16 on cuda]
  --batch N              UNet/text batch (2 = classifier-free guidance)       [2]
  --lora RANK            the rank of unet-lora's adapter                      [16]
  --runs N               timed runs after the first call                      [10; pipeline: 3]
  --steps N              pipeline denoising steps                             [20]
  --pipeline-runs N      timed pipeline calls after the first                 [min(runs, 3)]
  --threads N            CPU threads on both sides                            [all cores]
  --compare diffusers    also run scripts/bench/bench_diffusers.py (python3 with
                         torch, diffusers, transformers) and print ratios
  --python PATH          interpreter for --compare                            [$PYTHON or python3]
  --peer-json PATH       with --compare: read the diffusers side's rows from a
                         JSON file bench_diffusers.py wrote instead of running it
  --root DIR             repository root (configs, scripts)                   [.]
  --json PATH            write the report (both sides, ratios) as JSON
  --write-tokenizers     only write target/bench/tokenizers (the CLIP tokenizer
                         folders both sides read) and exit

Op formulations (the backend's measured fastest unless set; reported in the
header line): DIFFUSION_ATTENTION=fused|matmul|tiled, DIFFUSION_CONV=direct|im2col,
DIFFUSION_GROUP_NORM=one-pass|two-stage, DIFFUSION_LINEAR=matmul|packed.
";

pub const COMPONENTS: [&str; 14] = [
    "unet",
    "vae-decode",
    "vae-encode",
    "text",
    "scheduler",
    "pipeline",
    "unet-lora",
    "unet-controlnet",
    "train-lora",
    "train-full",
    "train-lora-checkpointing",
    "profile",
    "ops",
    "steps",
];

/// Components only the Rust side runs.
pub const RUST_ONLY: [&str; 3] = ["profile", "ops", "steps"];

#[derive(Debug, Clone)]
pub struct Args {
    pub presets: Vec<String>,
    pub components: Vec<String>,
    pub backend: String,
    pub precision: Precision,
    pub batch: usize,
    pub runs: usize,
    pub steps: usize,
    pub pipeline_runs: Option<usize>,
    pub threads: usize,
    pub compare: bool,
    pub python: String,
    pub peer_json: Option<PathBuf>,
    pub root: PathBuf,
    pub json: Option<PathBuf>,
    pub help: bool,
    pub write_tokenizers: bool,
    /// What the models are built with: the backend's (`Formulation::for_backend`)
    /// until `main` applies the environment's choices.
    pub formulation: Formulation,
    /// `unet-lora`'s rank.
    pub lora_rank: usize,
}

impl Args {
    pub fn dtype_name(&self) -> &'static str {
        match self.precision {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
        }
    }

    /// Timed pipeline calls after the first.
    pub fn pipeline_runs(&self) -> usize {
        self.pipeline_runs.unwrap_or(self.runs.min(3))
    }

    /// The flags the PyTorch peer needs to run the same workloads.
    pub fn peer_flags(&self) -> Vec<String> {
        let components: Vec<&str> = self
            .components
            .iter()
            .map(String::as_str)
            .filter(|c| !RUST_ONLY.contains(c))
            .collect();
        vec![
            "--preset".into(),
            self.presets.join(","),
            "--component".into(),
            components.join(","),
            "--backend".into(),
            self.backend.clone(),
            "--dtype".into(),
            self.dtype_name().into(),
            "--batch".into(),
            self.batch.to_string(),
            "--runs".into(),
            self.runs.to_string(),
            "--steps".into(),
            self.steps.to_string(),
            "--pipeline-runs".into(),
            self.pipeline_runs().to_string(),
            "--threads".into(),
            self.threads.to_string(),
            "--root".into(),
            self.root.display().to_string(),
            "--lora".into(),
            self.lora_rank.to_string(),
        ]
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut presets = vec!["mid".to_string()];
        let mut components: Vec<String> = COMPONENTS[..6].iter().map(|s| s.to_string()).collect();
        let mut backend = "cpu".to_string();
        let mut dtype: Option<String> = None;
        let mut batch = 2;
        let mut runs = 10;
        let mut steps = 20;
        let mut pipeline_runs = None;
        let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut compare = false;
        let mut python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut root = PathBuf::from(".");
        let mut peer_json = None;
        let mut json = None;
        let mut help = false;
        let mut write_tokenizers = false;
        let mut lora_rank = 16;
        let mut it = args.into_iter();
        let usage = |m: String| BenchError::Usage(format!("{m}\n\n{USAGE}"));
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                help = true;
                continue;
            }
            if flag == "--write-tokenizers" {
                write_tokenizers = true;
                continue;
            }
            let mut value = || {
                it.next()
                    .ok_or_else(|| usage(format!("{flag} needs a value")))
            };
            let number = |name: &str, v: String| -> Result<usize> {
                match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(usage(format!("{name} {v}: expected a whole number > 0"))),
                }
            };
            match flag.as_str() {
                "--preset" => presets = split(&value()?),
                "--component" => {
                    let v = value()?;
                    components = if v == "all" {
                        COMPONENTS[..6].iter().map(|s| s.to_string()).collect()
                    } else {
                        split(&v)
                    };
                }
                "--backend" => backend = value()?,
                "--dtype" => dtype = Some(value()?),
                "--batch" => batch = number("--batch", value()?)?,
                "--runs" => runs = number("--runs", value()?)?,
                "--steps" => steps = number("--steps", value()?)?,
                "--pipeline-runs" => pipeline_runs = Some(number("--pipeline-runs", value()?)?),
                "--threads" => threads = number("--threads", value()?)?,
                "--lora" => lora_rank = number("--lora", value()?)?,
                "--compare" => {
                    let v = value()?;
                    if v != "diffusers" {
                        return Err(usage(format!(
                            "--compare {v}: the only peer is `diffusers`"
                        )));
                    }
                    compare = true;
                }
                "--python" => python = value()?,
                "--peer-json" => peer_json = Some(PathBuf::from(value()?)),
                "--root" => root = PathBuf::from(value()?),
                "--json" => json = Some(PathBuf::from(value()?)),
                other => return Err(usage(format!("unknown flag `{other}`"))),
            }
        }
        for c in &components {
            if !COMPONENTS.contains(&c.as_str()) {
                return Err(usage(format!(
                    "--component {c}: expected one of {}",
                    COMPONENTS.join(", ")
                )));
            }
        }
        if presets.is_empty() || components.is_empty() {
            return Err(usage(
                "--preset and --component need at least one name".into(),
            ));
        }
        let dtype = dtype.unwrap_or_else(|| if backend == "cpu" { "f32" } else { "f16" }.into());
        let precision = Precision::parse(&dtype)
            .ok_or_else(|| usage(format!("--dtype {dtype}: expected f32, f16 or bf16")))?;
        Ok(Args {
            presets,
            components,
            formulation: Formulation::for_backend(&backend),
            lora_rank,
            backend,
            precision,
            batch,
            runs,
            steps,
            pipeline_runs,
            threads,
            compare,
            python,
            peer_json,
            root,
            json,
            help,
            write_tokenizers,
        })
    }
}

fn split(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Args> {
        Args::parse(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_flags() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.presets, ["mid"]);
        assert_eq!(a.components.len(), 6);
        assert_eq!(a.precision, Precision::F32);
        let a = parse(&[
            "--preset",
            "tiny,sd15",
            "--component",
            "unet,profile",
            "--backend",
            "cuda",
            "--runs",
            "3",
        ])
        .unwrap();
        assert_eq!(a.presets, ["tiny", "sd15"]);
        assert_eq!(a.components, ["unet", "profile"]);
        assert_eq!(a.precision, Precision::F16);
        assert_eq!(a.runs, 3);
        let flags = a.peer_flags();
        let i = flags.iter().position(|f| f == "--component").unwrap();
        assert_eq!(flags[i + 1], "unet");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (args, needle) in [
            (&["--runs", "0"][..], "--runs 0"),
            (&["--component", "unet,foo"][..], "--component foo"),
            (&["--dtype", "f8"][..], "--dtype f8"),
            (&["--compare", "onnx"][..], "--compare onnx"),
            (&["--frobnicate"][..], "--frobnicate"),
            (&["--batch"][..], "--batch needs a value"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
