//! `diffuse train-lora` on the tiny SD1 fixture pipeline: a captioned folder
//! (metadata.jsonl and .txt sidecars) and a DreamBooth instance folder train a
//! LoRA whose `pytorch_lora_weights.safetensors` is in diffusers' format and
//! drives `diffuse generate --lora`; a killed run resumed from its latest
//! checkpoint writes the same file; bad data and flags fail naming the file
//! or flag before anything is written.

#[path = "../../diffusion-pipelines/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

fn diffuse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .output()
        .expect("run diffuse")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "diffuse failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "diffuse should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Four 40×48 RGB images: a colour gradient each.
fn images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..4u32 {
        image::RgbImage::from_fn(40, 48, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 5) as u8, (k * 60) as u8])
        })
        .save(dir.join(format!("img{k}.png")))
        .unwrap();
    }
}

fn train_args<'a>(model: &'a str, data: &[&'a str], out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut a = vec!["train-lora", "--pretrained-model-name-or-path", model];
    a.extend_from_slice(data);
    a.extend_from_slice(&[
        "--output-dir",
        out,
        "--resolution",
        "32",
        "--rank",
        "2",
        "--train-batch-size",
        "2",
        "--max-train-steps",
        steps,
        "--learning-rate",
        "1e-3",
        "--lr-warmup-steps",
        "0",
        "--checkpointing-steps",
        "2",
        "--random-flip",
        "--seed",
        "5",
        "--quiet",
    ]);
    a
}

