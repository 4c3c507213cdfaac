//! Runs one component folder (config.json + weights, as in a diffusers or
//! transformers repo) on named inputs and writes the named outputs, so parity
//! can be checked from outside the test suite.
//!
//! ```text
//! cargo run --release -p diffusion-models --example forward -- \
//!     --component DIR --inputs in.safetensors --output out.safetensors [--dtype f32|f16|bf16]
//! ```
//!
//! - UNet2DModel / UNet2DConditionModel: `sample`, `timestep` (f32, one per
//!   batch item), optional `encoder_hidden_states`, `text_embeds`, `time_ids`,
//!   `timestep_cond`, `class_labels` → `sample`.
//! - AutoencoderKL / AutoencoderTiny: `latents` → `sample` (decode; latents
//!   unscaled); `image` → `latent_mean` (encode; also `latent_std` for KL).
//! - CLIPTextModel / CLIPTextModelWithProjection: `input_ids` (i64 or i32) →
//!   `last_hidden_state`, `penultimate_hidden_state`, and `text_embeds` (with
//!   projection) or `pooler_output`.
//!
//! Outputs are written as f32. Bad folders or inputs exit non-zero with one
//! line naming the problem.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use diffusion_hub::save::{OwnedTensor, save_safetensors};
use diffusion_hub::weights::{Dtype, Weights};
use diffusion_models::autoencoder_kl::AutoencoderKL;
use diffusion_models::autoencoder_tiny::AutoencoderTiny;
use diffusion_models::clip::{CLIPTextModel, CLIPTextModelWithProjection, CLIPTextOutput};
use diffusion_models::testing::values;
use diffusion_models::unet_2d::{ClassLabels, UNet2DModel};
use diffusion_models::unet_2d_condition::{UNet2DConditionModel, UNetConditions};
use diffusion_models::{ModelError, Precision};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

struct Args {
    component: PathBuf,
    inputs: PathBuf,
    output: PathBuf,
    precision: Precision,
}

fn parse_args() -> Result<Args, String> {
    let mut component = None;
    let mut inputs = None;
    let mut output = None;
    let mut precision = Precision::F32;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--component" => component = Some(PathBuf::from(value()?)),
            "--inputs" => inputs = Some(PathBuf::from(value()?)),
            "--output" => output = Some(PathBuf::from(value()?)),
            "--dtype" => {
                let v = value()?;
                precision = Precision::parse(&v)
                    .ok_or(format!("--dtype: unknown dtype `{v}` (f32, f16, bf16)"))?;
            }
            "-h" | "--help" => {
                return Err("usage: forward --component DIR --inputs in.safetensors --output out.safetensors [--dtype f32|f16|bf16]".into());
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        component: component.ok_or("--component DIR is required")?,
        inputs: inputs.ok_or("--inputs FILE is required")?,
        output: output.ok_or("--output FILE is required")?,
        precision,
    })
}

/// The component's class: diffusers' `_class_name` or transformers' `architectures[0]`.
fn class_name(dir: &Path) -> Result<String, String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    json.get("_class_name")
        .and_then(|v| v.as_str())
        .or_else(|| {
            json.get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|v| v.as_str())
        })
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{}: neither `_class_name` nor `architectures` names the model",
                path.display()
            )
        })
}

struct Inputs {
    weights: Weights,
    path: PathBuf,
}

impl Inputs {
    fn float<B: Backend, const D: usize>(
        &self,
        name: &str,
        dev: &B::Device,
        p: Precision,
    ) -> Result<Option<Tensor<B, D>>, String> {
        if !self.weights.contains(name) {
            return Ok(None);
        }
        let view = self.weights.tensor(name).map_err(|e| e.to_string())?;
        if view.shape.len() != D {
            return Err(format!(
                "{}: input `{name}` has rank {}, expected {D}",
                self.path.display(),
                view.shape.len()
            ));
        }
        let values = view.to_f32_vec().map_err(|e| e.to_string())?;
        let t = Tensor::<B, D>::from_data(
            TensorData::new(values, view.shape.to_vec()),
            (dev, DType::F32),
        );
        Ok(Some(diffusion_models::nn::to_dtype(t, p.dtype())))
    }

    fn required<B: Backend, const D: usize>(
        &self,
        name: &str,
        dev: &B::Device,
        p: Precision,
    ) -> Result<Tensor<B, D>, String> {
        self.float(name, dev, p)?.ok_or_else(|| {
            format!(
                "{}: required input `{name}` is missing",
                self.path.display()
            )
        })
    }

    fn ids<B: Backend>(&self, name: &str, dev: &B::Device) -> Result<Tensor<B, 2, Int>, String> {
        let view = self.weights.tensor(name).map_err(|_| {
            format!(
                "{}: required input `{name}` is missing",
                self.path.display()
            )
        })?;
        let values: Vec<i64> = match view.dtype {
            Dtype::I64 => view
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I32 => view
                .data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            ref other => {
                return Err(format!(
                    "{}: input `{name}` has dtype {other}, expected I64 or I32",
                    self.path.display()
                ));
            }
        };
        if view.shape.len() != 2 {
            return Err(format!(
                "{}: input `{name}` has rank {}, expected 2",
                self.path.display(),
                view.shape.len()
            ));
        }
        Ok(Tensor::from_data(
            TensorData::new(values, view.shape.to_vec()),
            dev,
        ))
    }
}

type Outputs = BTreeMap<String, OwnedTensor>;

