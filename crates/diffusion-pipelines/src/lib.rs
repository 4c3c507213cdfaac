//! # diffusion-pipelines
//!
//! Composition of schedulers and models into diffusers-style pipelines. The
//! pipelines themselves arrive with the pipelines issue; this crate already
//! provides [`Latents`], the Burn implementation of the schedulers' tensor trait,
//! so that every scheduler of `diffusion-schedulers` steps Burn tensors on their
//! device.

pub mod latents;

pub use latents::Latents;
