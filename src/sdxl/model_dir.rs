//! A diffusers-layout SDXL folder: `model_index.json` and one sub-folder per component, each
//! with its `config.json` and weights as `.safetensors` (whole, `.fp16` variant, or sharded
//! with an `.index.json`). A single-file checkpoint (`.safetensors`) is accepted wherever a
//! folder is: it is read through [`SingleFile`], which serves the same tensor names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Device, Kind};

use super::config::{read_json, ClipTextConfig, UNetConfig, VaeConfig};
use super::single_file::{is_single_file, SingleFile};
use super::tokenizer::ClipTokenizer;
use super::weights::{SafetensorsSource, Weights};
use crate::error::{Error, Result};
use crate::schedule::config::SchedulerConfig;

/// The components an SDXL pipeline folder must have, and their weight file stems.
pub const COMPONENTS: &[(&str, &str)] = &[
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
    ("text_encoder_2", "model"),
];

#[derive(Debug)]
pub struct ModelDir {
    pub root: PathBuf,
    /// Set when `root` is a single-file checkpoint rather than a folder.
    pub single: Option<Rc<SingleFile>>,
}

/// A model's native picture size (1024 px for SDXL: 128 latents x 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeSize {
    pub sample_size: i64,
    pub vae_factor: i64,
}

impl NativeSize {
    pub fn pixels(&self) -> i64 {
        self.sample_size * self.vae_factor
    }

    /// A warning when `width` x `height` (called `what`, e.g. `train.resolution 1024`) is more
    /// than twice or less than half the native size on either side: the model draws poorly
    /// there, and a larger size costs its square in time.
    pub fn warning(&self, what: &str, width: i64, height: i64) -> Option<String> {
        let n = self.pixels();
        let far = |s: i64| s > 2 * n || 2 * s < n;
        (far(width) || far(height)).then(|| {
            format!(
                "warning: {what} is far from this model's native {n} px (sample_size {} x VAE \
                 factor {}): it was not made for that size, so expect poor pictures{}",
                self.sample_size,
                self.vae_factor,
                if width.max(height) > n {
                    format!(
                        " and about {:.0} times the time and memory per picture",
                        (width * height) as f64 / (n * n) as f64
                    )
                } else {
                    String::new()
                }
            )
        })
    }
}

