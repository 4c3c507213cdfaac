//! The library's behaviour beyond numbers: loading from an HF-cache-shaped
//! folder by repo id, scheduler swaps by name, the per-step callback and
//! cancelling, TAESD previews, long prompts, and typed errors for bad calls.

mod common;

use std::path::Path;

use burn::tensor::{DType, Tensor, TensorData};
use diffusion_models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use diffusion_models::{Loader, Precision};
use diffusion_pipelines::{
    Control, DiffusionPipeline, Generator, LoadOptions, LongPrompt, OutputType, Params,
    PipelineError, SchedulerChoice, Task, preview,
};

type B = burn::backend::Flex;

fn quiet() -> LoadOptions<B> {
    LoadOptions {
        progress: false,
        local_files_only: true,
        ..LoadOptions::default()
    }
}

fn load(name: &str) -> (tempfile::TempDir, DiffusionPipeline<B>) {
    let dir = common::pipeline_dir(name);
    let pipe = DiffusionPipeline::from_pretrained(dir.path().to_str().unwrap(), &quiet()).unwrap();
    (dir, pipe)
}

fn small(prompt: &str) -> Params<'static, B> {
    Params {
        prompt: vec![prompt.into()],
        num_inference_steps: Some(2),
        generator: Some(Generator::Seed(3)),
        progress: false,
        ..Params::default()
    }
}

