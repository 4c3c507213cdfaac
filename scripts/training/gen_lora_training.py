#!/usr/bin/env python3
"""LoRA fine-tuning parity fixtures: a few optimizer steps of a peft LoRA on the
tiny SD1 and SDXL pipelines' UNets (tests/fixtures/pipelines), taken as
diffusers' `train_text_to_image_lora.py` / `train_text_to_image_lora_sdxl.py`
take them, for `tests/lora_training.rs` to reproduce.

    python3 scripts/training/gen_lora_training.py

Writes crates/diffusion-pipelines/tests/fixtures/lora_training/:

  cases.json       one entry per case: pipeline, LoraConfig (r, lora_alpha,
                   target_modules), hyper-parameters, per-step loss / grad norm
                   (before clipping) / lr, and the image check's call.
  <case>.safetensors
      lora_init/<peft key>     the factors the run starts from (peft's keys,
                               `<module>.lora_A.weight`, no prefix)
      lora_final/<peft key>    the factors after the steps
      step<k>/x0, noise, offset_noise, timesteps (as f32), states,
              text_embeds, time_ids (SDXL)        the batch of step k
      image/latents, image/images                 the image check below
  <case>_pytorch_lora_weights.safetensors
      what `StableDiffusion[XL]Pipeline.save_lora_weights` writes for the
      final factors (the file the Rust trainer's output must equal): as the
      scripts, `convert_state_dict_to_diffusers` names when only attention
      projections are targeted, else peft's names for every key (a mixed file
      loses its renamed layers in diffusers' `load_lora_weights`)

The step: noise_scheduler = DDPMScheduler.from_config(pipeline scheduler config)
(as the scripts' `DDPMScheduler.from_pretrained(..., subfolder="scheduler")`),
`add_noise`, target epsilon or `get_velocity`, MSE in f32 (min-SNR-γ weighted
when set, `compute_snr`), backward, `clip_grad_norm_` over the LoRA
parameters, `torch.optim.AdamW` over them, `get_scheduler` LR schedule. The
batch's latents stand for `vae.encode(...).latent_dist.sample() *
scaling_factor`, the states for the text encoders' output on two captions
(SD1: `text_encoder(input_ids)[0]`; SDXL: the pipeline's `encode_prompt`,
whose pooled output and `add_time_ids` go in `added_cond_kwargs`).

  sd1_full.safetensors
      the full fine-tune of `train_text_to_image.py` (every UNet parameter, min-SNR,
      warm-up, EMAModel): step<k>/… as above and unet_final/<key>, the moving
      average after the steps (what the script saves).

Image check: the final factors saved with `save_lora_weights`, loaded into the
pipeline with `load_lora_weights`, and the pipeline run on fixed latents: the
Rust trainer's saved file must give the same image in the Rust pipeline.

Deterministic: single-threaded CPU torch, fixed seeds.
"""
import json
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pipelines"))
import gen_pipelines as gp  # noqa: E402

from diffusers import DDPMScheduler, DiffusionPipeline  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel, compute_snr  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

OUT = os.path.join(gp.OUT, "lora_training")
torch.set_num_threads(1)
torch.set_grad_enabled(True)  # gen_pipelines turns it off for inference

ATTENTION = ["to_k", "to_q", "to_v", "to_out.0"]
CAPTIONS = ["a photo of a red cube", "a handwritten digit 3"]

CASES = [
    dict(name="sd1_eps", pipeline="sd1", r=4, lora_alpha=4, target_modules=ATTENTION, steps=3,
         learning_rate=1e-3, lr_scheduler="constant", lr_warmup_steps=0, max_grad_norm=1.0,
         prediction_type=None, snr_gamma=None, noise_offset=0.0, adam_weight_decay=1e-2, seed=1),
    dict(name="sd1_v_snr", pipeline="sd1", r=2, lora_alpha=8,
         target_modules=ATTENTION + ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"], steps=3,
         learning_rate=5e-3, lr_scheduler="cosine", lr_warmup_steps=1, max_grad_norm=0.05,
         prediction_type="v_prediction", snr_gamma=5.0, noise_offset=0.1, adam_weight_decay=1e-2, seed=2),
    # train_dreambooth_lora.py with --with_prior_preservation: instance and class halves of the batch.
    dict(name="sd1_prior", pipeline="sd1", r=4, lora_alpha=4, target_modules=ATTENTION, steps=3,
         learning_rate=1e-3, lr_scheduler="constant", lr_warmup_steps=0, max_grad_norm=1.0,
         prediction_type=None, snr_gamma=None, noise_offset=0.0, adam_weight_decay=1e-2, seed=5,
         prior_loss_weight=0.7, captions=["a photo of sks cube"] * 2 + ["a photo of a cube"] * 2),
    dict(name="sdxl_eps", pipeline="sdxl", r=4, lora_alpha=4, target_modules=ATTENTION, steps=3,
         learning_rate=1e-3, lr_scheduler="constant", lr_warmup_steps=0, max_grad_norm=1.0,
         prediction_type=None, snr_gamma=None, noise_offset=0.0, adam_weight_decay=1e-2, seed=3),
]
# The full fine-tune of train_text_to_image.py: every UNet parameter trains, with EMAModel.
FULL = dict(name="sd1_full", pipeline="sd1", steps=3, learning_rate=2e-4, lr_scheduler="constant_with_warmup",
            lr_warmup_steps=1, max_grad_norm=1.0, prediction_type=None, snr_gamma=5.0, noise_offset=0.0,
            adam_weight_decay=1e-2, seed=4, ema=dict(decay=0.9999, use_ema_warmup=False, inv_gamma=1.0, power=2 / 3,
                                                      min_decay=0.0, update_after_step=0))
