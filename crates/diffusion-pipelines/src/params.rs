//! The call parameters of every pipeline, with diffusers' names and defaults.
//!
//! One struct serves all pipelines, as most parameters are shared; a pipeline
//! given a parameter it does not have (e.g. `strength` for text-to-image)
//! refuses it, as Python refuses an unknown keyword argument.

use burn::tensor::{Tensor, backend::Backend};
use image::DynamicImage;

use crate::noise::Generator;
use crate::text::{LongPrompt, PromptEmbeds};

/// What a call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputType {
    /// Decoded images in `[0, 1]` (diffusers' `"np"`/`"pil"`).
    #[default]
    Images,
    /// The final latents, not decoded (diffusers' `"latent"`).
    Latents,
}

/// What the per-step callback tells the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop now: the call returns [`crate::PipelineError::Cancelled`].
    Cancel,
}

/// What the per-step callback sees (diffusers' `callback_on_step_end`).
#[derive(Debug)]
pub struct StepInfo<'a, B: Backend> {
    /// 0-based step index.
    pub step: usize,
    /// Number of steps of this call.
    pub num_steps: usize,
    /// The timestep just done.
    pub timestep: f64,
    /// The latents after this step `[N, C, h, w]` (scaled as the UNet sees them;
    /// decode with the VAE, or preview with a TAESD, see [`crate::preview()`]).
    pub latents: &'a Tensor<B, 4>,
}

/// A per-step callback.
pub type Callback<'a, B> = Box<dyn FnMut(&StepInfo<'_, B>) -> Control + 'a>;

