//! The SDXL denoiser: diffusers' `UNet2DConditionModel` with `text_time` added conditioning
//! (`models/unets/unet_2d_condition.py`).

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::attention::Transformer2DConfig;
use super::config::UNetConfig;
use super::embeddings::{timestep_embedding, TimestepEmbedding};
use super::nn::{Conv2d, GroupNorm, Linear};
use super::unet_blocks::{
    BlockChannels, CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock, DownBlock2D, ResnetParams,
    UNetMidBlock2DCrossAttn, UpBlock, UpBlock2D,
};
use super::unet_segments::{self, Conditioning, Segment};
use super::weights::Weights;
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub add_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: UNetMidBlock2DCrossAttn,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    config: UNetConfig,
    kind: Kind,
    device: Device,
}

impl UNet2DConditionModel {
    /// Builds the model with weights from `w` (its dtype and device become the model's).
    pub fn new(w: &Weights, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate(&Path::new(w.component()).join("config.json"))?;
        let channels = &cfg.block_out_channels;
        let levels = channels.len();
        let heads = cfg.heads();
        let depth = cfg.transformer_layers();
        // Validated above.
        let add_time_dim = cfg.addition_time_embed_dim.unwrap_or_default();
        let add_in_dim = cfg
            .projection_class_embeddings_input_dim
            .unwrap_or_default();

        let time_embed_dim = channels[0] * 4;
        let res = ResnetParams {
            temb_channels: time_embed_dim,
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
        };
        let tf = |level: usize| Transformer2DConfig {
            heads: heads[level],
            layers: depth[level],
            cross_attention_dim: cfg.cross_attention_dim,
            norm_num_groups: cfg.norm_num_groups,
        };

        let conv_in_pad = (cfg.conv_in_kernel - 1) / 2;
        let conv_in = Conv2d::new(
            &w.pp("conv_in"),
            cfg.in_channels,
            channels[0],
            cfg.conv_in_kernel,
            1,
            conv_in_pad,
        )?;
        let time_embedding =
            TimestepEmbedding::new(&w.pp("time_embedding"), channels[0], time_embed_dim)?;
        let add_embedding =
            TimestepEmbedding::new(&w.pp("add_embedding"), add_in_dim, time_embed_dim)?;
        if add_in_dim < 6 * add_time_dim {
            return Err(Error::msg(format!(
                "unet: `projection_class_embeddings_input_dim` {add_in_dim} is smaller than the \
                 6 x {add_time_dim} micro-conditioning values it must hold"
            )));
        }

        let mut down_blocks = Vec::with_capacity(levels);
        let mut out_ch = channels[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = channels[i];
            let ch = BlockChannels {
                in_channels: in_ch,
                out_channels: out_ch,
                prev_output_channel: 0,
                num_layers: cfg.layers_per_block,
            };
            let padding = (i + 1 < levels).then_some(cfg.downsample_padding);
            let bw = w.pp("down_blocks").pp(i);
            down_blocks.push(match kind.as_str() {
                "CrossAttnDownBlock2D" => DownBlock::CrossAttn(CrossAttnDownBlock2D::new(
                    &bw,
                    &ch,
                    &res,
                    &tf(i),
                    padding,
                )?),
                _ => DownBlock::Plain(DownBlock2D::new(&bw, &ch, &res, padding)?),
            });
        }

        let mid_block = UNetMidBlock2DCrossAttn::new(
            &w.pp("mid_block"),
            channels[levels - 1],
            &res,
            &tf(levels - 1),
            cfg.mid_block_scale_factor,
        )?;

        // The up path mirrors the down path: per-level lists are read reversed.
        let mut up_blocks = Vec::with_capacity(levels);
        let mut out_ch = channels[levels - 1];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let level = levels - 1 - i;
            let prev = out_ch;
            out_ch = channels[level];
            let ch = BlockChannels {
                in_channels: channels[level.saturating_sub(1)],
                out_channels: out_ch,
                prev_output_channel: prev,
                num_layers: cfg.layers_per_block + 1,
            };
            let add_upsample = i + 1 < levels;
            let bw = w.pp("up_blocks").pp(i);
            up_blocks.push(match kind.as_str() {
                "CrossAttnUpBlock2D" => UpBlock::CrossAttn(CrossAttnUpBlock2D::new(
                    &bw,
                    &ch,
                    &res,
                    &tf(level),
                    add_upsample,
                )?),
                _ => UpBlock::Plain(UpBlock2D::new(&bw, &ch, &res, add_upsample)?),
            });
        }

