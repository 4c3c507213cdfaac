//! Which formulation the layers use for their heaviest ops.
//!
//! The same math can run as different Burn ops, and which is fastest depends
//! on the backend (and its version): on burn-cuda 0.21 two batched matmuls and
//! a softmax can beat the fused flash-attention op, and a 3×3 convolution as
//! im2col + one matmul can beat the direct convolution, because the matmul
//! kernels are the most tuned. `cargo xtask bench --component ops` times
//! every choice at a model's shapes. The choice is process-wide, like
//! diffusers' `set_attn_processor`, and can also be made from the
//! environment (`DIFFUSION_ATTENTION=fused|matmul`, `DIFFUSION_CONV=direct|im2col`,
//! `DIFFUSION_GROUP_NORM=one-pass|two-stage`) for benchmarking without a
//! rebuild. Programs call [`init_from_env`] (or [`init_from_env_or`] with
//! [`defaults_for`] their backend) at start-up so that a misspelt value is an
//! error rather than the default.

use std::sync::atomic::{AtomicU8, Ordering};

/// How scaled-dot-product attention runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Burn's attention op (flash attention where the backend has it).
    Fused,
    /// `softmax(q kᵀ · scale) v` as two batched matmuls, softmax in f32.
    Matmul,
}

/// How convolutions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    /// Burn's conv2d op.
    Direct,
    /// Unfold (im2col) + one batched matmul; a 1×1 kernel is the matmul alone.
    Im2col,
}

/// How group normalisation takes its statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupNormKernel {
    /// One reduction over each group's `C/G · L` values.
    OnePass,
    /// Per channel over `L`, then over the group's channels: more, shorter
    /// rows, which a GPU needs (a group of SD1.5's 320×64×64 level is one
    /// row of 163,840 values).
    TwoStage,
}

/// The three choices, as [`defaults_for`] gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    pub attention: AttentionKernel,
    pub conv: ConvKernel,
    pub group_norm: GroupNormKernel,
}

/// An environment variable that names no formulation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: expected one of {}", expected.join(", "))]
pub struct KernelChoiceError {
    pub var: &'static str,
    pub value: String,
    pub expected: Vec<&'static str>,
}

/// Read `DIFFUSION_ATTENTION`, `DIFFUSION_CONV` and `DIFFUSION_GROUP_NORM`
/// now. An unset or empty variable keeps the default; any other value must
/// name a formulation.
pub fn init_from_env() -> Result<(), KernelChoiceError> {
    init_from_env_or(defaults_for("cpu"))
}

/// [`init_from_env`] with other defaults for unset variables: a program picks
/// the formulations measured fastest on the backend it runs (see
/// [`defaults_for`]).
pub fn init_from_env_or(defaults: Kernels) -> Result<(), KernelChoiceError> {
    for (switch, default) in [
        (&ATTENTION, defaults.attention as usize),
        (&CONV, defaults.conv as usize),
        (&GROUP_NORM, defaults.group_norm as usize),
    ] {
        let value = std::env::var(switch.var).ok();
        let chosen = switch.parse(value.as_deref())?;
        let unset = value.as_deref().is_none_or(|v| v.trim().is_empty());
        switch.set(if unset { default } else { chosen });
    }
    Ok(())
}

/// The formulations measured fastest for inference on a backend, by its
/// kind: `"cuda"` (burn-cuda 0.21 on an H100, stock kernels: with im2col +
/// matmul the SD1.5 UNet's 3×3 convolutions took 2.8× less time and its 1×1
/// convolutions 15× less, and two-stage group norms 2.1 → 0.5 ms a call at
/// 320×64×64; the step 456 → 165 ms, docs/gpu.md) or anything else (the CPU:
/// Burn's own ops and one-pass group norms, which burn-flex runs 3–10×
/// faster than two-stage ones, docs/backends.md).
pub fn defaults_for(backend: &str) -> Kernels {
    if backend.starts_with("cuda") {
        Kernels {
            attention: AttentionKernel::Fused,
            conv: ConvKernel::Im2col,
            group_norm: GroupNormKernel::TwoStage,
        }
    } else {
        Kernels {
            attention: AttentionKernel::Fused,
            conv: ConvKernel::Direct,
            group_norm: GroupNormKernel::OnePass,
        }
    }
}

