"""Fixtures for the CLIP text encoders (transformers' CLIPTextModel and
CLIPTextModelWithProjection), as Stable Diffusion 1.x, 2.x and SDXL use them.

    python scripts/models/gen_clip.py           # tiny fixtures, committed
    python scripts/models/gen_clip.py --full    # real-size random models under target/full-fixtures/clip/ (not committed)

Each fixture is a folder `tests/fixtures/clip/<name>/` holding what
`from_pretrained` reads (`config.json`, `model.safetensors`) and `io.safetensors`
with the inputs and transformers' outputs:

    input.input_ids            [batch, seq] (as f32; ids are exact below 2^24)
    output.hidden_states.<i>   embeddings output (i = 0) and every layer's output
    output.last_hidden_state   after final_layer_norm
    output.pooler_output       the final-normed state at the EOS position
    output.text_embeds         (with projection only)

Hub checkpoints (every SD/SDXL `text_encoder*`) store the keys under
`text_model.`; transformers 5 writes a freshly built CLIPTextModel without that
prefix and strips it on load. The fixtures cover both layouts, and the SD1
one also carries the old int64 `text_model.embeddings.position_ids` buffer. Each
prefixed folder is reloaded with `from_pretrained` to prove transformers reads
it as written.
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from common import REPO, fixture_dir, randomize, save


def prompts(lengths, seq, bos, eos, pad, high, seed):
    """Token ids as CLIP's tokenizer lays them out: bos, prompt, eos, padding
    (with `pad`) to `seq`; prompt tokens drawn from [1, high)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        body = torch.randint(1, high, (n,), generator=g)
        # Keep the special ids out of the prompt body.
        body = torch.where((body == bos) | (body == eos), torch.full_like(body, 7), body)
        row = torch.cat([torch.tensor([bos]), body, torch.tensor([eos])])
        rows.append(torch.cat([row, torch.full((seq - len(row),), pad)]))
    return torch.stack(rows).long()


def outputs(model, ids):
    out = model(ids, output_hidden_states=True)
    tensors = {"input.input_ids": ids.float()}
    for i, h in enumerate(out.hidden_states):
        tensors[f"output.hidden_states.{i}"] = h
    tensors["output.last_hidden_state"] = out.last_hidden_state
    if hasattr(out, "pooler_output"):
        tensors["output.pooler_output"] = out.pooler_output
    if hasattr(out, "text_embeds"):
        tensors["output.text_embeds"] = out.text_embeds
        inner = model.text_model(ids)
        tensors["output.pooler_output"] = inner.pooler_output
    return tensors


