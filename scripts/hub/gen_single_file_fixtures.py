"""Tiny single-file (LDM/SGM layout) checkpoints for diffusion-hub's converter tests.

For each of SD1-, SD2- and SDXL-style pipelines this builds TINY random diffusers
models, writes them in the original single-file layout (the inverse of diffusers'
`single_file_utils` conversion) as `.safetensors` and as a torch.save `.ckpt`
(`{"state_dict": ..., "global_step": ...}`, as SD checkpoints are), and records
in `<name>.expected.json`:

- `tensors`: every diffusers tensor the converter must reproduce (component ->
  name -> [dtype, shape, first 16 hex digits of the sha256 of the little-endian bytes]);
- `configs`: the diffusers configs of the tiny models;
- `overrides`: the config fields that cannot be read from the weights (head
  counts, group-norm groups, activation, sample size...), which the Rust test
  passes to the converter as real checkpoints get them from per-type defaults;
- `from_single_file`: the result of diffusers' own conversion of the same file:
  its converter functions run on the checkpoint (offline, no Hub needed) and, where
  it works offline, `StableDiffusion*Pipeline.from_single_file(file, config=<tiny
  diffusers folder>, local_files_only=True)` (from the .safetensors file): both must
  reproduce `tensors` exactly (asserted here); one digest per component is kept
  (sha256 of the sorted `name=sha` lines, 16 hex digits), which the Rust test
  recomputes from the converted folder.

Files: sd1 (f32) and sdxl (bf16) as .safetensors and .ckpt, sd2 (f16) as .ckpt,
the SDXL refiner (f16) as .safetensors.

Run: /work/.venv/bin/python scripts/hub/gen_single_file_fixtures.py
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates/diffusion-hub/tests/fixtures/single_file")

DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def sha(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        b = t.view(torch.int16).numpy().tobytes()
    else:
        b = t.numpy().tobytes()
    return hashlib.sha256(b).hexdigest()[:16]


def describe(sd):
    return {k: [DTYPE_NAMES[v.dtype], list(v.shape), sha(v)] for k, v in sorted(sd.items())}


def digest(hashes):
    """One digest of a component's `name -> sha` map (sorted `name=sha` lines)."""
    text = "".join(f"{k}={v}\n" for k, v in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- tiny models


def tiny_vae(dtype):
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    ).to(dtype)


def tiny_unet(kind, dtype, cross_dim, proj_dim=None):
    torch.manual_seed(2)
    common = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        cross_attention_dim=cross_dim,
    )
    if kind == "sd1":
        cfg = dict(
            block_out_channels=(4, 8),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2,
        )
    elif kind == "sd2":
        cfg = dict(
            block_out_channels=(4, 8),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=[2, 4],
            use_linear_projection=True,
        )
    elif kind == "sdxl_refiner":
        # The refiner's shape: attention only in the middle levels, one
        # transformer depth for them and the mid block (an integer, as the
        # refiner's config: 4 there), five time ids.
        cfg = dict(
            block_out_channels=(4, 8, 8, 8),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=[1, 2, 2, 2],
            transformer_layers_per_block=2,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=proj_dim + 5 * 4,
        )
    else:
        cfg = dict(
            block_out_channels=(4, 8, 8),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=[1, 2, 4],
            transformer_layers_per_block=[1, 1, 2],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=proj_dim + 6 * 4,
        )
    return UNet2DConditionModel(**common, **cfg).to(dtype)


