//! Learning-rate schedules, as `diffusers.optimization.get_scheduler` builds
//! them: a multiplier of the base learning rate for each optimizer step,
//! linear warm-up first where the schedule has one. Pure math, so a resumed run
//! only needs the step count.

use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// The shape of the schedule (diffusers' `--lr_scheduler` names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduleKind {
    /// The base rate throughout (warm-up ignored, as in diffusers).
    Constant,
    /// Linear warm-up, then constant.
    #[default]
    ConstantWithWarmup,
    /// Linear warm-up, then linear decay to 0 at `total_steps`.
    Linear,
    /// Linear warm-up, then half a cosine (`num_cycles` = 0.5) down to 0.
    Cosine,
    /// Linear warm-up, then `num_cycles` hard-restarted cosines.
    CosineWithRestarts,
    /// Linear warm-up, then `(1 - progress)^power` from the base rate down to `lr_end`.
    Polynomial,
}

impl LrScheduleKind {
    /// Parses diffusers' name (`"cosine_with_restarts"`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "constant" => Self::Constant,
            "constant_with_warmup" => Self::ConstantWithWarmup,
            "linear" => Self::Linear,
            "cosine" => Self::Cosine,
            "cosine_with_restarts" => Self::CosineWithRestarts,
            "polynomial" => Self::Polynomial,
            _ => return None,
        })
    }

    /// The names [`LrScheduleKind::parse`] accepts.
    pub const NAMES: &'static [&'static str] = &[
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
    ];
}

/// A schedule: kind, warm-up and length.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// The shape.
    pub kind: LrScheduleKind,
    /// Steps of linear warm-up from 0.
    pub warmup_steps: u64,
    /// Steps the decaying schedules reach 0 at.
    pub total_steps: u64,
    /// Cosine cycles (`None`: diffusers' default, 0.5 for `cosine`, 1 for restarts).
    pub num_cycles: Option<f64>,
    /// Exponent of `polynomial` (diffusers: 1).
    pub power: f64,
    /// Final rate of `polynomial`, absolute (diffusers: 1e-7).
    pub lr_end: f64,
}

impl LrSchedule {
    /// `kind` with `warmup_steps` over `total_steps`, diffusers' other defaults.
    pub fn new(kind: LrScheduleKind, warmup_steps: u64, total_steps: u64) -> Self {
        LrSchedule {
            kind,
            warmup_steps,
            total_steps,
            num_cycles: None,
            power: 1.0,
            lr_end: 1e-7,
        }
    }

    /// The learning rate of optimizer step `step` (0-based) for base rate `lr`.
    pub fn lr(&self, lr: f64, step: u64) -> f64 {
        lr * self.multiplier(lr, step)
    }

    /// The multiplier of the base rate `lr` at `step` (`lr` matters only to
    /// `polynomial`, whose floor is absolute).
    pub fn multiplier(&self, lr: f64, step: u64) -> f64 {
        let (s, w, n) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if self.kind == LrScheduleKind::Constant {
            return 1.0;
        }
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        let progress = (s - w) / (n - w).max(1.0);
        match self.kind {
            LrScheduleKind::Constant | LrScheduleKind::ConstantWithWarmup => 1.0,
            LrScheduleKind::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
            LrScheduleKind::Cosine => {
                let cycles = self.num_cycles.unwrap_or(0.5);
                (0.5 * (1.0 + (PI * cycles * 2.0 * progress).cos())).max(0.0)
            }
            LrScheduleKind::CosineWithRestarts => {
                if progress >= 1.0 {
                    return 0.0;
                }
                let cycles = self.num_cycles.unwrap_or(1.0);
                (0.5 * (1.0 + (PI * ((cycles * progress) % 1.0)).cos())).max(0.0)
            }
            LrScheduleKind::Polynomial => {
                if step > self.total_steps {
                    return self.lr_end / lr;
                }
                let pct_remaining = 1.0 - (s - w) / (n - w);
                ((lr - self.lr_end) * pct_remaining.powf(self.power) + self.lr_end) / lr
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_shapes() {
        let s = |k| LrSchedule::new(k, 2, 6);
        let m = |k, i| s(k).multiplier(1.0, i);
        assert_eq!(m(LrScheduleKind::Constant, 0), 1.0);
        assert_eq!(m(LrScheduleKind::ConstantWithWarmup, 1), 0.5);
        assert_eq!(m(LrScheduleKind::Linear, 4), 0.5);
        assert!((m(LrScheduleKind::Cosine, 4) - 0.5).abs() < 1e-12);
        assert_eq!(m(LrScheduleKind::CosineWithRestarts, 6), 0.0);
        assert_eq!(LrScheduleKind::parse("nope"), None);
        for name in LrScheduleKind::NAMES {
            assert!(LrScheduleKind::parse(name).is_some());
        }
    }
}
