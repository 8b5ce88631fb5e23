//! LoRA and MoSLoRA adapters: one code path, `(A, mixer, B, scale)`, where plain LoRA is the
//! absent mixer; and LoRA's relatives DoRA, LoHa and LoKr ([`Family`]), behind the same
//! [`LayerAdapter`] trait. Injected by target name into the frozen SDXL model, without copying
//! it: into the UNet, and optionally into both text encoders ([`Component`]).

pub mod component;
pub mod dora;
pub mod export;
pub mod family;
pub mod file;
pub mod loha;
pub mod lokr;
pub mod lowrank;
pub mod merged_model;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::sdxl::nn::Linear;
use crate::sdxl::pipeline::TextEncoders;
use crate::sdxl::unet::UNet2DConditionModel;
pub use component::{text_encoder_parts, Adaptable, Component};
pub use family::{layer_adapter, Family, LayerAdapter};
pub use lowrank::{AInit, LowRankAdapter, MixerInit};

/// The attention projections of every UNet attention (560 layers in SDXL).
pub const DEFAULT_TARGETS: &[&str] = &["to_q", "to_k", "to_v", "to_out.0"];

/// The self-attention projections of a CLIP text encoder, what `text_encoder_targets` may
/// name (diffusers' DreamBooth scripts adapt all four).
pub const TEXT_ENCODER_LINEARS: &[&str] = &["q_proj", "k_proj", "v_proj", "out_proj"];

/// Seed offset of the mixers' stream, apart from A's.
const MIXER_STREAM: u64 = 0x6d69_7865;

/// What to attach and how to start it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    #[serde(default = "default_rank")]
    pub rank: i64,
    /// Defaults to the rank (scale 1).
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default = "default_mixer")]
    pub mixer: MixerInit,
    #[serde(default = "default_init_a")]
    pub init_a: AInit,
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// Self-attention projections of both text encoders to adapt as well, with the same rank,
    /// alpha, mixer and init (e.g. `[q_proj, k_proj, v_proj, out_proj]`). Empty: the text
    /// encoders stay frozen. Left out of files and fingerprints when empty, so that
    /// UNet-only adapters and checkpoints read and match as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_encoder_targets: Vec<String>,
    /// Which update the adapter learns; set by the adapter kind (`dora`, `loha`, `lokr`), not
    /// in RUN.yaml. Left out of files and fingerprints for LoRA and MoSLoRA, so that theirs
    /// read and match as before.
    #[serde(default, skip_serializing_if = "Family::is_lora")]
    pub family: Family,
    /// LoKr's split of each dimension: `-1` near its square root (peft's default), or this
    /// factor and the rest where it divides the dimension (peft's `decompose_factor`).
    #[serde(
        default = "default_lokr_factor",
        skip_serializing_if = "is_default_lokr_factor"
    )]
    pub lokr_factor: i64,
}

fn default_lokr_factor() -> i64 {
    -1
}
fn is_default_lokr_factor(f: &i64) -> bool {
    *f == -1
}

fn default_rank() -> i64 {
    4
}
fn default_mixer() -> MixerInit {
    MixerInit::Orthogonal
}
fn default_init_a() -> AInit {
    AInit::Kaiming
}
fn default_targets() -> Vec<String> {
    DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            rank: default_rank(),
            alpha: None,
            mixer: default_mixer(),
            init_a: default_init_a(),
            targets: default_targets(),
            text_encoder_targets: Vec::new(),
            family: Family::Lora,
            lokr_factor: default_lokr_factor(),
        }
    }
}

