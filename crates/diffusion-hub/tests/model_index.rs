//! `model_index.json` parsing: the real files of the SD 1.5, SD 2.1, SDXL,
//! inpainting and DDPM repos (tests/fixtures/model_index), an unknown
//! component, and malformed files whose errors must name the file and key.

use std::path::{Path, PathBuf};

use diffusion_hub::model_index::{Component, ComponentKind, ModelIndex, ModelIndexError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model_index")
        .join(name)
}

fn load(name: &str) -> ModelIndex {
    ModelIndex::from_file(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn comp(library: &str, class: &str) -> Component {
    Component {
        library: library.into(),
        class: class.into(),
    }
}

#[test]
fn sd15() {
    let index = load("sd15.json");
    assert_eq!(index.class_name, "StableDiffusionPipeline");
    assert_eq!(index.diffusers_version.as_deref(), Some("0.6.0"));
    assert_eq!(index.components.len(), 7);
    assert_eq!(
        index.component("unet"),
        Some(&comp("diffusers", "UNet2DConditionModel"))
    );
    assert_eq!(
        index.component("safety_checker"),
        Some(&comp("stable_diffusion", "StableDiffusionSafetyChecker"))
    );
    assert!(index.absent.is_empty());
    assert!(index.unknown.is_empty());
    assert!(index.options.is_empty());
    let kinds: Vec<(&str, ComponentKind)> = index
        .known_components()
        .map(|(n, c)| (n, c.kind(n)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("feature_extractor", ComponentKind::ImageProcessor),
            ("safety_checker", ComponentKind::Model),
            ("scheduler", ComponentKind::Scheduler),
            ("text_encoder", ComponentKind::Model),
            ("tokenizer", ComponentKind::Tokenizer),
            ("unet", ComponentKind::Model),
            ("vae", ComponentKind::Model),
        ]
    );
}

#[test]
fn sd21_absent_safety_checker_and_option() {
    let index = load("sd21.json");
    assert_eq!(index.absent, vec!["safety_checker".to_string()]);
    assert!(index.component("safety_checker").is_none());
    assert_eq!(
        index.options.get("requires_safety_checker"),
        Some(&serde_json::Value::Bool(false))
    );
    assert_eq!(
        index.component("scheduler"),
        Some(&comp("diffusers", "DDIMScheduler"))
    );
}

#[test]
fn sdxl_base_two_text_encoders() {
    let index = load("sdxl_base.json");
    assert_eq!(index.class_name, "StableDiffusionXLPipeline");
    assert_eq!(
        index.component("text_encoder_2"),
        Some(&comp("transformers", "CLIPTextModelWithProjection"))
    );
    assert_eq!(
        index
            .component("tokenizer_2")
            .map(|c| c.kind("tokenizer_2")),
        Some(ComponentKind::Tokenizer)
    );
    let mut absent = index.absent.clone();
    absent.sort();
    assert_eq!(absent, vec!["feature_extractor", "image_encoder"]);
    assert_eq!(
        index.options.get("force_zeros_for_empty_prompt"),
        Some(&serde_json::Value::Bool(true))
    );
    assert!(index.unknown.is_empty());
}

#[test]
fn inpaint_and_ddpm() {
    let inpaint = load("sd_inpaint.json");
    assert_eq!(inpaint.class_name, "StableDiffusionInpaintPipeline");
    assert_eq!(inpaint.components.len(), 7);
    let ddpm = load("ddpm.json");
    assert_eq!(ddpm.class_name, "DDPMPipeline");
    assert_eq!(
        ddpm.components.keys().collect::<Vec<_>>(),
        vec!["scheduler", "unet"]
    );
    assert_eq!(
        ddpm.component("unet"),
        Some(&comp("diffusers", "UNet2DModel"))
    );
}

#[test]
fn unknown_components_are_reported_not_fatal() {
    let index = load("sd3_unknown.json");
    let mut unknown = index.unknown.clone();
    unknown.sort();
    assert_eq!(unknown, vec!["text_encoder_3", "transformer"]);
    // Unknown but present components are still in the map, with their class.
    assert_eq!(
        index.component("transformer"),
        Some(&comp("diffusers", "SD3Transformer2DModel"))
    );
    // ... and not among the known ones that resolution fetches.
    assert!(index.known_components().all(|(n, _)| n != "transformer"));
    assert!(index.metadata.contains_key("_name_or_path"));
}

fn parse_err(text: &str) -> ModelIndexError {
    ModelIndex::parse(text, Path::new("repo/model_index.json")).expect_err(text)
}

#[test]
fn errors_name_the_file_and_key() {
    let cases: &[(&str, &str)] = &[
        ("{", "not valid JSON"),
        ("[1, 2]", "top level must be a JSON object"),
        (
            r#"{"unet": ["diffusers", "UNet2DConditionModel"]}"#,
            "missing key `_class_name`",
        ),
        (r#"{"_class_name": 3}"#, "key `_class_name`"),
        (r#"{"_class_name": ""}"#, "key `_class_name`"),
        (
            r#"{"_class_name": "P", "_diffusers_version": 1}"#,
            "key `_diffusers_version`",
        ),
        (
            r#"{"_class_name": "P", "unet": ["diffusers", null]}"#,
            "key `unet`",
        ),
        (r#"{"_class_name": "P", "vae": [1, 2]}"#, "key `vae`"),
        (r#"{"_class_name": "P", "vae": ["diffusers"]}"#, "key `vae`"),
        (
            r#"{"_class_name": "P", "vae": ["", "AutoencoderKL"]}"#,
            "key `vae`",
        ),
        (
            r#"{"_class_name": "P", "my_model": [null, "X"]}"#,
            "key `my_model`",
        ),
    ];
    for (text, expected) in cases {
        let msg = parse_err(text).to_string();
        assert!(msg.contains("repo/model_index.json"), "{text}: {msg}");
        assert!(msg.contains(expected), "{text}: {msg}");
    }
}

#[test]
fn unreadable_file_names_the_path() {
    let err = ModelIndex::from_file(Path::new("/nonexistent/model_index.json")).unwrap_err();
    assert!(matches!(err, ModelIndexError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/model_index.json"));
}

#[test]
fn non_component_arrays_are_options() {
    // A list-valued pipeline option of an unknown name is kept as an option.
    let index = ModelIndex::parse(
        r#"{"_class_name": "P", "sizes": [1, 2, 3], "unet": ["diffusers", "UNet2DModel"]}"#,
        Path::new("m.json"),
    )
    .unwrap();
    assert!(index.options.contains_key("sizes"));
    assert!(index.unknown.is_empty());
}
