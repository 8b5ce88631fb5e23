//! One task, whichever backend runs it: train its adapter (resuming a checkpoint left by a
//! killed attempt), render its column from the same noise as every other task of its subject,
//! score it when the base asks for metrics, and write `status.json` last.

use sha2::{Digest, Sha256};

use super::status::{State, Status};
use super::Sweep;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::render::{self, Column, RenderProgress};
use crate::runtime::Given;
use crate::sdxl::pipeline::RunOptions;
use crate::train::{self, Progress, RunPaths};

/// The settings a task ran with: if they change, its results are stale. Where the task
/// writes is left out: it follows from the sweep's output folder, however that is spelt.
pub fn settings_hash(cfg: &RunConfig) -> String {
    let mut cfg = cfg.clone();
    cfg.output = Default::default();
    cfg.render.out = None;
    // The thread count changes no result (and `sweep --local` gives each task its share).
    cfg.threads = Default::default();
    let yaml = serde_yaml::to_string(&cfg).expect("serialisable");
    Sha256::digest(yaml.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Found its own `done`: nothing to do.
    AlreadyDone,
    Done,
    /// Stopped by a signal with a checkpoint saved; running it again continues.
    Stopped,
}

/// Run task `index` of the sweep.
pub fn run(
    sweep: &Sweep,
    index: usize,
    train_progress: &mut dyn Progress,
    render_progress: &mut dyn RenderProgress,
) -> Result<Outcome> {
    let t = sweep.task(index)?;
    let cfg = sweep.run_config(t)?;
    let dir = sweep.task_dir(t);
    let settings = settings_hash(&cfg);
    if let Some(s) = Status::read(&dir) {
        if s.state == State::Done && s.settings == settings {
            return Ok(Outcome::AlreadyDone);
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let status = |state: State, error: Option<String>| Status {
        state,
        index,
        task: sweep.task_name(t),
        settings: settings.clone(),
        error,
        host: hostname(),
    };
    status(State::Running, None).write(&dir)?;
    // For people: the task's settings as a RUN.yaml of their own.
    let yaml = serde_yaml::to_string(&cfg).expect("serialisable");
    crate::fsutil::write_bytes(&dir.join("run.yaml"), yaml.as_bytes())?;
    match work(&cfg, t, train_progress, render_progress) {
        Ok(Outcome::Done) => {
            status(State::Done, None).write(&dir)?;
            Ok(Outcome::Done)
        }
        Ok(other) => Ok(other),
        Err(e) => {
            status(State::Failed, Some(e.to_string())).write(&dir)?;
            Err(e)
        }
    }
}

fn work(
    cfg: &RunConfig,
    t: &super::Task,
    train_progress: &mut dyn Progress,
    render_progress: &mut dyn RenderProgress,
) -> Result<Outcome> {
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref(), Given::RunFile)?;
    let kind = t.adapter.kind;
    let paths = RunPaths::new(cfg, kind);
    if !train::is_current(cfg, kind, &paths.adapter()) {
        // A checkpoint of other settings cannot be resumed: start afresh.
        if !train::checkpoint::matches(&paths.checkpoint(), &train::training_fingerprint(cfg, kind))
        {
            let _ = std::fs::remove_dir_all(paths.checkpoint());
        }
        let o = train::train(cfg, &[kind], opts, true, train_progress)?;
        if o.iter().any(|o| o.interrupted) {
            return Ok(Outcome::Stopped);
        }
    }
    let column = Column {
        name: t.adapter.name.clone(),
        label: t.adapter.label.clone(),
        adapter: Some(paths.adapter()),
    };
    let plan = render::plan(cfg, None, None, None, vec![column], true)?;
    render::render(cfg, &plan, opts, render_progress)?;
    if cfg.metrics.any() {
        let o = crate::metrics::ScoreOptions {
            clip: cfg.metrics.clip.clone(),
            dino: cfg.metrics.dino.clone(),
            device: opts.device,
            dino_eps: None,
        };
        crate::metrics::score(&cfg.render_dir(), &o, &mut crate::metrics::Quiet)?;
    }
    Ok(Outcome::Done)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
