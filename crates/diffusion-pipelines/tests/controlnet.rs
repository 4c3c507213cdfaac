//! ControlNet and T2I-Adapter parity with diffusers 0.42 (`fixtures/controlnet`, written by
//! scripts/pipelines/gen_controlnet.py): one net, two nets with their own
//! scales and guidance windows, guess mode, a global-pool net, BGR channel
//! order, img2img and inpainting (9-channel and legacy 4-channel UNets), on
//! the tiny SD1, SD2 and SDXL pipelines, and a batch (two prompts, one control
//! image each, two images per prompt); one and two T2I-Adapters (SD1) and an
//! SDXL adapter acting in half of the steps, and the three adapter
//! architectures' feature maps on their own. Images must match diffusers' within 1/255
//! mean absolute error and the final latents within 1e-3 relative MAE; the
//! nets move the latents far more than that (checked on the first case
//! against the same call without a net).

mod common;

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use common::{max_abs_error, mean_abs_error, read_tensors};
use diffusion_pipelines::controlnet::ControlNet;
use diffusion_pipelines::image::load_image;
use diffusion_pipelines::t2i_adapter::Adapter;
use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params, PipelineError, Task};
use serde::Deserialize;
use serde_json::Value;

type B = burn::backend::Flex;

#[derive(Deserialize)]
struct Case {
    name: String,
    pipeline: String,
    class: String,
    nets: Vec<String>,
    seed: u64,
    kwargs: Value,
}

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

fn dir() -> PathBuf {
    common::fixtures().join("controlnet")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(dir().join("cases.json")).unwrap();
    serde_json::from_str::<Manifest>(&text).unwrap().cases
}

fn net(name: &str) -> ControlNet<B> {
    let options = LoadOptions::<B> {
        progress: false,
        local_files_only: true,
        ..Default::default()
    };
    let path = dir().join("nets").join(name);
    ControlNet::from_pretrained(path.to_str().unwrap(), &options).unwrap()
}

fn adapter(name: &str) -> Adapter<B> {
    let options = LoadOptions::<B> {
        progress: false,
        local_files_only: true,
        ..Default::default()
    };
    let path = dir().join("adapters").join(name);
    Adapter::from_pretrained(path.to_str().unwrap(), &options).unwrap()
}

fn image(rel: &str) -> image::DynamicImage {
    load_image(&common::fixtures().join(rel)).unwrap()
}

/// A kwarg that is one number or a list, as a list.
fn numbers(v: &Value) -> Option<Vec<f64>> {
    match v {
        Value::Null => None,
        Value::Array(a) => Some(a.iter().map(|x| x.as_f64().unwrap()).collect()),
        x => Some(vec![x.as_f64().unwrap()]),
    }
}

fn task(class: &str) -> Task {
    if class.contains("Img2Img") {
        Task::ImageToImage
    } else if class.contains("Inpaint") {
        Task::Inpaint
    } else {
        Task::TextToImage
    }
}

