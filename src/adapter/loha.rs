//! LoHa (Hyeon-Woo et al., "FedPara"; LyCORIS), as peft's `LoHaConfig`: the update is the
//! Hadamard (element-wise) product of two rank-r products,
//!
//! `ΔW = s (W1a W1b) ⊙ (W2a W2b)`, W1a, W2a (out x r), W1b, W2b (r x in), s = alpha / r,
//!
//! whose rank reaches r², from the parameters of a rank-2r LoRA. It starts as peft's does:
//! W1a, W1b, W2a Kaiming-uniform, W2b zero (so ΔW = 0).

use std::any::Any;

use tch::{Kind, Tensor};

use super::family::{in_kind, kaiming, leaf, scaled, Family, LayerAdapter};
use crate::sdxl::nn::LinearDelta;

#[derive(Debug)]
pub struct LohaAdapter {
    pub w1_a: Tensor,
    pub w1_b: Tensor,
    pub w2_a: Tensor,
    pub w2_b: Tensor,
    /// alpha / r
    pub scale: f64,
}

impl LohaAdapter {
    /// A fresh adapter (draws from libtorch's global generator in peft's order).
    pub fn init(in_dim: i64, out_dim: i64, rank: i64, alpha: f64) -> Self {
        let w1_a = kaiming(out_dim, rank);
        let w1_b = kaiming(rank, in_dim);
        let w2_a = kaiming(out_dim, rank);
        let w2_b = Tensor::zeros([rank, in_dim], (Kind::Float, tch::Device::Cpu));
        Self::from_tensors(w1_a, w1_b, w2_a, w2_b, rank, alpha)
    }

    pub fn from_tensors(
        w1_a: Tensor,
        w1_b: Tensor,
        w2_a: Tensor,
        w2_b: Tensor,
        rank: i64,
        alpha: f64,
    ) -> Self {
        LohaAdapter {
            w1_a,
            w1_b,
            w2_a,
            w2_b,
            scale: alpha / rank as f64,
        }
    }

    /// `s (W1a W1b) ⊙ (W2a W2b)` (out x in).
    pub fn delta_weight(&self) -> Tensor {
        let w = self.w1_a.matmul(&self.w1_b) * self.w2_a.matmul(&self.w2_b);
        scaled(w, self.scale)
    }
}

impl LinearDelta for LohaAdapter {
    fn forward(&self, x: &Tensor) -> Tensor {
        in_kind(x, self.w1_a.kind()).linear(&self.delta_weight(), None::<Tensor>)
    }

    fn delta_weight(&self, _w0: &Tensor) -> Tensor {
        LohaAdapter::delta_weight(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl LayerAdapter for LohaAdapter {
    fn family(&self) -> Family {
        Family::Loha
    }

    fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        vec![
            ("hada_w1_a", self.w1_a.shallow_clone()),
            ("hada_w1_b", self.w1_b.shallow_clone()),
            ("hada_w2_a", self.w2_a.shallow_clone()),
            ("hada_w2_b", self.w2_b.shallow_clone()),
        ]
    }

    fn trained(&self) -> Vec<(&'static str, Tensor)> {
        self.tensors()
    }

    fn set_trainable(&mut self, on: bool) {
        for t in [
            &mut self.w1_a,
            &mut self.w1_b,
            &mut self.w2_a,
            &mut self.w2_b,
        ] {
            *t = leaf(t, on);
        }
    }

    fn to_device(&mut self, device: tch::Device) {
        for t in [
            &mut self.w1_a,
            &mut self.w1_b,
            &mut self.w2_a,
            &mut self.w2_b,
        ] {
            *t = t.to_device(device);
        }
    }

    fn rescale(&mut self, s: f64) {
        self.scale *= s;
    }
}