#[test]
fn a_lora_trained_on_captions_loads_in_generate_and_resumes_exactly() {
    let model = common::pipeline_dir("sd1");
    let model_s = model.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    images(&data);
    let lines: Vec<String> = (0..4)
        .map(|k| format!(r#"{{"file_name": "img{k}.png", "text": "a gradient number {k}"}}"#))
        .collect();
    std::fs::write(data.join("metadata.jsonl"), lines.join("\n")).unwrap();
    let data_s = data.to_str().unwrap();
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();

    let mut args = train_args(model_s, &["--train-data-dir", data_s], out_s, "3");
    args.extend_from_slice(&[
        "--output-kohya-format",
        "--validation-prompt",
        "a gradient",
        "--num-validation-images",
        "2",
        "--num-inference-steps",
        "2",
    ]);
    let summary: serde_json::Value = serde_json::from_str(ok(&diffuse(&args)).trim()).unwrap();
    assert_eq!(summary["steps"], 3);
    assert!(summary["final_loss"].as_f64().unwrap().is_finite());
    let lora = out.join("pytorch_lora_weights.safetensors");
    let bytes = std::fs::read(&lora).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    // SD1 fixture: 4 transformer blocks × 2 attentions × 4 projections × 2 factors.
    assert_eq!(names.len(), 64, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("unet.") && n.contains(".lora."))
    );
    let down = st
        .tensor("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight")
        .unwrap();
    assert_eq!(down.shape()[0], 2, "rank 2");
    let kohya = std::fs::read(out.join("pytorch_lora_weights_kohya.safetensors")).unwrap();
    let kohya = safetensors::SafeTensors::deserialize(&kohya).unwrap();
    // Per module: lora_down, lora_up and alpha.
    assert_eq!(kohya.names().len(), 96);
    assert!(kohya.names().iter().all(|n| n.starts_with("lora_unet_")));
    for f in [
        "checkpoint-2/lora/adapter_model.safetensors",
        "checkpoint-3/trainer_state.json",
        "validation/step-000003.png",
        "loss.csv",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // The LoRA drives generation (and changes the image).
    let generate = |extra: &[&str], png: &Path| {
        let mut a = vec![
            "generate",
            "--model",
            model_s,
            "--prompt",
            "a gradient",
            "--steps",
            "2",
            "--height",
            "32",
            "--width",
            "32",
            "--seed",
            "1",
            "--output",
        ];
        let png_s = png.to_str().unwrap().to_string();
        let mut a: Vec<String> = a.drain(..).map(String::from).collect();
        a.push(png_s);
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(&diffuse(&a));
        std::fs::read(png).unwrap()
    };
    let plain = generate(&[], &tmp.path().join("plain.png"));
    let lora_s = format!("{}:1.0", lora.display());
    let with = generate(&["--lora", &lora_s], &tmp.path().join("with.png"));
    assert_ne!(plain, with, "the LoRA changes the image");

    // Killed after checkpoint 2: resuming from it gives the same file.
    let first = std::fs::read(&lora).unwrap();
    std::fs::remove_dir_all(out.join("checkpoint-3")).unwrap();
    std::fs::remove_file(&lora).unwrap();
    let mut again = train_args(model_s, &["--train-data-dir", data_s], out_s, "3");
    again.extend_from_slice(&["--resume-from-checkpoint", "latest"]);
    let summary: serde_json::Value = serde_json::from_str(ok(&diffuse(&again)).trim()).unwrap();
    assert_eq!(summary["steps_this_run"], 1);
    assert_eq!(std::fs::read(&lora).unwrap(), first, "resumed LoRA file");

    // Resuming with another rank names the flag.
    let mut other = train_args(model_s, &["--train-data-dir", data_s], out_s, "4");
    let at = other.iter().position(|a| *a == "--rank").unwrap();
    other[at + 1] = "3";
    other.extend_from_slice(&["--resume-from-checkpoint", "latest"]);
    let e = err(&diffuse(&other));
    assert!(
        e.contains("--rank 3") && e.contains("adapter_config.json"),
        "{e}"
    );
}

#[test]
fn dreambooth_sidecars_and_bad_data_or_flags() {
    let model = common::pipeline_dir("sd1");
    let model_s = model.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // DreamBooth: an instance folder and prompt, no captions needed.
    let inst = tmp.path().join("instance");
    images(&inst);
    let out = tmp.path().join("db");
    let args = train_args(
        model_s,
        &[
            "--instance-data-dir",
            inst.to_str().unwrap(),
            "--instance-prompt",
            "a photo of sks gradient",
        ],
        out.to_str().unwrap(),
        "1",
    );
    ok(&diffuse(&args));
    let plain = std::fs::read(out.join("pytorch_lora_weights.safetensors")).unwrap();
    // Gradient checkpointing recomputes what it dropped: the same step.
    let ckpt_out = tmp.path().join("db-ckpt");
    let mut with = train_args(
        model_s,
        &[
            "--instance-data-dir",
            inst.to_str().unwrap(),
            "--instance-prompt",
            "a photo of sks gradient",
        ],
        ckpt_out.to_str().unwrap(),
        "1",
    );
    with.push("--gradient-checkpointing");
    ok(&diffuse(&with));
    assert_eq!(
        std::fs::read(ckpt_out.join("pytorch_lora_weights.safetensors")).unwrap(),
        plain,
        "with --gradient-checkpointing"
    );

    // Cached latents: centre crops without flips only.
    let cached_out = tmp.path().join("cached");
    let mut cached = train_args(
        model_s,
        &[
            "--instance-data-dir",
            inst.to_str().unwrap(),
            "--instance-prompt",
            "a photo of sks gradient",
        ],
        cached_out.to_str().unwrap(),
        "1",
    );
    cached.push("--cache-latents");
    let e = err(&diffuse(&cached));
    assert!(
        e.contains("--cache-latents") && e.contains("--center-crop"),
        "{e}"
    );
    cached.retain(|a| *a != "--random-flip");
    cached.push("--center-crop");
    ok(&diffuse(&cached));
    assert!(
        cached_out
            .join("pytorch_lora_weights.safetensors")
            .is_file()
    );

    // Prior preservation: the missing class images are generated first, then
    // kept (a second run generates none).
    let class = tmp.path().join("class");
    let prior_out = tmp.path().join("prior");
    let mut prior = train_args(
        model_s,
        &[
            "--instance-data-dir",
            inst.to_str().unwrap(),
            "--instance-prompt",
            "a photo of sks gradient",
        ],
        prior_out.to_str().unwrap(),
        "1",
    );
    prior.extend_from_slice(&[
        "--with-prior-preservation",
        "--class-data-dir",
        class.to_str().unwrap(),
        "--class-prompt",
        "a photo of a gradient",
        "--num-class-images",
        "3",
        "--sample-batch-size",
        "2",
        "--prior-loss-weight",
        "0.5",
    ]);
    ok(&diffuse(&prior));
    let listed = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let generated = listed(&class);
    assert_eq!(generated.len(), 3, "{generated:?}");
    assert!(
        generated.iter().all(|n| n.ends_with(".png")),
        "{generated:?}"
    );
    ok(&diffuse(&prior));
    assert_eq!(listed(&class), generated, "no class image generated twice");
    let mut missing = prior.clone();
    let at = missing.iter().position(|a| *a == "--class-prompt").unwrap();
    missing.drain(at..at + 2);
    let e = err(&diffuse(&missing));
    assert!(e.contains("--class-prompt"), "{e}");

    // Sidecars: one missing, then an orphan caption.
    let side = tmp.path().join("side");
    images(&side);
    for k in 0..3 {
        std::fs::write(side.join(format!("img{k}.txt")), format!("gradient {k}\n")).unwrap();
    }
    let bad_out = tmp.path().join("bad");
    let bad_s = bad_out.to_str().unwrap();
    let side_s = side.to_str().unwrap();
    let e = err(&diffuse(&train_args(
        model_s,
        &["--train-data-dir", side_s],
        bad_s,
        "1",
    )));
    assert!(e.contains("img3.png") && e.contains("no caption"), "{e}");
    std::fs::write(side.join("img3.txt"), "gradient 3").unwrap();
    std::fs::write(side.join("stray.txt"), "no image").unwrap();
    let e = err(&diffuse(&train_args(
        model_s,
        &["--train-data-dir", side_s],
        bad_s,
        "1",
    )));
    assert!(e.contains("stray.txt"), "{e}");
    std::fs::remove_file(side.join("stray.txt")).unwrap();
    std::fs::write(side.join("broken.png"), b"not a png").unwrap();
    let e = err(&diffuse(&train_args(
        model_s,
        &["--train-data-dir", side_s],
        bad_s,
        "1",
    )));
    assert!(e.contains("broken.png"), "{e}");
    std::fs::remove_file(side.join("broken.png")).unwrap();

    // A metadata.jsonl line for an image the folder lacks.
    let meta = tmp.path().join("meta");
    images(&meta);
    let mut lines: Vec<String> = (0..4)
        .map(|k| format!(r#"{{"file_name": "img{k}.png", "text": "g {k}"}}"#))
        .collect();
    lines.push(r#"{"file_name": "gone.png", "text": "g"}"#.into());
    std::fs::write(meta.join("metadata.jsonl"), lines.join("\n")).unwrap();
    let e = err(&diffuse(&train_args(
        model_s,
        &["--train-data-dir", meta.to_str().unwrap()],
        bad_s,
        "1",
    )));
    assert!(
        e.contains("gone.png") && e.contains("metadata.jsonl"),
        "{e}"
    );

    // Flags: a resolution off the VAE's grid, a rank above the layers.
    let mut a = train_args(model_s, &["--train-data-dir", side_s], bad_s, "1");
    let at = a.iter().position(|x| *x == "--resolution").unwrap();
    a[at + 1] = "36";
    let e = err(&diffuse(&a));
    assert!(e.contains("--resolution 36"), "{e}");
    let mut a = train_args(model_s, &["--train-data-dir", side_s], bad_s, "1");
    let at = a.iter().position(|x| *x == "--rank").unwrap();
    a[at + 1] = "64";
    let e = err(&diffuse(&a));
    assert!(e.contains("--rank 64") && e.contains("to_"), "{e}");
    let mut a = train_args(model_s, &["--train-data-dir", side_s], bad_s, "1");
    a.extend_from_slice(&["--image-interpolation-mode", "hamming"]);
    let e = err(&diffuse(&a));
    assert!(e.contains("--image-interpolation-mode hamming"), "{e}");
    // A run larger than the memory: refused before any step.
    let mut a = train_args(model_s, &["--train-data-dir", side_s], bad_s, "1");
    let at = a.iter().position(|x| *x == "--resolution").unwrap();
    a[at + 1] = "16384";
    let at = a.iter().position(|x| *x == "--train-batch-size").unwrap();
    a[at + 1] = "512";
    let e = err(&diffuse(&a));
    assert!(
        e.contains("--train-batch-size 512 at --resolution 16384"),
        "{e}"
    );
    assert!(!bad_out.join("pytorch_lora_weights.safetensors").exists());
}

/// `diffuse train-text-to-image`: every UNet weight trains (with EMA); the
/// output is the base pipeline with the trained UNet, which `generate` runs;
/// a run resumed from its checkpoint saves the same UNet.
#[test]
fn a_full_fine_tune_writes_a_pipeline_that_generates_and_resumes_exactly() {
    let model = common::pipeline_dir("sd1");
    let model_s = model.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    images(&data);
    for k in 0..4 {
        std::fs::write(data.join(format!("img{k}.txt")), format!("gradient {k}")).unwrap();
    }
    let out = tmp.path().join("full");
    let (data_s, out_s) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut args = train_args(model_s, &["--train-data-dir", data_s], out_s, "3");
    args[0] = "train-text-to-image";
    let at = args.iter().position(|a| *a == "--rank").unwrap();
    args.drain(at..at + 2);
    args.push("--use-ema");
    ok(&diffuse(&args));
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "text_encoder/config.json",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
        "checkpoint-2/unet/diffusion_pytorch_model.safetensors",
        "checkpoint-2/unet_ema/diffusion_pytorch_model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let unet = out.join("unet/diffusion_pytorch_model.safetensors");
    let trained = std::fs::read(&unet).unwrap();
    assert_ne!(
        trained,
        std::fs::read(
            model
                .path()
                .join("unet/diffusion_pytorch_model.safetensors")
        )
        .unwrap()
    );
    let png = tmp.path().join("full.png");
    ok(&diffuse(&[
        "generate",
        "--model",
        out_s,
        "--prompt",
        "a gradient",
        "--steps",
        "2",
        "--height",
        "32",
        "--width",
        "32",
        "--seed",
        "1",
        "--output",
        png.to_str().unwrap(),
    ]));
    assert!(png.is_file());

    std::fs::remove_dir_all(out.join("checkpoint-3")).unwrap();
    std::fs::remove_file(&unet).unwrap();
    args.extend_from_slice(&["--resume-from-checkpoint", "latest"]);
    let summary: serde_json::Value = serde_json::from_str(ok(&diffuse(&args)).trim()).unwrap();
    assert_eq!(summary["steps_this_run"], 1);
    assert_eq!(std::fs::read(&unet).unwrap(), trained, "resumed UNet");
}

/// SDXL: both text encoders, the pooled projection and `add_time_ids` feed
/// the step; the LoRA drives `generate`.
#[test]
fn an_sdxl_lora_trains_from_captioned_images() {
    let model = common::pipeline_dir("sdxl");
    let model_s = model.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    images(&data);
    for k in 0..4 {
        std::fs::write(data.join(format!("img{k}.txt")), format!("gradient {k}")).unwrap();
    }
    let out = tmp.path().join("xl");
    let args = train_args(
        model_s,
        &["--train-data-dir", data.to_str().unwrap()],
        out.to_str().unwrap(),
        "2",
    );
    let summary: serde_json::Value = serde_json::from_str(ok(&diffuse(&args)).trim()).unwrap();
    assert!(summary["final_loss"].as_f64().unwrap().is_finite());
    let lora = out.join("pytorch_lora_weights.safetensors");
    let bytes = std::fs::read(&lora).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // SDXL fixture: 3 transformer blocks (two in the down block's attention, ...).
    assert!(
        st.names()
            .iter()
            .all(|n| n.starts_with("unet.") && n.contains("lora."))
    );
    let png = tmp.path().join("xl.png");
    let lora_s = lora.to_str().unwrap();
    ok(&diffuse(&[
        "generate",
        "--model",
        model_s,
        "--prompt",
        "a gradient",
        "--steps",
        "2",
        "--height",
        "32",
        "--width",
        "32",
        "--seed",
        "1",
        "--lora",
        lora_s,
        "--output",
        png.to_str().unwrap(),
    ]));
    assert!(png.is_file());
}
