//! Text-to-image training data: captioned images, and the batch of each step
//! as `train_text_to_image[_lora].py` and `train_dreambooth_lora.py` build it
//! from them with a frozen VAE and text encoder.
//!
//! Captions come, as the scripts read them, from `metadata.jsonl` (one JSON
//! object per line with `file_name` and the caption column, `text` by
//! default: the `datasets` "imagefolder" layout), from kohya-style sidecars
//! (`image.png` + `image.txt`), or, for DreamBooth, from one instance prompt
//! for every image.
//!
//! A step's batch: the images (crop and flip as [`BatchSampler`]), encoded
//! by the VAE (`latent_dist.sample() * scaling_factor`, the posterior sample
//! drawn from the step's own generator), the captions (each replaced by `""`
//! with probability `proportion_empty_prompts`) encoded as the pipeline's
//! `encode_prompt` without guidance (SDXL: both encoders' penultimate
//! states and the pooled projection, with `add_time_ids` from each image's
//! original size, crop corner and the target size), the noise and timesteps
//! of [`BatchSampler::noise`]. Like every draw of [`BatchSampler`], it depends
//! on the seed and step only.

use super::data::{BatchSampler, Crop, Draw, DrawnImage, ImageDataset, Interpolation};
use super::trainer::{Batch, Condition};
use crate::error::{PipelineError, Result};
use crate::stable_diffusion::StableDiffusion;
use crate::text::{LongPrompt, PromptInputs, encode_sd, encode_sdxl};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use diffusion_models::vae::DiagonalGaussianDistribution;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Images with one caption each.
#[derive(Debug, Clone)]
pub struct CaptionedDataset {
    /// The images (RGB), in file-name order.
    pub images: ImageDataset,
    /// The caption of each image.
    pub captions: Vec<String>,
}

/// Where the captions of [`CaptionedDataset::load`] come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captions {
    /// `metadata.jsonl` when the folder has one (this column of it), else
    /// a `.txt` file beside each image.
    Files {
        /// The caption column of `metadata.jsonl` (`--caption-column`).
        column: String,
    },
    /// The same prompt for every image (DreamBooth's `--instance-prompt`).
    Prompt(String),
}

impl CaptionedDataset {
    /// The `.png`/`.jpg`/`.jpeg` images directly in `dir` at `resolution`
    /// (resized with `interpolation`, cropped as `crop` says) with their
    /// captions. An image without a
    /// caption, a caption (sidecar or `metadata.jsonl` line) without its
    /// image, or a malformed `metadata.jsonl` line is an error naming the
    /// file (and line).
    pub fn load(
        dir: &Path,
        resolution: usize,
        crop: Crop,
        interpolation: Interpolation,
        captions: &Captions,
    ) -> Result<Self> {
        let images = ImageDataset::load_resampled(dir, resolution, 3, crop, interpolation)?;
        let captions = match captions {
            Captions::Prompt(p) => vec![p.clone(); images.len()],
            Captions::Files { column } => {
                let metadata = dir.join("metadata.jsonl");
                if metadata.is_file() {
                    from_metadata(&metadata, column, &images.paths)?
                } else {
                    from_sidecars(dir, &images.paths)?
                }
            }
        };
        Ok(CaptionedDataset { images, captions })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.captions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn from_metadata(path: &Path, column: &str, images: &[PathBuf]) -> Result<Vec<String>> {
    let bad = |message: String| PipelineError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut by_name = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line_no = i + 1;
        let v: Value = serde_json::from_str(line)
            .map_err(|e| bad(format!("line {line_no}: not JSON: {e}")))?;
        let name = v
            .get("file_name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("line {line_no}: no `file_name`")))?;
        let caption = match v.get(column) {
            Some(Value::String(s)) => s.clone(),
            // A list of captions: the scripts take a random one in training;
            // here the first, so a step's batch stays a function of the seed.
            Some(Value::Array(list)) => match list.first().and_then(Value::as_str) {
                Some(s) => s.to_string(),
                None => return Err(bad(format!("line {line_no}: `{column}` is an empty list"))),
            },
            _ => {
                return Err(bad(format!(
                    "line {line_no}: no caption `{column}` (a string) for {name}"
                )));
            }
        };
        if by_name.insert(name.to_string(), caption).is_some() {
            return Err(bad(format!("line {line_no}: {name} is listed twice")));
        }
    }
    let mut captions = Vec::with_capacity(images.len());
    for image in images {
        let name = file_name(image);
        match by_name.remove(&name) {
            Some(c) => captions.push(c),
            None => return Err(bad(format!("no caption for {name}"))),
        }
    }
    if let Some(name) = by_name.keys().next() {
        return Err(bad(format!(
            "{name} is listed but is not an image of the folder"
        )));
    }
    Ok(captions)
}

fn from_sidecars(dir: &Path, images: &[PathBuf]) -> Result<Vec<String>> {
    let mut captions = Vec::with_capacity(images.len());
    for image in images {
        let txt = image.with_extension("txt");
        let caption = std::fs::read_to_string(&txt).map_err(|e| PipelineError::Image {
            path: image.clone(),
            message: format!(
                "no caption: neither metadata.jsonl nor {} ({e})",
                file_name(&txt)
            ),
        })?;
        captions.push(caption.trim().to_string());
    }
    let stems: Vec<PathBuf> = images.iter().map(|p| p.with_extension("")).collect();
    let entries = std::fs::read_dir(dir).map_err(|source| PipelineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "txt") && !stems.contains(&path.with_extension(""))
        {
            return Err(PipelineError::Image {
                path,
                message: "a caption file without its image".into(),
            });
        }
    }
    Ok(captions)
}

/// Builds each step's [`Batch`] from captioned images with a pipeline's
/// frozen VAE and text encoder(s) (on the autodiff backend's inner backend).
pub struct TextToImageBatches<'a, B: AutodiffBackend> {
    /// The frozen components.
    pub pipeline: &'a StableDiffusion<B::InnerBackend>,
    /// The data.
    pub data: &'a CaptionedDataset,
    /// Which images, crops, flips, noise and timesteps.
    pub sampler: BatchSampler,
    /// `--proportion-empty-prompts`: each caption is dropped (`""`) with this
    /// probability.
    pub proportion_empty_prompts: f64,
    /// DreamBooth's class images (`--with-prior-preservation`): as many as
    /// the instance images are drawn each step (from their own permutation,
    /// crops and flips) and put in the batch's second half, for the
    /// objective's `prior_loss_weight`. Their captions are never dropped.
    pub class_data: Option<&'a CaptionedDataset>,
    /// The images' VAE posteriors computed once (`--cache-latents`): the
    /// batch samples from them instead of encoding (needs centre crops and no
    /// random flip, the images the cache holds).
    pub latent_cache: Option<&'a LatentCache<B::InnerBackend>>,
}

