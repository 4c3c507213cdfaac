//! Schedule math shared by several schedulers: betas and cumulative alphas,
//! timestep spacing, sigma schedules (Karras, exponential, beta) and the
//! timestep <-> sigma interpolation. Everything is `f64`.
//!
//! Where diffusers stores a table in `float32` (betas, `alphas_cumprod`, the log
//! sigma table) we round our `f64` values to `f32` at the same point, so both
//! libraries start every schedule from bit-identical tables; the arithmetic after
//! that stays in `f64`.

use crate::config::BetaSchedule;
use crate::error::{Result, SchedulerError};
use crate::scheduler::TimestepSpec;
use crate::tensor::SchedulerTensor;

/// Round to the nearest `f32`, as diffusers' `float32` tables do.
#[inline]
pub fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// `np.linspace(start, end, n)` (inclusive end).
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            (0..n)
                .map(|i| {
                    if i == n - 1 {
                        end
                    } else {
                        start + step * i as f64
                    }
                })
                .collect()
        }
    }
}

/// `np.round`: round half to even.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.arange(start, stop, step)` for a float step.
pub fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let n = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..n).map(|i| start + i as f64 * step).collect()
}

/// `np.arange(start, stop, step)` filled exactly as numpy does it:
/// `start + i * delta` with `delta = (start + step) - start` (which can differ
/// from `step` in the last bits), used where diffusers' schedule comes from
/// `np.arange` with a non-integer step and the result is rounded afterwards.
pub fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return vec![];
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// Glide's `betas_for_alpha_bar` with the cosine transform, capped at `max_beta`.
pub fn betas_for_alpha_bar_cosine(n: usize, max_beta: f64) -> Vec<f64> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// `torch.linspace(start, end, n, dtype=torch.float32)` on the CPU, bit for bit:
/// the step is computed in `f32`, the first half counts up from `start` and the
/// second half down from `end`, each element one fused multiply-add.
///
/// (Evaluating the ramp in `f64` and rounding once is the same thing, because the
/// `f64` product of an `f32` step and a small integer is exact; evaluating it in
/// `f64` without the `f32` step differs from torch in the last bit for about a
/// quarter of the entries, which matters where a schedule is ill-conditioned,
/// e.g. `x0` at `t = 999`.)
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => return vec![],
        1 => return vec![f32r(start)],
        _ => {}
    }
    let (s, e) = (start as f32, end as f32);
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            let v = if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((n - i - 1) as f32, e)
            };
            v as f64
        })
        .collect()
}

/// `torch.linspace(start, end, n)` in `float32` with the multiply and the add
/// rounded separately (no fused multiply-add): the ramp the Euler and EDM Euler
/// schedulers were verified with (their Karras/log-sigma ramps). It differs from
/// [`torch_linspace_f32`] in the last bit for some entries, so the two are kept
/// apart to preserve each scheduler's numbers.
pub fn torch_linspace_f32_unfused(start: f64, end: f64, n: usize) -> Vec<f64> {
    let (start, end) = (start as f32, end as f32);
    match n {
        0 => vec![],
        1 => vec![start as f64],
        _ => {
            let step = (end - start) / (n - 1) as f32;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        (start + step * i as f32) as f64
                    } else {
                        (end - step * (n - i - 1) as f32) as f64
                    }
                })
                .collect()
        }
    }
}

/// The training betas, rounded to `f32` as diffusers stores them.
pub fn make_betas(
    n: usize,
    beta_start: f64,
    beta_end: f64,
    schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
) -> Vec<f64> {
    let betas = if let Some(b) = trained_betas {
        b.to_vec()
    } else {
        match schedule {
            BetaSchedule::Linear => torch_linspace_f32(beta_start, beta_end, n),
            BetaSchedule::ScaledLinear => torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), n)
                .into_iter()
                .map(|b| f32r(b * b))
                .collect(),
            BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar_cosine(n, 0.999),
            BetaSchedule::Sigmoid => torch_linspace_f32(-6.0, 6.0, n)
                .into_iter()
                .map(|x| {
                    let s = f32r(1.0 / (1.0 + (-x).exp()));
                    f32r(s * (beta_end - beta_start) + beta_start)
                })
                .collect(),
        }
    };
    betas.into_iter().map(f32r).collect()
}

