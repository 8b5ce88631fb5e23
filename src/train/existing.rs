//! Work an output folder already holds (checkpoints, finished adapters, the adapters kept
//! along the way), and whether a run may go on over it. `train` and `compare` ask [`check`]
//! before any work (before the model is loaded or a latent is cached, before anything is
//! removed), so that no run replaces a checkpoint or an adapter without being asked.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::checkpoint;
use super::run::{fingerprint_of, training_settings, AdapterKind, RunPaths};
use crate::adapter::file::{read_meta, AdapterMeta};
use crate::config::RunConfig;
use crate::error::{Error, Result};

/// What the run asked for is going to do with the output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// `train` without `--resume`: every adapter starts at step 0.
    Fresh,
    /// `train --resume`: each adapter continues its checkpoint (of the same settings).
    Resume,
    /// `compare`: current adapters are kept, checkpoints of the same settings continued, and
    /// missing adapters trained.
    Compare,
}

/// A checkpoint found in a kind's folder.
struct Checkpoint {
    step: u64,
    fingerprint: String,
    /// Its adapter's metadata (the settings it was made with), when readable.
    meta: Option<AdapterMeta>,
}

/// What one adapter kind's folder holds.
struct Held {
    kind: AdapterKind,
    /// The settings this run would train with, and their fingerprint.
    settings: Value,
    fingerprint: String,
    /// `Some(None)`: a checkpoint folder whose state cannot be read.
    checkpoint: Option<Option<Checkpoint>>,
    /// The finished adapter's metadata; `Some(Err)` when the file cannot be read.
    adapter: Option<std::result::Result<AdapterMeta, String>>,
    /// How many adapters were kept along the way (`train.save_adapter_every`).
    kept: usize,
}

impl Held {
    fn of(cfg: &RunConfig, kind: AdapterKind) -> Held {
        let paths = RunPaths::new(cfg, kind);
        let settings = training_settings(cfg, kind);
        let fingerprint = fingerprint_of(&settings);
        let checkpoint = match checkpoint::peek(&paths.checkpoint()) {
            Some((state, dir)) => Some(Some(Checkpoint {
                step: state.step,
                fingerprint: state.fingerprint,
                meta: read_meta(&dir.join("adapter.safetensors")).ok(),
            })),
            None if paths.checkpoint().exists() => Some(None),
            None => None,
        };
        let adapter = paths
            .adapter()
            .exists()
            .then(|| read_meta(&paths.adapter()).map_err(|e| e.to_string()));
        let kept = std::fs::read_dir(paths.step_adapters())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                    .count()
            })
            .unwrap_or(0);
        Held {
            kind,
            settings,
            fingerprint,
            checkpoint,
            adapter,
            kept,
        }
    }

    fn adapter_current(&self, steps: u64) -> bool {
        matches!(&self.adapter, Some(Ok(m)) if m.steps == steps && stored_fingerprint(m) == Some(&self.fingerprint))
    }

    fn checkpoint_current(&self) -> bool {
        matches!(&self.checkpoint, Some(Some(c)) if c.fingerprint == self.fingerprint)
    }

    /// The finished run's own last checkpoint, said once with its adapter.
    fn checkpoint_is_the_adapters(&self) -> bool {
        match (&self.checkpoint, &self.adapter) {
            (Some(Some(c)), Some(Ok(m))) => {
                c.step == m.steps && stored_fingerprint(m) == Some(&c.fingerprint)
            }
            _ => false,
        }
    }

    /// The settings (as RUN.yaml spells them) that differ between this run and `meta`'s.
    fn changed(&self, meta: &AdapterMeta) -> Vec<String> {
        changed_settings(meta, &self.settings)
    }
}

fn stored_fingerprint(m: &AdapterMeta) -> Option<&String> {
    match m.training.get("fingerprint") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// The settings that differ between the run that made `meta` and `current` (a value of
/// [`training_settings`]), named by their RUN.yaml paths (`subject.images`,
/// `train.learning_rate`). Adapters made before their metadata kept every setting are
/// compared on what they kept (seed, subject, train, adapter); when nothing there differs,
/// the rest is named as a whole.
pub fn changed_settings(meta: &AdapterMeta, current: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(stored) = meta.training.get("settings") {
        diff("", stored, current, &mut out);
        return out;
    }
    let mut train = meta.training.get("train").cloned().unwrap_or(Value::Null);
    if let Value::Object(t) = &mut train {
        t.insert("checkpoint_every".into(), 0.into());
        t.insert("sample_every".into(), 0.into());
        t.remove("save_adapter_every");
    }
    let adapter = serde_json::to_value(&meta.adapter).unwrap_or(Value::Null);
    let stored = [
        (
            "seed",
            meta.training.get("seed").cloned().unwrap_or(Value::Null),
        ),
        (
            "subject",
            meta.training.get("subject").cloned().unwrap_or(Value::Null),
        ),
        ("train", train),
        ("adapter", adapter),
    ];
    for (key, value) in &stored {
        diff(
            key,
            value,
            current.get(*key).unwrap_or(&Value::Null),
            &mut out,
        );
    }
    if out.is_empty() {
        out.push("model, device or dtype".into());
    }
    out
}

/// Every leaf path where `a` and `b` differ, objects entered key by key.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let inner = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(
                    &inner,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(path.to_string()),
        _ => {}
    }
}

/// `lora`, or `moslora(orthogonal)`: a kind with its mixer.
fn kind_name(kind: AdapterKind, meta: &AdapterMeta) -> String {
    match kind {
        AdapterKind::Lora | AdapterKind::Dora | AdapterKind::Loha | AdapterKind::Lokr => {
            kind.name().to_string()
        }
        AdapterKind::Moslora => {
            let mixer = serde_json::to_value(meta.adapter.mixer)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("{}({mixer})", kind.name())
        }
    }
}

