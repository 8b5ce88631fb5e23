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
    /// The adapter's trained parameters (every layer, text encoders included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<i64>,
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
    /// The automatic metrics, once `moslora score` has run (absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<ImageScores>,
}

/// One image's automatic metrics: each a cosine in [-1, 1]; absent when its encoder was not
/// given.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageScores {
    /// Mean cosine of the DINO features with every subject photo's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dino: Option<f64>,
    /// Mean cosine of the CLIP image embeddings with every subject photo's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_i: Option<f64>,
    /// Cosine of the CLIP image embedding with its prompt's text embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_t: Option<f64>,
}

impl ImageScores {
    /// The metrics by name, in the order they are reported.
    pub const NAMES: [&'static str; 3] = ["dino", "clip_i", "clip_t"];

    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "dino" => self.dino,
            "clip_i" => self.clip_i,
            "clip_t" => self.clip_t,
            _ => None,
        }
    }

    /// The name people read: DINO, CLIP-I, CLIP-T.
    pub fn title(name: &str) -> &'static str {
        match name {
            "dino" => "DINO",
            "clip_i" => "CLIP-I",
            "clip_t" => "CLIP-T",
            _ => "?",
        }
    }
}

/// A mean with its 95 % interval over `n` values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// One adapter's metrics over all its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMetrics {
    pub adapter: String,
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dino: Option<Estimate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_i: Option<Estimate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_t: Option<Estimate>,
}

impl AdapterMetrics {
    pub fn get(&self, name: &str) -> Option<&Estimate> {
        match name {
            "dino" => self.dino.as_ref(),
            "clip_i" => self.clip_i.as_ref(),
            "clip_t" => self.clip_t.as_ref(),
            _ => None,
        }
    }
}

/// Adapter `b` against adapter `a` on one metric, over images of identical prompt, seed and
/// initial noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedMetric {
    pub a: String,
    pub b: String,
    /// `dino`, `clip_i` or `clip_t`.
    pub metric: String,
    /// Mean of `b - a` with its bootstrap 95 % interval (pairs resampled); `n` pairs.
    pub diff: Estimate,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// `|b - a|` up to this is a tie.
    pub tie_margin: f64,
    /// Exact two-sided sign test on wins against losses.
    pub sign_test_p: Option<f64>,
}

/// What `moslora score` adds to a render folder's manifest besides the per-image scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSummary {
    /// The encoder folders used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dino: Option<String>,
    /// How the prompts were written for CLIP-T.
    pub clip_t_prompt: String,
    pub photos: usize,
    /// The subject photos against each other (mean over every unordered pair): the ceiling
    /// the renders are read against. `clip_t` is absent.
    pub ceiling: ImageScores,
    pub adapters: Vec<AdapterMetrics>,
    pub paired: Vec<PairedMetric>,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    /// The tables in plain words (`metrics::verdict`), for the pages that show them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GridEntry {
    pub prompt_id: String,
    pub file: String,
}

