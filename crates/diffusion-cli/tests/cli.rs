//! The `diffuse` binary end to end: its errors (one line, non-zero status,
//! no file written) and real runs on the tiny DDPM pipeline of
//! diffusion-pipelines' parity fixtures (16×16, two UNet levels: a run takes
//! milliseconds).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn diffuse(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.join("hf-home"))
        .env("DIFFUSE_CACHE", dir.join("cache"))
        .output()
        .expect("run diffuse")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failure reported as one `error: ...` line containing `needle`.
fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
}

/// Files in `dir` other than the assembled model and the HF home.
fn outputs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "ddpm" && n != "hf-home" && !n.starts_with("input"))
        .collect();
    v.sort();
    v
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffusion-pipelines/tests/fixtures")
}

/// The fixture DDPM pipeline assembled (its UNet weights live in `shared/`)
/// as `dir/ddpm`.
fn ddpm(dir: &Path) -> String {
    let src = fixtures().join("pipelines/ddpm");
    let dst = dir.join("ddpm");
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
    ] {
        std::fs::create_dir_all(dst.join(f).parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("shared/unet_uncond.safetensors"),
        dst.join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    dst.to_string_lossy().into_owned()
}

fn write_png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]))
        .save(path)
        .unwrap();
}

/// The iTXt entries of a PNG, and its 8-bit pixels.
fn read_png(path: &Path) -> (Vec<(String, String)>, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    buf.truncate(frame.buffer_size());
    let text = reader
        .info()
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    (text, buf)
}

fn parameters(text: &[(String, String)]) -> serde_json::Value {
    let (_, p) = text
        .iter()
        .find(|(k, _)| k == "parameters")
        .expect("a parameters entry");
    serde_json::from_str(p).unwrap()
}

#[test]
fn help_lists_the_commands_and_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let o = diffuse(tmp.path(), &["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for cmd in [
        "generate",
        "img2img",
        "inpaint",
        "convert",
        "info",
        "preprocess",
    ] {
        assert!(out.contains(cmd), "{cmd} missing from {out}");
    }
    let o = diffuse(tmp.path(), &["generate", "--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for flag in [
        "--scheduler-config",
        "--seeds",
        "--output-latents",
        "--crops-coords-top-left",
        "--controlnet",
        "--control-image",
        "--t2i-adapter",
    ] {
        assert!(out.contains(flag), "{flag} missing from {out}");
    }
}

#[test]
fn no_model_runs_the_embedded_default_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args(["generate", "--seed", "0", "--steps", "10", "-o", out])
            .current_dir(tmp.path())
            .env("DIFFUSE_CACHE", &cache)
            .output()
            .expect("run diffuse")
    };
    let o = run("digit.png");
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(tmp.path().join("digit.png")).unwrap();
    assert_eq!(
        (img.width(), img.height(), img.color()),
        (16, 16, image::ColorType::L8)
    );
    // Unpacked once, into a folder named by its content; a second run reuses it.
    let unpacked: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert!(unpacked[0].to_string_lossy().starts_with("default-model-"));
    let o = run("again.png");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(tmp.path().join("digit.png")).unwrap(),
        std::fs::read(tmp.path().join("again.png")).unwrap()
    );
    // A text prompt is refused by the unconditional default model, by name.
    let o = diffuse(tmp.path(), &["generate", "-p", "a cat"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("prompt"), "{}", stderr(&o));
}

#[test]
fn bad_flags_fail_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ddpm(tmp.path());
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "--width", "13"],
    );
    assert_one_line_error(&o, "--width 13");
    let o = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["generate", "--model", &model])
        .current_dir(tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("DIFFUSION_ATTENTION", "flash3")
        .output()
        .unwrap();
    assert_one_line_error(&o, "DIFFUSION_ATTENTION=\"flash3\"");
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "--height", "0"],
    );
    assert_one_line_error(&o, "--height 0");
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "--seed", "1", "--seeds", "2"],
    );
    assert_one_line_error(&o, "cannot be used with");
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "--steps", "many"],
    );
    assert_one_line_error(&o, "--steps");
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "--target-size", "64"],
    );
    assert_one_line_error(&o, "HEIGHTxWIDTH");
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "-o", "missing/out.png"],
    );
    assert_one_line_error(&o, "does not exist");
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "--image", "x.png"],
    );
    assert_one_line_error(&o, "use `img2img` or `inpaint`");
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "--strength", "0.5"],
    );
    assert_one_line_error(&o, "--strength");
    assert!(outputs(tmp.path()).is_empty());
}

