//! `moslora train`: the run's adapters, one after the other.

use std::path::PathBuf;

use clap::Args;

use moslora::config::RunConfig;
use moslora::sdxl::pipeline::RunOptions;
use moslora::train::AdapterKind;
use moslora::Result;

use super::progress::Bar;

#[derive(Args)]
pub struct TrainArgs {
    /// The run's configuration (see configs/ for examples)
    run: PathBuf,
    /// Which adapter to train: lora or moslora (default: both, one after the other)
    #[arg(long)]
    adapter: Option<String>,
    /// Continue from the last checkpoint instead of starting afresh
    #[arg(long)]
    resume: bool,
}

/// Trains; false when Ctrl-C stopped a run (its checkpoint saved).
pub fn run(a: TrainArgs) -> Result<bool> {
    let cfg = RunConfig::load(&a.run)?;
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref())?;
    let train = Some(cfg.train.resolution);
    super::set_threads(&cfg.model, cfg.threads, opts.device, &[(train, train)])?;
    let _lock = super::lock_outputs(&[&cfg.output])?;
    let kinds: Vec<AdapterKind> = match &a.adapter {
        Some(k) => vec![AdapterKind::parse(k)?],
        None => AdapterKind::BOTH.to_vec(),
    };
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
