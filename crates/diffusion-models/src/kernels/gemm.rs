//! Packed, cache-blocked matrix products on host memory, with the layer's
//! element-wise tail fused into the write-back (the "epilogue").
//!
//! `C[M, N] = A[M, K] · B[K, N]` the way BLIS-style libraries do it: B is
//! packed into column panels of [`NR`] (each `[K, NR]`, contiguous, zero
//! padded), a block of [`MR`]-row tiles of A into `[KC, MR]` strips, and a
//! `MR × NR` register tile accumulates `KC` rank-1 updates from L1 before
//! going back to a per-item C buffer. Work items are (row block, column group)
//! pairs run on rayon's pool; each writes its own part of the output once,
//! after the whole K sum, through the [`Epilogue`]: a bias, or GEGLU's
//! `value · gelu(gate)` of two column halves (so the `[M, 2N]` projection
//! is never written out). Everything is computed in f32.

// The register tiles index fixed-size arrays in counted loops: the form
// LLVM unrolls and vectorises.
#![allow(clippy::needless_range_loop)]

use super::attention::Element;
use super::simd::{Isa, Simd, kernels};
use rayon::prelude::*;

/// Rows of a register tile.
pub const MR: usize = 6;
/// Columns of a register tile and of a packed panel of B.
pub const NR: usize = 16;
/// Depth of one accumulation pass (a `[KC, NR]` panel is 16 KiB of f32).
pub const KC: usize = 256;
/// Rows of a work item (a multiple of [`MR`]).
pub const MC: usize = 8 * MR;
/// Most columns of a work item (a multiple of [`NR`]): the fewer column
/// groups, the fewer times a block of A is packed; each product narrows them
/// (down to [`NR`]) until every thread has two items.
pub const NC: usize = 16 * NR;

/// A `[K, N]` right-hand side packed into panels of `[K, NR]`, in f32
/// (for GEGLU, each half of the columns from its own panel boundary).
///
/// A row-major f32 matrix whose columns come in whole panels can also be
/// read in place ([`PackedRhs::view`]): no copy, at the price of strided
/// rows in the inner loop, which pays where A has few rows (a text
/// encoder's 154 tokens: packing took a quarter of its time).
#[derive(Debug, Clone)]
pub struct PackedRhs<'a> {
    k: usize,
    n: usize,
    /// Columns per half when packed in halves ([`PackedRhs::pack_halves`]).
    half: Option<usize>,
    data: std::borrow::Cow<'a, [f32]>,
    /// Where panel 0 starts in `data`.
    offset: usize,
    /// Distance between panels.
    panel_step: usize,
    /// Distance between the rows of a panel.
    row_step: usize,
}

impl<'a> PackedRhs<'a> {
    /// Packs `b` (element `(k, n)` at `b[offset + k·row_stride + n·col_stride]`).
    pub fn pack<E: Element>(
        b: &[E],
        offset: usize,
        dims: [usize; 2],
        strides: [usize; 2],
    ) -> PackedRhs<'static> {
        Self::pack_split(b, offset, dims, strides, None)
    }

    /// `b` read in place: row-major f32 rows `row_stride` apart from
    /// `offset`; `None` unless every panel is whole (`n`, and with `halves`
    /// `n/2`, a multiple of [`NR`]) and in bounds.
    pub fn view(
        b: &'a [f32],
        offset: usize,
        [k, n]: [usize; 2],
        row_stride: usize,
        halves: bool,
    ) -> Option<PackedRhs<'a>> {
        let whole = match halves {
            true => (n / 2).is_multiple_of(NR) && n.is_multiple_of(2),
            false => n.is_multiple_of(NR),
        };
        let fits = k == 0 || offset + (k - 1) * row_stride + n <= b.len();
        (whole && fits && row_stride >= n).then(|| PackedRhs {
            k,
            n,
            half: halves.then_some(n / 2),
            data: std::borrow::Cow::Borrowed(b),
            offset,
            panel_step: NR,
            row_step: row_stride,
        })
    }

    /// As [`PackedRhs::pack`] with the two halves of the columns packed apart
    /// (what [`Epilogue::Geglu`] reads); `n` must be even.
    pub fn pack_halves<E: Element>(
        b: &[E],
        offset: usize,
        dims: [usize; 2],
        strides: [usize; 2],
    ) -> PackedRhs<'static> {
        Self::pack_split(b, offset, dims, strides, Some(dims[1] / 2))
    }

    fn pack_split<E: Element>(
        b: &[E],
        offset: usize,
        [k, n]: [usize; 2],
        [row_stride, col_stride]: [usize; 2],
        half: Option<usize>,
    ) -> PackedRhs<'static> {
        // (first column, columns) of each panel.
        let spans: Vec<(usize, usize)> = match half {
            None => (0..n.div_ceil(NR))
                .map(|p| (p * NR, NR.min(n - p * NR)))
                .collect(),
            Some(h) => (0..2)
                .flat_map(|side| {
                    (0..h.div_ceil(NR)).map(move |p| (side * h + p * NR, NR.min(h - p * NR)))
                })
                .collect(),
        };
        let mut data = vec![0f32; spans.len() * k * NR];
        if k > 0 {
            data.par_chunks_mut(k * NR)
                .zip(&spans)
                .for_each(|(panel, &(col0, cols))| {
                    for kk in 0..k {
                        let row = offset + kk * row_stride + col0 * col_stride;
                        for c in 0..cols {
                            panel[kk * NR + c] = b[row + c * col_stride].to_f32();
                        }
                    }
                });
        }
        PackedRhs {
            k,
            n,
            half,
            data: std::borrow::Cow::Owned(data),
            offset: 0,
            panel_step: k * NR,
            row_step: NR,
        }
    }

    /// The transposed patches of a convolution, `[C·k·k, N·H_out·W_out]`,
    /// as B's panels (columns are output pixels).
    fn patches<E: Element>(
        patches: &Patches<'_, E>,
        columns: usize,
        depth: usize,
    ) -> PackedRhs<'static> {
        let panels = columns.div_ceil(NR);
        let mut data = vec![0f32; panels * depth * NR];
        if depth > 0 {
            data.par_chunks_mut(depth * NR)
                .enumerate()
                .for_each(|(p, panel)| {
                    // `gather` zero-fills past the last pixel of the batch.
                    for k0 in (0..depth).step_by(KC) {
                        let kc = KC.min(depth - k0);
                        patches.gather::<NR>(p * NR, k0, kc, &mut panel[k0 * NR..(k0 + kc) * NR]);
                    }
                });
        }
        PackedRhs {
            k: depth,
            n: columns,
            half: None,
            data: std::borrow::Cow::Owned(data),
            offset: 0,
            panel_step: depth * NR,
            row_step: NR,
        }
    }

    /// `[K, N]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.k, self.n]
    }

    /// Panel `p` from its row `k0`: rows `row_step` apart.
    fn panel(&self, p: usize, k0: usize) -> &[f32] {
        &self.data[self.offset + p * self.panel_step + k0 * self.row_step..]
    }

    /// The panel where the second half's columns start.
    fn second_half_panel(&self) -> usize {
        self.half.map_or(0, |h| h.div_ceil(NR))
    }
}