/// The ControlNet / T2I-Adapter flags are checked before anything loads:
/// one control image per net, per-net numbers once or once per net, windows
/// in [0, 1], control flags without a net, adapters only for `generate` and
/// not with ControlNets; nothing is written.
#[test]
fn bad_control_flags_fail_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ddpm(tmp.path());
    write_png(&tmp.path().join("input-c.png"), 32, 32);
    let c = "input-c.png";
    let cases: [(&[&str], &str); 9] = [
        (
            &["--control-image", c],
            "--control-image: there is no --controlnet",
        ),
        (&["--guess-mode"], "--guess-mode: there is no --controlnet"),
        (
            &[
                "--controlnet",
                "x",
                "--controlnet",
                "y",
                "--control-image",
                c,
            ],
            "1 given for 2",
        ),
        (
            &[
                "--controlnet",
                "x",
                "--control-image",
                c,
                "--controlnet-scale",
                "1",
                "--controlnet-scale",
                "2",
            ],
            "--controlnet-scale: 2 values for 1",
        ),
        (
            &[
                "--controlnet",
                "x",
                "--control-image",
                c,
                "--control-end",
                "1.5",
            ],
            "--control-end 1.5",
        ),
        (
            &[
                "--controlnet",
                "x",
                "--control-image",
                c,
                "--control-preprocess",
                "sobel",
            ],
            "--control-preprocess sobel",
        ),
        (&["--t2i-adapter", "x"], "--adapter-image: 0 given for 1"),
        (
            &["--adapter-scale", "0.5"],
            "--adapter-scale: there is no --t2i-adapter",
        ),
        (
            &[
                "--t2i-adapter",
                "x",
                "--adapter-image",
                c,
                "--controlnet",
                "y",
                "--control-image",
                c,
            ],
            "diffusers has no pipeline with both",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["generate", "--model", &model];
        args.extend_from_slice(extra);
        assert_one_line_error(&diffuse(tmp.path(), &args), needle);
    }
    assert!(outputs(tmp.path()).is_empty(), "{:?}", outputs(tmp.path()));
}

