//! A folder of images as training data, and the batches drawn from it.
//!
//! Preprocessing follows `train_unconditional.py`: resize the shorter side to
//! the resolution (the longer to `⌊resolution · long / short⌋`, as
//! torchvision's `Resize`; bilinear, antialiased when shrinking), crop a
//! square (the center, rounded as torchvision's `CenterCrop`, or at random
//! per draw as its `RandomCrop`), optional random horizontal flip, scale to
//! `[-1, 1]`. Images are decoded and resized once and kept in memory.
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

/// Where the square training crop is taken from an image whose shorter side
/// was resized to the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Crop {
    /// The center (diffusers' `--center_crop`).
    #[default]
    Center,
    /// A window drawn anew each time the image is drawn (torchvision's
    /// `RandomCrop`, diffusers' default).
    Random,
}

/// The resampling filter of the training resize (torchvision's
/// `InterpolationMode`, the scripts' `--image_interpolation_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interpolation {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (`transforms.Resize`'s default), antialiased when shrinking.
    #[default]
    Bilinear,
    /// Bicubic (Catmull-Rom).
    Bicubic,
    /// Lanczos (3 lobes; the LoRA text-to-image scripts' default).
    Lanczos,
}

impl Interpolation {
    /// Every name, as parsed.
    pub const NAMES: &'static [&'static str] = &["nearest", "bilinear", "bicubic", "lanczos"];

    /// The mode named `name` (torchvision's lower-case names).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "nearest" => Some(Interpolation::Nearest),
            "bilinear" => Some(Interpolation::Bilinear),
            "bicubic" => Some(Interpolation::Bicubic),
            "lanczos" => Some(Interpolation::Lanczos),
            _ => None,
        }
    }

    fn filter(self) -> FilterType {
        match self {
            Interpolation::Nearest => FilterType::Nearest,
            Interpolation::Bilinear => FilterType::Triangle,
            Interpolation::Bicubic => FilterType::CatmullRom,
            Interpolation::Lanczos => FilterType::Lanczos3,
        }
    }
}

/// An image resized so that its shorter side is the resolution, channel-major.
#[derive(Debug, Clone)]
struct Resized {
    height: usize,
    width: usize,
    values: Vec<f32>,
}

/// Decoded, preprocessed images.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    /// Side of the square images.
    pub resolution: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Each image center-cropped: `channels × resolution × resolution` values
    /// in `[-1, 1]`.
    pub images: Vec<Vec<f32>>,
    /// The file of each image.
    pub paths: Vec<PathBuf>,
    /// Each image's size before resizing, `(height, width)` (SDXL's
    /// `original_size` micro-conditioning).
    pub original_sizes: Vec<(usize, usize)>,
    /// How batches crop the images (fixed at load: a random crop needs the
    /// uncropped images).
    crop: Crop,
    /// With [`Crop::Random`]: each image resized, uncropped.
    resized: Vec<Resized>,
}

/// Refuses what training `config`'s UNet on `batch_size` images of
/// `resolution × resolution` cannot do: a side its down path cannot halve
/// exactly `levels − 1` times (the up path's skips would not line up), or a
/// run larger than the memory there is (`host_memory`: the backend keeps
/// tensors in host memory; see [`crate::memory`]).
pub fn check_training_size(
    config: &diffusion_models::unet_2d::UNet2DConfig,
    resolution: usize,
    batch_size: usize,
    host_memory: bool,
) -> Result<()> {
    let levels = config.block_out_channels.len().max(1);
    let factor = 1usize << (levels - 1).min(30);
    if resolution == 0 || !resolution.is_multiple_of(factor) {
        return Err(PipelineError::parameter(
            "resolution",
            format!(
                "{resolution} is not a positive multiple of {factor}: the UNet halves it {} times",
                levels - 1
            ),
        ));
    }
    crate::memory::check(
        &format!("resolution {resolution}, batch {batch_size}"),
        crate::memory::training_bytes(config, batch_size, resolution, resolution),
        host_memory,
    )
}

