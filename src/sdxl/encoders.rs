//! Opening the encoder folders the metrics use, in transformers' layout (`config.json` +
//! `model.safetensors`): a whole CLIP (`CLIPModel`, with its tokenizer) and DINO (`ViTModel`).
//! Every problem is one line naming the file and what was expected: a missing folder, a
//! missing config or weights file, pickle-only weights, a missing or misshapen tensor, weights
//! of another model, a text-only or vision-only CLIP, a DINO folder given as CLIP.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Device, Kind};

use super::clip::{CLIP_OPTION, DINO_OPTION};
use super::clip_model::{transformers_weight_files, ClipConfig, ClipModel};
use super::image_processing::Preprocess;
use super::tokenizer::ClipTokenizer;
use super::vit::{VitConfig, VitModel};
use super::weights::{SafetensorsSource, Weights};
use crate::error::{Error, Result};

/// A whole CLIP ready to score: model, tokenizer, preprocessing.
#[derive(Debug)]
pub struct LoadedClip {
    pub dir: PathBuf,
    pub model: ClipModel,
    pub tokenizer: ClipTokenizer,
    pub preprocess: Preprocess,
}

/// DINO ready to score.
#[derive(Debug)]
pub struct LoadedDino {
    pub dir: PathBuf,
    pub model: VitModel,
    pub config: VitConfig,
    pub preprocess: Preprocess,
}

fn config_path(dir: &Path, flag: &str, what: &str) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::msg(format!(
            "{}: no such folder: {flag} expects {what}",
            dir.display()
        )));
    }
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::msg(format!(
            "{}: no config.json: {flag} expects {what} (config.json + model.safetensors)",
            dir.display()
        )));
    }
    Ok(path)
}

/// Checkpoint entries no model asks for: buffers (`position_ids`), and the heads a ViT may
/// be saved with (`pooler.`, `classifier.`), which the DINO feature does not use.
fn ignorable(name: &str) -> bool {
    name.ends_with("position_ids") || name.starts_with("pooler.") || name.starts_with("classifier.")
}

fn check_all_used(w: &Weights, files: &[PathBuf]) -> Result<()> {
    let unused: Vec<String> = w.unused().into_iter().filter(|n| !ignorable(n)).collect();
    if unused.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = unused.iter().take(3).map(String::as_str).collect();
    Err(Error::BadFile {
        path: files[0].clone(),
        what: format!(
            "{} tensor(s) are not part of the {} that config.json describes (e.g. {}): \
             the weights and config.json do not belong together",
            unused.len(),
            w.component(),
            shown.join(", ")
        ),
    })
}

/// Open a CLIP folder (`--clip`): `CLIPModel` weights, its tokenizer, and the preprocessing
/// (CLIP's, at the vision tower's `image_size`).
pub fn load_clip(dir: &Path, device: Device) -> Result<LoadedClip> {
    let dir = &crate::hub::locate(dir)?;
    let what = "a transformers CLIPModel folder such as openai/clip-vit-base-patch32";
    let cfg_path = config_path(dir, CLIP_OPTION, what)?;
    let cfg = ClipConfig::from_file(&cfg_path)?;
    let files = transformers_weight_files(dir)?;
    let mut src = SafetensorsSource::open(&files)?;
    // A CLIPModel saved inside a wrapper (`clip.` / `model.` prefix) is still CLIP.
    src.alias_all(|k| {
        ["clip.", "model."]
            .iter()
            .find_map(|p| k.strip_prefix(p).map(str::to_string))
    });
    let w = Weights::new(Rc::new(src), "CLIP", Kind::Float, device);
    let model = ClipModel::new(&w, &cfg)?;
    check_all_used(&w, &files)?;
    let has_tokenizer = dir.join("tokenizer.json").is_file()
        || (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file());
    if !has_tokenizer || !dir.join("tokenizer_config.json").is_file() {
        return Err(Error::msg(format!(
            "{}: no CLIP tokenizer: expected tokenizer_config.json with vocab.json + merges.txt \
             (or tokenizer.json) beside the weights; CLIP-T needs it",
            dir.display()
        )));
    }
    let tokenizer = ClipTokenizer::from_dir(dir)?;
    let preprocess = Preprocess::clip(cfg.vision_config.image_size as u32);
    Ok(LoadedClip {
        dir: dir.to_path_buf(),
        model,
        tokenizer,
        preprocess,
    })
}

/// Open a DINO folder (`--dino`). `eps` overrides the config's layer-norm epsilon (the
/// original DINO code's 1e-6 against the HF config's 1e-12), for measuring its effect.
pub fn load_dino(dir: &Path, device: Device, eps: Option<f64>) -> Result<LoadedDino> {
    let dir = &crate::hub::locate(dir)?;
    let what = "a transformers ViTModel folder such as facebook/dino-vits16";
    let cfg_path = config_path(dir, DINO_OPTION, what)?;
    let mut cfg = VitConfig::from_file(&cfg_path)?;
    if let Some(e) = eps {
        cfg.layer_norm_eps = e;
    }
    let files = transformers_weight_files(dir)?;
    let mut src = SafetensorsSource::open(&files)?;
    // A ViT saved inside a classification head (`ViTForImageClassification`) has `vit.`.
    src.alias_all(|k| k.strip_prefix("vit.").map(str::to_string));
    let w = Weights::new(Rc::new(src), "DINO", Kind::Float, device);
    let model = VitModel::new(&w, &cfg)?;
    check_all_used(&w, &files)?;
    Ok(LoadedDino {
        dir: dir.to_path_buf(),
        model,
        config: cfg,
        preprocess: Preprocess::dino(),
    })
}
