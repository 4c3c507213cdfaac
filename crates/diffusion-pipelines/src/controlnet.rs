//! ControlNets on the Stable Diffusion pipelines: diffusers'
//! `StableDiffusion[XL]ControlNet{,Img2Img,Inpaint}Pipeline` are the plain
//! pipelines plus, at every step, the nets' residuals added to the UNet's
//! skip connections ([`StableDiffusion::run`](crate::StableDiffusion::run)
//! does both). This module loads the nets, checks that they fit the
//! pipeline, prepares the control images as diffusers' `prepare_image`, and
//! runs the nets for one step as `MultiControlNetModel` does (outputs summed,
//! each net with its own scale and guidance window).

use burn::tensor::{DType, Tensor, backend::Backend};
use diffusion_hub::resolve::{ResolveOptions, Resolved, ResolvedComponent, resolve};
use diffusion_models::config::read_config;
use diffusion_models::controlnet::{
    ControlNetConfig, ControlNetModel, ControlNetOutput, ResidualScale,
};
use diffusion_models::unet_2d_condition::{UNet2DConditionConfig, UNetConditions};
use image::DynamicImage;

use crate::components::{LoadOptions, open_component_weights};
use crate::error::{PipelineError, Result};
use crate::image::{default_size, rgb_at};

/// One loaded ControlNet.
pub struct ControlNet<B: Backend> {
    /// The network.
    pub model: ControlNetModel<B>,
    /// Its config.
    pub config: ControlNetConfig,
    /// Where it came from, for messages.
    pub name: String,
}

impl<B: Backend> std::fmt::Debug for ControlNet<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlNet")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> ControlNet<B> {
    /// Loads a `ControlNetModel` folder, Hub repo id or cached repo
    /// (`config.json` + weights at its root), as diffusers'
    /// `ControlNetModel.from_pretrained`.
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
            Resolved::Pipeline(m) => match m.components.get("controlnet") {
                Some(c) => Self::load_component(c, source, options),
                None => Err(PipelineError::WrongModel {
                    model: source.to_string(),
                    message: "a pipeline without a `controlnet` component, not a ControlNet".into(),
                }),
            },
            Resolved::Checkpoint(path) => Err(PipelineError::WrongModel {
                model: source.to_string(),
                message: format!(
                    "{} is a single checkpoint file: convert it first (`diffuse convert`)",
                    path.display()
                ),
            }),
        }
    }

    /// Loads a resolved ControlNet folder (strict: every key used).
    pub fn load_component(
        c: &ResolvedComponent,
        name: &str,
        options: &LoadOptions<B>,
    ) -> Result<Self> {
        let path = c
            .config
            .clone()
            .unwrap_or_else(|| c.dir.join("config.json"));
        // The union and XS ControlNets have other classes (and keys): name them.
        let class = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v.get("_class_name")?.as_str().map(str::to_string));
        if let Some(class) = class.filter(|c| c != "ControlNetModel") {
            return Err(PipelineError::Config {
                path,
                message: format!(
                    "_class_name {class}: only ControlNetModel is supported (not the union or XS variants)"
                ),
            });
        }
        let loaded = read_config::<ControlNetConfig>(&path)?;
        let weights = open_component_weights(c, &options.pickle)?;
        let loader = options.loader(&weights);
        let model = ControlNetModel::load(&loader, &loaded.config)?;
        loader.finish(&[])?;
        Ok(ControlNet {
            model,
            config: loaded.config,
            name: name.to_string(),
        })
    }

    /// Refuses a net built for another base model than this pipeline's UNet
    /// (text width, SDXL's added embedding, latent channels, VAE scale).
    pub fn check_fits(
        &self,
        unet: &UNet2DConditionConfig,
        latent_channels: usize,
        vae_scale_factor: usize,
    ) -> Result<()> {
        let cfg = &self.config;
        let wrong = |message: String| {
            Err(PipelineError::WrongModel {
                model: self.name.clone(),
                message,
            })
        };
        let unet_dim = match &unet.cross_attention_dim {
            diffusion_models::unet_2d::OneOrMany::One(d) => Some(*d),
            diffusion_models::unet_2d::OneOrMany::Many(v) => v.first().copied(),
        };
        if Some(cfg.cross_attention_dim) != unet_dim {
            return wrong(format!(
                "the ControlNet attends to text states of width {}, the pipeline's UNet to {} \
                 (a ControlNet for another base model)",
                cfg.cross_attention_dim,
                unet_dim.map_or("?".into(), |d| d.to_string())
            ));
        }
        if cfg.addition_embed_type != unet.addition_embed_type
            || cfg.projection_class_embeddings_input_dim
                != unet.projection_class_embeddings_input_dim
        {
            let kind = |t: &Option<String>| t.clone().unwrap_or_else(|| "none".into());
            return wrong(format!(
                "the ControlNet's added embedding ({}, {:?} features) is not the UNet's ({}, {:?}): \
                 an SDXL ControlNet on SD 1.x/2.x or the reverse",
                kind(&cfg.addition_embed_type),
                cfg.projection_class_embeddings_input_dim,
                kind(&unet.addition_embed_type),
                unet.projection_class_embeddings_input_dim
            ));
        }
        if cfg.in_channels != latent_channels {
            return wrong(format!(
                "the ControlNet takes {} latent channels, the VAE makes {latent_channels}",
                cfg.in_channels
            ));
        }
        if cfg.conditioning_scale_factor() != vae_scale_factor {
            return wrong(format!(
                "the ControlNet embeds control images at 1/{} of their size, the VAE's latents are 1/{vae_scale_factor}",
                cfg.conditioning_scale_factor()
            ));
        }
        if cfg.block_out_channels != unet.block_out_channels {
            return wrong(format!(
                "the ControlNet's block_out_channels {:?} are not the UNet's {:?}",
                cfg.block_out_channels, unet.block_out_channels
            ));
        }
        Ok(())
    }
}

