//! The down, up and middle blocks of diffusers' UNets (`unet_2d_blocks.py`):
//! `DownBlock2D`, `AttnDownBlock2D`, `CrossAttnDownBlock2D`, `UpBlock2D`,
//! `AttnUpBlock2D`, `CrossAttnUpBlock2D` and `UNetMidBlock2DCrossAttn`.
//!
//! A down block returns its output and every intermediate state (after each
//! resnet/attention and after the downsampler); the matching up block pops
//! them, last first, and concatenates each to its input on the channel axis.
//! The [`DownBlock`] and [`UpBlock`] enums let the UNets hold a list of mixed
//! block types.

use crate::attention::{Attention, AttentionConfig};
use crate::error::{ModelError, Result};
use crate::load::Loader;
use crate::nn::Activation;
use crate::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, TimeEmbeddingNorm, Upsample2D};
use crate::transformer_2d::{Transformer2DConfig, Transformer2DModel};
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The cross-attention settings of the `CrossAttn*` blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossAttnConfig {
    /// Heads of each transformer (diffusers' `num_attention_heads`, which SD
    /// configs spell `attention_head_dim`).
    pub num_attention_heads: usize,
    /// Width of the text states.
    pub cross_attention_dim: usize,
    /// `BasicTransformerBlock`s in the transformer after resnet `j` (one entry per resnet).
    pub transformer_layers: Vec<usize>,
    /// Linear `proj_in`/`proj_out`.
    pub use_linear_projection: bool,
    /// `attn1` is a cross-attention.
    pub only_cross_attention: bool,
    /// Attention scores in f32.
    pub upcast_attention: bool,
}

/// What every block of a UNet is built from (`get_down_block`'s and
/// `get_up_block`'s arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockConfig {
    /// Resnets in the block (`layers_per_block`, +1 for up blocks).
    pub num_layers: usize,
    /// Channels of the skip connections coming from the down path (up blocks:
    /// `in_channels`), or the block's input channels (down blocks).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Channels of the previous up block's output (up blocks only).
    pub prev_output_channel: usize,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// GroupNorm epsilon of the resnets (and of the spatial attentions).
    pub resnet_eps: f64,
    /// Resnet activation.
    pub resnet_act: Activation,
    /// GroupNorm groups.
    pub resnet_groups: usize,
    /// `resnet_time_scale_shift`.
    pub time_embedding_norm: TimeEmbeddingNorm,
    /// Resnet (and spatial attention) output divisor.
    pub output_scale_factor: f64,
    /// Whether the block ends with a down/upsampler.
    pub add_sample: bool,
    /// Padding of the downsampling conv (0: pad right/bottom first).
    pub downsample_padding: usize,
    /// Width of one head of the spatial attentions (`Attn*` blocks).
    pub attention_head_dim: usize,
    /// The transformers' settings (`CrossAttn*` blocks).
    pub cross: Option<CrossAttnConfig>,
}

impl BlockConfig {
    fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetConfig {
        let mut r = ResnetConfig::new(in_channels, out_channels, Some(self.temb_channels));
        r.groups = self.resnet_groups;
        r.eps = self.resnet_eps;
        r.act = self.resnet_act;
        r.time_embedding_norm = self.time_embedding_norm;
        r.output_scale_factor = self.output_scale_factor;
        r
    }

    /// Input channels of resnet `i` of a down block.
    fn down_resnet_in(&self, i: usize) -> usize {
        if i == 0 {
            self.in_channels
        } else {
            self.out_channels
        }
    }

    /// Input channels of resnet `i` of an up block: the running state plus the skip it pops.
    fn up_resnet_in(&self, i: usize) -> usize {
        let skip = if i == self.num_layers - 1 {
            self.in_channels
        } else {
            self.out_channels
        };
        let running = if i == 0 {
            self.prev_output_channel
        } else {
            self.out_channels
        };
        running + skip
    }

