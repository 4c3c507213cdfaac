#!/usr/bin/env python
"""Parity fixtures of crates/diffusion-pipelines: tiny random pipelines in the
diffusers folder layout and the images diffusers 0.42 makes with them.

    /work/.venv/bin/python scripts/pipelines/gen_pipelines.py

Writes crates/diffusion-pipelines/tests/fixtures/:

  pipelines/<name>/         one folder per pipeline (sd1, sd2, sdxl, inpaint, ddpm, ddim)
                            as `save_pretrained` writes it, minus the shared and derived
                            files named by its `assemble.json`
  pipelines/<name>/assemble.json
                            {"shared": {"<dest path in the folder>": "<file under shared/>"},
                             "vocab": ["tokenizer", ...]}: where the shared weights go
                            and which tokenizer folders get vocab.json + merges.txt,
                            rebuilt from crates/diffusion-hub/tests/fixtures/tokenizer/
                            bpe_simple_vocab_16e6.txt.gz (the real 49408-token CLIP
                            vocabulary, too big to commit per pipeline)
  shared/                   the CLIP text encoders, the SD VAE and the unconditional UNet,
                            each used by several pipelines

Every weight file is float16: the references run from these files (loaded as
float32), so Python and Rust compute with the same values.
  inputs/                   init images and masks (PNG, already at the target size)
  cases/<case>.safetensors  noise.<i> (every randn_tensor draw, in call order),
                            latents (caller-supplied, when given), the output
                            (images [N, H, W, 3] from output_type="np", or latents_out)
                            and, for the Stable Diffusion pipelines, latents_final
                            (the last step's latents, before the VAE decode)
  cases.json                the manifest: {"generator", "diffusers", "torch", "cases": [...]},
                            each case with name, pipeline (folder), class (the diffusers
                            pipeline class run), scheduler (class swapped in with
                            `Cls.from_config(pipe.scheduler.config)`, or null: the folder's),
                            scheduler_config (as it ran), kwargs (the call's, JSON; image and
                            mask_image are fixtures-relative PNG paths, latents "latents"
                            names the case tensor), seeds (int, or one per image for a list
                            of generators), noise_draws / noise_shapes / noise_sources (the
                            caller chain of each randn_tensor call), output ("images" or
                            "latents_out"), output_shape, extra_outputs, token_ids
                            ({tokenizer folder: {text: transformers' 77 padded ids}}) and
                            saturated_fraction (output values at exactly 0 or 1)

The references run from the fully assembled folder, loaded with
`DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)` (or the
named pipeline class), so Python sees exactly the files Rust reads.
"""
import gzip
import inspect
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models"))
sys.path.insert(0, os.path.join(HERE, "..", "hub"))

from common import REPO, randomize, write_json  # noqa: E402
from gen_tokenizer_fixtures import bytes_to_unicode, NUM_MERGES, tokenizer_config  # noqa: E402

import diffusers  # noqa: E402
import diffusers.utils.torch_utils as torch_utils  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

OUT = os.path.join(REPO, "crates", "diffusion-pipelines", "tests", "fixtures")
BPE_GZ = os.path.join(REPO, "crates", "diffusion-hub", "tests", "fixtures", "tokenizer", "bpe_simple_vocab_16e6.txt.gz")
# Real photos that need no download: the STM32F3 Discovery board pictures of the Rust
# embedded book, shipped with rustup's documentation.
PHOTO_DIR = os.path.expanduser("~/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/embedded-book/assets")
PHOTOS = {"photo_a": os.path.join(PHOTO_DIR, "f3.jpg"), "photo_b": os.path.join(PHOTO_DIR, "verify.jpeg")}

torch.set_grad_enabled(False)
torch.use_deterministic_algorithms(True)
diffusers.utils.logging.set_verbosity_error()

# ----------------------------------------------------------------------------- configs

# The Hub's scheduler_config.json of each reference repo, verbatim (extra keys included).
SD15_PNDM = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21_DDIM = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_EULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

TEXT_HIDDEN = 8
TEXT_HIDDEN_2 = 8
PROJ_DIM = 8
TIME_EMBED = 8


