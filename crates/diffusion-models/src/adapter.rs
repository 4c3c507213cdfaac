//! Adapters on a loaded model's layers: LoRA and its relatives as an extra
//! path beside a Linear or Conv2d (`y = W·x + Σ factor · ΔW·x`), switched and
//! re-weighted without reloading, or merged into the weights
//! ([`AdapterTable::fuse`]) and taken out again ([`AdapterTable::unfuse`]).
//!
//! Every Linear and Conv2d a [`Loader`](crate::Loader) builds registers itself
//! in the loader's [`AdapterTable`] under its diffusers module key
//! (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`) and keeps an
//! [`AdapterSlot`] pointing back at it: a model gains adapters without a
//! field per layer, and a layer with none pays one uncontended lock per call.
//!
//! The table holds each adapter's factors on the host in f32, in PyTorch's
//! layout ([`Delta`]); a layer turns them into tensors of its backend, device
//! and dtype the first time it runs them and keeps those until they change.
//! The table is not generic over the backend, so a model keeps it through
//! Burn's module conversions (autodiff `valid()`, `to_device`).
//!
//! As peft's LoRA layers: the extra paths run in the layer's float type, each
//! scaled by `scale · weight · lora_scale` (the file's `alpha / rank`, the
//! adapter's [`set_adapters`](AdapterTable::set_weights) weight and the call's
//! `cross_attention_kwargs["scale"]`), and a fused table runs no extra path.

use crate::error::{ModelError, Result};
use crate::kernels::Isa;
use crate::state::transpose;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a registered layer computes, as far as an adapter must fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerShape {
    /// `torch.nn.Linear` (also a 1×1 conv the model runs as one).
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
    },
    /// `torch.nn.Conv2d` (square kernel).
    Conv {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on every side.
        padding: usize,
    },
}

impl LayerShape {
    /// The weight's shape in PyTorch's layout: `[out, in]` or `[out, in, k, k]`.
    pub fn stored(&self) -> Vec<usize> {
        match *self {
            LayerShape::Linear {
                in_features,
                out_features,
            } => vec![out_features, in_features],
            LayerShape::Conv {
                in_channels,
                out_channels,
                kernel,
                ..
            } => vec![out_channels, in_channels, kernel, kernel],
        }
    }
}

/// A tensor on the host: row-major f32 values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// `data` with `shape` (their sizes must agree).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }

    fn numel(&self) -> usize {
        self.data.len()
    }
}

/// One adapter's change to one layer, in PyTorch's layout.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// `ΔW = up · down` (LoRA, LoCon): `down` `[r, in]` or `[r, in, k, k]`
    /// (the conv's own kernel, stride and padding), `up` `[out, r]` or
    /// `[out, r, 1, 1]`. With `mid` `[r, r, k, k]` (kohya's Tucker LoCon,
    /// `lora_mid`) `down` is a 1×1 conv and `mid` carries the kernel.
    LowRank {
        /// `lora_down` / `lora_A`.
        down: HostTensor,
        /// `lora_up` / `lora_B`.
        up: HostTensor,
        /// `lora_mid`.
        mid: Option<HostTensor>,
    },
    /// DoRA as peft computes it: the low-rank `up · down` (no `mid`) and a
    /// per-output `magnitude` `m`. The layer's weight becomes
    /// `m ⊙ (W + s·ΔW) / ‖W + s·ΔW‖` (norms per output over its inputs and
    /// kernel, `s` the adapter's factor); the bias is kept. It depends on the
    /// layer's own weight, so it is worked out from it when the layer first
    /// runs at a factor.
    Dora {
        /// `lora_A`.
        down: HostTensor,
        /// `lora_B`.
        up: HostTensor,
        /// `lora_magnitude_vector`: one value per output.
        magnitude: HostTensor,
    },
    /// A whole weight difference (LoHa, LoKr, `diff`), shaped as the weight,
    /// and a bias difference (`diff_b`).
    Dense {
        /// `ΔW`.
        weight: HostTensor,
        /// `Δb`.
        bias: Option<HostTensor>,
    },
}

