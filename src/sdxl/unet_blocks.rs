//! The UNet's stages (diffusers `models/unets/unet_2d_blocks.py`): down blocks that hand their
//! intermediate states to the skip connections, the cross-attention mid block, and up blocks
//! that consume those skips.

use tch::Tensor;

use super::attention::{Transformer2DConfig, Transformer2DModel};
use super::nn::Linear;
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};
use super::weights::Weights;
use crate::error::Result;

/// The resnet settings every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct ResnetParams {
    pub temb_channels: i64,
    pub groups: i64,
    pub eps: f64,
}

impl ResnetParams {
    fn block(&self, in_channels: i64, out_channels: i64) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
            ..ResnetBlock2DConfig::new(in_channels, out_channels)
        }
    }
}

/// Channel counts of one down or up block.
#[derive(Debug, Clone, Copy)]
pub struct BlockChannels {
    pub in_channels: i64,
    pub out_channels: i64,
    /// Up blocks only: the output width of the block below, the first resnet's main input.
    pub prev_output_channel: i64,
    /// Resnets in the block (`layers_per_block`, plus one in up blocks).
    pub num_layers: i64,
}

fn resnets_down(w: &Weights, ch: &BlockChannels, res: &ResnetParams) -> Result<Vec<ResnetBlock2D>> {
    (0..ch.num_layers)
        .map(|i| {
            let cin = if i == 0 {
                ch.in_channels
            } else {
                ch.out_channels
            };
            ResnetBlock2D::new(&w.pp("resnets").pp(i), &res.block(cin, ch.out_channels))
        })
        .collect()
}

/// Up-block resnets take the running state concatenated with one skip connection; the last
/// skip of a block comes from the level below, hence `in_channels` for the last resnet.
fn resnets_up(w: &Weights, ch: &BlockChannels, res: &ResnetParams) -> Result<Vec<ResnetBlock2D>> {
    (0..ch.num_layers)
        .map(|i| {
            let skip = if i == ch.num_layers - 1 {
                ch.in_channels
            } else {
                ch.out_channels
            };
            let main = if i == 0 {
                ch.prev_output_channel
            } else {
                ch.out_channels
            };
            ResnetBlock2D::new(
                &w.pp("resnets").pp(i),
                &res.block(main + skip, ch.out_channels),
            )
        })
        .collect()
}

fn attentions(
    w: &Weights,
    n: i64,
    channels: i64,
    tf: &Transformer2DConfig,
) -> Result<Vec<Transformer2DModel>> {
    (0..n)
        .map(|i| Transformer2DModel::new(&w.pp("attentions").pp(i), channels, tf))
        .collect()
}

fn downsampler(w: &Weights, channels: i64, padding: Option<i64>) -> Result<Option<Downsample2D>> {
    padding
        .map(|p| Downsample2D::new(&w.pp("downsamplers").pp(0), channels, channels, p))
        .transpose()
}

fn upsampler(w: &Weights, channels: i64, add: bool) -> Result<Option<Upsample2D>> {
    add.then(|| Upsample2D::new(&w.pp("upsamplers").pp(0), channels, channels))
        .transpose()
}

/// Resnets, then an optional stride-2 downsampler. Returns the output and every intermediate
/// state (one per resnet, plus the downsampled one) for the skip connections.
#[derive(Debug)]
pub struct DownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsamplers: Option<Downsample2D>,
}