fn params<'a>(case: &Case, latents: Option<&(Vec<usize>, Vec<f32>)>) -> Params<'a, B> {
    let kw = &case.kwargs;
    // One string or a list (a batch of prompts).
    let text = |k: &str| match &kw[k] {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(a.iter().map(|v| v.as_str().unwrap().to_string()).collect()),
        _ => None,
    };
    let task = task(&case.class);
    // The text-to-image classes take the control image as `image`.
    let control = if task == Task::TextToImage {
        &kw["image"]
    } else {
        &kw["control_image"]
    };
    // A list is one image per net, or with one net one per prompt (a batch).
    let one_net = case.nets.len() == 1;
    let images: Vec<Vec<image::DynamicImage>> = match control {
        Value::Array(a) if one_net => vec![a.iter().map(|p| image(p.as_str().unwrap())).collect()],
        Value::Array(a) => a.iter().map(|p| vec![image(p.as_str().unwrap())]).collect(),
        p => vec![vec![image(p.as_str().unwrap())]],
    };
    let adapters = case.class.contains("Adapter");
    let (control_image, adapter_image) = if adapters {
        (Vec::new(), images)
    } else {
        (images, Vec::new())
    };
    let mut p = Params {
        prompt: text("prompt").unwrap(),
        negative_prompt: text("negative_prompt"),
        guidance_scale: kw["guidance_scale"].as_f64(),
        num_inference_steps: kw["num_inference_steps"].as_u64().map(|n| n as usize),
        control_image,
        adapter_image,
        adapter_conditioning_scale: numbers(&kw["adapter_conditioning_scale"]),
        adapter_conditioning_factor: kw["adapter_conditioning_factor"].as_f64(),
        controlnet_conditioning_scale: numbers(&kw["controlnet_conditioning_scale"]),
        control_guidance_start: numbers(&kw["control_guidance_start"]),
        control_guidance_end: numbers(&kw["control_guidance_end"]),
        guess_mode: kw["guess_mode"].as_bool().unwrap_or(false),
        strength: kw["strength"].as_f64(),
        num_images_per_prompt: kw["num_images_per_prompt"].as_u64().unwrap_or(1) as usize,
        generator: Some(Generator::Seed(case.seed)),
        progress: false,
        ..Params::default()
    };
    if task != Task::TextToImage {
        p.image = Some(image(kw["image"].as_str().unwrap()));
    }
    if task == Task::Inpaint {
        p.mask_image = Some(image(kw["mask_image"].as_str().unwrap()));
    }
    if let Some((shape, values)) = latents {
        let shape: [usize; 4] = shape.clone().try_into().unwrap();
        p.latents = Some(Tensor::from_data(
            TensorData::new(values.clone(), shape),
            &Default::default(),
        ));
    }
    p
}

