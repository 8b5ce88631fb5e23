//! `manifest.json`: every image of a render folder with what made it. Paths are relative to
//! the folder (adapter files excepted). Written last and atomically, listing only files that
//! exist, so a failed run never lists a half-written image.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::adapter::file::ModelIdentity;
use crate::error::{Error, Result};

pub const FORMAT_VERSION: u32 = 1;
pub const FILE: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subject {
    pub name: String,
    pub identifier: String,
    pub class: String,
    /// Copies of the training photos, relative paths.
    pub photos: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: String,
    pub width: i64,
    pub height: i64,
    pub negative_prompt: Option<String>,
    pub dtype: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterEntry {
    /// `base`, `lora`, `moslora`, or a name given with --adapter NAME=FILE.
    pub name: String,
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// sha256 of the adapter file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptEntry {
    pub id: String,
    pub template: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageEntry {
    pub file: String,
    pub prompt_id: String,
    pub prompt: String,
    pub seed: u64,
    pub adapter: String,
    /// sha256 of the initial latent noise (f32 bytes): equal across adapters of one
    /// prompt and seed.
    pub noise_sha256: String,
    pub width: i64,
    pub height: i64,
    /// Everything that determines the pixels, hashed: a re-run reuses an image whose key
    /// is unchanged.
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GridEntry {
    pub prompt_id: String,
    pub file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub subject: Subject,
    pub model: ModelIdentity,
    pub settings: Settings,
    pub adapters: Vec<AdapterEntry>,
    pub prompts: Vec<PromptEntry>,
    pub images: Vec<ImageEntry>,
    pub grids: Vec<GridEntry>,
    pub contact_sheet: String,
    pub gallery: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_curve: Option<String>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let text = crate::fsutil::read_to_string(&path)?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::config(&path, format!("not a moslora render manifest ({e})")))?;
        if m.format_version > FORMAT_VERSION {
            return Err(Error::config(&path, "written by a newer moslora"));
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialisable");
        crate::fsutil::write_bytes(&dir.join(FILE), text.as_bytes())
    }

    /// Every file the manifest names (relative paths).
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = self.subject.photos.clone();
        v.extend(self.images.iter().map(|i| i.file.clone()));
        v.extend(self.grids.iter().map(|g| g.file.clone()));
        v.push(self.contact_sheet.clone());
        v.push(self.gallery.clone());
        v.extend(self.loss_curve.clone());
        v
    }
}
