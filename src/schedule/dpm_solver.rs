//! diffusers `DPMSolverMultistepScheduler`: DPM-Solver++ (Lu et al. 2022), the multistep
//! second-order solver in data prediction that A1111 calls "DPM++ 2M"; with
//! `use_karras_sigmas` its sigmas follow Karras et al.'s rho = 7 spacing ("DPM++ 2M Karras");
//! with `algorithm_type="sde-dpmsolver++"` each step also adds fresh noise ("DPM++ 2M SDE").
//!
//! As in diffusers: the first step is first order (no earlier output yet), and so is the
//! last when the final sigma is zero (or `lower_order_final` with fewer than 15 steps, or
//! `euler_at_final`); the solver keeps the last `solver_order` data predictions.

use tch::{Kind, Tensor};

use super::config::SchedulerConfig;
use super::euler::{Prediction, TimestepSpacing};
use super::sampler::Scheduler;
use super::sigmas::{
    alpha_sigma, check_steps, interp, karras, lambda, multistep_timesteps, sigma_to_t, train_sigmas,
};
use crate::error::{Error, Result};

/// diffusers' `algorithm_type` (the two that are not deprecated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    DpmSolverPp,
    SdeDpmSolverPp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

#[derive(Debug)]
pub struct DpmSolverMultistep {
    algorithm: DpmAlgorithm,
    karras: bool,
    spacing: TimestepSpacing,
    prediction: Prediction,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    steps_offset: i64,
    num_train_timesteps: i64,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// The last two data predictions (x0), oldest first.
    model_outputs: [Option<Tensor>; 2],
    lower_order_nums: usize,
}

impl DpmSolverMultistep {
    pub fn new(cfg: &SchedulerConfig, algorithm: DpmAlgorithm, karras: bool) -> Result<Self> {
        let name = "DPMSolverMultistepScheduler";
        if cfg.solver_order.unwrap_or(2) != 2 {
            return Err(Error::msg(format!(
                "scheduler: `solver_order` {} is not supported by the dpmpp_2m samplers \
                 (they are second order)",
                cfg.solver_order.unwrap_or(2)
            )));
        }
        if cfg.thresholding == Some(true) {
            return Err(Error::msg(format!(
                "scheduler: `thresholding` is not supported by {name}"
            )));
        }
        if cfg.rescale_betas_zero_snr == Some(true) {
            return Err(Error::msg(format!(
                "scheduler: `rescale_betas_zero_snr` is not supported by {name}"
            )));
        }
        // diffusers maps the other classes' solver types onto midpoint.
        let solver_type = match cfg.solver_type.as_deref().unwrap_or("midpoint") {
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => {
                return Err(Error::msg(format!(
                    "scheduler: `solver_type` {other:?} is not one of \"midpoint\", \"heun\""
                )))
            }
        };
        let final_sigma_zero = match cfg.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => true,
            "sigma_min" => false,
            other => {
                return Err(Error::msg(format!(
                    "scheduler: `final_sigmas_type` {other:?} is not one of \"zero\", \"sigma_min\""
                )))
            }
        };
        let n = cfg.num_train_timesteps;
        let mut s = DpmSolverMultistep {
            algorithm,
            karras,
            spacing: TimestepSpacing::parse(&cfg.timestep_spacing)?,
            prediction: Prediction::parse(&cfg.prediction_type)?,
            solver_type,
            lower_order_final: cfg.lower_order_final.unwrap_or(true),
            euler_at_final: cfg.euler_at_final.unwrap_or(false),
            final_sigma_zero,
            steps_offset: cfg.steps_offset,
            num_train_timesteps: n,
            sigma_min: cfg.sigma_min,
            sigma_max: cfg.sigma_max,
            train_sigmas: train_sigmas(cfg)?,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: [None, None],
            lower_order_nums: 0,
        };
        s.timesteps = (0..n).rev().map(|t| t as f32).collect();
        s.sigmas = s.train_sigmas.clone();
        Ok(s)
    }

    /// `convert_model_output`: the model's output as a prediction of the clean sample.
    fn data_prediction(&self, model_output: &Tensor, i: usize, sample: &Tensor) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        match self.prediction {
            Prediction::Epsilon => (sample - model_output * sigma_t as f64) / alpha_t as f64,
            Prediction::Sample => model_output.shallow_clone(),
            Prediction::VPrediction => sample * alpha_t as f64 - model_output * sigma_t as f64,
        }
    }
}