fn parameter_error(
    r: diffusion_pipelines::Result<diffusion_pipelines::Output<B>>,
) -> (&'static str, String) {
    match r {
        Err(PipelineError::Parameter { name, message }) => (name, message),
        Err(e) => panic!("expected a parameter error, got {e}"),
        Ok(_) => panic!("expected a parameter error, got images"),
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// A repo id resolves from an HF-cache-shaped folder, offline, and the class
/// in model_index.json picks the pipeline.
#[test]
fn from_pretrained_by_repo_id_from_the_cache() {
    let folder = common::pipeline_dir("ddim");
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--test-org--tiny-ddim");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    copy_tree(folder.path(), &repo.join("snapshots").join(commit));
    let options = LoadOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..quiet()
    };
    let mut pipe = DiffusionPipeline::<B>::from_pretrained("test-org/tiny-ddim", &options).unwrap();
    assert_eq!(pipe.class_name(), "DDIMPipeline");
    assert_eq!(pipe.scheduler_name(), "DDIMScheduler");
    let out = pipe
        .call(Params {
            num_inference_steps: Some(2),
            generator: Some(Generator::Seed(0)),
            progress: false,
            ..Params::default()
        })
        .unwrap();
    let images = out.images.unwrap();
    assert_eq!((images.count, images.channels), (1, 3));
    // Not cached: an error naming the repo's cache folder.
    let err = DiffusionPipeline::<B>::from_pretrained("test-org/absent", &options).unwrap_err();
    assert!(
        err.to_string().contains("models--test-org--absent"),
        "{err}"
    );
}

#[test]
fn schedulers_swap_by_class_or_a1111_name() {
    let (_d, mut pipe) = load("sd1");
    assert_eq!(pipe.scheduler_name(), "PNDMScheduler");
    pipe.set_scheduler(&SchedulerChoice {
        name: Some("DPM++ 2M Karras".into()),
        ..SchedulerChoice::default()
    })
    .unwrap();
    assert_eq!(pipe.scheduler_name(), "DPMSolverMultistepScheduler");
    let sd = pipe.stable_diffusion().unwrap();
    assert_eq!(sd.scheduler.config()["use_karras_sigmas"], true);
    let mut overrides = serde_json::Map::new();
    overrides.insert("timestep_spacing".into(), "trailing".into());
    pipe.set_scheduler(&SchedulerChoice {
        name: Some("EulerDiscreteScheduler".into()),
        overrides,
    })
    .unwrap();
    let sd = pipe.stable_diffusion().unwrap();
    assert_eq!(sd.scheduler.config()["timestep_spacing"], "trailing");
    let err = pipe
        .set_scheduler(&SchedulerChoice {
            name: Some("NoSuchSampler".into()),
            ..SchedulerChoice::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("NoSuchSampler"), "{err}");
}

#[test]
fn the_callback_sees_every_step_and_can_cancel() {
    let (_d, mut pipe) = load("sd1");
    let mut seen = Vec::new();
    let mut p = small("a red cube");
    p.num_inference_steps = Some(3);
    p.output_type = OutputType::Latents;
    p.callback = Some(Box::new(|s| {
        seen.push((s.step, s.latents.dims()));
        Control::Continue
    }));
    let out = pipe.call(p).unwrap();
    assert!(out.images.is_none());
    assert_eq!(seen.len(), out.timesteps.len());
    assert_eq!(seen[0].1, [1, 4, 16, 16]);

    let mut p = small("a red cube");
    p.callback = Some(Box::new(|s| {
        if s.step == 0 {
            Control::Cancel
        } else {
            Control::Continue
        }
    }));
    assert!(matches!(
        pipe.call(p),
        Err(PipelineError::Cancelled { step: 0 })
    ));
}

/// A TAESD (random weights here; its numbers are tested in diffusion-models)
/// previews the latents the callback sees.
#[test]
fn taesd_previews_latents() {
    let cfg: AutoencoderTinyConfig = serde_json::from_str(
        r#"{"encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8], "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [1, 1, 1, 1]}"#,
    )
    .unwrap();
    let taesd =
        AutoencoderTiny::<B>::load(&Loader::random(&Default::default(), Precision::F32), &cfg)
            .unwrap();
    let (_d, mut pipe) = load("sd1");
    let mut previews = Vec::new();
    let mut p = small("a blue ball");
    p.callback = Some(Box::new(|s| {
        previews.push(preview(&taesd, s.latents).unwrap());
        Control::Continue
    }));
    let steps = pipe.call(p).unwrap().timesteps.len();
    assert_eq!(previews.len(), steps);
    let first = &previews[0];
    assert_eq!(
        (first.count, first.height, first.width, first.channels),
        (1, 128, 128, 3)
    );
    assert!(first.data.iter().all(|x| (0.0..=1.0).contains(x)));
}

/// Prompts over 77 tokens: truncated by default (diffusers), or chunked.
#[test]
fn long_prompts_truncate_or_chunk() {
    let (_d, mut pipe) = load("sd1");
    let long = "a very detailed painting of a lighthouse on a rocky coast at sunset, ".repeat(8);
    let run = |pipe: &mut DiffusionPipeline<B>, prompt: &str, long_prompt| {
        let mut p = small(prompt);
        p.long_prompt = long_prompt;
        p.output_type = OutputType::Latents;
        pipe.call(p)
            .unwrap()
            .latents
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let truncated = run(&mut pipe, &long, LongPrompt::Truncate);
    let chunked = run(&mut pipe, &long, LongPrompt::Chunk);
    assert_ne!(truncated, chunked, "chunking must see the tokens past 77");
    // A short prompt is one chunk: the same as truncating.
    assert_eq!(
        run(&mut pipe, "a lighthouse", LongPrompt::Truncate),
        run(&mut pipe, "a lighthouse", LongPrompt::Chunk)
    );
}

#[test]
fn bad_calls_are_typed_errors_naming_the_parameter() {
    let (_d, mut pipe) = load("sd1");
    let image = diffusion_pipelines::image::load_image(
        &common::fixtures().join("inputs/photo_a_32x32.png"),
    )
    .unwrap();

    let mut p = small("x");
    p.height = Some(30);
    assert_eq!(parameter_error(pipe.call(p)).0, "height");

    let mut p = small("x");
    p.strength = Some(0.5);
    assert_eq!(parameter_error(pipe.call(p)).0, "strength");

    let mut p = small("x");
    p.image = Some(image.clone());
    p.strength = Some(1.5);
    assert_eq!(
        parameter_error(pipe.run(Task::ImageToImage, p)).0,
        "strength"
    );

    assert_eq!(
        parameter_error(pipe.run(Task::ImageToImage, small("x"))).0,
        "image"
    );

    let mut p = small("x");
    p.image = Some(image.clone());
    p.mask_image = Some(image::DynamicImage::new_luma8(16, 16));
    let (name, message) = parameter_error(pipe.run(Task::Inpaint, p));
    assert_eq!(name, "mask_image");
    assert!(message.contains("16×16"), "{message}");

    let mut p = small("x");
    p.num_images_per_prompt = 0;
    assert_eq!(parameter_error(pipe.call(p)).0, "num_images_per_prompt");

    let mut p = small("x");
    p.prompt = vec!["a".into(), "b".into()];
    p.negative_prompt = Some(vec!["1".into(), "2".into(), "3".into()]);
    assert_eq!(parameter_error(pipe.call(p)).0, "negative_prompt");

    let mut p = small("x");
    p.latents = Some(Tensor::from_data(
        TensorData::new(vec![0f32; 4 * 8 * 8], [1, 4, 8, 8]),
        &Default::default(),
    ));
    assert_eq!(parameter_error(pipe.call(p)).0, "latents");

    let mut p = small("x");
    p.generator = Some(Generator::Seeds(vec![1, 2]));
    assert_eq!(parameter_error(pipe.call(p)).0, "generator");

    // An unconditional model cannot do img2img.
    let (_d2, mut ddpm) = load("ddpm");
    let mut p = Params::<B> {
        progress: false,
        ..Params::default()
    };
    p.image = Some(image);
    assert!(matches!(
        ddpm.run(Task::ImageToImage, p),
        Err(PipelineError::WrongModel { .. })
    ));
    // ... and takes no prompt.
    assert_eq!(parameter_error(ddpm.call(small("x"))).0, "prompt");
}

#[test]
fn a_missing_component_is_named() {
    let dir = common::pipeline_dir("sd1");
    std::fs::remove_dir_all(dir.path().join("vae")).unwrap();
    let err = DiffusionPipeline::<B>::from_pretrained(dir.path().to_str().unwrap(), &quiet())
        .unwrap_err();
    assert!(err.to_string().contains("vae"), "{err}");
}

#[test]
fn seeds_are_deterministic_and_per_image_seeds_are_batch_independent() {
    let (_d, mut pipe) = load("sd1");
    let run = |pipe: &mut DiffusionPipeline<B>, n: usize, g: Generator| {
        let mut p = small("a green hill");
        p.num_images_per_prompt = n;
        p.generator = Some(g);
        p.output_type = OutputType::Latents;
        pipe.call(p)
            .unwrap()
            .latents
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let a = run(&mut pipe, 1, Generator::Seed(11));
    assert_eq!(a, run(&mut pipe, 1, Generator::Seed(11)));
    assert_ne!(a, run(&mut pipe, 1, Generator::Seed(12)));
    // Image 1 of a per-image-seeded batch is the image that seed makes alone.
    let pair = run(&mut pipe, 2, Generator::Seeds(vec![5, 11]));
    let max = pair[a.len()..]
        .iter()
        .zip(&a)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-3, "max diff {max}");
}

/// `LoadOptions::precision`: the whole pipeline in f16 or bf16 (statistics and
/// the scheduler in f32) stays close to f32.
#[test]
fn half_precision_pipelines_stay_close_to_f32() {
    let dir = common::pipeline_dir("sd1");
    let run = |precision| {
        let options = LoadOptions {
            precision,
            ..quiet()
        };
        let mut pipe =
            DiffusionPipeline::<B>::from_pretrained(dir.path().to_str().unwrap(), &options)
                .unwrap();
        pipe.call(small("a photo of a cat"))
            .unwrap()
            .images
            .unwrap()
            .data
    };
    let full = run(Precision::F32);
    for (precision, tol) in [(Precision::F16, 2e-3), (Precision::BF16, 2e-2)] {
        let half = run(precision);
        let mae = common::mean_abs_error(&half, &full);
        eprintln!("{precision:?}: image MAE vs f32 {mae:.2e}");
        assert!(mae < tol, "{precision:?}: MAE {mae}");
    }
}

/// Caller-made prompt embeddings give the same image as the prompt they encode.
#[test]
fn prompt_embeds_replace_the_prompt() {
    use diffusion_pipelines::text::{PromptInputs, encode_sd};
    let (_d, mut pipe) = load("sd1");
    let run = |pipe: &mut DiffusionPipeline<B>, p: Params<'static, B>| {
        let mut p = p;
        p.output_type = OutputType::Latents;
        pipe.call(p)
            .unwrap()
            .latents
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let mut with_text = small("a photo of a cat");
    with_text.negative_prompt = Some(vec!["blurry".into()]);
    let expected = run(&mut pipe, with_text);
    let sd = pipe.stable_diffusion().unwrap();
    let prompt = vec!["a photo of a cat".to_string()];
    let negative = vec!["blurry".to_string()];
    let embeds = encode_sd(
        sd.text_encoder.as_ref().unwrap(),
        &PromptInputs {
            prompt: &prompt,
            negative_prompt: Some(&negative),
            ..PromptInputs::default()
        },
        true,
    )
    .unwrap();
    let mut with_embeds = small("");
    with_embeds.prompt = Vec::new();
    with_embeds.prompt_embeds = Some(embeds);
    assert_eq!(run(&mut pipe, with_embeds), expected);
}

/// diffusers' SD 1.x/2.x pipelines run the VAE in f16 even when its config says
/// `force_upcast: true` (they never read it); the SDXL pipelines upcast it.
#[test]
fn only_sdxl_pipelines_honour_force_upcast() {
    let f16 = LoadOptions {
        precision: Precision::F16,
        ..quiet()
    };
    let sd1 = common::pipeline_dir("sd1");
    let config_path = sd1.path().join("vae/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["force_upcast"] = serde_json::Value::Bool(true);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let sdxl = common::pipeline_dir("sdxl");
    for (dir, want) in [(&sd1, DType::F16), (&sdxl, DType::F32)] {
        let mut pipe =
            DiffusionPipeline::<B>::from_pretrained(dir.path().to_str().unwrap(), &f16).unwrap();
        let name = pipe.class_name();
        let sd = pipe.stable_diffusion().unwrap();
        assert_eq!(sd.vae.dtype(), want, "{name}");
    }
}

/// A `model_index.json` naming `StableDiffusionXLInpaintPipeline` (what an
/// SDXL inpainting checkpoint converts to) loads, and its call refuses to
/// run without an image and a mask (no parity case checks its numbers).
#[test]
fn sdxl_inpaint_class_loads() {
    let sdxl = common::pipeline_dir("sdxl");
    let index_path = sdxl.path().join("model_index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["_class_name"] = "StableDiffusionXLInpaintPipeline".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let mut pipe =
        DiffusionPipeline::<B>::from_pretrained(sdxl.path().to_str().unwrap(), &quiet()).unwrap();
    assert_eq!(pipe.class_name(), "StableDiffusionXLInpaintPipeline");
    // Without an image and a mask the inpainting call refuses, naming them.
    let err = pipe.call(Params::default()).unwrap_err().to_string();
    assert!(err.contains("image"), "{err}");
}
