//! Tiled scaled-dot-product attention on host memory (flash-attention style).
//!
//! `softmax(q kᵀ · scale) v` without the `[L, S]` score matrix: each work item
//! takes [`QUERY_TILE`] query rows of one (batch, head) and walks the keys in
//! blocks of [`KEY_BLOCK`], keeping per row the running maximum `m`, the
//! running sum `l` of `2^(s − m)` and the unnormalised output, rescaled by
//! `2^(m_old − m_new)` whenever the maximum grows (the online softmax). Scores
//! are taken in base 2 (`q` is pre-multiplied by `scale · log2 e`) so the
//! exponential is `simd::exp2` (vectorised, ≤ 2 ulp). Keys are packed once per
//! (batch, head) transposed, `[D, S]`, so a 4-row × 16-key score block is
//! D broadcast-FMAs over contiguous keys; values are packed `[S, Dv]` for the
//! same reason on the other product. Work items run in parallel on rayon's
//! pool (the threads burn-flex uses). Everything is computed in f32; f16 and
//! bf16 operands are widened when packed and the output rounded once.

// The register tiles index fixed-size arrays in counted loops: the form
// LLVM unrolls and vectorises.
#![allow(clippy::needless_range_loop)]

use super::simd::{self, Isa, LANES, Simd, kernels};
use burn::tensor::{bf16, f16};
use rayon::prelude::*;

/// Query rows per work item.
pub const QUERY_TILE: usize = 64;
/// Keys per block of the inner loop (a multiple of the 16-value lanes).
pub const KEY_BLOCK: usize = 256;
/// Query rows per register block.
const ROWS: usize = 4;

/// A number type the host kernels read and write (computing in f32).
pub trait Element: Copy + Send + Sync + 'static {
    /// Widened to f32.
    fn to_f32(self) -> f32;
    /// Rounded from f32 (to nearest even).
    fn from_f32(x: f32) -> Self;

    /// `dst[i] = src[i].to_f32()` (a plain copy for f32).
    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = x.to_f32();
        }
    }
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// A read-only `[B, H, L, D]` operand in strided memory whose last dimension
/// is contiguous: element `(b, h, l, d)` is `data[offset + b·strides[0] +
/// h·strides[1] + l·strides[2] + d]`.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a, E> {
    /// The storage the strides index.
    pub data: &'a [E],
    /// Offset of element `(0, 0, 0, 0)`.
    pub offset: usize,
    /// Strides of the batch, head and sequence dimensions.
    pub strides: [usize; 3],
    /// `[B, H, L, D]`.
    pub dims: [usize; 4],
}

impl<'a, E> Operand<'a, E> {
    /// A contiguous `[B, H, L, D]` operand.
    pub fn contiguous(data: &'a [E], dims: [usize; 4]) -> Self {
        let [_, h, l, d] = dims;
        Operand {
            data,
            offset: 0,
            strides: [h * l * d, l * d, d],
            dims,
        }
    }

    /// Row `l` of head `h` of batch `b` (`D` values).
    fn row(&self, b: usize, h: usize, l: usize) -> &'a [E] {
        let start = self.offset + b * self.strides[0] + h * self.strides[1] + l * self.strides[2];
        &self.data[start..start + self.dims[3]]
    }

    /// Whether every row named by `dims` and `strides` lies inside `data`.
    fn in_bounds(&self) -> bool {
        let [b, h, l, d] = self.dims;
        if b * h * l * d == 0 {
            return true;
        }
        let last = self.offset
            + (b - 1) * self.strides[0]
            + (h - 1) * self.strides[1]
            + (l - 1) * self.strides[2]
            + d;
        last <= self.data.len()
    }
}

