//! `FlowMatchEulerDiscreteScheduler`: Euler steps of a rectified-flow ODE (SD3,
//! Flux, ...). The model predicts the velocity `v = noise - x0`; the sample at
//! noise level `sigma` is `(1 - sigma) * x0 + sigma * noise`, and a step is
//! `x += (sigma_next - sigma) * v`. Timesteps are `sigma * num_train_timesteps`
//! (fractional).
//!
//! Sigma schedule: a linear ramp, then a static `shift` (`s' = k s / (1 + (k - 1) s)`)
//! or, with `use_dynamic_shifting`, a resolution-dependent time shift by `mu`
//! passed to `set_timesteps` (`exponential`: `e^mu / (e^mu + 1/s - 1)`; `linear`:
//! `mu / (mu + 1/s - 1)`), optionally stretched so that it ends at
//! `shift_terminal`, optionally replaced by Karras/exponential/beta sigmas, and
//! optionally inverted (`1 - sigma`, Mochi). Custom `sigmas` and/or `timesteps`
//! are accepted.
//!
//! diffusers has no `scale_model_input` (here: the identity), no
//! `init_noise_sigma` (here: 1) and noises with `scale_noise`; [`Scheduler::add_noise`]
//! implements `scale_noise`'s interpolation `sigma * noise + (1 - sigma) * sample`,
//! not the additive `sample + sigma * noise` of the variance-exploding schedulers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{self, StepIndex, f32r};
use crate::config::invalid;
use crate::error::{Result, SchedulerError};
use crate::scheduler::{Scheduler, StepOptions, StepOutput, TimestepSpec, check_batch_timesteps};
use crate::sigmas::{SigmaSpacing, check_step_tensors, step_position};
use crate::tensor::{NoiseSource, SchedulerTensor};

pub const CLASS_NAME: &str = "FlowMatchEulerDiscreteScheduler";

/// The form of the dynamic (resolution-dependent) time shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeShiftType {
    Exponential,
    Linear,
}

/// diffusers' `FlowMatchEulerDiscreteScheduler` config, with its defaults.
/// `base_shift`, `max_shift`, `base_image_seq_len` and `max_image_seq_len` are
/// read by pipelines to compute `mu`; the scheduler only keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerDiscreteConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: Option<f64>,
    pub max_shift: Option<f64>,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub invert_sigmas: bool,
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub time_shift_type: TimeShiftType,
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchEulerDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
        }
    }
}

/// The flow-matching Euler sampler.
#[derive(Debug, Clone)]
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowMatchEulerDiscreteConfig,
    kind: SigmaSpacing,
    shift: f64,
    /// Last and first sigma of the training schedule (`f32` values).
    sigma_min: f64,
    sigma_max: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
}

/// Rounding after each operation: identity for diffusers' `float64` numpy
/// arrays, `f32` for its `float32` ones (custom sigmas/timesteps).
type Round = fn(f64) -> f64;

fn exact(x: f64) -> f64 {
    x
}

