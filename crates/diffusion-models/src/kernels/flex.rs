//! The bridge from Burn tensors to the host kernels on burn-flex.
//!
//! Models are generic over `B: Backend`; a kernel applies when `B`'s float
//! primitive *is* burn-flex's `FlexTensor` (every `Flex<E, I>`, not an
//! `Autodiff<Flex>`, whose primitive records the graph). That is a type test
//! ([`std::any::Any`]), so no model needs a new bound and every other backend
//! keeps Burn's own op.

use super::attention::{self as host, Element, Operand};
use super::gemm::{self, Act, ConvShape, Epilogue, PackedRhs};
use super::simd::Isa;
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive, bf16, f16};
use burn_flex::{FlexTensor, Layout};
use std::any::Any;

/// `t`'s storage when `B` is burn-flex (a cheap shared handle), else `None`.
pub(crate) fn as_flex<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    match t.clone().into_primitive() {
        TensorPrimitive::Float(p) => (&p as &dyn Any).downcast_ref::<FlexTensor>().cloned(),
        TensorPrimitive::QFloat(_) => None,
    }
}

/// A tensor of `B` holding `t`; `B` must be a burn-flex backend (checked by
/// [`as_flex`] on one of the op's inputs).
pub(crate) fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let boxed: Box<dyn Any> = Box::new(t);
    match boxed.downcast::<B::FloatTensorPrimitive>() {
        Ok(p) => Tensor::from_primitive(TensorPrimitive::Float(*p)),
        Err(_) => unreachable!("from_flex called for a backend whose inputs were not FlexTensors"),
    }
}

/// `t` with a contiguous last dimension and non-negative strides (a copy
/// only where it has neither).
fn rows_contiguous(t: FlexTensor) -> FlexTensor {
    let layout = t.layout();
    let last = layout.strides().last().copied().unwrap_or(1);
    let last_len = layout.shape().last().copied().unwrap_or(1);
    if (last == 1 || last_len == 1) && layout.has_positive_strides() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The `[B, H, L, D]` operand view of a flex tensor holding `E`.
fn operand<E: Element + burn::tensor::Element + bytemuck::Pod>(t: &FlexTensor) -> Operand<'_, E> {
    let layout = t.layout();
    let dims = layout.shape();
    let strides = layout.strides();
    Operand {
        data: t.storage::<E>(),
        offset: layout.start_offset(),
        strides: [
            strides[0] as usize,
            strides[1] as usize,
            strides[2] as usize,
        ],
        dims: [dims[0], dims[1], dims[2], dims[3]],
    }
}

/// [`host::attention`] on flex tensors of one float type; `None` when the
/// operands are not flex f32/f16/bf16 tensors of one type.
pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    scale: f64,
    causal: bool,
    isa: Isa,
) -> Option<Tensor<B, 4>> {
    let (q, k, v) = (as_flex(q)?, as_flex(k)?, as_flex(v)?);
    let dtype = q.dtype();
    if k.dtype() != dtype || v.dtype() != dtype {
        return None;
    }
    let (q, k, v) = (rows_contiguous(q), rows_contiguous(k), rows_contiguous(v));
    fn run<E: Element + burn::tensor::Element + bytemuck::Pod>(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        scale: f64,
        causal: bool,
        isa: Isa,
    ) -> Option<(Bytes, [usize; 4])> {
        let (q, k, v) = (operand::<E>(q), operand::<E>(k), operand::<E>(v));
        let out = host::attention(q, k, v, scale as f32, causal, isa).ok()?;
        Some((
            Bytes::from_elems(out),
            [q.dims[0], q.dims[1], q.dims[2], v.dims[3]],
        ))
    }
    let (bytes, [b, h, l, d]) = match dtype {
        DType::F32 => run::<f32>(&q, &k, &v, scale, causal, isa)?,
        DType::F16 => run::<f16>(&q, &k, &v, scale, causal, isa)?,
        DType::BF16 => run::<bf16>(&q, &k, &v, scale, causal, isa)?,
        _ => return None,
    };
    // The kernel wrote [B, L, H, D]; the result is its [B, H, L, D] view.
    let strides = vec![(l * h * d) as isize, d as isize, (h * d) as isize, 1];
    let layout = Layout::new(Shape::new([b, h, l, d]), strides, 0);
    Some(from_flex(FlexTensor::new(bytes, layout, dtype)))
}

