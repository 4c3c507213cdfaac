//! Stable Diffusion 1.x/2.x and SDXL: text-to-image, img2img and inpainting.
//!
//! One set of components ([`StableDiffusion`]) and one denoising loop serve
//! the seven diffusers pipelines; what differs per task is how the initial
//! latents are made (pure noise; the noised image latents; the inpainting
//! variants) and what goes into the UNet beside them. Every step follows
//! diffusers' `__call__` in order, including the order of random draws (see
//! [`crate::noise`]), so a seed gives diffusers' image.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use diffusion_hub::resolve::ResolvedModel;
use diffusion_models::autoencoder_kl::AutoencoderKL;
use diffusion_models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
};
use diffusion_schedulers::{SCHEDULER_CLASSES, Scheduler, StepOptions, TimestepSpec};
use serde_json::Value;

use crate::components::{
    LoadOptions, build_scheduler, component, load_text_encoder, load_unet_condition, load_vae,
    read_scheduler_config,
};
use crate::controlnet::{
    ControlNet, ControlSettings, StepInputs, control_size, control_tensor, residuals,
};
use crate::error::{PipelineError, Result};
use crate::image::{Images, default_size, image_tensor, mask_tensor};
use crate::latents::{Latents, check_latents};
use crate::memory;
use crate::noise::{Generator, Rng, StepNoise};
use crate::params::{Control, OutputType, Params, StepInfo};
use crate::progress::Progress;
use crate::t2i_adapter::{Adapter, adapter_state};
use crate::text::{
    PromptEmbeds, PromptInputs, TextEncoder, encode_sd, encode_sdxl, repeat_interleave,
};

/// Which diffusers pipeline a call behaves as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `StableDiffusionPipeline` / `StableDiffusionXLPipeline`.
    TextToImage,
    /// `StableDiffusionImg2ImgPipeline` / `StableDiffusionXLImg2ImgPipeline`.
    ImageToImage,
    /// `StableDiffusionInpaintPipeline` (9-channel UNets, or the legacy
    /// blending mode for ordinary 4-channel ones).
    Inpaint,
}

/// What a call returns.
#[derive(Debug, Clone)]
pub struct Output<B: Backend> {
    /// The images (with [`OutputType::Images`]).
    pub images: Option<Images>,
    /// The final latents `[N, C, h, w]` (always kept; the only output with
    /// [`OutputType::Latents`]).
    pub latents: Tensor<B, 4>,
    /// The seed used when the call gave no generator (to remake the image).
    pub seed: Option<u64>,
    /// The timesteps run.
    pub timesteps: Vec<f64>,
}

/// The components of a Stable Diffusion (or SDXL) pipeline.
pub struct StableDiffusion<B: Backend> {
    /// SD's only text encoder; SDXL's first (absent in SDXL refiners).
    pub text_encoder: Option<TextEncoder<B>>,
    /// SDXL's second text encoder (with projection).
    pub text_encoder_2: Option<TextEncoder<B>>,
    /// The denoiser.
    pub unet: UNet2DConditionModel<B>,
    /// Its config (sample size, conditioning dims).
    pub unet_config: UNet2DConditionConfig,
    /// The autoencoder.
    pub vae: AutoencoderKL<B>,
    /// ControlNets (diffusers' `controlnet`: one net, or a
    /// `MultiControlNetModel`'s in order); empty for the plain pipelines.
    pub controlnets: Vec<ControlNet<B>>,
    /// T2I-Adapters (diffusers' `adapter`: one, or a `MultiAdapter`'s in
    /// order); empty for the plain pipelines.
    pub adapters: Vec<Adapter<B>>,
    /// The scheduler (swap it with [`StableDiffusion::set_scheduler`]).
    pub scheduler: Box<dyn Scheduler<Latents<B>>>,
    /// The repo's scheduler config, from which swaps are built.
    pub scheduler_config: Value,
    /// SDXL (two encoders, micro-conditioning).
    pub xl: bool,
    /// SDXL: an absent negative prompt is all zeros (`model_index.json`).
    pub force_zeros_for_empty_prompt: bool,
    /// SDXL img2img (refiner): condition on aesthetic scores instead of the target size.
    pub requires_aesthetics_score: bool,
    /// Where the models run.
    pub device: B::Device,
    /// The model's name, for messages.
    pub name: String,
}

impl<B: Backend> std::fmt::Debug for StableDiffusion<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusion")
            .field("name", &self.name)
            .field("xl", &self.xl)
            .field("scheduler", &self.scheduler.class_name())
            .finish_non_exhaustive()
    }
}

fn option_bool(model: &ResolvedModel, key: &str) -> Option<bool> {
    model.model_index.options.get(key).and_then(Value::as_bool)
}

impl<B: Backend> StableDiffusion<B> {
    /// Loads the components of a resolved SD/SDXL pipeline folder.
    pub fn load(model: &ResolvedModel, options: &LoadOptions<B>) -> Result<Self> {
        let xl = model.components.contains_key("text_encoder_2")
            || model.model_index.class_name.contains("XL");
        let mut progress = Progress::new(4, "loading", options.progress);
        let text_encoder = if model.components.contains_key("text_encoder") {
            Some(load_text_encoder(
                model,
                "tokenizer",
                "text_encoder",
                options,
            )?)
        } else if xl {
            None
        } else {
            component(
                model,
                "text_encoder",
                "Stable Diffusion encodes prompts with it",
                &[],
            )?;
            None
        };
        let text_encoder_2 = if xl {
            Some(load_text_encoder(
                model,
                "tokenizer_2",
                "text_encoder_2",
                options,
            )?)
        } else {
            None
        };
        progress.inc();
        let unet_c = component(model, "unet", "the denoiser", &["UNet2DConditionModel"])?;
        let (unet, unet_config) = load_unet_condition(unet_c, options)?;
        progress.inc();
        let vae = load_vae(
            component(
                model,
                "vae",
                "latents are decoded by it",
                &["AutoencoderKL"],
            )?,
            options,
            xl,
        )?;
        progress.inc();
        let sched_c = component(
            model,
            "scheduler",
            "the denoising schedule",
            SCHEDULER_CLASSES,
        )?;
        let path = sched_c
            .config
            .clone()
            .unwrap_or_else(|| sched_c.dir.join("scheduler_config.json"));
        let scheduler_config = read_scheduler_config(&path)?;
        let scheduler = build_scheduler(&scheduler_config, options.scheduler.as_ref())?;
        progress.finish();
        let mut sd = StableDiffusion {
            text_encoder,
            text_encoder_2,
            unet,
            unet_config,
            vae,
            controlnets: Vec::new(),
            adapters: Vec::new(),
            scheduler,
            scheduler_config,
            xl,
            force_zeros_for_empty_prompt: option_bool(model, "force_zeros_for_empty_prompt")
                .unwrap_or(xl),
            requires_aesthetics_score: option_bool(model, "requires_aesthetics_score")
                .unwrap_or(false),
            device: options.device.clone(),
            name: model.source.display_name(),
        };
        for net in load_controlnets(model, options)? {
            sd.add_controlnet(net)?;
        }
        for adapter in load_adapters(model, options)? {
            sd.add_adapter(adapter)?;
        }
        Ok(sd)
    }

