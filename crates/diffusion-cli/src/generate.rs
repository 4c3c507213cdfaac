//! `generate`, `img2img`, `inpaint`: load, run, and only then write the
//! images (and latents), each PNG carrying its parameters.

use diffusion_pipelines::lora::MissingComponent;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use diffusion_hub::save::{OwnedTensor, safetensors_bytes};
use diffusion_models::Formulation;
use diffusion_pipelines::image::{AllOrNothing, Images};
use diffusion_pipelines::{Generator, LoadOptions, LongPrompt, Params, PipelineError};
use serde_json::{Map, Value, json};

use crate::error::{CliError, Result};
use crate::model::load_pipeline;
use crate::settings::Settings;

/// One written image: its path and parameters (printed as a JSON line).
#[derive(Debug, Clone)]
pub struct Written {
    /// The PNG.
    pub path: PathBuf,
    /// Its parameters.
    pub parameters: Map<String, Value>,
}

/// Runs a generation on backend `B` (device `device`, its models built with
/// `formulation`) and writes the outputs.
pub fn run<B: Backend>(
    settings: &Settings,
    device: B::Device,
    formulation: Formulation,
) -> Result<Vec<Written>> {
    let model = settings.hub.model_name()?;
    let options = LoadOptions::<B> {
        device: device.clone(),
        precision: settings.dtype,
        variant: settings.hub.variant.clone(),
        revision: settings.hub.revision.clone(),
        local_files_only: settings.hub.offline,
        cache_dir: None,
        scheduler: settings.scheduler.clone(),
        progress: !settings.quiet,
        formulation: Some(formulation),
        pickle: settings.hub.pickle_options(),
    };
    let mut pipe = load_pipeline(
        &model,
        settings.task,
        &options,
        &settings.hub.resolve_options(),
    )?;

    apply_loras(&mut pipe, settings, &model)?;
    if !settings.controlnets.is_empty() {
        let sd = pipe.stable_diffusion().ok_or_else(|| {
            CliError::Usage(format!(
                "--controlnet: {model} is an unconditional pipeline; ControlNets guide Stable Diffusion models"
            ))
        })?;
        for net in &settings.controlnets {
            sd.load_controlnet(net, &options)?;
        }
    }
    if !settings.t2i_adapters.is_empty() {
        let sd = pipe.stable_diffusion().ok_or_else(|| {
            CliError::Usage(format!(
                "--t2i-adapter: {model} is an unconditional pipeline; adapters guide Stable Diffusion models"
            ))
        })?;
        for adapter in &settings.t2i_adapters {
            sd.load_adapter(adapter, &options)?;
        }
    }

    // A seed is always chosen here, so that it can be recorded.
    let generator = match (&settings.seeds, settings.seed) {
        (Some(seeds), _) => Generator::Seeds(seeds.clone()),
        (None, Some(seed)) => Generator::Seed(seed),
        (None, None) => Generator::Seed(Generator::random_seed()),
    };
    let params = Params::<B> {
        prompt: settings.prompt.clone(),
        negative_prompt: settings.negative_prompt.clone(),
        prompt_2: settings.prompt_2.clone(),
        negative_prompt_2: settings.negative_prompt_2.clone(),
        height: settings.height,
        width: settings.width,
        num_inference_steps: settings.steps,
        guidance_scale: settings.guidance,
        guidance_rescale: settings.guidance_rescale.unwrap_or(0.0),
        num_images_per_prompt: settings.num_images,
        generator: Some(generator.clone()),
        latents: settings
            .latents
            .as_ref()
            .map(|l| Tensor::from_data(TensorData::new(l.values.clone(), l.shape), &device)),
        eta: settings.eta,
        clip_skip: settings.clip_skip,
        long_prompt: if settings.long_prompt {
            LongPrompt::Chunk
        } else {
            LongPrompt::Truncate
        },
        strength: settings.strength,
        image: settings.image.clone(),
        mask_image: settings.mask.clone(),
        original_size: settings.original_size,
        crops_coords_top_left: settings.crops_coords_top_left.unwrap_or((0, 0)),
        target_size: settings.target_size,
        denoising_end: settings.denoising_end,
        control_image: settings
            .control_images
            .iter()
            .map(|i| vec![i.clone()])
            .collect(),
        controlnet_conditioning_scale: settings.controlnet_scale.clone(),
        control_guidance_start: settings.control_start.clone(),
        control_guidance_end: settings.control_end.clone(),
        guess_mode: settings.guess_mode,
        adapter_image: settings
            .adapter_images
            .iter()
            .map(|i| vec![i.clone()])
            .collect(),
        adapter_conditioning_scale: settings.adapter_scale.clone(),
        adapter_conditioning_factor: settings.adapter_factor,
        progress: !settings.quiet,
        ..Params::default()
    };
    let out = pipe
        .run(settings.task, params)
        .map_err(|e| as_flag_error(e, settings))?;
    let images = out
        .images
        .expect("images are asked for (OutputType::Images)");

    let mut base = settings.to_json(&model);
    base.insert("pipeline".into(), json!(pipe.class_name()));
    base.insert("scheduler_class".into(), json!(pipe.scheduler_name()));
    base.insert("height".into(), json!(images.height));
    base.insert("width".into(), json!(images.width));
    if let Generator::Seed(s) = generator {
        base.insert("seed".into(), json!(s));
    }

    // Every output is staged first and renamed into place only when all are
    // complete: a batch is written whole or not at all.
    let mut batch = AllOrNothing::default();
    if let Some(path) = &settings.output_latents {
        batch.stage(path, &latents_bytes(path, out.latents)?)?;
    }
    let written = stage_images(settings, &images, &base, &mut batch)?;
    batch.commit()?;
    Ok(written)
}

