//! The loops behind [`crate::CpuTensor`], compiled three times: for baseline
//! x86-64 (SSE2), AVX2 and AVX-512, picked at run time. A scheduler step is a few
//! multiply-adds per element over cache-resident data, so the vector width is
//! most of its speed; a plain `memcpy` (the bench's floor) already uses the
//! widest vectors the CPU has.
//!
//! No FMA: Rust never contracts `a * b + c`, and every version rounds each
//! product and each sum to `f32` exactly as the operation-at-a-time code does.

use crate::fused::{Arith, Kernel};

/// Elements per chunk of a linear combination: the accumulated chunk (4 KiB)
/// stays in L1 while the terms are added.
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

/// One block of a value: `W` (16) consecutive elements: two AVX2 registers,
/// four SSE ones (or one AVX-512 register, for the ragged end).
#[derive(Clone, Copy)]
pub(crate) struct Block<const W: usize>([f32; W]);

/// [`Arith`] over blocks: the inputs of the current block are read straight
/// from the input tensors at `offset`, and the first `checked` inputs are
/// checked as they are read.
struct Lanes<'a, const W: usize> {
    src: &'a [&'a [f32]],
    offset: usize,
    checked: usize,
    /// Lane by lane, the largest `|x|` bit pattern of the checked inputs read.
    largest: [u32; W],
}

impl<const W: usize> Arith for Lanes<'_, W> {
    type V = Block<W>;

    #[inline(always)]
    fn input(&mut self, i: usize) -> Block<W> {
        let mut v = [0.0; W];
        v.copy_from_slice(&self.src[i][self.offset..self.offset + W]);
        if i < self.checked {
            // An integer compare: a NaN has the largest patterns, above
            // infinity's.
            for (m, x) in self.largest.iter_mut().zip(v) {
                *m = (*m).max(x.to_bits() & 0x7fff_ffff);
            }
        }
        Block(v)
    }

    #[inline(always)]
    fn linear<const K: usize>(&mut self, terms: [(f64, Block<W>); K]) -> Block<W> {
        // Left to right, each product and sum rounded to f32 (no FMA: Rust
        // never contracts `a * b + c`).
        // (Loops rather than `array::map`, which is not always inlined.)
        let (c0, Block(x0)) = (terms[0].0 as f32, terms[0].1);
        let mut acc = [0.0; W];
        for (a, x) in acc.iter_mut().zip(x0) {
            *a = c0 * x;
        }
        for &(c, Block(x)) in &terms[1..] {
            let c = c as f32;
            for (a, x) in acc.iter_mut().zip(x) {
                *a += c * x;
            }
        }
        Block(acc)
    }

    #[inline(always)]
    fn clamp(&mut self, x: Block<W>, min: f64, max: f64) -> Block<W> {
        let (lo, hi) = (min as f32, max as f32);
        let mut out = x.0;
        for v in &mut out {
            *v = clamp1(*v, lo, hi);
        }
        Block(out)
    }
}

