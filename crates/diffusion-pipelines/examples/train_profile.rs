//! Where a training step's time goes, on the CPU backend: forward without
//! autodiff, forward with it, backward, and the optimizer + moving average.
//!
//! ```text
//! cargo run --release -p diffusion-pipelines --example train_profile -- CONFIG.json [BATCH] [RES] [STEPS]
//! ```

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use diffusion_models::unet_2d::{UNet2DConfig, UNet2DModel};
use diffusion_pipelines::training::{Batch, Condition, TrainConfig, Trainer, build_model};
use std::time::Instant;

type B = Autodiff<Flex>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let text = std::fs::read_to_string(&args[1]).expect("config");
    let config = diffusion_models::config::parse_config::<UNet2DConfig>(&text, &args[1])
        .expect("config")
        .config;
    let n: usize = args.get(2).map_or(64, |s| s.parse().unwrap());
    let r: usize = args.get(3).map_or(16, |s| s.parse().unwrap());
    let steps: usize = args.get(4).map_or(5, |s| s.parse().unwrap());
    let c = config.in_channels;
    let dev = Default::default();
    let (model, keys) = build_model::<B, UNet2DModel<B>>(&config, None, &dev, 0).unwrap();
    let mut t = Trainer::from_parts(
        model,
        config,
        keys,
        serde_json::json!({"_class_name": "DDPMScheduler"}),
        TrainConfig::default(),
        dev,
    )
    .unwrap();
    let len = n * c * r * r;
    let x: Vec<f32> = (0..len)
        .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
        .collect();
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(x.clone(), [n, c, r, r]), &dev);
    let batch = Batch {
        noise: x0.clone().flip([3]),
        x0,
        offset_noise: None,
        timesteps: (0..n as i64).map(|i| (i * 37) % 1000).collect(),
        condition: Condition::None,
    };
    let inner = t.raw_model();
    let xi = Tensor::<Flex, 4>::from_data(TensorData::new(x, [n, c, r, r]), &dev);
    let ti = Tensor::<Flex, 1>::from_data(TensorData::new(vec![500f32; n], [n]), &dev);
    let time = |label: &str, f: &mut dyn FnMut()| {
        f();
        let t0 = Instant::now();
        for _ in 0..steps {
            f();
        }
        println!(
            "{label:>28}: {:8.1} ms",
            t0.elapsed().as_secs_f64() * 1e3 / steps as f64
        );
    };
    time("forward (no autodiff)", &mut || {
        let y = inner.forward(xi.clone(), ti.clone(), None).unwrap();
        let _ = y.into_data();
    });
    time("forward + loss (autodiff)", &mut || {
        let l = t.loss(&batch).unwrap();
        let _ = l.into_data();
    });
    time("forward + backward", &mut || {
        let l = t.loss(&batch).unwrap();
        let _ = l.backward();
    });
    time("full step (+ AdamW, EMA)", &mut || {
        t.step(&batch).unwrap();
    });
}
