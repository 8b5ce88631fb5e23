//! DINO as transformers' `ViTModel` (`facebook/dino-vits16`, `facebook/dino-vitb16`): what the
//! DINO subject-fidelity score is measured with. The feature is the class token after the
//! final `layernorm`; there is no pooler (a checkpoint that carries `pooler.*` anyway has it
//! ignored).
//!
//! Names: `embeddings.{cls_token, position_embeddings, patch_embeddings.projection}` (the
//! projection has a bias), `encoder.layer.N.{layernorm_before, attention.attention.{query,
//! key, value}, attention.output.dense, layernorm_after, intermediate.dense, output.dense}`,
//! `layernorm`. The layer is the same pre-norm block as CLIP's, so the encoder is `clip.rs`'s
//! under [`VIT_LAYER_NAMES`]. A `ViTModel` saved inside another head (`vit.` prefix) is read too.

use std::path::Path;

use serde_json::Value;
use tch::{Device, Tensor};

use super::clip::{
    Activation, ClipEncoder, EncoderConfig, CLIP_OPTION, DINO_OPTION, VIT_LAYER_NAMES,
};
use super::nn::{Conv2d, LayerNorm};
use super::weights::{Init, Weights};
use crate::error::{Error, Result};

/// transformers' `ViTConfig` (defaults: ViT-B/16).
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_attention_heads: i64,
    pub num_hidden_layers: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: String,
    /// 1e-12 in the HF configs of DINO; the original DINO code uses 1e-6. The config file
    /// is followed.
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
}

impl VitConfig {
    /// Read a `ViTModel` `config.json`. A CLIP folder given here is refused with what was
    /// expected.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v: Value = super::config::read_json(path)?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        match model_type {
            "vit" => {}
            t if t.starts_with("clip") => {
                return Err(Error::config(
                    path,
                    format!(
                        "a CLIP model ({t}), not DINO: {DINO_OPTION} expects a transformers \
                         ViTModel folder such as facebook/dino-vits16 (model_type \"vit\"); a \
                         CLIP folder goes to {CLIP_OPTION}"
                    ),
                ))
            }
            "dinov2" => {
                return Err(Error::config(
                    path,
                    format!(
                        "a DINOv2 model: not supported yet; {DINO_OPTION} expects a DINO \
                         ViTModel (facebook/dino-vits16 or dino-vitb16, model_type \"vit\")"
                    ),
                ))
            }
            "" => {
                return Err(Error::config(
                    path,
                    "no `model_type`: expected a transformers ViTModel config (model_type \"vit\")",
                ))
            }
            other => {
                return Err(Error::config(
                    path,
                    format!(
                        "a {other:?} model, not DINO: {DINO_OPTION} expects a transformers \
                         ViTModel folder (model_type \"vit\")"
                    ),
                ))
            }
        }
        let int = |key: &str, default: i64| -> Result<i64> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_i64()
                    .ok_or_else(|| Error::config(path, format!("`{key}` must be an integer"))),
            }
        };
        let cfg = VitConfig {
            hidden_size: int("hidden_size", 768)?,
            intermediate_size: int("intermediate_size", 3072)?,
            num_attention_heads: int("num_attention_heads", 12)?,
            num_hidden_layers: int("num_hidden_layers", 12)?,
            num_channels: int("num_channels", 3)?,
            image_size: int("image_size", 224)?,
            patch_size: int("patch_size", 16)?,
            hidden_act: v
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("gelu")
                .to_string(),
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12),
            qkv_bias: v.get("qkv_bias").and_then(Value::as_bool).unwrap_or(true),
        };
        if cfg.patch_size <= 0 || cfg.image_size % cfg.patch_size != 0 {
            return Err(Error::config(
                path,
                format!(
                    "`image_size` {} is not a multiple of `patch_size` {}",
                    cfg.image_size, cfg.patch_size
                ),
            ));
        }
        cfg.encoder()
            .and_then(|e| e.check("ViT"))
            .map_err(|e| Error::config(path, e.to_string()))?;
        Ok(cfg)
    }

    pub fn encoder(&self) -> Result<EncoderConfig> {
        Ok(EncoderConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            num_hidden_layers: self.num_hidden_layers,
            activation: Activation::from_name(&self.hidden_act)?,
            layer_norm_eps: self.layer_norm_eps,
            causal: false,
            qkv_bias: self.qkv_bias,
            names: VIT_LAYER_NAMES,
        })
    }

    pub fn num_patches(&self) -> i64 {
        let side = self.image_size / self.patch_size;
        side * side
    }
}

/// `ViTModel` without pooler.
#[derive(Debug)]
pub struct VitModel {
    pub cls_token: Tensor,
    pub position_embeddings: Tensor,
    pub patch_embeddings: Conv2d,
    pub encoder: ClipEncoder,
    pub layernorm: LayerNorm,
    pub image_size: i64,
    device: Device,
}

impl VitModel {
    /// `w` rooted at the model (names `embeddings.*`, `encoder.*`, `layernorm.*`).
    pub fn new(w: &Weights, cfg: &VitConfig) -> Result<VitModel> {
        let enc = cfg.encoder()?;
        let d = cfg.hidden_size;
        let e = w.pp("embeddings");
        Ok(VitModel {
            cls_token: e.get("cls_token", &[1, 1, d], Init::Normal(0.02))?,
            position_embeddings: e.get(
                "position_embeddings",
                &[1, cfg.num_patches() + 1, d],
                Init::Normal(0.02),
            )?,
            patch_embeddings: Conv2d::new(
                &e.pp("patch_embeddings").pp("projection"),
                cfg.num_channels,
                d,
                cfg.patch_size,
                cfg.patch_size,
                0,
            )?,
            encoder: ClipEncoder::new(&w.pp("encoder"), &enc)?,
            layernorm: LayerNorm::new(&w.pp("layernorm"), d, cfg.layer_norm_eps)?,
            image_size: cfg.image_size,
            device: w.device(),
        })
    }

    /// `last_hidden_state` (after the final `layernorm`) of (batch, 3, S, S) pixels.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let size = pixel_values.size();
        assert!(
            size.len() == 4 && size[2] == self.image_size && size[3] == self.image_size,
            "pixel_values must be (batch, channels, {s}, {s}), got {size:?}",
            s = self.image_size
        );
        let x = pixel_values
            .to_device(self.device)
            .to_kind(self.cls_token.kind());
        let patches = self
            .patch_embeddings
            .forward(&x)
            .flatten(2, 3)
            .transpose(1, 2);
        let b = size[0];
        let d = self.cls_token.size()[2];
        let cls = self.cls_token.expand([b, 1, d], false);
        let x = Tensor::cat(&[cls, patches], 1) + &self.position_embeddings;
        self.layernorm.forward(&self.encoder.forward(&x))
    }

    /// The DINO feature: the class token of `last_hidden_state`, (batch, hidden).
    pub fn cls_features(&self, pixel_values: &Tensor) -> Tensor {
        self.forward(pixel_values).select(1, 0)
    }
}
