//! `moslora render` and `moslora compare`: a prompt set through every adapter, side by side.

use std::path::{Path, PathBuf};

use clap::Args;

use moslora::config::RunConfig;
use moslora::render::manifest::Manifest;
use moslora::runtime::Given;
use moslora::sdxl::pipeline::RunOptions;
use moslora::Result;

use super::progress::Bar;
use super::progress_json::{JsonEvents, ProgressMode};
use super::Locks;

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
    /// With --adapters-from: only this kind (lora, moslora, dora, loha, lokr); default: every
    /// kind there
    #[arg(long, requires = "adapters_from")]
    kind: Option<String>,
}

pub fn run_render(a: RenderArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.run)?;
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref(), Given::RunFile)?;
    super::models::fetch_run(&cfg, false)?;
    cfg.check_model_exists(&a.run)?;
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
    let mut bar = Bar::new();
    let m = moslora::render::render(&cfg, &plan, opts, &mut bar)?;
    print_summary(&m, &plan.out, bar.images());
    Ok(())
}

#[derive(Args)]
pub struct CompareArgs {
    /// The run's configuration
    run: PathBuf,
    /// Retrain where the output folder holds a checkpoint or adapters of other settings,
    /// replacing them (without it, such a run stops before any work; adapters of the same
    /// settings are kept, and their checkpoints continued, either way)
    #[arg(long)]
    force: bool,
    /// How progress is shown: a bar on stderr, or one JSON event a line on stdout
    /// (docs/progress-json.md)
    #[arg(long, value_enum, default_value = "bar")]
    progress: ProgressMode,
}

pub fn run_compare(a: CompareArgs) -> Result<()> {
    if a.progress == ProgressMode::Json {
        let events = JsonEvents::new("compare");
        let r = compare_json(&a.run, a.force, &events);
        super::progress_json::end(&events, &r);
        return r;
    }
    let cfg = RunConfig::load(&a.run)?;
    let (opts, _lock) = prepare_compare(&a.run, a.force, &cfg)?;
    let mut bar = Bar::new();
    let (outcomes, m) = moslora::render::compare(&cfg, opts, &mut Bar::new(), &mut bar)?;
    for o in &outcomes {
        println!(
            "{}: trained {} steps in {:.1} s -> {}",
            o.kind.label(),
            o.steps_done,
            o.seconds,
            o.adapter.display()
        );
    }
    print_summary(&m, &cfg.render_dir(), bar.images());
    if cfg.metrics.any() {
        let o = moslora::metrics::ScoreOptions {
            clip: cfg.metrics.clip.clone(),
            dino: cfg.metrics.dino.clone(),
            device: opts.device,
            dino_eps: None,
        };
        super::score::score(&cfg.render_dir(), &o)?;
    }
    print_next_step(&m, &cfg.render_dir(), &cfg.output.join("study"));
    Ok(())
}

/// What `compare` does before its work, for the bar and the JSON stream alike: everything that
/// can be refused at once is, before the output folders are locked (the device, the model, work
/// of other settings), then the threads are set and the folders locked.
fn prepare_compare(run: &Path, force: bool, cfg: &RunConfig) -> Result<(RunOptions, Locks)> {
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref(), Given::RunFile)?;
    super::models::fetch_run(cfg, true)?;
    cfg.check_model_exists(run)?;
    super::set_run_threads(cfg, opts.device)?;
    let lock = super::lock_outputs(&[&cfg.output, &cfg.render_dir()])?;
    if !force {
        moslora::train::existing::check(
            cfg,
            &moslora::train::AdapterKind::of_run(cfg),
            moslora::train::existing::Intent::Compare,
            run,
        )?;
    }
    Ok((opts, lock))
}

/// `compare` with its progress as JSON events on stdout (and its summary in them).
fn compare_json(run: &Path, force: bool, events: &JsonEvents) -> Result<()> {
    events.enter("loading");
    let cfg = RunConfig::load(run)?;
    let events = events.watching(&cfg);
    let (opts, _lock) = prepare_compare(run, force, &cfg)?;
    events.release();
    let (outcomes, m) =
        moslora::render::compare(&cfg, opts, &mut events.clone(), &mut events.clone())?;
    for o in &outcomes {
        events.note(&format!(
            "{}: trained {} steps in {:.1} s -> {}",
            o.kind.label(),
            o.steps_done,
            o.seconds,
            o.adapter.display()
        ));
    }
    let dir = cfg.render_dir();
    events.file("gallery", &dir.join(&m.gallery));
    events.file("contact sheet", &dir.join(&m.contact_sheet));
    events.file("manifest", &dir.join(moslora::render::manifest::FILE));
    if cfg.metrics.any() {
        events.enter("scoring");
        let o = moslora::metrics::ScoreOptions {
            clip: cfg.metrics.clip.clone(),
            dino: cfg.metrics.dino.clone(),
            device: opts.device,
            dino_eps: None,
        };
        let s = moslora::metrics::score(&dir, &o, &mut events.clone())?;
        events.note(&moslora::metrics::report::text(&s.manifest));
        for f in &s.files {
            events.file("scores", f);
        }
    }
    Ok(())
}

/// What to do after `compare`: look at the gallery, then put the two adapters before raters
/// with `study make` (the command with this run's own paths).
fn print_next_step(m: &Manifest, renders: &Path, study: &Path) {
    let names: Vec<&str> = m
        .adapters
        .iter()
        .filter(|a| a.name != "base")
        .map(|a| a.name.as_str())
        .collect();
    let (a, b) = if names.contains(&"lora") && names.contains(&"moslora") {
        ("lora", "moslora")
    } else if names.len() >= 2 {
        (names[0], names[1])
    } else {
        println!(
            "\nnext: look at the gallery, {}",
            renders.join(&m.gallery).display()
        );
        return;
    };
    println!(
        "\nnext: look at the gallery, then ask people which is better in a blind study:\n  \
         moslora study make --renders {} --a {a} --b {b} --out {}",
        shell_word(&renders.display().to_string()),
        shell_word(&study.display().to_string())
    );
}

/// A path as one shell word: quoted when it holds anything a shell would split or expand.
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What a render wrote, and where: "rendered 8, kept 64 (8 prompts x 3 columns x 3 seeds)".
fn print_summary(m: &Manifest, dir: &Path, (rendered, kept): (u64, u64)) {
    use moslora::words::count;
    let seeds = {
        let mut v: Vec<u64> = m.images.iter().map(|i| i.seed).collect();
        v.sort();
        v.dedup();
        v.len()
    };
    println!(
        "rendered {rendered}, kept {kept} from before ({} = {} x {} x {}) into {}",
        count(m.images.len(), "image"),
        count(m.prompts.len(), "prompt"),
        count(m.adapters.len(), "column"),
        count(seeds, "seed"),
        dir.display()
    );
    println!("  gallery:       {}", dir.join(&m.gallery).display());
    println!("  contact sheet: {}", dir.join(&m.contact_sheet).display());
    println!("  grids:         {}", dir.join("grids").display());
}
