//! The trainer's behaviour beyond PyTorch parity (tests/training.rs):
//! resuming is exact, a saved pipeline loads and samples what the trainer's
//! weights sample, training reduces the loss, bad batches are refused.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use diffusion_pipelines::training::params::gradients;
use diffusion_pipelines::training::{
    BatchSampler, Condition, EmaConfig, GradScaler, ImageDataset, LrSchedule, LrScheduleKind,
    MixedPrecision, TrainConfig, Trainer, build_model,
};
use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params, PipelineError};
use serde_json::{Value, json};

type B = Autodiff<Flex>;
type Unet = UNet2DModel<B>;

fn unet_config() -> UNet2DConfig {
    serde_json::from_value(json!({
        "sample_size": 8, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8
    }))
    .unwrap()
}

fn scheduler_config() -> Value {
    json!({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"})
}

fn train_config() -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-3,
        lr_schedule: LrSchedule::new(LrScheduleKind::Cosine, 2, 8),
        ema: Some(EmaConfig {
            use_ema_warmup: true,
            power: 0.75,
            ..EmaConfig::default()
        }),
        ..TrainConfig::default()
    }
}

fn trainer(seed: u64) -> Trainer<B, Unet> {
    trainer_in(seed, MixedPrecision::No)
}

fn trainer_in(seed: u64, mixed_precision: MixedPrecision) -> Trainer<B, Unet> {
    trainer_with(
        seed,
        TrainConfig {
            mixed_precision,
            ..train_config()
        },
    )
}

fn trainer_with(seed: u64, config: TrainConfig) -> Trainer<B, Unet> {
    let dev = Default::default();
    let (model, keys) = build_model::<B, Unet>(&unet_config(), None, &dev, seed).unwrap();
    Trainer::from_parts(model, unet_config(), keys, scheduler_config(), config, dev).unwrap()
}

/// Eight 8×8 "images": bars at different rows.
fn dataset() -> ImageDataset {
    let images = (0..8)
        .map(|k| {
            (0..64)
                .map(|i| if i / 8 == k { 1.0 } else { -1.0 })
                .collect()
        })
        .collect();
    ImageDataset::from_images(8, 1, images).unwrap()
}

fn sampler() -> BatchSampler {
    BatchSampler {
        seed: 3,
        batch_size: 4,
        random_flip: true,
    }
}

fn weights(t: &Trainer<B, Unet>) -> Vec<(String, Vec<u8>)> {
    t.inference_state_dict()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.data))
        .collect()
}

/// Bit-equality of two state dicts, naming the tensors that differ (not
/// printing megabytes of bytes).
fn same(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)]) -> bool {
    let differ: Vec<&str> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.0.as_str())
        .collect();
    if !differ.is_empty() {
        eprintln!(
            "{} of {} tensors differ, e.g. {:?}",
            differ.len(),
            a.len(),
            &differ[..differ.len().min(5)]
        );
    }
    a.len() == b.len() && differ.is_empty()
}

#[test]
fn a_resumed_run_continues_bit_for_bit() {
    let data = dataset();
    let dev = Default::default();
    let run = |t: &mut Trainer<B, Unet>, steps: u64| {
        for _ in 0..steps {
            let batch = sampler()
                .batch::<B>(&data, t.step_count(), t.num_train_timesteps(), &dev)
                .unwrap();
            t.step(&batch).unwrap();
        }
    };
    let mut straight = trainer(5);
    run(&mut straight, 5);

    let mut first = trainer(5);
    run(&mut first, 2);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoint-2");
    first
        .save_checkpoint(&ckpt, json!({"note": "caller state"}))
        .unwrap();
    drop(first);
    let (mut resumed, extra) = Trainer::<B, Unet>::resume(&ckpt, &dev).unwrap();
    assert_eq!(extra, json!({"note": "caller state"}));
    assert_eq!(resumed.step_count(), 2);
    run(&mut resumed, 3);
    assert!(
        same(&weights(&resumed), &weights(&straight)),
        "EMA weights differ"
    );
    let raw = |t: &Trainer<B, Unet>| -> Vec<(String, Vec<u8>)> {
        diffusion_models::state::state_dict(&t.raw_model(), t.param_keys())
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.data))
            .collect()
    };
    assert!(
        same(&raw(&resumed), &raw(&straight)),
        "trained weights differ"
    );
    // No temporary folder is left beside the checkpoint.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("checkpoint-2")]);
}