impl DownBlock2D {
    /// `downsample_padding`: `None` for the last block, which keeps its resolution.
    pub fn new(
        w: &Weights,
        ch: &BlockChannels,
        res: &ResnetParams,
        downsample_padding: Option<i64>,
    ) -> Result<Self> {
        Ok(DownBlock2D {
            resnets: resnets_down(w, ch, res)?,
            downsamplers: downsampler(w, ch.out_channels, downsample_padding)?,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut h = x.shallow_clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for resnet in &self.resnets {
            h = resnet.forward(&h, Some(temb));
            states.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsamplers {
            h = down.forward(&h);
            states.push(h.shallow_clone());
        }
        (h, states)
    }
}

/// Like [`DownBlock2D`], with a transformer after each resnet.
#[derive(Debug)]
pub struct CrossAttnDownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Option<Downsample2D>,
}

impl CrossAttnDownBlock2D {
    pub fn new(
        w: &Weights,
        ch: &BlockChannels,
        res: &ResnetParams,
        tf: &Transformer2DConfig,
        downsample_padding: Option<i64>,
    ) -> Result<Self> {
        Ok(CrossAttnDownBlock2D {
            resnets: resnets_down(w, ch, res)?,
            attentions: attentions(w, ch.num_layers, ch.out_channels, tf)?,
            downsamplers: downsampler(w, ch.out_channels, downsample_padding)?,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut h = x.shallow_clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            h = resnet.forward(&h, Some(temb));
            h = attn.forward(&h, context);
            states.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsamplers {
            h = down.forward(&h);
            states.push(h.shallow_clone());
        }
        (h, states)
    }
}

/// resnet -> (transformer -> resnet) at the lowest resolution.
#[derive(Debug)]
pub struct UNetMidBlock2DCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// One transformer (SDXL's only setting, `num_layers` 1) between two resnets whose
    /// outputs are divided by `output_scale_factor` (`mid_block_scale_factor`).
    pub fn new(
        w: &Weights,
        channels: i64,
        res: &ResnetParams,
        tf: &Transformer2DConfig,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let cfg = ResnetBlock2DConfig {
            output_scale_factor,
            ..res.block(channels, channels)
        };
        let resnets = (0..2)
            .map(|i| ResnetBlock2D::new(&w.pp("resnets").pp(i), &cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(UNetMidBlock2DCrossAttn {
            resnets,
            attentions: attentions(w, 1, channels, tf)?,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Tensor {
        let mut h = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = attn.forward(&h, context);
            h = resnet.forward(&h, Some(temb));
        }
        h
    }
}

/// Resnets over (state ++ skip), then an optional nearest-x2 upsampler.
#[derive(Debug)]
pub struct UpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsamplers: Option<Upsample2D>,
}

impl UpBlock2D {
    pub fn new(
        w: &Weights,
        ch: &BlockChannels,
        res: &ResnetParams,
        add_upsample: bool,
    ) -> Result<Self> {
        Ok(UpBlock2D {
            resnets: resnets_up(w, ch, res)?,
            upsamplers: upsampler(w, ch.out_channels, add_upsample)?,
        })
    }

    /// `skips` holds this block's skip connections in the order the down path made them; they
    /// are consumed from the last. `upsample_size`: see [`Upsample2D::forward`].
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        upsample_size: Option<[i64; 2]>,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        for (resnet, skip) in self.resnets.iter().zip(skips.iter().rev()) {
            h = resnet.forward(&Tensor::cat(&[&h, skip], 1), Some(temb));
        }
        match &self.upsamplers {
            Some(up) => up.forward(&h, upsample_size),
            None => h,
        }
    }
}

/// Like [`UpBlock2D`], with a transformer after each resnet.
#[derive(Debug)]
pub struct CrossAttnUpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Option<Upsample2D>,
}

impl CrossAttnUpBlock2D {
    pub fn new(
        w: &Weights,
        ch: &BlockChannels,
        res: &ResnetParams,
        tf: &Transformer2DConfig,
        add_upsample: bool,
    ) -> Result<Self> {
        Ok(CrossAttnUpBlock2D {
            resnets: resnets_up(w, ch, res)?,
            attentions: attentions(w, ch.num_layers, ch.out_channels, tf)?,
            upsamplers: upsampler(w, ch.out_channels, add_upsample)?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<[i64; 2]>,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        let layers = self.resnets.iter().zip(&self.attentions);
        for ((resnet, attn), skip) in layers.zip(skips.iter().rev()) {
            h = resnet.forward(&Tensor::cat(&[&h, skip], 1), Some(temb));
            h = attn.forward(&h, context);
        }
        match &self.upsamplers {
            Some(up) => up.forward(&h, upsample_size),
            None => h,
        }
    }
}

/// One entry of `down_blocks` (diffusers' `get_down_block`).
#[derive(Debug)]
pub enum DownBlock {
    Plain(DownBlock2D),
    CrossAttn(CrossAttnDownBlock2D),
}

impl DownBlock {
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> (Tensor, Vec<Tensor>) {
        match self {
            DownBlock::Plain(b) => b.forward(x, temb),
            DownBlock::CrossAttn(b) => b.forward(x, temb, context),
        }
    }

    pub fn attention_linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            DownBlock::Plain(_) => Vec::new(),
            DownBlock::CrossAttn(b) => b
                .attentions
                .iter_mut()
                .flat_map(|a| a.attention_linears_mut())
                .collect(),
        }
    }
}

/// One entry of `up_blocks` (diffusers' `get_up_block`).
#[derive(Debug)]
pub enum UpBlock {
    Plain(UpBlock2D),
    CrossAttn(CrossAttnUpBlock2D),
}

impl UpBlock {
    /// Skip connections this block consumes (one per resnet).
    pub fn num_skips(&self) -> usize {
        match self {
            UpBlock::Plain(b) => b.resnets.len(),
            UpBlock::CrossAttn(b) => b.resnets.len(),
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<[i64; 2]>,
    ) -> Tensor {
        match self {
            UpBlock::Plain(b) => b.forward(x, skips, temb, upsample_size),
            UpBlock::CrossAttn(b) => b.forward(x, skips, temb, context, upsample_size),
        }
    }

    pub fn attention_linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            UpBlock::Plain(_) => Vec::new(),
            UpBlock::CrossAttn(b) => b
                .attentions
                .iter_mut()
                .flat_map(|a| a.attention_linears_mut())
                .collect(),
        }
    }
}