impl AdapterConfig {
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64)
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank < 1 {
            return Err(Error::setting(
                "adapter.rank",
                format!(
                    "adapter.rank must be at least 1, got {} (typical: 4 to 64)",
                    self.rank
                ),
            ));
        }
        if self.mixer == MixerInit::Butterfly && self.rank % 2 != 0 {
            return Err(Error::setting(
                "adapter.mixer",
                format!(
                    "adapter.mixer butterfly needs an even rank, got {}",
                    self.rank
                ),
            ));
        }
        if self.targets.is_empty() {
            return Err(Error::setting(
                "adapter.targets",
                "adapter.targets is empty: name at least one layer, e.g. to_q",
            ));
        }
        for t in &self.text_encoder_targets {
            if !TEXT_ENCODER_LINEARS.iter().any(|n| matches_target(t, n)) {
                return Err(Error::setting(
                    "adapter.text_encoder_targets",
                    format!(
                        "adapter.text_encoder_targets: `{t}` is no text-encoder attention layer \
                     (valid: {}, optionally prefixed by self_attn.)",
                        TEXT_ENCODER_LINEARS.join(", ")
                    ),
                ));
            }
        }
        if self.lokr_factor == 0 || self.lokr_factor < -1 {
            return Err(Error::setting(
                "adapter.lokr_factor",
                format!(
                    "adapter.lokr_factor must be -1 (split near the square root) or positive, \
                     got {}",
                    self.lokr_factor
                ),
            ));
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(Error::setting(
                    "adapter.alpha",
                    format!("adapter.alpha must be positive, got {a}"),
                ));
            }
        }
        Ok(())
    }
}

/// Does a module path match a target? A target is a module-name suffix (`to_q`, `to_out.0`,
/// `attn2.to_k`) or a full path.
pub fn matches_target(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// The linear layers of a model part that the targets select, in module order.
pub fn targeted<'a, M: Adaptable + ?Sized>(
    model: &'a mut M,
    targets: &[String],
) -> Vec<&'a mut Linear> {
    model
        .adaptable_linears_mut()
        .into_iter()
        .filter(|l| targets.iter().any(|t| matches_target(&l.name, t)))
        .collect()
}

/// Attach fresh adapters to the UNet. A is drawn from one seeded stream and the mixers from
/// another, so a LoRA and a MoSLoRA made with the same seed start from the same A (and
/// B = 0): they differ in the mixer alone. Returns how many layers were adapted.
pub fn inject(unet: &mut UNet2DConditionModel, cfg: &AdapterConfig, seed: u64) -> Result<usize> {
    cfg.validate()?;
    let layers = targeted(unet, &cfg.targets);
    if layers.is_empty() {
        return Err(Error::setting(
            "adapter.targets",
            format!(
                "adapter.targets {:?} match no UNet attention layer (valid: to_q, to_k, to_v, \
             to_out.0, optionally prefixed by attn1./attn2.)",
                cfg.targets
            ),
        ));
    }
    attach_fresh(layers, cfg, seed)
}

/// Attach fresh adapters to both text encoders' `text_encoder_targets` (none when that list
/// is empty), each encoder from its own seeded streams, drawn the same way as the UNet's so
/// that LoRA and MoSLoRA again differ in the mixer alone. Returns how many layers were
/// adapted in both together.
pub fn inject_text_encoders(
    text: &mut TextEncoders,
    cfg: &AdapterConfig,
    seed: u64,
) -> Result<usize> {
    cfg.validate()?;
    if cfg.text_encoder_targets.is_empty() {
        return Ok(0);
    }
    let mut n = 0;
    for (c, model) in text_encoder_parts(text) {
        let layers = targeted(model, &cfg.text_encoder_targets);
        if layers.is_empty() {
            return Err(Error::setting(
                "adapter.text_encoder_targets",
                format!(
                    "adapter.text_encoder_targets {:?} match no layer of {}",
                    cfg.text_encoder_targets,
                    c.prefix()
                ),
            ));
        }
        n += attach_fresh(layers, cfg, seed.wrapping_add(c.seed_offset()))?;
    }
    Ok(n)
}