impl Delta {
    /// Checks that the delta fits `layer`; the message says what differs.
    fn check(&self, layer: &LayerShape, has_bias: bool) -> std::result::Result<(), String> {
        let stored = layer.stored();
        let (out, inp) = (stored[0], stored[1]);
        let kernel = stored.get(2).copied().unwrap_or(1);
        match self {
            Delta::Dense { weight, bias } => {
                let flat_ok = weight.numel() == stored.iter().product::<usize>()
                    && weight.shape.first() == Some(&out)
                    && (weight.shape.len() == stored.len()
                        || weight.shape[1..].iter().product::<usize>() == inp * kernel * kernel);
                if !flat_ok {
                    return Err(format!(
                        "a weight difference of shape {:?} does not fit a layer of weight shape {stored:?}",
                        weight.shape
                    ));
                }
                if let Some(b) = bias {
                    if !has_bias {
                        return Err("a bias difference for a layer without a bias".into());
                    }
                    if b.numel() != out {
                        return Err(format!(
                            "a bias difference of shape {:?} for {out} outputs",
                            b.shape
                        ));
                    }
                }
                Ok(())
            }
            Delta::Dora {
                down,
                up,
                magnitude,
            } => {
                if magnitude.numel() != out {
                    return Err(format!(
                        "a DoRA magnitude of shape {:?} for {out} outputs",
                        magnitude.shape
                    ));
                }
                Delta::LowRank {
                    down: down.clone(),
                    up: up.clone(),
                    mid: None,
                }
                .check(layer, has_bias)
            }
            Delta::LowRank { down, up, mid } => {
                let rank = *down.shape.first().unwrap_or(&0);
                let tail =
                    |t: &HostTensor| t.shape.get(1..).map(|s| s.to_vec()).unwrap_or_default();
                let kk = |t: &HostTensor| t.shape.get(2..).map(|s| s.iter().product()).unwrap_or(1);
                let up_ok =
                    up.shape.first() == Some(&out) && up.shape.get(1) == Some(&rank) && kk(up) == 1;
                let down_kernel = if mid.is_some() { 1 } else { kernel * kernel };
                let down_ok = rank > 0
                    && down.shape.get(1) == Some(&inp)
                    && kk(down) == down_kernel
                    && (down.shape.len() == 2 || down.shape.len() == 4);
                let mid_ok = match mid {
                    None => true,
                    Some(m) => {
                        m.shape.len() == 4
                            && m.shape[0] == rank
                            && m.shape[1] == rank
                            && m.shape[2] * m.shape[3] == kernel * kernel
                    }
                };
                if up_ok && down_ok && mid_ok {
                    Ok(())
                } else {
                    Err(format!(
                        "low-rank factors down {:?}{} up {:?} (rank {rank}, down tail {:?}) do not fit a layer of weight shape {stored:?}",
                        down.shape,
                        mid.as_ref()
                            .map(|m| format!(" mid {:?}", m.shape))
                            .unwrap_or_default(),
                        up.shape,
                        tail(down),
                    ))
                }
            }
        }
    }

    /// `ΔW` in PyTorch's layout (`[out, in]` or `[out, in, k, k]` as `layer`),
    /// computed in f64 and rounded once.
    pub fn dense(&self, layer: &LayerShape) -> HostTensor {
        let stored = layer.stored();
        let out = stored[0];
        let cols: usize = stored[1..].iter().product(); // in · k²
        match self {
            Delta::Dense { weight, .. } => HostTensor::new(stored, weight.data.clone()),
            Delta::Dora { down, up, .. } => Delta::LowRank {
                down: down.clone(),
                up: up.clone(),
                mid: None,
            }
            .dense(layer),
            Delta::LowRank { down, up, mid } => {
                let rank = down.shape[0];
                // down as [r, cols]: through the mid kernel first when there is one.
                let down_cols: Vec<f64> = match mid {
                    None => down.data.iter().map(|&v| v as f64).collect(),
                    Some(m) => {
                        let inp = down.shape[1];
                        let kk = cols / inp;
                        // [r2, i, kk] = Σ_r1 mid[r2, r1, kk] · down[r1, i]
                        let mut t = vec![0f64; rank * cols];
                        for r2 in 0..rank {
                            for r1 in 0..rank {
                                for i in 0..inp {
                                    let d = down.data[r1 * inp + i] as f64;
                                    for p in 0..kk {
                                        t[r2 * cols + i * kk + p] +=
                                            m.data[(r2 * rank + r1) * kk + p] as f64 * d;
                                    }
                                }
                            }
                        }
                        t
                    }
                };
                let mut w = vec![0f64; out * cols];
                for o in 0..out {
                    for r in 0..rank {
                        let u = up.data[o * rank + r] as f64;
                        let row = &down_cols[r * cols..(r + 1) * cols];
                        for (acc, d) in w[o * cols..(o + 1) * cols].iter_mut().zip(row) {
                            *acc += u * d;
                        }
                    }
                }
                HostTensor::new(stored, w.into_iter().map(|v| v as f32).collect())
            }
        }
    }

