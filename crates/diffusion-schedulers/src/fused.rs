//! A scheduler step's element-wise part, written once and run two ways.
//!
//! A step is a handful of element-wise operations (the `x0` prediction, a clamp,
//! the derivative, the update, the noise term). Applied one at a time, each reads
//! one to three latent-sized tensors and writes one, so a step streams the latent
//! through memory five to ten times, where a copy streams it once.
//!
//! A step therefore writes its element-wise part once, as a [`Kernel`]: a
//! function generic over the [`Arith`] it computes in. [`run`] hands it to the
//! tensor type ([`SchedulerTensor::evaluate`]), which picks how to compute it:
//!
//! - recorded into a [`Program`] (the kernel applied once to symbolic values)
//!   and applied one operation at a time through the trait's own methods: the
//!   default, what Burn backends with kernel fusion want;
//! - [`crate::CpuTensor`] applies the kernel itself to a few vector registers of
//!   every input at a time (a block of 32 elements with AVX-512, 16 otherwise):
//!   each input is read once, each output written once, and no intermediate
//!   value leaves the registers.
//!
//! Both round exactly alike: every linear combination is accumulated left to
//! right in `f32` (coefficients rounded to `f32`), as
//! [`SchedulerTensor::linear_combination`] specifies, with no fused
//! multiply-add.
//!
//! The finiteness check of a step's inputs is part of the pass: the first
//! inputs of a step are named and checked, on the data the pass reads anyway.

use crate::error::{Result, SchedulerError};
use crate::tensor::SchedulerTensor;

/// The arithmetic a [`Kernel`] is written in: element-wise linear combinations
/// and clamps of values of one shape.
pub trait Arith {
    /// A value: a symbolic one for [`Program`], a block of lanes for the CPU.
    type V: Copy;

    /// Input `i` of the step, in the order [`run`] was given them.
    fn input(&mut self, i: usize) -> Self::V;

    /// `sum_k c_k * x_k`, accumulated left to right in `f32` (the coefficients
    /// rounded to `f32`), as [`SchedulerTensor::linear_combination`].
    fn linear<const K: usize>(&mut self, terms: [(f64, Self::V); K]) -> Self::V;

    /// Element-wise clamp to `[min, max]`; a NaN passes through, as `torch.clamp`.
    fn clamp(&mut self, x: Self::V, min: f64, max: f64) -> Self::V;

    /// `a * x`.
    #[inline(always)]
    fn scale(&mut self, x: Self::V, a: f64) -> Self::V {
        self.linear([(a, x)])
    }
}

/// A step's element-wise part: reads its inputs through [`Arith::input`] and
/// returns its `M` outputs. Its control flow may depend on its own fields
/// (the step's coefficients and options) but not on the values, so that the
/// recorded [`Program`] is the computation the CPU runs.
///
/// Implementations mark `apply` (and every function it calls)
/// `#[inline(always)]` and use no closures: the CPU pass instantiates it
/// inside a loop compiled for AVX-512, and code that is not inlined there is
/// compiled without AVX-512, so that each vector operation in it becomes a
/// call (a closure in UniPC's kernel made its step 30× slower).
pub trait Kernel<const M: usize> {
    fn apply<A: Arith>(&self, a: &mut A) -> [A::V; M];
}