fn attach_fresh(layers: Vec<&mut Linear>, cfg: &AdapterConfig, seed: u64) -> Result<usize> {
    let n = layers.len();
    let _rng = crate::runtime::seeded(seed as i64);
    if matches!(cfg.family, Family::Loha | Family::Lokr) {
        // Their factors draw from the run's stream, layer by layer in module order.
        for l in layers {
            let mut adapter = family::fresh(cfg, &l.weight, None)?;
            adapter.to_device(l.weight.device());
            adapter.set_trainable(true);
            family::install_boxed(l, adapter);
        }
        return Ok(n);
    }
    let a_inits: Vec<Tensor> = layers
        .iter()
        .map(|l| lowrank::init_a(l.in_dim(), cfg.rank, cfg.init_a))
        .collect::<Result<_>>()?;
    tch::manual_seed(seed.wrapping_add(MIXER_STREAM) as i64);
    for (l, a) in layers.into_iter().zip(a_inits) {
        let mut adapter = family::fresh(cfg, &l.weight, Some(a))?;
        adapter.to_device(l.weight.device());
        adapter.set_trainable(true);
        family::install_boxed(l, adapter);
    }
    Ok(n)
}

/// Put `adapter` beside the frozen layer (replacing any earlier one).
pub fn install(l: &mut Linear, adapter: LowRankAdapter) {
    l.set_delta(Some(Box::new(adapter)));
}

/// The layer's low-rank adapter, if one is installed (merged or not).
pub fn lowrank(l: &Linear) -> Option<&LowRankAdapter> {
    l.delta().and_then(|d| d.as_any().downcast_ref())
}

pub fn lowrank_mut(l: &mut Linear) -> Option<&mut LowRankAdapter> {
    l.delta_mut().and_then(|d| d.as_any_mut().downcast_mut())
}

/// Every adapted layer of a model part, with its adapter.
pub fn adapted<M: Adaptable + ?Sized>(model: &mut M) -> Vec<&mut Linear> {
    model
        .adaptable_linears_mut()
        .into_iter()
        .filter(|l| layer_adapter(l).is_some())
        .collect()
}

/// The trained tensors of a model part, named `<module>.lora_A.weight` and so on.
pub fn trained_parameters<M: Adaptable + ?Sized>(model: &mut M) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for l in adapted(model) {
        let a = layer_adapter(l).expect("adapted");
        for (part, t) in a.trained() {
            out.push((format!("{}.{part}.weight", l.name), t));
        }
    }
    out
}

/// The trained tensors of both text encoders, named `<component>.<module>.lora_A.weight`:
/// both encoders have `text_model.*` modules, and no UNet module starts with a component
/// name, so these names never collide with each other or with the UNet's bare ones.
pub fn text_encoder_parameters(text: &mut TextEncoders) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (c, model) in text_encoder_parts(text) {
        for (name, t) in trained_parameters(model) {
            out.push((format!("{}.{name}", c.prefix()), t));
        }
    }
    out
}

pub fn merge_all<M: Adaptable + ?Sized>(model: &mut M) {
    for l in adapted(model) {
        l.merge();
    }
}

pub fn unmerge_all<M: Adaptable + ?Sized>(model: &mut M) {
    for l in adapted(model) {
        l.unmerge();
    }
}

/// Remove every adapter (unmerging first), leaving the base model as loaded.
pub fn remove_all<M: Adaptable + ?Sized>(model: &mut M) {
    for l in adapted(model) {
        l.set_delta(None);
    }
}

/// `merge_all` on both text encoders.
pub fn merge_text_encoders(text: &mut TextEncoders) {
    for (_, model) in text_encoder_parts(text) {
        merge_all(model);
    }
}

/// `remove_all` on both text encoders.
pub fn remove_text_encoders(text: &mut TextEncoders) {
    for (_, model) in text_encoder_parts(text) {
        remove_all(model);
    }
}

/// Number of trained adapter parameters.
pub fn count_parameters<M: Adaptable + ?Sized>(model: &mut M) -> i64 {
    trained_parameters(model)
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum()
}
