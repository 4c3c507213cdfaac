"""Runs the `forward` example on the committed fixture folders and compares its
outputs with diffusers'/transformers' (the fixtures' `output.*` tensors).

    cargo build --release -p diffusion-models --example forward
    python scripts/models/check_forward.py [--dtype f32|f16|bf16] [--bin target/release/examples/forward]

With `--full`, it runs the full-size random-weight folders that the generators'
`--full` option writes into target/full-fixtures/ instead, and also times the
same forward in diffusers/transformers (one warm-up, then one timed run, with
`--threads` threads) beside the Rust forward time the example reports.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

from common import FIXTURES, REPO

# fixture folder -> (inputs: example name <- fixture name, outputs: example name -> fixture name)
CASES = {
    "unet/sd1": ({"sample": "input.sample", "timestep": "input.timesteps",
                  "encoder_hidden_states": "input.encoder_hidden_states"}, {"sample": "output.sample"}),
    "unet/sdxl": ({"sample": "input.sample", "timestep": "input.timesteps",
                   "encoder_hidden_states": "input.encoder_hidden_states",
                   "text_embeds": "input.text_embeds", "time_ids": "input.time_ids"}, {"sample": "output.sample"}),
    "unet/ddpm_attn": ({"sample": "input.sample", "timestep": "input.timesteps"}, {"sample": "output.sample"}),
    "vae/kl": ({"latents": "input.latents", "image": "input.image"},
               {"sample": "output.decode", "latent_mean": "output.encode.mean"}),
    "vae/taesd": ({"latents": "input.latents", "image": "input.image"},
                  {"sample": "output.decode", "latent_mean": "output.encode"}),
    "clip/sd1": ({"input_ids": "input.input_ids"},
                 {"last_hidden_state": "output.last_hidden_state", "pooler_output": "output.pooler_output"}),
    "clip/sdxl2": ({"input_ids": "input.input_ids"},
                   {"last_hidden_state": "output.last_hidden_state", "text_embeds": "output.text_embeds"}),
}


FULL = {
    "unet/sd15": ({"sample": "input.sample", "timestep": "input.timesteps",
                   "encoder_hidden_states": "input.encoder_hidden_states"}, {"sample": "output.sample"}),
    "unet/sdxl": ({"sample": "input.sample", "timestep": "input.timesteps",
                   "encoder_hidden_states": "input.encoder_hidden_states",
                   "text_embeds": "input.text_embeds", "time_ids": "input.time_ids"}, {"sample": "output.sample"}),
    "vae/sd15": ({"latents": "input.latents", "image": "input.image"},
                 {"sample": "output.decode", "latent_mean": "output.encode.mean"}),
    "vae/sdxl": ({"latents": "input.latents", "image": "input.image"},
                 {"sample": "output.decode", "latent_mean": "output.encode.mean"}),
    "clip/clip_l": ({"input_ids": "input.input_ids"}, {"last_hidden_state": "output.last_hidden_state"}),
    "clip/bigg": ({"input_ids": "input.input_ids"},
                  {"last_hidden_state": "output.last_hidden_state", "text_embeds": "output.text_embeds"}),
}


def torch_time(folder, tensors, threads):
    """Seconds of one forward of the reference on the same inputs (after a warm-up)."""
    import time
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    kind = folder.split(os.sep)[-2]
    if kind == "unet":
        from diffusers import UNet2DConditionModel
        m = UNet2DConditionModel.from_pretrained(folder).eval()
        added = {k: tensors[k] for k in ("text_embeds", "time_ids") if k in tensors}
        kwargs = {"added_cond_kwargs": added} if added else {}
        m = m.float()
        run = lambda: m(tensors["sample"], tensors["timestep"], tensors["encoder_hidden_states"], **kwargs)
    elif kind == "vae":
        from diffusers import AutoencoderKL
        m = AutoencoderKL.from_pretrained(folder).eval()
        run = lambda: (m.decode(tensors["latents"]), m.encode(tensors["image"]))
    else:
        import transformers
        import json as _json
        arch = _json.load(open(os.path.join(folder, "config.json")))["architectures"][0]
        m = getattr(transformers, arch).from_pretrained(folder).eval()
        run = lambda: m(tensors["input_ids"])
    run()
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "examples", "forward"))
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", help="run just this case (e.g. unet/sdxl)")
    args = ap.parse_args()
    root = os.path.join(REPO, "target", "full-fixtures") if args.full else FIXTURES
    cases = FULL if args.full else CASES
    tol = {"f32": 1e-4, "f16": 5e-3, "bf16": 3e-2}[args.dtype]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for case, (ins, outs) in cases.items():
            if args.only and case != args.only:
                continue
            folder = os.path.join(root, case)
            if not os.path.isdir(folder):
                print(f"{case}: {folder} absent, skipped")
                continue
            io = load_file(os.path.join(folder, "io.safetensors"))
            missing = [v for v in list(ins.values()) + list(outs.values()) if v not in io]
            if missing:
                print(f"{case}: fixture lacks {missing}, skipped")
                continue
            inp, out = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
            tensors = {k: io[v].contiguous() for k, v in ins.items()}
            if "input_ids" in tensors:
                tensors["input_ids"] = tensors["input_ids"].to(torch.int64)
            save_file(tensors, inp)
            r = subprocess.run([args.bin, "--component", folder, "--inputs", inp, "--output", out,
                                "--dtype", args.dtype], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{case}: forward failed: {r.stderr.strip()}")
                sys.exit(1)
            got = load_file(out)
            if args.full:
                rust = r.stderr.strip().splitlines()[0]
                ref = torch_time(folder, tensors, args.threads)
                print(f"{case:16} rust: {rust}; reference forward {ref:.3f} s ({args.threads} threads)")
            for k, v in outs.items():
                err = rel_l2(got[k], io[v])
                worst = max(worst, err)
                print(f"{case:16} {k:20} rel L2 {err:.2e}")
    print(f"worst {worst:.2e} (tolerance {tol:.0e} for {args.dtype})")
    sys.exit(0 if worst <= tol else 1)


if __name__ == "__main__":
    main()
