//! Parity with diffusers through the `diffuse` binary: fixture cases of
//! diffusion-pipelines (tiny SD1/SD2/SDXL/inpaint/DDIM pipelines, see
//! `scripts/pipelines/gen_pipelines.py`) run from the shell with their seeds,
//! and the PNGs' pixels compared with diffusers' `output_type="np"` images:
//! within 1/255 mean absolute error (8-bit rounding alone is ≤ 0.5/255).

#[path = "../../diffusion-pipelines/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{Case, Seeds};
use serde_json::Value;

fn list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        other => panic!("{other}"),
    }
}

fn pair(v: &Value, sep: &str) -> String {
    let a = v.as_array().unwrap();
    format!("{}{sep}{}", a[0], a[1])
}

/// The command line for `case`, writing `out.png` in `dir`.
fn command_line(case: &Case, model: &str) -> Vec<String> {
    let sub = match case.class.as_str() {
        c if c.contains("Img2Img") => "img2img",
        c if c.contains("Inpaint") => "inpaint",
        _ => "generate",
    };
    let mut args: Vec<String> = vec![sub.into(), "--model".into(), model.into(), "--quiet".into()];
    let mut push = |flag: &str, value: String| {
        args.push(flag.into());
        args.push(value);
    };
    for (k, v) in case.kwargs.as_object().unwrap() {
        let num = || v.to_string();
        match k.as_str() {
            "prompt" => list(v).into_iter().for_each(|p| push("--prompt", p)),
            "negative_prompt" => list(v)
                .into_iter()
                .for_each(|p| push("--negative-prompt", p)),
            "prompt_2" => list(v).into_iter().for_each(|p| push("--prompt-2", p)),
            "negative_prompt_2" => list(v)
                .into_iter()
                .for_each(|p| push("--negative-prompt-2", p)),
            "guidance_scale" => push("--guidance", num()),
            "guidance_rescale" => push("--guidance-rescale", num()),
            "num_inference_steps" => push("--steps", num()),
            "height" => push("--height", num()),
            "width" => push("--width", num()),
            "num_images_per_prompt" | "batch_size" => push("--num-images", num()),
            "eta" => push("--eta", num()),
            "clip_skip" => push("--clip-skip", num()),
            "strength" => push("--strength", num()),
            "denoising_end" => push("--denoising-end", num()),
            "original_size" => push("--original-size", pair(v, "x")),
            "target_size" => push("--target-size", pair(v, "x")),
            "crops_coords_top_left" => push("--crops-coords-top-left", pair(v, ",")),
            "image" => push(
                "--image",
                case.kw_path("image").unwrap().to_string_lossy().into(),
            ),
            "mask_image" => push(
                "--mask",
                case.kw_path("mask_image").unwrap().to_string_lossy().into(),
            ),
            other => panic!("{}: kwarg {other} has no flag here", case.name),
        }
    }
    if let Some(s) = &case.scheduler {
        push("--scheduler", s.clone());
    }
    match &case.seeds {
        Seeds::One(s) => push("--seed", s.to_string()),
        Seeds::PerImage(v) => push(
            "--seeds",
            v.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        ),
    }
    push("--output", "out.png".into());
    args
}

/// Runs `diffuse args` in `dir`: its output, or its stderr on failure.
fn diffuse(dir: &std::path::Path, args: &[String]) -> Result<std::process::Output, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(out)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The PNG's values in [0, 1] against diffusers' `output_type="np"` image:
/// mean absolute error, and the most 8-bit levels any value is off from
/// diffusers' own 8-bit image (`numpy_to_pil`: round half to even).
fn png_errors(got: &[f32], want: &[f32]) -> (f32, u32) {
    let mae = common::mean_abs_error(got, want);
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| ((g * 255.0).round() - (w * 255.0).round_ties_even()).abs() as u32)
        .max()
        .unwrap_or(0);
    (mae, worst)
}

/// An image file's RGB values in [0, 1].
fn png_values(path: &std::path::Path) -> Vec<f32> {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    img.to_rgb8()
        .into_raw()
        .into_iter()
        .map(|b| b as f32 / 255.0)
        .collect()
}

