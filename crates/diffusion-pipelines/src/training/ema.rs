//! Exponential moving average of the weights, with the semantics of
//! diffusers' `EMAModel`: the decay ramps up with the number of optimizer
//! steps (`(1 + s) / (10 + s)`, or `1 - (1 + s / inv_gamma)^-power` with
//! warm-up), is capped at `decay` and floored at `min_decay`, and is 0 (copy)
//! until `update_after_step` has passed.

use serde::{Deserialize, Serialize};

/// `EMAModel`'s constructor arguments, with its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmaConfig {
    /// Upper bound of the decay.
    pub decay: f64,
    /// Lower bound of the decay.
    pub min_decay: f64,
    /// Optimizer steps before averaging starts (the shadow copies the weights until then).
    pub update_after_step: u64,
    /// The `1 - (1 + s/inv_gamma)^-power` ramp instead of `(1 + s)/(10 + s)`.
    pub use_ema_warmup: bool,
    /// Ramp time scale.
    pub inv_gamma: f64,
    /// Ramp exponent (2/3 for long runs, 3/4 for short ones).
    pub power: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig {
            decay: 0.9999,
            min_decay: 0.0,
            update_after_step: 0,
            use_ema_warmup: false,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
        }
    }
}

impl EmaConfig {
    /// The decay used by the update after optimizer step number
    /// `optimization_step` (1-based, as `EMAModel.step` counts).
    pub fn decay_at(&self, optimization_step: u64) -> f64 {
        let step = optimization_step.saturating_sub(self.update_after_step + 1) as f64;
        if step <= 0.0 {
            return 0.0;
        }
        let value = if self.use_ema_warmup {
            1.0 - (1.0 + step / self.inv_gamma).powf(-self.power)
        } else {
            (1.0 + step) / (10.0 + step)
        };
        value.min(self.decay).max(self.min_decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_ramps_and_is_capped() {
        let c = EmaConfig::default();
        assert_eq!(c.decay_at(1), 0.0);
        assert!((c.decay_at(2) - 2.0 / 11.0).abs() < 1e-15);
        assert_eq!(c.decay_at(10_000_000), 0.9999);
        let w = EmaConfig {
            use_ema_warmup: true,
            update_after_step: 3,
            ..c
        };
        assert_eq!(w.decay_at(4), 0.0);
        assert!((w.decay_at(5) - (1.0 - 2f64.powf(-2.0 / 3.0))).abs() < 1e-15);
    }
}
