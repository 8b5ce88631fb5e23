//! Component configurations, read from the `config.json` files diffusers and transformers
//! write. Unknown fields are ignored here (those files carry many that SDXL never sets);
//! fields that would make the model something other than SDXL are refused by `validate`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A value that diffusers accepts either once for all blocks or per block.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    pub fn expand(&self, n: usize) -> Vec<T> {
        match self {
            PerBlock::One(v) => vec![v.clone(); n],
            PerBlock::Each(v) => v.clone(),
        }
    }
}

/// `unet/config.json` of `UNet2DConditionModel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    pub layers_per_block: i64,
    /// Really the number of heads per block (a diffusers naming quirk), unless
    /// `num_attention_heads` is set.
    pub attention_head_dim: PerBlock<i64>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<i64>>,
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock<i64>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<Vec<i64>>>,
    pub cross_attention_dim: i64,
    #[serde(default = "default_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<i64>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<i64>,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_downsample_padding")]
    pub downsample_padding: i64,
    #[serde(default = "default_sample_size")]
    pub sample_size: i64,
    #[serde(default = "default_act")]
    pub act_fn: String,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub only_cross_attention: bool,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default = "default_resnet_tss")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "one_f64")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "default_conv_kernel")]
    pub conv_in_kernel: i64,
    #[serde(default = "default_conv_kernel")]
    pub conv_out_kernel: i64,
    #[serde(default = "default_attention_type")]
    pub attention_type: String,
    #[serde(default = "default_time_embedding_type")]
    pub time_embedding_type: String,
}

fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn one_per_block() -> PerBlock<i64> {
    PerBlock::One(1)
}
fn default_groups() -> i64 {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn default_downsample_padding() -> i64 {
    1
}
fn default_sample_size() -> i64 {
    128
}
fn default_act() -> String {
    "silu".into()
}
fn default_resnet_tss() -> String {
    "default".into()
}
fn one_f64() -> f64 {
    1.0
}
fn default_conv_kernel() -> i64 {
    3
}
fn default_attention_type() -> String {
    "default".into()
}
fn default_time_embedding_type() -> String {
    "positional".into()
}

impl UNetConfig {
    /// Elements in one image's first feature map (`conv_in`'s output) at `width` x `height`
    /// pixels (None: the model's native side) with a VAE scaling by `vae_scale`: the size of
    /// the UNet's operations, which decides whether more threads pay
    /// (`runtime::choose_threads`).
    pub fn first_map_elements(
        &self,
        width: Option<i64>,
        height: Option<i64>,
        vae_scale: i64,
    ) -> i64 {
        let side = |px: Option<i64>| px.map_or(self.sample_size, |p| p / vae_scale.max(1));
        self.block_out_channels.first().copied().unwrap_or(0) * side(width) * side(height)
    }

    /// Heads per down block (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self) -> Vec<i64> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.expand(n),
            None => self.attention_head_dim.expand(n),
        }
    }

    pub fn transformer_layers(&self) -> Vec<i64> {
        self.transformer_layers_per_block
            .expand(self.block_out_channels.len())
    }

    /// Refuse configurations this SDXL implementation does not build.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| Err(Error::config(path, what));
        let n = self.block_out_channels.len();
        if self.addition_embed_type.as_deref() != Some("text_time") {
            return bad(format!(
                "not an SDXL UNet: `addition_embed_type` is {:?}, expected \"text_time\" \
                 (an SD 1.x/2.x UNet has none)",
                self.addition_embed_type
            ));
        }
        if self.addition_time_embed_dim.is_none()
            || self.projection_class_embeddings_input_dim.is_none()
        {
            return bad("SDXL UNet needs `addition_time_embed_dim` and \
                        `projection_class_embeddings_input_dim`"
                .into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad(format!(
                "`down_block_types` and `up_block_types` must have one entry per \
                 `block_out_channels` ({n})"
            ));
        }
        for t in &self.down_block_types {
            if t != "DownBlock2D" && t != "CrossAttnDownBlock2D" {
                return bad(format!("unsupported down block type {t:?}"));
            }
        }
        for t in &self.up_block_types {
            if t != "UpBlock2D" && t != "CrossAttnUpBlock2D" {
                return bad(format!("unsupported up block type {t:?}"));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => return bad(format!("unsupported `mid_block_type` {other:?}")),
        }
        if self.heads().len() != n || self.transformer_layers().len() != n {
            return bad("per-block lists must have one entry per `block_out_channels`".into());
        }
        if self.reverse_transformer_layers_per_block.is_some() {
            return bad("`reverse_transformer_layers_per_block` is not supported".into());
        }
        let checks = [
            (self.act_fn == "silu", "`act_fn` must be \"silu\""),
            (
                self.use_linear_projection,
                "`use_linear_projection` must be true (SDXL)",
            ),
            (
                !self.only_cross_attention,
                "`only_cross_attention` is not supported",
            ),
            (
                !self.dual_cross_attention,
                "`dual_cross_attention` is not supported",
            ),
            (
                !self.upcast_attention,
                "`upcast_attention` is not supported",
            ),
            (
                self.class_embed_type.is_none(),
                "`class_embed_type` is not supported",
            ),
            (
                self.encoder_hid_dim_type.is_none(),
                "`encoder_hid_dim_type` is not supported",
            ),
            (
                self.time_cond_proj_dim.is_none(),
                "`time_cond_proj_dim` is not supported",
            ),
            (
                self.resnet_time_scale_shift == "default",
                "`resnet_time_scale_shift` must be \"default\"",
            ),
            (
                self.attention_type == "default",
                "`attention_type` must be \"default\"",
            ),
            (
                self.time_embedding_type == "positional",
                "`time_embedding_type` must be \"positional\"",
            ),
        ];
        for (ok, what) in checks {
            if !ok {
                return bad(what.into());
            }
        }
        Ok(())
    }
}

