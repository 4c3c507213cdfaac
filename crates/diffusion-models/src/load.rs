//! Building modules from weights, strictly.
//!
//! A [`Loader`] walks the module tree with a key prefix, as candle's
//! `VarBuilder` does: every module's constructor asks for its tensors by their
//! diffusers name (`down_blocks.0.resnets.1.conv1.weight`), with the shape its
//! config implies. The tensor is read straight from the (memory-mapped) file,
//! converted to the model's float type and placed on the device: no random
//! initialisation is allocated first. Every key read is recorded, so
//! [`Loader::finish`] can report weights no module consumed. Missing keys,
//! wrong shapes and non-float types are errors that name the key.
//!
//! The loader also carries the [`Formulation`] the layers run their heaviest
//! ops in (the backend's unless [`Loader::with_formulation`] says otherwise):
//! each layer keeps the choice it was built with.
//!
//! The same constructors build randomly initialised models
//! ([`Loader::random`]) for training from scratch and for benchmarks of
//! full-size configs without downloading gigabytes.

use crate::adapter::{AdapterSlot, AdapterTable, Layer};
use crate::error::{ModelError, Result};
use crate::formulation::Formulation;
use crate::trainable_lora::{LoraConfig, LoraInit, TrainableConvLora, TrainableLora};
use burn::module::{Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, FloatDType, Tensor, TensorData};
use diffusion_hub::weights::{Dtype, Weights};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// The float type a model's parameters are held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit float.
    #[default]
    F32,
    /// IEEE half (normalisation statistics and softmax still run in f32).
    F16,
    /// bfloat16 (normalisation statistics and softmax still run in f32).
    BF16,
}

impl Precision {
    /// Burn's float dtype for this precision.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::BF16 => FloatDType::BF16,
        }
    }

    /// Burn's dtype for this precision.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::BF16 => DType::BF16,
        }
    }

    /// Parses `f32`, `f16`/`fp16`/`float16`, `bf16`/`bfloat16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Some(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Some(Precision::F16),
            "bf16" | "bfloat16" => Some(Precision::BF16),
            _ => None,
        }
    }
}

/// A tensor as stored: shape, type and little-endian bytes.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Element type (safetensors naming).
    pub dtype: Dtype,
    /// Raw little-endian bytes.
    pub bytes: Vec<u8>,
}

/// Anything weights can be read from: weight files (safetensors or PyTorch
/// pickles, single or sharded) or an in-memory map.
pub trait WeightSource {
    /// For error messages: the file(s).
    fn name(&self) -> String;
    /// All keys.
    fn keys(&self) -> Vec<String>;
    /// The stored shape of `key`, if present.
    fn shape(&self, key: &str) -> Option<Vec<usize>>;
    /// The stored dtype of `key`, if present.
    fn dtype(&self, key: &str) -> Option<Dtype>;
    /// The bytes of `key` (present: checked by the caller).
    fn read(&self, key: &str) -> Result<StoredTensor>;
}

impl WeightSource for Weights {
    fn name(&self) -> String {
        self.source().display().to_string()
    }
    fn keys(&self) -> Vec<String> {
        self.tensors().map(|(k, _)| k.to_string()).collect()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensor(key).ok().map(|t| t.shape.to_vec())
    }
    fn dtype(&self, key: &str) -> Option<Dtype> {
        self.tensor(key).ok().map(|t| t.dtype.clone())
    }
    fn read(&self, key: &str) -> Result<StoredTensor> {
        let view = self.tensor(key)?;
        Ok(StoredTensor {
            shape: view.shape.to_vec(),
            dtype: view.dtype.clone(),
            bytes: view.data.to_vec(),
        })
    }
}

/// Weights held in memory, by key (tests, conversions, training checkpoints).
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    /// Name for error messages.
    pub name: String,
    /// The tensors.
    pub tensors: BTreeMap<String, StoredTensor>,
}

impl TensorMap {
    /// Adds an f32 tensor.
    pub fn insert_f32(&mut self, key: impl Into<String>, shape: Vec<usize>, values: &[f32]) {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.insert(
            key.into(),
            StoredTensor {
                shape,
                dtype: Dtype::F32,
                bytes,
            },
        );
    }
}

