//! LoRA and textual-inversion parity with diffusers 0.42 + peft
//! (`fixtures/lora`, written by scripts/pipelines/gen_lora.py): every adapter
//! format, unfused and fused, two adapters with weights, `lora_scale`,
//! text-encoder LoRAs and SDXL's two encoders; embeddings in the diffusers,
//! A1111 (multi-vector) and kohya formats, together, and SDXL's `clip_l` /
//! `clip_g` pair, on the tiny SD1, SD2 and SDXL pipelines. Images must match
//! diffusers' within 1/255 mean absolute error and the final latents within
//! 1e-3 relative MAE, while each adapter moves the latents far more than that
//! from the plain pipeline's, or an embedding from the same prompt without it
//! (so a dropped adapter or token cannot pass).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use common::{max_abs_error, mean_abs_error, read_tensors};
use diffusion_pipelines::lora::{Component, MissingComponent};
use diffusion_pipelines::{DiffusionPipeline, Params, PipelineError, Task};
use serde::Deserialize;
use serde_json::Value;

type B = burn::backend::Flex;
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

#[derive(Deserialize)]
struct LoraCase {
    name: String,
    pipeline: String,
    kwargs: Value,
    adapters: Vec<(String, String)>,
    set_adapters: Option<(Vec<String>, Vec<f64>)>,
    fuse: Option<f64>,
    lora_scale: Option<f64>,
    /// Embedding files and the token each is loaded under (null: the file's).
    #[serde(default)]
    embeddings: Vec<(String, Option<String>)>,
}

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<LoraCase>,
}

fn dir() -> PathBuf {
    common::fixtures().join("lora")
}

fn cases() -> Vec<LoraCase> {
    let text = std::fs::read_to_string(dir().join("cases.json")).unwrap();
    serde_json::from_str::<Manifest>(&text).unwrap().cases
}

fn load(name: &str) -> (tempfile::TempDir, DiffusionPipeline<B>) {
    common::load_pipeline::<B>(name)
}

fn params<'a>(case: &LoraCase, tensors: &Tensors) -> Params<'a, B> {
    let kw = &case.kwargs;
    let text = |k: &str| kw[k].as_str().map(|s| vec![s.to_string()]);
    let (shape, values) = &tensors["latents"];
    let shape: [usize; 4] = shape.clone().try_into().unwrap();
    Params {
        prompt: text("prompt").unwrap(),
        negative_prompt: text("negative_prompt"),
        guidance_scale: kw["guidance_scale"].as_f64(),
        num_inference_steps: kw["num_inference_steps"].as_u64().map(|n| n as usize),
        height: kw["height"].as_u64().map(|n| n as usize),
        width: kw["width"].as_u64().map(|n| n as usize),
        latents: Some(Tensor::from_data(
            TensorData::new(values.clone(), shape),
            &Default::default(),
        )),
        progress: false,
        ..Params::default()
    }
}

