//! Opt-in per-op timing: where a forward pass spends its time.
//!
//! Every leaf layer (convolutions, norms, linears, attention, activations,
//! resampling) wraps its math in the crate's `op!` macro. Without the `profile` feature that
//! macro is its body and nothing else: no label, no check, no sync. With it
//! (diffusion-bench turns it on) a relaxed atomic load per layer call decides;
//! once `set_enabled(true)`, every leaf layer waits for the device before and
//! after its own work and adds the elapsed wall time to a table keyed by a
//! label that names the op and its shape. Waiting after each op stops the
//! backend from overlapping or fusing across layers, so the sum is larger than
//! an unprofiled forward; the *shares* are what tell where the time goes.
//! `cargo xtask bench --component profile` prints the table.

/// `op!(input, "format", args… => body)`: the value of `body`; with the
/// `profile` feature and profiling on, timed between two syncs of `input`'s
/// device and booked under the formatted label (whose first word is the op
/// kind, see `by_kind`). The label's arguments are evaluated only then.
macro_rules! op {
    ($input:expr, $($label:expr),+ => $body:expr) => {{
        #[cfg(feature = "profile")]
        let scope = $crate::profile::Scope::start(&$input, || format!($($label),+));
        let out = $body;
        #[cfg(feature = "profile")]
        $crate::profile::Scope::end(scope);
        out
    }};
}
pub(crate) use op;

#[cfg(feature = "profile")]
pub use timing::*;

#[cfg(feature = "profile")]
mod timing {
    use burn::tensor::Tensor;
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

    /// One op being timed (what the `op!` macro expands to).
    #[doc(hidden)]
    pub struct Scope<B: Backend> {
        device: B::Device,
        label: String,
        start: Instant,
    }

    impl<B: Backend> Scope<B> {
        /// When profiling is on: the label, built now, and the start time,
        /// taken once the device has finished the work queued before.
        pub fn start<const D: usize>(
            input: &Tensor<B, D>,
            label: impl FnOnce() -> String,
        ) -> Option<Self> {
            if !enabled() {
                return None;
            }
            let (device, label) = (input.device(), label());
            let _ = B::sync(&device);
            Some(Scope {
                device,
                label,
                start: Instant::now(),
            })
        }

        /// Books the time since [`Scope::start`], once the device is done.
        pub fn end(scope: Option<Self>) {
            if let Some(s) = scope {
                let _ = B::sync(&s.device);
                record(s.label, s.start.elapsed().as_secs_f64());
            }
        }
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
}

#[cfg(all(test, feature = "profile"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Tensor;

    fn unbuilt() -> &'static str {
        panic!("label built while off")
    }

    // One test owns the process-wide switch (tests run in parallel threads).
    #[test]
    fn records_only_when_enabled_and_groups_by_kind() {
        let device = Default::default();
        let x = Tensor::<Flex, 1>::from_floats([1.0, 2.0], &device);
        let y = op!(x, "{}", unbuilt() => x.clone() * 2.0);
        assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![2.0, 4.0]);

        // Layers of other tests running meanwhile may book rows too: look at
        // this test's labels only.
        set_enabled(true);
        for _ in 0..3 {
            op!(x, "ptest-conv a" => x.clone() + 1.0);
        }
        op!(x, "ptest-conv {}", "b" => x.clone() + 1.0);
        op!(x, "ptest-linear c" => x.clone() + 1.0);
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
