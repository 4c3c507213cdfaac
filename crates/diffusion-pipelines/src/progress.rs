//! Progress bars on stderr (indicatif), drawn only on a terminal and when asked.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that may be hidden.
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// `len` steps labelled `what`; hidden when `show` is false (indicatif
    /// also hides it when stderr is not a terminal).
    pub(crate) fn new(len: usize, what: &'static str, show: bool) -> Self {
        let target = if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len as u64), target);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>10} {bar:30} {pos}/{len} [{elapsed} < {eta}, {per_sec}]",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what);
        Progress { bar }
    }

    pub(crate) fn inc(&mut self) {
        self.bar.inc(1);
    }

    pub(crate) fn finish(self) {
        self.bar.finish_and_clear();
    }
}
