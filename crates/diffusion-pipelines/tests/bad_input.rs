//! Bad input through the library's entry points (the `diffuse` side is
//! crates/diffusion-cli/tests/malformed.rs): each is a typed error naming the
//! parameter, file or field, returned before anything large is allocated or
//! anything is written.

mod common;

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use diffusion_models::unet_2d::UNet2DConfig;
use diffusion_pipelines::image::AllOrNothing;
use diffusion_pipelines::training::{EmaConfig, TrainConfig, check_training_size};
use diffusion_pipelines::{
    DiffusionPipeline, Generator, LoadOptions, Params, PipelineError, SchedulerChoice, Task,
};

type B = burn::backend::Flex;

fn quiet() -> LoadOptions<B> {
    LoadOptions {
        progress: false,
        local_files_only: true,
        ..LoadOptions::default()
    }
}

fn load(name: &str) -> (tempfile::TempDir, DiffusionPipeline<B>) {
    let dir = common::pipeline_dir(name);
    let pipe = DiffusionPipeline::from_pretrained(dir.path().to_str().unwrap(), &quiet()).unwrap();
    (dir, pipe)
}

fn small() -> Params<'static, B> {
    Params {
        prompt: vec!["a cat".into()],
        num_inference_steps: Some(2),
        generator: Some(Generator::Seed(3)),
        progress: false,
        ..Params::default()
    }
}

/// The error of a call expected to fail.
fn error(r: diffusion_pipelines::Result<diffusion_pipelines::Output<B>>) -> PipelineError {
    match r {
        Err(e) => e,
        Ok(_) => panic!("expected an error, got images"),
    }
}