        let conv_out_pad = (cfg.conv_out_kernel - 1) / 2;
        Ok(UNet2DConditionModel {
            conv_in,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                &w.pp("conv_norm_out"),
                cfg.norm_num_groups,
                channels[0],
                cfg.norm_eps,
            )?,
            conv_out: Conv2d::new(
                &w.pp("conv_out"),
                channels[0],
                cfg.out_channels,
                cfg.conv_out_kernel,
                1,
                conv_out_pad,
            )?,
            config: cfg.clone(),
            kind: w.kind(),
            device: w.device(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The dtype of the weights (inputs are cast to it).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The time embedding the resnets consume: the sinusoidal timestep through
    /// `time_embedding`, plus the `text_time` conditioning (pooled text embedding ++ sinusoidal
    /// micro-conditioning values) through `add_embedding`. The sinusoids are computed in f32
    /// and then cast to the model's dtype, as diffusers does.
    fn time_embed(
        &self,
        timesteps: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
        batch: i64,
    ) -> Tensor {
        let cfg = &self.config;
        let dev = self.device;
        let t = timesteps
            .to_device(dev)
            .to_kind(Kind::Float)
            .reshape([-1])
            .expand([batch], false);
        let t_emb = timestep_embedding(
            &t,
            cfg.block_out_channels[0],
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
        );
        let emb = self.time_embedding.forward(&t_emb.to_kind(self.kind));

        let add_dim = cfg.addition_time_embed_dim.unwrap_or_default();
        let ids = time_ids.to_device(dev).to_kind(Kind::Float).reshape([-1]);
        let time_embeds = timestep_embedding(&ids, add_dim, cfg.flip_sin_to_cos, cfg.freq_shift)
            .reshape([text_embeds.size()[0], -1]);
        let text = text_embeds.to_device(dev).to_kind(Kind::Float);
        let add_embeds = Tensor::cat(&[text, time_embeds], -1).to_kind(self.kind);
        emb + self.add_embedding.forward(&add_embeds)
    }

    /// Predicts the noise in `sample` (B, in_channels, h, w).
    ///
    /// * `timesteps`: 1-D, length B or 1 (broadcast over the batch);
    /// * `encoder_hidden_states`: (B, 77, cross_attention_dim), the two text encoders'
    ///   penultimate states concatenated;
    /// * `text_embeds`: (B, pooled width), text_encoder_2's projected pooled output;
    /// * `time_ids`: (B, 6) = original size, crop top-left, target size.
    ///
    /// Inputs are cast to the model's dtype and device; the output is in the model's dtype.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> Tensor {
        let (h, cond) = self.head(
            sample,
            timesteps,
            encoder_hidden_states,
            text_embeds,
            time_ids,
        );
        let h = unet_segments::run(&self.segments(), h, &cond);
        self.tail(&h)
    }

    /// The part before the chain of segments: inputs cast, the time embedding, `conv_in`.
    /// Nothing here is ever adapted. Returns `conv_in`'s output (the first skip) and what
    /// the segments read besides their input.
    pub fn head(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> (Tensor, Conditioning) {
        let sample = sample.to_device(self.device).to_kind(self.kind);
        let context = encoder_hidden_states
            .to_device(self.device)
            .to_kind(self.kind);
        let batch = sample.size()[0];
        let emb = self.time_embed(timesteps, text_embeds, time_ids, batch);

        // A latent that is not a multiple of the total stride cannot be restored by plain x2
        // upsampling: each upsampler then resizes to its skip connection's size instead.
        let up_factor = 1i64 << (self.up_blocks.len() - 1);
        let (h, w) = (sample.size()[2], sample.size()[3]);
        let forward_upsample_size = h % up_factor != 0 || w % up_factor != 0;
        let cond = Conditioning {
            emb,
            context,
            forward_upsample_size,
        };
        (self.conv_in.forward(&sample), cond)
    }

    /// The down blocks, the mid block and the up blocks as one chain of segments.
    pub fn segments(&self) -> Vec<Segment<'_>> {
        unet_segments::plan(&self.down_blocks, &self.mid_block, &self.up_blocks)
    }

    /// The part after the chain: `conv_norm_out`, SiLU, `conv_out`.
    pub fn tail(&self, h: &Tensor) -> Tensor {
        self.conv_out.forward(&self.conv_norm_out.forward(h).silu())
    }

    /// Every `Linear` inside every attention (`attn1` and `attn2` of every transformer block:
    /// `to_q`, `to_k`, `to_v`, `to_out.0`), in diffusers' module order (down blocks, up blocks,
    /// then the mid block, as `named_modules` lists them). Filter by `Linear::name`.
    pub fn attention_linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for b in &mut self.down_blocks {
            out.extend(b.attention_linears_mut());
        }
        for b in &mut self.up_blocks {
            out.extend(b.attention_linears_mut());
        }
        for a in &mut self.mid_block.attentions {
            out.extend(a.attention_linears_mut());
        }
        out
    }
}
