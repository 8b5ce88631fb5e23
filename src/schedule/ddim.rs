//! diffusers `DDIMScheduler` with eta 0 (the deterministic DDIM of Song et al. 2021), as
//! `StableDiffusionXLPipeline` drives it. Configured from SDXL's Euler config, `from_config`
//! leaves DDIM's own defaults in place: `clip_sample=True` (the predicted clean latents are
//! clamped to [-1, 1]) and `set_alpha_to_one=True`.

use tch::Tensor;

use super::config::SchedulerConfig;
use super::ddpm::alphas_cumprod;
use super::euler::{Prediction, TimestepSpacing};
use super::sampler::Scheduler;
use super::sigmas::{check_steps, ddim_timesteps};
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Ddim {
    spacing: TimestepSpacing,
    prediction: Prediction,
    steps_offset: i64,
    num_train_timesteps: i64,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    clip_sample: Option<f32>,
    /// The step count asked for (trailing spacing can list one timestep more).
    num_inference_steps: usize,
    steps: Vec<i64>,
    timesteps: Vec<f32>,
}

impl Ddim {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        if cfg.thresholding == Some(true) {
            return Err(Error::msg(
                "scheduler: `thresholding` is not supported by the ddim sampler",
            ));
        }
        let ac = Vec::<f32>::try_from(&alphas_cumprod(cfg)?)?;
        let final_alpha_cumprod = if cfg.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            ac[0]
        };
        let n = cfg.num_train_timesteps;
        Ok(Ddim {
            spacing: TimestepSpacing::parse(&cfg.timestep_spacing)?,
            prediction: Prediction::parse(&cfg.prediction_type)?,
            steps_offset: cfg.steps_offset,
            num_train_timesteps: n,
            alphas_cumprod: ac,
            final_alpha_cumprod,
            clip_sample: cfg
                .clip_sample
                .unwrap_or(true)
                .then(|| cfg.clip_sample_range.unwrap_or(1.0) as f32),
            num_inference_steps: n as usize,
            steps: (0..n).rev().collect(),
            timesteps: (0..n).rev().map(|t| t as f32).collect(),
        })
    }

    /// The integer timesteps (what diffusers keeps; `timesteps()` gives them as floats).
    pub fn integer_timesteps(&self) -> &[i64] {
        &self.steps
    }
}

impl Scheduler for Ddim {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(n, self.num_train_timesteps)?;
        let steps = ddim_timesteps(self.spacing, n, self.num_train_timesteps, self.steps_offset);
        if let Some(t) = steps.iter().find(|&&t| t >= self.num_train_timesteps) {
            return Err(Error::msg(format!(
                "sampler: ddim with {n} steps reaches timestep {t}, past the model's {} \
                 (`steps_offset` {}); choose fewer steps",
                self.num_train_timesteps, self.steps_offset
            )));
        }
        self.num_inference_steps = n;
        self.steps = steps;
        self.timesteps = self.steps.iter().map(|&t| t as f32).collect();
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _step_index: usize) -> Tensor {
        sample.shallow_clone()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Tensor {
        let t = self.steps[step_index];
        // diffusers steps back by train // n whatever the spacing.
        let prev_t = t - self.num_train_timesteps / self.num_inference_steps as i64;
        let at = |i: i64| self.alphas_cumprod[i as usize];
        let alpha_prod_t = at(t);
        let alpha_prod_t_prev = if prev_t >= 0 {
            at(prev_t)
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (pred_original, pred_epsilon) = match self.prediction {
            Prediction::Epsilon => (
                (sample - model_output * beta_prod_t.sqrt() as f64) / alpha_prod_t.sqrt() as f64,
                model_output.shallow_clone(),
            ),
            Prediction::Sample => (
                model_output.shallow_clone(),
                (sample - model_output * alpha_prod_t.sqrt() as f64) / beta_prod_t.sqrt() as f64,
            ),
            Prediction::VPrediction => (
                sample * alpha_prod_t.sqrt() as f64 - model_output * beta_prod_t.sqrt() as f64,
                model_output * alpha_prod_t.sqrt() as f64 + sample * beta_prod_t.sqrt() as f64,
            ),
        };
        let pred_original = match self.clip_sample {
            Some(r) => pred_original.clamp(-r as f64, r as f64),
            None => pred_original,
        };
        // eta = 0: no variance term, std_dev_t = 0.
        let direction = pred_epsilon * (1.0 - alpha_prod_t_prev).sqrt() as f64;
        pred_original * alpha_prod_t_prev.sqrt() as f64 + direction
    }
}
