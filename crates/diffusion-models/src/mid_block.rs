//! diffusers' `UNetMidBlock2D`: resnet, then (attention, resnet) × layers.
//! The middle of UNet2DModel and of the VAE's encoder and decoder.

use crate::attention::{Attention, AttentionConfig};
use crate::error::Result;
use crate::load::Loader;
use crate::resnet::{ResnetBlock2D, ResnetConfig, TimeEmbeddingNorm};
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Settings of a `UNetMidBlock2D`.
#[derive(Debug, Clone, PartialEq)]
pub struct MidBlockConfig {
    /// The resnets' settings (in = out = the block's channels).
    pub resnet: ResnetConfig,
    /// Number of (attention, resnet) pairs after the first resnet.
    pub num_layers: usize,
    /// Whether the attentions exist (`add_attention`).
    pub add_attention: bool,
    /// Width of one head (`None`: one head over all channels).
    pub attention_head_dim: Option<usize>,
}

/// diffusers' `UNetMidBlock2D`.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D<B: Backend> {
    /// `num_layers + 1` resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `num_layers` attentions (empty without `add_attention`).
    pub attentions: Vec<Attention<B>>,
}

impl<B: Backend> UNetMidBlock2D<B> {
    /// Loads the block (`resnets.i`, `attentions.i`).
    pub fn load(loader: &Loader<B>, cfg: &MidBlockConfig) -> Result<Self> {
        let channels = cfg.resnet.in_channels;
        let mut resnets = vec![ResnetBlock2D::load(
            &loader.pp("resnets").pp(0),
            &cfg.resnet,
        )?];
        let mut attentions = Vec::new();
        let head_dim = cfg.attention_head_dim.unwrap_or(channels);
        for i in 0..cfg.num_layers {
            if cfg.add_attention {
                let mut a = AttentionConfig::new(channels, channels / head_dim, head_dim);
                a.bias = true;
                a.upcast = true;
                a.eps = cfg.resnet.eps;
                a.residual_connection = true;
                a.rescale_output_factor = cfg.resnet.output_scale_factor;
                // diffusers: `attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None`.
                a.norm_num_groups = match cfg.resnet.time_embedding_norm {
                    TimeEmbeddingNorm::Default => Some(cfg.resnet.groups),
                    TimeEmbeddingNorm::ScaleShift => None,
                };
                attentions.push(Attention::load(&loader.pp("attentions").pp(i), &a)?);
            }
            resnets.push(ResnetBlock2D::load(
                &loader.pp("resnets").pp(i + 1),
                &cfg.resnet,
            )?);
        }
        Ok(UNetMidBlock2D {
            resnets,
            attentions,
        })
    }

    /// `x` `[N, C, H, W]`, `temb` `[N, T]` (the VAE passes none).
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut h = self.resnets[0].forward(x, temb.clone());
        for (i, resnet) in self.resnets.iter().enumerate().skip(1) {
            if let Some(attn) = self.attentions.get(i - 1) {
                h = attn.forward_spatial(h);
            }
            h = resnet.forward(h, temb.clone());
        }
        h
    }
}
