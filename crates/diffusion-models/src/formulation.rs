//! Which formulation the layers use for their heaviest ops.
//!
//! The same math can run as different Burn ops, and which is fastest depends
//! on the backend (and its version): on burn-cuda 0.21 two batched matmuls and
//! a softmax can beat the fused flash-attention op, and a 3×3 convolution as
//! im2col + one matmul can beat the direct convolution, because the matmul
//! kernels are the most tuned. `cargo xtask bench --component ops` times
//! every choice at a model's shapes.
//!
//! A [`Formulation`] is a value a model is built with: the [`Loader`] carries
//! one ([`Loader::with_formulation`], by default
//! [`Formulation::for_device`]) and every layer keeps the choice it was built
//! with, like diffusers' `set_attn_processor` on one model. Programs that let
//! the environment choose (`diffuse`, `diffusion-bench`) read
//! [`ATTENTION_VAR`], [`CONV_VAR`], [`GROUP_NORM_VAR`] and [`LINEAR_VAR`] themselves and hand
//! the values to [`Formulation::with_vars`], which refuses a misspelt value.
//!
//! [`Loader`]: crate::Loader
//! [`Loader::with_formulation`]: crate::Loader::with_formulation

use burn::tensor::backend::Backend;
use std::fmt;
use std::str::FromStr;

/// How scaled-dot-product attention runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionFormulation {
    /// Burn's attention op (flash attention where the backend has it).
    Fused,
    /// `softmax(q kᵀ · scale) v` as two batched matmuls, softmax in f32.
    Matmul,
    /// The crate's tiled host kernel ([`crate::kernels::attention`]: online
    /// softmax, vectorised exponential, f32 arithmetic) where the backend is
    /// burn-flex; Burn's attention op ([`AttentionFormulation::Fused`]) on
    /// every other backend, autodiff included.
    Tiled,
}

/// How convolutions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvFormulation {
    /// Burn's conv2d op.
    Direct,
    /// Unfold (im2col) + one batched matmul; a 1×1 kernel is the matmul alone.
    Im2col,
    /// The crate's implicit GEMM ([`crate::kernels::gemm::conv2d`]: patches
    /// gathered while packing, bias in the write-back) where the backend is
    /// burn-flex; Burn's conv2d ([`ConvFormulation::Direct`]) elsewhere.
    Packed,
}

/// How linear layers (and GEGLU's projection) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearFormulation {
    /// Burn's matmul, then the bias (and GEGLU's halves) as separate ops.
    Matmul,
    /// The crate's packed GEMM ([`crate::kernels::gemm`]) with the bias and
    /// GEGLU fused into its write-back, where the backend is burn-flex;
    /// [`LinearFormulation::Matmul`] on every other backend.
    Packed,
}

/// How group normalisation takes its statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupNormFormulation {
    /// One reduction over each group's `C/G · L` values.
    OnePass,
    /// Per channel over `L`, then over the group's channels: more, shorter
    /// rows, which a GPU needs (a group of SD1.5's 320×64×64 level is one
    /// row of 163,840 values).
    TwoStage,
    /// The crate's host kernel ([`crate::kernels::norm`]: two passes over
    /// each group, the following SiLU fused where the layer is followed by
    /// one) on burn-flex; [`GroupNormFormulation::OnePass`] elsewhere.
    Host,
}

/// The formulation of each heavy op, as a model is built with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Formulation {
    /// Scaled-dot-product attention (`Attention`, `CLIPAttention`).
    pub attention: AttentionFormulation,
    /// Every `Conv2d`.
    pub conv: ConvFormulation,
    /// Every `GroupNorm`.
    pub group_norm: GroupNormFormulation,
    /// Every `Linear` and GEGLU feed-forward.
    pub linear: LinearFormulation,
}