/// A process-wide choice among `names`, first read from `var`.
struct Switch {
    /// 0 = not read yet, else the index into `names` plus one.
    cell: AtomicU8,
    var: &'static str,
    names: [&'static str; 2],
}

impl Switch {
    const fn new(var: &'static str, names: [&'static str; 2]) -> Self {
        Switch {
            cell: AtomicU8::new(0),
            var,
            names,
        }
    }

    /// The chosen index: set, else the environment's, else 0 (an invalid
    /// value, which [`init_from_env`] reports, also gives 0 here).
    fn get(&self) -> usize {
        let v = self.cell.load(Ordering::Relaxed);
        if v != 0 {
            return usize::from(v - 1);
        }
        let value = std::env::var(self.var).ok();
        let i = self.parse(value.as_deref()).unwrap_or(0);
        self.set(i);
        i
    }

    /// The index `value` names (case-insensitive); unset or empty is 0.
    fn parse(&self, value: Option<&str>) -> Result<usize, KernelChoiceError> {
        let value = value.unwrap_or_default().trim();
        if value.is_empty() {
            return Ok(0);
        }
        self.names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(value))
            .ok_or_else(|| KernelChoiceError {
                var: self.var,
                value: value.to_string(),
                expected: self.names.to_vec(),
            })
    }

    fn set(&self, i: usize) {
        self.cell.store(i as u8 + 1, Ordering::Relaxed);
    }
}

static ATTENTION: Switch = Switch::new("DIFFUSION_ATTENTION", ["fused", "matmul"]);
static CONV: Switch = Switch::new("DIFFUSION_CONV", ["direct", "im2col"]);
static GROUP_NORM: Switch = Switch::new("DIFFUSION_GROUP_NORM", ["one-pass", "two-stage"]);

/// The attention formulation in use (default [`AttentionKernel::Fused`]).
pub fn attention() -> AttentionKernel {
    [AttentionKernel::Fused, AttentionKernel::Matmul][ATTENTION.get()]
}

/// Chooses the attention formulation (process-wide).
pub fn set_attention(kernel: AttentionKernel) {
    ATTENTION.set(kernel as usize);
}

/// The convolution formulation in use (default [`ConvKernel::Direct`]).
pub fn conv() -> ConvKernel {
    [ConvKernel::Direct, ConvKernel::Im2col][CONV.get()]
}

/// Chooses the convolution formulation (process-wide).
pub fn set_conv(kernel: ConvKernel) {
    CONV.set(kernel as usize);
}

/// The group-norm statistics in use (default [`GroupNormKernel::OnePass`]).
pub fn group_norm() -> GroupNormKernel {
    [GroupNormKernel::OnePass, GroupNormKernel::TwoStage][GROUP_NORM.get()]
}

/// Chooses the group-norm statistics (process-wide).
pub fn set_group_norm(kernel: GroupNormKernel) {
    GROUP_NORM.set(kernel as usize);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_parse_or_name_the_variable() {
        assert_eq!(ATTENTION.parse(None), Ok(0));
        assert_eq!(ATTENTION.parse(Some("")), Ok(0));
        assert_eq!(ATTENTION.parse(Some("MatMul")), Ok(1));
        assert_eq!(CONV.parse(Some("im2col")), Ok(1));
        assert_eq!(defaults_for("cuda-nofusion").conv, ConvKernel::Im2col);
        assert_eq!(defaults_for("cpu").conv, ConvKernel::Direct);
        assert_eq!(defaults_for("cpu").group_norm, GroupNormKernel::OnePass);
        assert_eq!(GROUP_NORM.parse(Some("two-stage")), Ok(1));
        let err = CONV.parse(Some("winograd")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DIFFUSION_CONV=\"winograd\": expected one of direct, im2col"
        );
    }
}