/// `vae/config.json` of `AutoencoderKL`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub latent_channels: i64,
    #[serde(default = "default_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "default_vae_sample")]
    pub sample_size: i64,
}

fn default_scaling() -> f64 {
    0.18215
}
fn default_vae_sample() -> i64 {
    1024
}

impl VaeConfig {
    /// Pixels per latent cell: 2^(blocks - 1).
    pub fn scale_factor(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `text_encoder*/config.json` of transformers' `CLIPTextModel(WithProjection)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_attention_heads: i64,
    pub num_hidden_layers: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<i64>,
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
}

fn default_eos() -> i64 {
    2
}

/// Read and parse a JSON config file, naming the file on error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::fsutil::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, format!("invalid config: {e}")))
}

/// The configurations built into the binary: `tiny` (tests, demo) and `sdxl-base`
/// (SDXL base 1.0, as its download ships them).
pub mod presets {
    pub const NAMES: &[&str] = &["tiny", "sdxl-base"];

    /// (unet, vae, text_encoder, text_encoder_2, scheduler) JSON texts.
    pub fn texts(name: &str) -> Option<[&'static str; 5]> {
        match name {
            "tiny" => Some([
                include_str!("../../configs/tiny/unet/config.json"),
                include_str!("../../configs/tiny/vae/config.json"),
                include_str!("../../configs/tiny/text_encoder/config.json"),
                include_str!("../../configs/tiny/text_encoder_2/config.json"),
                include_str!("../../configs/tiny/scheduler/scheduler_config.json"),
            ]),
            "sdxl-base" => Some([
                include_str!("../../configs/sdxl-base-1.0/unet/config.json"),
                include_str!("../../configs/sdxl-base-1.0/vae/config.json"),
                include_str!("../../configs/sdxl-base-1.0/text_encoder/config.json"),
                include_str!("../../configs/sdxl-base-1.0/text_encoder_2/config.json"),
                include_str!("../../configs/sdxl-base-1.0/scheduler/scheduler_config.json"),
            ]),
            _ => None,
        }
    }
}
