#!/usr/bin/env python
"""LoRA parity fixtures of crates/diffusion-pipelines (tests/lora.rs): adapter
files in every format the crate reads, made with peft/diffusers' own
converters where they exist, and what diffusers 0.42 generates with them on
the tiny SD1, SD2 and SDXL pipelines of tests/fixtures/pipelines.

    python3 scripts/pipelines/gen_lora.py

Writes crates/diffusion-pipelines/tests/fixtures/lora/:

  files/<name>.safetensors  the adapter files:
      peft_sd1        diffusers/PEFT (`save_lora_weights` of peft layers on the UNet's
                      attention, feed-forward, proj and resnet convs, and the text
                      encoder), rank 4, lora_alpha 8 (kept in `lora_adapter_metadata`)
      kohya_sd1       kohya-ss (`convert_state_dict_to_kohya`), rank 2, alpha 1,
                      text-encoder keys as `lora_te_`
      locon_mid_sd1   kohya LoCon with `lora_mid` (Tucker) on 3×3 convs, alpha 3
      loha_sd1        LyCORIS LoHa (with `hada_t1/t2` on convs), alpha 2
      lokr_sd1        LyCORIS LoKr (full `lokr_w1`, decomposed `lokr_w2_a/b`), alpha 2
      full_sd1        `diff` / `diff_b`
      dora_sd1        peft DoRA (`lora_magnitude_vector`, magnitudes moved off their
                      initial norms) on the UNet's attention projections and conv1
      peft_sd2        diffusers/PEFT on the SD 2.x pipeline (UNet + text encoder)
      kohya_sdxl      kohya `lora_unet_`, `lora_te1_`, `lora_te2_` on the SDXL pipeline
      kohya_sdxl_sgm  the same with Stability's block names (`input_blocks_4_1_…`,
                      `middle_block_…`, `output_blocks_…`, `in_layers_2`, `op`, …)
  cases/<case>.safetensors  latents (the call's), latents_final (the last step's)
                      and images (`output_type="np"`); for embeddings also latents_plain
                      (the same prompt without the embedding loaded)
      ti_diffusers    textual inversion, diffusers format ({"<cat-toy>": [1, d]})
      ti_a1111.pt     A1111 (`string_to_param`, `name` "<ink>", 3 vectors)
      ti_kohya        kohya (`emb_params`, 2 vectors; token given: "<kh>")
      ti_sdxl         SDXL (`clip_l`, `clip_g`, 2 vectors each; token given: "<sx>")
  cases.json          {"cases": [{name, pipeline, kwargs, adapters: [[file, name]],
                      embeddings: [[file, token | null]],
                      set_adapters: [[names], [weights]] | null, fuse: scale | null,
                      lora_scale: s | null, reference}]}

diffusers loads the peft and kohya files itself (`load_lora_weights`,
`set_adapters`, `fuse_lora`). It cannot load Tucker LoCon, LoHa, LoKr or
full differences: for those the reference is the merged weight computed here
by the formats' published formulas (LyCORIS / A1111), loaded into the
pipeline's models, then run by diffusers (`reference: "merged"`).
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_pipelines as gp  # noqa: E402

from diffusers import DiffusionPipeline  # noqa: E402
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya  # noqa: E402
from peft import LoraConfig, get_peft_model_state_dict  # noqa: E402

OUT = os.path.join(gp.OUT, "lora")
torch.set_grad_enabled(False)

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "time_emb_proj"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    gp.alias_text_model(pipe)
    return pipe


def randomize_lora(model, gen, std):
    for name, p in model.named_parameters():
        if "lora_magnitude_vector" in name:
            # DoRA: magnitudes away from the norms they start at.
            p.mul_(1 + torch.randn(p.shape, generator=gen) * std)
        elif "lora_" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def peft_state(pipe, rank, alpha, seed, components, use_dora=False, unet_targets=None):
    """peft LoRA layers on `components` with random factors; their state dicts
    (diffusers' `get_peft_model_state_dict`), and the layers removed again."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for comp in components:
        model = getattr(pipe, comp)
        assert not model.training
        targets = (unet_targets or UNET_TARGETS) if comp == "unet" else TE_TARGETS
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                                     use_dora=use_dora), adapter_name="gen")
        randomize_lora(model, gen, 0.3)
        out[comp] = get_peft_model_state_dict(model, adapter_name="gen")
        cfg = model.peft_config["gen"].to_dict()
        cfg["target_modules"] = sorted(cfg["target_modules"])
        out[comp + "_metadata"] = cfg
        (model.delete_adapters if hasattr(model, "delete_adapters") else model.delete_adapter)("gen")
    return out


