//! SDXL's default sampler: diffusers `EulerDiscreteScheduler` (deterministic path, `s_churn`
//! 0), with linear sigma interpolation and a final sigma of zero, as SDXL base configures it.
//!
//! Every number follows diffusers' own arithmetic: sigmas from libtorch's float32
//! `alphas_cumprod`, timesteps spaced with NumPy's rules (float64, round half to even), sigmas
//! interpolated in float64 as `np.interp` does and then stored as float32.

use tch::{Kind, Tensor};

use super::config::SchedulerConfig;
use super::sampler::Scheduler;
use super::sigmas::{check_steps, euler_timesteps, interp, train_sigmas};
pub use super::sigmas::{Prediction, TimestepSpacing};
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct EulerDiscrete {
    spacing: TimestepSpacing,
    prediction: Prediction,
    steps_offset: i64,
    num_train_timesteps: i64,
    /// sqrt((1 - abar) / abar) per training timestep, float32 as diffusers stores it.
    train_sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    /// One more than `timesteps`: the last is 0.
    sigmas: Vec<f32>,
}

impl EulerDiscrete {
    /// The scheduler before `set_timesteps`: like diffusers, every training timestep from
    /// the noisiest down.
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        let spacing = TimestepSpacing::parse(&cfg.timestep_spacing)?;
        let prediction = Prediction::parse(&cfg.prediction_type)?;
        if cfg.steps_offset < 0 {
            return Err(Error::msg("scheduler: `steps_offset` must not be negative"));
        }
        let train_sigmas = train_sigmas(cfg)?;
        let n = cfg.num_train_timesteps;
        // np.linspace(0, n - 1, n)[::-1] is exactly the integers n-1 .. 0.
        let timesteps: Vec<f32> = (0..n).rev().map(|t| t as f32).collect();
        let sigmas: Vec<f32> = train_sigmas.iter().rev().copied().chain([0.0]).collect();
        Ok(EulerDiscrete {
            spacing,
            prediction,
            steps_offset: cfg.steps_offset,
            num_train_timesteps: n,
            train_sigmas,
            timesteps,
            sigmas,
        })
    }

    /// The noise level at each step, plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The timesteps as a float32 tensor on the CPU (what the UNet takes).
    pub fn timesteps_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.timesteps)
    }

    /// Choose `n` denoising steps (`timestep_spacing` decides which).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(n, self.num_train_timesteps)?;
        let t = euler_timesteps(self.spacing, n, self.num_train_timesteps, self.steps_offset);
        let mut sigmas: Vec<f32> = t
            .iter()
            .map(|&v| interp(&self.train_sigmas, v) as f32)
            .collect();
        sigmas.push(0.0);
        self.timesteps = t.iter().map(|&v| v as f32).collect();
        self.sigmas = sigmas;
        Ok(())
    }

    /// The UNet's timestep input at each step, noisiest first.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// sqrt(sigma_max^2 + 1) for leading spacing (unit-variance signal plus noise); plain
    /// sigma_max for linspace and trailing, as diffusers has it.
    pub fn init_noise_sigma(&self) -> f64 {
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

    /// `sample / sqrt(sigma^2 + 1)`: the model was trained on unit-variance inputs.
    pub fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Tensor {
        self.check_index(step_index);
        sample / sqrt_sigma_sq_plus_one(self.sigmas[step_index]) as f64
    }

    /// One Euler step of the probability-flow ODE from `sigmas[i]` to `sigmas[i + 1]`,
    /// computed in float32 (diffusers upcasts the sample) and returned in the model output's
    /// dtype, as diffusers does.
    pub fn step(&self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Tensor {
        self.check_index(step_index);
        let sample = sample.to_kind(Kind::Float);
        let sigma = self.sigmas[step_index];
        // s_churn = 0: no noise is added, sigma_hat = sigma.
        let sigma_hat = sigma;
        let pred_original = match self.prediction {
            Prediction::Epsilon => &sample - model_output * sigma_hat as f64,
            Prediction::VPrediction => {
                // c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1 / (sigma^2 + 1).
                let c_out = -sigma / sqrt_sigma_sq_plus_one(sigma);
                let var = (Tensor::from(sigma).pow_tensor_scalar(2) + 1).double_value(&[]);
                model_output * c_out as f64 + &sample / var
            }
            Prediction::Sample => model_output.shallow_clone(),
        };
        // Written as diffusers writes it (derivative, then dt) so the rounding matches.
        let derivative = (&sample - pred_original) / sigma_hat as f64;
        let dt = self.sigmas[step_index + 1] - sigma_hat;
        (sample + derivative * dt as f64).to_kind(model_output.kind())
    }

    fn check_index(&self, step_index: usize) {
        assert!(
            step_index < self.timesteps.len(),
            "step index {step_index} out of range: the schedule has {} steps",
            self.timesteps.len()
        );
    }
}

/// `(sigma**2 + 1) ** 0.5` as diffusers evaluates it: by libtorch, on a float32 scalar tensor.
/// libtorch's vectorised square root is not always the correctly rounded one (it can be one
/// ulp off IEEE `sqrt`), so Rust's `f32::sqrt` would not reproduce it bit for bit.
pub(crate) fn sqrt_sigma_sq_plus_one(sigma: f32) -> f32 {
    (Tensor::from(sigma).pow_tensor_scalar(2) + 1)
        .pow_tensor_scalar(0.5)
        .double_value(&[]) as f32
}

// The methods are inherent so that callers need no trait import; the trait lets the sampling
// loop take any sampler.
impl Scheduler for EulerDiscrete {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        EulerDiscrete::set_timesteps(self, n)
    }

    fn timesteps(&self) -> &[f32] {
        EulerDiscrete::timesteps(self)
    }

    fn sigmas(&self) -> &[f32] {
        EulerDiscrete::sigmas(self)
    }

    fn init_noise_sigma(&self) -> f64 {
        EulerDiscrete::init_noise_sigma(self)
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Tensor {
        EulerDiscrete::scale_model_input(self, sample, step_index)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Tensor {
        EulerDiscrete::step(self, model_output, step_index, sample)
    }
}
