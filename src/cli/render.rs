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
}

pub fn run_render(a: RenderArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.run)?;
    let _lock = super::lock_outputs(&[&cfg.render_dir()])?;
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref())?;
    let extra = a
        .adapters
        .iter()
        .map(|s| moslora::render::Column::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let plan = moslora::render::plan(
        &cfg,
        a.prompts.as_deref(),
        a.set.as_deref(),
        a.seeds,
        extra,
        a.only_adapters,
    )?;
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
    let _lock = super::lock_outputs(&[&cfg.output, &cfg.render_dir()])?;
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref())?;
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
