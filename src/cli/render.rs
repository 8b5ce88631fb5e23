//! `moslora render` and `moslora compare`: a prompt set through every adapter, side by side.

use std::path::{Path, PathBuf};

use clap::Args;

use moslora::config::RunConfig;
use moslora::render::manifest::Manifest;
use moslora::sdxl::pipeline::RunOptions;
use moslora::Result;

use super::progress::Bar;

#[derive(Args)]
pub struct RenderArgs {
    /// The run's configuration
    run: PathBuf,
    /// Prompt-set file (YAML), or a bundled set: study8, dreambooth
    #[arg(long)]
    prompts: Option<String>,
    /// Named list in the prompt set (e.g. object, live)
    #[arg(long)]
    set: Option<String>,
    /// Seeds, comma-separated (default: render.seeds, 0,1,2,3)
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// An extra column from an adapter file: NAME=FILE (repeatable)
    #[arg(long = "adapter", value_name = "NAME=FILE")]
    adapters: Vec<String>,
    /// Render only the --adapter columns, not the run's own LoRA and MoSLoRA
    #[arg(long)]
    only_adapters: bool,
    /// A step series as columns: the adapters a run kept along the way
    /// (train.save_adapter_every), from its output folder (or one kind's folder); with --steps.
    /// Replaces the run's own LoRA and MoSLoRA columns; rendered into RENDERS-steps beside
    /// the run's renders folder.
    #[arg(long, value_name = "RUN_OUTPUT", requires = "steps")]
    adapters_from: Option<PathBuf>,
    /// The steps of --adapters-from to show, comma-separated (e.g. 100,200,300)
    #[arg(long, value_delimiter = ',', requires = "adapters_from")]
    steps: Option<Vec<u64>>,
    /// With --adapters-from: only this kind (lora or moslora); default: every kind there
    #[arg(long, requires = "adapters_from")]
    kind: Option<String>,
}

pub fn run_render(a: RenderArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.run)?;
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref())?;
    let size = (cfg.render.width, cfg.render.height);
    super::set_threads(&cfg.model, cfg.threads, opts.device, &[size])?;
    let mut extra = a
        .adapters
        .iter()
        .map(|s| moslora::render::Column::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let series = match (&a.adapters_from, &a.steps) {
        (Some(run), Some(steps)) => {
            let kinds = match &a.kind {
                Some(k) => vec![moslora::train::AdapterKind::parse(k)?],
                None => Vec::new(),
            };
            moslora::render::steps::step_columns(run, steps, &kinds)?
        }
        _ => Vec::new(),
    };
    let only_adapters = a.only_adapters || !series.is_empty();
    // The step series first, then any --adapter columns beside it.
    extra.splice(0..0, series);
    let mut plan = moslora::render::plan(
        &cfg,
        a.prompts.as_deref(),
        a.set.as_deref(),
        a.seeds,
        extra,
        only_adapters,
    )?;
    if a.adapters_from.is_some() {
        plan.out = moslora::render::steps::series_dir(&plan.out);
    }
    // The folder this render writes (a step series writes beside the comparison's).
    let _lock = super::lock_outputs(&[&plan.out])?;
    let m = moslora::render::render(&cfg, &plan, opts, &mut Bar::new())?;
    print_summary(&m, &plan.out);
    Ok(())
}

#[derive(Args)]
pub struct CompareArgs {
    /// The run's configuration
    run: PathBuf,
}

pub fn run_compare(a: CompareArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.run)?;
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref())?;
    super::set_run_threads(&cfg, opts.device)?;
    let _lock = super::lock_outputs(&[&cfg.output, &cfg.render_dir()])?;
    let (outcomes, m) = moslora::render::compare(&cfg, opts, &mut Bar::new(), &mut Bar::new())?;
    for o in &outcomes {
        println!(
            "{}: trained {} steps in {:.1} s -> {}",
            o.kind.label(),
            o.steps_done,
            o.seconds,
            o.adapter.display()
        );
    }
    print_summary(&m, &cfg.render_dir());
    if cfg.metrics.any() {
        let o = moslora::metrics::ScoreOptions {
            clip: cfg.metrics.clip.clone(),
            dino: cfg.metrics.dino.clone(),
            device: opts.device,
            dino_eps: None,
        };
        super::score::score(&cfg.render_dir(), &o)?;
    }
    Ok(())
}

/// What a render wrote, and where.
fn print_summary(m: &Manifest, dir: &Path) {
    println!(
        "rendered {} images ({} prompts x {} columns) into {}",
        m.images.len(),
        m.prompts.len(),
        m.adapters.len(),
        dir.display()
    );
    println!("  gallery:       {}", dir.join(&m.gallery).display());
    println!("  contact sheet: {}", dir.join(&m.contact_sheet).display());
    println!("  grids:         {}", dir.join("grids").display());
}