    /// Adds a ControlNet (after those there are), refusing one built for
    /// another base model; diffusers' `…ControlNetPipeline.from_pipe(pipe,
    /// controlnet=...)`.
    pub fn add_controlnet(&mut self, net: ControlNet<B>) -> Result<()> {
        net.check_fits(
            &self.unet_config,
            self.vae.config.latent_channels,
            self.vae_scale_factor(),
        )?;
        self.controlnets.push(net);
        Ok(())
    }

    /// Adds a T2I-Adapter (after those there are); diffusers'
    /// `…AdapterPipeline.from_pipe(pipe, adapter=...)`. Several adapters must
    /// share their downscale factor, as `MultiAdapter` requires.
    pub fn add_adapter(&mut self, adapter: Adapter<B>) -> Result<()> {
        if let Some(first) = self.adapters.first()
            && first.config.downscale_factor != adapter.config.downscale_factor
        {
            return Err(PipelineError::WrongModel {
                model: adapter.name.clone(),
                message: format!(
                    "downscale_factor {}, the pipeline's first adapter has {} (MultiAdapter needs one)",
                    adapter.config.downscale_factor, first.config.downscale_factor
                ),
            });
        }
        self.adapters.push(adapter);
        Ok(())
    }

    /// Loads a T2I-Adapter folder or Hub repo ([`Adapter::from_pretrained`])
    /// and adds it.
    pub fn load_adapter(
        &mut self,
        source: &str,
        options: &crate::components::LoadOptions<B>,
    ) -> Result<()> {
        let adapter = Adapter::from_pretrained(source, options)?;
        self.add_adapter(adapter)
    }

    /// These components with `net` added ([`Self::add_controlnet`]).
    pub fn with_controlnet(mut self, net: ControlNet<B>) -> Result<Self> {
        self.add_controlnet(net)?;
        Ok(self)
    }

    /// Loads a ControlNet folder or Hub repo ([`ControlNet::from_pretrained`])
    /// and adds it.
    pub fn load_controlnet(
        &mut self,
        source: &str,
        options: &crate::components::LoadOptions<B>,
    ) -> Result<()> {
        let net = ControlNet::from_pretrained(source, options)?;
        self.add_controlnet(net)
    }

    /// Replaces the scheduler, built from the repo's scheduler config.
    pub fn set_scheduler(&mut self, choice: &crate::components::SchedulerChoice) -> Result<()> {
        self.scheduler = build_scheduler(&self.scheduler_config, Some(choice))?;
        Ok(())
    }

    /// `2^(levels − 1)` of the VAE (8 for SD).
    pub fn vae_scale_factor(&self) -> usize {
        1 << self.vae.config.block_out_channels.len().saturating_sub(1)
    }

    /// Runs `task` with `params`.
    pub fn run(&mut self, task: Task, mut params: Params<'_, B>) -> Result<Output<B>> {
        self.check_parameters(task, &params)?;
        params.check_numbers()?;
        let vsf = self.vae_scale_factor();
        let device = self.device.clone();

        // Defaults as diffusers has them.
        let controlled = !self.controlnets.is_empty();
        // diffusers' SDXL inpainting pipeline defaults to 7.5, its ControlNet
        // variant to SDXL's 5.0.
        let xl_guidance = if task == Task::Inpaint && !controlled {
            7.5
        } else {
            5.0
        };
        let guidance_scale =
            params
                .guidance_scale
                .unwrap_or(if self.xl { xl_guidance } else { 7.5 });
        let strength = params.strength.unwrap_or(match (task, self.xl) {
            (Task::ImageToImage, false) => 0.8,
            (Task::ImageToImage, true) if controlled => 0.8,
            (Task::ImageToImage, true) => 0.3,
            (Task::Inpaint, true) => 0.9999,
            _ => 1.0,
        });
        if task != Task::TextToImage && !(0.0..=1.0).contains(&strength) {
            return Err(PipelineError::parameter(
                "strength",
                format!("{strength} is outside [0, 1]"),
            ));
        }
        let (height, width) = self.output_size(task, &params, vsf)?;
        let do_cfg = guidance_scale > 1.0 && self.unet_config.time_cond_proj_dim.is_none();
        let n = params.num_images_per_prompt;
        if n == 0 {
            return Err(PipelineError::parameter(
                "num_images_per_prompt",
                "must be at least 1",
            ));
        }
        // Before anything as large as the latents is allocated.
        let prompts = match &params.prompt_embeds {
            Some(e) => e.prompt.dims()[0],
            None => params.prompt.len().max(1),
        };
        self.check_memory(prompts, n, do_cfg, height, width)?;

        // Prompts.
        let embeds = self.prompt_embeds(&mut params, do_cfg)?;
        let batch = embeds.prompt.dims()[0];
        let total = batch * n;

        // Timesteps.
        let mut timesteps = self.set_timesteps(&params)?;
        // diffusers' `retrieve_timesteps`: the requested count, or with custom
        // timesteps/sigmas the length of the resulting schedule.
        let num_steps = if params.timesteps.is_some() || params.sigmas.is_some() {
            timesteps.len()
        } else {
            params.num_inference_steps.unwrap_or(50)
        };
        if task != Task::TextToImage {
            timesteps = self.strength_timesteps(num_steps, strength)?;
        }
        if let Some(end) = params.denoising_end.filter(|e| *e > 0.0 && *e < 1.0) {
            let train = self.scheduler.num_train_timesteps() as f64;
            let cutoff = (train - end * train).round_ties_even();
            timesteps.retain(|t| *t >= cutoff);
        }

        // Randomness.
        let mut seed = None;
        let generator = params.generator.clone().unwrap_or_else(|| {
            let s = Generator::random_seed();
            seed = Some(s);
            Generator::Seed(s)
        });
        let mut rng = Rng::new(&generator, total)?;

        // Initial latents.
        let latent_channels = self.vae.config.latent_channels;
        let shape = [total, latent_channels, height / vsf, width / vsf];
        let init_sigma = self.scheduler.init_noise_sigma();
        let mut inpaint = None;
        let latents = match task {
            Task::TextToImage => {
                let shape = [
                    total,
                    self.unet_config.in_channels,
                    height / vsf,
                    width / vsf,
                ];
                match params.latents.take() {
                    Some(l) => check_latents(l, shape)?,
                    None => rng.randn_tensor::<B>(shape, &device)?,
                }
                .mul_scalar(init_sigma)
            }
            Task::ImageToImage => {
                let image = params
                    .image
                    .as_ref()
                    .expect("checked: img2img has an image");
                let image = image_tensor::<B>(image, height, width, &device);
                // With a generator per image, diffusers encodes each copy of the
                // image with its own generator; with one, it encodes once.
                let image = if matches!(generator, Generator::Seeds(_)) {
                    image.repeat_dim(0, total)
                } else {
                    image
                };
                let image_latents = self.encode_image(image, total, &mut rng)?;
                let noise = rng.randn_tensor::<B>(shape, &device)?;
                self.add_noise(image_latents, noise, timesteps[0])?
            }
            Task::Inpaint => {
                let state = self.prepare_inpaint(
                    &mut params,
                    height,
                    width,
                    total,
                    strength,
                    &timesteps,
                    do_cfg,
                    &mut rng,
                )?;
                let latents = state.latents.clone();
                inpaint = Some(state);
                latents
            }
        };

        // Conditioning.
        let (context, conditions) =
            self.conditioning(&embeds, n, do_cfg, &params, height, width)?;
        let timestep_cond = self
            .unet_config
            .time_cond_proj_dim
            .map(|dim| guidance_scale_embedding::<B>(guidance_scale - 1.0, dim, total, &device));

        let control = self.prepare_control(&params, task, height, width, total, n, do_cfg)?;
        let adapter =
            self.prepare_adapters(&params, height, width, total, n, do_cfg, timesteps.len())?;
        let latents = self.denoise(DenoiseArgs {
            latents,
            timesteps: &timesteps,
            control,
            adapter,
            context,
            conditions,
            timestep_cond,
            guidance: do_cfg.then_some(guidance_scale),
            guidance_rescale: params.guidance_rescale,
            eta: params.eta,
            inpaint: inpaint.as_ref(),
            rng: &mut rng,
            callback: params.callback.as_mut(),
            progress: params.progress,
        })?;

        let images = match params.output_type {
            OutputType::Latents => None,
            OutputType::Images => Some(self.decode(latents.clone())?),
        };
        Ok(Output {
            images,
            latents,
            seed,
            timesteps,
        })
    }

