//! The instruction sets the host kernels are compiled for, chosen at run time.
//!
//! Every kernel body is written once, as plain loops over fixed-size `[f32; N]`
//! chunks that LLVM vectorises, generic over a `Simd` marker that says
//! whether a fused multiply-add instruction exists. The body is then compiled
//! three times: inside an `avx512f` function, inside an `avx2,fma` function and
//! as portable code (whatever the build's baseline is, SSE2 on x86-64), and
//! [`Isa::detect`] picks one when the process first asks (`is_x86_feature_detected!`).
//! The `kernels!` macro writes the three wrappers and the dispatch.

/// One of the instruction sets a kernel is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The build's baseline (no FMA assumed): every CPU.
    Portable,
    /// x86-64 with AVX2 and FMA (8 f32 lanes).
    Avx2,
    /// x86-64 with AVX-512F (16 f32 lanes).
    Avx512,
}

impl Isa {
    /// The widest instruction set this CPU has (detected once per process).
    pub fn detect() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            [Isa::Avx512, Isa::Avx2]
                .into_iter()
                .find(|isa| isa.available())
                .unwrap_or(Isa::Portable)
        })
    }

    /// Whether this CPU can run code compiled for `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every instruction set this CPU can run, narrowest first (for tests).
    pub fn all_available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.available())
            .collect()
    }
}

/// What a kernel body may assume about the instructions it is compiled with.
pub(crate) trait Simd: Copy {
    /// Whether `mul_add` is one instruction. Without it `f32::mul_add` would
    /// call the C library's exact `fmaf`, so the portable path multiplies and
    /// adds (one more rounding, well within the kernels' tolerances).
    const FMA: bool;

    /// `a * b + c`.
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        if Self::FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
}

/// The portable build of a body.
#[derive(Clone, Copy)]
pub(crate) struct Portable;
impl Simd for Portable {
    const FMA: bool = false;
}

/// The AVX2 / AVX-512 builds of a body (both have FMA).
#[derive(Clone, Copy)]
pub(crate) struct WithFma;
impl Simd for WithFma {
    const FMA: bool = true;
}

/// `kernels! { pub(crate) fn name(args) -> Ret = body_fn; }` defines `name(isa, args)`,
/// which runs `body_fn::<S>(args)` compiled for `isa` (falling back to the
/// portable build where `isa` is not available on this CPU).
macro_rules! kernels {
    ($($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;)*) => {$(
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: $crate::kernels::simd::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body::<$crate::kernels::simd::WithFma>($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body::<$crate::kernels::simd::WithFma>($($arg),*)
                }
                match isa {
                    // SAFETY: `available` checked the CPU has the features
                    // these functions are compiled with.
                    $crate::kernels::simd::Isa::Avx512 if isa.available() => {
                        return unsafe { avx512($($arg),*) };
                    }
                    $crate::kernels::simd::Isa::Avx2 if isa.available() => {
                        return unsafe { avx2($($arg),*) };
                    }
                    _ => {}
                }
            }
            let _ = isa;
            $body::<$crate::kernels::simd::Portable>($($arg),*)
        }
    )*};
}
pub(crate) use kernels;

/// Lanes of the chunks the bodies work on (two AVX2 registers, one AVX-512).
pub(crate) const LANES: usize = 16;

/// 2^x for one value, as the vector loops compute it: x clamped to
/// [-126, 127] (NaN stays NaN), split into a nearest integer `n` and
/// `f ∈ [-½, ½]`, 2^f by its degree-7 Taylor polynomial (truncation error
/// below 6e-9; the f32 result is within 2 ulp of `exp2`) and 2^n built in
/// the exponent bits.
#[inline(always)]
pub(crate) fn exp2<S: Simd>(x: f32) -> f32 {
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const C: [f32; 7] = [
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        1.540_353e-4,
        1.525_273_4e-5,
    ];
    // Written as compare-and-select so that a NaN passes through.
    let x = if x < -126.0 { -126.0 } else { x };
    let x = if x > 127.0 { 127.0 } else { x };
    let rounded = x + ROUND;
    let n = rounded - ROUND;
    let f = x - n;
    // n as an integer, read from the mantissa bits of `rounded` (a float to
    // int cast would be scalarised for its saturation rules).
    let n_bits = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let mut p = C[6];
    p = S::mul_add(p, f, C[5]);
    p = S::mul_add(p, f, C[4]);
    p = S::mul_add(p, f, C[3]);
    p = S::mul_add(p, f, C[2]);
    p = S::mul_add(p, f, C[1]);
    p = S::mul_add(p, f, C[0]);
    p = S::mul_add(p, f, 1.0);
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// `e^x` through [`exp2`].
#[inline(always)]
pub(crate) fn exp<S: Simd>(x: f32) -> f32 {
    exp2::<S>(x * std::f32::consts::LOG2_E)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(always)]
    fn exp2_slice_body<S: Simd>(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = exp2::<S>(*x);
        }
    }
    kernels! {
        fn exp2_slice(xs: &mut [f32]) = exp2_slice_body;
    }

    #[test]
    fn exp2_is_within_two_ulp_on_every_path() {
        let xs: Vec<f32> = (0..200_001).map(|i| -100.0 + i as f32 * 5.5e-4).collect();
        for isa in Isa::all_available() {
            let mut ys = xs.clone();
            exp2_slice(isa, &mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = (x as f64).exp2();
                let rel = ((y as f64 - want) / want).abs();
                assert!(
                    rel < 2.5e-7,
                    "{isa:?}: exp2({x}) = {y}, want {want} (rel {rel:e})"
                );
            }
        }
    }

    #[test]
    fn exp2_clamps_and_keeps_nan() {
        for isa in Isa::all_available() {
            let mut ys = vec![f32::NEG_INFINITY, -1000.0, f32::NAN, 0.0, 1000.0];
            exp2_slice(isa, &mut ys);
            assert!(ys[0] > 0.0 && ys[0] < 1.2e-38, "{isa:?}: {ys:?}");
            assert!(ys[1] > 0.0 && ys[1] < 1.2e-38, "{isa:?}: {ys:?}");
            assert!(ys[2].is_nan(), "{isa:?}: {ys:?}");
            assert_eq!(ys[3], 1.0, "{isa:?}");
            assert!(ys[4] > 1.0e38 && ys[4].is_finite(), "{isa:?}: {ys:?}");
        }
    }
}
