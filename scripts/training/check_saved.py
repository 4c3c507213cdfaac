#!/usr/bin/env python3
"""Loads a pipeline folder written by `diffuse train` in Python diffusers and
checks that it makes the same images as the Rust side.

    /work/.venv/bin/python scripts/training/check_saved.py PIPELINE_DIR \
        [--diffuse target/release/diffuse] [--fixture OUT.json] [--steps 20] [--batch 4] [--seed 0]

1. `DiffusionPipeline.from_pretrained(PIPELINE_DIR)` (DDPMPipeline or DDIMPipeline,
   whatever model_index.json says) must load with no missing or unexpected weight.
2. It samples `--batch` images with `torch.Generator("cpu").manual_seed(seed)` and
   `--steps` steps (output_type="np").
3. With `--diffuse`, runs `diffuse generate --model PIPELINE_DIR --seed S --num-images B
   --steps N` and compares its 8-bit PNGs with diffusers' images rounded the same
   way (np.round(x * 255)): prints the number of differing pixel values and the
   largest difference.
4. With `--fixture`, writes diffusers' float images as JSON for a Rust test.
"""
import argparse
import json
import pathlib
import subprocess
import tempfile

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline_dir")
    ap.add_argument("--diffuse")
    ap.add_argument("--fixture")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    pipe = DiffusionPipeline.from_pretrained(a.pipeline_dir)
    print(f"loaded {type(pipe).__name__}: unet {type(pipe.unet).__name__} "
          f"({sum(p.numel() for p in pipe.unet.parameters())} parameters), "
          f"scheduler {type(pipe.scheduler).__name__}")
    gen = torch.Generator("cpu").manual_seed(a.seed)
    images = pipe(batch_size=a.batch, generator=gen, num_inference_steps=a.steps,
                  output_type="np").images  # [B, H, W, C] in [0, 1]
    result = {"class": type(pipe).__name__, "batch": a.batch, "steps": a.steps, "seed": a.seed,
              "shape": list(images.shape)}

    if a.diffuse:
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / "x.png"
            subprocess.run([a.diffuse, "generate", "--model", a.pipeline_dir, "--seed", str(a.seed),
                            "--num-images", str(a.batch), "--steps", str(a.steps), "-o", str(out)],
                           check=True, capture_output=True)
            names = [out] if a.batch == 1 else [pathlib.Path(tmp) / f"x-{i}.png" for i in range(a.batch)]
            rust = np.stack([np.asarray(Image.open(p)) for p in names]).astype(np.int64)
        ref = np.round(images * 255).astype(np.int64).reshape(rust.shape)
        diff = np.abs(rust - ref)
        result["png_values"] = int(diff.size)
        result["png_differing_values"] = int((diff > 0).sum())
        result["png_max_abs_diff"] = int(diff.max())
        print(f"diffuse vs diffusers 8-bit images: {result['png_differing_values']} of "
              f"{diff.size} values differ, max |diff| {result['png_max_abs_diff']}")

    if a.fixture:
        fx = dict(result)
        fx["generator"] = "scripts/training/check_saved.py"
        fx["images"] = [float(v) for v in images.reshape(-1)]
        pathlib.Path(a.fixture).write_text(json.dumps(fx) + "\n")
        print(f"wrote {a.fixture}")
    print(json.dumps({k: v for k, v in result.items()}))


if __name__ == "__main__":
    main()
