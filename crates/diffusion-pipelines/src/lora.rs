//! LoRA files as users download them: the formats, detected from the keys,
//! turned into [`Delta`]s on a model's layers ([`diffusion_models::adapter`]).
//!
//! | format | keys |
//! |---|---|
//! | diffusers / PEFT | `unet.<module>.lora_A.weight`, `lora_B.weight` (`text_encoder.`, `text_encoder_2.`, or no prefix: the UNet) |
//! | diffusers, older | `<module>.lora.down.weight` / `.lora.up.weight`; attention processors' `<attn>.processor.to_q_lora.down.weight` |
//! | kohya-ss / A1111 | `lora_unet_<module_with_underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`, `lora_te_`, `lora_te1_`, `lora_te2_`; LoCon on convolutions, `lora_mid` (Tucker) |
//! | LyCORIS LoHa | `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (+ `hada_t1`, `hada_t2`) |
//! | LyCORIS LoKr | `lokr_w1` or `lokr_w1_a`/`_b`, `lokr_w2` or `lokr_w2_a`/`_b` (+ `lokr_t2`) |
//! | full difference | `diff`, `diff_b` |
//!
//! Scales follow the files' conventions: `alpha / rank` where an `alpha` is
//! stored (kohya, LyCORIS, diffusers' `network_alphas`), else diffusers'
//! `lora_adapter_metadata` (`lora_alpha / r`, `/ √r` with `use_rslora`), else 1. LoHa's rank is
//! `hada_w1_b`'s rows, LoKr's the rows of `lokr_w2_b` (else `lokr_w1_b`; a LoKr
//! of full factors has scale 1), as A1111 and LyCORIS compute them.
//!
//! Text-encoder modules match with or without transformers 4's `text_model.`
//! prefix, on either side. A file that names a module the model lacks, or a
//! shape that does not fit, is refused whole.

use crate::error::{PipelineError, Result};
use diffusion_hub::torch_pickle::PickleOptions;
use diffusion_hub::weights::Weights;
use diffusion_models::adapter::{AdapterTable, Delta, HostTensor, LayerDelta};
use std::collections::BTreeMap;
use std::path::Path;

/// Which model of a pipeline a file's entry targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The denoising UNet.
    Unet,
    /// `text_encoder` (kohya `lora_te_` / `lora_te1_`).
    TextEncoder,
    /// `text_encoder_2` (kohya `lora_te2_`).
    TextEncoder2,
}

impl Component {
    /// diffusers' attribute name.
    pub fn name(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// The adapter kind an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Low-rank `up · down` (LoRA, LoCon, Tucker LoCon).
    LoRa,
    /// LyCORIS Hadamard product.
    LoHa,
    /// LyCORIS Kronecker product.
    LoKr,
    /// A full weight difference.
    Full,
}

/// How a module is named in the file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Name {
    /// diffusers' dotted module path.
    Dotted(String),
    /// kohya's path with every `.` turned into `_`.
    Flat(String),
}

/// One module's entry of an adapter file, before it is matched to a layer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The model it targets.
    pub component: Component,
    /// The module as the file names it.
    pub module: String,
    /// Its kind.
    pub kind: Kind,
    /// Its rank (low-rank kinds).
    pub rank: Option<usize>,
    /// Its stored alpha.
    pub alpha: Option<f32>,
    name: Name,
    parts: BTreeMap<String, HostTensor>,
    /// The file key of one of its tensors (for messages).
    key: String,
}

/// A parsed adapter file: its entries by component.
#[derive(Debug, Clone)]
pub struct AdapterFile {
    /// The file, for messages.
    pub file: String,
    /// Every module entry.
    pub entries: Vec<Entry>,
    /// `lora_adapter_metadata` (diffusers): `lora_alpha / r` per component.
    metadata_scale: BTreeMap<Component, f64>,
}