/// `diffuse preprocess canny:LOW,HIGH IN OUT` writes cv2.Canny's edge map
/// (the fixture made by OpenCV) as an RGB PNG.
#[test]
fn preprocess_canny_writes_opencvs_edges() {
    let tmp = tempfile::tempdir().unwrap();
    let canny = fixtures().join("controlnet/canny");
    let input = canny.join("rgb.png");
    let o = diffuse(
        tmp.path(),
        &[
            "preprocess",
            "canny:40,90",
            input.to_str().unwrap(),
            "edges.png",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = image::open(tmp.path().join("edges.png")).unwrap().to_rgb8();
    let want = image::open(canny.join("edges_rgb_40_90.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(got.dimensions(), want.dimensions());
    assert!(
        got.pixels()
            .zip(want.pixels())
            .all(|(a, b)| a.0 == [b.0[0]; 3])
    );
    let o = diffuse(
        tmp.path(),
        &["preprocess", "canny:1", input.to_str().unwrap(), "e2.png"],
    );
    assert_one_line_error(&o, "canny:LOW,HIGH");
}

#[test]
fn strength_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("input.png");
    write_png(&image, 16, 16);
    let image = image.to_string_lossy().into_owned();
    for s in ["1.5", "-0.1"] {
        let o = diffuse(
            tmp.path(),
            &[
                "img2img",
                "--model",
                "org/model",
                "--image",
                &image,
                "--strength",
                s,
            ],
        );
        assert_one_line_error(&o, &format!("--strength {s}"));
    }
    assert!(outputs(tmp.path()).is_empty());
}

#[test]
fn unreadable_images_and_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("input-garbage.png");
    std::fs::write(&garbage, b"not an image").unwrap();
    let garbage = garbage.to_string_lossy().into_owned();
    let o = diffuse(
        tmp.path(),
        &["img2img", "--model", "org/model", "--image", &garbage],
    );
    assert_one_line_error(&o, "input-garbage.png");
    let o = diffuse(
        tmp.path(),
        &[
            "img2img",
            "--model",
            "org/model",
            "--image",
            "input-absent.png",
        ],
    );
    assert_one_line_error(&o, "input-absent.png");

    // A mask of another size than the image is refused (see the crate docs).
    let (image, mask) = (
        tmp.path().join("input.png"),
        tmp.path().join("input-mask.png"),
    );
    write_png(&image, 32, 16);
    write_png(&mask, 16, 16);
    let o = diffuse(
        tmp.path(),
        &[
            "inpaint",
            "--model",
            "org/model",
            "--image",
            image.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "the mask must have the image's size");
    assert!(outputs(tmp.path()).is_empty());
}

#[test]
fn convert_of_a_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let o = diffuse(tmp.path(), &["convert", "absent.safetensors", "out"]);
    assert_one_line_error(&o, "absent.safetensors");
    assert!(outputs(tmp.path()).is_empty());
}

#[test]
fn info_on_a_pipeline_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ddpm(tmp.path());
    let o = diffuse(tmp.path(), &["info", "--model", &model]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // The parameter count is the sum of the header's shapes.
    let w = diffusion_hub::weights::Weights::open(
        &Path::new(&model).join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let params: usize = w
        .tensors()
        .map(|(_, t)| t.shape.iter().product::<usize>())
        .sum();
    assert!(params > 1000);
    for needle in [
        "pipeline: DDPMPipeline".to_string(),
        "unet: diffusers/UNet2DModel".to_string(),
        format!("{} tensors (F16 × {})", w.len(), w.len()),
        "scheduler: diffusers/DDPMScheduler".to_string(),
        "scheduler: DDPMScheduler".to_string(),
        "  num_train_timesteps: 1000".to_string(),
        "  beta_schedule: \"linear\"".to_string(),
    ] {
        assert!(out.contains(&needle), "`{needle}` not in:\n{out}");
    }
    let digits: String = out
        .lines()
        .find(|l| l.contains("unet:"))
        .unwrap()
        .split(", ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .replace(',', "");
    assert_eq!(digits.parse::<usize>().unwrap(), params, "{out}");
}

#[test]
fn wrong_kind_of_model_for_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ddpm(tmp.path());
    let image = tmp.path().join("input.png");
    write_png(&image, 16, 16);
    let o = diffuse(
        tmp.path(),
        &[
            "img2img",
            "--model",
            &model,
            "--image",
            image.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "unconditional");
    // An unconditional model takes no prompt (diffusers' TypeError).
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "-p", "a cat", "-q"],
    );
    assert_one_line_error(&o, "--prompt: DDPMPipeline does not take it");
    assert!(outputs(tmp.path()).is_empty());
}

#[test]
fn generate_writes_pngs_with_their_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ddpm(tmp.path());
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", &model, "--steps", "3", "-q"];
        args.extend_from_slice(extra);
        let o = diffuse(tmp.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };

    // A batch of two from one generator, with the final latents.
    let out = run(&[
        "--num-images",
        "2",
        "--seed",
        "3",
        "-o",
        "batch.png",
        "--output-latents",
        "final.safetensors",
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[1]["path"], "batch-1.png");
    let (text, batch0) = read_png(&tmp.path().join("batch-0.png"));
    let p = parameters(&text);
    assert_eq!(p, lines[0]["parameters"]);
    assert_eq!(p["seed"], 3);
    assert_eq!(p["model"], model.as_str());
    assert_eq!(p["num_inference_steps"], 3);
    assert_eq!(p["pipeline"], "DDPMPipeline");
    assert_eq!(p["scheduler_class"], "DDPMScheduler");
    assert_eq!(
        (p["height"].clone(), p["width"].clone()),
        (16.into(), 16.into())
    );
    assert!(
        text.contains(&("seed".to_string(), "3".to_string())),
        "{text:?}"
    );
    assert_eq!(batch0.len(), 16 * 16 * 3);
    let latents =
        diffusion_hub::weights::Weights::open(&tmp.path().join("final.safetensors")).unwrap();
    assert_eq!(latents.tensor("latents").unwrap().shape, &[2, 3, 16, 16]);

    // One generator per image: image 0 of seeds 5,6 is the image of seed 5
    // alone, and differs from seed 6's.
    run(&["--num-images", "2", "--seeds", "5,6", "-o", "pair.png"]);
    run(&["--seed", "5", "-o", "five.png"]);
    let (text, pair0) = read_png(&tmp.path().join("pair-0.png"));
    assert_eq!(parameters(&text)["seed"], 5);
    let (_, pair1) = read_png(&tmp.path().join("pair-1.png"));
    let (_, five) = read_png(&tmp.path().join("five.png"));
    assert_eq!(pair0, five);
    assert_ne!(pair1, five);

    // A scheduler swap is recorded; without a seed one is drawn and recorded.
    let out = run(&[
        "--scheduler",
        "DDIMScheduler",
        "--scheduler-config",
        "timestep_spacing=trailing",
        "-o",
        "ddim.png",
    ]);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["parameters"]["scheduler_class"], "DDIMScheduler");
    assert_eq!(
        line["parameters"]["scheduler_config"]["timestep_spacing"],
        "trailing"
    );
    let seed = line["parameters"]["seed"]
        .as_u64()
        .expect("a recorded seed");
    let (_, ddim) = read_png(&tmp.path().join("ddim.png"));
    run(&[
        "--scheduler",
        "DDIMScheduler",
        "--scheduler-config",
        "timestep_spacing=trailing",
        "-o",
        "again.png",
        "--seed",
        &seed.to_string(),
    ]);
    assert_eq!(read_png(&tmp.path().join("again.png")).1, ddim);
}

#[test]
fn latents_in_and_out() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ddpm(tmp.path());
    // Given latents replace the seeded ones: the output no longer depends on the seed.
    let values: Vec<f32> = (0..3 * 16 * 16)
        .map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0)
        .collect();
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "latents".to_string(),
        diffusion_hub::save::OwnedTensor::f32(vec![1, 3, 16, 16], &values),
    );
    let file = tmp.path().join("input-latents.safetensors");
    diffusion_hub::save::save_safetensors(&file, &tensors, None).unwrap();
    // DDPM's steps draw noise too: use DDIM (eta 0) so only the start matters.
    let mut pixels = Vec::new();
    for seed in ["1", "2"] {
        let out = format!("from-latents-{seed}.png");
        let o = diffuse(
            tmp.path(),
            &[
                "generate",
                "--model",
                &model,
                "--steps",
                "2",
                "-q",
                "--scheduler",
                "DDIMScheduler",
                "--latents",
                file.to_str().unwrap(),
                "--seed",
                seed,
                "-o",
                &out,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        pixels.push(read_png(&tmp.path().join(out)).1);
    }
    assert_eq!(pixels[0], pixels[1]);

    // Wrong shapes and names are refused.
    let o = diffuse(
        tmp.path(),
        &[
            "generate",
            "--model",
            &model,
            "-q",
            "--latents",
            file.to_str().unwrap(),
            "--num-images",
            "2",
            "-o",
            "bad.png",
        ],
    );
    assert_one_line_error(&o, "latents");
    tensors.insert(
        "other".to_string(),
        diffusion_hub::save::OwnedTensor::f32(vec![3, 16, 16], &values),
    );
    tensors.remove("latents");
    let file = tmp.path().join("input-other.safetensors");
    diffusion_hub::save::save_safetensors(&file, &tensors, None).unwrap();
    let o = diffuse(
        tmp.path(),
        &[
            "generate",
            "--model",
            &model,
            "--latents",
            file.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "no tensor named `latents`");
    assert!(!tmp.path().join("bad.png").exists());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_needs_the_feature() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ddpm(tmp.path());
    let o = diffuse(
        tmp.path(),
        &["generate", "--model", &model, "--device", "cuda"],
    );
    assert_one_line_error(&o, "--features cuda");
}

/// diffusion-hub's tiny SD1 single-file checkpoint.
fn sd1_checkpoint() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffusion-hub/tests/fixtures/single_file/sd1.safetensors")
        .to_string_lossy()
        .into_owned()
}

/// `--set` flags for the fields the tiny checkpoint's weights cannot tell
/// (its group and head counts are not the released models'), from
/// `sd1.expected.json`; without them the converted folder would not load,
/// and `convert` refuses to write it.
fn tiny_overrides() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffusion-hub/tests/fixtures/single_file/sd1.expected.json");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut args = Vec::new();
    for (component, fields) in expected["overrides"].as_object().unwrap() {
        for (field, value) in fields.as_object().unwrap() {
            args.push("--set".to_string());
            args.push(format!("{component}.{field}={value}"));
        }
    }
    args
}

