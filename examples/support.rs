//! What the examples share and is not the point of any of them: the small
//! models this repository ships, so that every example runs offline from a
//! clean clone, and a small command-line parser whose errors are one line.
//!
//! Exit codes of every example: 0 on success, 2 for a bad command line (an
//! unknown flag, a missing or unparsable value, an input file that does not
//! exist), 1 for anything that fails later (a model that does not load, a
//! pipeline that refuses a parameter). Errors are one `error: ...` line on
//! stderr.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use serde_json::{Map, Value, json};

/// What an example's body returns.
pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The workspace root (the clone this example was built from).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the examples package is a folder of the workspace")
        .to_path_buf()
}

/// The pipeline fixtures of diffusion-pipelines' parity tests.
fn pipeline_fixtures() -> PathBuf {
    workspace().join("crates/diffusion-pipelines/tests/fixtures")
}

/// A file of the pipeline test fixtures' `inputs/` folder: `photo_a_32x32.png`,
/// `mask_disc_32x32_RGB.png`, ... (the img2img and inpainting inputs).
pub fn test_input(name: &str) -> PathBuf {
    pipeline_fixtures().join("inputs").join(name)
}

/// The folder of the pipeline tests' input images (a few small PNGs), the
/// default training set of the `train` example.
pub fn test_inputs_dir() -> PathBuf {
    pipeline_fixtures().join("inputs")
}

/// A complete diffusers folder of one of the tiny random-weight pipelines
/// the parity tests run (`sd1`: StableDiffusionPipeline, 32×32 pixels;
/// `inpaint`: its 9-channel inpainting variant; `sdxl`; `ddpm`; `ddim`), as
/// a path for `DiffusionPipeline::from_pretrained`.
///
/// The committed fixtures leave out what several pipelines share (the text
/// encoders, the VAE) and the 49408-token CLIP vocabulary (rebuilt from the
/// open-clip BPE file diffusion-hub's tests ship); this assembles the folder
/// under `target/example-models/NAME` and reuses it until a fixture changes. Its
/// weights are random: the images are noise, the code path is the real one.
pub fn tiny_pipeline(name: &str) -> Result<String> {
    let src = pipeline_fixtures().join("pipelines").join(name);
    if !src.join("assemble.json").is_file() {
        return Err(format!("no test pipeline `{name}` under {}", src.display()).into());
    }
    let dir = cache_dir()?.join(name);
    let built = modified(&dir.join("model_index.json"));
    if built.is_none() || built < newest(&pipeline_fixtures()) {
        // Built beside its final place and renamed, so that an interrupted
        // run leaves no half folder behind (and two runs at once both work);
        // rebuilt when a fixture is newer.
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        assemble(name, &src, &tmp)?;
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            if !dir.join("model_index.json").is_file() {
                return Err(format!("cannot create {}", dir.display()).into());
            }
        }
    }
    eprintln!(
        "no --model given: the tiny random-weight `{name}` pipeline of the tests ({})",
        dir.display()
    );
    Ok(dir.to_string_lossy().into_owned())
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The latest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut latest = modified(dir);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            modified(&path)
        };
        latest = latest.max(time);
    }
    latest
}

