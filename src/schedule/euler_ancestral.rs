//! "Euler a": diffusers `EulerAncestralDiscreteScheduler`. The schedule is Euler's (the same
//! timesteps and linearly interpolated sigmas, final sigma 0); each step goes down to
//! `sigma_down` deterministically and then adds fresh noise of standard deviation `sigma_up`,
//! so that the sample lands at the next sigma's noise level.

use tch::{Kind, Tensor};

use super::config::SchedulerConfig;
use super::euler::{sqrt_sigma_sq_plus_one, EulerDiscrete, Prediction};
use super::sampler::Scheduler;
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct EulerAncestral {
    /// The schedule (timesteps, sigmas, initial sigma, input scaling) is Euler's.
    euler: EulerDiscrete,
    prediction: Prediction,
}

impl EulerAncestral {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        let prediction = Prediction::parse(&cfg.prediction_type)?;
        if prediction == Prediction::Sample {
            return Err(Error::msg(
                "scheduler: `prediction_type` \"sample\" is not supported by euler_a \
                 (diffusers' EulerAncestralDiscreteScheduler does not implement it)",
            ));
        }
        Ok(EulerAncestral {
            euler: EulerDiscrete::new(cfg)?,
            prediction,
        })
    }
}

impl Scheduler for EulerAncestral {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.euler.set_timesteps(n)
    }

    fn timesteps(&self) -> &[f32] {
        self.euler.timesteps()
    }

    fn sigmas(&self) -> &[f32] {
        self.euler.sigmas()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.euler.init_noise_sigma()
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Tensor {
        self.euler.scale_model_input(sample, step_index)
    }

    fn stochastic(&self) -> bool {
        true
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let noise = noise.expect("euler_a: every step needs its noise");
        let sigmas = self.euler.sigmas();
        let sample = sample.to_kind(Kind::Float);
        let sigma = sigmas[step_index];
        let pred_original = match self.prediction {
            Prediction::Epsilon => &sample - model_output * sigma as f64,
            _ => {
                let c_out = -sigma / sqrt_sigma_sq_plus_one(sigma);
                model_output * c_out as f64 + &sample / (sigma * sigma + 1.0) as f64
            }
        };
        let sigma_to = sigmas[step_index + 1];
        // float32 scalar arithmetic, as diffusers does it on 0-d tensors.
        let sigma_up =
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = (&sample - pred_original) / sigma as f64;
        let dt = sigma_down - sigma;
        let prev = sample + derivative * dt as f64;
        let prev = prev
            + noise
                .to_device(model_output.device())
                .to_kind(model_output.kind())
                * sigma_up as f64;
        prev.to_kind(model_output.kind())
    }
}
