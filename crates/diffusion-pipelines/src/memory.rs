//! How much memory a request would need, checked before anything is
//! allocated: a size or batch the machine cannot hold is refused with a line
//! that says how much it would need and how much there is, instead of an
//! allocation abort (or an overflow panic) deep inside the backend.
//!
//! The estimate is deliberately simple, an upper-bound sketch of the peak, not
//! a measurement: the initial latents and the scheduler's copies of them, the
//! skip connections the UNet keeps across its down path, and the largest
//! stage (a resnet's input, output and temporaries, or an attention's score
//! matrix, which Burn's attention materialises: `heads × tokens × keys`
//! f32 values per image), then the VAE's largest stage at full resolution.
//! Arithmetic is in `f64`, so no size overflows.
//!
//! What is available is read from the system (Linux): the smallest of
//! `MemAvailable` (`/proc/meminfo`), the cgroup's `memory.max` minus its
//! `memory.current`, and the address-space limit (`ulimit -v`,
//! `/proc/self/limits`) minus what the process already maps. Elsewhere, or
//! on a GPU backend (whose memory the host cannot see), only sizes beyond
//! any machine (more than [`ABSURD_BYTES`]) are refused.

use diffusion_models::autoencoder_kl::AutoencoderKLConfig;
use diffusion_models::unet_2d::UNet2DConfig;
use diffusion_models::unet_2d_condition::UNet2DConditionConfig;

use crate::error::{PipelineError, Result};

/// A request larger than this (1 PiB) is refused on every machine.
pub const ABSURD_BYTES: f64 = (1u64 << 50) as f64;

/// One level of a UNet, as the estimate sees it.
#[derive(Debug, Clone, Copy)]
struct Level {
    channels: usize,
    /// Attention heads at this level (0: no attention).
    heads: usize,
    /// Key tokens of its attention beyond its own (77 for text).
    context: usize,
    layers: usize,
}

/// The peak bytes of one UNet forward at latent size `h × w`, batch `batch`,
/// `elem` bytes per activation value.
fn unet_peak(levels: &[Level], batch: f64, h: usize, w: usize, elem: f64) -> f64 {
    let mut skips = 0.0;
    let mut largest: f64 = 0.0;
    for (i, level) in levels.iter().enumerate() {
        let scale = (1u64 << i.min(62)) as f64;
        let (hi, wi) = ((h as f64 / scale).ceil(), (w as f64 / scale).ceil());
        let tokens = hi * wi;
        let c = level.channels as f64;
        let next = levels.get(i + 1).map_or(c, |l| l.channels as f64);
        skips += batch * c * tokens * elem * (level.layers as f64 + 1.0);
        // An up block's resnet sees its input and the skip concatenated;
        // input, output, norm and temporaries are alive together.
        let resnet = 4.0 * batch * (c + next) * tokens * elem;
        // Scores and their softmax, in f32.
        let keys = tokens.max(level.context as f64);
        let attention = 2.0 * batch * level.heads as f64 * tokens * keys * 4.0;
        largest = largest.max(resnet).max(attention);
    }
    skips + largest
}

/// The levels of a `UNet2DConditionModel` (`attention_head_dim` is the head
/// count there).
fn condition_levels(cfg: &UNet2DConditionConfig) -> Vec<Level> {
    let n = cfg.block_out_channels.len();
    (0..n)
        .map(|i| {
            let attention = cfg.down_block_types[i].contains("CrossAttn")
                || cfg.up_block_types[n - 1 - i].contains("CrossAttn")
                || (i + 1 == n && cfg.mid_block_type.as_deref() == Some("UNetMidBlock2DCrossAttn"));
            Level {
                channels: cfg.block_out_channels[i],
                heads: if attention {
                    cfg.attention_head_dim.get(i).unwrap_or(1)
                } else {
                    0
                },
                context: 77,
                layers: cfg.layers_per_block.get(i).unwrap_or(1),
            }
        })
        .collect()
}

/// The levels of a `UNet2DModel` (`attention_head_dim` is the head width).
fn unconditional_levels(cfg: &UNet2DConfig) -> Vec<Level> {
    let n = cfg.block_out_channels.len();
    (0..n)
        .map(|i| {
            let c = cfg.block_out_channels[i];
            let attention = cfg.down_block_types[i].contains("Attn")
                || cfg.up_block_types[n - 1 - i].contains("Attn")
                || (i + 1 == n && cfg.mid_block_type.is_some() && cfg.add_attention);
            let heads = cfg.attention_head_dim.map_or(1, |d| (c / d.max(1)).max(1));
            Level {
                channels: c,
                heads: if attention { heads } else { 0 },
                context: 0,
                layers: cfg.layers_per_block,
            }
        })
        .collect()
}

