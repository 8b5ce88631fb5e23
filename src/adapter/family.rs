//! Adapter families: LoRA (with MoSLoRA's mixer or without), DoRA, LoHa and LoKr, behind one
//! trait, so that injection, training, checkpoints, files, merging and export handle any of
//! them. Each family names its tensors as peft does (`lora_A`, `hada_w1_a`, `lokr_w1`, ...).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::dora::DoraAdapter;
use super::loha::LohaAdapter;
use super::lokr::LokrAdapter;
use super::lowrank::{self, LowRankAdapter};
use super::AdapterConfig;
use crate::error::{Error, Result};
use crate::sdxl::nn::{Linear, LinearDelta};

/// Which update an adapter learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `scale * B (M) A`: LoRA, and MoSLoRA with a mixer M.
    #[default]
    Lora,
    /// LoRA's direction with a learned magnitude per output channel (peft's `use_dora`).
    Dora,
    /// `scale * (W1a W1b) ⊙ (W2a W2b)`: a Hadamard product of two low-rank pairs.
    Loha,
    /// `scale * W1 ⊗ W2`: a Kronecker product, its larger factor low-rank.
    Lokr,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Lora => "lora",
            Family::Dora => "dora",
            Family::Loha => "loha",
            Family::Lokr => "lokr",
        }
    }

    /// As people write it: LoRA, DoRA, LoHa, LoKr.
    pub fn label(self) -> &'static str {
        match self {
            Family::Lora => "LoRA",
            Family::Dora => "DoRA",
            Family::Loha => "LoHa",
            Family::Lokr => "LoKr",
        }
    }

    pub fn is_lora(&self) -> bool {
        *self == Family::Lora
    }

    /// The tensor names a layer of this family may hold in a file.
    pub fn part_names(self) -> &'static [&'static str] {
        match self {
            Family::Lora => &["lora_A", "lora_B", "lora_AB"],
            Family::Dora => &["lora_A", "lora_B", "lora_magnitude_vector"],
            Family::Loha => &["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"],
            Family::Lokr => &[
                "lokr_w1",
                "lokr_w1_a",
                "lokr_w1_b",
                "lokr_w2",
                "lokr_w2_a",
                "lokr_w2_b",
            ],
        }
    }
}

/// The adapter kinds a run may name (`adapters:`, `--adapter`, sweeps): LoRA and MoSLoRA are
/// the `lora` family without and with a mixer.
pub const KINDS: &[&str] = &["lora", "moslora", "dora", "loha", "lokr"];

/// Trained parameters of one layer `in_dim -> out_dim` with `cfg`'s family and rank.
pub fn layer_parameters(cfg: &AdapterConfig, in_dim: i64, out_dim: i64) -> i64 {
    let r = cfg.rank;
    match cfg.family {
        Family::Lora => r * (in_dim + out_dim) + if cfg.mixer.trained() { r * r } else { 0 },
        Family::Dora => r * (in_dim + out_dim) + out_dim,
        Family::Loha => 2 * r * (in_dim + out_dim),
        Family::Lokr => super::lokr::Shapes::of(in_dim, out_dim, r, cfg.lokr_factor).parameters(),
    }
}

/// The rank whose trained parameters over layers of `dims` (in, out) come nearest `budget`
/// (on a tie, the rank nearest `cfg.rank`), searched up to 512.
pub fn matched_rank(cfg: &AdapterConfig, dims: &[(i64, i64)], budget: i64) -> i64 {
    let count = |rank: i64| -> i64 {
        let c = AdapterConfig {
            rank,
            ..cfg.clone()
        };
        dims.iter().map(|&(i, o)| layer_parameters(&c, i, o)).sum()
    };
    (1..=512)
        .min_by_key(|&r| ((count(r) - budget).abs(), (r - cfg.rank).abs(), r))
        .unwrap_or(cfg.rank)
}

