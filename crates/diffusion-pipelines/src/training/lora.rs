//! LoRA fine-tuning, as diffusers' `train_text_to_image_lora.py`,
//! `train_text_to_image_lora_sdxl.py` and `train_dreambooth_lora.py` do it:
//! the pretrained UNet frozen, peft LoRA factors on the targeted layers
//! ([`LoraConfig`]) trained by the same [`Trainer`] step, and the result
//! written as `save_lora_weights` writes it (`pytorch_lora_weights.safetensors`),
//! which diffusers' `load_lora_weights` and this crate's
//! [`StableDiffusion::load_lora_weights`](crate::StableDiffusion::load_lora_weights) read.

use super::params::freeze_except;
use super::trainer::{Denoiser, TrainConfig, Trainer};
use crate::error::{PipelineError, Result};
use crate::lora::Component;
use burn::module::{AutodiffModule, Module, ParamId};
use burn::tensor::backend::AutodiffBackend;
use diffusion_hub::save::{OwnedTensor, save_safetensors};
use diffusion_models::Formulation;
use diffusion_models::load::{Loader, LoraFactors, ParamKeys, Precision, WeightSource};
use diffusion_models::state::state_dict_where;
use diffusion_models::trainable_lora::LoraConfig;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The file `save_lora_weights` writes into its directory.
pub const LORA_WEIGHTS_NAME: &str = "pytorch_lora_weights.safetensors";

/// Whether `key` names a LoRA factor (peft's `…lora_A.weight` / `…lora_B.weight`).
pub fn is_lora_key(key: &str) -> bool {
    key.ends_with(".lora_A.weight") || key.ends_with(".lora_B.weight")
}

/// Builds a pretrained model from `weights` with a trainable LoRA where
/// `lora` says (factors from `factors`), every other parameter frozen, and
/// returns it with its parameter keys (the factors under peft's keys). The
/// model runs Burn's own ops, as [`build_model`](super::build_model).
///
/// A config that matches no layer, or a rank larger than a targeted layer,
/// is refused naming `target_modules` / `r`.
pub fn build_lora_model<'a, B: AutodiffBackend, M: Denoiser<B>>(
    config: &M::Config,
    weights: &'a dyn WeightSource,
    lora: &LoraConfig,
    factors: LoraFactors<'a>,
    device: &B::Device,
) -> Result<(M, ParamKeys)> {
    let loader = Loader::new(weights, device, Precision::F32)
        .with_formulation(Formulation::BURN_OPS)
        .with_lora(lora.clone(), factors)?;
    let model = M::build(&loader, config)?;
    let keys = loader.param_keys();
    loader.finish(&[])?;
    let trainable: BTreeSet<ParamId> = keys
        .iter()
        .filter(|(_, info)| is_lora_key(&info.key))
        .map(|(id, _)| *id)
        .collect();
    if trainable.is_empty() {
        return Err(PipelineError::parameter(
            "target_modules",
            format!(
                "{:?} match no layer of the {}",
                lora.target_modules,
                M::CLASS_NAME
            ),
        ));
    }
    Ok((freeze_except(model, &trainable), keys))
}

impl<B: AutodiffBackend, M: Denoiser<B> + AutodiffModule<B>> Trainer<B, M>
where
    M::InnerModule: Module<B::InnerBackend>,
{
    /// A trainer of a LoRA on the pretrained model `weights` ([`build_lora_model`]):
    /// only the factors train, checkpoints hold only them
    /// ([`Trainer::resume_lora`] puts them back on the base model). A moving
    /// average is refused (`ema`): diffusers' LoRA scripts have none.
    pub fn lora(
        weights: &dyn WeightSource,
        model_config: M::Config,
        lora: LoraConfig,
        factors: LoraFactors<'_>,
        scheduler_config: Value,
        config: TrainConfig,
        device: B::Device,
    ) -> Result<Self> {
        if config.ema.is_some() {
            return Err(PipelineError::parameter(
                "ema",
                "LoRA runs keep no moving average (diffusers' LoRA scripts have none)",
            ));
        }
        let (model, keys) =
            build_lora_model::<B, M>(&model_config, weights, &lora, factors, &device)?;
        let mut trainer =
            Trainer::from_parts(model, model_config, keys, scheduler_config, config, device)?;
        trainer.lora = Some(lora);
        Ok(trainer)
    }

    /// The LoRA being trained, if the run trains one.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// The trained LoRA factors (the moving average when there is one) under
    /// peft's keys (`<module>.lora_A.weight`, `[r, in]`; `lora_B.weight`,
    /// `[out, r]`): `get_peft_model_state_dict(unet)`.
    pub fn lora_state_dict(&self) -> Result<BTreeMap<String, OwnedTensor>> {
        Ok(state_dict_where(
            &self.inference_model(),
            &self.keys,
            |info| is_lora_key(&info.key),
        )?)
    }
}