/// Zero terminal SNR rescaling (Lin et al. 2023, Algorithm 1), with every
/// operation rounded to `f32` as diffusers' torch code does it.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let ac = cumprod_alphas(betas);
    let mut v: Vec<f64> = ac.iter().map(|a| f32r(a.sqrt())).collect();
    let first = v[0];
    let last = v[v.len() - 1];
    let scale = f32r(first / f32r(first - last));
    for x in &mut v {
        *x = f32r(f32r(*x - last) * scale);
    }
    let alpha_bar: Vec<f64> = v.iter().map(|x| f32r(x * x)).collect();
    let mut out = Vec::with_capacity(betas.len());
    out.push(f32r(1.0 - alpha_bar[0]));
    for i in 1..alpha_bar.len() {
        out.push(f32r(1.0 - f32r(alpha_bar[i] / alpha_bar[i - 1])));
    }
    out
}

/// `cumprod(1 - betas)`, accumulated in `f64` and stored as `f32` (torch's CPU cumprod).
pub fn cumprod_alphas(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|b| {
            acc *= f32r(1.0 - b);
            f32r(acc)
        })
        .collect()
}

/// The cumulative alphas of a config: betas, optional zero-SNR rescale, cumprod.
/// Returns `(betas, alphas_cumprod)`.
pub fn alphas_cumprod(
    n: usize,
    beta_start: f64,
    beta_end: f64,
    schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
    rescale_zero_snr: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut betas = make_betas(n, beta_start, beta_end, schedule, trained_betas);
    if rescale_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let ac = cumprod_alphas(&betas);
    (betas, ac)
}

/// [`alphas_cumprod`] for the schedulers that divide by it (sigma tables,
/// log-SNR): with zero-terminal-SNR rescaling the last entry is exactly 0, and
/// diffusers sets it to `2**-24` so that the first sigma stays finite.
pub fn sigma_alphas_cumprod(
    n: usize,
    beta_start: f64,
    beta_end: f64,
    schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
    rescale_zero_snr: bool,
) -> Vec<f64> {
    let (_, mut ac) = alphas_cumprod(
        n,
        beta_start,
        beta_end,
        schedule,
        trained_betas,
        rescale_zero_snr,
    );
    if rescale_zero_snr && let Some(last) = ac.last_mut() {
        *last = 2f64.powi(-24);
    }
    ac
}

/// The training sigma table `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`,
/// indexed by training timestep. diffusers evaluates it on a `float32` tensor, so
/// every operation (subtract, divide, sqrt) is rounded to `f32` here; rounding
/// only the `f64` result differs in the last bit for some entries.
pub fn sigmas_from_alphas_cumprod(ac: &[f64]) -> Vec<f64> {
    ac.iter()
        .map(|&a| {
            let a = a as f32;
            ((1.0f32 - a) / a).sqrt() as f64
        })
        .collect()
}

/// `np.log` of an `f32` sigma table as the `f64` logarithm rounded to `f32`
/// (the table of Euler, LMS, DPM-Solver multistep and DEIS).
pub fn log_table(sigmas: &[f64]) -> Vec<f64> {
    sigmas.iter().map(|s| f32r(s.ln())).collect()
}

/// `np.log` of an `f32` sigma table evaluated as an `f32` logarithm (the table of
/// DPM-Solver singlestep, UniPC and the Heun/KDPM2 family). The `f32` `ln`
/// differs from the rounded `f64` one ([`log_table`]) in the last bit for about
/// one value in 700, so each scheduler keeps the one it was verified with.
pub fn log_table_f32(sigmas: &[f64]) -> Vec<f64> {
    sigmas.iter().map(|&s| (s as f32).ln() as f64).collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep of `sigma`, by
/// linear interpolation in log-sigma over the training table. The low index is
/// the last entry not above `log(sigma)` (0 if none; for an ascending table this
/// is numpy's argmax of the cumulative count), clipped so that a high neighbour
/// exists; tables of fewer than two entries give 0.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    let low_idx = log_sigmas
        .iter()
        .rposition(|&ls| log_sigma - ls >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `np.interp(x, xp, fp)` for ascending `xp`.
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[n - 1] {
        return fp[n - 1];
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    let (x0, x1) = (xp[j], xp[j + 1]);
    let t = (x - x0) / (x1 - x0);
    fp[j] + t * (fp[j + 1] - fp[j])
}

/// Karras et al. (2022) sigmas, rho = 7, from `sigma_max` down to `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Exponentially spaced sigmas (log-linear) from `sigma_max` to `sigma_min`.
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// "Beta Sampling is All You Need" sigmas: `sigma_min + ppf(1 - r) * (sigma_max - sigma_min)`
/// with the Beta(0.6, 0.6) quantile function.
pub fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| sigma_min + beta_ppf(1.0 - r, 0.6, 0.6) * (sigma_max - sigma_min))
        .collect()
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the regularized incomplete beta function (modified Lentz).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    let tiny = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Regularized incomplete beta function I_x(a, b).
pub fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(1.0 - x, b, a) / b
    }
}