    /// Refuses a request larger than the memory there is ([`crate::memory`]).
    fn check_memory(
        &self,
        prompts: usize,
        per_prompt: usize,
        do_cfg: bool,
        height: usize,
        width: usize,
    ) -> Result<()> {
        let images = prompts.saturating_mul(per_prompt);
        let unet_batch = images.saturating_mul(if do_cfg { 2 } else { 1 });
        // Activations run in the weights' type.
        let elem = self.unet.conv_in.weight.val().dtype().size();
        let mut needed = memory::stable_diffusion_bytes(
            &self.unet_config,
            &self.vae.config,
            images,
            unet_batch,
            height,
            width,
            elem,
        );
        if !self.controlnets.is_empty() {
            needed += memory::controlnet_bytes(
                &self.unet_config,
                &self.vae.config,
                unet_batch,
                height,
                width,
                elem,
            );
        }
        let request = format!(
            "height {height}, width {width}, {images} image(s){}",
            if do_cfg { " with guidance" } else { "" }
        );
        memory::check(
            &request,
            needed,
            memory::is_host_backend(&B::name(&self.device)),
        )
    }

    /// Refuses parameters `task` does not take and checks required ones.
    fn check_parameters(&self, task: Task, params: &Params<'_, B>) -> Result<()> {
        if !self.adapters.is_empty() {
            return self.check_adapter_parameters(task, params);
        }
        if !self.controlnets.is_empty() {
            return self.check_control_parameters(task, params);
        }
        let mut allowed = vec![
            "prompt",
            "negative_prompt",
            "prompt_embeds",
            "timesteps",
            "sigmas",
            "guidance_scale",
            "guidance_rescale",
            "clip_skip",
            "long_prompt",
        ];
        match task {
            Task::TextToImage => allowed.extend(["height", "width"]),
            Task::ImageToImage => allowed.extend(["strength", "image"]),
            Task::Inpaint => allowed.extend(["height", "width", "strength", "image", "mask_image"]),
        }
        if self.xl {
            allowed.extend([
                "prompt_2",
                "negative_prompt_2",
                "original_size",
                "crops_coords_top_left",
                "target_size",
                "denoising_end",
            ]);
            if task == Task::ImageToImage {
                allowed.extend(["aesthetic_score", "negative_aesthetic_score"]);
            }
        }
        let class = self.class_name(task);
        if let Some(bad) = params
            .set_names()
            .into_iter()
            .find(|n| !allowed.contains(n))
        {
            return Err(PipelineError::parameter(
                bad,
                format!("{class} does not take it"),
            ));
        }
        if task == Task::ImageToImage && params.latents.is_some() {
            return Err(PipelineError::parameter(
                "latents",
                format!("{class} starts from the image's latents"),
            ));
        }
        if task != Task::TextToImage && params.image.is_none() {
            return Err(PipelineError::parameter(
                "image",
                format!("{class} needs an input image"),
            ));
        }
        if task == Task::Inpaint && params.mask_image.is_none() {
            return Err(PipelineError::parameter(
                "mask_image",
                format!("{class} needs a mask"),
            ));
        }
        Ok(())
    }

    /// The ControlNet pipelines' parameters (diffusers' signatures: no
    /// `guidance_rescale` but in SDXL inpainting, custom schedules only for
    /// text-to-image, sizes for every task).
    fn check_control_parameters(&self, task: Task, params: &Params<'_, B>) -> Result<()> {
        let mut allowed = vec![
            "prompt",
            "negative_prompt",
            "prompt_embeds",
            "guidance_scale",
            "clip_skip",
            "long_prompt",
            "height",
            "width",
            "control_image",
            "controlnet_conditioning_scale",
            "control_guidance_start",
            "control_guidance_end",
            "guess_mode",
        ];
        match task {
            Task::TextToImage => allowed.extend(["timesteps", "sigmas"]),
            Task::ImageToImage => allowed.extend(["strength", "image"]),
            Task::Inpaint => allowed.extend(["strength", "image", "mask_image"]),
        }
        if self.xl {
            allowed.extend([
                "prompt_2",
                "negative_prompt_2",
                "original_size",
                "crops_coords_top_left",
                "target_size",
            ]);
            match task {
                Task::TextToImage => allowed.push("denoising_end"),
                Task::ImageToImage => {
                    allowed.extend(["aesthetic_score", "negative_aesthetic_score"])
                }
                Task::Inpaint => allowed.extend([
                    "denoising_end",
                    "guidance_rescale",
                    "aesthetic_score",
                    "negative_aesthetic_score",
                ]),
            }
        }
        let class = self.class_name(task);
        if let Some(bad) = params
            .set_names()
            .into_iter()
            .find(|n| !allowed.contains(n))
        {
            return Err(PipelineError::parameter(
                bad,
                format!("{class} does not take it"),
            ));
        }
        let nets = self.controlnets.len();
        if params.control_image.len() != nets {
            return Err(PipelineError::parameter(
                "control_image",
                format!(
                    "{class} takes one control image (or one per prompt) for each of its {nets} ControlNet(s); {} given",
                    params.control_image.len()
                ),
            ));
        }
        if let Some(k) = params.control_image.iter().position(Vec::is_empty) {
            return Err(PipelineError::parameter(
                "control_image",
                format!("no image for ControlNet {k}"),
            ));
        }
        if task == Task::ImageToImage && params.latents.is_some() {
            return Err(PipelineError::parameter(
                "latents",
                format!("{class} starts from the image's latents"),
            ));
        }
        if task != Task::TextToImage && params.image.is_none() {
            return Err(PipelineError::parameter(
                "image",
                format!("{class} needs an input image"),
            ));
        }
        if task == Task::Inpaint && params.mask_image.is_none() {
            return Err(PipelineError::parameter(
                "mask_image",
                format!("{class} needs a mask"),
            ));
        }
        Ok(())
    }