fn check(names: &[&str]) {
    let mut failures = Vec::new();
    for name in names {
        let case = common::case(name);
        let model = common::pipeline_dir(&case.pipeline);
        let work = tempfile::tempdir().unwrap();
        let args = command_line(&case, model.path().to_str().unwrap());
        if let Err(e) = diffuse(work.path(), &args) {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        let tensors = common::read_case_tensors(&case);
        let (shape, want) = &tensors[&case.output];
        let n = shape[0];
        let per = want.len() / n;
        let mut got = Vec::with_capacity(want.len());
        for i in 0..n {
            let file = if n == 1 {
                "out.png".to_string()
            } else {
                format!("out-{i}.png")
            };
            got.extend(png_values(&work.path().join(&file)));
        }
        assert_eq!(got.len(), n * per, "{name}: pixel count");
        let (mae, worst) = png_errors(&got, want);
        eprintln!(
            "{name}: PNG vs diffusers MAE {mae:.2e} ({:.3}/255); at most {worst} 8-bit level off diffusers' image",
            mae * 255.0,
        );
        if mae > 1.0 / 255.0 || worst > 1 {
            failures.push(format!("{name}: MAE {mae}, worst {worst} levels"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn text_to_image_through_the_cli() {
    check(&[
        "sd1_pndm",
        "sd1_euler_nipp2",
        "sd1_dpmpp_2m_gen_list",
        "sd1_unipc_clip_skip",
        "sd2_dpmpp_2m",
        "ddim_batch2",
    ]);
}

#[test]
fn sdxl_through_the_cli() {
    check(&[
        "sdxl_euler_prompt2",
        "sdxl_dpmpp_2m_sizes",
        "sdxl_i2i_euler",
    ]);
}

#[test]
fn img2img_and_inpaint_through_the_cli() {
    check(&[
        "sd1_i2i_euler",
        "sd1_i2i_heun",
        "sd1_inpaint_legacy_euler",
        "inpaint_unipc",
        "inpaint_ddim",
    ]);
}

/// `diffuse generate --lora FILE:W ... --latents FILE` against diffusers
/// with the same adapters (fixtures/lora of diffusion-pipelines): two
/// adapters with weights unfused, the same fused (`fuse_lora(0.8)` is the
/// weights times 0.8 fused at 1), an A1111 prompt tag, and three
/// textual-inversion embeddings (diffusers, A1111 multi-vector, kohya).
#[test]
fn loras_through_the_cli() {
    let lora = common::fixtures().join("lora");
    let file = |n: &str| lora.join("files").join(n).to_string_lossy().into_owned();
    let prompt = "a dog on a skateboard";
    let runs: [(&str, Vec<String>); 4] = [
        (
            "sd1_two_adapters",
            vec![
                "--prompt".into(),
                prompt.into(),
                "--lora".into(),
                format!("{}:0.7", file("peft_sd1.safetensors")),
                "--lora".into(),
                format!("{}:0.4", file("kohya_sd1.safetensors")),
            ],
        ),
        (
            "sd1_two_fused",
            vec![
                "--prompt".into(),
                prompt.into(),
                "--lora".into(),
                format!("{}:0.56", file("peft_sd1.safetensors")),
                "--lora".into(),
                format!("{}:0.32", file("kohya_sd1.safetensors")),
                "--fuse-lora".into(),
            ],
        ),
        (
            "sd1_peft",
            vec![
                "--prompt".into(),
                format!("{prompt} <lora:peft_sd1:1.0>"),
                "--lora-dir".into(),
                file(""),
            ],
        ),
        (
            "sd1_ti_all",
            vec![
                "--prompt".into(),
                "a <cat-toy> and a dog, <ink>, <kh>".into(),
                "--embedding".into(),
                file("ti_diffusers.safetensors"),
                "--embedding".into(),
                file("ti_a1111.pt"),
                "--embedding".into(),
                format!("{}:<kh>", file("ti_kohya.safetensors")),
            ],
        ),
    ];
    let model = common::pipeline_dir("sd1");
    let mut failures = Vec::new();
    for (name, extra) in runs {
        let work = tempfile::tempdir().unwrap();
        let case = lora.join("cases").join(format!("{name}.safetensors"));
        let mut args: Vec<String> = vec![
            "generate".into(),
            "--model".into(),
            model.path().to_string_lossy().into_owned(),
            "--negative-prompt".into(),
            "blurry".into(),
            "--guidance".into(),
            "7.5".into(),
            "--steps".into(),
            "4".into(),
            "--height".into(),
            "32".into(),
            "--width".into(),
            "32".into(),
            "--latents".into(),
            case.to_string_lossy().into_owned(),
            "--output".into(),
            "out.png".into(),
            "--quiet".into(),
        ];
        args.extend(extra);
        let out = match diffuse(work.path(), &args) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let want = &common::read_tensors(&case)["images"].1;
        let (mae, worst) = png_errors(&png_values(&work.path().join("out.png")), want);
        eprintln!("{name}: PNG vs diffusers MAE {mae:.2e}, worst {worst} level");
        if mae > 1.0 / 255.0 || worst > 1 {
            failures.push(format!("{name}: MAE {mae}, worst {worst} levels"));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !stdout.contains("\"loras\"") && !stdout.contains("\"embeddings\"") {
            failures.push(format!(
                "{name}: the adapters are not in the recorded parameters: {stdout}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `diffuse generate --controlnet DIR --control-image PNG …` writes
/// diffusers' PNG (fixtures/controlnet of diffusion-pipelines): one net with
/// a scale, two nets with per-net scales and guidance windows, guess mode on
/// SDXL, and two T2I-Adapters with their weights.
#[test]
fn controlnets_through_the_cli() {
    let cn = common::fixtures().join("controlnet");
    let net = |n: &str| cn.join("nets").join(n).to_string_lossy().into_owned();
    let control = |n: &str| cn.join(n).to_string_lossy().into_owned();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let adapter = |n: &str| cn.join("adapters").join(n).to_string_lossy().into_owned();
    let runs: [(&str, &str, Vec<String>); 4] = [
        (
            "sd1_one",
            "sd1",
            [
                s(&["--prompt", "a dog on a skateboard", "--guidance", "7.5"]),
                s(&["--controlnet", &net("sd1_a"), "--control-image"]),
                vec![control("control_a.png")],
                s(&["--controlnet-scale", "0.8"]),
            ]
            .concat(),
        ),
        (
            "sd1_two",
            "sd1",
            [
                s(&["--prompt", "a dog on a skateboard", "--guidance", "7.5"]),
                s(&["--controlnet", &net("sd1_a"), "--control-image"]),
                vec![control("control_a.png")],
                s(&["--controlnet", &net("sd1_bgr"), "--control-image"]),
                vec![control("control_b.png")],
                s(&["--controlnet-scale", "0.6", "--controlnet-scale", "1.3"]),
                s(&["--control-start", "0", "--control-start", "0.3"]),
                s(&["--control-end", "0.8", "--control-end", "1"]),
            ]
            .concat(),
        ),
        (
            "sdxl_guess",
            "sdxl",
            [
                s(&["--prompt", "a photo of a cat", "--guidance", "5"]),
                s(&["--controlnet", &net("sdxl_a"), "--control-image"]),
                vec![control("control_b.png")],
                s(&["--guess-mode", "--control-end", "0.6"]),
            ]
            .concat(),
        ),
        (
            "sd1_multi_adapter",
            "sd1",
            [
                s(&["--prompt", "a dog on a skateboard", "--guidance", "7.5"]),
                s(&["--t2i-adapter", &adapter("sd1_full"), "--adapter-image"]),
                vec![control("control_a.png")],
                s(&["--t2i-adapter", &adapter("sd1_full_b"), "--adapter-image"]),
                vec![control("control_b.png")],
                s(&["--adapter-scale", "0.6", "--adapter-scale", "0.9"]),
            ]
            .concat(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, pipeline, extra) in runs {
        let model = common::pipeline_dir(pipeline);
        let work = tempfile::tempdir().unwrap();
        let case = cn.join("cases").join(format!("{name}.safetensors"));
        let mut args: Vec<String> = s(&["generate", "--model"]);
        args.push(model.path().to_string_lossy().into_owned());
        args.extend(s(&[
            "--negative-prompt",
            "blurry",
            "--steps",
            "4",
            "--latents",
        ]));
        args.push(case.to_string_lossy().into_owned());
        args.extend(s(&["--output", "out.png", "--quiet"]));
        args.extend(extra);
        let out = match diffuse(work.path(), &args) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let want = &common::read_tensors(&case)["images"].1;
        let (mae, worst) = png_errors(&png_values(&work.path().join("out.png")), want);
        eprintln!("{name}: PNG vs diffusers MAE {mae:.2e}, worst {worst} level");
        if mae > 1.0 / 255.0 || worst > 1 {
            failures.push(format!("{name}: MAE {mae}, worst {worst} levels"));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let recorded = (stdout.contains("ControlNetPipeline")
            && stdout.contains("\"controlnets\""))
            || (stdout.contains("AdapterPipeline") && stdout.contains("\"t2i_adapters\""));
        if !recorded {
            failures.push(format!("{name}: the nets are not recorded: {stdout}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `--controlnet OWNER/NAME` loads the net from its repo in the HF cache
/// (offline here): the same PNG as the folder gives.
#[test]
fn a_controlnet_from_a_hub_repo_in_the_cache() {
    let cn = common::fixtures().join("controlnet");
    let home = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = home.path().join("hub/models--test-org--tiny-controlnet");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(cn.join("nets/sd1_a").join(f), snapshot.join(f)).unwrap();
    }
    let model = common::pipeline_dir("sd1");
    let work = tempfile::tempdir().unwrap();
    let case = cn.join("cases/sd1_one.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args([
            "generate",
            "--model",
            model.path().to_str().unwrap(),
            "--prompt",
            "a dog on a skateboard",
            "--negative-prompt",
            "blurry",
            "--guidance",
            "7.5",
            "--steps",
            "4",
            "--latents",
            case.to_str().unwrap(),
            "--controlnet",
            "test-org/tiny-controlnet",
            "--control-image",
            cn.join("control_a.png").to_str().unwrap(),
            "--controlnet-scale",
            "0.8",
            "--output",
            "out.png",
            "--quiet",
        ])
        .current_dir(work.path())
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = &common::read_tensors(&case)["images"].1;
    let (mae, worst) = png_errors(&png_values(&work.path().join("out.png")), want);
    assert!(mae <= 1.0 / 255.0 && worst <= 1, "MAE {mae}, worst {worst}");
}

/// `--lora OWNER/NAME` takes diffusers' `pytorch_lora_weights.safetensors`
/// from the repo in the HF cache (offline here): the same image as the file.
#[test]
fn a_lora_from_a_hub_repo_in_the_cache() {
    let lora = common::fixtures().join("lora");
    let home = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = home.path().join("hub/models--test-org--tiny-lora");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::copy(
        lora.join("files/peft_sd1.safetensors"),
        snapshot.join("pytorch_lora_weights.safetensors"),
    )
    .unwrap();
    let model = common::pipeline_dir("sd1");
    let work = tempfile::tempdir().unwrap();
    let case = lora.join("cases/sd1_peft.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args([
            "generate",
            "--model",
            model.path().to_str().unwrap(),
            "--prompt",
            "a dog on a skateboard",
            "--negative-prompt",
            "blurry",
            "--guidance",
            "7.5",
            "--steps",
            "4",
            "--height",
            "32",
            "--width",
            "32",
            "--latents",
            case.to_str().unwrap(),
            "--lora",
            "test-org/tiny-lora",
            "--output",
            "out.png",
            "--quiet",
        ])
        .current_dir(work.path())
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = &common::read_tensors(&case)["images"].1;
    let (mae, worst) = png_errors(&png_values(&work.path().join("out.png")), want);
    assert!(mae <= 1.0 / 255.0 && worst <= 1, "MAE {mae}, worst {worst}");
}

/// `diffuse info --model LORA --base MODEL`: whether each targeted model of
/// the adapter fits the pipeline, from the weight headers.
#[test]
fn info_says_whether_a_lora_fits_a_pipeline() {
    let lora = common::fixtures().join("lora/files");
    let sd1 = common::pipeline_dir("sd1");
    let info = |file: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args([
                "info",
                "--model",
                lora.join(file).to_str().unwrap(),
                "--base",
                sd1.path().to_str().unwrap(),
            ])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fits = info("peft_sd1.safetensors");
    assert!(fits.contains("unet: yes (77 layers)"), "{fits}");
    assert!(fits.contains("text_encoder: yes (12 layers)"), "{fits}");
    let xl = info("kohya_sdxl.safetensors");
    assert!(xl.contains("unet: no ("), "{xl}");
    assert!(xl.contains("text_encoder_2: the pipeline has none"), "{xl}");
}