    /// The legacy spatial self-attention of `AttnDownBlock2D`/`AttnUpBlock2D`.
    fn spatial_attention(&self) -> AttentionConfig {
        let c = self.out_channels;
        let mut a = AttentionConfig::new(c, c / self.attention_head_dim, self.attention_head_dim);
        a.bias = true;
        a.upcast = true;
        a.eps = self.resnet_eps;
        a.norm_num_groups = Some(self.resnet_groups);
        a.residual_connection = true;
        a.rescale_output_factor = self.output_scale_factor;
        a
    }

    /// The transformer after resnet `j`.
    fn transformer(&self, cross: &CrossAttnConfig, j: usize, groups: usize) -> Transformer2DConfig {
        let c = self.out_channels;
        let mut t = Transformer2DConfig::new(
            c,
            cross.num_attention_heads,
            cross.transformer_layers[j],
            groups,
        );
        t.cross_attention_dim = Some(cross.cross_attention_dim);
        t.use_linear_projection = cross.use_linear_projection;
        t.only_cross_attention = cross.only_cross_attention;
        t.upcast_attention = cross.upcast_attention;
        t
    }

    fn cross(&self) -> &CrossAttnConfig {
        self.cross
            .as_ref()
            .expect("CrossAttn blocks are built with a CrossAttnConfig")
    }

    fn load_resnets<B: Backend>(
        &self,
        loader: &Loader<B>,
        in_channels: impl Fn(usize) -> usize,
    ) -> Result<Vec<ResnetBlock2D<B>>> {
        (0..self.num_layers)
            .map(|i| {
                ResnetBlock2D::load(
                    &loader.pp("resnets").pp(i),
                    &self.resnet(in_channels(i), self.out_channels),
                )
            })
            .collect()
    }

    fn load_downsampler<B: Backend>(&self, loader: &Loader<B>) -> Result<Option<Downsample2D<B>>> {
        if !self.add_sample {
            return Ok(None);
        }
        let c = self.out_channels;
        Downsample2D::load(
            &loader.pp("downsamplers").pp(0),
            c,
            true,
            c,
            self.downsample_padding,
        )
        .map(Some)
    }

    fn load_upsampler<B: Backend>(&self, loader: &Loader<B>) -> Result<Option<Upsample2D<B>>> {
        if !self.add_sample {
            return Ok(None);
        }
        let c = self.out_channels;
        Upsample2D::load(&loader.pp("upsamplers").pp(0), c, true, c).map(Some)
    }
}

/// `DownBlock2D`: resnets, then an optional stride-2 conv.
#[derive(Module, Debug)]
pub struct DownBlock2D<B: Backend> {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `downsamplers.0`.
    pub downsampler: Option<Downsample2D<B>>,
}

impl<B: Backend> DownBlock2D<B> {
    /// Loads the block.
    pub fn load(loader: &Loader<B>, cfg: &BlockConfig) -> Result<Self> {
        Ok(DownBlock2D {
            resnets: cfg.load_resnets(loader, |i| cfg.down_resnet_in(i))?,
            downsampler: cfg.load_downsampler(loader)?,
        })
    }

    /// The output and the states the up path will consume.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        let mut h = x;
        let mut states = Vec::new();
        for resnet in &self.resnets {
            h = resnet.forward(h, Some(temb.clone()));
            states.push(h.clone());
        }
        finish_down(h, states, self.downsampler.as_ref())
    }
}

/// `AttnDownBlock2D`: (resnet, spatial self-attention) pairs, then an optional downsampler.
#[derive(Module, Debug)]
pub struct AttnDownBlock2D<B: Backend> {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One attention after each resnet.
    pub attentions: Vec<Attention<B>>,
    /// `downsamplers.0`.
    pub downsampler: Option<Downsample2D<B>>,
}

impl<B: Backend> AttnDownBlock2D<B> {
    /// Loads the block.
    pub fn load(loader: &Loader<B>, cfg: &BlockConfig) -> Result<Self> {
        let attn = cfg.spatial_attention();
        Ok(AttnDownBlock2D {
            resnets: cfg.load_resnets(loader, |i| cfg.down_resnet_in(i))?,
            attentions: (0..cfg.num_layers)
                .map(|i| Attention::load(&loader.pp("attentions").pp(i), &attn))
                .collect::<Result<_>>()?,
            downsampler: cfg.load_downsampler(loader)?,
        })
    }