/// Loads `--embedding` files, then `--lora` files (named by their file
/// stems) at their weights, and fuses them with `--fuse-lora`.
fn apply_loras<B: Backend>(
    pipe: &mut diffusion_pipelines::DiffusionPipeline<B>,
    settings: &Settings,
    model: &str,
) -> Result<()> {
    if settings.loras.is_empty() && settings.embeddings.is_empty() {
        return Ok(());
    }
    let Some(sd) = pipe.stable_diffusion() else {
        return Err(CliError::WrongModel {
            model: model.to_string(),
            message:
                "--lora/--embedding: an unconditional pipeline has no text encoder or adapters"
                    .into(),
        });
    };
    for (path, token) in &settings.embeddings {
        sd.load_textual_inversion(path, token.as_deref())?;
    }
    if settings.loras.is_empty() {
        return Ok(());
    }
    let mut names = Vec::new();
    for (spec, weight) in &settings.loras {
        let path = lora_path(spec, settings)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "lora".into());
        let name = (0..)
            .map(|i| {
                if i == 0 {
                    stem.clone()
                } else {
                    format!("{stem}_{i}")
                }
            })
            .find(|n| !names.iter().any(|(m, _): &(String, f64)| m == n))
            .expect("an unused name");
        sd.load_lora_weights(&path, Some(&name), MissingComponent::Error)?;
        names.push((name, *weight));
    }
    let (n, w): (Vec<&str>, Vec<f64>) = names.iter().map(|(n, w)| (n.as_str(), *w)).unzip();
    sd.set_adapters(&n, &w)?;
    if settings.fuse_lora {
        sd.fuse_lora(1.0, &[])?;
    }
    Ok(())
}

/// A `--lora` value as a local file: the file itself, or in a folder or Hub
/// repo (`owner/name`, or `owner/name/FILE` for another weight name) the
/// file diffusers' `load_lora_weights` would take.
fn lora_path(spec: &std::path::Path, settings: &Settings) -> Result<std::path::PathBuf> {
    if spec.is_file() {
        return Ok(spec.to_path_buf());
    }
    let text = spec.to_string_lossy();
    let parts: Vec<&str> = text.splitn(3, '/').collect();
    let (name, weight_name) = match parts.as_slice() {
        [owner, repo, file] if !spec.exists() => (format!("{owner}/{repo}"), Some(*file)),
        _ => (text.to_string(), None),
    };
    Ok(diffusion_pipelines::lora::lora_file(
        &name,
        weight_name,
        &settings.hub.resolve_options(),
    )?)
}

/// A pipeline's complaint about a call parameter, told in terms of the flag
/// the user gave (and the file, for file flags); other errors pass through.
fn as_flag_error(e: PipelineError, settings: &Settings) -> CliError {
    let PipelineError::Parameter { name, message } = &e else {
        return e.into();
    };
    let file = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| format!(" {}", p.display()))
            .unwrap_or_default()
    };
    let flag = match *name {
        "image" => format!("--image{}", file(&settings.image_path)),
        "mask_image" => format!("--mask{}", file(&settings.mask_path)),
        "latents" => format!("--latents{}", file(&settings.latents_path)),
        "height" => "--height".into(),
        "width" => "--width".into(),
        "guidance_scale" => "--guidance".into(),
        "guidance_rescale" => "--guidance-rescale".into(),
        "eta" => "--eta".into(),
        "num_inference_steps" => "--steps".into(),
        "num_images_per_prompt" => "--num-images".into(),
        "strength" => "--strength".into(),
        "clip_skip" => "--clip-skip".into(),
        "scheduler_config" => "--scheduler-config".into(),
        "generator" => "--seeds".into(),
        "denoising_end" => "--denoising-end".into(),
        "original_size" => "--original-size".into(),
        "target_size" => "--target-size".into(),
        "crops_coords_top_left" => "--crops-coords-top-left".into(),
        "prompt" => "--prompt".into(),
        "negative_prompt" => "--negative-prompt".into(),
        "prompt_2" => "--prompt-2".into(),
        "negative_prompt_2" => "--negative-prompt-2".into(),
        "control_image" => "--control-image".into(),
        "controlnet_conditioning_scale" => "--controlnet-scale".into(),
        "control_guidance_start" => "--control-start".into(),
        "control_guidance_end" => "--control-end".into(),
        "guess_mode" => "--guess-mode".into(),
        "adapter_image" => "--adapter-image".into(),
        "adapter_conditioning_scale" => "--adapter-scale".into(),
        "adapter_conditioning_factor" => "--adapter-factor".into(),
        _ => return e.into(),
    };
    CliError::Usage(format!("{flag}: {message}"))
}