fn put<B: Backend, const D: usize>(out: &mut Outputs, name: &str, t: Tensor<B, D>) {
    let shape = t.dims().to_vec();
    out.insert(name.to_string(), OwnedTensor::f32(shape, &values(t)));
}

fn clip_outputs<B: Backend>(out: &mut Outputs, o: CLIPTextOutput<B>) {
    put(out, "penultimate_hidden_state", o.penultimate());
    put(out, "last_hidden_state", o.last_hidden_state);
    match o.text_embeds {
        Some(t) => put(out, "text_embeds", t),
        None => put(out, "pooler_output", o.pooler_output),
    }
}

fn run<B: Backend>(args: &Args, dev: &B::Device) -> Result<Outputs, String> {
    let class = class_name(&args.component)?;
    let inputs = Inputs {
        weights: Weights::open(&args.inputs).map_err(|e| e.to_string())?,
        path: args.inputs.clone(),
    };
    let p = args.precision;
    let e = |e: ModelError| e.to_string();
    let mut out = Outputs::new();
    let start = Instant::now();
    let load_s: f64;
    match class.as_str() {
        "UNet2DConditionModel" => {
            let m = UNet2DConditionModel::<B>::from_dir(&args.component, dev, p).map_err(e)?;
            load_s = start.elapsed().as_secs_f64();
            let conditions = UNetConditions {
                text_embeds: inputs.float("text_embeds", dev, p)?,
                time_ids: inputs.float("time_ids", dev, p)?,
                timestep_cond: inputs.float("timestep_cond", dev, p)?,
                class_labels: class_labels(&inputs, dev, p)?,
                ..Default::default()
            };
            let y = m
                .forward(
                    inputs.required("sample", dev, p)?,
                    inputs.required("timestep", dev, Precision::F32)?,
                    inputs.required("encoder_hidden_states", dev, p)?,
                    conditions,
                )
                .map_err(e)?;
            put(&mut out, "sample", y);
        }
        "UNet2DModel" => {
            let m = UNet2DModel::<B>::from_dir(&args.component, dev, p).map_err(e)?;
            load_s = start.elapsed().as_secs_f64();
            let y = m
                .forward(
                    inputs.required("sample", dev, p)?,
                    inputs.required("timestep", dev, Precision::F32)?,
                    class_labels(&inputs, dev, p)?,
                )
                .map_err(e)?;
            put(&mut out, "sample", y);
        }
        "AutoencoderKL" => {
            let m = AutoencoderKL::<B>::from_dir(&args.component, dev, p).map_err(e)?;
            load_s = start.elapsed().as_secs_f64();
            if let Some(z) = inputs.float::<B, 4>("latents", dev, p)? {
                put(&mut out, "sample", m.decode(z).map_err(e)?);
            }
            if let Some(x) = inputs.float::<B, 4>("image", dev, p)? {
                let d = m.encode(x).map_err(e)?;
                put(&mut out, "latent_mean", d.mean);
                put(&mut out, "latent_std", d.std);
            }
        }
        "AutoencoderTiny" => {
            let m = AutoencoderTiny::<B>::from_dir(&args.component, dev, p).map_err(e)?;
            load_s = start.elapsed().as_secs_f64();
            if let Some(z) = inputs.float::<B, 4>("latents", dev, p)? {
                put(&mut out, "sample", m.decode(z).map_err(e)?);
            }
            if let Some(x) = inputs.float::<B, 4>("image", dev, p)? {
                put(&mut out, "latent_mean", m.encode(x).map_err(e)?);
            }
        }
        "CLIPTextModel" => {
            let m = CLIPTextModel::<B>::from_dir(&args.component, dev, p).map_err(e)?;
            load_s = start.elapsed().as_secs_f64();
            clip_outputs(
                &mut out,
                m.forward(inputs.ids("input_ids", dev)?).map_err(e)?,
            );
        }
        "CLIPTextModelWithProjection" => {
            let m =
                CLIPTextModelWithProjection::<B>::from_dir(&args.component, dev, p).map_err(e)?;
            load_s = start.elapsed().as_secs_f64();
            clip_outputs(
                &mut out,
                m.forward(inputs.ids("input_ids", dev)?).map_err(e)?,
            );
        }
        other => {
            return Err(format!(
                "{}: unsupported component class `{other}`",
                args.component.display()
            ));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "{}: no input this component uses (a VAE takes `latents` and/or `image`)",
            args.inputs.display()
        ));
    }
    let total = start.elapsed().as_secs_f64();
    eprintln!(
        "{class}: load {load_s:.3} s, forward {:.3} s ({p:?})",
        total - load_s
    );
    Ok(out)
}

fn class_labels<B: Backend>(
    inputs: &Inputs,
    dev: &B::Device,
    p: Precision,
) -> Result<Option<ClassLabels<B>>, String> {
    if !inputs.weights.contains("class_labels") {
        return Ok(None);
    }
    let rank = inputs
        .weights
        .tensor("class_labels")
        .map_err(|e| e.to_string())?
        .shape
        .len();
    Ok(Some(match rank {
        1 => ClassLabels::Values(inputs.required("class_labels", dev, Precision::F32)?),
        _ => ClassLabels::Vectors(inputs.required("class_labels", dev, p)?),
    }))
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        let dev = Default::default();
        let out = run::<diffusion_models::backend::Cpu>(&args, &dev)?;
        save_safetensors(&args.output, &out, None).map_err(|e| e.to_string())?;
        for (k, t) in &out {
            eprintln!("  {k} {:?}", t.shape);
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {}", msg.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
    }
}
