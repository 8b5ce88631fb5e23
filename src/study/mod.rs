//! Blind human evaluation, as in the paper's Table 6: image pairs of two adapters rendered from
//! the same prompt and seed are shown to raters without saying which is which, and their votes
//! are tallied into win / tie / loss shares with honest statistics.
//!
//! - [`make`]: pairs the two adapters' images from render folders, blinds them (random names,
//!   re-encoded pixels without metadata, equal file sizes within a pair, random sides) and
//!   writes the rater folder plus the key, which is kept outside that folder.
//! - [`page`]: the self-contained rater page.
//! - [`tally`]: reads votes files against the key and computes the statistics.
//! - [`report`]: prints and writes the tally (table, Markdown, CSV, JSON, bar chart).
//! - [`auto_metrics`]: the automatic metrics on the same pairs, and how often votes agree.
//! - [`serve`]: the study folder served live: a secret link per rater, votes in SQLite, an
//!   organiser's page with progress and the tally.

pub mod auto_metrics;
pub mod make;
pub mod page;
pub mod report;
pub mod serve;
pub mod tally;
pub mod verdict;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The `format` field of a key file.
pub const KEY_FORMAT: &str = "moslora-study-key";
/// The `format` field of a votes file. The rater page writes it, and nothing in the rater
/// folder may name the methods, so it is deliberately generic.
pub const VOTES_FORMAT: &str = "study-votes";
pub const FORMAT_VERSION: u32 = 1;

/// The two questions of the paper's study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Which image shows the subject more faithfully (against the reference photos)?
    Similarity,
    /// Which image follows the prompt better?
    Prompt,
}

impl Criterion {
    pub const BOTH: [Criterion; 2] = [Criterion::Similarity, Criterion::Prompt];

    /// The field name in votes files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Criterion::Similarity => "similarity",
            Criterion::Prompt => "prompt",
        }
    }

    /// The paper's wording.
    pub fn title(self) -> &'static str {
        match self {
            Criterion::Similarity => "subject similarity",
            Criterion::Prompt => "prompt consistency",
        }
    }
}

/// Which of the two compared adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    A,
    B,
}

impl Which {
    pub fn other(self) -> Which {
        match self {
            Which::A => Which::B,
            Which::B => Which::A,
        }
    }
}

/// One adapter of the comparison, as the render manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAdapter {
    pub name: String,
    pub label: String,
}

/// One subject (one render folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySubject {
    pub name: String,
    pub class: String,
    pub render_dir: PathBuf,
    /// The reference photos as copied into the rater folder (relative to it).
    pub photos: Vec<String>,
}

/// One trial of the rater page: a pair shown with given sides. A repeated pair is a second
/// trial of the same pair with the sides swapped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyTrial {
    pub id: String,
    pub pair: String,
    /// Index into [`Key::subjects`].
    pub subject: usize,
    pub prompt_id: String,
    pub prompt: String,
    pub seed: u64,
    /// The adapter shown on the left.
    pub left: Which,
    /// The images as the rater page shows them (relative to the rater folder).
    pub left_file: String,
    pub right_file: String,
    /// The rendered images they were made from.
    pub a_source: PathBuf,
    pub b_source: PathBuf,
    /// For a repeated pair: the id of the trial it repeats (with sides swapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_of: Option<String>,
}

impl KeyTrial {
    /// Which adapter the rater chose, or `None` for a tie.
    pub fn chosen(&self, choice: Choice) -> Option<Which> {
        match choice {
            Choice::Left => Some(self.left),
            Choice::Right => Some(self.left.other()),
            Choice::Tie => None,
        }
    }
}

/// Which side is which adapter for every trial. Written outside the rater folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Key {
    pub format: String,
    pub format_version: u32,
    pub study_id: String,
    /// The seed every random choice of `study make` came from.
    pub seed: u64,
    pub a: KeyAdapter,
    pub b: KeyAdapter,
    pub subjects: Vec<KeySubject>,
    pub trials: Vec<KeyTrial>,
}

impl Key {
    pub fn load(path: &Path) -> Result<Key> {
        let text = crate::fsutil::read_to_string(path)?;
        let key: Key = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not a study key file: {e}")))?;
        if key.format != KEY_FORMAT || key.format_version != FORMAT_VERSION {
            return Err(Error::config(
                path,
                format!(
                    "not a study key file (format {:?} version {}, expected {KEY_FORMAT:?} version {FORMAT_VERSION})",
                    key.format, key.format_version
                ),
            ));
        }
        Ok(key)
    }

    /// Number of distinct pairs (repeats not counted).
    pub fn pairs(&self) -> usize {
        self.trials.iter().filter(|t| t.repeat_of.is_none()).count()
    }
}

/// A rater's answer to one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Left,
    Tie,
    Right,
}

/// Where the key of a study folder goes: beside the folder, never inside it, so that the
/// folder can be handed to raters or put on a web server as it is.
pub fn key_path_for(study: &Path) -> Result<PathBuf> {
    let name = study
        .file_name()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| {
            Error::msg(format!(
                "--out {}: name the study folder itself (its key is written beside it as NAME.key.json)",
                study.display()
            ))
        })?;
    let mut key = name.to_os_string();
    key.push(".key.json");
    Ok(study.with_file_name(key))
}

/// Where the tally of a key goes by default: `STUDY.key.json` -> `STUDY.tally` beside it.
pub fn tally_dir_for(key: &Path) -> PathBuf {
    beside_key(key, ".tally")
}

/// A file of the study whose key is `STUDY.key.json` (or `NAME.json`): `STUDY` + `suffix`,
/// beside the key.
pub fn beside_key(key: &Path, suffix: &str) -> PathBuf {
    let name = key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".key.json")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(&name);
    key.with_file_name(format!("{stem}{suffix}"))
}

/// The seeded generator every random choice of a study comes from (shared with the metrics'
/// bootstrap).
pub use crate::metrics::stats::{fresh_seed, seeded_rng, SeededRng};