impl ImageDataset {
    /// Every `.png`/`.jpg`/`.jpeg` file directly in `dir` (sorted by name),
    /// resized and center-cropped to `resolution`, as `channels` channels.
    pub fn load(dir: &Path, resolution: usize, channels: usize) -> Result<Self> {
        Self::load_with(dir, resolution, channels, Crop::Center)
    }

    /// [`ImageDataset::load`], with the batches' crops taken as `crop` says.
    pub fn load_with(dir: &Path, resolution: usize, channels: usize, crop: Crop) -> Result<Self> {
        Self::load_resampled(dir, resolution, channels, crop, Interpolation::Bilinear)
    }

    /// [`ImageDataset::load_with`], resized with `interpolation`.
    pub fn load_resampled(
        dir: &Path,
        resolution: usize,
        channels: usize,
        crop: Crop,
        interpolation: Interpolation,
    ) -> Result<Self> {
        // Images are decoded at this size: refuse one no machine could hold
        // before the first allocation.
        crate::memory::check(
            &format!("resolution {resolution}"),
            resolution as f64 * resolution as f64 * channels as f64 * 4.0,
            true,
        )?;
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
        let mut original_sizes = Vec::with_capacity(paths.len());
        let resized = paths
            .iter()
            .map(|p| {
                let image = crate::image::load_image(p)?;
                original_sizes.push((image.height() as usize, image.width() as usize));
                Ok(resize(&image, resolution, channels, interpolation))
            })
            .collect::<Result<Vec<_>>>()?;
        let images = resized
            .iter()
            .map(|r| r.crop(channels, resolution, None))
            .collect();
        Ok(ImageDataset {
            resolution,
            channels,
            images,
            paths,
            original_sizes,
            crop,
            resized: if crop == Crop::Random {
                resized
            } else {
                Vec::new()
            },
        })
    }

    /// A data set of images already preprocessed (`channels × resolution ×
    /// resolution` values in `[-1, 1]` each), center crops only.
    pub fn from_images(resolution: usize, channels: usize, images: Vec<Vec<f32>>) -> Result<Self> {
        let want = channels * resolution * resolution;
        if let Some((i, image)) = images.iter().enumerate().find(|(_, v)| v.len() != want) {
            return Err(PipelineError::parameter(
                "images",
                format!(
                    "image {i} has {} values, {channels}×{resolution}×{resolution} = {want} expected",
                    image.len()
                ),
            ));
        }
        Ok(ImageDataset {
            resolution,
            channels,
            original_sizes: vec![(resolution, resolution); images.len()],
            images,
            paths: Vec::new(),
            crop: Crop::Center,
            resized: Vec::new(),
        })
    }

    /// How batches crop the images.
    pub fn crop(&self) -> Crop {
        self.crop
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
    resize(image, resolution, channels, Interpolation::Bilinear).crop(channels, resolution, None)
}

/// Resize so that the shorter side is `resolution`; `[-1, 1]`, channel-major.
fn resize(
    image: &image::DynamicImage,
    resolution: usize,
    channels: usize,
    interpolation: Interpolation,
) -> Resized {
    let (h, w) = Resized::scaled_size(image.height() as usize, image.width() as usize, resolution);
    let (nw, nh) = (w as u32, h as u32);
    let resized = image.resize_exact(nw, nh, interpolation.filter());
    let pixels: Vec<u8> = if channels == 1 {
        resized.to_luma8().into_raw()
    } else {
        resized.to_rgb8().into_raw()
    };
    let plane = nw as usize * nh as usize;
    let mut values = vec![0f32; channels * plane];
    for (i, px) in pixels.chunks(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            values[c * plane + i] = f32::from(v) / 127.5 - 1.0;
        }
    }
    Resized {
        height: nh as usize,
        width: nw as usize,
        values,
    }
}

impl Resized {
    /// `(height, width)` of an `h × w` image whose shorter side is resized
    /// to `resolution`: the longer side `⌊resolution · long / short⌋`, as
    /// torchvision's `Resize(resolution)`.
    fn scaled_size(h: usize, w: usize, resolution: usize) -> (usize, usize) {
        let short = h.min(w).max(1);
        let side = |s: usize| (resolution * s / short).max(resolution);
        (side(h), side(w))
    }

