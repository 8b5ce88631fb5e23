//! The low-rank adapter of one frozen linear layer W0:
//! `y = W0 x + (alpha / r) * B M A x`, with A (r x in), B (out x r, zero at start) and an
//! optional r x r mixer M. Plain LoRA has no mixer (M = I, not stored); MoSLoRA trains M.
//! DoRA ([`super::dora`]) builds on it.

use std::any::Any;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::family::{in_kind, scaled, Family, LayerAdapter};
use crate::error::{Error, Result};
use crate::sdxl::nn::LinearDelta;

/// How the r x r mixer starts (MoSLoRA paper, Tab. 3), or that there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixerInit {
    /// Plain LoRA: no mixer.
    None,
    /// Orthogonal (the paper's choice for SDXL).
    Orthogonal,
    /// `kaiming_uniform_(a = sqrt(5))` (the authors' code).
    Kaiming,
    /// The identity: starts as LoRA, trained.
    Identity,
    /// N(0, 1/r).
    Normal,
    /// All zeros: no gradient ever reaches A, B or M (kept to show exactly that).
    Zero,
    /// The fixed two-subspace mixer of the paper's section 2.2, [[I, I], [I, I]]: not trained.
    Butterfly,
}

impl MixerInit {
    pub const ALL: &'static [&'static str] = &[
        "none",
        "orthogonal",
        "kaiming",
        "identity",
        "normal",
        "zero",
        "butterfly",
    ];

    pub fn name(self) -> &'static str {
        match self {
            MixerInit::None => "none",
            MixerInit::Orthogonal => "orthogonal",
            MixerInit::Kaiming => "kaiming",
            MixerInit::Identity => "identity",
            MixerInit::Normal => "normal",
            MixerInit::Zero => "zero",
            MixerInit::Butterfly => "butterfly",
        }
    }

    pub fn trained(self) -> bool {
        !matches!(self, MixerInit::None | MixerInit::Butterfly)
    }

    /// A mixer by name (any case); a name that is none of them gets the list, and the
    /// nearest name when one is close ("orthogonl": did you mean `orthogonal`?).
    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        if let Ok(m) = serde_yaml::from_str::<MixerInit>(&lower) {
            if MixerInit::ALL.contains(&lower.as_str()) {
                return Ok(m);
            }
        }
        let hint = MixerInit::ALL
            .iter()
            .map(|c| (strsim::normalized_damerau_levenshtein(&lower, c), *c))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .filter(|(score, _)| *score >= 0.5)
            .map(|(_, c)| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        Err(Error::setting(
            "mixer",
            format!(
                "unknown mixer {s:?}{hint}: expected one of {}",
                MixerInit::ALL.join(", ")
            ),
        ))
    }
}

/// How A starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AInit {
    /// `kaiming_uniform_(a = sqrt(5))`: U(-1/sqrt(in), 1/sqrt(in)) (the paper, peft's default).
    Kaiming,
    /// N(0, 1/r) (diffusers' scripts and the authors' SDXL script: peft's "gaussian").
    Gaussian,
}

impl AInit {
    pub fn name(self) -> &'static str {
        match self {
            AInit::Kaiming => "kaiming",
            AInit::Gaussian => "gaussian",
        }
    }
}

/// `torch.nn.init.orthogonal_` for a square matrix: Q of the QR decomposition of a normal
/// draw, with signs fixed by R's diagonal so the distribution is uniform (Haar).
pub fn orthogonal(r: i64) -> Tensor {
    let x = Tensor::randn([r, r], (Kind::Float, tch::Device::Cpu));
    let (q, rr) = Tensor::linalg_qr(&x, "reduced");
    let signs = rr.diagonal(0, 0, 1).sign();
    q * signs.unsqueeze(0)
}