/// An adapter of one frozen linear layer, of any family.
pub trait LayerAdapter: LinearDelta {
    fn family(&self) -> Family;
    /// Every tensor it stores, named as in the adapter file (shallow clones: writing into
    /// them writes into the adapter).
    fn tensors(&self) -> Vec<(&'static str, Tensor)>;
    /// The tensors training updates (a fixed mixer is stored but not trained).
    fn trained(&self) -> Vec<(&'static str, Tensor)>;
    /// Make the trained tensors leaves that collect gradients.
    fn set_trainable(&mut self, on: bool);
    /// Move to a device (adapters train in f32).
    fn to_device(&mut self, device: tch::Device);
    /// Multiply the update by `s` (a render's adapter scale).
    fn rescale(&mut self, s: f64);
}

/// The layer's adapter, of whichever family, if one is installed.
pub fn layer_adapter(l: &Linear) -> Option<&dyn LayerAdapter> {
    let any = l.delta()?.as_any();
    if let Some(a) = any.downcast_ref::<LowRankAdapter>() {
        return Some(a);
    }
    if let Some(a) = any.downcast_ref::<DoraAdapter>() {
        return Some(a);
    }
    if let Some(a) = any.downcast_ref::<LohaAdapter>() {
        return Some(a);
    }
    any.downcast_ref::<LokrAdapter>()
        .map(|a| a as &dyn LayerAdapter)
}

/// Put `adapter` beside the frozen layer (replacing any earlier one).
pub fn install_boxed(l: &mut Linear, adapter: Box<dyn LayerAdapter>) {
    l.set_delta(Some(adapter_into_delta(adapter)));
}

fn adapter_into_delta(a: Box<dyn LayerAdapter>) -> Box<dyn LinearDelta> {
    a
}

/// A fresh adapter of `cfg`'s family for the layer `w0` (out x in), drawing from libtorch's
/// global generator: the down factors from the current stream, then the mixer (MoSLoRA) from
/// `mixer_seed`'s. `a` is LoRA's and DoRA's A, drawn beforehand for every layer so that LoRA,
/// MoSLoRA and DoRA made with one seed start from the same A.
pub fn fresh(cfg: &AdapterConfig, w0: &Tensor, a: Option<Tensor>) -> Result<Box<dyn LayerAdapter>> {
    let (out_dim, in_dim) = (w0.size()[0], w0.size()[1]);
    let cpu = (Kind::Float, tch::Device::Cpu);
    let r = cfg.rank;
    let alpha = cfg.alpha();
    Ok(match cfg.family {
        Family::Lora | Family::Dora => {
            let a = match a {
                Some(a) => a,
                None => lowrank::init_a(in_dim, r, cfg.init_a)?,
            };
            let b = Tensor::zeros([out_dim, r], cpu);
            if cfg.family == Family::Dora {
                let lora = LowRankAdapter::from_tensors(a, b, None, false, alpha);
                let magnitude = super::dora::weight_norm(w0, &lora);
                Box::new(DoraAdapter::new(lora, magnitude))
            } else {
                let mixer = lowrank::init_mixer(r, cfg.mixer)?;
                Box::new(LowRankAdapter::from_tensors(
                    a,
                    b,
                    mixer,
                    cfg.mixer.trained(),
                    alpha,
                ))
            }
        }
        Family::Loha => Box::new(LohaAdapter::init(in_dim, out_dim, r, alpha)),
        Family::Lokr => Box::new(LokrAdapter::init(
            in_dim,
            out_dim,
            r,
            alpha,
            cfg.lokr_factor,
        )),
    })
}

/// An adapter of `cfg`'s family from a file's tensors of one layer `in_dim -> out_dim`,
/// checking their names and shapes; `shown` names the layer in errors.
pub fn from_parts(
    cfg: &AdapterConfig,
    mut parts: HashMap<String, Tensor>,
    dims: Option<(i64, i64)>,
    shown: &str,
) -> Result<Box<dyn LayerAdapter>> {
    let r = cfg.rank;
    let alpha = cfg.alpha();
    if let Some(extra) = parts
        .keys()
        .find(|k| !cfg.family.part_names().contains(&k.as_str()))
    {
        return Err(Error::msg(format!(
            "layer `{shown}` has an unknown part `{extra}` for a {} adapter",
            cfg.family.name()
        )));
    }
    let family = cfg.family;
    let take = |parts: &mut HashMap<String, Tensor>, name: &str| {
        parts.remove(name).ok_or_else(|| {
            Error::msg(format!(
                "layer `{shown}` lacks `{name}` (a {} adapter)",
                family.name()
            ))
        })
    };
    let (in_dim, out_dim);
    let adapter: Box<dyn LayerAdapter> = match cfg.family {
        Family::Lora | Family::Dora => {
            let (a, b) = (take(&mut parts, "lora_A")?, take(&mut parts, "lora_B")?);
            (in_dim, out_dim) = (a.size()[1], b.size()[0]);
            if cfg.family == Family::Dora {
                let m = take(&mut parts, "lora_magnitude_vector")?;
                expect(shown, "lora_magnitude_vector", &m, &[out_dim])?;
                expect(shown, "lora_A", &a, &[r, in_dim])?;
                expect(shown, "lora_B", &b, &[out_dim, r])?;
                let lora = LowRankAdapter::from_tensors(a, b, None, false, alpha);
                Box::new(DoraAdapter::new(lora, m))
            } else {
                let mixer = parts.remove("lora_AB");
                if (cfg.mixer == super::MixerInit::None) != mixer.is_none() {
                    return Err(Error::msg(format!(
                        "layer `{shown}`: mixer presence contradicts metadata"
                    )));
                }
                if let Some(m) = &mixer {
                    expect(shown, "lora_AB", m, &[r, r])?;
                }
                expect(shown, "lora_A", &a, &[r, in_dim])?;
                expect(shown, "lora_B", &b, &[out_dim, r])?;
                Box::new(LowRankAdapter::from_tensors(
                    a,
                    b,
                    mixer,
                    cfg.mixer.trained(),
                    alpha,
                ))
            }
        }
        Family::Loha => {
            let (w1a, w1b) = (
                take(&mut parts, "hada_w1_a")?,
                take(&mut parts, "hada_w1_b")?,
            );
            let (w2a, w2b) = (
                take(&mut parts, "hada_w2_a")?,
                take(&mut parts, "hada_w2_b")?,
            );
            (in_dim, out_dim) = (w1b.size()[1], w1a.size()[0]);
            expect(shown, "hada_w1_a", &w1a, &[out_dim, r])?;
            expect(shown, "hada_w1_b", &w1b, &[r, in_dim])?;
            expect(shown, "hada_w2_a", &w2a, &[out_dim, r])?;
            expect(shown, "hada_w2_b", &w2b, &[r, in_dim])?;
            Box::new(LohaAdapter::from_tensors(w1a, w1b, w2a, w2b, r, alpha))
        }
        Family::Lokr => {
            let lokr = LokrAdapter::from_parts(&mut parts, r, alpha, shown)?;
            (in_dim, out_dim) = lokr.dims();
            let want = super::lokr::Shapes::of(in_dim, out_dim, r, cfg.lokr_factor);
            lokr.check(&want, shown)?;
            Box::new(lokr)
        }
    };
    if let Some((i, o)) = dims {
        if (i, o) != (in_dim, out_dim) {
            return Err(Error::msg(format!(
                "layer `{shown}` is {i} -> {o} in the model but {in_dim} -> {out_dim} in the \
                 adapter"
            )));
        }
    }
    Ok(adapter)
}

fn expect(shown: &str, name: &str, t: &Tensor, shape: &[i64]) -> Result<()> {
    if t.size() != shape {
        return Err(Error::msg(format!(
            "layer `{shown}`: `{name}` is {:?}, expected {shape:?}",
            t.size()
        )));
    }
    Ok(())
}

/// `torch.nn.init.kaiming_uniform_(a = sqrt(5))` of a (rows x cols) matrix: U(-1/sqrt(cols),
/// 1/sqrt(cols)), from libtorch's global generator.
pub fn kaiming(rows: i64, cols: i64) -> Tensor {
    let bound = 1.0 / (cols as f64).sqrt();
    Tensor::rand([rows, cols], (Kind::Float, tch::Device::Cpu)) * (2.0 * bound) - bound
}

/// `x` in `kind` (no operation when it already is).
pub(crate) fn in_kind(x: &Tensor, kind: Kind) -> Tensor {
    if x.kind() == kind {
        x.shallow_clone()
    } else {
        x.to_kind(kind)
    }
}

/// `t * scale`, skipping the multiplication by 1.
pub(crate) fn scaled(t: Tensor, scale: f64) -> Tensor {
    if scale == 1.0 {
        t
    } else {
        t * scale
    }
}

/// Leaves with gradients (or not) of `t`.
pub(crate) fn leaf(t: &Tensor, on: bool) -> Tensor {
    t.detach().set_requires_grad(on)
}