    /// The adapter pipelines' parameters (text-to-image only, as diffusers).
    fn check_adapter_parameters(&self, task: Task, params: &Params<'_, B>) -> Result<()> {
        let class = self.class_name(task);
        if task != Task::TextToImage {
            return Err(PipelineError::WrongModel {
                model: self.name.clone(),
                message: format!(
                    "T2I-Adapters guide text-to-image only ({class}); diffusers has no {task:?} adapter pipeline"
                ),
            });
        }
        if !self.controlnets.is_empty() {
            return Err(PipelineError::WrongModel {
                model: self.name.clone(),
                message: "ControlNets and T2I-Adapters together: diffusers has no such pipeline; \
                          remove one kind"
                    .into(),
            });
        }
        let mut allowed = vec![
            "prompt",
            "negative_prompt",
            "prompt_embeds",
            "guidance_scale",
            "clip_skip",
            "long_prompt",
            "height",
            "width",
            "timesteps",
            "sigmas",
            "adapter_image",
            "adapter_conditioning_scale",
        ];
        if self.xl {
            allowed.extend([
                "prompt_2",
                "negative_prompt_2",
                "original_size",
                "crops_coords_top_left",
                "target_size",
                "denoising_end",
                "guidance_rescale",
                "adapter_conditioning_factor",
            ]);
        }
        if let Some(bad) = params
            .set_names()
            .into_iter()
            .find(|n| !allowed.contains(n))
        {
            return Err(PipelineError::parameter(
                bad,
                format!("{class} does not take it"),
            ));
        }
        let n = self.adapters.len();
        if params.adapter_image.len() != n {
            return Err(PipelineError::parameter(
                "adapter_image",
                format!(
                    "{class} takes one image (or one per prompt) for each of its {n} adapter(s); {} given",
                    params.adapter_image.len()
                ),
            ));
        }
        if let Some(k) = params.adapter_image.iter().position(Vec::is_empty) {
            return Err(PipelineError::parameter(
                "adapter_image",
                format!("no image for adapter {k}"),
            ));
        }
        if let Some(f) = params.adapter_conditioning_factor
            && !(0.0..=1.0).contains(&f)
        {
            return Err(PipelineError::parameter(
                "adapter_conditioning_factor",
                format!("{f} is outside [0, 1]"),
            ));
        }
        Ok(())
    }

