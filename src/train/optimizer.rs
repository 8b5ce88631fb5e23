//! AdamW written with tensor ops, step for step as `torch.optim.AdamW` (single-tensor path),
//! so that its state can be saved and restored: a resumed run continues exactly.

use std::collections::HashMap;

use tch::Tensor;

use crate::config::Adam;
use crate::error::{Error, Result};

pub struct AdamW {
    pub hp: Adam,
    /// Named parameters (shallow clones of the adapters' tensors).
    pub params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Optimizer steps taken.
    pub step: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>, hp: Adam) -> Self {
        let exp_avg = params
            .iter()
            .map(|(_, p)| p.zeros_like().detach())
            .collect();
        let exp_avg_sq = params
            .iter()
            .map(|(_, p)| p.zeros_like().detach())
            .collect();
        AdamW {
            hp,
            params,
            exp_avg,
            exp_avg_sq,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Scale gradients so that their global L2 norm is at most `max_norm`
    /// (`torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.norm())
            .collect();
        if norms.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(&norms, 0).norm();
        // As torch: coefficient clamped at 1 and applied unconditionally (x * 1 is exact).
        let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.g_mul_(&coef);
            }
        }
        total.double_value(&[])
    }

    /// One AdamW update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let Adam {
            beta1,
            beta2,
            weight_decay,
            eps,
        } = self.hp;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (i, (_, p)) in self.params.iter_mut().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            // The operations of torch's `_single_tensor_adamw`, in its order.
            p.copy_(&(&*p * (1.0 - lr * weight_decay)));
            let m = &self.exp_avg[i];
            let m_new = m + (&g - m) * (1.0 - beta1); // lerp_ with weight < 0.5
            self.exp_avg[i].copy_(&m_new);
            let v = &self.exp_avg_sq[i];
            let v_new = v * beta2 + &g * &g * (1.0 - beta2);
            self.exp_avg_sq[i].copy_(&v_new);
            let denom = self.exp_avg_sq[i].sqrt() / bc2_sqrt + eps;
            p.copy_(&(&*p + &self.exp_avg[i] / denom * (-step_size)));
        }
    }

    /// State to save: `exp_avg.<name>` and `exp_avg_sq.<name>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), self.exp_avg[i].shallow_clone()));
            out.push((
                format!("exp_avg_sq.{name}"),
                self.exp_avg_sq[i].shallow_clone(),
            ));
        }
        out
    }

    /// Restore state written by `state`.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (key, slot) in [
                ("exp_avg", &mut self.exp_avg[i]),
                ("exp_avg_sq", &mut self.exp_avg_sq[i]),
            ] {
                let full = format!("{key}.{name}");
                let t = tensors.get(&full).ok_or_else(|| {
                    Error::msg(format!("checkpoint lacks optimizer state `{full}`"))
                })?;
                if t.size() != p.size() {
                    return Err(Error::msg(format!(
                        "checkpoint optimizer state `{full}` has the wrong shape"
                    )));
                }
                slot.copy_(&t.to_device(p.device()).to_kind(p.kind()));
            }
        }
        self.step = step;
        Ok(())
    }
}
