#!/usr/bin/env python
"""ControlNet and T2I-Adapter parity fixtures of crates/diffusion-pipelines (tests/controlnet.rs):
tiny random ControlNets built from the tiny SD1 and SDXL pipelines' UNets
(`ControlNetModel.from_unet`), and what diffusers 0.42 generates with them.

    python3 scripts/pipelines/gen_controlnet.py

Writes crates/diffusion-pipelines/tests/fixtures/controlnet/:

  nets/<name>/        ControlNetModel folders (config.json + fp16 safetensors)
      sd1_a           from the SD1 UNet, conditioning embedding (4, 8) (the tiny VAE
                      halves the size once)
      sd1_bgr         another draw, `controlnet_conditioning_channel_order` "bgr"
      sd1_pool        `global_pool_conditions` (as the shuffle ControlNet)
      sdxl_a          from the SDXL UNet (`addition_embed_type` "text_time")
      sd2_a           from the SD 2.x UNet (linear projections, upcast attention, per-block heads)
  adapters/<name>/    T2IAdapter folders: sd1_full, sd1_full_b (full_adapter, channels (8, 16),
                      unshuffle 2), sdxl_xl (full_adapter_xl, (8, 16), unshuffle 4), light
                      (light_adapter, (8, 16), unshuffle 2; model-level only: the tiny UNet has
                      two levels, the light adapter gives three maps)
  adapter_outputs.safetensors   each adapter's features for one random input
                      (`<name>.input`, `<name>.{i}`; 20×12 pixels, so that pooling meets odd sizes)
  control_a.png, control_b.png   32×32 control images (lines and colour blocks)
  cases/<case>.safetensors  latents (when the call gives them), latents_final (the
                      last step's) and images (`output_type="np"`)
  cases.json          {"cases": [{name, pipeline, class, nets, kwargs, seed}]}
  canny/              a photo (128×96 RGB, and its gray version) and OpenCV's
                      `cv2.Canny` of it at three threshold pairs (`edges_<input>_<low>_<high>.png`),
                      which `diffusion_pipelines::preprocess::canny` must reproduce; written only
                      where opencv-python is installed (else the committed files stay)
  single_file.json    an original (LDM) ControlNet checkpoint described by its keys and
                      shapes, with values from an integer formula (`ldm_value`, which the
                      Rust test recomputes, so no large file is committed), and the sha256 of
                      every fp16 tensor diffusers' `ControlNetModel.from_single_file` makes
                      of it, by diffusers key; the tiny net has SD's standard conditioning
                      embedding (16, 32, 96, 256), the only one diffusers' converter maps

Every parameter is redrawn, the zero convolutions included (zeros would make
every residual vanish and the test unable to fail). The cases cover one net,
two nets with their own scales and guidance windows, guess mode, a
global-pool net, img2img and inpainting, on SD1 and SDXL.
"""
import inspect
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "models"))
import gen_pipelines as gp  # noqa: E402
from common import randomize  # noqa: E402

from diffusers import (  # noqa: E402
    ControlNetModel,
    MultiAdapter,
    StableDiffusionAdapterPipeline,
    StableDiffusionXLAdapterPipeline,
    T2IAdapter,
    DiffusionPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
)

OUT = os.path.join(gp.OUT, "controlnet")
torch.set_grad_enabled(False)

CLASSES = {
    "StableDiffusionControlNetPipeline": StableDiffusionControlNetPipeline,
    "StableDiffusionControlNetImg2ImgPipeline": StableDiffusionControlNetImg2ImgPipeline,
    "StableDiffusionControlNetInpaintPipeline": StableDiffusionControlNetInpaintPipeline,
    "StableDiffusionXLControlNetPipeline": StableDiffusionXLControlNetPipeline,
    "StableDiffusionXLControlNetImg2ImgPipeline": StableDiffusionXLControlNetImg2ImgPipeline,
    "StableDiffusionXLControlNetInpaintPipeline": StableDiffusionXLControlNetInpaintPipeline,
    "StableDiffusionAdapterPipeline": StableDiffusionAdapterPipeline,
    "StableDiffusionXLAdapterPipeline": StableDiffusionXLAdapterPipeline,
}


def make_adapter(seed, **kw):
    a = T2IAdapter(in_channels=3, num_res_blocks=1, **kw)
    randomize(a, seed)
    return gp.fp16_round(a).eval()


