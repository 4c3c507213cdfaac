//! The loops behind [`crate::CpuTensor`], compiled three times: for baseline
//! x86-64 (SSE2), AVX2 and AVX-512, picked at run time. A scheduler step is a few
//! multiply-adds per element over cache-resident data, so the vector width is
//! most of its speed; a plain `memcpy` (the bench's floor) already uses the
//! widest vectors the CPU has.
//!
//! No FMA: Rust never contracts `a * b + c`, and every version rounds each
//! product and each sum to `f32` exactly as the operation-at-a-time code does.

use crate::fused::{Op, Program, Val};

/// Elements per chunk of a fused pass: a program's intermediate values for one
/// chunk (4 KiB each) stay in L1.
const CHUNK: usize = 1024;

/// Runs `$body` through a copy of itself compiled for the widest vector
/// extension the CPU has.
macro_rules! with_avx2 {
    (fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        with_avx2! { fn $name($($arg: $ty),*) -> () $body }
    };
    (fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Exponent bits all ones: infinite or NaN. Branch-free so that it vectorizes.
#[inline(always)]
fn non_finite_bits(x: &[f32]) -> u32 {
    const EXP: u32 = 0x7f80_0000;
    x.iter()
        .fold(0u32, |acc, v| acc | ((v.to_bits() & EXP) == EXP) as u32)
}

/// Comparisons rather than `f32::max/min`: they vectorize, and a NaN passes
/// through as in `torch.clamp`.
#[inline(always)]
fn clamp1(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi { hi } else { v }
}

with_avx2! {
    fn all_finite(data: &[f32]) -> bool {
        non_finite_bits(data) == 0
    }
}

with_avx2! {
    fn clamp_in_place(data: &mut [f32], lo: f32, hi: f32) {
        for v in data.iter_mut() {
            *v = clamp1(*v, lo, hi);
        }
    }
}

with_avx2! {
    fn linear_extend(out: &mut Vec<f32>, coeffs: &[f32], xs: &[&[f32]]) {
        // Chunk by chunk: the first term writes the chunk, the others accumulate
        // into it while it is in L1; left to right, as the trait specifies.
        let n = xs[0].len();
        let base = out.len();
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let c0 = coeffs[0];
            out.extend(xs[0][start..end].iter().map(|v| c0 * v));
            let dst = &mut out[base + start..base + end];
            for (&c, x) in coeffs.iter().zip(xs).skip(1) {
                for (d, v) in dst.iter_mut().zip(&x[start..end]) {
                    *d += c * v;
                }
            }
        }
    }
}

/// An [`Op`] with its coefficients already rounded to `f32`.
pub(crate) enum OpF32 {
    Linear(Vec<(f32, Val)>),
    Clamp(Val, f32, f32),
}

/// Run `program` over `inputs` chunk by chunk, appending each output's values to
/// `out` (one empty buffer per output). Returns, per input, whether it was
/// finite (computed for checked inputs only; `true` for the others).
pub(crate) fn evaluate(
    program: &Program,
    inputs: &[&[f32]],
    outputs: &[Val],
    out: &mut [Vec<f32>],
) -> Vec<bool> {
    let ops: Vec<OpF32> = program
        .ops()
        .iter()
        .map(|op| match op {
            Op::Linear(terms) => OpF32::Linear(terms.iter().map(|&(c, v)| (c as f32, v)).collect()),
            Op::Clamp { x, min, max } => OpF32::Clamp(*x, *min as f32, *max as f32),
        })
        .collect();
    // An operation that is an output is computed straight into its output
    // buffer (the first output naming it); the others into an L1-sized scratch.
    let mut home: Vec<Option<usize>> = vec![None; ops.len()];
    for (o, v) in outputs.iter().enumerate() {
        if let Val::Op(k) = *v
            && home[k].is_none()
        {
            home[k] = Some(o);
        }
    }
    let checked: Vec<bool> = program.input_names().iter().map(Option::is_some).collect();
    let mut scratch = vec![0.0f32; ops.len() * CHUNK];
    let mut bad = vec![0u32; inputs.len()];
    let plan = Plan {
        ops: &ops,
        home: &home,
        inputs,
        checked: &checked,
        outputs,
    };
    evaluate_chunks(&plan, out, &mut scratch, &mut bad);
    bad.iter().map(|&b| b < NON_FINITE).collect()
}

/// What [`evaluate_chunks`] reads.
pub(crate) struct Plan<'a> {
    ops: &'a [OpF32],
    home: &'a [Option<usize>],
    inputs: &'a [&'a [f32]],
    checked: &'a [bool],
    outputs: &'a [Val],
}

