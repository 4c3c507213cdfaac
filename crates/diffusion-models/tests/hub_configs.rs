//! The `config.json` files of the Hub's reference repos (transcribed by hand, under
//! tests/fixtures/hub_configs/) parse and validate: google/ddpm-cifar10-32 and
//! google/ddpm-cat-256 (UNet2DModel, also built and, for CIFAR-10, run with
//! random weights), stable-diffusion-v1-5 (unet, vae, text_encoder),
//! stable-diffusion-2-1 (unet), stable-diffusion-xl-base-1.0 (unet, vae,
//! text_encoder_2) and madebyollin/taesd. Real configs carry fields tiny test
//! configs do not (`"upcast_attention": null`, `addition_embed_type_num_heads`,
//! `_name_or_path`, `torch_dtype`, …).

use burn::tensor::{Distribution, Tensor};
use diffusion_models::autoencoder_kl::AutoencoderKLConfig;
use diffusion_models::autoencoder_tiny::AutoencoderTinyConfig;
use diffusion_models::backend::Cpu;
use diffusion_models::clip::CLIPTextConfig;
use diffusion_models::config::{Loaded, ModelConfig, read_config};
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_models::unet_2d_condition::UNet2DConditionConfig;
use diffusion_models::{Loader, Precision};
use std::path::PathBuf;

type B = Cpu;

fn read<T: ModelConfig>(name: &str) -> (Loaded<T>, String) {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "hub_configs",
        name,
    ]
    .iter()
    .collect();
    let loaded = read_config::<T>(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    (loaded, path.display().to_string())
}

#[test]
fn ddpm_unets_build_and_run() {
    let dev = Default::default();
    for (name, side) in [("ddpm-cifar10-32.json", 32), ("ddpm-cat-256.json", 256)] {
        let (cfg, _) = read::<UNet2DConfig>(name);
        assert!(
            cfg.ignored_fields.is_empty(),
            "{name}: {:?}",
            cfg.ignored_fields
        );
        let model = UNet2DModel::<B>::load(&Loader::random(&dev, Precision::F32), &cfg.config)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if side == 32 {
            let x =
                Tensor::<B, 4>::random([1, 3, side, side], Distribution::Normal(0.0, 1.0), &dev);
            let t = Tensor::<B, 1>::from_floats([10.0], &dev);
            let y = model.forward(x, t, None).unwrap();
            assert_eq!(y.dims(), [1, 3, side, side]);
        }
    }
}

#[test]
fn stable_diffusion_unets_validate() {
    for name in ["sd15-unet.json", "sd21-unet.json", "sdxl-unet.json"] {
        let (cfg, source) = read::<UNet2DConditionConfig>(name);
        cfg.config
            .validate(&source)
            .unwrap_or_else(|e| panic!("{e}"));
        println!("{name}: ignored {:?}", cfg.ignored_fields);
    }
}

#[test]
fn vaes_and_text_encoders_validate() {
    for name in ["sd15-vae.json", "sdxl-vae.json"] {
        let (cfg, source) = read::<AutoencoderKLConfig>(name);
        cfg.config.validate(&source).unwrap();
    }
    let (sdxl, _) = read::<AutoencoderKLConfig>("sdxl-vae.json");
    assert!(sdxl.config.force_upcast);
    let (cfg, source) = read::<AutoencoderTinyConfig>("taesd.json");
    cfg.config.validate(&source).unwrap();
    for name in ["sd15-text_encoder.json", "sdxl-text_encoder_2.json"] {
        let (cfg, source) = read::<CLIPTextConfig>(name);
        cfg.config.validate(&source).unwrap();
    }
}
