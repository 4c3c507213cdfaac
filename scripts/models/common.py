"""Shared helpers for the model fixture generators.

Every generator builds tiny diffusers/transformers models with a fixed seed,
runs them in float32 on the CPU, and writes safetensors files that the Rust
tests read: weights under their diffusers keys, plus the inputs and expected
outputs under `input.*` / `output.*` names.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "crates", "diffusion-models", "tests", "fixtures")

torch.set_grad_enabled(False)
torch.use_deterministic_algorithms(True)


def fixture_dir(name):
    d = os.path.join(FIXTURES, name)
    os.makedirs(d, exist_ok=True)
    return d


def randomize(module, seed, scale=None):
    """Re-draws every parameter (norm weights included, so that a wrong
    affine is caught) from a seeded normal scaled to keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim == 1:
            if name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            fan_in = p[0].numel()
            s = scale if scale is not None else 1.0 / fan_in ** 0.5
            p.copy_(s * torch.randn(p.shape, generator=g))
    return module


def randn(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def contiguous(tensors):
    return {k: v.detach().contiguous().to(torch.float32) if v.is_floating_point() else v.detach().contiguous()
            for k, v in tensors.items()}


def save(path, tensors, metadata=None):
    """Writes `tensors` (a dict) as safetensors."""
    save_file(contiguous(tensors), path, metadata=metadata)
    print(f"wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes)")


def save_module(path, module, prefix, extra):
    """Writes the module's state dict under `prefix.` plus `extra` tensors."""
    tensors = {f"{prefix}.{k}" if prefix else k: v for k, v in module.state_dict().items()}
    tensors.update(extra)
    save(path, tensors)


def save_pretrained(model, directory):
    """diffusers' own save (config.json + diffusion_pytorch_model.safetensors)."""
    model.save_pretrained(directory, safe_serialization=True)
    for f in sorted(os.listdir(directory)):
        print(f"wrote {os.path.relpath(os.path.join(directory, f), REPO)}")


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