/// Why [`attention`] refused its operands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The operands do not describe one attention.
    #[error("attention operands do not match: q {q:?}, k {k:?}, v {v:?}")]
    Mismatch {
        /// Dimensions of q.
        q: [usize; 4],
        /// Dimensions of k.
        k: [usize; 4],
        /// Dimensions of v.
        v: [usize; 4],
    },
    /// An operand's strides reach past its storage.
    #[error("attention operand {0} reaches past its storage")]
    OutOfBounds(&'static str),
}

/// `softmax(q kᵀ · scale) v` (with `causal`, key `j` is hidden from query
/// `i < j`, as PyTorch's `is_causal`), returned contiguous in `[B, L, H, Dv]`
/// order: the layout the attention's output projection reads, so the caller's
/// `[B, H, L, Dv]` view of it is a stride permutation, not a copy.
pub fn attention<E: Element>(
    q: Operand<'_, E>,
    k: Operand<'_, E>,
    v: Operand<'_, E>,
    scale: f32,
    causal: bool,
    isa: Isa,
) -> Result<Vec<E>, ShapeError> {
    let [batch, heads, q_len, dim] = q.dims;
    let [_, _, kv_len, v_dim] = v.dims;
    if k.dims != [batch, heads, kv_len, dim] || v.dims[..2] != [batch, heads] {
        return Err(ShapeError::Mismatch {
            q: q.dims,
            k: k.dims,
            v: v.dims,
        });
    }
    for (name, operand) in [("q", &q), ("k", &k), ("v", &v)] {
        if !operand.in_bounds() {
            return Err(ShapeError::OutOfBounds(name));
        }
    }
    let zero = E::from_f32(0.0);
    let mut out = vec![zero; batch * q_len * heads * v_dim];
    if out.is_empty() {
        return Ok(out);
    }
    if kv_len == 0 {
        // An empty softmax: PyTorch gives NaN (0/0) rows.
        out.fill(E::from_f32(f32::NAN));
        return Ok(out);
    }

    let pairs = batch * heads;
    let keys_padded = kv_len.next_multiple_of(LANES);
    let v_padded = v_dim.next_multiple_of(8);

    // Keys transposed [D, S'] and values [S', Dv'] per (batch, head), in f32,
    // zero-padded to whole lanes.
    let mut kt = vec![0f32; pairs * dim * keys_padded];
    if dim > 0 {
        kt.par_chunks_mut(dim * keys_padded)
            .enumerate()
            .for_each(|(pair, dst)| {
                let (b, h) = (pair / heads, pair % heads);
                for j in 0..kv_len {
                    for (x, &value) in k.row(b, h, j).iter().enumerate() {
                        dst[x * keys_padded + j] = value.to_f32();
                    }
                }
            });
    }
    let mut vp = vec![0f32; pairs * keys_padded * v_padded];
    if v_dim > 0 {
        vp.par_chunks_mut(keys_padded * v_padded)
            .enumerate()
            .for_each(|(pair, dst)| {
                let (b, h) = (pair / heads, pair % heads);
                for j in 0..kv_len {
                    let row = &mut dst[j * v_padded..j * v_padded + v_dim];
                    for (o, &value) in row.iter_mut().zip(v.row(b, h, j)) {
                        *o = value.to_f32();
                    }
                }
            });
    }

    let tiles = q_len.div_ceil(QUERY_TILE);
    let q_scale = scale * std::f32::consts::LOG2_E;
    let out_ptr = SharedOut(out.as_mut_ptr());
    (0..pairs * tiles).into_par_iter().for_each_init(
        || Scratch::new(dim, v_padded),
        |scratch, item| {
            let (pair, tile) = (item / tiles, item % tiles);
            let (b, h) = (pair / heads, pair % heads);
            let first = tile * QUERY_TILE;
            let rows = QUERY_TILE.min(q_len - first);
            for r in 0..rows {
                let dst = &mut scratch.q[r * dim..(r + 1) * dim];
                for (o, &value) in dst.iter_mut().zip(q.row(b, h, first + r)) {
                    *o = value.to_f32() * q_scale;
                }
            }
            let geometry = Geometry {
                rows,
                first,
                dim,
                kv_len,
                keys_padded,
                v_padded,
                causal,
            };
            let pair_kt = &kt[pair * dim * keys_padded..(pair + 1) * dim * keys_padded];
            let pair_v = &vp[pair * keys_padded * v_padded..(pair + 1) * keys_padded * v_padded];
            tile_kernel(isa, geometry, scratch, pair_kt, pair_v);
            for r in 0..rows {
                let acc = &scratch.o[r * v_padded..r * v_padded + v_dim];
                let norm = 1.0 / scratch.l[r];
                let start = ((b * q_len + first + r) * heads + h) * v_dim;
                // SAFETY: row `first + r` of head `h` of batch `b` is written by
                // this work item only; `out` outlives the parallel loop.
                let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(start), v_dim) };
                for (o, &a) in dst.iter_mut().zip(acc) {
                    *o = E::from_f32(a * norm);
                }
            }
        },
    );
    Ok(out)
}

