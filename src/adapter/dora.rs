//! DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"), as peft's `use_dora`: the
//! adapted weight is `m ⊙ (W0 + s B A) / ||W0 + s B A||`, row by row, with a learned magnitude
//! m per output channel (`lora_magnitude_vector`, starting at the rows' norms of W0). The norm
//! is treated as a constant in the backward pass (the paper's section 4.3, as peft does), so a
//! layer computes
//!
//! `y = W0 x + b + (m / n - 1) ⊙ W0 x + (m / n) ⊙ s B A x`, with n = ||W0 + s B A|| detached.

use std::any::Any;

use tch::{Kind, Tensor};

use super::family::{in_kind, leaf, Family, LayerAdapter};
use super::lowrank::LowRankAdapter;
use crate::sdxl::nn::LinearDelta;

#[derive(Debug)]
pub struct DoraAdapter {
    /// A, B and the scale (no mixer).
    pub lora: LowRankAdapter,
    /// (out): the learned magnitude of each output channel.
    pub magnitude: Tensor,
}

/// The rows' L2 norms of `W0 + s B A` (out), in f32, without gradient.
pub fn weight_norm(w0: &Tensor, lora: &LowRankAdapter) -> Tensor {
    let _guard = tch::no_grad_guard();
    let w = in_kind(&w0.detach(), Kind::Float).to_device(lora.a.device());
    let lw = lora.b.detach().matmul(&lora.a.detach());
    let w = w + lw * lora.scale;
    w.norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
}

impl DoraAdapter {
    pub fn new(lora: LowRankAdapter, magnitude: Tensor) -> Self {
        DoraAdapter { lora, magnitude }
    }
}

impl LinearDelta for DoraAdapter {
    /// The low-rank branch alone (`output` is what a layer computes).
    fn forward(&self, x: &Tensor) -> Tensor {
        self.lora.forward(x)
    }

    fn output(&self, x: &Tensor, y: Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let kind = y.kind();
        let norm = weight_norm(weight, &self.lora);
        let mag_norm_scale = (&self.magnitude / norm).unsqueeze(0);
        let yf = in_kind(&y, Kind::Float);
        let base = match bias {
            Some(b) => &yf - in_kind(b, Kind::Float),
            None => yf.shallow_clone(),
        };
        let lora = self.lora.forward(x);
        let branch = (&mag_norm_scale - 1.0) * base + mag_norm_scale * lora;
        let sum = yf + branch;
        if sum.kind() == kind {
            sum
        } else {
            sum.to_kind(kind)
        }
    }

    /// `m ⊙ (W0 + s B A) / ||W0 + s B A|| - W0`, in f32.
    fn delta_weight(&self, w0: &Tensor) -> Tensor {
        let w0 = in_kind(&w0.detach(), Kind::Float).to_device(self.lora.a.device());
        let adapted = &w0 + self.lora.delta_weight();
        let norm = weight_norm(&w0, &self.lora);
        (&self.magnitude / norm).unsqueeze(1) * adapted - w0
    }

    fn reads_base(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl LayerAdapter for DoraAdapter {
    fn family(&self) -> Family {
        Family::Dora
    }

    fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut v = LayerAdapter::tensors(&self.lora);
        v.push(("lora_magnitude_vector", self.magnitude.shallow_clone()));
        v
    }

    fn trained(&self) -> Vec<(&'static str, Tensor)> {
        self.tensors()
    }

    fn set_trainable(&mut self, on: bool) {
        self.lora.set_trainable(on);
        self.magnitude = leaf(&self.magnitude, on);
    }

    fn to_device(&mut self, device: tch::Device) {
        self.lora.to(device);
        self.magnitude = self.magnitude.to_device(device);
    }

    /// Scales the direction's update, as peft's adapter scale does for DoRA.
    fn rescale(&mut self, s: f64) {
        self.lora.scale *= s;
    }
}