/// The peak bytes of a VAE decode (or encode) of `batch` images of
/// `height × width`: its widest stage at full resolution, or its middle
/// attention (one head over every latent position).
fn vae_peak(cfg: &AutoencoderKLConfig, batch: f64, height: usize, width: usize, elem: f64) -> f64 {
    let pixels = height as f64 * width as f64;
    let c0 = cfg.block_out_channels.first().copied().unwrap_or(1) as f64;
    let c1 = cfg.block_out_channels.get(1).copied().unwrap_or(1) as f64;
    let top = 4.0 * batch * (c0 + c1) * pixels * elem;
    let factor = (1u64 << cfg.block_out_channels.len().saturating_sub(1).min(62)) as f64;
    let tokens = pixels / (factor * factor);
    let attention = if cfg.mid_block_add_attention {
        2.0 * batch * tokens * tokens * 4.0
    } else {
        0.0
    };
    top.max(attention)
}

/// What a Stable Diffusion call would need at most: `images` images of
/// `height × width` pixels (`latent_channels` at `1/scale`), the UNet run on
/// `unet_batch` rows (twice the images under classifier-free guidance).
pub fn stable_diffusion_bytes(
    unet: &UNet2DConditionConfig,
    vae: &AutoencoderKLConfig,
    images: usize,
    unet_batch: usize,
    height: usize,
    width: usize,
    elem: usize,
) -> f64 {
    let scale = vae.downscale_factor().max(1);
    let (h, w) = (height / scale, width / scale);
    let channels = unet.in_channels.max(vae.latent_channels) as f64;
    let latents = 8.0 * images as f64 * channels * h as f64 * w as f64 * 4.0;
    let unet = unet_peak(
        &condition_levels(unet),
        unet_batch as f64,
        h,
        w,
        elem as f64,
    );
    let vae = vae_peak(vae, images as f64, height, width, elem as f64);
    latents + unet.max(vae)
}

/// What ControlNets add to [`stable_diffusion_bytes`]: their summed
/// residuals, one per UNet skip state and as large, alive while the UNet
/// runs (a net's own forward peaks like the UNet's encoder half, below the
/// UNet's peak, and runs before it).
pub fn controlnet_bytes(
    unet: &UNet2DConditionConfig,
    vae: &AutoencoderKLConfig,
    unet_batch: usize,
    height: usize,
    width: usize,
    elem: usize,
) -> f64 {
    let scale = vae.downscale_factor().max(1);
    let (h, w) = (height / scale, width / scale);
    condition_levels(unet)
        .iter()
        .enumerate()
        .map(|(i, level)| {
            let s = (1u64 << i.min(62)) as f64;
            let tokens = (h as f64 / s).ceil() * (w as f64 / s).ceil();
            unet_batch as f64
                * level.channels as f64
                * tokens
                * elem as f64
                * (level.layers as f64 + 1.0)
        })
        .sum()
}

/// What an unconditional (DDPM/DDIM) call of `images` images would need.
pub fn unconditional_bytes(unet: &UNet2DConfig, images: usize, height: usize, width: usize) -> f64 {
    let latents =
        8.0 * images as f64 * unet.in_channels as f64 * height as f64 * width as f64 * 4.0;
    latents
        + unet_peak(
            &unconditional_levels(unet),
            images as f64,
            height,
            width,
            4.0,
        )
}

/// About how many parameters a `UNet2DModel` of `unet` has: per level, the
/// down block's and the up block's 3×3 resnets (two convs each) and their
/// attention projections.
fn unconditional_parameters(unet: &UNet2DConfig) -> f64 {
    let layers = unet.layers_per_block as f64;
    unet.block_out_channels
        .iter()
        .map(|c| {
            let c = *c as f64;
            // Down: `layers` resnets; up: `layers + 1` resnets on wider inputs.
            (2.0 * layers + 2.0 * (layers + 1.0) * 1.5) * 9.0 * c * c + 4.0 * c * c
        })
        .sum::<f64>()
        + 16.0 * (unet.block_out_channels.first().copied().unwrap_or(0) as f64).powi(2)
}

/// What training a `UNet2DModel` on `batch` images of `height × width`
/// would need: the weights, their gradients and AdamW's two moments (f32),
/// and the forward's activations kept for the backward pass (about three
/// times a forward's peak).
pub fn training_bytes(unet: &UNet2DConfig, batch: usize, height: usize, width: usize) -> f64 {
    4.0 * 4.0 * unconditional_parameters(unet)
        + 3.0 * unconditional_bytes(unet, batch, height, width)
}

