//! The embedded default model (trained with `diffuse train`, docs/training.md)
//! is a diffusers pipeline folder that Python diffusers loads and samples from
//! with the same result: `scripts/training/check_saved.py --fixture` recorded
//! diffusers' `DDIMPipeline` images for a seeded `torch.Generator`, and the
//! Rust pipeline must reproduce them from the same seed.

use diffusion_pipelines::{DiffusionPipeline, Generator, LoadOptions, Params};
use std::path::PathBuf;

#[test]
fn the_default_model_samples_what_python_diffusers_samples() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/default_model_diffusers.json")).unwrap(),
    )
    .unwrap();
    let model = root.join("assets/default-model");
    let mut pipe = DiffusionPipeline::<burn::backend::Flex>::from_pretrained(
        model.to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let batch = fx["batch"].as_u64().unwrap() as usize;
    let out = pipe
        .call(Params {
            num_images_per_prompt: batch,
            num_inference_steps: Some(fx["steps"].as_u64().unwrap() as usize),
            generator: Some(Generator::Seed(fx["seed"].as_u64().unwrap())),
            ..Params::default()
        })
        .unwrap();
    let images = out.images.unwrap();
    let want: Vec<f32> = fx["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(images.data.len(), want.len());
    let mae = images
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| f64::from((a - b).abs()))
        .sum::<f64>()
        / want.len() as f64;
    let max = images
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("default model vs diffusers: MAE {mae:.2e}, max {max:.2e}");
    assert!(mae < 1e-4 && max < 2e-3, "MAE {mae:.2e}, max {max:.2e}");
}