    /// diffusers' class name for `task` on these components.
    pub fn class_name(&self, task: Task) -> &'static str {
        if !self.adapters.is_empty() && task == Task::TextToImage {
            return if self.xl {
                "StableDiffusionXLAdapterPipeline"
            } else {
                "StableDiffusionAdapterPipeline"
            };
        }
        if !self.controlnets.is_empty() {
            return match (self.xl, task) {
                (false, Task::TextToImage) => "StableDiffusionControlNetPipeline",
                (false, Task::ImageToImage) => "StableDiffusionControlNetImg2ImgPipeline",
                (false, Task::Inpaint) => "StableDiffusionControlNetInpaintPipeline",
                (true, Task::TextToImage) => "StableDiffusionXLControlNetPipeline",
                (true, Task::ImageToImage) => "StableDiffusionXLControlNetImg2ImgPipeline",
                (true, Task::Inpaint) => "StableDiffusionXLControlNetInpaintPipeline",
            };
        }
        match (self.xl, task) {
            (false, Task::TextToImage) => "StableDiffusionPipeline",
            (false, Task::ImageToImage) => "StableDiffusionImg2ImgPipeline",
            (false, Task::Inpaint) => "StableDiffusionInpaintPipeline",
            (true, Task::TextToImage) => "StableDiffusionXLPipeline",
            (true, Task::ImageToImage) => "StableDiffusionXLImg2ImgPipeline",
            (true, Task::Inpaint) => "StableDiffusionXLInpaintPipeline",
        }
    }

    fn output_size(
        &self,
        task: Task,
        params: &Params<'_, B>,
        vsf: usize,
    ) -> Result<(usize, usize)> {
        // The size comes from the input image, or in text-to-image with
        // ControlNets from the first control image (diffusers' `prepare_image`).
        let sized_by = match task {
            Task::TextToImage if !self.adapters.is_empty() => params
                .adapter_image
                .first()
                .and_then(|images| images.first())
                .map(|image| (image, "adapter_image")),
            Task::TextToImage => params
                .control_image
                .first()
                .and_then(|images| images.first())
                .filter(|_| !self.controlnets.is_empty())
                .map(|image| (image, "control_image")),
            _ => params.image.as_ref().map(|image| (image, "image")),
        };
        // The adapter pipelines round an image's size to the adapters'
        // downscale factor (`_default_height_width`), the others to the VAE's.
        let multiple = match (task, self.adapters.first()) {
            (Task::TextToImage, Some(a)) => a.config.downscale_factor,
            _ => vsf,
        };
        let (h, w) = match sized_by {
            None => {
                let s = self
                    .unet_config
                    .sample_size
                    .as_ref()
                    .and_then(|s| s.get(0))
                    .unwrap_or(64)
                    * vsf;
                (params.height.unwrap_or(s), params.width.unwrap_or(s))
            }
            Some((image, image_name)) => {
                let (dh, dw) = default_size(image, multiple);
                let (h, w) = (params.height.unwrap_or(dh), params.width.unwrap_or(dw));
                let from_image = (params.height.is_none() && (h == 0 || !h.is_multiple_of(8)))
                    || (params.width.is_none() && (w == 0 || !w.is_multiple_of(8)));
                if from_image {
                    // The size comes from the image: blame the image.
                    return Err(PipelineError::parameter(
                        image_name,
                        format!(
                            "{}x{} (HxW) gives an output of {h}x{w}, not positive multiples of 8; \
                             use an image of at least 8x8 pixels, or set height and width",
                            image.height(),
                            image.width()
                        ),
                    ));
                }
                (h, w)
            }
        };
        for (name, v) in [("height", h), ("width", w)] {
            if v == 0 || !v.is_multiple_of(8) {
                return Err(PipelineError::parameter(
                    name,
                    format!("{v} is not a positive multiple of 8"),
                ));
            }
        }
        Ok((h, w))
    }

    /// Encodes prompts (or takes the caller's embeddings), expanded per image.
    fn prompt_embeds(&self, params: &mut Params<'_, B>, do_cfg: bool) -> Result<PromptEmbeds<B>> {
        if let Some(e) = params.prompt_embeds.take() {
            if do_cfg && e.negative.is_none() {
                return Err(PipelineError::parameter(
                    "prompt_embeds",
                    "classifier-free guidance needs the negative embeddings too",
                ));
            }
            if self.xl && e.pooled.is_none() {
                return Err(PipelineError::parameter(
                    "prompt_embeds",
                    "SDXL needs the pooled embeddings too",
                ));
            }
            return Ok(e);
        }
        if params.prompt.is_empty() {
            return Err(PipelineError::parameter(
                "prompt",
                "no prompt (give at least one, possibly empty)",
            ));
        }
        let inputs = PromptInputs {
            prompt: &params.prompt,
            negative_prompt: params.negative_prompt.as_deref(),
            prompt_2: params.prompt_2.as_deref(),
            negative_prompt_2: params.negative_prompt_2.as_deref(),
            clip_skip: params.clip_skip,
            long_prompt: params.long_prompt,
        };
        if self.xl {
            let e2 =
                self.text_encoder_2
                    .as_ref()
                    .ok_or_else(|| PipelineError::MissingComponent {
                        model: self.name.clone(),
                        component: "text_encoder_2".into(),
                        reason: "SDXL encodes prompts with it".into(),
                    })?;
            let encoders: Vec<&TextEncoder<B>> = match &self.text_encoder {
                Some(e1) => vec![e1, e2],
                None => vec![e2],
            };
            encode_sdxl(
                &encoders,
                &inputs,
                do_cfg,
                self.force_zeros_for_empty_prompt,
            )
        } else {
            let e = self
                .text_encoder
                .as_ref()
                .ok_or_else(|| PipelineError::MissingComponent {
                    model: self.name.clone(),
                    component: "text_encoder".into(),
                    reason: "Stable Diffusion encodes prompts with it".into(),
                })?;
            encode_sd(e, &inputs, do_cfg)
        }
    }

    fn set_timesteps(&mut self, params: &Params<'_, B>) -> Result<Vec<f64>> {
        let spec = TimestepSpec {
            num_inference_steps: if params.timesteps.is_some() || params.sigmas.is_some() {
                None
            } else {
                Some(params.num_inference_steps.unwrap_or(50))
            },
            timesteps: params.timesteps.clone(),
            sigmas: params.sigmas.clone(),
            ..TimestepSpec::default()
        };
        if spec.num_inference_steps == Some(0) {
            return Err(PipelineError::parameter(
                "num_inference_steps",
                "must be at least 1",
            ));
        }
        self.scheduler.set_timesteps_with(&spec)?;
        Ok(self.scheduler.timesteps().to_vec())
    }

    /// diffusers' `get_timesteps`: skip the first `1 − strength` of the schedule.
    fn strength_timesteps(&mut self, num_steps: usize, strength: f64) -> Result<Vec<f64>> {
        let init = ((num_steps as f64 * strength) as usize).min(num_steps);
        let t_start = num_steps - init;
        let order = self.scheduler.order().max(1);
        let all = self.scheduler.timesteps();
        let ts: Vec<f64> = all.get(t_start * order..).unwrap_or(&[]).to_vec();
        self.scheduler.set_begin_index(t_start * order);
        if ts.is_empty() || num_steps - t_start < 1 {
            return Err(PipelineError::parameter(
                "strength",
                format!(
                    "{strength} with {num_steps} steps leaves no step to run (num_inference_steps × strength < 1)"
                ),
            ));
        }
        Ok(ts)
    }

    /// VAE-encodes `image` `[1|N, 3, H, W]`, samples the posterior with the
    /// generator, scales, and tiles to `total` items.
    fn encode_image(
        &self,
        image: Tensor<B, 4>,
        total: usize,
        rng: &mut Rng,
    ) -> Result<Tensor<B, 4>> {
        let dist = self.vae.encode(image)?;
        let noise = rng.randn_tensor::<B>(dist.mean.dims(), &self.device)?;
        let z = dist.sample(noise)?.cast(DType::F32);
        let z = if self.xl {
            self.vae.scale_latents(z)
        } else {
            z.mul_scalar(self.vae.config.scaling_factor)
        };
        tile_batch(z, total, "image")
    }

    fn add_noise(&self, x: Tensor<B, 4>, noise: Tensor<B, 4>, t: f64) -> Result<Tensor<B, 4>> {
        Ok(self
            .scheduler
            .add_noise(&Latents(x), &Latents(noise), &[t])?
            .0)
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare_inpaint(
        &mut self,
        params: &mut Params<'_, B>,
        height: usize,
        width: usize,
        total: usize,
        strength: f64,
        timesteps: &[f64],
        do_cfg: bool,
        rng: &mut Rng,
    ) -> Result<InpaintState<B>> {
        let device = self.device.clone();
        let vsf = self.vae_scale_factor();
        let image = params.image.as_ref().expect("checked");
        let mask_image = params.mask_image.as_ref().expect("checked");
        // diffusers resizes both to the output size; a mask of another size
        // than its image would be stretched onto the wrong pixels, so refuse it.
        let (iw, ih) = (image.width(), image.height());
        let (mw, mh) = (mask_image.width(), mask_image.height());
        if (iw, ih) != (mw, mh) {
            return Err(PipelineError::parameter(
                "mask_image",
                format!("{mw}×{mh} pixels, the image is {iw}×{ih}"),
            ));
        }
        let image = image_tensor::<B>(image, height, width, &device);
        let mask = mask_tensor::<B>(mask_image, height, width, &device);
        // Kept where the mask is black (< 0.5).
        let masked_image = image.clone() * mask.clone().lower_elem(0.5).float();
        let unet_channels = self.unet_config.in_channels;
        let latent_channels = self.vae.config.latent_channels;
        let legacy = unet_channels == latent_channels;
        if !legacy && unet_channels != 2 * latent_channels + 1 {
            return Err(PipelineError::WrongModel {
                model: self.name.clone(),
                message: format!(
                    "an inpainting UNet takes {} channels (latents, mask, masked image) or {latent_channels}; this one takes {unet_channels}",
                    2 * latent_channels + 1
                ),
            });
        }
        let shape = [total, latent_channels, height / vsf, width / vsf];
        let strength_max = strength == 1.0;
        let image_latents = if legacy || (params.latents.is_none() && !strength_max) {
            Some(self.encode_image(image, total, rng)?)
        } else {
            None
        };
        let (latents, noise) = match params.latents.take() {
            None => {
                let noise = rng.randn_tensor::<B>(shape, &device)?;
                let latents = if strength_max {
                    noise.clone().mul_scalar(self.scheduler.init_noise_sigma())
                } else {
                    let il = image_latents
                        .clone()
                        .expect("encoded when not at full strength");
                    self.add_noise(il, noise.clone(), timesteps[0])?
                };
                (latents, noise)
            }
            Some(l) => {
                let noise = check_latents(l, shape)?;
                (
                    noise.clone().mul_scalar(self.scheduler.init_noise_sigma()),
                    noise,
                )
            }
        };
        // diffusers encodes the masked image whatever the UNet (a random draw).
        let mask_latent = downsample_nearest(mask, height / vsf, width / vsf);
        let masked_latents = self.encode_image(masked_image, total, rng)?;
        let mask_latent = tile_batch(mask_latent, total, "mask_image")?;
        let (mask_in, masked_in) = if do_cfg {
            (
                Tensor::cat(vec![mask_latent.clone(), mask_latent.clone()], 0),
                Tensor::cat(vec![masked_latents.clone(), masked_latents], 0),
            )
        } else {
            (mask_latent.clone(), masked_latents)
        };
        Ok(InpaintState {
            latents,
            noise,
            image_latents,
            mask: mask_latent,
            unet_extra: (!legacy).then(|| Tensor::cat(vec![mask_in, masked_in], 1)),
        })
    }

    /// The adapters' summed features and the number of steps they act in.
    #[allow(clippy::too_many_arguments)]
    fn prepare_adapters(
        &self,
        params: &Params<'_, B>,
        height: usize,
        width: usize,
        total: usize,
        per_prompt: usize,
        do_cfg: bool,
        num_steps: usize,
    ) -> Result<Option<AdapterState<B>>> {
        if self.adapters.is_empty() {
            return Ok(None);
        }
        let n = self.adapters.len();
        let scales = match params.adapter_conditioning_scale.as_deref() {
            None => vec![1.0; n],
            Some([one]) => vec![*one; n],
            Some(v) if v.len() == n => v.to_vec(),
            Some(v) => {
                return Err(PipelineError::parameter(
                    "adapter_conditioning_scale",
                    format!("{} values for {n} adapters", v.len()),
                ));
            }
        };
        if let Some(v) = scales.iter().find(|v| !v.is_finite()) {
            return Err(PipelineError::parameter(
                "adapter_conditioning_scale",
                format!("{v} is not a finite number"),
            ));
        }
        let features = adapter_state(
            &self.adapters,
            &params.adapter_image,
            &scales,
            height,
            width,
            total,
            per_prompt,
            do_cfg,
            &self.device,
        )?;
        let factor = params.adapter_conditioning_factor.unwrap_or(1.0);
        Ok(Some(AdapterState {
            features,
            steps: (num_steps as f64 * factor) as usize,
        }))
    }

    /// The control images as the nets take them, and each net's settings.
    #[allow(clippy::too_many_arguments)]
    fn prepare_control(
        &self,
        params: &Params<'_, B>,
        task: Task,
        height: usize,
        width: usize,
        total: usize,
        per_prompt: usize,
        do_cfg: bool,
    ) -> Result<Option<ControlState<B>>> {
        let Some(first) = self.controlnets.first() else {
            return Ok(None);
        };
        let guess_mode = params.guess_mode || first.config.global_pool_conditions;
        let default_scale = match (task, self.xl) {
            (Task::ImageToImage, _) => 0.8,
            (Task::Inpaint, false) => 0.5,
            _ => 1.0,
        };
        let settings = ControlSettings::new(
            self.controlnets.len(),
            params.controlnet_conditioning_scale.as_deref(),
            default_scale,
            params.control_guidance_start.as_deref(),
            params.control_guidance_end.as_deref(),
        )?;
        let vsf = self.vae_scale_factor();
        let mut images = Vec::with_capacity(self.controlnets.len());
        for (k, list) in params.control_image.iter().enumerate() {
            // Without a size in the call diffusers takes each control image at
            // its own size: one that differs from the output would not fit.
            for image in list {
                let (ch, cw) = control_size(image, vsf);
                if (params.height.is_none() && ch != height)
                    || (params.width.is_none() && cw != width)
                {
                    return Err(PipelineError::parameter(
                        "control_image",
                        format!(
                            "ControlNet {k}: a {}x{} (WxH) image, the output is {width}x{height}; \
                             use images of one size, or set height and width to resize them",
                            image.width(),
                            image.height()
                        ),
                    ));
                }
            }
            images.push(control_tensor::<B>(
                list,
                height,
                width,
                total,
                per_prompt,
                do_cfg && !guess_mode,
                &self.device,
            )?);
        }
        Ok(Some(ControlState {
            images,
            settings,
            guess_mode,
        }))
    }

    /// The text states and added conditions, guidance-batched as `[negative, positive]`.
    fn conditioning(
        &self,
        embeds: &PromptEmbeds<B>,
        n: usize,
        do_cfg: bool,
        params: &Params<'_, B>,
        height: usize,
        width: usize,
    ) -> Result<(Tensor<B, 3>, UNetConditions<B>)> {
        let pos = repeat_interleave(embeds.prompt.clone(), n);
        let context = match (&embeds.negative, do_cfg) {
            (Some(neg), true) => Tensor::cat(vec![repeat_interleave(neg.clone(), n), pos], 0),
            _ => pos,
        };
        let mut conditions = UNetConditions::default();
        if self.xl {
            let pooled =
                repeat_interleave(embeds.pooled.clone().expect("SDXL embeds are pooled"), n);
            let total = pooled.dims()[0];
            let original = params.original_size.unwrap_or((height, width));
            let target = params.target_size.unwrap_or((height, width));
            let crops = params.crops_coords_top_left;
            let (ids, neg_ids) = if self.requires_aesthetics_score {
                (
                    vec![
                        original.0 as f32,
                        original.1 as f32,
                        crops.0 as f32,
                        crops.1 as f32,
                        params.aesthetic_score as f32,
                    ],
                    vec![
                        original.0 as f32,
                        original.1 as f32,
                        crops.0 as f32,
                        crops.1 as f32,
                        params.negative_aesthetic_score as f32,
                    ],
                )
            } else {
                let v = vec![
                    original.0 as f32,
                    original.1 as f32,
                    crops.0 as f32,
                    crops.1 as f32,
                    target.0 as f32,
                    target.1 as f32,
                ];
                (v.clone(), v)
            };
            self.check_time_ids(ids.len(), pooled.dims()[1])?;
            let row = |v: &Vec<f32>| {
                Tensor::<B, 2>::from_data(TensorData::new(v.clone(), [1, v.len()]), &self.device)
                    .repeat_dim(0, total)
            };
            let (text_embeds, time_ids) = match (do_cfg, &embeds.negative_pooled) {
                (true, Some(np)) => (
                    Tensor::cat(vec![repeat_interleave(np.clone(), n), pooled], 0),
                    Tensor::cat(vec![row(&neg_ids), row(&ids)], 0),
                ),
                _ => (pooled, row(&ids)),
            };
            conditions.text_embeds = Some(text_embeds);
            conditions.time_ids = Some(time_ids);
        }
        Ok((context, conditions))
    }

    /// diffusers' check that the UNet's added embedding takes what the
    /// pipeline passes (a refiner/base mix-up shows here).
    fn check_time_ids(&self, n_ids: usize, pooled_dim: usize) -> Result<()> {
        let (Some(time_dim), Some(expected)) = (
            self.unet_config.addition_time_embed_dim,
            self.unet_config.projection_class_embeddings_input_dim,
        ) else {
            return Ok(());
        };
        let passed = time_dim * n_ids + pooled_dim;
        if passed != expected {
            return Err(PipelineError::WrongModel {
                model: self.name.clone(),
                message: format!(
                    "the UNet's added embedding takes {expected} features, the pipeline passes {passed} \
                     ({n_ids} time ids × {time_dim} + pooled {pooled_dim}); check requires_aesthetics_score"
                ),
            });
        }
        Ok(())
    }

    fn denoise(&mut self, mut a: DenoiseArgs<'_, '_, B>) -> Result<Tensor<B, 4>> {
        let device = self.device.clone();
        let unet_dtype = self.unet.conv_in.weight.val().dtype();
        let options = StepOptions {
            eta: a.eta,
            // Only `prev_sample` is read: the scheduler then returns no x0.
            pred_original_sample: Some(false),
            ..StepOptions::default()
        };
        let mut latents = a.latents;
        let mut progress = Progress::new(a.timesteps.len(), "denoising", a.progress);
        for (i, &t) in a.timesteps.iter().enumerate() {
            let input = match a.guidance {
                Some(_) => Tensor::cat(vec![latents.clone(), latents.clone()], 0),
                None => latents.clone(),
            };
            let mut input = self.scheduler.scale_model_input(&Latents(input), t)?.0;
            let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![t as f32], [1]), &device);
            let mut conditions = a.conditions.clone();
            if let Some(control) = &a.control {
                let scales = control.settings.step_scales(i, a.timesteps.len());
                // Guess mode with guidance: the nets see the conditional half only.
                let halves = control.guess_mode && a.guidance.is_some();
                let (sample, context, net_conditions) = if halves {
                    let sample = self
                        .scheduler
                        .scale_model_input(&Latents(latents.clone()), t)?
                        .0;
                    (
                        sample,
                        second_half(&a.context),
                        conditional_half(&a.conditions),
                    )
                } else {
                    (input.clone(), a.context.clone(), a.conditions.clone())
                };
                let out = residuals(
                    &self.controlnets,
                    &sample,
                    tt.clone(),
                    StepInputs {
                        images: &control.images,
                        scales: &scales,
                        context,
                        conditions: &net_conditions,
                        guess_mode: control.guess_mode,
                    },
                )?;
                if let Some(out) = out {
                    let pad = |x: Tensor<B, 4>| {
                        if halves {
                            Tensor::cat(vec![x.zeros_like(), x], 0)
                        } else {
                            x
                        }
                    };
                    conditions.down_block_additional_residuals =
                        Some(out.down.into_iter().map(pad).collect());
                    conditions.mid_block_additional_residual = Some(pad(out.mid));
                }
            }
            if let Some(adapter) = a.adapter.as_ref().filter(|s| i < s.steps) {
                conditions.down_intrablock_additional_residuals = Some(adapter.features.clone());
            }
            if let Some(extra) = a.inpaint.and_then(|s| s.unet_extra.clone()) {
                input = Tensor::cat(vec![input, extra], 1);
            }
            conditions.timestep_cond = a.timestep_cond.clone();
            let pred = self
                .unet
                .forward(input.cast(unet_dtype), tt, a.context.clone(), conditions)?
                .cast(DType::F32);
            let pred = match a.guidance {
                Some(g) => {
                    let mut halves = pred.chunk(2, 0);
                    let text = halves.pop().expect("two halves");
                    let uncond = halves.pop().expect("two halves");
                    let guided = uncond.clone() + (text.clone() - uncond).mul_scalar(g);
                    if a.guidance_rescale > 0.0 {
                        rescale_noise_cfg(guided, text, a.guidance_rescale)
                    } else {
                        guided
                    }
                }
                None => pred,
            };
            let mut noise = StepNoise::<B> {
                rng: a.rng,
                device: device.clone(),
            };
            latents = self
                .scheduler
                .step(&Latents(pred), t, &Latents(latents), &options, &mut noise)?
                .prev_sample
                .0;
            if let Some(state) = a.inpaint.filter(|s| s.unet_extra.is_none()) {
                // Legacy inpainting: paste the noised original outside the mask.
                let mut known = state.image_latents.clone().expect("encoded in legacy mode");
                if let Some(&next) = a.timesteps.get(i + 1) {
                    known = self.add_noise(known, state.noise.clone(), next)?;
                }
                let m = state.mask.clone();
                latents = known * (m.clone().neg() + 1.0) + latents * m;
            }
            progress.inc();
            if let Some(cb) = a.callback.as_mut() {
                let info = StepInfo {
                    step: i,
                    num_steps: a.timesteps.len(),
                    timestep: t,
                    latents: &latents,
                };
                if cb(&info) == Control::Cancel {
                    return Err(PipelineError::Cancelled { step: i });
                }
            }
        }
        progress.finish();
        Ok(latents)
    }

    /// Latents to images: unscale (SDXL: with `latents_mean`/`std`), decode.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Result<Images> {
        let z = if self.xl {
            self.vae.unscale_latents(latents)
        } else {
            latents.div_scalar(self.vae.config.scaling_factor)
        };
        Ok(Images::from_decoded(self.vae.decode(z)?))
    }
}