/// What fine-tuning a Stable Diffusion UNet on `batch` images of
/// `resolution²` would add to the loaded pipeline: the trainer's f32 copy of
/// the UNet (`unet_bytes`, its weights file at f32), gradients and AdamW's
/// two moments for the `trained` parameters, the forward's activations kept
/// for the backward pass (about three times a forward's peak, in f32), and
/// the VAE encoding the batch.
pub fn fine_tuning_bytes(
    unet: &UNet2DConditionConfig,
    vae: &AutoencoderKLConfig,
    unet_bytes: f64,
    trained: f64,
    batch: usize,
    resolution: usize,
) -> f64 {
    let scale = vae.downscale_factor().max(1);
    let side = resolution / scale;
    let activations = 3.0 * unet_peak(&condition_levels(unet), batch as f64, side, side, 4.0);
    let encode = vae_peak(vae, batch as f64, resolution, resolution, 4.0);
    unet_bytes + 3.0 * 4.0 * trained + activations.max(encode)
}

/// Bytes this process may still allocate, or `None` where the system does
/// not say (not Linux).
pub fn available_bytes() -> Option<f64> {
    let mut limits = Vec::new();
    if let Some(kb) = read_kb("/proc/meminfo", "MemAvailable:") {
        limits.push(kb * 1024.0);
    }
    let cgroup = |name: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
    };
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
        limits.push((max - current).max(0.0));
    }
    if let Some(limit) = address_space_limit() {
        let mapped = read_kb("/proc/self/status", "VmSize:").unwrap_or(0.0) * 1024.0;
        limits.push((limit - mapped).max(0.0));
    }
    limits.into_iter().reduce(f64::min)
}

/// The soft `ulimit -v` in bytes, when set.
fn address_space_limit() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max address space"))?;
    let soft = line
        .trim_start_matches("Max address space")
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// The kB value of `key` in a `/proc` file of `key value kB` lines.
fn read_kb(path: &str, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `1.5 GiB`, `12 MiB`, `3.2 EiB`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 1024.0 {
        return format!("{bytes:.1e} B");
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Refuses a request (`what`: the sizes asked for, as the user gave them)
/// that needs `needed` bytes when less is available; `host_memory` says
/// whether the models run in host memory (the CPU backends) or on a device
/// the host cannot see.
pub fn check(what: &str, needed: f64, host_memory: bool) -> Result<()> {
    let available = if host_memory { available_bytes() } else { None };
    let limit = available.unwrap_or(ABSURD_BYTES).min(ABSURD_BYTES);
    if needed.is_nan() || needed > limit {
        let have = match available {
            Some(a) => format!("{} available", human_bytes(a)),
            None => format!("more than any machine has ({})", human_bytes(ABSURD_BYTES)),
        };
        return Err(PipelineError::Memory {
            request: what.to_string(),
            needed: human_bytes(needed),
            available: have,
        });
    }
    Ok(())
}

/// Whether backend `name` (Burn's `Backend::name`) keeps tensors in host memory.
pub fn is_host_backend(name: &str) -> bool {
    !(name.contains("cuda") || name.contains("rocm") || name.contains("wgpu"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_words() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(17.0 * 1024.0 * 1024.0 * 1024.0), "17.0 GiB");
        assert!(human_bytes(1e30).ends_with(" B"));
    }

    #[test]
    fn sd15_at_512_fits_a_laptop_and_65536_fits_nothing() {
        let unet: UNet2DConditionConfig =
            serde_json::from_str(r#"{"cross_attention_dim": 768, "sample_size": 64}"#).unwrap();
        let vae: AutoencoderKLConfig = serde_json::from_str(
            r#"{"block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"],
                "layers_per_block": 2}"#,
        )
        .unwrap();
        let gib = (1u64 << 30) as f64;
        let sd = stable_diffusion_bytes(&unet, &vae, 1, 2, 512, 512, 4);
        // diffusers needs about 3 GiB of activations here (f32, batch 2).
        assert!(sd > 1.0 * gib && sd < 8.0 * gib, "{}", human_bytes(sd));
        let huge = stable_diffusion_bytes(&unet, &vae, 1, 2, 65536, 65536, 4);
        assert!(huge > ABSURD_BYTES, "{}", human_bytes(huge));
        assert!(check("65536x65536", huge, false).is_err());
        let absurd =
            stable_diffusion_bytes(&unet, &vae, usize::MAX, usize::MAX, 1 << 40, 1 << 40, 4);
        assert!(absurd.is_finite() || absurd.is_infinite());
        assert!(check("2^40", absurd, true).is_err());
        assert!(check("512x512", sd, false).is_ok());
        // A ControlNet's residuals: SD1.5's skips at 64×64 latents, batch 2,
        // f32 (about 60 MiB), a small part of the total.
        let cn = controlnet_bytes(&unet, &vae, 2, 512, 512, 4);
        let mib = (1u64 << 20) as f64;
        assert!(cn > 30.0 * mib && cn < 0.1 * sd, "{}", human_bytes(cn));
    }

    #[test]
    fn the_address_space_limit_reads_as_a_number_or_nothing() {
        // `unlimited` on most machines: no limit, not an error.
        if let Some(l) = address_space_limit() {
            assert!(l > 0.0);
        }
        if let Some(a) = available_bytes() {
            assert!(a >= 0.0);
        }
    }
}