/// The variable [`Formulation::with_vars`] reads the attention choice from.
pub const ATTENTION_VAR: &str = "DIFFUSION_ATTENTION";
/// The variable [`Formulation::with_vars`] reads the convolution choice from.
pub const CONV_VAR: &str = "DIFFUSION_CONV";
/// The variable [`Formulation::with_vars`] reads the group-norm choice from.
pub const GROUP_NORM_VAR: &str = "DIFFUSION_GROUP_NORM";
/// The variable [`Formulation::with_vars`] reads the linear-layer choice from.
pub const LINEAR_VAR: &str = "DIFFUSION_LINEAR";

impl Formulation {
    /// Burn's own ops: fused attention, direct convolution, one-pass group
    /// norm. What training uses (the im2col columns would be kept for the
    /// backward pass, and the host kernels have no backward).
    pub const BURN_OPS: Formulation = Formulation {
        attention: AttentionFormulation::Fused,
        conv: ConvFormulation::Direct,
        group_norm: GroupNormFormulation::OnePass,
        linear: LinearFormulation::Matmul,
    };

    /// The CPU default: the crate's host kernels ([`crate::kernels`]: tiled
    /// attention, packed linear layers with fused bias and GEGLU, implicit-GEMM
    /// convolutions, group norm with fused SiLU) on burn-flex, Burn's ops on
    /// any other backend. Measured in docs/backends.md.
    pub const HOST_KERNELS: Formulation = Formulation {
        attention: AttentionFormulation::Tiled,
        conv: ConvFormulation::Packed,
        group_norm: GroupNormFormulation::Host,
        linear: LinearFormulation::Packed,
    };

    /// The formulations measured fastest for inference on a backend, by a
    /// name that contains `cuda` (burn-cuda 0.21 on an H100, stock kernels:
    /// with im2col + matmul the SD1.5 UNet's 3×3 convolutions took 2.8× less
    /// time and its 1×1 convolutions 15× less, and two-stage group norms
    /// 2.1 → 0.5 ms a call at 320×64×64; the step 456 → 165 ms, docs/gpu.md)
    /// or not (the CPU: [`Formulation::HOST_KERNELS`]; burn-flex runs one-pass
    /// group norms 3–10× faster than two-stage ones, docs/backends.md).
    ///
    /// Takes a device name (`cuda`, `cuda:1`, `cpu`), a bench backend
    /// (`cuda-nofusion`) or Burn's `Backend::name` (`fusion<cubecl<cuda>>`).
    pub fn for_backend(name: &str) -> Self {
        if name.contains("cuda") {
            Formulation {
                attention: AttentionFormulation::Fused,
                conv: ConvFormulation::Im2col,
                group_norm: GroupNormFormulation::TwoStage,
                linear: LinearFormulation::Matmul,
            }
        } else {
            Formulation::HOST_KERNELS
        }
    }

    /// [`Formulation::for_backend`] of backend `B` (by `B::name(device)`).
    pub fn for_device<B: Backend>(device: &B::Device) -> Self {
        Self::for_backend(&B::name(device))
    }

    /// These formulations with each one that `var` names replaced: `var` is
    /// asked for [`ATTENTION_VAR`], [`CONV_VAR`], [`GROUP_NORM_VAR`] and [`LINEAR_VAR`]
    /// (`diffuse` and `diffusion-bench` look each name up in their process
    /// environment). An unset or empty value keeps the choice; any other
    /// value must name a formulation (case-insensitive).
    pub fn with_vars(
        mut self,
        mut var: impl FnMut(&'static str) -> Option<String>,
    ) -> Result<Self, FormulationVarError> {
        fn read<T: FromStr<Err = UnknownFormulation>>(
            name: &'static str,
            value: Option<String>,
            slot: &mut T,
        ) -> Result<(), FormulationVarError> {
            let value = value.unwrap_or_default();
            if value.trim().is_empty() {
                return Ok(());
            }
            *slot = value
                .parse()
                .map_err(|e: UnknownFormulation| FormulationVarError {
                    var: name,
                    value: e.value,
                    expected: e.expected,
                })?;
            Ok(())
        }
        read(ATTENTION_VAR, var(ATTENTION_VAR), &mut self.attention)?;
        read(CONV_VAR, var(CONV_VAR), &mut self.conv)?;
        read(GROUP_NORM_VAR, var(GROUP_NORM_VAR), &mut self.group_norm)?;
        read(LINEAR_VAR, var(LINEAR_VAR), &mut self.linear)?;
        Ok(self)
    }
}

/// A name that is not one of an op's formulations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: expected one of {}", expected.join(", "))]
pub struct UnknownFormulation {
    /// The name given.
    pub value: String,
    /// The names of the op's formulations.
    pub expected: &'static [&'static str],
}

