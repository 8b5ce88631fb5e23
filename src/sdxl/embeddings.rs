//! Timestep embeddings (diffusers `models/embeddings.py`): the sinusoidal projection
//! (`get_timestep_embedding`, `Timesteps`) and the MLP on top of it (`TimestepEmbedding`).

use tch::{Kind, Tensor};

use super::nn::Linear;
use super::weights::Weights;
use crate::error::Result;

/// `Timesteps` uses the DDPM default period.
const MAX_PERIOD: f64 = 10000.0;

/// Sinusoidal embeddings of a 1-D tensor of (possibly fractional) timesteps: `(N, dim)`, in f32
/// whatever the input's dtype, like diffusers (callers cast to the model's dtype afterwards).
///
/// `flip_sin_to_cos` puts the cosines first; `shift` is diffusers' `downscale_freq_shift`.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Tensor {
    assert_eq!(timesteps.dim(), 1, "timesteps must be a 1-D tensor");
    let half = dim / 2;
    // The same operation order as diffusers, so the f32 roundings agree.
    let exponent = Tensor::arange(half, (Kind::Float, timesteps.device())) * (-MAX_PERIOD.ln())
        / (half as f64 - shift);
    let freqs = exponent.exp();
    let args = timesteps.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let (sin, cos) = (args.sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1, 0, 0])
    } else {
        emb
    }
}

/// `linear_1 -> SiLU -> linear_2`: lifts the sinusoidal timestep (or the SDXL `text_time`
/// conditioning vector) to the width of the time embedding the resnets consume.
#[derive(Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(w: &Weights, in_dim: i64, time_embed_dim: i64) -> Result<Self> {
        Ok(TimestepEmbedding {
            linear_1: Linear::new(&w.pp("linear_1"), in_dim, time_embed_dim, true)?,
            linear_2: Linear::new(&w.pp("linear_2"), time_embed_dim, time_embed_dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}
