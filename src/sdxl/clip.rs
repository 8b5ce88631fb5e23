//! The pre-norm transformer encoder of transformers' `modeling_clip.py`, and SDXL's two CLIP
//! text encoders built on it: `text_encoder` is `CLIPTextModel` (OpenAI CLIP ViT-L/14,
//! `quick_gelu`) and `text_encoder_2` is `CLIPTextModelWithProjection` (OpenCLIP ViT-bigG/14,
//! `gelu`, plus `text_projection`).
//!
//! The same encoder ([`ClipEncoder`], configured by an [`EncoderConfig`]) also serves the CLIP
//! vision tower (no causal mask) and DINO's `ViTModel` (the same block under other tensor names,
//! [`VIT_LAYER_NAMES`]): see `clip_model.rs` and `vit.rs`.
//!
//! Tensor names are those of a real SDXL download (`text_model.` prefix; `text_projection` at the
//! top level). The stored `text_model.embeddings.position_ids` buffer is not read: it is always
//! `arange(max_position_embeddings)`.

use tch::{Device, Kind, Tensor};

use super::config::ClipTextConfig;
use super::nn::{Embedding, LayerNorm, Linear};
use super::weights::Weights;
use crate::error::{Error, Result};

/// How the user names a CLIP folder: `score`'s flag, or the RUN.yaml field that `compare`
/// and sweeps read (messages name both, each true of one command).
pub const CLIP_OPTION: &str = "--clip (metrics.clip in RUN.yaml)";
/// How the user names a DINO folder, as [`CLIP_OPTION`].
pub const DINO_OPTION: &str = "--dino (metrics.dino in RUN.yaml)";

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: the original CLIP's approximation (CLIP-L).
    QuickGelu,
    /// The exact (erf) GELU, transformers' `"gelu"` (OpenCLIP bigG).
    Gelu,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(Error::msg(format!(
                "transformer encoder: unsupported `hidden_act` {other:?} (expected \"quick_gelu\" or \"gelu\")"
            ))),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Gelu => x.gelu("none"),
        }
    }
}

/// Where one encoder layer's tensors are, relative to the layer (`<stack>.N.`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNames {
    /// The stack's name: `layers.N` (CLIP) or `layer.N` (ViT).
    pub stack: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub out: &'static str,
    pub norm1: &'static str,
    pub norm2: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
}

/// `CLIPEncoderLayer` names (text and vision towers).
pub const CLIP_LAYER_NAMES: LayerNames = LayerNames {
    stack: "layers",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    out: "self_attn.out_proj",
    norm1: "layer_norm1",
    norm2: "layer_norm2",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

/// `ViTLayer` names (DINO as transformers' `ViTModel`): the same pre-norm block.
pub const VIT_LAYER_NAMES: LayerNames = LayerNames {
    stack: "layer",
    q: "attention.attention.query",
    k: "attention.attention.key",
    v: "attention.attention.value",
    out: "attention.output.dense",
    norm1: "layernorm_before",
    norm2: "layernorm_after",
    fc1: "intermediate.dense",
    fc2: "output.dense",
};

/// The shape of one pre-norm transformer encoder: what the text towers, the CLIP vision tower
/// and ViT share. `causal` is the only behavioural switch (text towers attend causally).
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_attention_heads: i64,
    pub num_hidden_layers: i64,
    pub activation: Activation,
    pub layer_norm_eps: f64,
    pub causal: bool,
    /// Biases on the query/key/value projections (always in CLIP; ViT's `qkv_bias`).
    pub qkv_bias: bool,
    pub names: LayerNames,
}

impl EncoderConfig {
    /// The encoder of a CLIP text tower.
    pub fn clip_text(cfg: &ClipTextConfig) -> Result<Self> {
        Ok(EncoderConfig {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_attention_heads: cfg.num_attention_heads,
            num_hidden_layers: cfg.num_hidden_layers,
            activation: Activation::from_name(&cfg.hidden_act)?,
            layer_norm_eps: cfg.layer_norm_eps,
            causal: true,
            qkv_bias: true,
            names: CLIP_LAYER_NAMES,
        })
    }

