//! PyTorch's CPU random generator, reproduced bit for bit, so that a seed gives the
//! same initial latents (and ancestral-sampler noise) as diffusers run with
//! `generator=torch.Generator("cpu").manual_seed(seed)`.
//!
//! Users share seeds with their images; a seed only means something if the same
//! normal samples come out of it. This module follows torch's sources (2.x,
//! checked against torch 2.15):
//!
//! * `CPUGeneratorImpl`: a 32-bit Mersenne Twister (`at::mt19937`) seeded with the
//!   low 32 bits of the 64-bit seed (so seeds `5` and `2**32 + 5` are the same
//!   stream), plus a cached second Box-Muller sample (`next_double_normal_sample`)
//!   that survives across calls.
//! * `torch.randn(n)` for `float32` takes one of two paths
//!   (`aten/src/ATen/native/cpu/DistributionTemplates.h`, `normal_kernel`):
//!   - `n >= 16` (contiguous): `normal_fill` draws `n` 24-bit uniforms, applies a
//!     float Box-Muller to each block of 16 (`u[j]` with `u[j + 8]`), and when `n`
//!     is not a multiple of 16 draws 16 *fresh* uniforms and recomputes the last 16
//!     values. The cached sample is neither used nor touched.
//!   - `n < 16`: one `normal_distribution<double>` per element from 53-bit
//!     uniforms, caching the sine half for the next element (or the next call).
//! * The float Box-Muller of the `n >= 16` path exists twice in torch: builds for
//!   x86-64 CPUs with AVX2 (and AVX-512: same code) use the Cephes-style
//!   `log256_ps`/`sincos256_ps` of `avx_mathfun.h`, emulated here lane by lane with
//!   the fused multiply-adds GCC forms when compiling them ([`BoxMuller::Avx2`],
//!   the default: what diffusers users on x86-64 get); the portable build
//!   (`ATEN_CPU_CAPABILITY=default`, aarch64 Linux) uses scalar `logf`/`cosf`/`sinf`
//!   ([`BoxMuller::Scalar`], exact against glibc's libm; other libms, such as
//!   macOS's, may differ in the last float bit).
//!
//! A multi-dimensional `torch.randn(shape)` is the same stream as a flat
//! `torch.randn(numel)`: only the element count matters.

use crate::error::{Result, SchedulerError};
use crate::tensor::{CpuTensor, NoiseSource};

/// Which of torch's two float Box-Muller implementations to reproduce (see the module docs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum BoxMuller {
    /// `avx_mathfun.h` polynomials: torch on x86-64 with AVX2 or AVX-512.
    #[default]
    Avx2,
    /// libm `logf`/`cosf`/`sinf`: torch's portable CPU build.
    Scalar,
}

/// `torch.Generator("cpu").manual_seed(seed)`.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    /// torch's `next_double_normal_sample_`: the unused half of the last scalar
    /// Box-Muller pair.
    next_normal: Option<f64>,
    box_muller: BoxMuller,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.engine.seed)
            .field("next_normal", &self.next_normal)
            .field("box_muller", &self.box_muller)
            .finish()
    }
}

impl TorchGenerator {
    /// A generator seeded as `torch.Generator().manual_seed(seed)`, reproducing the
    /// AVX2 Box-Muller.
    pub fn new(seed: u64) -> Self {
        Self::with_box_muller(seed, BoxMuller::default())
    }

    /// A generator that reproduces the given float Box-Muller.
    pub fn with_box_muller(seed: u64, box_muller: BoxMuller) -> Self {
        Self {
            engine: Mt19937::new(seed),
            next_normal: None,
            box_muller,
        }
    }

    /// The seed given to [`TorchGenerator::new`] (`torch.Generator.initial_seed()`).
    pub fn initial_seed(&self) -> u64 {
        self.engine.seed
    }

    /// The Box-Muller this generator reproduces.
    pub fn box_muller(&self) -> BoxMuller {
        self.box_muller
    }