/// Quantile function of Beta(a, b), by bisection to full `f64` precision.
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Tracks where a scheduler is in its schedule: diffusers' `_step_index` and
/// `_begin_index` (set by img2img pipelines that start part-way).
#[derive(Debug, Clone, Default)]
pub struct StepIndex {
    pub step_index: Option<usize>,
    pub begin_index: Option<usize>,
}

impl StepIndex {
    pub fn reset(&mut self) {
        self.step_index = None;
        self.begin_index = None;
    }

    /// diffusers' `index_for_timestep`: the position of `t` in `schedule`; when it
    /// occurs more than once (img2img starting mid-schedule), the second occurrence.
    /// Compared as `f32`, the precision diffusers stores timesteps in, so a
    /// timestep read back from diffusers (or from an f32 tensor) is found.
    pub fn index_for_timestep(t: f64, schedule: &[f64]) -> Result<usize> {
        let hits: Vec<usize> = schedule
            .iter()
            .enumerate()
            .filter(|(_, v)| **v as f32 == t as f32)
            .map(|(i, _)| i)
            .collect();
        match hits.len() {
            0 => Err(SchedulerError::UnknownTimestep(t)),
            1 => Ok(hits[0]),
            _ => Ok(hits[1]),
        }
    }

    /// The current step index, initialising it from `t` on the first call.
    pub fn current(&mut self, t: f64, schedule: &[f64]) -> Result<usize> {
        if let Some(i) = self.step_index {
            return Ok(i);
        }
        let i = match self.begin_index {
            Some(b) => b,
            None => Self::index_for_timestep(t, schedule)?,
        };
        self.step_index = Some(i);
        Ok(i)
    }

    /// Which index `step` works on, without committing it: the running index,
    /// else the begin index, else the position of `t` in `schedule`.
    pub fn peek(&self, t: f64, schedule: &[f64]) -> Result<usize> {
        match (self.step_index, self.begin_index) {
            (Some(i), _) => Ok(i),
            (None, Some(b)) => Ok(b),
            (None, None) => Self::index_for_timestep(t, schedule),
        }
    }

    /// The schedule index of each of `timesteps` for diffusers' sigma-based
    /// `add_noise`: without a begin index every timestep is looked up; during
    /// denoising (a step index is set) the current step; before it the begin index.
    pub fn add_noise_indices(&self, timesteps: &[f64], schedule: &[f64]) -> Result<Vec<usize>> {
        match (self.begin_index, self.step_index) {
            (None, _) => timesteps
                .iter()
                .map(|&t| Self::index_for_timestep(t, schedule))
                .collect(),
            (Some(_), Some(i)) => Ok(vec![i; timesteps.len()]),
            (Some(b), None) => Ok(vec![b; timesteps.len()]),
        }
    }

    /// Commit a step taken at index `i` (found with [`StepIndex::peek`], so that
    /// a step that fails leaves the index as it was).
    pub fn advance_from(&mut self, i: usize) {
        self.step_index = Some(i + 1);
    }

    pub fn advance(&mut self) {
        if let Some(i) = self.step_index.as_mut() {
            *i += 1;
        }
    }
}

/// Refuse a model output/sample pair of different shapes or with non-finite values.
pub fn check_step_inputs<T: SchedulerTensor>(model_output: &T, sample: &T) -> Result<()> {
    check_step_shapes(model_output, sample)?;
    check_finite(model_output, sample)
}

/// Refuse a step whose model output or sample holds a non-finite value (it
/// would poison the sample and any history kept from it).
pub fn check_finite<T: SchedulerTensor>(model_output: &T, sample: &T) -> Result<()> {
    if !model_output.all_finite() {
        return Err(SchedulerError::NonFinite("model_output"));
    }
    if !sample.all_finite() {
        return Err(SchedulerError::NonFinite("sample"));
    }
    Ok(())
}

/// The tensors a step reads besides its inputs (the noise, a scheduler's
/// stored history or samples) have the shape of `like`: a run whose latent
/// changed shape is refused before any state changes.
pub fn check_state_shapes<'a, T: SchedulerTensor + 'a>(
    like: &T,
    tensors: impl IntoIterator<Item = &'a T>,
) -> Result<()> {
    let expected = like.shape();
    for t in tensors {
        if t.shape() != expected {
            return Err(SchedulerError::ShapeMismatch {
                what: "step input",
                expected,
                got: t.shape(),
            });
        }
    }
    Ok(())
}

