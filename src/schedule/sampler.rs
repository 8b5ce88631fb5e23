//! The interface every sampler offers to the sampling loop, and the samplers by name.
//!
//! Steps are addressed by their index in the schedule rather than by timestep value
//! (diffusers looks the index up from the value and keeps it as hidden state): the loop
//! knows where it is, and an explicit index cannot drift out of step with the schedule.

use std::fmt;

use tch::Tensor;

use super::config::SchedulerConfig;
use super::ddim::Ddim;
use super::dpm_solver::{DpmAlgorithm, DpmSolverMultistep};
use super::euler::EulerDiscrete;
use super::euler_ancestral::EulerAncestral;
use super::heun::Heun;
use super::unipc::UniPcMultistep;
use crate::error::{Error, Result};

pub trait Scheduler {
    /// Choose `n` denoising steps; resets any state kept between steps.
    fn set_timesteps(&mut self, n: usize) -> Result<()>;

    /// The model's timestep input at each step, in sampling order (noisiest first). A
    /// second-order sampler (Heun) lists a timestep once per model evaluation.
    fn timesteps(&self) -> &[f32];

    /// The noise level at each step and the final one, as diffusers' `sigmas` (empty for a
    /// sampler that keeps none: DDIM).
    fn sigmas(&self) -> &[f32] {
        &[]
    }

    /// Standard deviation of the initial latents: multiply N(0, I) noise by it.
    fn init_noise_sigma(&self) -> f64;

    /// The model input at step `step_index` for the current `sample`.
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Tensor;

    /// Whether `step` adds fresh noise. The sampling loop then passes one N(0, I) draw of the
    /// sample's shape to every step, taken from the render's seeded generator in the order
    /// diffusers takes it: after the initial latents, one draw per step.
    fn stochastic(&self) -> bool {
        false
    }

    /// The sample after step `step_index`, given the model's output there (and, for a
    /// stochastic sampler, the step's noise).
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Tensor;
}

