//! LoKr (LyCORIS), as peft's `LoKrConfig` (with `decompose_both` off): the update is the
//! Kronecker product of a small full factor and a larger one, low-rank when the rank is small
//! next to it,
//!
//! `ΔW = s W1 ⊗ W2`, W1 (out_l x in_m), W2 = W2a W2b (out_k x in_n), s = alpha / r,
//!
//! where `out = out_l out_k` and `in = in_m in_n` split as peft's `factorization` does (near
//! the square root by default, or `factor` and the rest: `adapter.lokr_factor`). W2 is stored
//! whole (`lokr_w2`) when r ≥ max(out_k, in_n) / 2. It starts as peft's does: W1 zero, W2 (or
//! W2a and W2b) Kaiming-uniform.

use std::any::Any;
use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::family::{in_kind, kaiming, leaf, scaled, Family, LayerAdapter};
use crate::error::{Error, Result};
use crate::sdxl::nn::LinearDelta;

/// peft's `factorization`: `dimension = m * n` with m ≤ n near its square root, or m =
/// `factor` when that divides it.
pub fn factorization(dimension: i64, factor: i64) -> (i64, i64) {
    if factor > 0 && dimension % factor == 0 {
        return (factor, dimension / factor);
    }
    let factor = if factor == -1 { dimension } else { factor };
    let (mut m, mut n) = (1, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while dimension % new_m != 0 {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > factor {
            break;
        }
        (m, n) = (new_m, new_n);
    }
    if m > n {
        (n, m)
    } else {
        (m, n)
    }
}

/// The factors' shapes of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shapes {
    /// W1: (out_l, in_m).
    pub w1: [i64; 2],
    /// W2: (out_k, in_n).
    pub w2: [i64; 2],
    /// W2 is stored whole rather than as W2a W2b.
    pub w2_full: bool,
    pub rank: i64,
}

impl Shapes {
    pub fn of(in_dim: i64, out_dim: i64, rank: i64, factor: i64) -> Self {
        let (in_m, in_n) = factorization(in_dim, factor);
        let (out_l, out_k) = factorization(out_dim, factor);
        let w2_full = (rank as f64) >= (out_k.max(in_n) as f64) / 2.0;
        Shapes {
            w1: [out_l, in_m],
            w2: [out_k, in_n],
            w2_full,
            rank,
        }
    }

    /// Trained parameters of a layer of this shape.
    pub fn parameters(&self) -> i64 {
        let w2 = if self.w2_full {
            self.w2[0] * self.w2[1]
        } else {
            self.rank * (self.w2[0] + self.w2[1])
        };
        self.w1[0] * self.w1[1] + w2
    }
}

/// W2, whole or as a low-rank product.
#[derive(Debug)]
pub enum Factor {
    Full(Tensor),
    LowRank(Tensor, Tensor),
}

impl Factor {
    fn matrix(&self) -> Tensor {
        match self {
            Factor::Full(w) => w.shallow_clone(),
            Factor::LowRank(a, b) => a.matmul(b),
        }
    }

    fn size(&self) -> [i64; 2] {
        match self {
            Factor::Full(w) => [w.size()[0], w.size()[1]],
            Factor::LowRank(a, b) => [a.size()[0], b.size()[1]],
        }
    }

    fn tensors(&self, full: &'static str, pair: [&'static str; 2]) -> Vec<(&'static str, Tensor)> {
        match self {
            Factor::Full(w) => vec![(full, w.shallow_clone())],
            Factor::LowRank(a, b) => {
                vec![(pair[0], a.shallow_clone()), (pair[1], b.shallow_clone())]
            }
        }
    }

    fn map(&mut self, f: impl Fn(&Tensor) -> Tensor) {
        match self {
            Factor::Full(w) => *w = f(w),
            Factor::LowRank(a, b) => {
                *a = f(a);
                *b = f(b);
            }
        }
    }
}

#[derive(Debug)]
pub struct LokrAdapter {
    pub w1: Factor,
    pub w2: Factor,
    /// alpha / r
    pub scale: f64,
}

impl LokrAdapter {
    /// A fresh adapter (draws from libtorch's global generator in peft's order).
    pub fn init(in_dim: i64, out_dim: i64, rank: i64, alpha: f64, factor: i64) -> Self {
        let s = Shapes::of(in_dim, out_dim, rank, factor);
        let w1 = Factor::Full(Tensor::zeros(s.w1, (Kind::Float, tch::Device::Cpu)));
        let w2 = if s.w2_full {
            Factor::Full(kaiming(s.w2[0], s.w2[1]))
        } else {
            let a = kaiming(s.w2[0], rank);
            Factor::LowRank(a, kaiming(rank, s.w2[1]))
        };
        LokrAdapter {
            w1,
            w2,
            scale: alpha / rank as f64,
        }
    }

