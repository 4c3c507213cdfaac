//! Where a pipeline's random numbers come from.
//!
//! diffusers draws every random tensor through `randn_tensor(shape, generator)`:
//! the initial latents, the VAE posterior sample of img2img/inpaint, the noise
//! added to the image latents, and the noise of stochastic schedulers. The
//! pipelines here ask a [`Rng`] for exactly the same draws in exactly the same
//! order, so that:
//!
//! - [`Generator::Seed`] / [`Generator::Seeds`] reproduce diffusers' images for
//!   `generator=torch.Generator("cpu").manual_seed(seed)` (one generator for the
//!   batch) or a list of such generators (one per image): the draws come from
//!   [`diffusion_schedulers::torch_rng`], a bit-exact port of PyTorch's CPU
//!   generator (Mersenne Twister + Box–Muller, as `torch.randn`). Seeds are
//!   therefore deterministic run to run and machine to machine, and shared
//!   with Python.
//! - [`Generator::Replay`] feeds recorded draws back (e.g. noise captured from
//!   diffusers, or any caller-made noise), in order.

use std::collections::VecDeque;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use diffusion_schedulers::torch_rng::TorchNoise;
use diffusion_schedulers::{NoiseSource, SchedulerError};

use crate::error::{PipelineError, Result};
use crate::latents::Latents;

/// The source of randomness of one pipeline call.
#[derive(Debug, Clone, PartialEq)]
pub enum Generator {
    /// One torch-compatible CPU generator seeded with this value, drawing for
    /// the whole batch (diffusers' `generator=torch.Generator().manual_seed(s)`).
    Seed(u64),
    /// One generator per image (diffusers' list of generators): image `i` of
    /// every draw comes from generator `i`, so an image does not depend on the
    /// batch it is made in. The list must have one seed per image.
    Seeds(Vec<u64>),
    /// Recorded standard-normal draws, consumed in order. A draw for a batch
    /// may be served by several recorded pieces whose sizes add up to it (as
    /// diffusers records one piece per image with a generator list).
    Replay(Vec<Vec<f32>>),
}

impl Generator {
    /// A seed from the clock, for callers that give none (diffusers then uses
    /// torch's global generator). Report it so that the image can be remade.
    pub fn random_seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // splitmix64 finaliser: nearby clock values give unrelated seeds.
        let mut z = nanos.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) >> 1
    }
}

/// The running state of a [`Generator`] during one call.
#[derive(Debug)]
pub struct Rng {
    inner: Inner,
    draws: usize,
}

#[derive(Debug)]
enum Inner {
    Torch(TorchNoise),
    Replay(VecDeque<Vec<f32>>),
}

impl Rng {
    /// Starts `generator` for a call that makes `batch` images.
    pub fn new(generator: &Generator, batch: usize) -> Result<Self> {
        let inner = match generator {
            Generator::Seed(seed) => Inner::Torch(TorchNoise::new(*seed)),
            Generator::Seeds(seeds) => {
                if seeds.len() != batch {
                    return Err(PipelineError::parameter(
                        "generator",
                        format!(
                            "{} seeds for {batch} images (one seed per image, \
                             num_images_per_prompt included)",
                            seeds.len()
                        ),
                    ));
                }
                Inner::Torch(TorchNoise::per_item(seeds))
            }
            Generator::Replay(draws) => Inner::Replay(draws.iter().cloned().collect()),
        };
        Ok(Rng { inner, draws: 0 })
    }

    /// How many draws were made so far.
    pub fn draws(&self) -> usize {
        self.draws
    }