/// [`Arith`] over x86 vector registers: a block is two registers per value
/// (32 elements with AVX-512, 16 with AVX2's 16 registers), as LLVM vector
/// values, which keeps every value of a step in registers across its branches
/// (an array-typed block is split into scalars or spilled where a step's
/// options branch). One module per instruction set, from one template.
macro_rules! x86_lanes {
    (
        $module:ident, $feature:literal, $vec:ty, $ivec:ty, $regs:literal, $lanes:literal,
        loadu = $loadu:ident, storeu = $storeu:ident, set1 = $set1:ident, mul = $mul:ident,
        add = $add:ident, max = $max:ident, min = $min:ident, cast = $cast:ident,
        and = $and:ident, max_epu32 = $max_epu32:ident, set1_epi32 = $set1_epi32:ident,
        zero = $zero:ident, storeu_si = $storeu_si:ident
    ) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use std::arch::x86_64::*;

            use crate::fused::{Arith, Kernel};

            const W: usize = $regs * $lanes;

            #[derive(Clone, Copy)]
            pub(crate) struct Block([$vec; $regs]);

            struct Lanes<'a> {
                src: &'a [&'a [f32]],
                offset: usize,
                checked: usize,
                largest: [$ivec; $regs],
            }

            impl Arith for Lanes<'_> {
                type V = Block;

                #[inline(always)]
                fn input(&mut self, i: usize) -> Block {
                    let x = &self.src[i][self.offset..self.offset + W];
                    // SAFETY: `x` holds W elements; the instruction set is
                    // enabled in the only caller (`blocks`). (A loop, not
                    // `array::from_fn`: no closures here, see `Kernel`.)
                    let mut v = [unsafe { $set1(0.0) }; $regs];
                    for (r, v) in v.iter_mut().enumerate() {
                        *v = unsafe { $loadu(x.as_ptr().add(r * $lanes)) };
                    }
                    if i < self.checked {
                        // SAFETY: as above.
                        unsafe {
                            let abs = $set1_epi32(0x7fff_ffff);
                            for (m, x) in self.largest.iter_mut().zip(v) {
                                *m = $max_epu32(*m, $and($cast(x), abs));
                            }
                        }
                    }
                    Block(v)
                }

                #[inline(always)]
                fn linear<const K: usize>(&mut self, terms: [(f64, Block); K]) -> Block {
                    // SAFETY: the instruction set is enabled in the only
                    // caller (`blocks`).
                    unsafe {
                        let c0 = $set1(terms[0].0 as f32);
                        let mut acc = terms[0].1.0;
                        for a in &mut acc {
                            *a = $mul(c0, *a);
                        }
                        for &(c, Block(x)) in &terms[1..] {
                            let c = $set1(c as f32);
                            for (a, x) in acc.iter_mut().zip(x) {
                                *a = $add(*a, $mul(c, x));
                            }
                        }
                        Block(acc)
                    }
                }

                #[inline(always)]
                fn clamp(&mut self, x: Block, min: f64, max: f64) -> Block {
                    // SAFETY: as in `linear`.
                    unsafe {
                        let (lo, hi) = ($set1(min as f32), $set1(max as f32));
                        let mut out = x.0;
                        for v in &mut out {
                            // `max(lo, v)` is `lo > v ? lo : v` and
                            // `min(hi, v)` is `hi < v ? hi : v`: `clamp1`
                            // exactly, a NaN passing (x86 returns the second
                            // operand when one is NaN).
                            *v = $min(hi, $max(lo, *v));
                        }
                        Block(out)
                    }
                }
            }

            /// [`super::run_kernel`]'s whole blocks: how many elements were
            /// done, and the largest `|x|` bit pattern of the checked inputs.
            #[target_feature(enable = $feature)]
            pub(super) fn blocks<K: Kernel<M>, const M: usize>(
                kernel: &K,
                inputs: &[&[f32]],
                checked: usize,
                want: [bool; M],
                out: &mut [Vec<f32>; M],
            ) -> (usize, u32) {
                let n = inputs.first().map_or(0, |x| x.len());
                let full = n - n % W;
                let mut lanes = Lanes {
                    src: inputs,
                    offset: 0,
                    checked,
                    largest: [$zero(); $regs],
                };
                while lanes.offset < full {
                    let values = kernel.apply(&mut lanes);
                    for ((o, v), w) in out.iter_mut().zip(values).zip(want) {
                        if w {
                            o.reserve(W);
                            let dst = &mut o.spare_capacity_mut()[..W];
                            // SAFETY: `dst` has room for W elements; once they
                            // are written, the vector's length may cover them.
                            unsafe {
                                let p = dst.as_mut_ptr().cast::<f32>();
                                for (r, v) in v.0.into_iter().enumerate() {
                                    $storeu(p.add(r * $lanes), v);
                                }
                                o.set_len(o.len() + W);
                            }
                        }
                    }
                    lanes.offset += W;
                }
                let mut all = [0u32; W];
                for (r, m) in lanes.largest.into_iter().enumerate() {
                    // SAFETY: `all` holds W = registers × lanes elements.
                    unsafe { $storeu_si(all.as_mut_ptr().add(r * $lanes).cast(), m) };
                }
                (full, all.into_iter().max().unwrap_or(0))
            }
        }
    };
}

