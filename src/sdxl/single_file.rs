//! Single-file SDXL checkpoints (`sd_xl_base_1.0.safetensors` and the fine-tunes artists
//! download) as a model source: memory-mapped, any of f32/f16/bf16, read tensor by tensor in
//! diffusers' names through the SGM name mapping (`sgm_names`), so the model constructors
//! that read a diffusers folder read a single file unchanged.
//!
//! A single file has no configs and no tokenizers. The configs come from, in this order: a
//! folder the caller names (a diffusers folder, e.g. for a small test model), the configs
//! moslora embeds in the files it writes (`moslora.configs` metadata), or the built-in SDXL
//! base 1.0 configs, which every SDXL base fine-tune shares. The tokenizers are the built-in
//! CLIP vocabulary (both SDXL tokenizers use it) unless the configs folder has its own.
//!
//! Files that are not SDXL base checkpoints are refused up front, saying what they are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::Dtype;
use tch::{Device, Kind, Tensor};

use super::config::{presets, ClipTextConfig, UNetConfig, VaeConfig};
use super::sgm_names::{self, Layout, Part, CLIP_G_PREFIX, CLIP_L_PREFIX, UNET_PREFIX, VAE_PREFIX};
use super::tokenizer::ClipTokenizer;
use super::weights::{Init, MappedFile, TensorSource, Weights};
use crate::error::{Error, Result};
use crate::schedule::config::SchedulerConfig;

/// Metadata key under which moslora stores the component configs in the files it writes.
pub const CONFIGS_KEY: &str = "moslora.configs";

/// The parts of a model that have a config, in the order they are written.
pub const CONFIG_COMPONENTS: [&str; 5] =
    ["unet", "vae", "text_encoder", "text_encoder_2", "scheduler"];

/// Does `path` name a single-file checkpoint rather than a folder?
pub fn is_single_file(path: &Path) -> bool {
    path.is_file()
        || (!path.exists()
            && path
                .extension()
                .is_some_and(|e| e == "safetensors" || e == "ckpt"))
}

/// The component configurations (JSON texts) a model is built with.
#[derive(Debug, Clone)]
pub struct ModelConfigs {
    texts: BTreeMap<String, String>,
    /// Where they came from, for messages.
    pub origin: String,
}

impl ModelConfigs {
    /// A built-in preset (`sdxl-base`, `tiny`).
    pub fn preset(name: &str) -> Result<Self> {
        let texts = presets::texts(name)
            .ok_or_else(|| Error::msg(format!("unknown config preset {name:?}")))?;
        Ok(ModelConfigs {
            texts: CONFIG_COMPONENTS
                .iter()
                .zip(texts)
                .map(|(c, t)| (c.to_string(), t.to_string()))
                .collect(),
            origin: format!("the built-in `{name}` configs"),
        })
    }