/// Run `kernel` on `inputs` (all of one shape). The first `checked.len()`
/// inputs are checked for non-finite values, reported under those names (in
/// order); the others (noise, a scheduler's own state) are taken as they are.
/// Output `o` is computed when `want[o]` (and then always `Some`: a tensor
/// implementation that leaves it out is an error), else `None` (it costs a
/// latent-sized write).
///
/// ```
/// use diffusion_schedulers::CpuTensor;
/// use diffusion_schedulers::fused::{self, Arith, Kernel};
///
/// /// `x0 = clamp(s - m / 2, -1, 1)`, `prev = (x0 + s) / 2`.
/// struct Step;
/// impl Kernel<2> for Step {
///     #[inline(always)]
///     fn apply<A: Arith>(&self, a: &mut A) -> [A::V; 2] {
///         let (m, s) = (a.input(0), a.input(1));
///         let x0 = a.linear([(1.0, s), (-0.5, m)]);
///         let x0 = a.clamp(x0, -1.0, 1.0);
///         [a.linear([(0.5, x0), (0.5, s)]), x0]
///     }
/// }
/// let m = CpuTensor::new(vec![1.0, 4.0], vec![1, 2]).unwrap();
/// let s = CpuTensor::new(vec![2.0, 2.0], vec![1, 2]).unwrap();
/// let [prev, x0] = fused::run(&Step, &[&m, &s], &["m", "s"], [true, true]).unwrap();
/// assert_eq!(x0.unwrap().data(), &[1.0, 0.0]);
/// assert_eq!(prev.unwrap().data(), &[1.5, 1.0]);
/// ```
pub fn run<T: SchedulerTensor, K: Kernel<M>, const M: usize>(
    kernel: &K,
    inputs: &[&T],
    checked: &[&'static str],
    want: [bool; M],
) -> Result<[Option<T>; M]> {
    let names: Vec<Option<&'static str>> =
        (0..inputs.len()).map(|i| checked.get(i).copied()).collect();
    if checked.len() > inputs.len() {
        return Err(SchedulerError::InvalidArgument {
            field: "inputs",
            value: inputs.len().to_string(),
            reason: format!("{} inputs are named as checked", checked.len()),
        });
    }
    let (program, outputs) = Program::record(kernel, names);
    program.validate(inputs, &outputs)?;
    let values = T::evaluate(kernel, &program, &outputs, inputs, want)?;
    // A tensor implementation that leaves out a wanted output fails the step
    // here, before the scheduler has changed any state.
    if let Some(o) = (0..M).find(|&o| want[o] && values[o].is_none()) {
        return Err(SchedulerError::InvalidArgument {
            field: "evaluate",
            value: format!("output {o}"),
            reason: "a tensor implementation did not return a wanted output".into(),
        });
    }
    Ok(values)
}

/// A value of a [`Program`]: one of its inputs, or the result of one of its
/// operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val {
    Input(usize),
    Op(usize),
}

/// One element-wise operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `sum_i c_i * x_i`, accumulated left to right in `f32` (the coefficients
    /// rounded to `f32`), as [`SchedulerTensor::linear_combination`].
    Linear(Vec<(f64, Val)>),
    /// Element-wise clamp to `[min, max]`; a NaN passes through, as `torch.clamp`.
    Clamp { x: Val, min: f64, max: f64 },
}

/// A [`Kernel`] recorded as a sequence of element-wise operations over its
/// inputs: what a tensor type that computes one operation at a time (or fuses
/// operations itself) runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Program {
    /// Per input: the name it is reported under when it holds a non-finite
    /// value, or `None` when it is not checked.
    inputs: Vec<Option<&'static str>>,
    ops: Vec<Op>,
    /// Per input: whether the kernel reads it (an index beyond the inputs
    /// given makes the program invalid).
    read: Vec<bool>,
}

impl Program {
    /// Apply `kernel` once to symbolic values: the program of its operations
    /// and the values of its outputs. `inputs` names the checked inputs.
    pub fn record<K: Kernel<M>, const M: usize>(
        kernel: &K,
        inputs: Vec<Option<&'static str>>,
    ) -> (Program, [Val; M]) {
        let mut p = Program {
            inputs,
            ..Program::default()
        };
        let outputs = kernel.apply(&mut p);
        (p, outputs)
    }

