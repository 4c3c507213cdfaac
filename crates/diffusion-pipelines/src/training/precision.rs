//! Mixed-precision training: f32 master weights, a half-precision forward and
//! backward pass, and (for f16) dynamic loss scaling.
//!
//! What accelerate's `--mixed_precision fp16|bf16` does for diffusers' training
//! scripts, built from Burn's pieces:
//!
//! * The trainer keeps its weights, AdamW moments and moving average in f32.
//!   For each step it casts every parameter to f16/bf16 ([`cast_params`]);
//!   Burn's autodiff records the casts, so the gradients arrive on the f32
//!   weights (in f32) and the optimizer never sees a half-precision value.
//! * The network runs on half-precision activations. Its numerically fragile
//!   parts already keep f32 inside (group-norm statistics, attention's softmax,
//!   the timestep embedding), which is what autocast's f32 op list is for in
//!   PyTorch; the prediction is cast back to f32 and the loss taken in f32, as
//!   the scripts' `F.mse_loss(model_pred.float(), target.float())`.
//! * f16 gradients underflow (its smallest normal is 6e-5), so the loss is
//!   multiplied by a [`GradScaler`] scale before the backward pass and the
//!   gradients divided by it after; a step whose gradients overflowed is
//!   skipped and the scale halved, and after `growth_interval` clean steps it
//!   doubles: `torch.amp.GradScaler`'s rule and defaults. bf16 has f32's
//!   exponent range and needs no scaling (accelerate uses none either).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use diffusion_models::nn::to_dtype;
use serde::{Deserialize, Serialize};

/// The precision of the forward and backward pass (`--mixed_precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    /// Everything in f32.
    #[default]
    No,
    /// f16 activations and gradients, dynamic loss scaling.
    Fp16,
    /// bf16 activations and gradients.
    Bf16,
}

impl MixedPrecision {
    /// The names accepted by [`MixedPrecision::parse`], as accelerate spells them.
    pub const NAMES: [&'static str; 3] = ["no", "fp16", "bf16"];

    /// `"no"`, `"fp16"` or `"bf16"`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "no" => Some(Self::No),
            "fp16" => Some(Self::Fp16),
            "bf16" => Some(Self::Bf16),
            _ => None,
        }
    }

    /// The dtype the network runs in, `None` for f32.
    pub fn dtype(self) -> Option<DType> {
        match self {
            Self::No => None,
            Self::Fp16 => Some(DType::F16),
            Self::Bf16 => Some(DType::BF16),
        }
    }

    /// Whether the loss needs scaling (f16 only).
    pub fn needs_loss_scaling(self) -> bool {
        self == Self::Fp16
    }
}

/// `module` with every float parameter cast to `dtype`. On an autodiff
/// backend the casts are recorded, so gradients flow back to the original
/// (f32) parameters; the ids are kept. Used for one forward pass: the result
/// is not a module to train or save.
pub fn cast_params<B: Backend, M: Module<B>>(module: M, dtype: DType) -> M {
    struct Cast(DType);
    impl<B: Backend> ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, to_dtype(tensor, self.0), mapper)
        }
    }
    module.map(&mut Cast(dtype))
}

/// Dynamic loss scaling, as `torch.amp.GradScaler` (and so accelerate's fp16
/// mode): the loss is multiplied by `scale` before the backward pass; a step
/// whose gradients hold an infinity or NaN is skipped and the scale multiplied
/// by `backoff_factor`; after `growth_interval` consecutive clean steps it is
/// multiplied by `growth_factor`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    /// The current loss scale.
    pub scale: f64,
    /// Factor after `growth_interval` clean steps (PyTorch: 2).
    pub growth_factor: f64,
    /// Factor after an overflow (PyTorch: 0.5).
    pub backoff_factor: f64,
    /// Clean steps before the scale grows (PyTorch: 2000).
    pub growth_interval: u64,
    /// Clean steps since the last change of scale.
    pub growth_tracker: u64,
}

impl Default for GradScaler {
    /// PyTorch's defaults: `init_scale = 2**16`.
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }
}

impl GradScaler {
    /// A scaler starting at `scale` with PyTorch's other defaults.
    pub fn with_scale(scale: f64) -> Self {
        GradScaler {
            scale,
            ..Self::default()
        }
    }

    /// Refuses a state `torch.amp.GradScaler` would refuse or that would stall
    /// (a scale that is not a positive finite number, a growth factor not
    /// above 1, a backoff factor outside (0, 1), a zero interval), naming the
    /// field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let bad = |field: &str, value: String, rule: &str| {
            Err(format!("{field} {value}: must be {rule}"))
        };
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad("scale", self.scale.to_string(), "positive and finite");
        }
        if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            return bad("growth_factor", self.growth_factor.to_string(), "above 1");
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return bad(
                "backoff_factor",
                self.backoff_factor.to_string(),
                "in (0, 1)",
            );
        }
        if self.growth_interval == 0 {
            return bad("growth_interval", "0".into(), "at least 1");
        }
        Ok(())
    }

    /// After a step: back off when the gradients overflowed, else count the
    /// clean step and grow the scale every `growth_interval` of them.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_parse() {
        for name in MixedPrecision::NAMES {
            let p = MixedPrecision::parse(name).unwrap();
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!(name));
        }
        assert_eq!(MixedPrecision::parse("fp8"), None);
        assert_eq!(MixedPrecision::Bf16.dtype(), Some(DType::BF16));
        assert!(MixedPrecision::Fp16.needs_loss_scaling());
        assert!(!MixedPrecision::Bf16.needs_loss_scaling());
    }

    #[test]
    fn scaler_backs_off_on_overflow_and_grows_after_the_interval() {
        let mut s = GradScaler {
            growth_interval: 3,
            ..GradScaler::default()
        };
        s.update(false);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 2));
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
    }

    #[test]
    fn a_scaler_that_would_stall_is_refused_naming_the_field() {
        assert!(GradScaler::default().validate().is_ok());
        for (scaler, field) in [
            (GradScaler::with_scale(0.0), "scale"),
            (GradScaler::with_scale(f64::INFINITY), "scale"),
            (
                GradScaler {
                    growth_factor: 1.0,
                    ..GradScaler::default()
                },
                "growth_factor",
            ),
            (
                GradScaler {
                    backoff_factor: 1.0,
                    ..GradScaler::default()
                },
                "backoff_factor",
            ),
            (
                GradScaler {
                    growth_interval: 0,
                    ..GradScaler::default()
                },
                "growth_interval",
            ),
        ] {
            let err = scaler.validate().unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
    }
}
