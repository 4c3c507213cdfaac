"""diffusers' side of `device_check` (crates/diffusion-pipelines/examples/device_check.rs):
the same SD1.5 configs with random weights, timed the same way on the same card,
printed as JSON lines. Run from the repository root:

    python scripts/bench/gpu_compare.py [--steps 50] [--runs 10] [--dtype f16]
"""
import argparse
import gzip
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIGS = os.path.join(ROOT, "crates", "diffusion-models", "tests", "fixtures", "hub_configs")
FIXTURES = os.path.join(ROOT, "crates", "diffusion-pipelines", "tests", "fixtures")


def config(name):
    with open(os.path.join(CONFIGS, name)) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def clip_tokenizer_dir(out):
    """vocab.json + merges.txt from open-clip's BPE file, SD1's tokenizer config."""
    gz = os.path.join(ROOT, "crates", "diffusion-hub", "tests", "fixtures", "tokenizer", "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(gz).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = sorted(chr(c) for c in cs)
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out, exist_ok=True)
    json.dump({t: i for i, t in enumerate(vocab)}, open(os.path.join(out, "vocab.json"), "w"))
    open(os.path.join(out, "merges.txt"), "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")
    src = os.path.join(FIXTURES, "pipelines", "sd1", "tokenizer")
    for f in os.listdir(src):
        open(os.path.join(out, f), "w").write(open(os.path.join(src, f)).read())
    return out


def timed(fn, runs):
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = (time.perf_counter() - t) * 1e3
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    return {"first_ms": first, "median_ms": ms[len(ms) // 2], "min_ms": ms[0], "max_ms": ms[-1], "runs": runs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--dtype", default="f16")
    a = ap.parse_args()
    try:
        import diffusers
        from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    except Exception as e:  # the device may lack diffusers
        print(json.dumps({"side": "diffusers", "error": f"import: {e}"}))
        return
    dt = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[a.dtype]
    dev = "cuda"
    torch.set_grad_enabled(False)
    print(json.dumps({"side": "diffusers", "diffusers": diffusers.__version__, "torch": torch.__version__,
                      "device": torch.cuda.get_device_name(), "dtype": a.dtype}))
    unet = UNet2DConditionModel.from_config(config("sd15-unet.json")).to(dev, dt).eval()
    vae = AutoencoderKL.from_config(config("sd15-vae.json")).to(dev, dt).eval()
    te = CLIPTextModel(CLIPTextConfig(**config("sd15-text_encoder.json"))).to(dev, dt).eval()
    x = torch.randn(2, 4, 64, 64, device=dev, dtype=dt)
    ctx = torch.randn(2, 77, 768, device=dev, dtype=dt)
    t = torch.tensor([500.0], device=dev)
    print(json.dumps({"side": "diffusers", "check": "unet_step_sd15_b2_64x64",
                      "timing": timed(lambda: unet(x, t, encoder_hidden_states=ctx), a.runs)}))
    z = torch.randn(1, 4, 64, 64, device=dev, dtype=dt)
    print(json.dumps({"side": "diffusers", "check": "vae_decode_sd15_512",
                      "timing": timed(lambda: vae.decode(z), min(a.runs, 5))}))
    ids = torch.full((2, 77), 49406, device=dev)
    print(json.dumps({"side": "diffusers", "check": "clip_l_b2", "timing": timed(lambda: te(ids), a.runs)}))
    with tempfile.TemporaryDirectory() as tmp:
        tok = CLIPTokenizer.from_pretrained(clip_tokenizer_dir(os.path.join(tmp, "tokenizer")))
        sched = PNDMScheduler.from_pretrained(os.path.join(FIXTURES, "pipelines", "sd1", "scheduler"))
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        for label in ["image_512_first", "image_512"]:
            t0 = time.perf_counter()
            pipe("An image of a squirrel in Picasso style", num_inference_steps=a.steps, height=512, width=512,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="np")
            torch.cuda.synchronize()
            print(json.dumps({"side": "diffusers", "check": label, "steps": a.steps,
                              "ms": (time.perf_counter() - t0) * 1e3}))
    print(json.dumps({"side": "diffusers", "peak_gpu_mem_mib": torch.cuda.max_memory_allocated() / 2**20}))


if __name__ == "__main__":
    sys.exit(main())
