//! Saving what training produced, and resuming an interrupted run.
//!
//! * [`Trainer::save_pipeline`] writes a diffusers pipeline folder
//!   (`model_index.json`, `unet/config.json`,
//!   `unet/diffusion_pytorch_model.safetensors`, `scheduler/scheduler_config.json`)
//!   that `DiffusionPipeline.from_pretrained` loads in Python as it is.
//! * [`Trainer::save_checkpoint`] writes everything a run needs to continue
//!   (weights, moving average, AdamW moments, step count, hyper-parameters, and
//!   the caller's own state such as its data position and loss history) into a
//!   temporary folder that is renamed into place only when complete: a run
//!   killed mid-write leaves the previous checkpoint intact and no partial one.
//! * [`Trainer::resume`] rebuilds the trainer from a checkpoint; the next step
//!   is the one the interrupted run would have taken. A LoRA run's checkpoint
//!   holds its factors only (`lora/`), and [`Trainer::resume_lora`] puts
//!   them back on the pretrained model.

use super::lora::{build_lora_model, is_lora_key};
use super::trainer::{Denoiser, TrainConfig, Trainer, build_model};
use crate::error::{PipelineError, Result};
use crate::image::write_atomic;
use burn::module::{AutodiffModule, Module, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use diffusion_hub::save::{OwnedTensor, save_safetensors};
use diffusion_hub::weights::Weights;
use diffusion_models::load::{LoraFactors, ParamKeys, WeightSource};
use diffusion_models::state::{state_dict, state_dict_where};
use diffusion_models::trainable_lora::LoraConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The diffusers version whose layout the saved files follow.
pub const DIFFUSERS_VERSION: &str = "0.42.1";
/// Weights file name in a diffusers model folder.
pub const WEIGHTS_NAME: &str = "diffusion_pytorch_model.safetensors";
/// A LoRA run's checkpoint keeps its factors in this folder, as peft's
/// `save_pretrained` (`adapter_model.safetensors`, `adapter_config.json`).
pub const LORA_DIR: &str = "lora";
const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const ADAPTER_CONFIG: &str = "adapter_config.json";

/// `trainer_state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// The model class (`UNet2DModel`).
    pub model_class: String,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// The caller's state (data position, RNG seed, loss history, ...).
    pub extra: Value,
    /// Optimizer updates taken (fewer than `step` when f16 steps were
    /// skipped; a checkpoint without the field reads as `step`).
    #[serde(default)]
    pub optimizer_steps: Option<u64>,
    /// The f16 loss scaler's state.
    #[serde(default)]
    pub grad_scaler: Option<super::precision::GradScaler>,
}