    /// `torch.randn(n, generator=g)` in `float32`; any shape with `n` elements
    /// gives the same values in row-major order.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n >= 16 {
            self.normal_fill(n)
        } else {
            (0..n).map(|_| self.normal_f64() as f32).collect()
        }
    }

    /// torch's `normal_fill` (see the module docs).
    fn normal_fill(&mut self, n: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        let box_muller = self.box_muller;
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block, box_muller);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail, box_muller);
        }
        data
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one draw.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of two draws.
    fn uniform_f64(&mut self) -> f64 {
        let hi = self.engine.next_u32() as u64;
        let lo = self.engine.next_u32() as u64;
        (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `normal_distribution<double>(0, 1)` with torch's one-sample cache.
    fn normal_f64(&mut self) -> f64 {
        // `transformation::normal(ret, mean, std)` = `ret * std + mean`.
        if let Some(cached) = self.next_normal.take() {
            return cached * 1.0 + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_normal = Some(r * theta.sin());
        r * theta.cos() * 1.0 + 0.0
    }
}

/// Box-Muller over one block of 16 uniforms in place: `u[j]` (radius) pairs with
/// `u[j + 8]` (angle); cosines go to the first half, sines to the second.
fn box_muller_16(block: &mut [f32], box_muller: BoxMuller) {
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let (c, s) = match box_muller {
            BoxMuller::Scalar => {
                let radius = (-2.0 * u1.ln()).sqrt();
                // `2.0f * c10::pi<double> * u2` is evaluated in double.
                let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
                (radius * theta.cos(), radius * theta.sin())
            }
            BoxMuller::Avx2 => {
                let radius = (-2.0 * avx::log(u1)).sqrt();
                let theta = (2.0 * std::f64::consts::PI) as f32 * u2;
                let (s, c) = avx::sincos(theta);
                (radius * c, radius * s)
            }
        };
        // `fma(n, std, mean)` with std = 1, mean = 0.
        block[j] = c.mul_add(1.0, 0.0);
        block[j + 8] = s.mul_add(1.0, 0.0);
    }
}

/// One lane of `avx_mathfun.h`'s `log256_ps` and `sincos256_ps`, with `mul_add`
/// exactly where GCC contracts a multiply and the add that consumes it into one
/// `vfmadd` (torch's Linux wheels are GCC builds with `-mfma`). Which products GCC
/// fuses was settled against torch 2.15: with these choices a million samples are
/// bit-identical, with the other candidates up to a thousand differ by one ulp
/// (fusing the `x + y * DP` reduction or not made no difference over 16M samples).
// The constants are the header's literals, digit for digit.
#[allow(clippy::excessive_precision, clippy::approx_constant)]
mod avx {
    /// The header's constants are C `double` literals stored as `float`.
    const fn f(x: f64) -> f32 {
        x as f32
    }
    const SQRTHF: f32 = f(0.707106781186547524);
    const LOG_P: [f32; 9] = [
        f(7.0376836292E-2),
        f(-1.1514610310E-1),
        f(1.1676998740E-1),
        f(-1.2420140846E-1),
        f(1.4249322787E-1),
        f(-1.6668057665E-1),
        f(2.0000714765E-1),
        f(-2.4999993993E-1),
        f(3.3333331174E-1),
    ];
    const LOG_Q1: f32 = f(-2.12194440e-4);
    const LOG_Q2: f32 = f(0.693359375);

    /// `log256_ps` for `x` in `(0, 1]` (the only inputs Box-Muller gives it).
    pub(super) fn log(x: f32) -> f32 {
        let x = x.max(f32::from_bits(0x0080_0000));
        let bits = x.to_bits();
        let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
        let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
        // if x < SQRTHF { e -= 1; x = x + x - 1 } else { x = x - 1 }
        let below = x < SQRTHF;
        let tmp = if below { x } else { 0.0 };
        x -= 1.0;
        e -= if below { 1.0 } else { 0.0 };
        x += tmp;
        let z = x * x;
        let mut y = LOG_P[0];
        for p in &LOG_P[1..] {
            y = y.mul_add(x, *p);
        }
        y *= x;
        // GCC fuses `y * z` (not `e * q1`) into the add: checked against torch.
        y = y.mul_add(z, e * LOG_Q1);
        y = (-z).mul_add(0.5, y);
        e.mul_add(LOG_Q2, x + y)
    }

    const FOPI: f32 = f(1.27323954473516);
    const MINUS_DP: [f32; 3] = [
        f(-0.78515625),
        f(-2.4187564849853515625e-4),
        f(-3.77489497744594108e-8),
    ];
    const SINCOF: [f32; 3] = [f(-1.9515295891E-4), f(8.3321608736E-3), f(-1.6666654611E-1)];
    const COSCOF: [f32; 3] = [
        f(2.443315711809948E-005),
        f(-1.388731625493765E-003),
        f(4.166664568298827E-002),
    ];

    /// `sincos256_ps`: `(sin x, cos x)`.
    pub(super) fn sincos(x: f32) -> (f32, f32) {
        let sign_sin = x.to_bits() & 0x8000_0000;
        let mut x = x.abs();
        let mut j = (x * FOPI) as i32;
        j = (j + 1) & !1;
        let y = j as f32;
        let swap_sin = ((j & 4) as u32) << 29;
        let poly_mask = (j & 2) == 0;
        for dp in MINUS_DP {
            x = y.mul_add(dp, x);
        }
        let sign_cos = ((!(j - 2) & 4) as u32) << 29;
        let sign_sin = sign_sin ^ swap_sin;

        let z = x * x;
        let mut yc = COSCOF[0];
        yc = yc.mul_add(z, COSCOF[1]);
        yc = yc.mul_add(z, COSCOF[2]);
        yc *= z;
        yc = yc.mul_add(z, -(z * 0.5));
        yc += 1.0;

        let mut ys = SINCOF[0];
        ys = ys.mul_add(z, SINCOF[1]);
        ys = ys.mul_add(z, SINCOF[2]);
        ys *= z;
        ys = ys.mul_add(x, x);

        let ysin2 = if poly_mask { ys } else { 0.0 };
        let ysin1 = if poly_mask { 0.0 } else { yc };
        let ys = ys - ysin2;
        let yc = yc - ysin1;
        let s = ysin1 + ysin2;
        let c = yc + ys;
        (
            f32::from_bits(s.to_bits() ^ sign_sin),
            f32::from_bits(c.to_bits() ^ sign_cos),
        )
    }
}

/// torch's `at::mt19937`: the standard 32-bit Mersenne Twister.
#[derive(Clone)]
struct Mt19937 {
    seed: u64,
    state: [u32; 624],
    next: usize,
    left: usize,
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    /// `init_with_uint32`: only the low 32 bits of the seed count.
    fn new(seed: u64) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed as u32;
        for j in 1..Self::N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            seed,
            state,
            next: 0,
            left: 1,
        }
    }

    fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..Self::N {
            let mixed =
                (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % Self::N] & 0x7fff_ffff);
            let twisted = (mixed >> 1)
                ^ if self.state[(i + 1) % Self::N] & 1 == 1 {
                    0x9908_b0df
                } else {
                    0
                };
            self.state[i] = self.state[(i + Self::M) % Self::N] ^ twisted;
        }
        self.left = Self::N;
        self.next = 0;
    }
}

