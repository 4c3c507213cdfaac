//! Opt-in per-op timing: where a forward pass spends its time.
//!
//! Off by default, and then free apart from one relaxed atomic load per layer
//! call. When switched on ([`set_enabled`]), every leaf layer (convolutions,
//! norms, linears, attention, activations, resampling) waits for the device
//! before and after its own work and adds the elapsed wall time to a table
//! keyed by a label that names the op and its shape. Waiting after each op
//! stops the backend from overlapping or fusing across layers, so the sum is
//! larger than an unprofiled forward; the *shares* are what tell where the
//! time goes. `cargo xtask bench --component profile` prints the table.

use burn::tensor::backend::Backend;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);

/// Accumulated time of one label.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Entry {
    /// Calls timed.
    pub calls: u64,
    /// Total seconds.
    pub seconds: f64,
}

/// Switches profiling on or off (process-wide).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether profiling is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `f`; when profiling is on, times it between two device syncs and
/// books the time under `label()` (built only when profiling).
pub fn scope<B: Backend, T>(
    device: &B::Device,
    label: impl FnOnce() -> String,
    f: impl FnOnce() -> T,
) -> T {
    if !enabled() {
        return f();
    }
    let _ = B::sync(device);
    let start = Instant::now();
    let out = f();
    let _ = B::sync(device);
    record(label(), start.elapsed().as_secs_f64());
    out
}

/// Adds `seconds` to `label`'s entry.
pub fn record(label: String, seconds: f64) {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let entry = table
        .get_or_insert_with(HashMap::new)
        .entry(label)
        .or_default();
    entry.calls += 1;
    entry.seconds += seconds;
}

/// Takes the table recorded so far (and clears it), largest total first.
pub fn take() -> Vec<(String, Entry)> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = table.take().unwrap_or_default().into_iter().collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds).then(a.0.cmp(&b.0)));
    rows
}

/// Sums rows by the label's first word (the op kind: `conv3x3`, `attention`, …).
pub fn by_kind(rows: &[(String, Entry)]) -> Vec<(String, Entry)> {
    let mut kinds: HashMap<String, Entry> = HashMap::new();
    for (label, e) in rows {
        let kind = label.split_whitespace().next().unwrap_or("").to_string();
        let k = kinds.entry(kind).or_default();
        k.calls += e.calls;
        k.seconds += e.seconds;
    }
    let mut out: Vec<_> = kinds.into_iter().collect();
    out.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Tensor;

    // One test owns the process-wide switch (tests run in parallel threads).
    #[test]
    fn records_only_when_enabled_and_groups_by_kind() {
        let device = Default::default();
        let x = Tensor::<Flex, 1>::from_floats([1.0, 2.0], &device);
        let y = scope::<Flex, _>(
            &device,
            || panic!("label built while off"),
            || x.clone() * 2.0,
        );
        assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![2.0, 4.0]);

        // Layers of other tests running meanwhile may book rows too: look at
        // this test's labels only.
        set_enabled(true);
        for _ in 0..3 {
            scope::<Flex, _>(&device, || "ptest-conv a".into(), || x.clone() + 1.0);
        }
        scope::<Flex, _>(&device, || "ptest-conv b".into(), || x.clone() + 1.0);
        scope::<Flex, _>(&device, || "ptest-linear c".into(), || x.clone() + 1.0);
        set_enabled(false);
        let rows: Vec<_> = take()
            .into_iter()
            .filter(|r| r.0.starts_with("ptest-"))
            .collect();
        assert_eq!(rows.len(), 3);
        let a = rows.iter().find(|r| r.0 == "ptest-conv a").unwrap();
        assert_eq!(a.1.calls, 3);
        assert!(a.1.seconds >= 0.0);
        let kinds = by_kind(&rows);
        assert_eq!(kinds.len(), 2);
        let conv = kinds.iter().find(|k| k.0 == "ptest-conv").unwrap();
        assert_eq!(conv.1.calls, 4);
    }
}