impl FlowMatchEulerDiscreteScheduler {
    pub fn new(config: FlowMatchEulerDiscreteConfig) -> Result<Self> {
        let kind = SigmaSpacing::from_flags(
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        crate::config::check_train_timesteps(config.num_train_timesteps, 1)?;
        if !(config.shift.is_finite() && config.shift > 0.0) {
            return Err(invalid("shift", config.shift, "must be a positive number"));
        }
        if let Some(st) = config.shift_terminal
            && !(st.is_finite() && (0.0..1.0).contains(&st))
        {
            return Err(invalid("shift_terminal", st, "must lie in [0, 1)"));
        }
        let n = config.num_train_timesteps;
        // The training schedule, in f32 as diffusers' torch tensors.
        let shift = config.shift;
        let sigmas: Vec<f64> = common::linspace(1.0, n as f64, n)
            .into_iter()
            .rev()
            .map(|t| {
                let s = f32r(f32r(t) / n as f64);
                if config.use_dynamic_shifting {
                    s
                } else {
                    static_shift(shift, s, f32r)
                }
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| f32r(s * n as f64)).collect();
        Ok(Self {
            sigma_min: sigmas[n - 1],
            sigma_max: sigmas[0],
            config,
            kind,
            shift,
            timesteps,
            sigmas,
            num_inference_steps: None,
            index: StepIndex::default(),
        })
    }

    pub fn config(&self) -> &FlowMatchEulerDiscreteConfig {
        &self.config
    }

    /// The static shift used by the next `set_timesteps` (diffusers' `shift` property).
    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// Change the static shift for the next `set_timesteps` (diffusers' `set_shift`).
    pub fn set_shift(&mut self, shift: f64) -> Result<()> {
        if !(shift.is_finite() && shift > 0.0) {
            return Err(SchedulerError::InvalidArgument {
                field: "shift",
                value: shift.to_string(),
                reason: "must be a positive number".into(),
            });
        }
        self.shift = shift;
        Ok(())
    }

    /// diffusers' `scale_noise`: `sigma * noise + (1 - sigma) * sample`, with sigma
    /// looked up as diffusers does (see [`Scheduler::add_noise`]).
    pub fn scale_noise<T: SchedulerTensor>(
        &self,
        sample: &T,
        timesteps: &[f64],
        noise: &T,
    ) -> Result<T> {
        check_batch_timesteps(sample, noise, timesteps)?;
        let indices = self.index.add_noise_indices(timesteps, &self.timesteps)?;
        let sigma = indices
            .iter()
            .map(|&i| {
                self.sigmas
                    .get(i)
                    .copied()
                    .ok_or(SchedulerError::PastLastStep(i))
            })
            .collect::<Result<Vec<f64>>>()?;
        let keep: Vec<f64> = sigma.iter().map(|s| f32r(1.0 - s)).collect();
        Ok(T::linear_combination(&[
            (1.0, &noise.scale_batch(&sigma)),
            (1.0, &sample.scale_batch(&keep)),
        ]))
    }

    fn shift_sigma(&self, s: f64, mu: Option<f64>, r: Round) -> f64 {
        if !self.config.use_dynamic_shifting {
            return static_shift(self.shift, s, r);
        }
        let mu = mu.unwrap_or(0.0);
        let tail = r(r(1.0 / s) - 1.0);
        match self.config.time_shift_type {
            TimeShiftType::Exponential => {
                let e = r(mu.exp());
                r(e / r(e + tail))
            }
            TimeShiftType::Linear => {
                let m = r(mu);
                r(m / r(m + tail))
            }
        }
    }
}

/// `shift * s / (1 + (shift - 1) * s)`, rounding each operation with `r`.
fn static_shift(shift: f64, s: f64, r: Round) -> f64 {
    let k = r(shift);
    let k1 = r(shift - 1.0);
    r(r(k * s) / r(1.0 + r(k1 * s)))
}

fn bad_arg(field: &'static str, value: impl ToString, reason: &str) -> SchedulerError {
    SchedulerError::InvalidArgument {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn build<T: SchedulerTensor + Send + 'static>(
    json: &Value,
) -> Result<(Box<dyn Scheduler<T>>, Vec<String>)> {
    crate::build_boxed::<T, FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler>(
        json,
        FlowMatchEulerDiscreteScheduler::new,
    )
}

impl<T: SchedulerTensor> Scheduler<T> for FlowMatchEulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        CLASS_NAME
    }

    fn config(&self) -> Value {
        crate::config_json(CLASS_NAME, &self.config)
    }

    fn order(&self) -> usize {
        1
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }

    fn set_timesteps_with(&mut self, spec: &TimestepSpec) -> Result<()> {
        let train = self.config.num_train_timesteps as f64;
        if self.config.use_dynamic_shifting {
            match spec.mu {
                None => {
                    return Err(bad_arg(
                        "mu",
                        "None",
                        "required when use_dynamic_shifting is set",
                    ));
                }
                Some(mu) if !mu.is_finite() => return Err(bad_arg("mu", mu, "must be finite")),
                _ => {}
            }
        }
        for (field, values) in [("sigmas", &spec.sigmas), ("timesteps", &spec.timesteps)] {
            if let Some(v) = values {
                if v.is_empty() {
                    return Err(bad_arg(field, "[]", "must not be empty"));
                }
                if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                    return Err(bad_arg(field, bad, "every value must be finite"));
                }
            }
        }
        if let (Some(s), Some(t)) = (&spec.sigmas, &spec.timesteps)
            && s.len() != t.len()
        {
            return Err(bad_arg(
                "timesteps",
                format!("{} values", t.len()),
                &format!("must have as many values as sigmas ({})", s.len()),
            ));
        }
        let n = match spec.num_inference_steps {
            Some(n) => {
                let custom = spec.sigmas.as_ref().or(spec.timesteps.as_ref());
                if let Some(c) = custom
                    && c.len() != n
                {
                    return Err(bad_arg(
                        "num_inference_steps",
                        n,
                        &format!("custom sigmas/timesteps have {} values", c.len()),
                    ));
                }
                n
            }
            None => match (&spec.sigmas, &spec.timesteps) {
                (Some(s), _) => s.len(),
                (None, Some(t)) => t.len(),
                (None, None) => {
                    return Err(bad_arg(
                        "num_inference_steps",
                        "None",
                        "pass num_inference_steps, sigmas or timesteps",
                    ));
                }
            },
        };
        if spec.sigmas.is_none() && spec.timesteps.is_none() {
            // Same bounds as every scheduler: 1 ..= num_train_timesteps.
            common::check_num_steps(n, self.config.num_train_timesteps)?;
        } else if n == 0 {
            return Err(bad_arg("num_inference_steps", 0, "must be at least 1"));
        }

        // 1. The unshifted sigmas: float64 from the default ramp, float32 from
        //    custom sigmas or timesteps.
        let custom_timesteps: Option<Vec<f64>> = spec
            .timesteps
            .as_ref()
            .map(|t| t.iter().map(|&v| f32r(v)).collect());
        let (mut sigmas, r): (Vec<f64>, Round) = match (&spec.sigmas, &custom_timesteps) {
            (Some(s), _) => (s.iter().map(|&v| f32r(v)).collect(), f32r),
            (None, Some(t)) => (t.iter().map(|&v| f32r(v / train)).collect(), f32r),
            (None, None) => (
                common::linspace(self.sigma_max * train, self.sigma_min * train, n)
                    .into_iter()
                    .map(|t| t / train)
                    .collect(),
                exact,
            ),
        };
        // 2. Static or dynamic shift.
        for s in &mut sigmas {
            *s = self.shift_sigma(*s, spec.mu, r);
        }
        // 3. Stretch to end at shift_terminal.
        if let Some(st) = self.config.shift_terminal
            && st != 0.0
        {
            let last = r(1.0 - sigmas[sigmas.len() - 1]);
            let scale = r(last / r(1.0 - st));
            for s in &mut sigmas {
                *s = r(1.0 - r(r(1.0 - *s) / scale));
            }
        }
        // 4. Karras / exponential / beta, from the current first and last sigma.
        let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
        sigmas = match self.kind {
            SigmaSpacing::Interpolated => sigmas,
            SigmaSpacing::Karras => common::karras_sigmas(min, max, n),
            SigmaSpacing::Exponential => common::exponential_sigmas(min, max, n),
            SigmaSpacing::Beta => common::beta_sigmas(min, max, n),
        };
        // 5. float32 tensors; timesteps are sigma * N unless given.
        let mut sigmas: Vec<f64> = sigmas.into_iter().map(f32r).collect();
        let mut timesteps: Vec<f64> = match custom_timesteps {
            Some(t) => t,
            None => sigmas.iter().map(|s| f32r(s * train)).collect(),
        };
        // 6. Terminal sigma (1 when inverted).
        if self.config.invert_sigmas {
            for s in &mut sigmas {
                *s = f32r(1.0 - *s);
            }
            timesteps = sigmas.iter().map(|s| f32r(s * train)).collect();
            sigmas.push(1.0);
        } else {
            sigmas.push(0.0);
        }
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.num_inference_steps = Some(n);
        self.index.reset();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn scale_model_input(&mut self, sample: &T, _t: f64) -> Result<T> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &T,
        t: f64,
        sample: &T,
        _options: &StepOptions,
        noise: &mut dyn NoiseSource<T>,
    ) -> Result<StepOutput<T>> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialized("step"));
        }
        common::check_step_shapes(model_output, sample)?;
        let i = step_position(&self.index, t, &self.timesteps, &self.sigmas)?;
        let (sigma, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
        let noise = if self.config.stochastic_sampling {
            Some(common::step_noise(noise, model_output, sample)?)
        } else {
            None
        };
        check_step_tensors(model_output, sample, &noise)?;

        let prev_sample = match noise {
            // Re-noise the x0 estimate to sigma_next with fresh noise.
            Some(noise) => {
                let x0 = T::linear_combination(&[(1.0, sample), (-sigma, model_output)]);
                let x0_coeff = f32r(1.0 - sigma_next);
                T::linear_combination(&[(x0_coeff, &x0), (sigma_next, &noise)])
            }
            None => {
                let dt = f32r(sigma_next - sigma);
                T::linear_combination(&[(1.0, sample), (dt, model_output)])
            }
        };

        self.index.advance_from(i);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: None,
        })
    }

    /// diffusers' `scale_noise` (flow matching interpolates rather than adds):
    /// `sigma * noise + (1 - sigma) * original`.
    fn add_noise(&self, original: &T, noise: &T, timesteps: &[f64]) -> Result<T> {
        self.scale_noise(original, timesteps, noise)
    }

    fn set_begin_index(&mut self, begin: usize) {
        self.index.begin_index = Some(begin);
    }

    fn begin_index(&self) -> Option<usize> {
        self.index.begin_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuTensor, NoNoise, QueuedNoise};

    fn flow(config: Value) -> Box<dyn Scheduler<CpuTensor>> {
        crate::from_config_as::<CpuTensor>(CLASS_NAME, &config)
            .unwrap()
            .scheduler
    }

    fn spec(n: Option<usize>, sigmas: Option<Vec<f64>>, mu: Option<f64>) -> TimestepSpec {
        TimestepSpec {
            num_inference_steps: n,
            sigmas,
            mu,
            ..TimestepSpec::default()
        }
    }

    #[test]
    fn default_schedule() {
        let mut s = flow(serde_json::json!({}));
        s.set_timesteps(4).unwrap();
        // linspace(1000, 1, 4) / 1000, unshifted, then a final 0.
        assert_eq!(s.timesteps(), &[1000.0, 667.0, 334.0, 1.0]);
        let sig = s.sigmas().unwrap();
        assert_eq!(sig.len(), 5);
        assert_eq!(sig[0], 1.0);
        assert_eq!(sig[4], 0.0);
        assert_eq!(s.init_noise_sigma(), 1.0);
        assert_eq!(s.order(), 1);
        // scale_model_input is the identity.
        let x = CpuTensor::new(vec![1.0, 2.0], vec![1, 2]).unwrap();
        assert_eq!(s.scale_model_input(&x, 1000.0).unwrap(), x);
    }

    #[test]
    fn shifted_and_inverted() {
        let mut s = flow(serde_json::json!({"shift": 3.0}));
        s.set_timesteps_with(&spec(None, Some(vec![0.5]), None))
            .unwrap();
        // 3 * 0.5 / (1 + 2 * 0.5) = 0.75
        assert_eq!(s.sigmas().unwrap(), &[0.75, 0.0]);
        assert_eq!(s.timesteps(), &[750.0]);
        let mut inv = flow(serde_json::json!({"invert_sigmas": true}));
        inv.set_timesteps_with(&spec(None, Some(vec![0.75, 0.25]), None))
            .unwrap();
        assert_eq!(inv.sigmas().unwrap(), &[0.25, 0.75, 1.0]);
        assert_eq!(inv.timesteps(), &[250.0, 750.0]);
    }

    #[test]
    fn dynamic_shift_needs_mu() {
        let mut s = flow(serde_json::json!({"use_dynamic_shifting": true}));
        assert!(matches!(
            s.set_timesteps(10),
            Err(SchedulerError::InvalidArgument { field: "mu", .. })
        ));
        s.set_timesteps_with(&spec(None, Some(vec![0.5]), Some(0.0)))
            .unwrap();
        // exp(0) / (exp(0) + 1 / 0.5 - 1) = 0.5
        assert_eq!(s.sigmas().unwrap(), &[0.5, 0.0]);
        let mut lin = flow(serde_json::json!({"use_dynamic_shifting": true,
            "time_shift_type": "linear"}));
        lin.set_timesteps_with(&spec(None, Some(vec![0.5]), Some(3.0)))
            .unwrap();
        assert_eq!(lin.sigmas().unwrap(), &[0.75, 0.0]);
    }

    #[test]
    fn euler_and_stochastic_steps() {
        let mut s = flow(serde_json::json!({}));
        s.set_timesteps_with(&spec(None, Some(vec![1.0, 0.5]), None))
            .unwrap();
        let x = CpuTensor::new(vec![2.0, -2.0], vec![1, 2]).unwrap();
        let v = CpuTensor::new(vec![1.0, 1.0], vec![1, 2]).unwrap();
        let out = s
            .step(&v, 1000.0, &x, &StepOptions::default(), &mut NoNoise)
            .unwrap();
        assert_eq!(out.prev_sample.data(), &[1.5, -2.5]);
        assert!(out.pred_original_sample.is_none());

        let mut st = flow(serde_json::json!({"stochastic_sampling": true}));
        st.set_timesteps_with(&spec(None, Some(vec![1.0, 0.5]), None))
            .unwrap();
        let z = CpuTensor::new(vec![4.0, 0.0], vec![1, 2]).unwrap();
        let mut noise = QueuedNoise::new(vec![z.clone(), z]);
        // x0 = x - 1 * v = [1, -3]; prev = 0.5 * x0 + 0.5 * z
        let out = st
            .step(&v, 1000.0, &x, &StepOptions::default(), &mut noise)
            .unwrap();
        assert_eq!(out.prev_sample.data(), &[2.5, -1.5]);
        st.step(&v, 500.0, &x, &StepOptions::default(), &mut noise)
            .unwrap();
        assert_eq!(noise.used(), 2);
        assert!(matches!(
            st.step(&v, 500.0, &x, &StepOptions::default(), &mut noise),
            Err(SchedulerError::PastLastStep(_))
        ));
    }

    #[test]
    fn add_noise_is_scale_noise() {
        let mut s = flow(serde_json::json!({}));
        s.set_timesteps_with(&spec(None, Some(vec![1.0, 0.25]), None))
            .unwrap();
        let x = CpuTensor::new(vec![4.0, 4.0], vec![2, 1]).unwrap();
        let z = CpuTensor::new(vec![-4.0, -4.0], vec![2, 1]).unwrap();
        let y = s.add_noise(&x, &z, &[1000.0, 250.0]).unwrap();
        // sigma * noise + (1 - sigma) * sample
        assert_eq!(y.data(), &[-4.0, 2.0]);
        s.set_begin_index(1);
        let y = s.add_noise(&x, &z, &[1000.0]).unwrap();
        assert_eq!(y.data(), &[2.0, 2.0]);
        assert!(matches!(
            flow(serde_json::json!({})).add_noise(&x, &z, &[123.4]),
            Err(SchedulerError::UnknownTimestep(_))
        ));
    }

    #[test]
    fn set_shift_changes_next_schedule() {
        let mut s = FlowMatchEulerDiscreteScheduler::new(Default::default()).unwrap();
        s.set_shift(3.0).unwrap();
        assert_eq!(s.shift(), 3.0);
        assert!(s.set_shift(0.0).is_err());
        Scheduler::<CpuTensor>::set_timesteps_with(&mut s, &spec(None, Some(vec![0.5]), None))
            .unwrap();
        assert_eq!(Scheduler::<CpuTensor>::sigmas(&s).unwrap(), &[0.75, 0.0]);
    }

    #[test]
    fn rejects_bad_config_and_calls() {
        let field_of = |json: Value| match crate::from_config_as::<CpuTensor>(CLASS_NAME, &json) {
            Err(SchedulerError::InvalidValue { field, .. }) => field,
            Err(SchedulerError::InvalidConfig { field, .. }) => field,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted {json}"),
        };
        assert_eq!(
            field_of(serde_json::json!({"time_shift_type": "cubic"})),
            "time_shift_type"
        );
        assert_eq!(field_of(serde_json::json!({"shift": 0.0})), "shift");
        assert_eq!(
            field_of(serde_json::json!({"shift_terminal": 1.0})),
            "shift_terminal"
        );
        assert_eq!(
            field_of(serde_json::json!({"use_karras_sigmas": true, "use_beta_sigmas": true})),
            "use_karras_sigmas"
        );
        // `shift_terminal: 0` is off, as in diffusers.
        assert!(
            crate::from_config_as::<CpuTensor>(
                CLASS_NAME,
                &serde_json::json!({"shift_terminal": 0.0})
            )
            .is_ok()
        );

        let mut s = flow(serde_json::json!({}));
        let x = CpuTensor::zeros(vec![1, 2]);
        assert!(matches!(
            s.step(&x, 1000.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::NotInitialized("step"))
        ));
        let bad = [
            spec(None, None, None),
            spec(Some(0), None, None),
            spec(Some(3), Some(vec![1.0, 0.5]), None),
            spec(None, Some(vec![]), None),
            spec(None, Some(vec![1.0, f64::NAN]), None),
            TimestepSpec {
                sigmas: Some(vec![1.0, 0.5]),
                timesteps: Some(vec![1000.0]),
                ..TimestepSpec::default()
            },
        ];
        for b in bad {
            assert!(
                matches!(
                    s.set_timesteps_with(&b),
                    Err(SchedulerError::InvalidArgument { .. })
                ),
                "{b:?}"
            );
        }
        s.set_timesteps(3).unwrap();
        let y = CpuTensor::zeros(vec![1, 3]);
        assert!(matches!(
            s.step(&y, 1000.0, &x, &StepOptions::default(), &mut NoNoise),
            Err(SchedulerError::ShapeMismatch { .. })
        ));
    }
}
