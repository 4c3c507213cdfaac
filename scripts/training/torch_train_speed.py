#!/usr/bin/env python3
"""PyTorch speed peer for the Rust training loop: steps per second of the inner loop
of diffusers' examples/unconditional_image_generation/train_unconditional.py.

    /work/.venv/bin/python scripts/training/torch_train_speed.py \\
        --config crates/diffusion-pipelines/tests/fixtures/training/unet/config.json \\
        --batch 32 --threads 2 --steps 20 --warmup 3

The loop, without accelerate or datasets (what a step of train_unconditional.py does
with its defaults: epsilon prediction, no mixed precision, EMA on):

    noise = randn; t = randint(0, 1000); noisy = DDPMScheduler.add_noise(clean, noise, t)
    loss = mse(unet(noisy, t).sample, noise); loss.backward()
    clip_grad_norm_(params, 1.0); AdamW.step(); lr_scheduler.step(); zero_grad()
    EMAModel.step(params)

with UNet2DModel from --config (random init, seed 0), DDPMScheduler(1000, "linear"),
AdamW(lr 1e-4, betas (0.95, 0.999), weight_decay 1e-6, eps 1e-8), the script's
default lr schedule get_scheduler("cosine", warmup 500), and EMAModel(decay 0.9999,
use_ema_warmup, inv_gamma 1, power 3/4). Clean batches [B, C, R, R] (C, R from the
config unless --resolution) are random in [-1, 1], made before timing (data loading
is not part of the measurement); everything above is inside the timed step.

Prints one JSON object: steps/s (from the median step time over --steps steps after
--warmup untimed ones), per-step ms median / p10 / p90 / min / max, images/s, torch
version, threads, shapes.
"""
import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="UNet2DModel config.json (or its folder)")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--resolution", type=int, help="default: the config's sample_size")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    config = UNet2DModel.load_config(args.config)
    model = UNet2DModel.from_config(config).to(device).train()
    C = model.config.in_channels
    R = args.resolution or model.config.sample_size
    R = R if isinstance(R, int) else R[0]
    total = args.warmup + args.steps

    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999),
                                  weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500,
                                 num_training_steps=total)
    ema_model = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
                         power=3 / 4, model_cls=UNet2DModel, model_config=model.config)
    ema_model.to(device)

    pool = [torch.rand((args.batch, C, R, R), device=device) * 2 - 1 for _ in range(4)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step(clean_images):
        noise = torch.randn(clean_images.shape, device=device)
        bsz = clean_images.shape[0]
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=device).long()
        noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
        model_output = model(noisy_images, timesteps).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema_model.step(model.parameters())
        return loss

    times_ms = []
    for step in range(total):
        clean = pool[step % len(pool)]
        sync()
        t0 = time.perf_counter()
        loss = train_step(clean)
        sync()
        dt = (time.perf_counter() - t0) * 1e3
        if step >= args.warmup:
            times_ms.append(dt)
    if not torch.isfinite(loss):
        raise SystemExit(f"non-finite loss {loss.item()}")

    med = statistics.median(times_ms)
    q = statistics.quantiles(times_ms, n=10) if len(times_ms) >= 2 else [med] * 9
    print(json.dumps({
        "peer": "torch",
        "torch": torch.__version__,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "config": str(args.config),
        "params": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "shape": [args.batch, C, R, R],
        "steps": args.steps,
        "warmup": args.warmup,
        "steps_per_s": 1e3 / med,
        "images_per_s": 1e3 * args.batch / med,
        "step_ms": {"median": med, "p10": q[0], "p90": q[-1], "min": min(times_ms), "max": max(times_ms)},
        "final_loss": loss.item(),
    }, indent=1))


if __name__ == "__main__":
    main()