TOTAL_STEPS = 6  # the LR schedule's horizon (num_training_steps)


def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    gp.alias_text_model(pipe)
    return pipe


def text_states(pipe, xl, captions):
    with torch.no_grad():
        if not xl:
            ids = pipe.tokenizer(captions, max_length=pipe.tokenizer.model_max_length, padding="max_length",
                                 truncation=True, return_tensors="pt").input_ids
            return pipe.text_encoder(ids, return_dict=False)[0], None
        embeds, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
        return embeds, pooled


def time_ids(n):
    # (original_size, crop_top_left, target_size) per image, as the SDXL script's compute_time_ids.
    rows = [[48.0, 40.0, 4.0, 0.0, 32.0, 32.0], [32.0, 64.0, 0.0, 16.0, 32.0, 32.0]]
    return torch.tensor(rows[:n])


def peft_factors(unet):
    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def run_case(c, folders):
    xl = c["pipeline"] == "sdxl"
    full = "r" not in c
    pipe = load(folders[c["pipeline"]])
    unet = pipe.unet
    ema = None
    if full:
        unet.requires_grad_(True)
        init = {}
        if c.get("ema"):
            e = c["ema"]
            ema = EMAModel(unet.parameters(), decay=e["decay"], min_decay=e["min_decay"],
                           update_after_step=e["update_after_step"], use_ema_warmup=e["use_ema_warmup"],
                           inv_gamma=e["inv_gamma"], power=e["power"])
    else:
        unet.requires_grad_(False)
        torch.manual_seed(c["seed"])
        unet.add_adapter(LoraConfig(r=c["r"], lora_alpha=c["lora_alpha"], init_lora_weights="gaussian",
                                    target_modules=c["target_modules"]))
        # A fresh B is zero; move the factors off it so the first step's gradient reaches A too.
        g = torch.Generator().manual_seed(100 + c["seed"])
        with torch.no_grad():
            for n, p in unet.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        init = peft_factors(unet)
    params = [p for p in unet.parameters() if p.requires_grad]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if c["prediction_type"] is not None:
        noise_scheduler.register_to_config(prediction_type=c["prediction_type"])
    optimizer = torch.optim.AdamW(params, lr=c["learning_rate"], betas=(0.9, 0.999),
                                  weight_decay=c["adam_weight_decay"], eps=1e-8)
    lr_scheduler = get_scheduler(c["lr_scheduler"], optimizer=optimizer, num_warmup_steps=c["lr_warmup_steps"],
                                 num_training_steps=TOTAL_STEPS)
    captions = c.get("captions", CAPTIONS)
    states, pooled = text_states(pipe, xl, captions)
    n = len(captions)
    size = unet.config.sample_size
    gen = torch.Generator().manual_seed(1000 + c["seed"])
    tensors = {f"lora_init/{k}": v for k, v in init.items()}
    losses, norms, lrs = [], [], []
    unet.train()
    for k in range(c["steps"]):
        x0 = torch.randn(n, 4, size, size, generator=gen)
        noise = torch.randn(n, 4, size, size, generator=gen)
        offset_noise = torch.randn(n, 4, 1, 1, generator=gen)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (n,), generator=gen).long()
        batch = {"x0": x0, "noise": noise, "offset_noise": offset_noise, "timesteps": timesteps, "states": states}
        if c["noise_offset"]:
            noise = noise + c["noise_offset"] * offset_noise
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        if noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = noise_scheduler.get_velocity(x0, noise, timesteps)
        added = None
        if xl:
            batch["text_embeds"] = pooled
            batch["time_ids"] = time_ids(n)
            added = {"text_embeds": pooled, "time_ids": batch["time_ids"]}
        pred = unet(noisy, timesteps, states, added_cond_kwargs=added, return_dict=False)[0]
        if c.get("prior_loss_weight") is not None:
            pred, pred_prior = torch.chunk(pred, 2, dim=0)
            target, target_prior = torch.chunk(target, 2, dim=0)
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
            loss = loss + c["prior_loss_weight"] * prior_loss
        elif c["snr_gamma"] is None:
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        else:
            snr = compute_snr(noise_scheduler, timesteps)
            w = torch.stack([snr, c["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
            w = w / snr if noise_scheduler.config.prediction_type == "epsilon" else w / (snr + 1)
            loss = F.mse_loss(pred.float(), target.float(), reduction="none")
            loss = (loss.mean(dim=list(range(1, loss.ndim))) * w).mean()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, c["max_grad_norm"])
        lrs.append(lr_scheduler.get_last_lr()[0])
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(loss.item())
        norms.append(norm.item())
        for key, v in batch.items():
            tensors[f"step{k}/{key}"] = v.detach().clone().contiguous()
    unet.eval()
    if full:
        # What train_text_to_image.py saves: the moving average when there is one.
        if ema is not None:
            ema.copy_to(unet.parameters())
        tensors.update({f"unet_final/{k}": v.detach().clone() for k, v in unet.state_dict().items()})
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(OUT, c["name"] + ".safetensors"))
        entry = dict(c)
        entry.update(total_steps=TOTAL_STEPS, losses=losses, grad_norms=norms, lrs=lrs,
                     scheduler_config=dict(noise_scheduler.config))
        print(f"{c['name']:10s} losses {['%.6f' % v for v in losses]} norms {['%.4f' % v for v in norms]}")
        return entry
    final = peft_factors(unet)
    tensors.update({f"lora_final/{k}": v for k, v in final.items()})

    # What the script's save hook writes, then the image with it.
    with tempfile.TemporaryDirectory() as tmp:
        pipe_cls = type(pipe)
        metadata = None
        if c["lora_alpha"] != c["r"]:
            metadata = {"r": c["r"], "lora_alpha": c["lora_alpha"], "target_modules": c["target_modules"]}
        # convert_state_dict_to_diffusers renames the attention projections only; a file that mixes
        # both namings loses the renamed layers when diffusers loads it (it converts by the first
        # format it detects), so beyond the attention the factors keep peft's names throughout.
        layers = convert_state_dict_to_diffusers(final) if set(c["target_modules"]) <= set(ATTENTION) else final
        pipe_cls.save_lora_weights(save_directory=tmp, unet_lora_layers=layers,
                                   unet_lora_adapter_metadata=metadata, safe_serialization=True)
        saved = os.path.join(OUT, c["name"] + "_pytorch_lora_weights.safetensors")
        os.replace(os.path.join(tmp, "pytorch_lora_weights.safetensors"), saved)
    fresh = load(folders[c["pipeline"]])
    fresh.load_lora_weights(OUT, weight_name=os.path.basename(saved))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(50 + c["seed"]))
    call = {"prompt": CAPTIONS[1], "negative_prompt": "blurry", "guidance_scale": 5.0,
            "num_inference_steps": 3, "height": 32, "width": 32}
    with torch.no_grad():
        images = fresh(**call, latents=latents.clone(), output_type="np").images
    tensors["image/latents"] = latents
    tensors["image/images"] = torch.from_numpy(images).float()
    # All f32 (timesteps < 2^24 are exact) for the tests' reader.
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(OUT, c["name"] + ".safetensors"))
    entry = {k: v for k, v in c.items()}
    entry.update(total_steps=TOTAL_STEPS, losses=losses, grad_norms=norms, lrs=lrs, image_call=call,
                 scheduler_config=dict(noise_scheduler.config))
    print(f"{c['name']:10s} losses {['%.6f' % v for v in losses]} norms {['%.4f' % v for v in norms]}")
    return entry


def main():
    gp.clean(OUT)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {n: gp.assemble(n, os.path.join(tmp, n)) for n in ("sd1", "sdxl")}
        entries = [run_case(c, folders) for c in CASES + [FULL]]
    gp.write_json(os.path.join(OUT, "cases.json"), {"captions": CAPTIONS, "cases": entries})


if __name__ == "__main__":
    main()