def clip_config(hidden, layers, act, proj=None):
    return CLIPTextConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=16,
        hidden_act=act,
        projection_dim=proj if proj is not None else hidden,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def clip_state(model):
    """A CLIP text model's state dict with the Hub's `text_model.` prefix."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("position_ids"):
            continue
        if not k.startswith("text_model.") and not k.startswith("text_projection."):
            k = "text_model." + k
        sd[k] = v
    return sd


# ------------------------------------------------------------ inverse mapping

RESNET_TO_LDM = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def unet_to_ldm(sd, cfg):
    L = cfg["layers_per_block"]
    out = {}
    top = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
    }
    for k, v in sd.items():
        parts = k.split(".")
        stem, leaf = ".".join(parts[:-1]), parts[-1]
        if stem in top:
            out[f"{top[stem]}.{leaf}"] = v
            continue

        def resnet(rest):
            for a, b in RESNET_TO_LDM:
                if rest.startswith(a + "."):
                    return b + rest[len(a) :]
            raise KeyError(k)

        if parts[0] == "down_blocks":
            b, kind, j = int(parts[1]), parts[2], parts[3]
            rest = ".".join(parts[4:])
            if kind == "resnets":
                out[f"input_blocks.{1 + b * (L + 1) + int(j)}.0.{resnet(rest)}"] = v
            elif kind == "attentions":
                out[f"input_blocks.{1 + b * (L + 1) + int(j)}.1.{rest}"] = v
            elif kind == "downsamplers":
                out[f"input_blocks.{1 + b * (L + 1) + L}.0.op.{parts[-1]}"] = v
            else:
                raise KeyError(k)
        elif parts[0] == "mid_block":
            kind, j = parts[1], int(parts[2])
            rest = ".".join(parts[3:])
            if kind == "resnets":
                out[f"middle_block.{2 * j}.{resnet(rest)}"] = v
            else:
                out[f"middle_block.1.{rest}"] = v
        elif parts[0] == "up_blocks":
            b, kind, j = int(parts[1]), parts[2], parts[3]
            rest = ".".join(parts[4:])
            if kind == "resnets":
                out[f"output_blocks.{b * (L + 1) + int(j)}.0.{resnet(rest)}"] = v
            elif kind == "attentions":
                out[f"output_blocks.{b * (L + 1) + int(j)}.1.{rest}"] = v
            elif kind == "upsamplers":
                has_attn = cfg["up_block_types"][b].startswith("CrossAttn")
                out[f"output_blocks.{b * (L + 1) + L}.{2 if has_attn else 1}.conv.{parts[-1]}"] = v
            else:
                raise KeyError(k)
        else:
            raise KeyError(k)
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(sd, cfg):
    n = len(cfg["block_out_channels"])
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        side = parts[0]
        if side in ("quant_conv", "post_quant_conv"):
            out[k] = v
            continue
        rest = parts[1:]
        head = rest[0]
        if head in ("conv_in", "conv_out"):
            out[k] = v
        elif head == "conv_norm_out":
            out[f"{side}.norm_out.{rest[1]}"] = v
        elif head in ("down_blocks", "up_blocks"):
            i = int(rest[1])
            ldm_i = i if head == "down_blocks" else n - 1 - i
            ldm_blk = "down" if head == "down_blocks" else "up"
            if rest[2] == "resnets":
                tail = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
                out[f"{side}.{ldm_blk}.{ldm_i}.block.{rest[3]}.{tail}"] = v
            else:
                sampler = "downsample" if head == "down_blocks" else "upsample"
                out[f"{side}.{ldm_blk}.{ldm_i}.{sampler}.conv.{rest[-1]}"] = v
        elif head == "mid_block":
            if rest[1] == "resnets":
                tail = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
                out[f"{side}.mid.block_{int(rest[2]) + 1}.{tail}"] = v
            else:
                name = ".".join(rest[3:])
                ren = {
                    "group_norm": "norm",
                    "to_q": "q",
                    "to_k": "k",
                    "to_v": "v",
                    "to_out.0": "proj_out",
                }
                stem, leaf = name.rsplit(".", 1)
                if stem in ("to_q", "to_k", "to_v", "to_out.0") and leaf == "weight":
                    v = v[:, :, None, None]
                out[f"{side}.mid.attn_1.{ren[stem]}.{leaf}"] = v
        else:
            raise KeyError(k)
    return {"first_stage_model." + k: v for k, v in out.items()}


def clip_to_ldm(sd, prefix):
    out = {prefix + k: v for k, v in sd.items()}
    # Real SD1 checkpoints carry CLIP's int64 position_ids buffer; the converter drops it.
    n = sd["text_model.embeddings.position_embedding.weight"].shape[0]
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return out


def open_clip_to_ldm(sd, prefix, dtype, extra_layer=False, text_projection=None):
    out = {}
    layers = {}
    for k, v in sd.items():
        if k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
        elif k.startswith("text_model.encoder.layers."):
            parts = k.split(".")
            i, rest = int(parts[3]), ".".join(parts[4:])
            p = f"transformer.resblocks.{i}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                layers.setdefault((i, rest.split(".")[2]), {})[rest.split(".")[1]] = v
                continue
            ren = [
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
                ("self_attn.out_proj", "attn.out_proj"),
            ]
            for a, b in ren:
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
                    break
            else:
                raise KeyError(k)
            out[p + rest] = v
        else:
            raise KeyError(k)
    n_layers = 0
    for (i, leaf), qkv in layers.items():
        n_layers = max(n_layers, i + 1)
        out[f"transformer.resblocks.{i}.attn.in_proj_{leaf}"] = torch.cat([qkv["q_proj"], qkv["k_proj"], qkv["v_proj"]])
    g = torch.Generator().manual_seed(3)
    if extra_layer:
        # SD2 checkpoints hold OpenCLIP-H's last layer, which the diffusers text encoder drops.
        ref = {k[len("transformer.resblocks.0.") :]: v for k, v in out.items() if k.startswith("transformer.resblocks.0.")}
        for rest, v in ref.items():
            out[f"transformer.resblocks.{n_layers}.{rest}"] = torch.randn(v.shape, generator=g).to(dtype)
    if text_projection is not None:
        out["text_projection"] = torch.randn(text_projection, generator=g).to(dtype)
    return {prefix + k: v for k, v in out.items()}


# ------------------------------------------------------------------ variants


def diffusers_conversion(ldm, unet_cfg, vae_cfg, clips):
    """diffusers' own converter functions, run offline on the LDM state dict."""
    res = {
        "unet": sfu.convert_ldm_unet_checkpoint(dict(ldm), dict(unet_cfg)),
        "vae": sfu.convert_ldm_vae_checkpoint(dict(ldm), dict(vae_cfg)),
    }
    for name, (kind, model) in clips.items():
        if kind == "clip":
            sd = sfu.convert_ldm_clip_checkpoint(dict(ldm))
            sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
        else:
            prefix = {
                "open_clip": "cond_stage_model.model.",
                "open_clip_sdxl": "conditioner.embedders.1.model.",
                "open_clip_refiner": "conditioner.embedders.0.model.",
            }[kind]
            sd = sfu.convert_open_clip_checkpoint(model, dict(ldm), prefix=prefix)
        res[name] = sd
    return res


