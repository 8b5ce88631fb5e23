//! Adapter files: `.safetensors` with `unet.<module>.lora_A.weight` (r x in),
//! `.lora_B.weight` (out x r) and, for MoSLoRA, `.lora_AB.weight` (the r x r mixer, named as
//! in the MoSLoRA authors' code), plus metadata under the `moslora` key (JSON). Text-encoder
//! adapters sit beside them under `text_encoder.<module>` and `text_encoder_2.<module>`.
//!
//! A plain LoRA file in this layout is also diffusers' PEFT layout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::{
    adapted, text_encoder_parts, Adaptable, AdapterConfig, Component, Family, LayerAdapter,
    MixerInit,
};
use crate::error::{Error, Result};
use crate::sdxl::config::UNetConfig;
use crate::sdxl::pipeline::TextEncoders;
use crate::sdxl::sgm_names::Layout;
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
    /// `lora`, `moslora`, `dora`, `loha` or `lokr` (or a user's name for it).
    pub name: String,
    pub adapter: AdapterConfig,
    pub base_model: ModelIdentity,
    /// The run's settings (the RUN.yaml's `train:`, `subject:` and seed), as JSON.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Optimizer steps done.
    #[serde(default)]
    pub steps: u64,
    /// Number of adapted layers, in every component together.
    pub layers: usize,
    /// The base model's UNet block structure, which decides the layers' kohya names (written
    /// by [`save`] from the UNet saved; absent in files from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet_blocks: Option<UnetBlocks>,
}

/// A UNet's block structure as far as layer names depend on it: kohya's (SGM's) numbering of
/// `input_blocks` / `output_blocks` counts the resnets per block, so SDXL's (2 per block)
/// `input_blocks_4_1` is `input_blocks_3_1` in a UNet with one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnetBlocks {
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: i64,
    /// Per up block: does it hold attentions?
    pub up_attention: Vec<bool>,
}

impl UnetBlocks {
    pub fn of(config: &UNetConfig) -> Self {
        Self::from_layout(&Layout::unet(config))
    }

    pub fn from_layout(l: &Layout) -> Self {
        UnetBlocks {
            layers_per_block: l.layers_per_block,
            up_attention: l.up_attention.clone(),
        }
    }

    /// The naming layout (no VAE part: adapters have none).
    pub fn layout(&self) -> Layout {
        Layout {
            layers_per_block: self.layers_per_block,
            up_attention: self.up_attention.clone(),
            vae_blocks: 0,
        }
    }

    /// For messages: "2 resnets per block, attention in up blocks 0 and 1 of 3".
    pub fn describe(&self) -> String {
        let with: Vec<String> = (0..self.up_attention.len())
            .filter(|&i| self.up_attention[i])
            .map(|i| i.to_string())
            .collect();
        format!(
            "{} resnet(s) per block, attention in up block(s) {} of {}",
            self.layers_per_block,
            if with.is_empty() {
                "none".to_string()
            } else {
                with.join(", ")
            },
            self.up_attention.len()
        )
    }

    /// The structure the UNet layer names of an adapter show, for files from before it was
    /// recorded: the highest resnet or attention index in a down block is one less than
    /// `layers_per_block`, in an up block `layers_per_block`; up blocks named with
    /// `attentions` hold them. None when the names do not tell (no UNet layer in a down or up
    /// block).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut per: Option<i64> = None;
        let mut up_attention: Vec<bool> = Vec::new();
        for name in names {
            let s: Vec<&str> = name.split('.').collect();
            let [blocks, b, kind, i, ..] = s.as_slice() else {
                continue;
            };
            let (Ok(b), Ok(i)) = (b.parse::<usize>(), i.parse::<i64>()) else {
                continue;
            };
            if !matches!(*kind, "resnets" | "attentions") {
                continue;
            }
            let at_least = match *blocks {
                "down_blocks" => i + 1,
                "up_blocks" => {
                    if up_attention.len() <= b {
                        up_attention.resize(b + 1, false);
                    }
                    up_attention[b] |= *kind == "attentions";
                    i
                }
                _ => continue,
            };
            per = Some(per.map_or(at_least, |p| p.max(at_least)));
        }
        Some(UnetBlocks {
            layers_per_block: per.filter(|&p| p > 0)?,
            up_attention,
        })
    }
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
    let meta = with_blocks(unet, meta);
    save_parts(&mut [(Component::Unet, unet)], &meta, path)
}

/// `meta` recording the block structure of `unet` (the model its layers are named in).
fn with_blocks(unet: &UNet2DConditionModel, meta: &AdapterMeta) -> AdapterMeta {
    AdapterMeta {
        unet_blocks: Some(UnetBlocks::of(unet.config())),
        ..meta.clone()
    }
}

/// Write the adapters of the UNet and, when given, of both text encoders (atomically).
pub fn save_with_text(
    unet: &mut UNet2DConditionModel,
    text: Option<&mut TextEncoders>,
    meta: &AdapterMeta,
    path: &Path,
) -> Result<()> {
    let meta = with_blocks(unet, meta);
    let mut parts: Vec<(Component, &mut dyn Adaptable)> = vec![(Component::Unet, unet)];
    if let Some(text) = text {
        for (c, m) in text_encoder_parts(text) {
            parts.push((c, m));
        }
    }
    save_parts(&mut parts, &meta, path)
}