/// The output pointer shared by the work items (each writes its own rows).
#[derive(Clone, Copy)]
struct SharedOut<E>(*mut E);
// SAFETY: the work items write disjoint rows (see `attention`).
unsafe impl<E: Send> Send for SharedOut<E> {}
unsafe impl<E: Send> Sync for SharedOut<E> {}
impl<E> SharedOut<E> {
    fn at(self, offset: usize) -> *mut E {
        // SAFETY: callers pass offsets inside the output vector.
        unsafe { self.0.add(offset) }
    }
}

/// Per-thread buffers of one work item.
struct Scratch {
    /// Query rows, scaled, `[QUERY_TILE, D]`.
    q: Vec<f32>,
    /// Scores then probabilities of one key block, `[QUERY_TILE, KEY_BLOCK]`.
    s: Vec<f32>,
    /// Unnormalised output rows, `[QUERY_TILE, Dv']`.
    o: Vec<f32>,
    /// Running row maxima (base 2).
    m: Vec<f32>,
    /// Running row sums.
    l: Vec<f32>,
}

impl Scratch {
    fn new(dim: usize, v_padded: usize) -> Self {
        Scratch {
            q: vec![0.0; QUERY_TILE * dim],
            s: vec![0.0; QUERY_TILE * KEY_BLOCK],
            o: vec![0.0; QUERY_TILE * v_padded],
            m: vec![0.0; QUERY_TILE],
            l: vec![0.0; QUERY_TILE],
        }
    }
}

/// The sizes one work item runs with.
#[derive(Clone, Copy)]
struct Geometry {
    rows: usize,
    first: usize,
    dim: usize,
    kv_len: usize,
    keys_padded: usize,
    v_padded: usize,
    causal: bool,
}

kernels! {
    fn tile_kernel(g: Geometry, scratch: &mut Scratch, kt: &[f32], vp: &[f32]) = tile_body;
}

/// One work item: `rows` query rows against every (visible) key.
#[inline(always)]
fn tile_body<S: Simd>(g: Geometry, scratch: &mut Scratch, kt: &[f32], vp: &[f32]) {
    let Scratch { q, s, o, m, l } = scratch;
    o[..g.rows * g.v_padded].fill(0.0);
    m[..g.rows].fill(f32::NEG_INFINITY);
    l[..g.rows].fill(0.0);
    // With a causal mask no row of this tile sees a key past its last row.
    let visible = match g.causal {
        true => g.kv_len.min(g.first + g.rows),
        false => g.kv_len,
    };
    let mut start = 0;
    while start < visible {
        let block = KEY_BLOCK.min(visible - start);
        let width = block.next_multiple_of(LANES);
        scores::<S>(g, q, kt, start, width, s);
        for r in 0..g.rows {
            let seen = match g.causal {
                true => block.min((g.first + r + 1).saturating_sub(start)),
                false => block,
            };
            s[r * KEY_BLOCK + seen..r * KEY_BLOCK + width].fill(f32::NEG_INFINITY);
            online_softmax::<S>(r, width, g.v_padded, s, m, l, o);
        }
        accumulate::<S>(g, s, vp, start, width, o);
        start += block;
    }
}

