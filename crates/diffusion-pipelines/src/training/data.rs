//! A folder of images as training data, and the batches drawn from it.
//!
//! Preprocessing follows `train_unconditional.py`: resize the shorter side to
//! the resolution (bilinear, antialiased when shrinking), center-crop to a
//! square, optional random horizontal flip, scale to `[-1, 1]`. Images are
//! decoded once and kept in memory.
//!
//! Every random choice of step `s` (which images, flips, timesteps, noise) is
//! drawn from generators seeded by `(seed, s)` alone, so a batch does not
//! depend on the steps before it: a resumed run draws exactly the batches the
//! interrupted one would have drawn, with nothing to save but the seed.

use super::trainer::{Batch, Condition};
use crate::error::{PipelineError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use diffusion_schedulers::TorchGenerator;
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// Decoded, preprocessed images.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    /// Side of the square images.
    pub resolution: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Each image as `channels × resolution × resolution` values in `[-1, 1]`.
    pub images: Vec<Vec<f32>>,
    /// The file of each image.
    pub paths: Vec<PathBuf>,
}

impl ImageDataset {
    /// Every `.png`/`.jpg`/`.jpeg` file directly in `dir` (sorted by name),
    /// resized and center-cropped to `resolution`, as `channels` channels.
    pub fn load(dir: &Path, resolution: usize, channels: usize) -> Result<Self> {
        if resolution == 0 {
            return Err(PipelineError::parameter("resolution", "must be at least 1"));
        }
        if channels != 1 && channels != 3 {
            return Err(PipelineError::parameter(
                "channels",
                format!("{channels}: images have 1 (grayscale) or 3 (RGB) channels"),
            ));
        }
        let entries = std::fs::read_dir(dir).map_err(|source| PipelineError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                })
            })
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(PipelineError::Image {
                path: dir.to_path_buf(),
                message: "no .png/.jpg/.jpeg images in this folder".into(),
            });
        }
        let images = paths
            .iter()
            .map(|p| {
                Ok(preprocess(
                    &crate::image::load_image(p)?,
                    resolution,
                    channels,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageDataset {
            resolution,
            channels,
            images,
            paths,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Resize (shorter side), center crop, `[-1, 1]`, channel-major.
pub fn preprocess(image: &image::DynamicImage, resolution: usize, channels: usize) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let scale = resolution as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(resolution as u32),
        ((h as f64 * scale).round() as u32).max(resolution as u32),
    );
    let resized = image.resize_exact(nw, nh, FilterType::Triangle);
    let left = (nw as usize - resolution) / 2;
    let top = (nh as usize - resolution) / 2;
    let cropped = resized.crop_imm(
        left as u32,
        top as u32,
        resolution as u32,
        resolution as u32,
    );
    let pixels: Vec<u8> = if channels == 1 {
        cropped.to_luma8().into_raw()
    } else {
        cropped.to_rgb8().into_raw()
    };
    let plane = resolution * resolution;
    let mut out = vec![0f32; channels * plane];
    for (i, px) in pixels.chunks(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = f32::from(v) / 127.5 - 1.0;
        }
    }
    out
}

/// splitmix64: a well-mixed 64-bit value from `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A small counter-based generator keyed by `(seed, stream, index)`.
struct Stream(u64);

impl Stream {
    fn new(seed: u64, stream: u64, index: u64) -> Self {
        Stream(mix(
            mix(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407)) ^ index
        ))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in `0..n` (Lemire's multiply-shift; bias below 2^-32 for small n).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// Draws the batch of each optimizer step from a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSampler {
    /// The run's seed.
    pub seed: u64,
    /// Images per batch.
    pub batch_size: usize,
    /// Mirror each image with probability 1/2.
    pub random_flip: bool,
}

const EPOCH: u64 = 1;
const FLIP: u64 = 2;
const TIMESTEPS: u64 = 3;
const NOISE: u64 = 4;

impl BatchSampler {
    /// The images of step `step` (0-based): epochs are shuffled permutations
    /// of the data set, read in order across epoch boundaries.
    pub fn indices(&self, len: usize, step: u64) -> Vec<usize> {
        let first = step * self.batch_size as u64;
        let mut out = Vec::with_capacity(self.batch_size);
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for k in 0..self.batch_size as u64 {
            let i = first + k;
            let (epoch, pos) = (i / len as u64, (i % len as u64) as usize);
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                cached = Some((epoch, self.permutation(len, epoch)));
            }
            out.push(cached.as_ref().expect("set above").1[pos]);
        }
        out
    }

    fn permutation(&self, len: usize, epoch: u64) -> Vec<usize> {
        let mut p: Vec<usize> = (0..len).collect();
        let mut rng = Stream::new(self.seed, EPOCH, epoch);
        for i in (1..len).rev() {
            p.swap(i, rng.below(i + 1));
        }
        p
    }

    /// The full batch of step `step`: images, noise (`torch.Generator`'s
    /// normal draws), offset noise `[N, C, 1, 1]`, timesteps in
    /// `0..num_train_timesteps`.
    pub fn batch<B: Backend>(
        &self,
        data: &ImageDataset,
        step: u64,
        num_train_timesteps: usize,
        device: &B::Device,
    ) -> Result<Batch<B>> {
        if data.is_empty() || self.batch_size == 0 {
            return Err(PipelineError::parameter(
                "batch_size",
                "needs at least one image and a batch size of at least 1",
            ));
        }
        let (n, c, r) = (self.batch_size, data.channels, data.resolution);
        let mut flips = Stream::new(self.seed, FLIP, step);
        let mut x0 = Vec::with_capacity(n * c * r * r);
        for i in self.indices(data.len(), step) {
            let img = &data.images[i];
            if self.random_flip && flips.next() & 1 == 1 {
                for row in img.chunks(r) {
                    x0.extend(row.iter().rev());
                }
            } else {
                x0.extend_from_slice(img);
            }
        }
        let mut ts = Stream::new(self.seed, TIMESTEPS, step);
        let timesteps = (0..n)
            .map(|_| ts.below(num_train_timesteps) as i64)
            .collect();
        let mut rng = TorchGenerator::new(Stream::new(self.seed, NOISE, step).next() >> 1);
        let noise = rng.randn(n * c * r * r);
        let offset = rng.randn(n * c);
        let t4 = |v: Vec<f32>, shape: [usize; 4]| {
            Tensor::<B, 4>::from_data(TensorData::new(v, shape), device)
        };
        Ok(Batch {
            x0: t4(x0, [n, c, r, r]),
            noise: t4(noise, [n, c, r, r]),
            offset_noise: Some(t4(offset, [n, c, 1, 1])),
            timesteps,
            condition: Condition::None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_permutations_and_batches_depend_only_on_the_step() {
        let s = BatchSampler {
            seed: 7,
            batch_size: 3,
            random_flip: false,
        };
        let mut seen: Vec<usize> = (0..4).flat_map(|step| s.indices(12, step)).collect();
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        assert_eq!(s.indices(12, 5), s.indices(12, 5));
        assert_ne!(s.indices(12, 4), s.indices(12, 0));
        let other = BatchSampler { seed: 8, ..s };
        assert_ne!(other.indices(12, 0), s.indices(12, 0));
    }
}
