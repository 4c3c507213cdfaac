//! The training step against PyTorch + diffusers (fixtures from
//! `scripts/training/gen_training.py`): for a tiny UNet2DModel and each case
//! (epsilon / v_prediction / sample targets, min-SNR-γ, noise offset,
//! clipping, AdamW settings, LR schedules, EMA settings) the noised batch, the
//! target, the prediction, the loss and the gradient of the first step, and
//! the loss, gradient norm and learning rate of three steps, then the weights
//! and the moving average after them. Also diffusers' LR schedules and
//! EMAModel decays over 30-40 steps.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use diffusion_hub::weights::Weights;
use diffusion_models::state::to_stored;
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_pipelines::training::params::gradients;
use diffusion_pipelines::training::{
    AdamWConfig, Batch, Condition, EmaConfig, LrSchedule, LrScheduleKind, MixedPrecision,
    Objective, PredictionType, TrainConfig, Trainer, build_model,
};
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

type B = Autodiff<Flex>;
type Unet = UNet2DModel<B>;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

struct Tensors(Vec<u8>);

impl Tensors {
    fn f32(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture tensor {key}"));
        let shape = t.shape().to_vec();
        let v = match t.dtype() {
            safetensors::Dtype::F32 => t
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => t
                .data()
                .chunks(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{key}: {other:?}"),
        };
        (shape, v)
    }
    fn tensor(&self, key: &str) -> Tensor<B, 4> {
        let (shape, v) = self.f32(key);
        Tensor::from_data(
            TensorData::new(v, [shape[0], shape[1], shape[2], shape[3]]),
            &Default::default(),
        )
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn values<const D: usize, BB: burn::tensor::backend::Backend>(t: Tensor<BB, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn train_config(case: &Value) -> TrainConfig {
    let f = |k: &str| case[k].as_f64();
    let sched = &case["lr_scheduler"];
    let ema = &case["ema"];
    TrainConfig {
        learning_rate: f("lr").unwrap(),
        optimizer: AdamWConfig {
            beta1: case["betas"][0].as_f64().unwrap(),
            beta2: case["betas"][1].as_f64().unwrap(),
            eps: f("eps").unwrap(),
            weight_decay: f("weight_decay").unwrap(),
        },
        lr_schedule: LrSchedule::new(
            LrScheduleKind::parse(sched["name"].as_str().unwrap()).unwrap(),
            sched["num_warmup_steps"].as_u64().unwrap(),
            sched["num_training_steps"].as_u64().unwrap(),
        ),
        max_grad_norm: f("max_grad_norm"),
        ema: Some(serde_json::from_value::<EmaConfig>(ema.clone()).unwrap()),
        objective: Objective {
            prediction_type: Some(
                serde_json::from_value::<PredictionType>(case["prediction_type"].clone()).unwrap(),
            ),
            snr_gamma: f("snr_gamma"),
            noise_offset: f("noise_offset").unwrap(),
            prior_loss_weight: None,
        },
        mixed_precision: MixedPrecision::No,
    }
}

/// Every parameter of the model in the fixture's order, PyTorch layout,
/// concatenated: `by_key` maps a key to its values.
fn concat(keys: &[String], by_key: &HashMap<String, Vec<f32>>) -> Vec<f32> {
    keys.iter()
        .flat_map(|k| by_key[k].iter().copied())
        .collect()
}

fn state(t: &Trainer<B, Unet>, ema: bool) -> HashMap<String, Vec<f32>> {
    let model = if ema {
        t.inference_model()
    } else {
        t.raw_model()
    };
    diffusion_models::state::state_dict(&model, t.param_keys())
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let vals = v
                .data
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (k, vals)
        })
        .collect()
}

/// Per-tensor sums and L2 norms, the fixture's full-coverage check.
fn sums(keys: &[String], by_key: &HashMap<String, Vec<f32>>) -> (Vec<f32>, Vec<f32>) {
    keys.iter()
        .map(|k| {
            let v = &by_key[k];
            (
                v.iter().map(|x| f64::from(*x)).sum::<f64>() as f32,
                v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32,
            )
        })
        .unzip()
}

#[test]
fn training_steps_match_pytorch_and_diffusers() {
    let meta = json("cases.json");
    let keys: Vec<String> = serde_json::from_value(meta["param_keys"].clone()).unwrap();
    let noisy_keys: Vec<String> =
        serde_json::from_value(meta["grad_is_rounding_noise"].clone()).unwrap();
    let stride = meta["vector_stride"].as_u64().unwrap() as usize;
    let k_steps = meta["k_steps"].as_u64().unwrap();
    let fx = Tensors(std::fs::read(dir().join("cases.safetensors")).unwrap());
    let unet_dir = dir().join("unet");
    let text = std::fs::read_to_string(unet_dir.join("config.json")).unwrap();
    let config = diffusion_models::config::parse_config::<UNet2DConfig>(&text, "config")
        .unwrap()
        .config;
    let weights = Weights::open(&unet_dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let scheduler: Value = json("scheduler/scheduler_config.json");
    // Which entries of the concatenated vector belong to tensors whose true
    // gradient is 0 (to_k biases: softmax ignores them) and whose PyTorch
    // gradient is rounding noise that Adam amplifies: excluded.
    let mut mask = Vec::new();
    let mut per_tensor_ok = Vec::new();
    for k in &keys {
        let n: usize = meta["param_shapes"][keys.iter().position(|x| x == k).unwrap()]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .product();
        let ok = !noisy_keys.contains(k);
        mask.extend(std::iter::repeat_n(ok, n));
        per_tensor_ok.push(ok);
    }
    let sub = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .step_by(stride)
            .zip(mask.iter().step_by(stride))
            .filter(|(_, ok)| **ok)
            .map(|(x, _)| *x)
            .collect()
    };
    let keep = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .zip(&per_tensor_ok)
            .filter(|(_, ok)| **ok)
            .map(|(x, _)| *x)
            .collect()
    };
    let mut report = Vec::new();
    for case in meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dev = Default::default();
        let (model, pkeys) = build_model::<B, Unet>(&config, Some(&weights), &dev, 0).unwrap();
        let mut t = Trainer::from_parts(
            model,
            config.clone(),
            pkeys,
            scheduler.clone(),
            train_config(case),
            dev,
        )
        .unwrap();
        let initial = concat(&keys, &state(&t, false));
        let (_, ts) = fx.f32(&format!("{name}/timesteps"));
        let batch = Batch {
            x0: fx.tensor(&format!("{name}/x0")),
            noise: fx.tensor(&format!("{name}/noise")),
            offset_noise: Some(fx.tensor(&format!("{name}/offset_noise"))),
            timesteps: ts.iter().map(|&v| v as i64).collect(),
            condition: Condition::None,
        };
        // Step 0: the loss and every parameter's gradient.
        let loss = t.loss(&batch).unwrap();
        let loss0 = f64::from(values(loss.clone())[0]);
        let grads = loss.backward();
        let by_key: HashMap<String, Vec<f32>> = gradients(t.model(), &grads)
            .into_iter()
            .map(|(id, g)| {
                let info = &t.param_keys()[&id];
                let n: usize = info.stored.iter().product();
                let g = g.map(values).unwrap_or(vec![0.0; n]);
                (info.key.clone(), to_stored(info, g))
            })
            .collect();
        let grad0 = concat(&keys, &by_key);
        let (_, want) = fx.f32(&format!("{name}/grad0"));
        let e_grad = rel_l2(&sub(&grad0), &sub_want(&want, &mask, stride));
        let (_, gl) = sums(&keys, &by_key);
        let (_, ws) = fx.f32(&format!("{name}/grad0_l2"));
        let e_grad_l2 = rel_l2(&keep(&gl), &keep(&ws));
        let want_loss = case["loss"][0].as_f64().unwrap();
        let e_loss0 = (loss0 - want_loss).abs() / want_loss.abs();
        assert!(
            e_grad < 1e-4 && e_grad_l2 < 1e-4,
            "{name}: gradient rel. L2 {e_grad:.2e} (per-tensor norms {e_grad_l2:.2e})"
        );
        assert!(e_loss0 < 1e-5, "{name}: loss {loss0} vs {want_loss}");
        // K steps.
        for k in 0..k_steps as usize {
            let s = t.step(&batch).unwrap();
            let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b.abs().max(1e-12);
            let (wl, wn, wlr) = (
                case["loss"][k].as_f64().unwrap(),
                case["grad_norm"][k].as_f64().unwrap(),
                case["lr_used"][k].as_f64().unwrap(),
            );
            assert!(
                close(s.loss, wl, 1e-4),
                "{name} step {k}: loss {} vs {wl}",
                s.loss
            );
            assert!(
                close(s.grad_norm, wn, 1e-4),
                "{name} step {k}: grad norm {} vs {wn}",
                s.grad_norm
            );
            assert!(
                close(s.lr, wlr, 1e-12) || (s.lr == 0.0 && wlr == 0.0),
                "{name} step {k}: lr {} vs {wlr}",
                s.lr
            );
        }
        // The update (final - initial) of the weights and of the average.
        for (what, ema) in [("params_final", false), ("ema_final", true)] {
            let got = concat(&keys, &state(&t, ema));
            let (_, want) = fx.f32(&format!("{name}/{what}"));
            let init_sub = sub(&initial);
            let d_got: Vec<f32> = sub(&got)
                .iter()
                .zip(&init_sub)
                .map(|(a, b)| a - b)
                .collect();
            let d_want: Vec<f32> = sub_want(&want, &mask, stride)
                .iter()
                .zip(&init_sub)
                .map(|(a, b)| a - b)
                .collect();
            let e = rel_l2(&d_got, &d_want);
            let max_abs = d_got
                .iter()
                .zip(&d_want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let (_, want_l2) = fx.f32(&format!("{name}/{what}_l2"));
            let (_, got_l2) = sums(&keys, &state(&t, ema));
            let e_l2 = rel_l2(&keep(&got_l2), &keep(&want_l2));
            report.push(format!(
                "{name} {what}: update rel. L2 {e:.2e}, max abs {max_abs:.1e}"
            ));
            assert!(
                e < 1e-4 && max_abs < 2e-6 && e_l2 < 1e-5,
                "{name} {what}: update rel. L2 {e:.2e}, max abs {max_abs:.2e}, per-tensor norms {e_l2:.2e}"
            );
        }
        report.push(format!(
            "{name}: loss0 {e_loss0:.1e}, grad0 rel. L2 {e_grad:.2e}"
        ));
    }
    println!("{}", report.join("\n"));
}

fn sub_want(want: &[f32], mask: &[bool], stride: usize) -> Vec<f32> {
    want.iter()
        .zip(mask.iter().step_by(stride))
        .filter(|(_, ok)| **ok)
        .map(|(x, _)| *x)
        .collect()
}

#[test]
fn lr_schedules_match_diffusers() {
    let fx = json("lr_schedules.json");
    let (warmup, total) = (
        fx["num_warmup_steps"].as_u64().unwrap(),
        fx["num_training_steps"].as_u64().unwrap(),
    );
    let base = fx["base_lr"].as_f64().unwrap();
    let mut checked = Vec::new();
    for s in fx["schedules"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let Some(kind) = LrScheduleKind::parse(name) else {
            assert_eq!(
                name, "piecewise_constant",
                "a schedule diffusers has and we lack"
            );
            continue;
        };
        let mut sched = LrSchedule::new(kind, warmup, total);
        if let Some(c) = s["kwargs"]["num_cycles"].as_f64() {
            sched.num_cycles = Some(c);
        }
        if let Some(p) = s["kwargs"]["power"].as_f64() {
            sched.power = p;
        }
        for (i, m) in s["multipliers"].as_array().unwrap().iter().enumerate() {
            let want = m.as_f64().unwrap();
            let got = sched.multiplier(base, i as u64);
            assert!(
                (got - want).abs() < 1e-12,
                "{name} {:?} step {i}: {got} vs {want}",
                s["kwargs"]
            );
        }
        checked.push(name);
    }
    for name in LrScheduleKind::NAMES {
        assert!(checked.contains(name), "{name} is not in the fixture");
    }
}

#[test]
fn ema_decays_match_diffusers() {
    let fx = json("ema_decay.json");
    let settings = fx["settings"].as_array().unwrap();
    assert!(settings.len() >= 5);
    for s in settings {
        let config: EmaConfig = serde_json::from_value(s["config"].clone()).unwrap();
        for (n, d) in s["decay"].as_array().unwrap().iter().enumerate() {
            let want = d.as_f64().unwrap();
            let got = config.decay_at(n as u64);
            assert!(
                (got - want).abs() < 1e-15,
                "{} step {n}: {got} vs {want}",
                s["name"]
            );
        }
    }
}