/// Every image's VAE posterior (`latent_dist`), encoded once up front, as
/// the scripts' `--cache_latents`: each step then samples its latents from
/// them with its own draws, so a cached run takes the same steps as an
/// uncached one. The images must be centre-cropped and never flipped.
pub struct LatentCache<B: Backend> {
    instance: Vec<DiagonalGaussianDistribution<B>>,
    class: Vec<DiagonalGaussianDistribution<B>>,
}

impl<B: Backend> LatentCache<B> {
    /// Encodes the (centre-cropped) images of `data` and `class_data` with
    /// `pipeline`'s VAE, one at a time.
    pub fn new(
        pipeline: &StableDiffusion<B>,
        data: &CaptionedDataset,
        class_data: Option<&CaptionedDataset>,
    ) -> Result<Self> {
        let encode = |d: &CaptionedDataset| -> Result<Vec<_>> {
            if d.images.crop() != Crop::Center {
                return Err(PipelineError::parameter(
                    "cache_latents",
                    "cached latents are of the centre crops: train with center crops",
                ));
            }
            let r = d.images.resolution;
            d.images
                .images
                .iter()
                .map(|values| {
                    let image = Tensor::<B, 4>::from_data(
                        TensorData::new(values.clone(), [1, d.images.channels, r, r]),
                        &pipeline.device,
                    );
                    Ok(pipeline.vae.encode(image)?)
                })
                .collect()
        };
        Ok(LatentCache {
            instance: encode(data)?,
            class: match class_data {
                Some(c) => encode(c)?,
                None => Vec::new(),
            },
        })
    }

    /// The batch posterior of the drawn images (`class`: from the class set).
    fn gather(&self, drawn: &[(bool, usize)]) -> DiagonalGaussianDistribution<B> {
        let pick = |class: bool, i: usize| {
            if class {
                &self.class[i]
            } else {
                &self.instance[i]
            }
        };
        let cat = |f: &dyn Fn(&DiagonalGaussianDistribution<B>) -> Tensor<B, 4>| {
            Tensor::cat(drawn.iter().map(|&(c, i)| f(pick(c, i))).collect(), 0)
        };
        DiagonalGaussianDistribution {
            mean: cat(&|p| p.mean.clone()),
            logvar: cat(&|p| p.logvar.clone()),
            std: cat(&|p| p.std.clone()),
        }
    }
}