#[test]
fn the_saved_pipeline_loads_and_samples_what_the_trainer_samples() {
    let data = dataset();
    let dev = Default::default();
    let mut t = trainer(1);
    for s in 0..3 {
        let batch = sampler().batch::<B>(&data, s, 1000, &dev).unwrap();
        t.step(&batch).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    t.save_pipeline(dir.path(), "DDPMPipeline", None).unwrap();
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model_index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["unet"], json!(["diffusers", "UNet2DModel"]));
    assert_eq!(index["scheduler"], json!(["diffusers", "DDPMScheduler"]));

    // The trainer's models run Burn's own ops (they have a backward pass);
    // the loaded pipeline is asked for the same, so the two agree bit for bit.
    let options = LoadOptions {
        formulation: Some(diffusion_models::Formulation::BURN_OPS),
        ..LoadOptions::default()
    };
    let mut pipe =
        DiffusionPipeline::<Flex>::from_pretrained(dir.path().to_str().unwrap(), &options).unwrap();
    let params = || Params {
        num_inference_steps: Some(4),
        num_images_per_prompt: 2,
        generator: Some(Generator::Seed(0)),
        ..Params::default()
    };
    let loaded = pipe.call(params()).unwrap().latents;
    let mut direct = diffusion_pipelines::Unconditional::<Flex> {
        unet: t.inference_model(),
        unet_config: t.model_config().clone(),
        scheduler: diffusion_pipelines::components::build_scheduler(t.scheduler_config(), None)
            .unwrap(),
        scheduler_config: t.scheduler_config().clone(),
        ddim: false,
        device: dev,
    };
    let expect = direct.run(params()).unwrap().latents;
    let (a, b) = (values(loaded), values(expect));
    assert_eq!(a, b);
}

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

#[test]
fn training_reduces_the_loss() {
    let data = dataset();
    let dev = Default::default();
    let mut t = trainer(2);
    // Same batch every step: the loss on it must fall.
    let batch = sampler().batch::<B>(&data, 0, 1000, &dev).unwrap();
    let first = t.step(&batch).unwrap().loss;
    let mut last = first;
    for _ in 0..15 {
        last = t.step(&batch).unwrap().loss;
    }
    assert!(last < 0.7 * first, "loss {first} -> {last}");
}

#[test]
fn a_text_conditioned_unet_trains_too() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pipelines/sd1/unet/config.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let config = diffusion_models::config::parse_config::<UNet2DConditionConfig>(&text, path)
        .unwrap()
        .config;
    let dev = Default::default();
    let (model, keys) = build_model::<B, UNet2DConditionModel<B>>(&config, None, &dev, 0).unwrap();
    let mut t = Trainer::from_parts(
        model,
        config,
        keys,
        json!({"_class_name": "DDPMScheduler", "prediction_type": "v_prediction"}),
        TrainConfig {
            learning_rate: 1e-3,
            ..TrainConfig::default()
        },
        dev,
    )
    .unwrap();
    let x0 = Tensor::<B, 4>::from_data(
        TensorData::new(
            (0..2 * 4 * 16 * 16)
                .map(|i| ((i % 7) as f32 - 3.0) / 3.0)
                .collect(),
            [2, 4, 16, 16],
        ),
        &dev,
    );
    let states = Tensor::<B, 3>::from_data(
        TensorData::new(
            (0..2 * 5 * 8)
                .map(|i| ((i % 5) as f32 - 2.0) / 2.0)
                .collect(),
            [2, 5, 8],
        ),
        &dev,
    );
    let batch = diffusion_pipelines::training::Batch {
        noise: x0.clone().flip([3]),
        x0,
        offset_noise: None,
        timesteps: vec![100, 700],
        condition: Condition::Text(states),
    };
    let first = t.step(&batch).unwrap();
    assert!(first.grad_norm > 0.0);
    let mut last = first.loss;
    for _ in 0..10 {
        last = t.step(&batch).unwrap().loss;
    }
    assert!(last < first.loss, "loss {} -> {last}", first.loss);
    // Without text states the conditional UNet refuses the batch.
    let bad = diffusion_pipelines::training::Batch {
        condition: Condition::None,
        ..batch
    };
    assert!(matches!(t.step(&bad), Err(PipelineError::Parameter { .. })));
}