fn adapter_error(file: &str, key: &str, message: impl Into<String>) -> PipelineError {
    PipelineError::Adapter {
        file: file.to_string(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// A tensor's values as f32: floats, and the integer alphas some trainers
/// store (`alpha` as I64).
fn values(view: &diffusion_hub::weights::TensorView<'_>) -> Result<Vec<f32>> {
    use diffusion_hub::weights::Dtype;
    let ints = |width: usize, f: fn(&[u8]) -> f32| view.data.chunks_exact(width).map(f).collect();
    Ok(match view.dtype {
        Dtype::F64 => view
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::I64 => ints(8, |c| {
            i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32
        }),
        Dtype::I32 => ints(4, |c| {
            i32::from_le_bytes(c.try_into().expect("4 bytes")) as f32
        }),
        Dtype::I16 => ints(2, |c| {
            i16::from_le_bytes(c.try_into().expect("2 bytes")) as f32
        }),
        Dtype::U8 => ints(1, |c| c[0] as f32),
        _ => view.to_f32_vec()?,
    })
}

/// The part suffixes, longest first, and the part names they store under.
const PARTS: &[(&str, &str)] = &[
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".hada_w1_a", "hada_w1_a"),
    (".hada_w1_b", "hada_w1_b"),
    (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"),
    (".hada_t1", "hada_t1"),
    (".hada_t2", "hada_t2"),
    (".lokr_w1_a", "lokr_w1_a"),
    (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2_a", "lokr_w2_a"),
    (".lokr_w2_b", "lokr_w2_b"),
    (".lokr_w1", "lokr_w1"),
    (".lokr_w2", "lokr_w2"),
    (".lokr_t2", "lokr_t2"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
    (".alpha", "alpha"),
    (".lora_magnitude_vector", "magnitude"),
];

/// Splits a file key into its component, module name and part.
fn split_key(key: &str) -> Option<(Component, Name, &'static str)> {
    let (stem, part) = PARTS
        .iter()
        .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|s| (s, *part)))?;
    for (prefix, component) in [
        ("lora_unet_", Component::Unet),
        ("lora_te1_", Component::TextEncoder),
        ("lora_te2_", Component::TextEncoder2),
        ("lora_te_", Component::TextEncoder),
    ] {
        if let Some(flat) = stem.strip_prefix(prefix) {
            return Some((component, Name::Flat(flat.to_string()), part));
        }
    }
    let (component, module) = if let Some(m) = stem.strip_prefix("unet.") {
        (Component::Unet, m)
    } else if let Some(m) = stem.strip_prefix("text_encoder_2.") {
        (Component::TextEncoder2, m)
    } else if let Some(m) = stem.strip_prefix("text_encoder.") {
        (Component::TextEncoder, m)
    } else {
        (Component::Unet, stem)
    };
    // The attention processors' names: `attn1.processor.to_q_lora` is `attn1.to_q`.
    let module = match module.split_once(".processor.") {
        Some((attn, proj)) => {
            let proj = proj.strip_suffix("_lora").unwrap_or(proj);
            let proj = if proj == "to_out" { "to_out.0" } else { proj };
            format!("{attn}.{proj}")
        }
        None => module.to_string(),
    };
    Some((component, Name::Dotted(module), part))
}

impl AdapterFile {
    /// Opens `path` (safetensors or a torch pickle) and groups its keys by
    /// module. A key in no known format is an error naming it.
    pub fn open(path: &Path) -> Result<Self> {
        let weights = Weights::open_with(path, &PickleOptions::default())?;
        let file = path.display().to_string();
        let mut tensors = BTreeMap::new();
        for (name, _) in weights.tensors() {
            let view = weights.tensor(name)?;
            tensors.insert(
                name.to_string(),
                HostTensor::new(view.shape.to_vec(), values(&view)?),
            );
        }
        let metadata = weights
            .files()
            .iter()
            .filter_map(|f| match f {
                diffusion_hub::weights::WeightFile::Safetensors(s) => {
                    s.header().metadata.get("lora_adapter_metadata").cloned()
                }
                _ => None,
            })
            .next();
        Self::from_tensors(&file, tensors, metadata.as_deref())
    }

    /// Groups `tensors` (file keys → values) by module; `metadata` is
    /// diffusers' `lora_adapter_metadata` JSON when the file has one.
    pub fn from_tensors(
        file: &str,
        tensors: BTreeMap<String, HostTensor>,
        metadata: Option<&str>,
    ) -> Result<Self> {
        let mut groups: BTreeMap<(Component, Name), (String, BTreeMap<String, HostTensor>)> =
            BTreeMap::new();
        for (key, t) in tensors {
            if key.ends_with(".dora_scale") {
                return Err(adapter_error(
                    file,
                    &key,
                    "kohya/LyCORIS DoRA (`dora_scale`) is not supported yet (peft's `lora_magnitude_vector` is)",
                ));
            }
            let Some((component, name, part)) = split_key(&key) else {
                return Err(adapter_error(
                    file,
                    &key,
                    "not a key of any LoRA/LyCORIS format this crate reads",
                ));
            };
            let group = groups
                .entry((component, name))
                .or_insert_with(|| (key.clone(), BTreeMap::new()));
            group.1.insert(part.to_string(), t);
        }
        let mut entries = Vec::new();
        for ((component, name), (key, parts)) in groups {
            let has = |p: &str| parts.contains_key(p);
            let kind = if has("down") || has("up") {
                Kind::LoRa
            } else if has("hada_w1_a") {
                Kind::LoHa
            } else if has("lokr_w1") || has("lokr_w1_a") || has("lokr_w2") || has("lokr_w2_a") {
                Kind::LoKr
            } else if has("diff") || has("diff_b") {
                Kind::Full
            } else {
                return Err(adapter_error(
                    file,
                    &key,
                    "an alpha without the factors it scales",
                ));
            };
            let rank = match kind {
                Kind::LoRa => parts.get("down").map(|t| t.shape[0]),
                Kind::LoHa => parts.get("hada_w1_b").map(|t| t.shape[0]),
                Kind::LoKr => parts
                    .get("lokr_w2_b")
                    .or(parts.get("lokr_w1_b"))
                    .map(|t| t.shape[0]),
                Kind::Full => None,
            };
            let alpha = parts.get("alpha").and_then(|a| a.data.first().copied());
            let module = match &name {
                Name::Dotted(m) | Name::Flat(m) => m.clone(),
            };
            entries.push(Entry {
                component,
                module,
                kind,
                rank,
                alpha,
                name,
                parts,
                key,
            });
        }
        let mut metadata_scale = BTreeMap::new();
        if let Some(json) = metadata {
            let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                adapter_error(file, "lora_adapter_metadata", format!("not JSON: {e}"))
            })?;
            for c in [
                Component::Unet,
                Component::TextEncoder,
                Component::TextEncoder2,
            ] {
                let get = |f: &str| v.get(format!("{}.{f}", c.name())).and_then(|x| x.as_f64());
                let rs = v.get(format!("{}.use_rslora", c.name()))
                    == Some(&serde_json::Value::Bool(true));
                if let (Some(alpha), Some(r)) = (get("lora_alpha"), get("r"))
                    && r > 0.0
                {
                    // peft's rsLoRA divides by √r.
                    metadata_scale.insert(c, if rs { alpha / r.sqrt() } else { alpha / r });
                }
            }
        }
        Ok(AdapterFile {
            file: file.to_string(),
            entries,
            metadata_scale,
        })
    }

    /// The components the file targets.
    pub fn components(&self) -> Vec<Component> {
        let mut c: Vec<Component> = self.entries.iter().map(|e| e.component).collect();
        c.sort();
        c.dedup();
        c
    }

    /// The entries of `component` as deltas on the layers of `table`; an entry
    /// whose module the table lacks, or whose factors do not combine, is an
    /// error naming its key.
    pub fn deltas(&self, component: Component, table: &AdapterTable) -> Result<Vec<LayerDelta>> {
        let layers = table.layers();
        let strip = |k: &str| k.strip_prefix("text_model.").unwrap_or(k).to_string();
        let dotted: BTreeMap<String, String> =
            layers.keys().map(|k| (strip(k), k.clone())).collect();
        let flat: BTreeMap<String, String> = layers
            .keys()
            .map(|k| (strip(k).replace('.', "_"), k.clone()))
            .collect();
        let mut out = Vec::new();
        for e in self.entries.iter().filter(|e| e.component == component) {
            let layer = match &e.name {
                Name::Dotted(m) => dotted.get(&strip(m)),
                Name::Flat(m) => flat
                    .get(m.strip_prefix("text_model_").unwrap_or(m))
                    .or_else(|| {
                        sgm_to_diffusers(m, layers_per_block(&layers)).and_then(|d| flat.get(&d))
                    }),
            };
            let Some(layer) = layer else {
                return Err(adapter_error(
                    &self.file,
                    &e.key,
                    format!(
                        "module `{}` is not a Linear or Conv2d layer of the {}",
                        e.module,
                        component.name()
                    ),
                ));
            };
            let shape = layers[layer].shape.stored();
            let (delta, rank) =
                build(e, &shape).map_err(|m| adapter_error(&self.file, &e.key, m))?;
            let scale = match (e.alpha, rank) {
                (Some(alpha), Some(rank)) if e.kind != Kind::Full => alpha as f64 / rank as f64,
                _ if e.kind == Kind::LoRa => {
                    self.metadata_scale.get(&component).copied().unwrap_or(1.0)
                }
                _ => 1.0,
            };
            out.push(LayerDelta {
                layer: layer.clone(),
                delta,
                scale,
            });
        }
        Ok(out)
    }
}

/// The UNet's `layers_per_block`, read off its registered layers (the
/// resnets of `down_blocks.0`).
fn layers_per_block(layers: &BTreeMap<String, diffusion_models::adapter::Layer>) -> usize {
    layers
        .keys()
        .filter_map(|k| k.strip_prefix("down_blocks.0.resnets."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(1, |m| m + 1)
}

/// A kohya module name in Stability's (`sgm`) UNet naming, as diffusers'
/// `_maybe_map_sgm_blocks_to_diffusers` and its kohya key conversion map it,
/// flattened: `input_blocks_4_1_transformer_blocks_0_attn1_to_q` →
/// `down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q` (with two
/// layers per block). Names in diffusers' own naming give `None`.
fn sgm_to_diffusers(flat: &str, layers_per_block: usize) -> Option<String> {
    const INNER: [&str; 3] = ["resnets", "attentions", "upsamplers"];
    let per = layers_per_block + 1;
    let number = |s: &str| s.parse::<usize>().ok();
    // The resnet internals and the other top-level layers.
    let rest_name = |rest: &str| -> String {
        for (from, to) in [
            ("in_layers_2", "conv1"),
            ("out_layers_3", "conv2"),
            ("emb_layers_1", "time_emb_proj"),
            ("skip_connection", "conv_shortcut"),
        ] {
            if rest == from {
                return to.to_string();
            }
        }
        rest.to_string()
    };
    for (from, to) in [
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("input_blocks_0_0", "conv_in"),
        ("out_2", "conv_out"),
    ] {
        if flat == from {
            return Some(to.to_string());
        }
    }
    if let Some(tail) = flat.strip_prefix("input_blocks_") {
        let mut parts = tail.splitn(3, '_');
        let i = number(parts.next()?)?;
        let j = number(parts.next()?)?;
        let rest = parts.next()?;
        let block = i.checked_sub(1)? / per;
        let layer = (i - 1) % per;
        if rest == "op" {
            return Some(format!("down_blocks_{block}_downsamplers_0_conv"));
        }
        return Some(format!(
            "down_blocks_{block}_{}_{layer}_{}",
            INNER.get(j)?,
            rest_name(rest)
        ));
    }
    if let Some(tail) = flat.strip_prefix("middle_block_") {
        let (i, rest) = tail.split_once('_')?;
        let inner = match number(i)? {
            0 => "resnets_0",
            1 => "attentions_0",
            2 => "resnets_1",
            _ => return None,
        };
        return Some(format!("mid_block_{inner}_{}", rest_name(rest)));
    }
    if let Some(tail) = flat.strip_prefix("output_blocks_") {
        let mut parts = tail.splitn(3, '_');
        let i = number(parts.next()?)?;
        let j = number(parts.next()?)?;
        let rest = parts.next()?;
        let (block, layer) = (i / per, i % per);
        let layer = if j < 2 { layer } else { 0 };
        return Some(format!(
            "up_blocks_{block}_{}_{layer}_{}",
            INNER.get(j)?,
            rest_name(rest)
        ));
    }
    None
}

/// `a · b` for `a` `[m, k]`, `b` `[k, n]` (f64 sums).
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p] as f64;
            for j in 0..n {
                c[i * n + j] += x * b[p * n + j] as f64;
            }
        }
    }
    c.into_iter().map(|v| v as f32).collect()
}

