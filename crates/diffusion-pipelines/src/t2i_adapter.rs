//! T2I-Adapters on the Stable Diffusion pipelines: diffusers'
//! `StableDiffusionAdapterPipeline` and `StableDiffusionXLAdapterPipeline`
//! are text-to-image with the adapters' feature maps (computed once, before
//! the loop) added inside the UNet's down path at every step, or for the
//! first `adapter_conditioning_factor` of the steps (SDXL). Several adapters
//! are summed with their weights, as `MultiAdapter`.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use diffusion_hub::resolve::{ResolveOptions, Resolved, ResolvedComponent, resolve};
use diffusion_models::config::read_config;
use diffusion_models::t2i_adapter::{T2IAdapter, T2IAdapterConfig};
use image::DynamicImage;

use crate::components::{LoadOptions, open_component_weights};
use crate::error::{PipelineError, Result};
use crate::image::{pil_luma, rgb_at};

/// One loaded T2I-Adapter.
pub struct Adapter<B: Backend> {
    /// The network.
    pub model: T2IAdapter<B>,
    /// Its config.
    pub config: T2IAdapterConfig,
    /// Where it came from, for messages.
    pub name: String,
}

impl<B: Backend> std::fmt::Debug for Adapter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Adapter<B> {
    /// Loads a `T2IAdapter` folder or Hub repo (`config.json` + weights at
    /// its root), as diffusers' `T2IAdapter.from_pretrained`.
    pub fn from_pretrained(source: &str, options: &LoadOptions<B>) -> Result<Self> {
        let mut resolve_options = ResolveOptions::from_env();
        if let Some(v) = &options.variant {
            resolve_options = resolve_options.variant(v.clone());
        }
        if options.local_files_only {
            resolve_options = resolve_options.local_files_only(true);
        }
        if let Some(dir) = &options.cache_dir {
            resolve_options.cache_dir = dir.clone();
        }
        match resolve(source, &resolve_options)? {
            Resolved::Model(c) => Self::load_component(&c, source, options),
            Resolved::Pipeline(m) => match m.components.get("adapter") {
                Some(c) => Self::load_component(c, source, options),
                None => Err(PipelineError::WrongModel {
                    model: source.to_string(),
                    message: "a pipeline without an `adapter` component, not a T2I-Adapter".into(),
                }),
            },
            Resolved::Checkpoint(path) => Err(PipelineError::WrongModel {
                model: source.to_string(),
                message: format!(
                    "{} is a single file; T2I-Adapters load from diffusers folders",
                    path.display()
                ),
            }),
        }
    }

    /// Loads a resolved adapter folder (strict: every key used).
    pub fn load_component(
        c: &ResolvedComponent,
        name: &str,
        options: &LoadOptions<B>,
    ) -> Result<Self> {
        let path = c
            .config
            .clone()
            .unwrap_or_else(|| c.dir.join("config.json"));
        let config = read_config::<T2IAdapterConfig>(&path)?.config;
        let weights = open_component_weights(c, &options.pickle)?;
        let loader = options.loader(&weights);
        let model = T2IAdapter::load(&loader, &config)?;
        loader.finish(&[])?;
        Ok(Adapter {
            model,
            config,
            name: name.to_string(),
        })
    }
}

/// The summed, scaled feature maps of `adapters` for their images (one
/// entry per adapter: one image or one per prompt), expanded to `total`
/// items (one image: every item; one per prompt: `per_prompt` each) and
/// doubled for guidance; diffusers' `adapter_state`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adapter_state<B: Backend>(
    adapters: &[Adapter<B>],
    images: &[Vec<DynamicImage>],
    scales: &[f64],
    height: usize,
    width: usize,
    total: usize,
    per_prompt: usize,
    doubled: bool,
    device: &B::Device,
) -> Result<Vec<Tensor<B, 4>>> {
    let prompts = total / per_prompt.max(1);
    let mut sum: Option<Vec<Tensor<B, 4>>> = None;
    for (k, ((adapter, list), &w)) in adapters.iter().zip(images).zip(scales).enumerate() {
        if list.len() != 1 && list.len() != prompts {
            return Err(PipelineError::parameter(
                "adapter_image",
                format!(
                    "adapter {k}: {} images for {prompts} prompts (give one, or one per prompt)",
                    list.len()
                ),
            ));
        }
        let input = adapter_input::<B>(list, adapter.config.in_channels, height, width, device);
        let features = adapter.model.forward(input)?;
        let weighted: Vec<Tensor<B, 4>> = features
            .into_iter()
            .map(|f| f.cast(DType::F32).mul_scalar(w as f32))
            .collect();
        sum = Some(match sum {
            None => weighted,
            Some(s) => s.into_iter().zip(weighted).map(|(a, b)| a + b).collect(),
        });
    }
    let state = sum.unwrap_or_default();
    Ok(state
        .into_iter()
        .map(|f| {
            let f = if f.dims()[0] == 1 {
                f.repeat_dim(0, total)
            } else {
                crate::text::repeat_interleave(f, per_prompt)
            };
            if doubled {
                Tensor::cat(vec![f.clone(), f], 0)
            } else {
                f
            }
        })
        .collect())
}

/// diffusers' `_preprocess_adapter_image`: a Lanczos resize to
/// `height × width`, values in `[0, 1]`, RGB (or gray for one-channel
/// adapters, by PIL's rule).
fn adapter_input<B: Backend>(
    images: &[DynamicImage],
    channels: usize,
    height: usize,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let plane = height * width;
    let channels = if channels == 1 { 1 } else { 3 };
    let mut data = Vec::with_capacity(images.len() * channels * plane);
    for image in images {
        let rgb = rgb_at(image, height, width);
        let mut chw = vec![0f32; channels * plane];
        for (i, px) in rgb.pixels().enumerate() {
            if channels == 1 {
                chw[i] = pil_luma(px.0) as f32 / 255.0;
            } else {
                for c in 0..3 {
                    chw[c * plane + i] = px.0[c] as f32 / 255.0;
                }
            }
        }
        data.extend_from_slice(&chw);
    }
    Tensor::from_data(
        TensorData::new(data, [images.len(), channels, height, width]),
        device,
    )
}
