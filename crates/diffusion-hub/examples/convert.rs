//! Converts a single-file SD1.x / SD2.x / SDXL-base checkpoint (`.safetensors` or
//! `.ckpt`) into a diffusers folder.
//!
//! ```text
//! cargo run --release -p diffusion-hub --example convert -- CHECKPOINT OUT_DIR [--prediction-type v_prediction] [--extract-ema] [--skip-unsafe-globals]
//! ```
//!
//! A `.ckpt` whose pickle names code torch's `weights_only` loader refuses
//! (a PyTorch Lightning training checkpoint's `ModelCheckpoint` callback,
//! `os.system`...) is refused unless `--skip-unsafe-globals` is given; that
//! code is never run either way.
//!
//! OUT_DIR must not exist (or be empty); it is written atomically. Tokenizers are
//! not part of a single-file checkpoint: copy `tokenizer/` (and `tokenizer_2/`)
//! from the base model's diffusers repo.

use std::path::PathBuf;
use std::process::ExitCode;

use diffusion_hub::single_file::{ConvertOptions, convert_file_with};
use diffusion_hub::torch_pickle::PickleOptions;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut opts = ConvertOptions::default();
    let mut pickle = PickleOptions::default();
    while let Some(a) = args.next() {
        if a == "--prediction-type" {
            let Some(v) = args.next() else {
                eprintln!("--prediction-type needs a value (epsilon, v_prediction, sample)");
                return ExitCode::from(2);
            };
            opts.prediction_type = Some(v);
        } else if a == "--extract-ema" {
            opts.extract_ema = true;
        } else if a == "--skip-unsafe-globals" {
            pickle = pickle.skip_unsafe_globals(true);
        } else {
            positional.push(PathBuf::from(a));
        }
    }
    let [checkpoint, out_dir] = &positional[..] else {
        eprintln!(
            "usage: convert CHECKPOINT OUT_DIR [--prediction-type v_prediction] [--extract-ema] [--skip-unsafe-globals]"
        );
        return ExitCode::from(2);
    };
    let start = std::time::Instant::now();
    match convert_file_with(checkpoint, out_dir, &opts, &pickle) {
        Ok(report) => {
            println!(
                "{}: {} -> {}",
                report.model_type,
                checkpoint.display(),
                out_dir.display()
            );
            for (name, n) in &report.tensors {
                println!("  {name}: {n} tensors");
            }
            println!(
                "  skipped {} checkpoint keys outside the pipeline (e.g. {:?})",
                report.skipped.len(),
                report.skipped.iter().take(3).collect::<Vec<_>>()
            );
            if !report.skipped_globals.is_empty() {
                println!(
                    "  skipped pickle globals (not run): {}",
                    report.skipped_globals.join(", ")
                );
            }
            println!("  tokenizers not included: copy them from the base model's diffusers repo");
            println!("  done in {:.2?}", start.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