/// [[I, I], [I, I]] with r/2 x r/2 blocks.
pub fn butterfly(r: i64) -> Result<Tensor> {
    if r % 2 != 0 {
        return Err(Error::msg(format!(
            "the butterfly mixer needs an even rank, got {r}"
        )));
    }
    let eye = Tensor::eye(r / 2, (Kind::Float, tch::Device::Cpu));
    let row = Tensor::cat(&[&eye, &eye], 1);
    Ok(Tensor::cat(&[&row, &row], 0))
}

/// A's starting values, (rank, in).
pub fn init_a(in_dim: i64, rank: i64, how: AInit) -> Result<Tensor> {
    if rank < 1 {
        return Err(Error::msg(format!(
            "adapter rank must be at least 1, got {rank}"
        )));
    }
    let cpu = (Kind::Float, tch::Device::Cpu);
    Ok(match how {
        AInit::Kaiming => {
            let bound = 1.0 / (in_dim as f64).sqrt();
            Tensor::rand([rank, in_dim], cpu) * (2.0 * bound) - bound
        }
        AInit::Gaussian => Tensor::randn([rank, in_dim], cpu) * (1.0 / rank as f64),
    })
}

/// The mixer's starting value, (rank, rank), or none for plain LoRA.
pub fn init_mixer(rank: i64, how: MixerInit) -> Result<Option<Tensor>> {
    let cpu = (Kind::Float, tch::Device::Cpu);
    Ok(match how {
        MixerInit::None => None,
        MixerInit::Orthogonal => Some(orthogonal(rank)),
        MixerInit::Kaiming => {
            let bound = 1.0 / (rank as f64).sqrt();
            Some(Tensor::rand([rank, rank], cpu) * (2.0 * bound) - bound)
        }
        MixerInit::Identity => Some(Tensor::eye(rank, cpu)),
        MixerInit::Normal => Some(Tensor::randn([rank, rank], cpu) * (1.0 / rank as f64)),
        MixerInit::Zero => Some(Tensor::zeros([rank, rank], cpu)),
        MixerInit::Butterfly => Some(butterfly(rank)?),
    })
}

/// The adapter tensors of one layer. Trained tensors have `requires_grad` set; the optimizer
/// holds shallow clones of the same tensors.
#[derive(Debug)]
pub struct LowRankAdapter {
    /// (r, in)
    pub a: Tensor,
    /// (out, r)
    pub b: Tensor,
    /// (r, r), absent for plain LoRA.
    pub mixer: Option<Tensor>,
    pub mixer_trained: bool,
    /// alpha / r
    pub scale: f64,
}

impl LowRankAdapter {
    /// A freshly initialised adapter for a layer `in_dim -> out_dim` (draws from libtorch's
    /// global generator: seed it first).
    pub fn init(
        in_dim: i64,
        out_dim: i64,
        rank: i64,
        alpha: f64,
        a_init: AInit,
        mixer: MixerInit,
    ) -> Result<Self> {
        let a = init_a(in_dim, rank, a_init)?;
        let m = init_mixer(rank, mixer)?;
        let b = Tensor::zeros([out_dim, rank], (Kind::Float, tch::Device::Cpu));
        Ok(Self::from_tensors(a, b, m, mixer.trained(), alpha))
    }

    /// An adapter from existing tensors (loaded from a file, or given by a test).
    pub fn from_tensors(
        a: Tensor,
        b: Tensor,
        mixer: Option<Tensor>,
        mixer_trained: bool,
        alpha: f64,
    ) -> Self {
        let rank = a.size()[0];
        LowRankAdapter {
            a,
            b,
            mixer,
            mixer_trained,
            scale: alpha / rank as f64,
        }
    }

    pub fn rank(&self) -> i64 {
        self.a.size()[0]
    }

    /// Make the trained tensors leaves that collect gradients.
    pub fn set_trainable(&mut self, on: bool) {
        self.a = self.a.detach().set_requires_grad(on);
        self.b = self.b.detach().set_requires_grad(on);
        if let Some(m) = &self.mixer {
            self.mixer = Some(m.detach().set_requires_grad(on && self.mixer_trained));
        }
    }

