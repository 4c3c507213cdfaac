//! The loss curve as a PNG: every step's loss as light dots, a running
//! average (exponential, as TensorBoard smooths) as a line, on a linear
//! y-axis from 0 to the 99th percentile of the losses (a few early spikes
//! would otherwise flatten the curve), with quarter grid lines. No text: the
//! numbers are in `loss.csv` beside it.

use image::{ImageEncoder, Rgb, RgbImage};

const W: u32 = 800;
const H: u32 = 400;
const MARGIN: u32 = 30;

/// PNG bytes of the curve of `losses` (`[step, loss, ...]` rows).
pub fn loss_plot(losses: &[[f64; 4]]) -> Vec<u8> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (x0, x1, y0, y1) = (MARGIN, W - MARGIN, MARGIN, H - MARGIN);
    for k in 0..=4 {
        let y = y0 + (y1 - y0) * k / 4;
        for x in x0..=x1 {
            img.put_pixel(x, y, Rgb([225, 225, 225]));
        }
    }
    for x in x0..=x1 {
        img.put_pixel(x, y1, Rgb([0, 0, 0]));
    }
    for y in y0..=y1 {
        img.put_pixel(x0, y, Rgb([0, 0, 0]));
    }
    let finite: Vec<[f64; 2]> = losses
        .iter()
        .filter(|r| r[1].is_finite())
        .map(|r| [r[0], r[1]])
        .collect();
    if !finite.is_empty() {
        let mut sorted: Vec<f64> = finite.iter().map(|r| r[1]).collect();
        sorted.sort_by(f64::total_cmp);
        let top = sorted[(sorted.len() - 1) * 99 / 100].max(1e-12) * 1.05;
        let (s_min, s_max) = (finite[0][0], finite[finite.len() - 1][0]);
        let px = |step: f64| {
            let t = if s_max > s_min {
                (step - s_min) / (s_max - s_min)
            } else {
                0.5
            };
            x0 as f64 + t * f64::from(x1 - x0)
        };
        let py = |loss: f64| {
            let t = (loss / top).clamp(0.0, 1.0);
            y1 as f64 - t * f64::from(y1 - y0)
        };
        for r in &finite {
            put(&mut img, px(r[0]), py(r[1]), Rgb([170, 190, 230]));
        }
        let mut smooth = finite[0][1];
        let mut prev: Option<(f64, f64)> = None;
        for r in &finite {
            smooth = 0.98 * smooth + 0.02 * r[1];
            let p = (px(r[0]), py(smooth));
            if let Some(q) = prev {
                line(&mut img, q, p, Rgb([20, 60, 200]));
            }
            prev = Some(p);
        }
    }
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(img.as_raw(), W, H, image::ExtendedColorType::Rgb8)
        .expect("encoding an in-memory RGB image cannot fail");
    bytes
}

fn put(img: &mut RgbImage, x: f64, y: f64, c: Rgb<u8>) {
    let (x, y) = (x.round(), y.round());
    if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>) {
    let n = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        put(img, x, y, c);
        put(img, x, y + 1.0, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_a_png_even_for_odd_input() {
        for losses in [
            vec![],
            vec![[1.0, f64::NAN, 0.0, 0.0]],
            vec![[1.0, 0.5, 0.0, 0.0], [2.0, 0.25, 0.0, 0.0]],
        ] {
            let png = loss_plot(&losses);
            let img = image::load_from_memory(&png).unwrap();
            assert_eq!((img.width(), img.height()), (W, H));
        }
    }
}