/// `einsum("i j k l, j r, i p -> p r k l", t, wb, wa)`: a Tucker core `t`
/// `[R, R, kh, kw]` with `wa` `[R, p]` and `wb` `[R, r]` (LyCORIS' `make_weight_cp`).
fn tucker(
    t: &HostTensor,
    wa: &HostTensor,
    wb: &HostTensor,
) -> std::result::Result<HostTensor, String> {
    let (ri, rj) = (t.shape[0], t.shape[1]);
    let kk: usize = t.shape[2..].iter().product();
    if wa.shape.first() != Some(&ri) || wb.shape.first() != Some(&rj) || t.shape.len() != 4 {
        return Err(format!(
            "Tucker core {:?} does not combine with factors {:?} and {:?}",
            t.shape, wa.shape, wb.shape
        ));
    }
    let p_n = wa.data.len() / ri;
    let r_n = wb.data.len() / rj;
    let mut out = vec![0f64; p_n * r_n * kk];
    for i in 0..ri {
        for j in 0..rj {
            for q in 0..kk {
                let tv = t.data[(i * rj + j) * kk + q] as f64;
                if tv == 0.0 {
                    continue;
                }
                for p in 0..p_n {
                    let a = tv * wa.data[i * p_n + p] as f64;
                    for r in 0..r_n {
                        out[(p * r_n + r) * kk + q] += a * wb.data[j * r_n + r] as f64;
                    }
                }
            }
        }
    }
    let mut shape = vec![p_n, r_n];
    shape.extend_from_slice(&t.shape[2..]);
    Ok(HostTensor::new(
        shape,
        out.into_iter().map(|v| v as f32).collect(),
    ))
}