def build(kind, dtype):
    vae = tiny_vae(dtype)
    torch.manual_seed(4)
    if kind == "sd1":
        te = CLIPTextModel(clip_config(8, 2, "quick_gelu")).to(dtype)
        unet = tiny_unet(kind, dtype, 8)
        comps = {"unet": unet, "vae": vae, "text_encoder": te}
        ldm = {}
        ldm.update(unet_to_ldm(unet.state_dict(), unet.config))
        ldm.update(vae_to_ldm(vae.state_dict(), vae.config))
        ldm.update(clip_to_ldm(clip_state(te), "cond_stage_model.transformer."))
        clips = {"text_encoder": ("clip", te)}
    elif kind == "sd2":
        # 23 layers as in SD2 (OpenCLIP-H's 24th is dropped); diffusers' converter drops index 23.
        te = CLIPTextModel(clip_config(8, 23, "gelu")).to(dtype)
        unet = tiny_unet(kind, dtype, 8)
        comps = {"unet": unet, "vae": vae, "text_encoder": te}
        ldm = {}
        ldm.update(unet_to_ldm(unet.state_dict(), unet.config))
        ldm.update(vae_to_ldm(vae.state_dict(), vae.config))
        ldm.update(open_clip_to_ldm(clip_state(te), "cond_stage_model.model.", dtype, extra_layer=True, text_projection=(8, 6)))
        clips = {"text_encoder": ("open_clip", te)}
    elif kind == "sdxl_refiner":
        torch.manual_seed(5)
        te2 = CLIPTextModelWithProjection(clip_config(16, 2, "gelu", proj=12)).to(dtype)
        unet = tiny_unet(kind, dtype, 16, proj_dim=12)
        comps = {"unet": unet, "vae": vae, "text_encoder_2": te2}
        ldm = {}
        ldm.update(unet_to_ldm(unet.state_dict(), unet.config))
        ldm.update(vae_to_ldm(vae.state_dict(), vae.config))
        ldm.update(open_clip_to_ldm(clip_state(te2), "conditioner.embedders.0.model.", dtype))
        clips = {"text_encoder_2": ("open_clip_refiner", te2)}
    else:
        te = CLIPTextModel(clip_config(8, 2, "quick_gelu")).to(dtype)
        torch.manual_seed(5)
        te2 = CLIPTextModelWithProjection(clip_config(16, 2, "gelu", proj=12)).to(dtype)
        unet = tiny_unet(kind, dtype, 8 + 16, proj_dim=12)
        comps = {"unet": unet, "vae": vae, "text_encoder": te, "text_encoder_2": te2}
        ldm = {}
        ldm.update(unet_to_ldm(unet.state_dict(), unet.config))
        ldm.update(vae_to_ldm(vae.state_dict(), vae.config))
        ldm.update(clip_to_ldm(clip_state(te), "conditioner.embedders.0.transformer."))
        ldm.update(open_clip_to_ldm(clip_state(te2), "conditioner.embedders.1.model.", dtype))
        clips = {"text_encoder": ("clip", te), "text_encoder_2": ("open_clip_sdxl", te2)}
    return comps, ldm, clips