/// Runs every case of `pipeline`: the failures, one line each.
fn check(pipeline: &str) {
    let mut failures = Vec::new();
    for case in cases().into_iter().filter(|c| c.pipeline == pipeline) {
        let (_dir, mut pipe) = common::load_pipeline::<B>(pipeline);
        let sd = pipe.stable_diffusion().unwrap();
        for name in &case.nets {
            if case.class.contains("Adapter") {
                sd.add_adapter(adapter(name)).unwrap();
            } else {
                sd.add_controlnet(net(name)).unwrap();
            }
        }
        assert_eq!(sd.class_name(task(&case.class)), case.class);
        let tensors = read_tensors(
            &dir()
                .join("cases")
                .join(format!("{}.safetensors", case.name)),
        );
        let out = pipe
            .run(task(&case.class), params(&case, tensors.get("latents")))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let latents = out.latents.into_data().to_vec::<f32>().unwrap();
        let images = out.images.unwrap().data;
        let want = &tensors["latents_final"].1;
        let scale = want.iter().map(|x| x.abs()).sum::<f32>() / want.len() as f32;
        let rel = mean_abs_error(&latents, want) / scale;
        let mae = mean_abs_error(&images, &tensors["images"].1);
        let max = max_abs_error(&images, &tensors["images"].1);
        let line = format!(
            "{}: images MAE {mae:.2e} max {max:.2e}, latents rel. MAE {rel:.2e}",
            case.name
        );
        eprintln!("{line}");
        if mae > 1.0 / 255.0 || rel > 1e-3 {
            failures.push(line);
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn sd1_controlnets_match_diffusers() {
    check("sd1");
}

#[test]
fn sd1_controlnet_inpainting_on_a_9_channel_unet_matches_diffusers() {
    check("inpaint");
}

#[test]
fn sd2_controlnet_matches_diffusers() {
    check("sd2");
}

#[test]
fn sdxl_controlnets_match_diffusers() {
    check("sdxl");
}

/// The three adapter architectures' feature maps (`full_adapter`,
/// `full_adapter_xl`, `light_adapter`, whose pooling meets odd sizes) match
/// diffusers' within 1e-5 relative L2.
#[test]
fn adapter_features_match_diffusers() {
    let want = read_tensors(&dir().join("adapter_outputs.safetensors"));
    for name in ["sd1_full", "sdxl_xl", "light"] {
        let (shape, values) = &want[&format!("{name}.input")];
        let shape: [usize; 4] = shape.clone().try_into().unwrap();
        let input =
            Tensor::<B, 4>::from_data(TensorData::new(values.clone(), shape), &Default::default());
        let features = adapter(name).model.forward(input).unwrap();
        let expected = (0..)
            .take_while(|i| want.contains_key(&format!("{name}.{i}")))
            .count();
        assert_eq!(features.len(), expected, "{name}");
        for (i, f) in features.into_iter().enumerate() {
            let (wshape, w) = &want[&format!("{name}.{i}")];
            assert_eq!(&f.dims().to_vec(), wshape, "{name}.{i}");
            let got = f.into_data().to_vec::<f32>().unwrap();
            let err: f32 = got
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt();
            let norm: f32 = w.iter().map(|b| b * b).sum::<f32>().sqrt();
            eprintln!("{name}.{i}: rel. L2 {:.2e}", err / norm);
            assert!(err <= 1e-5 * norm, "{name}.{i}: {err} vs {norm}");
        }
    }
}

/// LDM-format values of `key`: `k / 4096` with `k` an integer formula of
/// the key and the index (the generator's `ldm_value`), exact in fp16.
fn ldm_value(key: &str, n: usize) -> Vec<f32> {
    let h = key
        .bytes()
        .fold(0i64, |h, b| (h * 31 + i64::from(b)) % 1_000_003);
    (0..n as i64)
        .map(|i| ((i * 7919 + h) % 2001 - 1000) as f32 / 4096.0)
        .collect()
}

/// Writes the fixture's original ControlNet checkpoint (keys under
/// `prefix`, plus `extra` keys) to `path` in fp16.
fn write_ldm_checkpoint(path: &std::path::Path, prefix: &str, extra: &[&str]) {
    use diffusion_hub::save::{OwnedTensor, safetensors_bytes};
    use diffusion_hub::weights::Dtype;
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("single_file.json")).unwrap())
            .unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    let mut put = |key: String, shape: Vec<usize>, values: Vec<f32>| {
        let data = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        tensors.insert(
            key,
            OwnedTensor {
                dtype: Dtype::F16,
                shape,
                data,
            },
        );
    };
    for (key, shape) in spec["checkpoint"].as_object().unwrap() {
        let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
        let n = shape.iter().product();
        put(format!("{prefix}{key}"), shape, ldm_value(key, n));
    }
    for key in extra {
        put(key.to_string(), vec![2], vec![0.5, -0.5]);
    }
    std::fs::write(path, safetensors_bytes(path, &tensors, None).unwrap()).unwrap();
}

/// An original ControlNet checkpoint (ControlNet 1.1's bare keys, and 1.0's
/// `control_model.` ones beside a full SD model) converts to a folder whose
/// every tensor is byte-equal to diffusers' `ControlNetModel.from_single_file`
/// of the same file, with the config diffusers uses; the folder then loads.
#[test]
fn a_single_file_controlnet_converts_as_diffusers_does() {
    use sha2::{Digest, Sha256};
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("single_file.json")).unwrap())
            .unwrap();
    for (prefix, extra) in [
        ("", vec![]),
        ("control_model.", vec!["model.diffusion_model.out.0.bias"]),
    ] {
        let work = tempfile::tempdir().unwrap();
        let ckpt = work.path().join("control_tiny.safetensors");
        write_ldm_checkpoint(&ckpt, prefix, &extra);
        let out = work.path().join("converted");
        // What the weights cannot say (diffusers takes it from `config=`):
        // the tiny net's group and head counts.
        let mut options = diffusion_hub::single_file::ConvertOptions::default();
        options.overrides.insert(
            "controlnet".into(),
            serde_json::from_str(r#"{"norm_num_groups": 4, "attention_head_dim": 4}"#).unwrap(),
        );
        let report = diffusion_pipelines::components::convert_checkpoint(
            &ckpt,
            &out,
            &options,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(report.pipeline_class, "ControlNetModel");
        assert_eq!(report.skipped.len(), extra.len(), "{:?}", report.skipped);
        let weights =
            diffusion_hub::weights::Weights::open(&out.join("diffusion_pytorch_model.safetensors"))
                .unwrap();
        let want = spec["sha256"].as_object().unwrap();
        let mut names: Vec<&str> = weights.tensors().map(|(k, _)| k).collect();
        names.sort_unstable();
        assert_eq!(names.len(), want.len(), "{prefix:?}");
        for name in names {
            let t = weights.tensor(name).unwrap();
            let got = format!("{:x}", Sha256::digest(t.data));
            assert_eq!(Some(got.as_str()), want[name].as_str(), "{prefix:?} {name}");
        }
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        for (field, v) in spec["config"].as_object().unwrap() {
            assert_eq!(&config[field], v, "{field}");
        }
        let options = LoadOptions::<B> {
            progress: false,
            local_files_only: true,
            ..Default::default()
        };
        ControlNet::<B>::from_pretrained(out.to_str().unwrap(), &options).unwrap();
    }
}

/// `preprocess::canny` against OpenCV's `cv2.Canny` on a photo (RGB, and
/// gray with swapped thresholds): every pixel agrees.
#[test]
fn canny_matches_opencv() {
    let d = dir().join("canny");
    for (input, low, high) in [
        ("rgb", 100.0, 200.0),
        ("rgb", 40.0, 90.0),
        ("gray", 150.0, 60.0),
    ] {
        let image = load_image(&d.join(format!("{input}.png"))).unwrap();
        let got = diffusion_pipelines::preprocess::canny(&image, low, high);
        let want = load_image(&d.join(format!("edges_{input}_{low}_{high}.png")))
            .unwrap()
            .to_luma8();
        assert_eq!(got.dimensions(), want.dimensions());
        let differ = got
            .pixels()
            .zip(want.pixels())
            .filter(|(a, b)| a != b)
            .count();
        let edges = want.pixels().filter(|p| p.0[0] == 255).count();
        eprintln!(
            "canny {input} {low},{high}: {differ} of {} pixels differ from cv2.Canny ({edges} edge pixels)",
            want.len()
        );
        assert!(edges > 100, "the fixture has edges");
        assert_eq!(differ, 0, "{input} {low},{high}");
    }
}

/// Half precision: the first case and the SDXL adapter case with every
/// model in f16 and in bf16, against diffusers' f32 images (f16 ≤ 2e-3 image
/// MAE, bf16 ≤ 1e-2: half the float bits go, the pipeline stays the same).
#[test]
fn half_precision_controlnets_and_adapters() {
    use diffusion_models::Precision;
    let all = cases();
    for (name, precision, bar) in [
        ("sd1_one", Precision::F16, 2e-3),
        ("sd1_one", Precision::BF16, 1e-2),
        ("sdxl_adapter", Precision::F16, 2e-3),
        ("sdxl_adapter", Precision::BF16, 1e-2),
    ] {
        let case = all.iter().find(|c| c.name == name).unwrap();
        let (_dir, mut pipe) = common::load_pipeline_in::<B>(&case.pipeline, precision);
        let options = LoadOptions::<B> {
            progress: false,
            local_files_only: true,
            precision,
            ..Default::default()
        };
        let sd = pipe.stable_diffusion().unwrap();
        for n in &case.nets {
            if case.class.contains("Adapter") {
                let p = dir().join("adapters").join(n);
                sd.add_adapter(Adapter::from_pretrained(p.to_str().unwrap(), &options).unwrap())
                    .unwrap();
            } else {
                let p = dir().join("nets").join(n);
                sd.add_controlnet(
                    ControlNet::from_pretrained(p.to_str().unwrap(), &options).unwrap(),
                )
                .unwrap();
            }
        }
        let tensors = read_tensors(&dir().join("cases").join(format!("{name}.safetensors")));
        let out = pipe
            .run(task(&case.class), params(case, tensors.get("latents")))
            .unwrap();
        let mae = mean_abs_error(&out.images.unwrap().data, &tensors["images"].1);
        eprintln!("{name} {precision:?}: image MAE {mae:.2e} (bar {bar:.0e})");
        assert!(mae <= bar, "{name} {precision:?}: {mae}");
    }
}

/// `ControlNetConfig::from_unet` gives diffusers' `from_unet` config (the
/// fixture net was made by it), and `ControlNetModel::from_unet` copies the
/// UNet's encoder: a fresh net's residuals are all zero, so the UNet's
/// output is unchanged, as in diffusers.
#[test]
fn from_unet_copies_the_encoder_and_changes_nothing() {
    use diffusion_models::Precision;
    use diffusion_models::config::read_config;
    use diffusion_models::controlnet::{ControlNetConfig, ControlNetModel, ResidualScale};
    use diffusion_models::unet_2d_condition::{
        UNet2DConditionConfig, UNet2DConditionModel, UNetConditions,
    };
    let folder = common::pipeline_dir("sd1");
    let unet_dir = folder.path().join("unet");
    let cfg: UNet2DConditionConfig = read_config(&unet_dir.join("config.json")).unwrap().config;
    let cn_cfg = ControlNetConfig::from_unet(&cfg, "rgb", vec![4, 8], 3).unwrap();
    let want: ControlNetConfig = read_config(&dir().join("nets/sd1_a/config.json"))
        .unwrap()
        .config;
    assert_eq!(cn_cfg, want);
    let weights = diffusion_hub::weights::Weights::open(
        &unet_dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let dev = Default::default();
    let net = ControlNetModel::<B>::from_unet(&weights, &cn_cfg, &dev, Precision::F32, 7).unwrap();
    let unet = UNet2DConditionModel::<B>::from_dir(&unet_dir, &dev, Precision::F32).unwrap();
    let values = |t: Tensor<B, 4>| t.into_data().to_vec::<f32>().unwrap();
    assert_eq!(
        values(net.conv_in.weight.val()),
        values(unet.conv_in.weight.val())
    );
    let fill = |shape: [usize; 4]| {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        Tensor::<B, 4>::from_data(TensorData::new(v, shape), &dev)
    };
    let x = fill([1, 4, 16, 16]);
    let ctx = Tensor::<B, 3>::from_data(
        TensorData::new(
            (0..77 * 8)
                .map(|i| (i as f32 * 0.11).cos())
                .collect::<Vec<_>>(),
            [1, 77, 8],
        ),
        &dev,
    );
    let t = || Tensor::<B, 1>::from_floats([500.0], &dev);
    let out = net
        .forward(
            x.clone(),
            t(),
            ctx.clone(),
            fill([1, 3, 32, 32]).abs(),
            ResidualScale {
                conditioning_scale: 1.0,
                guess_mode: false,
            },
            &UNetConditions::default(),
        )
        .unwrap();
    for r in out.down.iter().chain([&out.mid]) {
        assert!(values(r.clone()).iter().all(|v| *v == 0.0));
    }
    let plain = unet
        .forward(x.clone(), t(), ctx.clone(), UNetConditions::default())
        .unwrap();
    let with = unet
        .forward(
            x,
            t(),
            ctx,
            UNetConditions {
                down_block_additional_residuals: Some(out.down),
                mid_block_additional_residual: Some(out.mid),
                ..UNetConditions::default()
            },
        )
        .unwrap();
    assert_eq!(values(plain), values(with));
}

/// A pipeline folder of diffusers' ControlNet class (`controlnet/`, and a
/// `MultiControlNetModel`'s `controlnet_1/`) loads through
/// `DiffusionPipeline::from_resolved` with its nets, and runs the two-net
/// case as diffusers.
#[test]
fn a_controlnet_pipeline_folder_loads_its_nets() {
    use diffusion_hub::resolve::{ResolveOptions, Resolved, resolve};
    let folder = common::pipeline_dir("sd1");
    let root = folder.path();
    let copy = |net: &str, to: &str| {
        std::fs::create_dir_all(root.join(to)).unwrap();
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            std::fs::copy(dir().join("nets").join(net).join(f), root.join(to).join(f)).unwrap();
        }
    };
    copy("sd1_a", "controlnet");
    copy("sd1_bgr", "controlnet_1");
    let index_path = root.join("model_index.json");
    let mut index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["_class_name"] = "StableDiffusionControlNetPipeline".into();
    index["controlnet"] = serde_json::json!(["diffusers", "MultiControlNetModel"]);
    std::fs::write(&index_path, index.to_string()).unwrap();
    let opts = ResolveOptions::with_cache_dir(root.join("no-cache")).local_files_only(true);
    let Resolved::Pipeline(model) = resolve(root.to_str().unwrap(), &opts).unwrap() else {
        panic!("a pipeline folder")
    };
    let options = LoadOptions::<B> {
        progress: false,
        ..Default::default()
    };
    let mut pipe = DiffusionPipeline::<B>::from_resolved(&model, &options).unwrap();
    assert_eq!(pipe.class_name(), "StableDiffusionControlNetPipeline");
    assert_eq!(pipe.stable_diffusion().unwrap().controlnets.len(), 2);
    let case = cases().into_iter().find(|c| c.name == "sd1_two").unwrap();
    let tensors = read_tensors(&dir().join("cases/sd1_two.safetensors"));
    let out = pipe.call(params(&case, tensors.get("latents"))).unwrap();
    let mae = mean_abs_error(&out.images.unwrap().data, &tensors["images"].1);
    assert!(mae <= 1.0 / 255.0, "{mae}");
}

/// The nets matter: diffusers' latents with the first case's net are far from
/// those without it, and so are ours.
#[test]
fn a_controlnet_moves_the_result() {
    let with = read_tensors(&dir().join("cases/sd1_one.safetensors"));
    let without = read_tensors(&dir().join("cases/sd1_plain.safetensors"));
    let a = &with["latents_final"].1;
    let b = &without["latents_final"].1;
    let scale = a.iter().map(|x| x.abs()).sum::<f32>() / a.len() as f32;
    let moved = mean_abs_error(a, b) / scale;
    assert!(moved > 0.05, "{moved}");
}

/// A change to a valid call.
type Edit = Box<dyn Fn(&mut Params<'_, B>)>;

#[test]
fn bad_control_inputs_are_refused_by_name() {
    let (_dir, mut pipe) = common::load_pipeline::<B>("sd1");
    let sd = pipe.stable_diffusion().unwrap();
    // An SDXL ControlNet on SD1: refused naming the net.
    let err = sd.add_controlnet(net("sdxl_a")).unwrap_err();
    assert!(matches!(err, PipelineError::WrongModel { .. }), "{err}");
    assert!(err.to_string().contains("sdxl_a"), "{err}");
    sd.add_controlnet(net("sd1_a")).unwrap();
    sd.add_controlnet(net("sd1_bgr")).unwrap();
    let control = || vec![vec![image("controlnet/control_a.png")]; 2];
    let run = |pipe: &mut DiffusionPipeline<B>, f: &dyn Fn(&mut Params<'_, B>)| {
        let mut p = Params::prompt("a cat");
        p.num_inference_steps = Some(1);
        p.progress = false;
        p.control_image = control();
        f(&mut p);
        pipe.run(Task::TextToImage, p).map(|_| ()).unwrap_err()
    };
    let cases: Vec<(&str, Edit)> = vec![
        ("control_image", Box::new(|p| p.control_image.truncate(1))),
        (
            "controlnet_conditioning_scale",
            Box::new(|p| p.controlnet_conditioning_scale = Some(vec![1.0, 0.5, 0.2])),
        ),
        (
            "control_guidance_start",
            Box::new(|p| {
                p.control_guidance_start = Some(vec![0.5]);
                p.control_guidance_end = Some(vec![0.5, 1.0]);
            }),
        ),
        (
            "control_guidance_end",
            Box::new(|p| p.control_guidance_end = Some(vec![1.5])),
        ),
        ("guidance_rescale", Box::new(|p| p.guidance_rescale = 0.7)),
        (
            "control_image",
            Box::new(|p| {
                p.control_image[1] = vec![image("inputs/photo_a_48x32.png")];
            }),
        ),
    ];
    for (name, f) in cases {
        let err = run(&mut pipe, f.as_ref());
        match &err {
            PipelineError::Parameter { name: got, .. } => assert_eq!(*got, name, "{err}"),
            other => panic!("{name}: {other}"),
        }
    }
}
