//! Trainable LoRA layers, as peft's `LoraLayer` adds them to a model for
//! fine-tuning (`unet.add_adapter(LoraConfig(...))` in diffusers' training
//! scripts): beside each targeted Linear, `y = W·x + b + s · B·(A·x)` with
//! `A` `[r, in]`, `B` `[out, r]` and `s = lora_alpha / r`, where `A` and `B`
//! are parameters of the model (on the autodiff backend they receive
//! gradients) and the base weight stays as loaded; beside a targeted Conv2d,
//! `A` is a conv of the layer's kernel and `B` a 1×1 conv, as peft's.
//!
//! Unlike the inference adapters of [`crate::adapter`] (host tensors loaded
//! from a file, switchable at run time), these are module fields: a
//! [`Loader`](crate::Loader) given a [`LoraConfig`] puts a [`TrainableLora`]
//! on every Linear (a [`TrainableConvLora`] on every Conv2d) whose diffusers
//! key the config targets, recording the
//! factors' keys (`<module>.lora_A.weight`, `<module>.lora_B.weight`, peft's
//! names) so the trained factors are written back by key.

use crate::error::{ModelError, Result};
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Serialize};

/// How fresh factors are drawn (peft's `init_lora_weights`); `B` is zero
/// either way, so a fresh adapter leaves the model's output unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// `A ~ N(0, 1/r)`: `init_lora_weights="gaussian"`, what diffusers'
    /// LoRA training scripts use.
    #[default]
    Gaussian,
    /// `A ~ U(-1/√in, 1/√in)` (kaiming-uniform with `a = √5`): peft's default.
    Kaiming,
}

/// Which layers get a trainable LoRA and its size (peft's `LoraConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// `r`: the factors' inner width.
    pub r: usize,
    /// `lora_alpha`: the path is scaled by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Module names as peft matches them: a layer whose key equals a name or
    /// ends with `.name` (`to_q` matches `…attn1.to_q`).
    pub target_modules: Vec<String>,
    /// How fresh factors are drawn.
    #[serde(default)]
    pub init_lora_weights: LoraInit,
}

impl LoraConfig {
    /// diffusers' text-to-image and DreamBooth LoRA scripts' UNet adapter:
    /// `r = lora_alpha = rank` on the attention projections, gaussian init.
    pub fn attention(rank: usize) -> Self {
        LoraConfig {
            r: rank,
            lora_alpha: rank as f64,
            target_modules: ["to_k", "to_q", "to_v", "to_out.0"]
                .map(String::from)
                .to_vec(),
            init_lora_weights: LoraInit::Gaussian,
        }
    }

    /// `lora_alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Whether the layer at `module` (its diffusers key) gets an adapter.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| {
            module == t
                || module
                    .strip_suffix(t.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }

    /// Refuses a config no layer can train with, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(ModelError::Config {
                source_name: "LoRA config".into(),
                field: field.into(),
                message,
            })
        };
        if self.r == 0 {
            return bad("r", "the rank must be at least 1".into());
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return bad(
                "lora_alpha",
                format!("{}: must be a finite number above 0", self.lora_alpha),
            );
        }
        if self.target_modules.is_empty() || self.target_modules.iter().any(|t| t.is_empty()) {
            return bad(
                "target_modules",
                "name at least one module, none empty".into(),
            );
        }
        Ok(())
    }
}

/// The trainable low-rank path beside one Linear.
#[derive(Module, Debug)]
pub struct TrainableLora<B: Backend> {
    /// `lora_A`, held transposed as `[in, r]` (stored `[r, in]`).
    pub down: Param<Tensor<B, 2>>,
    /// `lora_B`, held transposed as `[r, out]` (stored `[out, r]`).
    pub up: Param<Tensor<B, 2>>,
    /// `lora_alpha / r`.
    pub scaling: f64,
}

impl<B: Backend> TrainableLora<B> {
    /// `s · B·(A·x)` over the last dimension of `x`, in `x`'s float type.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let [din, r] = self.down.dims();
        let dout = self.up.dims()[1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let down = x.reshape([rows, din]).matmul(self.down.val());
        debug_assert_eq!(down.dims()[1], r);
        let y = down.matmul(self.up.val()).mul_scalar(self.scaling);
        let mut out = dims;
        out[D - 1] = dout;
        y.reshape(out)
    }
}

/// The trainable low-rank path beside one Conv2d (peft's LoRA `Conv2d`):
/// `s · B(A(x))` with `A` a conv of the layer's kernel, stride and padding
/// into `r` channels and `B` a 1×1 conv back to the layer's outputs.
#[derive(Module, Debug)]
pub struct TrainableConvLora<B: Backend> {
    /// `lora_A` `[r, in, k, k]`.
    pub down: Param<Tensor<B, 4>>,
    /// `lora_B` `[out, r, 1, 1]`.
    pub up: Param<Tensor<B, 4>>,
    /// The layer's stride.
    pub stride: usize,
    /// The layer's padding.
    pub padding: usize,
    /// `lora_alpha / r`.
    pub scaling: f64,
}

impl<B: Backend> TrainableConvLora<B> {
    /// `s · B(A(x))` for `x` `[N, C, H, W]`, in `x`'s float type.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (s, p) = (self.stride, self.padding);
        let down = conv2d(
            x,
            self.down.val(),
            None,
            ConvOptions::new([s, s], [p, p], [1, 1], 1),
        );
        conv2d(
            down,
            self.up.val(),
            None,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        )
        .mul_scalar(self.scaling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_whole_names_as_peft() {
        let c = LoraConfig::attention(4);
        assert!(c.targets("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"));
        assert!(c.targets("mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"));
        assert!(c.targets("to_k"));
        assert!(!c.targets("down_blocks.0.attentions.0.transformer_blocks.0.attn1.add_to_q"));
        assert!(!c.targets("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.1"));
        assert!(!c.targets("down_blocks.0.attentions.0.proj_in"));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let mut c = LoraConfig::attention(0);
        assert!(c.validate().unwrap_err().to_string().contains("`r`"));
        c.r = 4;
        c.lora_alpha = f64::NAN;
        assert!(c.validate().unwrap_err().to_string().contains("lora_alpha"));
        c.lora_alpha = 4.0;
        c.target_modules.clear();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("target_modules")
        );
    }
}
