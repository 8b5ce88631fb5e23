//! The UNet's forward pass as a chain of segments over one stack: the down path pushes each
//! state it hands to a skip connection, the up path's resnets pop one each, and every
//! transformer pushes its input for the residual added at its end (balanced, so the skips
//! underneath are untouched).
//!
//! A chain with an explicit stack is what gradient checkpointing needs: run it once without
//! gradients keeping only each segment's input, then recompute the segments one at a time in
//! reverse, each seeded with the gradient of its output (`train::recompute`). The plain
//! forward pass runs the same chain, so the two cannot drift apart.

use tch::Tensor;

use super::attention::{BasicTransformerBlock, Transformer2DModel};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::unet_blocks::{DownBlock, UNetMidBlock2DCrossAttn, UpBlock};

/// What every segment may read besides its input: the time embedding, the text context, and
/// whether upsamplers must resize to their skip's size (a latent that is not a multiple of
/// the total stride).
#[derive(Debug)]
pub struct Conditioning {
    pub emb: Tensor,
    pub context: Tensor,
    pub forward_upsample_size: bool,
}

/// One piece of the chain.
#[derive(Debug)]
pub enum Op<'a> {
    /// A resnet; in the up path (`skip`) over the state concatenated with a popped skip.
    Resnet {
        resnet: &'a ResnetBlock2D,
        skip: bool,
    },
    /// A transformer's group norm and `proj_in`, to tokens; pushes its input (the residual).
    TransformerIn(&'a Transformer2DModel),
    /// One `BasicTransformerBlock` (where the attention adapters sit).
    TransformerBlock(&'a BasicTransformerBlock),
    /// A transformer's `proj_out`, back to a feature map, plus the popped residual.
    TransformerOut(&'a Transformer2DModel),
    Downsample(&'a Downsample2D),
    Upsample(&'a Upsample2D),
}

/// A segment and whether its output is pushed for a skip connection.
#[derive(Debug)]
pub struct Segment<'a> {
    pub op: Op<'a>,
    pub push_output: bool,
}

impl Op<'_> {
    /// Pops one stack entry (a skip, or a transformer's residual).
    pub fn pops(&self) -> bool {
        matches!(self, Op::Resnet { skip: true, .. } | Op::TransformerOut(_))
    }

    /// Pushes its own input.
    pub fn pushes_input(&self) -> bool {
        matches!(self, Op::TransformerIn(_))
    }

    /// Holds an unmerged delta, whose tensors train (adapters sit on attention projections only).
    pub fn trainable(&self) -> bool {
        match self {
            Op::TransformerBlock(b) => [&b.attn1, &b.attn2].iter().any(|a| {
                [&a.to_q, &a.to_k, &a.to_v, &a.to_out]
                    .iter()
                    .any(|l| l.active_delta().is_some())
            }),
            _ => false,
        }
    }

    /// `popped`: the entry this op pops, if it pops; `upsample_size`: see
    /// [`Upsample2D::forward`].
    pub fn forward(
        &self,
        h: &Tensor,
        popped: Option<&Tensor>,
        upsample_size: Option<[i64; 2]>,
        cond: &Conditioning,
    ) -> Tensor {
        let popped = || popped.expect("a popping segment gets its stack entry");
        match self {
            Op::Resnet { resnet, skip } => {
                if *skip {
                    resnet.forward(&Tensor::cat(&[h, popped()], 1), Some(&cond.emb))
                } else {
                    resnet.forward(h, Some(&cond.emb))
                }
            }
            Op::TransformerIn(t) => t.project_in(h),
            Op::TransformerBlock(b) => b.forward(h, &cond.context),
            Op::TransformerOut(t) => t.project_out(h, popped()),
            Op::Downsample(d) => d.forward(h),
            Op::Upsample(u) => u.forward(h, upsample_size),
        }
    }
}

fn transformer<'a>(t: &'a Transformer2DModel, push_output: bool, out: &mut Vec<Segment<'a>>) {
    let seg = |op, push_output| Segment { op, push_output };
    out.push(seg(Op::TransformerIn(t), false));
    for b in &t.transformer_blocks {
        out.push(seg(Op::TransformerBlock(b), false));
    }
    out.push(seg(Op::TransformerOut(t), push_output));
}

fn resnet(resnet: &ResnetBlock2D, skip: bool, push_output: bool) -> Segment<'_> {
    Segment {
        op: Op::Resnet { resnet, skip },
        push_output,
    }
}

/// The chain of the whole UNet between `conv_in` (whose output is the first skip) and
/// `conv_norm_out`, in diffusers' order.
pub fn plan<'a>(
    down: &'a [DownBlock],
    mid: &'a UNetMidBlock2DCrossAttn,
    up: &'a [UpBlock],
) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    for block in down {
        let (resnets, attentions, down) = match block {
            DownBlock::Plain(b) => (&b.resnets, None, &b.downsamplers),
            DownBlock::CrossAttn(b) => (&b.resnets, Some(&b.attentions), &b.downsamplers),
        };
        for (i, r) in resnets.iter().enumerate() {
            match attentions {
                Some(a) => {
                    out.push(resnet(r, false, false));
                    transformer(&a[i], true, &mut out);
                }
                None => out.push(resnet(r, false, true)),
            }
        }
        if let Some(d) = down {
            out.push(Segment {
                op: Op::Downsample(d),
                push_output: true,
            });
        }
    }
    out.push(resnet(&mid.resnets[0], false, false));
    for (a, r) in mid.attentions.iter().zip(&mid.resnets[1..]) {
        transformer(a, false, &mut out);
        out.push(resnet(r, false, false));
    }
    for block in up {
        let (resnets, attentions, upsampler) = match block {
            UpBlock::Plain(b) => (&b.resnets, None, &b.upsamplers),
            UpBlock::CrossAttn(b) => (&b.resnets, Some(&b.attentions), &b.upsamplers),
        };
        for (i, r) in resnets.iter().enumerate() {
            out.push(resnet(r, true, false));
            if let Some(a) = attentions {
                transformer(&a[i], false, &mut out);
            }
        }
        if let Some(u) = upsampler {
            out.push(Segment {
                op: Op::Upsample(u),
                push_output: false,
            });
        }
    }
    out
}

/// The size an upsampler resizes to: the next skip's, when sizes must be forced.
pub fn upsample_size(cond: &Conditioning, next_skip: Option<&Tensor>) -> Option<[i64; 2]> {
    match next_skip {
        Some(t) if cond.forward_upsample_size => {
            let s = t.size();
            Some([s[2], s[3]])
        }
        _ => None,
    }
}

/// Run the chain from `conv_in`'s output.
pub fn run(plan: &[Segment], h0: Tensor, cond: &Conditioning) -> Tensor {
    let mut stack = vec![h0.shallow_clone()];
    let mut h = h0;
    for seg in plan {
        let popped = if seg.op.pops() { stack.pop() } else { None };
        if seg.op.pushes_input() {
            stack.push(h.shallow_clone());
        }
        let size = match seg.op {
            Op::Upsample(_) => upsample_size(cond, stack.last()),
            _ => None,
        };
        h = seg.op.forward(&h, popped.as_ref(), size, cond);
        if seg.push_output {
            stack.push(h.shallow_clone());
        }
    }
    h
}