/// The adapters' features of one call and the steps they act in.
struct AdapterState<B: Backend> {
    features: Vec<Tensor<B, 4>>,
    steps: usize,
}

/// The ControlNets' inputs of one call.
struct ControlState<B: Backend> {
    /// The prepared control images, one per net.
    images: Vec<Tensor<B, 4>>,
    settings: ControlSettings,
    guess_mode: bool,
}

struct InpaintState<B: Backend> {
    latents: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    image_latents: Option<Tensor<B, 4>>,
    /// `[N, 1, h, w]`, 1 = repaint.
    mask: Tensor<B, 4>,
    /// 9-channel UNets: mask and masked-image latents, guidance-batched.
    unet_extra: Option<Tensor<B, 4>>,
}

struct DenoiseArgs<'r, 'c, B: Backend> {
    latents: Tensor<B, 4>,
    timesteps: &'r [f64],
    control: Option<ControlState<B>>,
    adapter: Option<AdapterState<B>>,
    context: Tensor<B, 3>,
    conditions: UNetConditions<B>,
    timestep_cond: Option<Tensor<B, 2>>,
    guidance: Option<f64>,
    guidance_rescale: f64,
    eta: Option<f64>,
    inpaint: Option<&'r InpaintState<B>>,
    rng: &'r mut Rng,
    callback: Option<&'r mut crate::params::Callback<'c, B>>,
    progress: bool,
}