    /// The configs of a diffusers folder (`<component>/config.json`,
    /// `scheduler/scheduler_config.json`; a missing scheduler config means SDXL's).
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let mut texts = BTreeMap::new();
        for c in CONFIG_COMPONENTS {
            let file = if c == "scheduler" {
                "scheduler_config.json"
            } else {
                "config.json"
            };
            let path = dir.join(c).join(file);
            let text = if path.exists() {
                crate::fsutil::read_to_string(&path)?
            } else if c == "scheduler" {
                presets::texts("sdxl-base").expect("built in")[4].to_string()
            } else {
                return Err(Error::msg(format!(
                    "config folder {}: {} is missing (a diffusers SDXL folder has \
                     unet/, vae/, text_encoder/ and text_encoder_2/ configs)",
                    dir.display(),
                    path.display()
                )));
            };
            texts.insert(c.to_string(), text);
        }
        Ok(ModelConfigs {
            texts,
            origin: format!("the configs in {}", dir.display()),
        })
    }

    /// The configs embedded by moslora in a file's metadata.
    pub fn from_metadata(json: &str, file: &Path) -> Result<Self> {
        let v: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(json).map_err(|e| Error::BadFile {
                path: file.to_path_buf(),
                what: format!("unreadable `{CONFIGS_KEY}` metadata ({e})"),
            })?;
        let mut texts = BTreeMap::new();
        for c in CONFIG_COMPONENTS {
            let cfg = v.get(c).ok_or_else(|| Error::BadFile {
                path: file.to_path_buf(),
                what: format!("`{CONFIGS_KEY}` metadata lacks the {c} config"),
            })?;
            texts.insert(c.to_string(), cfg.to_string());
        }
        Ok(ModelConfigs {
            texts,
            origin: format!("the configs embedded in {}", file.display()),
        })
    }

    /// All configs as one JSON object, for the `moslora.configs` metadata.
    pub fn to_metadata(&self) -> Result<String> {
        let mut map = serde_json::Map::new();
        for (c, t) in &self.texts {
            let v: serde_json::Value = serde_json::from_str(t)
                .map_err(|e| Error::msg(format!("{}: {c} config: {e}", self.origin)))?;
            map.insert(c.clone(), v);
        }
        Ok(serde_json::Value::Object(map).to_string())
    }

    /// The JSON text of one component's config.
    pub fn text(&self, component: &str) -> &str {
        self.texts
            .get(component)
            .map(String::as_str)
            .unwrap_or("{}")
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, component: &str) -> Result<T> {
        serde_json::from_str(self.text(component))
            .map_err(|e| Error::msg(format!("{}: invalid {component} config: {e}", self.origin)))
    }

    pub fn unet(&self) -> Result<UNetConfig> {
        let cfg: UNetConfig = self.parse("unet")?;
        cfg.validate(Path::new(&format!("{} (unet)", self.origin)))?;
        Ok(cfg)
    }

    pub fn vae(&self) -> Result<VaeConfig> {
        self.parse("vae")
    }

    pub fn text_encoder(&self, name: &str) -> Result<ClipTextConfig> {
        self.parse(name)
    }

    pub fn scheduler(&self) -> Result<SchedulerConfig> {
        self.parse("scheduler")
    }

    pub fn layout(&self) -> Result<Layout> {
        Ok(Layout::new(&self.unet()?, &self.vae()?))
    }
}

/// An opened single-file SDXL checkpoint.
#[derive(Debug)]
pub struct SingleFile {
    pub path: PathBuf,
    file: Rc<MappedFile>,
    shapes: Rc<HashMap<String, Vec<i64>>>,
    pub configs: ModelConfigs,
    layout: Layout,
    /// A folder with `tokenizer/` and `tokenizer_2/` to use instead of the built-in ones.
    tokenizers: Option<PathBuf>,
}

impl SingleFile {
    /// Open and identify a checkpoint; `configs` names a diffusers folder whose configs (and
    /// tokenizers, if it has them) describe the file.
    pub fn open(path: &Path, configs: Option<&Path>) -> Result<Self> {
        if !path.exists() {
            return Err(Error::msg(format!(
                "model file {} does not exist",
                path.display()
            )));
        }
        refuse_pickle(path)?;
        check_intact(path)?;
        let file = MappedFile::open(path)?;
        let metadata = file.metadata()?;
        let mut shapes = HashMap::new();
        for (name, view) in file.tensors().tensors() {
            shapes.insert(name, view.shape().iter().map(|&d| d as i64).collect());
        }
        identify(path, &shapes, &metadata)?;
        let (configs, tokenizers) = match configs {
            Some(dir) => {
                let tok = dir.join("tokenizer").is_dir() && dir.join("tokenizer_2").is_dir();
                (
                    ModelConfigs::from_folder(dir)?,
                    tok.then(|| dir.to_path_buf()),
                )
            }
            None => match metadata.get(CONFIGS_KEY) {
                Some(json) => (ModelConfigs::from_metadata(json, path)?, None),
                None => (ModelConfigs::preset("sdxl-base")?, None),
            },
        };
        let layout = configs.layout()?;
        let sf = SingleFile {
            path: path.to_path_buf(),
            file: Rc::new(file),
            shapes: Rc::new(shapes),
            configs,
            layout,
            tokenizers,
        };
        sf.check_fits()?;
        Ok(sf)
    }