    fn bias(&self) -> Option<&HostTensor> {
        match self {
            Delta::Dense { bias, .. } => bias.as_ref(),
            Delta::LowRank { .. } | Delta::Dora { .. } => None,
        }
    }

    /// DoRA's change to a weight `w` (PyTorch layout, row-major `[out, …]`)
    /// at factor `s`: `m ⊙ (W + s·ΔW) / ‖W + s·ΔW‖ − W`, in f64.
    fn dora_difference(
        &self,
        layer: &LayerShape,
        weight: &dyn Fn() -> Vec<f32>,
        s: f64,
    ) -> Option<HostTensor> {
        let Delta::Dora { magnitude, .. } = self else {
            return None;
        };
        let w = weight();
        let delta = self.dense(layer);
        let out = delta.shape[0];
        let cols = delta.data.len() / out.max(1);
        let mut diff = vec![0f32; delta.data.len()];
        for o in 0..out {
            let row = o * cols..(o + 1) * cols;
            let v: Vec<f64> = w[row.clone()]
                .iter()
                .zip(&delta.data[row.clone()])
                .map(|(&w, &d)| w as f64 + s * d as f64)
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let scale = magnitude.data[o] as f64 / norm;
            for ((d, x), &w) in diff[row.clone()].iter_mut().zip(&v).zip(&w[row]) {
                *d = (scale * x - w as f64) as f32;
            }
        }
        Some(HostTensor::new(delta.shape, diff))
    }
}

/// A registered layer: its shape and the ids of its parameters (for fusing).
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    /// What it computes.
    pub shape: LayerShape,
    /// The weight's parameter id.
    pub weight: ParamId,
    /// The bias's parameter id.
    pub bias: Option<ParamId>,
}

struct Attached {
    adapter: String,
    delta: Delta,
    /// The file's `alpha / rank` (1 without an alpha).
    scale: f64,
    /// The tensors of the last backend, device and dtype that ran it.
    cache: Option<Box<dyn Any + Send>>,
}

struct Table {
    layers: BTreeMap<String, Layer>,
    attached: BTreeMap<String, Vec<Attached>>,
    /// Adapters in the order they were loaded.
    names: Vec<String>,
    /// The active adapters and their weights (`set_adapters`).
    weights: BTreeMap<String, f64>,
    disabled: bool,
    lora_scale: f64,
    /// The adapters and factors merged into the weights, when fused.
    fused: Option<BTreeMap<String, f64>>,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            layers: BTreeMap::new(),
            attached: BTreeMap::new(),
            names: Vec::new(),
            weights: BTreeMap::new(),
            disabled: false,
            lora_scale: 1.0,
            fused: None,
        }
    }
}

/// The layers of one model and the adapters attached to them; see the module
/// docs. Clones share the table.
#[derive(Clone, Default)]
pub struct AdapterTable {
    inner: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for AdapterTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.lock();
        write!(
            f,
            "AdapterTable({} layers, adapters {:?})",
            t.layers.len(),
            t.names
        )
    }
}

/// One adapter's entry for one layer, as [`AdapterTable::attach`] takes it.
#[derive(Debug, Clone)]
pub struct LayerDelta {
    /// The layer's module key.
    pub layer: String,
    /// Its change.
    pub delta: Delta,
    /// `alpha / rank` (1 without an alpha).
    pub scale: f64,
}

fn adapter_error(adapter: &str, key: &str, message: impl Into<String>) -> ModelError {
    ModelError::input(format!("adapter `{adapter}`, layer `{key}`"), message)
}

