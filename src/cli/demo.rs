//! `moslora demo`: the whole job end to end on the toy world's model, and what it made.

use std::path::PathBuf;

use clap::Args;

use moslora::demo::{DemoOptions, DemoReport};
use moslora::Result;

use super::progress::Bar;

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for everything the demo makes
    #[arg(long, default_value = "moslora-demo")]
    out: PathBuf,
    /// The pretrained toy-world model [default: the shipped one, `assets/toy-model`]
    #[arg(long)]
    model: Option<PathBuf>,
    /// The toy world's judge (a CLIP folder) that scores the renders [default: the shipped
    /// one, `assets/toy-judge`]
    #[arg(long)]
    judge: Option<PathBuf>,
    /// Skip the scores
    #[arg(long)]
    no_judge: bool,
    /// Training steps per adapter (default: the recipe's 500)
    #[arg(long)]
    train_steps: Option<u64>,
    /// Sampling steps per image (default: 30)
    #[arg(long)]
    render_steps: Option<usize>,
    /// Train with the robot's masks (`train.masked_loss`): the photos' grounds are not learned
    #[arg(long)]
    masked: bool,
    /// With --masked: the background's loss weight, 0 (ignored, the default) to 1 (no mask)
    #[arg(long, requires = "masked")]
    mask_background_weight: Option<f64>,
    /// Render seeds 0 to N-1 of each prompt (default: 4)
    #[arg(long)]
    seeds: Option<u64>,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let o = DemoOptions {
        dir: a.out,
        model: a.model.unwrap_or_else(moslora::shipped::toy_model),
        judge: (!a.no_judge).then(|| a.judge.unwrap_or_else(moslora::shipped::toy_judge)),
        train_steps: a.train_steps,
        render_steps: a.render_steps,
        masked: a.masked,
        mask_background_weight: a.mask_background_weight,
        seeds: a.seeds,
    };
    let cfg = moslora::demo::demo_config(&o.dir, &o.model, o.judge.as_deref())?;
    super::set_run_threads(&cfg, tch::Device::Cpu)?;
    let r = moslora::demo::run(&o, &mut Bar::new(), &mut Bar::new())?;
    print_demo(&r);
    Ok(())
}

/// What the demo made, where it lies, and how to read it.
fn print_demo(r: &DemoReport) {
    println!();
    println!(
        "The demo ran end to end on the toy world's pretrained SDXL-architecture model ({}):",
        r.config.model.display()
    );
    println!("the base column draws a generic robot in each scene; the LoRA and MoSLoRA columns");
    println!("should draw the bundled robot (orange body, teal visor, yellow antenna ball) there.");
    println!(
        "Recipe: {} steps, batch {}, rank {}, learning rate {:e} (the toy model needs a larger",
        r.config.train.steps,
        r.config.train.batch_size,
        r.config.adapter.rank,
        r.config.train.learning_rate
    );
    println!("rate than SDXL's 1e-4 to learn in 500 steps; see docs/toy-world.md). For real pictures train on SDXL.");
    println!();
    let table = moslora::metrics::report::text(&r.manifest);
    if !table.is_empty() {
        println!(
            "Scores by the toy world's judge (a CLIP trained on the world, apart from the model):"
        );
        println!("{table}");
    }
    if !r.scene_fidelity.is_empty() {
        let parts: Vec<String> = r
            .scene_fidelity
            .iter()
            .map(|(a, share, n)| format!("{a} {:.0} % of {n}", 100.0 * share))
            .collect();
        println!(
            "Renders whose scene the judge names as the prompt does: {}",
            parts.join(", ")
        );
        let snow: Vec<String> = r
            .snow_fidelity
            .iter()
            .map(|(a, share, n)| format!("{a} {:.0} % of {n}", 100.0 * share))
            .collect();
        println!(
            "  of the snow prompt's renders{}: {}",
            if r.config.train.masked_loss {
                " (trained with masks)"
            } else {
                ""
            },
            snow.join(", ")
        );
        println!();
    }
    for o in &r.trained {
        println!(
            "  {:<8} {} steps in {:.0} s, final loss {:.4}",
            o.kind.label(),
            o.steps_done,
            o.seconds,
            o.losses.last().copied().unwrap_or(f32::NAN)
        );
    }
    println!("  run config:    {}", r.config_path.display());
    for a in r.adapters() {
        println!("  adapter:       {}", a.display());
    }
    for c in r.loss_curves() {
        println!("  loss curve:    {}", c.display());
    }
    println!("  grids:         {}", r.render_dir.join("grids").display());
    println!(
        "  contact sheet: {}",
        r.render_dir.join(&r.manifest.contact_sheet).display()
    );
    println!("  gallery:       {}", r.gallery().display());
    println!(
        "  study page:    {} ({} trials; give the folder to raters)",
        r.study_dir.join("index.html").display(),
        r.study_trials
    );
    println!("  study key:     {} (keep it apart; tally with: moslora study tally --key {} VOTES.json...)", r.study_key.display(), r.study_key.display());
    println!();
    println!("Open the gallery:  xdg-open {}", r.gallery().display());
}