def clip_config(act, hidden, projection_dim=None):
    kw = dict(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    if projection_dim:
        kw["projection_dim"] = projection_dim
    return CLIPTextConfig(**kw)


def fp16_round(module):
    """Rounds every parameter to float16 and back: the committed weights are fp16."""
    for p in module.parameters():
        p.copy_(p.half().float())
    return module


def text_encoders():
    te = fp16_round(randomize(CLIPTextModel(clip_config("quick_gelu", TEXT_HIDDEN)), 101)).eval()
    te2 = fp16_round(
        randomize(CLIPTextModelWithProjection(clip_config("gelu", TEXT_HIDDEN_2, PROJ_DIM)), 102)
    ).eval()
    return te, te2


def vae(seed, scaling_factor, force_upcast):
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )
    randomize(m, seed)
    # Random decoders saturate; a smaller conv_out keeps the images inside [-1, 1]
    # so that the final clamp does not hide differences.
    m.decoder.conv_out.weight.mul_(0.3)
    m.decoder.conv_out.bias.mul_(0.3)
    # A smaller quant_conv keeps the posterior's log-variance (and so its std) moderate.
    m.quant_conv.weight.mul_(0.5)
    return m.eval()


def unet_sd(seed, in_channels=4, v2=False):
    kw = dict(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
    )
    if v2:
        kw.update(attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True)
    return randomize(UNet2DConditionModel(**kw), seed).eval()


def unet_sdxl(seed):
    m = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TEXT_HIDDEN + TEXT_HIDDEN_2,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=PROJ_DIM + 6 * TIME_EMBED,
    )
    return randomize(m, seed).eval()


def unet_uncond(seed):
    m = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    randomize(m, seed)
    # A random UNet's noise prediction pushes DDPM's clipped x0 to the rails; a
    # smaller conv_out keeps more pixels off the final clamp.
    m.conv_out.weight.mul_(0.3)
    m.conv_out.bias.mul_(0.3)
    return m.eval()


# ----------------------------------------------------------------------------- tokenizers