    /// Compare the UNet's first convolution with the configs, so a file the configs do not
    /// describe fails here with a hint rather than deep inside a model constructor.
    fn check_fits(&self) -> Result<()> {
        let cfg = self.configs.unet()?;
        let name = format!("{UNET_PREFIX}input_blocks.0.0.weight");
        let Some(shape) = self.shapes.get(&name) else {
            return Err(Error::BadFile {
                path: self.path.clone(),
                what: format!(
                    "not a complete SDXL checkpoint: `{name}` (the UNet's conv_in) is missing"
                ),
            });
        };
        if shape.len() == 4 && shape[1] == 9 && cfg.in_channels == 4 {
            return Err(Error::BadFile {
                path: self.path.clone(),
                what: "an SDXL inpainting checkpoint (its UNet takes 9 input channels): moslora \
                       trains and renders text-to-image SDXL models (4 channels)"
                    .into(),
            });
        }
        let want = [cfg.block_out_channels[0], cfg.in_channels];
        if shape.len() != 4 || shape[..2] != want {
            return Err(Error::BadFile {
                path: self.path.clone(),
                what: format!(
                    "its UNet does not match {}: conv_in is {shape:?}, the configs expect \
                     [{}, {}, 3, 3] (a model of other sizes needs its diffusers configs folder: \
                     `moslora convert --model FILE --config CONFIGS --out FOLDER` makes a \
                     folder every command reads; export and merge take --config too)",
                    self.configs.origin, want[0], want[1]
                ),
            });
        }
        Ok(())
    }

    /// A `Weights` root over one component, in diffusers' names.
    pub fn weights(&self, component: &str, kind: Kind, device: Device) -> Result<Weights> {
        if sgm_names::prefix(component).is_none() {
            return Err(Error::msg(format!("unknown component {component}")));
        }
        let src = ComponentSource {
            file: self.file.clone(),
            shapes: self.shapes.clone(),
            component: component.to_string(),
            layout: self.layout.clone(),
        };
        Ok(Weights::new(Rc::new(src), component, kind, device))
    }

    /// `tokenizer` or `tokenizer_2`.
    pub fn tokenizer(&self, name: &str) -> Result<ClipTokenizer> {
        match &self.tokenizers {
            Some(dir) => ClipTokenizer::from_dir(&dir.join(name)),
            None => builtin_tokenizer(name),
        }
    }

    /// The dtype the UNet is stored in (f16 for most downloads).
    pub fn stored_kind(&self) -> Kind {
        let st = self.file.tensors();
        st.tensor(&format!("{UNET_PREFIX}input_blocks.0.0.weight"))
            .map(|v| kind_of(v.dtype()))
            .unwrap_or(Kind::Float)
    }
}

fn kind_of(d: Dtype) -> Kind {
    match d {
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        _ => Kind::Float,
    }
}

/// One component of a single file, asked for in diffusers' names.
#[derive(Debug)]
struct ComponentSource {
    file: Rc<MappedFile>,
    shapes: Rc<HashMap<String, Vec<i64>>>,
    component: String,
    layout: Layout,
}