/// `a · b` of two factors stored `[m, k]` and `[k, ...]`.
fn product(a: &HostTensor, b: &HostTensor) -> std::result::Result<HostTensor, String> {
    let (m, k) = (a.shape[0], a.data.len() / a.shape[0].max(1));
    if b.shape.first() != Some(&k) {
        return Err(format!(
            "factors {:?} and {:?} do not multiply",
            a.shape, b.shape
        ));
    }
    let n = b.data.len() / k.max(1);
    Ok(HostTensor::new(
        vec![m, n],
        matmul(&a.data, &b.data, m, k, n),
    ))
}

/// `kron(w1, w2)` with `w1` `[a, b]` and `w2` `[c, d, ...kernel]`:
/// `[a·c, b·d, ...kernel]` (torch.kron with `w1` unsqueezed over the kernel).
fn kron(w1: &HostTensor, w2: &HostTensor) -> HostTensor {
    let (a, b) = (w1.shape[0], w1.data.len() / w1.shape[0].max(1));
    let (c, d) = (w2.shape[0], w2.shape.get(1).copied().unwrap_or(1));
    let kk = w2.data.len() / (c * d).max(1);
    let (rows, cols) = (a * c, b * d);
    let mut out = vec![0f32; rows * cols * kk];
    for i in 0..a {
        for j in 0..b {
            let x = w1.data[i * b + j];
            for k in 0..c {
                for l in 0..d {
                    for q in 0..kk {
                        out[((i * c + k) * cols + j * d + l) * kk + q] =
                            x * w2.data[(k * d + l) * kk + q];
                    }
                }
            }
        }
    }
    let mut shape = vec![rows, cols];
    shape.extend_from_slice(&w2.shape[2.min(w2.shape.len())..]);
    HostTensor::new(shape, out)
}