    /// The corner of the centered `side × side` window, rounded as
    /// torchvision's `CenterCrop` (`round((h - side) / 2)`, half to even).
    fn center(&self, side: usize) -> (usize, usize) {
        let half = |d: usize| {
            let (q, r) = (d / 2, d % 2);
            // d/2 = q + 0.5 exactly when d is odd: round to the even neighbour.
            if r == 1 && q % 2 == 1 { q + 1 } else { q }
        };
        (half(self.height - side), half(self.width - side))
    }

    /// The `side × side` window at `(top, left)`, or the center one.
    fn crop(&self, channels: usize, side: usize, at: Option<(usize, usize)>) -> Vec<f32> {
        let (top, left) = at.unwrap_or_else(|| self.center(side));
        let plane = self.height * self.width;
        let mut out = Vec::with_capacity(channels * side * side);
        for c in 0..channels {
            for y in top..top + side {
                let row = c * plane + y * self.width + left;
                out.extend_from_slice(&self.values[row..row + side]);
            }
        }
        out
    }
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
const CROP: u64 = 5;

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
        let x0 = self.images::<B>(data, step, device)?;
        let (noise, offset_noise, timesteps) =
            self.noise::<B>(step, x0.dims(), num_train_timesteps, device);
        Ok(Batch {
            x0,
            noise,
            offset_noise: Some(offset_noise),
            timesteps,
            condition: Condition::None,
        })
    }

    /// The images of step `step` `[N, C, R, R]` in `[-1, 1]`: cropped and
    /// flipped as the sampler says.
    pub fn images<B: Backend>(
        &self,
        data: &ImageDataset,
        step: u64,
        device: &B::Device,
    ) -> Result<Tensor<B, 4>> {
        Ok(self.images_and_crops(data, step, device)?.0)
    }

    /// [`BatchSampler::images`] with each image's index and crop corner
    /// `(top, left)` in the resized image, mirrored when the image is (as
    /// SDXL's scripts flip before they crop and record `crop_top_left`).
    pub fn images_and_crops<B: Backend>(
        &self,
        data: &ImageDataset,
        step: u64,
        device: &B::Device,
    ) -> Result<(Tensor<B, 4>, Vec<DrawnImage>)> {
        if data.is_empty() || self.batch_size == 0 {
            return Err(PipelineError::parameter(
                "batch_size",
                "needs at least one image and a batch size of at least 1",
            ));
        }
        let (n, c, r) = (self.batch_size, data.channels, data.resolution);
        let mut flips = Stream::new(self.seed, FLIP, step);
        let mut crops = Stream::new(self.seed, CROP, step);
        let mut x0 = Vec::with_capacity(n * c * r * r);
        let mut corners = Vec::with_capacity(n);
        for i in self.indices(data.len(), step) {
            let random;
            let (img, (top, left), width) = match data.resized.get(i) {
                Some(full) if data.crop == Crop::Random => {
                    let top = crops.below(full.height - r + 1);
                    let left = crops.below(full.width - r + 1);
                    random = full.crop(c, r, Some((top, left)));
                    (&random, (top, left), full.width)
                }
                _ => {
                    let (h, w) = data.original_sizes[i];
                    let scaled = Resized::scaled_size(h, w, r);
                    let center = Resized {
                        height: scaled.0,
                        width: scaled.1,
                        values: Vec::new(),
                    }
                    .center(r);
                    (&data.images[i], center, scaled.1)
                }
            };
            if self.random_flip && flips.next() & 1 == 1 {
                for row in img.chunks(r) {
                    x0.extend(row.iter().rev());
                }
                corners.push(DrawnImage {
                    index: i,
                    crop_top_left: (top, width - r - left),
                });
            } else {
                x0.extend_from_slice(img);
                corners.push(DrawnImage {
                    index: i,
                    crop_top_left: (top, left),
                });
            }
        }
        Ok((
            Tensor::from_data(TensorData::new(x0, [n, c, r, r]), device),
            corners,
        ))
    }

    /// The noise of step `step` for samples of `shape` `[N, C, H, W]`:
    /// Gaussian noise (`torch.Generator`'s normal draws), offset noise
    /// `[N, C, 1, 1]` and one timestep per sample in `0..num_train_timesteps`.
    pub fn noise<B: Backend>(
        &self,
        step: u64,
        shape: [usize; 4],
        num_train_timesteps: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Vec<i64>) {
        let [n, c, h, w] = shape;
        let mut ts = Stream::new(self.seed, TIMESTEPS, step);
        let timesteps = (0..n)
            .map(|_| ts.below(num_train_timesteps) as i64)
            .collect();
        let mut rng = TorchGenerator::new(Stream::new(self.seed, NOISE, step).next() >> 1);
        let noise = rng.randn(n * c * h * w);
        let offset = rng.randn(n * c);
        let t4 = |v: Vec<f32>, shape: [usize; 4]| {
            Tensor::<B, 4>::from_data(TensorData::new(v, shape), device)
        };
        (t4(noise, shape), t4(offset, [n, c, 1, 1]), timesteps)
    }

    /// `count` standard normal draws of step `step` from the stream `what`
    /// (latent sampling of a frozen VAE, …), independent of the others.
    pub(crate) fn draws(&self, what: Draw, step: u64, count: usize) -> Vec<f32> {
        let mut rng = TorchGenerator::new(Stream::new(self.seed, what as u64, step).next() >> 1);
        rng.randn(count)
    }

    /// `count` uniform draws in `[0, 1)` of step `step` from the stream `what`.
    pub(crate) fn uniforms(&self, what: Draw, step: u64, count: usize) -> Vec<f64> {
        let mut rng = Stream::new(self.seed, what as u64, step);
        (0..count)
            .map(|_| (rng.next() >> 11) as f64 / (1u64 << 53) as f64)
            .collect()
    }
}