#[test]
fn convert_and_inspect_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = sd1_checkpoint();
    let overrides = tiny_overrides();
    // The tiny model's fields first, so that a later `--set` wins.
    let with_overrides = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.splice(3..3, overrides.iter().cloned());
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        diffuse(tmp.path(), &refs)
    };
    let o = diffuse(tmp.path(), &["info", "--model", &ckpt]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("single-file checkpoint: SD1.x, 369 tensors"),
        "{out}"
    );
    assert!(out.contains("(F32 × 368, I64 × 1)"), "{out}");

    // Without the fields the weights cannot tell, the folder would not load:
    // refused, naming the field, and nothing is written.
    let o = diffuse(tmp.path(), &["convert", &ckpt, "converted"]);
    assert_one_line_error(&o, "norm_num_groups");
    assert!(!tmp.path().join("converted").exists());
    let o = run(with_overrides(&["convert", &ckpt, "converted"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "SD1.x",
        "StableDiffusionPipeline",
        "unet: 208 tensors",
        "skipped 1 checkpoint keys",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    // The converter refuses to overwrite.
    let o = run(with_overrides(&["convert", &ckpt, "converted"]));
    assert_one_line_error(&o, "not empty");
    // This checkpoint has no EMA copy to extract: a one-line error, and
    // nothing is written.
    let o = diffuse(tmp.path(), &["convert", "--extract-ema", &ckpt, "ema"]);
    assert_one_line_error(&o, "no EMA weights");
    assert!(!tmp.path().join("ema").exists());

    // Fields the weights cannot tell, set by hand; an unknown component or a
    // malformed setting is a one-line error.
    let o = run(with_overrides(&[
        "convert",
        &ckpt,
        "set",
        "--set",
        "vae.scaling_factor=0.13025",
        "--set",
        "unet.upcast_attention=true",
        "--set",
        "scheduler.timestep_spacing=trailing",
        // Inferred from the weights (float32), but what is set wins.
        "--set",
        "text_encoder.torch_dtype=float16",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let config = |rel: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("set").join(rel)).unwrap())
            .unwrap()
    };
    assert_eq!(config("vae/config.json")["scaling_factor"], 0.13025);
    assert_eq!(config("unet/config.json")["upcast_attention"], true);
    assert_eq!(config("text_encoder/config.json")["torch_dtype"], "float16");
    assert_eq!(
        config("scheduler/scheduler_config.json")["timestep_spacing"],
        "trailing"
    );
    let o = diffuse(
        tmp.path(),
        &["convert", &ckpt, "bad", "--set", "text_encoder_2.x=1"],
    );
    assert_one_line_error(&o, "text_encoder_2");
    assert!(!tmp.path().join("bad").exists());
    let o = diffuse(tmp.path(), &["convert", &ckpt, "bad", "--set", "x=1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("COMPONENT.FIELD=VALUE"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("bad").exists());

    let o = diffuse(tmp.path(), &["info", "--model", "converted"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "unet: diffusers/UNet2DConditionModel, 13,604 parameters in 208 tensors (F32 × 208)"
        ),
        "{out}"
    );
    assert!(out.contains("tokenizer: none"), "{out}");

    // A checkpoint carries no tokenizer: generating names the missing component.
    let o = diffuse(
        tmp.path(),
        &[
            "generate",
            "--model",
            "converted",
            "-p",
            "a cat",
            "-q",
            "-o",
            "cat.png",
        ],
    );
    assert_one_line_error(&o, "component `tokenizer` is missing");
    assert!(!tmp.path().join("cat.png").exists());
}

#[test]
fn info_on_lora_files_reports_format_family_ranks_and_targets() {
    let dir = tempfile::tempdir().unwrap();
    let lora = fixtures().join("lora/files");
    let o = diffuse(
        dir.path(),
        &[
            "info",
            "--model",
            lora.join("kohya_sdxl.safetensors").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for needle in [
        "format: kohya-ss / A1111 LoRA",
        "base model: SDXL (two text encoders)",
        "text_encoder_2: 12 modules, rank(s) [2], alpha(s) 2",
        "to_q × 16",
    ] {
        assert!(s.contains(needle), "`{needle}` not in:\n{s}");
    }
    let o = diffuse(
        dir.path(),
        &[
            "info",
            "--model",
            lora.join("loha_sd1.safetensors").to_str().unwrap(),
        ],
    );
    assert!(
        stdout(&o).contains("format: LyCORIS LoHa"),
        "{}",
        stdout(&o)
    );
    // A LoRA for the wrong model: one error line naming the file and a key.
    let model = fixtures().join("lora/files/kohya_sdxl.safetensors");
    let o = diffuse(
        dir.path(),
        &[
            "generate",
            "--model",
            &ddpm(dir.path()),
            "--lora",
            model.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert_one_line_error(&o, "--lora");
}