impl<B: AutodiffBackend> TextToImageBatches<'_, B> {
    /// The class images' draws: the instance sampler's settings, another seed.
    fn class_sampler(&self) -> BatchSampler {
        BatchSampler {
            seed: self.sampler.seed ^ 0x00C1_A55E_5EED_0000,
            ..self.sampler
        }
    }

    /// The captions of step `step`, after caption dropout (the class
    /// images' after the instance images').
    pub fn captions(&self, step: u64) -> Vec<String> {
        let indices = self.sampler.indices(self.data.len(), step);
        let keep = self.sampler.uniforms(Draw::Captions, step, indices.len());
        let mut captions: Vec<String> = indices
            .iter()
            .zip(keep)
            .map(|(&i, u)| {
                if u < self.proportion_empty_prompts {
                    String::new()
                } else {
                    self.data.captions[i].clone()
                }
            })
            .collect();
        if let Some(class) = self.class_data {
            let class_indices = self.class_sampler().indices(class.len(), step);
            captions.extend(class_indices.iter().map(|&i| class.captions[i].clone()));
        }
        captions
    }

    /// The batch of step `step` on `device` (the trainer's).
    pub fn batch(
        &self,
        step: u64,
        num_train_timesteps: usize,
        device: &B::Device,
    ) -> Result<Batch<B>> {
        let pipe = self.pipeline;
        if self.data.is_empty() {
            return Err(PipelineError::parameter("train_data_dir", "no images"));
        }
        if !(0.0..=1.0).contains(&self.proportion_empty_prompts) {
            return Err(PipelineError::parameter(
                "proportion_empty_prompts",
                format!("{}: must be in [0, 1]", self.proportion_empty_prompts),
            ));
        }
        let (mut pixels, drawn) =
            self.sampler
                .images_and_crops(&self.data.images, step, &pipe.device)?;
        // Each drawn image with the data set it came from (SDXL's sizes).
        let mut crops: Vec<(&CaptionedDataset, DrawnImage)> =
            drawn.into_iter().map(|d| (self.data, d)).collect();
        if let Some(class) = self.class_data {
            if class.is_empty() {
                return Err(PipelineError::parameter("class_data_dir", "no images"));
            }
            let (class_pixels, class_drawn) =
                self.class_sampler()
                    .images_and_crops(&class.images, step, &pipe.device)?;
            pixels = Tensor::cat(vec![pixels, class_pixels], 0);
            crops.extend(class_drawn.into_iter().map(|d| (class, d)));
        }
        let posterior = match self.latent_cache {
            Some(cache) => {
                if self.sampler.random_flip {
                    return Err(PipelineError::parameter(
                        "cache_latents",
                        "cached latents are of unflipped images: train without random flips",
                    ));
                }
                let drawn: Vec<(bool, usize)> = crops
                    .iter()
                    .map(|(d, img)| (!std::ptr::eq(*d, self.data), img.index))
                    .collect();
                cache.gather(&drawn)
            }
            None => pipe.vae.encode(pixels)?,
        };
        let shape = posterior.mean.dims();
        let eps = self
            .sampler
            .draws(Draw::Latents, step, shape.iter().product());
        let eps = Tensor::from_data(TensorData::new(eps, shape), &pipe.device);
        let mut latents = posterior.sample(eps)?;
        if let Some(shift) = pipe.vae.config.shift_factor {
            latents = latents.sub_scalar(shift);
        }
        let latents = latents.mul_scalar(pipe.vae.config.scaling_factor);
        let x0 = Tensor::<B, 4>::from_inner(latents).to_device(device);
        let captions = self.captions(step);
        let inputs = PromptInputs {
            prompt: &captions,
            negative_prompt: None,
            prompt_2: None,
            negative_prompt_2: None,
            clip_skip: None,
            long_prompt: LongPrompt::Truncate,
        };
        let condition = if pipe.xl {
            let encoders: Vec<_> = [&pipe.text_encoder, &pipe.text_encoder_2]
                .into_iter()
                .flatten()
                .collect();
            let embeds = encode_sdxl(&encoders, &inputs, false, false)?;
            let pooled = embeds.pooled.ok_or_else(|| {
                PipelineError::parameter(
                    "text_encoder_2",
                    "SDXL's second encoder gives no pooled output",
                )
            })?;
            // `add_time_ids`: original size, crop corner, target size per image.
            let ids: Vec<f32> = crops
                .iter()
                .flat_map(|(data, d)| {
                    let r = data.images.resolution as f32;
                    let (top, left) = d.crop_top_left;
                    let (h, w) = data.images.original_sizes[d.index];
                    [h as f32, w as f32, top as f32, left as f32, r, r]
                })
                .collect();
            let n = crops.len();
            let time_ids = Tensor::<B, 2>::from_data(TensorData::new(ids, [n, 6]), device);
            Condition::TextTime {
                states: Tensor::from_inner(embeds.prompt).to_device(device),
                text_embeds: Tensor::from_inner(pooled).to_device(device),
                time_ids,
            }
        } else {
            let encoder = pipe.text_encoder.as_ref().ok_or_else(|| {
                PipelineError::parameter("text_encoder", "the pipeline has no text encoder")
            })?;
            let states = encode_sd(encoder, &inputs, false)?.prompt;
            Condition::Text(Tensor::from_inner(states).to_device(device))
        };
        let (noise, offset_noise, timesteps) =
            self.sampler
                .noise::<B>(step, x0.dims(), num_train_timesteps, device);
        Ok(Batch {
            x0,
            noise,
            offset_noise: Some(offset_noise),
            timesteps,
            condition,
        })
    }
}
