//! Run one scheduler's full loop on a request read from stdin, so that parity
//! with diffusers can be checked from outside the test suite:
//!
//! ```text
//! cargo run --release -p diffusion-schedulers --example trace < request.json
//! ```
//!
//! Request: `{"class_name": "EulerDiscreteScheduler", "config": {...}, "num_inference_steps": 20,
//! "shape": [1,4,8,8], "sample": [...], "noise": [[...], ...], "step_kwargs": {"eta": 0.3}}`
//! (`noise` and `step_kwargs` optional; `set_timesteps` may replace `num_inference_steps` with
//! diffusers' keyword arguments, e.g. `{"sigmas": [...]}` or `{"num_inference_steps": 20, "mu": 0.8}`).
//!
//! It runs `set_timesteps(N); x = sample * init_noise_sigma; for t in timesteps:
//! m = scale_model_input(x, t); eps = m * t / (t + 1); x = step(eps, t, x).prev_sample` and prints
//! `{"timesteps": [...], "sigmas": [...] | null, "init_noise_sigma": f, "sample": [...]}`.
//! A bad request exits non-zero with one line naming the problem.

use std::io::{Read, Write};
use std::process::ExitCode;

use diffusion_schedulers::testing::trace_request;

fn main() -> ExitCode {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("error: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    match trace_request(&text) {
        Ok(out) => {
            // A closed pipe (e.g. `| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
