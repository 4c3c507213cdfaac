"""PyTorch side of `cargo xtask bench --compare diffusers`.

Runs the workloads of benches/src/workloads.rs in diffusers / transformers with
the same presets (benches/presets.json: same configs, random weights), shapes,
dtype, batch, step count, thread count and timing rule (one first call apart,
then N runs, each ending with a device synchronize), and writes JSON rows the
Rust side merges into its table. Called by `diffusion-bench`; by hand:

    python scripts/bench/bench_diffusers.py --preset mid --component unet --backend cpu \
        --dtype f32 --batch 2 --runs 10 --steps 20 --threads 2 --root . \
        --tokenizers target/bench/tokenizers --json target/bench/diffusers.json
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import diffusers
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

PROMPT = "An image of a squirrel in Picasso style"
TEXT_IDS = [49406, 550, 2867, 539, 320, 14004, 530, 15749, 1844, 49407] + [49407] * 67
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def load_json(path):
    with open(path) as f:
        return json.load(f)


def clean(cfg):
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def host_peak_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def host_peak_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device, runs, fn):
    sync(device)
    host_peak_reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return {
        "first_ms": first,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": runs,
        "host_peak_mib": host_peak_mib(),
        "device_mib": torch.cuda.max_memory_reserved() / 2**20 if device.type == "cuda" else None,
        "device_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def vae_factor(vae):
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_dtype(vae_cfg, dtype, xl):
    # diffusers' SDXL pipeline runs a force_upcast VAE in f32 when asked for f16
    # (the Rust side does the same at load); its SD 1.x pipeline never upcasts.
    if xl and dtype == torch.float16 and vae_cfg.get("force_upcast", True):
        return torch.float32
    return dtype


def run_preset(args, name, presets, device, dtype):
    p = presets[name]
    root = args.root
    comps = args.component
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    unet = vae = te = te2 = None
    t0 = time.perf_counter()
    if {"unet", "unet-lora", "unet-controlnet", "pipeline"} & set(comps):
        unet = UNet2DConditionModel.from_config(clean(load_json(os.path.join(root, p["unet"]))))
        unet = unet.to(device, dtype).eval()
    vae_cfg = clean(load_json(os.path.join(root, p["vae"])))
    if {"vae-decode", "vae-encode", "pipeline"} & set(comps):
        vae = AutoencoderKL.from_config(vae_cfg).to(device, vae_dtype(vae_cfg, dtype, bool(p.get("text_encoder_2")))).eval()
    if {"text", "pipeline"} & set(comps):
        te = CLIPTextModel(CLIPTextConfig(**clean(load_json(os.path.join(root, p["text_encoder"])))))
        te = te.to(device, dtype).eval()
        if p.get("text_encoder_2"):
            cfg2 = CLIPTextConfig(**clean(load_json(os.path.join(root, p["text_encoder_2"]))))
            te2 = CLIPTextModelWithProjection(cfg2).to(device, dtype).eval()
    print(f"[{name}] diffusers models built in {(time.perf_counter() - t0) * 1e3:.0f} ms", file=sys.stderr)
    latent = p["latent"]
    b = args.batch
    for comp in comps:
        print(f"[{name}] diffusers {comp} ...", file=sys.stderr)
        if comp in ("train-lora", "train-full", "train-lora-checkpointing"):
            row = train_step(args, comp, p, device, gen)
        elif comp in ("unet", "unet-lora", "unet-controlnet"):
            cross = unet.config.cross_attention_dim
            x = torch.randn(b, unet.config.in_channels, latent, latent, generator=gen).to(device, dtype)
            ctx = torch.randn(b, 77, cross, generator=gen).to(device, dtype)
            t = torch.full((b,), 500.0, device=device)
            added = None
            if unet.config.addition_embed_type == "text_time":
                pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
                side = float(latent * 8)
                added = {
                    "text_embeds": torch.randn(b, pooled, generator=gen).to(device, dtype),
                    "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * b, device=device, dtype=dtype),
                }
            if comp == "unet-lora":
                # peft's unfused LoRA on the training scripts' targets, as the Rust side.
                from peft import LoraConfig
                unet.add_adapter(LoraConfig(r=args.lora, lora_alpha=args.lora, init_lora_weights="gaussian",
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="bench")
                unet.to(device, dtype)
            step = lambda: unet(x, t, ctx, added_cond_kwargs=added)  # noqa: E731
            if comp == "unet-controlnet":
                # A ControlNet made from the UNet, its residuals into the UNet.
                from diffusers import ControlNetModel
                cn = ControlNetModel.from_unet(unet).to(device, dtype).eval()
                img = torch.rand(b, 3, latent * 8, latent * 8, generator=gen).to(device, dtype)

                def step():
                    down, mid = cn(x, t, ctx, controlnet_cond=img, added_cond_kwargs=added, return_dict=False)
                    unet(x, t, ctx, added_cond_kwargs=added, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid)
            row = measure(device, args.runs, step)
            if comp == "unet-lora":
                unet.delete_adapters("bench")
                row["lora_rank"] = args.lora
        elif comp == "vae-decode":
            z = torch.randn(1, vae.config.latent_channels, latent, latent, generator=gen).to(device, vae.dtype)
            row = measure(device, args.runs, lambda: vae.decode(z))
        elif comp == "vae-encode":
            side = latent * vae_factor(vae)
            img = (torch.rand(1, vae.config.in_channels, side, side, generator=gen) * 2 - 1).to(device, vae.dtype)
            row = measure(device, args.runs, lambda: vae.encode(img).latent_dist.mean)
        elif comp == "text":
            ids = torch.tensor([TEXT_IDS] * b, device=device)

            def enc():
                te(ids, output_hidden_states=True)
                if te2 is not None:
                    te2(ids, output_hidden_states=True)

            row = measure(device, args.runs, enc)
        elif comp == "scheduler":
            cfg = clean(load_json(os.path.join(root, p["scheduler"])))
            sched = DDIMScheduler.from_config(cfg)
            sched.set_timesteps(50, device=device)
            t = sched.timesteps[10]
            x = torch.randn(1, 4, latent, latent, generator=gen).to(device, dtype)
            eps = torch.randn(1, 4, latent, latent, generator=gen).to(device, dtype)
            row = measure(device, args.runs, lambda: sched.step(eps, t, x))
        elif comp == "pipeline":
            sched_cfg = load_json(os.path.join(root, p["scheduler"]))
            sched_cls = getattr(diffusers, sched_cfg["_class_name"])
            scheduler = sched_cls.from_config(clean(sched_cfg))
            tok = CLIPTokenizer.from_pretrained(os.path.join(args.tokenizers, "tokenizer"))
            side = latent * vae_factor(vae)
            if te2 is None:
                pipe = diffusers.StableDiffusionPipeline(
                    vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=scheduler,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            else:
                tok2 = CLIPTokenizer.from_pretrained(os.path.join(args.tokenizers, "tokenizer_2"))
                # The SDXL pipeline takes an f16 VAE and upcasts it around decode itself.
                vae.to(dtype)
                pipe = diffusers.StableDiffusionXLPipeline(
                    vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                    unet=unet, scheduler=scheduler)
            pipe.set_progress_bar_config(disable=True)

            def call():
                pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, height=side, width=side,
                     generator=torch.Generator(device="cpu").manual_seed(0), output_type="np")

            row = measure(device, args.pipeline_runs or min(args.runs, 3), call)
            row["steps"] = args.steps
            # Components listed after `pipeline` time the VAE as loaded.
            vae.to(vae_dtype(vae_cfg, dtype, te2 is not None))
        else:
            continue
        row.update({"side": "diffusers", "preset": name, "component": comp})
        print(f"[{name}] diffusers {comp}: {json.dumps(row)}", file=sys.stderr)
        rows.append(row)
    return rows


def train_step(args, comp, p, device, gen):
    """One f32 optimizer step of the preset's UNet as the fine-tuning scripts take it
    (train_text_to_image[_lora].py): add_noise, forward, MSE, backward, clip_grad_norm_,
    AdamW; with a rank --lora peft LoRA on the attention projections (only the factors
    train) or every weight; `-checkpointing`: unet.enable_gradient_checkpointing()."""
    from diffusers import DDPMScheduler
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(clean(load_json(os.path.join(args.root, p["unet"])))).to(device)
    if comp == "train-full":
        params = list(unet.parameters())
    else:
        from peft import LoraConfig
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=args.lora, lora_alpha=args.lora, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        params = [q for q in unet.parameters() if q.requires_grad]
    if comp == "train-lora-checkpointing":
        unet.enable_gradient_checkpointing()
    unet.train()
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    opt = torch.optim.AdamW(params, lr=1e-4)
    b, latent = args.batch, p["latent"]
    x0 = torch.randn(b, unet.config.in_channels, latent, latent, generator=gen).to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    ctx = torch.randn(b, 77, unet.config.cross_attention_dim, generator=gen).to(device)
    t = torch.tensor([(100 + 300 * i) % 1000 for i in range(b)], device=device)
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        side = float(latent * 8)
        added = {"text_embeds": torch.randn(b, pooled, generator=gen).to(device),
                 "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * b, device=device)}

    def step():
        with torch.enable_grad():
            noisy = sched.add_noise(x0, noise, t)
            pred = unet(noisy, t, ctx, added_cond_kwargs=added, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()

    row = measure(device, args.runs, step)
    row["trained_params"] = sum(q.numel() for q in params)
    if comp != "train-full":
        row["lora_rank"] = args.lora
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mid")
    ap.add_argument("--component", default="unet,vae-decode,vae-encode,text,scheduler,pipeline")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pipeline-runs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--root", default=".")
    ap.add_argument("--tokenizers", default="target/bench/tokenizers")
    ap.add_argument("--json", required=True)
    ap.add_argument("--lora", type=int, default=16)
    args = ap.parse_args()
    args.component = [c for c in args.component.split(",") if c and c != "profile"]
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    device = torch.device("cuda" if args.backend == "cuda" else "cpu")
    dtype = DTYPES[args.dtype]
    presets = load_json(os.path.join(args.root, "benches", "presets.json"))
    env = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "sdpa": "torch.nn.functional.scaled_dot_product_attention (AttnProcessor2_0), eager",
    }
    rows = []
    for name in args.preset.split(","):
        rows += run_preset(args, name, presets, device, dtype)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)
    os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