/// Stages every image with its parameters.
fn stage_images(
    settings: &Settings,
    images: &Images,
    base: &Map<String, Value>,
    batch: &mut AllOrNothing,
) -> Result<Vec<Written>> {
    let mut written = Vec::with_capacity(images.count);
    for i in 0..images.count {
        let path = output_path(&settings.output, i, images.count);
        let parameters = image_parameters(settings, base, i, images.count);
        batch.stage(&path, &images.png_bytes(i, &path, &png_text(&parameters))?)?;
        written.push(Written { path, parameters });
    }
    Ok(written)
}

/// `out.png` for one image; `out-0.png`, `out-1.png`, ... for several.
pub fn output_path(path: &Path, i: usize, count: usize) -> PathBuf {
    if count == 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{i}"),
    };
    path.with_file_name(name)
}

/// The parameters of image `i`: the run's, with this image's prompt, negative
/// prompt and seed (images come prompt by prompt, `num_images_per_prompt`
/// each, as diffusers orders them).
pub fn image_parameters(
    settings: &Settings,
    base: &Map<String, Value>,
    i: usize,
    count: usize,
) -> Map<String, Value> {
    let mut p = base.clone();
    p.insert("image_index".into(), json!(i));
    p.insert("batch_size".into(), json!(count));
    let prompt_index = i / settings.num_images.max(1);
    let pick = |list: &Option<Vec<String>>| -> Option<String> {
        let list = list.as_ref()?;
        match list.len() {
            1 => Some(list[0].clone()),
            _ => list.get(prompt_index).cloned(),
        }
    };
    if let Some(prompt) = settings.prompt.get(prompt_index) {
        p.insert("prompt".into(), json!(prompt));
    }
    if let Some(n) = pick(&settings.negative_prompt) {
        p.insert("negative_prompt".into(), json!(n));
    }
    if let Some(seeds) = &settings.seeds {
        p.remove("seeds");
        p.insert("seed".into(), json!(seeds.get(i)));
        p.insert("generator".into(), json!("per_image"));
    } else {
        p.insert("generator".into(), json!("batch"));
    }
    p
}

/// The PNG text chunks: `parameters` (all of it, JSON) and the common fields
/// on their own for tools that read single keys.
fn png_text(parameters: &Map<String, Value>) -> Vec<(String, String)> {
    let mut text = vec![(
        "parameters".to_string(),
        Value::Object(parameters.clone()).to_string(),
    )];
    for key in [
        "prompt",
        "negative_prompt",
        "model",
        "seed",
        "num_inference_steps",
        "guidance_scale",
        "scheduler_class",
        "width",
        "height",
        "pipeline",
    ] {
        match parameters.get(key) {
            Some(Value::String(s)) => text.push((key.into(), s.clone())),
            Some(v) => text.push((key.into(), v.to_string())),
            None => {}
        }
    }
    text.push((
        "software".into(),
        format!("diffuse {}", env!("CARGO_PKG_VERSION")),
    ));
    text
}

/// The final latents as f32 safetensors bytes (key `latents`); `path`
/// names the file in errors.
fn latents_bytes<B: Backend>(path: &Path, latents: Tensor<B, 4>) -> Result<Vec<u8>> {
    let shape = latents.dims().to_vec();
    let values = latents
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| CliError::Input {
            path: path.to_path_buf(),
            message: format!("reading the latents back: {e:?}"),
        })?;
    let mut tensors = BTreeMap::new();
    tensors.insert("latents".to_string(), OwnedTensor::f32(shape, &values));
    Ok(safetensors_bytes(path, &tensors, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_images_are_numbered_before_the_extension() {
        let p = Path::new("dir/out.png");
        assert_eq!(output_path(p, 0, 1), PathBuf::from("dir/out.png"));
        assert_eq!(output_path(p, 0, 3), PathBuf::from("dir/out-0.png"));
        assert_eq!(output_path(p, 2, 3), PathBuf::from("dir/out-2.png"));
        assert_eq!(output_path(Path::new("x"), 1, 2), PathBuf::from("x-1"));
    }
}