/// "trained 500 steps on photos/teapot (class teapot)".
fn trained_on(meta: &AdapterMeta, steps: u64) -> String {
    let subject = meta.training.get("subject");
    let text = |k: &str| {
        subject
            .and_then(|s| s.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    let unit = if steps == 1 { "step" } else { "steps" };
    format!(
        "trained {steps} {unit} on {} (class {})",
        text("images"),
        text("class")
    )
}

/// " with other settings (changed since: subject.images, subject.class)", or nothing.
fn other_settings(changed: &[String]) -> String {
    if changed.is_empty() {
        String::new()
    } else {
        format!(
            " with other settings (changed since: {})",
            changed.join(", ")
        )
    }
}

/// What a run would replace in one kind's folder, said for people.
fn describe(h: &Held, total: u64, adapters: &mut Vec<(String, String)>, items: &mut Vec<String>) {
    let kind = h.kind.name();
    match &h.checkpoint {
        Some(Some(c)) if !h.checkpoint_is_the_adapters() => {
            let changed = match &c.meta {
                Some(m) if c.fingerprint != h.fingerprint => h.changed(m),
                _ => Vec::new(),
            };
            let of = c
                .meta
                .as_ref()
                .and_then(|m| m.training.get("train"))
                .and_then(|t| t.get("steps"))
                .and_then(Value::as_u64)
                .map(|n| format!(" of {n}"))
                .unwrap_or_default();
            items.push(format!(
                "a step {}{of} checkpoint of {kind}{}",
                c.step,
                other_settings(&changed)
            ));
        }
        Some(None) => items.push(format!("an unreadable checkpoint of {kind}")),
        _ => {}
    }
    match &h.adapter {
        Some(Ok(m)) => {
            let changed = if h.adapter_current(total) {
                Vec::new()
            } else {
                h.changed(m)
            };
            adapters.push((
                kind_name(h.kind, m),
                format!("{}{}", trained_on(m, m.steps), other_settings(&changed)),
            ));
        }
        Some(Err(e)) => items.push(format!("an unreadable {kind} adapter ({e})")),
        None => {}
    }
    if h.kept > 0 {
        items.push(format!(
            "{} {kind} adapter(s) kept along the way (adapters/)",
            h.kept
        ));
    }
}

/// Stop a run before any work when it would replace what `cfg.output` holds without being
/// asked (`--force` skips this check): a checkpoint or a finished adapter of the `kinds` it
/// trains, or the adapters kept along the way. `train --resume` on a checkpoint of other
/// settings is refused naming each changed setting. `run_file` is the RUN.yaml, for the
/// message.
pub fn check(
    cfg: &RunConfig,
    kinds: &[AdapterKind],
    intent: Intent,
    run_file: &Path,
) -> Result<()> {
    let total = cfg.train.steps;
    let mut replaced: Vec<&Held> = Vec::new();
    let held: Vec<Held> = kinds.iter().map(|&k| Held::of(cfg, k)).collect();
    for h in &held {
        let anything = h.checkpoint.is_some() || h.adapter.is_some() || h.kept > 0;
        let replaces = match intent {
            Intent::Fresh => anything,
            Intent::Resume => match &h.checkpoint {
                Some(Some(c)) if c.fingerprint != h.fingerprint => {
                    let changed = match &c.meta {
                        Some(m) => h.changed(m),
                        None => Vec::new(),
                    };
                    return Err(Error::StaleCheckpoint {
                        dir: RunPaths::new(cfg, h.kind).checkpoint(),
                        changed,
                    });
                }
                Some(Some(_)) => false,
                // No checkpoint to continue: the run starts at step 0 over what is there.
                _ => anything && !h.adapter_current(total),
            },
            Intent::Compare => anything && !h.adapter_current(total) && !h.checkpoint_current(),
        };
        if replaces {
            replaced.push(h);
        }
    }
    if replaced.is_empty() {
        return Ok(());
    }
    let mut adapters: Vec<(String, String)> = Vec::new();
    let mut items: Vec<String> = Vec::new();
    for h in &replaced {
        describe(h, total, &mut adapters, &mut items);
    }
    // Adapters trained alike are named together: "adapters lora, moslora(orthogonal) trained ...".
    let mut grouped: Vec<(Vec<String>, String)> = Vec::new();
    for (name, how) in adapters {
        match grouped.iter_mut().find(|(_, h)| *h == how) {
            Some((names, _)) => names.push(name),
            None => grouped.push((vec![name], how)),
        }
    }
    for (names, how) in grouped {
        let noun = if names.len() == 1 {
            "adapter"
        } else {
            "adapters"
        };
        items.push(format!("{noun} {} {how}", names.join(", ")));
    }
    let run = run_file.display();
    let ways = match intent {
        Intent::Fresh => format!(
            "continue it with `--resume`, replace it with `--force`, or set another `output:` \
             in {run}"
        ),
        Intent::Resume => format!(
            "there is no checkpoint to resume, so this run would start at step 0: replace it \
             with `--force` (instead of `--resume`), or set another `output:` in {run}"
        ),
        Intent::Compare => format!(
            "restore the settings it was made with in {run}, replace it with `--force`, or set \
             another `output:` there"
        ),
    };
    Err(Error::OutputExists {
        path: cfg.output.clone(),
        hint: format!(
            "it holds {}, which this run would replace; {ways}",
            items.join("; ")
        ),
    })
}
