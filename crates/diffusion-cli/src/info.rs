//! `diffuse info`: what a model is, from its files alone: the pipeline class,
//! each component's library and class, the size and dtypes of each model's
//! weights (read from the safetensors headers, nothing loaded), and the
//! scheduler with its config.

use std::collections::BTreeMap;
use std::fmt::Write;

use diffusion_hub::model_index::ComponentKind;
use diffusion_hub::resolve::{ResolveOptions, Resolved, ResolvedComponent, ResolvedModel, resolve};
use diffusion_hub::single_file::{Checkpoint, detect};
use diffusion_hub::torch_pickle::PickleOptions;
use diffusion_hub::weights::Weights;
use diffusion_pipelines::components::{
    build_scheduler, check_library, read_scheduler_config, validate_component_config,
};
use serde_json::Value;

use crate::error::Result;

/// The report for `name`, as printed.
pub fn info(
    name: &str,
    base: Option<&str>,
    options: &ResolveOptions,
    pickle: &PickleOptions,
) -> Result<String> {
    let mut s = String::new();
    match resolve(name, options)? {
        Resolved::Checkpoint(path) if is_adapter(&path) => {
            let file = diffusion_pipelines::lora::AdapterFile::open(&path)?;
            s.push_str(&file.summary());
            if let Some(base) = base {
                fits(&mut s, &file, base, options, pickle)?;
            }
        }
        _ if base.is_some() => {
            return Err(crate::error::CliError::Usage(format!(
                "--base {}: only for an adapter file (LoRA, LyCORIS); {name} is not one",
                base.unwrap_or_default()
            )));
        }
        Resolved::Pipeline(m) => pipeline(&mut s, &m, pickle)?,
        Resolved::Model(c) => {
            let _ = writeln!(s, "model: {name}");
            let _ = writeln!(
                s,
                "single model folder (no model_index.json): {}",
                c.dir.display()
            );
            let class = c
                .config
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| {
                    v.get("_class_name")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(s, "class: {class}");
            let _ = writeln!(s, "weights: {}", weights_summary(&c, pickle)?);
        }
        Resolved::Checkpoint(path) => {
            let ckpt = Checkpoint::open_with(&path, pickle)?;
            let keys = ckpt.keys();
            let model_type = detect(&path, &keys)?;
            let _ = writeln!(s, "model: {name}");
            let _ = writeln!(
                s,
                "single-file checkpoint: {model_type}, {} tensors",
                keys.len()
            );
            let _ = writeln!(
                s,
                "pipeline: {} (after conversion)",
                model_type.pipeline_class(ckpt.is_inpaint())
            );
            let _ = writeln!(s, "weights: {}", summarize(ckpt.weights()));
            let _ = writeln!(
                s,
                "convert with: diffuse convert {} OUT_DIR",
                path.display()
            );
        }
    }
    Ok(s)
}

/// Whether each component the adapter file targets fits `base`'s (read from
/// the weight headers of the pipeline's components, nothing loaded).
fn fits(
    s: &mut String,
    file: &diffusion_pipelines::lora::AdapterFile,
    base: &str,
    options: &ResolveOptions,
    pickle: &PickleOptions,
) -> Result<()> {
    let Resolved::Pipeline(model) = resolve(base, options)? else {
        return Err(crate::error::CliError::Usage(format!(
            "--base {base}: a pipeline (with model_index.json) is needed"
        )));
    };
    for component in file.components() {
        let name = component.name();
        let Some(c) = model.components.get(name) else {
            let _ = writeln!(s, "fits {base}: no ({name}: the pipeline has none)");
            continue;
        };
        let weights = c.open_weights_with(pickle)?;
        let shapes = weights
            .tensors()
            .map(|(k, info)| (k.to_string(), info.shape.clone()))
            .collect();
        match file.check_fits(component, &shapes) {
            Ok(n) => {
                let _ = writeln!(s, "fits {base}: {name}: yes ({n} layers)");
            }
            Err(e) => {
                let _ = writeln!(s, "fits {base}: {name}: no ({e})");
            }
        }
    }
    Ok(())
}

/// Whether a single file is an adapter (LoRA, LyCORIS) rather than a
/// checkpoint: its keys parse as one and it has no checkpoint keys.
fn is_adapter(path: &std::path::Path) -> bool {
    diffusion_pipelines::lora::AdapterFile::open(path).is_ok_and(|f| !f.entries.is_empty())
}

fn pipeline(s: &mut String, m: &ResolvedModel, pickle: &PickleOptions) -> Result<()> {
    let index = &m.model_index;
    let _ = writeln!(s, "model: {}", m.source.display_name());
    let _ = writeln!(s, "folder: {}", m.root.display());
    if let Some(c) = &m.commit {
        let _ = writeln!(s, "commit: {c}");
    }
    let _ = writeln!(s, "pipeline: {}", index.class_name);
    if let Some(v) = &index.diffusers_version {
        let _ = writeln!(s, "diffusers version: {v}");
    }
    let _ = writeln!(s, "components:");
    let mut scheduler = None;
    for (name, comp) in &index.components {
        check_library(m, name)?;
        let _ = write!(s, "  {name}: {}/{}", comp.library, comp.class);
        match m.components.get(name) {
            None => {
                let _ = write!(s, " (not resolved)");
            }
            Some(c) if c.kind == ComponentKind::Model => {
                validate_component_config(c, &comp.class)?;
                let _ = write!(s, ", {}", weights_summary(c, pickle)?);
                if c.used_variant {
                    let _ = write!(s, ", variant {}", m.variant.as_deref().unwrap_or("?"));
                }
            }
            Some(c) if c.kind == ComponentKind::Scheduler => scheduler = Some(c),
            Some(_) => {}
        }
        let _ = writeln!(s);
    }
    for name in &index.absent {
        let _ = writeln!(s, "  {name}: none");
    }
    for (k, v) in &index.options {
        let _ = writeln!(s, "option {k}: {v}");
    }
    if let Some(c) = scheduler
        && let Some(path) = &c.config
    {
        let config = read_scheduler_config(path)?;
        // Built, not only read: a config that could not run is an error here too.
        build_scheduler::<diffusion_models::backend::Cpu>(&config, None).map_err(|e| {
            diffusion_pipelines::PipelineError::Config {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        let class = config
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let _ = writeln!(s, "scheduler: {class}");
        if let Value::Object(map) = &config {
            for (k, v) in map.iter().filter(|(k, _)| !k.starts_with('_')) {
                let _ = writeln!(s, "  {k}: {v}");
            }
        }
    }
    Ok(())
}

/// `N parameters (F16 × 196 tensors)` from the weight headers.
fn weights_summary(c: &ResolvedComponent, pickle: &PickleOptions) -> Result<String> {
    if c.weights.is_empty() {
        return Ok("no weight files".into());
    }
    Ok(summarize(&c.open_weights_with(pickle)?))
}

fn summarize(w: &Weights) -> String {
    let mut params = 0usize;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, info) in w.tensors() {
        // Saturating: a hostile header could claim absurd shapes.
        let numel = info.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d));
        params = params.saturating_add(numel);
        *dtypes.entry(info.dtype.to_string()).or_default() += 1;
    }
    let dtypes: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} × {n}")).collect();
    format!(
        "{} parameters in {} tensors ({})",
        thousands(params),
        w.len(),
        dtypes.join(", ")
    )
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(859_520_964), "859,520,964");
    }
}
