//! The shared building blocks against diffusers (fixtures: scripts/models/gen_blocks.py).

use diffusion_models::attention::{Attention, AttentionConfig};
use diffusion_models::backend::Cpu;
use diffusion_models::embeddings::{TimestepEmbedding, timestep_embedding};
use diffusion_models::mid_block::{MidBlockConfig, UNetMidBlock2D};
use diffusion_models::nn::Activation;
use diffusion_models::resnet::{
    Downsample2D, ResnetBlock2D, ResnetConfig, TimeEmbeddingNorm, Upsample2D,
};
use diffusion_models::testing::{Fixture, assert_close};
use diffusion_models::{Loader, ModelError, Precision};
use std::path::PathBuf;

type B = Cpu;
const TOL: f64 = 1e-5;

fn fixture(name: &str) -> Fixture {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "blocks",
        name,
    ]
    .iter()
    .collect();
    Fixture::open(&path)
}

fn loader(f: &Fixture) -> Loader<'_, B> {
    Loader::new(f.source(), &Default::default(), Precision::F32).pp("block")
}

#[test]
fn resnet_default_time_embedding() {
    let f = fixture("resnet.safetensors");
    let dev = Default::default();
    let mut cfg = ResnetConfig::new(8, 16, Some(12));
    cfg.groups = 4;
    let l = loader(&f);
    let m = ResnetBlock2D::<B>::load(&l, &cfg).unwrap();
    l.finish(&[]).unwrap();
    let y = m.forward(
        f.tensor("input.x", &dev, Precision::F32),
        Some(f.tensor("input.temb", &dev, Precision::F32)),
    );
    assert_close(&f, "output", y, TOL);
}

#[test]
fn resnet_scale_shift() {
    let f = fixture("resnet_scale_shift.safetensors");
    let dev = Default::default();
    let mut cfg = ResnetConfig::new(8, 8, Some(12));
    cfg.groups = 2;
    cfg.groups_out = Some(4);
    cfg.eps = 1e-5;
    cfg.time_embedding_norm = TimeEmbeddingNorm::ScaleShift;
    cfg.output_scale_factor = 2.0;
    let l = loader(&f);
    let m = ResnetBlock2D::<B>::load(&l, &cfg).unwrap();
    l.finish(&[]).unwrap();
    let y = m.forward(
        f.tensor("input.x", &dev, Precision::F32),
        Some(f.tensor("input.temb", &dev, Precision::F32)),
    );
    assert_close(&f, "output", y, TOL);
}

#[test]
fn resnet_without_time_embedding() {
    let f = fixture("resnet_no_temb.safetensors");
    let mut cfg = ResnetConfig::new(8, 4, None);
    cfg.groups = 4;
    let l = loader(&f);
    let m = ResnetBlock2D::<B>::load(&l, &cfg).unwrap();
    l.finish(&[]).unwrap();
    let y = m.forward(
        f.tensor("input.x", &Default::default(), Precision::F32),
        None,
    );
    assert_close(&f, "output", y, TOL);
}

#[test]
fn wrong_config_is_a_named_error() {
    let f = fixture("resnet.safetensors");
    // 12 output channels where the file has 16: the shape error names the key.
    let mut cfg = ResnetConfig::new(8, 12, Some(12));
    cfg.groups = 4;
    let err = ResnetBlock2D::<B>::load(&loader(&f), &cfg).unwrap_err();
    match err {
        ModelError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(key, "block.time_emb_proj.weight");
            assert_eq!(expected, vec![12, 12]);
            assert_eq!(found, vec![16, 12]);
        }
        other => panic!("unexpected {other}"),
    }
    // No time embedding where the file has one: time_emb_proj is unexpected.
    let mut cfg = ResnetConfig::new(8, 16, None);
    cfg.groups = 4;
    let l = loader(&f);
    ResnetBlock2D::<B>::load(&l, &cfg).unwrap();
    let err = l.finish(&[]).unwrap_err().to_string();
    assert!(err.contains("block.time_emb_proj.weight"), "{err}");
    // A prefix that is not there: the missing key is named.
    let l = Loader::<B>::new(f.source(), &Default::default(), Precision::F32).pp("nope");
    let err = ResnetBlock2D::<B>::load(&l, &cfg).unwrap_err().to_string();
    assert!(
        err.contains("missing weight `nope.") && err.ends_with("1, 1])"),
        "{err}"
    );
}

