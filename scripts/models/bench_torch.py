"""PyTorch side of `cargo xtask bench models`: the same workloads as
crates/diffusion-models/benches/models.rs (same configs from
benches/configs/, random weights, same shapes), in diffusers/transformers on
the CPU with a given thread count. Prints and writes JSON: median and spread
of N timed runs after one warm-up, in milliseconds.

    python scripts/models/bench_torch.py --threads 2 --runs 10 --out target/bench-models-torch.json
"""
import argparse
import json
import os
import statistics
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "..", "crates", "diffusion-models", "benches", "configs")


def config(name):
    with open(os.path.join(CONFIGS, name)) as f:
        cfg = json.load(f)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def timed(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    results = {"threads": args.threads, "torch": torch.__version__}

    unet = UNet2DConditionModel.from_config(config("unet_mid.json")).eval()
    sample = torch.randn(2, 4, 32, 32)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    t = torch.tensor([500.0, 500.0])
    results["unet_mid_forward"] = timed(lambda: unet(sample, t, text), args.runs)

    vae = AutoencoderKL.from_config(config("vae_mid.json")).eval()
    latents = torch.randn(1, 4, 32, 32)
    results["vae_mid_decode"] = timed(lambda: vae.decode(latents), args.runs)

    clip = CLIPTextModel(CLIPTextConfig(**config("clip_l.json"))).eval()
    row = [49406] + [320 + 7 * i for i in range(1, 21)] + [49407] * 56
    ids = torch.tensor([row, row])
    results["clip_l_encode"] = timed(lambda: clip(ids), args.runs)

    text_out = json.dumps(results, indent=2)
    print(text_out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text_out + "\n")


if __name__ == "__main__":
    main()
