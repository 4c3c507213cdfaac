//! The settings of one `generate` / `img2img` / `inpaint` run: read from the
//! flags, checked, and its input files read, all before any model is loaded,
//! so that a bad flag fails at once and nothing is written.

use std::path::{Path, PathBuf};

use clap::ArgMatches;
use diffusion_hub::weights::Weights;
use diffusion_models::Precision;
use diffusion_pipelines::image::load_image;
use diffusion_pipelines::{SchedulerChoice, Task};
use image::DynamicImage;
use serde_json::{Map, Value, json};

use crate::args::{Device, check_pixels};
use crate::error::{CliError, Result, usage};
use crate::generate::output_path;
use crate::model::HubArgs;

/// Initial latents read from `--latents`.
#[derive(Debug, Clone)]
pub struct LatentsInput {
    /// `[N, C, h, w]`.
    pub shape: [usize; 4],
    /// The values, as f32.
    pub values: Vec<f32>,
}

/// Everything a generation run was asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which pipeline task.
    pub task: Task,
    /// Model flags.
    pub hub: HubArgs,
    pub prompt: Vec<String>,
    pub negative_prompt: Option<Vec<String>>,
    pub prompt_2: Option<Vec<String>>,
    pub negative_prompt_2: Option<Vec<String>>,
    /// `--scheduler` and `--scheduler-config`, when either is given.
    pub scheduler: Option<SchedulerChoice>,
    /// `--seed`; a random one is drawn (and recorded) when neither it nor
    /// `--seeds` is given.
    pub seed: Option<u64>,
    pub seeds: Option<Vec<u64>>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub guidance_rescale: Option<f64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub num_images: usize,
    pub latents_path: Option<PathBuf>,
    pub latents: Option<LatentsInput>,
    pub eta: Option<f64>,
    pub clip_skip: Option<usize>,
    pub long_prompt: bool,
    pub strength: Option<f64>,
    pub image_path: Option<PathBuf>,
    pub image: Option<DynamicImage>,
    pub mask_path: Option<PathBuf>,
    pub mask: Option<DynamicImage>,
    pub original_size: Option<(usize, usize)>,
    pub crops_coords_top_left: Option<(usize, usize)>,
    pub target_size: Option<(usize, usize)>,
    pub denoising_end: Option<f64>,
    pub dtype: Precision,
    pub device: Device,
    /// `--output` (default `output.png`).
    pub output: PathBuf,
    pub output_latents: Option<PathBuf>,
    pub quiet: bool,
    /// `--lora FILE[:WEIGHT]`, then the prompts' `<lora:NAME:WEIGHT>` tags
    /// resolved in `--lora-dir`: each file and its weight.
    pub loras: Vec<(PathBuf, f64)>,
    /// `--fuse-lora`.
    pub fuse_lora: bool,
    /// `--embedding FILE[:TOKEN]`.
    pub embeddings: Vec<(PathBuf, Option<String>)>,
    /// `--controlnet`: folders or Hub repos, in order.
    pub controlnets: Vec<String>,
    /// `--control-image`: one per net.
    pub control_image_paths: Vec<PathBuf>,
    /// The control images, read.
    pub control_images: Vec<DynamicImage>,
    /// `--controlnet-scale`: none, one, or one per net.
    pub controlnet_scale: Option<Vec<f64>>,
    /// `--control-start`.
    pub control_start: Option<Vec<f64>>,
    /// `--control-end`.
    pub control_end: Option<Vec<f64>>,
    /// `--guess-mode`.
    pub guess_mode: bool,
    /// `--control-preprocess canny:LOW,HIGH`: the thresholds.
    pub control_preprocess: Option<(f64, f64)>,
    /// `--t2i-adapter`: folders or Hub repos, in order.
    pub t2i_adapters: Vec<String>,
    /// `--adapter-image`: one per adapter.
    pub adapter_image_paths: Vec<PathBuf>,
    /// The adapter images, read.
    pub adapter_images: Vec<DynamicImage>,
    /// `--adapter-scale`: none, one, or one per adapter.
    pub adapter_scale: Option<Vec<f64>>,
    /// `--adapter-factor`.
    pub adapter_factor: Option<f64>,
}

