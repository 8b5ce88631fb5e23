//! `--progress json`: the same progress the bar draws, as one JSON object a line on stdout,
//! for a program to read (the app reads it from its jobs). The schema is documented in
//! `docs/progress-json.md`; every event carries `event` and `t` (seconds since the command
//! started). Human-readable lines (the summary, notes) go to stderr or into `note` events, so
//! stdout holds nothing but events.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};

use moslora::config::RunConfig;
use moslora::metrics::ScoreProgress;
use moslora::render::RenderProgress;
use moslora::train::validation::BestValidation;
use moslora::train::{AdapterKind, Progress, RunPaths};

/// How a command shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// The progress bar on stderr (plain lines where stderr is not a terminal)
    Bar,
    /// One JSON event a line on stdout (docs/progress-json.md)
    Json,
}

/// The version of the event schema (`start` carries it); bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// What the two reporters share: the clock, the phase, and the files already reported.
struct State {
    started: Instant,
    phase: String,
    /// Per adapter kind: the first step of this process's stretch and when it began.
    stretch: Option<(u64, Instant)>,
    total: u64,
    kind: Option<AdapterKind>,
    /// Files as they were when the command started, and the ones reported since.
    seen: HashMap<PathBuf, Option<SystemTime>>,
    /// Where each adapter's run writes (none for commands without a run).
    runs: Vec<(AdapterKind, RunPaths)>,
    /// Lines held back until the command has set its threads ([`JsonEvents::release`]): a
    /// run that starts itself again for OpenMP's wait policy (`exec`, the same process id)
    /// would otherwise print its `start` twice.
    held: Option<Vec<String>>,
}

/// The event writer; cheap to clone (the clones share one state), so that `compare` can
/// hand one to training and one to rendering.
#[derive(Clone)]
pub struct JsonEvents {
    state: Arc<Mutex<State>>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The files a run may write along the way, as they are now.
fn run_files(paths: &RunPaths) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    for (dir, what) in [
        (paths.samples(), "sample"),
        (paths.step_adapters(), "step adapter"),
    ] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut names: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.starts_with('.')
                        && (name.ends_with(".png") || name.ends_with(".safetensors"))
                })
                .collect();
            names.sort();
            out.extend(names.into_iter().map(|p| (p, what)));
        }
    }
    out.push((paths.loss_csv(), "loss csv"));
    out.push((paths.adapter(), "adapter"));
    out
}

/// The step a file name like `step_000012.png` or `step000012.safetensors` names.
fn step_of(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    stem.trim_start_matches("step")
        .trim_start_matches('_')
        .parse()
        .ok()
}

impl JsonEvents {
    /// Starts the stream for `command` with its `start` event.
    pub fn new(command: &str) -> JsonEvents {
        let e = JsonEvents {
            state: Arc::new(Mutex::new(State {
                started: Instant::now(),
                phase: String::new(),
                stretch: None,
                total: 0,
                kind: None,
                seen: HashMap::new(),
                runs: Vec::new(),
                held: Some(Vec::new()),
            })),
        };
        e.emit(json!({
            "event": "start",
            "schema": SCHEMA,
            "command": command,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
        }));
        e
    }

