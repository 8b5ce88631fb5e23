//! diffusers `HeunDiscreteScheduler`: Heun's second-order method on the probability-flow ODE
//! (Karras et al. 2022, Algorithm 1 without churn). Each step but the last takes two model
//! evaluations: an Euler step to the next sigma, then the average of the two slopes from the
//! start again. diffusers lists every timestep but the first twice, and so does `timesteps()`:
//! n steps are 2n - 1 model evaluations.

use tch::Tensor;

use super::config::SchedulerConfig;
use super::euler::{sqrt_sigma_sq_plus_one, EulerDiscrete, Prediction, TimestepSpacing};
use super::sampler::Scheduler;
use crate::error::Result;

#[derive(Debug)]
pub struct Heun {
    schedule: EulerDiscrete,
    spacing: TimestepSpacing,
    prediction: Prediction,
    clip_sample: Option<f64>,
    /// The first timestep once, every later one twice.
    timesteps: Vec<f32>,
    /// sigma_0, then sigma_1 .. sigma_{n-1} twice each, then the final 0.
    sigmas: Vec<f32>,
    /// Between the two halves of a step: the first slope, the step size and the start.
    first: Option<(Tensor, f32, Tensor)>,
}

impl Heun {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        let schedule = EulerDiscrete::new(cfg)?;
        let mut h = Heun {
            spacing: TimestepSpacing::parse(&cfg.timestep_spacing)?,
            prediction: Prediction::parse(&cfg.prediction_type)?,
            clip_sample: cfg
                .clip_sample
                .unwrap_or(false)
                .then(|| cfg.clip_sample_range.unwrap_or(1.0)),
            schedule,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            first: None,
        };
        h.interleave();
        Ok(h)
    }

    fn interleave(&mut self) {
        let t = self.schedule.timesteps();
        let s = self.schedule.sigmas();
        self.timesteps = t[..1]
            .iter()
            .copied()
            .chain(t[1..].iter().flat_map(|&v| [v, v]))
            .collect();
        let last = s.len() - 1;
        self.sigmas = s[..1]
            .iter()
            .copied()
            .chain(s[1..last].iter().flat_map(|&v| [v, v]))
            .chain([s[last]])
            .collect();
        self.first = None;
    }
}

impl Scheduler for Heun {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.schedule.set_timesteps(n)?;
        self.interleave();
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self
            .sigmas
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        match self.spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
            TimestepSpacing::Leading => sqrt_sigma_sq_plus_one(max) as f64,
        }
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Tensor {
        sample / sqrt_sigma_sq_plus_one(self.sigmas[step_index]) as f64
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Tensor {
        let first_order = self.first.is_none();
        let (sigma, sigma_next) = if first_order {
            (self.sigmas[step_index], self.sigmas[step_index + 1])
        } else {
            (self.sigmas[step_index - 1], self.sigmas[step_index])
        };
        // The sigma the model saw: this step's start, or for the second half its end.
        let sigma_input = if first_order { sigma } else { sigma_next };
        let pred_original = match self.prediction {
            Prediction::Epsilon => sample - model_output * sigma_input as f64,
            Prediction::VPrediction => {
                let c_out = -sigma_input / sqrt_sigma_sq_plus_one(sigma_input);
                model_output * c_out as f64 + sample / (sigma_input * sigma_input + 1.0) as f64
            }
            Prediction::Sample => model_output.shallow_clone(),
        };
        let pred_original = match self.clip_sample {
            Some(r) => pred_original.clamp(-r, r),
            None => pred_original,
        };
        match self.first.take() {
            None => {
                let derivative = (sample - pred_original) / sigma as f64;
                let dt = sigma_next - sigma;
                let prev = sample + &derivative * dt as f64;
                self.first = Some((derivative, dt, sample.shallow_clone()));
                prev
            }
            Some((first_derivative, dt, start)) => {
                let derivative = (sample - pred_original) / sigma_next as f64;
                let derivative = (first_derivative + derivative) / 2.0;
                start + derivative * dt as f64
            }
        }
    }
}