/// The second (conditional) half of a guidance-batched tensor.
fn second_half<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Tensor<B, D> {
    let n = x.dims()[0];
    x.clone().narrow(0, n / 2, n - n / 2)
}

/// The conditional half of SDXL's added conditions (diffusers' guess mode).
fn conditional_half<B: Backend>(c: &UNetConditions<B>) -> UNetConditions<B> {
    UNetConditions {
        text_embeds: c.text_embeds.as_ref().map(second_half),
        time_ids: c.time_ids.as_ref().map(second_half),
        ..UNetConditions::default()
    }
}

/// The ControlNets a pipeline folder names: `controlnet` (a
/// `ControlNetModel`, or a `MultiControlNetModel` whose further nets
/// diffusers saves next to it as `controlnet_1`, `controlnet_2`, …).
fn load_controlnets<B: Backend>(
    model: &ResolvedModel,
    options: &crate::components::LoadOptions<B>,
) -> Result<Vec<ControlNet<B>>> {
    let Some(entry) = model.model_index.component("controlnet") else {
        return Ok(Vec::new());
    };
    let c = component(
        model,
        "controlnet",
        "the pipeline's ControlNet",
        &["ControlNetModel", "MultiControlNetModel"],
    )?;
    let name = |suffix: &str| format!("{}/controlnet{suffix}", model.source.display_name());
    let mut nets = vec![ControlNet::load_component(c, &name(""), options)?];
    if entry.class == "MultiControlNetModel" {
        for k in 1.. {
            let dir = model.root.join(format!("controlnet_{k}"));
            if !dir.join("config.json").is_file() {
                break;
            }
            let dir = dir.to_string_lossy().into_owned();
            let mut net = ControlNet::from_pretrained(&dir, options)?;
            net.name = name(&format!("_{k}"));
            nets.push(net);
        }
    }
    Ok(nets)
}