/// `target/example-models` of this workspace, or a temporary folder if that
/// cannot be written.
fn cache_dir() -> Result<PathBuf> {
    let target = workspace().join("target").join("example-models");
    if std::fs::create_dir_all(&target).is_ok() {
        return Ok(target);
    }
    let tmp = std::env::temp_dir().join("diffusion-rs-example-models");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Copies fixture pipeline `src` to `out`, adds its shared weights and writes
/// the CLIP vocabulary into its tokenizer folders (what diffusion-pipelines'
/// `tests/common::pipeline_dir` does for the tests).
fn assemble(name: &str, src: &Path, out: &Path) -> Result {
    copy_tree(src, out)?;
    let spec: Value = read_json(&src.join("assemble.json"))?;
    let shared = spec["shared"].as_object().cloned().unwrap_or_default();
    for (dest, file) in &shared {
        let file = file
            .as_str()
            .ok_or("assemble.json: a shared file name is not a string")?;
        let from = pipeline_fixtures().join("shared").join(file);
        std::fs::copy(&from, out.join(dest)).map_err(|e| format!("{}: {e}", from.display()))?;
    }
    let vocab = spec["vocab"].as_array().cloned().unwrap_or_default();
    if !vocab.is_empty() {
        let (bpe, bpe_path) = clip_bpe()?;
        for tokenizer in vocab {
            let tokenizer = tokenizer
                .as_str()
                .ok_or("assemble.json: bad tokenizer name")?;
            diffusion_hub::tokenizer::write_clip_vocab_files(&bpe, &bpe_path, &out.join(tokenizer))
                .map_err(|e| format!("{name}/{tokenizer}: {e}"))?;
        }
    }
    Ok(())
}

/// open-clip's `bpe_simple_vocab_16e6.txt`, decompressed, and its path.
fn clip_bpe() -> Result<(String, PathBuf)> {
    let path = workspace()
        .join("crates/diffusion-hub/tests/fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz");
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((text, path))
}

fn copy_tree(src: &Path, dst: &Path) -> Result {
    std::fs::create_dir_all(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    for entry in std::fs::read_dir(src).map_err(|e| format!("{}: {e}", src.display()))? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to).map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// Config fields to set per component, as `ConvertOptions::overrides` takes them.
pub type Overrides = BTreeMap<String, Map<String, Value>>;

/// The tiny SD1 single-file checkpoint of diffusion-hub's conversion tests
/// (`sd1.safetensors`, the original LDM layout with random weights) and the
/// config fields its weights cannot tell (attention heads, group-norm groups,
/// sample sizes), as `ConvertOptions::overrides` wants them: the converter
/// assumes the released models' values, which this toy model does not have.
pub fn tiny_checkpoint() -> Result<(PathBuf, Overrides)> {
    let dir = workspace().join("crates/diffusion-hub/tests/fixtures/single_file");
    let expected = read_json(&dir.join("sd1.expected.json"))?;
    let mut overrides = Overrides::new();
    for (component, fields) in expected["overrides"]
        .as_object()
        .cloned()
        .unwrap_or_default()
    {
        if let Value::Object(fields) = fields {
            overrides.insert(component, fields);
        }
    }
    let path = dir.join("sd1.safetensors");
    eprintln!(
        "no --checkpoint given: the tiny random-weight SD1 checkpoint of the tests ({})",
        path.display()
    );
    Ok((path, overrides))
}

/// Writes into `dir` a character-level CLIP-style tokenizer (`vocab.json`,
/// `merges.txt` without merges, `tokenizer_config.json`) that fits the tiny
/// test checkpoint's text encoder: 64 token ids and 16 positions, where a real
/// CLIP tokenizer has 49408 and 77. Ids: `<|startoftext|>` 0,
/// `<|endoftext|>` 1 (also the padding and the unknown token), `a`..`z`,
/// `a</w>`..`z</w>`, `0</w>`..`9</w>`. Only for that toy model: a real
/// checkpoint takes its base model's `tokenizer/`.
pub fn write_tiny_tokenizer(dir: &Path) -> Result {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tokens: Vec<String> = vec!["<|startoftext|>".into(), "<|endoftext|>".into()];
    tokens.extend(('a'..='z').map(String::from));
    tokens.extend(('a'..='z').map(|c| format!("{c}</w>")));
    tokens.extend(('0'..='9').map(|c| format!("{c}</w>")));
    let vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let config = json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": 16,
        "tokenizer_class": "CLIPTokenizer"
    });
    let write = |name: &str, text: String| -> Result {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()).into())
    };
    write("vocab.json", Value::Object(vocab).to_string())?;
    write("merges.txt", "#version: 0.2\n".into())?;
    write("tokenizer_config.json", config.to_string())
}

/// A bad command line: the example exits with status 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error, boxed as an example's body returns it.
pub fn usage(message: impl Into<String>) -> Box<dyn std::error::Error> {
    Box::new(Usage(message.into()))
}

