//! Loading a pipeline's components from a resolved model folder, and
//! building (or swapping) its scheduler.

use std::path::Path;

use burn::tensor::backend::Backend;
use diffusion_hub::resolve::{ResolvedComponent, ResolvedModel};
use diffusion_hub::single_file::{
    Checkpoint, ConvertOptions, ConvertReport, controlnet_prefix, convert, convert_controlnet,
    write_diffusers_folder, write_model_folder,
};
use diffusion_hub::tokenizer::ClipTokenizer;
use diffusion_hub::torch_pickle::PickleOptions;
use diffusion_hub::weights::Weights;
use diffusion_models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use diffusion_models::autoencoder_tiny::AutoencoderTinyConfig;
use diffusion_models::clip::{CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection};
use diffusion_models::config::{parse_config, read_config};
use diffusion_models::controlnet::ControlNetConfig;
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use diffusion_models::{Formulation, Loader, Precision};
use diffusion_schedulers::{SCHEDULER_CLASSES, Scheduler, from_config_as, from_sampler_name};
use serde_json::{Map, Value};

use crate::error::{PipelineError, Result};
use crate::latents::Latents;
use crate::text::{TextEncoder, TextModel};

/// How to load a pipeline.
#[derive(Debug, Clone)]
pub struct LoadOptions<B: Backend> {
    /// Where the models run.
    pub device: B::Device,
    /// The float type of the weights (diffusers' `torch_dtype`).
    pub precision: Precision,
    /// Weight variant, e.g. `fp16` (`diffusion_pytorch_model.fp16.safetensors`).
    pub variant: Option<String>,
    /// Hub revision (branch, tag or commit).
    pub revision: Option<String>,
    /// Never touch the network (also when `HF_HUB_OFFLINE=1`).
    pub local_files_only: bool,
    /// The Hub cache folder (default: `HF_HUB_CACHE`, else `$HF_HOME/hub`,
    /// shared with Python's huggingface_hub).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Replace the repo's scheduler (see [`SchedulerChoice`]).
    pub scheduler: Option<SchedulerChoice>,
    /// Show progress on stderr while loading.
    pub progress: bool,
    /// How the models run their heaviest ops; `None` = the backend's
    /// measured fastest ([`Formulation::for_device`]).
    pub formulation: Option<Formulation>,
    /// How PyTorch pickles (`.bin`, `.ckpt`) are read: by default a pickle
    /// naming a global torch's `weights_only` loader refuses is an error.
    pub pickle: PickleOptions,
}

impl<B: Backend> LoadOptions<B> {
    /// A loader of `weights` for these options' device, precision and
    /// formulation.
    pub fn loader<'w>(&self, weights: &'w Weights) -> Loader<'w, B> {
        let loader = Loader::new(weights, &self.device, self.precision);
        match self.formulation {
            Some(f) => loader.with_formulation(f),
            None => loader,
        }
    }
}

impl<B: Backend> Default for LoadOptions<B> {
    fn default() -> Self {
        LoadOptions {
            device: Default::default(),
            precision: Precision::F32,
            variant: None,
            revision: None,
            local_files_only: false,
            cache_dir: None,
            scheduler: None,
            progress: true,
            formulation: None,
            pickle: PickleOptions::default(),
        }
    }
}

/// A scheduler to use instead of the repo's, built from the repo's scheduler
/// config as diffusers' `SomeScheduler.from_config(pipe.scheduler.config, **overrides)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerChoice {
    /// A diffusers class name (`DPMSolverMultistepScheduler`) or an A1111 /
    /// ComfyUI name (`DPM++ 2M Karras`, `dpmpp_2m_karras`); `None` keeps the
    /// repo's class (only applying `overrides`).
    pub name: Option<String>,
    /// Config fields to set (`use_karras_sigmas = true`, ...).
    pub overrides: Map<String, Value>,
}

