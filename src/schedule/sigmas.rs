//! The arithmetic the samplers share, each piece as diffusers writes it: the training sigma
//! table, the spacings of inference timesteps (NumPy's float64 rules, round half to even),
//! `np.interp`, Karras et al.'s sigmas and their timesteps (`_sigma_to_t`), and the
//! `(alpha_t, sigma_t, lambda_t)` of a sigma that the multistep solvers work in.

use super::config::SchedulerConfig;
use super::ddpm::alphas_cumprod;
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

/// sqrt((1 - abar) / abar) per training timestep, float32 as diffusers computes it (the same
/// libtorch tensor operations).
pub fn train_sigmas(cfg: &SchedulerConfig) -> Result<Vec<f32>> {
    let ac = alphas_cumprod(cfg)?;
    let sigmas = ((ac.neg() + 1.0) / &ac).pow_tensor_scalar(0.5);
    Ok(Vec::<f32>::try_from(&sigmas)?)
}

/// Refuse a step count the schedule cannot give.
pub fn check_steps(n: usize, train: i64) -> Result<()> {
    if n == 0 || n as i64 > train {
        return Err(Error::msg(format!(
            "sampler: {n} steps requested; choose 1 to {train}"
        )));
    }
    Ok(())
}

/// `np.linspace(0, stop, n)` in float64: `i * step`, the end point exact.
fn linspace(stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![0.0];
    }
    let step = stop / (n as f64 - 1.0);
    let mut t: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
    t[n - 1] = stop;
    t
}

/// `np.arange(start, 0, -step)` in float64: its length is ceil(start / step), which for some
/// step counts is one more than asked (a rounding artefact diffusers inherits; kept for
/// parity); the values are start + i * (the first two values' difference).
fn arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil() as usize;
    let delta = (start - step) - start;
    (0..len)
        .map(|i| {
            if i == 0 {
                start
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// The timesteps of the Euler family (`EulerDiscreteScheduler`, `EulerAncestral...`, `Heun...`):
/// float32 values, noisiest first, returned in float64 for `np.interp`.
pub fn euler_timesteps(spacing: TimestepSpacing, n: usize, train: i64, offset: i64) -> Vec<f64> {
    match spacing {
        // np.linspace(0, train - 1, n, dtype=float32)[::-1]
        TimestepSpacing::Linspace => linspace((train - 1) as f64, n)
            .iter()
            .rev()
            .map(|&v| v as f32 as f64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / n as i64;
            (0..n as i64)
                .rev()
                .map(|i| ((i * ratio) as f32 + offset as f32) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange_down(train as f64, train as f64 / n as f64)
            .iter()
            .map(|v| (v.round_ties_even() as f32 - 1.0) as f64)
            .collect(),
    }
}

/// The integer timesteps of the multistep solvers (`DPMSolverMultistepScheduler`,
/// `UniPCMultistepScheduler`): they space `n + 1` points and drop the last (timestep 0).
pub fn multistep_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    train: i64,
    offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<i64> = linspace((train - 1) as f64, n + 1)
                .iter()
                .rev()
                .map(|v| v.round_ties_even() as i64)
                .collect();
            t.pop();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = train / (n as i64 + 1);
            (1..=n as i64).rev().map(|i| i * ratio + offset).collect()
        }
        TimestepSpacing::Trailing => arange_down(train as f64, train as f64 / n as f64)
            .iter()
            .map(|v| v.round_ties_even() as i64 - 1)
            .collect(),
    }
}

/// The integer timesteps of `DDIMScheduler`.
pub fn ddim_timesteps(spacing: TimestepSpacing, n: usize, train: i64, offset: i64) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => linspace((train - 1) as f64, n)
            .iter()
            .rev()
            .map(|v| v.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / n as i64;
            (0..n as i64).rev().map(|i| i * ratio + offset).collect()
        }
        TimestepSpacing::Trailing => arange_down(train as f64, train as f64 / n as f64)
            .iter()
            .map(|v| v.round_ties_even() as i64 - 1)
            .collect(),
    }
}

/// `np.interp(t, arange(len(fp)), fp)` in float64 (the ends held outside the table).
pub fn interp(fp: &[f32], t: f64) -> f64 {
    let last = fp.len() - 1;
    if t <= 0.0 {
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

/// `_convert_to_karras`: `n` sigmas from `sigma_max` down to `sigma_min`, evenly spaced in
/// sigma^(1/7) (Karras et al. 2022, rho = 7), float64.
pub fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    linspace(1.0, n)
        .iter()
        .map(|&ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// `_sigma_to_t`: the (fractional) training timestep of `sigma`, by linear interpolation in
/// log sigma over the training table (`log_sigmas`: float32, as `np.log` of the float32 table).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log sigma is at most log_sigma (0 when none), at most len - 2.
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    // float32 - float64 is float64; float32 - float32 stays float32 in NumPy.
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `_sigma_to_alpha_sigma_t` of the multistep solvers: alpha_t = 1 / sqrt(sigma^2 + 1),
/// sigma_t = sigma * alpha_t, in float32.
pub fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// lambda_t = log(alpha_t) - log(sigma_t) (infinite at sigma 0, as in diffusers).
pub fn lambda(sigma: f32) -> f32 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}
