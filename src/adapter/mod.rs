//! LoRA and MoSLoRA adapters: one code path, `(A, mixer, B, scale)`, where plain LoRA is the
//! absent mixer. Injected by target name into the frozen SDXL model, without copying it.

pub mod export;
pub mod file;
pub mod lowrank;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::sdxl::nn::Linear;
use crate::sdxl::unet::UNet2DConditionModel;
pub use lowrank::{AInit, LowRankAdapter, MixerInit};

/// The attention projections of every UNet attention (560 layers in SDXL).
pub const DEFAULT_TARGETS: &[&str] = &["to_q", "to_k", "to_v", "to_out.0"];

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
        }
    }
}

impl AdapterConfig {
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64)
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank < 1 {
            return Err(Error::msg(format!(
                "adapter.rank must be at least 1, got {} (typical: 4 to 64)",
                self.rank
            )));
        }
        if self.mixer == MixerInit::Butterfly && self.rank % 2 != 0 {
            return Err(Error::msg(format!(
                "adapter.mixer butterfly needs an even rank, got {}",
                self.rank
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::msg(
                "adapter.targets is empty: name at least one layer, e.g. to_q",
            ));
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(Error::msg(format!(
                    "adapter.alpha must be positive, got {a}"
                )));
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

/// The linear layers of the UNet that the targets select, in module order.
pub fn targeted<'a>(unet: &'a mut UNet2DConditionModel, targets: &[String]) -> Vec<&'a mut Linear> {
    unet.attention_linears_mut()
        .into_iter()
        .filter(|l| targets.iter().any(|t| matches_target(&l.name, t)))
        .collect()
}

/// Attach fresh adapters. A is drawn from one seeded stream and the mixers from another, so
/// a LoRA and a MoSLoRA made with the same seed start from the same A (and B = 0): they differ
/// in the mixer alone. Returns how many layers were adapted.
pub fn inject(unet: &mut UNet2DConditionModel, cfg: &AdapterConfig, seed: u64) -> Result<usize> {
    cfg.validate()?;
    let layers = targeted(unet, &cfg.targets);
    if layers.is_empty() {
        return Err(Error::msg(format!(
            "adapter.targets {:?} match no UNet attention layer (valid: to_q, to_k, to_v, \
             to_out.0, optionally prefixed by attn1./attn2.)",
            cfg.targets
        )));
    }
    let n = layers.len();
    tch::manual_seed(seed as i64);
    let mut a_inits = Vec::with_capacity(n);
    for l in &layers {
        a_inits.push(lowrank::init_a(l.in_dim(), cfg.rank, cfg.init_a)?);
    }
    tch::manual_seed(seed.wrapping_add(0x6d69_7865) as i64);
    for (l, a) in layers.into_iter().zip(a_inits) {
        let device = l.weight.device();
        let mixer = lowrank::init_mixer(cfg.rank, cfg.mixer)?;
        let b = Tensor::zeros(
            [l.out_dim(), cfg.rank],
            (tch::Kind::Float, tch::Device::Cpu),
        );
        let mut adapter =
            LowRankAdapter::from_tensors(a, b, mixer, cfg.mixer.trained(), cfg.alpha());
        adapter.to(device);
        adapter.set_trainable(true);
        l.adapter = Some(adapter);
    }
    Ok(n)
}

/// Every adapted layer with its adapter.
pub fn adapted(unet: &mut UNet2DConditionModel) -> Vec<&mut Linear> {
    unet.attention_linears_mut()
        .into_iter()
        .filter(|l| l.adapter.is_some())
        .collect()
}

/// The trained tensors, named `<module>.lora_A.weight` and so on (the file's names).
pub fn trained_parameters(unet: &mut UNet2DConditionModel) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for l in adapted(unet) {
        let a = l.adapter.as_ref().expect("adapted");
        for (part, t) in a.trained() {
            out.push((format!("{}.{part}.weight", l.name), t));
        }
    }
    out
}

pub fn merge_all(unet: &mut UNet2DConditionModel) {
    for l in adapted(unet) {
        l.merge();
    }
}

pub fn unmerge_all(unet: &mut UNet2DConditionModel) {
    for l in adapted(unet) {
        l.unmerge();
    }
}

/// Remove every adapter (unmerging first), leaving the base model as loaded.
pub fn remove_all(unet: &mut UNet2DConditionModel) {
    for l in adapted(unet) {
        l.unmerge();
        l.adapter = None;
    }
}

/// Number of trained adapter parameters.
pub fn count_parameters(unet: &mut UNet2DConditionModel) -> i64 {
    trained_parameters(unet)
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum()
}
