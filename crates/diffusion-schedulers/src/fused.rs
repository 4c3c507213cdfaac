//! A scheduler step as one small element-wise program, evaluated in one pass.
//!
//! A step is a handful of element-wise operations (the `x0` prediction, a clamp,
//! the derivative, the update, the noise term). Applied one at a time, each reads
//! one to three latent-sized tensors and writes one, so a step streams the latent
//! through memory five to ten times, where a copy streams it once. A [`Program`]
//! records the same operations, with the same coefficients and in the same order,
//! and [`SchedulerTensor::evaluate`] runs them: the default implementation one
//! operation at a time (what Burn backends with kernel fusion want), and
//! [`crate::CpuTensor`] chunk by chunk in cache, reading each input and writing
//! each output once. Both round exactly as the operation-at-a-time code does:
//! every linear combination is accumulated left to right in `f32`, as
//! [`SchedulerTensor::linear_combination`] specifies.
//!
//! The finiteness check of a step's inputs is part of the program (a checked
//! input), so the CPU pass does it on the data it reads anyway.

use crate::error::{Result, SchedulerError};
use crate::tensor::SchedulerTensor;

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

/// A recorded sequence of element-wise operations over a few inputs of one shape.
///
/// ```
/// use diffusion_schedulers::{CpuTensor, fused::Program};
/// let mut p = Program::new();
/// let (m, s) = (p.checked_input("model_output"), p.checked_input("sample"));
/// let x0 = p.linear(&[(1.0, s), (-0.5, m)]);
/// let x0 = p.clamp(x0, -1.0, 1.0);
/// let prev = p.linear(&[(0.5, x0), (0.5, s)]);
/// let m_t = CpuTensor::new(vec![1.0, 4.0], vec![1, 2]).unwrap();
/// let s_t = CpuTensor::new(vec![2.0, 2.0], vec![1, 2]).unwrap();
/// let [prev, x0] = p.run(&[&m_t, &s_t], [prev, x0]).unwrap();
/// assert_eq!(x0.data(), &[1.0, 0.0]);
/// assert_eq!(prev.data(), &[1.5, 1.0]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Program {
    /// Per input: the name it is reported under when it holds a non-finite
    /// value, or `None` when it is not checked.
    inputs: Vec<Option<&'static str>>,
    ops: Vec<Op>,
}

impl Program {
    pub fn new() -> Self {
        Self::default()
    }

    /// An input whose non-finite elements make [`Program::run`] fail with
    /// [`SchedulerError::NonFinite`]`(name)`. Inputs are checked in the order
    /// they are declared.
    pub fn checked_input(&mut self, name: &'static str) -> Val {
        self.inputs.push(Some(name));
        Val::Input(self.inputs.len() - 1)
    }

    /// An input taken as it is (e.g. noise).
    pub fn input(&mut self) -> Val {
        self.inputs.push(None);
        Val::Input(self.inputs.len() - 1)
    }

    /// `sum_i c_i * x_i`; `terms` must not be empty.
    pub fn linear(&mut self, terms: &[(f64, Val)]) -> Val {
        assert!(!terms.is_empty(), "a linear combination needs a term");
        self.push(Op::Linear(terms.to_vec()))
    }

    /// `a * x`.
    pub fn scale(&mut self, x: Val, a: f64) -> Val {
        self.push(Op::Linear(vec![(a, x)]))
    }

    /// Element-wise clamp to `[min, max]`.
    pub fn clamp(&mut self, x: Val, min: f64, max: f64) -> Val {
        self.push(Op::Clamp { x, min, max })
    }

    fn push(&mut self, op: Op) -> Val {
        self.ops.push(op);
        Val::Op(self.ops.len() - 1)
    }

    /// Number of declared inputs.
    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }

    /// The name of each input that is checked for non-finite values.
    pub fn input_names(&self) -> &[Option<&'static str>] {
        &self.inputs
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Evaluate on `inputs` (in declaration order) and return the values named by
    /// `outputs`.
    pub fn run<T: SchedulerTensor, const N: usize>(
        &self,
        inputs: &[&T],
        outputs: [Val; N],
    ) -> Result<[T; N]> {
        self.run_with(inputs, outputs, None)
            .map(|(values, _)| values)
    }

    /// Like [`Program::run`], plus `extra` when it is `Some`: an output the
    /// caller may not want (`pred_original_sample`), which costs a
    /// latent-sized write when it is produced.
    pub fn run_with<T: SchedulerTensor, const N: usize>(
        &self,
        inputs: &[&T],
        outputs: [Val; N],
        extra: Option<Val>,
    ) -> Result<([T; N], Option<T>)> {
        let all: Vec<Val> = outputs.iter().copied().chain(extra).collect();
        self.validate(inputs, &all)?;
        let mut values = T::evaluate(self, inputs, &all)?;
        let got = values.len();
        let wrong = || SchedulerError::InvalidArgument {
            field: "evaluate",
            value: got.to_string(),
            reason: format!(
                "a tensor implementation returned {got} values for {} outputs",
                all.len()
            ),
        };
        if got != all.len() {
            return Err(wrong());
        }
        let extra = extra.and_then(|_| values.pop());
        let main: [T; N] = values.try_into().map_err(|_| wrong())?;
        Ok((main, extra))
    }

    /// Every input has the same shape, and every value (operand or output)
    /// exists: an input of this program or an operation before its user (a
    /// `Val` of another program is refused rather than indexed out of bounds).
    fn validate<T: SchedulerTensor>(&self, inputs: &[&T], outputs: &[Val]) -> Result<()> {
        let known = |v: Val, before: usize| match v {
            Val::Input(i) => i < self.inputs.len(),
            Val::Op(j) => j < before,
        };
        let operands_known = self.ops.iter().enumerate().all(|(k, op)| match op {
            Op::Linear(terms) => terms.iter().all(|&(_, v)| known(v, k)),
            Op::Clamp { x, .. } => known(*x, k),
        });
        if !operands_known || !outputs.iter().all(|&v| known(v, self.ops.len())) {
            return Err(SchedulerError::InvalidArgument {
                field: "program",
                value: format!("{} inputs, {} ops", self.inputs.len(), self.ops.len()),
                reason: "a value refers to no earlier input or operation of this program".into(),
            });
        }
        if inputs.len() != self.inputs.len() {
            return Err(SchedulerError::InvalidArgument {
                field: "inputs",
                value: inputs.len().to_string(),
                reason: format!("the program declares {} inputs", self.inputs.len()),
            });
        }
        let shape = inputs.first().map(|t| t.shape()).unwrap_or_default();
        for (i, t) in inputs.iter().enumerate().skip(1) {
            if t.shape() != shape {
                return Err(SchedulerError::ShapeMismatch {
                    what: self.inputs[i].unwrap_or("program input"),
                    expected: shape,
                    got: t.shape(),
                });
            }
        }
        Ok(())
    }
}

