//! Adapter files: `.safetensors` with `unet.<module>.lora_A.weight` (r x in),
//! `.lora_B.weight` (out x r) and, for MoSLoRA, `.lora_AB.weight` (the r x r mixer, named as
//! in the MoSLoRA authors' code), plus metadata under the `moslora` key (JSON).
//!
//! A plain LoRA file in this layout is also diffusers' PEFT layout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::{adapted, AdapterConfig, LowRankAdapter, MixerInit};
use crate::error::{Error, Result};
use crate::sdxl::unet::UNet2DConditionModel;
use crate::sdxl::weights::{save_safetensors, MappedFile};

pub const FORMAT_VERSION: u32 = 1;
const META_KEY: &str = "moslora";

/// Which base model an adapter belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ModelIdentity {
    /// The folder or file name, for people.
    pub name: String,
    /// sha256 of the UNet's layer names and shapes: adapters only fit models with the same.
    pub architecture: String,
    /// sha256 of the UNet weight files' sizes and first and last MiB: the same weights.
    pub weights: String,
}

/// Everything an adapter file says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterMeta {
    pub format_version: u32,
    /// `lora` or `moslora` (or a user's name for it).
    pub name: String,
    pub adapter: AdapterConfig,
    pub base_model: ModelIdentity,
    /// The run's settings (the RUN.yaml's `train:`, `subject:` and seed), as JSON.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Optimizer steps done.
    #[serde(default)]
    pub steps: u64,
    /// Number of adapted layers.
    pub layers: usize,
}

/// sha256 of a UNet's linear layers' names and shapes.
pub fn architecture_hash(unet: &mut UNet2DConditionModel) -> String {
    let mut h = Sha256::new();
    for l in unet.attention_linears_mut() {
        h.update(format!("{}:{:?};", l.name, l.weight.size()).as_bytes());
    }
    hex(&h.finalize())
}