    /// From a file's tensors (`lokr_w1` or `lokr_w1_a`/`_b`, `lokr_w2` or `lokr_w2_a`/`_b`).
    pub fn from_parts(
        parts: &mut HashMap<String, Tensor>,
        rank: i64,
        alpha: f64,
        shown: &str,
    ) -> Result<Self> {
        let mut factor = |full: &str, a: &str, b: &str| -> Result<Factor> {
            match (parts.remove(full), parts.remove(a), parts.remove(b)) {
                (Some(w), None, None) if w.dim() == 2 => Ok(Factor::Full(w)),
                (None, Some(a), Some(b)) if a.dim() == 2 && b.dim() == 2 => {
                    Ok(Factor::LowRank(a, b))
                }
                _ => Err(Error::msg(format!(
                    "layer `{shown}` needs either `{full}` or both `{a}` and `{b}` (2-D)"
                ))),
            }
        };
        let w1 = factor("lokr_w1", "lokr_w1_a", "lokr_w1_b")?;
        let w2 = factor("lokr_w2", "lokr_w2_a", "lokr_w2_b")?;
        Ok(LokrAdapter {
            w1,
            w2,
            scale: alpha / rank as f64,
        })
    }

    /// (in, out) of the layer the factors make.
    pub fn dims(&self) -> (i64, i64) {
        let (a, b) = (self.w1.size(), self.w2.size());
        (a[1] * b[1], a[0] * b[0])
    }

    /// Refuse factors that are not the shapes peft gives this layer.
    pub fn check(&self, want: &Shapes, shown: &str) -> Result<()> {
        let w2_ok = match &self.w2 {
            Factor::Full(w) => want.w2_full && w.size() == want.w2,
            Factor::LowRank(a, b) => {
                !want.w2_full
                    && a.size() == [want.w2[0], want.rank]
                    && b.size() == [want.rank, want.w2[1]]
            }
        };
        let w1_ok = matches!(&self.w1, Factor::Full(w) if w.size() == want.w1);
        if w1_ok && w2_ok {
            return Ok(());
        }
        Err(Error::msg(format!(
            "layer `{shown}`: LoKr factors {:?} and {:?} are not the shapes of rank {} here \
             (W1 {:?}, W2 {:?}{})",
            self.w1.size(),
            self.w2.size(),
            want.rank,
            want.w1,
            want.w2,
            if want.w2_full { " whole" } else { " low-rank" }
        )))
    }

    /// `s W1 ⊗ W2` (out x in).
    pub fn delta_weight(&self) -> Tensor {
        scaled(self.w1.matrix().kron(&self.w2.matrix()), self.scale)
    }
}

impl LinearDelta for LokrAdapter {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = match &self.w2 {
            Factor::Full(w) | Factor::LowRank(w, _) => w.kind(),
        };
        in_kind(x, kind).linear(&self.delta_weight(), None::<Tensor>)
    }

    fn delta_weight(&self, _w0: &Tensor) -> Tensor {
        LokrAdapter::delta_weight(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl LayerAdapter for LokrAdapter {
    fn family(&self) -> Family {
        Family::Lokr
    }

    fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut v = self.w1.tensors("lokr_w1", ["lokr_w1_a", "lokr_w1_b"]);
        v.extend(self.w2.tensors("lokr_w2", ["lokr_w2_a", "lokr_w2_b"]));
        v
    }

    fn trained(&self) -> Vec<(&'static str, Tensor)> {
        self.tensors()
    }

    fn set_trainable(&mut self, on: bool) {
        self.w1.map(|t| leaf(t, on));
        self.w2.map(|t| leaf(t, on));
    }

    fn to_device(&mut self, device: tch::Device) {
        self.w1.map(|t| t.to_device(device));
        self.w2.map(|t| t.to_device(device));
    }

    fn rescale(&mut self, s: f64) {
        self.scale *= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factorization_is_peft_s() {
        // The examples of peft's docstring, and SDXL's attention widths.
        assert_eq!(factorization(256, -1), (16, 16));
        assert_eq!(factorization(128, -1), (8, 16));
        assert_eq!(factorization(127, -1), (1, 127));
        assert_eq!(factorization(128, 4), (4, 32));
        assert_eq!(factorization(640, -1), (20, 32));
        assert_eq!(factorization(1280, -1), (32, 40));
        assert_eq!(factorization(2048, -1), (32, 64));
        assert_eq!(factorization(2048, 8), (8, 256));
    }
}