def save_peft(path, layers):
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {}
        if "unet" in layers:
            kwargs["unet_lora_layers"] = layers["unet"]
            kwargs["unet_lora_adapter_metadata"] = layers["unet_metadata"]
        if "text_encoder" in layers:
            kwargs["text_encoder_lora_layers"] = layers["text_encoder"]
            kwargs["text_encoder_lora_adapter_metadata"] = layers["text_encoder_metadata"]
        from diffusers import StableDiffusionPipeline
        StableDiffusionPipeline.save_lora_weights(tmp, safe_serialization=True, **kwargs)
        shutil.copyfile(os.path.join(tmp, "pytorch_lora_weights.safetensors"), path)


def kohya_file(path, layers, te_prefix_map):
    """diffusers' own kohya converter over the prefixed peft state dict."""
    sd = {}
    for comp, d in layers.items():
        if comp.endswith("_metadata"):
            continue
        for k, v in d.items():
            sd[f"{comp}.{k}"] = v
    kohya = convert_state_dict_to_kohya(sd)
    renamed = {}
    for k, v in kohya.items():
        for old, new in te_prefix_map.items():
            if k.startswith(old):
                k = new + k[len(old):]
        renamed[k] = v.contiguous()
    save_file(renamed, path)


def to_sgm(flat, lpb):
    """diffusers' flat kohya name → Stability's (sgm) block naming, the inverse of
    diffusers' `_maybe_map_sgm_blocks_to_diffusers` + kohya key conversion."""
    import re
    per = lpb + 1
    inner = {"resnets": 0, "attentions": 1, "upsamplers": 2}
    rest_map = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
                "conv_shortcut": "skip_connection"}
    m = re.match(r"down_blocks_(\d+)_downsamplers_0_conv$", flat)
    if m:
        return f"input_blocks_{(int(m[1]) + 1) * per}_0_op"
    m = re.match(r"up_blocks_(\d+)_upsamplers_0_conv$", flat)
    if m:
        return f"output_blocks_{int(m[1]) * per + lpb}_2_conv"
    m = re.match(r"down_blocks_(\d+)_(resnets|attentions)_(\d+)_(.*)$", flat)
    if m:
        return f"input_blocks_{1 + int(m[1]) * per + int(m[3])}_{inner[m[2]]}_{rest_map.get(m[4], m[4])}"
    m = re.match(r"up_blocks_(\d+)_(resnets|attentions)_(\d+)_(.*)$", flat)
    if m:
        return f"output_blocks_{int(m[1]) * per + int(m[3])}_{inner[m[2]]}_{rest_map.get(m[4], m[4])}"
    m = re.match(r"mid_block_(resnets_0|attentions_0|resnets_1)_(.*)$", flat)
    if m:
        i = {"resnets_0": 0, "attentions_0": 1, "resnets_1": 2}[m[1]]
        return f"middle_block_{i}_{rest_map.get(m[2], m[2])}"
    return flat


def module_map(model):
    return dict(model.named_modules())