/// The parameters of a pipeline call. Build with `Params::default()` or
/// [`Params::prompt`] and set fields; unset fields take diffusers' defaults.
pub struct Params<'a, B: Backend> {
    /// The prompt(s). Empty for unconditional pipelines.
    pub prompt: Vec<String>,
    /// Negative prompt(s): one for every prompt, or one per prompt.
    pub negative_prompt: Option<Vec<String>>,
    /// SDXL: prompts for the second text encoder (default: `prompt`).
    pub prompt_2: Option<Vec<String>>,
    /// SDXL: negative prompts for the second encoder (default: `negative_prompt`).
    pub negative_prompt_2: Option<Vec<String>>,
    /// Caller-made prompt embeddings instead of `prompt` (and negatives).
    pub prompt_embeds: Option<PromptEmbeds<B>>,
    /// Output height in pixels (a multiple of 8; default from the UNet's sample size).
    pub height: Option<usize>,
    /// Output width in pixels (a multiple of 8).
    pub width: Option<usize>,
    /// Denoising steps (diffusers' default 50; DDPM's 1000).
    pub num_inference_steps: Option<usize>,
    /// Custom timesteps (schedulers that accept them).
    pub timesteps: Option<Vec<f64>>,
    /// Custom sigmas (schedulers that accept them).
    pub sigmas: Option<Vec<f64>>,
    /// Classifier-free guidance scale (default 7.5; 5.0 for SDXL); ≤ 1 disables it.
    pub guidance_scale: Option<f64>,
    /// Rescale of the guided noise (Lin et al. 2023, §3.4), 0 = off.
    pub guidance_rescale: f64,
    /// Images per prompt.
    pub num_images_per_prompt: usize,
    /// Randomness (see [`Generator`]); `None` draws a seed from the clock.
    pub generator: Option<Generator>,
    /// Caller-supplied initial latents `[N, C, h, w]`, used as given before
    /// `init_noise_sigma` scaling (diffusers' `latents=`).
    pub latents: Option<Tensor<B, 4>>,
    /// DDIM-family eta (ignored by schedulers without it).
    pub eta: Option<f64>,
    /// Layers to skip at the end of the text encoder.
    pub clip_skip: Option<usize>,
    /// Prompts over 77 tokens: truncated (diffusers) or chunked.
    pub long_prompt: LongPrompt,
    /// img2img/inpaint: how much to change the image, in `[0, 1]`.
    pub strength: Option<f64>,
    /// img2img/inpaint: the input image.
    pub image: Option<DynamicImage>,
    /// inpaint: the mask (white = repaint).
    pub mask_image: Option<DynamicImage>,
    /// SDXL micro-conditioning: the original image size `(h, w)`.
    pub original_size: Option<(usize, usize)>,
    /// SDXL micro-conditioning: the crop's top-left corner `(y, x)`.
    pub crops_coords_top_left: (usize, usize),
    /// SDXL micro-conditioning: the target size `(h, w)`.
    pub target_size: Option<(usize, usize)>,
    /// SDXL: stop after this fraction of the schedule (for a refiner).
    pub denoising_end: Option<f64>,
    /// SDXL img2img with `requires_aesthetics_score`: the aesthetic score.
    pub aesthetic_score: f64,
    /// ... and the negative one.
    pub negative_aesthetic_score: f64,
    /// ControlNet control images, one entry per net of the pipeline, each one
    /// image or one per prompt (diffusers' `image` of the text-to-image
    /// ControlNet pipelines, `control_image` of the others); RGB, used in
    /// `[0, 1]` as diffusers' control image processor.
    pub control_image: Vec<Vec<DynamicImage>>,
    /// ControlNet residual scale: one for all nets or one per net (default
    /// as the diffusers class: 1.0; 0.8 for img2img; SD inpainting 0.5).
    pub controlnet_conditioning_scale: Option<Vec<f64>>,
    /// Fraction of the steps after which each ControlNet starts (default 0).
    pub control_guidance_start: Option<Vec<f64>>,
    /// Fraction of the steps after which each ControlNet stops (default 1).
    pub control_guidance_end: Option<Vec<f64>>,
    /// ControlNet guess mode: the nets see only the conditional half of the
    /// guidance batch, their states weighted from 0.1 to 1.0.
    pub guess_mode: bool,
    /// T2I-Adapter images, one entry per adapter of the pipeline, each one
    /// image or one per prompt (diffusers' `image` of the adapter pipelines).
    pub adapter_image: Vec<Vec<DynamicImage>>,
    /// Weight of each adapter's features: one for all or one per adapter
    /// (default 1).
    pub adapter_conditioning_scale: Option<Vec<f64>>,
    /// SDXL: the fraction of the steps (from the first) the adapters act in
    /// (default 1).
    pub adapter_conditioning_factor: Option<f64>,
    /// Images or latents.
    pub output_type: OutputType,
    /// Called after every step.
    pub callback: Option<Callback<'a, B>>,
    /// Show a progress bar on stderr (hidden anyway when not a terminal).
    pub progress: bool,
}

impl<B: Backend> Default for Params<'_, B> {
    fn default() -> Self {
        Params {
            prompt: Vec::new(),
            negative_prompt: None,
            prompt_2: None,
            negative_prompt_2: None,
            prompt_embeds: None,
            height: None,
            width: None,
            num_inference_steps: None,
            timesteps: None,
            sigmas: None,
            guidance_scale: None,
            guidance_rescale: 0.0,
            num_images_per_prompt: 1,
            generator: None,
            latents: None,
            eta: None,
            clip_skip: None,
            long_prompt: LongPrompt::Truncate,
            strength: None,
            image: None,
            mask_image: None,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            denoising_end: None,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
            control_image: Vec::new(),
            controlnet_conditioning_scale: None,
            control_guidance_start: None,
            control_guidance_end: None,
            guess_mode: false,
            adapter_image: Vec::new(),
            adapter_conditioning_scale: None,
            adapter_conditioning_factor: None,
            output_type: OutputType::Images,
            callback: None,
            progress: true,
        }
    }
}

impl<'a, B: Backend> Params<'a, B> {
    /// Parameters for one prompt.
    pub fn prompt(prompt: impl Into<String>) -> Self {
        Params {
            prompt: vec![prompt.into()],
            ..Self::default()
        }
    }