x86_lanes!(
    x86_512,
    "avx512f",
    __m512,
    __m512i,
    2,
    16,
    loadu = _mm512_loadu_ps,
    storeu = _mm512_storeu_ps,
    set1 = _mm512_set1_ps,
    mul = _mm512_mul_ps,
    add = _mm512_add_ps,
    max = _mm512_max_ps,
    min = _mm512_min_ps,
    cast = _mm512_castps_si512,
    and = _mm512_and_si512,
    max_epu32 = _mm512_max_epu32,
    set1_epi32 = _mm512_set1_epi32,
    zero = _mm512_setzero_si512,
    storeu_si = _mm512_storeu_si512
);

x86_lanes!(
    x86_256,
    "avx2",
    __m256,
    __m256i,
    2,
    8,
    loadu = _mm256_loadu_ps,
    storeu = _mm256_storeu_ps,
    set1 = _mm256_set1_ps,
    mul = _mm256_mul_ps,
    add = _mm256_add_ps,
    max = _mm256_max_ps,
    min = _mm256_min_ps,
    cast = _mm256_castps_si256,
    and = _mm256_and_si256,
    max_epu32 = _mm256_max_epu32,
    set1_epi32 = _mm256_set1_epi32,
    zero = _mm256_setzero_si256,
    storeu_si = _mm256_storeu_si256
);

/// Run `kernel` over `inputs` (all of one length) block by block, writing
/// output `o` into `out[o]` (empty, with room for the inputs' length) when
/// `want[o]`. Returns whether the first `checked` inputs are finite (those
/// the kernel reads; [`crate::fused::Program`] tells which it does).
///
/// With AVX-512 or AVX2 (picked at run time), whole blocks run on vector
/// registers ([`x86_lanes`]); the ragged end, and other targets, on [`Lanes`]'
/// arrays.
pub(crate) fn run_kernel<K: Kernel<M>, const M: usize>(
    kernel: &K,
    inputs: &[&[f32]],
    checked: usize,
    want: [bool; M],
    out: &mut [Vec<f32>; M],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { avx512(kernel, inputs, checked, want, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { avx2(kernel, inputs, checked, want, out) };
        }
    }
    blocks::<K, M, 16>(kernel, inputs, 0, checked, [0; 16], want, out)
}

/// [`run_kernel`] with AVX-512: whole blocks in registers, then the ragged
/// end on [`Lanes`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512<K: Kernel<M>, const M: usize>(
    kernel: &K,
    inputs: &[&[f32]],
    checked: usize,
    want: [bool; M],
    out: &mut [Vec<f32>; M],
) -> bool {
    let (done, largest) = x86_512::blocks(kernel, inputs, checked, want, out);
    blocks::<K, M, 16>(kernel, inputs, done, checked, [largest; 16], want, out)
}

/// [`run_kernel`] with AVX2: whole blocks in registers, then the ragged end
/// on [`Lanes`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<K: Kernel<M>, const M: usize>(
    kernel: &K,
    inputs: &[&[f32]],
    checked: usize,
    want: [bool; M],
    out: &mut [Vec<f32>; M],
) -> bool {
    let (done, largest) = x86_256::blocks(kernel, inputs, checked, want, out);
    blocks::<K, M, 16>(kernel, inputs, done, checked, [largest; 16], want, out)
}

