//! The whole CLIP (transformers' `CLIPModel`): the text tower of `clip.rs` with its
//! `text_projection`, the vision tower (`CLIPVisionTransformer`) with its `visual_projection`,
//! and `logit_scale`. What CLIP-I and CLIP-T are measured with, and what a small judge trained
//! on the toy world is: every tensor comes from a [`TensorSource`](super::weights::TensorSource),
//! so weights that require grad make the embeddings differentiable.
//!
//! Names are those of transformers' `CLIPModel` checkpoints (openai `clip-vit-base-patch32`,
//! `clip-vit-large-patch14`, LAION ViT-H/G in the transformers layout):
//! `vision_model.embeddings.{class_embedding, patch_embedding (no bias), position_embedding}`,
//! `vision_model.pre_layrnorm` (sic), `vision_model.encoder.layers.N.*` (as the text tower),
//! `vision_model.post_layernorm`, `visual_projection` (no bias), `text_model.*`,
//! `text_projection` (no bias), `logit_scale`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::clip::{
    Activation, ClipEncoder, ClipTextModel, EncoderConfig, LayerNames, CLIP_LAYER_NAMES,
    CLIP_OPTION, DINO_OPTION,
};
use super::config::ClipTextConfig;
use super::nn::{Embedding, LayerNorm, Linear};
use super::weights::{save_safetensors, Init, Weights};
use crate::error::{Error, Result};

/// `vision_config` of a `CLIPConfig` (transformers' `CLIPVisionConfig`; its defaults are
/// transformers', i.e. ViT-B/32).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_attention_heads: i64,
    pub num_hidden_layers: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    pub fn encoder(&self) -> Result<EncoderConfig> {
        Ok(EncoderConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            num_hidden_layers: self.num_hidden_layers,
            activation: Activation::from_name(&self.hidden_act)?,
            layer_norm_eps: self.layer_norm_eps,
            causal: false,
            qkv_bias: true,
            names: CLIP_LAYER_NAMES,
        })
    }

    /// Patches per side, and the sequence length with the class token.
    pub fn num_positions(&self) -> i64 {
        let side = self.image_size / self.patch_size;
        side * side + 1
    }
}

/// transformers' `CLIPConfig`: both towers and the shared projection width.
#[derive(Debug, Clone)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: i64,
    pub logit_scale_init_value: f64,
}

/// transformers' `CLIPTextConfig` defaults, for fields a saved config leaves out.
fn text_defaults() -> Value {
    json!({
        "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
        "num_attention_heads": 8, "num_hidden_layers": 12, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 49407,
    })
}

