//! `diffuse train` end to end on a tiny UNet (8×8, one channel) and a
//! handful of generated images: what it writes, that a killed run resumes to
//! exactly the weights and losses of an uninterrupted one, and its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffuse"));
    c.env("HF_HUB_OFFLINE", "1");
    c
}

fn model_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../diffusion-pipelines/tests/fixtures/training/unet/config.json")
}

/// Eight 8×8 grayscale PNGs: a bright bar at a different row in each.
fn images(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for k in 0..8u32 {
        let img =
            image::GrayImage::from_fn(8, 8, |_, y| image::Luma([if y == k { 255 } else { 10 }]));
        img.save(data.join(format!("{k}.png"))).unwrap();
    }
    data
}

fn train_args<'a>(data: &'a Path, out: &'a Path, steps: &'a str) -> Vec<String> {
    [
        "train",
        "--train-data-dir",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--model-config",
        model_config().to_str().unwrap(),
        "--resolution",
        "8",
        "--train-batch-size",
        "4",
        "--max-train-steps",
        steps,
        "--lr-warmup-steps",
        "1",
        "--learning-rate",
        "1e-3",
        "--use-ema",
        "--random-flip",
        "--random-crop",
        "--eval-batch-size",
        "4",
        "--num-inference-steps",
        "3",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String]) -> Output {
    bin().args(args).output().expect("run diffuse")
}

fn ok(o: &Output) -> serde_json::Value {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "diffuse failed: {err}");
    serde_json::from_slice(&o.stdout).expect("one JSON summary")
}

#[test]
fn train_writes_a_pipeline_checkpoints_samples_and_the_loss_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let data = images(tmp.path());
    let out = tmp.path().join("run");
    let mut args = train_args(&data, &out, "4");
    args.extend(
        [
            "--checkpointing-steps",
            "2",
            "--checkpoints-total-limit",
            "1",
            "--save-images-steps",
            "2",
        ]
        .map(String::from),
    );
    let summary = ok(&run(&args));
    assert_eq!(summary["steps"], 4);
    assert!(summary["steps_per_second"].as_f64().unwrap() > 0.0);
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Only the newest checkpoint is kept.
    assert!(out.join("checkpoint-4/trainer_state.json").is_file());
    assert!(!out.join("checkpoint-2").exists());
    for s in ["samples/step-000002.png", "samples/step-000004.png"] {
        let img = image::open(out.join(s)).unwrap();
        // 2×2 grid of 8×8 samples with a 2-pixel gap.
        assert_eq!((img.width(), img.height()), (18, 18), "{s}");
    }
    let csv = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("step,loss,lr,grad_norm\n1,"));
    assert!(image::open(out.join("loss.png")).is_ok());

    // A finished run extends with a larger --max-train-steps (its LR schedule
    // stretched), and refuses a total below its step.
    let mut more = train_args(&data, &out, "6");
    more.extend(
        [
            "--resume-from-checkpoint",
            "latest",
            "--checkpointing-steps",
            "0",
        ]
        .map(String::from),
    );
    let s = ok(&run(&more));
    assert_eq!(
        (s["steps"].as_u64(), s["steps_this_run"].as_u64()),
        (Some(6), Some(2))
    );
    let mut less = train_args(&data, &out, "3");
    less.extend(["--resume-from-checkpoint", "latest"].map(String::from));
    assert!(error_line(&run(&less)).contains("already at step 6"));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint-6/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["config"]["lr_schedule"]["total_steps"], 6);

    // The result is a pipeline `diffuse generate` runs.
    let png = tmp.path().join("sample.png");
    let o = bin()
        .args([
            "generate",
            "--model",
            out.to_str().unwrap(),
            "--steps",
            "3",
            "--seed",
            "0",
            "-o",
        ])
        .arg(&png)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&png).unwrap();
    assert_eq!(
        (img.width(), img.height(), img.color()),
        (8, 8, image::ColorType::L8)
    );
}