impl TensorSource for ComponentSource {
    fn tensor(
        &self,
        name: &str,
        shape: &[i64],
        _init: Init,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let missing = |tensor: String| Error::MissingTensor {
            component: String::new(),
            tensor,
            file: self.file.path.clone(),
        };
        let stored = sgm_names::to_single_file(&self.component, name, &self.layout)
            .ok_or_else(|| missing(format!("{name} (no single-file name known)")))?;
        let found = self
            .shapes
            .get(&stored.name)
            .ok_or_else(|| missing(format!("{} (for {name})", stored.name)))?;
        let expected = stored.part.stored_shape(shape);
        if *found != expected && !(stored.part == Part::Conv1x1 && found == shape) {
            return Err(Error::ShapeMismatch {
                component: String::new(),
                tensor: format!("{} (for {name})", stored.name),
                file: self.file.path.clone(),
                expected,
                found: found.clone(),
            });
        }
        let t = stored.part.extract(&self.file.load(&stored.name)?);
        // A chunk is a view of the whole fused tensor: copy it so the rest can be freed. A
        // transpose is a strided view: lay it out as a folder's weight is, or matmuls take
        // another kernel path and round differently.
        let t = match stored.part {
            Part::Chunk { .. } => t.copy(),
            Part::Transposed => t.contiguous(),
            _ => t,
        };
        let t = t.to_kind(kind).to_device(device);
        super::weights::check_finite(&t, &stored.name, &self.file.path)?;
        Ok(t)
    }

    fn unused(&self, used: &[String]) -> Vec<String> {
        let prefix = sgm_names::prefix(&self.component).unwrap_or("");
        let hit: HashSet<String> = used
            .iter()
            .filter_map(|u| sgm_names::to_single_file(&self.component, u, &self.layout))
            .map(|s| s.name)
            .collect();
        let mut out: Vec<String> = self
            .shapes
            .keys()
            .filter(|k| k.starts_with(prefix) && !hit.contains(*k) && !sgm_names::ignorable(k))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

/// PyTorch pickles can run code when loaded; moslora reads safetensors only.
fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if matches!(ext.as_str(), "ckpt" | "pt" | "pth" | "bin") {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            what: format!(
                "a PyTorch pickle (.{ext}): moslora reads .safetensors checkpoints only \
                 (pickles can run code when loaded); download the .safetensors version"
            ),
        });
    }
    Ok(())
}

