//! The UNet's transformer (diffusers `attention_processor.Attention` with `AttnProcessor2_0`,
//! `attention.FeedForward` / `BasicTransformerBlock`, `transformer_2d.Transformer2DModel` with
//! linear projections).
//!
//! Every projection is a pub [`Linear`] that carries its full module name, and the forward
//! passes go through `Linear::forward`, so an adapter attached to a `Linear` (found by a name
//! suffix such as `attn1.to_q`) takes part wherever that layer runs.

use tch::Tensor;

use super::nn::{GroupNorm, LayerNorm, Linear};
use super::weights::Weights;
use crate::error::Result;

/// Multi-head attention: `to_out.0(softmax(q k^T / sqrt(d)) v)`, with `q = to_q(x)` and
/// `k, v = to_k(c), to_v(c)` for a context `c` (cross-attention) or `c = x` (self-attention).
#[derive(Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_out.0` (`to_out.1` is a dropout).
    pub to_out: Linear,
    pub heads: i64,
}

impl Attention {
    /// `cross_attention_dim`: width of the context, `None` for self-attention. `bias`: whether
    /// q, k and v have biases (false in the UNet; the output projection always has one).
    pub fn new(
        w: &Weights,
        query_dim: i64,
        cross_attention_dim: Option<i64>,
        heads: i64,
        dim_head: i64,
        bias: bool,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let context_dim = cross_attention_dim.unwrap_or(query_dim);
        Ok(Attention {
            to_q: Linear::new(&w.pp("to_q"), query_dim, inner, bias)?,
            to_k: Linear::new(&w.pp("to_k"), context_dim, inner, bias)?,
            to_v: Linear::new(&w.pp("to_v"), context_dim, inner, bias)?,
            to_out: Linear::new(&w.pp("to_out").pp(0), inner, query_dim, true)?,
            heads,
        })
    }

    /// `x`: `(B, N, query_dim)`; `context`: `(B, M, cross_attention_dim)` or `None`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context);
        let v = self.to_v.forward(context);
        let b = x.size()[0];
        let inner = k.size()[2];
        let head_dim = inner / self.heads;
        // (B, N, H*D) -> (B, H, N, D)
        let split = |t: &Tensor| t.view([b, -1, self.heads, head_dim]).transpose(1, 2);
        let out = Tensor::scaled_dot_product_attention(
            &split(&q),
            &split(&k),
            &split(&v),
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let out = out.transpose(1, 2).reshape([b, -1, self.heads * head_dim]);
        self.to_out.forward(&out)
    }

    /// `to_q`, `to_k`, `to_v`, `to_out.0`, in module order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![
            &mut self.to_q,
            &mut self.to_k,
            &mut self.to_v,
            &mut self.to_out,
        ]
    }
}

/// `net.0` = GEGLU (`proj` to twice the inner width, one half gating the other through an exact
/// GELU), `net.1` = dropout, `net.2` = the output projection.
#[derive(Debug)]
pub struct FeedForward {
    /// `net.0.proj`
    pub proj_in: Linear,
    /// `net.2`
    pub proj_out: Linear,
}

impl FeedForward {
    /// Inner width `4 * dim`, as `BasicTransformerBlock` builds it.
    pub fn new(w: &Weights, dim: i64) -> Result<Self> {
        let inner = 4 * dim;
        Ok(FeedForward {
            proj_in: Linear::new(&w.pp("net").pp(0).pp("proj"), dim, 2 * inner, true)?,
            proj_out: Linear::new(&w.pp("net").pp(2), inner, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.proj_in.forward(x).chunk(2, -1);
        self.proj_out.forward(&(&h[0] * h[1].gelu("none")))
    }
}

/// Pre-norm self-attention, cross-attention and feed-forward, each added back to its input.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(
        w: &Weights,
        dim: i64,
        heads: i64,
        dim_head: i64,
        cross_attention_dim: i64,
    ) -> Result<Self> {
        // diffusers' default `norm_eps` for the transformer's layer norms.
        let eps = 1e-5;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::new(&w.pp("norm1"), dim, eps)?,
            attn1: Attention::new(&w.pp("attn1"), dim, None, heads, dim_head, false)?,
            norm2: LayerNorm::new(&w.pp("norm2"), dim, eps)?,
            attn2: Attention::new(
                &w.pp("attn2"),
                dim,
                Some(cross_attention_dim),
                heads,
                dim_head,
                false,
            )?,
            norm3: LayerNorm::new(&w.pp("norm3"), dim, eps)?,
            ff: FeedForward::new(&w.pp("ff"), dim)?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let x = self.attn1.forward(&self.norm1.forward(x), None) + x;
        let x = self.attn2.forward(&self.norm2.forward(&x), Some(context)) + x;
        self.ff.forward(&self.norm3.forward(&x)) + x
    }
}

/// A stack of transformer blocks over the pixels of a feature map: `norm` (GroupNorm) ->
/// `proj_in` (linear, per pixel) -> blocks -> `proj_out` -> plus the input.
#[derive(Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Linear,
}

/// What a [`Transformer2DModel`] is built from.
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    pub heads: i64,
    /// Number of `transformer_blocks`.
    pub layers: i64,
    pub cross_attention_dim: i64,
    pub norm_num_groups: i64,
}

impl Transformer2DModel {
    /// `channels` is both the input width and the inner width (`heads * head_dim`).
    pub fn new(w: &Weights, channels: i64, cfg: &Transformer2DConfig) -> Result<Self> {
        let dim_head = channels / cfg.heads;
        let inner = cfg.heads * dim_head;
        let blocks = w.pp("transformer_blocks");
        let transformer_blocks = (0..cfg.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    &blocks.pp(i),
                    inner,
                    cfg.heads,
                    dim_head,
                    cfg.cross_attention_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer2DModel {
            // Fixed at 1e-6 in diffusers, independent of the UNet's `norm_eps`.
            norm: GroupNorm::new(&w.pp("norm"), cfg.norm_num_groups, channels, 1e-6)?,
            proj_in: Linear::new(&w.pp("proj_in"), channels, inner, true)?,
            transformer_blocks,
            proj_out: Linear::new(&w.pp("proj_out"), inner, channels, true)?,
        })
    }

    /// `x`: `(B, C, H, W)`; `context`: `(B, M, cross_attention_dim)`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let mut hs = self.project_in(x);
        for block in &self.transformer_blocks {
            hs = block.forward(&hs, context);
        }
        self.project_out(&hs, x)
    }

    /// The feature map `x` (B, C, H, W) normalised and projected to tokens (B, H*W, inner).
    pub fn project_in(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("a 4-D feature map");
        let hs = self
            .norm
            .forward(x)
            .permute([0, 2, 3, 1])
            .reshape([b, h * w, c]);
        self.proj_in.forward(&hs)
    }

    /// Tokens back to a feature map shaped like the transformer's input `x`, plus `x`.
    pub fn project_out(&self, hs: &Tensor, x: &Tensor) -> Tensor {
        let (b, _, h, w) = x.size4().expect("a 4-D feature map");
        let hs = self.proj_out.forward(hs);
        let inner = hs.size()[2];
        hs.reshape([b, h, w, inner])
            .permute([0, 3, 1, 2])
            .contiguous()
            + x
    }

    /// Every attention projection, in module order (`attn1` then `attn2` of each block).
    pub fn attention_linears_mut(&mut self) -> Vec<&mut Linear> {
        self.transformer_blocks
            .iter_mut()
            .flat_map(|b| {
                let mut v = b.attn1.linears_mut();
                v.extend(b.attn2.linears_mut());
                v
            })
            .collect()
    }
}
