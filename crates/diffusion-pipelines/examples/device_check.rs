//! Runs the pipelines on the backend this example is compiled for (the CPU,
//! or an NVIDIA GPU with `--features cuda`) and prints one JSON line per
//! check:
//!
//! 1. parity: fixture pipelines (tiny SD1 text-to-image with Euler, seeded,
//!    and SD1 img2img) against diffusers' images from `tests/fixtures`;
//! 2. timing: SD1.5's real configs with random weights: UNet step (batch 2,
//!    64×64 latents, as classifier-free guidance at 512²), VAE decode at 512²,
//!    CLIP-L, and a whole 512² image, first call apart from steady state.
//!
//! ```sh
//! cargo run --release -p diffusion-pipelines --example device_check -- . --steps 50 --precision f16
//! CUDARC_CUDA_VERSION=13000 cargo build --release -p diffusion-pipelines --features cuda --example device_check
//! ```
//!
//! The first argument is the repository root (fixtures and configs are read from it).

// The CPU device is `Copy`, the CUDA one is not: clone for both.
#![allow(clippy::clone_on_copy)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use diffusion_hub::resolve::{ResolveOptions, Resolved, resolve};
use diffusion_hub::tokenizer::ClipTokenizer;
use diffusion_models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use diffusion_models::clip::{CLIPTextConfig, CLIPTextModel};
use diffusion_models::config::parse_config;
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_models::{Loader, Precision};
use diffusion_pipelines::components::build_scheduler;
use diffusion_pipelines::text::{TextEncoder, TextModel};
use diffusion_pipelines::{
    DiffusionPipeline, Generator, LoadOptions, Params, SchedulerChoice, StableDiffusion, Task,
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

fn config<T: serde::de::DeserializeOwned + serde::Serialize>(root: &Path, file: &str) -> Res<T> {
    let path = root
        .join("crates/diffusion-models/tests/fixtures/hub_configs")
        .join(file);
    Ok(parse_config::<T>(&std::fs::read_to_string(&path)?, file)?.config)
}

fn sync(device: &burn::tensor::Device<B>) {
    let _ = B::sync(device);
}

/// Median and spread of `runs` timed calls after one untimed first call.
fn time(
    device: &burn::tensor::Device<B>,
    runs: usize,
    mut f: impl FnMut() -> Res<()>,
) -> Res<Value> {
    let t0 = Instant::now();
    f()?;
    sync(device);
    let first = t0.elapsed().as_secs_f64() * 1e3;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        sync(device);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(
        json!({"first_ms": first, "median_ms": ms[ms.len() / 2], "min_ms": ms[0], "max_ms": ms[ms.len() - 1], "runs": runs}),
    )
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(args.first().map(String::as_str).unwrap_or("."));
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let steps: usize = flag("--steps")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50);
    let runs: usize = flag("--runs").map(|s| s.parse()).transpose()?.unwrap_or(10);
    let precision = Precision::parse(&flag("--precision").unwrap_or_else(|| "f16".into()))
        .ok_or("--precision f32|f16|bf16")?;
    let device: burn::tensor::Device<B> = Default::default();
    println!(
        "{}",
        json!({"backend": std::any::type_name::<B>(), "precision": format!("{precision:?}")})
    );

    if let Err(e) = parity(&root, &device) {
        println!("{}", json!({"check": "parity", "error": e.to_string()}));
    }
    if args.iter().any(|a| a == "--parity-only") {
        return Ok(());
    }

    // SD1.5 components, random weights.
    let t = Instant::now();
    let unet_cfg: UNet2DConditionConfig = config(&root, "sd15-unet.json")?;
    let vae_cfg: AutoencoderKLConfig = config(&root, "sd15-vae.json")?;
    let clip_cfg: CLIPTextConfig = config(&root, "sd15-text_encoder.json")?;
    let unet = UNet2DConditionModel::<B>::load(&Loader::random(&device, precision), &unet_cfg)?;
    let vae = AutoencoderKL::<B>::load(&Loader::random(&device, precision), &vae_cfg)?;
    let clip = CLIPTextModel::<B>::load(&Loader::random(&device, precision), &clip_cfg)?;
    sync(&device);
    println!(
        "{}",
        json!({"check": "load_random_sd15", "ms": t.elapsed().as_secs_f64() * 1e3})
    );

    let latents = Tensor::<B, 4>::random(
        [2, 4, 64, 64],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let context = Tensor::<B, 3>::random(
        [2, 77, 768],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let dtype = precision.dtype();
    let step = time(&device, runs, || {
        let t = Tensor::<B, 1>::from_floats([500.0], &device);
        let out = unet.forward(
            latents.clone().cast(dtype),
            t,
            context.clone(),
            UNetConditions::default(),
        )?;
        let _ = out.slice([0..1, 0..1, 0..1, 0..1]).into_data();
        Ok(())
    })?;
    println!(
        "{}",
        json!({"check": "unet_step_sd15_b2_64x64", "timing": step})
    );

    let z = Tensor::<B, 4>::random(
        [1, 4, 64, 64],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let dec = time(&device, runs.min(5), || {
        let _ = vae
            .decode(z.clone())?
            .slice([0..1, 0..1, 0..1, 0..1])
            .into_data();
        Ok(())
    })?;
    println!(
        "{}",
        json!({"check": "vae_decode_sd15_512", "upcast_f32": vae.upcast, "timing": dec})
    );

    let ids =
        Tensor::<B, 2, Int>::from_data(TensorData::new(vec![49406i64; 2 * 77], [2, 77]), &device);
    let enc = time(&device, runs, || {
        let _ = clip
            .forward(ids.clone())?
            .last_hidden_state
            .slice([0..1, 0..1, 0..1])
            .into_data();
        Ok(())
    })?;
    println!("{}", json!({"check": "clip_l_b2", "timing": enc}));

    // A whole 512² image: tokenizer from the fixture, SD1.5's PNDM config.
    let dir = std::env::temp_dir().join(format!("device-check-tok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assemble(&root, "sd1", &dir)?;
    let scheduler_config: Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("scheduler/scheduler_config.json"),
    )?)?;
    let mut sd = StableDiffusion::<B> {
        text_encoder: Some(TextEncoder {
            tokenizer: ClipTokenizer::from_dir(dir.join("tokenizer"))?,
            model: TextModel::Plain(clip),
        }),
        text_encoder_2: None,
        unet,
        unet_config: unet_cfg,
        vae,
        scheduler: build_scheduler(&scheduler_config, None)?,
        scheduler_config,
        xl: false,
        force_zeros_for_empty_prompt: false,
        requires_aesthetics_score: false,
        device: device.clone(),
        name: "sd15-random".into(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    for (label, n) in [("image_512_first", steps), ("image_512", steps)] {
        let t = Instant::now();
        let result = sd.run(
            Task::TextToImage,
            Params {
                prompt: vec!["An image of a squirrel in Picasso style".into()],
                num_inference_steps: Some(n),
                height: Some(512),
                width: Some(512),
                generator: Some(Generator::Seed(0)),
                progress: false,
                ..Params::default()
            },
        );
        sync(&device);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(out) => println!(
                "{}",
                json!({"check": label, "steps": n, "ms": ms, "timesteps": out.timesteps.len()})
            ),
            Err(e) => println!(
                "{}",
                json!({"check": label, "steps": n, "error": e.to_string()})
            ),
        }
    }
    Ok(())
}
