//! SDXL's VAE: diffusers `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`, `vae.py`).
//!
//! Images in [-1, 1] go to a diagonal Gaussian over latents with 8x fewer pixels per side, and
//! latents go back to images. Tensor names are those of diffusers' state dict
//! (`encoder.down_blocks.0.resnets.0.norm1.weight`, `decoder.up_blocks.3.resnets.2.conv2.bias`,
//! `quant_conv.weight`, ...).
//!
//! As in diffusers, the VAE's blocks are the UNet's: [`ResnetBlock2D`], [`Downsample2D`] and
//! [`Upsample2D`] from `resnet.rs` (built without a time embedding, eps 1e-6, the downsampler
//! with padding 0 and its asymmetric pad) and the mid block's [`Attention`] from
//! `attention.rs` (one head, biased projections).
//!
//! The SDXL VAE overflows in fp16 (`force_upcast` in its config): build it with f32 weights.
//! Inputs are cast to the weights' kind, so other kinds work too where the numbers allow.

use tch::{Kind, Tensor};

use super::attention::Attention;
use super::config::VaeConfig;
use super::nn::{Conv2d, GroupNorm};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};
use super::weights::Weights;
use crate::error::{Error, Result};

/// Every norm in the VAE (resnets, mid-block attention, `conv_norm_out`) uses this epsilon,
/// hard-coded in diffusers' `Encoder` and `Decoder` rather than taken from the config.
const VAE_EPS: f64 = 1e-6;

/// The posterior `q(z | x)`: diffusers `DiagonalGaussianDistribution`.
#[derive(Debug)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers does, so `std` neither underflows nor overflows.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Split the encoder's moments (B, 2C, h, w) into mean and log-variance along channels.
    pub fn from_moments(moments: &Tensor) -> Self {
        let parts = moments.chunk(2, 1);
        let mean = parts[0].shallow_clone();
        let logvar = parts[1].clamp(-30.0, 20.0);
        DiagonalGaussian { mean, logvar }
    }

    pub fn std(&self) -> Tensor {
        (&self.logvar * 0.5).exp()
    }

    /// A draw `mean + std * noise` with caller-supplied standard normal `noise` (diffusers
    /// draws it itself from a generator; taking it as input keeps the draw reproducible).
    pub fn sample(&self, noise: &Tensor) -> Tensor {
        &self.mean + self.std() * noise.to_kind(self.mean.kind())
    }

    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }
}

/// A resnet as diffusers' `Encoder` and `Decoder` build it: the shared [`ResnetBlock2D`] with
/// no time embedding, `VAE_EPS`, `norm_num_groups` groups and output scale 1.
fn resnet(w: &Weights, in_ch: i64, out_ch: i64, groups: i64) -> Result<ResnetBlock2D> {
    let cfg = ResnetBlock2DConfig {
        temb_channels: None,
        groups,
        eps: VAE_EPS,
        output_scale_factor: 1.0,
        ..ResnetBlock2DConfig::new(in_ch, out_ch)
    };
    ResnetBlock2D::new(w, &cfg)
}

/// The `layers` resnets of a down-encoder or up-decoder block (`resnets.{i}`): the first
/// takes `in_ch`, all give `out_ch`.
fn block_resnets(
    w: &Weights,
    in_ch: i64,
    out_ch: i64,
    layers: i64,
    groups: i64,
) -> Result<Vec<ResnetBlock2D>> {
    (0..layers)
        .map(|i| {
            let c = if i == 0 { in_ch } else { out_ch };
            resnet(&w.pp("resnets").pp(i), c, out_ch, groups)
        })
        .collect()
}

fn run_resnets(resnets: &[ResnetBlock2D], x: &Tensor) -> Tensor {
    resnets
        .iter()
        .fold(x.shallow_clone(), |h, r| r.forward(&h, None))
}

/// The mid block's spatial self-attention: diffusers `Attention` built with
/// `_from_deprecated_attn_block=True`, that is the shared [`Attention`] with one head over all
/// channels and biased projections, a group norm in front and the input added back (output
/// rescale 1).
#[derive(Debug)]
struct SpatialSelfAttention {
    group_norm: GroupNorm,
    attn: Attention,
}

