//! The parity fixtures assemble into folders the hub crate reads as diffusers
//! does: every `model_index.json` parses, every component folder it names is
//! there, and each rebuilt tokenizer encodes the case prompts to the ids
//! transformers produced when the references were made.

mod common;

use std::collections::BTreeSet;

use common::{Seeds, cases, pipeline_dir, pipeline_names, read_assemble, read_case_tensors};
use diffusion_hub::model_index::ModelIndex;
use diffusion_hub::tokenizer::ClipTokenizer;

#[test]
fn every_pipeline_assembles_into_a_complete_diffusers_folder() {
    let names = pipeline_names();
    assert_eq!(
        names,
        ["ddim", "ddpm", "inpaint", "sd1", "sd2", "sdxl"],
        "fixture pipelines"
    );
    for name in &names {
        let dir = pipeline_dir(name);
        let index = ModelIndex::from_file(&dir.path().join("model_index.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            index.class_name.ends_with("Pipeline"),
            "{name}: {}",
            index.class_name
        );
        for (component, _) in index.known_components() {
            assert!(
                dir.path().join(component).is_dir(),
                "{name}: component folder {component} missing"
            );
        }
        for dest in read_assemble(name).shared.keys() {
            assert!(dir.path().join(dest).is_file(), "{name}: {dest} not placed");
        }
    }
}

#[test]
fn rebuilt_tokenizers_encode_the_case_prompts_as_transformers_did() {
    let all = cases();
    let mut checked = 0;
    for name in pipeline_names() {
        let spec = read_assemble(&name);
        if spec.vocab.is_empty() {
            continue;
        }
        let dir = pipeline_dir(&name);
        for tok_name in &spec.vocab {
            let tok = ClipTokenizer::from_dir(dir.path().join(tok_name))
                .unwrap_or_else(|e| panic!("{name}/{tok_name}: {e}"));
            for case in all.iter().filter(|c| c.pipeline == name) {
                let expected = case
                    .token_ids
                    .get(tok_name)
                    .unwrap_or_else(|| panic!("{}: no ids for {tok_name}", case.name));
                assert!(!expected.is_empty(), "{}: no prompts recorded", case.name);
                for (text, ids) in expected {
                    let got = tok
                        .encode(text)
                        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", case.name));
                    assert_eq!(&got, ids, "{} {tok_name}: {text:?}", case.name);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} prompt encodings checked");
}

#[test]
fn case_files_hold_what_the_manifest_says() {
    let all = cases();
    assert!(all.len() >= 35, "{} cases", all.len());
    let names: BTreeSet<_> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), all.len(), "duplicate case names");
    for case in &all {
        assert!(
            pipeline_names().contains(&case.pipeline),
            "{}: unknown pipeline {}",
            case.name,
            case.pipeline
        );
        let sched = case
            .scheduler_config
            .as_object()
            .expect("scheduler_config object");
        assert_eq!(
            sched.get("num_train_timesteps"),
            Some(&serde_json::json!(1000)),
            "{}",
            case.name
        );
        let tensors = read_case_tensors(case);
        assert_eq!(case.noise_shapes.len(), case.noise_draws, "{}", case.name);
        assert_eq!(case.noise_sources.len(), case.noise_draws, "{}", case.name);
        for (i, shape) in case.noise_shapes.iter().enumerate() {
            let (got, values) = &tensors[&format!("noise.{i}")];
            assert_eq!(got, shape, "{}: noise.{i}", case.name);
            assert_eq!(values.len(), shape.iter().product::<usize>());
        }
        let (shape, values) = &tensors[&case.output];
        assert_eq!(shape, &case.output_shape, "{}: {}", case.name, case.output);
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{}: non-finite output",
            case.name
        );
        if case.output == "images" {
            assert!(
                values.iter().all(|v| (0.0..=1.0).contains(v)),
                "{}",
                case.name
            );
        }
        if let Seeds::PerImage(seeds) = &case.seeds {
            assert_eq!(
                seeds.len(),
                case.output_shape[0],
                "{}: one seed per image",
                case.name
            );
        }
        for extra in &case.extra_outputs {
            let (shape, values) = &tensors[extra];
            assert_eq!(shape[0], case.output_shape[0], "{}: {extra}", case.name);
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{}: {extra}",
                case.name
            );
        }
        let sd = case.class.starts_with("StableDiffusion");
        assert_eq!(
            case.extra_outputs.contains(&"latents_final".to_string()),
            sd,
            "{}",
            case.name
        );
        let caller_latents = case.kw("latents").is_some();
        assert_eq!(
            tensors.contains_key("latents"),
            caller_latents,
            "{}",
            case.name
        );
        for key in ["image", "mask_image"] {
            if let Some(path) = case.kw_path(key) {
                let (w, h, _, _) = common::load_png(&path);
                assert!(w > 0 && h > 0, "{}: {}", case.name, path.display());
            }
        }
    }
}
