//! What a training run is, apart from its steps: which adapter ([`AdapterKind`]), where it
//! writes ([`RunPaths`]), which settings decide its result ([`training_fingerprint`]), and
//! which base model it belongs to ([`model_identity`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Kind;

use crate::adapter::file::{architecture_hash, weights_fingerprint, AdapterFile, ModelIdentity};
use crate::adapter::{AdapterConfig, Family, MixerInit};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::sdxl::model_dir::ModelDir;
use crate::sdxl::unet::UNet2DConditionModel;

/// The adapters moslora trains: LoRA and MoSLoRA, the pair it compares by default, and
/// LoRA's relatives DoRA, LoHa and LoKr. They share every setting but what makes them differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    Lora,
    Moslora,
    Dora,
    Loha,
    Lokr,
}

impl AdapterKind {
    /// The default pair.
    pub const BOTH: [AdapterKind; 2] = [AdapterKind::Lora, AdapterKind::Moslora];
    /// Every kind, in the order columns show them.
    pub const ALL: [AdapterKind; 5] = [
        AdapterKind::Lora,
        AdapterKind::Moslora,
        AdapterKind::Dora,
        AdapterKind::Loha,
        AdapterKind::Lokr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AdapterKind::Lora => "lora",
            AdapterKind::Moslora => "moslora",
            AdapterKind::Dora => "dora",
            AdapterKind::Loha => "loha",
            AdapterKind::Lokr => "lokr",
        }
    }

    /// The label people see.
    pub fn label(self) -> &'static str {
        match self {
            AdapterKind::Lora => "LoRA",
            AdapterKind::Moslora => "MoSLoRA",
            AdapterKind::Dora => "DoRA",
            AdapterKind::Loha => "LoHa",
            AdapterKind::Lokr => "LoKr",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        AdapterKind::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or_else(|| {
                Error::setting(
                    "adapter",
                    format!(
                        "unknown adapter {s:?}: expected one of {}",
                        AdapterKind::ALL.map(|k| k.name()).join(", ")
                    ),
                )
            })
    }

    /// The run's adapters (`adapters:` in RUN.yaml, validated when it was loaded).
    pub fn of_run(cfg: &RunConfig) -> Vec<AdapterKind> {
        cfg.adapters
            .iter()
            .filter_map(|a| AdapterKind::parse(a).ok())
            .collect()
    }

    /// The run's adapter settings for this kind: LoRA drops the mixer, MoSLoRA keeps the
    /// configured one (orthogonal by default); DoRA, LoHa and LoKr have no mixer and set
    /// their family. With `same_parameters`, the rank is the one that matches LoRA's
    /// parameters at `adapter.rank` on the model's targeted UNet layers.
    pub fn adapter_config(self, cfg: &RunConfig) -> AdapterConfig {
        let mut a = self.own_config(cfg);
        if cfg.same_parameters && self != AdapterKind::Lora {
            if let Some(dims) = target_dims(cfg) {
                let lora = AdapterKind::Lora.own_config(cfg);
                let budget: i64 = dims
                    .iter()
                    .map(|&(i, o)| crate::adapter::family::layer_parameters(&lora, i, o))
                    .sum();
                a.rank = crate::adapter::family::matched_rank(&a, &dims, budget);
                if a.mixer == MixerInit::Butterfly && a.rank % 2 != 0 {
                    a.rank += 1;
                }
                // The same scale alpha / r as LoRA's.
                a.alpha = Some(cfg.adapter.alpha() / cfg.adapter.rank as f64 * a.rank as f64);
            }
        }
        a
    }

    fn own_config(self, cfg: &RunConfig) -> AdapterConfig {
        let mut a = cfg.adapter.clone();
        a.family = match self {
            AdapterKind::Lora | AdapterKind::Moslora => Family::Lora,
            AdapterKind::Dora => Family::Dora,
            AdapterKind::Loha => Family::Loha,
            AdapterKind::Lokr => Family::Lokr,
        };
        if self == AdapterKind::Moslora {
            if a.mixer == MixerInit::None {
                a.mixer = MixerInit::Orthogonal;
            }
        } else {
            a.mixer = MixerInit::None;
        }
        if a.family != Family::Lokr {
            a.lokr_factor = -1;
        }
        a
    }
}

/// (in, out) of the UNet layers `cfg.adapter.targets` selects in the run's model, from its
/// configuration alone (a model built of shapes); None when the model cannot be read yet.
/// Kept per model and targets: it is asked for at every fingerprint.
/// `same_parameters: true` needs the targeted layers' shapes from the model's UNet
/// configuration: refused at the start when they cannot be read, instead of training every
/// family at `adapter.rank` as if the setting were off.
pub fn check_same_parameters(cfg: &RunConfig) -> Result<()> {
    let matched = AdapterKind::of_run(cfg)
        .iter()
        .any(|&k| k != AdapterKind::Lora);
    if cfg.same_parameters && matched && target_dims(cfg).is_none() {
        return Err(Error::setting(
            "same_parameters",
            format!(
                "same_parameters: true matches each family's rank to LoRA's parameters on the \
                 model's UNet layers, and the UNet configuration of {} could not be read \
                 (unet/config.json in a diffusers folder); set it to false and choose the \
                 ranks yourself, or point `model` at a diffusers folder",
                cfg.model.display()
            ),
        ));
    }
    Ok(())
}

fn target_dims(cfg: &RunConfig) -> Option<Vec<(i64, i64)>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (PathBuf, Vec<String>);
    type Dims = HashMap<Key, Vec<(i64, i64)>>;
    static CACHE: OnceLock<Mutex<Dims>> = OnceLock::new();
    let key = (cfg.model.clone(), cfg.adapter.targets.clone());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(d) = cache.lock().ok()?.get(&key) {
        return Some(d.clone());
    }
    let ucfg = ModelDir::open(&cfg.model).ok()?.unet_config().ok()?;
    let src = std::rc::Rc::new(crate::sdxl::weights::ShapeSource::new());
    let w = crate::sdxl::weights::Weights::new(src, "unet", Kind::Float, tch::Device::Cpu);
    let mut unet = UNet2DConditionModel::new(&w, &ucfg).ok()?;
    let dims: Vec<(i64, i64)> = crate::adapter::targeted(&mut unet, &cfg.adapter.targets)
        .into_iter()
        .map(|l| (l.in_dim(), l.out_dim()))
        .collect();
    cache.lock().ok()?.insert(key, dims.clone());
    Some(dims)
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
    /// The validation losses (`train.validate_every`), beside `loss.csv`.
    pub fn validation_csv(&self) -> PathBuf {
        self.dir.join("validation.csv")
    }
    /// This run's TensorBoard folder, `OUT/tb/<kind>`: `tensorboard --logdir OUT/tb` shows
    /// the runs side by side.
    pub fn tensorboard(&self) -> PathBuf {
        let kind = self.dir.file_name().unwrap_or_default();
        self.dir.with_file_name("tb").join(kind)
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
    /// A request for a sample at the next step (an empty file any program may create, as
    /// the app's "sample now" does); the trainer takes it (removes it) when it samples.
    pub fn sample_request(&self) -> PathBuf {
        self.dir.join("sample-now")
    }
    /// Whether a sample was asked for since the last look; the request is taken.
    pub fn take_sample_request(&self) -> bool {
        std::fs::remove_file(self.sample_request()).is_ok()
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
    train.validate_every = 0;
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