/// transformers' `CLIPVisionConfig` defaults.
fn vision_defaults() -> Value {
    json!({
        "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    })
}

/// `defaults` overlaid by the non-null fields of `v`.
fn overlay(defaults: Value, v: Option<&Value>) -> Value {
    let mut out = defaults;
    if let (Some(Value::Object(src)), Value::Object(dst)) = (v, &mut out) {
        for (k, val) in src {
            if !val.is_null() {
                dst.insert(k.clone(), val.clone());
            }
        }
    }
    out
}

fn int(v: &Value, key: &str, path: &Path) -> Result<i64> {
    v.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::config(path, format!("`{key}` must be an integer")))
}

impl ClipConfig {
    /// Read a `CLIPModel` `config.json`. A text-only or vision-only CLIP (`CLIPTextModel`,
    /// `CLIPVisionModel(WithProjection)`) or another model (a DINO `ViTModel`) is refused
    /// with what was expected: scoring needs both towers.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v: Value = super::config::read_json(path)?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match model_type {
            "clip" => {}
            "clip_text_model" | "clip_vision_model" => {
                let which = if model_type == "clip_text_model" {
                    "text"
                } else {
                    "vision"
                };
                return Err(Error::config(
                    path,
                    format!(
                        "a {which}-only CLIP ({}); CLIP-I and CLIP-T need a whole CLIPModel \
                         (model_type \"clip\") with both the text and the vision tower",
                        if arch.is_empty() { model_type } else { &arch }
                    ),
                ));
            }
            "" => return Err(Error::config(
                path,
                "no `model_type`: expected a transformers CLIPModel config (model_type \"clip\")",
            )),
            other => {
                return Err(Error::config(
                    path,
                    format!(
                        "a {other:?} model{}, not CLIP: {CLIP_OPTION} expects a transformers \
                         CLIPModel folder (model_type \"clip\"){}",
                        if arch.is_empty() {
                            String::new()
                        } else {
                            format!(" ({arch})")
                        },
                        if other == "vit" || other == "dinov2" {
                            format!("; a DINO folder goes to {DINO_OPTION}")
                        } else {
                            String::new()
                        }
                    ),
                ))
            }
        }
        for tower in ["text_config", "vision_config"] {
            if !v.get(tower).is_some_and(Value::is_object) {
                return Err(Error::config(
                    path,
                    format!("a CLIPModel config needs `{tower}`"),
                ));
            }
        }
        let text = overlay(text_defaults(), v.get("text_config"));
        let mut text_config: ClipTextConfig = serde_json::from_value(text)
            .map_err(|e| Error::config(path, format!("invalid `text_config`: {e}")))?;
        let vision = overlay(vision_defaults(), v.get("vision_config"));
        let s = |key: &str| -> Result<String> {
            vision
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::config(path, format!("`vision_config.{key}` must be a string"))
                })
        };
        let vision_config = ClipVisionConfig {
            hidden_size: int(&vision, "hidden_size", path)?,
            intermediate_size: int(&vision, "intermediate_size", path)?,
            num_attention_heads: int(&vision, "num_attention_heads", path)?,
            num_hidden_layers: int(&vision, "num_hidden_layers", path)?,
            num_channels: int(&vision, "num_channels", path)?,
            image_size: int(&vision, "image_size", path)?,
            patch_size: int(&vision, "patch_size", path)?,
            hidden_act: s("hidden_act")?,
            layer_norm_eps: vision
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
        };
        let projection_dim = v
            .get("projection_dim")
            .and_then(Value::as_i64)
            .unwrap_or(512);
        // CLIPModel's text_projection maps to the top-level projection_dim, whatever the
        // text tower's own config says.
        text_config.projection_dim = Some(projection_dim);
        let logit_scale_init_value = v
            .get("logit_scale_init_value")
            .and_then(Value::as_f64)
            .unwrap_or(2.6592);
        let cfg = ClipConfig {
            text_config,
            vision_config,
            projection_dim,
            logit_scale_init_value,
        };
        cfg.validate()
            .map_err(|e| Error::config(path, e.to_string()))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        if v.patch_size <= 0 || v.image_size % v.patch_size != 0 {
            return Err(Error::msg(format!(
                "vision_config: `image_size` {} is not a multiple of `patch_size` {}",
                v.image_size, v.patch_size
            )));
        }
        v.encoder()?.check("vision_config")?;
        EncoderConfig::clip_text(&self.text_config)?.check("text_config")?;
        Ok(())
    }

    /// The `config.json` transformers' `CLIPModel.from_pretrained` reads.
    pub fn to_json(&self) -> Value {
        let t = &self.text_config;
        let v = &self.vision_config;
        json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "initializer_factor": 1.0,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_attention_heads": t.num_attention_heads,
                "num_hidden_layers": t.num_hidden_layers,
                "max_position_embeddings": t.max_position_embeddings,
                "hidden_act": t.hidden_act,
                "layer_norm_eps": t.layer_norm_eps,
                "projection_dim": self.projection_dim,
                "bos_token_id": 49406,
                "eos_token_id": t.eos_token_id,
                "pad_token_id": 1,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_attention_heads": v.num_attention_heads,
                "num_hidden_layers": v.num_hidden_layers,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "hidden_act": v.hidden_act,
                "layer_norm_eps": v.layer_norm_eps,
                "projection_dim": self.projection_dim,
            },
        })
    }
}

/// `CLIPVisionEmbeddings`: class token, patch embedding (a bias-free convolution whose stride
/// is its kernel), learned absolute positions.
#[derive(Debug)]
pub struct ClipVisionEmbeddings {
    pub class_embedding: Tensor,
    pub patch_embedding: Tensor,
    pub position_embedding: Embedding,
    pub patch_size: i64,
    pub image_size: i64,
}