/// The command line of an example: `--flag value` or `--flag=value` pairs,
/// read by name; whatever the example did not read is refused by
/// [`Args::finish`].
#[derive(Debug)]
pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Parses `argv` (without the program name).
    pub fn parse(argv: impl IntoIterator<Item = String>) -> std::result::Result<Args, Usage> {
        let mut pairs = Vec::new();
        let mut argv = argv.into_iter();
        while let Some(arg) = argv.next() {
            let Some(flag) = arg.strip_prefix("--").filter(|f| !f.is_empty()) else {
                return Err(Usage(format!(
                    "unexpected argument `{arg}` (flags are --name VALUE)"
                )));
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => match argv.next() {
                    Some(value) => (flag.to_string(), value),
                    None => return Err(Usage(format!("--{flag} needs a value"))),
                },
            };
            pairs.push((format!("--{name}"), value));
        }
        Ok(Args { pairs })
    }

    /// Every value given to `flag`, in order (for repeatable flags).
    pub fn all(&mut self, flag: &str) -> Vec<String> {
        let (taken, rest) = std::mem::take(&mut self.pairs)
            .into_iter()
            .partition(|(f, _)| f == flag);
        self.pairs = rest;
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// The value of `flag`, if given (once).
    pub fn string(&mut self, flag: &str) -> Result<Option<String>> {
        let mut values = self.all(flag);
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop()),
            _ => Err(usage(format!("{flag} given {} times", values.len()))),
        }
    }

    /// The value of `flag` parsed as a `T`, or `default`.
    pub fn value<T: FromStr>(&mut self, flag: &str, default: T) -> Result<T>
    where
        T::Err: fmt::Display,
    {
        Ok(self.optional(flag)?.unwrap_or(default))
    }

    /// The value of `flag` parsed as a `T`, if given.
    pub fn optional<T: FromStr>(&mut self, flag: &str) -> Result<Option<T>>
    where
        T::Err: fmt::Display,
    {
        match self.string(flag)? {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|e| usage(format!("{flag} {text:?}: {e}"))),
        }
    }

    /// A count of at least 1 (steps, batch size), or `default`.
    pub fn count(&mut self, flag: &str, default: usize) -> Result<usize> {
        match self.value(flag, default)? {
            0 => Err(usage(format!("{flag} must be at least 1"))),
            n => Ok(n),
        }
    }

    /// The path given to `flag`, which must be an existing file, or `default`.
    pub fn input_file(&mut self, flag: &str, default: impl FnOnce() -> PathBuf) -> Result<PathBuf> {
        let path = self
            .string(flag)?
            .map(PathBuf::from)
            .unwrap_or_else(default);
        if !path.is_file() {
            return Err(usage(format!("{flag}: {} is not a file", path.display())));
        }
        Ok(path)
    }

    /// `--model`: a Hub repo id (`org/name`), a local diffusers folder or a
    /// checkpoint file, if given. A name that is neither (a path that does
    /// not exist, a malformed repo id) is a bad command line; whether a Hub
    /// repo exists is known only when it is fetched.
    pub fn model(&mut self) -> Result<Option<String>> {
        let model = self.string("--model")?;
        if let Some(name) = &model {
            diffusion_hub::resolve::ModelSource::parse(name)
                .map_err(|e| usage(format!("--model: {e}")))?;
        }
        Ok(model)
    }

    /// Refuses any flag the example did not read.
    pub fn finish(self) -> Result {
        match self.pairs.first() {
            None => Ok(()),
            Some((flag, _)) => Err(usage(format!("unknown flag {flag}"))),
        }
    }
}