/// One adapter's validation losses, as its run logged them (`validation.csv`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidationCurve {
    /// `lora` or `moslora`.
    pub adapter: String,
    pub label: String,
    /// (step, loss); step 0 is the base model.
    pub points: Vec<(u64, f32)>,
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
    /// Each trained adapter's validation losses (`train.validate_every`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation: Vec<ValidationCurve>,
    /// The automatic metrics' tables, once `moslora score` has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSummary>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        if !path.is_file() {
            return Err(Error::msg(format!(
                "{}: no {FILE}: expected a render folder written by `moslora render` or \
                 `moslora compare`",
                dir.display()
            )));
        }
        let text = crate::fsutil::read_to_string(&path)?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::config(&path, format!("not a moslora render manifest ({e})")))?;
        if m.format_version > FORMAT_VERSION {
            return Err(Error::config(&path, "written by a newer moslora"));
        }
        for (field, entry) in m.named_files() {
            crate::fsutil::inside(dir, entry)
                .map_err(|why| Error::config(&path, format!("{field} {why}")))?;
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialisable");
        crate::fsutil::write_bytes(&dir.join(FILE), text.as_bytes())
    }

    /// Every file the manifest names (relative paths) with the field that names it.
    pub fn named_files(&self) -> Vec<(String, &str)> {
        let mut v: Vec<(String, &str)> = Vec::new();
        let photos = self.subject.photos.iter().enumerate();
        v.extend(photos.map(|(i, p)| (format!("subject.photos[{i}]"), p.as_str())));
        let images = self.images.iter().enumerate();
        v.extend(images.map(|(i, e)| (format!("images[{i}].file"), e.file.as_str())));
        let grids = self.grids.iter().enumerate();
        v.extend(grids.map(|(i, g)| (format!("grids[{i}].file"), g.file.as_str())));
        v.push(("contact_sheet".into(), self.contact_sheet.as_str()));
        v.push(("gallery".into(), self.gallery.as_str()));
        if let Some(c) = &self.loss_curve {
            v.push(("loss_curve".into(), c.as_str()));
        }
        v
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

fn est(e: Option<&Estimate>) -> String {
    match e {
        Some(e) => format!("{:.3} [{:.3}, {:.3}]", e.mean, e.lo, e.hi),
        None => "–".into(),
    }
}

fn value(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

fn p_value(p: Option<f64>) -> String {
    match p {
        None => "–".into(),
        Some(p) if p < 0.001 => "< 0.001".into(),
        Some(p) => format!("{p:.3}"),
    }
}

/// The tables as text cells, shared by `scores.md`, the terminal and the gallery.
impl MetricsSummary {
    pub const TABLE_HEADER: [&'static str; 5] = ["", "DINO", "CLIP-I", "CLIP-T", "images"];
    pub const PAIRED_HEADER: [&'static str; 5] = [
        "metric",
        "mean difference [95 % CI]",
        "win / tie / loss",
        "pairs",
        "sign test p",
    ];

    fn label_of(&self, name: &str) -> String {
        self.adapters
            .iter()
            .find(|a| a.adapter == name)
            .map_or_else(|| name.to_string(), |a| a.label.clone())
    }

    /// The per-adapter rows (label, DINO, CLIP-I, CLIP-T as "mean [lo, hi]", images), then the
    /// photos' ceiling.
    pub fn table_rows(&self) -> Vec<[String; 5]> {
        let mut rows: Vec<[String; 5]> = self
            .adapters
            .iter()
            .map(|a| {
                let n = ImageScores::NAMES
                    .iter()
                    .filter_map(|k| a.get(k).map(|e| e.n))
                    .max()
                    .unwrap_or(0);
                [
                    a.label.clone(),
                    est(a.dino.as_ref()),
                    est(a.clip_i.as_ref()),
                    est(a.clip_t.as_ref()),
                    n.to_string(),
                ]
            })
            .collect();
        let p = self.photos;
        rows.push([
            "real photos (ceiling)".into(),
            value(self.ceiling.dino),
            value(self.ceiling.clip_i),
            "–".into(),
            crate::words::count(p * p.saturating_sub(1) / 2, "pair"),
        ]);
        rows
    }

    /// The paired comparison's rows (metric, mean difference [CI], win / tie / loss, pairs,
    /// sign test p).
    pub fn paired_rows(&self) -> Vec<[String; 5]> {
        self.paired
            .iter()
            .map(|p| {
                [
                    ImageScores::title(&p.metric).to_string(),
                    format!("{:+.4} [{:+.4}, {:+.4}]", p.diff.mean, p.diff.lo, p.diff.hi),
                    format!("{} / {} / {}", p.wins, p.ties, p.losses),
                    p.diff.n.to_string(),
                    p_value(p.sign_test_p),
                ]
            })
            .collect()
    }

    /// "MoSLoRA − LoRA over identical prompt, seed and noise (tie: ...)".
    pub fn paired_title(&self) -> Option<String> {
        let p = self.paired.first()?;
        Some(format!(
            "{} − {} over identical prompt, seed and noise (tie: |difference| ≤ {})",
            self.label_of(&p.b),
            self.label_of(&p.a),
            p.tie_margin
        ))
    }
}