impl ClipVisionEmbeddings {
    pub fn new(w: &Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        Ok(ClipVisionEmbeddings {
            class_embedding: w.get("class_embedding", &[d], Init::Normal(0.02))?,
            patch_embedding: w.pp("patch_embedding").get(
                "weight",
                &[d, cfg.num_channels, p, p],
                Init::FanIn,
            )?,
            position_embedding: Embedding::new(
                &w.pp("position_embedding"),
                cfg.num_positions(),
                d,
            )?,
            patch_size: p,
            image_size: cfg.image_size,
        })
    }

    /// (batch, channels, H, W) at the configured size -> (batch, 1 + patches, hidden).
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let size = pixel_values.size();
        assert!(
            size.len() == 4 && size[2] == self.image_size && size[3] == self.image_size,
            "pixel_values must be (batch, channels, {s}, {s}), got {size:?}",
            s = self.image_size
        );
        let b = size[0];
        let x = pixel_values
            .to_kind(self.patch_embedding.kind())
            .conv2d(
                &self.patch_embedding,
                None::<&Tensor>,
                [self.patch_size, self.patch_size],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, 3)
            .transpose(1, 2);
        let d = self.class_embedding.size()[0];
        let cls = self
            .class_embedding
            .view([1, 1, d])
            .expand([b, 1, d], false);
        Tensor::cat(&[cls, x], 1) + self.position_embedding.weight.unsqueeze(0)
    }
}

/// `CLIPVisionTransformer`: embeddings, `pre_layrnorm`, the shared encoder (no mask),
/// `post_layernorm` of the class token.
#[derive(Debug)]
pub struct ClipVisionTransformer {
    pub embeddings: ClipVisionEmbeddings,
    pub pre_layrnorm: LayerNorm,
    pub encoder: ClipEncoder,
    pub post_layernorm: LayerNorm,
}

impl ClipVisionTransformer {
    /// `w` is the tower (`vision_model`).
    pub fn new(w: &Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let enc = cfg.encoder()?;
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(ClipVisionTransformer {
            embeddings: ClipVisionEmbeddings::new(&w.pp("embeddings"), cfg)?,
            pre_layrnorm: LayerNorm::new(&w.pp("pre_layrnorm"), d, eps)?,
            encoder: ClipEncoder::new(&w.pp("encoder"), &enc)?,
            post_layernorm: LayerNorm::new(&w.pp("post_layernorm"), d, eps)?,
        })
    }

    /// (last_hidden_state, pooled): pooled is the class token after `post_layernorm`.
    pub fn forward(&self, pixel_values: &Tensor) -> (Tensor, Tensor) {
        let x = self
            .pre_layrnorm
            .forward(&self.embeddings.forward(pixel_values));
        let last = self.encoder.forward(&x);
        let pooled = self.post_layernorm.forward(&last.select(1, 0));
        (last, pooled)
    }
}

/// transformers' `CLIPModel`.
#[derive(Debug)]
pub struct ClipModel {
    pub text: ClipTextModel,
    pub vision: ClipVisionTransformer,
    pub visual_projection: Linear,
    /// The log of the contrastive temperature's inverse (a scalar; `exp()` multiplies the
    /// cosine similarities into logits).
    pub logit_scale: Tensor,
    pub config: ClipConfig,
    device: Device,
}