impl WeightSource for TensorMap {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn keys(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.shape.clone())
    }
    fn dtype(&self, key: &str) -> Option<Dtype> {
        self.tensors.get(key).map(|t| t.dtype.clone())
    }
    fn read(&self, key: &str) -> Result<StoredTensor> {
        self.tensors
            .get(key)
            .cloned()
            .ok_or_else(|| ModelError::MissingKey {
                source_name: self.name.clone(),
                key: key.to_string(),
                shape: vec![],
            })
    }
}

/// How a randomly initialised parameter is drawn (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All ones (norm weights).
    Ones,
    /// All zeros (norm biases).
    Zeros,
    /// Uniform in `[-bound, bound]` (Linear/Conv: `1/sqrt(fan_in)`).
    Uniform(f64),
    /// Normal with this standard deviation (embeddings).
    Normal(f64),
}

impl Init {
    /// PyTorch's default for Linear/Conv weights and biases: kaiming-uniform with
    /// `a = sqrt(5)`, which reduces to `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    pub fn fan_in(fan_in: usize) -> Self {
        Init::Uniform(1.0 / (fan_in.max(1) as f64).sqrt())
    }
}

enum Source<'a> {
    Weights(&'a dyn WeightSource),
    /// Random initialisation: from the backend's generator, or, with a seed,
    /// from a host generator keyed by `(seed, key)`.
    Random(Option<u64>),
}

struct Context<'a, B: Backend> {
    source: Source<'a>,
    device: B::Device,
    used: RefCell<BTreeSet<String>>,
    params: RefCell<ParamKeys>,
    adapters: AdapterTable,
}

/// Where a parameter lives in diffusers' files: its key, its stored shape, and
/// whether the module holds it transposed (Linear weights). Recorded by the
/// [`Loader`] for every parameter it hands out, so a model built from it can
/// be written back under the same keys ([`crate::state::state_dict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// The diffusers key (`down_blocks.0.resnets.1.conv1.weight`).
    pub key: String,
    /// The shape in the file (PyTorch layout).
    pub stored: Vec<usize>,
    /// Held as `[in, out]`, stored as `[out, in, ...]`.
    pub transposed: bool,
}

/// Every parameter of a model built by one [`Loader`], by Burn parameter id.
pub type ParamKeys = BTreeMap<ParamId, ParamInfo>;

/// Hands out parameters by diffusers key; see the module docs.
pub struct Loader<'a, B: Backend> {
    ctx: Rc<Context<'a, B>>,
    prefix: String,
    precision: Precision,
    formulation: Formulation,
    lora: Option<Rc<LoraSpec<'a>>>,
}

impl<B: Backend> Clone for Loader<'_, B> {
    fn clone(&self) -> Self {
        Loader {
            ctx: self.ctx.clone(),
            prefix: self.prefix.clone(),
            precision: self.precision,
            formulation: self.formulation,
            lora: self.lora.clone(),
        }
    }
}

impl<'a, B: Backend> Loader<'a, B> {
    /// Loads from `source` into parameters of `precision` on `device`; the
    /// layers use the backend's formulations ([`Formulation::for_device`])
    /// unless [`Loader::with_formulation`] says otherwise.
    pub fn new(source: &'a dyn WeightSource, device: &B::Device, precision: Precision) -> Self {
        Self::with_source(Source::Weights(source), device, precision)
    }

