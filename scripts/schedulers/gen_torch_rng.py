#!/usr/bin/env python3
"""Fixture for `diffusion_schedulers::torch_rng`: what torch's CPU generator gives for
`torch.randn` (float32) and diffusers' `randn_tensor`, for both of torch's float
Box-Muller kernels (the AVX2 one x86-64 builds use, and the portable scalar one,
selected here with ATEN_CPU_CAPABILITY=default in a child process).

Small draws are stored whole; larger ones as their first and last 16 values, every
97th value and their sum (float64, in order), to keep the file small.
Writes crates/diffusion-schedulers/tests/fixtures/torch_rng/torch_rng.json.

Usage: python scripts/schedulers/gen_torch_rng.py
"""
import json
import os
import pathlib
import subprocess
import sys

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/diffusion-schedulers/tests/fixtures/torch_rng/torch_rng.json"
SEEDS = [0, 1, 42, 2**32 + 5, 2**63 - 1]
# One generator per seed draws these in order: both randn paths, the tail-block
# recomputation, and the cached scalar sample surviving the large draws.
SIZES = [1, 2, 3, 15, 16, 17, 31, 33, 1024, 4 * 64 * 64, 1]
# The order in which a pipeline draws: latents, then smaller tensors.
PIPELINE_SIZES = [4 * 16 * 16, 7, 33]
STRIDE = 97
FULL_UP_TO = 64


def record(t):
    values = [float(v) for v in t.flatten().tolist()]
    if len(values) <= FULL_UP_TO:
        return {"n": len(values), "values": values}
    total = 0.0
    for v in values:
        total += v
    return {"n": len(values), "head": values[:16], "tail": values[-16:], "stride": STRIDE,
            "strided": values[::STRIDE], "sum": total}


def kernel_cases():
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    def gen(seed):
        return torch.Generator("cpu").manual_seed(seed)

    sequences = []
    for seed in SEEDS:
        g = gen(seed)
        sequences.append({"seed": seed, "draws": [record(torch.randn(n, generator=g)) for n in SIZES]})
    g = gen(1234)
    sequences.append({"seed": 1234, "draws": [record(torch.randn(n, generator=g)) for n in PIPELINE_SIZES]})

    shape = (2, 4, 8, 8)
    g = gen(3)
    multi_dim = {"seed": 3, "shape": list(shape), "draw": record(torch.randn(shape, generator=g))}
    g = gen(3)
    assert torch.equal(torch.randn(shape, generator=g).flatten(), torch.randn(512, generator=gen(3)))

    randn_tensor_cases = []
    for seeds in ([7, 8], [7], [123]):
        gens = [gen(s) for s in seeds]
        arg = gens if len(gens) > 1 or seeds == [7] else gens[0]
        first = randn_tensor(shape, generator=arg, device=torch.device("cpu"), dtype=torch.float32)
        second = randn_tensor(shape, generator=arg, device=torch.device("cpu"), dtype=torch.float32)
        randn_tensor_cases.append({
            "seeds": seeds, "list": isinstance(arg, list), "shape": list(shape),
            "draws": [{"n": first.numel(), "values": [float(v) for v in first.flatten().tolist()]} if seeds == [7, 8]
                      else record(first), record(second)],
        })
    return {"sequences": sequences, "multi_dim": multi_dim, "randn_tensor": randn_tensor_cases}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        json.dump(kernel_cases(), sys.stdout)
        return
    kernels = {}
    for name, capability in [("avx2", "avx2"), ("scalar", "default")]:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                             capture_output=True, text=True).stdout
        kernels[name] = json.loads(out)
    import torch
    fixture = {
        "torch": torch.__version__.split("+")[0],
        "note": "avx2: torch's x86-64 AVX2/AVX-512 kernel; scalar: ATEN_CPU_CAPABILITY=default (glibc libm)",
        "kernels": kernels,
    }
    OUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