    /// The output and the states the up path will consume.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        let mut h = x;
        let mut states = Vec::new();
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            h = attn.forward_spatial(resnet.forward(h, Some(temb.clone())));
            states.push(h.clone());
        }
        finish_down(h, states, self.downsampler.as_ref())
    }
}

/// `CrossAttnDownBlock2D`: (resnet, `Transformer2DModel`) pairs, then an optional downsampler.
#[derive(Module, Debug)]
pub struct CrossAttnDownBlock2D<B: Backend> {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each resnet.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// `downsamplers.0`.
    pub downsampler: Option<Downsample2D<B>>,
}

impl<B: Backend> CrossAttnDownBlock2D<B> {
    /// Loads the block (`cfg.cross` must be set).
    pub fn load(loader: &Loader<B>, cfg: &BlockConfig) -> Result<Self> {
        let cross = cfg.cross();
        Ok(CrossAttnDownBlock2D {
            resnets: cfg.load_resnets(loader, |i| cfg.down_resnet_in(i))?,
            attentions: (0..cfg.num_layers)
                .map(|j| {
                    Transformer2DModel::load(
                        &loader.pp("attentions").pp(j),
                        &cfg.transformer(cross, j, cfg.resnet_groups),
                    )
                })
                .collect::<Result<_>>()?,
            downsampler: cfg.load_downsampler(loader)?,
        })
    }

    /// The output and the states the up path will consume.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        self.forward_with_residual(x, temb, context, None)
            .expect("no residual to mis-shape")
    }

    /// [`Self::forward`] with `residual` (a T2I-Adapter feature) added after
    /// the last resnet/transformer pair, before that state is kept and
    /// downsampled; a residual of another shape than that state is an error.
    pub fn forward_with_residual(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        residual: Option<Tensor<B, 4>>,
    ) -> Result<(Tensor<B, 4>, Vec<Tensor<B, 4>>)> {
        let mut h = x;
        let mut states = Vec::new();
        let last = self.resnets.len().saturating_sub(1);
        let mut residual = residual;
        for (j, (resnet, attn)) in self.resnets.iter().zip(&self.attentions).enumerate() {
            h = resnet.forward(h, Some(temb.clone()));
            h = attn.forward(h, Some(context.clone()));
            if j == last
                && let Some(r) = residual.take()
            {
                h = add_residual(h, r)?;
            }
            states.push(h.clone());
        }
        Ok(finish_down(h, states, self.downsampler.as_ref()))
    }
}

/// `h + r` for a T2I-Adapter feature `r`, which must have `h`'s shape.
fn add_residual<B: Backend>(h: Tensor<B, 4>, r: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
    if r.dims() != h.dims() {
        return Err(ModelError::input(
            "down_intrablock_additional_residuals",
            format!(
                "a feature of shape {:?} for a down-path state of shape {:?}",
                r.dims(),
                h.dims()
            ),
        ));
    }
    Ok(h + r)
}

fn finish_down<B: Backend>(
    h: Tensor<B, 4>,
    mut states: Vec<Tensor<B, 4>>,
    downsampler: Option<&Downsample2D<B>>,
) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
    match downsampler {
        Some(down) => {
            let h = down.forward(h);
            states.push(h.clone());
            (h, states)
        }
        None => (h, states),
    }
}

/// Pops the last skip state and concatenates it after `h` on the channels.
fn concat_skip<B: Backend>(h: Tensor<B, 4>, skips: &mut Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
    let skip = skips
        .pop()
        .expect("the UNet hands each up block one skip state per resnet");
    Tensor::cat(vec![h, skip], 1)
}

/// `UpBlock2D`: resnets on (state ‖ skip), then an optional ×2 upsampler.
#[derive(Module, Debug)]
pub struct UpBlock2D<B: Backend> {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `upsamplers.0`.
    pub upsampler: Option<Upsample2D<B>>,
}