/// The smallest `|x|` bit pattern of an infinity or NaN.
const NON_FINITE: u32 = 0x7f80_0000;

/// Where an operation writes its chunk.
enum Dst<'a> {
    Scratch(&'a mut [f32]),
    /// Appended to an output buffer.
    Output(&'a mut Vec<f32>),
}

impl Dst<'_> {
    #[inline(always)]
    fn fill(&mut self, values: impl Iterator<Item = f32>) {
        match self {
            Dst::Scratch(d) => d.iter_mut().zip(values).for_each(|(d, v)| *d = v),
            Dst::Output(buf) => buf.extend(values),
        }
    }

    /// The chunk just filled.
    #[inline(always)]
    fn filled(&mut self, len: usize) -> &mut [f32] {
        match self {
            Dst::Scratch(d) => &mut d[..len],
            Dst::Output(buf) => {
                let end = buf.len();
                &mut buf[end - len..]
            }
        }
    }
}

with_avx2! {
    fn evaluate_chunks(plan: &Plan, out: &mut [Vec<f32>], scratch: &mut [f32], bad: &mut [u32]) {
        let n = plan.inputs.first().map_or(0, |x| x.len());
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let len = end - start;
            // Finiteness: the largest |x| bit pattern, compared once at the end.
            for ((x, &check), bad) in plan.inputs.iter().zip(plan.checked).zip(bad.iter_mut()) {
                if check {
                    *bad = x[start..end]
                        .iter()
                        .fold(*bad, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
                }
            }
            for (k, op) in plan.ops.iter().enumerate() {
                let (done, rest) = scratch.split_at_mut(k * CHUNK);
                let mut taken = plan.home[k].map(|o| std::mem::take(&mut out[o]));
                let out_ro: &[Vec<f32>] = out;
                let src = |v: Val| -> &[f32] {
                    match v {
                        Val::Input(i) => &plan.inputs[i][start..end],
                        Val::Op(j) => match plan.home[j] {
                            Some(o) => &out_ro[o][start..end],
                            None => &done[j * CHUNK..j * CHUNK + len],
                        },
                    }
                };
                let mut dst = match taken.as_mut() {
                    Some(buf) => Dst::Output(buf),
                    None => Dst::Scratch(&mut rest[..len]),
                };
                match op {
                    OpF32::Linear(terms) => {
                        // Up to three terms in one loop; `(c0 a + c1 b) + c2 c`
                        // rounds as the left-to-right accumulation.
                        match terms[..] {
                            [(c0, a)] => dst.fill(src(a).iter().map(|a| c0 * a)),
                            [(c0, a), (c1, b)] => {
                                let ab = src(a).iter().zip(src(b));
                                dst.fill(ab.map(|(a, b)| c0 * a + c1 * b))
                            }
                            [(c0, a), (c1, b), (c2, c), ..] => {
                                let abc = src(a).iter().zip(src(b)).zip(src(c));
                                dst.fill(abc.map(|((a, b), c)| c0 * a + c1 * b + c2 * c))
                            }
                            _ => unreachable!("a linear combination has a term"),
                        }
                        if terms.len() > 3 {
                            let acc = dst.filled(len);
                            for &(c, v) in &terms[3..] {
                                for (d, &x) in acc.iter_mut().zip(src(v)) {
                                    *d += c * x;
                                }
                            }
                        }
                    }
                    &OpF32::Clamp(v, lo, hi) => dst.fill(src(v).iter().map(|&x| clamp1(x, lo, hi))),
                }
                if let (Some(o), Some(buf)) = (plan.home[k], taken) {
                    out[o] = buf;
                }
            }
            // Outputs that are inputs, or an operation already output before.
            for (o, &v) in plan.outputs.iter().enumerate() {
                match v {
                    // Computed in place, or (named twice) copied from where it was.
                    Val::Op(j) => {
                        if let Some(h) = plan.home[j]
                            && h != o
                        {
                            let (lo, hi) = out.split_at_mut(o.max(h));
                            let (dst, src) = if o < h { (&mut lo[o], &hi[0]) } else { (&mut hi[0], &lo[h]) };
                            dst.extend_from_slice(&src[start..end]);
                        }
                    }
                    Val::Input(i) => out[o].extend_from_slice(&plan.inputs[i][start..end]),
                }
            }
        }
    }
}
