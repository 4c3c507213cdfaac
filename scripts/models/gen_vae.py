"""Fixtures for AutoencoderKL and AutoencoderTiny (TAESD).

    python scripts/models/gen_vae.py          # tiny fixtures, committed
    python scripts/models/gen_vae.py --full   # SD1.5/SDXL-size random VAEs, into target/full-fixtures/vae/

Each model is written as a diffusers folder with `save_pretrained` (config.json +
diffusion_pytorch_model.safetensors) under tests/fixtures/vae/<name>/, next to an
`io.safetensors` of inputs (`input.*`) and diffusers' outputs (`output.*`), all f32.
Weights are rounded to f16 values (stored as f16) to halve the fixture size; the
references are computed in f32 from exactly those values.
"""
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from common import REPO, fixture_dir, randn, randomize, save, save_pretrained

FULL = "--full" in sys.argv


def rand_image(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def halve(model):
    """Rounds the weights to f16 values (kept in f32 for the references)."""
    for p in model.parameters():
        p.copy_(p.half().float())
    return model


def save_half(model, directory):
    """save_pretrained with f16 storage (the values are f16-exact already)."""
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    model.half()
    save_pretrained(model, directory)
    model.float()


def posterior_outputs(dist, noise, prefix):
    return {
        f"{prefix}.mean": dist.mean,
        f"{prefix}.std": dist.std,
        f"{prefix}.logvar": dist.logvar,
        f"{prefix}.sample": dist.mean + dist.std * noise,
        f"{prefix}.kl": dist.kl(),
    }


def kl_fixture(out, name, seed, **config):
    vae = halve(randomize(AutoencoderKL(**config), seed)).eval()
    d = f"{out}/{name}"
    save_half(vae, d)
    image = rand_image((2, config.get("in_channels", 3), 16, 16), seed + 1)
    dist = vae.encode(image).latent_dist
    noise = randn(dist.mean.shape, seed + 2)
    latents = randn((2, config.get("latent_channels", 4), 8, 8), seed + 3)
    io = {"input.image": image, "input.noise": noise, "input.latents": latents,
          "output.decode": vae.decode(latents).sample}
    io.update(posterior_outputs(dist, noise, "output.encode"))
    # The pipelines' scaling of latents (diffusers' SD3/Flux pipelines:
    # (z - shift) * scale before the transformer; z / scale + shift before decode).
    # With latents_mean/std, the SDXL pipelines' per-channel form instead.
    sf = vae.config.scaling_factor
    if vae.config.latents_mean is not None:
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
        io["output.scaled"] = (dist.mean - mean) * sf / std
        io["output.unscaled"] = latents * std / sf + mean
    else:
        shift = vae.config.shift_factor or 0.0
        io["output.scaled"] = (dist.mean - shift) * sf
        io["output.unscaled"] = latents / sf + shift
    return vae, d, io


def main():
    out = fixture_dir("vae")
    small = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4,
                 sample_size=16)

    # SD1.5-like: layers_per_block 1, quant convs, mid attention.
    vae, d, io = kl_fixture(out, "kl", 100, layers_per_block=1, **small)
    # Slicing: one image at a time (same values as batched: every op is per-sample).
    vae.enable_slicing()
    sdist = vae.encode(io["input.image"]).latent_dist
    io["output.sliced.mean"] = sdist.mean
    io["output.sliced.std"] = sdist.std
    io["output.sliced.decode"] = vae.decode(io["input.latents"]).sample
    vae.disable_slicing()
    # Tiling: sample_size 16 (latent tile 8); a 40x28 image and 20x14 latents
    # are split into overlapping tiles, the last ones partial.
    vae.enable_tiling()
    timage = rand_image((2, 3, 40, 28), 110)
    tdist = vae.encode(timage).latent_dist
    tlatents = randn((2, 4, 20, 14), 111)
    io["input.tiled.image"] = timage
    io["input.tiled.latents"] = tlatents
    io["output.tiled.mean"] = tdist.mean
    io["output.tiled.std"] = tdist.std
    io["output.tiled.decode"] = vae.decode(tlatents).sample
    # (Tiling and slicing together give the same values: the Rust test checks
    # that combination against these outputs.)
    vae.disable_tiling()
    # No tiling below the tile size (16x16 image, 8x8 latents): plain path.
    vae.enable_tiling()
    io["output.tiled_small.decode"] = vae.decode(io["input.latents"]).sample
    vae.disable_tiling()
    save(f"{d}/io.safetensors", io)

    # SDXL-like: layers_per_block 2, scaling 0.13025, force_upcast (the default), and
    # per-channel latents_mean/std (as Playground v2.5's SDXL VAE has).
    vae, d, io = kl_fixture(out, "kl_sdxl", 200, layers_per_block=2, scaling_factor=0.13025,
                            force_upcast=True, latents_mean=[-1.6574, 1.886, -1.383, 2.5155],
                            latents_std=[8.4927, 5.9022, 6.5498, 5.2299], **small)
    save(f"{d}/io.safetensors", io)

    # SD3/Flux-like: shift_factor, no quant convs; also no mid attention (coverage).
    vae, d, io = kl_fixture(out, "kl_flux", 300, layers_per_block=1, scaling_factor=0.3611,
                            shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
                            mid_block_add_attention=False, force_upcast=False, **small)
    save(f"{d}/io.safetensors", io)

    # TAESD: 3 stages (4x downsampling), relu, nearest upsampling. (diffusers'
    # EncoderTiny/DecoderTiny only work with equal widths in every stage.)
    taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                            num_encoder_blocks=(1, 1, 2), num_decoder_blocks=(2, 1, 1), latent_channels=4)
    taesd = halve(randomize(taesd, 400)).eval()
    d = f"{out}/taesd"
    save_half(taesd, d)
    image = rand_image((2, 3, 16, 16), 401)
    latents = randn((2, 4, 4, 4), 402)
    enc = taesd.encode(image).latents
    io = {"input.image": image, "input.latents": latents, "output.encode": enc,
          # Large latents exercise the tanh(x / 3) * 3 clamp.
          "output.decode": taesd.decode(latents).sample,
          "output.decode_large": taesd.decode(latents * 5).sample,
          "output.scale_latents": taesd.scale_latents(enc),
          "output.unscale_latents": taesd.unscale_latents(taesd.scale_latents(enc))}
    taesd.enable_slicing()
    io["output.sliced.decode"] = taesd.decode(latents).sample
    io["output.sliced.encode"] = taesd.encode(image).latents
    save(f"{d}/io.safetensors", io)

    # TAESD tiling: its spatial_scale_factor is 2**out_channels = 8, so four
    # stages; the tile sizes and overlap (512 / 64 / 0.125 in diffusers) are
    # shrunk through the model's attributes so that a 40x32 image is tiled
    # with non-degenerate blend masks.
    taesd = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    taesd = halve(randomize(taesd, 500)).eval()
    d = f"{out}/taesd_tiled"
    save_half(taesd, d)
    taesd.tile_sample_min_size, taesd.tile_latent_min_size, taesd.tile_overlap_factor = 32, 4, 0.5
    image = rand_image((2, 3, 40, 32), 501)
    latents = randn((2, 4, 5, 4), 502)
    taesd.enable_tiling()
    io = {"input.image": image, "input.latents": latents,
          "output.tiled.encode": taesd.encode(image).latents,
          "output.tiled.decode": taesd.decode(latents).sample}
    taesd.disable_tiling()
    io["output.encode"] = taesd.encode(image).latents
    save(f"{d}/io.safetensors", io)


def full():
    """SD1.5/SDXL-size VAEs with random weights (not committed)."""
    root = os.path.join(REPO, "target", "full-fixtures", "vae")
    os.makedirs(root, exist_ok=True)
    sd = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=32, latent_channels=4)
    for name, seed, cfg in [("sd15", 500, dict(sample_size=512, scaling_factor=0.18215)),
                            ("sdxl", 600, dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True))]:
        vae = randomize(AutoencoderKL(**sd, **cfg), seed).eval()
        d = os.path.join(root, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        save_pretrained(vae, d)
        image = rand_image((1, 3, 128, 128), seed + 1)
        latents = randn((1, 4, 16, 16), seed + 2)
        dist = vae.encode(image).latent_dist
        save(os.path.join(d, "io.safetensors"), {"input.image": image, "input.latents": latents,
                                                 "output.encode.mean": dist.mean, "output.encode.std": dist.std,
                                                 "output.decode": vae.decode(latents).sample})


if __name__ == "__main__":
    full() if FULL else main()
