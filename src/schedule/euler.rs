//! SDXL's default sampler: diffusers `EulerDiscreteScheduler` (deterministic path, `s_churn`
//! 0), with linear sigma interpolation and a final sigma of zero, as SDXL base configures it.
//!
//! Every number follows diffusers' own arithmetic: sigmas from libtorch's float32
//! `alphas_cumprod`, timesteps spaced with NumPy's rules (float64, round half to even), sigmas
//! interpolated in float64 as `np.interp` does and then stored as float32.

use tch::{Kind, Tensor};

use super::config::SchedulerConfig;
use super::ddpm::alphas_cumprod;
use super::sampler::Scheduler;
use crate::error::{Error, Result};

/// How the inference timesteps are spread over the training timesteps (diffusers
/// `timestep_spacing`; Table 2 of "Common Diffusion Noise Schedules and Sample Steps are
/// Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

impl TimestepSpacing {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            other => Err(Error::msg(format!(
                "scheduler: `timestep_spacing` {other:?} is not one of \"leading\", \"trailing\", \
                 \"linspace\""
            ))),
        }
    }
}

/// What the model predicts (diffusers `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

impl Prediction {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            "sample" | "original_sample" => Ok(Prediction::Sample),
            other => Err(Error::msg(format!(
                "scheduler: `prediction_type` {other:?} is not one of \"epsilon\", \
                 \"v_prediction\", \"sample\""
            ))),
        }
    }
}

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
        let ac = alphas_cumprod(cfg)?;
        // Same float32 tensor operations as diffusers: ((1 - abar) / abar) ** 0.5.
        let sigmas = ((ac.neg() + 1.0) / &ac).pow_tensor_scalar(0.5);
        let train_sigmas = Vec::<f32>::try_from(&sigmas)?;
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

    /// Inference timesteps (float64, before the float32 cast) with NumPy's arithmetic.
    fn spaced_timesteps(&self, n: usize) -> Vec<f64> {
        let train = self.num_train_timesteps;
        match self.spacing {
            TimestepSpacing::Linspace => {
                // np.linspace(0, train - 1, n): i * step in float64, the end point exact.
                let stop = (train - 1) as f64;
                let step = stop / (n as f64 - 1.0);
                let mut t: Vec<f64> = (0..n)
                    .map(|i| if n == 1 { 0.0 } else { i as f64 * step })
                    .collect();
                if n > 1 {
                    t[n - 1] = stop;
                }
                // Cast to float32 as np.linspace(dtype=float32) does.
                t.iter().rev().map(|&v| v as f32 as f64).collect()
            }
            TimestepSpacing::Leading => {
                let ratio = train / n as i64;
                (0..n as i64)
                    .rev()
                    .map(|i| ((i * ratio) as f32 + self.steps_offset as f32) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                // np.arange(train, 0, -train / n): its length is ceil(-train / step), which
                // for some n is n + 1 (a rounding artefact diffusers inherits; kept for
                // parity); the values are start + i * (first two values' difference).
                let start = train as f64;
                let step = -(train as f64) / n as f64;
                let len = ((0.0 - start) / step).ceil() as usize;
                let delta = (start + step) - start;
                (0..len)
                    .map(|i| {
                        let v = if i == 0 {
                            start
                        } else {
                            start + i as f64 * delta
                        };
                        (v.round_ties_even() as f32 - 1.0) as f64
                    })
                    .collect()
            }
        }
    }

    /// `np.interp(t, arange(len(train_sigmas)), train_sigmas)` in float64.
    fn interp_sigma(&self, t: f64) -> f64 {
        let fp = &self.train_sigmas;
        let last = fp.len() - 1;
        // Outside the table np.interp holds the end values (trailing spacing can ask for -1).
        if t < 0.0 {
            return fp[0] as f64;
        }
        if t >= last as f64 {
            return fp[last] as f64;
        }
        let j = t.floor() as usize;
        if j as f64 == t {
            return fp[j] as f64;
        }
        let (lo, hi) = (fp[j] as f64, fp[j + 1] as f64);
        // np.interp's `slope * (x - xp[j]) + fp[j]`; the slope's divisor xp[j+1] - xp[j] is 1.
        (hi - lo) * (t - j as f64) + lo
    }

    /// Choose `n` denoising steps (`timestep_spacing` decides which).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        if n == 0 || n as i64 > self.num_train_timesteps {
            return Err(Error::msg(format!(
                "sampler: {n} steps requested; choose 1 to {}",
                self.num_train_timesteps
            )));
        }
        let t = self.spaced_timesteps(n);
        let mut sigmas: Vec<f32> = t.iter().map(|&v| self.interp_sigma(v) as f32).collect();
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
fn sqrt_sigma_sq_plus_one(sigma: f32) -> f32 {
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

    fn init_noise_sigma(&self) -> f64 {
        EulerDiscrete::init_noise_sigma(self)
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Tensor {
        EulerDiscrete::scale_model_input(self, sample, step_index)
    }

    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Tensor {
        EulerDiscrete::step(self, model_output, step_index, sample)
    }
}
