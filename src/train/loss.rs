//! The DreamBooth objective: epsilon-prediction MSE (optionally min-SNR weighted) plus the
//! prior-preservation term, and its backward pass (optionally recomputed segment by segment).

use tch::{Kind, Tensor};

use super::batch::Batch;
use super::recompute;
use crate::schedule::ddpm::DdpmSchedule;
use crate::sdxl::unet::UNet2DConditionModel;

/// The DreamBooth loss of one batch: MSE between predicted and true noise (f32), optionally
/// min-SNR weighted, plus `prior_weight` times the class-image loss.
pub fn loss(
    unet: &UNet2DConditionModel,
    batch: &Batch,
    sched: &DdpmSchedule,
    snr_gamma: Option<f64>,
    prior_weight: f64,
) -> Tensor {
    let t = batch.timesteps.to_kind(Kind::Float);
    let pred = unet.forward(
        &batch.noisy,
        &t,
        &batch.hidden,
        &batch.pooled,
        &batch.time_ids,
    );
    prediction_loss(&pred, batch, sched, snr_gamma, prior_weight)
}

/// [`loss`] from the UNet's prediction for the batch. With a mask (`batch.mask`) each
/// element's squared error is weighted by its latent pixel's weight before the means, as
/// sd-scripts' `apply_masked_loss` does (the weights are not renormalised); class rows are
/// never masked.
pub fn prediction_loss(
    pred: &Tensor,
    batch: &Batch,
    sched: &DdpmSchedule,
    snr_gamma: Option<f64>,
    prior_weight: f64,
) -> Tensor {
    let pred = pred.to_kind(Kind::Float);
    let target = batch.target.to_kind(Kind::Float);
    let n = batch.n_instance;
    let total = pred.size()[0];
    let mask = batch.mask.as_ref().map(|m| m.narrow(0, 0, n));
    let mse = |p: &Tensor, y: &Tensor, ts: &Tensor| -> Tensor {
        let sq = || match &mask {
            Some(m) => (p - y).square() * m,
            None => (p - y).square(),
        };
        match snr_gamma {
            None if mask.is_none() => p.mse_loss(y, tch::Reduction::Mean),
            None => sq().mean(Kind::Float),
            Some(gamma) => {
                // diffusers: per-sample mean, weighted by min(SNR, gamma) / SNR (epsilon target).
                let w = sched.min_snr_weights(ts, gamma).to_device(p.device());
                let per = sq().mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
                (per * w).mean(Kind::Float)
            }
        }
    };
    if n < total {
        let inst = mse(
            &pred.narrow(0, 0, n),
            &target.narrow(0, 0, n),
            &batch.timesteps.narrow(0, 0, n),
        );
        let prior = pred
            .narrow(0, n, total - n)
            .mse_loss(&target.narrow(0, n, total - n), tch::Reduction::Mean);
        inst + prior * prior_weight
    } else {
        mse(&pred, &target, &batch.timesteps)
    }
}

/// The loss of one batch with its gradients accumulated into the trained adapter tensors.
/// With `checkpointing` only segment inputs are kept through the forward pass and each
/// segment is recomputed in the backward pass ([`recompute`]): less memory, more arithmetic,
/// the same gradients. Returns the loss, detached.
pub fn loss_backward(
    unet: &UNet2DConditionModel,
    batch: &Batch,
    sched: &DdpmSchedule,
    snr_gamma: Option<f64>,
    prior_weight: f64,
    checkpointing: bool,
) -> Tensor {
    if checkpointing {
        let t = batch.timesteps.to_kind(Kind::Float);
        let inputs = recompute::UNetInputs {
            sample: &batch.noisy,
            timesteps: &t,
            encoder_hidden_states: &batch.hidden,
            text_embeds: &batch.pooled,
            time_ids: &batch.time_ids,
        };
        recompute::loss_backward(unet, &inputs, |pred| {
            prediction_loss(pred, batch, sched, snr_gamma, prior_weight)
        })
    } else {
        let l = loss(unet, batch, sched, snr_gamma, prior_weight);
        l.backward();
        l.detach()
    }
}