impl SpatialSelfAttention {
    fn new(w: &Weights, channels: i64, groups: i64) -> Result<Self> {
        Ok(SpatialSelfAttention {
            group_norm: GroupNorm::new(&w.pp("group_norm"), groups, channels, VAE_EPS)?,
            attn: Attention::new(w, channels, None, 1, channels, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("VAE attention input is (B, C, H, W)");
        // Group norm over (B, C, H*W) equals group norm over (B, C, H, W): normalise first,
        // then flatten the pixels into a sequence of C-dimensional tokens.
        let tokens = self
            .group_norm
            .forward(x)
            .view([b, c, h * w])
            .transpose(1, 2);
        let out = self.attn.forward(&tokens, None);
        out.transpose(-1, -2).reshape([b, c, h, w]) + x
    }
}

/// diffusers `UNetMidBlock2D` as the VAE builds it: resnet, (attention, resnet).
#[derive(Debug)]
struct UNetMidBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<SpatialSelfAttention>,
}

impl UNetMidBlock2D {
    fn new(w: &Weights, channels: i64, groups: i64, add_attention: bool) -> Result<Self> {
        let r = w.pp("resnets");
        let resnets = vec![
            resnet(&r.pp(0), channels, channels, groups)?,
            resnet(&r.pp(1), channels, channels, groups)?,
        ];
        let attention = if add_attention {
            Some(SpatialSelfAttention::new(
                &w.pp("attentions").pp(0),
                channels,
                groups,
            )?)
        } else {
            None
        };
        Ok(UNetMidBlock2D { resnets, attention })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.resnets[0].forward(x, None);
        if let Some(a) = &self.attention {
            h = a.forward(&h);
        }
        self.resnets[1].forward(&h, None)
    }
}

/// diffusers `DownEncoderBlock2D`: resnets, then an optional stride-2 downsampler with
/// `downsample_padding` 0 (the asymmetric right-and-bottom pad of the original LDM layout).
#[derive(Debug)]
struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    fn new(
        w: &Weights,
        in_ch: i64,
        out_ch: i64,
        layers: i64,
        groups: i64,
        add_downsample: bool,
    ) -> Result<Self> {
        // Built first, as diffusers registers them (the order seeded random weights follow).
        let resnets = block_resnets(w, in_ch, out_ch, layers, groups)?;
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                &w.pp("downsamplers").pp(0),
                out_ch,
                out_ch,
                0,
            )?)
        } else {
            None
        };
        Ok(DownEncoderBlock2D {
            resnets,
            downsampler,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = run_resnets(&self.resnets, x);
        match &self.downsampler {
            Some(d) => d.forward(&h),
            None => h,
        }
    }
}

/// diffusers `UpDecoderBlock2D`: resnets, then an optional nearest-x2 upsampler.
#[derive(Debug)]
struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    fn new(
        w: &Weights,
        in_ch: i64,
        out_ch: i64,
        layers: i64,
        groups: i64,
        add_upsample: bool,
    ) -> Result<Self> {
        // Built first, as diffusers registers them (the order seeded random weights follow).
        let resnets = block_resnets(w, in_ch, out_ch, layers, groups)?;
        let upsampler = if add_upsample {
            Some(Upsample2D::new(&w.pp("upsamplers").pp(0), out_ch, out_ch)?)
        } else {
            None
        };
        Ok(UpDecoderBlock2D { resnets, upsampler })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = run_resnets(&self.resnets, x);
        match &self.upsampler {
            Some(u) => u.forward(&h, None),
            None => h,
        }
    }
}

