#!/usr/bin/env python3
"""Check the Rust `scheduler_trace` example against diffusers on one request, from outside the test suite.

    python scripts/schedulers/check_trace.py examples/scheduler-trace-request.json

Runs the request's loop with diffusers 0.42 (noise from the request's `noise` list,
in order) and with `cargo run --release -p examples --example scheduler_trace`,
then prints the timesteps' agreement and the final sample's relative L2 error.
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import torch
import diffusers
import diffusers.schedulers as S

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_diffusers(req):
    cls = getattr(diffusers, req["class_name"])
    s = cls(**req.get("config", {}))
    noise = [np.asarray(z, dtype=np.float32).reshape(req["shape"]) for z in req.get("noise", [])]

    def replay(shape, generator=None, device=None, dtype=None, layout=None, **_):
        return torch.from_numpy(noise.pop(0))

    for name in dir(S):
        mod = getattr(S, name)
        if name.startswith("scheduling_") and hasattr(mod, "randn_tensor"):
            mod.randn_tensor = replay
    if "set_timesteps" in req:
        s.set_timesteps(**req["set_timesteps"])
    else:
        s.set_timesteps(req["num_inference_steps"])
    x = torch.tensor(req["sample"], dtype=torch.float32).reshape(req["shape"]) * getattr(s, "init_noise_sigma", 1.0)
    for t in s.timesteps:
        m = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x
        tf = t.to(torch.float32)
        x = s.step(m * tf / (tf + 1), t, x, **req.get("step_kwargs", {})).prev_sample
    return s.timesteps.double().numpy(), x.numpy().reshape(-1)


def main(path):
    text = pathlib.Path(path).read_text()
    req = json.loads(text)
    ts, ref = run_diffusers(req)
    out = subprocess.run(
        ["cargo", "run", "--release", "-q", "-p", "examples", "--example", "scheduler_trace"],
        input=text, capture_output=True, text=True, cwd=ROOT, check=True,
    )
    got = json.loads(out.stdout)
    rust = np.asarray(got["sample"], dtype=np.float64)
    err = np.linalg.norm(rust - ref) / max(np.linalg.norm(ref), 1e-30)
    # As tests/parity.rs: equal as float32, or within 1e-6 relative (one float32 ulp).
    g = np.asarray(got["timesteps"], dtype=np.float64)
    ts_ok = g.shape == ts.shape and bool(np.all((g.astype(np.float32) == ts.astype(np.float32))
                                                | (np.abs(g - ts) <= 1e-6 * np.maximum(np.abs(ts), 1.0))))
    exact = int(np.sum(g.astype(np.float32) == ts.astype(np.float32))) if g.shape == ts.shape else 0
    print(f"{req['class_name']}: timesteps match: {ts_ok} ({exact}/{len(ts)} bit-equal as float32); "
          f"final sample rel L2 error {err:.2e}")
    return 0 if ts_ok and err <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
