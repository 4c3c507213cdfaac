//! One scheduler's full loop on a request read from stdin, printed as JSON,
//! so that parity with diffusers can be checked from outside the test suite
//! (`scripts/schedulers/check_trace.py` runs it beside diffusers):
//!
//! ```sh
//! cargo run --release -p examples --example scheduler_trace < examples/scheduler-trace-request.json
//! ```
//!
//! Runs offline; `scheduler-trace-request.json` beside this file is a
//! 20-step Karras-sigma `EulerDiscreteScheduler` request on a 1×4×8×8 sample.
//!
//! Request: `{"class_name": "EulerDiscreteScheduler", "config": {...}, "num_inference_steps": 20,
//! "shape": [1,4,8,8], "sample": [...], "noise": [[...], ...], "step_kwargs": {"eta": 0.3}}`
//! (`noise` and `step_kwargs` optional; `set_timesteps` may replace `num_inference_steps` with
//! diffusers' keyword arguments, e.g. `{"sigmas": [...]}` or `{"num_inference_steps": 20, "mu": 0.8}`).
//!
//! It runs `set_timesteps(N); x = sample * init_noise_sigma; for t in timesteps:
//! m = scale_model_input(x, t); eps = m * t / (t + 1); x = step(eps, t, x).prev_sample` and prints
//! `{"timesteps": [...], "sigmas": [...] | null, "init_noise_sigma": f, "sample": [...]}`.
//! A bad request (or any argument) exits with status 2 and one line naming the problem.

use std::io::{Read, Write};
use std::process::ExitCode;

use diffusion_schedulers::testing::trace_request;
use support::{Args, usage};

const HELP: &str = "
cargo run --release -p examples --example scheduler_trace < REQUEST.json
";

fn main() -> ExitCode {
    support::run(HELP, |args: Args| {
        args.finish()?;
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        let out = trace_request(&text).map_err(usage)?;
        // A closed pipe (e.g. `| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{out}");
        Ok(())
    })
}
