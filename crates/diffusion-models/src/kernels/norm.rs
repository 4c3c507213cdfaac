//! Group normalisation on host memory in two passes over each group, with
//! the SiLU that follows it in every ResNet block fused into the second.
//!
//! Pass one takes the group's sum and sum of squares in f64 (eight lanes, so
//! the loop vectorises; the variance `E[x²] − E[x]²` loses nothing at f32
//! inputs), pass two writes `(x − mean) · scale + bias` per channel (the
//! weight folded into the scale) and, when asked,
//! `y · sigmoid(y)` with the vectorised exponential. Groups run in parallel
//! on rayon's pool.

use super::attention::Element;
use super::simd::{self, Isa, Simd, kernels};
use rayon::prelude::*;

/// Why [`group_norm`] refused its operands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "group norm of {dims:?} in {groups} groups with {weight} weights, {bias} biases and {values} values"
)]
pub struct NormShapeError {
    /// `[N, C, L]` asked for.
    pub dims: [usize; 3],
    /// Groups asked for.
    pub groups: usize,
    /// Weights given.
    pub weight: usize,
    /// Biases given.
    pub bias: usize,
    /// Input values given.
    pub values: usize,
}

/// `GroupNorm(groups, C, eps)` with per-channel `weight` and `bias` over a
/// contiguous `[N, C, L]` input, then SiLU when `silu`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm<E: Element>(
    x: &[E],
    [n, c, l]: [usize; 3],
    groups: usize,
    eps: f64,
    weight: &[f32],
    bias: &[f32],
    silu: bool,
    isa: Isa,
) -> Result<Vec<E>, NormShapeError> {
    if groups == 0
        || !c.is_multiple_of(groups)
        || weight.len() != c
        || bias.len() != c
        || x.len() != n * c * l
    {
        return Err(NormShapeError {
            dims: [n, c, l],
            groups,
            weight: weight.len(),
            bias: bias.len(),
            values: x.len(),
        });
    }
    let mut out = vec![E::from_f32(0.0); x.len()];
    let per_group = (c / groups) * l;
    if per_group == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(per_group)
        .zip(x.par_chunks(per_group))
        .enumerate()
        .for_each(|(index, (dst, src))| {
            let g = index % groups;
            let channels = c / groups;
            let mut row = vec![0f32; l];
            let (sum, sum_sq) = moments(isa, src);
            let count = per_group as f64;
            let mean = sum / count;
            let var = (sum_sq / count - mean * mean).max(0.0);
            let inv_std = 1.0 / (var + eps).sqrt();
            for ch in 0..channels {
                let channel = g * channels + ch;
                let scale = (inv_std * weight[channel] as f64) as f32;
                let span = ch * l..(ch + 1) * l;
                E::widen(&src[span.clone()], &mut row);
                affine(isa, &mut row, mean as f32, scale, bias[channel], silu);
                for (o, &y) in dst[span].iter_mut().zip(&row) {
                    *o = E::from_f32(y);
                }
            }
        });
    Ok(out)
}

/// Sum and sum of squares of a group, in f64.
fn moments<E: Element>(isa: Isa, values: &[E]) -> (f64, f64) {
    let mut row = [0f32; 512];
    let (mut sum, mut sum_sq) = (0f64, 0f64);
    for chunk in values.chunks(row.len()) {
        let part = &mut row[..chunk.len()];
        E::widen(chunk, part);
        let (s, q) = moments_f32(isa, part);
        sum += s;
        sum_sq += q;
    }
    (sum, sum_sq)
}

kernels! {
    fn moments_f32(values: &[f32]) -> (f64, f64) = moments_body;
    fn affine(row: &mut [f32], mean: f32, scale: f32, shift: f32, silu: bool) = affine_body;
}

#[inline(always)]
fn moments_body<S: Simd>(values: &[f32]) -> (f64, f64) {
    const W: usize = 8;
    let mut sum = [0f64; W];
    let mut sum_sq = [0f64; W];
    let chunks = values.chunks_exact(W);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..W {
            let v = chunk[i] as f64;
            sum[i] += v;
            sum_sq[i] += v * v;
        }
    }
    let mut s: f64 = sum.iter().sum();
    let mut q: f64 = sum_sq.iter().sum();
    for &v in tail {
        s += v as f64;
        q += v as f64 * v as f64;
    }
    (s, q)
}

/// `(x − mean) · scale + shift` (centred first: folding the mean into the
/// shift would cancel badly when a group's variance is tiny), then SiLU.
#[inline(always)]
fn affine_body<S: Simd>(row: &mut [f32], mean: f32, scale: f32, shift: f32, silu: bool) {
    if silu {
        for v in row.iter_mut() {
            let y = S::mul_add(*v - mean, scale, shift);
            *v = y / (1.0 + simd::exp::<S>(-y));
        }
    } else {
        for v in row.iter_mut() {
            *v = S::mul_add(*v - mean, scale, shift);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(3);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 6.0 + 2.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_with_and_without_silu_on_every_path() {
        for [n, c, l, g] in [
            [1, 1, 1, 1],
            [2, 6, 15, 3],
            [2, 32, 1031, 8],
            [1, 4, 4096, 2],
        ] {
            let x = values(n * c * l, 1);
            let w = values(c, 2);
            let b = values(c, 3);
            let eps = 1e-6;
            let per = c / g * l;
            let mut want = vec![0f64; x.len()];
            for i in 0..n * g {
                let group = &x[i * per..(i + 1) * per];
                let mean = group.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
                let var = group
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / per as f64;
                for (j, &v) in group.iter().enumerate() {
                    let ch = (i % g) * (c / g) + j / l;
                    want[i * per + j] =
                        (v as f64 - mean) / (var + eps).sqrt() * w[ch] as f64 + b[ch] as f64;
                }
            }
            for isa in Isa::all_available() {
                for silu in [false, true] {
                    let got = group_norm(&x, [n, c, l], g, eps, &w, &b, silu, isa).unwrap();
                    let (mut err, mut norm) = (0f64, 0f64);
                    for (&y, &t) in got.iter().zip(&want) {
                        let t = if silu { t / (1.0 + (-t).exp()) } else { t };
                        err += (y as f64 - t).powi(2);
                        norm += t * t;
                    }
                    let rel = (err / norm).sqrt();
                    assert!(
                        rel < 1e-6,
                        "{isa:?} {:?} silu {silu}: {rel:e}",
                        [n, c, l, g]
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_inconsistent_shapes() {
        let x = [0f32; 12];
        assert!(
            group_norm(
                &x,
                [1, 4, 3],
                3,
                1e-5,
                &[1.0; 4],
                &[0.0; 4],
                false,
                Isa::detect()
            )
            .is_err()
        );
        assert!(
            group_norm(
                &x,
                [1, 4, 3],
                2,
                1e-5,
                &[1.0; 3],
                &[0.0; 4],
                false,
                Isa::detect()
            )
            .is_err()
        );
        assert!(
            group_norm(
                &x,
                [1, 4, 2],
                2,
                1e-5,
                &[1.0; 4],
                &[0.0; 4],
                false,
                Isa::detect()
            )
            .is_err()
        );
        assert!(
            group_norm(
                &x,
                [1, 4, 3],
                2,
                1e-5,
                &[1.0; 4],
                &[0.0; 4],
                true,
                Isa::detect()
            )
            .is_ok()
        );
    }
}