/// `model_output` and `sample` have one shape (the finiteness checks come
/// after a step's noise draw: [`step_noise`]).
pub fn check_step_shapes<T: SchedulerTensor>(model_output: &T, sample: &T) -> Result<()> {
    if model_output.shape() != sample.shape() {
        return Err(SchedulerError::ShapeMismatch {
            what: "model_output vs sample",
            expected: sample.shape(),
            got: model_output.shape(),
        });
    }
    Ok(())
}

/// Noise for a step, drawn before its finiteness checks, as diffusers draws
/// it before anything can fail: a step refused for a non-finite input has used one
/// noise tensor (a replayed stream cannot go on after such an error anyway).
/// When the source fails and an input is non-finite, the non-finite input is
/// the error reported (as when the check came first).
pub fn step_noise<T: SchedulerTensor>(
    noise: &mut dyn crate::tensor::NoiseSource<T>,
    model_output: &T,
    sample: &T,
) -> Result<T> {
    noise
        .noise(model_output)
        .map_err(|e| check_step_inputs(model_output, sample).err().unwrap_or(e))
}

/// The `num_inference_steps` of a spec for a scheduler that takes no custom
/// timesteps or sigmas.
pub fn require_steps(spec: &TimestepSpec, class: &'static str) -> Result<usize> {
    if spec.timesteps.is_some() || spec.sigmas.is_some() {
        return Err(SchedulerError::Unsupported {
            class,
            what: "custom timesteps or sigmas".into(),
        });
    }
    spec.num_inference_steps
        .ok_or(SchedulerError::InvalidArgument {
            field: "num_inference_steps",
            value: "None".into(),
            reason: "required".into(),
        })
}

/// Validate `num_inference_steps` against the training range.
pub fn check_num_steps(n: usize, num_train_timesteps: usize) -> Result<()> {
    if n == 0 {
        return Err(SchedulerError::InvalidArgument {
            field: "num_inference_steps",
            value: n.to_string(),
            reason: "must be at least 1".into(),
        });
    }
    if n > num_train_timesteps {
        return Err(SchedulerError::InvalidArgument {
            field: "num_inference_steps",
            value: n.to_string(),
            reason: format!("cannot exceed num_train_timesteps = {num_train_timesteps}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_ppf_matches_scipy() {
        // scipy.stats.beta.ppf(q, 0.6, 0.6)
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-14);
        // The distribution is symmetric about 1/2 for a = b.
        assert!((beta_cdf(0.25, 0.6, 0.6) + beta_cdf(0.75, 0.6, 0.6) - 1.0).abs() < 1e-13);
        let x = beta_ppf(0.1, 0.6, 0.6);
        assert!((beta_cdf(x, 0.6, 0.6) - 0.1).abs() < 1e-13);
    }

    #[test]
    fn torch_linspace_is_bit_exact() {
        // torch.linspace(0.0001, 0.02, 1000, dtype=torch.float32)[[1, 499, 500, 998]] (torch 2.x CPU).
        let v = torch_linspace_f32(0.0001, 0.02, 1000);
        // Index 500 is where f32-rounding an f64 linspace gives 0.010059960186481476 instead.
        let torch = [
            0.00011991991777904332,
            0.010040040127933025,
            0.010059959255158901,
            0.01998008042573929,
        ];
        for (i, expected) in [1, 499, 500, 998].into_iter().zip(torch) {
            assert_eq!(v[i], expected, "index {i}");
        }
        // torch.linspace(sqrt(0.00085), sqrt(0.012), 1000) (Stable Diffusion's scaled_linear).
        let v = torch_linspace_f32(0.00085f64.sqrt(), 0.012f64.sqrt(), 1000);
        let torch = [
            0.029235228896141052,
            0.06930939853191376,
            0.06938986480236053,
            0.10946403443813324,
        ];
        for (i, expected) in [1, 499, 500, 998].into_iter().zip(torch) {
            assert_eq!(v[i], expected, "scaled index {i}");
        }
        let v = torch_linspace_f32(0.0001, 0.02, 1000);
        assert_eq!(v[0], 0.0001f32 as f64);
        assert_eq!(v[999], 0.02f32 as f64);
        assert!(v.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(torch_linspace_f32(-6.0, 6.0, 3), vec![-6.0, 0.0, 6.0]);
    }

    #[test]
    fn rounding_is_half_even() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(-0.5), 0.0);
        assert_eq!(round_half_even(2.6), 3.0);
    }

    #[test]
    fn interp_and_sigma_to_t() {
        assert_eq!(interp(1.5, &[0.0, 1.0, 2.0], &[0.0, 10.0, 20.0]), 15.0);
        let logs = [0.0, 1.0, 2.0];
        assert!((sigma_to_t(1.5f64.exp(), &logs) - 1.5).abs() < 1e-12);
        assert_eq!(sigma_to_t(100.0, &logs), 2.0);
    }
}