impl AdapterTable {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the layer `key` (called by the layers' `load`); the slot the
    /// layer keeps to find its adapters.
    pub fn register(&self, key: &str, layer: Layer) -> AdapterSlot {
        self.lock().layers.insert(key.to_string(), layer);
        AdapterSlot {
            key: Arc::from(key),
            table: self.clone(),
        }
    }

    /// The registered layers by module key.
    pub fn layers(&self) -> BTreeMap<String, Layer> {
        self.lock().layers.clone()
    }

    /// Attaches adapter `name` to the layers of `entries`, active with weight
    /// 1 (diffusers' `load_lora_weights` activates the adapter it loads). All
    /// or nothing: an unknown layer, a delta that does not fit, or a name in
    /// use leaves the table unchanged and names the layer.
    pub fn attach(&self, name: &str, entries: Vec<LayerDelta>) -> Result<()> {
        let mut t = self.lock();
        if t.names.iter().any(|n| n == name) {
            return Err(ModelError::input(
                format!("adapter `{name}`"),
                "an adapter of this name is already loaded (delete it first, or pick another name)",
            ));
        }
        if t.fused.is_some() {
            return Err(ModelError::input(
                format!("adapter `{name}`"),
                "the model has fused adapters: unfuse them before loading another",
            ));
        }
        for e in &entries {
            let Some(layer) = t.layers.get(&e.layer) else {
                return Err(adapter_error(name, &e.layer, "no such layer in this model"));
            };
            e.delta
                .check(&layer.shape, layer.bias.is_some())
                .map_err(|m| adapter_error(name, &e.layer, m))?;
            if !e.scale.is_finite() {
                return Err(adapter_error(name, &e.layer, "its scale is not finite"));
            }
        }
        for e in entries {
            t.attached.entry(e.layer).or_default().push(Attached {
                adapter: name.to_string(),
                delta: e.delta,
                scale: e.scale,
                cache: None,
            });
        }
        t.names.push(name.to_string());
        t.weights.insert(name.to_string(), 1.0);
        Ok(())
    }

    /// The adapters attached, in load order.
    pub fn adapters(&self) -> Vec<String> {
        self.lock().names.clone()
    }

    /// The layers adapter `name` changes.
    pub fn targets(&self, name: &str) -> Vec<String> {
        let t = self.lock();
        t.attached
            .iter()
            .filter(|(_, v)| v.iter().any(|a| a.adapter == name))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Removes adapter `name` (false when it was not attached). Refused while
    /// the table is fused.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let mut t = self.lock();
        if t.fused.is_some() {
            return Err(ModelError::input(
                format!("adapter `{name}`"),
                "the model has fused adapters: unfuse them first",
            ));
        }
        let before = t.names.len();
        t.names.retain(|n| n != name);
        t.weights.remove(name);
        for v in t.attached.values_mut() {
            v.retain(|a| a.adapter != name);
        }
        t.attached.retain(|_, v| !v.is_empty());
        Ok(t.names.len() != before)
    }

    /// The active adapters and their weights (diffusers' `set_adapters`);
    /// names this table does not hold are ignored (a pipeline sets the same
    /// list on every component, and an adapter may target only some).
    pub fn set_weights(&self, weights: &BTreeMap<String, f64>) {
        let mut t = self.lock();
        let known: BTreeMap<String, f64> = weights
            .iter()
            .filter(|(n, _)| t.names.contains(n))
            .map(|(n, w)| (n.clone(), *w))
            .collect();
        t.weights = known;
    }

    /// The active adapters and their weights.
    pub fn weights(&self) -> BTreeMap<String, f64> {
        self.lock().weights.clone()
    }

    /// Turns every adapter path off (`disable_lora`) or back on.
    pub fn set_enabled(&self, enabled: bool) {
        self.lock().disabled = !enabled;
    }

    /// Whether the adapter paths run (not disabled).
    pub fn enabled(&self) -> bool {
        !self.lock().disabled
    }

    /// The call's overall factor (`cross_attention_kwargs={"scale": s}`).
    pub fn set_lora_scale(&self, scale: f64) {
        self.lock().lora_scale = scale;
    }

    /// Whether adapters are merged into the weights.
    pub fn is_fused(&self) -> bool {
        self.lock().fused.is_some()
    }

    /// Each changed parameter's total difference in the module's layout
    /// (Linear weights `[in, out]`) for the factors `by_adapter`.
    fn differences(t: &Table, by_adapter: &BTreeMap<String, f64>) -> HashMap<ParamId, HostTensor> {
        let mut out: HashMap<ParamId, HostTensor> = HashMap::new();
        for (key, list) in &t.attached {
            let layer = &t.layers[key];
            for a in list {
                let Some(&w) = by_adapter.get(&a.adapter) else {
                    continue;
                };
                let factor = (w * a.scale) as f32;
                if factor == 0.0 {
                    continue;
                }
                let dense = a.delta.dense(&layer.shape);
                let dense = match layer.shape {
                    LayerShape::Linear {
                        in_features,
                        out_features,
                    } => HostTensor::new(
                        vec![in_features, out_features],
                        transpose(&dense.data, out_features, in_features),
                    ),
                    LayerShape::Conv { .. } => dense,
                };
                accumulate(&mut out, layer.weight, dense, factor);
                if let (Some(b), Some(id)) = (a.delta.bias(), layer.bias) {
                    accumulate(&mut out, id, b.clone(), factor);
                }
            }
        }
        out
    }

    /// Merges the active adapters, at their weights times `lora_scale`, into
    /// `model`'s weights (diffusers' `fuse_lora`): the extra paths stop
    /// running. `model` must be the model whose layers registered here.
    /// Fusing a fused table is refused.
    pub fn fuse<B: Backend, M: Module<B>>(&self, model: M, lora_scale: f64) -> Result<M> {
        let mut t = self.lock();
        if t.fused.is_some() {
            return Err(ModelError::input(
                "fuse_lora",
                "adapters are already fused (unfuse_lora first)",
            ));
        }
        let factors: BTreeMap<String, f64> = if t.disabled {
            BTreeMap::new()
        } else {
            t.weights
                .iter()
                .map(|(n, w)| (n.clone(), w * lora_scale))
                .collect()
        };
        let dora =
            t.attached.values().flatten().find(|a| {
                matches!(a.delta, Delta::Dora { .. }) && factors.contains_key(&a.adapter)
            });
        if let Some(a) = dora {
            return Err(ModelError::input(
                format!("adapter `{}`", a.adapter),
                "DoRA adapters run unfused only (fusing one is not supported yet)",
            ));
        }
        let diffs = Self::differences(&t, &factors);
        let model = model.map(&mut AddDifferences {
            diffs: &diffs,
            sign: 1.0,
        });
        t.fused = Some(factors);
        Ok(model)
    }

    /// Takes the fused adapters back out of `model`'s weights (`unfuse_lora`):
    /// the same differences subtracted, so the weights come back within the
    /// rounding of the model's float type. A table that is not fused returns
    /// `model` unchanged.
    pub fn unfuse<B: Backend, M: Module<B>>(&self, model: M) -> M {
        let mut t = self.lock();
        let Some(factors) = t.fused.take() else {
            return model;
        };
        let diffs = Self::differences(&t, &factors);
        model.map(&mut AddDifferences {
            diffs: &diffs,
            sign: -1.0,
        })
    }
}

fn accumulate(out: &mut HashMap<ParamId, HostTensor>, id: ParamId, t: HostTensor, factor: f32) {
    match out.get_mut(&id) {
        Some(acc) => {
            for (a, v) in acc.data.iter_mut().zip(&t.data) {
                *a += factor * v;
            }
        }
        None => {
            let data = t.data.iter().map(|v| factor * v).collect();
            out.insert(id, HostTensor::new(t.shape, data));
        }
    }
}

struct AddDifferences<'a> {
    diffs: &'a HashMap<ParamId, HostTensor>,
    sign: f32,
}

