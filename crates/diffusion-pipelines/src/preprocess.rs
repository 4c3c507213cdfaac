//! Control-image preprocessing: the Canny edge map the canny ControlNets and
//! T2I-Adapters were trained on, computed as OpenCV's `cv2.Canny(image, low,
//! high)` (what diffusers' examples and the ControlNet annotators call) so
//! that an edge map made here is the one a Python user gets.
//!
//! `cv2.Canny` with its defaults: 3×3 Sobel derivatives (borders
//! replicated), the L1 magnitude `|dx| + |dy|` (on a colour image, per pixel
//! the channel with the largest magnitude), non-maximum suppression along the
//! gradient direction quantised to 0°, 45°, 90° or 135° with OpenCV's
//! fixed-point tangents, and hysteresis: pixels above `high` are edges,
//! pixels above `low` join them when 8-connected. There is no blur inside
//! `cv2.Canny` (the annotators call it on the image as it is); blur first if
//! the image is noisy. Other detectors (depth, pose, line art) are networks
//! (MiDaS, OpenPose, …) and are not here: compute their maps elsewhere and
//! pass them as control images.

use image::{DynamicImage, GrayImage, Luma};

/// OpenCV's `tan(22.5°)` in its fixed point (`CANNY_SHIFT` = 15).
const TG22: i64 = 13573;
const SHIFT: u32 = 15;

/// The Canny edge map of `image` (255 on edges, 0 elsewhere), as
/// `cv2.Canny(np.array(image), low, high)`: an RGB (or RGBA, as RGB) image is
/// treated as three channels, a gray one as one. Thresholds are on the L1
/// gradient magnitude (OpenCV floors them); their order does not matter.
pub fn canny(image: &DynamicImage, low: f64, high: f64) -> GrayImage {
    let (low, high) = if low > high { (high, low) } else { (low, high) };
    let (low, high) = (low.floor() as i64, high.floor() as i64);
    let (w, h) = (image.width() as usize, image.height() as usize);
    let channels: Vec<Vec<i32>> = match image {
        DynamicImage::ImageLuma8(g) => vec![g.as_raw().iter().map(|&v| i32::from(v)).collect()],
        other => {
            let rgb = other.to_rgb8();
            (0..3)
                .map(|c| rgb.pixels().map(|p| i32::from(p.0[c])).collect())
                .collect()
        }
    };
    // Gradients: per pixel, the channel with the largest L1 magnitude.
    let mut dx = vec![0i32; w * h];
    let mut dy = vec![0i32; w * h];
    let mut mag = vec![0i64; w * h];
    for plane in &channels {
        let at = |x: isize, y: isize| -> i32 {
            let x = x.clamp(0, w as isize - 1) as usize;
            let y = y.clamp(0, h as isize - 1) as usize;
            plane[y * w + x]
        };
        for y in 0..h as isize {
            for x in 0..w as isize {
                let gx = (at(x + 1, y - 1) + 2 * at(x + 1, y) + at(x + 1, y + 1))
                    - (at(x - 1, y - 1) + 2 * at(x - 1, y) + at(x - 1, y + 1));
                let gy = (at(x - 1, y + 1) + 2 * at(x, y + 1) + at(x + 1, y + 1))
                    - (at(x - 1, y - 1) + 2 * at(x, y - 1) + at(x + 1, y - 1));
                let m = i64::from(gx.abs() + gy.abs());
                let i = y as usize * w + x as usize;
                if m > mag[i] {
                    mag[i] = m;
                    dx[i] = gx;
                    dy[i] = gy;
                }
            }
        }
    }
    // Magnitudes outside the image are 0 (OpenCV's zero border rows/columns).
    let m_at = |x: isize, y: isize| -> i64 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0
        } else {
            mag[y as usize * w + x as usize]
        }
    };
    // Non-maximum suppression: 2 = edge, 1 = candidate, 0 = not an edge.
    let mut map = vec![0u8; w * h];
    let mut stack = Vec::new();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            let m = mag[i];
            if m <= low {
                continue;
            }
            let (gx, gy) = (i64::from(dx[i]), i64::from(dy[i]));
            let xs = gx.abs();
            let ys = gy.abs() << SHIFT;
            let tg22x = xs * TG22;
            let maximum = if ys < tg22x {
                m > m_at(x - 1, y) && m >= m_at(x + 1, y)
            } else {
                let tg67x = tg22x + (xs << (SHIFT + 1));
                if ys > tg67x {
                    m > m_at(x, y - 1) && m >= m_at(x, y + 1)
                } else {
                    let s = if (gx ^ gy) < 0 { -1 } else { 1 };
                    m > m_at(x - s, y - 1) && m > m_at(x + s, y + 1)
                }
            };
            if !maximum {
                continue;
            }
            if m > high {
                map[i] = 2;
                stack.push(i);
            } else {
                map[i] = 1;
            }
        }
    }
    // Hysteresis: candidates 8-connected to an edge become edges.
    while let Some(i) = stack.pop() {
        let (x, y) = ((i % w) as isize, (i / w) as isize);
        for (ox, oy) in [
            (-1, -1),
            (0, -1),
            (1, -1),
            (-1, 0),
            (1, 0),
            (-1, 1),
            (0, 1),
            (1, 1),
        ] {
            let (nx, ny) = (x + ox, y + oy);
            if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                continue;
            }
            let j = ny as usize * w + nx as usize;
            if map[j] == 1 {
                map[j] = 2;
                stack.push(j);
            }
        }
    }
    GrayImage::from_fn(w as u32, h as u32, |x, y| {
        Luma([if map[y as usize * w + x as usize] == 2 {
            255
        } else {
            0
        }])
    })
}

/// A `canny[:LOW,HIGH]` preprocessing spec (`--control-preprocess`), with
/// the annotators' thresholds 100 and 200 by default.
pub fn parse_canny(spec: &str) -> Result<(f64, f64), String> {
    let rest = spec
        .strip_prefix("canny")
        .ok_or_else(|| format!("{spec}: unknown preprocessing (only `canny[:LOW,HIGH]`)"))?;
    if rest.is_empty() {
        return Ok((100.0, 200.0));
    }
    let thresholds = rest
        .strip_prefix(':')
        .ok_or_else(|| format!("{spec}: expected canny:LOW,HIGH"))?;
    let (a, b) = thresholds
        .split_once(',')
        .ok_or_else(|| format!("{spec}: expected canny:LOW,HIGH"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| format!("{spec}: `{v}` is not a threshold (a number ≥ 0)"))
    };
    Ok((num(a)?, num(b)?))
}