    /// Refuses the values no pipeline can use, naming the parameter: a NaN
    /// or infinite number (NaN guidance would silently give the unguided
    /// image, a NaN strength no steps), and a batch whose size overflows.
    pub(crate) fn check_numbers(&self) -> crate::Result<()> {
        let numbers = [
            ("guidance_scale", self.guidance_scale),
            ("guidance_rescale", Some(self.guidance_rescale)),
            ("eta", self.eta),
            ("strength", self.strength),
            ("denoising_end", self.denoising_end),
            (
                "adapter_conditioning_factor",
                self.adapter_conditioning_factor,
            ),
            ("aesthetic_score", Some(self.aesthetic_score)),
            (
                "negative_aesthetic_score",
                Some(self.negative_aesthetic_score),
            ),
        ];
        for (name, v) in numbers {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(crate::PipelineError::parameter(
                    name,
                    format!("{v} is not a finite number"),
                ));
            }
        }
        for (name, list) in [("timesteps", &self.timesteps), ("sigmas", &self.sigmas)] {
            if let Some(v) = list.iter().flatten().find(|v| !v.is_finite()) {
                return Err(crate::PipelineError::parameter(
                    name,
                    format!("contains {v}, not a finite number"),
                ));
            }
        }
        if let Some(e) = self.denoising_end
            && !(0.0..=1.0).contains(&e)
        {
            return Err(crate::PipelineError::parameter(
                "denoising_end",
                format!("{e} is outside [0, 1]"),
            ));
        }
        Ok(())
    }

    /// The names of the parameters that are set (not at their default), for
    /// refusing those a pipeline does not take.
    pub(crate) fn set_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |set: bool, name: &'static str| {
            if set {
                v.push(name);
            }
        };
        add(!self.prompt.is_empty(), "prompt");
        add(self.negative_prompt.is_some(), "negative_prompt");
        add(self.prompt_2.is_some(), "prompt_2");
        add(self.negative_prompt_2.is_some(), "negative_prompt_2");
        add(self.prompt_embeds.is_some(), "prompt_embeds");
        add(self.height.is_some(), "height");
        add(self.width.is_some(), "width");
        add(self.timesteps.is_some(), "timesteps");
        add(self.sigmas.is_some(), "sigmas");
        add(self.guidance_scale.is_some(), "guidance_scale");
        add(self.guidance_rescale != 0.0, "guidance_rescale");
        add(self.clip_skip.is_some(), "clip_skip");
        add(self.long_prompt != LongPrompt::Truncate, "long_prompt");
        add(self.strength.is_some(), "strength");
        add(self.image.is_some(), "image");
        add(self.mask_image.is_some(), "mask_image");
        add(self.original_size.is_some(), "original_size");
        add(
            self.crops_coords_top_left != (0, 0),
            "crops_coords_top_left",
        );
        add(self.target_size.is_some(), "target_size");
        add(self.denoising_end.is_some(), "denoising_end");
        add(self.aesthetic_score != 6.0, "aesthetic_score");
        add(
            self.negative_aesthetic_score != 2.5,
            "negative_aesthetic_score",
        );
        add(!self.control_image.is_empty(), "control_image");
        add(
            self.controlnet_conditioning_scale.is_some(),
            "controlnet_conditioning_scale",
        );
        add(
            self.control_guidance_start.is_some(),
            "control_guidance_start",
        );
        add(self.control_guidance_end.is_some(), "control_guidance_end");
        add(self.guess_mode, "guess_mode");
        add(!self.adapter_image.is_empty(), "adapter_image");
        add(
            self.adapter_conditioning_scale.is_some(),
            "adapter_conditioning_scale",
        );
        add(
            self.adapter_conditioning_factor.is_some(),
            "adapter_conditioning_factor",
        );
        v
    }
}