fn floats(m: &ArgMatches, id: &str) -> Option<Vec<f64>> {
    m.get_many::<f64>(id).map(|v| v.copied().collect())
}

fn strings(m: &ArgMatches, id: &str) -> Option<Vec<String>> {
    m.get_many::<String>(id).map(|v| v.cloned().collect())
}

impl Settings {
    /// Reads and checks the flags of a generation subcommand, and reads its
    /// input files.
    pub fn from_matches(task: Task, m: &ArgMatches) -> Result<Self> {
        let overrides: Map<String, Value> = m
            .get_many::<(String, Value)>("scheduler_config")
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        let scheduler_name = m.get_one::<String>("scheduler").cloned();
        let scheduler =
            (scheduler_name.is_some() || !overrides.is_empty()).then_some(SchedulerChoice {
                name: scheduler_name,
                overrides,
            });
        let mut s = Settings {
            task,
            hub: HubArgs::from_matches(m),
            prompt: strings(m, "prompt").unwrap_or_default(),
            negative_prompt: strings(m, "negative_prompt"),
            prompt_2: strings(m, "prompt_2"),
            negative_prompt_2: strings(m, "negative_prompt_2"),
            scheduler,
            seed: m.get_one::<u64>("seed").copied(),
            seeds: m.get_one::<Vec<u64>>("seeds").cloned(),
            steps: m.get_one::<usize>("steps").copied(),
            guidance: m.get_one::<f64>("guidance").copied(),
            guidance_rescale: m.get_one::<f64>("guidance_rescale").copied(),
            width: m.get_one::<usize>("width").copied(),
            height: m.get_one::<usize>("height").copied(),
            num_images: m.get_one::<usize>("num_images").copied().unwrap_or(1),
            latents_path: m.get_one::<String>("latents").map(PathBuf::from),
            latents: None,
            eta: m.get_one::<f64>("eta").copied(),
            clip_skip: m.get_one::<usize>("clip_skip").copied(),
            long_prompt: m.get_flag("long_prompt"),
            strength: m.get_one::<f64>("strength").copied(),
            image_path: m.get_one::<String>("image").map(PathBuf::from),
            image: None,
            mask_path: m.get_one::<String>("mask").map(PathBuf::from),
            mask: None,
            original_size: m.get_one::<(usize, usize)>("original_size").copied(),
            crops_coords_top_left: m
                .get_one::<(usize, usize)>("crops_coords_top_left")
                .copied(),
            target_size: m.get_one::<(usize, usize)>("target_size").copied(),
            denoising_end: m.get_one::<f64>("denoising_end").copied(),
            dtype: m.get_one::<Precision>("dtype").copied().unwrap_or_default(),
            device: m
                .get_one::<Device>("device")
                .copied()
                .unwrap_or(Device::Cpu),
            output: m
                .get_one::<String>("output")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("output.png")),
            output_latents: m.get_one::<String>("output_latents").map(PathBuf::from),
            quiet: m.get_flag("quiet"),
            loras: m
                .get_many::<(String, f64)>("lora")
                .map(|v| v.map(|(p, w)| (PathBuf::from(p), *w)).collect())
                .unwrap_or_default(),
            fuse_lora: m.get_flag("fuse_lora"),
            embeddings: m
                .get_many::<(String, Option<String>)>("embedding")
                .map(|v| v.map(|(p, t)| (PathBuf::from(p), t.clone())).collect())
                .unwrap_or_default(),
            controlnets: strings(m, "controlnet").unwrap_or_default(),
            control_image_paths: strings(m, "control_image")
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            control_images: Vec::new(),
            controlnet_scale: floats(m, "controlnet_scale"),
            control_start: floats(m, "control_start"),
            control_end: floats(m, "control_end"),
            guess_mode: m.get_flag("guess_mode"),
            control_preprocess: m
                .get_one::<String>("control_preprocess")
                .map(|s| diffusion_pipelines::preprocess::parse_canny(s))
                .transpose()
                .map_err(|e| usage(format!("--control-preprocess {e}")))?,
            t2i_adapters: strings(m, "t2i_adapter").unwrap_or_default(),
            adapter_image_paths: strings(m, "adapter_image")
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            adapter_images: Vec::new(),
            adapter_scale: floats(m, "adapter_scale"),
            adapter_factor: m.get_one::<f64>("adapter_factor").copied(),
        };
        s.take_lora_tags(m.get_one::<String>("lora_dir").map(PathBuf::from))?;
        s.check()?;
        s.read_inputs()?;
        Ok(s)
    }

    /// Removes A1111's `<lora:NAME:WEIGHT>` tags from the prompts and adds
    /// `NAME.safetensors` (or `.pt`, `.ckpt`, `.bin`) of `lora_dir` at that
    /// weight (a name tagged in several prompts of a batch, once).
    fn take_lora_tags(&mut self, lora_dir: Option<PathBuf>) -> Result<()> {
        let mut tags: Vec<(String, f64)> = Vec::new();
        for prompts in [&mut self.prompt, self.prompt_2.get_or_insert_with(Vec::new)] {
            for p in prompts.iter_mut() {
                let (text, found) = crate::args::lora_tags(p).map_err(usage)?;
                *p = text;
                for t in found {
                    if !tags.iter().any(|(n, _)| *n == t.0) {
                        tags.push(t);
                    }
                }
            }
        }
        if self.prompt_2.as_ref().is_some_and(|p| p.is_empty()) {
            self.prompt_2 = None;
        }
        if tags.is_empty() {
            return Ok(());
        }
        let Some(dir) = lora_dir else {
            return Err(usage(format!(
                "the prompt names <lora:{}>: give --lora-dir DIR to find it",
                tags[0].0
            )));
        };
        for (name, weight) in tags {
            let file = ["safetensors", "pt", "ckpt", "bin"]
                .iter()
                .map(|ext| dir.join(format!("{name}.{ext}")))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    usage(format!(
                        "<lora:{name}>: no {name}.safetensors (.pt, .ckpt, .bin) in --lora-dir {}",
                        dir.display()
                    ))
                })?;
            self.loras.push((file, weight));
        }
        Ok(())
    }

    /// The checks that need no model (diffusers makes the same ones, later).
    fn check(&self) -> Result<()> {
        for (flag, path) in [
            ("--image", &self.image_path),
            ("--mask", &self.mask_path),
            ("--latents", &self.latents_path),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(usage(format!("{flag} \"\": an empty path")));
            }
        }
        for (flag, v) in [("--width", self.width), ("--height", self.height)] {
            if let Some(v) = v {
                check_pixels(flag, v).map_err(usage)?;
            }
        }
        if let Some(s) = self.strength
            && !(0.0..=1.0).contains(&s)
        {
            return Err(usage(format!("--strength {s}: must be in [0, 1]")));
        }
        if let Some(e) = self.denoising_end
            && !(0.0..=1.0).contains(&e)
        {
            return Err(usage(format!("--denoising-end {e}: must be in [0, 1]")));
        }
        if self.num_images == 0 {
            return Err(usage("--num-images 0: must be at least 1"));
        }
        self.check_control()?;
        self.check_adapters()?;
        if self.task == Task::TextToImage && (self.image_path.is_some() || self.mask_path.is_some())
        {
            return Err(usage(
                "--image/--mask: `generate` is text-to-image; use `img2img` or `inpaint`",
            ));
        }
        if self.task == Task::ImageToImage && self.mask_path.is_some() {
            return Err(usage("--mask: `img2img` takes no mask; use `inpaint`"));
        }
        if self.task == Task::ImageToImage && self.latents_path.is_some() {
            return Err(usage(
                "--latents: `img2img` starts from the image's latents",
            ));
        }
        if self.task == Task::TextToImage && self.strength.is_some() {
            return Err(usage("--strength: only for `img2img` and `inpaint`"));
        }
        self.check_outputs()
    }

    /// The ControlNet flags: one `--control-image` per `--controlnet`, the
    /// per-net numbers given once or once per net, windows inside [0, 1].
    fn check_control(&self) -> Result<()> {
        let nets = self.controlnets.len();
        if nets == 0 {
            for (flag, set) in [
                ("--control-preprocess", self.control_preprocess.is_some()),
                ("--control-image", !self.control_image_paths.is_empty()),
                ("--controlnet-scale", self.controlnet_scale.is_some()),
                ("--control-start", self.control_start.is_some()),
                ("--control-end", self.control_end.is_some()),
                ("--guess-mode", self.guess_mode),
            ] {
                if set {
                    return Err(usage(format!("{flag}: there is no --controlnet")));
                }
            }
            return Ok(());
        }
        if self.control_image_paths.len() != nets {
            return Err(usage(format!(
                "--control-image: {} given for {nets} --controlnet; each net takes one",
                self.control_image_paths.len()
            )));
        }
        if let Some(p) = self
            .control_image_paths
            .iter()
            .find(|p| p.as_os_str().is_empty())
        {
            return Err(usage(format!(
                "--control-image {:?}: an empty path",
                p.display().to_string()
            )));
        }
        for (flag, list) in [
            ("--controlnet-scale", &self.controlnet_scale),
            ("--control-start", &self.control_start),
            ("--control-end", &self.control_end),
        ] {
            if let Some(v) = list {
                if v.len() != 1 && v.len() != nets {
                    return Err(usage(format!(
                        "{flag}: {} values for {nets} --controlnet (give one, or one per net)",
                        v.len()
                    )));
                }
                if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                    return Err(usage(format!("{flag} {x}: not a finite number")));
                }
            }
        }
        for (flag, list) in [
            ("--control-start", &self.control_start),
            ("--control-end", &self.control_end),
        ] {
            if let Some(x) = list.iter().flatten().find(|x| !(0.0..=1.0).contains(*x)) {
                return Err(usage(format!("{flag} {x}: must be in [0, 1]")));
            }
        }
        Ok(())
    }

    /// The T2I-Adapter flags: one `--adapter-image` per `--t2i-adapter`,
    /// scales once or per adapter, text-to-image only, not with ControlNets.
    fn check_adapters(&self) -> Result<()> {
        let n = self.t2i_adapters.len();
        if n == 0 {
            for (flag, set) in [
                ("--adapter-image", !self.adapter_image_paths.is_empty()),
                ("--adapter-scale", self.adapter_scale.is_some()),
                ("--adapter-factor", self.adapter_factor.is_some()),
            ] {
                if set {
                    return Err(usage(format!("{flag}: there is no --t2i-adapter")));
                }
            }
            return Ok(());
        }
        if self.task != Task::TextToImage {
            return Err(usage(
                "--t2i-adapter: adapters guide `generate` only (diffusers has no img2img or inpainting adapter pipeline)",
            ));
        }
        if !self.controlnets.is_empty() {
            return Err(usage(
                "--t2i-adapter with --controlnet: diffusers has no pipeline with both; use one kind",
            ));
        }
        if self.adapter_image_paths.len() != n {
            return Err(usage(format!(
                "--adapter-image: {} given for {n} --t2i-adapter; each adapter takes one",
                self.adapter_image_paths.len()
            )));
        }
        if let Some(v) = &self.adapter_scale {
            if v.len() != 1 && v.len() != n {
                return Err(usage(format!(
                    "--adapter-scale: {} values for {n} --t2i-adapter (give one, or one per adapter)",
                    v.len()
                )));
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(usage(format!("--adapter-scale {x}: not a finite number")));
            }
        }
        if let Some(f) = self.adapter_factor
            && !(0.0..=1.0).contains(&f)
        {
            return Err(usage(format!("--adapter-factor {f}: must be in [0, 1]")));
        }
        Ok(())
    }

    /// How many images the run writes: one per prompt (at least one) times
    /// `--num-images`.
    pub fn image_count(&self) -> usize {
        self.prompt.len().max(1).saturating_mul(self.num_images)
    }

    /// Every file the run would write can be written, and none is written
    /// twice or over one of the run's inputs; checked before loading anything.
    fn check_outputs(&self) -> Result<()> {
        let count = self.image_count();
        let mut targets: Vec<(String, PathBuf)> = Vec::new();
        if self.output.as_os_str().is_empty() {
            return Err(usage(
                "--output \"\": an empty path; give a file name such as out.png",
            ));
        }
        // The numbered names of a batch (capped: a batch too large to hold
        // is refused later, by the pipeline's memory check).
        for i in 0..count.min(4096) {
            targets.push(("--output".into(), output_path(&self.output, i, count)));
        }
        if let Some(p) = &self.output_latents {
            if p.as_os_str().is_empty() {
                return Err(usage("--output-latents \"\": an empty path"));
            }
            targets.push(("--output-latents".into(), p.clone()));
        }
        for (flag, path) in &targets {
            check_output_dir(flag, path)?;
        }
        let control: Vec<Option<PathBuf>> = self
            .control_image_paths
            .iter()
            .map(|p| Some(p.clone()))
            .collect();
        let mut inputs = vec![
            ("--image", &self.image_path),
            ("--mask", &self.mask_path),
            ("--latents", &self.latents_path),
        ];
        inputs.extend(control.iter().map(|p| ("--control-image", p)));
        let adapter: Vec<Option<PathBuf>> = self
            .adapter_image_paths
            .iter()
            .map(|p| Some(p.clone()))
            .collect();
        inputs.extend(adapter.iter().map(|p| ("--adapter-image", p)));
        let mut seen: Vec<(String, PathBuf, PathBuf)> = Vec::new();
        for (flag, path) in &targets {
            let key = comparable(path);
            if let Some((other, other_path, _)) = seen.iter().find(|(_, _, k)| *k == key) {
                return Err(usage(format!(
                    "{flag} {}: the same file as {other} {}; each output needs its own path",
                    path.display(),
                    other_path.display()
                )));
            }
            for &(input_flag, input) in &inputs {
                if let Some(input) = input
                    && comparable(input) == key
                {
                    return Err(usage(format!(
                        "{flag} {}: would overwrite the input {input_flag} {}",
                        path.display(),
                        input.display()
                    )));
                }
            }
            seen.push((flag.clone(), path.clone(), key));
        }
        Ok(())
    }

    /// Reads `--image`, `--mask` and `--latents`. A mask of another size than
    /// the image is refused: diffusers would stretch it to the image's size,
    /// which silently misplaces the repainted region whenever the aspect
    /// ratios differ; resize the mask yourself if that is what you want.
    fn read_inputs(&mut self) -> Result<()> {
        if let Some(p) = &self.image_path {
            self.image = Some(load_image(p)?);
        }
        self.control_images = self
            .control_image_paths
            .iter()
            .map(|p| load_image(p))
            .collect::<std::result::Result<_, _>>()?;
        if let Some((low, high)) = self.control_preprocess {
            for image in &mut self.control_images {
                let edges = diffusion_pipelines::preprocess::canny(image, low, high);
                *image = DynamicImage::ImageLuma8(edges);
            }
        }
        self.adapter_images = self
            .adapter_image_paths
            .iter()
            .map(|p| load_image(p))
            .collect::<std::result::Result<_, _>>()?;
        if let Some(p) = &self.mask_path {
            let mask = load_image(p)?;
            if let Some(image) = &self.image
                && (mask.width(), mask.height()) != (image.width(), image.height())
            {
                return Err(usage(format!(
                    "--mask {}: {}x{} (HxW), but --image is {}x{}; the mask must have the image's size",
                    p.display(),
                    mask.height(),
                    mask.width(),
                    image.height(),
                    image.width()
                )));
            }
            self.mask = Some(mask);
        }
        if let Some(p) = &self.latents_path {
            self.latents = Some(read_latents(p)?);
        }
        Ok(())
    }

    /// The settings as JSON: what is stored in each PNG (`parameters`) and
    /// printed, enough to remake the image. Unset optional flags are left out.
    pub fn to_json(&self, model: &str) -> Map<String, Value> {
        let mut j = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                j.insert(k.to_string(), v);
            }
        };
        let task = match self.task {
            Task::TextToImage => "generate",
            Task::ImageToImage => "img2img",
            Task::Inpaint => "inpaint",
        };
        put("command", json!(task));
        put("model", json!(model));
        put("variant", json!(self.hub.variant));
        put("revision", json!(self.hub.revision));
        if !self.prompt.is_empty() {
            put("prompt", json!(self.prompt));
        }
        put("negative_prompt", json!(self.negative_prompt));
        put("prompt_2", json!(self.prompt_2));
        put("negative_prompt_2", json!(self.negative_prompt_2));
        if let Some(s) = &self.scheduler {
            put("scheduler", json!(s.name));
            if !s.overrides.is_empty() {
                put("scheduler_config", Value::Object(s.overrides.clone()));
            }
        }
        put("seed", json!(self.seed));
        put("seeds", json!(self.seeds));
        put("num_inference_steps", json!(self.steps));
        put("guidance_scale", json!(self.guidance));
        put("guidance_rescale", json!(self.guidance_rescale));
        put("width", json!(self.width));
        put("height", json!(self.height));
        put("num_images_per_prompt", json!(self.num_images));
        put("latents", json!(self.latents_path));
        put("eta", json!(self.eta));
        put("clip_skip", json!(self.clip_skip));
        if self.long_prompt {
            put("long_prompt", json!("chunk"));
        }
        put("strength", json!(self.strength));
        put("image", json!(self.image_path));
        put("mask_image", json!(self.mask_path));
        put("original_size", json!(self.original_size));
        put("crops_coords_top_left", json!(self.crops_coords_top_left));
        put("target_size", json!(self.target_size));
        if !self.loras.is_empty() {
            let loras: Vec<Value> = self
                .loras
                .iter()
                .map(|(p, w)| json!({"file": p, "weight": w}))
                .collect();
            put("loras", Value::Array(loras));
            put("fuse_lora", json!(self.fuse_lora));
        }
        if !self.embeddings.is_empty() {
            let e: Vec<Value> = self
                .embeddings
                .iter()
                .map(|(p, t)| json!({"file": p, "token": t}))
                .collect();
            put("embeddings", Value::Array(e));
        }
        if !self.controlnets.is_empty() {
            let nets: Vec<Value> = self
                .controlnets
                .iter()
                .zip(&self.control_image_paths)
                .map(|(n, i)| json!({"controlnet": n, "control_image": i}))
                .collect();
            put("controlnets", Value::Array(nets));
            put(
                "controlnet_conditioning_scale",
                json!(self.controlnet_scale),
            );
            put("control_guidance_start", json!(self.control_start));
            put("control_guidance_end", json!(self.control_end));
            put("guess_mode", json!(self.guess_mode));
            put(
                "control_preprocess",
                json!(
                    self.control_preprocess
                        .map(|(l, h)| format!("canny:{l},{h}"))
                ),
            );
        }
        if !self.t2i_adapters.is_empty() {
            let a: Vec<Value> = self
                .t2i_adapters
                .iter()
                .zip(&self.adapter_image_paths)
                .map(|(n, i)| json!({"t2i_adapter": n, "adapter_image": i}))
                .collect();
            put("t2i_adapters", Value::Array(a));
            put("adapter_conditioning_scale", json!(self.adapter_scale));
            put("adapter_conditioning_factor", json!(self.adapter_factor));
        }
        put("denoising_end", json!(self.denoising_end));
        put(
            "dtype",
            json!(match self.dtype {
                Precision::F32 => "f32",
                Precision::F16 => "f16",
                Precision::BF16 => "bf16",
            }),
        );
        put("device", json!(self.device.name()));
        j
    }
}