/// `s[r, j] = q[r] · k[start + j]` for every row and `width` keys.
#[inline(always)]
fn scores<S: Simd>(g: Geometry, q: &[f32], kt: &[f32], start: usize, width: usize, s: &mut [f32]) {
    let mut r = 0;
    while r + ROWS <= g.rows {
        score_rows::<S, ROWS>(g, r, q, kt, start, width, s);
        r += ROWS;
    }
    while r < g.rows {
        score_rows::<S, 1>(g, r, q, kt, start, width, s);
        r += 1;
    }
}

#[inline(always)]
fn score_rows<S: Simd, const R: usize>(
    g: Geometry,
    r: usize,
    q: &[f32],
    kt: &[f32],
    start: usize,
    width: usize,
    s: &mut [f32],
) {
    let q_rows: [&[f32]; R] = std::array::from_fn(|i| &q[(r + i) * g.dim..(r + i + 1) * g.dim]);
    let mut j = 0;
    while j < width {
        let mut acc = [[0f32; LANES]; R];
        for x in 0..g.dim {
            let offset = x * g.keys_padded + start + j;
            let keys: &[f32; LANES] = kt[offset..offset + LANES].try_into().unwrap();
            for i in 0..R {
                let qv = q_rows[i][x];
                for c in 0..LANES {
                    acc[i][c] = S::mul_add(qv, keys[c], acc[i][c]);
                }
            }
        }
        for i in 0..R {
            let offset = (r + i) * KEY_BLOCK + j;
            s[offset..offset + LANES].copy_from_slice(&acc[i]);
        }
        j += LANES;
    }
}

/// Folds row `r`'s block of scores into its running maximum and sum, turns
/// the scores into probabilities relative to the new maximum and rescales the
/// row's output accumulated so far.
#[inline(always)]
fn online_softmax<S: Simd>(
    r: usize,
    width: usize,
    v_padded: usize,
    s: &mut [f32],
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
) {
    let row = &mut s[r * KEY_BLOCK..r * KEY_BLOCK + width];
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    for chunk in row.chunks_exact(LANES) {
        for c in 0..LANES {
            lane_max[c] = if chunk[c] > lane_max[c] {
                chunk[c]
            } else {
                lane_max[c]
            };
        }
    }
    let block_max = lane_max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let new_max = m[r].max(block_max);
    if new_max == f32::NEG_INFINITY {
        // Nothing visible yet (or only NaN scores): no weight.
        row.fill(0.0);
        return;
    }
    let mut lane_sum = [0f32; LANES];
    for chunk in row.chunks_exact_mut(LANES) {
        for c in 0..LANES {
            let p = simd::exp2::<S>(chunk[c] - new_max);
            chunk[c] = p;
            lane_sum[c] += p;
        }
    }
    let block_sum: f32 = lane_sum.iter().sum();
    if new_max > m[r] {
        let correction = match m[r] {
            f32::NEG_INFINITY => 0.0,
            old => simd::exp2::<S>(old - new_max),
        };
        l[r] *= correction;
        for value in &mut o[r * v_padded..(r + 1) * v_padded] {
            *value *= correction;
        }
        m[r] = new_max;
    }
    l[r] += block_sum;
}

/// `o[r] += Σ_j p[r, j] · v[start + j]` for every row.
#[inline(always)]
fn accumulate<S: Simd>(
    g: Geometry,
    p: &[f32],
    vp: &[f32],
    start: usize,
    width: usize,
    o: &mut [f32],
) {
    let mut r = 0;
    while r + ROWS <= g.rows {
        accumulate_rows::<S, ROWS>(g, r, p, vp, start, width, o);
        r += ROWS;
    }
    while r < g.rows {
        accumulate_rows::<S, 1>(g, r, p, vp, start, width, o);
        r += 1;
    }
}