impl<B: Backend> ModuleMapper<B> for AddDifferences<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(diff) = self.diffs.get(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let dtype = tensor.dtype();
        let dims = tensor.dims();
        let data: Vec<f32> = diff.data.iter().map(|v| self.sign * v).collect();
        let d =
            Tensor::<B, D>::from_data(TensorData::new(data, dims), (&tensor.device(), DType::F32));
        let sum = crate::nn::to_f32(tensor) + d;
        Param::from_mapped_value(id, crate::nn::to_dtype(sum, dtype), mapper)
    }
}

/// A layer's handle on its [`AdapterTable`] entry: its module key and the
/// table. Not generic over the backend (see the module docs).
#[derive(Clone, Debug)]
pub struct AdapterSlot {
    key: Arc<str>,
    table: AdapterTable,
}

/// An attached adapter as tensors of one backend: the factors in the layouts
/// the layer's forward uses, and the factor it runs at.
pub enum Path<B: Backend> {
    /// `x · down · up`: `down` `[in, r]`, `up` `[r, out]`.
    Linear {
        /// `[in, r]`.
        down: Tensor<B, 2>,
        /// `[r, out]`.
        up: Tensor<B, 2>,
    },
    /// `x · weight + bias`: `weight` `[in, out]`.
    LinearDense {
        /// `[in, out]`.
        weight: Tensor<B, 2>,
        /// `[out]`.
        bias: Option<Tensor<B, 1>>,
    },
    /// `up(mid(down(x)))` as convolutions (`mid` absent: `down` has the kernel).
    Conv {
        /// `[r, in, k, k]` (or 1×1 with `mid`).
        down: Tensor<B, 4>,
        /// `[r, r, k, k]`.
        mid: Option<Tensor<B, 4>>,
        /// `[out, r, 1, 1]`.
        up: Tensor<B, 4>,
    },
    /// `conv(x, weight) + bias`.
    ConvDense {
        /// `[out, in, k, k]`.
        weight: Tensor<B, 4>,
        /// `[out]`.
        bias: Option<Tensor<B, 1>>,
    },
}