impl Scheduler for DpmSolverMultistep {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(n, self.num_train_timesteps)?;
        let train = self.num_train_timesteps;
        let ints = multistep_timesteps(self.spacing, n, train, self.steps_offset);
        let (timesteps, mut sigmas): (Vec<f32>, Vec<f32>) = if self.karras {
            let ts = &self.train_sigmas;
            let sigma_min = self.sigma_min.unwrap_or(ts[0] as f64);
            let sigma_max = self.sigma_max.unwrap_or(ts[ts.len() - 1] as f64);
            // np.log of the float32 table stays float32.
            let log_sigmas: Vec<f32> = ts.iter().map(|s| s.ln()).collect();
            let k = karras(sigma_min, sigma_max, n);
            let t = k
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even() as f32)
                .collect();
            (t, k.iter().map(|&s| s as f32).collect())
        } else {
            let t = ints.iter().map(|&t| t as f32).collect();
            let s = ints
                .iter()
                .map(|&t| interp(&self.train_sigmas, t as f64) as f32)
                .collect();
            (t, s)
        };
        sigmas.push(if self.final_sigma_zero {
            0.0
        } else {
            self.train_sigmas[0]
        });
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs = [None, None];
        self.lower_order_nums = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _step_index: usize) -> Tensor {
        sample.shallow_clone()
    }

    fn stochastic(&self) -> bool {
        self.algorithm == DpmAlgorithm::SdeDpmSolverPp
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let len = self.timesteps.len();
        let last = i == len - 1;
        let lower_order_final = last
            && (self.euler_at_final
                || (self.lower_order_final && len < 15)
                || self.final_sigma_zero);
        let x0 = self.data_prediction(model_output, i, sample);
        self.model_outputs.swap(0, 1);
        self.model_outputs[1] = Some(x0);
        let sample = sample.to_kind(Kind::Float);
        let noise = match self.algorithm {
            DpmAlgorithm::SdeDpmSolverPp => Some(
                noise
                    .expect("dpmpp_2m_sde_karras: every step needs its noise")
                    .to_device(sample.device())
                    .to_kind(Kind::Float),
            ),
            DpmAlgorithm::DpmSolverPp => None,
        };
        let m0 = self.model_outputs[1].as_ref().expect("just stored");
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (_, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let lambda_t = lambda(self.sigmas[i + 1]);
        let lambda_s0 = lambda(self.sigmas[i]);
        let h = lambda_t - lambda_s0;
        let first_order = self.lower_order_nums < 1 || lower_order_final;
        let prev = match (self.algorithm, first_order) {
            (DpmAlgorithm::DpmSolverPp, true) => {
                sample * (sigma_t / sigma_s0) as f64 - m0 * (alpha_t * ((-h).exp() - 1.0)) as f64
            }
            (DpmAlgorithm::SdeDpmSolverPp, true) => {
                let e2h = (-2.0 * h).exp();
                sample * (sigma_t / sigma_s0 * (-h).exp()) as f64
                    + m0 * (alpha_t * (1.0 - e2h)) as f64
                    + noise.expect("sde") * (sigma_t * (1.0 - e2h).sqrt()) as f64
            }
            (algorithm, false) => {
                let m1 = self.model_outputs[0].as_ref().expect("an earlier output");
                let lambda_s1 = lambda(self.sigmas[i - 1]);
                let h_0 = lambda_s0 - lambda_s1;
                let r0 = h_0 / h;
                let d1 = (m0 - m1) * (1.0 / r0) as f64;
                match algorithm {
                    DpmAlgorithm::DpmSolverPp => {
                        let c = alpha_t * ((-h).exp() - 1.0);
                        let base = sample * (sigma_t / sigma_s0) as f64 - m0 * c as f64;
                        match self.solver_type {
                            SolverType::Midpoint => base - d1 * (0.5 * c) as f64,
                            SolverType::Heun => {
                                base + d1 * (alpha_t * (((-h).exp() - 1.0) / h + 1.0)) as f64
                            }
                        }
                    }
                    DpmAlgorithm::SdeDpmSolverPp => {
                        let e2h = (-2.0 * h).exp();
                        let c = alpha_t * (1.0 - e2h);
                        let base =
                            sample * (sigma_t / sigma_s0 * (-h).exp()) as f64 + m0 * c as f64;
                        let with_d1 = match self.solver_type {
                            SolverType::Midpoint => base + d1 * (0.5 * c) as f64,
                            SolverType::Heun => {
                                base + d1 * (alpha_t * ((1.0 - e2h) / (-2.0 * h) + 1.0)) as f64
                            }
                        };
                        with_d1 + noise.expect("sde") * (sigma_t * (1.0 - e2h).sqrt()) as f64
                    }
                }
            }
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        prev.to_kind(model_output.kind())
    }
}