    /// A standard-normal draw of `shape` (batch first), as `randn_tensor`.
    pub fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        self.draws += 1;
        let numel: usize = shape.iter().product();
        match &mut self.inner {
            Inner::Torch(noise) => Ok(noise.draw(shape)?),
            Inner::Replay(queue) => {
                let mut out = Vec::with_capacity(numel);
                while out.len() < numel {
                    let piece = queue.pop_front().ok_or_else(|| {
                        PipelineError::parameter(
                            "generator",
                            format!(
                                "replayed noise ran out at draw #{} (shape {shape:?})",
                                self.draws
                            ),
                        )
                    })?;
                    out.extend_from_slice(&piece);
                }
                if out.len() != numel {
                    return Err(PipelineError::parameter(
                        "generator",
                        format!(
                            "replayed noise for draw #{} has {} values, shape {shape:?} needs {numel}",
                            self.draws,
                            out.len()
                        ),
                    ));
                }
                Ok(out)
            }
        }
    }

    /// [`Rng::randn`] as a tensor on `device`.
    pub fn randn_tensor<B: Backend>(
        &mut self,
        shape: [usize; 4],
        device: &B::Device,
    ) -> Result<Tensor<B, 4>> {
        let values = self.randn(&shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// Seeded noise for hand-written denoising loops over Burn latents: the
/// initial noise ([`SeededNoise::randn`]) and the noise stochastic schedulers
/// ask for in `step` (it is their [`NoiseSource`]), from the same
/// torch-compatible stream a pipeline uses.
#[derive(Debug)]
pub struct SeededNoise<B: Backend> {
    rng: Rng,
    device: B::Device,
}

impl<B: Backend> SeededNoise<B> {
    /// Noise from `generator` for a batch of `batch` items on `device`.
    pub fn new(generator: &Generator, batch: usize, device: &B::Device) -> Result<Self> {
        Ok(SeededNoise {
            rng: Rng::new(generator, batch)?,
            device: device.clone(),
        })
    }

    /// A standard-normal tensor of `shape` (diffusers' `randn_tensor`).
    pub fn randn(&mut self, shape: [usize; 4]) -> Result<Tensor<B, 4>> {
        self.rng.randn_tensor::<B>(shape, &self.device)
    }
}

impl<B: Backend> NoiseSource<Latents<B>> for SeededNoise<B> {
    fn noise(&mut self, like: &Latents<B>) -> std::result::Result<Latents<B>, SchedulerError> {
        StepNoise::<B> {
            rng: &mut self.rng,
            device: self.device.clone(),
        }
        .noise(like)
    }
}

/// Lends a [`Rng`] to a scheduler's `step` (stochastic schedulers ask for noise
/// shaped like the latents).
pub(crate) struct StepNoise<'a, B: Backend> {
    pub rng: &'a mut Rng,
    pub device: B::Device,
}

impl<B: Backend> NoiseSource<Latents<B>> for StepNoise<'_, B> {
    fn noise(&mut self, like: &Latents<B>) -> std::result::Result<Latents<B>, SchedulerError> {
        let shape = like.0.dims();
        let values = self.rng.randn(&shape).map_err(|e| match e {
            PipelineError::Scheduler(e) => e,
            _ => SchedulerError::NoiseExhausted {
                requested: self.rng.draws(),
            },
        })?;
        let t = Tensor::<B, 4>::from_data(TensorData::new(values, shape), &self.device);
        Ok(Latents(t.cast(like.0.dtype())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_serves_a_batch_from_per_image_pieces() {
        let mut rng = Rng::new(
            &Generator::Replay(vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0]]),
            2,
        )
        .unwrap();
        assert_eq!(rng.randn(&[2, 1, 1, 2]).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert!(rng.randn(&[1, 1, 1, 2]).is_err());
    }

    #[test]
    fn seed_lists_must_match_the_batch() {
        let err = Rng::new(&Generator::Seeds(vec![1, 2, 3]), 2).unwrap_err();
        assert!(err.to_string().contains("3 seeds for 2 images"), "{err}");
    }

    #[test]
    fn seeds_replay_deterministically() {
        let a = Rng::new(&Generator::Seed(7), 1)
            .unwrap()
            .randn(&[1, 4, 2, 2])
            .unwrap();
        let b = Rng::new(&Generator::Seed(7), 1)
            .unwrap()
            .randn(&[1, 4, 2, 2])
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            Rng::new(&Generator::Seed(8), 1)
                .unwrap()
                .randn(&[1, 4, 2, 2])
                .unwrap()
        );
    }
}
