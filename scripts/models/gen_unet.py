"""Fixtures for UNet2DModel and UNet2DConditionModel: tiny random configs that
cover every branch the Rust models implement, each saved as a diffusers
folder (config.json + diffusion_pytorch_model.safetensors, through
`save_pretrained`) plus `io.safetensors` with the inputs and outputs.

    python scripts/models/gen_unet.py          # tests/fixtures/unet/<name>/
    python scripts/models/gen_unet.py --full   # target/full-fixtures/unet/{sd15,sdxl}/ (not committed)

`--full` writes SD1.5- and SDXL-sized models with random weights (about
3.4 GB of f32 and 5 GB of f16) for the ignored test `full_size_models` in
crates/diffusion-models/tests/unet.rs:

    cargo test --release -p diffusion-models --test unet -- --ignored --nocapture
"""
import argparse
import os
import shutil
import time

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from common import REPO, fixture_dir, randn, randomize, save, save_pretrained


def write(out, name, model, inputs, outputs):
    d = os.path.join(out, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    save_pretrained(model, d)
    tensors = {f"input.{k}": v for k, v in inputs.items()}
    tensors.update({f"output.{k}": v for k, v in outputs.items()})
    save(os.path.join(d, "io.safetensors"), tensors)


def unet2d(out, name, seed, batch=2, size=(8, 8), labels=None, pickle=False, **config):
    model = randomize(UNet2DModel(**config), seed).eval()
    c = model.config
    x = randn((batch, c.in_channels, *size), seed + 1)
    t = torch.tensor([3.0, 981.0][:batch])
    inputs = {"sample": x, "timesteps": t}
    if labels is not None:
        inputs["class_labels"] = labels.float()
    outputs = {"sample": model(x, t, class_labels=labels).sample}
    write(out, name, model, inputs, outputs)
    if pickle:
        # The same model as a PyTorch pickle only (as older Hub repos ship it).
        d = os.path.join(out, f"{name}_bin")
        if os.path.isdir(d):
            shutil.rmtree(d)
        model.save_pretrained(d, safe_serialization=False)
        print(f"wrote {os.path.relpath(d, REPO)}/ (diffusion_pytorch_model.bin)")


def unet2d_condition(out, name, seed, batch=2, size=(8, 8), seq=5, text_dim=None, cond=None,
                     labels=None, residuals=False, **config):
    model = randomize(UNet2DConditionModel(**config), seed).eval()
    c = model.config
    cross = c.cross_attention_dim if isinstance(c.cross_attention_dim, int) else c.cross_attention_dim[0]
    x = randn((batch, c.in_channels, *size), seed + 1)
    t = torch.tensor([17.0, 803.0][:batch])
    ctx = randn((batch, seq, cross), seed + 2)
    inputs = {"sample": x, "timesteps": t, "encoder_hidden_states": ctx}
    kwargs = {}
    if c.addition_embed_type == "text_time":
        inputs["text_embeds"] = randn((batch, text_dim), seed + 3)
        inputs["time_ids"] = torch.tensor([[8.0, 10.0, 0.0, 1.0, 8.0, 12.0], [16.0, 16.0, 2.0, 0.0, 8.0, 8.0]])[:batch]
        kwargs["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
    if cond is not None:
        inputs["timestep_cond"] = randn((batch, cond), seed + 4)
        kwargs["timestep_cond"] = inputs["timestep_cond"]
    if labels is not None:
        inputs["class_labels"] = labels.float()
        kwargs["class_labels"] = labels
    outputs = {"sample": model(x, t, ctx, **kwargs).sample}
    if residuals:
        # ControlNet-style residuals: one per down-path state, plus the middle.
        # Record the real shapes by running diffusers with zero residuals.
        states = []
        hooks = [b.register_forward_hook(lambda m, i, o: states.extend(o[1])) for b in model.down_blocks]
        mid_out = []
        hooks.append(model.mid_block.register_forward_hook(lambda m, i, o: mid_out.append(o)))
        model(x, t, ctx, **kwargs)
        for hk in hooks:
            hk.remove()
        shapes = [(batch, c.block_out_channels[0], *size)] + [s.shape for s in states]
        down = []
        for i, s in enumerate(shapes):
            r = 0.5 * randn(tuple(s), seed + 10 + i)
            inputs[f"down_residual.{i}"] = r
            down.append(r)
        mid = 0.5 * randn(tuple(mid_out[0].shape), seed + 9)
        inputs["mid_residual"] = mid
        outputs["sample_controlnet"] = model(x, t, ctx, down_block_additional_residuals=tuple(down),
                                             mid_block_additional_residual=mid, **kwargs).sample
    write(out, name, model, inputs, outputs)


def tiny(out):
    # --- UNet2DModel -----------------------------------------------------------
    # ddpm-cifar10-32-like: attention in the second block, no flip, shift 1,
    # downsample padding 0, eps 1e-6.
    unet2d(out, "ddpm_attn", 100, pickle=True, in_channels=3, out_channels=3, block_out_channels=[4, 8],
           down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
           layers_per_block=1, norm_num_groups=2, attention_head_dim=4, norm_eps=1e-6, freq_shift=1,
           flip_sin_to_cos=False, downsample_padding=0, time_embedding_type="positional")
    # Class-conditional through an embedding table; centred input; one head per block.
    unet2d(out, "ddpm_class", 200, in_channels=2, out_channels=3, block_out_channels=[4, 8],
           down_block_types=["AttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"],
           layers_per_block=1, norm_num_groups=2, attention_head_dim=None, num_class_embeds=5,
           center_input_sample=True, labels=torch.tensor([3, 0]))
    # scale_shift resnets, the middle attention's own GroupNorm groups, a
    # "timestep" class embedding, a non-default time embedding width and
    # middle-block output scale.
    unet2d(out, "ddpm_scale_shift", 300, in_channels=3, out_channels=3, block_out_channels=[4, 8],
           down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
           layers_per_block=1, norm_num_groups=4, attention_head_dim=2, resnet_time_scale_shift="scale_shift",
           attn_norm_num_groups=2, class_embed_type="timestep", time_embedding_dim=10, mid_block_scale_factor=1.5,
           labels=torch.tensor([5.0, 400.0]))

    # --- UNet2DConditionModel ------------------------------------------------
    common = dict(block_out_channels=[8, 8], layers_per_block=1, norm_num_groups=4, cross_attention_dim=6)
    # SD1.x: 1×1-conv projections, heads given as `attention_head_dim`;
    # also run with ControlNet residuals.
    unet2d_condition(out, "sd1", 400, in_channels=4, out_channels=4,
                     down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2, residuals=True,
                     **common)
    # SD2.x: linear projections, per-block heads, upcast_attention; also
    # per-block only_cross_attention and a middle-block output scale.
    unet2d_condition(out, "sd2", 500, in_channels=4, out_channels=4,
                     down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                     up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=[2, 4],
                     use_linear_projection=True, upcast_attention=True, only_cross_attention=[True, False],
                     mid_block_scale_factor=2.0,
                     **common)
    # SDXL: transformer depth per block, text_time addition embedding.
    unet2d_condition(out, "sdxl", 600, in_channels=4, out_channels=4,
                     down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                     up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[1, 2],
                     use_linear_projection=True, transformer_layers_per_block=[1, 2], addition_embed_type="text_time",
                     addition_time_embed_dim=4, projection_class_embeddings_input_dim=10 + 6 * 4, text_dim=10,
                     **common)
    # Inpainting: 9 input channels.
    unet2d_condition(out, "inpaint", 700, in_channels=9, out_channels=4,
                     down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2, **common)
    # LCM: guidance embedding through `cond_proj`; also time_embedding_act_fn
    # and timestep_post_act, a mid block without attention, kernel-1 conv_out.
    unet2d_condition(out, "lcm", 800, in_channels=4, out_channels=4,
                     down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2, time_cond_proj_dim=6,
                     cond=6, time_embedding_act_fn="silu", timestep_post_act="mish", mid_block_type="UNetMidBlock2D",
                     conv_out_kernel=1, **common)
    # Odd latent size (10×14 → 5×7 → 3×4): the upsamplers must take the skip's size.
    # Three blocks, an embedding-table class embedding concatenated to the time embedding.
    unet2d_condition(out, "odd_size", 900, size=(10, 14), in_channels=4, out_channels=4,
                     block_out_channels=[4, 8, 8], layers_per_block=1, norm_num_groups=2, cross_attention_dim=6,
                     down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2,
                     num_class_embeds=3, class_embeddings_concat=True, labels=torch.tensor([2, 1]))


def full(out):
    torch.manual_seed(0)
    # stable-diffusion-v1-5/unet/config.json
    sd15 = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
                layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    # stable-diffusion-xl-base-1.0/unet/config.json
    sdxl = dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280],
                layers_per_block=2, cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
                transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, norm_num_groups=32,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    # SDXL's 2.6 B parameters are 10 GB in f32: its weights are rounded to f16
    # and saved as f16 (5 GB); the f32 reference runs on exactly those values,
    # and the Rust side loads the f16 file into f32. 64x64 latents (512 px) keep
    # the CPU forward short; the config is SDXL's.
    for name, cfg, size, text_dim in [("sd15", sd15, (64, 64), None), ("sdxl", sdxl, (64, 64), 1280)]:
        if args.only and name != args.only:
            continue
        model = UNet2DConditionModel(**cfg).eval()
        if name == "sdxl":
            for p in model.parameters():
                p.data = p.data.half().float()
        batch, cross = 1, cfg["cross_attention_dim"]
        x = randn((batch, 4, *size), 1)
        t = torch.tensor([500.0])
        ctx = randn((batch, 77, cross), 2)
        inputs = {"sample": x, "timesteps": t, "encoder_hidden_states": ctx}
        kwargs = {}
        if text_dim:
            inputs["text_embeds"] = randn((batch, text_dim), 3)
            inputs["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]])
            kwargs["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
        start = time.time()
        y = model(x, t, ctx, **kwargs).sample
        print(f"{name}: diffusers forward {time.time() - start:.2f} s")
        if name == "sdxl":
            model = model.half()
        write(out, name, model, inputs, {"sample": y})
        del model


parser = argparse.ArgumentParser()
parser.add_argument("--full", action="store_true", help="SD1.5/SDXL-size random models into target/full-fixtures")
parser.add_argument("--only", help="with --full: just this one (sd15 or sdxl)")
args = parser.parse_args()
if args.full:
    full_out = os.path.join(REPO, "target", "full-fixtures", "unet")
    os.makedirs(full_out, exist_ok=True)
    full(full_out)
else:
    tiny(fixture_dir("unet"))