def write_vocab_files(out_dir):
    """vocab.json + merges.txt as diffusion_hub::tokenizer::write_clip_vocab_files writes them."""
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    byte_vocab = list(bytes_to_unicode().values())
    vocab = byte_vocab + [v + "</w>" for v in byte_vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def write_tokenizer_dir(out_dir, pad):
    """The files a SD repo's tokenizer/ folder commits besides the vocabulary."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = tokenizer_config(pad)
    write_json(os.path.join(out_dir, "tokenizer_config.json"), cfg)
    special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in cfg.items()
               if k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    write_json(os.path.join(out_dir, "special_tokens_map.json"), special)


def load_tokenizer(pad):
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_dir(tmp, pad)
        write_vocab_files(tmp)
        return CLIPTokenizer.from_pretrained(tmp)


# ----------------------------------------------------------------------------- pipelines


def clean(d):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


def save_pipeline(name, pipe, scheduler_config, tokenizers, shared, keep_shared=False):
    """save_pretrained, then swap in the Hub scheduler config, move the shared
    weights out and drop the derived tokenizer files; writes assemble.json."""
    d = os.path.join(OUT, "pipelines", name)
    clean(d)
    pipe.save_pretrained(d, safe_serialization=True)
    for root, _, files in os.walk(d):
        for f in files:
            if f.endswith(".safetensors"):
                to_fp16(os.path.join(root, f))
    if scheduler_config is not None:
        write_json(os.path.join(d, "scheduler", "scheduler_config.json"), scheduler_config)
    for tok, pad in tokenizers.items():
        shutil.rmtree(os.path.join(d, tok))
        write_tokenizer_dir(os.path.join(d, tok), pad)
    for dest, src in shared.items():
        if keep_shared:
            shutil.copyfile(os.path.join(d, dest), os.path.join(OUT, "shared", src))
        os.remove(os.path.join(d, dest))
    # transformers records the save dtype; the text encoder files are float16.
    for dest in shared:
        cfg_path = os.path.join(d, os.path.dirname(dest), "config.json")
        if dest.endswith("/model.safetensors"):
            with open(cfg_path) as f:
                cfg = json.load(f)
            for key in ("dtype", "torch_dtype"):
                if key in cfg:
                    cfg[key] = "float16"
            write_json(cfg_path, cfg)
    write_json(os.path.join(d, "assemble.json"), {"shared": shared, "vocab": sorted(tokenizers)})
    # Drop the version stamps that would make the files differ between library versions.
    for root, _, files in os.walk(d):
        for f in files:
            if f in ("config.json", "model_index.json", "scheduler_config.json"):
                p = os.path.join(root, f)
                with open(p) as fh:
                    cfg = json.load(fh)
                cfg.pop("transformers_version", None)
                write_json(p, cfg)


def to_fp16(path):
    """Rewrites a safetensors file with its float tensors in float16 (halves the
    fixtures; the references load the same files, so no precision is lost between
    Python and Rust)."""
    sd = load_file(path)
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, path,
              metadata={"format": "pt"})


def save_shared(te, te2, sd_vae):
    d = os.path.join(OUT, "shared")
    clean(d)
    for fname, model in (("clip_l_fp16.safetensors", te), ("clip_g_proj_fp16.safetensors", te2)):
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            sd = load_file(os.path.join(tmp, "model.safetensors"))
        save_file({k: v.half().contiguous() for k, v in sd.items()}, os.path.join(d, fname), metadata={"format": "pt"})
    with tempfile.TemporaryDirectory() as tmp:
        sd_vae.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(os.path.join(tmp, "diffusion_pytorch_model.safetensors"), os.path.join(d, "vae_sd.safetensors"))
    to_fp16(os.path.join(d, "vae_sd.safetensors"))


def assemble(name, dest):
    """What the Rust helper does: copy the folder, place the shared files, write vocab files."""
    src = os.path.join(OUT, "pipelines", name)
    shutil.copytree(src, dest)
    with open(os.path.join(src, "assemble.json")) as f:
        spec = json.load(f)
    for where, shared in spec["shared"].items():
        shutil.copyfile(os.path.join(OUT, "shared", shared), os.path.join(dest, where))
    for tok in spec["vocab"]:
        write_vocab_files(os.path.join(dest, tok))
    return dest


def build_pipelines():
    te, te2 = text_encoders()
    te_sd2 = CLIPTextModel(clip_config("gelu", TEXT_HIDDEN))
    te_sd2.load_state_dict(te.state_dict())
    sd_vae = vae(201, 0.18215, False)
    # Same weights (shared file), SDXL's config: its scaling factor and force_upcast.
    xl_vae = AutoencoderKL.from_config({**sd_vae.config, "scaling_factor": 0.13025, "force_upcast": True})
    xl_vae.load_state_dict(sd_vae.state_dict())
    xl_vae.eval()
    save_shared(te, te2, sd_vae)
    tok1 = load_tokenizer("<|endoftext|>")
    tok2 = load_tokenizer("!")
    common_sd = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    te_shared = {"text_encoder/model.safetensors": "clip_l_fp16.safetensors",
                 "vae/diffusion_pytorch_model.safetensors": "vae_sd.safetensors"}

    sd1 = StableDiffusionPipeline(vae=sd_vae, text_encoder=te, tokenizer=tok1, unet=unet_sd(301),
                                  scheduler=PNDMScheduler.from_config(SD15_PNDM), **common_sd)
    save_pipeline("sd1", sd1, SD15_PNDM, {"tokenizer": "<|endoftext|>"}, te_shared)

    sd2 = StableDiffusionPipeline(vae=sd_vae, text_encoder=te_sd2, tokenizer=tok2, unet=unet_sd(302, v2=True),
                                  scheduler=DDIMScheduler.from_config(SD21_DDIM), **common_sd)
    save_pipeline("sd2", sd2, SD21_DDIM, {"tokenizer": "!"}, te_shared)

    inp = StableDiffusionInpaintPipeline(vae=sd_vae, text_encoder=te, tokenizer=tok1,
                                         unet=unet_sd(303, in_channels=9),
                                         scheduler=PNDMScheduler.from_config(SD15_PNDM), **common_sd)
    save_pipeline("inpaint", inp, SD15_PNDM, {"tokenizer": "<|endoftext|>"}, te_shared)

    xl = StableDiffusionXLPipeline(vae=xl_vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
                                   unet=unet_sdxl(304), scheduler=EulerDiscreteScheduler.from_config(SDXL_EULER),
                                   force_zeros_for_empty_prompt=True, add_watermarker=False)
    save_pipeline("sdxl", xl, SDXL_EULER, {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"},
                  {"text_encoder/model.safetensors": "clip_l_fp16.safetensors",
                   "text_encoder_2/model.safetensors": "clip_g_proj_fp16.safetensors",
                   "vae/diffusion_pytorch_model.safetensors": "vae_sd.safetensors"})

    # DDPM and DDIM share one unconditional UNet (shared/unet_uncond.safetensors).
    uncond = unet_uncond(305)
    uncond_shared = {"unet/diffusion_pytorch_model.safetensors": "unet_uncond.safetensors"}
    ddpm = DDPMPipeline(unet=uncond, scheduler=DDPMScheduler())
    save_pipeline("ddpm", ddpm, None, {}, uncond_shared, keep_shared=True)
    ddim = DDIMPipeline(unet=uncond, scheduler=DDIMScheduler())
    save_pipeline("ddim", ddim, None, {}, uncond_shared)


# ----------------------------------------------------------------------------- inputs


def center_crop_resize(path, w, h):
    im = Image.open(path).convert("RGB")
    iw, ih = im.size
    scale = min(iw / w, ih / h)
    cw, ch = round(w * scale), round(h * scale)
    left, top = (iw - cw) // 2, (ih - ch) // 2
    return im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.LANCZOS)


def mask_array(w, h, kind):
    """Binary-ish masks with a gray edge: a rectangle (kind 0) or a disc (kind 1)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        inside = (xx >= w * 0.25) & (xx < w * 0.7) & (yy >= h * 0.3) & (yy < h * 0.8)
        edge = ((xx >= w * 0.25 - 1) & (xx < w * 0.7 + 1) & (yy >= h * 0.3 - 1) & (yy < h * 0.8 + 1)) & ~inside
        m = np.where(inside, 255, np.where(edge, 128, 0))
    else:
        r = np.sqrt((xx - w * 0.45) ** 2 + (yy - h * 0.5) ** 2)
        m = np.clip((h * 0.3 - r) * 96 + 128, 0, 255)
    return m.astype(np.uint8)


def write_inputs():
    """Init images (center crop + Lanczos resize of the photos, to the exact sizes
    the cases use, so the pipelines do not resize) and masks. Without the photos
    (another machine), the committed PNGs are kept."""
    d = os.path.join(OUT, "inputs")
    if not all(os.path.exists(p) for p in PHOTOS.values()):
        if os.path.isdir(d):
            print(f"photos not found under {PHOTO_DIR}: keeping the committed inputs/")
            return
        sys.exit(f"photos not found under {PHOTO_DIR} and no committed inputs/")
    clean(d)
    for name, src in PHOTOS.items():
        for w, h in ((32, 32), (48, 32)):
            center_crop_resize(src, w, h).save(os.path.join(d, f"{name}_{w}x{h}.png"))
    for w, h in ((32, 32), (48, 32)):
        Image.fromarray(mask_array(w, h, 0), mode="L").save(os.path.join(d, f"mask_rect_{w}x{h}_L.png"))
        m = mask_array(w, h, 1)
        Image.fromarray(np.stack([m, m // 2 + 64, m], axis=-1), mode="RGB").save(
            os.path.join(d, f"mask_disc_{w}x{h}_RGB.png"))


# ----------------------------------------------------------------------------- randn recording

ORIGINAL_RANDN = torch_utils.randn_tensor
DRAWS = []


def recording_randn(shape, *args, **kwargs):
    t = ORIGINAL_RANDN(shape, *args, **kwargs)
    # The calling chain (innermost first, up to the pipeline's __call__) says which
    # step of the pipeline drew it.
    chain = []
    f = sys._getframe(1)
    while f is not None and f.f_code.co_name != "__call__":
        chain.append(f.f_code.co_name)
        f = f.f_back
    DRAWS.append((t.detach().clone().float(), ".".join(reversed(chain))))
    return t


def install_recorder():
    """Points every loaded diffusers module's `randn_tensor` at the recorder."""
    DRAWS.clear()
    n = 0
    for name, mod in list(sys.modules.items()):
        if name.startswith("diffusers") and mod is not None and getattr(mod, "randn_tensor", None) in (
            ORIGINAL_RANDN, recording_randn):
            setattr(mod, "randn_tensor", recording_randn)
            n += 1
    assert n > 5, n


# ----------------------------------------------------------------------------- cases

PROMPTS = {
    "cat": "a photo of a cat",
    "astro": "an astronaut riding a horse on mars, highly detailed, 8k",
    "cafe": "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u2014 na\u00efve r\u00e9sum\u00e9! (oil painting), 50% off?",
    "long": ("a breathtaking ultra detailed matte painting of an ancient overgrown city at dawn, towering "
             "marble statues, crumbling aqueducts, lush vines, soft volumetric light rays, mist rolling over "
             "the river, reflections, cinematic composition, by greg rutkowski, trending on artstation, 8k, "
             "octane render, masterpiece, best quality"),
    "neg": "blurry, low quality, watermark",
    "dog": "a dog on a skateboard",
}

SCHED = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "pndm": PNDMScheduler,
    "heun": HeunDiscreteScheduler,
}

CLASSES = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionImg2ImgPipeline": StableDiffusionImg2ImgPipeline,
    "StableDiffusionInpaintPipeline": StableDiffusionInpaintPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
    "StableDiffusionXLImg2ImgPipeline": StableDiffusionXLImg2ImgPipeline,
    "DDPMPipeline": DDPMPipeline,
    "DDIMPipeline": DDIMPipeline,
}


def C(name, pipeline, cls, sched, seed, draws, **kwargs):
    return dict(name=name, pipeline=pipeline, cls=cls, sched=sched, seed=seed, draws=draws, kwargs=kwargs)


def cases():
    P = PROMPTS
    S = "StableDiffusionPipeline"
    I2I = "StableDiffusionImg2ImgPipeline"
    INP = "StableDiffusionInpaintPipeline"
    XL = "StableDiffusionXLPipeline"
    XLI = "StableDiffusionXLImg2ImgPipeline"
    base = dict(num_inference_steps=6, height=32, width=32)
    img = "inputs/photo_a_32x32.png"
    img_w = "inputs/photo_b_48x32.png"
    mask_l = "inputs/mask_rect_32x32_L.png"
    mask_rgb_w = "inputs/mask_disc_48x32_RGB.png"
    out = [
        # ---- sd1 txt2img (draws: 1 initial noise; + 1 per step for ancestral samplers)
        C("sd1_pndm", "sd1", S, None, 1, 1, prompt=P["cat"], negative_prompt=P["neg"], guidance_scale=7.5, **base),
        C("sd1_ddim_batch2", "sd1", S, "ddim", 2, 1, prompt=[P["cat"], P["cafe"]],
          negative_prompt=[P["neg"], ""], guidance_scale=7.5, eta=0.0, **base),
        C("sd1_euler_nipp2", "sd1", S, "euler", 3, 1, prompt=P["astro"], num_images_per_prompt=2,
          guidance_scale=5.0, **base),
        C("sd1_dpmpp_2m_rescale", "sd1", S, "dpmpp_2m", 4, 1, prompt=P["long"], negative_prompt="",
          guidance_scale=7.0, guidance_rescale=0.7, **base),
        C("sd1_unipc_clip_skip", "sd1", S, "unipc", 5, 1, prompt=P["cafe"], guidance_scale=6.0, clip_skip=1,
          **base),
        C("sd1_ddim_no_cfg", "sd1", S, "ddim", 6, 1, prompt=P["cat"], guidance_scale=1.0, **base),
        C("sd1_euler_latents", "sd1", S, "euler", 7, 0, prompt=P["dog"], guidance_scale=7.5,
          latents="latents", **base),
        C("sd1_dpmpp_2m_gen_list", "sd1", S, "dpmpp_2m", [8, 9], 1, prompt=[P["cat"], P["dog"]],
          guidance_scale=7.5, **base),
        C("sd1_pndm_nonsquare", "sd1", S, None, 10, 1, prompt=P["astro"], guidance_scale=7.5,
          num_inference_steps=6, height=32, width=48),
        C("sd1_euler_timesteps", "sd1", S, "euler", 11, 1, prompt=P["cat"], guidance_scale=7.5,
          timesteps=[999, 850, 700, 500, 300, 100], height=32, width=32),
        C("sd1_euler_a", "sd1", S, "euler_a", 12, 1 + 6, prompt=P["dog"], negative_prompt=P["neg"],
          guidance_scale=7.5, **base),
        C("sd1_ddim_latent_out", "sd1", S, "ddim", 13, 1, prompt=P["cat"], guidance_scale=7.5,
          output_type="latent", **base),
        # ---- sd1 img2img (draws: VAE posterior sample, then the noise)
        C("sd1_i2i_ddim", "sd1", I2I, "ddim", 21, 2, prompt=P["cat"], image=img, strength=0.6,
          guidance_scale=7.5, num_inference_steps=10),
        C("sd1_i2i_euler", "sd1", I2I, "euler", 22, 2, prompt=P["astro"], negative_prompt=P["neg"], image=img_w,
          strength=0.8, guidance_scale=7.5, num_inference_steps=10),
        C("sd1_i2i_dpmpp_2m_nipp2", "sd1", I2I, "dpmpp_2m", 23, 2, prompt=P["dog"], image=img, strength=0.8,
          guidance_scale=7.5, num_images_per_prompt=2, num_inference_steps=10),
        C("sd1_i2i_euler_gen_list", "sd1", I2I, "euler", [24, 25], 3, prompt=[P["cat"], P["cafe"]],
          image=img, strength=0.6, guidance_scale=7.5, num_inference_steps=10),
        # order 2: 2n - 1 timesteps, the start step counts in steps, not timesteps
        C("sd1_i2i_heun", "sd1", I2I, "heun", 26, 2, prompt=P["dog"], image=img, strength=0.5,
          guidance_scale=7.5, num_inference_steps=5),
        C("sd1_i2i_unipc", "sd1", I2I, "unipc", 27, 2, prompt=P["cafe"], image=img_w, strength=0.7,
          guidance_scale=7.5, num_inference_steps=8),
        C("sd1_i2i_pndm", "sd1", I2I, None, 28, 2, prompt=P["cat"], negative_prompt=P["neg"], image=img,
          strength=0.7, guidance_scale=7.5, num_inference_steps=8),
        # ---- sd1 legacy inpaint (4-channel UNet)
        C("sd1_inpaint_legacy_ddim", "sd1", INP, "ddim", 31, 3, prompt=P["cat"], image=img, mask_image=mask_l,
          strength=1.0, guidance_scale=7.5, num_inference_steps=8, height=32, width=32),
        C("sd1_inpaint_legacy_euler", "sd1", INP, "euler", 32, 3, prompt=P["dog"], image=img_w,
          mask_image=mask_rgb_w, strength=0.75, guidance_scale=7.5, num_inference_steps=8, height=32, width=48),
        C("sd1_inpaint_legacy_dpmpp_2m", "sd1", INP, "dpmpp_2m", 33, 3, prompt=P["cafe"], image=img,
          mask_image=mask_l, strength=0.8, guidance_scale=7.5, num_inference_steps=8, height=32, width=32),
        # ---- 9-channel inpaint
        C("inpaint_ddim", "inpaint", INP, "ddim", 41, 2, prompt=P["cat"], negative_prompt=P["neg"], image=img,
          mask_image=mask_l, strength=1.0, guidance_scale=7.5, num_inference_steps=8, height=32, width=32),
        C("inpaint_euler", "inpaint", INP, "euler", 42, 3, prompt=P["astro"], image=img_w, mask_image=mask_rgb_w,
          strength=0.8, guidance_scale=7.5, num_inference_steps=8, height=32, width=48),
        C("inpaint_unipc", "inpaint", INP, "unipc", 43, 3, prompt=P["cafe"], image=img, mask_image=mask_l,
          strength=0.8, guidance_scale=7.5, num_inference_steps=8, height=32, width=32),
        C("inpaint_pndm_no_cfg", "inpaint", INP, None, 44, 2, prompt=P["dog"], image=img, mask_image=mask_l,
          strength=1.0, guidance_scale=1.0, num_inference_steps=8, height=32, width=32),
        C("inpaint_dpmpp_2m", "inpaint", INP, "dpmpp_2m", 45, 3, prompt=P["cat"], negative_prompt=P["neg"],
          image=img_w, mask_image=mask_rgb_w, strength=0.9, guidance_scale=7.5, num_inference_steps=8,
          height=32, width=48),
        # ---- sd2 (v-prediction)
        C("sd2_ddim", "sd2", S, None, 51, 1, prompt=P["cat"], negative_prompt=P["neg"], guidance_scale=7.5, **base),
        C("sd2_euler", "sd2", S, "euler", 52, 1, prompt=P["cafe"], guidance_scale=7.5, num_inference_steps=6,
          height=32, width=48),
        C("sd2_dpmpp_2m", "sd2", S, "dpmpp_2m", 53, 1, prompt=[P["astro"], P["long"]], negative_prompt=["", P["neg"]],
          guidance_scale=7.5, **base),
        # ---- sdxl
        C("sdxl_euler", "sdxl", XL, None, 61, 1, prompt=P["cat"], negative_prompt=P["neg"], guidance_scale=5.0, **base),
        C("sdxl_euler_prompt2", "sdxl", XL, None, 62, 1, prompt=P["astro"], prompt_2=P["cafe"],
          negative_prompt=P["neg"], negative_prompt_2="ugly", guidance_scale=5.0, **base),
        C("sdxl_dpmpp_2m_sizes", "sdxl", XL, "dpmpp_2m", 63, 1, prompt=P["dog"], guidance_scale=5.0,
          original_size=[64, 96], crops_coords_top_left=[4, 8], target_size=[32, 48],
          num_inference_steps=6, height=32, width=48),
        C("sdxl_unipc_denoising_end", "sdxl", XL, "unipc", 64, 1, prompt=P["cafe"], negative_prompt=P["neg"],
          guidance_scale=5.0, denoising_end=0.8, **base),
        C("sdxl_euler_empty_neg", "sdxl", XL, None, 65, 1, prompt=[P["cat"], P["long"]], negative_prompt="",
          guidance_scale=5.0, **base),
        C("sdxl_euler_no_cfg_nipp2", "sdxl", XL, None, 66, 1, prompt=P["dog"], guidance_scale=1.0,
          num_images_per_prompt=2, **base),
        # ---- sdxl img2img
        C("sdxl_i2i_euler", "sdxl", XLI, None, 71, 2, prompt=P["cat"], negative_prompt=P["neg"], image=img,
          strength=0.5, guidance_scale=5.0, num_inference_steps=10),
        C("sdxl_i2i_ddim", "sdxl", XLI, "ddim", 72, 2, prompt=P["astro"], image=img_w, strength=0.5,
          guidance_scale=5.0, num_inference_steps=10),
        # ---- unconditional
        C("ddpm_batch2", "ddpm", "DDPMPipeline", None, 81, 1 + 9, batch_size=2, num_inference_steps=10),
        C("ddim_batch2", "ddim", "DDIMPipeline", None, 82, 1, batch_size=2, num_inference_steps=10, eta=0.0),
        C("ddim_eta1", "ddim", "DDIMPipeline", None, 83, 1 + 10, batch_size=1, num_inference_steps=10, eta=1.0),
    ]
    return out


def generators(seed):
    if isinstance(seed, list):
        return [torch.Generator().manual_seed(s) for s in seed]
    return torch.Generator().manual_seed(seed)


def prompt_texts(kw):
    texts = []
    for k in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2"):
        v = kw.get(k)
        if v is None:
            continue
        for t in v if isinstance(v, list) else [v]:
            if t not in texts:
                texts.append(t)
    return texts


def alias_text_model(pipe):
    """diffusers 0.42's clip_skip path calls `text_encoder.text_model.final_layer_norm`,
    which transformers 5's flat CLIPTextModel does not have. A plain (non-module)
    alias restores what that line means without changing the model."""
    from types import SimpleNamespace

    te = getattr(pipe, "text_encoder", None)
    if te is not None and not hasattr(te, "text_model"):
        object.__setattr__(te, "text_model", SimpleNamespace(final_layer_norm=te.final_layer_norm))


def run_case(case, folders, tokenizers, loaded):
    kw = dict(case["kwargs"])
    cls = CLASSES[case["cls"]]
    key = (case["pipeline"], case["cls"])
    if key not in loaded:
        loaded[key] = cls.from_pretrained(folders[case["pipeline"]], torch_dtype=torch.float32)
        alias_text_model(loaded[key])
    pipe = loaded[key]
    # Restore the repo's scheduler, then swap as a user would.
    repo = loaded.setdefault(("sched", key), pipe.scheduler)
    pipe.scheduler = repo if case["sched"] is None else SCHED[case["sched"]].from_config(repo.config)
    call = dict(kw)
    tensors = {}
    if "image" in call:
        call["image"] = Image.open(os.path.join(OUT, call["image"]))
    if "mask_image" in call:
        call["mask_image"] = Image.open(os.path.join(OUT, call["mask_image"]))
    if call.get("latents") == "latents":
        n = len(call["prompt"]) if isinstance(call["prompt"], list) else 1
        n *= call.get("num_images_per_prompt", 1)
        h, w = call["height"] // 2, call["width"] // 2
        lat = torch.randn((n, 4, h, w), generator=torch.Generator().manual_seed(1000 + case["seed"]))
        tensors["latents"] = lat
        call["latents"] = lat
    for k in ("original_size", "crops_coords_top_left", "target_size"):
        if k in call:
            call[k] = tuple(call[k])
    output_type = call.pop("output_type", "np")
    # The last step's latents (after the legacy inpaint blend), before the VAE
    # decodes them: the decoder ends in a GroupNorm, so it would hide an error in
    # the latents' scale; the tests compare these as well as the images.
    final = {}
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        def keep_latents(_pipe, _i, _t, kwargs):
            final["latents"] = kwargs["latents"].detach().clone()
            return {}

        call["callback_on_step_end"] = keep_latents
        call["callback_on_step_end_tensor_inputs"] = ["latents"]
    install_recorder()
    res = pipe(**call, generator=generators(case["seed"]), output_type=output_type)
    if "latents" in final:
        tensors["latents_final"] = final["latents"]
    draws = list(DRAWS)
    assert len(draws) == case["draws"], (case["name"], len(draws), case["draws"])
    for i, (t, _) in enumerate(draws):
        tensors[f"noise.{i}"] = t
    if output_type == "latent":
        out_key = "latents_out"
        tensors[out_key] = res.images if torch.is_tensor(res.images) else torch.from_numpy(res.images)
        sat = None
    else:
        out_key = "images"
        arr = np.asarray(res.images, dtype=np.float32)
        tensors[out_key] = torch.from_numpy(arr)
        sat = float(((arr <= 0.0) | (arr >= 1.0)).mean())
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()},
              os.path.join(OUT, "cases", case["name"] + ".safetensors"))
    token_ids = {}
    for tok_name in tokenizers.get(case["pipeline"], []):
        tok = getattr(pipe, tok_name)
        token_ids[tok_name] = {
            t: tok(t, padding="max_length", max_length=77, truncation=True)["input_ids"] for t in prompt_texts(kw)
        }
    entry = {
        "name": case["name"],
        "pipeline": case["pipeline"],
        "class": case["cls"],
        "scheduler": None if case["sched"] is None else SCHED[case["sched"]].__name__,
        # The config the scheduler ran with. diffusers' from_config carries over only
        # the keys the repo's JSON sets (`_use_default_values` lists the rest, which
        # the new class fills with its own defaults): e.g. Euler built from SD1.5's
        # PNDM config gets timestep_spacing "linspace", DDIM gets "leading".
        # JSON has no infinities: DPM-Solver's lambda_min_clipped = -inf is written "-inf".
        "scheduler_config": {k: (str(v) if isinstance(v, float) and not np.isfinite(v) else v)
                             for k, v in pipe.scheduler.config.items()
                             if k not in ("_use_default_values", "_diffusers_version")},
        "kwargs": kw,
        "seeds": case["seed"],
        "noise_draws": len(draws),
        "noise_shapes": [list(t.shape) for t, _ in draws],
        "noise_sources": [src for _, src in draws],
        "output": out_key,
        "output_shape": list(tensors[out_key].shape),
        "extra_outputs": sorted(k for k in tensors if k == "latents_final"),
        "token_ids": token_ids,
    }
    if sat is not None:
        entry["saturated_fraction"] = round(sat, 6)
    return entry