/// Write the adapters of the given parts under their components' prefixes (atomically).
pub fn save_parts(
    parts: &mut [(Component, &mut dyn Adaptable)],
    meta: &AdapterMeta,
    path: &Path,
) -> Result<()> {
    let mut tensors = Vec::new();
    let f32cpu = |t: &Tensor| t.detach().to_kind(Kind::Float).to_device(Device::Cpu);
    for (c, model) in parts.iter_mut() {
        let prefix = c.prefix();
        for l in adapted(&mut **model) {
            let a = super::layer_adapter(l).expect("adapted");
            let name = &l.name;
            for (part, t) in a.tensors() {
                tensors.push((format!("{prefix}.{name}.{part}.weight"), f32cpu(&t)));
            }
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

/// One layer's tensors as read from a file, by part name (`lora_A`, `hada_w1_a`, ...).
#[derive(Debug)]
pub struct LayerTensors {
    pub parts: BTreeMap<String, Tensor>,
}

impl LayerTensors {
    /// LoRA's and DoRA's A (r x in).
    pub fn a(&self) -> &Tensor {
        &self.parts["lora_A"]
    }
    /// LoRA's and DoRA's B (out x r).
    pub fn b(&self) -> &Tensor {
        &self.parts["lora_B"]
    }
    /// MoSLoRA's mixer.
    pub fn mixer(&self) -> Option<&Tensor> {
        self.parts.get("lora_AB")
    }

    /// The adapter these tensors make, for a layer `in -> out` when `dims` is given (checked),
    /// scaled by `scale` on top of alpha/r; `shown` names the layer in errors.
    pub fn adapter(
        &self,
        cfg: &AdapterConfig,
        dims: Option<(i64, i64)>,
        scale: f64,
        shown: &str,
    ) -> Result<Box<dyn LayerAdapter>> {
        let parts = self
            .parts
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        let mut a = super::family::from_parts(cfg, parts, dims, shown)?;
        a.rescale(scale);
        Ok(a)
    }
}

/// A loaded adapter file.
#[derive(Debug)]
pub struct AdapterFile {
    pub meta: AdapterMeta,
    /// UNet module path -> tensors
    pub layers: BTreeMap<String, LayerTensors>,
    /// `text_encoder` module path -> tensors (empty for a UNet-only adapter)
    pub text_encoder: BTreeMap<String, LayerTensors>,
    /// `text_encoder_2` module path -> tensors (empty for a UNet-only adapter)
    pub text_encoder_2: BTreeMap<String, LayerTensors>,
}

/// The metadata of the adapter file at `path`, without reading its tensors.
pub fn read_meta(path: &Path) -> Result<AdapterMeta> {
    meta_of(&MappedFile::open(path)?, path)
}

fn meta_of(f: &MappedFile, path: &Path) -> Result<AdapterMeta> {
    let bad = |what: String| Error::BadFile {
        path: path.to_path_buf(),
        what,
    };
    let md = f.metadata()?;
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
    Ok(meta)
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
        let meta = meta_of(&f, path)?;
        let bad = |what: String| Error::BadFile {
            path: path.to_path_buf(),
            what,
        };
        let mut parts: BTreeMap<(Component, String), HashMap<String, Tensor>> = BTreeMap::new();
        for (name, _) in f.tensors().tensors() {
            let (component, rest) = Component::split(&name)
                .ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
            let (module, part) = rest
                .strip_suffix(".weight")
                .and_then(|r| r.rsplit_once('.'))
                .ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
            let t = f.load(&name)?;
            crate::sdxl::weights::check_finite(&t, &name, path)?;
            parts
                .entry((component, module.to_string()))
                .or_default()
                .insert(part.to_string(), t);
        }
        let mut file = AdapterFile {
            meta,
            layers: BTreeMap::new(),
            text_encoder: BTreeMap::new(),
            text_encoder_2: BTreeMap::new(),
        };
        let (rank, mixer_kind) = (file.meta.adapter.rank, file.meta.adapter.mixer);
        let family = file.meta.adapter.family;
        for ((component, module), mut p) in parts {
            // UNet layers are named bare in messages, as before text encoders had adapters.
            let shown = match component {
                Component::Unet => module.clone(),
                c => format!("{}.{module}", c.prefix()),
            };
            if family != Family::Lora {
                // Checked in full, shapes included, by the family's own reader.
                super::family::from_parts(
                    &file.meta.adapter,
                    p.iter()
                        .map(|(k, v)| (k.clone(), v.shallow_clone()))
                        .collect(),
                    None,
                    &shown,
                )
                .map_err(|e| bad(e.to_string()))?;
                file.layers_mut(component).insert(
                    module,
                    LayerTensors {
                        parts: p.into_iter().collect(),
                    },
                );
                continue;
            }
            let (Some(a), Some(b)) = (p.remove("lora_A"), p.remove("lora_B")) else {
                return Err(bad(format!("layer `{shown}` lacks lora_A or lora_B")));
            };
            let mixer = p.remove("lora_AB");
            if let Some(extra) = p.keys().next() {
                return Err(bad(format!(
                    "layer `{shown}` has an unknown part `{extra}`"
                )));
            }
            let r = rank;
            let ok = a.size().len() == 2
                && a.size()[0] == r
                && b.size().len() == 2
                && b.size()[1] == r
                && mixer.as_ref().is_none_or(|m| m.size() == [r, r]);
            if !ok {
                return Err(bad(format!(
                    "layer `{shown}`: tensor shapes A {:?}, B {:?} do not fit rank {r}",
                    a.size(),
                    b.size()
                )));
            }
            if (mixer_kind == MixerInit::None) != mixer.is_none() {
                return Err(bad(format!(
                    "layer `{shown}`: mixer presence contradicts metadata"
                )));
            }
            let mut parts = BTreeMap::from([("lora_A".to_string(), a), ("lora_B".to_string(), b)]);
            if let Some(m) = mixer {
                parts.insert("lora_AB".to_string(), m);
            }
            file.layers_mut(component)
                .insert(module, LayerTensors { parts });
        }
        if file.layer_count() != file.meta.layers {
            return Err(bad(format!(
                "holds {} layers, its metadata says {} (truncated or edited file)",
                file.layer_count(),
                file.meta.layers
            )));
        }
        Ok(file)
    }

    /// One component's layers, by module path.
    pub fn component_layers(&self, c: Component) -> &BTreeMap<String, LayerTensors> {
        match c {
            Component::Unet => &self.layers,
            Component::TextEncoder => &self.text_encoder,
            Component::TextEncoder2 => &self.text_encoder_2,
        }
    }

    fn layers_mut(&mut self, c: Component) -> &mut BTreeMap<String, LayerTensors> {
        match c {
            Component::Unet => &mut self.layers,
            Component::TextEncoder => &mut self.text_encoder,
            Component::TextEncoder2 => &mut self.text_encoder_2,
        }
    }

    /// Does the adapter change the text encoders too (prompts must then be encoded with it)?
    pub fn has_text_encoder_layers(&self) -> bool {
        !self.text_encoder.is_empty() || !self.text_encoder_2.is_empty()
    }

    /// Trained parameters in every component together (a fixed mixer is not trained).
    pub fn trained_parameters(&self) -> i64 {
        let fixed_mixer = !self.meta.adapter.mixer.trained();
        Component::ALL
            .iter()
            .flat_map(|&c| self.component_layers(c).values())
            .flat_map(|t| t.parts.iter())
            .filter(|(part, _)| !(fixed_mixer && part.as_str() == "lora_AB"))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// Adapted layers in every component together.
    pub fn layer_count(&self) -> usize {
        Component::ALL
            .iter()
            .map(|&c| self.component_layers(c).len())
            .sum()
    }

    /// Attach this adapter's UNet layers to the UNet (replacing any adapter there), scaled by
    /// `scale` on top of alpha/r. Refuses a file made for another architecture, naming the
    /// first layer that does not fit.
    pub fn apply(&self, unet: &mut UNet2DConditionModel, scale: f64, path: &Path) -> Result<()> {
        self.attach(Component::Unet, unet, scale, path)
    }

    /// Attach this adapter's text-encoder layers to both text encoders, as `apply` does for
    /// the UNet (nothing for a UNet-only adapter).
    pub fn apply_text_encoders(
        &self,
        text: &mut TextEncoders,
        scale: f64,
        path: &Path,
    ) -> Result<()> {
        for (c, model) in text_encoder_parts(text) {
            self.attach(c, model, scale, path)?;
        }
        Ok(())
    }

    /// Attach one component's layers to the model part `model`.
    pub fn attach<M: Adaptable + ?Sized>(
        &self,
        component: Component,
        model: &mut M,
        scale: f64,
        path: &Path,
    ) -> Result<()> {
        let layers = self.component_layers(component);
        if layers.is_empty() {
            return Ok(());
        }
        let mut by_name: HashMap<String, &mut crate::sdxl::nn::Linear> = model
            .adaptable_linears_mut()
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect();
        let foreign = |what: String| Error::AdapterMismatch {
            adapter: path.to_path_buf(),
            model: "this model".into(),
            what,
            trained_on: self.meta.base_model.name.clone(),
        };
        // UNet layers are named bare, as before text encoders had adapters.
        let shown = |module: &str| match component {
            Component::Unet => module.to_string(),
            c => format!("{}.{module}", c.prefix()),
        };
        for (module, t) in layers {
            let l = by_name
                .get_mut(module)
                .ok_or_else(|| foreign(format!("the model has no layer `{}`", shown(module))))?;
            let (out_dim, in_dim) = (l.out_dim(), l.in_dim());
            let mut a = t
                .adapter(
                    &self.meta.adapter,
                    Some((in_dim, out_dim)),
                    scale,
                    &shown(module),
                )
                .map_err(|e| foreign(e.to_string()))?;
            a.to_device(l.weight.device());
            super::family::install_boxed(l, a);
        }
        Ok(())
    }
}