/// What is done to the product before it is written.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `C` as it is.
    None,
    /// `C + bias` (one value per column).
    Bias(&'a [f32]),
    /// diffusers' GEGLU on a `[M, 2N]` projection with bias: the output is
    /// `[M, N]`, `(C[:, :N] + b[:N]) · gelu(C[:, N:] + b[N:])`, exact (erf) GELU.
    Geglu(&'a [f32]),
    /// `act(C + bias)`.
    BiasAct(&'a [f32], Act),
}

/// An activation an [`Epilogue`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Exact (erf) GELU.
    Gelu,
    /// `x · sigmoid(1.702 x)` (CLIP).
    QuickGelu,
    /// `x · sigmoid(x)`.
    Silu,
}

/// Why [`gemm`] refused its operands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GemmError {
    /// A and B do not chain, or the epilogue does not fit the product.
    #[error("matrix product shapes do not match: {0}")]
    Shape(String),
}

/// `epilogue(A · B)` for `A` `[M, K]` (row `i` at `a[i·row_stride..]`,
/// contiguous), returned row-major (`[M, N]`, or `[M, N/2]` for GEGLU).
pub fn gemm<E: Element>(
    a: &[E],
    [m, k]: [usize; 2],
    row_stride: usize,
    b: &PackedRhs<'_>,
    epilogue: Epilogue<'_>,
    isa: Isa,
) -> Result<Vec<E>, GemmError> {
    if b.k != k {
        return Err(GemmError::Shape(format!("[{m}, {k}] · {:?}", b.dims())));
    }
    if m > 0 && k > 0 && (m - 1) * row_stride + k > a.len() {
        return Err(GemmError::Shape(format!(
            "A [{m}, {k}] with row stride {row_stride} reaches past its {} values",
            a.len()
        )));
    }
    let n = b.n;
    let out_cols = match epilogue {
        Epilogue::None => n,
        Epilogue::Bias(bias) | Epilogue::BiasAct(bias, _) if bias.len() == n => n,
        Epilogue::Geglu(bias)
            if bias.len() == n && b.half == Some(n / 2) && n.is_multiple_of(2) =>
        {
            n / 2
        }
        Epilogue::Bias(bias) | Epilogue::BiasAct(bias, _) | Epilogue::Geglu(bias) => {
            return Err(GemmError::Shape(format!(
                "{} bias values for {n} columns ({epilogue:?}; GEGLU needs a `pack_halves` right-hand side)",
                bias.len()
            )));
        }
    };
    let mut out = vec![E::from_f32(0.0); m * out_cols];
    let out_ptr = SharedOut(out.as_mut_ptr());
    let lhs = RowMajor {
        data: a,
        rows: m,
        stride: row_stride,
    };
    let geglu = matches!(epilogue, Epilogue::Geglu(_));
    run(&lhs, [m, k, out_cols], b, geglu, isa, |block| {
        for r in 0..block.rows {
            let start = (block.first_row + r) * out_cols + block.col0;
            // SAFETY: this block alone writes rows `first_row..+rows`,
            // columns `col0..+cols` of `out`, which outlives `run`.
            let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(start), block.cols) };
            let c = &block.c[r * block.ld..r * block.ld + block.cols];
            match epilogue {
                Epilogue::None => {
                    for (o, &x) in dst.iter_mut().zip(c) {
                        *o = E::from_f32(x);
                    }
                }
                Epilogue::Bias(bias) => {
                    let bias = &bias[block.col0..block.col0 + block.cols];
                    for ((o, &x), &bv) in dst.iter_mut().zip(c).zip(bias) {
                        *o = E::from_f32(x + bv);
                    }
                }
                Epilogue::BiasAct(bias, act) => {
                    let bias = &bias[block.col0..block.col0 + block.cols];
                    let mut row = [0f32; NC];
                    let row = &mut row[..block.cols];
                    act_row(isa, row, c, bias, act);
                    for (o, &y) in dst.iter_mut().zip(row.iter()) {
                        *o = E::from_f32(y);
                    }
                }
                Epilogue::Geglu(bias) => {
                    let gate = &block.gate[r * block.ld..r * block.ld + block.cols];
                    geglu_row(isa, dst, c, gate, bias, block.col0, out_cols);
                }
            }
        }
    });
    Ok(out)
}