/// A variable read by [`Formulation::with_vars`] that names no formulation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: expected one of {}", expected.join(", "))]
pub struct FormulationVarError {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// The names of the op's formulations.
    pub expected: &'static [&'static str],
}

/// `FromStr` (case-insensitive) and `Display` by the names the variables use.
macro_rules! named {
    ($ty:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every formulation's name, as parsed and displayed.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The name (as parsed).
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownFormulation;

            fn from_str(s: &str) -> Result<Self, UnknownFormulation> {
                let s = s.trim();
                $(if s.eq_ignore_ascii_case($name) {
                    return Ok($ty::$variant);
                })+
                Err(UnknownFormulation {
                    value: s.to_string(),
                    expected: Self::NAMES,
                })
            }
        }
    };
}

named!(AttentionFormulation {
    Fused = "fused",
    Matmul = "matmul",
    Tiled = "tiled"
});
named!(ConvFormulation {
    Direct = "direct",
    Im2col = "im2col",
    Packed = "packed"
});
named!(GroupNormFormulation {
    OnePass = "one-pass",
    TwoStage = "two-stage",
    Host = "host"
});
named!(LinearFormulation {
    Matmul = "matmul",
    Packed = "packed"
});

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&'static str, &str)]) -> impl FnMut(&'static str) -> Option<String> {
        let map: HashMap<_, _> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn backends_get_their_measured_defaults() {
        for cuda in ["cuda", "cuda:1", "cuda-nofusion", "fusion<cubecl<cuda>>"] {
            let f = Formulation::for_backend(cuda);
            assert_eq!(f.conv, ConvFormulation::Im2col, "{cuda}");
            assert_eq!(f.group_norm, GroupNormFormulation::TwoStage, "{cuda}");
            assert_eq!(f.attention, AttentionFormulation::Fused, "{cuda}");
        }
        for cpu in ["cpu", "flex", "ndarray", "candle"] {
            assert_eq!(
                Formulation::for_backend(cpu),
                Formulation::HOST_KERNELS,
                "{cpu}"
            );
        }
        assert_eq!(
            Formulation::for_device::<crate::backend::Cpu>(&Default::default()),
            Formulation::HOST_KERNELS
        );
    }

    #[test]
    fn variables_override_or_name_the_variable() {
        let cuda = Formulation::for_backend("cuda");
        assert_eq!(cuda.with_vars(vars(&[])), Ok(cuda));
        assert_eq!(cuda.with_vars(vars(&[(CONV_VAR, " ")])), Ok(cuda));
        let f = Formulation::BURN_OPS
            .with_vars(vars(&[
                (ATTENTION_VAR, "MatMul"),
                (CONV_VAR, "im2col"),
                (GROUP_NORM_VAR, "two-stage"),
                (LINEAR_VAR, "Packed"),
            ]))
            .unwrap();
        assert_eq!(f.linear, LinearFormulation::Packed);
        assert_eq!(f.attention, AttentionFormulation::Matmul);
        assert_eq!(f.conv, ConvFormulation::Im2col);
        assert_eq!(f.group_norm, GroupNormFormulation::TwoStage);
        let err = cuda.with_vars(vars(&[(CONV_VAR, "winograd")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DIFFUSION_CONV=\"winograd\": expected one of direct, im2col, packed"
        );
        for name in GroupNormFormulation::NAMES {
            let parsed: GroupNormFormulation = name.parse().unwrap();
            assert_eq!(parsed.to_string(), *name);
        }
    }
}