impl ClipModel {
    /// Build from `w` rooted at the checkpoint (names `text_model.*`, `vision_model.*`,
    /// `text_projection.weight`, `visual_projection.weight`, `logit_scale`).
    pub fn new(w: &Weights, cfg: &ClipConfig) -> Result<ClipModel> {
        cfg.validate()?;
        let mut text_cfg = cfg.text_config.clone();
        text_cfg.projection_dim = Some(cfg.projection_dim);
        let text = ClipTextModel::new(w, &text_cfg, true)?;
        let vision = ClipVisionTransformer::new(&w.pp("vision_model"), &cfg.vision_config)?;
        let visual_projection = Linear::new(
            &w.pp("visual_projection"),
            cfg.vision_config.hidden_size,
            cfg.projection_dim,
            false,
        )?;
        // A scalar parameter in transformers (shape []); created, it starts at the config's
        // value as in `CLIPModel.__init__`.
        let logit_scale = w.get(
            "logit_scale",
            &[],
            Init::Constant(cfg.logit_scale_init_value),
        )?;
        Ok(ClipModel {
            text,
            vision,
            visual_projection,
            logit_scale,
            config: cfg.clone(),
            device: w.device(),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// `get_image_features`: (batch, 3, S, S) normalised pixels -> (batch, projection_dim),
    /// projected, not normalised.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Tensor {
        let (_, pooled) = self.vision.forward(&pixel_values.to_device(self.device));
        self.visual_projection.forward(&pooled)
    }

    /// `get_text_features`: token ids (batch, seq) -> (batch, projection_dim), projected, not
    /// normalised. Padding after the EOS does not change the result (the tower is causal and
    /// pools at the EOS), so no attention mask is needed.
    pub fn text_embeds(&self, input_ids: &Tensor) -> Tensor {
        self.text
            .forward(input_ids)
            .text_embeds
            .expect("a CLIPModel's text tower has its projection")
    }

    /// The scalar `logit_scale` parameter (log of the inverse temperature).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// `logits_per_image`: `exp(logit_scale)` times the cosine of every image with every text,
    /// (images, texts); its transpose is `logits_per_text`. What CLIP's contrastive loss reads.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Tensor {
        let i = normalize(image_embeds);
        let t = normalize(text_embeds);
        i.matmul(&t.tr()) * self.logit_scale.exp()
    }

    /// Every tensor with its checkpoint name, in a fixed order: what [`write_clip_folder`]
    /// saves. Tensors are shared with the model (no copy).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |name: String, t: &Tensor| out.push((name, t.shallow_clone()));
        let t = &self.text;
        push(
            "text_model.embeddings.token_embedding.weight".into(),
            &t.embeddings.token_embedding.weight,
        );
        push(
            "text_model.embeddings.position_embedding.weight".into(),
            &t.embeddings.position_embedding.weight,
        );
        encoder_tensors(
            "text_model.encoder",
            &t.encoder,
            &CLIP_LAYER_NAMES,
            &mut push,
        );
        push(
            "text_model.final_layer_norm.weight".into(),
            &t.final_layer_norm.weight,
        );
        push(
            "text_model.final_layer_norm.bias".into(),
            &t.final_layer_norm.bias,
        );
        if let Some(p) = &t.text_projection {
            push("text_projection.weight".into(), &p.weight);
        }
        let v = &self.vision;
        push(
            "vision_model.embeddings.class_embedding".into(),
            &v.embeddings.class_embedding,
        );
        push(
            "vision_model.embeddings.patch_embedding.weight".into(),
            &v.embeddings.patch_embedding,
        );
        push(
            "vision_model.embeddings.position_embedding.weight".into(),
            &v.embeddings.position_embedding.weight,
        );
        push(
            "vision_model.pre_layrnorm.weight".into(),
            &v.pre_layrnorm.weight,
        );
        push(
            "vision_model.pre_layrnorm.bias".into(),
            &v.pre_layrnorm.bias,
        );
        encoder_tensors(
            "vision_model.encoder",
            &v.encoder,
            &CLIP_LAYER_NAMES,
            &mut push,
        );
        push(
            "vision_model.post_layernorm.weight".into(),
            &v.post_layernorm.weight,
        );
        push(
            "vision_model.post_layernorm.bias".into(),
            &v.post_layernorm.bias,
        );
        push(
            "visual_projection.weight".into(),
            &self.visual_projection.weight,
        );
        push("logit_scale".into(), &self.logit_scale);
        out
    }
}

/// Unit length along the last axis (as CLIP's scoring and transformers' `CLIPModel.forward`
/// do: `x / x.norm(dim=-1, keepdim=True)`).
pub fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1i64], true)
}