/// Noise drawn as diffusers' `randn_tensor` draws it from CPU generators.
///
/// With one generator the whole tensor is one `torch.randn(shape)`. With a list
/// (`generator=[g0, g1, ...]`, one seed per image) item `i` is
/// `torch.randn((1, *shape[1:]), generator=g_i)` and the items are concatenated; a
/// list of one behaves as a single generator, as in diffusers.
#[derive(Debug, Clone)]
pub struct TorchNoise {
    generators: Vec<TorchGenerator>,
}

impl TorchNoise {
    /// One generator for the whole batch (`generator=torch.Generator().manual_seed(seed)`).
    pub fn new(seed: u64) -> Self {
        Self::from_generators(vec![TorchGenerator::new(seed)])
    }

    /// One generator per batch item, seeded in order.
    pub fn per_item(seeds: &[u64]) -> Self {
        Self::from_generators(seeds.iter().map(|&s| TorchGenerator::new(s)).collect())
    }

    /// Generators as given (e.g. built with another [`BoxMuller`] or already advanced).
    pub fn from_generators(generators: Vec<TorchGenerator>) -> Self {
        Self { generators }
    }

    /// The generators, in batch order.
    pub fn generators(&self) -> &[TorchGenerator] {
        &self.generators
    }

    /// `randn_tensor(shape, generator=...)` as row-major `f32` values. Errors when
    /// the shape has no batch dimension, or when a list of several generators has
    /// fewer generators than batch items.
    pub fn draw(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        let Some((&batch, rest)) = shape.split_first() else {
            return Err(SchedulerError::InvalidArgument {
                field: "shape",
                value: "[]".into(),
                reason: "randn_tensor needs a batch dimension".into(),
            });
        };
        match self.generators.as_mut_slice() {
            [] => Err(SchedulerError::InvalidArgument {
                field: "generator",
                value: "[]".into(),
                reason: "an empty list of generators".into(),
            }),
            [single] => Ok(single.randn(shape.iter().product())),
            many if many.len() < batch => Err(SchedulerError::InvalidArgument {
                field: "generator",
                value: format!("a list of {} generators", many.len()),
                reason: format!("the batch size is {batch}; pass one generator per item"),
            }),
            // diffusers draws item i from generator i for i < batch: a draw for
            // fewer items (inpainting encodes its one image with the first
            // generator) uses the first generators only.
            many => {
                let per_item: usize = rest.iter().product();
                Ok(many
                    .iter_mut()
                    .take(batch)
                    .flat_map(|g| g.randn(per_item))
                    .collect())
            }
        }
    }
}

impl NoiseSource<CpuTensor> for TorchNoise {
    fn noise(&mut self, like: &CpuTensor) -> Result<CpuTensor> {
        use crate::tensor::SchedulerTensor;
        let shape = like.shape();
        CpuTensor::new(self.draw(&shape)?, shape)
    }
}