def save_model(model, d):
    model.save_pretrained(d, safe_serialization=True)
    gp.to_fp16(os.path.join(d, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("_diffusers_version", None)
    gp.write_json(os.path.join(d, "config.json"), cfg)


def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    gp.alias_text_model(pipe)
    return pipe


def make_net(unet, seed, **kw):
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    if kw:
        net = ControlNetModel.from_config({**net.config, **kw})
    randomize(net, seed)
    # Residuals of random zero-convolutions would swamp the UNet's own states.
    for name, p in net.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            p.mul_(0.3)
    return gp.fp16_round(net).eval()


RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                 "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def to_ldm(key, per):
    """diffusers ControlNet key → the original ControlNet's (inverse of
    diffusers' `convert_controlnet_checkpoint`)."""
    import re
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "controlnet_mid_block": "middle_block_out.0",
             "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14"}
    stem, leaf = key.rsplit(".", 1)
    if stem in fixed:
        return f"{fixed[stem]}.{leaf}"
    m = re.match(r"controlnet_cond_embedding\.blocks\.(\d+)$", stem)
    if m:
        return f"input_hint_block.{2 * int(m[1]) + 2}.{leaf}"
    m = re.match(r"controlnet_down_blocks\.(\d+)$", stem)
    if m:
        return f"zero_convs.{m[1]}.0.{leaf}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv$", stem)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{leaf}"
    m = re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)$", stem)
    if m:
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.0.{RESNET_TO_LDM[m[3]]}.{leaf}"
    m = re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$", key)
    if m:
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
    m = re.match(r"mid_block\.resnets\.(\d+)\.(\w+)$", stem)
    if m:
        return f"middle_block.{2 * int(m[1])}.{RESNET_TO_LDM[m[2]]}.{leaf}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)$", key)
    if m:
        return f"middle_block.1.{m[1]}"
    raise KeyError(key)


def ldm_value(key, n):
    """n fp16-exact values from an integer formula of the key and the index
    (the Rust test computes the same): k / 4096, |k| <= 1000."""
    h = 0
    for b in key.encode():
        h = (h * 31 + b) % 1000003
    idx = np.arange(n, dtype=np.int64)
    k = (idx * 7919 + h) % 2001 - 1000
    return (k / 4096.0).astype(np.float32)


def single_file_fixture(unet):
    import hashlib
    net = ControlNetModel.from_unet(unet)  # SD's embedding (16, 32, 96, 256)
    per = net.config.layers_per_block + 1
    with tempfile.TemporaryDirectory() as tmp:
        cfg_dir = os.path.join(tmp, "config")
        net.save_pretrained(cfg_dir)
        ldm = {}
        for k, v in net.state_dict().items():
            lk = to_ldm(k, per)
            ldm[lk] = torch.from_numpy(ldm_value(lk, v.numel()).reshape(v.shape)).half()
        path = os.path.join(tmp, "control_tiny.safetensors")
        save_file(ldm, path)
        conv = ControlNetModel.from_single_file(path, config=cfg_dir, torch_dtype=torch.float16)
        sd = conv.state_dict()
    assert len(sd) == len(ldm)
    gp.write_json(os.path.join(OUT, "single_file.json"), {
        "checkpoint": {k: list(v.shape) for k, v in sorted(ldm.items())},
        "sha256": {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in sorted(sd.items())},
        "config": {k: conv.config[k] for k in ("block_out_channels", "down_block_types", "layers_per_block",
                                                "cross_attention_dim", "conditioning_embedding_out_channels",
                                                "conditioning_channels", "in_channels", "use_linear_projection")},
    })


def canny_fixture():
    try:
        import cv2
    except ImportError:
        print("cv2 not installed: keeping the committed canny/ fixtures")
        return
    d = os.path.join(OUT, "canny")
    os.makedirs(d, exist_ok=True)
    rgb = gp.center_crop_resize(gp.PHOTOS["photo_a"], 128, 96)
    rgb.save(os.path.join(d, "rgb.png"))
    rgb.convert("L").save(os.path.join(d, "gray.png"))
    for name, low, high in (("rgb", 100, 200), ("rgb", 40, 90), ("gray", 150, 60)):
        img = np.array(Image.open(os.path.join(d, f"{name}.png")))
        Image.fromarray(cv2.Canny(img, low, high)).save(os.path.join(d, f"edges_{name}_{low}_{high}.png"))


def control_images():
    """A line drawing and colour blocks: channel order and pooling both show."""
    yy, xx = np.mgrid[0:32, 0:32]
    a = np.zeros((32, 32, 3), np.uint8)
    a[(xx - 16) ** 2 + (yy - 15) ** 2 < 90] = (255, 40, 0)
    a[np.abs(xx - yy) < 2] = (255, 255, 255)
    a[4:10, 20:30] = (0, 90, 255)
    b = np.zeros((32, 32, 3), np.uint8)
    b[:, ::5] = (0, 255, 128)
    b[20:28, 3:14] = (200, 200, 0)
    Image.fromarray(a).save(os.path.join(OUT, "control_a.png"))
    Image.fromarray(b).save(os.path.join(OUT, "control_b.png"))