    /// Random initialisation with PyTorch's default schemes (seed the backend
    /// with `B::seed` first for reproducible weights).
    pub fn random(device: &B::Device, precision: Precision) -> Loader<'static, B> {
        Loader::with_source(Source::Random(None), device, precision)
    }

    /// Random initialisation like [`Loader::random`], drawn on the host from
    /// a generator keyed by `seed` and each parameter's key: the weights
    /// depend on nothing else (not on the backend, the build order, or other
    /// threads drawing random numbers), so a seeded training run is
    /// reproducible.
    pub fn random_seeded(
        device: &B::Device,
        precision: Precision,
        seed: u64,
    ) -> Loader<'static, B> {
        Loader::with_source(Source::Random(Some(seed)), device, precision)
    }

    fn with_source(source: Source<'a>, device: &B::Device, precision: Precision) -> Self {
        Loader {
            ctx: Rc::new(Context {
                source,
                device: device.clone(),
                used: RefCell::new(BTreeSet::new()),
                params: RefCell::new(ParamKeys::new()),
                adapters: AdapterTable::default(),
            }),
            prefix: String::new(),
            precision,
            formulation: Formulation::for_device::<B>(device),
            lora: None,
        }
    }

    /// The same loader (same weights, prefix and record of consumed keys)
    /// handing out parameters in `precision`: a sub-model that must run in
    /// another float type than the rest (the VAE's `force_upcast`).
    pub fn with_precision(&self, precision: Precision) -> Self {
        Loader {
            precision,
            ..self.clone()
        }
    }

    /// The same loader building layers that run `formulation` (every layer
    /// loaded through it, or through a loader derived from it with
    /// [`Loader::pp`], keeps this choice).
    pub fn with_formulation(&self, formulation: Formulation) -> Self {
        Loader {
            formulation,
            ..self.clone()
        }
    }

    /// The same loader putting a trainable LoRA ([`TrainableLora`]) on every
    /// Linear `config` targets, its factors from `factors` (drawn fresh, or
    /// read from a LoRA file under peft's keys `<module>.lora_A.weight` /
    /// `lora_B.weight`: a resumed run, a comparison with PyTorch).
    pub fn with_lora(&self, config: LoraConfig, factors: LoraFactors<'a>) -> Result<Self> {
        config.validate()?;
        Ok(Loader {
            lora: Some(Rc::new(LoraSpec {
                config,
                factors,
                used: RefCell::new(BTreeSet::new()),
            })),
            ..self.clone()
        })
    }

    /// The trainable LoRA of the Linear at this loader's prefix, when the
    /// loader's [`LoraConfig`] targets it. `conv_1x1`: the layer's weight is
    /// stored as a 1×1 conv (`[out, in, 1, 1]`), so peft's factors are too.
    pub fn trainable_lora(
        &self,
        in_features: usize,
        out_features: usize,
        conv_1x1: bool,
    ) -> Result<Option<TrainableLora<B>>> {
        let Some((spec, down_init)) = self.lora_target(in_features, out_features, in_features)?
        else {
            return Ok(None);
        };
        let r = spec.config.r;
        let stored = |out: usize, inp: usize| {
            if conv_1x1 {
                vec![out, inp, 1, 1]
            } else {
                vec![out, inp]
            }
        };
        Ok(Some(TrainableLora {
            down: self.lora_factor(
                &spec,
                "lora_A.weight",
                &stored(r, in_features),
                [in_features, r],
                down_init,
            )?,
            up: self.lora_factor(
                &spec,
                "lora_B.weight",
                &stored(out_features, r),
                [r, out_features],
                Init::Zeros,
            )?,
            scaling: spec.config.scaling(),
        }))
    }

    /// The trainable LoRA of the Conv2d at this loader's prefix, when the
    /// loader's [`LoraConfig`] targets it: peft's `lora_A` a conv with the
    /// layer's kernel, stride and padding (`[r, in, k, k]`), `lora_B` a 1×1
    /// conv (`[out, r, 1, 1]`).
    pub fn trainable_conv_lora(
        &self,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Option<TrainableConvLora<B>>> {
        let fan_in = in_channels * kernel * kernel;
        let Some((spec, down_init)) = self.lora_target(in_channels, out_channels, fan_in)? else {
            return Ok(None);
        };
        let r = spec.config.r;
        let down = [r, in_channels, kernel, kernel];
        let up = [out_channels, r, 1, 1];
        Ok(Some(TrainableConvLora {
            down: self.lora_factor(&spec, "lora_A.weight", &down, down, down_init)?,
            up: self.lora_factor(&spec, "lora_B.weight", &up, up, Init::Zeros)?,
            stride,
            padding,
            scaling: spec.config.scaling(),
        }))
    }

    /// The LoRA spec when it targets this loader's layer (and how its
    /// `lora_A` is drawn); a rank above the layer's smaller side is refused
    /// naming the module.
    fn lora_target(
        &self,
        inputs: usize,
        outputs: usize,
        fan_in: usize,
    ) -> Result<Option<(Rc<LoraSpec<'a>>, Init)>> {
        let Some(spec) = self.lora.clone() else {
            return Ok(None);
        };
        if !spec.config.targets(&self.prefix) {
            return Ok(None);
        }
        let r = spec.config.r;
        if r > inputs.min(outputs) {
            return Err(ModelError::Config {
                source_name: "LoRA config".into(),
                field: "r".into(),
                message: format!(
                    "rank {r} is larger than `{}` ({inputs} -> {outputs} features)",
                    self.prefix
                ),
            });
        }
        let down_init = match spec.config.init_lora_weights {
            LoraInit::Gaussian => Init::Normal(1.0 / r as f64),
            LoraInit::Kaiming => Init::fan_in(fan_in),
        };
        Ok(Some((spec, down_init)))
    }

    /// One LoRA factor `name`, `stored` in the file; held as `held` (the
    /// transpose of a 2-D `stored`, else the same shape).
    fn lora_factor<const D: usize>(
        &self,
        spec: &LoraSpec<'a>,
        name: &str,
        stored: &[usize],
        held: [usize; D],
        init: Init,
    ) -> Result<Param<Tensor<B, D>>> {
        let key = self.key(name);
        let transpose = D == 2;
        let n = stored.iter().product();
        let values = match spec.factors {
            LoraFactors::Seeded(seed) => seeded_values(seed, &key, n, init),
            LoraFactors::Stored(source) => {
                let data = read_checked(source, &key, stored)?;
                spec.used.borrow_mut().insert(key);
                if transpose {
                    transposed(data, stored[0], n / stored[0])
                } else {
                    data.convert_dtype(DType::F32)
                        .into_vec::<f32>()
                        .expect("converted to f32")
                }
            }
        };
        let dtype = self.precision.dtype();
        let data = TensorData::new(values, held);
        let data = if dtype == DType::F32 {
            data
        } else {
            data.convert_dtype(dtype)
        };
        let param = Param::from_tensor(Tensor::from_data(data, (&self.ctx.device, dtype)));
        self.record(param.id, name, stored, transpose);
        Ok(param)
    }

    /// A loader for the sub-module `name` (`loader.pp("down_blocks").pp(0)`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Loader {
            prefix,
            ..self.clone()
        }
    }

    /// The full key of `name` under this loader's prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The table every Linear and Conv2d built through this loader (and the
    /// loaders derived from it) registers in: the model's adapters.
    pub fn adapters(&self) -> AdapterTable {
        self.ctx.adapters.clone()
    }

    /// Registers the layer at this loader's prefix in [`Loader::adapters`].
    pub fn adapter_slot(&self, layer: Layer) -> AdapterSlot {
        self.ctx.adapters.register(&self.prefix, layer)
    }

    /// The device parameters are placed on.
    pub fn device(&self) -> &B::Device {
        &self.ctx.device
    }

    /// The parameters' float type.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The formulations the layers built from this loader run.
    pub fn formulation(&self) -> Formulation {
        self.formulation
    }

    /// Whether this loader draws random weights.
    pub fn is_random(&self) -> bool {
        matches!(self.ctx.source, Source::Random(_))
    }

    /// Whether the weights hold `name` (always false for random init): for
    /// legacy names and optional tensors whose presence the config does not say.
    pub fn contains(&self, name: &str) -> bool {
        match self.ctx.source {
            Source::Weights(w) => w.shape(&self.key(name)).is_some(),
            Source::Random(_) => false,
        }
    }

    /// The stored shape of `name`, if the weights hold it.
    pub fn stored_shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.ctx.source {
            Source::Weights(w) => w.shape(&self.key(name)),
            Source::Random(_) => None,
        }
    }

    /// The parameter `name` with the given shape.
    pub fn param<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Param<Tensor<B, D>>> {
        let param = Param::from_tensor(self.tensor(name, shape, init)?);
        self.record(param.id, name, &shape, false);
        Ok(param)
    }

    fn record(&self, id: ParamId, name: &str, stored: &[usize], transposed: bool) {
        self.ctx.params.borrow_mut().insert(
            id,
            ParamInfo {
                key: self.key(name),
                stored: stored.to_vec(),
                transposed,
            },
        );
    }

    /// The key, stored shape and layout of every parameter handed out so far
    /// (by this loader and every loader derived from it with [`Loader::pp`]).
    pub fn param_keys(&self) -> ParamKeys {
        self.ctx.params.borrow().clone()
    }

    /// The tensor `name` with the given shape (see [`Loader::param`]).
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>> {
        self.tensor_reshaped(name, &shape, shape, init)
    }

    /// The tensor `name`, stored with `stored` shape (checked) and reshaped to
    /// `shape` (same element count): legacy 1×1-conv attention weights load
    /// as Linear weights this way.
    pub fn tensor_reshaped<const D: usize>(
        &self,
        name: &str,
        stored: &[usize],
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>> {
        let device = &self.ctx.device;
        let dtype = self.precision.dtype();
        match self.read(name, stored)? {
            None => Ok(self.random_tensor(name, shape, init)),
            Some(data) => {
                let data = TensorData::from_bytes(data.bytes, shape.to_vec(), data.dtype);
                let data = if data.dtype == dtype {
                    data
                } else {
                    convert(data, dtype)
                };
                Ok(Tensor::from_data(data, (device, dtype)))
            }
        }
    }

    /// A PyTorch Linear weight stored `[out, in]` (or with trailing 1×1 conv
    /// dimensions, `stored`), returned transposed to Burn's `[in, out]` and
    /// contiguous: the transpose is done once on the host, because a
    /// transposed view makes every CPU matmul slower (about 2× on ndarray).
    pub fn linear_param(
        &self,
        name: &str,
        stored: &[usize],
        out_features: usize,
        in_features: usize,
    ) -> Result<Param<Tensor<B, 2>>> {
        let param =
            Param::from_tensor(self.linear_weight(name, stored, out_features, in_features)?);
        self.record(param.id, name, stored, true);
        Ok(param)
    }

    fn linear_weight(
        &self,
        name: &str,
        stored: &[usize],
        out_features: usize,
        in_features: usize,
    ) -> Result<Tensor<B, 2>> {
        let device = &self.ctx.device;
        let dtype = self.precision.dtype();
        match self.read(name, stored)? {
            None => Ok(self.random_tensor(
                name,
                [in_features, out_features],
                Init::fan_in(in_features),
            )),
            Some(data) => {
                let t = transposed(data, out_features, in_features);
                let data = TensorData::new(t, [in_features, out_features]);
                let data = if dtype == DType::F32 {
                    data
                } else {
                    data.convert_dtype(dtype)
                };
                Ok(Tensor::from_data(data, (device, dtype)))
            }
        }
    }

    /// The stored data of `name` (checked against `stored`), or `None` for
    /// random initialisation; records the key as used.
    fn read(&self, name: &str, stored: &[usize]) -> Result<Option<TensorData>> {
        let key = self.key(name);
        let source = match self.ctx.source {
            Source::Random(_) => return Ok(None),
            Source::Weights(w) => w,
        };
        let data = read_checked(source, &key, stored)?;
        self.ctx.used.borrow_mut().insert(key);
        Ok(Some(data))
    }

    fn random_tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Tensor<B, D> {
        let (device, dtype) = (&self.ctx.device, self.precision.dtype());
        let Source::Random(Some(seed)) = self.ctx.source else {
            return random_tensor(shape, init, device, dtype);
        };
        let n = shape.iter().product();
        let values = seeded_values(seed, &self.key(name), n, init);
        let data = TensorData::new(values, shape.to_vec());
        let data = if dtype == DType::F32 {
            data
        } else {
            data.convert_dtype(dtype)
        };
        Tensor::from_data(data, (device, dtype))
    }

    /// Marks `name` as consumed without reading it (buffers diffusers ignores).
    pub fn skip(&self, name: &str) {
        self.ctx.used.borrow_mut().insert(self.key(name));
    }

    /// Ends loading: an error listing every key no parameter consumed, except
    /// those whose key ends with one of `ignorable` (e.g. `position_ids`).
    /// A loader with a prefix checks only the keys under its prefix.
    pub fn finish(self, ignorable: &[&str]) -> Result<()> {
        if let Some(spec) = &self.lora
            && let LoraFactors::Stored(source) = spec.factors
        {
            let used = spec.used.borrow();
            let keys: Vec<String> = source
                .keys()
                .into_iter()
                .filter(|k| !used.contains(k))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !keys.is_empty() {
                return Err(ModelError::UnexpectedKeys {
                    source_name: source.name(),
                    keys,
                });
            }
        }
        let source = match self.ctx.source {
            Source::Random(_) => return Ok(()),
            Source::Weights(w) => w,
        };
        let used = self.ctx.used.borrow();
        let under = format!("{}.", self.prefix);
        let keys: Vec<String> = source
            .keys()
            .into_iter()
            .filter(|k| self.prefix.is_empty() || k.starts_with(&under))
            .filter(|k| !used.contains(k) && !ignorable.iter().any(|s| k.ends_with(s)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if keys.is_empty() {
            Ok(())
        } else {
            Err(ModelError::UnexpectedKeys {
                source_name: source.name(),
                keys,
            })
        }
    }
}

/// Converts stored values to the model's float type through f32 (exact for
/// F16/BF16 → F32; rounds to nearest even for F32 → F16/BF16, as torch does).
fn convert(data: TensorData, dtype: DType) -> TensorData {
    let shape = data.shape.clone();
    let values: Vec<f32> = data
        .convert_dtype(DType::F32)
        .into_vec::<f32>()
        .expect("converted to f32 above");
    let f32_data = TensorData::new(values, shape);
    if dtype == DType::F32 {
        f32_data
    } else {
        f32_data.convert_dtype(dtype)
    }
}

fn random_tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    init: Init,
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    let t: Tensor<B, D> = match init {
        Init::Ones => Tensor::ones(shape, (device, DType::F32)),
        Init::Zeros => Tensor::zeros(shape, (device, DType::F32)),
        Init::Uniform(b) => {
            Tensor::random(shape, Distribution::Uniform(-b, b), (device, DType::F32))
        }
        Init::Normal(std) => {
            Tensor::random(shape, Distribution::Normal(0.0, std), (device, DType::F32))
        }
    };
    if dtype == DType::F32 {
        t
    } else {
        t.cast(dtype_to_float(dtype))
    }
}

/// `n` values drawn as `init` says from a splitmix64 stream keyed by the
/// seed and the FNV-1a hash of `key` (normals by Box–Muller).
/// Where the factors of trainable LoRAs come from ([`Loader::with_lora`]).
#[derive(Clone, Copy)]
pub enum LoraFactors<'a> {
    /// Drawn as the config's `init_lora_weights` says, from a host generator
    /// keyed by this seed and each factor's key (`lora_B` zero).
    Seeded(u64),
    /// Read from LoRA weights under peft's keys (every targeted layer's
    /// `lora_A.weight` and `lora_B.weight`, no other key).
    Stored(&'a dyn WeightSource),
}

struct LoraSpec<'a> {
    config: LoraConfig,
    factors: LoraFactors<'a>,
    used: RefCell<BTreeSet<String>>,
}

