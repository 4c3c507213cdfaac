//! [`SchedulerTensor`] for Burn tensors.
//!
//! A newtype because neither the trait nor `burn::Tensor` is local to this crate.
//! Every operation stays on the tensor's device; only `all_finite` reads back a
//! single boolean.

use burn::tensor::{DType, ElementConversion, Tensor, backend::Backend};
use diffusion_schedulers::SchedulerTensor;

/// A Burn float tensor that schedulers can step (latents are `D = 4`).
#[derive(Debug, Clone)]
pub struct Latents<B: Backend, const D: usize = 4>(pub Tensor<B, D>);

impl<B: Backend, const D: usize> Latents<B, D> {
    /// `[batch, 1, 1, ...]`: the shape that broadcasts one value per batch item.
    fn per_item_shape(batch: usize) -> [usize; D] {
        let mut shape = [1usize; D];
        shape[0] = batch;
        shape
    }
}

impl<B: Backend, const D: usize> SchedulerTensor for Latents<B, D> {
    fn shape(&self) -> Vec<usize> {
        self.0.dims().to_vec()
    }

    fn linear_combination(terms: &[(f64, &Self)]) -> Self {
        let (c0, x0) = terms[0];
        let mut acc = x0.0.clone().mul_scalar(c0 as f32);
        for &(c, x) in &terms[1..] {
            acc = acc + x.0.clone().mul_scalar(c as f32);
        }
        Latents(acc)
    }

    fn scale_batch(&self, coeffs: &[f64]) -> Self {
        if coeffs.len() == 1 {
            return self.scale(coeffs[0]);
        }
        let values: Vec<f32> = coeffs.iter().map(|&c| c as f32).collect();
        let c = Tensor::<B, 1>::from_floats(values.as_slice(), &self.0.device())
            .reshape(Self::per_item_shape(coeffs.len()));
        Latents(self.0.clone() * c)
    }

    fn clamp(&self, min: f64, max: f64) -> Self {
        Latents(self.0.clone().clamp(min as f32, max as f32))
    }

    fn dynamic_threshold(&self, ratio: f64, max: f64) -> Self {
        let dims = self.0.dims();
        let batch = dims[0];
        let per: usize = dims[1..].iter().product();
        let flat: Tensor<B, 2> = self.0.clone().reshape([batch, per]);
        let sorted = flat.clone().abs().sort(1);
        // torch.quantile's linear interpolation between the two neighbouring ranks.
        let pos = ratio.clamp(0.0, 1.0) * (per.saturating_sub(1)) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        let frac = (pos - lo as f64) as f32;
        let v_lo = sorted.clone().narrow(1, lo, 1);
        let v_hi = sorted.narrow(1, hi, 1);
        // torch.clamp(s, min=1, max): `max` wins when it is below 1.
        let s = (v_lo.clone() + (v_hi - v_lo).mul_scalar(frac))
            .clamp_min(1.0f32)
            .clamp_max(max as f32);
        let s = s.expand([batch, per]);
        let clamped = flat.max_pair(s.clone().neg()).min_pair(s.clone()) / s;
        Latents(clamped.reshape(dims))
    }

    fn all_finite(&self) -> bool {
        // x - x is 0 for finite x and NaN for NaN or ±inf, so the sum is finite
        // exactly when every element is; one reduction, one scalar read back.
        let zero_or_nan = self.0.clone() - self.0.clone();
        zero_or_nan.sum().into_scalar().elem::<f32>().is_finite()
    }
}

/// Caller-given initial latents (`Params::latents`), checked: the shape the
/// call needs and finite values (a NaN would only surface steps later, as a
/// non-finite UNet prediction); returned in f32.
pub(crate) fn check_latents<B: Backend>(
    l: Tensor<B, 4>,
    shape: [usize; 4],
) -> crate::Result<Tensor<B, 4>> {
    if l.dims() != shape {
        return Err(crate::PipelineError::parameter(
            "latents",
            format!("shape {:?}, expected {shape:?}", l.dims()),
        ));
    }
    let l = l.cast(DType::F32);
    let values = l
        .to_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| crate::PipelineError::parameter("latents", format!("unreadable: {e:?}")))?;
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(crate::PipelineError::parameter(
            "latents",
            format!("contains {v}; initial latents must be finite"),
        ));
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use diffusion_schedulers::{CpuTensor, NoNoise, StepOptions, from_config_as};

    type B = NdArray<f32>;

    fn pair(data: Vec<f32>, shape: [usize; 4]) -> (CpuTensor, Latents<B>) {
        let cpu = CpuTensor::new(data.clone(), shape.to_vec()).unwrap();
        let t = Tensor::<B, 1>::from_floats(data.as_slice(), &Default::default()).reshape(shape);
        (cpu, Latents(t))
    }

    fn data(l: &Latents<B>) -> Vec<f32> {
        l.0.to_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn ops_match_the_cpu_reference() {
        let values: Vec<f32> = (0..48)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let (c, l) = pair(values, [2, 3, 2, 4]);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(
            &data(&l.dynamic_threshold(0.9, 2.5)),
            c.dynamic_threshold(0.9, 2.5).data()
        ));
        assert!(close(
            &data(&l.scale_batch(&[0.5, -2.0])),
            c.scale_batch(&[0.5, -2.0]).data()
        ));
        let lc = Latents::linear_combination(&[(0.25, &l), (-1.5, &l.clamp(-1.0, 1.0))]);
        let cc = CpuTensor::linear_combination(&[(0.25, &c), (-1.5, &c.clamp(-1.0, 1.0))]);
        assert!(close(&data(&lc), cc.data()));
        assert!(l.all_finite());
        let (_, nan) = pair(vec![f32::NAN; 8], [1, 2, 2, 2]);
        assert!(!nan.all_finite());
    }

    /// The same scheduler loop on Burn tensors and on CPU buffers agrees.
    #[test]
    fn a_scheduler_steps_burn_tensors() {
        let values: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut c, mut l) = pair(values, [2, 1, 4, 4]);
        let config = serde_json::json!({"thresholding": true, "sample_max_value": 1.2});
        let mut sc = from_config_as::<CpuTensor>("DDIMScheduler", &config)
            .unwrap()
            .scheduler;
        let mut sl = from_config_as::<Latents<B>>("DDIMScheduler", &config)
            .unwrap()
            .scheduler;
        sc.set_timesteps(10).unwrap();
        sl.set_timesteps(10).unwrap();
        for t in sc.timesteps().to_vec() {
            let (eps_c, eps_l) = (c.scale(t / (t + 1.0)), l.scale(t / (t + 1.0)));
            c = sc
                .step(&eps_c, t, &c, &StepOptions::default(), &mut NoNoise)
                .unwrap()
                .prev_sample;
            l = sl
                .step(&eps_l, t, &l, &StepOptions::default(), &mut NoNoise)
                .unwrap()
                .prev_sample;
        }
        let err: f32 = data(&l)
            .iter()
            .zip(c.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "max abs diff {err}");
    }
}