impl<B: Backend> UpBlock2D<B> {
    /// Loads the block.
    pub fn load(loader: &Loader<B>, cfg: &BlockConfig) -> Result<Self> {
        Ok(UpBlock2D {
            resnets: cfg.load_resnets(loader, |i| cfg.up_resnet_in(i))?,
            upsampler: cfg.load_upsampler(loader)?,
        })
    }

    /// Consumes one state of `skips` per resnet (from the end); `upsample_size`
    /// is the size of the next skip when it is not twice the current one.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        skips: &mut Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let mut h = x;
        for resnet in &self.resnets {
            h = resnet.forward(concat_skip(h, skips), Some(temb.clone()));
        }
        match &self.upsampler {
            Some(up) => up.forward(h, upsample_size),
            None => h,
        }
    }
}

/// `AttnUpBlock2D`: (resnet, spatial self-attention) pairs, then an optional upsampler.
#[derive(Module, Debug)]
pub struct AttnUpBlock2D<B: Backend> {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One attention after each resnet.
    pub attentions: Vec<Attention<B>>,
    /// `upsamplers.0`.
    pub upsampler: Option<Upsample2D<B>>,
}

impl<B: Backend> AttnUpBlock2D<B> {
    /// Loads the block.
    pub fn load(loader: &Loader<B>, cfg: &BlockConfig) -> Result<Self> {
        let attn = cfg.spatial_attention();
        Ok(AttnUpBlock2D {
            resnets: cfg.load_resnets(loader, |i| cfg.up_resnet_in(i))?,
            attentions: (0..cfg.num_layers)
                .map(|i| Attention::load(&loader.pp("attentions").pp(i), &attn))
                .collect::<Result<_>>()?,
            upsampler: cfg.load_upsampler(loader)?,
        })
    }

    /// As [`UpBlock2D::forward`].
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        skips: &mut Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let mut h = x;
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            h = resnet.forward(concat_skip(h, skips), Some(temb.clone()));
            h = attn.forward_spatial(h);
        }
        match &self.upsampler {
            Some(up) => up.forward(h, upsample_size),
            None => h,
        }
    }
}

/// `CrossAttnUpBlock2D`: (resnet, `Transformer2DModel`) pairs, then an optional upsampler.
#[derive(Module, Debug)]
pub struct CrossAttnUpBlock2D<B: Backend> {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each resnet.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// `upsamplers.0`.
    pub upsampler: Option<Upsample2D<B>>,
}

impl<B: Backend> CrossAttnUpBlock2D<B> {
    /// Loads the block (`cfg.cross` must be set).
    pub fn load(loader: &Loader<B>, cfg: &BlockConfig) -> Result<Self> {
        let cross = cfg.cross();
        Ok(CrossAttnUpBlock2D {
            resnets: cfg.load_resnets(loader, |i| cfg.up_resnet_in(i))?,
            attentions: (0..cfg.num_layers)
                .map(|j| {
                    Transformer2DModel::load(
                        &loader.pp("attentions").pp(j),
                        &cfg.transformer(cross, j, cfg.resnet_groups),
                    )
                })
                .collect::<Result<_>>()?,
            upsampler: cfg.load_upsampler(loader)?,
        })
    }

