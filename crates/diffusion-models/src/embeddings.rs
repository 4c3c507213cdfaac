//! Timestep embeddings (diffusers' `get_timestep_embedding`, `Timesteps`,
//! `TimestepEmbedding`).

use crate::error::Result;
use crate::load::Loader;
use crate::nn::{Activation, Linear};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// Sinusoidal embedding of `timesteps` `[N]` into `[N, dim]`, in f32.
///
/// `exponent = -ln(max_period) * i / (half - downscale_freq_shift)`, then
/// `[sin, cos]` of `scale * t * exp(exponent)` (`[cos, sin]` when
/// `flip_sin_to_cos`), zero-padded when `dim` is odd; as diffusers computes it.
pub fn timestep_embedding<B: Backend>(
    timesteps: Tensor<B, 1>,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    scale: f64,
    max_period: f64,
) -> Tensor<B, 2> {
    let device = timesteps.device();
    let n = timesteps.dims()[0];
    let half = dim / 2;
    // torch: arange(half, f32) * (-ln(max_period)) / (half - shift), all f32.
    let neg_log = -(max_period.ln()) as f32;
    let denom = (half as f64 - downscale_freq_shift) as f32;
    let exponent: Vec<f32> = (0..half).map(|i| i as f32 * neg_log / denom).collect();
    let exponent =
        Tensor::<B, 1>::from_data(TensorData::new(exponent, [half]), (&device, DType::F32));
    let freqs = exponent.exp();
    let t = crate::nn::to_f32(timesteps).reshape([n, 1]);
    let mut emb = t * freqs.reshape([1, half]);
    if scale != 1.0 {
        emb = emb * scale;
    }
    let (sin, cos) = (emb.clone().sin(), emb.cos());
    let mut emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        emb = Tensor::cat(vec![emb, Tensor::zeros([n, 1], (&device, DType::F32))], 1);
    }
    emb
}

/// diffusers' `Timesteps` module (no parameters).
#[derive(Module, Debug, Clone)]
pub struct Timesteps {
    /// Embedding width.
    pub num_channels: usize,
    /// Puts cos before sin.
    pub flip_sin_to_cos: bool,
    /// Frequency shift (1 in the original DDPM, 0 in SD).
    pub downscale_freq_shift: f64,
    /// Multiplier on the arguments.
    pub scale: f64,
}

impl Timesteps {
    /// A `Timesteps` module.
    pub fn new(num_channels: usize, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Self {
        Timesteps {
            num_channels,
            flip_sin_to_cos,
            downscale_freq_shift,
            scale: 1.0,
        }
    }

    /// `[N]` timesteps to `[N, num_channels]` (f32).
    pub fn forward<B: Backend>(&self, timesteps: Tensor<B, 1>) -> Tensor<B, 2> {
        timestep_embedding(
            timesteps,
            self.num_channels,
            self.flip_sin_to_cos,
            self.downscale_freq_shift,
            self.scale,
            10000.0,
        )
    }
}

/// diffusers' `TimestepEmbedding`: `linear_1`, activation, `linear_2`, with the
/// optional `cond_proj` of LCM-distilled UNets (`time_cond_proj_dim`).
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// `in_channels → time_embed_dim`.
    pub linear_1: Linear<B>,
    /// `time_embed_dim → out_dim`.
    pub linear_2: Linear<B>,
    /// `cond_proj_dim → in_channels`, no bias.
    pub cond_proj: Option<Linear<B>>,
    /// Between the linears.
    #[module(skip)]
    pub act: Activation,
    /// Applied after `linear_2` when set.
    #[module(skip)]
    pub post_act: Option<Activation>,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// Loads the module; `out_dim` defaults to `time_embed_dim`.
    pub fn load(
        loader: &Loader<B>,
        in_channels: usize,
        time_embed_dim: usize,
        act: Activation,
        out_dim: Option<usize>,
        post_act: Option<Activation>,
        cond_proj_dim: Option<usize>,
    ) -> Result<Self> {
        let cond_proj = match cond_proj_dim {
            Some(d) => Some(Linear::load(
                &loader.pp("cond_proj"),
                d,
                in_channels,
                false,
            )?),
            None => None,
        };
        Ok(TimestepEmbedding {
            linear_1: Linear::load(&loader.pp("linear_1"), in_channels, time_embed_dim, true)?,
            linear_2: Linear::load(
                &loader.pp("linear_2"),
                time_embed_dim,
                out_dim.unwrap_or(time_embed_dim),
                true,
            )?,
            cond_proj,
            act,
            post_act,
        })
    }

    /// Embeds `sample` `[N, in_channels]` (plus `condition` through `cond_proj`).
    pub fn forward(&self, sample: Tensor<B, 2>, condition: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
        let mut sample = sample;
        if let (Some(proj), Some(c)) = (&self.cond_proj, condition) {
            sample = sample + proj.forward(c);
        }
        let x = self.act.forward(self.linear_1.forward(sample));
        let x = self.linear_2.forward(x);
        match self.post_act {
            Some(a) => a.forward(x),
            None => x,
        }
    }
}
