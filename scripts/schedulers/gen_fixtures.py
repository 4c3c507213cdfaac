#!/usr/bin/env python3
"""Generate scheduler parity fixtures from diffusers' own schedulers.

For every case listed in `cases/<module>.py` (a list `CASES` of dicts), this runs
the trace loop of the parity suite with diffusers 0.42:

    scheduler = Class(**config)            (or Class.from_config(Source(**config).config))
    scheduler.set_timesteps(**set_timesteps)
    x = sample * init_noise_sigma
    for t in timesteps:
        m = scale_model_input(x, t); eps = m * t / (t + 1); x = step(eps, t, x, **step_kwargs).prev_sample

with every `randn_tensor` call inside the scheduler replaced by a replay of fixed
noise, and writes `crates/diffusion-schedulers/tests/fixtures/<module>.json` with
the config, inputs, the noise actually consumed and diffusers' timesteps, sigmas,
init_noise_sigma and final sample.

Usage: python scripts/schedulers/gen_fixtures.py [module ...]   (default: all)
Needs: pip install torch diffusers==0.42.* scipy numpy
"""
import importlib
import json
import pathlib
import sys

import numpy as np
import torch
import diffusers
import diffusers.schedulers as S

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "diffusion-schedulers" / "tests" / "fixtures"
CASES_DIR = pathlib.Path(__file__).resolve().parent / "cases"

# Each scheduler module of diffusers draws noise through a module-level
# `randn_tensor`; patching it there replays our noise in call order.
MODULES = [m for m in dir(S) if m.startswith("scheduling_")]


class NoiseReplay:
    def __init__(self, seed, shape):
        self.rng = np.random.RandomState(seed)
        self.shape = tuple(shape)
        self.used = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None, **_):
        assert tuple(shape) == self.shape, (shape, self.shape)
        z = self.rng.standard_normal(self.shape).astype(np.float32)
        self.used.append(z)
        return torch.from_numpy(z).to(dtype=dtype or torch.float32)


def patch_noise(replay):
    for name in MODULES:
        mod = getattr(S, name, None)
        if mod is not None and hasattr(mod, "randn_tensor"):
            mod.randn_tensor = replay


def f32list(a):
    """An f32 array as JSON numbers, each the shortest decimal that round-trips to the same f32."""
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    return [float(np.format_float_scientific(v, unique=True)) for v in a]


def tolist(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float64, torch.int64, torch.int32):
            return x.to(torch.float64).reshape(-1).tolist()
        return f32list(x.to(torch.float32).numpy())
    if isinstance(x, np.ndarray):
        return x.astype(np.float64).reshape(-1).tolist()
    return float(x)


def run_case(case):
    cls = getattr(diffusers, case["class_name"])
    config = dict(case.get("config", {}))
    if "source_class" in case:
        source = getattr(diffusers, case["source_class"])(**config)
        scheduler = cls.from_config(source.config)
    else:
        scheduler = cls(**config)
    shape = case.get("shape", [2, 3, 4, 4])
    seed = case.get("seed", 0)
    sample = np.random.RandomState(seed + 1000).standard_normal(shape).astype(np.float32)
    replay = NoiseReplay(seed, shape)
    patch_noise(replay)
    kwargs = dict(case.get("set_timesteps", {}))
    scheduler.set_timesteps(**kwargs)
    timesteps = scheduler.timesteps
    init_noise = None
    if "img2img_strength" in case:
        # StableDiffusionImg2ImgPipeline: get_timesteps, set_begin_index, add_noise at the first
        # kept timestep (FlowMatch pipelines call scale_noise), then denoise from there.
        n = kwargs["num_inference_steps"]
        init_timestep = min(int(n * case["img2img_strength"]), n)
        t_start = int(max(n - init_timestep, 0)) * scheduler.order
        loop_timesteps = timesteps[t_start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start)
        init_noise = np.random.RandomState(seed + 2000).standard_normal(shape).astype(np.float32)
        first = loop_timesteps[:1].repeat(shape[0])
        if hasattr(scheduler, "scale_noise"):
            x = scheduler.scale_noise(torch.from_numpy(sample), first, torch.from_numpy(init_noise))
        else:
            x = scheduler.add_noise(torch.from_numpy(sample), torch.from_numpy(init_noise), first)
    else:
        loop_timesteps = timesteps
        x = torch.from_numpy(sample) * scheduler.init_noise_sigma
    step_kwargs = case.get("step_kwargs", {})
    for t in loop_timesteps:
        m = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        tf = t.to(torch.float32)
        eps = m * tf / (tf + 1)
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    sigmas = getattr(scheduler, "sigmas", None)
    return {
        "name": case["name"],
        "class_name": case["class_name"],
        "source_class": case.get("source_class"),
        "config": config,
        "set_timesteps": kwargs,
        "step_kwargs": step_kwargs,
        "shape": shape,
        "sample": f32list(sample),
        "noise": [f32list(z) for z in replay.used],
        "img2img_strength": case.get("img2img_strength"),
        "init_noise": f32list(init_noise) if init_noise is not None else None,
        "expected": {
            "timesteps": tolist(timesteps),
            "sigmas": tolist(sigmas) if isinstance(sigmas, (torch.Tensor, np.ndarray)) else None,
            "init_noise_sigma": float(scheduler.init_noise_sigma),
            "order": int(scheduler.order),
            "sample": tolist(x),
        },
    }


def main(argv):
    torch.set_grad_enabled(False)
    assert diffusers.__version__.startswith("0.42"), diffusers.__version__
    modules = argv or sorted(p.stem for p in CASES_DIR.glob("*.py") if not p.stem.startswith("_"))
    OUT.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(CASES_DIR.parent))
    for module in modules:
        cases = importlib.import_module(f"cases.{module}").CASES
        names = [c["name"] for c in cases]
        assert len(names) == len(set(names)), f"duplicate case names in {module}"
        fixtures = [run_case(c) for c in cases]
        path = OUT / f"{module}.json"
        path.write_text(json.dumps({"diffusers_version": diffusers.__version__, "cases": fixtures}) + "\n")
        print(f"{path.relative_to(ROOT)}: {len(fixtures)} cases, {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