def try_from_single_file(kind, comps, ckpt_path, dtype):
    """diffusers' from_single_file with a local diffusers config folder (offline)."""
    from diffusers import (
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    xl = kind.startswith("sdxl")
    cls = {
        "sdxl": StableDiffusionXLPipeline,
        "sdxl_refiner": StableDiffusionXLImg2ImgPipeline,
    }.get(kind, StableDiffusionPipeline)
    tmp = tempfile.mkdtemp()
    try:
        from transformers import CLIPTokenizer  # noqa: F401

        for name, m in comps.items():
            m.save_pretrained(os.path.join(tmp, name))
        index = {
            "_class_name": cls.__name__,
            "_diffusers_version": "0.42.1",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": [None, None],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        }
        if xl:
            index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
            index["tokenizer_2"] = [None, None]
            if kind == "sdxl_refiner":
                index["text_encoder"] = [None, None]
                index["requires_aesthetics_score"] = True
        else:
            index["safety_checker"] = [None, None]
            index["feature_extractor"] = [None, None]
        from diffusers import EulerDiscreteScheduler

        EulerDiscreteScheduler().save_pretrained(os.path.join(tmp, "scheduler"))
        with open(os.path.join(tmp, "model_index.json"), "w") as f:
            json.dump(index, f)
        kwargs = dict(config=tmp, local_files_only=True, tokenizer=None, torch_dtype=dtype)
        if xl:
            kwargs["tokenizer_2"] = None
        if kind == "sdxl_refiner":
            kwargs["text_encoder"] = None
        else:
            kwargs.update(safety_checker=None, feature_extractor=None)
        pipe = cls.from_single_file(ckpt_path, **kwargs)
        out = {}
        for name in comps:
            m = getattr(pipe, name)
            sd = clip_state(m) if name.startswith("text_encoder") else m.state_dict()
            out[name] = {k: sha(v) for k, v in sorted(sd.items())}
        return out, None
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"[:400]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CONFIG_KEYS = {
    "unet": [
        "sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types", "mid_block_type",
        "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
        "use_linear_projection", "transformer_layers_per_block", "addition_embed_type", "addition_time_embed_dim",
        "projection_class_embeddings_input_dim", "norm_num_groups", "class_embed_type", "flip_sin_to_cos",
        "freq_shift", "act_fn", "norm_eps", "downsample_padding", "center_input_sample", "only_cross_attention",
        "upcast_attention", "resnet_time_scale_shift", "time_embedding_type", "dual_cross_attention",
    ],
    "vae": [
        "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
        "layers_per_block", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor", "act_fn",
    ],
    "text_encoder": [
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "max_position_embeddings", "hidden_act", "projection_dim", "layer_norm_eps",
    ],
}
CONFIG_KEYS["text_encoder_2"] = CONFIG_KEYS["text_encoder"]

# Fields the weights cannot tell; the Rust test passes these as overrides.
OVERRIDES = {
    "unet": ["sample_size", "attention_head_dim", "norm_num_groups"],
    "vae": ["sample_size", "norm_num_groups", "scaling_factor"],
    "text_encoder": ["num_attention_heads", "projection_dim", "bos_token_id", "eos_token_id", "pad_token_id"],
    "text_encoder_2": ["num_attention_heads", "bos_token_id", "eos_token_id", "pad_token_id"],
}


def main():
    os.makedirs(OUT, exist_ok=True)
    variants = [
        ("sd1", torch.float32),
        ("sd2", torch.float16),
        ("sdxl", torch.bfloat16),
        ("sdxl_refiner", torch.float16),
    ]
    for kind, dtype in variants:
        comps, ldm, clips = build(kind, dtype)
        expected = {}
        for name, m in comps.items():
            sd = clip_state(m) if name.startswith("text_encoder") else m.state_dict()
            expected[name] = describe(sd)
        configs = {}
        overrides = {}
        for name, m in comps.items():
            cfg = m.config.to_dict() if name.startswith("text_encoder") else dict(m.config)
            configs[name] = {k: cfg.get(k) for k in CONFIG_KEYS[name]}
            overrides[name] = {k: cfg.get(k) for k in OVERRIDES[name]}

        # diffusers' converter functions on the LDM dict must give back the originals.
        conv = diffusers_conversion(ldm, comps["unet"].config, comps["vae"].config, clips)
        conv_hashes = {}
        for name, sd in conv.items():
            got = {k: sha(v) for k, v in sorted(sd.items())}
            want = {k: e[2] for k, e in expected[name].items()}
            if got != want:
                missing = sorted(set(want) - set(got))[:5]
                extra = sorted(set(got) - set(want))[:5]
                diff = [k for k in want if k in got and got[k] != want[k]][:5]
                sys.exit(f"{kind}/{name}: diffusers' converter disagrees: missing {missing} extra {extra} diff {diff}")
            conv_hashes[name] = digest(got)

        st_path = os.path.join(OUT, f"{kind}.safetensors")
        ckpt_path = os.path.join(OUT, f"{kind}.ckpt")
        # Formats kept small: sd1 both, sd2 .ckpt only (f16 pickle), sdxl both
        # (bf16), the refiner .safetensors only (f16).
        save_file({k: v.contiguous() for k, v in ldm.items()}, st_path, metadata={"format": "pt"})
        torch.save({"state_dict": ldm, "global_step": 7, "epoch": 1}, ckpt_path)

        fsf, fsf_error = try_from_single_file(kind, comps, st_path, dtype)
        if kind == "sd2":
            os.remove(st_path)
        if kind == "sdxl_refiner":
            os.remove(ckpt_path)
        if fsf is not None:
            for name, hashes in fsf.items():
                want = {k: e[2] for k, e in expected[name].items()}
                if hashes != want:
                    sys.exit(f"{kind}/{name}: from_single_file disagrees with the originals")
            fsf = {name: digest(h) for name, h in fsf.items()}

        with open(os.path.join(OUT, f"{kind}.expected.json"), "w") as f:
            json.dump(
                {
                    "kind": kind,
                    "dtype": DTYPE_NAMES[dtype],
                    "configs": configs,
                    "overrides": overrides,
                    "tensors": expected,
                    "diffusers_converter": conv_hashes,
                    "from_single_file": fsf,
                    "from_single_file_error": fsf_error,
                },
                f,
                sort_keys=True,
                separators=(",", ":"),
            )
        n = sum(len(v) for v in expected.values())
        print(f"{kind}: {len(ldm)} LDM keys -> {n} diffusers tensors; from_single_file: {'ok' if fsf else fsf_error}")


def misc_pickle():
    """Pickle corner cases for the reader: protocol 4, a transposed (non-contiguous)
    tensor, views sharing one storage at an offset, bf16/f16/i64, a top-level dict
    without `state_dict`, a non-tensor entry, a tied (memoized) tensor."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    shared = torch.arange(10, dtype=torch.float16)
    sd = {
        "transposed": base.T,
        "view_offset": shared[3:7],
        "view_full": shared,
        "bf16": torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16),
        "long": torch.tensor([[1, -2], [3, 4]], dtype=torch.int64),
        "scalar": torch.tensor(2.5),
        "tied": base,
        "tied_again": base,
        "step": 3,
    }
    torch.save(sd, os.path.join(OUT, "misc.pt"), pickle_protocol=4)
    expected = {k: [DTYPE_NAMES[v.dtype], list(v.shape), sha(v)] for k, v in sd.items() if torch.is_tensor(v)}
    with open(os.path.join(OUT, "misc.expected.json"), "w") as f:
        json.dump(expected, f, sort_keys=True)


if __name__ == "__main__":
    main()
    misc_pickle()