/// The folder an output goes to must exist, checked before generating (the
/// write itself is atomic).
fn check_output_dir(flag: &str, path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    match dir {
        Some(d) if !d.is_dir() => Err(usage(format!(
            "{flag} {}: folder {} does not exist",
            path.display(),
            d.display()
        ))),
        _ if path.is_dir() => Err(usage(format!(
            "{flag} {}: is a folder, a file name is expected",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// `path` made comparable with another: absolute, with its folder's links
/// resolved (the file itself may not exist yet).
fn comparable(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (dir.canonicalize(), path.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => path.to_path_buf(),
    }
}

/// `--latents`: the 4-D float tensor `latents` of a safetensors file.
pub fn read_latents(path: &Path) -> Result<LatentsInput> {
    let bad = |message: String| CliError::Input {
        path: path.to_path_buf(),
        message,
    };
    let weights = Weights::open(path)?;
    let t = weights
        .tensor("latents")
        .map_err(|_| bad("no tensor named `latents`".into()))?;
    if !t.dtype.is_model_float() {
        return Err(bad(format!(
            "`latents` is {}; F32, F16 or BF16 expected",
            t.dtype
        )));
    }
    let shape: [usize; 4] = t.shape.try_into().map_err(|_| {
        bad(format!(
            "`latents` has shape {:?}; 4-D [N, C, h, w] expected",
            t.shape
        ))
    })?;
    Ok(LatentsInput {
        shape,
        values: t.to_f32_vec()?,
    })
}