/// The entry's delta on a layer of stored shape `shape`, and the rank its
/// alpha divides.
fn build(e: &Entry, shape: &[usize]) -> std::result::Result<(Delta, Option<usize>), String> {
    let part = |p: &str| {
        e.parts
            .get(p)
            .ok_or_else(|| format!("the {:?} entry lacks `{p}`", e.kind))
    };
    let reshaped = |t: HostTensor| {
        if t.data.len() != shape.iter().product::<usize>() {
            return Err(format!(
                "its weight difference has {} values ({:?}); the layer's weight is {shape:?}",
                t.data.len(),
                t.shape
            ));
        }
        Ok(HostTensor::new(shape.to_vec(), t.data))
    };
    match e.kind {
        Kind::LoRa => {
            let delta = match e.parts.get("magnitude") {
                Some(magnitude) if !e.parts.contains_key("mid") => Delta::Dora {
                    down: part("down")?.clone(),
                    up: part("up")?.clone(),
                    magnitude: magnitude.clone(),
                },
                Some(_) => return Err("DoRA with a Tucker `lora_mid` is not a format".into()),
                None => Delta::LowRank {
                    down: part("down")?.clone(),
                    up: part("up")?.clone(),
                    mid: e.parts.get("mid").cloned(),
                },
            };
            Ok((delta, e.rank))
        }
        Kind::LoHa => {
            let half = |a: &str, b: &str, t: &str| -> std::result::Result<HostTensor, String> {
                match e.parts.get(t) {
                    Some(core) => tucker(core, part(a)?, part(b)?),
                    None => product(part(a)?, part(b)?),
                }
            };
            let w1 = half("hada_w1_a", "hada_w1_b", "hada_t1")?;
            let w2 = half("hada_w2_a", "hada_w2_b", "hada_t2")?;
            if w1.data.len() != w2.data.len() {
                return Err(format!(
                    "Hadamard halves of {:?} and {:?} differ",
                    w1.shape, w2.shape
                ));
            }
            let data = w1.data.iter().zip(&w2.data).map(|(a, b)| a * b).collect();
            let weight = reshaped(HostTensor::new(w1.shape, data))?;
            Ok((Delta::Dense { weight, bias: None }, e.rank))
        }
        Kind::LoKr => {
            let w1 = match e.parts.get("lokr_w1") {
                Some(w) => w.clone(),
                None => product(part("lokr_w1_a")?, part("lokr_w1_b")?)?,
            };
            let w2 = match (e.parts.get("lokr_w2"), e.parts.get("lokr_t2")) {
                (Some(w), _) => w.clone(),
                (None, Some(t)) => tucker(t, part("lokr_w2_a")?, part("lokr_w2_b")?)?,
                (None, None) => {
                    let p = product(part("lokr_w2_a")?, part("lokr_w2_b")?)?;
                    // A conv's w2_b is `[r, in·k·k]`: give the product its kernel back.
                    let d = shape[1] / w1.data.len().checked_div(w1.shape[0]).unwrap_or(1).max(1);
                    let kk: usize = shape[2..].iter().product();
                    if kk > 1 && p.shape[1] == d * kk {
                        let mut s = vec![p.shape[0], d];
                        s.extend_from_slice(&shape[2..]);
                        HostTensor::new(s, p.data)
                    } else {
                        p
                    }
                }
            };
            let decomposed = !e.parts.contains_key("lokr_w1") || !e.parts.contains_key("lokr_w2");
            let weight = reshaped(kron(&w1, &w2))?;
            Ok((
                Delta::Dense { weight, bias: None },
                if decomposed { e.rank } else { None },
            ))
        }
        Kind::Full => {
            let weight = match e.parts.get("diff") {
                Some(d) => reshaped(d.clone())?,
                None => HostTensor::new(shape.to_vec(), vec![0.0; shape.iter().product()]),
            };
            Ok((
                Delta::Dense {
                    weight,
                    bias: e.parts.get("diff_b").cloned(),
                },
                None,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_every_format_split_into_component_module_and_part() {
        let cases = [
            (
                "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
                Component::Unet,
                "down_blocks.0.attentions.0.proj_in",
                "down",
            ),
            (
                "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
                Component::TextEncoder2,
                "text_model.encoder.layers.0.self_attn.q_proj",
                "up",
            ),
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
                Component::Unet,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
                "up",
            ),
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha",
                Component::TextEncoder2,
                "text_model_encoder_layers_0_mlp_fc1",
                "alpha",
            ),
            (
                "lora_unet_mid_block_resnets_0_conv1.lokr_w1",
                Component::Unet,
                "mid_block_resnets_0_conv1",
                "lokr_w1",
            ),
        ];
        for (key, component, module, part) in cases {
            let (c, name, p) = split_key(key).unwrap();
            let m = match name {
                Name::Dotted(m) | Name::Flat(m) => m,
            };
            assert_eq!((c, m.as_str(), p), (component, module, part), "{key}");
        }
        assert!(split_key("model.diffusion_model.input_blocks.0.0.weight").is_none());
    }

    #[test]
    fn stability_block_names_map_as_diffusers_maps_them() {
        let cases = [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            (
                "input_blocks_5_0_in_layers_2",
                "down_blocks_1_resnets_1_conv1",
            ),
            ("middle_block_1_proj_in", "mid_block_attentions_0_proj_in"),
            (
                "middle_block_2_emb_layers_1",
                "mid_block_resnets_1_time_emb_proj",
            ),
            (
                "output_blocks_2_1_proj_out",
                "up_blocks_0_attentions_2_proj_out",
            ),
            ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
            (
                "output_blocks_4_0_skip_connection",
                "up_blocks_1_resnets_1_conv_shortcut",
            ),
            ("label_emb_0_2", "add_embedding_linear_2"),
        ];
        for (sgm, diffusers) in cases {
            assert_eq!(
                sgm_to_diffusers(sgm, 2).as_deref(),
                Some(diffusers),
                "{sgm}"
            );
        }
        assert_eq!(sgm_to_diffusers("down_blocks_0_resnets_0_conv1", 2), None);
    }

    #[test]
    fn kron_matches_torch_kron() {
        // torch.kron([[1, 2]], [[0, 1], [1, 0]]) = [[0, 1, 0, 2], [1, 0, 2, 0]]
        let a = HostTensor::new(vec![1, 2], vec![1.0, 2.0]);
        let b = HostTensor::new(vec![2, 2], vec![0.0, 1.0, 1.0, 0.0]);
        let k = kron(&a, &b);
        assert_eq!(k.shape, vec![2, 4]);
        assert_eq!(k.data, vec![0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 2.0, 0.0]);
    }
}

/// diffusers' default `weight_name` of a LoRA repo.
pub const LORA_WEIGHT_NAME: &str = "pytorch_lora_weights.safetensors";

/// The local path of a LoRA named as diffusers' `load_lora_weights` takes it:
/// a file, or `weight_name` (default [`LORA_WEIGHT_NAME`]) in a folder or
/// Hub repo.
pub fn lora_file(
    name: &str,
    weight_name: Option<&str>,
    options: &diffusion_hub::resolve::ResolveOptions,
) -> Result<std::path::PathBuf> {
    use diffusion_hub::resolve::{ModelSource, resolve_file};
    let source = ModelSource::parse(name)?;
    Ok(resolve_file(
        &source,
        weight_name.unwrap_or(LORA_WEIGHT_NAME),
        options,
    )?)
}

/// How [`crate::StableDiffusion::load_lora_weights`] treats entries for a text
/// encoder the pipeline lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MissingComponent {
    /// Refuse the file (the default).
    #[default]
    Error,
    /// Load the rest and skip those entries.
    Skip,
}

impl<B: burn::tensor::backend::Backend> crate::text::TextModel<B> {
    /// The adapters on the encoder's layers.
    pub fn adapters(&self) -> &AdapterTable {
        match self {
            crate::text::TextModel::Plain(m) => &m.adapters,
            crate::text::TextModel::WithProjection(m) => &m.adapters,
        }
    }

    fn map_fused(self, f: impl FnOnce(&AdapterTable, Self) -> Result<Self>) -> Result<Self> {
        let table = self.adapters().clone();
        f(&table, self)
    }
}

impl<B: burn::tensor::backend::Backend> crate::StableDiffusion<B> {
    /// The adapter tables of the pipeline's models, by component.
    pub fn adapter_tables(&self) -> Vec<(Component, AdapterTable)> {
        let mut out = vec![(Component::Unet, self.unet.adapters.clone())];
        if let Some(te) = &self.text_encoder {
            out.push((Component::TextEncoder, te.model.adapters().clone()));
        }
        if let Some(te) = &self.text_encoder_2 {
            out.push((Component::TextEncoder2, te.model.adapters().clone()));
        }
        out
    }

    /// diffusers' `load_lora_weights`: reads an adapter file in any format of
    /// the [module docs](crate::lora) and attaches it to the UNet and text
    /// encoders as `adapter_name` (default `default_N`, as diffusers names
    /// them), active at weight 1. All or nothing: on an error the pipeline is
    /// unchanged. Returns the adapter's name.
    pub fn load_lora_weights(
        &mut self,
        path: &Path,
        adapter_name: Option<&str>,
        missing: MissingComponent,
    ) -> Result<String> {
        let file = AdapterFile::open(path)?;
        self.load_adapter_file(&file, adapter_name, missing)
    }

    /// [`crate::StableDiffusion::load_lora_weights`] from a file, a local
    /// folder or a Hub repo id, as diffusers' `load_lora_weights(name,
    /// weight_name=...)`: in a folder or repo the file is `weight_name`
    /// (default `pytorch_lora_weights.safetensors`), downloaded alone into
    /// the HF cache when needed.
    pub fn load_lora_weights_from(
        &mut self,
        name: &str,
        weight_name: Option<&str>,
        adapter_name: Option<&str>,
        missing: MissingComponent,
        options: &diffusion_hub::resolve::ResolveOptions,
    ) -> Result<String> {
        let path = lora_file(name, weight_name, options)?;
        self.load_lora_weights(&path, adapter_name, missing)
    }

    /// [`crate::StableDiffusion::load_lora_weights`] of a parsed file.
    pub fn load_adapter_file(
        &mut self,
        file: &AdapterFile,
        adapter_name: Option<&str>,
        missing: MissingComponent,
    ) -> Result<String> {
        let tables = self.adapter_tables();
        let name = match adapter_name {
            Some(n) => n.to_string(),
            None => {
                let taken: Vec<String> = tables.iter().flat_map(|(_, t)| t.adapters()).collect();
                (0..)
                    .map(|i| format!("default_{i}"))
                    .find(|n| !taken.contains(n))
                    .expect("an unused name")
            }
        };
        let mut planned = Vec::new();
        for component in file.components() {
            match tables.iter().find(|(c, _)| *c == component) {
                Some((_, table)) => planned.push((table.clone(), file.deltas(component, table)?)),
                None if missing == MissingComponent::Skip => {}
                None => {
                    return Err(adapter_error(
                        &file.file,
                        component.name(),
                        format!(
                            "the file adapts the {}, which this pipeline does not have",
                            component.name()
                        ),
                    ));
                }
            }
        }
        if planned.iter().all(|(_, d)| d.is_empty()) {
            return Err(adapter_error(
                &file.file,
                "",
                "the file holds no adapter entries",
            ));
        }
        let mut done: Vec<AdapterTable> = Vec::new();
        for (table, deltas) in planned {
            if deltas.is_empty() {
                continue;
            }
            if let Err(e) = table.attach(&name, deltas) {
                for t in &done {
                    let _ = t.remove(&name);
                }
                return Err(e.into());
            }
            done.push(table);
        }
        // Loading activates the new adapter beside the ones already active,
        // as diffusers' `load_lora_weights` does.
        Ok(name)
    }

    /// diffusers' `set_adapters(names, weights)`: only these adapters run,
    /// each at its weight (on every component).
    pub fn set_adapters(&mut self, names: &[&str], weights: &[f64]) -> Result<()> {
        let per = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), weights.get(i).copied().unwrap_or(1.0)))
            .collect();
        self.set_adapters_by_component(&per, &BTreeMap::new())
    }

    /// `set_adapters` with diffusers' dict form: `weights` for every
    /// component, overridden per component by `per_component`.
    pub fn set_adapters_by_component(
        &mut self,
        weights: &BTreeMap<String, f64>,
        per_component: &BTreeMap<(String, Component), f64>,
    ) -> Result<()> {
        let tables = self.adapter_tables();
        for name in weights.keys() {
            if !tables.iter().any(|(_, t)| t.adapters().contains(name)) {
                return Err(PipelineError::parameter(
                    "set_adapters",
                    format!("no adapter named `{name}` is loaded"),
                ));
            }
        }
        for (component, table) in tables {
            let mut w = weights.clone();
            for ((name, c), v) in per_component {
                if *c == component {
                    w.insert(name.clone(), *v);
                }
            }
            table.set_weights(&w);
        }
        Ok(())
    }

    /// The adapters active on any component (`get_active_adapters`).
    pub fn get_active_adapters(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .adapter_tables()
            .iter()
            .flat_map(|(_, t)| t.weights().into_keys())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// `disable_lora`: the adapter paths stop running (still loaded).
    pub fn disable_lora(&mut self) {
        self.adapter_tables()
            .iter()
            .for_each(|(_, t)| t.set_enabled(false));
    }

    /// `enable_lora`: undoes [`crate::StableDiffusion::disable_lora`].
    pub fn enable_lora(&mut self) {
        self.adapter_tables()
            .iter()
            .for_each(|(_, t)| t.set_enabled(true));
    }

    /// The overall LoRA factor of the following calls, diffusers'
    /// `cross_attention_kwargs={"scale": s}` (UNet and text encoders).
    pub fn set_lora_scale(&mut self, scale: f64) {
        self.adapter_tables()
            .iter()
            .for_each(|(_, t)| t.set_lora_scale(scale));
    }

    /// `delete_adapters`: removes the named adapters (refused while fused).
    pub fn delete_adapters(&mut self, names: &[&str]) -> Result<()> {
        for (_, t) in self.adapter_tables() {
            for n in names {
                t.remove(n)?;
            }
        }
        Ok(())
    }

    /// `unload_lora_weights`: unfuses if fused and removes every adapter.
    pub fn unload_lora_weights(&mut self) -> Result<()> {
        self.unfuse_lora()?;
        for (_, t) in self.adapter_tables() {
            for n in t.adapters() {
                t.remove(&n)?;
            }
        }
        Ok(())
    }

    /// `fuse_lora(lora_scale, components)`: merges the active adapters (at
    /// their weights times `lora_scale`) into the weights of `components`
    /// (all when empty); their extra paths stop running.
    pub fn fuse_lora(&mut self, lora_scale: f64, components: &[Component]) -> Result<()> {
        let wanted = |c: Component| components.is_empty() || components.contains(&c);
        if wanted(Component::Unet) {
            let table = self.unet.adapters.clone();
            self.unet = table.fuse(self.unet.clone(), lora_scale)?;
        }
        for (c, te) in [
            (Component::TextEncoder, &mut self.text_encoder),
            (Component::TextEncoder2, &mut self.text_encoder_2),
        ] {
            if let Some(te) = te
                && wanted(c)
            {
                te.model = te.model.clone().map_fused(|t, m| {
                    Ok(match m {
                        crate::text::TextModel::Plain(m) => {
                            crate::text::TextModel::Plain(t.fuse(m, lora_scale)?)
                        }
                        crate::text::TextModel::WithProjection(m) => {
                            crate::text::TextModel::WithProjection(t.fuse(m, lora_scale)?)
                        }
                    })
                })?;
            }
        }
        Ok(())
    }

    /// `unfuse_lora`: subtracts what [`crate::StableDiffusion::fuse_lora`] added.
    pub fn unfuse_lora(&mut self) -> Result<()> {
        let table = self.unet.adapters.clone();
        self.unet = table.unfuse(self.unet.clone());
        for te in [&mut self.text_encoder, &mut self.text_encoder_2]
            .into_iter()
            .flatten()
        {
            te.model = te.model.clone().map_fused(|t, m| {
                Ok(match m {
                    crate::text::TextModel::Plain(m) => crate::text::TextModel::Plain(t.unfuse(m)),
                    crate::text::TextModel::WithProjection(m) => {
                        crate::text::TextModel::WithProjection(t.unfuse(m))
                    }
                })
            })?;
        }
        Ok(())
    }
}