/// One component's trained factors for [`save_lora_weights`].
#[derive(Debug, Clone, Copy)]
pub struct LoraLayers<'a> {
    /// Which model they belong to.
    pub component: Component,
    /// The factors under peft's keys (see [`Trainer::lora_state_dict`]).
    pub factors: &'a BTreeMap<String, OwnedTensor>,
    /// Their config: `lora_alpha / r` is kept in the file when it is not 1.
    pub config: &'a LoraConfig,
}

/// Writes `dir/pytorch_lora_weights.safetensors` as diffusers'
/// `StableDiffusion[XL]Pipeline.save_lora_weights(dir, unet_lora_layers=
/// convert_state_dict_to_diffusers(...), ...)` does: keys prefixed with the
/// component (`unet.`, `text_encoder.`, `text_encoder_2.`), the attention
/// projections renamed to diffusers' names (`to_q.lora.down.weight`,
/// `q_proj.lora_linear_layer.down.weight`), metadata `{"format": "pt"}` and,
/// where `lora_alpha != r`, diffusers' `lora_adapter_metadata` (`unet.r`,
/// `unet.lora_alpha`, `unet.target_modules`). The file is replaced atomically.
///
/// A component whose factors reach beyond those projections (feed-forward,
/// `proj_in`, convolutions) keeps peft's names for all its keys:
/// `convert_state_dict_to_diffusers` would rename only some of them, and
/// diffusers' `load_lora_weights` converts a file by the first naming it
/// detects, silently dropping the renamed layers of such a mixed file.
pub fn save_lora_weights(dir: &Path, layers: &[LoraLayers<'_>]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|source| PipelineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut tensors = BTreeMap::new();
    let mut adapter_metadata = BTreeMap::new();
    for layer in layers {
        let prefix = layer.component.name();
        let rename = layer
            .factors
            .keys()
            .all(|k| diffusers_key(k).as_str() != k.as_str());
        for (key, tensor) in layer.factors {
            let key = if rename {
                diffusers_key(key)
            } else {
                key.clone()
            };
            tensors.insert(format!("{prefix}.{key}"), tensor.clone());
        }
        let c = layer.config;
        if c.lora_alpha != c.r as f64 {
            let alpha = if c.lora_alpha.fract() == 0.0 {
                Value::from(c.lora_alpha as i64)
            } else {
                Value::from(c.lora_alpha)
            };
            adapter_metadata.insert(format!("{prefix}.lora_alpha"), alpha);
            adapter_metadata.insert(format!("{prefix}.r"), Value::from(c.r));
            adapter_metadata.insert(
                format!("{prefix}.target_modules"),
                Value::from(c.target_modules.clone()),
            );
        }
    }
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    if !adapter_metadata.is_empty() {
        let json = serde_json::to_string_pretty(&adapter_metadata).expect("a map of JSON values");
        metadata.insert("lora_adapter_metadata".to_string(), json);
    }
    let path = dir.join(LORA_WEIGHTS_NAME);
    save_safetensors(&path, &tensors, Some(metadata))?;
    Ok(path)
}

/// The file [`save_lora_weights_kohya`] writes into its directory.
pub const KOHYA_WEIGHTS_NAME: &str = "pytorch_lora_weights_kohya.safetensors";

/// Writes `dir/pytorch_lora_weights_kohya.safetensors`: the factors in
/// kohya-ss's format, which A1111, ComfyUI and the like read, as diffusers'
/// `convert_state_dict_to_kohya` names them (`lora_unet_` / `lora_te1_` /
/// `lora_te2_` and the module path with `_` for `.`, `lora_down` /
/// `lora_up`), with one `.alpha` per module. The alpha is the config's
/// `lora_alpha` (so `alpha / rank` is the trained scale; diffusers' converter
/// writes the rank, right only when `lora_alpha == r`), an f32 scalar. The
/// file is replaced atomically.
pub fn save_lora_weights_kohya(dir: &Path, layers: &[LoraLayers<'_>]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|source| PipelineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut tensors = BTreeMap::new();
    for layer in layers {
        let prefix = match layer.component {
            Component::Unet => "lora_unet",
            Component::TextEncoder => "lora_te1",
            Component::TextEncoder2 => "lora_te2",
        };
        let alpha = OwnedTensor::f32(vec![], &[layer.config.lora_alpha as f32]);
        for (key, tensor) in layer.factors {
            let (module, factor) = match (
                key.strip_suffix(".lora_A.weight"),
                key.strip_suffix(".lora_B.weight"),
            ) {
                (Some(m), _) => (m, "lora_down"),
                (_, Some(m)) => (m, "lora_up"),
                _ => continue,
            };
            let name = format!("{prefix}_{}", module.replace('.', "_"));
            tensors.insert(format!("{name}.{factor}.weight"), tensor.clone());
            tensors.insert(format!("{name}.alpha"), alpha.clone());
        }
    }
    let path = dir.join(KOHYA_WEIGHTS_NAME);
    save_safetensors(
        &path,
        &tensors,
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
    )?;
    Ok(path)
}

/// diffusers' `convert_state_dict_to_diffusers` for peft keys
/// (`PEFT_TO_DIFFUSERS`): the UNet's attention projections and the text
/// encoders' become diffusers' older names; every other key is kept.
fn diffusers_key(peft_key: &str) -> String {
    const RENAMES: [(&str, &str); 8] = [
        ("to_k", "lora"),
        ("to_q", "lora"),
        ("to_v", "lora"),
        ("to_out.0", "lora"),
        ("q_proj", "lora_linear_layer"),
        ("k_proj", "lora_linear_layer"),
        ("v_proj", "lora_linear_layer"),
        ("out_proj", "lora_linear_layer"),
    ];
    for (factor, new) in [("lora_A", "down"), ("lora_B", "up")] {
        let Some(module) = peft_key.strip_suffix(&format!(".{factor}.weight")) else {
            continue;
        };
        for (layer, name) in RENAMES {
            let dotted = module.ends_with(&format!(".{layer}")) || module == layer;
            // `q_proj` & co. are renamed only as whole names after a dot.
            if dotted {
                return format!("{module}.{name}.{new}.weight");
            }
        }
    }
    peft_key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_convert_as_diffusers_peft_to_diffusers() {
        let unet = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
        assert_eq!(
            diffusers_key(&format!("{unet}.to_q.lora_A.weight")),
            format!("{unet}.to_q.lora.down.weight")
        );
        assert_eq!(
            diffusers_key(&format!("{unet}.to_out.0.lora_B.weight")),
            format!("{unet}.to_out.0.lora.up.weight")
        );
        assert_eq!(
            diffusers_key("down_blocks.0.attentions.0.proj_in.lora_A.weight"),
            "down_blocks.0.attentions.0.proj_in.lora_A.weight"
        );
        assert_eq!(
            diffusers_key("encoder.layers.0.self_attn.k_proj.lora_B.weight"),
            "encoder.layers.0.self_attn.k_proj.lora_linear_layer.up.weight"
        );
        assert_eq!(
            diffusers_key("encoder.layers.0.mlp.fc1.lora_A.weight"),
            "encoder.layers.0.mlp.fc1.lora_A.weight"
        );
    }
}
