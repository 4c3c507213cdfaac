//! LoRA fine-tuning against diffusers + peft (fixtures from
//! `scripts/training/gen_lora_training.py`): on the tiny SD1 and SDXL
//! pipelines' UNets, the loss, gradient norm and learning rate of each of
//! three steps of `train_text_to_image_lora[_sdxl].py`'s step, the factors
//! after them, the `pytorch_lora_weights.safetensors` written from them
//! (keys, shapes, values, metadata as diffusers' `save_lora_weights`), and
//! the image the pipeline makes with that file (diffusers' with its own).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use common::{mean_abs_error, read_tensors};
use diffusion_hub::weights::Weights;
use diffusion_models::config::read_config;
use diffusion_models::load::{LoraFactors, TensorMap};
use diffusion_models::trainable_lora::{LoraConfig, LoraInit};
use diffusion_models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use diffusion_pipelines::lora::{Component, MissingComponent};
use diffusion_pipelines::training::{
    AdamWConfig, Batch, Condition, LoraLayers, LrSchedule, LrScheduleKind, MixedPrecision,
    Objective, PredictionType, TrainConfig, Trainer, build_lora_model, save_lora_weights,
    save_lora_weights_kohya,
};
use diffusion_pipelines::{Params, Task};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type B = Autodiff<Flex>;
type Unet = UNet2DConditionModel<B>;
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn dir() -> PathBuf {
    common::fixtures().join("lora_training")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join("cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn case(name: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

fn lora_config(case: &Value) -> LoraConfig {
    LoraConfig {
        r: case["r"].as_u64().unwrap() as usize,
        lora_alpha: case["lora_alpha"].as_f64().unwrap(),
        target_modules: serde_json::from_value(case["target_modules"].clone()).unwrap(),
        init_lora_weights: LoraInit::Gaussian,
    }
}

fn train_config(case: &Value) -> TrainConfig {
    let f = |k: &str| case[k].as_f64();
    TrainConfig {
        learning_rate: f("learning_rate").unwrap(),
        optimizer: AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: f("adam_weight_decay").unwrap(),
        },
        lr_schedule: LrSchedule::new(
            LrScheduleKind::parse(case["lr_scheduler"].as_str().unwrap()).unwrap(),
            case["lr_warmup_steps"].as_u64().unwrap(),
            case["total_steps"].as_u64().unwrap(),
        ),
        max_grad_norm: f("max_grad_norm"),
        ema: None,
        objective: Objective {
            prediction_type: case["prediction_type"]
                .as_str()
                .map(|p| serde_json::from_value::<PredictionType>(Value::from(p)).unwrap()),
            snr_gamma: f("snr_gamma"),
            noise_offset: f("noise_offset").unwrap(),
            prior_loss_weight: f("prior_loss_weight"),
        },
        mixed_precision: MixedPrecision::No,
    }
}

/// The fixture tensors under `prefix/`, prefix removed, as loader weights.
fn factors(tensors: &Tensors, prefix: &str) -> TensorMap {
    let mut map = TensorMap {
        name: format!("{prefix} factors"),
        ..Default::default()
    };
    for (k, (shape, v)) in tensors {
        if let Some(key) = k.strip_prefix(&format!("{prefix}/")) {
            map.insert_f32(key, shape.clone(), v);
        }
    }
    map
}

fn tensor<const D: usize>(tensors: &Tensors, key: &str) -> Tensor<B, D> {
    let (shape, v) = &tensors[key];
    let shape: [usize; D] = shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(v.clone(), shape), &Default::default())
}