    /// Refuse a head count that does not divide the width, naming the component.
    pub fn check(&self, component: &str) -> Result<()> {
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::msg(format!(
                "{component}: `hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }
}

/// `CLIPTextEmbeddings`: token embedding plus learned absolute position embedding.
#[derive(Debug)]
pub struct ClipTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

impl ClipTextEmbeddings {
    pub fn new(w: &Weights, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(ClipTextEmbeddings {
            token_embedding: Embedding::new(
                &w.pp("token_embedding"),
                cfg.vocab_size,
                cfg.hidden_size,
            )?,
            position_embedding: Embedding::new(
                &w.pp("position_embedding"),
                cfg.max_position_embeddings,
                cfg.hidden_size,
            )?,
        })
    }

    /// `input_ids`: (batch, seq) -> (batch, seq, hidden). Positions are `0..seq`.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        let seq = input_ids.size()[1];
        // Rows 0..seq of the table are exactly `position_embedding(arange(seq))`.
        let positions = self.position_embedding.weight.narrow(0, 0, seq);
        self.token_embedding.forward(input_ids) + positions.unsqueeze(0)
    }
}

/// `CLIPAttention`: multi-head self-attention. The projections are public so that text-encoder
/// adapters can wrap them.
#[derive(Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: i64,
    pub head_dim: i64,
    pub causal: bool,
}

impl ClipAttention {
    /// `w` is the encoder layer; the projections are found by `cfg.names`.
    pub fn new(w: &Weights, cfg: &EncoderConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let n = &cfg.names;
        Ok(ClipAttention {
            q_proj: Linear::new(&w.pp(n.q), d, d, cfg.qkv_bias)?,
            k_proj: Linear::new(&w.pp(n.k), d, d, cfg.qkv_bias)?,
            v_proj: Linear::new(&w.pp(n.v), d, d, cfg.qkv_bias)?,
            out_proj: Linear::new(&w.pp(n.out), d, d, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
            causal: cfg.causal,
        })
    }

    /// Self-attention over (batch, seq, hidden): causal for the text towers, full for the
    /// vision towers (every patch sees every patch, no mask at all).
    ///
    /// The text models attend causally and SDXL passes no padding mask, so padding tokens are
    /// attended to like any other token (before the EOS they cannot be seen anyway). The causal
    /// flag of SDPA gives the same lower-triangular mask as transformers' `create_causal_mask`
    /// (checked in tests/reference/ref_clip.py against the eager path with an explicit mask), and
    /// SDPA's default scale is transformers' `head_dim ** -0.5`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, s, _) = x.size3().expect("attention input is (batch, seq, hidden)");
        let heads = |t: Tensor| {
            t.view([b, s, self.num_heads, self.head_dim])
                .transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(x));
        let k = heads(self.k_proj.forward(x));
        let v = heads(self.v_proj.forward(x));
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            self.causal,
            None,
            false,
        );
        let out = out
            .transpose(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.out_proj.forward(&out)
    }
}

/// `CLIPMLP`: fc1, activation, fc2.
#[derive(Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub activation: Activation,
}

impl ClipMlp {
    /// `w` is the encoder layer; fc1 and fc2 are found by `cfg.names`.
    pub fn new(w: &Weights, cfg: &EncoderConfig) -> Result<Self> {
        Ok(ClipMlp {
            fc1: Linear::new(
                &w.pp(cfg.names.fc1),
                cfg.hidden_size,
                cfg.intermediate_size,
                true,
            )?,
            fc2: Linear::new(
                &w.pp(cfg.names.fc2),
                cfg.intermediate_size,
                cfg.hidden_size,
                true,
            )?,
            activation: cfg.activation,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2
            .forward(&self.activation.forward(&self.fc1.forward(x)))
    }
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP blocks, each with a residual.
#[derive(Debug)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    pub fn new(w: &Weights, cfg: &EncoderConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(ClipEncoderLayer {
            self_attn: ClipAttention::new(w, cfg)?,
            layer_norm1: LayerNorm::new(&w.pp(cfg.names.norm1), d, eps)?,
            mlp: ClipMlp::new(w, cfg)?,
            layer_norm2: LayerNorm::new(&w.pp(cfg.names.norm2), d, eps)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.self_attn.forward(&self.layer_norm1.forward(x));
        &x + self.mlp.forward(&self.layer_norm2.forward(&x))
    }
}

/// `CLIPEncoder`: the stack of layers.
#[derive(Debug)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    /// `w` is the encoder (`text_model.encoder`, `vision_model.encoder`, ViT's `encoder`).
    pub fn new(w: &Weights, cfg: &EncoderConfig) -> Result<Self> {
        cfg.check(w.component())?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(&w.pp(cfg.names.stack).pp(i), cfg))
            .collect::<Result<_>>()?;
        Ok(ClipEncoder { layers })
    }

    /// Every layer in turn; only the last output is kept (the vision towers need no other).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = x.shallow_clone();
        for layer in &self.layers {
            x = layer.forward(&x);
        }
        x
    }
}

/// What one forward pass gives, as transformers returns it with `output_hidden_states=True`.
#[derive(Debug)]
pub struct ClipOutput {
    /// The embeddings' output, then each layer's output (`num_hidden_layers + 1` tensors of
    /// shape (batch, seq, hidden)). The last one is NOT through `final_layer_norm`.
    pub hidden_states: Vec<Tensor>,
    /// The last layer's output after `final_layer_norm`.
    pub last_hidden_state: Tensor,
    /// `last_hidden_state` at the EOS position of each sequence: (batch, hidden).
    pub pooled: Tensor,
    /// `text_projection(pooled)`: (batch, projection_dim); `CLIPTextModelWithProjection` only.
    pub text_embeds: Option<Tensor>,
}