/// The sizes of a 2-D convolution ([`conv2d`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Input `[N, C, H, W]`.
    pub input: [usize; 4],
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvShape {
    /// Output `[N, C_out, H_out, W_out]`, `None` where the kernel does not
    /// fit the padded input or a size is zero.
    pub fn output(&self) -> Option<[usize; 4]> {
        let [n, _, h, w] = self.input;
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        if k == 0 || s == 0 || h + 2 * p < k || w + 2 * p < k {
            return None;
        }
        Some([
            n,
            self.out_channels,
            (h + 2 * p - k) / s + 1,
            (w + 2 * p - k) / s + 1,
        ])
    }
}

/// A convolution as an implicit GEMM on the blocks of [`gemm`], with the
/// smaller operand packed as B: usually output pixels are the rows of A, each
/// row the `C·k·k` patch under the kernel (gathered while packing A's strips,
/// never stored as an im2col matrix), and the weight `[C_out, C·k·k]` is
/// packed as B; where there are fewer output pixels than output channels
/// (the deep levels of a UNet: 2 × 8 × 8 pixels against 1280 channels) the
/// weight rows are A, read in place, and the patches are packed as B's
/// panels. Either way the bias is added and the result written channel-major
/// (`[N, C_out, H_out, W_out]`) by the epilogue. `x` is a contiguous NCHW
/// input, `weight` a contiguous `[C_out, C, k, k]` one.
pub fn conv2d<E: Element>(
    x: &[E],
    shape: ConvShape,
    weight: &[E],
    bias: Option<&[f32]>,
    isa: Isa,
) -> Result<Vec<E>, GemmError> {
    let [n, c, h, w] = shape.input;
    let Some([_, co, oh, ow]) = shape.output() else {
        return Err(GemmError::Shape(format!(
            "convolution {shape:?} has no output"
        )));
    };
    let depth = c * shape.kernel * shape.kernel;
    if x.len() != n * c * h * w || weight.len() != co * depth || bias.is_some_and(|b| b.len() != co)
    {
        return Err(GemmError::Shape(format!(
            "convolution {shape:?} given {} input, {} weight and {:?} bias values",
            x.len(),
            weight.len(),
            bias.map(<[f32]>::len)
        )));
    }
    let pixels = oh * ow;
    let mut out = vec![E::from_f32(0.0); n * co * pixels];
    let out_ptr = SharedOut(out.as_mut_ptr());
    let patches = Patches {
        data: x,
        shape,
        out_hw: [oh, ow],
    };
    if n * pixels < co {
        let lhs = RowMajor {
            data: weight,
            rows: co,
            stride: depth,
        };
        let rhs = PackedRhs::patches(&patches, n * pixels, depth);
        run(&lhs, [co, depth, n * pixels], &rhs, false, isa, |block| {
            // Rows are output channels, columns (image, pixel): write each
            // channel's runs of pixels, split where a run crosses images.
            for r in 0..block.rows {
                let channel = block.first_row + r;
                let b = bias.map_or(0.0, |b| b[channel]);
                let mut j = 0;
                while j < block.cols {
                    let column = block.col0 + j;
                    let (image, pixel) = (column / pixels, column % pixels);
                    let run_len = (block.cols - j).min(pixels - pixel);
                    let start = (image * co + channel) * pixels + pixel;
                    // SAFETY: this block alone writes these pixels of these
                    // channels; `out` outlives `run`.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(start), run_len) };
                    let src = &block.c[r * block.ld + j..r * block.ld + j + run_len];
                    for (o, &v) in dst.iter_mut().zip(src) {
                        *o = E::from_f32(v + b);
                    }
                    j += run_len;
                }
            }
        });
        return Ok(out);
    }
    // [C_out, C·k·k] read as B [C·k·k, C_out].
    let rhs = PackedRhs::pack(weight, 0, [depth, co], [1, depth]);
    run(
        &patches,
        [n * pixels, depth, co],
        &rhs,
        false,
        isa,
        |block| {
            // Rows are (image, pixel); write each output channel's run of pixels,
            // split where the block crosses into the next image.
            let mut r = 0;
            while r < block.rows {
                let row = block.first_row + r;
                let (image, pixel) = (row / pixels, row % pixels);
                let run_len = (block.rows - r).min(pixels - pixel);
                for j in 0..block.cols {
                    let channel = block.col0 + j;
                    let b = bias.map_or(0.0, |b| b[channel]);
                    let start = (image * co + channel) * pixels + pixel;
                    // SAFETY: this block alone writes these rows of these
                    // channels; `out` outlives `run`.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(start), run_len) };
                    for (i, o) in dst.iter_mut().enumerate() {
                        *o = E::from_f32(block.c[(r + i) * block.ld + j] + b);
                    }
                }
                r += run_len;
            }
        },
    );
    Ok(out)
}

