//! Loading a single-file checkpoint (the original LDM/SGM layout of SD 1.x,
//! SD 2.x, SDXL base and refiner, as `.safetensors` or `.ckpt`), as
//! diffusers' `StableDiffusionPipeline.from_single_file(path)`, and
//! generating with it:
//!
//! ```sh
//! cargo run --release -p examples --example single_file -- --prompt "a cat" --output single_file.png
//! ```
//!
//! Three steps: diffusion-hub converts the checkpoint into a diffusers
//! folder (only names change; configs are read from the tensor shapes);
//! the tokenizer, which a checkpoint does not hold, is taken from its base
//! model's repo (what `from_single_file` takes from its `config=` repo);
//! then the folder loads like any other.
//!
//! Without `--checkpoint` it runs offline on the tiny random-weight SD1
//! checkpoint of diffusion-hub's conversion tests (`sd1.safetensors`), with
//! the config fields its weights cannot tell (it is not shaped like a
//! released model) and a character-level tokenizer that fits its 64-token
//! text encoder: noise out, in about a second. With a real checkpoint
//! (`--checkpoint v1-5-pruned-emaonly.safetensors`) the tokenizer comes
//! from the base model's Hub repo (SD1: `stable-diffusion-v1-5/stable-diffusion-v1-5`,
//! SD2: `stabilityai/stable-diffusion-2-1`, SDXL: `stabilityai/stable-diffusion-xl-base-1.0`,
//! refiner: `stabilityai/stable-diffusion-xl-refiner-1.0`; only its
//! tokenizer files are downloaded), or from `--tokenizer HUB_ID|DIR`.
//!
//! Flags: `--set COMPONENT.FIELD=VALUE` (repeatable) sets a config field the
//! weights cannot tell (e.g. `--set scheduler.prediction_type=v_prediction`
//! for SD 2.x 768-v, `--set vae.scaling_factor=0.13025`); `--save-folder DIR`
//! keeps the converted diffusers folder (default: a temporary one, removed);
//! `--prompt`, `--steps` (default 25), `--seed` (default 0), `--output`
//! (default `single_file.png`). A refiner or an inpainting checkpoint needs
//! an input image: keep its folder with `--save-folder DIR` and run the
//! `img2img` or `inpaint` example with `--model DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use diffusion_hub::resolve::{ResolveOptions, Resolved, resolve};
use diffusion_hub::single_file::{ConvertOptions, ModelType, convert_file};
use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params};
use serde_json::{Map, Value, json};
use support::{Args, usage};

type B = diffusion_models::backend::Cpu;

const HELP: &str = "
cargo run --release -p examples --example single_file -- [--checkpoint FILE] [--tokenizer HUB_ID|DIR]
    [--set COMPONENT.FIELD=VALUE ...] [--save-folder DIR] [--prompt TEXT] [--steps N] [--seed N] [--output PNG]
";

/// The base model's tokenizer source.
enum Tokenizer {
    /// A Hub repo id or diffusers folder holding `tokenizer/` (and `tokenizer_2/`).
    From(String),
    /// The character-level tokenizer of the tiny test checkpoint.
    Tiny,
}

fn main() -> ExitCode {
    support::run(HELP, single_file)
}

fn single_file(mut args: Args) -> support::Result {
    let checkpoint = args.string("--checkpoint")?;
    let tokenizer = args.string("--tokenizer")?;
    let sets = args.all("--set");
    let save_folder = args.string("--save-folder")?;
    let prompt = args.string("--prompt")?.unwrap_or_else(|| "a cat".into());
    let steps = args.count("--steps", 25)?;
    let seed: u64 = args.value("--seed", 0)?;
    let output = args
        .string("--output")?
        .unwrap_or_else(|| "single_file.png".into());
    args.finish()?;

    let (checkpoint, mut overrides, tiny) = match checkpoint {
        Some(path) if Path::new(&path).is_file() => (PathBuf::from(path), BTreeMap::new(), false),
        Some(path) => return Err(usage(format!("--checkpoint: {path} is not a file"))),
        None => {
            let (path, overrides) = support::tiny_checkpoint()?;
            (path, overrides, true)
        }
    };
    for set in &sets {
        let (component, field, value) = parse_set(set)?;
        overrides
            .entry(component)
            .or_insert_with(Map::new)
            .insert(field, value);
    }
    let tokenizer = match tokenizer {
        Some(source) => Some(Tokenizer::From(source)),
        None if tiny => Some(Tokenizer::Tiny),
        None => None, // the base model's, once the type is known
    };
    let temporary = TempDir::new()?;
    let folder = match &save_folder {
        Some(dir) => PathBuf::from(dir),
        None => temporary.0.join("model"),
    };

    // 1. The checkpoint → a diffusers folder.
    let options = ConvertOptions {
        overrides,
        ..ConvertOptions::default()
    };
    let report = convert_file(&checkpoint, &folder, &options)?;
    let tensors: usize = report.tensors.iter().map(|(_, n)| n).sum();
    println!(
        "{}: {} → {} ({tensors} tensors)",
        checkpoint.display(),
        report.model_type,
        report.pipeline_class
    );

    // 2. Its base model's tokenizer.
    let tokenizer =
        tokenizer.unwrap_or_else(|| Tokenizer::From(base_model(report.model_type).into()));
    add_tokenizers(&folder, &tokenizer)?;

    // A refiner (img2img) or an inpainting checkpoint needs an input image.
    let class = report.pipeline_class.as_str();
    if !matches!(
        class,
        "StableDiffusionPipeline" | "StableDiffusionXLPipeline"
    ) {
        return match &save_folder {
            Some(dir) => {
                println!("a {class}: run the img2img or inpaint example with --model {dir}");
                Ok(())
            }
            None => Err(format!(
                "a {class} needs an input image: keep the folder with --save-folder DIR, \
                 then run the img2img or inpaint example with --model DIR"
            )
            .into()),
        };
    }

    // 3. pipe = DiffusionPipeline.from_pretrained(folder); pipe(prompt).images[0].save(output)
    let mut pipe = DiffusionPipeline::<B>::from_pretrained(
        &folder.to_string_lossy(),
        &LoadOptions::default(),
    )?;
    let mut params = Params::prompt(prompt);
    params.num_inference_steps = Some(steps);
    params.generator = Some(Generator::Seed(seed));
    let images = pipe.call(params)?.images.ok_or("no images")?;
    images.save_png(0, output.as_ref(), &[])?;
    println!(
        "{}: {}×{} → {output}",
        pipe.class_name(),
        images.width,
        images.height
    );
    if let Some(dir) = save_folder {
        println!("the diffusers folder: {dir}");
    }
    Ok(())
}