/// Every tensor of an encoder stack with its name (`prefix.<stack>.N.<name>.weight|bias`).
pub fn encoder_tensors(
    prefix: &str,
    enc: &ClipEncoder,
    names: &LayerNames,
    push: &mut dyn FnMut(String, &Tensor),
) {
    for (i, l) in enc.layers.iter().enumerate() {
        let base = format!("{prefix}.{}.{i}", names.stack);
        let a = &l.self_attn;
        for (n, lin) in [
            (names.q, &a.q_proj),
            (names.k, &a.k_proj),
            (names.v, &a.v_proj),
            (names.out, &a.out_proj),
            (names.fc1, &l.mlp.fc1),
            (names.fc2, &l.mlp.fc2),
        ] {
            push(format!("{base}.{n}.weight"), &lin.weight);
            if let Some(b) = &lin.bias {
                push(format!("{base}.{n}.bias"), b);
            }
        }
        for (n, norm) in [(names.norm1, &l.layer_norm1), (names.norm2, &l.layer_norm2)] {
            push(format!("{base}.{n}.weight"), &norm.weight);
            push(format!("{base}.{n}.bias"), &norm.bias);
        }
    }
}

/// The files a CLIP tokenizer folder may hold, in either layout (see `tokenizer.rs`).
pub const TOKENIZER_FILES: &[&str] = &[
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Write a `CLIPModel` folder that transformers' `CLIPModel.from_pretrained` and
/// `CLIPProcessor.from_pretrained` load, and that `--clip` reads: `config.json`,
/// `model.safetensors` (f32), the tokenizer files copied from `tokenizer_dir`, and a
/// `preprocessor_config.json` for CLIP's standard 224-pixel preprocessing. Each file is
/// written atomically; the folder is created if needed.
pub fn write_clip_folder(dir: &Path, model: &ClipModel, tokenizer_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut copied = 0;
    for f in TOKENIZER_FILES {
        let src = tokenizer_dir.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            crate::fsutil::write_bytes(&dir.join(f), &bytes)?;
            copied += 1;
        }
    }
    if copied == 0 {
        return Err(Error::msg(format!(
            "{}: no tokenizer files (expected vocab.json + merges.txt or tokenizer.json)",
            tokenizer_dir.display()
        )));
    }
    let tensors: Vec<(String, Tensor)> = tch::no_grad(|| {
        model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_kind(Kind::Float).to_device(Device::Cpu)))
            .collect()
    });
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(&tensors, Some(meta), &dir.join("model.safetensors"))?;
    let size = model.config.vision_config.image_size;
    let pre = json!({
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": true, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": true, "crop_size": {"height": size, "width": size},
        "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        "do_normalize": true, "do_convert_rgb": true,
        "image_mean": super::image_processing::CLIP_MEAN,
        "image_std": super::image_processing::CLIP_STD,
    });
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("serialisable") + "\n";
    crate::fsutil::write_bytes(
        &dir.join("preprocessor_config.json"),
        pretty(&pre).as_bytes(),
    )?;
    crate::fsutil::write_bytes(
        &dir.join("config.json"),
        pretty(&model.config.to_json()).as_bytes(),
    )
}

/// The weight files of a transformers model folder: `model.safetensors`, or the shards of
/// `model.safetensors.index.json`. A folder with only pickle weights (`pytorch_model.bin`) is
/// refused with how to convert it; nothing else is guessed.
pub fn transformers_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let idx: Index = super::config::read_json(&index)?;
        let mut files: Vec<String> = idx.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(Error::config(
                &index,
                format!("shard {} is missing", missing.display()),
            ));
        }
        return Ok(paths);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Err(Error::BadFile {
            path: bin,
            what: "a pickle checkpoint, which moslora does not read (unpickling can run code): \
                   expected model.safetensors beside it; convert with `python -c \"from \
                   transformers import AutoModel; AutoModel.from_pretrained('DIR')\
                   .save_pretrained('DIR', safe_serialization=True)\"`"
                .into(),
        });
    }
    Err(Error::msg(format!(
        "{}: no weights: expected model.safetensors (or model.safetensors.index.json with its shards)",
        dir.display()
    )))
}
