//! diffusers' `DDPMPipeline` and `DDIMPipeline`: unconditional image models
//! (a `UNet2DModel` denoising pixels directly).
//!
//! Both draw the starting image from the generator, run the UNet on it at
//! each timestep and step the scheduler, with no `init_noise_sigma` scaling
//! and no `scale_model_input`, exactly as the diffusers pipelines (so they
//! are meant for DDPM-family schedulers). `DDIMPipeline` converts whatever
//! scheduler the repo names into a `DDIMScheduler`, as diffusers' constructor does.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use diffusion_hub::resolve::ResolvedModel;
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_schedulers::{Scheduler, StepOptions, TimestepSpec};
use serde_json::Value;

use crate::components::{
    LoadOptions, SchedulerChoice, build_scheduler, component, load_unet_2d, read_scheduler_config,
};
use crate::error::{PipelineError, Result};
use crate::image::Images;
use crate::latents::{Latents, check_latents};
use crate::noise::{Generator, Rng, StepNoise};
use crate::params::{Control, OutputType, Params, StepInfo};
use crate::progress::Progress;
use crate::stable_diffusion::Output;

/// An unconditional pipeline's components.
pub struct Unconditional<B: Backend> {
    /// The denoiser.
    pub unet: UNet2DModel<B>,
    /// Its config (sample size).
    pub unet_config: UNet2DConfig,
    /// The scheduler.
    pub scheduler: Box<dyn Scheduler<Latents<B>>>,
    /// The repo's scheduler config, from which swaps are built.
    pub scheduler_config: Value,
    /// `DDIMPipeline` (eta, 50 steps by default) rather than `DDPMPipeline` (1000 steps).
    pub ddim: bool,
    /// Where the model runs.
    pub device: B::Device,
}

impl<B: Backend> std::fmt::Debug for Unconditional<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unconditional")
            .field("ddim", &self.ddim)
            .field("scheduler", &self.scheduler.class_name())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Unconditional<B> {
    /// Loads `unet` and `scheduler` of a DDPM/DDIM pipeline folder.
    pub fn load(model: &ResolvedModel, options: &LoadOptions<B>, ddim: bool) -> Result<Self> {
        let unet_c = component(model, "unet", "the denoiser", &["UNet2DModel"])?;
        let (unet, unet_config) = load_unet_2d(unet_c, options)?;
        let sched_c = component(
            model,
            "scheduler",
            "the denoising schedule",
            diffusion_schedulers::SCHEDULER_CLASSES,
        )?;
        let path = sched_c
            .config
            .clone()
            .unwrap_or_else(|| sched_c.dir.join("scheduler_config.json"));
        let scheduler_config = read_scheduler_config(&path)?;
        let choice = match (&options.scheduler, ddim) {
            (Some(c), _) => Some(c.clone()),
            (None, true) => Some(SchedulerChoice {
                name: Some("DDIMScheduler".into()),
                ..SchedulerChoice::default()
            }),
            (None, false) => None,
        };
        let scheduler = build_scheduler(&scheduler_config, choice.as_ref())?;
        Ok(Unconditional {
            unet,
            unet_config,
            scheduler,
            scheduler_config,
            ddim,
            device: options.device.clone(),
        })
    }

    /// Makes `num_images_per_prompt` images (diffusers' `batch_size`).
    pub fn run(&mut self, mut params: Params<'_, B>) -> Result<Output<B>> {
        let class = if self.ddim {
            "DDIMPipeline"
        } else {
            "DDPMPipeline"
        };
        if let Some(bad) = params.set_names().into_iter().next() {
            return Err(PipelineError::parameter(
                bad,
                format!("{class} does not take it"),
            ));
        }
        let batch = params.num_images_per_prompt;
        if batch == 0 {
            return Err(PipelineError::parameter(
                "num_images_per_prompt",
                "must be at least 1",
            ));
        }
        params.check_numbers()?;
        let cfg = &self.unet_config;
        let (h, w) = match &cfg.sample_size {
            Some(s) => (s.get(0).unwrap_or(64), s.get(1).or(s.get(0)).unwrap_or(64)),
            None => (64, 64),
        };
        crate::memory::check(
            &format!("{batch} image(s) of {h}x{w}"),
            crate::memory::unconditional_bytes(cfg, batch, h, w),
            crate::memory::is_host_backend(&B::name(&self.device)),
        )?;
        let shape = [batch, cfg.in_channels, h, w];
        let mut seed = None;
        let generator = params.generator.clone().unwrap_or_else(|| {
            let s = Generator::random_seed();
            seed = Some(s);
            Generator::Seed(s)
        });
        let mut rng = Rng::new(&generator, batch)?;
        let mut image = match params.latents.take() {
            Some(l) => check_latents(l, shape)?,
            None => rng.randn_tensor::<B>(shape, &self.device)?,
        };
        let steps = params
            .num_inference_steps
            .unwrap_or(if self.ddim { 50 } else { 1000 });
        if steps == 0 {
            return Err(PipelineError::parameter(
                "num_inference_steps",
                "must be at least 1",
            ));
        }
        self.scheduler
            .set_timesteps_with(&TimestepSpec::steps(steps))?;
        let timesteps = self.scheduler.timesteps().to_vec();
        let options = StepOptions {
            eta: if self.ddim {
                Some(params.eta.unwrap_or(0.0))
            } else {
                None
            },
            // Only `prev_sample` is read: the scheduler then returns no x0.
            pred_original_sample: Some(false),
            ..StepOptions::default()
        };
        let dtype = self.unet.conv_in.weight.val().dtype();
        let mut progress = Progress::new(timesteps.len(), "denoising", params.progress);
        for (i, &t) in timesteps.iter().enumerate() {
            let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![t as f32], [1]), &self.device);
            let pred = self
                .unet
                .forward(image.clone().cast(dtype), tt, None)?
                .cast(DType::F32);
            let mut noise = StepNoise::<B> {
                rng: &mut rng,
                device: self.device.clone(),
            };
            image = self
                .scheduler
                .step(&Latents(pred), t, &Latents(image), &options, &mut noise)?
                .prev_sample
                .0;
            progress.inc();
            if let Some(cb) = params.callback.as_mut() {
                let info = StepInfo {
                    step: i,
                    num_steps: timesteps.len(),
                    timestep: t,
                    latents: &image,
                };
                if cb(&info) == Control::Cancel {
                    return Err(PipelineError::Cancelled { step: i });
                }
            }
        }
        progress.finish();
        let images = match params.output_type {
            OutputType::Latents => None,
            OutputType::Images => Some(Images::from_decoded(image.clone())),
        };
        Ok(Output {
            images,
            latents: image,
            seed,
            timesteps,
        })
    }
}