/// The per-net settings of one call, expanded to one entry per net (diffusers'
/// alignment of `controlnet_conditioning_scale`, `control_guidance_start` and
/// `control_guidance_end`) and checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ControlSettings {
    pub scales: Vec<f64>,
    pub starts: Vec<f64>,
    pub ends: Vec<f64>,
}

impl ControlSettings {
    pub(crate) fn new(
        nets: usize,
        scale: Option<&[f64]>,
        default_scale: f64,
        start: Option<&[f64]>,
        end: Option<&[f64]>,
    ) -> Result<Self> {
        let expand = |name: &'static str, v: Option<&[f64]>, default: f64| match v {
            None => Ok(vec![default; nets]),
            Some([one]) => Ok(vec![*one; nets]),
            Some(v) if v.len() == nets => Ok(v.to_vec()),
            Some(v) => Err(PipelineError::parameter(
                name,
                format!("{} values for {nets} ControlNets", v.len()),
            )),
        };
        let scales = expand("controlnet_conditioning_scale", scale, default_scale)?;
        let starts = expand("control_guidance_start", start, 0.0)?;
        let ends = expand("control_guidance_end", end, 1.0)?;
        for (name, list) in [
            ("controlnet_conditioning_scale", &scales),
            ("control_guidance_start", &starts),
            ("control_guidance_end", &ends),
        ] {
            if let Some(v) = list.iter().find(|v| !v.is_finite()) {
                return Err(PipelineError::parameter(
                    name,
                    format!("{v} is not a finite number"),
                ));
            }
        }
        for (k, (s, e)) in starts.iter().zip(&ends).enumerate() {
            if s >= e {
                return Err(PipelineError::parameter(
                    "control_guidance_start",
                    format!("{s} is not below control_guidance_end {e} (net {k})"),
                ));
            }
            if *s < 0.0 {
                return Err(PipelineError::parameter(
                    "control_guidance_start",
                    format!("{s} is below 0 (net {k})"),
                ));
            }
            if *e > 1.0 {
                return Err(PipelineError::parameter(
                    "control_guidance_end",
                    format!("{e} is above 1 (net {k})"),
                ));
            }
        }
        Ok(ControlSettings {
            scales,
            starts,
            ends,
        })
    }

    /// diffusers' `controlnet_keep[i]` times the scale, per net: 0 outside
    /// the net's window `[start, end]` of the `steps` steps.
    pub(crate) fn step_scales(&self, i: usize, steps: usize) -> Vec<f64> {
        let n = steps as f64;
        self.scales
            .iter()
            .zip(self.starts.iter().zip(&self.ends))
            .map(|(scale, (s, e))| {
                let off = (i as f64 / n) < *s || ((i + 1) as f64 / n) > *e;
                if off { 0.0 } else { *scale }
            })
            .collect()
    }
}

