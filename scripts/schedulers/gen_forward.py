#!/usr/bin/env python3
"""Fixtures for the forward process: add_noise (scale_noise for FlowMatch) with one timestep
per batch item, and get_velocity where diffusers has it, for every scheduler after
set_timesteps(10). Writes crates/diffusion-schedulers/tests/fixtures/forward/forward.json.

Usage: python scripts/schedulers/gen_forward.py
"""
import json
import pathlib

import numpy as np
import torch
import diffusers

from gen_fixtures import OUT, f32list

CLASSES = [
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler",
    "FlowMatchEulerDiscreteScheduler", "EDMEulerScheduler",
]
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def main():
    torch.set_grad_enabled(False)
    rng = np.random.RandomState(7)
    shape = [2, 3, 4, 4]
    cases = []
    for name in CLASSES:
        cls = getattr(diffusers, name)
        config = {} if name in ("FlowMatchEulerDiscreteScheduler", "EDMEulerScheduler") else SD
        s = cls(**config)
        s.set_timesteps(10)
        # One timestep per batch item, both on the schedule (sigma-based schedulers look them up).
        picks = [2, 5]
        ts = s.timesteps[picks]
        sample = rng.standard_normal(shape).astype(np.float32)
        noise = rng.standard_normal(shape).astype(np.float32)
        x, z = torch.from_numpy(sample), torch.from_numpy(noise)
        noisy = s.scale_noise(x, ts, z) if hasattr(s, "scale_noise") else s.add_noise(x, z, ts)
        velocity = s.get_velocity(x, z, ts) if hasattr(s, "get_velocity") else None
        cases.append({
            "class_name": name, "config": config, "num_inference_steps": 10, "shape": shape,
            "timesteps": ts.double().tolist(), "sample": f32list(sample), "noise": f32list(noise),
            "noisy": f32list(noisy.numpy()), "velocity": f32list(velocity.numpy()) if velocity is not None else None,
        })
    out = OUT / "forward"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "forward.json"
    path.write_text(json.dumps({"diffusers_version": diffusers.__version__, "cases": cases}) + "\n")
    print(f"{path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
