//! diffusers `UniPCMultistepScheduler`: UniPC (Zhao et al. 2023), a multistep predictor
//! (UniP) whose result is corrected (UniC) with the model's output at the next step, in data
//! prediction (`predict_x0`), `solver_type` bh2, second order, as `from_config` configures it
//! from SDXL's config. The first step and the last are first order (`lower_order_final`).

use tch::{Kind, Tensor};

use super::config::SchedulerConfig;
use super::euler::{Prediction, TimestepSpacing};
use super::sampler::Scheduler;
use super::sigmas::{
    alpha_sigma, check_steps, interp, karras, lambda, multistep_timesteps, sigma_to_t, train_sigmas,
};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Bh1,
    Bh2,
}

#[derive(Debug)]
pub struct UniPcMultistep {
    spacing: TimestepSpacing,
    prediction: Prediction,
    solver_type: SolverType,
    solver_order: usize,
    lower_order_final: bool,
    karras: bool,
    final_sigma_zero: bool,
    disable_corrector: Vec<i64>,
    steps_offset: i64,
    num_train_timesteps: i64,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// The last `solver_order` data predictions, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    last_sample: Option<Tensor>,
    this_order: usize,
}

impl UniPcMultistep {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        let name = "UniPCMultistepScheduler";
        let solver_order = cfg.solver_order.unwrap_or(2);
        if !(1..=2).contains(&solver_order) {
            return Err(Error::msg(format!(
                "scheduler: `solver_order` {solver_order} is not supported by the unipc \
                 sampler (1 or 2)"
            )));
        }
        for (field, on) in [
            ("thresholding", cfg.thresholding == Some(true)),
            (
                "rescale_betas_zero_snr",
                cfg.rescale_betas_zero_snr == Some(true),
            ),
            ("predict_x0: false", cfg.predict_x0 == Some(false)),
        ] {
            if on {
                return Err(Error::msg(format!(
                    "scheduler: `{field}` is not supported by {name}"
                )));
            }
        }
        // diffusers maps DPM-Solver's solver types onto bh2.
        let solver_type = match cfg.solver_type.as_deref().unwrap_or("bh2") {
            "bh1" => SolverType::Bh1,
            "bh2" | "midpoint" | "heun" | "logrho" => SolverType::Bh2,
            other => {
                return Err(Error::msg(format!(
                    "scheduler: `solver_type` {other:?} is not one of \"bh1\", \"bh2\""
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
        let train_sigmas = train_sigmas(cfg)?;
        Ok(UniPcMultistep {
            spacing: TimestepSpacing::parse(&cfg.timestep_spacing)?,
            prediction: Prediction::parse(&cfg.prediction_type)?,
            solver_type,
            solver_order: solver_order as usize,
            lower_order_final: cfg.lower_order_final.unwrap_or(true),
            karras: cfg.use_karras_sigmas.unwrap_or(false),
            final_sigma_zero,
            disable_corrector: cfg.disable_corrector.clone().unwrap_or_default(),
            steps_offset: cfg.steps_offset,
            num_train_timesteps: n,
            sigma_min: cfg.sigma_min,
            sigma_max: cfg.sigma_max,
            timesteps: (0..n).rev().map(|t| t as f32).collect(),
            sigmas: train_sigmas.clone(),
            train_sigmas,
            model_outputs: (0..solver_order).map(|_| None).collect(),
            lower_order_nums: 0,
            last_sample: None,
            this_order: 1,
        })
    }

    fn data_prediction(&self, model_output: &Tensor, i: usize, sample: &Tensor) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        match self.prediction {
            Prediction::Epsilon => (sample - model_output * sigma_t as f64) / alpha_t as f64,
            Prediction::Sample => model_output.shallow_clone(),
            Prediction::VPrediction => sample * alpha_t as f64 - model_output * sigma_t as f64,
        }
    }

    /// hh = -h, h*phi_1(hh) = expm1(hh), B(h) and the first two b_i of the bh solvers.
    fn coefficients(&self, h: f32) -> (f32, f32, [f32; 2]) {
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial_i = 1.0f32;
        let mut b = [0.0f32; 2];
        for (i, bi) in b.iter_mut().enumerate() {
            *bi = h_phi_k * factorial_i / b_h;
            factorial_i *= (i + 2) as f32;
            h_phi_k = h_phi_k / hh - 1.0 / factorial_i;
        }
        (h_phi_1, b_h, b)
    }

    /// `multistep_uni_p_bh_update`: predict the sample at sigma[i + 1].
    fn predictor(&self, i: usize, x: &Tensor, order: usize) -> Tensor {
        let m0 = self.model_outputs[self.solver_order - 1]
            .as_ref()
            .expect("stored");
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (_, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let lambda_s0 = lambda(self.sigmas[i]);
        let h = lambda(self.sigmas[i + 1]) - lambda_s0;
        let (h_phi_1, b_h, _) = self.coefficients(h);
        let x_t_ = x * (sigma_t / sigma_s0) as f64 - m0 * (alpha_t * h_phi_1) as f64;
        if order == 2 {
            let m1 = self.model_outputs[0].as_ref().expect("an earlier output");
            let rk = (lambda(self.sigmas[i - 1]) - lambda_s0) / h;
            let d1 = (m1 - m0) / rk as f64;
            // rhos_p = [0.5] for order 2.
            let pred_res = d1 * 0.5;
            x_t_ - pred_res * (alpha_t * b_h) as f64
        } else {
            // pred_res = 0: diffusers still subtracts alpha_t * B_h * 0.
            x_t_
        }
    }

    /// `multistep_uni_c_bh_update`: correct the sample at sigma[i] with the model's output
    /// there (`model_t`, a data prediction).
    fn corrector(&self, i: usize, model_t: &Tensor, x: &Tensor, order: usize) -> Tensor {
        let m0 = self.model_outputs[self.solver_order - 1]
            .as_ref()
            .expect("stored");
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        let (_, sigma_s0) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_s0 = lambda(self.sigmas[i - 1]);
        let h = lambda(self.sigmas[i]) - lambda_s0;
        let (h_phi_1, b_h, b) = self.coefficients(h);
        let x_t_ = x * (sigma_t / sigma_s0) as f64 - m0 * (alpha_t * h_phi_1) as f64;
        let d1_t = model_t - m0;
        let corrected = if order == 1 {
            // rhos_c = [0.5]
            d1_t * 0.5
        } else {
            let m1 = self.model_outputs[0].as_ref().expect("an earlier output");
            let rk = (lambda(self.sigmas[i - 2]) - lambda_s0) / h;
            let d1 = (m1 - m0) / rk as f64;
            // rhos_c = solve([[1, 1], [rk, 1]], b[..2]).
            let rho0 = (b[0] - b[1]) / (1.0 - rk);
            let rho1 = b[0] - rho0;
            d1 * rho0 as f64 + d1_t * rho1 as f64
        };
        x_t_ - corrected * (alpha_t * b_h) as f64
    }
}

impl Scheduler for UniPcMultistep {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(n, self.num_train_timesteps)?;
        let ints =
            multistep_timesteps(self.spacing, n, self.num_train_timesteps, self.steps_offset);
        let (timesteps, mut sigmas): (Vec<f32>, Vec<f32>) = if self.karras {
            let ts = &self.train_sigmas;
            let sigma_min = self.sigma_min.unwrap_or(ts[0] as f64);
            let sigma_max = self.sigma_max.unwrap_or(ts[ts.len() - 1] as f64);
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
        let last = if self.final_sigma_zero {
            0.0
        } else if self.karras {
            sigmas[sigmas.len() - 1]
        } else {
            self.train_sigmas[0]
        };
        sigmas.push(last);
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs = (0..self.solver_order).map(|_| None).collect();
        self.lower_order_nums = 0;
        self.last_sample = None;
        self.this_order = 1;
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

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Tensor {
        let use_corrector = i > 0
            && !self.disable_corrector.contains(&(i as i64 - 1))
            && self.last_sample.is_some();
        let converted = self.data_prediction(model_output, i, sample);
        let sample = if use_corrector {
            let last = self.last_sample.as_ref().expect("checked");
            self.corrector(i, &converted, last, self.this_order)
        } else {
            sample.shallow_clone()
        };
        self.model_outputs.rotate_left(1);
        let k = self.solver_order - 1;
        self.model_outputs[k] = Some(converted);
        let this_order = if self.lower_order_final {
            self.solver_order.min(self.timesteps.len() - i)
        } else {
            self.solver_order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        let prev = self.predictor(i, &sample, self.this_order);
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        prev.to_kind(Kind::Float).to_kind(model_output.kind())
    }
}