/// Where the rows of A come from: [`MR`] of them at a time, into a strip.
trait Lhs: Sync {
    /// Writes `A[first + i, k0 + kk]` to `strip[kk·MR + i]` for `i < MR`
    /// and `kk < kc` (zeros for rows past the end).
    fn pack_strip(&self, first: usize, k0: usize, kc: usize, strip: &mut [f32]);
}

/// A row-major matrix with contiguous rows `stride` apart.
struct RowMajor<'a, E> {
    data: &'a [E],
    rows: usize,
    stride: usize,
}

impl<E: Element> Lhs for RowMajor<'_, E> {
    fn pack_strip(&self, first: usize, k0: usize, kc: usize, strip: &mut [f32]) {
        for i in 0..MR {
            let r = first + i;
            if r < self.rows {
                let start = r * self.stride + k0;
                for (kk, &x) in self.data[start..start + kc].iter().enumerate() {
                    strip[kk * MR + i] = x.to_f32();
                }
            } else {
                for kk in 0..kc {
                    strip[kk * MR + i] = 0.0;
                }
            }
        }
    }
}

/// The patches of an NCHW image batch under a convolution's kernel: row
/// `(image, oy, ox)`, column `(channel, ky, kx)`.
struct Patches<'a, E> {
    data: &'a [E],
    shape: ConvShape,
    out_hw: [usize; 2],
}

impl<E: Element> Lhs for Patches<'_, E> {
    fn pack_strip(&self, first: usize, k0: usize, kc: usize, strip: &mut [f32]) {
        self.gather::<MR>(first, k0, kc, strip);
    }
}

impl<E: Element> Patches<'_, E> {
    /// Writes patch rows `first..first + W` (zeros past the last), columns
    /// `k0..k0 + kc`, to `out[kk·W + i]`: an A strip for `W` = [`MR`], a B
    /// panel for `W` = [`NR`].
    fn gather<const W: usize>(&self, first: usize, k0: usize, kc: usize, out: &mut [f32]) {
        let [n, c, h, w] = self.shape.input;
        let [oh, ow] = self.out_hw;
        let (k, s, p) = (self.shape.kernel, self.shape.stride, self.shape.padding);
        // Per row of the strip: where its image starts and the top-left input
        // position of its patch (shifted by the padding, so never negative).
        let mut base = [usize::MAX; W];
        let mut top = [0usize; W];
        let mut left = [0usize; W];
        for i in 0..W {
            let row = first + i;
            if row < n * oh * ow {
                let (image, pixel) = (row / (oh * ow), row % (oh * ow));
                base[i] = image * c * h * w;
                top[i] = (pixel / ow) * s;
                left[i] = (pixel % ow) * s;
            }
        }
        // All W rows in one output row of one image: a tap reads MR input
        // values `stride` apart, which is a plain strided copy wherever the
        // whole run lies inside the image.
        let one_row = base[0] != usize::MAX
            && base[W - 1] == base[0]
            && top[W - 1] == top[0]
            && left[W - 1] == left[0] + (W - 1) * s;
        let (mut channel, mut ky, mut kx) = (k0 / (k * k), (k0 % (k * k)) / k, k0 % k);
        for kk in 0..kc {
            let dst = &mut out[kk * W..(kk + 1) * W];
            let (y, x0) = (top[0] + ky, left[0] + kx);
            if one_row && y >= p && y < h + p && x0 >= p && x0 + (W - 1) * s < w + p {
                let src = base[0] + (channel * h + y - p) * w + x0 - p;
                if s == 1 {
                    E::widen(&self.data[src..src + W], dst);
                } else {
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = self.data[src + i * s].to_f32();
                    }
                }
            } else {
                for i in 0..W {
                    // Padded coordinates: the input pixel is (y − p, x − p).
                    let (y, x) = (top[i] + ky, left[i] + kx);
                    dst[i] = if base[i] != usize::MAX && y >= p && y < h + p && x >= p && x < w + p
                    {
                        self.data[base[i] + (channel * h + y - p) * w + x - p].to_f32()
                    } else {
                        0.0
                    };
                }
            }
            kx += 1;
            if kx == k {
                kx = 0;
                ky += 1;
                if ky == k {
                    ky = 0;
                    channel += 1;
                }
            }
        }
    }
}

/// One work item's finished product, handed to the writer.
struct Block<'a> {
    first_row: usize,
    rows: usize,
    col0: usize,
    cols: usize,
    /// Row stride of `c` and `gate`.
    ld: usize,
    /// `[rows, cols]`, row stride `ld`.
    c: &'a [f32],
    /// The second half's product (GEGLU's gate), same layout; empty otherwise.
    gate: &'a [f32],
}

