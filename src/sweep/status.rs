//! `status.json`, a task's last word: written atomically, last, so a task that finds its own
//! `done` skips, and `sweep status` knows what is done, failed and missing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Sweep;
use crate::error::Result;

pub const FILE: &str = "status.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub index: usize,
    pub task: String,
    /// The task's settings as run (the fingerprint of its RUN.yaml): a done task whose
    /// settings changed is no longer done.
    pub settings: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub host: String,
}

impl Status {
    pub fn read(task_dir: &Path) -> Option<Status> {
        let text = std::fs::read_to_string(task_dir.join(FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write(&self, task_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialisable");
        crate::fsutil::write_bytes(&task_dir.join(FILE), text.as_bytes())
    }
}

/// What `sweep status` reports of one task.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Done,
    Failed {
        error: String,
        log_tail: Vec<String>,
    },
    Running,
    Missing,
}

/// Every task's state, in index order.
pub fn survey(sweep: &Sweep) -> Vec<(usize, Report)> {
    sweep
        .tasks
        .iter()
        .map(|t| {
            let settings = sweep
                .run_config(t)
                .map(|c| super::task::settings_hash(&c))
                .unwrap_or_default();
            let r = match Status::read(&sweep.task_dir(t)) {
                Some(s) if s.settings != settings => Report::Missing,
                Some(s) => match s.state {
                    State::Done => Report::Done,
                    State::Running => Report::Running,
                    State::Failed => Report::Failed {
                        error: s.error.unwrap_or_default(),
                        log_tail: log_tail(&sweep.log_path(t.index), 5),
                    },
                },
                None => Report::Missing,
            };
            (t.index, r)
        })
        .collect()
}

/// The indices that are not done (failed, missing, or left running by a killed task).
pub fn not_done(sweep: &Sweep) -> Vec<usize> {
    survey(sweep)
        .into_iter()
        .filter(|(_, r)| *r != Report::Done)
        .map(|(i, _)| i)
        .collect()
}

/// The last `n` non-empty lines of a log (progress-bar redraws removed).
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