/// `t`'s values in logical order: a slice of its storage where it is
/// contiguous, else a contiguous copy.
fn contiguous_values<E: burn::tensor::Element + bytemuck::Pod>(
    t: &FlexTensor,
) -> std::borrow::Cow<'_, [E]> {
    match t.layout().contiguous_offsets() {
        Some((start, end)) => std::borrow::Cow::Borrowed(&t.storage::<E>()[start..end]),
        None => std::borrow::Cow::Owned(t.to_contiguous().storage::<E>().to_vec()),
    }
}

/// Below this many rows of activations a linear layer reads its f32 weight
/// in place ([`PackedRhs::view`]) instead of packing it.
const VIEW_ROWS: usize = 512;

/// What follows a linear layer's product in its write-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// The bias, if any.
    Bias,
    /// GEGLU of the projection (`[.., N/2]`: value half times the exact GELU
    /// of the gate half); needs a bias.
    Geglu,
    /// An activation after the bias; needs a bias.
    Act(Act),
}

/// `x · weight (+ bias)` over `x`'s last dimension on the packed GEMM, and
/// its `tail`; `None` when the operands are not flex f32/f16/bf16 tensors of
/// one type.
pub(crate) fn linear<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    tail: Tail,
    isa: Isa,
) -> Option<Tensor<B, D>> {
    let (x, w) = (as_flex(x)?, as_flex(weight)?);
    let bias = match bias {
        Some(b) => Some(as_flex(b)?),
        None => None,
    };
    let dtype = x.dtype();
    if w.dtype() != dtype || bias.as_ref().is_some_and(|b| b.dtype() != dtype) {
        return None;
    }
    if tail != Tail::Bias && bias.is_none() {
        return None;
    }
    fn run<E: Element + burn::tensor::Element + bytemuck::Pod>(
        x: &FlexTensor,
        w: &FlexTensor,
        bias: Option<&FlexTensor>,
        tail: Tail,
        isa: Isa,
    ) -> Option<(Bytes, usize)> {
        let geglu = tail == Tail::Geglu;
        let k = *x.layout().shape().last()?;
        let [wk, n] = [w.layout().shape()[0], w.layout().shape()[1]];
        if wk != k || !w.layout().has_positive_strides() {
            return None;
        }
        let strides = w.layout().strides();
        let dims = [k, n];
        let strides = [strides[0] as usize, strides[1] as usize];
        let offset = w.layout().start_offset();
        let a = contiguous_values::<E>(x);
        let rows = a.len().checked_div(k).unwrap_or(0);
        // Few rows: read f32 weights in place rather than pack them.
        let in_place = match (E::dtype() == DType::F32, strides) {
            (true, [rs, 1]) if rows < VIEW_ROWS => {
                let f: &[f32] = bytemuck::cast_slice(w.storage::<E>());
                PackedRhs::view(f, offset, dims, rs, geglu)
            }
            _ => None,
        };
        let packed = match (in_place, geglu) {
            (Some(view), _) => view,
            (None, true) => PackedRhs::pack_halves(w.storage::<E>(), offset, dims, strides),
            (None, false) => PackedRhs::pack(w.storage::<E>(), offset, dims, strides),
        };
        let bias: Option<Vec<f32>> = bias.map(|b| {
            contiguous_values::<E>(b)
                .iter()
                .map(|v| v.to_f32())
                .collect()
        });
        let epilogue = match (&bias, tail) {
            (None, _) => Epilogue::None,
            (Some(b), Tail::Bias) => Epilogue::Bias(b),
            (Some(b), Tail::Geglu) => Epilogue::Geglu(b),
            (Some(b), Tail::Act(act)) => Epilogue::BiasAct(b, act),
        };
        let out = gemm::gemm(&a, [rows, k], k, &packed, epilogue, isa).ok()?;
        let cols = if geglu { n / 2 } else { n };
        Some((Bytes::from_elems(out), cols))
    }
    let (bytes, cols) = match dtype {
        DType::F32 => run::<f32>(&x, &w, bias.as_ref(), tail, isa)?,
        DType::F16 => run::<f16>(&x, &w, bias.as_ref(), tail, isa)?,
        DType::BF16 => run::<bf16>(&x, &w, bias.as_ref(), tail, isa)?,
        _ => return None,
    };
    let mut dims = x.layout().shape().clone();
    dims[D - 1] = cols;
    let layout = Layout::contiguous(dims);
    Some(from_flex(FlexTensor::new(bytes, layout, dtype)))
}