def run(pipe, kw, seed):
    final = {}

    def keep(_p, _i, _t, k):
        final["latents"] = k["latents"].detach().clone()
        return {}

    call = dict(kw)
    tensors = {}
    for key in ("image", "control_image", "mask_image"):
        v = call.get(key)
        if isinstance(v, list):
            call[key] = [Image.open(os.path.join(gp.OUT, p)) for p in v]
        elif v is not None:
            call[key] = Image.open(os.path.join(gp.OUT, v))
    if call.pop("latents", None) == "latents":
        n = len(call["prompt"]) if isinstance(call["prompt"], list) else 1
        n *= call.get("num_images_per_prompt", 1)
        lat = torch.randn((n, 4, 16, 16), generator=torch.Generator().manual_seed(1000 + seed))
        tensors["latents"] = lat
        call["latents"] = lat
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        call.update(callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
    else:
        # The adapter pipelines still have the old per-step callback.
        call.update(callback=lambda _i, _t, lat: final.__setitem__("latents", lat.detach().clone()),
                    callback_steps=1)
    res = pipe(**call, generator=torch.Generator().manual_seed(seed), output_type="np")
    tensors["latents_final"] = final["latents"]
    tensors["images"] = torch.from_numpy(np.asarray(res.images, dtype=np.float32))
    return tensors


def main():
    keep = os.path.join(OUT, "canny")
    saved = None
    if os.path.isdir(keep):
        saved = tempfile.mkdtemp()
        shutil.copytree(keep, os.path.join(saved, "canny"))
    gp.clean(OUT)
    if saved:
        shutil.copytree(os.path.join(saved, "canny"), keep)
        shutil.rmtree(saved)
    os.makedirs(os.path.join(OUT, "cases"))
    canny_fixture()
    control_images()
    rel = lambda p: os.path.relpath(p, gp.OUT)  # noqa: E731
    ca, cb = rel(os.path.join(OUT, "control_a.png")), rel(os.path.join(OUT, "control_b.png"))
    photo, mask = "inputs/photo_a_32x32.png", "inputs/mask_rect_32x32_L.png"
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {n: gp.assemble(n, os.path.join(tmp, n)) for n in ("sd1", "sd2", "inpaint", "sdxl")}
        base = {n: load(f) for n, f in folders.items()}
        nets = {
            "sd1_a": make_net(base["sd1"].unet, 401),
            "sd1_bgr": make_net(base["sd1"].unet, 402, controlnet_conditioning_channel_order="bgr"),
            "sd1_pool": make_net(base["sd1"].unet, 403, global_pool_conditions=True),
            "sdxl_a": make_net(base["sdxl"].unet, 404),
            "sd2_a": make_net(base["sd2"].unet, 405),
        }
        for name, net in nets.items():
            save_model(net, os.path.join(OUT, "nets", name))
        single_file_fixture(base["sd1"].unet)
        adapters = {
            "sd1_full": make_adapter(501, channels=[8, 16], downscale_factor=2, adapter_type="full_adapter"),
            "sd1_full_b": make_adapter(502, channels=[8, 16], downscale_factor=2, adapter_type="full_adapter"),
            "sdxl_xl": make_adapter(503, channels=[8, 16], downscale_factor=4, adapter_type="full_adapter_xl"),
            "light": make_adapter(504, channels=[8, 16], downscale_factor=2, adapter_type="light_adapter"),
        }
        outputs = {}
        for name, a in adapters.items():
            save_model(a, os.path.join(OUT, "adapters", name))
            x = torch.rand(1, 3, 20, 12, generator=torch.Generator().manual_seed(600))
            outputs[f"{name}.input"] = x
            for i, f in enumerate(a(x)):
                outputs[f"{name}.{i}"] = f
        save_file({k: v.float().contiguous() for k, v in outputs.items()},
                  os.path.join(OUT, "adapter_outputs.safetensors"))

        sd = {"prompt": "a dog on a skateboard", "negative_prompt": "blurry", "num_inference_steps": 4,
              "guidance_scale": 7.5}
        xl = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "num_inference_steps": 4,
              "guidance_scale": 5.0}
        T2I, I2I, INP = "StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline", \
            "StableDiffusionControlNetInpaintPipeline"
        XT2I, XI2I, XINP = (c.replace("StableDiffusion", "StableDiffusionXL") for c in (T2I, I2I, INP))
        specs = [
            ("sd1_one", "sd1", T2I, ["sd1_a"], 1,
             {**sd, "image": ca, "latents": "latents", "controlnet_conditioning_scale": 0.8}),
            ("sd1_two", "sd1", T2I, ["sd1_a", "sd1_bgr"], 2,
             {**sd, "image": [ca, cb], "latents": "latents", "controlnet_conditioning_scale": [0.6, 1.3],
              "control_guidance_start": [0.0, 0.3], "control_guidance_end": [0.8, 1.0]}),
            ("sd1_guess", "sd1", T2I, ["sd1_a"], 3,
             {**sd, "image": ca, "latents": "latents", "guess_mode": True}),
            ("sd1_pool", "sd1", T2I, ["sd1_pool"], 4,
             {**sd, "image": cb, "latents": "latents", "controlnet_conditioning_scale": 1.5}),
            ("sd1_batch", "sd1", T2I, ["sd1_a"], 16,
             {**sd, "prompt": ["a dog on a skateboard", "a red house"], "negative_prompt": ["blurry", "dark"],
              "image": [ca, cb], "latents": "latents", "num_images_per_prompt": 2}),
            ("sd1_window", "sd1", T2I, ["sd1_bgr"], 5,
             {**sd, "image": cb, "latents": "latents", "control_guidance_start": 0.25,
              "control_guidance_end": 0.75, "num_images_per_prompt": 1}),
            ("sd1_img2img", "sd1", I2I, ["sd1_a"], 6,
             {**sd, "image": photo, "control_image": ca, "strength": 0.75}),
            ("sd1_inpaint", "inpaint", INP, ["sd1_a"], 7,
             {**sd, "image": photo, "mask_image": mask, "control_image": ca, "strength": 1.0}),
            ("sd1_inpaint_legacy", "sd1", INP, ["sd1_a"], 8,
             {**sd, "image": photo, "mask_image": mask, "control_image": ca, "strength": 0.8}),
            ("sd2_one", "sd2", T2I, ["sd2_a"], 17,
             {**sd, "image": ca, "latents": "latents", "controlnet_conditioning_scale": 0.9}),
            ("sdxl_one", "sdxl", XT2I, ["sdxl_a"], 9,
             {**xl, "image": ca, "latents": "latents", "controlnet_conditioning_scale": 0.7}),
            ("sdxl_guess", "sdxl", XT2I, ["sdxl_a"], 10,
             {**xl, "image": cb, "latents": "latents", "guess_mode": True, "control_guidance_end": 0.6}),
            ("sdxl_img2img", "sdxl", XI2I, ["sdxl_a"], 11,
             {**xl, "image": photo, "control_image": ca, "strength": 0.7}),
            ("sdxl_inpaint", "sdxl", XINP, ["sdxl_a"], 12,
             {**xl, "image": photo, "mask_image": mask, "control_image": ca, "strength": 0.9}),
        ]
        A, XA = "StableDiffusionAdapterPipeline", "StableDiffusionXLAdapterPipeline"
        specs += [
            ("sd1_adapter", "sd1", A, ["sd1_full"], 13,
             {**sd, "image": ca, "latents": "latents", "adapter_conditioning_scale": 0.8}),
            ("sd1_multi_adapter", "sd1", A, ["sd1_full", "sd1_full_b"], 14,
             {**sd, "image": [ca, cb], "latents": "latents", "adapter_conditioning_scale": [0.6, 0.9]}),
            ("sdxl_adapter", "sdxl", XA, ["sdxl_xl"], 15,
             {**xl, "image": cb, "latents": "latents", "adapter_conditioning_scale": 0.9,
              "adapter_conditioning_factor": 0.5}),
        ]
        for name, pipeline, cls, net_names, seed, kw in specs:
            if "Adapter" in cls:
                ad = [adapters[n] for n in net_names]
                pipe = CLASSES[cls].from_pipe(base[pipeline], adapter=ad[0] if len(ad) == 1 else MultiAdapter(ad))
            else:
                net = [nets[n] for n in net_names]
                pipe = CLASSES[cls].from_pipe(base[pipeline], controlnet=net[0] if len(net) == 1 else net)
            pipe.set_progress_bar_config(disable=True)
            tensors = run(pipe, kw, seed)
            save_file({k: v.float().contiguous() for k, v in tensors.items()},
                      os.path.join(OUT, "cases", name + ".safetensors"))
            cases.append({"name": name, "pipeline": pipeline, "class": cls, "nets": net_names, "seed": seed,
                          "kwargs": kw})
            im = tensors["images"]
            print(f"{name:20s} |latents_final| {tensors['latents_final'].abs().mean():.4f} "
                  f"image mean {im.mean():.3f} saturated {((im <= 0) | (im >= 1)).float().mean():.3f}")
        # How far the residuals move the result: the same first case without the net.
        plain = base["sd1"]
        plain.set_progress_bar_config(disable=True)
        kw = {k: v for k, v in specs[0][5].items() if k not in ("image", "controlnet_conditioning_scale")}
        tensors = run(plain, kw, specs[0][4])
        save_file({k: v.float().contiguous() for k, v in tensors.items()},
                  os.path.join(OUT, "cases", "sd1_plain.safetensors"))
    gp.write_json(os.path.join(OUT, "cases.json"), {"cases": cases})


if __name__ == "__main__":
    main()