impl<B: Backend> Clone for Path<B> {
    fn clone(&self) -> Self {
        match self {
            Path::Linear { down, up } => Path::Linear {
                down: down.clone(),
                up: up.clone(),
            },
            Path::LinearDense { weight, bias } => Path::LinearDense {
                weight: weight.clone(),
                bias: bias.clone(),
            },
            Path::Conv { down, mid, up } => Path::Conv {
                down: down.clone(),
                mid: mid.clone(),
                up: up.clone(),
            },
            Path::ConvDense { weight, bias } => Path::ConvDense {
                weight: weight.clone(),
                bias: bias.clone(),
            },
        }
    }
}

struct Cached<B: Backend> {
    device: B::Device,
    dtype: DType,
    /// The factor a DoRA difference was worked out at (0 for the others).
    dora_factor: f64,
    path: Path<B>,
}

fn host<B: Backend, const D: usize>(
    t: &HostTensor,
    shape: [usize; D],
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    let data = TensorData::new(t.data.clone(), shape);
    let data = if dtype == DType::F32 {
        data
    } else {
        data.convert_dtype(dtype)
    };
    Tensor::from_data(data, (device, dtype))
}

fn materialise<B: Backend>(
    delta: &Delta,
    layer: &LayerShape,
    device: &B::Device,
    dtype: DType,
) -> Path<B> {
    let stored = layer.stored();
    let (out, inp) = (stored[0], stored[1]);
    let bias = |b: &Option<HostTensor>| b.as_ref().map(|b| host::<B, 1>(b, [out], device, dtype));
    match (delta, layer) {
        (Delta::LowRank { down, up, .. }, LayerShape::Linear { .. }) => {
            let r = down.shape[0];
            Path::Linear {
                down: host::<B, 2>(
                    &HostTensor::new(vec![inp, r], transpose(&down.data, r, inp)),
                    [inp, r],
                    device,
                    dtype,
                ),
                up: host::<B, 2>(
                    &HostTensor::new(vec![r, out], transpose(&up.data, out, r)),
                    [r, out],
                    device,
                    dtype,
                ),
            }
        }
        (Delta::Dora { .. }, _) => unreachable!("DoRA is made dense before it runs"),
        (Delta::Dense { weight, bias: b }, LayerShape::Linear { .. }) => Path::LinearDense {
            weight: host::<B, 2>(
                &HostTensor::new(vec![inp, out], transpose(&weight.data, out, inp)),
                [inp, out],
                device,
                dtype,
            ),
            bias: bias(b),
        },
        (Delta::LowRank { down, up, mid }, LayerShape::Conv { kernel, .. }) => {
            let r = down.shape[0];
            let dk = if mid.is_some() { 1 } else { *kernel };
            Path::Conv {
                down: host::<B, 4>(down, [r, inp, dk, dk], device, dtype),
                mid: mid
                    .as_ref()
                    .map(|m| host::<B, 4>(m, [r, r, *kernel, *kernel], device, dtype)),
                up: host::<B, 4>(up, [out, r, 1, 1], device, dtype),
            }
        }
        (Delta::Dense { weight, bias: b }, LayerShape::Conv { kernel, .. }) => Path::ConvDense {
            weight: host::<B, 4>(weight, [out, inp, *kernel, *kernel], device, dtype),
            bias: bias(b),
        },
    }
}

