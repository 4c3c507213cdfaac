#!/usr/bin/env python3
"""Training-parity fixtures: a few optimizer steps of a tiny UNet2DModel, done by
diffusers 0.42 + PyTorch, for the Rust training loop to reproduce.

    /work/.venv/bin/python scripts/training/gen_training.py [--stride N] [--out DIR]

Writes crates/diffusion-pipelines/tests/fixtures/training/:

  unet/config.json, unet/diffusion_pytorch_model.safetensors
      the tiny UNet2DModel (torch.manual_seed(0) before construction), f32.
  scheduler/scheduler_config.json
      DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"); each case
      overrides prediction_type.
  cases.json + cases.safetensors
      one entry per case: K=3 AdamW steps on the same batch (B=2, 1x8x8) with the
      loss of train_text_to_image.py (plain MSE or min-SNR), optional offset noise,
      optional grad clipping, a get_scheduler() LR schedule and an EMAModel.
      JSON records settings, timesteps and per-step loss / grad norm (before
      clipping) / lr used / EMA decay used. Tensors are named `<case>/<what>`:
        x0, noise, offset_noise, timesteps (int64)   the batch
        noisy, target, pred0                           step 0 forward, for localising
        grad0, params_final, ema_final                 all parameters flattened and
            concatenated in state_dict order (keys and shapes in cases.json
            "param_keys"/"param_shapes"), then subsampled: element i*stride of
            the concatenation ("vector_stride"; 1 = complete)
        grad0_sum, grad0_l2, params_final_sum, ...     per-parameter-tensor sum and
            L2 norm ([n_params] each), so every element still counts somewhere.
      The full vectors (3 x 45k floats per case) would be ~2 MB; the stride keeps
      the folder under 300 KB. `--stride 1 --out DIR` writes them whole elsewhere.
  lr_schedules.json
      get_scheduler() multipliers for steps 0..30 (base lr 1.0, warmup 5, total 25).
  ema_decay.json
      EMAModel.get_decay(step) for steps 0..40 under several settings.

Deterministic: single-threaded CPU torch, fixed seeds, so rerunning gives
byte-identical files.
"""
import argparse
import json
import pathlib
import shutil

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "diffusion-pipelines" / "tests" / "fixtures" / "training"

K_STEPS = 3
BATCH = 2
DEFAULT_STRIDE = 47  # prime, so the subsample walks across tensor boundaries unevenly

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
)

# PyTorch AdamW defaults are betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
ADAMW_DEFAULTS = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
# EMAModel defaults in diffusers 0.42.
EMA_DEFAULTS = dict(decay=0.9999, min_decay=0.0, update_after_step=0, use_ema_warmup=False,
                    inv_gamma=1.0, power=2 / 3)