/// A square-kernel convolution (groups 1, dilation 1) of `x` `[N, C, H, W]`
/// on the implicit GEMM ([`gemm::conv2d`]); `None` when the operands are not
/// flex f32/f16/bf16 tensors of one type or the kernel is not square.
pub(crate) fn conv2d<B: Backend>(
    x: &Tensor<B, 4>,
    weight: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    stride: usize,
    padding: usize,
    isa: Isa,
) -> Option<Tensor<B, 4>> {
    let (x, w) = (as_flex(x)?, as_flex(weight)?);
    let bias = match bias {
        Some(b) => Some(as_flex(b)?),
        None => None,
    };
    let dtype = x.dtype();
    if w.dtype() != dtype || bias.as_ref().is_some_and(|b| b.dtype() != dtype) {
        return None;
    }
    let [co, ci, kh, kw] = [
        w.layout().shape()[0],
        w.layout().shape()[1],
        w.layout().shape()[2],
        w.layout().shape()[3],
    ];
    let xs = x.layout().shape();
    let input = [xs[0], xs[1], xs[2], xs[3]];
    if kh != kw || ci != input[1] {
        return None;
    }
    let shape = ConvShape {
        input,
        out_channels: co,
        kernel: kh,
        stride,
        padding,
    };
    let out_dims = shape.output()?;
    fn run<E: Element + burn::tensor::Element + bytemuck::Pod>(
        x: &FlexTensor,
        w: &FlexTensor,
        bias: Option<&FlexTensor>,
        shape: ConvShape,
        isa: Isa,
    ) -> Option<Bytes> {
        let weights = contiguous_values::<E>(w);
        let bias: Option<Vec<f32>> = bias.map(|b| {
            contiguous_values::<E>(b)
                .iter()
                .map(|v| v.to_f32())
                .collect()
        });
        let x = contiguous_values::<E>(x);
        let out = gemm::conv2d(&x, shape, &weights, bias.as_deref(), isa).ok()?;
        Some(Bytes::from_elems(out))
    }
    let bytes = match dtype {
        DType::F32 => run::<f32>(&x, &w, bias.as_ref(), shape, isa)?,
        DType::F16 => run::<f16>(&x, &w, bias.as_ref(), shape, isa)?,
        DType::BF16 => run::<bf16>(&x, &w, bias.as_ref(), shape, isa)?,
        _ => return None,
    };
    let layout = Layout::contiguous(Shape::new(out_dims));
    Some(from_flex(FlexTensor::new(bytes, layout, dtype)))
}

/// Group normalisation of `x` `[N, C, L]` (then SiLU when `silu`) on the host
/// kernel ([`super::norm::group_norm`]); `None` when the operands are not flex
/// f32/f16/bf16 tensors.
pub(crate) fn group_norm<B: Backend>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    groups: usize,
    eps: f64,
    silu: bool,
    isa: Isa,
) -> Option<Tensor<B, 3>> {
    let (x, w, b) = (as_flex(x)?, as_flex(weight)?, as_flex(bias)?);
    fn floats(t: &FlexTensor) -> Option<Vec<f32>> {
        Some(match t.dtype() {
            DType::F32 => contiguous_values::<f32>(t).to_vec(),
            DType::F16 => contiguous_values::<f16>(t)
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            DType::BF16 => contiguous_values::<bf16>(t)
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            _ => return None,
        })
    }
    let (w, b) = (floats(&w)?, floats(&b)?);
    let shape = x.layout().shape();
    let dims = [shape[0], shape[1], shape[2]];
    fn run<E: Element + burn::tensor::Element + bytemuck::Pod>(
        x: &FlexTensor,
        dims: [usize; 3],
        args: (usize, f64, &[f32], &[f32], bool, Isa),
    ) -> Option<Bytes> {
        let (groups, eps, w, b, silu, isa) = args;
        let values = contiguous_values::<E>(x);
        let out = super::norm::group_norm(&values, dims, groups, eps, w, b, silu, isa).ok()?;
        Some(Bytes::from_elems(out))
    }
    let args = (groups, eps, &w[..], &b[..], silu, isa);
    let dtype = x.dtype();
    let bytes = match dtype {
        DType::F32 => run::<f32>(&x, dims, args)?,
        DType::F16 => run::<f16>(&x, dims, args)?,
        DType::BF16 => run::<bf16>(&x, dims, args)?,
        _ => return None,
    };
    let layout = Layout::contiguous(Shape::new(dims));
    Some(from_flex(FlexTensor::new(bytes, layout, dtype)))
}