/// The blocked product of `lhs` `[M, K]` and `b` over `out_cols` output
/// columns (for `halves`, each output column is a column of both halves),
/// handing each work item's block to `write`.
fn run<L: Lhs>(
    lhs: &L,
    [m, k, out_cols]: [usize; 3],
    b: &PackedRhs<'_>,
    halves: bool,
    isa: Isa,
    write: impl Fn(Block<'_>) + Sync,
) {
    if m == 0 || out_cols == 0 {
        return;
    }
    let row_blocks = m.div_ceil(MC);
    let mut nc = NC;
    while nc > NR && row_blocks * out_cols.div_ceil(nc) < 2 * rayon::current_num_threads() {
        nc /= 2;
    }
    let col_groups = out_cols.div_ceil(nc);
    (0..row_blocks * col_groups).into_par_iter().for_each_init(
        || Scratch {
            a: vec![0.0; MC * KC],
            c: vec![0.0; MC * NC],
            gate: if halves {
                vec![0.0; MC * NC]
            } else {
                Vec::new()
            },
        },
        |scratch, item| {
            let (rb, cg) = (item / col_groups, item % col_groups);
            let rows = MC.min(m - rb * MC);
            let cols = nc.min(out_cols - cg * nc);
            let first_row = rb * MC;
            let first_panel = cg * nc / NR;
            let geometry = [first_row, rows, k, cols, nc];
            block(
                isa,
                lhs,
                geometry,
                b,
                first_panel,
                &mut scratch.a,
                &mut scratch.c,
            );
            if halves {
                let gate_panel = b.second_half_panel() + first_panel;
                block(
                    isa,
                    lhs,
                    geometry,
                    b,
                    gate_panel,
                    &mut scratch.a,
                    &mut scratch.gate,
                );
            }
            write(Block {
                first_row,
                rows,
                col0: cg * nc,
                cols,
                ld: nc,
                c: &scratch.c,
                gate: &scratch.gate,
            });
        },
    );
}

struct Scratch {
    /// One packed `[KC, MC]` block of A (as `MC/MR` strips of `[KC, MR]`).
    a: Vec<f32>,
    /// The item's `[MC, NC]` product.
    c: Vec<f32>,
    /// GEGLU's gate half.
    gate: Vec<f32>,
}

/// The output pointer shared by the work items (each writes its own block).
#[derive(Clone, Copy)]
struct SharedOut<E>(*mut E);
// SAFETY: the work items write disjoint blocks (see `gemm`, `conv2d`).
unsafe impl<E: Send> Send for SharedOut<E> {}
unsafe impl<E: Send> Sync for SharedOut<E> {}
impl<E> SharedOut<E> {
    fn at(self, offset: usize) -> *mut E {
        // SAFETY: callers pass offsets inside the output vector.
        unsafe { self.0.add(offset) }
    }
}

/// `c[.., ..cols] = A[first_row..+rows] · B[:, panels first_panel..]` (row
/// stride `ld`).
fn block<L: Lhs>(
    isa: Isa,
    lhs: &L,
    [first_row, rows, k, cols, ld]: [usize; 5],
    b: &PackedRhs<'_>,
    first_panel: usize,
    a_pack: &mut [f32],
    c: &mut [f32],
) {
    let tiles = rows.div_ceil(MR);
    let panels = cols.div_ceil(NR);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        for t in 0..tiles {
            let strip = &mut a_pack[t * KC * MR..t * KC * MR + kc * MR];
            // Rows past this block's end are packed as zeros by `Lhs` only past
            // the matrix end; clear the rest here.
            lhs.pack_strip(first_row + t * MR, k0, kc, strip);
            let valid = rows - t * MR;
            if valid < MR {
                for kk in 0..kc {
                    strip[kk * MR + valid..(kk + 1) * MR].fill(0.0);
                }
            }
        }
        for p in 0..panels {
            let panel = b.panel(first_panel + p, k0);
            for t in 0..tiles {
                let strip = &a_pack[t * KC * MR..t * KC * MR + kc * MR];
                let c_tile = &mut c[t * MR * ld + p * NR..];
                tile(isa, kc, strip, panel, b.row_step, c_tile, ld, k0 == 0);
            }
        }
        k0 += kc;
    }
}

kernels! {
    fn tile(kc: usize, a: &[f32], b: &[f32], b_step: usize, c: &mut [f32], ld: usize, first: bool) = tile_body;
    fn act_row(dst: &mut [f32], c: &[f32], bias: &[f32], act: Act) = act_body;
    fn geglu_row_kernel(dst: &mut [f32], value: &[f32], gate: &[f32], value_bias: &[f32], gate_bias: &[f32]) = geglu_body;
}

