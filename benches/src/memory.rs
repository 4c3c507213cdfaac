//! Peak memory figures and the atomic report write.

use crate::{BenchError, Result};
use std::path::Path;

/// Resets the kernel's peak-RSS mark of this process (Linux; elsewhere a no-op,
/// and the figure is then the process-lifetime peak).
pub fn reset_host_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set since the last reset, in MiB (`VmHWM`), where the OS tells.
pub fn host_peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Device memory held by the allocator of backend `B` on `device`, in MiB
/// (`None` on the CPU).
pub fn device_reserved_mib<B: 'static + burn::tensor::backend::Backend>(
    device: &B::Device,
) -> Option<f64> {
    #[cfg(feature = "cuda")]
    {
        use burn::cubecl::Runtime;
        use std::any::Any;
        if let Some(d) = (device as &dyn Any).downcast_ref::<burn::backend::cuda::CudaDevice>() {
            let client = burn::cubecl::cuda::CudaRuntime::client(d);
            return client
                .memory_usage()
                .ok()
                .map(|u| u.bytes_reserved as f64 / (1024.0 * 1024.0));
        }
    }
    let _ = device;
    None
}

/// Writes `text` to `path` through a temporary file and a rename, so a failed
/// write never leaves a half-written report.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let io = |source| BenchError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_peak_is_reported_on_linux() {
        reset_host_peak();
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        if cfg!(target_os = "linux") {
            assert!(host_peak_mib().unwrap() >= 64.0);
        }
    }

    #[test]
    fn write_atomic_replaces_and_names_failures() {
        let dir = std::env::temp_dir().join(format!("bench-mem-{}", std::process::id()));
        let path = dir.join("r.json");
        write_atomic(&path, "{}").unwrap();
        write_atomic(&path, "[1]").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1]");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let e = write_atomic(&path.join("under-a-file"), "x").unwrap_err();
        assert!(e.to_string().contains("under-a-file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