def flat_names(model):
    return {name.replace(".", "_"): (name, m) for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def lycoris_files(pipe, files):
    """Tucker LoCon, LoHa, LoKr and full-difference files on the SD1 UNet, and each
    file's merged weight differences (module → (ΔW, Δb))."""
    gen = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=gen) * 0.3  # noqa: E731
    unet = pipe.unet
    mods = {n: m for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    convs3 = [n for n, m in mods.items() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
              and n.startswith(("down_blocks", "mid_block", "up_blocks")) and "resnets" in n]
    linears = [n for n, m in mods.items() if isinstance(m, torch.nn.Linear) and "attn" in n]
    merged = {}

    def flat(n):
        return "lora_unet_" + n.replace(".", "_")

    # Tucker LoCon: up ∘ mid ∘ down.
    sd, deltas = {}, {}
    rank, alpha = 3, 3.0
    for n in convs3:
        m = mods[n]
        o, i = m.out_channels, m.in_channels
        down, mid, up = r(rank, i, 1, 1), r(rank, rank, 3, 3), r(o, rank, 1, 1)
        sd[flat(n) + ".lora_down.weight"], sd[flat(n) + ".lora_mid.weight"] = down, mid
        sd[flat(n) + ".lora_up.weight"], sd[flat(n) + ".alpha"] = up, torch.tensor(alpha)
        w = torch.einsum("or,rskl,si->oikl", up[:, :, 0, 0], mid, down[:, :, 0, 0])
        deltas[n] = (w * alpha / rank, None)
    save_file(sd, files["locon_mid_sd1"])
    merged["locon_mid_sd1"] = deltas

    # LoHa (A1111 network_hada / LyCORIS): (w1a w1b) ⊙ (w2a w2b) · alpha / rank;
    # Tucker halves on the convs: einsum("i j k l, j r, i p -> p r k l", t, wb, wa).
    sd, deltas = {}, {}
    rank, alpha = 2, 2.0
    for n in linears[:6] + convs3[:2]:
        m = mods[n]
        if isinstance(m, torch.nn.Linear):
            o, i = m.out_features, m.in_features
            w1a, w1b, w2a, w2b = r(o, rank), r(rank, i), r(o, rank), r(rank, i)
            w = (w1a @ w1b) * (w2a @ w2b)
            sd.update({flat(n) + ".hada_w1_a": w1a, flat(n) + ".hada_w1_b": w1b,
                       flat(n) + ".hada_w2_a": w2a, flat(n) + ".hada_w2_b": w2b})
        else:
            o, i = m.out_channels, m.in_channels
            t1, t2 = r(rank, rank, 3, 3), r(rank, rank, 3, 3)
            w1a, w1b, w2a, w2b = r(rank, o), r(rank, i), r(rank, o), r(rank, i)
            cp = lambda t, wa, wb: torch.einsum("ijkl,jr,ip->prkl", t, wb, wa)  # noqa: E731
            w = cp(t1, w1a, w1b) * cp(t2, w2a, w2b)
            sd.update({flat(n) + ".hada_w1_a": w1a, flat(n) + ".hada_w1_b": w1b,
                       flat(n) + ".hada_w2_a": w2a, flat(n) + ".hada_w2_b": w2b,
                       flat(n) + ".hada_t1": t1, flat(n) + ".hada_t2": t2})
        sd[flat(n) + ".alpha"] = torch.tensor(alpha)
        deltas[n] = (w * alpha / rank, None)
    save_file(sd, files["loha_sd1"])
    merged["loha_sd1"] = deltas

    # LoKr: kron(w1, w2_a w2_b) · alpha / rank(w2_b); w1 full [2, 2].
    sd, deltas = {}, {}
    rank, alpha = 2, 2.0
    for n in linears[:6] + convs3[:2]:
        m = mods[n]
        if isinstance(m, torch.nn.Linear):
            o, i = m.out_features, m.in_features
            w1 = r(2, 2)
            w2a, w2b = r(o // 2, rank), r(rank, i // 2)
            w = torch.kron(w1, w2a @ w2b)
        else:
            o, i = m.out_channels, m.in_channels
            w1 = r(2, 2)
            w2a, w2b = r(o // 2, rank), r(rank, (i // 2) * 9)
            w2 = (w2a @ w2b).reshape(o // 2, i // 2, 3, 3)
            w = torch.kron(w1[:, :, None, None], w2)
        sd.update({flat(n) + ".lokr_w1": w1, flat(n) + ".lokr_w2_a": w2a, flat(n) + ".lokr_w2_b": w2b,
                   flat(n) + ".alpha": torch.tensor(alpha)})
        deltas[n] = (w * alpha / rank, None)
    save_file(sd, files["lokr_sd1"])
    merged["lokr_sd1"] = deltas

    # Full differences, with bias differences where the layer has a bias.
    sd, deltas = {}, {}
    for n in linears[:4] + convs3[:2]:
        m = mods[n]
        dw = r(*m.weight.shape) * 0.3
        sd[flat(n) + ".diff"] = dw
        db = None
        if m.bias is not None:
            db = r(*m.bias.shape) * 0.3
            sd[flat(n) + ".diff_b"] = db
        deltas[n] = (dw, db)
    save_file(sd, files["full_sd1"])
    merged["full_sd1"] = deltas
    return merged


def assert_adapted(pipe, name, components):
    """diffusers silently skips what it cannot match: check it loaded every part."""
    for comp in components:
        n = sum(1 for k, _ in getattr(pipe, comp).named_parameters() if f"lora_A.{name}." in k)
        assert n > 0, (name, comp)


def apply_merged(pipe, deltas, sign=1.0):
    mods = dict(pipe.unet.named_modules())
    for n, (dw, db) in deltas.items():
        mods[n].weight.add_(sign * dw)
        if db is not None:
            mods[n].bias.add_(sign * db)


def run(pipe, kwargs, latents, lora_scale):
    final = {}

    def keep(_p, _i, _t, kw):
        final["latents"] = kw["latents"].detach().clone()
        return {}

    call = dict(kwargs)
    call.pop("latents", None)
    extra = {}
    if lora_scale is not None:
        extra["cross_attention_kwargs"] = {"scale": lora_scale}
    res = pipe(**call, latents=latents.clone(), output_type="np", callback_on_step_end=keep,
               callback_on_step_end_tensor_inputs=["latents"], **extra)
    return {"latents": latents, "latents_final": final["latents"],
            "images": torch.from_numpy(np.asarray(res.images, dtype=np.float32))}


def main():
    os.makedirs(os.path.join(OUT, "files"), exist_ok=True)
    gp.clean(os.path.join(OUT, "cases"))
    files = {n: os.path.join(OUT, "files", n + ".safetensors") for n in
             ("peft_sd1", "kohya_sd1", "locon_mid_sd1", "loha_sd1", "lokr_sd1", "full_sd1", "kohya_sdxl",
              "kohya_sdxl_sgm", "dora_sd1", "peft_sd2")}
    rel = lambda n: os.path.relpath(files[n], OUT)  # noqa: E731
    sd1_kw = {"prompt": "a dog on a skateboard", "negative_prompt": "blurry", "guidance_scale": 7.5,
              "num_inference_steps": 4, "height": 32, "width": 32}
    sdxl_kw = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "guidance_scale": 5.0,
               "num_inference_steps": 4, "height": 32, "width": 32}
    cases = []

    def case(name, pipe, pipeline, kw, latents, adapters, reference="diffusers", set_adapters=None, fuse=None,
             lora_scale=None, embeddings=(), plain=None):
        tensors = run(pipe, kw, latents, lora_scale)
        if plain is not None:
            tensors["latents_plain"] = plain
        save_file({k: v.float().contiguous() for k, v in tensors.items()},
                  os.path.join(OUT, "cases", name + ".safetensors"))
        cases.append({"name": name, "pipeline": pipeline, "kwargs": kw, "adapters": adapters,
                      "set_adapters": set_adapters, "fuse": fuse, "lora_scale": lora_scale,
                      "embeddings": [list(e) for e in embeddings], "reference": reference})
        print(f"{name:24s} |latents_final| {tensors['latents_final'].abs().mean():.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        sd1 = gp.assemble("sd1", os.path.join(tmp, "sd1"))
        sdxl = gp.assemble("sdxl", os.path.join(tmp, "sdxl"))
        lat1 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(11))
        latx = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(12))

        pipe = load(sd1)
        a = peft_state(pipe, 4, 8, 1, ["unet", "text_encoder"])
        save_peft(files["peft_sd1"], a)
        b = peft_state(pipe, 2, 1, 2, ["unet", "text_encoder"])
        kohya_file(files["kohya_sd1"], b, {"lora_te1_": "lora_te_"})

        case("sd1_base", pipe, "sd1", sd1_kw, lat1, [])
        pipe.load_lora_weights(files["peft_sd1"], adapter_name="a")
        assert_adapted(pipe, "a", ["unet", "text_encoder"])
        case("sd1_peft", pipe, "sd1", sd1_kw, lat1, [[rel("peft_sd1"), "a"]])
        case("sd1_peft_scale", pipe, "sd1", sd1_kw, lat1, [[rel("peft_sd1"), "a"]], lora_scale=0.5)
        pipe.load_lora_weights(files["kohya_sd1"], adapter_name="b")
        assert_adapted(pipe, "b", ["unet", "text_encoder"])
        pipe.set_adapters(["b"])
        case("sd1_kohya", pipe, "sd1", sd1_kw, lat1, [[rel("peft_sd1"), "a"], [rel("kohya_sd1"), "b"]],
             set_adapters=[["b"], [1.0]])
        pipe.set_adapters(["a", "b"], [0.7, 0.4])
        case("sd1_two_adapters", pipe, "sd1", sd1_kw, lat1,
             [[rel("peft_sd1"), "a"], [rel("kohya_sd1"), "b"]], set_adapters=[["a", "b"], [0.7, 0.4]])
        pipe.fuse_lora(lora_scale=0.8)
        case("sd1_two_fused", pipe, "sd1", sd1_kw, lat1,
             [[rel("peft_sd1"), "a"], [rel("kohya_sd1"), "b"]], set_adapters=[["a", "b"], [0.7, 0.4]], fuse=0.8)
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        del pipe

        pipe = load(sd1)
        merged = lycoris_files(pipe, files)

        for n in ("locon_mid_sd1", "loha_sd1", "lokr_sd1", "full_sd1"):
            apply_merged(pipe, merged[n])
            case("sd1_" + n.removesuffix("_sd1"), pipe, "sd1", sd1_kw, lat1, [[rel(n), "x"]], reference="merged")
            apply_merged(pipe, merged[n], -1.0)
        del pipe

        # DoRA in peft's format (`lora_magnitude_vector`), on attention projections and resnet convs.
        pipe = load(sd1)
        d = peft_state(pipe, 2, 4, 5, ["unet"], use_dora=True,
                       unet_targets=["to_q", "to_k", "to_v", "to_out.0", "conv1"])
        save_peft(files["dora_sd1"], d)
        pipe.load_lora_weights(files["dora_sd1"], adapter_name="d")
        assert_adapted(pipe, "d", ["unet"])
        case("sd1_dora", pipe, "sd1", sd1_kw, lat1, [[rel("dora_sd1"), "d"]])
        pipe.set_adapters(["d"], [0.6])
        case("sd1_dora_weight", pipe, "sd1", sd1_kw, lat1, [[rel("dora_sd1"), "d"]], set_adapters=[["d"], [0.6]])
        del pipe

        # Textual inversion: diffusers, A1111 (.pt, 3 vectors) and kohya formats, one at a time
        # and all three together.
        pipe = load(sd1)
        width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
        gen = torch.Generator().manual_seed(21)
        ti = {
            "ti_diffusers": os.path.join(OUT, "files", "ti_diffusers.safetensors"),
            "ti_a1111": os.path.join(OUT, "files", "ti_a1111.pt"),
            "ti_kohya": os.path.join(OUT, "files", "ti_kohya.safetensors"),
            "ti_sdxl": os.path.join(OUT, "files", "ti_sdxl.safetensors"),
        }
        trel = lambda n: os.path.relpath(ti[n], OUT)  # noqa: E731
        save_file({"<cat-toy>": torch.randn(1, width, generator=gen)}, ti["ti_diffusers"])
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(3, width, generator=gen)},
                    "name": "<ink>", "step": 100}, ti["ti_a1111"])
        save_file({"emb_params": torch.randn(2, width, generator=gen)}, ti["ti_kohya"])
        ti_runs = [
            ("sd1_ti_diffusers", "a <cat-toy> on a skateboard", [("ti_diffusers", None)]),
            ("sd1_ti_a1111_multi", "an <ink> painting of a dog", [("ti_a1111", None)]),
            ("sd1_ti_kohya", "a dog, <kh> style", [("ti_kohya", "<kh>")]),
            ("sd1_ti_all", "a <cat-toy> and a dog, <ink>, <kh>",
             [("ti_diffusers", None), ("ti_a1111", None), ("ti_kohya", "<kh>")]),
        ]
        for name, prompt, embs in ti_runs:
            pipe = load(sd1)
            plain = run(pipe, dict(sd1_kw, prompt=prompt), lat1, None)["latents_final"]
            for f, token in embs:
                pipe.load_textual_inversion(ti[f], token=token)
            case(name, pipe, "sd1", dict(sd1_kw, prompt=prompt), lat1, [],
                 embeddings=[(trel(f), token) for f, token in embs], plain=plain)
        del pipe

        # SD 2.x (v-prediction, Linear proj_in/proj_out): a peft LoRA on the UNet and text encoder.
        sd2 = gp.assemble("sd2", os.path.join(tmp, "sd2"))
        pipe = load(sd2)
        lat2 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(13))
        case("sd2_base", pipe, "sd2", sd1_kw, lat2, [])
        e = peft_state(pipe, 4, 4, 6, ["unet", "text_encoder"])
        save_peft(files["peft_sd2"], e)
        pipe.load_lora_weights(files["peft_sd2"], adapter_name="e")
        assert_adapted(pipe, "e", ["unet", "text_encoder"])
        case("sd2_peft", pipe, "sd2", sd1_kw, lat2, [[rel("peft_sd2"), "e"]])
        del pipe

        pipe = load(sdxl)
        sx_kw = dict(sdxl_kw, prompt="a photo of a <sx> cat")
        plain = run(pipe, sx_kw, latx, None)["latents_final"]
        sx = {"clip_l": torch.randn(2, pipe.text_encoder.get_input_embeddings().weight.shape[1], generator=gen),
              "clip_g": torch.randn(2, pipe.text_encoder_2.get_input_embeddings().weight.shape[1], generator=gen)}
        save_file(sx, ti["ti_sdxl"])
        pipe.load_textual_inversion(sx["clip_l"], token="<sx>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(sx["clip_g"], token="<sx>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        case("sdxl_ti_two_encoders", pipe, "sdxl", sx_kw, latx, [],
             embeddings=[(trel("ti_sdxl"), "<sx>")], plain=plain)
        del pipe

        pipe = load(sdxl)
        c = peft_state(pipe, 2, 4, 3, ["unet", "text_encoder", "text_encoder_2"])
        kohya_file(files["kohya_sdxl"], c, {})
        case("sdxl_base", pipe, "sdxl", sdxl_kw, latx, [])
        pipe.load_lora_weights(files["kohya_sdxl"], adapter_name="c")
        assert_adapted(pipe, "c", ["unet", "text_encoder", "text_encoder_2"])
        case("sdxl_kohya", pipe, "sdxl", sdxl_kw, latx, [[rel("kohya_sdxl"), "c"]])
        pipe.unload_lora_weights()
        # The same file in Stability's block names, loaded by diffusers' own sgm mapping.
        from safetensors.torch import load_file
        sgm = {}
        for k, v in load_file(files["kohya_sdxl"]).items():
            if k.startswith("lora_unet_"):
                module, part = k[len("lora_unet_"):].split(".", 1)
                k = "lora_unet_" + to_sgm(module, pipe.unet.config.layers_per_block) + "." + part
            sgm[k] = v
        assert any("input_blocks" in k for k in sgm)
        save_file(sgm, files["kohya_sdxl_sgm"])
        pipe.load_lora_weights(files["kohya_sdxl_sgm"], adapter_name="s")
        assert_adapted(pipe, "s", ["unet", "text_encoder", "text_encoder_2"])
        case("sdxl_kohya_sgm", pipe, "sdxl", sdxl_kw, latx, [[rel("kohya_sdxl_sgm"), "s"]])

    import diffusers
    gp.write_json(os.path.join(OUT, "cases.json"), {
        "generator": "scripts/pipelines/gen_lora.py", "diffusers": diffusers.__version__,
        "torch": torch.__version__, "cases": cases})


if __name__ == "__main__":
    main()