/// One `MR × NR` register tile: `c (+)= a · b` over `kc` (`b`'s rows
/// `b_step` apart, `c`'s `ld` apart).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_body<S: Simd>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    b_step: usize,
    c: &mut [f32],
    ld: usize,
    first: bool,
) {
    let mut acc = [[0f32; NR]; MR];
    if !first {
        for (i, row) in acc.iter_mut().enumerate() {
            row.copy_from_slice(&c[i * ld..i * ld + NR]);
        }
    }
    for (kk, a_col) in a.chunks_exact(MR).take(kc).enumerate() {
        let a_col: &[f32; MR] = a_col.try_into().unwrap();
        let b_row: &[f32; NR] = b[kk * b_step..kk * b_step + NR].try_into().unwrap();
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = S::mul_add(a_col[i], b_row[j], acc[i][j]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        c[i * ld..i * ld + NR].copy_from_slice(row);
    }
}

/// One output row of GEGLU (columns `col0..` of `out_cols`).
fn geglu_row<E: Element>(
    isa: Isa,
    dst: &mut [E],
    value: &[f32],
    gate: &[f32],
    bias: &[f32],
    col0: usize,
    out_cols: usize,
) {
    let cols = dst.len();
    let mut row = [0f32; NC];
    geglu_row_kernel(
        isa,
        &mut row[..cols],
        value,
        gate,
        &bias[col0..col0 + cols],
        &bias[out_cols + col0..out_cols + col0 + cols],
    );
    for (o, &x) in dst.iter_mut().zip(&row[..cols]) {
        *o = E::from_f32(x);
    }
}

#[inline(always)]
fn geglu_body<S: Simd>(
    dst: &mut [f32],
    value: &[f32],
    gate: &[f32],
    value_bias: &[f32],
    gate_bias: &[f32],
) {
    for ((((o, &v), &g), &vb), &gb) in dst
        .iter_mut()
        .zip(value)
        .zip(gate)
        .zip(value_bias)
        .zip(gate_bias)
    {
        *o = (v + vb) * gelu::<S>(g + gb);
    }
}

#[inline(always)]
fn act_body<S: Simd>(dst: &mut [f32], c: &[f32], bias: &[f32], act: Act) {
    let sigmoid_gain = match act {
        Act::QuickGelu => 1.702,
        _ => 1.0,
    };
    match act {
        Act::Gelu => {
            for ((o, &x), &b) in dst.iter_mut().zip(c).zip(bias) {
                *o = gelu::<S>(x + b);
            }
        }
        Act::QuickGelu | Act::Silu => {
            for ((o, &x), &b) in dst.iter_mut().zip(c).zip(bias) {
                let y = x + b;
                *o = y / (1.0 + super::simd::exp::<S>(-sigmoid_gain * y));
            }
        }
    }
}

/// Exact GELU, `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub(crate) fn gelu<S: Simd>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf::<S>(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `erf(x)` within 3e-7 of the exact value: its Maclaurin series to x¹⁹
/// where `|x| < 1` (truncation below 2e-8), elsewhere Abramowitz & Stegun
/// 7.1.26, `1 − t·P(t)·e^{−x²}` with `t = 1/(1 + p|x|)` (within 1.5e-7), sign
/// restored; the rest is f32 rounding. Both are computed and one is selected,
/// so the loop stays branch-free.
#[inline(always)]
pub(crate) fn erf<S: Simd>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    // 2/√π · (−1)^n / (n! (2n + 1)), n = 0..=9.
    const SERIES: [f32; 10] = [
        std::f32::consts::FRAC_2_SQRT_PI,
        -3.7612638e-01,
        1.1283792e-01,
        -2.6866172e-02,
        5.223978e-03,
        -8.548327e-04,
        1.20553326e-04,
        -1.492565e-05,
        1.6462114e-06,
        -1.6365844e-07,
    ];
    let ax = x.abs();
    let t = 1.0 / S::mul_add(P, ax, 1.0);
    let mut poly = A[4];
    poly = S::mul_add(poly, t, A[3]);
    poly = S::mul_add(poly, t, A[2]);
    poly = S::mul_add(poly, t, A[1]);
    poly = S::mul_add(poly, t, A[0]);
    let tail = 1.0 - poly * t * super::simd::exp::<S>(-ax * ax);
    let tail = if x < 0.0 { -tail } else { tail };
    let x2 = x * x;
    let mut series = SERIES[9];
    for &c in SERIES[..9].iter().rev() {
        series = S::mul_add(series, x2, c);
    }
    let series = series * x;
    if ax < 1.0 { series } else { tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(7);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(a: &[f32], b: &[f32], [m, k, n]: [usize; 3]) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for kk in 0..k {
                let x = a[i * k + kk] as f64;
                for j in 0..n {
                    c[i * n + j] += x * b[kk * n + j] as f64;
                }
            }
        }
        c
    }

    fn erf64(x: f64) -> f64 {
        // Series for small |x|, continued fraction for large: exact enough for a test.
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for i in (1..60).rev() {
                f = i as f64 / 2.0 / (x.abs() + f);
            }
            let erfc = (-x * x).exp() / std::f64::consts::PI.sqrt() / (x.abs() + f);
            (1.0 - erfc) * x.signum()
        }
    }

    #[test]
    fn products_match_at_ragged_shapes_on_every_path() {
        for isa in Isa::all_available() {
            for [m, k, n] in [
                [1, 1, 1],
                [7, 3, 17],
                [50, 300, 33],
                [97, 64, 130],
                [13, 513, 16],
                [2, 1030, 260],
            ] {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let bias = values(n, 3);
                let packed = PackedRhs::pack(&b, 0, [k, n], [n, 1]);
                let got = gemm(&a, [m, k], k, &packed, Epilogue::Bias(&bias), isa).unwrap();
                let want = reference(&a, &b, [m, k, n]);
                let (mut err, mut norm) = (0f64, 0f64);
                for i in 0..m {
                    for j in 0..n {
                        let w = want[i * n + j] + bias[j] as f64;
                        err += (got[i * n + j] as f64 - w).powi(2);
                        norm += w * w;
                    }
                }
                let rel = (err / norm).sqrt();
                assert!(rel < 1e-6, "{isa:?} {:?}: {rel:e}", [m, k, n]);
            }
        }
    }

    #[test]
    fn strided_rhs_and_lhs_rows_and_half_types() {
        let (m, k, n) = (20, 37, 40);
        // B stored transposed ([N, K]) and read through strides.
        let bt = values(n * k, 5);
        let mut b = vec![0f32; k * n];
        for kk in 0..k {
            for j in 0..n {
                b[kk * n + j] = bt[j * k + kk];
            }
        }
        let wide = values(m * (k + 5), 6);
        let a: Vec<f32> = (0..m)
            .flat_map(|i| wide[i * (k + 5)..i * (k + 5) + k].to_vec())
            .collect();
        let isa = Isa::detect();
        let strided = PackedRhs::pack(&bt, 0, [k, n], [1, k]);
        let dense = PackedRhs::pack(&b, 0, [k, n], [n, 1]);
        let x = gemm(&wide, [m, k], k + 5, &strided, Epilogue::None, isa).unwrap();
        let y = gemm(&a, [m, k], k, &dense, Epilogue::None, isa).unwrap();
        assert_eq!(x, y);

        let ah: Vec<burn::tensor::f16> =
            a.iter().map(|&v| burn::tensor::f16::from_f32(v)).collect();
        let aw: Vec<f32> = ah.iter().map(|v| v.to_f32()).collect();
        let h = gemm(&ah, [m, k], k, &dense, Epilogue::None, isa).unwrap();
        let w = gemm(&aw, [m, k], k, &dense, Epilogue::None, isa).unwrap();
        for (x, y) in h.iter().zip(&w) {
            assert_eq!(*x, burn::tensor::f16::from_f32(*y));
        }
    }

    #[test]
    fn geglu_epilogue_is_value_times_exact_gelu_of_gate() {
        let (m, k, inner) = (30, 24, 150);
        let a = values(m * k, 8);
        let b = values(k * 2 * inner, 9);
        let bias = values(2 * inner, 10);
        let packed = PackedRhs::pack_halves(&b, 0, [k, 2 * inner], [2 * inner, 1]);
        for isa in Isa::all_available() {
            let got = gemm(&a, [m, k], k, &packed, Epilogue::Geglu(&bias), isa).unwrap();
            assert_eq!(got.len(), m * inner);
            let full = reference(&a, &b, [m, k, 2 * inner]);
            for i in 0..m {
                for j in 0..inner {
                    let v = full[i * 2 * inner + j] + bias[j] as f64;
                    let g = full[i * 2 * inner + inner + j] + bias[inner + j] as f64;
                    let want = v * 0.5 * g * (1.0 + erf64(g / 2f64.sqrt()));
                    let diff = (got[i * inner + j] as f64 - want).abs();
                    assert!(
                        diff < 2e-6 * (1.0 + want.abs()),
                        "{isa:?} ({i}, {j}): {} vs {want}",
                        got[i * inner + j]
                    );
                }
            }
        }
    }

    #[test]
    fn erf_is_within_its_bound() {
        fn erf_slice_body<S: Simd>(xs: &mut [f32]) {
            for x in xs.iter_mut() {
                *x = erf::<S>(*x);
            }
        }
        kernels! {
            fn erf_slice(xs: &mut [f32]) = erf_slice_body;
        }
        let xs: Vec<f32> = (0..20_001).map(|i| -6.0 + i as f32 * 6e-4).collect();
        for isa in Isa::all_available() {
            let mut ys = xs.clone();
            erf_slice(isa, &mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = erf64(x as f64);
                assert!(
                    (y as f64 - want).abs() < 3e-7,
                    "{isa:?}: erf({x}) = {y}, want {want}"
                );
            }
        }
    }

    /// Direct convolution in f64.
    fn conv_reference(x: &[f32], w: &[f32], bias: &[f32], shape: ConvShape) -> Vec<f64> {
        let [n, c, h, wd] = shape.input;
        let [_, co, oh, ow] = shape.output().unwrap();
        let (k, s, p) = (shape.kernel, shape.stride, shape.padding);
        let mut out = vec![0f64; n * co * oh * ow];
        for img in 0..n {
            for o in 0..co {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut acc = bias[o] as f64;
                        for ch in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (
                                        (y * s + ky) as isize - p as isize,
                                        (xx * s + kx) as isize - p as isize,
                                    );
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd
                                    {
                                        acc += x
                                            [((img * c + ch) * h + iy as usize) * wd + ix as usize]
                                            as f64
                                            * w[((o * c + ch) * k + ky) * k + kx] as f64;
                                    }
                                }
                            }
                        }
                        out[((img * co + o) * oh + y) * ow + xx] = acc;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn convolutions_match_the_direct_sum_at_ragged_shapes_on_every_path() {
        // [n, c, h, w, c_out, kernel, stride, padding]
        for [n, c, h, w, co, k, s, p] in [
            [1, 1, 1, 1, 1, 1, 1, 0],
            [2, 3, 7, 5, 4, 3, 1, 1],
            [1, 5, 9, 11, 17, 3, 2, 1],
            [2, 16, 8, 8, 40, 1, 1, 0],
            [1, 4, 6, 6, 3, 3, 2, 0],
            [3, 30, 13, 10, 33, 3, 1, 1],
            [1, 2, 4, 4, 2, 3, 1, 2],
            // Fewer output pixels than output channels: the weight is A.
            [2, 12, 3, 4, 40, 3, 1, 1],
            [1, 7, 5, 5, 50, 3, 2, 1],
            [2, 9, 2, 2, 33, 1, 1, 0],
        ] {
            let shape = ConvShape {
                input: [n, c, h, w],
                out_channels: co,
                kernel: k,
                stride: s,
                padding: p,
            };
            let x = values(n * c * h * w, 11);
            let wt = values(co * c * k * k, 12);
            let bias = values(co, 13);
            let want = conv_reference(&x, &wt, &bias, shape);
            for isa in Isa::all_available() {
                let got = conv2d(&x, shape, &wt, Some(&bias), isa).unwrap();
                assert_eq!(got.len(), want.len());
                let err: f64 = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (*g as f64 - w).powi(2))
                    .sum();
                let norm: f64 = want.iter().map(|w| w * w).sum();
                let rel = (err / norm).sqrt();
                assert!(rel < 1e-6, "{isa:?} {shape:?}: {rel:e}");
            }
        }
        let bad = ConvShape {
            input: [1, 1, 2, 2],
            out_channels: 1,
            kernel: 3,
            stride: 1,
            padding: 0,
        };
        assert!(conv2d(&[0f32; 4], bad, &[0f32; 9], None, Isa::detect()).is_err());
    }

    #[test]
    fn activation_epilogues_apply_after_the_bias() {
        let (m, k, n) = (9, 20, 35);
        let a = values(m * k, 31);
        let b = values(k * n, 32);
        let bias = values(n, 33);
        let packed = PackedRhs::pack(&b, 0, [k, n], [n, 1]);
        let full = reference(&a, &b, [m, k, n]);
        for isa in Isa::all_available() {
            for act in [Act::Gelu, Act::QuickGelu, Act::Silu] {
                let got = gemm(&a, [m, k], k, &packed, Epilogue::BiasAct(&bias, act), isa).unwrap();
                for i in 0..m * n {
                    let y = full[i] + bias[i % n] as f64;
                    let want = match act {
                        Act::Gelu => 0.5 * y * (1.0 + erf64(y / 2f64.sqrt())),
                        Act::QuickGelu => y / (1.0 + (-1.702 * y).exp()),
                        Act::Silu => y / (1.0 + (-y).exp()),
                    };
                    assert!(
                        (got[i] as f64 - want).abs() < 2e-6 * (1.0 + want.abs()),
                        "{isa:?} {act:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn weights_read_in_place_give_the_packed_results() {
        let isa = Isa::detect();
        for [m, k, n] in [[5, 7, 16], [40, 300, 64], [130, 33, 96]] {
            let a = values(m * k, 21);
            // Rows 3 values wider than the matrix, from offset 2.
            let wide = values(2 + k * (n + 3), 22);
            let bias = values(n, 23);
            let view = PackedRhs::view(&wide, 2, [k, n], n + 3, false).unwrap();
            let packed = PackedRhs::pack(&wide, 2, [k, n], [n + 3, 1]);
            let x = gemm(&a, [m, k], k, &view, Epilogue::Bias(&bias), isa).unwrap();
            let y = gemm(&a, [m, k], k, &packed, Epilogue::Bias(&bias), isa).unwrap();
            assert_eq!(x, y);
            let view = PackedRhs::view(&wide, 2, [k, n], n + 3, true);
            if (n / 2) % NR == 0 {
                let halves = PackedRhs::pack_halves(&wide, 2, [k, n], [n + 3, 1]);
                let x = gemm(&a, [m, k], k, &view.unwrap(), Epilogue::Geglu(&bias), isa).unwrap();
                let y = gemm(&a, [m, k], k, &halves, Epilogue::Geglu(&bias), isa).unwrap();
                assert_eq!(x, y);
            } else {
                assert!(view.is_none(), "half panels must be whole");
            }
        }
        assert!(PackedRhs::view(&[0f32; 40], 0, [2, 17], 20, false).is_none());
        assert!(PackedRhs::view(&[0f32; 40], 0, [3, 16], 16, false).is_none());
    }

    #[test]
    fn refuses_shapes_that_do_not_chain() {
        let b = PackedRhs::pack(&[0f32; 12], 0, [3, 4], [4, 1]);
        let a = [0f32; 10];
        assert!(gemm(&a, [2, 5], 5, &b, Epilogue::None, Isa::detect()).is_err());
        assert!(gemm(&a, [4, 3], 3, &b, Epilogue::None, Isa::detect()).is_err());
        assert!(
            gemm(
                &a[..6],
                [2, 3],
                3,
                &b,
                Epilogue::Bias(&[0.0; 3]),
                Isa::detect()
            )
            .is_err()
        );
        assert!(
            gemm(
                &a[..6],
                [2, 3],
                3,
                &b,
                Epilogue::Bias(&[0.0; 4]),
                Isa::detect()
            )
            .is_ok()
        );
    }
}
