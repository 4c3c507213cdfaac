//! Images in and out, as diffusers' `VaeImageProcessor` handles them.
//!
//! In: an RGB image becomes `[1, 3, H, W]` in `[-1, 1]` (`x / 255 * 2 - 1`); a
//! mask becomes `[1, 1, H, W]` in `{0, 1}` (PIL's `convert("L")`, `/ 255`, then
//! binarised at 0.5). Out: the VAE's `[N, 3, H, W]` becomes `(x / 2 + 0.5)`
//! clamped to `[0, 1]` (diffusers' `output_type="np"`), and 8-bit pixels are
//! `round(x * 255)` with NumPy's round-half-to-even.
//!
//! Resizing: when an input is not already the target size it is resized with a
//! Lanczos-3 filter, as diffusers does with PIL's LANCZOS; the two filters
//! differ in detail, so for bit-level parity pass images at the target size.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use image::{DynamicImage, imageops::FilterType};

use crate::error::{PipelineError, Result};

/// Generated images as floats in `[0, 1]`, `[N, H, W, 3]` row-major (diffusers'
/// `output_type="np"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// Number of images.
    pub count: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Channels per pixel (3 for RGB, 1 for grayscale models).
    pub channels: usize,
    /// `count × height × width × channels` values in `[0, 1]`.
    pub data: Vec<f32>,
}

impl Images {
    /// diffusers' `postprocess`: `[N, C, H, W]` in about `[-1, 1]` to `[0, 1]` NHWC.
    pub fn from_decoded<B: Backend>(decoded: Tensor<B, 4>) -> Self {
        let [count, channels, height, width] = decoded.dims();
        let x = (decoded.cast(burn::tensor::DType::F32) / 2.0 + 0.5).clamp(0.0, 1.0);
        let data = x
            .permute([0, 2, 3, 1])
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        Images {
            count,
            height,
            width,
            channels,
            data,
        }
    }

    /// All images tiled into one, `columns` per row, separated by `gap`
    /// black pixels (diffusers' `make_image_grid`, with a gap).
    pub fn grid(&self, columns: usize, gap: usize) -> Images {
        let cols = columns.clamp(1, self.count.max(1));
        let rows = self.count.div_ceil(cols).max(1);
        let (h, w, c) = (self.height, self.width, self.channels);
        let (gh, gw) = (rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap);
        let mut data = vec![0f32; gh * gw * c];
        let n = h * w * c;
        for i in 0..self.count {
            let (top, left) = ((i / cols) * (h + gap), (i % cols) * (w + gap));
            for y in 0..h {
                let src = &self.data[i * n + y * w * c..i * n + (y + 1) * w * c];
                let dst = ((top + y) * gw + left) * c;
                data[dst..dst + w * c].copy_from_slice(src);
            }
        }
        Images {
            count: 1,
            height: gh,
            width: gw,
            channels: c,
            data,
        }
    }

    /// Image `i` as 8-bit pixels: `round(x · 255)`, ties to even as `np.round`.
    pub fn to_u8(&self, i: usize) -> Vec<u8> {
        let n = self.height * self.width * self.channels;
        self.data[i * n..(i + 1) * n]
            .iter()
            .map(|&x| (x * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
            .collect()
    }

    /// Image `i` as an `image` crate buffer.
    pub fn to_dynamic(&self, i: usize) -> DynamicImage {
        let (w, h) = (self.width as u32, self.height as u32);
        let px = self.to_u8(i);
        match self.channels {
            1 => DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w, h, px).expect("sized from the image"),
            ),
            _ => DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(w, h, rgb_pixels(&px, self.channels))
                    .expect("sized from the image"),
            ),
        }
    }

    /// Writes image `i` as a PNG with `text` as tEXt chunks (the generation
    /// parameters), atomically: a temporary file in the same folder, renamed
    /// over `path` only when complete, so a failed write leaves nothing behind.
    pub fn save_png(&self, i: usize, path: &Path, text: &[(String, String)]) -> Result<()> {
        write_atomic(path, &self.png_bytes(i, path, text)?)
    }

    /// Image `i` encoded as a PNG with `text` as iTXt chunks; `path` only
    /// names the file in errors (for [`AllOrNothing`] batches).
    pub fn png_bytes(&self, i: usize, path: &Path, text: &[(String, String)]) -> Result<Vec<u8>> {
        let px = self.to_u8(i);
        let (color, data) = match self.channels {
            1 => (png::ColorType::Grayscale, px),
            _ => (png::ColorType::Rgb, rgb_pixels(&px, self.channels)),
        };
        let img_err = |message: String| PipelineError::Image {
            path: path.to_path_buf(),
            message,
        };
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            encoder.set_color(color);
            encoder.set_depth(png::BitDepth::Eight);
            for (k, v) in text {
                // tEXt is Latin-1; iTXt carries UTF-8 prompts.
                encoder
                    .add_itxt_chunk(k.clone(), v.clone())
                    .map_err(|e| img_err(format!("PNG text `{k}`: {e}")))?;
            }
            let mut writer = encoder
                .write_header()
                .map_err(|e| img_err(format!("PNG header: {e}")))?;
            writer
                .write_image_data(&data)
                .map_err(|e| img_err(format!("PNG data: {e}")))?;
            writer.finish().map_err(|e| img_err(format!("PNG: {e}")))?;
        }
        Ok(bytes)
    }
}