CASES = [
    dict(name="eps_plain", seed=1, prediction_type="epsilon", snr_gamma=None, noise_offset=0.0,
         lr=1e-3, **ADAMW_DEFAULTS, max_grad_norm=None,
         lr_scheduler=dict(name="constant", num_warmup_steps=0, num_training_steps=K_STEPS),
         ema=dict(EMA_DEFAULTS), timesteps=[17, 803]),
    dict(name="v_minsnr", seed=2, prediction_type="v_prediction", snr_gamma=5.0, noise_offset=0.0,
         lr=1e-3, **ADAMW_DEFAULTS, max_grad_norm=1.0,
         lr_scheduler=dict(name="cosine", num_warmup_steps=1, num_training_steps=3),
         ema=dict(EMA_DEFAULTS, use_ema_warmup=True, inv_gamma=1.0, power=0.75, decay=0.9999),
         timesteps=[3, 612]),
    dict(name="sample_offset", seed=3, prediction_type="sample", snr_gamma=None, noise_offset=0.1,
         lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6, max_grad_norm=0.5,
         lr_scheduler=dict(name="linear", num_warmup_steps=1, num_training_steps=3),
         ema=dict(EMA_DEFAULTS, update_after_step=1), timesteps=[250, 999]),
    dict(name="eps_minsnr_clip", seed=4, prediction_type="epsilon", snr_gamma=5.0, noise_offset=0.0,
         lr=1e-3, **ADAMW_DEFAULTS, max_grad_norm=0.01,
         lr_scheduler=dict(name="constant", num_warmup_steps=0, num_training_steps=K_STEPS),
         ema=dict(EMA_DEFAULTS), timesteps=[40, 930]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                    help="keep every N-th element of the concatenated vectors (1 = all)")
    ap.add_argument("--out", type=pathlib.Path, default=OUT,
                    help="output folder (default: the committed fixture folder)")
    args = ap.parse_args()
    out_dir = args.out

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    unet = build_unet()
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.save_pretrained(out_dir / "scheduler")
    init_state = {k: v.clone() for k, v in unet.state_dict().items()}

    keys = list(init_state)
    manifest = {
        "generator": "scripts/training/gen_training.py",
        "torch": torch.__version__.split("+")[0],
        "diffusers": __import__("diffusers").__version__,
        "k_steps": K_STEPS,
        "batch": BATCH,
        "vector_stride": args.stride,
        "vector_len": sum(v.numel() for v in init_state.values()),
        "param_keys": keys,
        "param_shapes": [list(init_state[k].shape) for k in keys],
        # Softmax is invariant to a key bias, so these gradients are analytically zero and
        # what autograd returns is rounding noise (~1e-10). Adam turns that noise into
        # updates of up to ~0.1*lr, which no other implementation will reproduce: compare
        # these tensors' params_final/ema_final with an absolute tolerance of about lr.
        "grad_is_rounding_noise": [k for k in keys if k.endswith("to_k.bias")],
        "cases": [],
    }
    tensors = {}
    for case in CASES:
        entry, case_tensors = run_case(case, init_state, scheduler.config, args.stride)
        manifest["cases"].append(entry)
        tensors.update({f"{case['name']}/{k}": v.clone().contiguous() for k, v in case_tensors.items()})
        print(f"{case['name']:16s} loss {fmt(entry['loss'])}  grad_norm {fmt(entry['grad_norm'])}"
              f"  lr {fmt(entry['lr_used'])}  ema_decay {fmt(entry['ema_decay'])}")

    save_file(tensors, str(out_dir / "cases.safetensors"), metadata={"format": "pt"})
    write_json(out_dir / "cases.json", manifest)
    write_json(out_dir / "lr_schedules.json", lr_schedules())
    write_json(out_dir / "ema_decay.json", ema_decays())

    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    for p in sorted(out_dir.rglob("*")):
        if p.is_file():
            print(f"  {p}  {p.stat().st_size} B")
    print(f"total {total} B")


def build_unet():
    torch.manual_seed(0)
    return UNet2DModel(**UNET_CONFIG)


def make_batch(case):
    g = torch.Generator().manual_seed(case["seed"])
    x0 = torch.rand((BATCH, 1, 8, 8), generator=g) * 2 - 1
    noise = torch.randn((BATCH, 1, 8, 8), generator=g)
    offset_noise = torch.randn((BATCH, 1, 1, 1), generator=g)
    timesteps = torch.tensor(case["timesteps"], dtype=torch.int64)
    return x0, noise, offset_noise, timesteps


def loss_fn(scheduler, unet, case, x0, noise, timesteps):
    """One forward pass and loss as examples/text_to_image/train_text_to_image.py does it."""
    noisy = scheduler.add_noise(x0, noise, timesteps)
    pt = scheduler.config.prediction_type
    if pt == "epsilon":
        target = noise
    elif pt == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    elif pt == "sample":
        target = x0
    else:
        raise ValueError(pt)
    pred = unet(noisy, timesteps).sample
    if case["snr_gamma"] is None:
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        weights = None
    else:
        snr = compute_snr(scheduler, timesteps)
        w = torch.stack([snr, case["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
        if pt == "epsilon":
            w = w / snr
        elif pt == "v_prediction":
            w = w / (snr + 1)
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
        loss = loss.mean(dim=list(range(1, len(loss.shape)))) * w
        loss = loss.mean()
        weights = w
    return loss, noisy, target, pred, weights


def run_case(case, init_state, scheduler_config, stride):
    scheduler = DDPMScheduler.from_config(scheduler_config, prediction_type=case["prediction_type"])
    unet = build_unet()
    unet.load_state_dict(init_state)
    unet.train()
    params = list(unet.parameters())

    x0, raw_noise, offset_noise, timesteps = make_batch(case)
    noise = raw_noise
    if case["noise_offset"] > 0:
        noise = raw_noise + case["noise_offset"] * offset_noise

    optimizer = torch.optim.AdamW(params, lr=case["lr"], betas=case["betas"], eps=case["eps"],
                                  weight_decay=case["weight_decay"])
    s = case["lr_scheduler"]
    lr_scheduler = get_scheduler(s["name"], optimizer, num_warmup_steps=s["num_warmup_steps"],
                                 num_training_steps=s["num_training_steps"])
    ema = EMAModel(params, **case["ema"])

    losses, grad_norms, lrs, decays = [], [], [], []
    out = {"x0": x0, "noise": raw_noise, "offset_noise": offset_noise, "timesteps": timesteps}
    entry_extra = {}
    for step in range(K_STEPS):
        loss, noisy, target, pred, weights = loss_fn(scheduler, unet, case, x0, noise, timesteps)
        loss.backward()
        grads = [p.grad for p in params]
        if step == 0:
            out.update(noisy=noisy.detach(), target=target.detach(), pred0=pred.detach())
            grad0 = [g.detach().clone() for g in grads]
            if weights is not None:
                entry_extra["snr"] = compute_snr(scheduler, timesteps).tolist()
                entry_extra["loss_weights"] = weights.tolist()
        if case["max_grad_norm"] is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, case["max_grad_norm"])
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema.step(params)
        losses.append(loss.item())
        grad_norms.append(norm.item())
        decays.append(ema.cur_decay_value)

    final = [p.detach() for p in params]
    shadow = ema.shadow_params
    for name, vec in (("grad0", grad0), ("params_final", final), ("ema_final", shadow)):
        out[name] = torch.cat([v.reshape(-1) for v in vec])[::stride]
        out[f"{name}_sum"] = torch.stack([v.double().sum() for v in vec]).float()
        out[f"{name}_l2"] = torch.stack([v.double().norm() for v in vec]).float()

    entry = {
        "name": case["name"],
        "seed": case["seed"],
        "prediction_type": case["prediction_type"],
        "snr_gamma": case["snr_gamma"],
        "noise_offset": case["noise_offset"],
        "lr": case["lr"],
        "betas": list(case["betas"]),
        "eps": case["eps"],
        "weight_decay": case["weight_decay"],
        "max_grad_norm": case["max_grad_norm"],
        "lr_scheduler": s,
        "ema": case["ema"],
        "timesteps": case["timesteps"],
        **entry_extra,
        "loss": losses,
        "grad_norm": grad_norms,
        "lr_used": lrs,
        "ema_decay": decays,
    }
    return entry, out


def lr_schedules(base_steps=31, warmup=5, total=25):
    """Multipliers (base lr 1.0) that get_scheduler() gives at steps 0..30: the lr the
    optimizer holds when optimizer.step() runs for that step."""
    specs = [
        ("constant", {}),
        ("constant_with_warmup", {}),
        ("linear", {}),
        ("cosine", {}),  # num_cycles 0.5 (get_scheduler does not forward num_cycles here)
        ("cosine_with_restarts", {"num_cycles": 2}),
        ("polynomial", {"power": 1.0}),  # lr_end 1e-7 (not settable through get_scheduler)
        ("polynomial", {"power": 2.0}),
        ("piecewise_constant", {"step_rules": "1:10,0.1:20,0.01"}),
    ]
    out = {"num_warmup_steps": warmup, "num_training_steps": total, "base_lr": 1.0, "schedules": []}
    for name, kw in specs:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total, **kw)
        mult = []
        for _ in range(base_steps):
            mult.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out["schedules"].append({"name": name, "kwargs": kw, "multipliers": mult})
    return out


def ema_decays(steps=41):
    settings = [
        ("defaults", {}),
        ("warmup_power_2_3", {"use_ema_warmup": True, "power": 2 / 3}),
        ("warmup_power_3_4", {"use_ema_warmup": True, "power": 3 / 4}),
        ("warmup_power_3_4_inv_gamma_2", {"use_ema_warmup": True, "power": 3 / 4, "inv_gamma": 2.0}),
        ("update_after_step_5", {"update_after_step": 5}),
        ("min_decay_0.5", {"min_decay": 0.5}),
        ("decay_0.99", {"decay": 0.99}),  # the cap is not reached within 40 steps...
        ("decay_0.5", {"decay": 0.5}),  # ...so these two make it bite
        ("warmup_decay_0.8", {"use_ema_warmup": True, "power": 3 / 4, "decay": 0.8}),
    ]
    p = [torch.nn.Parameter(torch.zeros(1))]
    out = {"note": "EMAModel.get_decay(optimization_step); EMAModel.step() increments "
                   "optimization_step first, so the n-th call (1-based) uses get_decay(n)",
           "settings": []}
    for name, kw in settings:
        ema = EMAModel(p, **kw)
        full = dict(EMA_DEFAULTS, **kw)
        out["settings"].append({"name": name, "config": full,
                                "decay": [ema.get_decay(s) for s in range(steps)]})
    return out


def write_json(path, obj):
    """Indented JSON with lists of scalars kept on one line (smaller, still diffable)."""
    def enc(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            items = [f'{pad} {json.dumps(k)}: {enc(v, ind + 1)}' for k, v in o.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(o, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in o):
            items = [f"{pad} {enc(v, ind + 1)}" for v in o]
            return "[\n" + ",\n".join(items) + f"\n{pad}]"
        return json.dumps(o)

    with open(path, "w") as f:
        f.write(enc(obj, 0) + "\n")


def fmt(xs):
    return "[" + ", ".join(f"{x:.6g}" for x in xs) + "]"


if __name__ == "__main__":
    main()
