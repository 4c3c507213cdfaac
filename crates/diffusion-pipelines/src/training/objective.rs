//! What the network is trained to predict, and how the error is weighted.
//!
//! As in diffusers' training scripts: the clean batch is noised by the noise
//! scheduler's `add_noise` at random training timesteps; the target is the
//! noise (`epsilon`), the scheduler's `get_velocity` (`v_prediction`) or the
//! clean batch (`sample`); the loss is the mean squared error, optionally
//! weighted per sample by min-SNR-γ (Hang et al. 2023, as
//! `train_text_to_image.py --snr_gamma` does), with the noise optionally
//! offset by a per-channel constant (`--noise_offset`), or split into an
//! instance and a weighted class half (DreamBooth's prior preservation).

pub use diffusion_schedulers::PredictionType;
use serde::{Deserialize, Serialize};

/// The loss of one training step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Objective {
    /// Overrides the scheduler config's `prediction_type`.
    pub prediction_type: Option<PredictionType>,
    /// Min-SNR-γ weighting (diffusers recommends 5.0); `None`: plain MSE.
    pub snr_gamma: Option<f64>,
    /// Scale of the per-(sample, channel) noise offset; 0: none.
    pub noise_offset: f64,
    /// DreamBooth's prior preservation (`--with_prior_preservation`,
    /// `--prior_loss_weight`): the batch's second half holds class images,
    /// and the loss is the first half's mean plus this weight times the
    /// second half's. `None`: one mean over the batch.
    #[serde(default)]
    pub prior_loss_weight: Option<f64>,
}

impl Objective {
    /// The per-sample loss weights for signal-to-noise ratios `snr`
    /// (`min(snr, γ) / snr`, `/ (snr + 1)` for v-prediction, unnormalised for
    /// `sample`); all 1 without `snr_gamma`.
    pub fn weights(&self, prediction: PredictionType, snr: &[f64]) -> Vec<f64> {
        let Some(gamma) = self.snr_gamma else {
            return vec![1.0; snr.len()];
        };
        snr.iter()
            .map(|&s| {
                let w = s.min(gamma);
                match prediction {
                    PredictionType::Epsilon => w / s,
                    PredictionType::VPrediction => w / (s + 1.0),
                    PredictionType::Sample | PredictionType::FlowPrediction => w,
                }
            })
            .collect()
    }
}

/// `alpha_t^2 / sigma_t^2` from the signal and noise scales the scheduler's
/// `add_noise` applies, in f32 as `diffusers.training_utils.compute_snr`.
pub fn snr(signal: &[f32], noise: &[f32]) -> Vec<f64> {
    signal
        .iter()
        .zip(noise)
        .map(|(&a, &s)| f64::from((a / s).powi(2)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_snr_weights() {
        let o = Objective {
            snr_gamma: Some(5.0),
            ..Default::default()
        };
        assert_eq!(
            o.weights(PredictionType::Epsilon, &[10.0, 2.0]),
            vec![0.5, 1.0]
        );
        assert_eq!(o.weights(PredictionType::VPrediction, &[4.0]), vec![0.8]);
        assert_eq!(o.weights(PredictionType::Sample, &[10.0]), vec![5.0]);
        assert_eq!(
            Objective::default().weights(PredictionType::Sample, &[3.0]),
            vec![1.0]
        );
        assert_eq!(snr(&[0.5], &[0.25]), vec![4.0]);
    }
}