    /// Number of declared inputs.
    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }

    /// The name of each input that is checked for non-finite values.
    pub fn input_names(&self) -> &[Option<&'static str>] {
        &self.inputs
    }

    /// Whether the kernel reads input `i`.
    pub fn reads(&self, i: usize) -> bool {
        self.read.get(i).copied().unwrap_or(false)
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    fn push(&mut self, op: Op) -> Val {
        self.ops.push(op);
        Val::Op(self.ops.len() - 1)
    }

    /// The kernel read only the inputs given, every input has the same shape,
    /// and every output exists.
    fn validate<T: SchedulerTensor>(&self, inputs: &[&T], outputs: &[Val]) -> Result<()> {
        let read_beyond = self.read.len() > inputs.len();
        let known = |v: &Val| match *v {
            Val::Input(i) => i < inputs.len(),
            Val::Op(j) => j < self.ops.len(),
        };
        if read_beyond || !outputs.iter().all(known) || inputs.len() != self.inputs.len() {
            return Err(SchedulerError::InvalidArgument {
                field: "inputs",
                value: inputs.len().to_string(),
                reason: format!(
                    "the step reads input index {} of {} given",
                    self.read.len().saturating_sub(1),
                    inputs.len()
                ),
            });
        }
        let shape = inputs.first().map(|t| t.shape()).unwrap_or_default();
        for (i, t) in inputs.iter().enumerate().skip(1) {
            if t.shape() != shape {
                return Err(SchedulerError::ShapeMismatch {
                    what: self.inputs[i].unwrap_or("step input"),
                    expected: shape,
                    got: t.shape(),
                });
            }
        }
        Ok(())
    }
}

impl Arith for Program {
    type V = Val;

    fn input(&mut self, i: usize) -> Val {
        if self.read.len() <= i {
            self.read.resize(i + 1, false);
        }
        self.read[i] = true;
        Val::Input(i)
    }

    fn linear<const K: usize>(&mut self, terms: [(f64, Val); K]) -> Val {
        const { assert!(K > 0, "a linear combination needs a term") };
        self.push(Op::Linear(terms.to_vec()))
    }

    fn clamp(&mut self, x: Val, min: f64, max: f64) -> Val {
        self.push(Op::Clamp { x, min, max })
    }
}

/// What [`SchedulerTensor::evaluate`] does by default: check the checked
/// inputs, then apply the program's operations one at a time through the
/// trait's own methods, and return the wanted outputs.
pub fn evaluate_unfused<T: SchedulerTensor, const M: usize>(
    program: &Program,
    outputs: &[Val; M],
    inputs: &[&T],
    want: [bool; M],
) -> Result<[Option<T>; M]> {
    first_non_finite(program, |i| inputs[i].all_finite())?;
    let mut values: Vec<T> = Vec::with_capacity(program.ops.len());
    for op in &program.ops {
        let get = |v: Val| match v {
            Val::Input(i) => inputs[i],
            Val::Op(k) => &values[k],
        };
        let value = match op {
            Op::Linear(terms) => {
                let terms: Vec<(f64, &T)> = terms.iter().map(|&(c, v)| (c, get(v))).collect();
                T::linear_combination(&terms)
            }
            Op::Clamp { x, min, max } => get(*x).clamp(*min, *max),
        };
        values.push(value);
    }
    Ok(std::array::from_fn(|o| {
        want[o].then(|| match outputs[o] {
            Val::Input(i) => inputs[i].clone(),
            Val::Op(k) => values[k].clone(),
        })
    }))
}