/// Parses a `scheduler_config.json` (Python's bare `Infinity`/`NaN` allowed).
pub fn read_scheduler_config(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    diffusion_schedulers::parse_config_text(&text).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Builds the scheduler: the repo's class from `config`, or `choice`'s.
pub fn build_scheduler<B: Backend>(
    config: &Value,
    choice: Option<&SchedulerChoice>,
) -> Result<Box<dyn Scheduler<Latents<B>>>> {
    let repo_class = config
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(choice) = choice else {
        return Ok(from_config_as(&repo_class, config)?.scheduler);
    };
    let (class, mut overrides) = match choice.name.as_deref() {
        None => (repo_class, Map::new()),
        Some(name) if SCHEDULER_CLASSES.contains(&name) => (name.to_string(), Map::new()),
        Some(name) => {
            let s = from_sampler_name(name)?;
            (s.class_name.to_string(), s.overrides)
        }
    };
    overrides.extend(choice.overrides.clone());
    let mut merged = config.clone();
    if let Some(map) = merged.as_object_mut() {
        // An explicit value is no longer "left at the default".
        if let Some(Value::Array(defaults)) = map.get_mut("_use_default_values") {
            defaults.retain(|k| !k.as_str().is_some_and(|k| overrides.contains_key(k)));
        }
        map.extend(overrides);
    }
    let loaded = from_config_as(&class, &merged)?;
    // A repo's config may carry another class's fields (diffusers tolerates
    // them, and so does this crate), but an override the user typed that the
    // class does not have is a typo, not a setting to drop silently.
    if let Some(key) = choice
        .overrides
        .keys()
        .find(|k| loaded.ignored_fields.contains(*k))
    {
        return Err(PipelineError::parameter(
            "scheduler_config",
            format!(
                "{class} has no config field `{key}` (its fields: {})",
                loaded
                    .scheduler
                    .config()
                    .as_object()
                    .map(|m| m
                        .keys()
                        .filter(|k| !k.starts_with('_'))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(loaded.scheduler)
}

/// Opens a component's weights from the files the resolver chose (variant,
/// shards or `.bin`, read as `pickle` says).
pub fn open_component_weights(c: &ResolvedComponent, pickle: &PickleOptions) -> Result<Weights> {
    if c.weight_index.is_none() && c.weights.is_empty() {
        return Err(PipelineError::MissingComponent {
            model: c.dir.display().to_string(),
            component: c.name.clone(),
            reason: "no weight files".into(),
        });
    }
    Ok(c.open_weights_with(pickle)?)
}

/// The named component of a pipeline, or an error naming it; also an error
/// when `model_index.json` says it comes from another library than the one
/// diffusers imports its class from (diffusers would fail to import it), or
/// names a class not in `classes` (when not empty), the classes the pipeline
/// can use there.
pub fn component<'m>(
    model: &'m ResolvedModel,
    name: &str,
    why: &str,
    classes: &[&str],
) -> Result<&'m ResolvedComponent> {
    let c = model
        .components
        .get(name)
        .ok_or_else(|| PipelineError::MissingComponent {
            model: model.source.display_name(),
            component: name.to_string(),
            reason: why.to_string(),
        })?;
    check_library(model, name)?;
    if let Some(entry) = model.model_index.component(name)
        && !classes.is_empty()
        && !classes.contains(&entry.class.as_str())
    {
        return Err(PipelineError::Config {
            path: model.root.join("model_index.json"),
            message: format!(
                "component `{name}`: class {}; {} expected",
                entry.class,
                classes.join(" or ")
            ),
        });
    }
    Ok(c)
}

/// An error when `model_index.json` says component `name` comes from another
/// library than the one diffusers imports its class from.
pub fn check_library(model: &ResolvedModel, name: &str) -> Result<()> {
    if let Some(entry) = model.model_index.component(name) {
        let library = expected_library(&entry.class);
        if entry.library != library {
            return Err(PipelineError::Config {
                path: model.root.join("model_index.json"),
                message: format!(
                    "component `{name}`: library \"{}\" for class {}; this class comes from \"{library}\"",
                    entry.library, entry.class
                ),
            });
        }
    }
    Ok(())
}

/// The library diffusers imports `class` from: transformers for the text
/// encoders and tokenizers, diffusers for the rest.
fn expected_library(class: &str) -> &'static str {
    if class.starts_with("CLIP") || class.contains("Tokenizer") || class.starts_with("T5") {
        "transformers"
    } else {
        "diffusers"
    }
}

/// Converts a single-file checkpoint into the diffusers folder `out_dir`
/// (diffusion-hub's converter), refusing to write a folder that would not
/// load: every component's config is validated as its model class would
/// validate it, and the scheduler config is built, before anything is
/// written (and the folder is written atomically).
pub fn convert_checkpoint(
    checkpoint: &Path,
    out_dir: &Path,
    options: &ConvertOptions,
    pickle: &PickleOptions,
) -> Result<ConvertReport> {
    let ckpt = Checkpoint::open_with(checkpoint, pickle)?;
    if controlnet_prefix(&ckpt.keys()).is_some() {
        return convert_controlnet_checkpoint(&ckpt, out_dir, options);
    }
    let conv = convert(&ckpt, options)?;
    // An override naming a field the class does not have is a typo: refused,
    // where a field a checkpoint's config carries beyond ours is tolerated.
    // transformers' `PretrainedConfig` attributes every config may carry,
    // which the text encoders do not read.
    const PRETRAINED_CONFIG: [&str; 8] = [
        "torch_dtype",
        "dtype",
        "architectures",
        "transformers_version",
        "output_hidden_states",
        "output_attentions",
        "use_return_dict",
        "tie_word_embeddings",
    ];
    let unknown_override = |component: &str, ignored: &[String]| {
        let overrides = options.overrides.get(component)?;
        let field = overrides
            .keys()
            .find(|k| ignored.contains(k) && !PRETRAINED_CONFIG.contains(&k.as_str()))?;
        let file = if component == "scheduler" {
            "scheduler_config.json"
        } else {
            "config.json"
        };
        Some(PipelineError::Config {
            path: out_dir.join(component).join(file),
            message: format!(
                "(converted) `--set {component}.{field}`: the component has no config field `{field}`"
            ),
        })
    };
    for c in &conv.components {
        // What the models' loader would refuse, caught before writing: a
        // tensor that is not a float, a convolution that is not square.
        for (key, t) in &c.tensors {
            let square = t.shape.len() != 4 || t.shape[2] == t.shape[3];
            if !t.dtype.is_model_float() || !square {
                return Err(PipelineError::Config {
                    path: checkpoint.to_path_buf(),
                    message: format!(
                        "{} weight `{key}`: {} of shape {:?} is not a float weight this model can load",
                        c.name, t.dtype, t.shape
                    ),
                });
            }
        }
        let source = format!(
            "{} (converted)",
            out_dir.join(c.name).join("config.json").display()
        );
        let json = c.config.to_string();
        let ignored = match c.class.1 {
            "UNet2DConditionModel" => {
                parse_config::<UNet2DConditionConfig>(&json, &source)?.ignored_fields
            }
            "AutoencoderKL" => parse_config::<AutoencoderKLConfig>(&json, &source)?.ignored_fields,
            "CLIPTextModel" | "CLIPTextModelWithProjection" => {
                parse_config::<CLIPTextConfig>(&json, &source)?.ignored_fields
            }
            _ => Vec::new(),
        };
        if let Some(e) = unknown_override(c.name, &ignored) {
            return Err(e);
        }
    }
    let class = conv.scheduler["_class_name"].as_str().unwrap_or_default();
    let scheduler = from_config_as::<diffusion_schedulers::CpuTensor>(class, &conv.scheduler)
        .map_err(|e| PipelineError::Config {
            path: out_dir.join("scheduler").join("scheduler_config.json"),
            message: format!("(converted) {e}"),
        })?;
    if let Some(e) = unknown_override("scheduler", &scheduler.ignored_fields) {
        return Err(e);
    }
    write_diffusers_folder(&conv, out_dir)?;
    Ok(ConvertReport::of(&ckpt, &conv))
}

/// An original ControlNet checkpoint to a diffusers `ControlNetModel`
/// folder (config.json and weights at its root; see
/// [`diffusion_hub::single_file::convert_controlnet`]), its config checked
/// as the model's loader will check it before anything is written.
fn convert_controlnet_checkpoint(
    ckpt: &Checkpoint,
    out_dir: &Path,
    options: &ConvertOptions,
) -> Result<ConvertReport> {
    let (model_type, c, skipped) = convert_controlnet(ckpt, options)?;
    for (key, t) in &c.tensors {
        if !t.dtype.is_model_float() {
            return Err(PipelineError::Config {
                path: ckpt.path().to_path_buf(),
                message: format!(
                    "controlnet weight `{key}`: {} is not a float weight",
                    t.dtype
                ),
            });
        }
    }
    let source = format!("{} (converted)", out_dir.join("config.json").display());
    let loaded = parse_config::<ControlNetConfig>(&c.config.to_string(), &source)?;
    if let Some(field) = options
        .overrides
        .get("controlnet")
        .and_then(|o| o.keys().find(|k| loaded.ignored_fields.contains(k)))
    {
        return Err(PipelineError::Config {
            path: out_dir.join("config.json"),
            message: format!(
                "(converted) `--set controlnet.{field}`: a ControlNet has no config field `{field}`"
            ),
        });
    }
    write_model_folder(&c, out_dir)?;
    Ok(ConvertReport {
        model_type,
        pipeline_class: "ControlNetModel".into(),
        tensors: vec![("controlnet", c.tensors.len())],
        skipped,
        skipped_globals: ckpt
            .weights()
            .skipped_globals()
            .into_iter()
            .map(str::to_string)
            .collect(),
    })
}

/// Validates the `config.json` of model component `c` (of class `class`)
/// without loading its weights: a malformed config is an error naming the
/// file and field. Classes this library does not load are not checked.
pub fn validate_component_config(c: &ResolvedComponent, class: &str) -> Result<()> {
    let path = config_path(c);
    match class {
        "UNet2DConditionModel" => drop(read_config::<UNet2DConditionConfig>(&path)?),
        "UNet2DModel" => drop(read_config::<UNet2DConfig>(&path)?),
        "AutoencoderKL" => drop(read_config::<AutoencoderKLConfig>(&path)?),
        "AutoencoderTiny" => drop(read_config::<AutoencoderTinyConfig>(&path)?),
        "CLIPTextModel" | "CLIPTextModelWithProjection" => {
            drop(read_config::<CLIPTextConfig>(&path)?)
        }
        _ => {}
    }
    Ok(())
}

fn config_path(c: &ResolvedComponent) -> std::path::PathBuf {
    c.config
        .clone()
        .unwrap_or_else(|| c.dir.join("config.json"))
}

/// A `UNet2DConditionModel` and its config.
pub fn load_unet_condition<B: Backend>(
    c: &ResolvedComponent,
    options: &LoadOptions<B>,
) -> Result<(UNet2DConditionModel<B>, UNet2DConditionConfig)> {
    let config = read_config::<UNet2DConditionConfig>(&config_path(c))?.config;
    let weights = open_component_weights(c, &options.pickle)?;
    let loader = options.loader(&weights);
    let model = UNet2DConditionModel::load(&loader, &config)?;
    loader.finish(&[])?;
    Ok((model, config))
}

/// A `UNet2DModel` and its config.
pub fn load_unet_2d<B: Backend>(
    c: &ResolvedComponent,
    options: &LoadOptions<B>,
) -> Result<(UNet2DModel<B>, UNet2DConfig)> {
    let config = read_config::<UNet2DConfig>(&config_path(c))?.config;
    let weights = open_component_weights(c, &options.pickle)?;
    let loader = options.loader(&weights);
    let model = UNet2DModel::load(&loader, &config)?;
    loader.finish(&[])?;
    Ok((model, config))
}

/// An `AutoencoderKL` (strict inside `load`). `force_upcast` from the config
/// applies only when `honour_force_upcast`: diffusers' SDXL pipelines read it,
/// its SD 1.x/2.x pipelines never do (their VAE configs default it to true,
/// yet run the VAE in f16).
pub fn load_vae<B: Backend>(
    c: &ResolvedComponent,
    options: &LoadOptions<B>,
    honour_force_upcast: bool,
) -> Result<AutoencoderKL<B>> {
    let mut config = read_config::<AutoencoderKLConfig>(&config_path(c))?.config;
    config.force_upcast &= honour_force_upcast;
    let weights = open_component_weights(c, &options.pickle)?;
    Ok(AutoencoderKL::load(&options.loader(&weights), &config)?)
}

/// A tokenizer and its CLIP text encoder; the with-projection class (SDXL's
/// second encoder) when `model_index.json` names it.
pub fn load_text_encoder<B: Backend>(
    model: &ResolvedModel,
    tokenizer: &str,
    encoder: &str,
    options: &LoadOptions<B>,
) -> Result<TextEncoder<B>> {
    let tok_c = component(model, tokenizer, "the prompt needs a tokenizer", &[])?;
    let enc_c = component(
        model,
        encoder,
        "the prompt needs a text encoder",
        &["CLIPTextModel", "CLIPTextModelWithProjection"],
    )?;
    let tok = ClipTokenizer::from_dir(&tok_c.dir)?;
    let cfg = CLIPTextConfig::read(&config_path(enc_c))?.config;
    let weights = open_component_weights(enc_c, &options.pickle)?;
    let loader = options.loader(&weights);
    let class = model
        .model_index
        .component(encoder)
        .map(|c| c.class.as_str())
        .unwrap_or("");
    let model = match class {
        "CLIPTextModelWithProjection" => {
            TextModel::WithProjection(CLIPTextModelWithProjection::load(&loader, &cfg)?)
        }
        "CLIPTextModel" => TextModel::Plain(CLIPTextModel::load(&loader, &cfg)?),
        other => {
            return Err(PipelineError::WrongModel {
                model: model.source.display_name(),
                message: format!(
                    "component `{encoder}` is a {other}; CLIPTextModel or CLIPTextModelWithProjection expected"
                ),
            });
        }
    };
    Ok(TextEncoder {
        tokenizer: tok,
        model,
    })
}