impl ModelDir {
    /// Open a folder, or a single-file checkpoint, and check that every SDXL component is
    /// present.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with_configs(root, None)
    }

    /// `open`, reading a single-file checkpoint with the configs (and tokenizers) of the
    /// diffusers folder `configs` rather than its own or SDXL base's.
    pub fn open_with_configs(root: &Path, configs: Option<&Path>) -> Result<Self> {
        // A Hugging Face id (`org/name`) is its cached snapshot (a path that exists wins).
        let root = &crate::hub::locate(root)?;
        if is_single_file(root) {
            let single = SingleFile::open(root, configs)?;
            return Ok(ModelDir {
                root: root.to_path_buf(),
                single: Some(Rc::new(single)),
            });
        }
        if !root.is_dir() {
            return Err(Error::msg(format!(
                "model folder {} does not exist: give a downloaded SDXL folder such as \
                 stable-diffusion-xl-base-1.0 or a Hugging Face id such as \
                 stabilityai/stable-diffusion-xl-base-1.0, or make a tiny one with \
                 `moslora init-model --preset tiny --out DIR`",
                root.display()
            )));
        }
        let dir = ModelDir {
            root: root.to_path_buf(),
            single: None,
        };
        let index = root.join("model_index.json");
        if index.exists() {
            let v: serde_json::Value = read_json(&index)?;
            let class = v.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
            if !class.is_empty() && !class.starts_with("StableDiffusionXL") {
                return Err(Error::config(
                    &index,
                    format!("this is a {class} folder, not Stable Diffusion XL"),
                ));
            }
        }
        for (component, _) in
            COMPONENTS
                .iter()
                .chain(&[("scheduler", ""), ("tokenizer", ""), ("tokenizer_2", "")])
        {
            let sub = root.join(component);
            if !sub.is_dir() {
                return Err(Error::msg(format!(
                    "model folder {}: component `{component}` is missing (no {} folder); \
                     an SDXL pipeline has unet, vae, text_encoder, text_encoder_2, tokenizer, \
                     tokenizer_2 and scheduler",
                    root.display(),
                    sub.display()
                )));
            }
        }
        Ok(dir)
    }

    pub fn component(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A tokenizer (`tokenizer` or `tokenizer_2`).
    pub fn tokenizer(&self, name: &str) -> Result<ClipTokenizer> {
        match &self.single {
            Some(s) => s.tokenizer(name),
            None => ClipTokenizer::from_dir(&self.component(name)),
        }
    }

    pub fn unet_config(&self) -> Result<UNetConfig> {
        if let Some(s) = &self.single {
            return s.configs.unet();
        }
        let path = self.config_path("unet")?;
        let cfg: UNetConfig = read_json(&path)?;
        cfg.validate(&path)?;
        Ok(cfg)
    }

    pub fn vae_config(&self) -> Result<VaeConfig> {
        if let Some(s) = &self.single {
            return s.configs.vae();
        }
        read_json(&self.config_path("vae")?)
    }

    /// The size the model was made for: the UNet's `sample_size` latents x the VAE's factor.
    pub fn native_size(&self) -> Result<NativeSize> {
        Ok(NativeSize {
            sample_size: self.unet_config()?.sample_size,
            vae_factor: self.vae_config()?.scale_factor(),
        })
    }

    pub fn text_encoder_config(&self, name: &str) -> Result<ClipTextConfig> {
        if let Some(s) = &self.single {
            return s.configs.text_encoder(name);
        }
        read_json(&self.config_path(name)?)
    }

    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        if let Some(s) = &self.single {
            return s.configs.scheduler();
        }
        let path = self.component("scheduler").join("scheduler_config.json");
        if path.exists() {
            read_json(&path)
        } else {
            Ok(SchedulerConfig::default())
        }
    }

    fn config_path(&self, component: &str) -> Result<PathBuf> {
        let path = self.component(component).join("config.json");
        if !path.exists() {
            return Err(Error::msg(format!(
                "model folder {}: component `{component}` has no config.json ({})",
                self.root.display(),
                path.display()
            )));
        }
        Ok(path)
    }

    /// The weight files of a component, preferring the `.fp16` variant when the weights will
    /// be half precision anyway (half the bytes to read) and the full file otherwise.
    pub fn weight_files(&self, component: &str, kind: Kind) -> Result<Vec<PathBuf>> {
        if let Some(s) = &self.single {
            return Ok(vec![s.path.clone()]);
        }
        let stem = COMPONENTS
            .iter()
            .find(|(c, _)| *c == component)
            .map(|(_, s)| *s)
            .ok_or_else(|| Error::msg(format!("unknown component {component}")))?;
        let dir = self.component(component);
        let variants: &[&str] = if kind == Kind::Float {
            &["", ".fp16"]
        } else {
            &[".fp16", ""]
        };
        for v in variants {
            let single = dir.join(format!("{stem}{v}.safetensors"));
            if single.exists() {
                return Ok(vec![single]);
            }
            let index = dir.join(format!("{stem}{v}.safetensors.index.json"));
            if index.exists() {
                return shard_files(&index);
            }
        }
        let has_bin = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "bin"))
            })
            .unwrap_or(false);
        let hint = if has_bin {
            " (only PyTorch .bin files are there; moslora reads .safetensors: download the \
             .safetensors files of the model)"
        } else {
            ""
        };
        Err(Error::msg(format!(
            "model folder {}: component `{component}` has no weights: expected {}/{stem}.safetensors \
             or {stem}.fp16.safetensors{hint}",
            self.root.display(),
            dir.display()
        )))
    }

    /// The memory-mapped weights of a component, with the alternative spellings real
    /// checkpoints use mapped onto the names the model code asks for. Folders only: a single
    /// file is read through `weights`.
    pub fn source(&self, component: &str, kind: Kind) -> Result<SafetensorsSource> {
        if self.single.is_some() {
            return Err(Error::msg(format!(
                "{}: a single-file checkpoint has no per-component weight files",
                self.root.display()
            )));
        }
        let files = self.weight_files(component, kind)?;
        let mut src = SafetensorsSource::open(&files)?;
        add_aliases(component, &mut src);
        Ok(src)
    }

    /// A `Weights` root over a component's files.
    pub fn weights(&self, component: &str, kind: Kind, device: Device) -> Result<Weights> {
        if let Some(s) = &self.single {
            return s.weights(component, kind, device);
        }
        let src = self.source(component, kind)?;
        Ok(Weights::new(Rc::new(src), component, kind, device))
    }
}

/// Map spellings found in real files onto the names the model code asks for.
pub fn add_aliases(component: &str, src: &mut SafetensorsSource) {
    match component {
        // transformers 5 writes CLIPTextModel without the `text_model.` prefix; the SDXL
        // download (transformers 4) has it. The model asks for the prefixed names.
        "text_encoder" | "text_encoder_2" => src.alias_all(|k| {
            (!k.starts_with("text_model.") && !k.starts_with("text_projection"))
                .then(|| format!("text_model.{k}"))
        }),
        // Older diffusers VAE files name the mid-block attention query/key/value/proj_attn.
        "vae" => src.alias_all(|k| {
            let (head, tail) = k.rsplit_once('.')?;
            let (block, leaf) = head.rsplit_once('.')?;
            let new = match leaf {
                "query" => "to_q",
                "key" => "to_k",
                "value" => "to_v",
                "proj_attn" => "to_out.0",
                _ => return None,
            };
            Some(format!("{block}.{new}.{tail}"))
        }),
        _ => {}
    }
}

/// Tensors a checkpoint may carry that no model needs.
fn ignorable(name: &str) -> bool {
    name.ends_with("position_ids")
}

/// After a component is built: every tensor of its files must have been used, or the files
/// are for another architecture than the config describes.
pub fn check_all_used(w: &Weights) -> Result<()> {
    let unused: Vec<String> = w.unused().into_iter().filter(|n| !ignorable(n)).collect();
    if unused.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = unused.iter().take(5).map(String::as_str).collect();
    Err(Error::msg(format!(
        "{}: {} tensor(s) in the weights are not part of the model its config describes \
         (e.g. {}): the weights and config.json do not belong together",
        w.component(),
        unused.len(),
        shown.join(", ")
    )))
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let idx: Index = read_json(index)?;
    let mut files: Vec<String> = idx.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    for p in &paths {
        if !p.exists() {
            return Err(Error::config(
                index,
                format!("shard {} is missing", p.display()),
            ));
        }
    }
    Ok(paths)
}