/// diffusers' `prepare_image` of one net: the control images resized (PIL
/// Lanczos) to `height × width`, RGB in `[0, 1]` (no normalisation), the
/// batch repeated to `total` (one image: every item; one per prompt: each
/// `per_prompt` times), doubled for guidance unless in guess mode.
pub(crate) fn control_tensor<B: Backend>(
    images: &[DynamicImage],
    height: usize,
    width: usize,
    total: usize,
    per_prompt: usize,
    doubled: bool,
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let prompts = total / per_prompt.max(1);
    if images.len() != 1 && images.len() != prompts {
        return Err(PipelineError::parameter(
            "control_image",
            format!(
                "{} images for {prompts} prompts (give one, or one per prompt)",
                images.len()
            ),
        ));
    }
    let plane = height * width;
    let mut data = Vec::with_capacity(total * 3 * plane);
    let repeat = if images.len() == 1 { total } else { per_prompt };
    for image in images {
        let rgb = rgb_at(image, height, width);
        let mut chw = vec![0f32; 3 * plane];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = px.0[c] as f32 / 255.0;
            }
        }
        for _ in 0..repeat {
            data.extend_from_slice(&chw);
        }
    }
    let t = Tensor::<B, 4>::from_data(
        burn::tensor::TensorData::new(data, [total, 3, height, width]),
        device,
    );
    Ok(if doubled {
        Tensor::cat(vec![t.clone(), t], 0)
    } else {
        t
    })
}

/// The size a control image gives the output when the call sets none: its
/// own, rounded down to a multiple of the VAE scale factor (diffusers'
/// `VaeImageProcessor.get_default_height_width`).
pub(crate) fn control_size(image: &DynamicImage, vae_scale_factor: usize) -> (usize, usize) {
    default_size(image, vae_scale_factor)
}

/// What the nets need at one step beside the latents.
pub(crate) struct StepInputs<'a, B: Backend> {
    /// The prepared control images, one per net.
    pub images: &'a [Tensor<B, 4>],
    /// Each net's scale at this step (0: skipped).
    pub scales: &'a [f64],
    /// The text states the nets see.
    pub context: Tensor<B, 3>,
    /// SDXL's `text_embeds`/`time_ids` for the nets.
    pub conditions: &'a UNetConditions<B>,
    /// Guess mode.
    pub guess_mode: bool,
}

/// Runs every net with a non-zero scale on `sample` at `t` and sums the
/// outputs (net order, as `MultiControlNetModel`); `None` when every net is
/// outside its window (diffusers adds zeros then).
pub(crate) fn residuals<B: Backend>(
    nets: &[ControlNet<B>],
    sample: &Tensor<B, 4>,
    t: Tensor<B, 1>,
    inputs: StepInputs<'_, B>,
) -> Result<Option<ControlNetOutput<B>>> {
    let mut sum: Option<ControlNetOutput<B>> = None;
    for ((net, image), &scale) in nets.iter().zip(inputs.images).zip(inputs.scales) {
        if scale == 0.0 {
            continue;
        }
        let dtype = net.model.conv_in.weight.val().dtype();
        let out = net.model.forward(
            sample.clone().cast(dtype),
            t.clone(),
            inputs.context.clone(),
            image.clone().cast(dtype),
            ResidualScale {
                conditioning_scale: scale,
                guess_mode: inputs.guess_mode,
            },
            inputs.conditions,
        )?;
        let out = ControlNetOutput {
            down: out.down.into_iter().map(|d| d.cast(DType::F32)).collect(),
            mid: out.mid.cast(DType::F32),
        };
        sum = Some(match sum {
            None => out,
            Some(s) => s.sum(out),
        });
    }
    Ok(sum)
}