    /// Watches the run's folders from now on: files written there from now on are reported
    /// as `file` events (those already there, with their times, are not).
    pub fn watching(&self, cfg: &RunConfig) -> JsonEvents {
        let runs: Vec<(AdapterKind, RunPaths)> = AdapterKind::of_run(cfg)
            .into_iter()
            .map(|k| (k, RunPaths::new(cfg, k)))
            .collect();
        let mut s = self.lock();
        for (_, p) in &runs {
            for (f, _) in run_files(p) {
                let t = mtime(&f);
                if t.is_some() {
                    s.seen.insert(f, t);
                }
            }
        }
        s.runs = runs;
        drop(s);
        self.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one event, with `t`, as one line (held back until [`JsonEvents::release`]).
    pub fn emit(&self, mut v: Value) {
        let mut s = self.lock();
        let t = s.started.elapsed().as_secs_f64();
        v["t"] = json!((t * 1000.0).round() / 1000.0);
        if let Some(held) = &mut s.held {
            held.push(v.to_string());
            return;
        }
        drop(s);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// Writes the events held back since the start, and every event from now on as it comes.
    /// Called once the command has set its threads (after which it never starts itself
    /// again), and by [`JsonEvents::end`].
    pub fn release(&self) {
        let Some(held) = self.lock().held.take() else {
            return;
        };
        let mut out = std::io::stdout().lock();
        for line in held {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    /// Enters `phase` (an event only when it changes).
    pub fn enter(&self, phase: &str) {
        {
            let mut s = self.lock();
            if s.phase == phase {
                return;
            }
            s.phase = phase.to_string();
        }
        self.emit(json!({ "event": "phase", "phase": phase }));
    }

    pub fn note(&self, msg: &str) {
        self.emit(json!({ "event": "note", "message": msg }));
    }

    /// A file the command wrote (outside the run folders, which are watched).
    pub fn file(&self, what: &str, path: &Path) {
        self.lock().seen.insert(path.to_path_buf(), mtime(path));
        self.emit(json!({ "event": "file", "what": what, "path": path }));
    }

    /// Reports every file of the runs that is new or rewritten since it was last reported.
    pub fn scan(&self) {
        let mut found = Vec::new();
        {
            let mut s = self.lock();
            let runs: Vec<(AdapterKind, Vec<(PathBuf, &'static str)>)> =
                s.runs.iter().map(|(k, p)| (*k, run_files(p))).collect();
            for (kind, files) in runs {
                for (f, what) in files {
                    let Some(t) = mtime(&f) else { continue };
                    if s.seen.get(&f) != Some(&Some(t)) {
                        s.seen.insert(f.clone(), Some(t));
                        found.push((kind, f, what));
                    }
                }
            }
        }
        for (kind, f, what) in found {
            let mut v = json!({ "event": "file", "what": what, "adapter": kind.name(), "path": f });
            if matches!(what, "sample" | "step adapter") {
                if let Some(step) = step_of(&f) {
                    v["step"] = json!(step);
                }
            }
            self.emit(v);
        }
    }

    /// The end of the command: `done` (exit 0), `stopped` (130) or `failed` (any other code).
    pub fn end(&self, code: u8, message: &str) {
        self.release();
        self.scan();
        let event = match code {
            0 => "done",
            130 => "stopped",
            _ => "failed",
        };
        self.emit(json!({ "event": event, "exit_code": code, "message": message }));
    }
}

impl Progress for JsonEvents {
    fn start(&mut self, kind: AdapterKind, total: u64, done: u64) {
        self.scan();
        {
            let mut s = self.lock();
            s.kind = Some(kind);
            s.total = total;
            s.stretch = Some((done, Instant::now()));
        }
        self.enter(&format!("training {}", kind.name()));
        self.emit(json!({
            "event": "train", "adapter": kind.name(), "total": total, "done": done,
        }));
    }
    fn step(&mut self, step: u64, loss: f32, smoothed: f64) {
        let (kind, total, speed) = {
            let s = self.lock();
            let speed = s.stretch.map(|(from, at)| {
                let secs = at.elapsed().as_secs_f64();
                if secs > 0.0 && step > from {
                    (step - from) as f64 / secs
                } else {
                    0.0
                }
            });
            (s.kind, s.total, speed.unwrap_or(0.0))
        };
        // Samples and step adapters of the step before are on disk by now.
        self.scan();
        let eta = if speed > 0.0 {
            Some(((total.saturating_sub(step)) as f64 / speed * 10.0).round() / 10.0)
        } else {
            None
        };
        self.emit(json!({
            "event": "step",
            "adapter": kind.map(|k| k.name()),
            "step": step,
            "total": total,
            "loss": loss,
            "smoothed": smoothed,
            "speed": (speed * 1000.0).round() / 1000.0,
            "eta": eta,
        }));
    }
    fn validation(&mut self, step: u64, loss: f32) {
        let kind = self.lock().kind;
        self.emit(json!({
            "event": "validation", "adapter": kind.map(|k| k.name()), "step": step, "loss": loss,
        }));
    }
    fn best_validation(&mut self, kind: AdapterKind, best: &BestValidation) {
        JsonEvents::note(self, &best.sentence(kind.label()));
        self.emit(json!({
            "event": "best", "adapter": kind.name(), "step": best.step, "loss": best.loss,
            "adapter_step": best.adapter_step, "path": best.adapter,
        }));
    }
    fn note(&mut self, msg: &str) {
        // Notes before any training are the data being read and cached.
        if self.lock().phase == "loading" {
            self.enter("caching");
        }
        JsonEvents::note(self, msg);
    }
    fn phase(&mut self, name: &str, unit: &'static str, total: u64) {
        // The stages before training (loading the model, caching latents, making class
        // images), named as the stream names its phases. Loading a model part is a stage
        // within whatever phase loads it (training and rendering load theirs too).
        let stage = match name {
            "load" => "loading",
            "cache" => "caching",
            "class" => "class images",
            other => other,
        };
        if stage != "loading" {
            self.enter(stage);
        }
        self.emit(json!({ "event": "stage", "stage": stage, "unit": unit, "total": total }));
    }
    fn finish(&mut self) {
        self.scan();
    }
}

impl RenderProgress for JsonEvents {
    fn start(&mut self, total: u64) {
        // The last adapter's loss log and file were written after its training finished.
        self.scan();
        {
            let mut s = self.lock();
            s.total = total;
            s.stretch = Some((0, Instant::now()));
        }
        self.enter("rendering");
        self.emit(json!({ "event": "render", "total": total }));
    }
    fn image(&mut self, done: u64, label: &str, reused: bool) {
        let total = self.lock().total;
        self.emit(json!({
            "event": "image", "done": done, "total": total, "label": label, "reused": reused,
        }));
    }
    fn note(&mut self, msg: &str) {
        JsonEvents::note(self, msg);
    }
    fn finish(&mut self) {}
}

impl ScoreProgress for JsonEvents {
    fn note(&mut self, msg: &str) {
        JsonEvents::note(self, msg);
    }
}

/// Ends the stream with the command's result: the exit code and message the command line
/// gives for it.
pub fn end<T>(events: &JsonEvents, r: &moslora::Result<T>) {
    match r {
        Ok(_) => events.end(0, "finished"),
        Err(e) => events.end(crate::exit_code(e), &crate::one_line(e)),
    }
}
