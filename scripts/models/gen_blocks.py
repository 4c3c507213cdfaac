"""Fixtures for the shared building blocks: ResnetBlock2D, Downsample2D,
Upsample2D, Attention, UNetMidBlock2D, the timestep embeddings.

    python scripts/models/gen_blocks.py
"""
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D

from common import fixture_dir, randn, randomize, save, save_module

out = fixture_dir("blocks")

# ResnetBlock2D: channel change (conv_shortcut), default time embedding.
m = randomize(ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=12, groups=4, eps=1e-6), 1)
x, t = randn((2, 8, 5, 6), 2), randn((2, 12), 3)
save_module(f"{out}/resnet.safetensors", m, "block",
            {"input.x": x, "input.temb": t, "output": m(x, t)})

# ResnetBlock2D: scale_shift, same channels, output_scale_factor, groups_out.
m = randomize(ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=12, groups=2, groups_out=4,
                            eps=1e-5, time_embedding_norm="scale_shift", output_scale_factor=2.0), 4)
save_module(f"{out}/resnet_scale_shift.safetensors", m, "block",
            {"input.x": x, "input.temb": t, "output": m(x, t)})

# ResnetBlock2D without time embedding (the VAE's).
m = randomize(ResnetBlock2D(in_channels=8, out_channels=4, temb_channels=None, groups=4), 5)
save_module(f"{out}/resnet_no_temb.safetensors", m, "block", {"input.x": x, "output": m(x, None)})

# Downsample2D: padding 1 and the VAE's padding 0; average pooling.
for pad in (1, 0):
    m = randomize(Downsample2D(8, use_conv=True, out_channels=6, padding=pad, name="conv"), 6 + pad)
    sd = {k: v for k, v in m.state_dict().items() if k.startswith("conv.")}
    save(f"{out}/downsample_p{pad}.safetensors",
         {**{f"block.{k}": v for k, v in sd.items()}, "input.x": x, "output": m(x)})
m = Downsample2D(8, use_conv=False)
save(f"{out}/downsample_pool.safetensors", {"input.x": x, "output": m(x)})

# Upsample2D: ×2 and to an explicit (odd) size.
m = randomize(Upsample2D(8, use_conv=True, out_channels=6), 8)
save_module(f"{out}/upsample.safetensors", m, "block",
            {"input.x": x, "output": m(x), "output.sized": m(x, output_size=(11, 13))})

# Attention: self-attention with group norm and residual (VAE/UNet2D style).
m = randomize(Attention(16, heads=2, dim_head=8, norm_num_groups=4, eps=1e-6, bias=True,
                        residual_connection=True, rescale_output_factor=2.0, upcast_softmax=True), 9)
x4 = randn((2, 16, 3, 5), 10)
save_module(f"{out}/attention_spatial.safetensors", m, "block", {"input.x": x4, "output": m(x4)})

# Attention: cross-attention (UNet2DCondition style), no qkv bias.
m = randomize(Attention(16, cross_attention_dim=12, heads=4, dim_head=6), 11)
seq, ctx = randn((2, 7, 16), 12), randn((2, 5, 12), 13)
save_module(f"{out}/attention_cross.safetensors", m, "block",
            {"input.x": seq, "input.context": ctx, "output": m(seq, encoder_hidden_states=ctx)})

# UNetMidBlock2D with attention (head dim 8).
m = randomize(UNetMidBlock2D(in_channels=16, temb_channels=12, resnet_groups=4, attention_head_dim=8,
                             num_layers=1), 14)
t = randn((2, 12), 15)
save_module(f"{out}/mid_block.safetensors", m, "block", {"input.x": x4, "input.temb": t, "output": m(x4, t)})

# Timestep embeddings: SD (flip, shift 0) and DDPM (no flip, shift 1), odd width.
ts = torch.tensor([0.0, 1.0, 17.0, 999.0, 500.5])
m = randomize(TimestepEmbedding(10, 24, cond_proj_dim=6), 16)
emb = get_timestep_embedding(ts, 10, flip_sin_to_cos=True, downscale_freq_shift=0)
cond = randn((5, 6), 17)
save_module(f"{out}/timesteps.safetensors", m, "block", {
    "input.timesteps": ts,
    "input.cond": cond,
    "output.sd": emb,
    "output.ddpm": get_timestep_embedding(ts, 10, flip_sin_to_cos=False, downscale_freq_shift=1),
    "output.odd": get_timestep_embedding(ts, 9, flip_sin_to_cos=True, downscale_freq_shift=1),
    "output.embedding": m(emb, cond),
})
