//! What a training run is, apart from its steps: which adapter ([`AdapterKind`]), where it
//! writes ([`RunPaths`]), which settings decide its result ([`training_fingerprint`]), and
//! which base model it belongs to ([`model_identity`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Kind;

use crate::adapter::file::{architecture_hash, weights_fingerprint, AdapterFile, ModelIdentity};
use crate::adapter::{AdapterConfig, MixerInit};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::sdxl::model_dir::ModelDir;
use crate::sdxl::unet::UNet2DConditionModel;

/// The two adapters the app compares. They share every setting but the mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    Lora,
    Moslora,
}

impl AdapterKind {
    pub const BOTH: [AdapterKind; 2] = [AdapterKind::Lora, AdapterKind::Moslora];

    pub fn name(self) -> &'static str {
        match self {
            AdapterKind::Lora => "lora",
            AdapterKind::Moslora => "moslora",
        }
    }

    /// The label people see.
    pub fn label(self) -> &'static str {
        match self {
            AdapterKind::Lora => "LoRA",
            AdapterKind::Moslora => "MoSLoRA",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "lora" => Ok(AdapterKind::Lora),
            "moslora" => Ok(AdapterKind::Moslora),
            _ => Err(Error::setting(
                "adapter",
                format!("unknown adapter {s:?}: expected `lora` or `moslora`"),
            )),
        }
    }

    /// The run's adapter settings for this kind: LoRA drops the mixer, MoSLoRA keeps the
    /// configured one (orthogonal by default).
    pub fn adapter_config(self, cfg: &RunConfig) -> AdapterConfig {
        let mut a = cfg.adapter.clone();
        if self == AdapterKind::Lora {
            a.mixer = MixerInit::None;
        } else if a.mixer == MixerInit::None {
            a.mixer = MixerInit::Orthogonal;
        }
        a
    }
}

/// Where one adapter's run writes.
#[derive(Debug)]
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn new(cfg: &RunConfig, kind: AdapterKind) -> Self {
        RunPaths {
            dir: cfg.output.join(kind.name()),
        }
    }
    pub fn adapter(&self) -> PathBuf {
        self.dir.join("adapter.safetensors")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }
    pub fn loss_csv(&self) -> PathBuf {
        self.dir.join("loss.csv")
    }
    pub fn loss_png(&self) -> PathBuf {
        self.dir.join("loss.png")
    }
    pub fn samples(&self) -> PathBuf {
        self.dir.join("samples")
    }
    /// The adapters kept along the way (`train.save_adapter_every`).
    pub fn step_adapters(&self) -> PathBuf {
        self.dir.join("adapters")
    }
    /// The adapter as it was after `step` steps.
    pub fn step_adapter(&self, step: u64) -> PathBuf {
        self.step_adapters()
            .join(format!("step{step:06}.safetensors"))
    }
}

/// The settings that determine an adapter's values, keyed as in RUN.yaml (`subject.images`,
/// `train.learning_rate`, `adapter.rank`, ...). Adapters and checkpoints keep them in their
/// metadata (`training.settings`), so that a run can say which of them changed.
pub fn training_settings(cfg: &RunConfig, kind: AdapterKind) -> serde_json::Value {
    let mut train = cfg.train.clone();
    // Bookkeeping settings do not change the result.
    train.checkpoint_every = 0;
    train.sample_every = 0;
    train.save_adapter_every = 0;
    let mut settings = serde_json::json!({
        "model": cfg.model, "seed": cfg.seed, "subject": cfg.subject, "train": train,
        "adapter": kind.adapter_config(cfg), "device": cfg.device, "dtype": cfg.dtype,
    });
    // The masks decide the result too: each photo's, by name (`masks.<photo>` when changed).
    if cfg.train.masked_loss {
        settings["masks"] = super::masks::fingerprint(&cfg.subject.images);
    }
    settings
}

/// A digest of [`training_settings`]: if it changes, the adapter is stale.
pub fn training_fingerprint(cfg: &RunConfig, kind: AdapterKind) -> String {
    fingerprint_of(&training_settings(cfg, kind))
}

/// The fingerprint of a settings value as [`training_settings`] makes it.
pub fn fingerprint_of(settings: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(settings.to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The identity of the model an adapter is trained on.
pub fn model_identity(
    dir: &ModelDir,
    unet: &mut UNet2DConditionModel,
    kind: Kind,
) -> Result<ModelIdentity> {
    // A Hugging Face snapshot is named by its id, not by its commit.
    let name = crate::hub::id_of_snapshot(&dir.root).unwrap_or_else(|| {
        dir.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.root.display().to_string())
    });
    Ok(ModelIdentity {
        name,
        architecture: architecture_hash(unet),
        weights: weights_fingerprint(&dir.weight_files("unet", kind)?)?,
    })
}

/// Is the adapter at `path` finished and trained with exactly these settings?
pub fn is_current(cfg: &RunConfig, kind: AdapterKind, path: &Path) -> bool {
    let Ok(f) = AdapterFile::read(path) else {
        return false;
    };
    f.meta.steps == cfg.train.steps
        && f.meta.training.get("fingerprint").and_then(|v| v.as_str())
            == Some(training_fingerprint(cfg, kind).as_str())
}