/// Runs `case` on `pipe` (from a state with no adapters): its final latents and images.
fn run(
    pipe: &mut DiffusionPipeline<B>,
    case: &LoraCase,
    tensors: &Tensors,
) -> (Vec<f32>, Vec<f32>) {
    let sd = pipe.stable_diffusion().unwrap();
    sd.unload_lora_weights().unwrap();
    sd.set_lora_scale(case.lora_scale.unwrap_or(1.0));
    for (file, name) in &case.adapters {
        sd.load_lora_weights(&dir().join(file), Some(name), MissingComponent::Error)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
    if let Some((names, weights)) = &case.set_adapters {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        sd.set_adapters(&names, weights).unwrap();
    }
    if let Some(scale) = case.fuse {
        sd.fuse_lora(scale, &[]).unwrap();
    }
    for (file, token) in &case.embeddings {
        sd.load_textual_inversion(&dir().join(file), token.as_deref())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
    let out = pipe.run(Task::TextToImage, params(case, tensors)).unwrap();
    let latents = out.latents.into_data().to_vec::<f32>().unwrap();
    (latents, out.images.unwrap().data)
}

fn check(pipeline: &str) {
    let cases: Vec<LoraCase> = cases()
        .into_iter()
        .filter(|c| c.pipeline == pipeline)
        .collect();
    let (_dir, mut pipe) = load(pipeline);
    let base = &read_tensors(
        &dir()
            .join("cases")
            .join(format!("{pipeline}_base.safetensors")),
    )["latents_final"]
        .1;
    let mut failures = Vec::new();
    for case in &cases {
        let tensors = read_tensors(
            &dir()
                .join("cases")
                .join(format!("{}.safetensors", case.name)),
        );
        // Embeddings add tokens for good: each such case gets a fresh pipeline,
        // and its baseline is the same prompt without the embedding.
        let (latents, images) = if case.embeddings.is_empty() {
            run(&mut pipe, case, &tensors)
        } else {
            run(&mut load(pipeline).1, case, &tensors)
        };
        let base = tensors.get("latents_plain").map(|(_, v)| v).unwrap_or(base);
        let want = &tensors["latents_final"].1;
        let scale = want.iter().map(|x| x.abs()).sum::<f32>() / want.len() as f32;
        let rel = mean_abs_error(&latents, want) / scale;
        let moved = mean_abs_error(want, base) / scale;
        let mae = mean_abs_error(&images, &tensors["images"].1);
        let max = max_abs_error(&images, &tensors["images"].1);
        let line = format!(
            "{}: images MAE {mae:.2e} max {max:.2e}, latents rel. MAE {rel:.2e} (the adapters move them {moved:.2e})",
            case.name
        );
        eprintln!("{line}");
        let plain = case.adapters.is_empty() && case.embeddings.is_empty();
        let adapters_matter = plain || moved > 30.0 * rel.max(1e-5);
        if mae > 1.0 / 255.0 || rel > 1e-3 || !adapters_matter {
            failures.push(line);
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn sd1_every_format_fused_and_unfused() {
    check("sd1");
}

#[test]
fn sd2_peft_on_linear_projections() {
    check("sd2");
}

#[test]
fn sdxl_kohya_with_both_text_encoders() {
    check("sdxl");
}

/// What a parameter holds, as f32 values.
fn weights_of(pipe: &mut DiffusionPipeline<B>) -> Vec<f32> {
    let sd = pipe.stable_diffusion().unwrap();
    let diffusion_models::unet_2d_blocks::DownBlock::CrossAttn(block) = &sd.unet.down_blocks[0]
    else {
        panic!("the fixture's first down block has attention")
    };
    let attn = &block.attentions[0].transformer_blocks[0].attn1;
    attn.to_q.weight.val().into_data().to_vec::<f32>().unwrap()
}

#[test]
fn unfuse_restores_the_weights_and_a_refused_file_changes_nothing() {
    let (_dir, mut pipe) = load("sd1");
    let before = weights_of(&mut pipe);
    let sd = pipe.stable_diffusion().unwrap();
    let peft = dir().join("files/peft_sd1.safetensors");
    sd.load_lora_weights(&peft, Some("a"), MissingComponent::Error)
        .unwrap();
    assert_eq!(sd.get_active_adapters(), vec!["a".to_string()]);
    sd.fuse_lora(1.0, &[Component::Unet]).unwrap();
    let fused = weights_of(&mut pipe);
    assert!(
        max_abs_error(&fused, &before) > 1e-2,
        "fusing changed nothing"
    );
    let sd = pipe.stable_diffusion().unwrap();
    // Loading or deleting while fused is refused.
    assert!(sd.delete_adapters(&["a"]).is_err());
    sd.unfuse_lora().unwrap();
    let back = weights_of(&mut pipe);
    let err = max_abs_error(&back, &before);
    let size = before.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("unfuse: max abs error {err:.2e} on weights up to {size:.2e}");
    assert!(err <= 4.0 * f32::EPSILON * size.max(1.0), "{err}");

    // An SDXL file into SD1: refused whole, naming the file and a key; the
    // pipeline keeps only adapter `a`.
    let sd = pipe.stable_diffusion().unwrap();
    let xl = dir().join("files/kohya_sdxl.safetensors");
    let err = sd
        .load_lora_weights(&xl, Some("xl"), MissingComponent::Error)
        .unwrap_err();
    assert!(matches!(err, PipelineError::Adapter { .. }), "{err}");
    assert!(err.to_string().contains("kohya_sdxl"), "{err}");
    let err = sd
        .load_lora_weights(&xl, Some("xl"), MissingComponent::Skip)
        .unwrap_err();
    assert!(err.to_string().contains("lora_"), "{err}");
    for (_, table) in sd.adapter_tables() {
        assert!(table.adapters().iter().all(|n| n == "a"), "{table:?}");
    }
    // The same name twice is refused; unknown adapters cannot be activated.
    assert!(
        sd.load_lora_weights(&peft, Some("a"), MissingComponent::Error)
            .is_err()
    );
    assert!(sd.set_adapters(&["nope"], &[1.0]).is_err());
    sd.unload_lora_weights().unwrap();
    assert!(sd.get_active_adapters().is_empty());
    // DoRA runs unfused only: fusing it is refused and changes nothing.
    sd.load_lora_weights(
        &dir().join("files/dora_sd1.safetensors"),
        Some("d"),
        MissingComponent::Error,
    )
    .unwrap();
    let err = sd.fuse_lora(1.0, &[]).unwrap_err();
    assert!(err.to_string().contains("DoRA"), "{err}");
    sd.unload_lora_weights().unwrap();
    assert_eq!(weights_of(&mut pipe), back);
}

#[test]
fn refused_embeddings_change_nothing() {
    let (_dir, mut pipe) = load("sd1");
    let sd = pipe.stable_diffusion().unwrap();
    let len = |sd: &diffusion_pipelines::StableDiffusion<B>| {
        sd.text_encoder.as_ref().unwrap().tokenizer.len()
    };
    let before = len(sd);
    let files = dir().join("files");
    let added = sd
        .load_textual_inversion(&files.join("ti_a1111.pt"), None)
        .unwrap();
    assert_eq!(added, vec!["<ink>", "<ink>_1", "<ink>_2"]);
    assert_eq!(len(sd), before + 3);
    // The same token again; an SDXL pair for a one-encoder pipeline; a width
    // the encoder does not have; a word already in CLIP's vocabulary.
    let again = sd
        .load_textual_inversion(&files.join("ti_a1111.pt"), None)
        .unwrap_err();
    assert!(again.to_string().contains("<ink>"), "{again}");
    let xl = sd
        .load_textual_inversion(&files.join("ti_sdxl.safetensors"), Some("<sx>"))
        .unwrap_err();
    assert!(xl.to_string().contains("text_encoder_2"), "{xl}");
    let tmp = tempfile::tempdir().unwrap();
    let wide = tmp.path().join("wide.safetensors");
    let values: Vec<u8> = [0.5f32; 5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 5], &values).unwrap();
    safetensors::serialize_to_file([("<wide>", view)], None, &wide).unwrap();
    let err = sd.load_textual_inversion(&wide, None).unwrap_err();
    assert!(err.to_string().contains("width 5"), "{err}");
    let err = sd.load_textual_inversion(&wide, Some("dog")).unwrap_err();
    assert!(err.to_string().contains("width 5"), "{err}");
    let known = sd
        .load_textual_inversion(&files.join("ti_kohya.safetensors"), Some("dog</w>"))
        .unwrap_err();
    assert!(known.to_string().contains("already"), "{known}");
    assert_eq!(len(sd), before + 3, "a refused file added tokens");
}

/// Adapters and embeddings in f16 and bf16 (the factors are cast to the
/// layer's type, sums as Burn's ops take them) stay within the half-precision
/// pipeline's own distance from diffusers' f32 images (tests/api.rs bounds
/// the plain pipeline by 2e-3 in f16 and 2e-2 in bf16).
#[test]
fn half_precision_adapters_stay_close_to_diffusers() {
    use diffusion_models::Precision;
    let names = ["sd1_two_adapters", "sd1_two_fused", "sd1_ti_a1111_multi"];
    let cases: Vec<LoraCase> = cases()
        .into_iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .collect();
    assert_eq!(cases.len(), names.len());
    let mut failures = Vec::new();
    for (precision, tol) in [(Precision::F16, 2e-3), (Precision::BF16, 2e-2)] {
        for case in &cases {
            let (_dir, mut pipe) = common::load_pipeline_in::<B>("sd1", precision);
            let tensors = read_tensors(
                &dir()
                    .join("cases")
                    .join(format!("{}.safetensors", case.name)),
            );
            let (_, images) = run(&mut pipe, case, &tensors);
            let mae = mean_abs_error(&images, &tensors["images"].1);
            eprintln!(
                "{precision:?} {}: image MAE vs diffusers f32 {mae:.2e}",
                case.name
            );
            if mae > tol {
                failures.push(format!("{precision:?} {}: MAE {mae}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A copy of adapter file `src` with each key renamed by `f` (dropped on
/// `None`), metadata kept.
fn renamed(src: &str, dst: &std::path::Path, f: impl Fn(&str) -> Option<String>) {
    let bytes = std::fs::read(dir().join("files").join(src)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(k, v)| f(&k).map(|k| (k, v)))
        .collect();
    // The header's metadata too (diffusers' `lora_adapter_metadata`).
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    safetensors::serialize_to_file(views, header.metadata().clone(), dst).unwrap();
}

/// The final latents of the sd1_peft call with the adapter files `files`
/// loaded (and `then` applied).
fn latents_with(
    pipe: &mut DiffusionPipeline<B>,
    files: &[&std::path::Path],
    then: impl Fn(&mut diffusion_pipelines::StableDiffusion<B>),
) -> Vec<f32> {
    let case = cases().into_iter().find(|c| c.name == "sd1_peft").unwrap();
    let tensors = read_tensors(&dir().join("cases/sd1_peft.safetensors"));
    let sd = pipe.stable_diffusion().unwrap();
    sd.unload_lora_weights().unwrap();
    for (i, f) in files.iter().enumerate() {
        sd.load_lora_weights(f, Some(&format!("f{i}")), MissingComponent::Error)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    then(sd);
    let out = pipe
        .run(Task::TextToImage, params(&case, &tensors))
        .unwrap();
    out.latents.into_data().to_vec::<f32>().unwrap()
}

/// Key spellings diffusers has no file writer for give the same numbers as
/// the spellings it writes: unprefixed PEFT UNet keys, the attention
/// processors' `to_q_lora.down` names, kohya text-encoder keys with
/// transformers 4's `text_model_`; and `set_adapters` per component.
#[test]
fn other_key_spellings_and_per_component_weights() {
    let (_dir, mut pipe) = load("sd1");
    let tmp = tempfile::tempdir().unwrap();
    let path = |n: &str| tmp.path().join(n);
    let max_diff = |a: &[f32], b: &[f32]| max_abs_error(a, b);

    // UNet-only PEFT, with and without the `unet.` prefix.
    let unet_only = |k: &str| k.starts_with("unet.").then(|| k.to_string());
    renamed(
        "peft_sd1.safetensors",
        &path("prefixed.safetensors"),
        unet_only,
    );
    renamed("peft_sd1.safetensors", &path("bare.safetensors"), |k| {
        k.strip_prefix("unet.").map(str::to_string)
    });
    let a = latents_with(&mut pipe, &[&path("prefixed.safetensors")], |_| {});
    let b = latents_with(&mut pipe, &[&path("bare.safetensors")], |_| {});
    assert_eq!(max_diff(&a, &b), 0.0, "unprefixed PEFT keys");

    // Attention-only, as PEFT and as the attention processors named it.
    let attn = |k: &str| {
        let k = k.strip_prefix("unet.")?;
        let (module, part) = k.rsplit_once(".lora_")?;
        let (attn, proj) = module.rsplit_once('.').filter(|(a, _)| {
            a.ends_with("attn1") || a.ends_with("attn2") || a.ends_with(".to_out")
        })?;
        let (attn, proj) = if proj == "0" {
            (attn.strip_suffix(".to_out")?, "to_out")
        } else {
            (attn, proj)
        };
        let part = match part {
            "A.weight" => "down.weight",
            "B.weight" => "up.weight",
            _ => return None,
        };
        Some(format!("{attn}.processor.{proj}_lora.{part}"))
    };
    renamed("peft_sd1.safetensors", &path("processor.safetensors"), attn);
    renamed(
        "peft_sd1.safetensors",
        &path("attn_peft.safetensors"),
        |k| attn(k).map(|_| k.to_string()),
    );
    let a = latents_with(&mut pipe, &[&path("attn_peft.safetensors")], |_| {});
    let b = latents_with(&mut pipe, &[&path("processor.safetensors")], |_| {});
    assert!(max_diff(&a, &b) == 0.0, "attention-processor names");

    // kohya text-encoder keys with `text_model_`.
    renamed(
        "kohya_sd1.safetensors",
        &path("te_text_model.safetensors"),
        |k| Some(k.replacen("lora_te_", "lora_te_text_model_", 1)),
    );
    let kohya = dir().join("files/kohya_sd1.safetensors");
    let a = latents_with(&mut pipe, &[&kohya], |_| {});
    let b = latents_with(&mut pipe, &[&path("te_text_model.safetensors")], |_| {});
    assert_eq!(max_diff(&a, &b), 0.0, "text_model_ keys");

    // set_adapters per component: the UNet part at weight 0 is the
    // text-encoder part alone.
    let peft = dir().join("files/peft_sd1.safetensors");
    renamed("peft_sd1.safetensors", &path("te_only.safetensors"), |k| {
        k.starts_with("text_encoder.").then(|| k.to_string())
    });
    let a = latents_with(&mut pipe, &[&peft], |sd| {
        let all = [("f0".to_string(), 1.0)].into_iter().collect();
        let unet_off = [(("f0".to_string(), Component::Unet), 0.0)]
            .into_iter()
            .collect();
        sd.set_adapters_by_component(&all, &unet_off).unwrap();
    });
    let b = latents_with(&mut pipe, &[&path("te_only.safetensors")], |_| {});
    let full = latents_with(&mut pipe, &[&peft], |_| {});
    assert!(max_diff(&a, &b) < 1e-6, "per-component weights");
    assert!(
        max_diff(&a, &full) > 1e-2,
        "the UNet part was not switched off"
    );
}