/// What [`SchedulerTensor::evaluate`] does by default: check the checked inputs,
/// then apply the operations one at a time through the trait's own methods.
pub fn evaluate_unfused<T: SchedulerTensor>(
    program: &Program,
    inputs: &[&T],
    outputs: &[Val],
) -> Result<Vec<T>> {
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
    Ok(outputs
        .iter()
        .map(|&v| match v {
            Val::Input(i) => inputs[i].clone(),
            Val::Op(k) => values[k].clone(),
        })
        .collect())
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
mod tests {
    use super::*;
    use crate::CpuTensor;

    fn t(data: &[f32]) -> CpuTensor {
        CpuTensor::new(data.to_vec(), vec![1, data.len()]).unwrap()
    }

    /// A program exercising every op kind and operand kind, long enough to span
    /// several of the CPU evaluator's chunks with a ragged end.
    fn program() -> (Program, [Val; 4]) {
        let mut p = Program::new();
        let a = p.checked_input("a");
        let b = p.checked_input("b");
        let z = p.input();
        let x = p.linear(&[(0.3, a), (-1.7, b)]);
        let c = p.clamp(x, -0.5, 0.75);
        let y = p.linear(&[(1.0, a), (0.1, c), (2.5, z), (-0.25, x)]);
        let w = p.scale(y, 1.0 / 3.0);
        // `c` is an output read by a later op; `w` is output twice.
        (p, [w, c, z, w])
    }

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 3.0)
            .collect()
    }

    #[test]
    fn cpu_pass_equals_operation_at_a_time_bit_for_bit() {
        let (p, outs) = program();
        let n = 3 * 4096 + 77;
        let (a, b, z) = (t(&ramp(n, 0.1)), t(&ramp(n, 1.3)), t(&ramp(n, 2.9)));
        let fused = CpuTensor::evaluate(&p, &[&a, &b, &z], &outs).unwrap();
        let plain = evaluate_unfused(&p, &[&a, &b, &z], &outs).unwrap();
        assert_eq!(fused, plain);
        // And the unfused path is the trait's own ops, applied by hand.
        let x = CpuTensor::linear_combination(&[(0.3, &a), (-1.7, &b)]);
        let c = x.clamp(-0.5, 0.75);
        let y = CpuTensor::linear_combination(&[(1.0, &a), (0.1, &c), (2.5, &z), (-0.25, &x)]);
        assert_eq!(plain[0], y.scale(1.0 / 3.0));
        assert_eq!(plain[1], c);
        assert_eq!(plain[2], z);
        assert_eq!(plain[3], plain[0]);
    }

    #[test]
    fn non_finite_inputs_are_named_in_order_and_unchecked_ones_pass() {
        let (p, outs) = program();
        let n = 5000;
        let good = t(&ramp(n, 0.0));
        let mut bad = ramp(n, 0.0);
        bad[4500] = f32::NAN;
        let bad = t(&bad);
        let mut inf = ramp(n, 0.0);
        inf[3] = f32::INFINITY;
        let inf = t(&inf);
        for eval in [CpuTensor::evaluate, evaluate_unfused::<CpuTensor>] {
            let err = eval(&p, &[&good, &bad, &good], &outs).unwrap_err();
            assert!(matches!(err, SchedulerError::NonFinite("b")), "{err}");
            let err = eval(&p, &[&inf, &bad, &good], &outs).unwrap_err();
            assert!(matches!(err, SchedulerError::NonFinite("a")), "{err}");
            assert!(eval(&p, &[&good, &good, &bad], &outs).is_ok());
        }
    }

    #[test]
    fn run_checks_the_inputs() {
        let (p, outs) = program();
        let (a, b) = (t(&[1.0, 2.0]), t(&[1.0, 2.0, 3.0]));
        assert!(matches!(
            p.run(&[&a, &b, &a], outs),
            Err(SchedulerError::ShapeMismatch { what: "b", .. })
        ));
        assert!(matches!(
            p.run(&[&a, &a], outs),
            Err(SchedulerError::InvalidArgument {
                field: "inputs",
                ..
            })
        ));
        let (mut other, _) = program();
        let stranger = other.scale(Val::Op(4), 2.0);
        assert!(matches!(
            p.run(&[&a, &a, &a], [stranger]),
            Err(SchedulerError::InvalidArgument {
                field: "program",
                ..
            })
        ));
    }
}
