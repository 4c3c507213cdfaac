//! `diffuse convert`: a single-file checkpoint to a diffusers folder, with
//! diffusion-hub's converter; the report says what was found and written.

use std::fmt::Write;
use std::path::Path;

use diffusion_hub::single_file::ConvertOptions;
use diffusion_hub::torch_pickle::PickleOptions;
use diffusion_pipelines::components::convert_checkpoint;

use crate::error::Result;

/// Converts `checkpoint` into `out_dir` and returns the report, as printed.
pub fn convert(
    checkpoint: &Path,
    out_dir: &Path,
    options: &ConvertOptions,
    pickle: &PickleOptions,
) -> Result<String> {
    let report = convert_checkpoint(checkpoint, out_dir, options, pickle)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} -> {} ({})",
        checkpoint.display(),
        report.model_type,
        out_dir.display(),
        report.pipeline_class
    );
    for (component, n) in &report.tensors {
        let _ = writeln!(s, "  {component}: {n} tensors");
    }
    if !report.skipped.is_empty() {
        let shown: Vec<&str> = report.skipped.iter().take(5).map(String::as_str).collect();
        let more = report.skipped.len().saturating_sub(shown.len());
        let _ = write!(
            s,
            "  skipped {} checkpoint keys: {}",
            report.skipped.len(),
            shown.join(", ")
        );
        if more > 0 {
            let _ = write!(s, ", ... ({more} more)");
        }
        let _ = writeln!(s);
    }
    if !report.skipped_globals.is_empty() {
        let _ = writeln!(
            s,
            "  skipped pickle globals (never run): {}",
            report.skipped_globals.join(", ")
        );
    }
    Ok(s)
}