/// The error for the first checked input (in declaration order) for which
/// `finite(i)` is false.
pub(crate) fn first_non_finite(
    program: &Program,
    mut finite: impl FnMut(usize) -> bool,
) -> Result<()> {
    for (i, name) in program.inputs.iter().enumerate() {
        if let Some(name) = name
            && !finite(i)
        {
            return Err(SchedulerError::NonFinite(name));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::CpuTensor;

    fn t(data: &[f32]) -> CpuTensor {
        CpuTensor::new(data.to_vec(), vec![1, data.len()]).unwrap()
    }

    /// A kernel exercising every operation and operand kind: two checked
    /// inputs and an unchecked one, a clamp read later, a four-term
    /// combination, a scale, an input as an output, an output twice, and an
    /// overflow to infinity (also the kernel of `kernels`' path tests).
    pub(crate) struct Every;

    impl Kernel<5> for Every {
        #[inline(always)]
        fn apply<A: Arith>(&self, a: &mut A) -> [A::V; 5] {
            let (x, y, z) = (a.input(0), a.input(1), a.input(2));
            let u = a.linear([(0.3, x), (-1.7, y)]);
            let c = a.clamp(u, -0.5, 0.75);
            let v = a.linear([(1.0, x), (0.1, c), (2.5, z), (-0.25, u)]);
            let w = a.scale(v, 1.0 / 3.0);
            [w, c, z, w, a.linear([(1e38, w), (1e38, y), (3.0, x)])]
        }
    }

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 3.0)
            .collect()
    }

    fn bits(t: Option<CpuTensor>) -> Option<Vec<u32>> {
        t.map(|t| t.data().iter().map(|v| v.to_bits()).collect())
    }

    fn unfused(inputs: &[&CpuTensor], want: [bool; 5]) -> Result<[Option<CpuTensor>; 5]> {
        let (p, outputs) = Program::record(&Every, vec![Some("a"), Some("b"), None]);
        evaluate_unfused(&p, &outputs, inputs, want)
    }

    #[test]
    fn cpu_pass_equals_operation_at_a_time_bit_for_bit() {
        // Several blocks and a ragged end; one value overflows to infinity.
        for n in [1, 15, 16, 17, 3 * 4096 + 77] {
            let (a, b, z) = (t(&ramp(n, 0.1)), t(&ramp(n, 1.3)), t(&ramp(n, 2.9)));
            for want in [[true; 5], [false, true, false, true, true]] {
                let fused = run(&Every, &[&a, &b, &z], &["a", "b"], want).unwrap();
                let plain = unfused(&[&a, &b, &z], want).unwrap();
                assert_eq!(fused.map(bits), plain.map(bits), "n = {n}");
            }
        }
        // And the unfused path is the trait's own ops, applied by hand.
        let n = 100;
        let (a, b, z) = (t(&ramp(n, 0.1)), t(&ramp(n, 1.3)), t(&ramp(n, 2.9)));
        let [w, c, zz, w2, _] = unfused(&[&a, &b, &z], [true; 5])
            .unwrap()
            .map(Option::unwrap);
        let u = CpuTensor::linear_combination(&[(0.3, &a), (-1.7, &b)]);
        let c_hand = u.clamp(-0.5, 0.75);
        let v = CpuTensor::linear_combination(&[(1.0, &a), (0.1, &c_hand), (2.5, &z), (-0.25, &u)]);
        assert_eq!(w, v.scale(1.0 / 3.0));
        assert_eq!(c, c_hand);
        assert_eq!(zz, z);
        assert_eq!(w2, w);
    }

    #[test]
    fn non_finite_inputs_are_named_in_order_and_unchecked_ones_pass() {
        let n = 5000;
        let good = t(&ramp(n, 0.0));
        for at in [3, 4500, n - 1] {
            let mut bad = ramp(n, 0.0);
            bad[at] = f32::NAN;
            let bad = t(&bad);
            let mut inf = ramp(n, 0.0);
            inf[at] = f32::NEG_INFINITY;
            let inf = t(&inf);
            let fused = |i: &[&CpuTensor]| run(&Every, i, &["a", "b"], [true; 5]);
            let plain = |i: &[&CpuTensor]| unfused(i, [true; 5]);
            for eval in [&fused as &dyn Fn(&[&CpuTensor]) -> _, &plain] {
                let err = eval(&[&good, &bad, &good]).unwrap_err();
                assert!(matches!(err, SchedulerError::NonFinite("b")), "{err}");
                let err = eval(&[&inf, &bad, &good]).unwrap_err();
                assert!(matches!(err, SchedulerError::NonFinite("a")), "{err}");
                assert!(eval(&[&good, &good, &bad]).is_ok());
            }
        }
    }

    #[test]
    fn run_checks_the_inputs() {
        let (a, b) = (t(&[1.0, 2.0]), t(&[1.0, 2.0, 3.0]));
        assert!(matches!(
            run(&Every, &[&a, &b, &a], &["a", "b"], [true; 5]),
            Err(SchedulerError::ShapeMismatch { what: "b", .. })
        ));
        // The kernel reads input 2 of two.
        assert!(matches!(
            run(&Every, &[&a, &a], &["a", "b"], [true; 5]),
            Err(SchedulerError::InvalidArgument {
                field: "inputs",
                ..
            })
        ));
        assert!(matches!(
            run(&Every, &[&a, &a, &a], &["a", "b", "c", "d"], [true; 5]),
            Err(SchedulerError::InvalidArgument {
                field: "inputs",
                ..
            })
        ));
    }
}