impl ClipOutput {
    /// `hidden_states[-2]`: the penultimate layer's output, what SDXL conditions the UNet on.
    pub fn penultimate(&self) -> &Tensor {
        &self.hidden_states[self.hidden_states.len() - 2]
    }
}

/// `CLIPTextModel` (with `with_projection`: `CLIPTextModelWithProjection`).
#[derive(Debug)]
pub struct ClipTextModel {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
    /// `text_projection` (no bias), present for `CLIPTextModelWithProjection`.
    pub text_projection: Option<Linear>,
    pub eos_token_id: i64,
    pub max_position_embeddings: i64,
    device: Device,
}

impl ClipTextModel {
    /// Load from `w` rooted at the component (`text_model.*`, `text_projection.weight`), in
    /// `w.kind()` on `w.device()`.
    pub fn new(w: &Weights, cfg: &ClipTextConfig, with_projection: bool) -> Result<Self> {
        let enc = EncoderConfig::clip_text(cfg)?;
        enc.check(w.component())?;
        let tm = w.pp("text_model");
        let embeddings = ClipTextEmbeddings::new(&tm.pp("embeddings"), cfg)?;
        let encoder = ClipEncoder::new(&tm.pp("encoder"), &enc)?;
        let final_layer_norm = LayerNorm::new(
            &tm.pp("final_layer_norm"),
            cfg.hidden_size,
            cfg.layer_norm_eps,
        )?;
        let text_projection = if with_projection {
            let Some(proj) = cfg.projection_dim else {
                return Err(Error::msg(format!(
                    "{}: `projection_dim` missing from the config of a text encoder with projection",
                    w.component()
                )));
            };
            Some(Linear::new(
                &w.pp("text_projection"),
                cfg.hidden_size,
                proj,
                false,
            )?)
        } else {
            None
        };
        Ok(ClipTextModel {
            embeddings,
            encoder,
            final_layer_norm,
            text_projection,
            eos_token_id: cfg.eos_token_id,
            max_position_embeddings: cfg.max_position_embeddings,
            device: w.device(),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.encoder.layers.len()
    }

    /// Every self-attention projection (`q_proj`, `k_proj`, `v_proj`, `out_proj` of each
    /// layer), in layer order: what text-encoder adapters target. Filter by `Linear::name`.
    pub fn attention_linears_mut(&mut self) -> Vec<&mut Linear> {
        self.encoder
            .layers
            .iter_mut()
            .flat_map(|l| {
                let a = &mut l.self_attn;
                [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.out_proj]
            })
            .collect()
    }

    /// Run the model on token ids of shape (batch, seq) (or (seq): treated as a batch of one;
    /// any leading dimensions are flattened into the batch, as transformers does).
    ///
    /// Panics if `seq` exceeds `max_position_embeddings` (transformers raises there too).
    pub fn forward(&self, input_ids: &Tensor) -> ClipOutput {
        let size = input_ids.size();
        let seq = *size.last().expect("input_ids has at least one dimension");
        assert!(
            seq <= self.max_position_embeddings,
            "sequence length {seq} exceeds max_position_embeddings {}",
            self.max_position_embeddings
        );
        let ids = input_ids
            .to_device(self.device)
            .to_kind(Kind::Int64)
            .reshape([-1, seq]);

        let mut x = self.embeddings.forward(&ids);
        let mut hidden_states = Vec::with_capacity(self.encoder.layers.len() + 1);
        for layer in &self.encoder.layers {
            let next = layer.forward(&x);
            hidden_states.push(x);
            x = next;
        }
        let last_hidden_state = self.final_layer_norm.forward(&x);
        hidden_states.push(x);

        let eos = self.eos_positions(&ids);
        let batch = Tensor::arange(ids.size()[0], (Kind::Int64, ids.device()));
        let pooled = last_hidden_state.index(&[Some(batch), Some(eos)]);
        let text_embeds = self.text_projection.as_ref().map(|p| p.forward(&pooled));
        ClipOutput {
            hidden_states,
            last_hidden_state,
            pooled,
            text_embeds,
        }
    }

    /// The position pooled from in each row, as transformers computes it.
    fn eos_positions(&self, ids: &Tensor) -> Tensor {
        if self.eos_token_id == 2 {
            // Configs written before transformers PR #24773 (SDXL's among them) carry
            // `eos_token_id: 2`; transformers then keeps the original CLIP rule: the EOS token
            // has the highest id, so take the argmax (the first maximum, hence the first EOS
            // even when the padding is also EOS).
            ids.argmax(-1, false)
        } else {
            // The first position equal to `eos_token_id` (position 0 if there is none).
            ids.eq(self.eos_token_id)
                .to_kind(Kind::Int)
                .argmax(-1, false)
        }
    }
}