def write(name, model, ids, prefix, position_ids=False, max_shard_size=None):
    """Saves `model` with transformers' save_pretrained (sharded with
    `max_shard_size`), optionally moving the keys under `prefix.` (the Hub
    layout) and adding `position_ids`."""
    d = fixture_dir(f"clip/{name}")
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    if max_shard_size:
        model.save_pretrained(d, safe_serialization=True, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(d, safe_serialization=True)
    if prefix or position_ids:
        path = os.path.join(d, "model.safetensors")
        sd = load_file(path)
        if prefix:
            sd = {k if k.startswith(prefix + ".") else f"{prefix}.{k}": v for k, v in sd.items()}
        if position_ids:
            n = model.config.max_position_embeddings
            sd["text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64).unsqueeze(0)
        save_file(sd, path, metadata={"format": "pt"})
    expected = outputs(model, ids)
    # transformers reads the folder back to the same outputs.
    cls = type(model)
    reloaded = cls.from_pretrained(d)
    again = outputs(reloaded, ids)
    for k, v in expected.items():
        assert torch.equal(v, again[k]), f"{name}: reloaded model differs at {k}"
    save(os.path.join(d, "io.safetensors"), expected)
    for f in sorted(os.listdir(d)):
        print(f"  {f}: {os.path.getsize(os.path.join(d, f))} bytes")


def tiny():
    # SD 1.x: quick_gelu, the legacy eos_token_id 2 (pooling by argmax of the
    # ids, the tokenizer's eos being the highest id), padded with eos; keys
    # under text_model. plus position_ids, as in runwayml/stable-diffusion-v1-5.
    cfg = CLIPTextConfig(vocab_size=640, hidden_size=32, intermediate_size=64, projection_dim=32,
                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=24,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2)
    torch.manual_seed(0)
    m = randomize(CLIPTextModel(cfg).eval(), 101)
    ids = prompts([5, 11], 24, bos=638, eos=639, pad=639, high=638, seed=102)
    write("sd1", m, ids, "text_model", position_ids=True)

    # SD 2.x: gelu, a real eos_token_id (first position equal to it), padded
    # with eos, sequence shorter than max_position_embeddings.
    cfg = CLIPTextConfig(vocab_size=640, hidden_size=32, intermediate_size=48, projection_dim=32,
                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=20,
                         hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=638,
                         eos_token_id=639)
    torch.manual_seed(0)
    m = randomize(CLIPTextModel(cfg).eval(), 201)
    ids = prompts([3, 9], 16, bos=638, eos=639, pad=639, high=638, seed=202)
    write("sd2", m, ids, "text_model")

    # SDXL's second encoder: CLIPTextModelWithProjection, gelu, padded with 0
    # ("!"), eos in the middle of the vocabulary and prompt ids above it, so
    # that pooling by argmax would pick the wrong position.
    cfg = CLIPTextConfig(vocab_size=640, hidden_size=32, intermediate_size=80, projection_dim=24,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=318,
                         eos_token_id=319)
    torch.manual_seed(0)
    m = randomize(CLIPTextModelWithProjection(cfg).eval(), 301)
    ids = prompts([7, 14], 77, bos=318, eos=319, pad=0, high=640, seed=302)
    assert (ids.argmax(-1) != (ids == 319).int().argmax(-1)).all()
    write("sdxl2", m, ids, None)

    # transformers 5's own layout for a CLIPTextModel built from a config:
    # keys without the text_model. prefix; sharded (model.safetensors.index.json).
    cfg = CLIPTextConfig(vocab_size=200, hidden_size=16, intermediate_size=40, projection_dim=16,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=12,
                         hidden_act="gelu", layer_norm_eps=1e-6, pad_token_id=1, bos_token_id=198,
                         eos_token_id=199)
    torch.manual_seed(0)
    m = randomize(CLIPTextModel(cfg).eval(), 401)
    ids = prompts([2, 6], 12, bos=198, eos=199, pad=0, high=198, seed=402)
    write("unprefixed", m, ids, None, max_shard_size="20KB")

    total = 0
    for root, _, files in os.walk(fixture_dir("clip")):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"total {total} bytes")


def full():
    """Real-size random text encoders: SD1's CLIP ViT-L/14 (123M) and SDXL's
    OpenCLIP bigG (695M), prompt batch of 2 at 77 tokens."""
    base = os.path.join(REPO, "target", "full-fixtures", "clip")
    configs = {
        "clip_l": (CLIPTextModel, CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768,
            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
            hidden_act="quick_gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2), 49407),
        "bigg": (CLIPTextModelWithProjection, CLIPTextConfig(
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, projection_dim=1280,
            num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
            hidden_act="gelu", pad_token_id=1, bos_token_id=49406, eos_token_id=49407), 0),
    }
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    for name, (cls, cfg, pad) in configs.items():
        if only and name not in only:
            continue
        d = os.path.join(base, name)
        os.makedirs(d, exist_ok=True)
        torch.manual_seed(0)
        m = randomize(cls(cfg).eval(), 501)
        ids = prompts([12, 40], 77, bos=49406, eos=49407, pad=pad, high=49406, seed=502)
        m.save_pretrained(d, safe_serialization=True)
        save(os.path.join(d, "io.safetensors"), outputs(m, ids))
        print(f"wrote {d}")


if __name__ == "__main__":
    if "--full" in sys.argv:
        full()
    else:
        tiny()