#[test]
fn bad_batches_are_refused_and_leave_the_weights_alone() {
    let data = dataset();
    let dev = Default::default();
    let mut t = trainer(4);
    let before = weights(&t);
    let good = sampler().batch::<B>(&data, 0, 1000, &dev).unwrap();
    let mut err = |b| t_step_err(&mut t, b);
    let mut b = good.clone();
    b.timesteps[0] = 1000;
    assert!(err(b).contains("timestep 1000"));
    let mut b = good.clone();
    b.timesteps.pop();
    assert!(err(b).contains("3 timesteps for 4 samples"));
    let mut b = good.clone();
    b.x0 = b.x0.clone().mul_scalar(f32::NAN);
    let msg = err(b);
    assert!(
        msg.contains("training step 1") && msg.contains("NaN"),
        "{msg}"
    );
    assert!(same(&weights(&t), &before));
    assert_eq!(t.step_count(), 0);
}

fn t_step_err(t: &mut Trainer<B, Unet>, b: diffusion_pipelines::training::Batch<B>) -> String {
    t.step(&b).unwrap_err().to_string()
}

#[test]
fn image_folders_load_and_bad_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = ImageDataset::load(dir.path(), 8, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no .png/.jpg/.jpeg images"), "{err}");
    // A 12×6 image: shorter side to 8, center crop.
    let img = image::GrayImage::from_fn(12, 6, |x, _| image::Luma([if x < 6 { 0 } else { 255 }]));
    img.save(dir.path().join("a.png")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let d = ImageDataset::load(dir.path(), 8, 1).unwrap();
    assert_eq!((d.len(), d.images[0].len()), (1, 64));
    let err = ImageDataset::from_images(8, 1, vec![vec![0.0; 63]]).unwrap_err();
    assert!(err.to_string().contains("image 0 has 63 values"), "{err}");
    assert_eq!(d.images[0][0], -1.0);
    assert_eq!(d.images[0][7], 1.0);
    assert_eq!(
        ImageDataset::load(dir.path(), 8, 3).unwrap().images[0].len(),
        192
    );
    std::fs::write(dir.path().join("b.png"), b"not a png").unwrap();
    let err = ImageDataset::load(dir.path(), 8, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("b.png"), "{err}");
}

/// The loss and the flattened gradients of every parameter, in parameter order.
fn loss_and_gradients(
    t: &Trainer<B, Unet>,
    batch: &diffusion_pipelines::training::Batch<B>,
) -> (f64, Vec<f32>) {
    let loss = t.loss(batch).unwrap();
    let value = loss.clone().into_scalar() as f64;
    let grads = loss.backward();
    let flat = gradients(t.model(), &grads)
        .into_iter()
        .flat_map(|(_, g)| values(g.expect("every parameter has a gradient")))
        .collect();
    (value, flat)
}

#[test]
fn mixed_precision_losses_and_gradients_track_f32() {
    let data = dataset();
    let dev = Default::default();
    let batch = sampler().batch::<B>(&data, 0, 1000, &dev).unwrap();
    let (loss, grad) = loss_and_gradients(&trainer(9), &batch);
    // f16 keeps 11 significant bits, bf16 8: the loss within a few of their
    // ulps, the gradient direction nearly the same.
    for (precision, loss_tol, min_cos) in [
        (MixedPrecision::Fp16, 2e-3, 0.9999),
        (MixedPrecision::Bf16, 1e-2, 0.999),
    ] {
        let t = trainer_in(9, precision);
        let (l, g) = loss_and_gradients(&t, &batch);
        let dot: f64 = g
            .iter()
            .zip(&grad)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (norm(&g) * norm(&grad));
        let rel = (l - loss).abs() / loss;
        eprintln!("{precision:?}: loss {l} vs {loss} (rel {rel:.2e}), gradient cosine {cos:.6}");
        assert!(rel < loss_tol, "{precision:?}: loss {l} vs f32 {loss}");
        assert!(cos > min_cos, "{precision:?}: gradient cosine {cos}");
        assert_eq!(g.len(), grad.len());
    }
}

#[test]
fn fp16_training_reduces_the_loss_over_f32_master_weights() {
    let data = dataset();
    let dev = Default::default();
    let mut t = trainer_in(2, MixedPrecision::Fp16);
    let batch = sampler().batch::<B>(&data, 0, 1000, &dev).unwrap();
    let first = t.step(&batch).unwrap();
    assert_eq!(first.loss_scale, Some(65536.0));
    assert!(!first.skipped);
    let mut last = first.loss;
    for _ in 0..15 {
        last = t.step(&batch).unwrap().loss;
    }
    assert!(last < 0.7 * first.loss, "loss {} -> {last}", first.loss);
    assert_eq!(t.optimizer_steps(), 16);
    // The weights the trainer keeps (and saves) are f32.
    for (key, tensor) in t.inference_state_dict().unwrap() {
        assert_eq!(tensor.dtype, diffusion_hub::weights::Dtype::F32, "{key}");
    }
}

#[test]
fn an_overflowing_f16_loss_scale_skips_steps_and_backs_off() {
    let data = dataset();
    let dev = Default::default();
    // A long linear warm-up: every step count has its own learning rate.
    let schedule = LrSchedule::new(LrScheduleKind::ConstantWithWarmup, 100, 1000);
    let mut t = trainer_with(
        6,
        TrainConfig {
            mixed_precision: MixedPrecision::Fp16,
            lr_schedule: schedule,
            ..train_config()
        },
    );
    t.set_grad_scaler(GradScaler::with_scale(2f64.powi(40)))
        .unwrap();
    let before = weights(&t);
    let raw = |t: &Trainer<B, Unet>| {
        diffusion_models::state::state_dict(&t.raw_model(), t.param_keys()).unwrap()
    };
    let raw_before = raw(&t);
    let mut skipped = 0;
    loop {
        let batch = sampler()
            .batch::<B>(&data, t.step_count(), 1000, &dev)
            .unwrap();
        let scale = t.grad_scaler().unwrap().scale;
        let stats = t.step(&batch).unwrap();
        assert_eq!(stats.loss_scale, Some(scale));
        if !stats.skipped {
            // The learning-rate schedule did not advance over the skipped
            // steps: the first update runs at the warm-up's first rate.
            assert_eq!(stats.lr, schedule.lr(1e-3, 0));
            assert_ne!(stats.lr, schedule.lr(1e-3, skipped));
            break;
        }
        skipped += 1;
        // Nothing moved; the scale halved; the optimizer took no step.
        assert_eq!(t.grad_scaler().unwrap().scale, scale / 2.0);
        assert_eq!(t.optimizer_steps(), 0);
        assert!(raw(&t) == raw_before, "a skipped step changed the weights");
        assert!(
            skipped < 40,
            "the scale never came down to a finite gradient"
        );
    }
    assert!(
        skipped >= 10,
        "2^40 should overflow f16 gradients ({skipped} skips)"
    );
    assert_eq!(t.step_count(), skipped + 1);
    assert_eq!(t.optimizer_steps(), 1);
    let batch = sampler()
        .batch::<B>(&data, t.step_count(), 1000, &dev)
        .unwrap();
    assert!(!t.step(&batch).unwrap().skipped);
    assert!(!same(&weights(&t), &before));

    // The scaler and the optimizer's own count survive a checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    t.save_checkpoint(&ckpt, json!({})).unwrap();
    let (mut resumed, _) = Trainer::<B, Unet>::resume(&ckpt, &dev).unwrap();
    assert_eq!(resumed.grad_scaler(), t.grad_scaler());
    assert_eq!(resumed.optimizer_steps(), 2);
    assert_eq!(resumed.config().mixed_precision, MixedPrecision::Fp16);
    let batch = sampler()
        .batch::<B>(&data, t.step_count(), 1000, &dev)
        .unwrap();
    t.step(&batch).unwrap();
    resumed.step(&batch).unwrap();
    assert!(same(&weights(&resumed), &weights(&t)));
}

#[test]
fn loss_scaling_is_refused_outside_f16() {
    let mut t = trainer_in(1, MixedPrecision::Bf16);
    assert!(t.grad_scaler().is_none());
    assert!(matches!(
        t.set_grad_scaler(GradScaler::default()),
        Err(PipelineError::Parameter { .. })
    ));
    let mut t = trainer_in(1, MixedPrecision::Fp16);
    assert!(t.set_grad_scaler(GradScaler::with_scale(f64::NAN)).is_err());
    // Switching precision: into f16 keeps a running scaler, out of it drops it.
    t.set_grad_scaler(GradScaler::with_scale(8.0)).unwrap();
    t.set_mixed_precision(MixedPrecision::Fp16);
    assert_eq!(t.grad_scaler().unwrap().scale, 8.0);
    t.set_mixed_precision(MixedPrecision::No);
    assert!(t.grad_scaler().is_none());
    t.set_mixed_precision(MixedPrecision::Fp16);
    assert_eq!(t.grad_scaler(), Some(&GradScaler::default()));
    assert_eq!(t.config().mixed_precision, MixedPrecision::Fp16);
}

#[test]
fn a_skipped_f16_step_still_moves_the_moving_average() {
    let data = dataset();
    let dev = Default::default();
    let mut t = trainer_in(8, MixedPrecision::Fp16);
    for _ in 0..3 {
        let batch = sampler()
            .batch::<B>(&data, t.step_count(), 1000, &dev)
            .unwrap();
        assert!(!t.step(&batch).unwrap().skipped);
    }
    let raw = |t: &Trainer<B, Unet>| {
        diffusion_models::state::state_dict(&t.raw_model(), t.param_keys()).unwrap()
    };
    let (raw_before, ema_before) = (raw(&t), weights(&t));
    t.set_grad_scaler(GradScaler::with_scale(2f64.powi(40)))
        .unwrap();
    let batch = sampler()
        .batch::<B>(&data, t.step_count(), 1000, &dev)
        .unwrap();
    assert!(t.step(&batch).unwrap().skipped);
    assert!(raw(&t) == raw_before, "a skipped step changed the weights");
    // The average moved towards the (unchanged) weights, as diffusers'
    // scripts step the EMA whether or not the optimizer stepped.
    assert!(!same(&weights(&t), &ema_before));
}

#[test]
fn an_f16_forward_overflow_is_a_skipped_step_not_an_error() {
    let dev = Default::default();
    // Clean samples beyond f16's range (65504): the half-precision pass
    // overflows; in f32 the same batch is merely a large loss.
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(vec![1e6f32; 4 * 64], [4, 1, 8, 8]), &dev);
    let batch = diffusion_pipelines::training::Batch {
        noise: x0.zeros_like(),
        x0,
        offset_noise: None,
        timesteps: vec![10, 20, 30, 40],
        condition: Condition::None,
    };
    let mut t = trainer_in(3, MixedPrecision::Fp16);
    let raw = |t: &Trainer<B, Unet>| {
        diffusion_models::state::state_dict(&t.raw_model(), t.param_keys()).unwrap()
    };
    let before = raw(&t);
    let stats = t.step(&batch).unwrap();
    assert!(stats.skipped && !stats.loss.is_finite(), "{stats:?}");
    assert_eq!(t.grad_scaler().unwrap().scale, 32768.0);
    assert_eq!((t.step_count(), t.optimizer_steps()), (1, 0));
    assert!(raw(&t) == before);
    let stats = trainer(3).step(&batch).unwrap();
    assert!(stats.loss.is_finite() && !stats.skipped);
    // bf16 has f32's range: no overflow, no scaler.
    assert!(
        !trainer_in(3, MixedPrecision::Bf16)
            .step(&batch)
            .unwrap()
            .skipped
    );
}