/// diffusers `Encoder` (with `double_z`: it outputs mean and log-variance).
#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(w: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let last = *ch.last().expect("validated non-empty");
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut out_ch = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = c;
            let is_final = i == ch.len() - 1;
            down_blocks.push(DownEncoderBlock2D::new(
                &w.pp("down_blocks").pp(i),
                in_ch,
                out_ch,
                cfg.layers_per_block,
                groups,
                !is_final,
            )?);
        }
        Ok(Encoder {
            conv_in: Conv2d::new(&w.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block: UNetMidBlock2D::new(
                &w.pp("mid_block"),
                last,
                groups,
                cfg.mid_block_add_attention,
            )?,
            conv_norm_out: GroupNorm::new(&w.pp("conv_norm_out"), groups, last, VAE_EPS)?,
            conv_out: Conv2d::new(&w.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for b in &self.down_blocks {
            h = b.forward(&h);
        }
        let h = self.mid_block.forward(&h);
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// diffusers `Decoder` (group norm, no spatial norm).
#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(w: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let groups = cfg.norm_num_groups;
        let reversed: Vec<i64> = cfg.block_out_channels.iter().rev().copied().collect();
        let first = cfg.block_out_channels[0];
        let mut up_blocks = Vec::with_capacity(reversed.len());
        let mut out_ch = reversed[0];
        for (i, &c) in reversed.iter().enumerate() {
            let prev = out_ch;
            out_ch = c;
            let is_final = i == reversed.len() - 1;
            // The decoder has one resnet more per block than the encoder.
            up_blocks.push(UpDecoderBlock2D::new(
                &w.pp("up_blocks").pp(i),
                prev,
                out_ch,
                cfg.layers_per_block + 1,
                groups,
                !is_final,
            )?);
        }
        Ok(Decoder {
            conv_in: Conv2d::new(&w.pp("conv_in"), cfg.latent_channels, reversed[0], 3, 1, 1)?,
            mid_block: UNetMidBlock2D::new(
                &w.pp("mid_block"),
                reversed[0],
                groups,
                cfg.mid_block_add_attention,
            )?,
            up_blocks,
            conv_norm_out: GroupNorm::new(&w.pp("conv_norm_out"), groups, first, VAE_EPS)?,
            conv_out: Conv2d::new(&w.pp("conv_out"), first, cfg.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z));
        for b in &self.up_blocks {
            h = b.forward(&h);
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// diffusers `AutoencoderKL` (no tiling or slicing: SDXL at 1024 px fits on one GPU).
#[derive(Debug)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    scaling_factor: f64,
    shift_factor: Option<f64>,
    kind: Kind,
}

impl AutoencoderKL {
    /// Build from the component root (`w` at `vae`, names `encoder.*`, `decoder.*`, ...).
    pub fn new(w: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        if ch.is_empty() {
            return Err(Error::msg("vae: `block_out_channels` is empty"));
        }
        if let Some(&c) = ch.iter().find(|&&c| c % cfg.norm_num_groups != 0) {
            return Err(Error::msg(format!(
                "vae: {c} channels do not split into `norm_num_groups` {} groups",
                cfg.norm_num_groups
            )));
        }
        let l2 = 2 * cfg.latent_channels;
        let quant_conv = if cfg.use_quant_conv {
            Some(Conv2d::new(&w.pp("quant_conv"), l2, l2, 1, 1, 0)?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            let l = cfg.latent_channels;
            Some(Conv2d::new(&w.pp("post_quant_conv"), l, l, 1, 1, 0)?)
        } else {
            None
        };
        Ok(AutoencoderKL {
            encoder: Encoder::new(&w.pp("encoder"), cfg)?,
            decoder: Decoder::new(&w.pp("decoder"), cfg)?,
            quant_conv,
            post_quant_conv,
            scaling_factor: cfg.scaling_factor,
            shift_factor: cfg.shift_factor,
            kind: w.kind(),
        })
    }

    /// The factor that brings latents to roughly unit variance (0.13025 for SDXL).
    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor
    }

    /// The dtype of the weights; inputs are cast to it.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The posterior of images `x` (B, 3, H, W) in [-1, 1]; H and W multiples of 8 for SDXL.
    pub fn encode(&self, x: &Tensor) -> DiagonalGaussian {
        let h = self.encoder.forward(&x.to_kind(self.kind));
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h),
            None => h,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// Images (B, 3, 8h, 8w), nominally in [-1, 1] (not clamped), from unscaled latents.
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let z = z.to_kind(self.kind);
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(&z),
            None => z,
        };
        self.decoder.forward(&z)
    }

    /// Diffusion-space latents of `x`: the posterior mode, or a draw with `noise` when given,
    /// shifted and scaled as the diffusion model was trained on
    /// (`(z - shift_factor) * scaling_factor`; SDXL has no shift).
    pub fn encode_latents(&self, x: &Tensor, noise: Option<&Tensor>) -> Tensor {
        let dist = self.encode(x);
        let z = match noise {
            Some(n) => dist.sample(n),
            None => dist.mode(),
        };
        match self.shift_factor {
            Some(s) => (z - s) * self.scaling_factor,
            None => z * self.scaling_factor,
        }
    }

    /// Images from diffusion-space latents: undo the scaling (and shift), then decode.
    pub fn decode_latents(&self, latents: &Tensor) -> Tensor {
        let z = latents.to_kind(self.kind) / self.scaling_factor;
        let z = match self.shift_factor {
            Some(s) => z + s,
            None => z,
        };
        self.decode(&z)
    }
}