/// The stored tensor `key` of `source`, checked: present, `stored`-shaped, a
/// float type, finite.
fn read_checked(source: &dyn WeightSource, key: &str, stored: &[usize]) -> Result<TensorData> {
    let key = key.to_string();
    let found = source.shape(&key).ok_or_else(|| ModelError::MissingKey {
        source_name: source.name(),
        key: key.clone(),
        shape: stored.to_vec(),
    })?;
    if found != stored {
        return Err(ModelError::ShapeMismatch {
            source_name: source.name(),
            key,
            expected: stored.to_vec(),
            found,
        });
    }
    let stored_tensor = source.read(&key)?;
    let stored_dtype = match stored_tensor.dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        ref other => {
            return Err(ModelError::UnsupportedDtype {
                source_name: source.name(),
                key,
                dtype: other.to_string(),
            });
        }
    };
    if !all_finite(&stored_tensor.bytes, &stored_tensor.dtype) {
        // A corrupt file: without this, every output would be NaN and the
        // first complaint would come from the scheduler, far from the cause.
        return Err(ModelError::NonFiniteWeight {
            source_name: source.name(),
            key,
        });
    }
    Ok(TensorData::from_bytes_vec(
        stored_tensor.bytes,
        stored.to_vec(),
        stored_dtype,
    ))
}