fn batch(tensors: &Tensors, k: usize, xl: bool) -> Batch<B> {
    let t = |what: &str| format!("step{k}/{what}");
    let states = tensor::<3>(tensors, &t("states"));
    let condition = if xl {
        Condition::TextTime {
            states,
            text_embeds: tensor(tensors, &t("text_embeds")),
            time_ids: tensor(tensors, &t("time_ids")),
        }
    } else {
        Condition::Text(states)
    };
    Batch {
        x0: tensor(tensors, &t("x0")),
        noise: tensor(tensors, &t("noise")),
        offset_noise: Some(tensor(tensors, &t("offset_noise"))),
        timesteps: tensors[&t("timesteps")]
            .1
            .iter()
            .map(|&v| v as i64)
            .collect(),
        condition,
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// Trains the case's steps from its initial factors; returns the trainer.
fn train(pipeline_dir: &Path, case: &Value, tensors: &Tensors) -> Trainer<B, Unet> {
    let unet_dir = pipeline_dir.join("unet");
    let config = read_config::<UNet2DConditionConfig>(&unet_dir.join("config.json"))
        .unwrap()
        .config;
    let weights = Weights::open(&unet_dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let init = factors(tensors, "lora_init");
    let device = Default::default();
    let (model, keys) = build_lora_model::<B, Unet>(
        &config,
        &weights,
        &lora_config(case),
        LoraFactors::Stored(&init),
        &device,
    )
    .unwrap();
    let mut scheduler = case["scheduler_config"].clone();
    scheduler["_class_name"] = Value::from("DDPMScheduler");
    Trainer::from_parts(model, config, keys, scheduler, train_config(case), device).unwrap()
}

fn check_case(name: &str) {
    let case = case(name);
    let pipeline = case["pipeline"].as_str().unwrap();
    let xl = pipeline == "sdxl";
    let tensors = read_tensors(&dir().join(format!("{name}.safetensors")));
    let pdir = common::pipeline_dir(pipeline);
    let mut trainer = train(pdir.path(), &case, &tensors);
    let steps = case["steps"].as_u64().unwrap() as usize;
    for k in 0..steps {
        let stats = trainer.step(&batch(&tensors, k, xl)).unwrap();
        let (loss, norm, lr) = (
            case["losses"][k].as_f64().unwrap(),
            case["grad_norms"][k].as_f64().unwrap(),
            case["lrs"][k].as_f64().unwrap(),
        );
        println!(
            "{name} step {k}: loss {:.3e} rel, grad norm {:.3e} rel, lr {} vs {lr}",
            rel(stats.loss, loss),
            rel(stats.grad_norm, norm),
            stats.lr
        );
        assert!(
            rel(stats.loss, loss) <= 1e-4,
            "{name} step {k}: loss {} vs {loss}",
            stats.loss
        );
        assert!(
            rel(stats.grad_norm, norm) <= 1e-4,
            "{name} step {k}: grad norm {} vs {norm}",
            stats.grad_norm
        );
        assert!(
            rel(stats.lr, lr) <= 1e-9,
            "{name} step {k}: lr {} vs {lr}",
            stats.lr
        );
    }

    // The factors after the steps, and how far they moved.
    let trained = trainer.lora_state_dict().unwrap();
    let under = |prefix: &str| -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        tensors
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
            .collect()
    };
    let (want, start) = (under("lora_final/"), under("lora_init/"));
    assert_eq!(
        trained.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{name}: the trained factors' keys"
    );
    let (mut got_all, mut want_all, mut got_up, mut want_up) = (vec![], vec![], vec![], vec![]);
    for (key, t) in &trained {
        let got: Vec<f32> = t
            .data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let (shape, w) = &want[key];
        let s = &start[key].1;
        assert_eq!(&t.shape, shape, "{name}: {key} shape");
        got_up.extend(got.iter().zip(s).map(|(a, b)| a - b));
        want_up.extend(w.iter().zip(s).map(|(a, b)| a - b));
        got_all.extend(got);
        want_all.extend(w);
    }
    let (weights_err, update_err) = (rel_l2(&got_all, &want_all), rel_l2(&got_up, &want_up));
    println!("{name}: factors rel L2 {weights_err:.3e}, update rel L2 {update_err:.3e}");
    assert!(weights_err <= 1e-4, "{name}: factors rel L2 {weights_err}");
    assert!(update_err <= 1e-3, "{name}: update rel L2 {update_err}");

    // The file, as diffusers writes it.
    let out = tempfile::tempdir().unwrap();
    let config = lora_config(&case);
    let path = save_lora_weights(
        out.path(),
        &[LoraLayers {
            component: Component::Unet,
            factors: &trained,
            config: &config,
        }],
    )
    .unwrap();
    assert_eq!(
        path.file_name().unwrap(),
        "pytorch_lora_weights.safetensors"
    );
    let reference = dir().join(format!("{name}_pytorch_lora_weights.safetensors"));
    let (ours, theirs) = (
        Weights::open(&path).unwrap(),
        Weights::open(&reference).unwrap(),
    );
    let keys = |w: &Weights| {
        w.tensors()
            .map(|(k, i)| (k.to_string(), i.shape.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&ours),
        keys(&theirs),
        "{name}: the saved file's keys and shapes"
    );
    let metadata = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut m = m.metadata().clone().unwrap_or_default();
        let adapter = m
            .remove("lora_adapter_metadata")
            .map(|j| serde_json::from_str::<Value>(&j).unwrap());
        (m, adapter)
    };
    assert_eq!(metadata(&path), metadata(&reference), "{name}: metadata");

    // The image with the file, against diffusers' with its own.
    let (_pdir, mut pipe) = common::load_pipeline::<Flex>(pipeline);
    let call = &case["image_call"];
    let (shape, latents) = &tensors["image/latents"];
    let shape: [usize; 4] = shape.clone().try_into().unwrap();
    let params = || Params::<Flex> {
        prompt: vec![call["prompt"].as_str().unwrap().to_string()],
        negative_prompt: call["negative_prompt"]
            .as_str()
            .map(|s| vec![s.to_string()]),
        guidance_scale: call["guidance_scale"].as_f64(),
        num_inference_steps: call["num_inference_steps"].as_u64().map(|n| n as usize),
        height: call["height"].as_u64().map(|n| n as usize),
        width: call["width"].as_u64().map(|n| n as usize),
        latents: Some(Tensor::from_data(
            TensorData::new(latents.clone(), shape),
            &Default::default(),
        )),
        progress: false,
        ..Params::default()
    };
    let base = pipe
        .run(Task::TextToImage, params())
        .unwrap()
        .images
        .unwrap()
        .data;
    let sd = pipe.stable_diffusion().unwrap();
    sd.load_lora_weights(&path, Some("trained"), MissingComponent::Error)
        .unwrap();
    let images = pipe
        .run(Task::TextToImage, params())
        .unwrap()
        .images
        .unwrap()
        .data;
    let want = &tensors["image/images"].1;
    // The same factors in kohya's format give the same image.
    let kohya = save_lora_weights_kohya(
        out.path(),
        &[LoraLayers {
            component: Component::Unet,
            factors: &trained,
            config: &config,
        }],
    )
    .unwrap();
    let sd = pipe.stable_diffusion().unwrap();
    sd.unload_lora_weights().unwrap();
    sd.load_lora_weights(&kohya, Some("kohya"), MissingComponent::Error)
        .unwrap();
    let kohya_images = pipe
        .run(Task::TextToImage, params())
        .unwrap()
        .images
        .unwrap()
        .data;
    let kohya_mae = mean_abs_error(&kohya_images, want);
    println!("{name}: kohya file image MAE {:.3}/255", kohya_mae * 255.0);
    assert!(
        kohya_mae <= 1.0 / 255.0,
        "{name}: kohya file image MAE {kohya_mae}"
    );
    let (mae, moved) = (mean_abs_error(&images, want), mean_abs_error(&base, want));
    println!(
        "{name}: image MAE {:.3}/255 (the LoRA moves it {:.1}/255)",
        mae * 255.0,
        moved * 255.0
    );
    assert!(mae <= 1.0 / 255.0, "{name}: image MAE {mae}");
    assert!(
        moved >= 3.0 / 255.0,
        "{name}: the LoRA barely changes the image"
    );
}

#[test]
fn sd1_lora_steps_match_peft() {
    check_case("sd1_eps");
}

#[test]
fn sd1_lora_v_prediction_min_snr_offset_noise_and_clipping_match_peft() {
    check_case("sd1_v_snr");
}

#[test]
fn dreambooth_prior_preservation_steps_match_the_script() {
    check_case("sd1_prior");
}

#[test]
fn sdxl_lora_steps_match_peft() {
    check_case("sdxl_eps");
}

/// Mixed precision (f16 with loss scaling, bf16) over the f32 factors: the
/// same three steps against the f32 reference, within the stated tolerances.
#[test]
fn lora_steps_in_half_precision_stay_close_to_f32() {
    let case = case("sd1_eps");
    let tensors = read_tensors(&dir().join("sd1_eps.safetensors"));
    let pdir = common::pipeline_dir("sd1");
    // (precision, loss rel. error, factors' update rel. L2) allowed; measured
    // 6.3e-5 / 4.1e-2 in f16 and 4.5e-4 / 1.1e-1 in bf16. The update's error
    // is large next to the loss's because AdamW's first steps move every
    // entry by about ±lr whatever its gradient's size: entries whose gradient
    // is near zero change sign with the rounding of the half-precision pass.
    for (mode, loss_tol, update_tol) in [
        (MixedPrecision::Fp16, 2e-3, 1e-1),
        (MixedPrecision::Bf16, 2e-2, 2.5e-1),
    ] {
        let mut trainer = train(pdir.path(), &case, &tensors);
        trainer.set_mixed_precision(mode);
        let mut worst = 0f64;
        for k in 0..3 {
            let stats = trainer.step(&batch(&tensors, k, false)).unwrap();
            assert!(!stats.skipped, "{mode:?} step {k} skipped");
            worst = worst.max(rel(stats.loss, case["losses"][k].as_f64().unwrap()));
        }
        let trained = trainer.lora_state_dict().unwrap();
        let (mut got_up, mut want_up) = (vec![], vec![]);
        for (key, t) in &trained {
            let got = t
                .data
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            let s = &tensors[&format!("lora_init/{key}")].1;
            let w = &tensors[&format!("lora_final/{key}")].1;
            got_up.extend(got.zip(s).map(|(a, b)| a - b));
            want_up.extend(w.iter().zip(s).map(|(a, b)| a - b));
        }
        let update = rel_l2(&got_up, &want_up);
        println!("{mode:?}: loss rel. error ≤ {worst:.2e}, update rel. L2 {update:.2e}");
        assert!(worst <= loss_tol, "{mode:?}: loss rel. error {worst}");
        assert!(update <= update_tol, "{mode:?}: update rel. L2 {update}");
    }
}

/// Bad LoRA configs and factor files: one error naming the field, module or key.
#[test]
fn bad_lora_configs_and_factors_are_refused_by_name() {
    let pdir = common::pipeline_dir("sd1");
    let unet_dir = pdir.path().join("unet");
    let config = read_config::<UNet2DConditionConfig>(&unet_dir.join("config.json"))
        .unwrap()
        .config;
    let weights = Weights::open(&unet_dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let device = Default::default();
    let build = |lora: LoraConfig, factors: LoraFactors<'_>| {
        build_lora_model::<B, Unet>(&config, &weights, &lora, factors, &device)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = build(LoraConfig::attention(64), LoraFactors::Seeded(0));
    assert!(
        e.contains("`r`") && e.contains("rank 64") && e.contains("to_"),
        "{e}"
    );
    let mut none = LoraConfig::attention(2);
    none.target_modules = vec!["q_proj".into()];
    let e = build(none, LoraFactors::Seeded(0));
    assert!(e.contains("target_modules") && e.contains("q_proj"), "{e}");
    let mut zero = LoraConfig::attention(2);
    zero.r = 0;
    assert!(build(zero, LoraFactors::Seeded(0)).contains("`r`"));

    // Factors of another rank, and factors no layer takes.
    let tensors = read_tensors(&dir().join("sd1_eps.safetensors"));
    let init = factors(&tensors, "lora_init");
    let e = build(LoraConfig::attention(2), LoraFactors::Stored(&init));
    assert!(e.contains("lora_A.weight") && e.contains("[2, "), "{e}");
    let mut extra = init.clone();
    extra.insert_f32(
        "mid_block.attentions.0.proj_in.lora_A.weight",
        vec![4, 16],
        &[0.0; 64],
    );
    let e = build(LoraConfig::attention(4), LoraFactors::Stored(&extra));
    assert!(e.contains("proj_in.lora_A.weight"), "{e}");

    // Fresh factors: B is zero, so the model's output is the base model's.
    let (model, keys) = build_lora_model::<B, Unet>(
        &config,
        &weights,
        &LoraConfig::attention(4),
        LoraFactors::Seeded(7),
        &device,
    )
    .unwrap();
    let lora_keys = keys.values().filter(|i| i.key.contains(".lora_")).count();
    // 4 projections × 2 factors × (self + cross attention) × 4 transformer
    // blocks (one down, one middle, two up).
    assert_eq!(lora_keys, 4 * 2 * 2 * 4);
    let trainable = diffusion_pipelines::training::params::trainable_ids(&model);
    assert_eq!(trainable.len(), lora_keys, "only the factors train");
}

/// A LoRA run checkpointed after one step and resumed on its base model
/// takes the same two remaining steps as the run that went on (bit for bit),
/// and the checkpoint holds the factors only. Resuming on another model, or
/// with another LoRA config, is refused naming the file.
#[test]
fn a_lora_checkpoint_resumes_exactly_and_refuses_another_model_or_config() {
    let case = case("sd1_eps");
    let tensors = read_tensors(&dir().join("sd1_eps.safetensors"));
    let pdir = common::pipeline_dir("sd1");
    let unet_dir = pdir.path().join("unet");
    let config = read_config::<UNet2DConditionConfig>(&unet_dir.join("config.json"))
        .unwrap()
        .config;
    let weights = Weights::open(&unet_dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let init = factors(&tensors, "lora_init");
    let mut scheduler = case["scheduler_config"].clone();
    scheduler["_class_name"] = Value::from("DDPMScheduler");
    let lora = lora_config(&case);
    let new = || {
        Trainer::<B, Unet>::lora(
            &weights,
            config.clone(),
            lora.clone(),
            LoraFactors::Stored(&init),
            scheduler.clone(),
            train_config(&case),
            Default::default(),
        )
        .unwrap()
    };
    let mut straight = new();
    for k in 0..3 {
        straight.step(&batch(&tensors, k, false)).unwrap();
    }
    let mut first = new();
    first.step(&batch(&tensors, 0, false)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let ckpt = out.path().join("checkpoint-1");
    first
        .save_checkpoint(&ckpt, serde_json::json!({"note": 1}))
        .unwrap();
    assert!(ckpt.join("lora/adapter_model.safetensors").is_file());
    assert!(
        !ckpt
            .join("unet/diffusion_pytorch_model.safetensors")
            .exists()
    );
    let (mut resumed, extra) =
        Trainer::<B, Unet>::resume_lora(&ckpt, &weights, &config, Some(&lora), &Default::default())
            .unwrap();
    assert_eq!(extra["note"], 1);
    assert_eq!(resumed.step_count(), 1);
    for k in 1..3 {
        resumed.step(&batch(&tensors, k, false)).unwrap();
    }
    assert_eq!(
        resumed.lora_state_dict().unwrap(),
        straight.lora_state_dict().unwrap(),
        "resumed factors"
    );

    let mut other_rank = lora.clone();
    other_rank.r = 2;
    let e = Trainer::<B, Unet>::resume_lora(
        &ckpt,
        &weights,
        &config,
        Some(&other_rank),
        &Default::default(),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("r=4") && e.contains("r=2"),
        "{e}"
    );
    let mut other_model = config.clone();
    other_model.norm_eps = 1e-3;
    let e =
        Trainer::<B, Unet>::resume_lora(&ckpt, &weights, &other_model, None, &Default::default())
            .map(|_| ())
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("config.json") && e.contains("another config"),
        "{e}"
    );
    let e = Trainer::<B, Unet>::resume(&ckpt, &Default::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("LoRA"), "{e}");
}

/// `train_text_to_image.py`'s full fine-tune of the SD1 UNet (every
/// parameter, min-SNR weighting, warm-up, EMAModel): losses, gradient norms
/// and learning rates of three steps, then the moving average it saves.
#[test]
fn sd1_full_fine_tune_steps_match_diffusers() {
    let case = case("sd1_full");
    let tensors = read_tensors(&dir().join("sd1_full.safetensors"));
    let pdir = common::pipeline_dir("sd1");
    let unet_dir = pdir.path().join("unet");
    let config = read_config::<UNet2DConditionConfig>(&unet_dir.join("config.json"))
        .unwrap()
        .config;
    let weights = Weights::open(&unet_dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let device = Default::default();
    let (model, keys) =
        diffusion_pipelines::training::build_model::<B, Unet>(&config, Some(&weights), &device, 0)
            .unwrap();
    let mut scheduler = case["scheduler_config"].clone();
    scheduler["_class_name"] = Value::from("DDPMScheduler");
    let mut train = train_config(&case);
    train.ema = Some(serde_json::from_value(case["ema"].clone()).unwrap());
    let mut trainer = Trainer::from_parts(model, config, keys, scheduler, train, device).unwrap();
    for k in 0..3 {
        let stats = trainer.step(&batch(&tensors, k, false)).unwrap();
        let (loss, norm, lr) = (
            case["losses"][k].as_f64().unwrap(),
            case["grad_norms"][k].as_f64().unwrap(),
            case["lrs"][k].as_f64().unwrap(),
        );
        println!(
            "sd1_full step {k}: loss {:.3e} rel, grad norm {:.3e} rel",
            rel(stats.loss, loss),
            rel(stats.grad_norm, norm)
        );
        assert!(
            rel(stats.loss, loss) <= 1e-4,
            "step {k}: loss {} vs {loss}",
            stats.loss
        );
        assert!(
            rel(stats.grad_norm, norm) <= 1e-4,
            "step {k}: norm {} vs {norm}",
            stats.grad_norm
        );
        assert!(
            rel(stats.lr, lr) <= 1e-9,
            "step {k}: lr {} vs {lr}",
            stats.lr
        );
    }
    let saved = trainer.inference_state_dict().unwrap();
    let (mut got, mut want, mut got_up, mut want_up) = (vec![], vec![], vec![], vec![]);
    for (key, t) in &saved {
        let g: Vec<f32> = t
            .data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let w = &tensors[&format!("unet_final/{key}")].1;
        let s = &weights.tensor(key).unwrap().to_f32_vec().unwrap();
        got_up.extend(g.iter().zip(s).map(|(a, b)| a - b));
        want_up.extend(w.iter().zip(s).map(|(a, b)| a - b));
        got.extend(g);
        want.extend(w);
    }
    let (weights_err, update_err) = (rel_l2(&got, &want), rel_l2(&got_up, &want_up));
    println!("sd1_full: EMA weights rel L2 {weights_err:.3e}, update rel L2 {update_err:.3e}");
    assert!(weights_err <= 1e-4, "weights rel L2 {weights_err}");
    assert!(update_err <= 1e-3, "update rel L2 {update_err}");
}

/// The text side of a training batch is what the scripts compute: for SD1
/// `text_encoder(input_ids)[0]`, for SDXL `encode_prompt`'s states and pooled
/// projection (the fixtures' step-0 states, from diffusers), and SDXL's
/// `add_time_ids` are each image's original size, crop corner and the target
/// size, the corner mirrored for a flipped image.
#[test]
fn text_to_image_batches_encode_captions_and_sizes_as_the_scripts() {
    use diffusion_pipelines::training::{
        BatchSampler, CaptionedDataset, Captions, Crop, Interpolation, LatentCache,
        TextToImageBatches,
    };
    fn values<BB: burn::tensor::backend::Backend>(t: Tensor<BB, 4>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }
    let captions: Vec<String> = serde_json::from_value(
        serde_json::from_str::<Value>(&std::fs::read_to_string(dir().join("cases.json")).unwrap())
            .unwrap()["captions"]
            .clone(),
    )
    .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    for (k, caption) in captions.iter().enumerate() {
        // 40 wide, 48 high: resized to 32 × 38, centre crop at row 3.
        image::RgbImage::from_fn(40, 48, |x, y| image::Rgb([(x * 6) as u8, (y * 5) as u8, 9]))
            .save(data_dir.path().join(format!("{k}.png")))
            .unwrap();
        std::fs::write(data_dir.path().join(format!("{k}.txt")), caption).unwrap();
    }
    let files = Captions::Files {
        column: "text".into(),
    };
    for (pipeline, fixture) in [("sd1", "sd1_eps"), ("sdxl", "sdxl_eps")] {
        let tensors = read_tensors(&dir().join(format!("{fixture}.safetensors")));
        let (_pdir, mut pipe) = common::load_pipeline::<Flex>(pipeline);
        let sd = pipe.stable_diffusion().unwrap();
        let data = CaptionedDataset::load(
            data_dir.path(),
            32,
            Crop::Center,
            Interpolation::Bilinear,
            &files,
        )
        .unwrap();
        for random_flip in [false, true] {
            let batches = TextToImageBatches::<B> {
                pipeline: sd,
                data: &data,
                sampler: BatchSampler {
                    seed: 3,
                    batch_size: 2,
                    random_flip,
                },
                proportion_empty_prompts: 0.0,
                class_data: None,
                latent_cache: None,
            };
            let order = batches.captions(0);
            let batch = batches.batch(0, 1000, &Default::default()).unwrap();
            // Cached posteriors give the same latents (and refuse flips).
            let cache = LatentCache::new(sd, &data, None).unwrap();
            let cached = TextToImageBatches::<B> {
                latent_cache: Some(&cache),
                ..batches
            };
            if random_flip {
                let e = cached.batch(0, 1000, &Default::default()).unwrap_err();
                assert!(e.to_string().contains("cache_latents"), "{e}");
            } else {
                let x0 = cached.batch(0, 1000, &Default::default()).unwrap().x0;
                let (a, b) = (values(x0), values(batch.x0.clone()));
                assert!(
                    rel_l2(&a, &b) <= 1e-5,
                    "{pipeline}: cached latents {}",
                    rel_l2(&a, &b)
                );
            }
            // The tiny VAE halves the side once.
            assert_eq!(batch.x0.dims(), [2, 4, 16, 16]);
            let (states, pooled) = match batch.condition {
                Condition::Text(s) => (s, None),
                Condition::TextTime {
                    states,
                    text_embeds,
                    time_ids,
                } => {
                    let ids = time_ids.into_data().to_vec::<f32>().unwrap();
                    assert_eq!(
                        ids,
                        [48.0, 40.0, 3.0, 0.0, 32.0, 32.0].repeat(2),
                        "{pipeline}"
                    );
                    (states, Some(text_embeds))
                }
                Condition::None | Condition::ClassLabels(_) => unreachable!(),
            };
            let (want_shape, want) = &tensors["step0/states"];
            let got = states.into_data().to_vec::<f32>().unwrap();
            let row = want.len() / want_shape[0];
            for (i, caption) in order.iter().enumerate() {
                let k = captions.iter().position(|c| c == caption).unwrap();
                let err = rel_l2(&got[i * row..(i + 1) * row], &want[k * row..(k + 1) * row]);
                assert!(err <= 1e-5, "{pipeline}: states of {caption:?}: {err}");
            }
            if let Some(pooled) = pooled {
                let (shape, want) = &tensors["step0/text_embeds"];
                let got = pooled.into_data().to_vec::<f32>().unwrap();
                let row = want.len() / shape[0];
                for (i, caption) in order.iter().enumerate() {
                    let k = captions.iter().position(|c| c == caption).unwrap();
                    let err = rel_l2(&got[i * row..(i + 1) * row], &want[k * row..(k + 1) * row]);
                    assert!(err <= 1e-5, "{pipeline}: pooled of {caption:?}: {err}");
                }
            }
        }
    }
}