#[test]
fn downsample_and_upsample() {
    let dev = Default::default();
    for (name, pad) in [
        ("downsample_p1.safetensors", 1),
        ("downsample_p0.safetensors", 0),
    ] {
        let f = fixture(name);
        let l = loader(&f);
        let m = Downsample2D::<B>::load(&l, 8, true, 6, pad).unwrap();
        l.finish(&[]).unwrap();
        assert_close(
            &f,
            "output",
            m.forward(f.tensor("input.x", &dev, Precision::F32)),
            TOL,
        );
    }
    let f = fixture("downsample_pool.safetensors");
    let m = Downsample2D::<B>::load(&loader(&f), 8, false, 8, 1).unwrap();
    assert_close(
        &f,
        "output",
        m.forward(f.tensor("input.x", &dev, Precision::F32)),
        TOL,
    );

    let f = fixture("upsample.safetensors");
    let l = loader(&f);
    let m = Upsample2D::<B>::load(&l, 8, true, 6).unwrap();
    l.finish(&[]).unwrap();
    let x = f.tensor::<B, 4>("input.x", &dev, Precision::F32);
    assert_close(&f, "output", m.forward(x.clone(), None), TOL);
    assert_close(&f, "output.sized", m.forward(x, Some([11, 13])), TOL);
}

#[test]
fn attention_spatial_and_cross() {
    let dev = Default::default();
    let f = fixture("attention_spatial.safetensors");
    let mut cfg = AttentionConfig::new(16, 2, 8);
    cfg.norm_num_groups = Some(4);
    cfg.eps = 1e-6;
    cfg.bias = true;
    cfg.residual_connection = true;
    cfg.rescale_output_factor = 2.0;
    cfg.upcast = true;
    let l = loader(&f);
    let m = Attention::<B>::load(&l, &cfg).unwrap();
    l.finish(&[]).unwrap();
    assert_close(
        &f,
        "output",
        m.forward_spatial(f.tensor("input.x", &dev, Precision::F32)),
        TOL,
    );

    let f = fixture("attention_cross.safetensors");
    let mut cfg = AttentionConfig::new(16, 4, 6);
    cfg.cross_attention_dim = Some(12);
    let l = loader(&f);
    let m = Attention::<B>::load(&l, &cfg).unwrap();
    l.finish(&[]).unwrap();
    let y = m.forward(
        f.tensor("input.x", &dev, Precision::F32),
        Some(f.tensor("input.context", &dev, Precision::F32)),
    );
    assert_close(&f, "output", y, TOL);
}

#[test]
fn mid_block() {
    let dev = Default::default();
    let f = fixture("mid_block.safetensors");
    let mut resnet = ResnetConfig::new(16, 16, Some(12));
    resnet.groups = 4;
    let cfg = MidBlockConfig {
        resnet,
        num_layers: 1,
        add_attention: true,
        attention_head_dim: Some(8),
    };
    let l = loader(&f);
    let m = UNetMidBlock2D::<B>::load(&l, &cfg).unwrap();
    l.finish(&[]).unwrap();
    let y = m.forward(
        f.tensor("input.x", &dev, Precision::F32),
        Some(f.tensor("input.temb", &dev, Precision::F32)),
    );
    assert_close(&f, "output", y, TOL);
}

#[test]
fn timestep_embeddings() {
    let dev = Default::default();
    let f = fixture("timesteps.safetensors");
    let ts = f.tensor::<B, 1>("input.timesteps", &dev, Precision::F32);
    assert_close(
        &f,
        "output.sd",
        timestep_embedding(ts.clone(), 10, true, 0.0, 1.0, 10000.0),
        TOL,
    );
    assert_close(
        &f,
        "output.ddpm",
        timestep_embedding(ts.clone(), 10, false, 1.0, 1.0, 10000.0),
        TOL,
    );
    assert_close(
        &f,
        "output.odd",
        timestep_embedding(ts.clone(), 9, true, 1.0, 1.0, 10000.0),
        TOL,
    );
    let l = loader(&f);
    let m =
        TimestepEmbedding::<B>::load(&l, 10, 24, Activation::Silu, None, None, Some(6)).unwrap();
    l.finish(&[]).unwrap();
    let emb = timestep_embedding(ts, 10, true, 0.0, 1.0, 10000.0);
    let y = m.forward(emb, Some(f.tensor("input.cond", &dev, Precision::F32)));
    assert_close(&f, "output.embedding", y, TOL);
}
