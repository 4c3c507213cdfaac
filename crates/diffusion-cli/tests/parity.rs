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

fn check(names: &[&str]) {
    let mut failures = Vec::new();
    for name in names {
        let case = common::case(name);
        let model = common::pipeline_dir(&case.pipeline);
        let work = tempfile::tempdir().unwrap();
        let args = command_line(&case, model.path().to_str().unwrap());
        let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args(&args)
            .current_dir(work.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
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
            let img = image::open(work.path().join(&file))
                .unwrap_or_else(|e| panic!("{name}: {file}: {e}"));
            got.extend(
                img.to_rgb8()
                    .into_raw()
                    .into_iter()
                    .map(|b| b as f32 / 255.0),
            );
        }
        assert_eq!(got.len(), n * per, "{name}: pixel count");
        let mae = common::mean_abs_error(&got, want);
        // diffusers' own 8-bit image (`numpy_to_pil`: round half to even).
        let levels = got
            .iter()
            .zip(want)
            .map(|(g, w)| ((g * 255.0).round() - (w * 255.0).round_ties_even()).abs() as u32);
        let (off, worst) = levels.fold((0, 0), |(n, m), d| (n + usize::from(d > 0), m.max(d)));
        eprintln!(
            "{name}: PNG vs diffusers MAE {mae:.2e} ({:.3}/255); vs diffusers' 8-bit image: {off} of {} values differ, by at most {worst} level",
            mae * 255.0,
            got.len()
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