/// Runs an example's body on the process's command line: `--help` prints
/// `help` (the example's usage) and exits 0; a [`Usage`] error exits 2, any
/// other error 1, each as one `error: ...` line.
pub fn run(help: &str, body: impl FnOnce(Args) -> Result) -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", help.trim());
        return ExitCode::SUCCESS;
    }
    let result = Args::parse(argv)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
        .and_then(body);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            if e.is::<Usage>() {
                eprintln!("error: {line} (--help for usage)");
                ExitCode::from(2)
            } else {
                eprintln!("error: {line}");
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> std::result::Result<Args, Usage> {
        Args::parse(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_are_read_by_name_and_leftovers_refused() {
        let mut a = args(&[
            "--steps",
            "3",
            "--prompt=a cat",
            "--set",
            "x=1",
            "--set",
            "y=2",
        ])
        .unwrap();
        assert_eq!(a.count("--steps", 25).unwrap(), 3);
        assert_eq!(a.string("--prompt").unwrap().as_deref(), Some("a cat"));
        assert_eq!(a.all("--set"), ["x=1", "y=2"]);
        assert_eq!(a.value("--seed", 7u64).unwrap(), 7);
        a.finish().unwrap();

        let a = args(&["--stpes", "3"]).unwrap();
        assert!(a.finish().unwrap_err().is::<Usage>());
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        assert!(args(&["positional"]).is_err());
        assert!(args(&["--steps"]).is_err());
        let mut a = args(&["--steps", "many"]).unwrap();
        assert!(a.count("--steps", 25).unwrap_err().is::<Usage>());
        let mut a = args(&["--steps", "0"]).unwrap();
        assert!(a.count("--steps", 25).unwrap_err().is::<Usage>());
        let mut a = args(&["--seed", "1", "--seed", "2"]).unwrap();
        assert!(a.optional::<u64>("--seed").unwrap_err().is::<Usage>());
        let mut a = args(&["--model", "/no/such/model"]).unwrap();
        assert!(a.model().unwrap_err().is::<Usage>());
        let mut a = args(&["--model", "org/name"]).unwrap();
        assert_eq!(a.model().unwrap().as_deref(), Some("org/name"));
        let mut a = args(&["--image", "/no/such/file.png"]).unwrap();
        let e = a.input_file("--image", PathBuf::new).unwrap_err();
        assert!(e.is::<Usage>());
    }

    #[test]
    fn the_shipped_models_are_where_the_examples_look() {
        for name in ["sd1", "inpaint"] {
            let dir = pipeline_fixtures().join("pipelines").join(name);
            assert!(dir.join("assemble.json").is_file(), "{}", dir.display());
        }
        assert!(test_input("photo_a_32x32.png").is_file());
        assert!(test_input("mask_disc_32x32_RGB.png").is_file());
        let (ckpt, overrides) = tiny_checkpoint().unwrap();
        assert!(ckpt.is_file());
        assert!(overrides.contains_key("unet"));
        assert!(clip_bpe().is_ok());
    }

    #[test]
    fn the_tiny_pipelines_assemble_load_and_generate() {
        use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params, Task};
        type B = diffusion_models::backend::Cpu;
        let options = LoadOptions::<B> {
            progress: false,
            ..LoadOptions::default()
        };
        for (name, task, mask) in [
            ("sd1", Task::TextToImage, None),
            ("sd1", Task::ImageToImage, None),
            ("inpaint", Task::Inpaint, Some("mask_disc_32x32_RGB.png")),
        ] {
            let model = tiny_pipeline(name).unwrap();
            let mut pipe = DiffusionPipeline::<B>::from_pretrained(&model, &options).unwrap();
            let mut params = Params::prompt("a cat");
            params.num_inference_steps = Some(2);
            params.generator = Some(Generator::Seed(0));
            params.progress = false;
            if task != Task::TextToImage {
                let image = test_input("photo_a_32x32.png");
                params.image = Some(diffusion_pipelines::image::load_image(&image).unwrap());
            }
            if let Some(mask) = mask {
                params.mask_image =
                    Some(diffusion_pipelines::image::load_image(&test_input(mask)).unwrap());
            }
            let images = pipe.run(task, params).unwrap().images.unwrap();
            assert_eq!((images.width, images.height), (32, 32), "{name} {task:?}");
        }
    }

    #[test]
    fn the_tiny_tokenizer_fits_the_tiny_checkpoint() {
        let dir = std::env::temp_dir().join(format!("tiny-tokenizer-{}", std::process::id()));
        write_tiny_tokenizer(&dir).unwrap();
        let tok = diffusion_hub::tokenizer::ClipTokenizer::from_dir(&dir).unwrap();
        let ids = tok.encode("A cat, 9 lives!").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(ids.len(), 16);
        assert!(ids.iter().all(|&id| id < 64), "{ids:?}");
        assert_eq!((ids[0], ids[15]), (0, 1));
    }
}
