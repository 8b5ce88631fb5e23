//! `moslora train`: the run's adapters, one after the other.

use std::path::PathBuf;

use clap::Args;

use moslora::config::RunConfig;
use moslora::runtime::Given;
use moslora::sdxl::pipeline::RunOptions;
use moslora::train::existing::Intent;
use moslora::train::AdapterKind;
use moslora::Result;

use super::progress::Bar;
use super::progress_json::{JsonEvents, ProgressMode};
use super::Locks;

#[derive(Args)]
pub struct TrainArgs {
    /// The run's configuration (see configs/ for examples)
    run: PathBuf,
    /// Which adapter to train: lora, moslora, dora, loha or lokr (default: lora and moslora,
    /// one after the other)
    #[arg(long)]
    adapter: Option<String>,
    /// Continue from the last checkpoint instead of starting afresh
    #[arg(long)]
    resume: bool,
    /// Start afresh even where the output folder holds a checkpoint or adapters of an earlier
    /// run, replacing them (without it, such a run stops before any work)
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// How progress is shown: a bar on stderr, or one JSON event a line on stdout
    /// (docs/progress-json.md)
    #[arg(long, value_enum, default_value = "bar")]
    progress: ProgressMode,
}

/// Trains; false when Ctrl-C stopped a run (its checkpoint saved).
pub fn run(a: TrainArgs) -> Result<bool> {
    if a.progress == ProgressMode::Json {
        let events = JsonEvents::new("train");
        let r = train_json(&a, &events);
        match &r {
            Ok(false) => events.end(
                130,
                "stopped with a checkpoint saved; run again with --resume to continue",
            ),
            _ => super::progress_json::end(&events, &r),
        }
        return r;
    }
    let cfg = RunConfig::load(&a.run)?;
    let (kinds, opts, _lock) = prepare(&a, &cfg)?;
    let outcomes = moslora::train::train(&cfg, &kinds, opts, a.resume, &mut Bar::new())?;
    let mut interrupted = false;
    for o in &outcomes {
        if o.interrupted {
            interrupted = true;
            eprintln!(
                "{}: stopped at step {}; checkpoint saved. Continue with: moslora train {} --adapter {} --resume",
                o.kind.label(),
                o.steps_done,
                a.run.display(),
                o.kind.name()
            );
        } else {
            println!(
                "{}: {} steps in {:.1} s ({} layers, {} trained parameters), final loss {:.4} -> {}",
                o.kind.label(),
                o.steps_done,
                o.seconds,
                o.layers,
                o.parameters,
                o.losses.last().copied().unwrap_or(f32::NAN),
                o.adapter.display()
            );
        }
    }
    Ok(!interrupted)
}

/// What `train` does before training, for the bar and the JSON stream alike: everything that
/// can be refused at once is, before the output folder is locked (the device, the model, the
/// work already there), then the threads are set and the folder locked.
fn prepare(a: &TrainArgs, cfg: &RunConfig) -> Result<(Vec<AdapterKind>, RunOptions, Locks)> {
    let kinds: Vec<AdapterKind> = match &a.adapter {
        Some(k) => vec![AdapterKind::parse(k)?],
        None => AdapterKind::of_run(cfg),
    };
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref(), Given::RunFile)?;
    super::models::fetch_run(cfg, false)?;
    cfg.check_model_exists(&a.run)?;
    let train = Some(cfg.train.resolution);
    super::set_threads(&cfg.model, cfg.threads, opts.device, &[(train, train)])?;
    let lock = super::lock_outputs(&[&cfg.output])?;
    if !a.force {
        let intent = if a.resume {
            Intent::Resume
        } else {
            Intent::Fresh
        };
        moslora::train::existing::check(cfg, &kinds, intent, &a.run)?;
    }
    Ok((kinds, opts, lock))
}

/// `train` with its progress as JSON events on stdout; false when stopped (checkpoint saved).
fn train_json(a: &TrainArgs, events: &JsonEvents) -> Result<bool> {
    events.enter("loading");
    let cfg = RunConfig::load(&a.run)?;
    let events = events.watching(&cfg);
    let (kinds, opts, _lock) = prepare(a, &cfg)?;
    events.release();
    let outcomes = moslora::train::train(&cfg, &kinds, opts, a.resume, &mut events.clone())?;
    for o in &outcomes {
        events.note(&format!(
            "{}: {} {} steps in {:.1} s -> {}",
            o.kind.label(),
            if o.interrupted {
                "stopped after"
            } else {
                "trained"
            },
            o.steps_done,
            o.seconds,
            o.adapter.display()
        ));
    }
    Ok(!outcomes.iter().any(|o| o.interrupted))
}