impl AdapterSlot {
    /// The layer's module key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The table the layer registered in.
    pub fn table(&self) -> &AdapterTable {
        &self.table
    }

    /// The adapter paths this layer runs now, with their factors, as
    /// tensors on `device` in `dtype` (empty when none is active, disabled or
    /// fused).
    pub fn paths<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
        base: &dyn Fn() -> Vec<f32>,
    ) -> Vec<(Path<B>, f64)> {
        let mut t = self.table.lock();
        if t.disabled || t.fused.is_some() || t.attached.is_empty() {
            return Vec::new();
        }
        let Some(layer) = t.layers.get(&*self.key).copied() else {
            return Vec::new();
        };
        let weights = t.weights.clone();
        let lora_scale = t.lora_scale;
        let Some(list) = t.attached.get_mut(&*self.key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for a in list.iter_mut() {
            let Some(w) = weights.get(&a.adapter) else {
                continue;
            };
            let factor = a.scale * w * lora_scale;
            if factor == 0.0 {
                continue;
            }
            // DoRA runs as a dense difference worked out at its factor.
            let dora = matches!(a.delta, Delta::Dora { .. });
            let dora_factor = if dora { factor } else { 0.0 };
            let hit = a
                .cache
                .as_ref()
                .and_then(|c| c.downcast_ref::<Cached<B>>())
                .filter(|c| &c.device == device && c.dtype == dtype && c.dora_factor == dora_factor)
                .map(|c| c.path.clone());
            let path = match hit {
                Some(p) => p,
                None => {
                    let path = match a.delta.dora_difference(&layer.shape, &base, factor) {
                        Some(weight) => {
                            let dense = Delta::Dense { weight, bias: None };
                            materialise::<B>(&dense, &layer.shape, device, dtype)
                        }
                        None => materialise::<B>(&a.delta, &layer.shape, device, dtype),
                    };
                    a.cache = Some(Box::new(Cached::<B> {
                        device: device.clone(),
                        dtype,
                        dora_factor,
                        path: path.clone(),
                    }));
                    path
                }
            };
            out.push((path, if dora { 1.0 } else { factor }));
        }
        out
    }

    /// Whether any adapter path would run now.
    pub fn is_active(&self) -> bool {
        let t = self.table.lock();
        !t.disabled
            && t.fused.is_none()
            && t.attached.get(&*self.key).is_some_and(|list| {
                list.iter()
                    .any(|a| t.weights.get(&a.adapter).is_some_and(|w| *w != 0.0))
            })
            && t.lora_scale != 0.0
    }

    /// `y + Σ factor · path(x)` for a Linear's input `x` `[..., in]` and
    /// output `y` `[..., out]`.
    pub fn add_linear<B: Backend, const D: usize>(
        &self,
        x: &Tensor<B, D>,
        mut y: Tensor<B, D>,
        weight: &Tensor<B, 2>,
    ) -> Tensor<B, D> {
        // The weight (held `[in, out]`) in PyTorch's layout, for DoRA.
        let base = || {
            let [i, o] = weight.dims();
            let w = weight.clone().into_data().convert_dtype(DType::F32);
            transpose(&w.into_vec::<f32>().unwrap_or_default(), i, o)
        };
        let paths = self.paths::<B>(&x.device(), x.dtype(), &base);
        if paths.is_empty() {
            return y;
        }
        let dims = x.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let x2 = x.clone().reshape([rows, dims[D - 1]]);
        let out_dims = y.dims();
        for (path, factor) in paths {
            // The crate's packed GEMM where the backend has it (burn-flex), as
            // the layer's own product; Burn's matmul elsewhere.
            let product = |x: Tensor<B, 2>, w: Tensor<B, 2>, b: Option<Tensor<B, 1>>| {
                match crate::kernels::host_linear(&x, &w, b.as_ref(), Isa::detect()) {
                    Some(y) => y,
                    None => {
                        let y = x.matmul(w);
                        match b {
                            Some(b) => y + b.unsqueeze::<2>(),
                            None => y,
                        }
                    }
                }
            };
            let extra = match path {
                Path::Linear { down, up } => {
                    product(product(x2.clone(), down, None) * factor, up, None)
                }
                Path::LinearDense { weight, bias } => product(x2.clone(), weight, bias) * factor,
                _ => unreachable!("a Linear layer materialises Linear paths"),
            };
            y = y + extra.reshape(out_dims);
        }
        y
    }

    /// `y + Σ factor · path(x)` for a Conv2d's input and output.
    pub fn add_conv<B: Backend>(
        &self,
        x: &Tensor<B, 4>,
        mut y: Tensor<B, 4>,
        stride: usize,
        padding: usize,
        weight: &Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let base = || {
            let w = weight.clone().into_data().convert_dtype(DType::F32);
            w.into_vec::<f32>().unwrap_or_default()
        };
        let paths = self.paths::<B>(&x.device(), x.dtype(), &base);
        if paths.is_empty() {
            return y;
        }
        let layer = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
        let point = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        for (path, factor) in paths {
            let extra = match path {
                Path::Conv { down, mid, up } => {
                    let h = match mid {
                        None => conv2d(x.clone(), down, None, layer.clone()),
                        Some(m) => conv2d(
                            conv2d(x.clone(), down, None, point.clone()),
                            m,
                            None,
                            layer.clone(),
                        ),
                    };
                    conv2d(h * factor, up, None, point.clone())
                }
                Path::ConvDense { weight, bias } => {
                    conv2d(x.clone(), weight, bias, layer.clone()) * factor
                }
                _ => unreachable!("a Conv2d layer materialises Conv paths"),
            };
            y = y + extra;
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(shape: LayerShape) -> Layer {
        Layer {
            shape,
            weight: ParamId::new(),
            bias: None,
        }
    }

    #[test]
    fn tucker_low_rank_composes_as_down_then_mid_then_up() {
        // in 2, out 1, rank 1, kernel 1×1 kept trivial except for the factors.
        let shape = LayerShape::Conv {
            in_channels: 2,
            out_channels: 1,
            kernel: 1,
            stride: 1,
            padding: 0,
        };
        let d = Delta::LowRank {
            down: HostTensor::new(vec![1, 2, 1, 1], vec![2.0, 3.0]),
            up: HostTensor::new(vec![1, 1, 1, 1], vec![5.0]),
            mid: Some(HostTensor::new(vec![1, 1, 1, 1], vec![7.0])),
        };
        d.check(&shape, false).unwrap();
        assert_eq!(d.dense(&shape).data, vec![70.0, 105.0]);
    }

    #[test]
    fn attach_is_all_or_nothing_and_names_the_layer() {
        let table = AdapterTable::default();
        table.register(
            "a",
            layer(LayerShape::Linear {
                in_features: 3,
                out_features: 2,
            }),
        );
        let good = LayerDelta {
            layer: "a".into(),
            delta: Delta::LowRank {
                down: HostTensor::new(vec![1, 3], vec![1.0; 3]),
                up: HostTensor::new(vec![2, 1], vec![1.0; 2]),
                mid: None,
            },
            scale: 1.0,
        };
        let mut bad = good.clone();
        bad.layer = "b".into();
        let err = table.attach("x", vec![good.clone(), bad]).unwrap_err();
        assert!(err.to_string().contains("`b`"), "{err}");
        assert!(table.adapters().is_empty());
        let mut wide = good.clone();
        wide.delta = Delta::LowRank {
            down: HostTensor::new(vec![1, 4], vec![1.0; 4]),
            up: HostTensor::new(vec![2, 1], vec![1.0; 2]),
            mid: None,
        };
        let err = table.attach("x", vec![wide]).unwrap_err();
        assert!(err.to_string().contains("[2, 3]"), "{err}");
        table.attach("x", vec![good]).unwrap();
        assert_eq!(table.adapters(), vec!["x".to_string()]);
    }
}