/// RGB bytes from pixels of `channels` channels (extra channels dropped).
fn rgb_pixels(px: &[u8], channels: usize) -> Vec<u8> {
    if channels == 3 {
        return px.to_vec();
    }
    px.chunks(channels)
        .flat_map(|p| [p[0], p[1.min(channels - 1)], p[2.min(channels - 1)]])
        .collect()
}

/// Writes `bytes` to `path` through a temporary sibling file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut batch = AllOrNothing::default();
    batch.stage(path, bytes)?;
    batch.commit()
}

/// Files written all or nothing: each is staged in a temporary sibling file
/// (synced), and only when every one is complete are they renamed over their
/// targets; a failure, or dropping the batch uncommitted, removes the
/// temporaries and leaves the targets as they were. Errors name the target,
/// never the temporary.
#[derive(Debug, Default)]
pub struct AllOrNothing {
    /// `(temporary, target)` pairs, in staging order.
    staged: Vec<(PathBuf, PathBuf)>,
}

impl AllOrNothing {
    /// Writes `bytes` to a temporary sibling of `path`.
    pub fn stage(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let tmp = dir.join(format!(
            ".{name}.{}-{}.tmp",
            std::process::id(),
            self.staged.len()
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if let Err(source) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(PipelineError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
        self.staged.push((tmp, path.to_path_buf()));
        Ok(())
    }

    /// Renames every staged file over its target.
    pub fn commit(mut self) -> Result<()> {
        // A rename fails on a folder in the way: seen before any rename, so
        // that no target is replaced unless all will be (a rename within one
        // folder does not otherwise fail halfway).
        if let Some((_, target)) = self.staged.iter().find(|(_, t)| t.is_dir()) {
            return Err(PipelineError::Io {
                path: target.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "a folder is in the way",
                ),
            });
        }
        let staged = std::mem::take(&mut self.staged);
        for (i, (tmp, target)) in staged.iter().enumerate() {
            if let Err(source) = std::fs::rename(tmp, target) {
                for (rest, _) in &staged[i..] {
                    let _ = std::fs::remove_file(rest);
                }
                return Err(PipelineError::Io {
                    path: target.clone(),
                    source,
                });
            }
        }
        Ok(())
    }
}

impl Drop for AllOrNothing {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Reads an image file (PNG or JPEG), naming the file on failure.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path).map_err(|e| PipelineError::Image {
        path: path.to_path_buf(),
        message: format!("cannot open: {e}"),
    })?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| PipelineError::Image {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
    reader.decode().map_err(|e| PipelineError::Image {
        path: path.to_path_buf(),
        message: format!("cannot decode: {e}"),
    })
}

/// diffusers' default size for an input image: its own, rounded down to a
/// multiple of `multiple` (the VAE scale factor).
pub fn default_size(image: &DynamicImage, multiple: usize) -> (usize, usize) {
    let (w, h) = (image.width() as usize, image.height() as usize);
    (h - h % multiple, w - w % multiple)
}

/// PIL's `convert("RGB")` then, if needed, a Lanczos resize to `height × width`.
pub(crate) fn rgb_at(image: &DynamicImage, height: usize, width: usize) -> image::RgbImage {
    let rgb = image.to_rgb8();
    if rgb.width() as usize == width && rgb.height() as usize == height {
        rgb
    } else {
        image::imageops::resize(&rgb, width as u32, height as u32, FilterType::Lanczos3)
    }
}

/// An RGB image as the VAE takes it: `[1, 3, height, width]` in `[-1, 1]`.
pub fn image_tensor<B: Backend>(
    image: &DynamicImage,
    height: usize,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let rgb = rgb_at(image, height, width);
    // HWC bytes -> CHW floats.
    let mut data = vec![0f32; 3 * height * width];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            data[c * height * width + i] = px.0[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(data, [1, 3, height, width]), device)
}

/// PIL's `convert("L")`: `L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`.
pub(crate) fn pil_luma(p: [u8; 3]) -> u8 {
    ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16) as u8
}

/// An inpainting mask: `[1, 1, height, width]`, 1 where to repaint (white),
/// 0 where to keep; grayscale by PIL's rule, binarised at 0.5 as diffusers'
/// mask processor (`do_binarize=True`).
pub fn mask_tensor<B: Backend>(
    mask: &DynamicImage,
    height: usize,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let luma: image::GrayImage = match mask {
        DynamicImage::ImageLuma8(g) => g.clone(),
        other => {
            let rgb = other.to_rgb8();
            image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                image::Luma([pil_luma(rgb.get_pixel(x, y).0)])
            })
        }
    };
    let luma = if luma.width() as usize == width && luma.height() as usize == height {
        luma
    } else {
        image::imageops::resize(&luma, width as u32, height as u32, FilterType::Lanczos3)
    };
    let data: Vec<f32> = luma
        .pixels()
        .map(|p| {
            if p.0[0] as f32 / 255.0 < 0.5 {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [1, 1, height, width]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn pil_luma_matches_pillow() {
        // Values from PIL: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)).
        assert_eq!(pil_luma([255, 255, 255]), 255);
        assert_eq!(pil_luma([255, 0, 0]), 76);
        assert_eq!(pil_luma([0, 255, 0]), 150);
        assert_eq!(pil_luma([0, 0, 255]), 29);
        assert_eq!(pil_luma([128, 64, 200]), 99);
        assert_eq!(pil_luma([10, 200, 33]), 124);
        assert_eq!(pil_luma([77, 77, 78]), 77);
    }

    #[test]
    fn pixels_round_half_to_even() {
        let images = Images {
            count: 1,
            height: 1,
            width: 1,
            channels: 3,
            // 0.5/255 * 255 = 0.5 -> 0; 1.5/255 -> 2; 2.5/255 -> 2.
            data: vec![0.5 / 255.0, 1.5 / 255.0, 2.5 / 255.0],
        };
        assert_eq!(images.to_u8(0), vec![0, 2, 2]);
    }

    #[test]
    fn postprocess_and_save_round_trip() {
        let x = Tensor::<NdArray, 4>::from_data(
            TensorData::new(vec![-1.0f32, 0.0, 1.0, 3.0, -2.0, 0.5], [1, 3, 1, 2]),
            &Default::default(),
        );
        let images = Images::from_decoded(x);
        assert_eq!(images.data, vec![0.0, 1.0, 0.0, 0.5, 1.0, 0.75]);
        let dir = std::env::temp_dir().join(format!("dp-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.png");
        images
            .save_png(0, &path, &[("prompt".into(), "ü 🐱".into())])
            .unwrap();
        let back = load_image(&path).unwrap().to_rgb8();
        assert_eq!(back.as_raw(), &images.to_u8(0));
        // A failed write leaves nothing behind.
        assert!(images.save_png(0, &dir.join("missing/x.png"), &[]).is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn masks_binarise_at_one_half() {
        let g = image::GrayImage::from_raw(4, 1, vec![0, 127, 128, 255]).unwrap();
        let m = mask_tensor::<NdArray>(&DynamicImage::ImageLuma8(g), 1, 4, &Default::default());
        assert_eq!(
            m.into_data().to_vec::<f32>().unwrap(),
            vec![0.0, 0.0, 1.0, 1.0]
        );
    }
}