def main():
    torch.manual_seed(0)
    clean(os.path.join(OUT, "pipelines"))
    build_pipelines()
    write_inputs()
    clean(os.path.join(OUT, "cases"))
    tokenizers = {"sd1": ["tokenizer"], "sd2": ["tokenizer"], "inpaint": ["tokenizer"],
                  "sdxl": ["tokenizer", "tokenizer_2"]}
    entries = []
    loaded = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {n: assemble(n, os.path.join(tmp, n)) for n in ("sd1", "sd2", "sdxl", "inpaint", "ddpm", "ddim")}
        for case in cases():
            e = run_case(case, folders, tokenizers, loaded)
            print(f"{e['name']:32s} draws={e['noise_draws']:2d} out={e['output_shape']} "
                  f"saturated={e.get('saturated_fraction')} {e['noise_sources'][:4]}")
            entries.append(e)
    doc = {
        "generator": "scripts/pipelines/gen_pipelines.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__.split("+")[0],
        "cases": entries,
    }
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=True, allow_nan=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    sats = [e["saturated_fraction"] for e in entries if "saturated_fraction" in e]
    print(f"{len(entries)} cases; saturated fraction max {max(sats):.4f} mean {np.mean(sats):.4f}; "
          f"fixtures total {total} bytes")


if __name__ == "__main__":
    main()