/// Which image a batch holds at one position, and where it was cropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrawnImage {
    /// Its index in the data set.
    pub index: usize,
    /// The crop's corner `(top, left)` in the resized image (mirrored when
    /// the image is flipped).
    pub crop_top_left: (usize, usize),
}

/// The random streams other than the images' and noise's, each independent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Draw {
    /// Sampling latents from the VAE's posterior.
    Latents = 6,
    /// Caption dropout (`--proportion-empty-prompts`).
    Captions = 7,
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

    /// A 6×4 image (values = 10 y + x) resized to side 4 is itself (shorter
    /// side 4): random crops are 4×4 windows at rows 0..=2, drawn per step,
    /// the same for the same step; the center crop is rows 1..5.
    #[test]
    fn random_crops_are_windows_of_the_resized_image() {
        let img = image::GrayImage::from_fn(4, 6, |x, y| image::Luma([(10 * y + x) as u8]));
        let dir = tempfile::tempdir().unwrap();
        img.save(dir.path().join("a.png")).unwrap();
        let center = ImageDataset::load(dir.path(), 4, 1).unwrap();
        let random = ImageDataset::load_with(dir.path(), 4, 1, Crop::Random).unwrap();
        let value = |v: f32| ((v + 1.0) * 127.5).round() as u32;
        assert_eq!(value(center.images[0][0]), 10);
        let s = BatchSampler {
            seed: 3,
            batch_size: 1,
            random_flip: false,
        };
        let top = |data: &ImageDataset, step| {
            let b = s
                .batch::<burn::backend::Flex>(data, step, 10, &Default::default())
                .unwrap();
            let v = b.x0.into_data().to_vec::<f32>().unwrap();
            // Every row of the window is a row of the image, in order.
            let first = value(v[0]);
            for (k, px) in v.iter().enumerate() {
                assert_eq!(value(*px), first + 10 * (k as u32 / 4) + k as u32 % 4);
            }
            first / 10
        };
        assert!((0..8).all(|step| top(&center, step) == 1));
        let tops: Vec<u32> = (0..16).map(|step| top(&random, step)).collect();
        assert!(tops.iter().all(|&t| t <= 2), "{tops:?}");
        assert!((0..=2).all(|t| tops.contains(&t)), "{tops:?}");
        assert_eq!(top(&random, 5), tops[5]);
    }
}