    /// The trained tensors, named as in the adapter file (`lora_A`, `lora_B`, `lora_AB`).
    pub fn trained(&self) -> Vec<(&'static str, Tensor)> {
        let mut v = vec![
            ("lora_A", self.a.shallow_clone()),
            ("lora_B", self.b.shallow_clone()),
        ];
        if let (Some(m), true) = (&self.mixer, self.mixer_trained) {
            v.push(("lora_AB", m.shallow_clone()));
        }
        v
    }

    /// Move to the device and dtype of the layer (adapters train in f32).
    pub fn to(&mut self, device: tch::Device) {
        self.a = self.a.to_device(device);
        self.b = self.b.to_device(device);
        self.mixer = self.mixer.as_ref().map(|m| m.to_device(device));
    }

    /// The side branch `scale * B M A x`, computed in the adapter's dtype (f32) and returned in
    /// that dtype; the caller adds it to the frozen output.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = in_kind(x, self.a.kind()).linear(&self.a, None::<Tensor>);
        let h = match &self.mixer {
            Some(m) => h.linear(m, None::<Tensor>),
            None => h,
        };
        scaled(h.linear(&self.b, None::<Tensor>), self.scale)
    }

    /// `scale * B M A` (out x in), the update that merging adds to W0.
    pub fn delta_weight(&self) -> Tensor {
        let down = match &self.mixer {
            Some(m) => m.matmul(&self.a),
            None => self.a.shallow_clone(),
        };
        self.b.matmul(&down) * self.scale
    }

    /// The mixer folded into the down projection: `(M A, B)`, an exact plain LoRA of the same
    /// rank and alpha (what other tools can load).
    pub fn folded(&self) -> (Tensor, Tensor) {
        let down = match &self.mixer {
            Some(m) => m.matmul(&self.a),
            None => self.a.shallow_clone(),
        };
        (down.detach(), self.b.detach())
    }
}

/// What the frozen layer sees of its adapter: the branch, and the weight that merging adds.
impl LinearDelta for LowRankAdapter {
    fn forward(&self, x: &Tensor) -> Tensor {
        LowRankAdapter::forward(self, x)
    }

    fn delta_weight(&self, _w0: &Tensor) -> Tensor {
        LowRankAdapter::delta_weight(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl LayerAdapter for LowRankAdapter {
    fn family(&self) -> Family {
        Family::Lora
    }

    fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut v = vec![
            ("lora_A", self.a.shallow_clone()),
            ("lora_B", self.b.shallow_clone()),
        ];
        if let Some(m) = &self.mixer {
            v.push(("lora_AB", m.shallow_clone()));
        }
        v
    }

    fn trained(&self) -> Vec<(&'static str, Tensor)> {
        LowRankAdapter::trained(self)
    }

    fn set_trainable(&mut self, on: bool) {
        LowRankAdapter::set_trainable(self, on)
    }

    fn to_device(&mut self, device: tch::Device) {
        self.to(device)
    }

    fn rescale(&mut self, s: f64) {
        self.scale *= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixer_names_parse_and_near_misses_get_a_suggestion() {
        assert_eq!(
            MixerInit::parse("Orthogonal").unwrap(),
            MixerInit::Orthogonal
        );
        assert_eq!(MixerInit::parse("butterfly").unwrap(), MixerInit::Butterfly);
        let e = MixerInit::parse("orthogonl").unwrap_err().to_string();
        assert!(e.contains("did you mean `orthogonal`?"), "{e}");
        assert!(e.contains("expected one of none, orthogonal"), "{e}");
        let e = MixerInit::parse("kaimin").unwrap_err().to_string();
        assert!(e.contains("did you mean `kaiming`?"), "{e}");
        let e = MixerInit::parse("xyzzy").unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }
}
