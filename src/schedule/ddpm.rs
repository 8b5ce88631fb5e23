//! The DDPM forward (noising) process that training samples from: diffusers `DDPMScheduler`
//! (`add_noise`) and `training_utils.compute_snr` (min-SNR loss weighting).
//!
//! The betas and their cumulative product are computed exactly as diffusers computes them, in
//! float32 with libtorch's own `linspace` and `cumprod`, so that the Euler sampler and the
//! trainer see bit-identical `alphas_cumprod` to diffusers.

use tch::{Device, Kind, Tensor};

use super::config::SchedulerConfig;
use crate::error::{Error, Result};

/// The betas of `cfg`, float32 on the CPU, as diffusers' schedulers build them.
pub fn betas(cfg: &SchedulerConfig) -> Result<Tensor> {
    let n = cfg.num_train_timesteps;
    if n < 2 {
        return Err(Error::msg(format!(
            "scheduler: `num_train_timesteps` is {n}, need at least 2"
        )));
    }
    let opts = (Kind::Float, Device::Cpu);
    match cfg.beta_schedule.as_str() {
        "linear" => Ok(Tensor::linspace(cfg.beta_start, cfg.beta_end, n, opts)),
        // Latent diffusion's schedule: linear in sqrt(beta). torch evaluates `linspace` in
        // float32 from the float64 endpoints, then squares in float32.
        "scaled_linear" => Ok(Tensor::linspace(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n, opts)
            .pow_tensor_scalar(2)),
        other => Err(Error::msg(format!(
            "scheduler: `beta_schedule` {other:?} is not supported (use \"scaled_linear\" or \"linear\")"
        ))),
    }
}

/// `alphas_cumprod` of `cfg`: the cumulative product of `1 - beta`, float32 on the CPU.
pub fn alphas_cumprod(cfg: &SchedulerConfig) -> Result<Tensor> {
    // `1.0 - betas` as diffusers writes it: an exact IEEE operation either way round.
    let alphas = betas(cfg)?.neg() + 1.0;
    // libtorch's CPU cumprod accumulates in double and rounds each partial product to float;
    // calling it (rather than multiplying in Rust) keeps the same rounding.
    Ok(alphas.cumprod(0, None::<Kind>))
}

/// The training noise schedule.
#[derive(Debug)]
pub struct DdpmSchedule {
    /// `abar_t` for t in 0..num_train_timesteps, float32 on the CPU.
    pub alphas_cumprod: Tensor,
    pub num_train_timesteps: i64,
    prediction_type: String,
}

impl DdpmSchedule {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(DdpmSchedule {
            alphas_cumprod: alphas_cumprod(cfg)?,
            num_train_timesteps: cfg.num_train_timesteps,
            prediction_type: cfg.prediction_type.clone(),
        })
    }

    /// `abar_t` gathered at `timesteps` in the dtype and on the device of `like`.
    fn gather(&self, timesteps: &Tensor, like: &Tensor) -> Tensor {
        let ac = self
            .alphas_cumprod
            .to_device(like.device())
            .to_kind(like.kind());
        ac.index_select(0, &timesteps.to_device(like.device()).to_kind(Kind::Int64))
    }

    /// `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, one `t` per batch item
    /// (`timesteps`: integer, shape (B,)). The same operations, in the same dtype (that of
    /// `x0`), as diffusers' `DDPMScheduler.add_noise`.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Tensor {
        let abar = self.gather(timesteps, x0);
        let trailing: Vec<i64> = std::iter::once(-1).chain(vec![1; x0.dim() - 1]).collect();
        let sqrt_alpha_prod = abar.pow_tensor_scalar(0.5).reshape(&trailing);
        let sqrt_one_minus_alpha_prod =
            (abar.neg() + 1.0).pow_tensor_scalar(0.5).reshape(&trailing);
        sqrt_alpha_prod * x0 + sqrt_one_minus_alpha_prod * noise
    }

    /// Signal-to-noise ratio `abar_t / (1 - abar_t)` at `timesteps`, float32 on their device,
    /// computed as diffusers' `compute_snr` does (ratio of square roots, then squared).
    pub fn snr(&self, timesteps: &Tensor) -> Tensor {
        let ac = &self.alphas_cumprod;
        let sqrt_alpha = ac.pow_tensor_scalar(0.5);
        let sqrt_one_minus = (ac.neg() + 1.0).pow_tensor_scalar(0.5);
        let t = timesteps.to_device(Device::Cpu).to_kind(Kind::Int64);
        let alpha = sqrt_alpha.index_select(0, &t).reshape(timesteps.size());
        let sigma = sqrt_one_minus.index_select(0, &t).reshape(timesteps.size());
        (alpha / sigma)
            .pow_tensor_scalar(2)
            .to_device(timesteps.device())
    }

    /// Min-SNR-gamma loss weights (Hang et al. 2023), as diffusers' DreamBooth LoRA SDXL
    /// script computes them: `min(snr, gamma) / snr` for epsilon prediction, plus one for
    /// v-prediction (whose loss is already SNR-weighted differently).
    pub fn min_snr_weights(&self, timesteps: &Tensor, gamma: f64) -> Tensor {
        let snr = self.snr(timesteps);
        let base = snr.clamp_max(gamma) / &snr;
        if self.prediction_type == "v_prediction" {
            base + 1.0
        } else {
            base
        }
    }
}