/// A cheap fingerprint of weight files: their sizes and first and last MiB.
pub fn weights_fingerprint(files: &[std::path::PathBuf]) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Sha256::new();
    for path in files {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        h.update(len.to_le_bytes());
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
        h.update(&buf);
        f.seek(SeekFrom::Start(len - buf.len() as u64))
            .map_err(|e| Error::io(path, e))?;
        f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
        h.update(&buf);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write the UNet's adapters (atomically).
pub fn save(unet: &mut UNet2DConditionModel, meta: &AdapterMeta, path: &Path) -> Result<()> {
    let mut tensors = Vec::new();
    for l in adapted(unet) {
        let a = l.adapter.as_ref().expect("adapted");
        let f32cpu = |t: &Tensor| t.detach().to_kind(Kind::Float).to_device(Device::Cpu);
        tensors.push((format!("unet.{}.lora_A.weight", l.name), f32cpu(&a.a)));
        tensors.push((format!("unet.{}.lora_B.weight", l.name), f32cpu(&a.b)));
        if let Some(m) = &a.mixer {
            tensors.push((format!("unet.{}.lora_AB.weight", l.name), f32cpu(m)));
        }
    }
    let mut md = HashMap::new();
    md.insert("format".to_string(), "pt".to_string());
    md.insert(
        META_KEY.to_string(),
        serde_json::to_string(meta).expect("serialisable"),
    );
    save_safetensors(&tensors, Some(md), path)
}

/// One layer's tensors as read from a file.
pub struct LayerTensors {
    pub a: Tensor,
    pub b: Tensor,
    pub mixer: Option<Tensor>,
}

/// A loaded adapter file.
pub struct AdapterFile {
    pub meta: AdapterMeta,
    /// module path -> tensors
    pub layers: BTreeMap<String, LayerTensors>,
}

impl AdapterFile {
    pub fn read(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::msg(format!(
                "adapter file {} does not exist",
                path.display()
            )));
        }
        let f = MappedFile::open(path)?;
        let md = f.metadata()?;
        let bad = |what: String| Error::BadFile {
            path: path.to_path_buf(),
            what,
        };
        let meta_json = md.get(META_KEY).ok_or_else(|| {
            bad(
                "not a moslora adapter (no `moslora` metadata): for kohya or diffusers LoRA \
                 files use the tool that made them"
                    .into(),
            )
        })?;
        let meta: AdapterMeta = serde_json::from_str(meta_json)
            .map_err(|e| bad(format!("unreadable adapter metadata ({e})")))?;
        if meta.format_version > FORMAT_VERSION {
            return Err(bad(format!(
                "adapter format version {} is newer than this moslora reads ({FORMAT_VERSION})",
                meta.format_version
            )));
        }
        let mut parts: BTreeMap<String, HashMap<String, Tensor>> = BTreeMap::new();
        for (name, _) in f.tensors().tensors() {
            let rest = name
                .strip_prefix("unet.")
                .and_then(|r| r.strip_suffix(".weight"))
                .ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
            let (module, part) = rest
                .rsplit_once('.')
                .ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
            parts
                .entry(module.to_string())
                .or_default()
                .insert(part.to_string(), f.load(&name)?);
        }
        let mut layers = BTreeMap::new();
        for (module, mut p) in parts {
            let (Some(a), Some(b)) = (p.remove("lora_A"), p.remove("lora_B")) else {
                return Err(bad(format!("layer `{module}` lacks lora_A or lora_B")));
            };
            let mixer = p.remove("lora_AB");
            if let Some(extra) = p.keys().next() {
                return Err(bad(format!(
                    "layer `{module}` has an unknown part `{extra}`"
                )));
            }
            let r = meta.adapter.rank;
            let ok = a.size().len() == 2
                && a.size()[0] == r
                && b.size().len() == 2
                && b.size()[1] == r
                && mixer.as_ref().is_none_or(|m| m.size() == [r, r]);
            if !ok {
                return Err(bad(format!(
                    "layer `{module}`: tensor shapes A {:?}, B {:?} do not fit rank {r}",
                    a.size(),
                    b.size()
                )));
            }
            if (meta.adapter.mixer == MixerInit::None) != mixer.is_none() {
                return Err(bad(format!(
                    "layer `{module}`: mixer presence contradicts metadata"
                )));
            }
            layers.insert(module, LayerTensors { a, b, mixer });
        }
        if layers.len() != meta.layers {
            return Err(bad(format!(
                "holds {} layers, its metadata says {} (truncated or edited file)",
                layers.len(),
                meta.layers
            )));
        }
        Ok(AdapterFile { meta, layers })
    }

    /// Attach this adapter to the UNet (replacing any adapter there), scaled by `scale` on top
    /// of alpha/r. Refuses a file made for another architecture, naming the first layer that
    /// does not fit.
    pub fn apply(&self, unet: &mut UNet2DConditionModel, scale: f64, path: &Path) -> Result<()> {
        let mut by_name: HashMap<String, &mut crate::sdxl::nn::Linear> = unet
            .attention_linears_mut()
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect();
        let foreign = |what: String| {
            Error::msg(format!(
                "adapter {} does not fit this model: {what} (it was trained on `{}`)",
                path.display(),
                self.meta.base_model.name
            ))
        };
        for (module, t) in &self.layers {
            let l = by_name
                .get_mut(module)
                .ok_or_else(|| foreign(format!("the model has no layer `{module}`")))?;
            let (out_dim, in_dim) = (l.out_dim(), l.in_dim());
            if t.a.size()[1] != in_dim || t.b.size()[0] != out_dim {
                return Err(foreign(format!(
                    "layer `{module}` is {in_dim} -> {out_dim} in the model but {} -> {} in \
                     the adapter",
                    t.a.size()[1],
                    t.b.size()[0]
                )));
            }
            l.unmerge();
            let device = l.weight.device();
            let mut a = LowRankAdapter::from_tensors(
                t.a.to_device(device),
                t.b.to_device(device),
                t.mixer.as_ref().map(|m| m.to_device(device)),
                self.meta.adapter.mixer.trained(),
                self.meta.adapter.alpha(),
            );
            a.scale *= scale;
            l.adapter = Some(a);
        }
        Ok(())
    }
}