/// The T2I-Adapters a pipeline folder names: `adapter` (a `T2IAdapter`, or
/// a `MultiAdapter` whose further adapters sit next to it as `adapter_1`, …).
fn load_adapters<B: Backend>(
    model: &ResolvedModel,
    options: &crate::components::LoadOptions<B>,
) -> Result<Vec<Adapter<B>>> {
    let Some(entry) = model.model_index.component("adapter") else {
        return Ok(Vec::new());
    };
    let c = component(
        model,
        "adapter",
        "the pipeline's T2I-Adapter",
        &["T2IAdapter", "MultiAdapter"],
    )?;
    let name = |suffix: &str| format!("{}/adapter{suffix}", model.source.display_name());
    let mut adapters = vec![Adapter::load_component(c, &name(""), options)?];
    if entry.class == "MultiAdapter" {
        for k in 1.. {
            let dir = model.root.join(format!("adapter_{k}"));
            if !dir.join("config.json").is_file() {
                break;
            }
            let mut a = Adapter::from_pretrained(&dir.to_string_lossy(), options)?;
            a.name = name(&format!("_{k}"));
            adapters.push(a);
        }
    }
    Ok(adapters)
}

/// `torch.cat([x] * (total / n))`: the whole batch repeated (diffusers'
/// expansion of image latents, unlike the per-prompt interleave of embeddings).
fn tile_batch<B: Backend>(
    x: Tensor<B, 4>,
    total: usize,
    name: &'static str,
) -> Result<Tensor<B, 4>> {
    let n = x.dims()[0];
    if n == total {
        return Ok(x);
    }
    if n == 0 || !total.is_multiple_of(n) {
        return Err(PipelineError::parameter(
            name,
            format!("{n} images do not divide a batch of {total}"),
        ));
    }
    Ok(x.repeat_dim(0, total / n))
}

/// `F.interpolate(mask, size)` in its default nearest mode: source index `⌊i · in / out⌋`.
fn downsample_nearest<B: Backend>(x: Tensor<B, 4>, h: usize, w: usize) -> Tensor<B, 4> {
    let [n, c, ih, iw] = x.dims();
    let device = x.device();
    let rows: Vec<i64> = (0..h).map(|i| ((i * ih) / h) as i64).collect();
    let cols: Vec<i64> = (0..w).map(|j| ((j * iw) / w) as i64).collect();
    let rows = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(rows, [h]), &device);
    let cols = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(cols, [w]), &device);
    let _ = (n, c);
    x.select(2, rows).select(3, cols)
}

/// diffusers' `rescale_noise_cfg`: match the guided prediction's per-item
/// standard deviation to the text prediction's, mixed by `phi`.
fn rescale_noise_cfg<B: Backend>(cfg: Tensor<B, 4>, text: Tensor<B, 4>, phi: f64) -> Tensor<B, 4> {
    let std = |x: &Tensor<B, 4>| {
        let [n, c, h, w] = x.dims();
        let flat = x.clone().reshape([n, c * h * w]);
        let mean = flat.clone().mean_dim(1);
        let var = (flat - mean).powi_scalar(2).sum_dim(1) / ((c * h * w) as f64 - 1.0);
        var.sqrt().reshape([n, 1, 1, 1])
    };
    let rescaled = cfg.clone() * (std(&text) / std(&cfg));
    rescaled.mul_scalar(phi) + cfg.mul_scalar(1.0 - phi)
}

/// LCM's guidance embedding (`get_guidance_scale_embedding`): sinusoidal
/// features of `1000 · w`, sines then cosines.
fn guidance_scale_embedding<B: Backend>(
    w: f64,
    dim: usize,
    batch: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let w = w * 1000.0;
    let step = (10000f64).ln() / (half as f64 - 1.0);
    let mut row = Vec::with_capacity(dim);
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(i as f32) * step as f32).exp())
        .collect();
    row.extend(freqs.iter().map(|f| (w as f32 * f).sin()));
    row.extend(freqs.iter().map(|f| (w as f32 * f).cos()));
    row.resize(dim, 0.0);
    Tensor::<B, 2>::from_data(TensorData::new(row, [1, dim]), device).repeat_dim(0, batch)
}