/// Catch truncated and damaged files with a message that says so, before parsing them.
fn check_intact(path: &Path) -> Result<()> {
    let bad = |what: String| Error::BadFile {
        path: path.to_path_buf(),
        what,
    };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n8 = [0u8; 8];
    if len < 8 || f.read_exact(&mut n8).is_err() {
        return Err(bad(format!(
            "empty or truncated: {len} bytes, not a safetensors checkpoint"
        )));
    }
    let n = u64::from_le_bytes(n8);
    if !(2..=100_000_000).contains(&n) {
        return Err(bad(format!(
            "corrupt or not a safetensors file: its first 8 bytes announce a header of {n} bytes"
        )));
    }
    if 8 + n > len {
        return Err(bad(format!(
            "truncated: its header should be {n} bytes but the whole file is {len} bytes \
             (an interrupted download or copy? download it again)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| {
            bad(format!(
                "corrupt: the safetensors header is not valid JSON ({e}); the file is damaged or \
                 not a safetensors file"
            ))
        })?;
    let end = parsed
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let need = 8 + n + end;
    if len < need {
        return Err(bad(format!(
            "truncated: its tensors need {need} bytes but the file has {len} ({:.1} % of it): an \
             interrupted download or copy? download it again",
            100.0 * len as f64 / need as f64
        )));
    }
    Ok(())
}

/// Say what a file is when it is not an SDXL base checkpoint.
fn identify(
    path: &Path,
    shapes: &HashMap<String, Vec<i64>>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let has = |p: &str| shapes.keys().any(|k| k.starts_with(p));
    let any = |f: &dyn Fn(&str) -> bool| shapes.keys().any(|k| f(k));
    let what: Option<String> = if metadata.contains_key("moslora") {
        Some(
            "a moslora adapter file, not a model: name the SDXL model it was trained on as the \
             model, and give the adapter where adapters go (`generate --adapter FILE`, `render \
             --adapter NAME=FILE`, `merge --adapter FILE`)"
                .into(),
        )
    } else if has("lora_unet_") || has("lora_te") {
        Some(
            "a kohya LoRA file (lora_unet_*/lora_te* tensors), not a model: load it as a LoRA on \
             top of an SDXL checkpoint"
                .into(),
        )
    } else if any(&|k| {
        k.contains(".lora_A.") || k.contains(".lora_B.") || k.contains(".lora.down.")
    }) {
        Some(
            "a LoRA file in diffusers/PEFT format, not a model: load it as a LoRA on top of an \
             SDXL checkpoint"
                .into(),
        )
    } else if has("cond_stage_model.transformer.") {
        let width = shapes
            .get("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight")
            .and_then(|s| s.last().copied())
            .unwrap_or(768);
        Some(format!(
            "a Stable Diffusion 1.x checkpoint (one CLIP ViT-L text encoder under \
             cond_stage_model.transformer, {width}-wide text context), not Stable Diffusion XL: \
             moslora needs an SDXL model (two text encoders under conditioner.embedders.0/1)"
        ))
    } else if has("cond_stage_model.model.") {
        Some(
            "a Stable Diffusion 2.x checkpoint (one OpenCLIP ViT-H text encoder under \
             cond_stage_model.model, 1024-wide text context), not Stable Diffusion XL: moslora \
             needs an SDXL model (two text encoders under conditioner.embedders.0/1)"
                .into(),
        )
    } else if has("conditioner.embedders.0.model.") && !has(CLIP_G_PREFIX) {
        Some(
            "the SDXL refiner (a single OpenCLIP text encoder as conditioner.embedders.0): \
             moslora needs an SDXL base model or a fine-tune of it"
                .into(),
        )
    } else if has(UNET_PREFIX) && !(has(CLIP_L_PREFIX) && has(CLIP_G_PREFIX)) {
        Some(
            "a UNet without SDXL's two text encoders (no conditioner.embedders.0.transformer.* \
             and conditioner.embedders.1.model.*): not a complete SDXL checkpoint"
                .into(),
        )
    } else if !has(UNET_PREFIX) {
        let diffusers_part = [
            "down_blocks.",
            "text_model.",
            "encoder.down_blocks.",
            "decoder.",
        ]
        .iter()
        .any(|p| has(p));
        if diffusers_part {
            Some(
                "one component of a diffusers model (e.g. unet/diffusion_pytorch_model.\
                 safetensors), not a whole checkpoint: give the model folder, or a single-file \
                 SDXL checkpoint"
                    .into(),
            )
        } else {
            let mut names: Vec<&String> = shapes.keys().collect();
            names.sort();
            Some(format!(
                "not a Stable Diffusion XL checkpoint: none of its {} tensors is under \
                 model.diffusion_model. (first: {})",
                shapes.len(),
                names.first().map(|s| s.as_str()).unwrap_or("none")
            ))
        }
    } else if !has(VAE_PREFIX) {
        Some(
            "an SDXL checkpoint without its VAE (no first_stage_model.* tensors): moslora needs a \
             complete checkpoint"
                .into(),
        )
    } else {
        None
    };
    match what {
        Some(what) => Err(Error::BadFile {
            path: path.to_path_buf(),
            what,
        }),
        None => Ok(()),
    }
}

/// The SDXL tokenizers from the built-in CLIP vocabulary: `tokenizer` pads with
/// `<|endoftext|>`, `tokenizer_2` with `!`. The tokenizer reads a folder, so the files are
/// written to a private temporary folder first and removed once read.
fn builtin_tokenizer(name: &str) -> Result<ClipTokenizer> {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let pad = match name {
        "tokenizer" => "<|endoftext|>",
        "tokenizer_2" => "!",
        _ => return Err(Error::msg(format!("unknown tokenizer {name}"))),
    };
    let dir = std::env::temp_dir().join(format!(
        "moslora-{name}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    ));
    let result = super::model_folder::write_tokenizer(&dir, pad)
        .and_then(|()| ClipTokenizer::from_dir(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}