/// A stored `[out, in]` matrix as f32 values of its `[in, out]` transpose.
fn transposed(data: TensorData, out_features: usize, in_features: usize) -> Vec<f32> {
    let values = data
        .convert_dtype(DType::F32)
        .into_vec::<f32>()
        .expect("converted to f32 above");
    let mut t = vec![0f32; values.len()];
    for o in 0..out_features {
        for i in 0..in_features {
            t[i * out_features + o] = values[o * in_features + i];
        }
    }
    t
}

pub(crate) fn seeded_values(seed: u64, key: &str, n: usize, init: Init) -> Vec<f32> {
    let mut state = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        // 53 random bits in [0, 1).
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| match init {
            Init::Ones => 1.0,
            Init::Zeros => 0.0,
            Init::Uniform(b) => ((2.0 * next() - 1.0) * b) as f32,
            Init::Normal(std) => {
                let (u1, u2) = (1.0 - next(), next());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
            }
        })
        .collect()
}

fn dtype_to_float(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}

/// Whether every value of little-endian `bytes` of float type `dtype` is
/// finite: an all-ones exponent is NaN or infinity in each format.
fn all_finite(bytes: &[u8], dtype: &Dtype) -> bool {
    match dtype {
        Dtype::F16 => bytes
            .chunks_exact(2)
            .all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 != 0x7c00),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 != 0x7f80),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .all(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 != 0x7f80_0000),
        Dtype::F64 => bytes.chunks_exact(8).all(|b| {
            let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            v & 0x7ff0_0000_0000_0000 != 0x7ff0_0000_0000_0000
        }),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu as B;

    fn map(dtype: Dtype, bytes: Vec<u8>, shape: Vec<usize>) -> TensorMap {
        let mut m = TensorMap {
            name: "test.safetensors".into(),
            ..Default::default()
        };
        m.tensors.insert(
            "w".into(),
            StoredTensor {
                shape,
                dtype,
                bytes,
            },
        );
        m
    }

    fn values(t: Tensor<B, 1>) -> Vec<f32> {
        crate::testing::values(t)
    }

    #[test]
    fn every_float_file_type_loads_into_every_precision() {
        let want = [1.0f32, -2.5, 0.099609375, 65504.0];
        let f32_bytes: Vec<u8> = want.iter().flat_map(|v| v.to_le_bytes()).collect();
        // bf16 is the top half of f32; f16 bits written by hand.
        let bf16_bytes: Vec<u8> = want
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let f16_bits: [u16; 4] = [0x3C00, 0xC100, 0x2E60, 0x7BFF];
        let f16_bytes: Vec<u8> = f16_bits.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f64_bytes: Vec<u8> = want
            .iter()
            .flat_map(|v| f64::from(*v).to_le_bytes())
            .collect();
        let dev = Default::default();
        for (dtype, bytes) in [
            (Dtype::F32, f32_bytes),
            (Dtype::F16, f16_bytes),
            (Dtype::BF16, bf16_bytes),
            (Dtype::F64, f64_bytes),
        ] {
            let m = map(dtype.clone(), bytes, vec![4]);
            for p in [Precision::F32, Precision::F16, Precision::BF16] {
                let t: Tensor<B, 1> = Loader::new(&m, &dev, p)
                    .tensor("w", [4], Init::Zeros)
                    .unwrap();
                assert_eq!(t.dtype(), p.dtype(), "{dtype:?} into {p:?}");
                let got = values(t);
                // Every value is exact in f16 and bf16 except 65504: bf16 rounds
                // it to 65536, and a bf16 file holds it truncated to 65280
                // (exact in every precision).
                let expect: Vec<f32> = want
                    .iter()
                    .map(|&v| match (v == 65504.0, &dtype, p) {
                        (true, Dtype::BF16, _) => 65280.0,
                        (true, _, Precision::BF16) => 65536.0,
                        _ => v,
                    })
                    .collect();
                assert_eq!(got, expect, "{dtype:?} into {p:?}");
            }
        }
    }

    #[test]
    fn integer_weights_and_wrong_shapes_are_named_errors() {
        let m = map(Dtype::I64, vec![0; 32], vec![4]);
        let l = Loader::<B>::new(&m, &Default::default(), Precision::F32);
        let err = l
            .tensor::<1>("w", [4], Init::Zeros)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`w`") && err.contains("I64"), "{err}");
        let err = l
            .tensor::<2>("w", [2, 2], Init::Zeros)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`w` has shape [4], the config implies [2, 2]"),
            "{err}"
        );
        let err = l
            .tensor::<1>("v", [4], Init::Zeros)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing weight `v`"), "{err}");
    }
}