fn file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_killed_run_resumes_exactly_where_its_last_checkpoint_left_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = images(tmp.path());
    let steps = "30";

    let whole = tmp.path().join("whole");
    let mut args = train_args(&data, &whole, steps);
    args.extend(["--checkpointing-steps", "0"].map(String::from));
    ok(&run(&args));

    let killed = tmp.path().join("killed");
    let mut args = train_args(&data, &killed, steps);
    args.extend(["--checkpointing-steps", "2"].map(String::from));
    let mut child = bin()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !killed.join("checkpoint-2").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it was killed");
    assert!(
        !killed.join("model_index.json").exists(),
        "killed after the end"
    );

    let mut resume = args.clone();
    resume.extend(["--resume-from-checkpoint", "latest"].map(String::from));
    let summary = ok(&run(&resume));
    assert_eq!(summary["steps"], 30);
    let resumed_from = summary["resumed_from"].as_str().unwrap();
    assert!(resumed_from.contains("checkpoint-"), "{resumed_from}");
    assert!(summary["steps_this_run"].as_u64().unwrap() < 30);
    // Same weights (the moving average is what is saved) and the same loss
    // history, to the bit.
    let weights = "unet/diffusion_pytorch_model.safetensors";
    assert!(
        file(&whole.join(weights)) == file(&killed.join(weights)),
        "weights differ"
    );
    assert_eq!(
        std::fs::read_to_string(whole.join("loss.csv")).unwrap(),
        std::fs::read_to_string(killed.join("loss.csv")).unwrap()
    );
    // No temporary folders are left behind.
    let stray: Vec<_> = std::fs::read_dir(&killed)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn fp16_mixed_precision_trains_and_checkpoints_its_loss_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let data = images(tmp.path());
    let out = tmp.path().join("run");
    let mut args = train_args(&data, &out, "2");
    args.extend(["--mixed-precision", "fp16"].map(String::from));
    let summary = ok(&run(&args));
    assert_eq!(summary["mixed_precision"], "fp16");
    assert_eq!(summary["skipped_steps"], 0);
    assert_eq!(summary["loss_scale"], 65536.0);
    assert!(summary["final_loss"].as_f64().unwrap().is_finite());
    let state: serde_json::Value =
        serde_json::from_slice(&file(&out.join("checkpoint-2/trainer_state.json"))).unwrap();
    assert_eq!(state["config"]["mixed_precision"], "fp16");
    assert_eq!(state["grad_scaler"]["scale"], 65536.0);
    assert_eq!(state["optimizer_steps"], 2);
    // Resumed with another precision: the steps to come run in it.
    let mut more = train_args(&data, &out, "3");
    more.extend(
        [
            "--resume-from-checkpoint",
            "latest",
            "--mixed-precision",
            "bf16",
        ]
        .map(String::from),
    );
    let summary = ok(&run(&more));
    assert_eq!(
        (
            summary["steps"].as_u64(),
            summary["steps_this_run"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(summary["mixed_precision"], "bf16");
    assert!(summary["loss_scale"].is_null());
    let mut again = train_args(&data, &out, "4");
    again.extend(["--resume-from-checkpoint", "latest"].map(String::from));
    assert_eq!(
        ok(&run(&again))["mixed_precision"],
        "bf16",
        "the checkpoint's setting applies"
    );
    // The saved weights are f32 (the master copy), as diffusers' scripts save them.
    let weights = file(&out.join("unet/diffusion_pytorch_model.safetensors"));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&weights).unwrap();
    assert!(
        meta.tensors()
            .values()
            .all(|t| t.dtype == safetensors::Dtype::F32)
    );
}

fn error_line(o: &Output) -> String {
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_training_input_is_a_one_line_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = images(tmp.path());
    let out = tmp.path().join("run");
    let with = |extra: &[&str]| {
        let mut a = train_args(&data, &out, "2");
        a.extend(extra.iter().map(|s| s.to_string()));
        error_line(&run(&a))
    };
    assert!(with(&["--lr-scheduler", "exp"]).contains("--lr-scheduler exp"));
    assert!(with(&["--prediction-type", "x0"]).contains("--prediction-type x0"));
    assert!(with(&["--mixed-precision", "fp8"]).contains("--mixed-precision fp8"));
    assert!(with(&["--train-batch-size", "0"]).contains("--train-batch-size"));
    for flag in ["--eval-batch-size", "--num-inference-steps"] {
        // Rejected when parsed, not at the first sample grid.
        let mut a = train_args(&data, &out, "2");
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = "0".into();
        assert!(error_line(&run(&a)).contains(&format!("{flag} 0")));
    }
    let not_ckpt = tmp.path().join("nothing");
    std::fs::create_dir_all(&not_ckpt).unwrap();
    assert!(
        with(&["--resume-from-checkpoint", not_ckpt.to_str().unwrap()])
            .contains("trainer_state.json")
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut a = train_args(&empty, &out, "2");
    a.truncate(a.len());
    let e = error_line(&run(&a));
    assert!(e.contains("empty") && e.contains("no .png"), "{e}");
    let config = tmp.path().join("rgba.json");
    std::fs::write(&config, r#"{"in_channels": 4, "out_channels": 4}"#).unwrap();
    let mut a = train_args(&data, &out, "2");
    let i = a.iter().position(|s| s == "--model-config").unwrap();
    a[i + 1] = config.to_str().unwrap().to_string();
    assert!(error_line(&run(&a)).contains("in_channels 4"));
    assert!(!out.exists(), "a failed start wrote {}", out.display());
}