impl AdapterFile {
    /// Whether the file's entries for `component` fit a model whose weight
    /// file holds `shapes` (key → stored shape; read from a header, nothing
    /// loaded): every module a Linear (`[out, in]`) or Conv2d
    /// (`[out, in, k, k]`) weight there, every factor of a fitting shape.
    /// The error names the key and module, as loading would.
    pub fn check_fits(
        &self,
        component: Component,
        shapes: &BTreeMap<String, Vec<usize>>,
    ) -> Result<usize> {
        use diffusion_models::adapter::{Layer, LayerShape};
        let table = AdapterTable::default();
        for (key, shape) in shapes {
            let Some(module) = key.strip_suffix(".weight") else {
                continue;
            };
            let layer = match shape.as_slice() {
                [out, inp] => LayerShape::Linear {
                    in_features: *inp,
                    out_features: *out,
                },
                [out, inp, k, k2] if k == k2 => LayerShape::Conv {
                    in_channels: *inp,
                    out_channels: *out,
                    kernel: *k,
                    stride: 1,
                    padding: k / 2,
                },
                _ => continue,
            };
            let has_bias = shapes.contains_key(&format!("{module}.bias"));
            table.register(
                module,
                Layer {
                    shape: layer,
                    weight: burn::module::ParamId::new(),
                    bias: has_bias.then(burn::module::ParamId::new),
                },
            );
        }
        let deltas = self.deltas(component, &table)?;
        let n = deltas.len();
        table
            .attach("check", deltas)
            .map_err(|e| adapter_error(&self.file, component.name(), e.to_string()))?;
        Ok(n)
    }
}

