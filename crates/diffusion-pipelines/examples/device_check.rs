//! Runs the fixture pipelines on the backend this example is compiled for (the
//! CPU, or an NVIDIA GPU with `--features cuda`) and prints one JSON line per
//! check: tiny SD1 text-to-image with Euler, seeded, and SD1 img2img, against
//! diffusers' images from `tests/fixtures`. (Timing lives in `cargo xtask
//! bench`, which also runs on the GPU.)
//!
//! ```sh
//! cargo run --release -p diffusion-pipelines --example device_check -- .
//! CUDARC_CUDA_VERSION=13000 cargo build --release -p diffusion-pipelines --features cuda --example device_check
//! ```
//!
//! The first argument is the repository root (the fixtures are read from it).

// The CPU device is `Copy`, the CUDA one is not: clone for both.
#![allow(clippy::clone_on_copy)]

use std::io::Read;
use std::path::{Path, PathBuf};

use diffusion_hub::resolve::{ResolveOptions, Resolved, resolve};
use diffusion_pipelines::{
    DiffusionPipeline, Generator, LoadOptions, Params, SchedulerChoice, Task,
};
use serde_json::{Value, json};

#[cfg(feature = "cuda")]
type B = diffusion_models::backend::Cuda<f32>;
#[cfg(not(feature = "cuda"))]
type B = diffusion_models::backend::Cpu;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn fixtures(root: &Path) -> PathBuf {
    root.join("crates/diffusion-pipelines/tests/fixtures")
}

fn copy_tree(src: &Path, dst: &Path) -> Res<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// A fixture pipeline assembled into `out` (shared weights, CLIP vocabulary).
fn assemble(root: &Path, name: &str, out: &Path) -> Res<()> {
    let fx = fixtures(root);
    copy_tree(&fx.join("pipelines").join(name), out)?;
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(
        fx.join("pipelines").join(name).join("assemble.json"),
    )?)?;
    for (dest, shared) in spec["shared"].as_object().ok_or("assemble.json: shared")? {
        std::fs::copy(
            fx.join("shared").join(shared.as_str().ok_or("shared")?),
            out.join(dest),
        )?;
    }
    let gz =
        root.join("crates/diffusion-hub/tests/fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz)?).read_to_string(&mut text)?;
    for tok in spec["vocab"].as_array().ok_or("assemble.json: vocab")? {
        diffusion_hub::tokenizer::write_clip_vocab_files(
            &text,
            &gz,
            &out.join(tok.as_str().ok_or("vocab")?),
        )?;
    }
    Ok(())
}

fn case_tensor(root: &Path, case: &str, key: &str) -> Res<Vec<f32>> {
    let bytes = std::fs::read(
        fixtures(root)
            .join("cases")
            .join(format!("{case}.safetensors")),
    )?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let view = st.tensor(key)?;
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Runs fixture case `case` seeded on the device and compares with diffusers.
fn parity(root: &Path, device: &burn::tensor::Device<B>) -> Res<()> {
    let dir = std::env::temp_dir().join(format!("device-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assemble(root, "sd1", &dir)?;
    let Resolved::Pipeline(model) = resolve(
        dir.to_str().ok_or("path")?,
        &ResolveOptions::with_cache_dir(dir.join("cache")).local_files_only(true),
    )?
    else {
        return Err("sd1 fixture is not a pipeline".into());
    };
    let options = LoadOptions::<B> {
        device: device.clone(),
        progress: false,
        ..LoadOptions::default()
    };
    let mut pipe = DiffusionPipeline::<B>::from_resolved(&model, &options)?;
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures(root).join("cases.json"))?)?;
    for name in ["sd1_euler_nipp2", "sd1_i2i_euler"] {
        let case = manifest["cases"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .ok_or("case")?;
        let kw = &case["kwargs"];
        pipe.set_scheduler(&SchedulerChoice {
            name: case["scheduler"].as_str().map(|s| {
                if s == "euler" {
                    "EulerDiscreteScheduler".into()
                } else {
                    s.to_string()
                }
            }),
            ..SchedulerChoice::default()
        })?;
        let mut p = Params::<B> {
            prompt: vec![kw["prompt"].as_str().ok_or("prompt")?.into()],
            negative_prompt: kw["negative_prompt"].as_str().map(|s| vec![s.to_string()]),
            guidance_scale: kw["guidance_scale"].as_f64(),
            num_inference_steps: kw["num_inference_steps"].as_u64().map(|x| x as usize),
            num_images_per_prompt: kw["num_images_per_prompt"].as_u64().unwrap_or(1) as usize,
            generator: Some(Generator::Seed(case["seeds"].as_u64().ok_or("seed")?)),
            progress: false,
            ..Params::default()
        };
        let task = if let Some(image) = kw["image"].as_str() {
            p.image = Some(diffusion_pipelines::image::load_image(
                &fixtures(root).join(image),
            )?);
            p.strength = kw["strength"].as_f64();
            Task::ImageToImage
        } else {
            p.height = kw["height"].as_u64().map(|x| x as usize);
            p.width = kw["width"].as_u64().map(|x| x as usize);
            Task::TextToImage
        };
        let out = pipe.run(task, p)?;
        let got = out.images.ok_or("images")?.data;
        let want = case_tensor(root, name, "images")?;
        let mae = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / want.len() as f64;
        println!(
            "{}",
            json!({"check": "parity", "case": name, "image_mae_vs_diffusers": mae, "pass": mae <= 1.0 / 255.0})
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> Res<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let device: burn::tensor::Device<B> = Default::default();
    println!("{}", json!({"backend": std::any::type_name::<B>()}));
    if let Err(e) = parity(&root, &device) {
        println!("{}", json!({"check": "parity", "error": e.to_string()}));
        return Err(e);
    }
    Ok(())
}
