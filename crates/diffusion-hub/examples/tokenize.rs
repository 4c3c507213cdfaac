//! Tokenize prompts with a CLIP tokenizer folder, one prompt per stdin line.
//!
//! `cargo run --release -p diffusion-hub --example tokenize -- TOKENIZER_DIR [--slow-v4] < prompts.txt`
//!
//! Prints one JSON array of ids per line, padded/truncated to model_max_length
//! (77 for SD). `--slow-v4` reproduces transformers 4's slow CLIPTokenizer instead of
//! transformers 5's (see `diffusion_hub::tokenizer`).

use std::io::{BufRead, Write};

use diffusion_hub::tokenizer::{ClipFlavor, ClipTokenizer};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut dir = None;
    let mut flavor = ClipFlavor::Transformers5;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--slow-v4" => flavor = ClipFlavor::SlowV4,
            _ if dir.is_none() => dir = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}").into()),
        }
    }
    let dir = dir.ok_or("usage: tokenize TOKENIZER_DIR [--slow-v4] < prompts.txt")?;
    let tok = ClipTokenizer::from_dir_with(&dir, flavor)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let prompt = line.strip_suffix('\r').unwrap_or(&line);
        writeln!(out, "{}", serde_json::to_string(&tok.encode(prompt)?)?)?;
    }
    Ok(())
}