/// The samplers moslora offers, each following one diffusers scheduler class configured from
/// the model's `scheduler_config.json` as `from_config` configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SamplerKind {
    /// `EulerDiscreteScheduler`: SDXL base's own.
    #[default]
    Euler,
    /// `EulerAncestralDiscreteScheduler` (stochastic).
    EulerA,
    /// `HeunDiscreteScheduler`: two model evaluations per step but the last.
    Heun,
    /// `DDIMScheduler` (eta 0).
    Ddim,
    /// `DPMSolverMultistepScheduler` (DPM-Solver++, second order).
    Dpmpp2m,
    /// The same with `use_karras_sigmas=True`.
    Dpmpp2mKarras,
    /// The same with `algorithm_type="sde-dpmsolver++"` too (stochastic).
    Dpmpp2mSdeKarras,
    /// `UniPCMultistepScheduler` (UniPC, bh2, second order).
    UniPc,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 8] = [
        SamplerKind::Euler,
        SamplerKind::EulerA,
        SamplerKind::Heun,
        SamplerKind::Ddim,
        SamplerKind::Dpmpp2m,
        SamplerKind::Dpmpp2mKarras,
        SamplerKind::Dpmpp2mSdeKarras,
        SamplerKind::UniPc,
    ];

    /// The name moslora writes (settings, manifests, render keys).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::EulerA => "euler_a",
            SamplerKind::Heun => "heun",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Dpmpp2m => "dpmpp_2m",
            SamplerKind::Dpmpp2mKarras => "dpmpp_2m_karras",
            SamplerKind::Dpmpp2mSdeKarras => "dpmpp_2m_sde_karras",
            SamplerKind::UniPc => "unipc",
        }
    }

    /// A1111's (and ComfyUI's menus') display name.
    pub fn display_name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "Euler",
            SamplerKind::EulerA => "Euler a",
            SamplerKind::Heun => "Heun",
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Dpmpp2m => "DPM++ 2M",
            SamplerKind::Dpmpp2mKarras => "DPM++ 2M Karras",
            SamplerKind::Dpmpp2mSdeKarras => "DPM++ 2M SDE Karras",
            SamplerKind::UniPc => "UniPC",
        }
    }

    /// The diffusers class it follows.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerA => "EulerAncestralDiscreteScheduler",
            SamplerKind::Heun => "HeunDiscreteScheduler",
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Dpmpp2m | SamplerKind::Dpmpp2mKarras | SamplerKind::Dpmpp2mSdeKarras => {
                "DPMSolverMultistepScheduler"
            }
            SamplerKind::UniPc => "UniPCMultistepScheduler",
        }
    }

    /// Whether its renders depend on noise drawn during sampling.
    pub fn is_stochastic(self) -> bool {
        matches!(self, SamplerKind::EulerA | SamplerKind::Dpmpp2mSdeKarras)
    }

    /// Every spelling accepted for it: the name, A1111's display name, other tools' spellings
    /// (sd-scripts, SimpleTuner, ComfyUI) and, for the classes that only one sampler follows,
    /// the diffusers class name. Compared ignoring case, spaces, `-`, `_` and `+`→`p`.
    fn aliases(self) -> Vec<&'static str> {
        let mut v = vec![self.name(), self.display_name()];
        v.extend(match self {
            SamplerKind::Euler => &["EulerDiscreteScheduler", "k_euler"][..],
            SamplerKind::EulerA => &[
                "euler_ancestral",
                "euler a",
                "k_euler_a",
                "EulerAncestralDiscreteScheduler",
            ][..],
            SamplerKind::Heun => &["HeunDiscreteScheduler", "k_heun"][..],
            SamplerKind::Ddim => &["DDIMScheduler"][..],
            SamplerKind::Dpmpp2m => &[
                "dpmsolver++",
                "dpm++",
                "DPMSolverMultistepScheduler",
                "k_dpmpp_2m",
            ][..],
            SamplerKind::Dpmpp2mKarras => &["dpm++ 2m karras", "k_dpmpp_2m_ka"][..],
            SamplerKind::Dpmpp2mSdeKarras => &["dpm++ 2m sde karras", "k_dpmpp_2m_sde_ka"][..],
            SamplerKind::UniPc => &["UniPCMultistepScheduler", "uni_pc", "uni_pc_bh2"][..],
        });
        v
    }

    /// A sampler from any of its spellings; an unknown name is refused with the list and the
    /// closest match.
    pub fn parse(s: &str) -> Result<Self> {
        let key = normalise(s);
        for kind in SamplerKind::ALL {
            if kind.aliases().iter().any(|a| normalise(a) == key) {
                return Ok(kind);
            }
        }
        let best = SamplerKind::ALL
            .iter()
            .flat_map(|k| k.aliases().into_iter().map(move |a| (*k, a)))
            .map(|(k, a)| {
                (
                    strsim::normalized_damerau_levenshtein(&key, &normalise(a)),
                    k,
                )
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
        let hint = match best {
            Some((score, k)) if score >= 0.5 => format!(" (did you mean `{}`?)", k.name()),
            _ => String::new(),
        };
        Err(Error::msg(format!(
            "unknown sampler {s:?}{hint}; choose one of {} (A1111's names, such as \
             \"DPM++ 2M Karras\", and diffusers' class names are accepted too)",
            names.join(", ")
        )))
    }

    /// `parse` for a setting: the error names `field` (`render.scheduler`, `--scheduler`) and
    /// is one the person invoking must fix (exit code 2).
    pub fn parse_setting(field: &str, value: &str) -> Result<Self> {
        SamplerKind::parse(value).map_err(|e| Error::Setting {
            field: field.to_string(),
            what: format!("{field}: {e}"),
        })
    }

    /// The scheduler, configured from the model's scheduler config.
    pub fn build(self, cfg: &SchedulerConfig) -> Result<Box<dyn Scheduler>> {
        Ok(match self {
            SamplerKind::Euler => Box::new(EulerDiscrete::new(cfg)?),
            SamplerKind::EulerA => Box::new(EulerAncestral::new(cfg)?),
            SamplerKind::Heun => Box::new(Heun::new(cfg)?),
            SamplerKind::Ddim => Box::new(Ddim::new(cfg)?),
            SamplerKind::Dpmpp2m => Box::new(DpmSolverMultistep::new(
                cfg,
                DpmAlgorithm::DpmSolverPp,
                false,
            )?),
            SamplerKind::Dpmpp2mKarras => Box::new(DpmSolverMultistep::new(
                cfg,
                DpmAlgorithm::DpmSolverPp,
                true,
            )?),
            SamplerKind::Dpmpp2mSdeKarras => Box::new(DpmSolverMultistep::new(
                cfg,
                DpmAlgorithm::SdeDpmSolverPp,
                true,
            )?),
            SamplerKind::UniPc => Box::new(UniPcMultistep::new(cfg)?),
        })
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Lower case without spaces, `-` or `_`, with `+` read as `p` ("DPM++ 2M" -> "dpmpp2m").
fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_'))
        .map(|c| {
            if c == '+' {
                'p'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_names_its_sampler() {
        for kind in SamplerKind::ALL {
            for alias in kind.aliases() {
                assert_eq!(SamplerKind::parse(alias).unwrap(), kind, "{alias}");
            }
        }
        for (s, kind) in [
            ("DPM++ 2M Karras", SamplerKind::Dpmpp2mKarras),
            ("dpm++ 2m sde karras", SamplerKind::Dpmpp2mSdeKarras),
            ("Euler a", SamplerKind::EulerA),
            ("euler-a", SamplerKind::EulerA),
            ("UniPC", SamplerKind::UniPc),
            ("DDIMScheduler", SamplerKind::Ddim),
            ("EulerDiscreteScheduler", SamplerKind::Euler),
        ] {
            assert_eq!(SamplerKind::parse(s).unwrap(), kind, "{s}");
        }
    }

    #[test]
    fn aliases_do_not_collide() {
        let mut seen = std::collections::HashMap::new();
        for kind in SamplerKind::ALL {
            for alias in kind.aliases() {
                if let Some(other) = seen.insert(normalise(alias), kind) {
                    assert_eq!(other, kind, "{alias} names two samplers");
                }
            }
        }
    }

    #[test]
    fn an_unknown_name_gets_the_closest() {
        let e = SamplerKind::parse("dpmpp_2m_karas")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `dpmpp_2m_karras`?"), "{e}");
        assert!(e.contains("unipc"), "{e}");
        let e = SamplerKind::parse("plms").unwrap_err().to_string();
        assert!(e.contains("unknown sampler \"plms\""), "{e}");
    }
}