#[inline(always)]
fn accumulate_rows<S: Simd, const R: usize>(
    g: Geometry,
    r: usize,
    p: &[f32],
    vp: &[f32],
    start: usize,
    width: usize,
    o: &mut [f32],
) {
    let mut c = 0;
    while c + LANES <= g.v_padded {
        accumulate_columns::<S, R, LANES>(g, r, c, p, vp, start, width, o);
        c += LANES;
    }
    if c < g.v_padded {
        // v_padded is a multiple of 8.
        accumulate_columns::<S, R, 8>(g, r, c, p, vp, start, width, o);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_columns<S: Simd, const R: usize, const W: usize>(
    g: Geometry,
    r: usize,
    c: usize,
    p: &[f32],
    vp: &[f32],
    start: usize,
    width: usize,
    o: &mut [f32],
) {
    let mut acc = [[0f32; W]; R];
    for i in 0..R {
        let offset = (r + i) * g.v_padded + c;
        acc[i].copy_from_slice(&o[offset..offset + W]);
    }
    let p_rows: [&[f32]; R] =
        std::array::from_fn(|i| &p[(r + i) * KEY_BLOCK..(r + i) * KEY_BLOCK + width]);
    for j in 0..width {
        let offset = (start + j) * g.v_padded + c;
        let values: &[f32; W] = vp[offset..offset + W].try_into().unwrap();
        for i in 0..R {
            let weight = p_rows[i][j];
            for x in 0..W {
                acc[i][x] = S::mul_add(weight, values[x], acc[i][x]);
            }
        }
    }
    for i in 0..R {
        let offset = (r + i) * g.v_padded + c;
        o[offset..offset + W].copy_from_slice(&acc[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention in f64, the textbook way.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: [usize; 5],
        scale: f64,
        causal: bool,
    ) -> Vec<f64> {
        let [pairs, lq, lk, d, dv] = dims;
        let mut out = vec![0f64; pairs * lq * dv];
        for p in 0..pairs {
            for i in 0..lq {
                let visible = if causal { lk.min(i + 1) } else { lk };
                let s: Vec<f64> = (0..visible)
                    .map(|j| {
                        (0..d)
                            .map(|x| {
                                q[(p * lq + i) * d + x] as f64 * k[(p * lk + j) * d + x] as f64
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for x in 0..dv {
                    out[(p * lq + i) * dv + x] = (0..visible)
                        .map(|j| e[j] * v[(p * lk + j) * dv + x] as f64)
                        .sum::<f64>()
                        / sum;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn matches_the_textbook_softmax_at_ragged_shapes_on_every_path() {
        // [batch, heads, q_len, kv_len, head_dim, v_dim]
        let shapes = [
            [1, 1, 1, 1, 1, 1],
            [2, 3, 5, 7, 3, 5],
            [1, 2, 65, 17, 8, 8],
            [2, 1, 70, 300, 12, 20],
            [1, 1, 129, 257, 40, 40],
            [1, 2, 33, 77, 64, 64],
            [1, 1, 17, 530, 160, 160],
        ];
        for isa in Isa::all_available() {
            for [b, h, lq, lk, d, dv] in shapes {
                for causal in [false, true] {
                    if causal && lq != lk {
                        continue;
                    }
                    let q = values(b * h * lq * d, 1);
                    let k = values(b * h * lk * d, 2);
                    let v = values(b * h * lk * dv, 3);
                    let scale = 1.0 / (d as f64).sqrt();
                    let out = attention(
                        Operand::contiguous(&q, [b, h, lq, d]),
                        Operand::contiguous(&k, [b, h, lk, d]),
                        Operand::contiguous(&v, [b, h, lk, dv]),
                        scale as f32,
                        causal,
                        isa,
                    )
                    .unwrap();
                    let want = reference(&q, &k, &v, [b * h, lq, lk, d, dv], scale, causal);
                    // out is [B, L, H, Dv]; want is [B, H, L, Dv].
                    let (mut err, mut norm) = (0f64, 0f64);
                    for bb in 0..b {
                        for hh in 0..h {
                            for i in 0..lq {
                                for x in 0..dv {
                                    let got = out[((bb * lq + i) * h + hh) * dv + x] as f64;
                                    let w = want[((bb * h + hh) * lq + i) * dv + x];
                                    err += (got - w).powi(2);
                                    norm += w * w;
                                }
                            }
                        }
                    }
                    let rel = (err / norm).sqrt();
                    assert!(
                        rel < 1e-6,
                        "{isa:?} {:?} causal {causal}: relative L2 {rel:e}",
                        [b, h, lq, lk, d, dv]
                    );
                }
            }
        }
    }

    #[test]
    fn reads_strided_operands_and_half_types() {
        // q stored [B, L, H, D] and viewed as [B, H, L, D], as a split of heads.
        let (b, h, l, d) = (2, 3, 19, 8);
        let stored = values(b * l * h * d, 7);
        let strided = Operand {
            data: &stored,
            offset: 0,
            strides: [l * h * d, d, h * d],
            dims: [b, h, l, d],
        };
        let mut packed = vec![0f32; stored.len()];
        for bb in 0..b {
            for hh in 0..h {
                for i in 0..l {
                    packed[((bb * h + hh) * l + i) * d..][..d]
                        .copy_from_slice(strided.row(bb, hh, i));
                }
            }
        }
        let dense = Operand::contiguous(&packed, [b, h, l, d]);
        let isa = Isa::detect();
        let a = attention(strided, strided, strided, 0.3, false, isa).unwrap();
        let c = attention(dense, dense, dense, 0.3, false, isa).unwrap();
        assert_eq!(a, c);

        let halves: Vec<bf16> = packed.iter().map(|&x| bf16::from_f32(x)).collect();
        let widened: Vec<f32> = halves.iter().map(|x| x.to_f32()).collect();
        let hb = Operand::contiguous(&halves, [b, h, l, d]);
        let wb = Operand::contiguous(&widened, [b, h, l, d]);
        let out_half = attention(hb, hb, hb, 0.3, false, isa).unwrap();
        let out_wide = attention(wb, wb, wb, 0.3, false, isa).unwrap();
        for (x, y) in out_half.iter().zip(&out_wide) {
            assert_eq!(*x, bf16::from_f32(*y));
        }
    }

    #[test]
    fn nan_inputs_give_nan_rows_and_bad_operands_are_refused() {
        let (h, l, d) = (1, 20, 8);
        let mut q = values(h * l * d, 4);
        let k = values(h * l * d, 5);
        q[3 * d] = f32::NAN;
        fn op(x: &[f32]) -> Operand<'_, f32> {
            Operand::contiguous(x, [1, 1, 20, 8])
        }
        let out = attention(op(&q), op(&k), op(&k), 0.5, false, Isa::detect()).unwrap();
        assert!(out[3 * d..4 * d].iter().all(|x| x.is_nan()));
        assert!(out[..3 * d].iter().all(|x| x.is_finite()));

        let short = Operand::contiguous(&k[..10], [1, h, l, d]);
        assert_eq!(
            attention(op(&q), short, op(&k), 0.5, false, Isa::detect()),
            Err(ShapeError::OutOfBounds("k"))
        );
        let other = Operand::contiguous(&k, [1, h, l / 2, 2 * d]);
        assert!(matches!(
            attention(op(&q), other, op(&k), 0.5, false, Isa::detect()),
            Err(ShapeError::Mismatch { .. })
        ));
    }
}