/// A model config as diffusers writes it: the fields plus `_class_name` and
/// `_diffusers_version`.
pub fn config_json<C: Serialize>(class_name: &str, config: &C) -> Result<Value> {
    let mut value = serde_json::to_value(config).map_err(|e| PipelineError::Config {
        path: PathBuf::from("config.json"),
        message: e.to_string(),
    })?;
    if let Value::Object(map) = &mut value {
        map.insert("_class_name".into(), json!(class_name));
        map.insert("_diffusers_version".into(), json!(DIFFUSERS_VERSION));
    }
    Ok(value)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a diffusers model folder: `config.json` and the weights.
pub fn save_model_folder(
    dir: &Path,
    config: &Value,
    tensors: &BTreeMap<String, OwnedTensor>,
) -> Result<()> {
    create_dir(dir)?;
    save_safetensors(&dir.join(WEIGHTS_NAME), tensors, Some(format_metadata()))?;
    write_json(&dir.join("config.json"), config)
}

fn format_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

impl<B: AutodiffBackend, M: Denoiser<B> + AutodiffModule<B>> Trainer<B, M>
where
    M::InnerModule: Module<B::InnerBackend>,
{
    /// The inference weights ([`Trainer::inference_model`]) under their
    /// diffusers keys.
    pub fn inference_state_dict(&self) -> Result<BTreeMap<String, OwnedTensor>> {
        Ok(state_dict(&self.inference_model(), &self.keys)?)
    }

    /// Writes a diffusers pipeline folder of class `pipeline_class`
    /// (`"DDPMPipeline"`, `"DDIMPipeline"`, ...) holding the inference weights
    /// as `unet` and `scheduler_config` (default: the noise scheduler's) as
    /// `scheduler`. Each file is replaced atomically; `model_index.json` last.
    pub fn save_pipeline(
        &self,
        dir: &Path,
        pipeline_class: &str,
        scheduler_config: Option<&Value>,
    ) -> Result<()> {
        let scheduler = scheduler_config.unwrap_or(&self.scheduler_config);
        let scheduler_class = scheduler
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or("DDPMScheduler")
            .to_string();
        save_model_folder(
            &dir.join("unet"),
            &config_json(M::CLASS_NAME, &self.model_config)?,
            &self.inference_state_dict()?,
        )?;
        create_dir(&dir.join("scheduler"))?;
        write_json(
            &dir.join("scheduler").join("scheduler_config.json"),
            scheduler,
        )?;
        write_json(
            &dir.join("model_index.json"),
            &json!({
                "_class_name": pipeline_class,
                "_diffusers_version": DIFFUSERS_VERSION,
                "scheduler": ["diffusers", scheduler_class],
                "unet": ["diffusers", M::CLASS_NAME],
            }),
        )
    }

    /// Writes a checkpoint folder `dir` (replacing an older one of the same
    /// name only once the new one is complete). `extra` is kept verbatim and
    /// handed back by [`Trainer::resume`].
    pub fn save_checkpoint(&self, dir: &Path, extra: Value) -> Result<()> {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        create_dir(parent)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".into());
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = self.write_checkpoint(&tmp, extra).and_then(|()| {
            let io = |source| PipelineError::Io {
                path: dir.to_path_buf(),
                source,
            };
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(io)?;
            }
            std::fs::rename(&tmp, dir).map_err(io)?;
            sync_dir(parent);
            Ok(())
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_checkpoint(&self, dir: &Path, extra: Value) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|source| PipelineError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let config = config_json(M::CLASS_NAME, &self.model_config)?;
        if let Some(lora) = &self.lora {
            // The base model is the pretrained one: only the factors (peft's
            // `save_pretrained` layout) and the model's config to check it.
            let lora_dir = dir.join(LORA_DIR);
            create_dir(&lora_dir)?;
            save_safetensors(
                &lora_dir.join(ADAPTER_WEIGHTS),
                &state_dict_where(&self.model.valid(), &self.keys, |i| is_lora_key(&i.key))?,
                Some(format_metadata()),
            )?;
            write_json(
                &lora_dir.join(ADAPTER_CONFIG),
                &serde_json::to_value(lora).expect("the config serializes"),
            )?;
            create_dir(&dir.join("unet"))?;
            write_json(&dir.join("unet").join("config.json"), &config)?;
        } else {
            save_model_folder(
                &dir.join("unet"),
                &config,
                &state_dict(&self.model.valid(), &self.keys)?,
            )?;
        }
        if self.ema.is_some() {
            save_model_folder(
                &dir.join("unet_ema"),
                &config,
                &self.inference_state_dict()?,
            )?;
        }
        let mut moments = BTreeMap::new();
        for (id, m) in &self.optimizer.state {
            let key = &self.key_of(id)?.key;
            moments.insert(format!("exp_avg.{key}"), flat_tensor(&m.exp_avg));
            moments.insert(format!("exp_avg_sq.{key}"), flat_tensor(&m.exp_avg_sq));
        }
        save_safetensors(&dir.join("optimizer.safetensors"), &moments, None)?;
        write_json(&dir.join("scheduler_config.json"), &self.scheduler_config)?;
        let state = TrainerState {
            step: self.step,
            model_class: M::CLASS_NAME.to_string(),
            config: self.config.clone(),
            extra,
            optimizer_steps: Some(self.optimizer.steps),
            grad_scaler: self.scaler,
        };
        write_json(
            &dir.join("trainer_state.json"),
            &serde_json::to_value(&state).expect("the state serializes"),
        )
    }

    fn key_of(&self, id: &ParamId) -> Result<&diffusion_models::ParamInfo> {
        self.keys.get(id).ok_or_else(|| {
            PipelineError::parameter("checkpoint", "a parameter has no diffusers key")
        })
    }

    /// Rebuilds a trainer from a checkpoint written by
    /// [`Trainer::save_checkpoint`], on `device`; returns it with the
    /// checkpoint's `extra` state. (A LoRA run's checkpoint holds its factors
    /// only: resume it with [`Trainer::resume_lora`].)
    pub fn resume(dir: &Path, device: &B::Device) -> Result<(Self, Value)> {
        let (state, model_config) = Self::read_checkpoint(dir)?;
        if dir.join(LORA_DIR).exists() {
            return Err(PipelineError::WrongModel {
                model: dir.display().to_string(),
                message: "the checkpoint holds LoRA factors: resume it on its base model".into(),
            });
        }
        let weights = Weights::open(&dir.join("unet").join(WEIGHTS_NAME))?;
        let (model, keys) = build_model::<B, M>(&model_config, Some(&weights), device, 0)?;
        Self::restore(dir, state, model, model_config, keys, None, device)
    }

    /// Rebuilds a LoRA run from its checkpoint (see [`Trainer::lora`]) on
    /// the pretrained weights `base` of the model it was trained on. A base
    /// whose config differs from the checkpoint's, or a `lora` given that is
    /// not the checkpoint's, is refused naming the difference.
    pub fn resume_lora(
        dir: &Path,
        base: &dyn WeightSource,
        base_config: &M::Config,
        lora: Option<&LoraConfig>,
        device: &B::Device,
    ) -> Result<(Self, Value)>
    where
        M::Config: PartialEq,
    {
        let (state, model_config) = Self::read_checkpoint(dir)?;
        let lora_dir = dir.join(LORA_DIR);
        if !lora_dir.exists() {
            return Err(PipelineError::WrongModel {
                model: dir.display().to_string(),
                message: "the checkpoint is not a LoRA run's (no lora/ folder)".into(),
            });
        }
        if &model_config != base_config {
            return Err(PipelineError::WrongModel {
                model: dir.join("unet").join("config.json").display().to_string(),
                message: "the checkpoint was trained on a model with another config \
                          than the one given"
                    .into(),
            });
        }
        let saved: LoraConfig = read_json(&lora_dir.join(ADAPTER_CONFIG))?;
        if let Some(given) = lora
            && given != &saved
        {
            return Err(PipelineError::Config {
                path: lora_dir.join(ADAPTER_CONFIG),
                message: format!(
                    "the checkpoint's LoRA is r={} lora_alpha={} on {:?}; the run asks for \
                     r={} lora_alpha={} on {:?}",
                    saved.r,
                    saved.lora_alpha,
                    saved.target_modules,
                    given.r,
                    given.lora_alpha,
                    given.target_modules
                ),
            });
        }
        let factors = Weights::open(&lora_dir.join(ADAPTER_WEIGHTS))?;
        let (model, keys) = build_lora_model::<B, M>(
            &model_config,
            base,
            &saved,
            LoraFactors::Stored(&factors),
            device,
        )?;
        Self::restore(dir, state, model, model_config, keys, Some(saved), device)
    }

    fn read_checkpoint(dir: &Path) -> Result<(TrainerState, M::Config)> {
        let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
        if state.model_class != M::CLASS_NAME {
            return Err(PipelineError::WrongModel {
                model: dir.display().to_string(),
                message: format!(
                    "the checkpoint holds a {}, not a {}",
                    state.model_class,
                    M::CLASS_NAME
                ),
            });
        }
        let config_path = dir.join("unet").join("config.json");
        let text = read_text(&config_path)?;
        let model_config = diffusion_models::config::parse_config::<M::Config>(
            &text,
            &config_path.display().to_string(),
        )?
        .config;
        Ok((state, model_config))
    }

    /// The trainer of `state` around a rebuilt model: step counts, loss
    /// scaler, moving average and AdamW moments from the checkpoint.
    fn restore(
        dir: &Path,
        state: TrainerState,
        model: M,
        model_config: M::Config,
        keys: ParamKeys,
        lora: Option<LoraConfig>,
        device: &B::Device,
    ) -> Result<(Self, Value)> {
        let scheduler_config: Value = read_json(&dir.join("scheduler_config.json"))?;
        let mut trainer = Trainer::from_parts(
            model,
            model_config,
            keys,
            scheduler_config,
            state.config.clone(),
            device.clone(),
        )?;
        trainer.lora = lora;
        trainer.step = state.step;
        trainer.optimizer.steps = state.optimizer_steps.unwrap_or(state.step);
        if trainer.optimizer.steps > state.step {
            return Err(PipelineError::Config {
                path: dir.join("trainer_state.json"),
                message: format!(
                    "optimizer_steps {} exceeds step {}",
                    trainer.optimizer.steps, state.step
                ),
            });
        }
        if let Some(scaler) = state.grad_scaler {
            trainer.set_grad_scaler(scaler)?;
        }
        let inner_device = trainer.model.valid().devices().into_iter().next();
        let inner_device = match inner_device {
            Some(d) => d,
            None => return Ok((trainer, state.extra)),
        };
        if trainer.ema.is_some() {
            let ema = Weights::open(&dir.join("unet_ema").join(WEIGHTS_NAME))?;
            trainer.ema = Some(load_flat(
                &ema,
                &trainer.keys,
                "",
                Layout::Stored,
                &inner_device,
            )?);
        }
        let moments = Weights::open(&dir.join("optimizer.safetensors"))?;
        if moments.tensors().next().is_some() {
            let m = load_flat(
                &moments,
                &trainer.keys,
                "exp_avg.",
                Layout::Flat,
                &inner_device,
            )?;
            let mut v = load_flat(
                &moments,
                &trainer.keys,
                "exp_avg_sq.",
                Layout::Flat,
                &inner_device,
            )?;
            for (id, exp_avg) in m {
                let exp_avg_sq = v.remove(&id).ok_or_else(|| PipelineError::Config {
                    path: dir.join("optimizer.safetensors"),
                    message: "exp_avg_sq missing for a parameter".into(),
                })?;
                trainer.optimizer.state.insert(
                    id,
                    super::adamw::Moments {
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
        Ok((trainer, state.extra))
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path)?).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn flat_tensor<B: Backend>(t: &Tensor<B, 1>) -> OwnedTensor {
    let values: Vec<f32> = t
        .clone()
        .into_data()
        .convert_dtype(DType::F32)
        .into_vec()
        .expect("converted to f32");
    OwnedTensor::f32(vec![values.len()], &values)
}

fn f32_values(w: &Weights, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let view = w.tensor(key)?;
    let dtype = match view.dtype {
        diffusion_hub::weights::Dtype::F32 => DType::F32,
        ref other => {
            return Err(PipelineError::Config {
                path: w.source().to_path_buf(),
                message: format!("`{key}` is {other}, checkpoints hold F32"),
            });
        }
    };
    let data = TensorData::from_bytes_vec(view.data.to_vec(), view.shape.to_vec(), dtype);
    Ok((view.shape.to_vec(), data.into_vec().expect("F32 data")))
}

/// How a checkpoint file holds one tensor per parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Every parameter, in the diffusers layout and shape (Linear weights
    /// `[out, in]`, transposed back to the module's `[in, out]` on load).
    Stored,
    /// Flat, in the module's layout already (optimizer moments); parameters
    /// without a tensor are skipped.
    Flat,
}

/// The tensors `{prefix}{key}` of `keys`, flattened and in the module's
/// layout, by parameter id.
fn load_flat<B: Backend>(
    w: &Weights,
    keys: &ParamKeys,
    prefix: &str,
    layout: Layout,
    device: &B::Device,
) -> Result<HashMap<ParamId, Tensor<B, 1>>> {
    let mut out = HashMap::new();
    for (id, info) in keys {
        let key = format!("{prefix}{}", info.key);
        if layout == Layout::Flat && w.tensor(&key).is_err() {
            continue;
        }
        let (shape, values) = f32_values(w, &key)?;
        let bad = |message: String| PipelineError::Config {
            path: w.source().to_path_buf(),
            message,
        };
        let values = match layout {
            Layout::Stored if shape != info.stored => {
                return Err(bad(format!(
                    "`{key}` has shape {shape:?}, expected {:?}",
                    info.stored
                )));
            }
            Layout::Stored => diffusion_models::state::from_stored(info, values),
            Layout::Flat => {
                let expected: usize = info.stored.iter().product();
                if values.len() != expected {
                    return Err(bad(format!(
                        "`{key}` has {} values, the parameter has {expected}",
                        values.len()
                    )));
                }
                values
            }
        };
        let n = values.len();
        out.insert(*id, Tensor::from_data(TensorData::new(values, [n]), device));
    }
    Ok(out)
}