/// The layer names `diffuse info` counts targets by.
const LEAVES: &[&str] = &[
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv_shortcut",
    "conv1",
    "conv2",
    "time_emb_proj",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "fc1",
    "fc2",
    "conv_in",
    "conv_out",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "linear_1",
    "linear_2",
    "text_projection",
];

impl AdapterFile {
    /// What `diffuse info` says about the file: its formats, the base model
    /// family its shapes imply, ranks, alphas and targeted modules per
    /// component.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut formats: Vec<&str> = self
            .entries
            .iter()
            .map(|e| match (e.kind, &e.name) {
                (Kind::LoHa, _) => "LyCORIS LoHa",
                (Kind::LoKr, _) => "LyCORIS LoKr",
                (Kind::Full, _) => "full weight difference",
                (Kind::LoRa, Name::Flat(_)) if e.parts.contains_key("mid") => {
                    "kohya-ss LoCon (Tucker, lora_mid)"
                }
                (Kind::LoRa, Name::Flat(_)) => "kohya-ss / A1111 LoRA",
                (Kind::LoRa, Name::Dotted(_)) if e.key.contains(".lora_A.") => {
                    "diffusers / PEFT LoRA"
                }
                (Kind::LoRa, Name::Dotted(_)) => "diffusers LoRA (attention-processor names)",
            })
            .collect();
        formats.sort();
        formats.dedup();
        let _ = writeln!(s, "adapter file: {}", self.file);
        let _ = writeln!(s, "format: {}", formats.join(", "));
        let _ = writeln!(s, "base model: {}", self.family());
        for c in self.components() {
            let of: Vec<&Entry> = self.entries.iter().filter(|e| e.component == c).collect();
            let mut ranks: Vec<usize> = of.iter().filter_map(|e| e.rank).collect();
            ranks.sort();
            ranks.dedup();
            let mut alphas: Vec<String> = of
                .iter()
                .filter_map(|e| e.alpha.map(|a| format!("{a}")))
                .collect();
            alphas.sort();
            alphas.dedup();
            let _ = writeln!(
                s,
                "{}: {} modules, rank(s) {:?}, alpha(s) {}{}",
                c.name(),
                of.len(),
                ranks,
                if alphas.is_empty() {
                    "none (scale 1)".to_string()
                } else {
                    alphas.join(", ")
                },
                self.metadata_scale
                    .get(&c)
                    .map(|v| format!(", metadata scale {v}"))
                    .unwrap_or_default(),
            );
            let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
            for e in &of {
                let flat = e.module.replace('.', "_");
                let leaf = LEAVES
                    .iter()
                    .find(|l| flat.ends_with(&l.replace('.', "_")))
                    .copied()
                    .unwrap_or_else(|| e.module.rsplit(['.', '_']).next().unwrap_or(""));
                *kinds.entry(leaf).or_default() += 1;
            }
            let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} × {n}")).collect();
            let _ = writeln!(s, "  targets: {}", kinds.join(", "));
        }
        s
    }

    /// The model family the shapes imply: the text width the UNet's
    /// cross-attention keys take (768 SD 1.x, 1024 SD 2.x, 2048 SDXL), or a
    /// second text encoder.
    pub fn family(&self) -> &'static str {
        if self.components().contains(&Component::TextEncoder2) {
            return "SDXL (two text encoders)";
        }
        let width = self.entries.iter().find_map(|e| {
            let m = e.module.replace('_', ".");
            (e.component == Component::Unet && m.ends_with("attn2.to.k"))
                .then(|| e.parts.get("down").map(|d| d.shape.get(1).copied()))
                .flatten()
                .flatten()
        });
        match width {
            Some(768) => "SD 1.x (cross-attention width 768)",
            Some(1024) => "SD 2.x (cross-attention width 1024)",
            Some(2048) => "SDXL (cross-attention width 2048)",
            Some(_) => "unknown (an unusual cross-attention width)",
            None => "unknown (no cross-attention key LoRA)",
        }
    }
}