    /// As [`UpBlock2D::forward`], the transformers attending to `context`.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        skips: &mut Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let mut h = x;
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            h = resnet.forward(concat_skip(h, skips), Some(temb.clone()));
            h = attn.forward(h, Some(context.clone()));
        }
        match &self.upsampler {
            Some(up) => up.forward(h, upsample_size),
            None => h,
        }
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn<B: Backend> {
    /// `num_layers + 1` resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `num_layers` transformers.
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> UNetMidBlock2DCrossAttn<B> {
    /// Loads the block; `cfg.num_layers` counts the transformers, channels
    /// are `cfg.in_channels` throughout.
    pub fn load(loader: &Loader<B>, cfg: &BlockConfig) -> Result<Self> {
        let cross = cfg.cross();
        let c = cfg.in_channels;
        let resnet = cfg.resnet(c, c);
        let mut resnets = vec![ResnetBlock2D::load(&loader.pp("resnets").pp(0), &resnet)?];
        let mut attentions = Vec::new();
        for j in 0..cfg.num_layers {
            let mut t = cfg.transformer(cross, j, cfg.resnet_groups);
            t.only_cross_attention = false;
            attentions.push(Transformer2DModel::load(
                &loader.pp("attentions").pp(j),
                &t,
            )?);
            resnets.push(ResnetBlock2D::load(
                &loader.pp("resnets").pp(j + 1),
                &resnet,
            )?);
        }
        Ok(UNetMidBlock2DCrossAttn {
            resnets,
            attentions,
        })
    }

    /// `x` `[N, C, H, W]`, `temb` `[N, T]`, `context` `[N, S, D]`.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let mut h = self.resnets[0].forward(x, Some(temb.clone()));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = attn.forward(h, Some(context.clone()));
            h = resnet.forward(h, Some(temb.clone()));
        }
        h
    }
}

/// Any down block of the UNets here.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum DownBlock<B: Backend> {
    /// `DownBlock2D`.
    Plain(DownBlock2D<B>),
    /// `AttnDownBlock2D`.
    Attn(AttnDownBlock2D<B>),
    /// `CrossAttnDownBlock2D`.
    CrossAttn(CrossAttnDownBlock2D<B>),
}

impl<B: Backend> DownBlock<B> {
    /// Runs the block (`context` is used by cross-attention blocks only).
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: Option<&Tensor<B, 3>>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        self.forward_with_residual(x, temb, context, None)
            .expect("no residual to mis-shape")
    }

    /// Runs the block with a T2I-Adapter feature added where diffusers adds
    /// it: inside a cross-attention block after its last transformer, after
    /// any other block (to its output, which is also its last kept state).
    pub fn forward_with_residual(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: Option<&Tensor<B, 3>>,
        residual: Option<Tensor<B, 4>>,
    ) -> Result<(Tensor<B, 4>, Vec<Tensor<B, 4>>)> {
        let (h, mut states) = match self {
            DownBlock::Plain(b) => b.forward(x, temb),
            DownBlock::Attn(b) => b.forward(x, temb),
            DownBlock::CrossAttn(b) => {
                return b.forward_with_residual(
                    x,
                    temb,
                    context.expect("the UNet checks that cross-attention blocks get text states"),
                    residual,
                );
            }
        };
        match residual {
            // diffusers adds in place: the output and the last state are one tensor.
            Some(r) => {
                let h = add_residual(h, r)?;
                if let Some(last) = states.last_mut() {
                    *last = h.clone();
                }
                Ok((h, states))
            }
            None => Ok((h, states)),
        }
    }
}

/// Any up block of the UNets here.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum UpBlock<B: Backend> {
    /// `UpBlock2D`.
    Plain(UpBlock2D<B>),
    /// `AttnUpBlock2D`.
    Attn(AttnUpBlock2D<B>),
    /// `CrossAttnUpBlock2D`.
    CrossAttn(CrossAttnUpBlock2D<B>),
}

impl<B: Backend> UpBlock<B> {
    /// Number of skip states the block consumes.
    pub fn num_resnets(&self) -> usize {
        match self {
            UpBlock::Plain(b) => b.resnets.len(),
            UpBlock::Attn(b) => b.resnets.len(),
            UpBlock::CrossAttn(b) => b.resnets.len(),
        }
    }

    /// Runs the block (`context` is used by cross-attention blocks only).
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        skips: &mut Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        context: Option<&Tensor<B, 3>>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        match self {
            UpBlock::Plain(b) => b.forward(x, skips, temb, upsample_size),
            UpBlock::Attn(b) => b.forward(x, skips, temb, upsample_size),
            UpBlock::CrossAttn(b) => b.forward(
                x,
                skips,
                temb,
                context.expect("the UNet checks that cross-attention blocks get text states"),
                upsample_size,
            ),
        }
    }
}