/// [`run_kernel`] on [`Lanes`] from element `start` on (whole blocks, then
/// the ragged end padded with zeros), with `largest` the checked inputs'
/// largest `|x|` bit patterns so far.
#[inline(always)]
fn blocks<K: Kernel<M>, const M: usize, const W: usize>(
    kernel: &K,
    inputs: &[&[f32]],
    start: usize,
    checked: usize,
    largest: [u32; W],
    want: [bool; M],
    out: &mut [Vec<f32>; M],
) -> bool {
    let n = inputs.first().map_or(0, |x| x.len());
    let full = start + (n - start) / W * W;
    let mut lanes = Lanes::<W> {
        src: inputs,
        offset: start,
        checked,
        largest,
    };
    while lanes.offset < full {
        let values = kernel.apply(&mut lanes);
        for ((o, v), w) in out.iter_mut().zip(values).zip(want) {
            if w {
                o.extend_from_slice(&v.0);
            }
        }
        lanes.offset += W;
    }
    let mut largest = lanes.largest;
    if full < n {
        // Zeros are finite, and their outputs are dropped.
        let padded: Vec<[f32; W]> = inputs
            .iter()
            .map(|x| {
                let mut v = [0.0; W];
                v[..n - full].copy_from_slice(&x[full..]);
                v
            })
            .collect();
        let slices: Vec<&[f32]> = padded.iter().map(|v| &v[..]).collect();
        let mut tail = Lanes::<W> {
            src: &slices,
            offset: 0,
            checked,
            largest,
        };
        let values = kernel.apply(&mut tail);
        for ((o, v), w) in out.iter_mut().zip(values).zip(want) {
            if w {
                o.extend_from_slice(&v.0[..n - full]);
            }
        }
        largest = tail.largest;
    }
    largest.iter().all(|&m| m < NON_FINITE)
}

/// The smallest `|x|` bit pattern of an infinity or NaN.
const NON_FINITE: u32 = 0x7f80_0000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuTensor;
    use crate::fused::tests::Every;
    use crate::fused::{Program, evaluate_unfused};

    type Path = fn(&Every, &[&[f32]], usize, [bool; 5], &mut [Vec<f32>; 5]) -> bool;

    /// Every code path this CPU can run.
    fn paths() -> Vec<(&'static str, Path)> {
        let mut paths: Vec<(&'static str, Path)> = vec![
            ("portable", |k, i, c, w, o| {
                blocks::<_, 5, 16>(k, i, 0, c, [0; 16], w, o)
            }),
            ("dispatched", run_kernel::<Every, 5>),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                paths.push(("avx2", |k, i, c, w, o| unsafe { avx2(k, i, c, w, o) }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                paths.push(("avx512", |k, i, c, w, o| unsafe { avx512(k, i, c, w, o) }));
            }
        }
        paths
    }

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 3.0)
            .collect()
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn every_path_equals_operation_at_a_time_bit_for_bit() {
        let (program, outputs) = Program::record(&Every, vec![Some("x"), Some("y"), None]);
        // Empty, within one block, whole blocks, ragged ends.
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 100, 1031] {
            let data = [ramp(n, 0.1), ramp(n, 1.3), ramp(n, 2.9)];
            let tensors: Vec<CpuTensor> = data
                .iter()
                .map(|d| CpuTensor::new(d.clone(), vec![1, n]).unwrap())
                .collect();
            let refs: Vec<&CpuTensor> = tensors.iter().collect();
            let want = [true, true, false, true, true];
            let expected = evaluate_unfused(&program, &outputs, &refs, want).unwrap();
            let inputs: Vec<&[f32]> = data.iter().map(|d| d.as_slice()).collect();
            for (name, path) in paths() {
                let mut out: [Vec<f32>; 5] = Default::default();
                out.iter_mut().for_each(|o| o.reserve(n));
                assert!(path(&Every, &inputs, 2, want, &mut out), "{name}, n = {n}");
                for (o, e) in out.iter().zip(&expected) {
                    match e {
                        Some(e) => assert_eq!(bits(o), bits(e.data()), "{name}, n = {n}"),
                        None => assert!(o.is_empty(), "{name}, n = {n}"),
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_finds_a_non_finite_checked_input_anywhere() {
        let n = 100;
        for at in [0, 31, 32, 63, 64, 95, 96, 99] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for (input, found) in [(0, false), (1, false), (2, true)] {
                    let mut data = [ramp(n, 0.1), ramp(n, 1.3), ramp(n, 2.9)];
                    data[input][at] = bad;
                    let inputs: Vec<&[f32]> = data.iter().map(|d| d.as_slice()).collect();
                    for (name, path) in paths() {
                        let mut out: [Vec<f32>; 5] = Default::default();
                        let finite = path(&Every, &inputs, 2, [true; 5], &mut out);
                        // Input 2 is not checked.
                        assert_eq!(finite, found, "{name}: {bad} in input {input} at {at}");
                    }
                }
            }
        }
    }
}