/// The repo whose tokenizers a checkpoint of this type was trained with
/// (diffusers' default `config=` repos of `from_single_file`).
fn base_model(model_type: ModelType) -> &'static str {
    match model_type {
        ModelType::Sd1 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
        ModelType::Sd2 => "stabilityai/stable-diffusion-2-1",
        ModelType::Sdxl => "stabilityai/stable-diffusion-xl-base-1.0",
        ModelType::SdxlRefiner => "stabilityai/stable-diffusion-xl-refiner-1.0",
    }
}

/// Puts `tokenizer/` (and `tokenizer_2/`) into the converted folder, for each
/// text encoder it has, and names them in its `model_index.json` (the
/// converter leaves them `[null, null]`).
fn add_tokenizers(folder: &Path, source: &Tokenizer) -> support::Result {
    let index_path = folder.join("model_index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(&index_path)?)?;
    let wanted: Vec<&str> = [
        ("tokenizer", "text_encoder"),
        ("tokenizer_2", "text_encoder_2"),
    ]
    .into_iter()
    .filter(|(_, encoder)| index[*encoder][0].is_string())
    .map(|(tokenizer, _)| tokenizer)
    .collect();
    match source {
        Tokenizer::Tiny => support::write_tiny_tokenizer(&folder.join("tokenizer"))?,
        Tokenizer::From(name) => {
            // Resolve the base repo with every component but the tokenizers
            // skipped: nothing else is downloaded.
            let mut options = ResolveOptions::from_env();
            for skip in [
                "unet",
                "vae",
                "text_encoder",
                "text_encoder_2",
                "scheduler",
                "safety_checker",
                "feature_extractor",
                "image_encoder",
            ] {
                options.skip_components.insert(skip.into());
            }
            let Resolved::Pipeline(base) = resolve(name, &options)? else {
                return Err(format!(
                    "--tokenizer {name}: not a diffusers pipeline (no model_index.json)"
                )
                .into());
            };
            for tokenizer in &wanted {
                let Some(component) = base.components.get(*tokenizer) else {
                    return Err(format!("--tokenizer {name}: no `{tokenizer}` folder").into());
                };
                copy_files(&component.dir, &folder.join(tokenizer))?;
            }
        }
    }
    for tokenizer in wanted {
        index[tokenizer] = json!(["transformers", "CLIPTokenizer"]);
    }
    std::fs::write(&index_path, serde_json::to_string_pretty(&index)?)?;
    Ok(())
}

/// Copies the files of `src` (not its subfolders) into `dst`.
fn copy_files(src: &Path, dst: &Path) -> support::Result {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        if path.is_file() {
            let to = dst.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &to)
                .map_err(|e| format!("{} → {}: {e}", path.display(), to.display()))?;
        }
    }
    Ok(())
}

/// `COMPONENT.FIELD=VALUE`; VALUE is JSON (`0.13025`, `true`), else a string.
fn parse_set(text: &str) -> support::Result<(String, String, Value)> {
    let bad = || usage(format!("--set {text:?}: expected COMPONENT.FIELD=VALUE"));
    let (key, value) = text.split_once('=').ok_or_else(bad)?;
    let (component, field) = key.split_once('.').ok_or_else(bad)?;
    if component.is_empty() || field.is_empty() {
        return Err(bad());
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
    Ok((component.into(), field.into(), value))
}

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> support::Result<Self> {
        let path = std::env::temp_dir().join(format!("single-file-example-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