#[test]
fn non_finite_call_parameters_are_refused_by_name() {
    let (_dir, mut pipe) = load("sd1");
    type Set = fn(&mut Params<'static, B>);
    let cases: [(&str, Set); 5] = [
        ("guidance_scale", |p| p.guidance_scale = Some(f64::NAN)),
        ("guidance_rescale", |p| p.guidance_rescale = f64::INFINITY),
        ("eta", |p| p.eta = Some(f64::NAN)),
        ("timesteps", |p| p.timesteps = Some(vec![999.0, f64::NAN])),
        ("sigmas", |p| p.sigmas = Some(vec![f64::NEG_INFINITY])),
    ];
    for (name, set) in cases {
        let mut params = small();
        set(&mut params);
        match error(pipe.run(Task::TextToImage, params)) {
            PipelineError::Parameter { name: got, .. } => assert_eq!(got, name),
            e => panic!("{name}: {e}"),
        }
    }
}

#[test]
fn sizes_beyond_memory_say_how_much_they_need() {
    let (_dir, mut pipe) = load("sd1");
    for (h, w, n) in [(65536, 65536, 1), (8, 1 << 40, 1), (32, 32, 1 << 40)] {
        let params = Params {
            height: Some(h),
            width: Some(w),
            num_images_per_prompt: n,
            ..small()
        };
        match error(pipe.run(Task::TextToImage, params)) {
            PipelineError::Memory {
                request, needed, ..
            } => {
                assert!(request.contains(&w.to_string()), "{request}");
                assert!(needed.ends_with('B'), "{needed}");
            }
            e => panic!("{h}x{w}x{n}: {e}"),
        }
    }
    let (_dir, mut ddpm) = load("ddpm");
    let params = Params {
        num_images_per_prompt: usize::MAX,
        progress: false,
        ..Params::default()
    };
    assert!(matches!(
        error(ddpm.run(Task::TextToImage, params)),
        PipelineError::Memory { .. }
    ));
}

#[test]
fn non_finite_latents_are_named() {
    let (_dir, mut pipe) = load("ddpm");
    let mut values = vec![0.0f32; 3 * 16 * 16];
    values[7] = f32::NAN;
    let latents =
        Tensor::<B, 4>::from_data(TensorData::new(values, [1, 3, 16, 16]), &Default::default());
    let params = Params {
        latents: Some(latents),
        num_inference_steps: Some(2),
        progress: false,
        ..Params::default()
    };
    match error(pipe.run(Task::TextToImage, params)) {
        PipelineError::Parameter { name, message } => {
            assert_eq!(name, "latents");
            assert!(message.contains("NaN"), "{message}");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn a_misspelt_scheduler_override_is_an_error() {
    let (_dir, mut pipe) = load("sd1");
    let mut choice = SchedulerChoice {
        name: Some("EulerDiscreteScheduler".into()),
        ..SchedulerChoice::default()
    };
    choice
        .overrides
        .insert("use_karas_sigmas".into(), serde_json::json!(true));
    match pipe.set_scheduler(&choice) {
        Err(PipelineError::Parameter { name, message }) => {
            assert_eq!(name, "scheduler_config");
            assert!(message.contains("use_karas_sigmas"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Edits `rel` of a fresh fixture pipeline and loads it.
fn load_edited(
    name: &str,
    rel: &str,
    edit: impl Fn(&mut serde_json::Value),
) -> (tempfile::TempDir, PipelineError) {
    let dir = common::pipeline_dir(name);
    let path = dir.path().join(rel);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    let err = DiffusionPipeline::<B>::from_pretrained(dir.path().to_str().unwrap(), &quiet())
        .map(|_| ())
        .unwrap_err();
    (dir, err)
}

#[test]
fn malformed_components_are_named_at_load() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit, &str); 6] = [
        (
            "sd1",
            "unet/config.json",
            |c| c["norm_num_groups"] = 3.into(),
            "norm_num_groups",
        ),
        (
            "sd1",
            "unet/config.json",
            |c| c["attention_head_dim"] = 0.into(),
            "attention_head_dim",
        ),
        (
            "sd1",
            "vae/config.json",
            |c| c["scaling_factor"] = 0.into(),
            "scaling_factor",
        ),
        (
            "sd1",
            "text_encoder/config.json",
            |c| c["layer_norm_eps"] = (-1).into(),
            "layer_norm_eps",
        ),
        (
            "sd1",
            "model_index.json",
            |c| c["vae"][0] = "foolib".into(),
            "foolib",
        ),
        (
            "ddpm",
            "model_index.json",
            |c| c["unet"][1] = "AutoencoderKL".into(),
            "UNet2DModel",
        ),
    ];
    for (pipeline, rel, edit, needle) in cases {
        let (_dir, err) = load_edited(pipeline, rel, edit);
        let text = err.to_string();
        assert!(text.contains(needle), "{pipeline}/{rel}: {text}");
        assert!(
            text.contains(&rel.replace('/', std::path::MAIN_SEPARATOR_STR)),
            "{text}"
        );
    }
}

#[test]
fn a_failed_batch_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("a.png");
    std::fs::create_dir(dir.path().join("b.png")).unwrap();
    let mut batch = AllOrNothing::default();
    batch.stage(&good, b"first").unwrap();
    // A folder in the way: staging the temporary works, renaming cannot.
    batch.stage(&dir.path().join("b.png"), b"second").unwrap();
    let err = batch.commit().unwrap_err().to_string();
    assert!(err.contains("b.png"), "{err}");
    assert!(!err.contains(".b.png."), "names the temporary: {err}");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["b.png"], "the first file or a temporary was left");
    // Dropped uncommitted: nothing of it stays.
    let mut batch = AllOrNothing::default();
    batch.stage(&dir.path().join("c.png"), b"third").unwrap();
    drop(batch);
    assert!(!Path::new(&dir.path().join("c.png")).exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), left.len());
}

#[test]
fn training_sizes_and_hyper_parameters_are_checked() {
    let config: UNet2DConfig = serde_json::from_str(
        r#"{"block_out_channels": [8, 16], "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"], "attention_head_dim": 4}"#,
    )
    .unwrap();
    assert!(check_training_size(&config, 8, 2, true).is_ok());
    for resolution in [0, 7] {
        match check_training_size(&config, resolution, 2, true) {
            Err(PipelineError::Parameter { name, .. }) => assert_eq!(name, "resolution"),
            other => panic!("{resolution}: {other:?}"),
        }
    }
    assert!(matches!(
        check_training_size(&config, 1 << 20, 1 << 20, true),
        Err(PipelineError::Memory { .. })
    ));
    type Set = fn(&mut TrainConfig);
    let cases: [(&str, Set); 6] = [
        ("learning_rate", |c| c.learning_rate = f64::NAN),
        ("adam_beta1", |c| c.optimizer.beta1 = 1.0),
        ("adam_epsilon", |c| c.optimizer.eps = 0.0),
        ("max_grad_norm", |c| c.max_grad_norm = Some(f64::NAN)),
        ("ema_max_decay", |c| {
            c.ema = Some(EmaConfig {
                decay: 2.0,
                ..EmaConfig::default()
            })
        }),
        ("snr_gamma", |c| c.objective.snr_gamma = Some(-1.0)),
    ];
    for (name, set) in cases {
        let mut config = TrainConfig::default();
        set(&mut config);
        match config.validate() {
            Err(PipelineError::Parameter { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(TrainConfig::default().validate().is_ok());
}