#[test]
fn checkpoints_without_mixed_precision_fields_resume() {
    let data = dataset();
    let dev = Default::default();
    let mut t = trainer(4);
    let batch = sampler().batch::<B>(&data, 0, 1000, &dev).unwrap();
    t.step(&batch).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    t.save_checkpoint(&ckpt, json!({})).unwrap();
    let path = ckpt.join("trainer_state.json");
    let read =
        || -> Value { serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap() };
    let mut state = read();
    let obj = state.as_object_mut().unwrap();
    assert!(obj.remove("optimizer_steps").is_some() && obj.remove("grad_scaler").is_some());
    assert!(
        obj["config"]
            .as_object_mut()
            .unwrap()
            .remove("mixed_precision")
            .is_some()
    );
    std::fs::write(&path, state.to_string()).unwrap();
    let (resumed, _) = Trainer::<B, Unet>::resume(&ckpt, &dev).unwrap();
    assert_eq!(resumed.config().mixed_precision, MixedPrecision::No);
    assert_eq!((resumed.step_count(), resumed.optimizer_steps()), (1, 1));
    // A state claiming more updates than steps is refused, naming the file.
    let mut state = read();
    state["optimizer_steps"] = json!(5);
    std::fs::write(&path, state.to_string()).unwrap();
    let err = Trainer::<B, Unet>::resume(&ckpt, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("trainer_state.json") && err.contains("optimizer_steps 5"),
        "{err}"
    );
}
