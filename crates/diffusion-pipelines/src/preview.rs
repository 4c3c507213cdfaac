//! Cheap previews of the latents during denoising, with a Tiny AutoEncoder
//! (TAESD, `madebyollin/taesd` for SD 1.x/2.x, `taesdxl` for SDXL): a per-step
//! callback hands the latents to [`preview`] and gets images in milliseconds
//! instead of a full VAE decode.

use burn::tensor::{DType, Tensor, backend::Backend};
use diffusion_models::autoencoder_tiny::AutoencoderTiny;

use crate::error::Result;
use crate::image::Images;

/// Decodes the UNet's latents `[N, 4, h, w]` with a TAESD as diffusers does
/// when a pipeline's `vae` is an `AutoencoderTiny` (`latents / scaling_factor`,
/// which is 1 for TAESD), to images in `[0, 1]`.
pub fn preview<B: Backend>(taesd: &AutoencoderTiny<B>, latents: &Tensor<B, 4>) -> Result<Images> {
    let z = latents
        .clone()
        .cast(DType::F32)
        .div_scalar(taesd.config.scaling_factor);
    Ok(Images::from_decoded(taesd.decode(z)?))
}
