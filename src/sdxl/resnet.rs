//! Residual blocks and resampling layers (diffusers `models/resnet.py`, `downsampling.py`,
//! `upsampling.py`), shared by the UNet and the VAE.

use tch::Tensor;

use super::nn::{Conv2d, GroupNorm, Linear};
use super::weights::Weights;
use crate::error::Result;

/// How a [`ResnetBlock2D`] is shaped. `new` gives diffusers' defaults, except that there is
/// no time embedding unless `temb_channels` is set (the UNet sets it, the VAE does not).
#[derive(Debug, Clone, Copy)]
pub struct ResnetBlock2DConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    /// Width of the time embedding; `None` builds no `time_emb_proj`.
    pub temb_channels: Option<i64>,
    pub groups: i64,
    /// Groups of `norm2`; `None` means `groups`.
    pub groups_out: Option<i64>,
    pub eps: f64,
    /// The output is divided by this (the UNet mid block's `mid_block_scale_factor`).
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    pub fn new(in_channels: i64, out_channels: i64) -> Self {
        ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels: None,
            groups: 32,
            groups_out: None,
            eps: 1e-6,
            output_scale_factor: 1.0,
        }
    }
}

/// `norm1 -> SiLU -> conv1 (+ time_emb_proj(SiLU(temb))) -> norm2 -> SiLU -> conv2`, added to
/// the input (through a 1x1 `conv_shortcut` when the channel count changes).
#[derive(Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(w: &Weights, cfg: &ResnetBlock2DConfig) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(Linear::new(&w.pp("time_emb_proj"), t, cout, true)?),
            None => None,
        };
        let conv_shortcut = if cin != cout {
            Some(Conv2d::new(&w.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
        } else {
            None
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::new(&w.pp("norm1"), cfg.groups, cin, cfg.eps)?,
            conv1: Conv2d::new(&w.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj,
            norm2: GroupNorm::new(
                &w.pp("norm2"),
                cfg.groups_out.unwrap_or(cfg.groups),
                cout,
                cfg.eps,
            )?,
            conv2: Conv2d::new(&w.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `temb` is `(B, temb_channels)`; it is ignored by a block built without a time embedding.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => h + proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1),
            _ => h,
        };
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x.shallow_clone(),
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Halves the resolution with a stride-2 3x3 convolution (`conv`). With `padding` 0 the input is
/// first padded by one on the right and bottom only, as diffusers does (the VAE encoder).
#[derive(Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
    pub padding: i64,
}

impl Downsample2D {
    pub fn new(w: &Weights, channels: i64, out_channels: i64, padding: i64) -> Result<Self> {
        Ok(Downsample2D {
            conv: Conv2d::new(&w.pp("conv"), channels, out_channels, 3, 2, padding)?,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.padding == 0 {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour upsampling, then a 3x3 convolution (`conv`).
#[derive(Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn new(w: &Weights, channels: i64, out_channels: i64) -> Result<Self> {
        Ok(Upsample2D {
            conv: Conv2d::new(&w.pp("conv"), channels, out_channels, 3, 1, 1)?,
        })
    }

    /// Doubles height and width, or resizes to `size` (height, width): the UNet passes the size
    /// of the matching skip connection when the latent is not a multiple of its total stride.
    pub fn forward(&self, x: &Tensor, size: Option<[i64; 2]>) -> Tensor {
        let up = match size {
            Some(size) => x.upsample_nearest2d(size, None, None),
            None => {
                let (h, w) = (x.size()[2], x.size()[3]);
                x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0)
            }
        };
        self.conv.forward(&up)
    }
}
