//! The `moslora` command line: parse, call the library, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod cli;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use moslora::config::RunConfig;
use moslora::runtime::parse_dtype;
use moslora::sdxl::init_model::{init_model, InitOptions};
use moslora::sdxl::pipeline::{GenerateOptions, RunOptions};
use moslora::train::AdapterKind;
use moslora::Result;

#[derive(Parser)]
#[command(
    name = "moslora",
    version,
    about = "Personalise Stable Diffusion XL on a few photos with LoRA and MoSLoRA, and compare them",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a random SDXL-architecture model in the diffusers folder layout
    InitModel(InitModelArgs),
    /// Render one image from a prompt
    Generate(GenerateArgs),
    /// Export an adapter as a plain LoRA for ComfyUI, AUTOMATIC1111, Forge or diffusers
    Export(ExportArgs),
    /// Merge an adapter into a model's weights, written as a diffusers folder or single file
    Merge(MergeArgs),
    /// Convert a model between a single-file checkpoint and a diffusers folder
    Convert(ConvertArgs),
    /// Train DreamBooth adapters (LoRA and/or MoSLoRA) on a subject's photos
    Train(TrainArgs),
    /// Render a prompt set through every adapter side by side: images, grids, gallery
    Render(RenderArgs),
    /// Train what is missing or stale, then render: photos to gallery in one command
    Compare(CompareArgs),
    /// Score a render folder: DINO, CLIP-I and CLIP-T per image, per adapter, paired
    Score(ScoreArgs),
    /// The whole job end to end on a tiny random model: train, render, gallery, study kit
    Demo(DemoArgs),
    /// Blind human evaluation: rater pairs out, votes in, win / tie / loss with statistics
    #[command(subcommand)]
    Study(StudyCommand),
    /// Pretrain the toy world's small SDXL-architecture model from scratch (the demo's model)
    Pretrain(cli::toy::PretrainArgs),
    /// Draw a contact sheet of the toy world's captioned pictures
    World(cli::toy::WorldArgs),
    /// Train the toy world's judge: a small CLIP for `score` on toy-world renders
    Judge(cli::toy::JudgeArgs),
}

#[derive(Args)]
struct RenderArgs {
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

#[derive(Args)]
struct DemoArgs {
    /// Folder for everything the demo makes
    #[arg(long, default_value = "moslora-demo")]
    out: PathBuf,
    /// The pretrained toy-world model
    #[arg(long, default_value = "assets/toy-model")]
    model: PathBuf,
    /// The toy world's judge (a CLIP folder) that scores the renders
    #[arg(long, default_value = "assets/toy-judge")]
    judge: PathBuf,
    /// Skip the scores
    #[arg(long)]
    no_judge: bool,
    /// Training steps per adapter (default: the recipe's 500)
    #[arg(long)]
    train_steps: Option<u64>,
    /// Sampling steps per image (default: 30)
    #[arg(long)]
    render_steps: Option<usize>,
}

fn print_demo(r: &moslora::demo::DemoReport) {
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
    println!("rate than SDXL's 1e-4 to learn in 500 steps; see README). For real pictures train on SDXL.");
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

#[derive(Args)]
struct ScoreArgs {
    /// A render folder (`moslora render` or `compare`)
    renders: PathBuf,
    /// A transformers CLIPModel folder, e.g. openai/clip-vit-base-patch32 (CLIP-I, CLIP-T)
    #[arg(long)]
    clip: Option<PathBuf>,
    /// A transformers ViTModel DINO folder, e.g. facebook/dino-vits16 (DINO)
    #[arg(long)]
    dino: Option<PathBuf>,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Score a render folder and print the tables.
fn run_score(dir: &std::path::Path, opts: &moslora::metrics::ScoreOptions) -> Result<()> {
    struct Notes;
    impl moslora::metrics::ScoreProgress for Notes {
        fn note(&mut self, msg: &str) {
            eprintln!("{msg}");
        }
    }
    let s = moslora::metrics::score(dir, opts, &mut Notes)?;
    print!("{}", moslora::metrics::report::text(&s.manifest));
    let names: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
    println!("wrote {}", names.join(", "));
    Ok(())
}

#[derive(Args)]
struct CompareArgs {
    /// The run's configuration
    run: PathBuf,
}

/// The render progress bar.
struct RenderBar {
    bar: Option<ProgressBar>,
}

impl moslora::render::RenderProgress for RenderBar {
    fn start(&mut self, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "  render [{bar:30}] {pos}/{len} images {msg} {elapsed} elapsed, {eta} left",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }
    fn image(&mut self, done: u64, label: &str, reused: bool) {
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(format!("({label}{})", if reused { ", reused" } else { "" }));
        }
    }
    fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn print_render_summary(m: &moslora::render::manifest::Manifest, dir: &std::path::Path) {
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

#[derive(Args)]
struct TrainArgs {
    /// The run's configuration (see configs/ for examples)
    run: PathBuf,
    /// Which adapter to train: lora or moslora (default: both, one after the other)
    #[arg(long)]
    adapter: Option<String>,
    /// Continue from the last checkpoint instead of starting afresh
    #[arg(long)]
    resume: bool,
}

#[derive(Args)]
struct InitModelArgs {
    /// `tiny` (a few MB, for tests and the demo) or `sdxl-base` (the full SDXL base 1.0 sizes)
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Seed of the random weights
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (must not exist, or be empty, unless --force)
    #[arg(long)]
    out: PathBuf,
    /// dtype of the written weights: f32 or f16
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Replace an existing folder
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct DeviceArgs {
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// dtype of the UNet and text encoders: f32 (CPU), bf16 or f16 (CUDA); the VAE stays f32
    #[arg(long)]
    dtype: Option<String>,
}

impl DeviceArgs {
    fn options(&self) -> Result<RunOptions> {
        RunOptions::from_names(&self.device, self.dtype.as_deref())
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// SDXL model: a diffusers folder or a single-file .safetensors checkpoint
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Negative prompt (absent: SDXL's zero unconditional embedding)
    #[arg(long)]
    negative_prompt: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (1 or less disables the unconditional pass)
    #[arg(long, default_value_t = 5.0)]
    guidance: f64,
    /// Image width in pixels (default: the model's native size)
    #[arg(long)]
    width: Option<i64>,
    /// Image height in pixels (default: the model's native size)
    #[arg(long)]
    height: Option<i64>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Apply a trained adapter file (merged into the weights for speed)
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Strength of the adapter (1.0 = as trained)
    #[arg(long, default_value_t = 1.0)]
    adapter_scale: f64,
    /// Output PNG file
    #[arg(long)]
    out: PathBuf,
}

/// The training progress bar: step, smoothed loss, speed and time left.
struct Bar {
    bar: Option<ProgressBar>,
}

impl moslora::train::Progress for Bar {
    fn start(&mut self, kind: AdapterKind, total: u64, done: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} {msg} {per_sec} {elapsed} elapsed, {eta} left",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(kind.label());
        bar.set_position(done);
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }
    fn step(&mut self, step: u64, _loss: f32, smoothed: f64) {
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(format!("loss {smoothed:.4}"));
        }
    }
    fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} steps, {per_sec}, {elapsed} elapsed, {eta} left",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::InitModel(a) => {
            let dtype = parse_dtype(&a.dtype)?;
            init_model(
                &a.out,
                &InitOptions {
                    preset: &a.preset,
                    seed: a.seed,
                    dtype,
                    force: a.force,
                },
            )?;
            println!(
                "wrote a random `{}` SDXL model to {}",
                a.preset,
                a.out.display()
            );
            Ok(())
        }
        Command::Train(_) => unreachable!("handled in main"),
        Command::Study(c) => run_study(c),
        Command::Export(a) => run_export(a),
        Command::Merge(a) => run_merge(a),
        Command::Convert(a) => run_convert(a),
        Command::Render(a) => {
            let cfg = RunConfig::load(&a.run)?;
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
            let m = moslora::render::render(&cfg, &plan, opts, &mut RenderBar { bar: None })?;
            print_render_summary(&m, &plan.out);
            Ok(())
        }
        Command::Pretrain(a) => cli::toy::run_pretrain(a),
        Command::World(a) => cli::toy::run_world(a),
        Command::Judge(a) => cli::toy::run_judge(a),
        Command::Demo(a) => {
            let o = moslora::demo::DemoOptions {
                dir: a.out,
                model: a.model,
                judge: (!a.no_judge).then_some(a.judge),
                train_steps: a.train_steps,
                render_steps: a.render_steps,
            };
            let r = moslora::demo::run(&o, &mut Bar { bar: None }, &mut RenderBar { bar: None })?;
            print_demo(&r);
            Ok(())
        }
        Command::Compare(a) => {
            let cfg = RunConfig::load(&a.run)?;
            let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref())?;
            let (outcomes, m) = moslora::render::compare(
                &cfg,
                opts,
                &mut Bar { bar: None },
                &mut RenderBar { bar: None },
            )?;
            for o in &outcomes {
                println!(
                    "{}: trained {} steps in {:.1} s -> {}",
                    o.kind.label(),
                    o.steps_done,
                    o.seconds,
                    o.adapter.display()
                );
            }
            print_render_summary(&m, &cfg.render_dir());
            if cfg.metrics.any() {
                let o = moslora::metrics::ScoreOptions {
                    clip: cfg.metrics.clip.clone(),
                    dino: cfg.metrics.dino.clone(),
                    device: opts.device,
                    dino_eps: None,
                };
                run_score(&cfg.render_dir(), &o)?;
            }
            Ok(())
        }
        Command::Score(a) => {
            let o = moslora::metrics::ScoreOptions {
                clip: a.clip,
                dino: a.dino,
                device: moslora::runtime::parse_device(&a.device)?,
                dino_eps: None,
            };
            run_score(&a.renders, &o)
        }
        Command::Generate(a) => {
            let opts = a.device.options()?;
            let dir = moslora::sdxl::model_dir::ModelDir::open(&a.model)?;
            let native = dir.unet_config()?.sample_size * dir.vae_config()?.scale_factor();
            let o = GenerateOptions {
                steps: a.steps,
                guidance: a.guidance,
                width: a.width.unwrap_or(native),
                height: a.height.unwrap_or(native),
                seed: a.seed,
            };
            let bar = progress(a.steps as u64, "generating");
            let adapter = a.adapter.as_ref().map(|p| (p.as_path(), a.adapter_scale));
            let image = moslora::render::generate::generate(
                &a.model,
                &a.prompt,
                a.negative_prompt.as_deref(),
                adapter,
                &o,
                opts,
                |_| bar.inc(1),
            )?;
            bar.finish_and_clear();
            let img = moslora::sdxl::image_processing::rgb_image(&image)?;
            moslora::fsutil::write_png(&a.out, &img, &[])?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
    }
}

fn train(a: TrainArgs) -> Result<bool> {
    let cfg = RunConfig::load(&a.run)?;
    let kinds: Vec<AdapterKind> = match &a.adapter {
        Some(k) => vec![AdapterKind::parse(k)?],
        None => AdapterKind::BOTH.to_vec(),
    };
    let opts = RunOptions::from_names(&cfg.device, cfg.dtype.as_deref())?;
    let mut bar = Bar { bar: None };
    let outcomes = moslora::train::train(&cfg, &kinds, opts, a.resume, &mut bar)?;
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

/// Errors print as one line: `error: what went wrong`.
fn report(e: &moslora::Error) {
    let text = e.to_string();
    let one_line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!("error: {one_line}");
}

#[derive(Subcommand)]
enum StudyCommand {
    /// Pair two adapters' renders of the same prompt and seed into a blinded rater folder
    /// (index.html, images, reference photos); the key is written beside it as STUDY.key.json
    Make(StudyMakeArgs),
    /// Tally raters' votes files against the key: table, Markdown, CSV, JSON and a bar chart
    Tally(StudyTallyArgs),
}

#[derive(Args)]
struct StudyMakeArgs {
    /// A render folder (`moslora render`); repeat for several subjects
    #[arg(long = "renders", required = true)]
    renders: Vec<PathBuf>,
    /// Adapter A, the baseline (name or label, any case), e.g. LoRA
    #[arg(long)]
    a: String,
    /// Adapter B, compared against A (name or label, any case), e.g. MoSLoRA
    #[arg(long)]
    b: String,
    /// Pairs shown a second time with sides swapped, to measure rater consistency
    /// (default: 10 % of the pairs, at least 1)
    #[arg(long)]
    repeats: Option<usize>,
    /// Seed of every random choice (default: fresh; recorded in the key)
    #[arg(long)]
    seed: Option<u64>,
    /// The rater folder to write (must not exist or be empty, unless --force)
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing study folder and its key
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct StudyTallyArgs {
    /// The study's key (STUDY.key.json, written beside the rater folder)
    #[arg(long)]
    key: PathBuf,
    /// Votes files downloaded from the rater page
    #[arg(required = true)]
    votes: Vec<PathBuf>,
    /// Folder for tally.md, tally.csv, tally.json and tally.png (default: STUDY.tally beside the key)
    #[arg(long)]
    out: Option<PathBuf>,
}

fn run_study(c: StudyCommand) -> Result<()> {
    use moslora::study;
    match c {
        StudyCommand::Make(a) => {
            let made = study::make::make(&study::make::MakeOptions {
                renders: a.renders,
                a: a.a,
                b: a.b,
                repeats: a.repeats,
                seed: a.seed,
                out: a.out,
                force: a.force,
            })?;
            for n in &made.notes {
                eprintln!("note: {n}");
            }
            let k = &made.key;
            println!(
                "wrote {}: {} trials ({} pairs of {} subject(s) + {} repeated with sides swapped), {} vs {}",
                made.dir.display(),
                k.trials.len(),
                k.pairs(),
                k.subjects.len(),
                k.trials.len() - k.pairs(),
                k.b.label,
                k.a.label
            );
            println!(
                "key: {} (keep it away from raters; tally with `moslora study tally --key {} VOTES.json...`)",
                made.key_path.display(),
                made.key_path.display()
            );
            Ok(())
        }
        StudyCommand::Tally(a) => {
            let key = study::Key::load(&a.key)?;
            let t = study::tally::tally(&key, &a.votes);
            for f in &t.files {
                let mark = if f.tallied { "ok" } else { "SKIPPED" };
                eprintln!("{mark}: {}: {}", f.file.display(), f.message);
            }
            if t.raters == 0 {
                return Err(moslora::Error::msg(format!(
                    "none of the {} votes file(s) could be tallied (reasons above)",
                    a.votes.len()
                )));
            }
            print!("\n{}", study::report::text(&t));
            let out = match a.out {
                Some(o) => o,
                None => study::tally_dir_for(&a.key),
            };
            let files = study::report::write_all(&t, &out)?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            println!("\nwrote {}", names.join(", "));
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // First Ctrl-C: finish the step, save a checkpoint, stop. Second: stop at once.
    let _ = ctrlc::set_handler(|| {
        if moslora::train::INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint (Ctrl-C again to quit at once)");
    });
    if let Command::Train(a) = cli.command {
        return match train(a) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(130),
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct ExportArgs {
    /// The adapter file (adapter.safetensors from `moslora train`)
    adapter: PathBuf,
    /// kohya (ComfyUI, AUTOMATIC1111, Forge; diffusers reads it too) or diffusers (PEFT)
    #[arg(long)]
    format: String,
    /// The model the adapter belongs to, to read its UNet layout (default: SDXL's)
    #[arg(long)]
    model: Option<PathBuf>,
    /// Configs folder for a single-file --model that is not SDXL base sized
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output .safetensors file
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ModelWriteArgs {
    /// dtype of the written weights: f32, f16 or bf16 (default: as the source model)
    #[arg(long)]
    dtype: Option<String>,
    /// Configs (and tokenizers) folder for a single-file --model that is not SDXL base sized
    #[arg(long)]
    config: Option<PathBuf>,
    /// Replace an existing output
    #[arg(long)]
    force: bool,
}

impl ModelWriteArgs {
    fn options(&self) -> Result<moslora::sdxl::convert::WriteOptions> {
        Ok(moslora::sdxl::convert::WriteOptions {
            dtype: self.dtype.as_deref().map(parse_dtype).transpose()?,
            force: self.force,
        })
    }
}

#[derive(Args)]
struct MergeArgs {
    /// SDXL model: a diffusers folder or a single-file .safetensors checkpoint
    #[arg(long)]
    model: PathBuf,
    /// The adapter file to merge
    #[arg(long)]
    adapter: PathBuf,
    /// Strength of the adapter (1.0 = as trained)
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Output: a folder, or a single file if it ends in .safetensors
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    write: ModelWriteArgs,
}

#[derive(Args)]
struct ConvertArgs {
    /// SDXL model: a diffusers folder or a single-file .safetensors checkpoint
    #[arg(long)]
    model: PathBuf,
    /// Output: a single file if it ends in .safetensors, else a diffusers folder
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    write: ModelWriteArgs,
}

fn run_export(a: ExportArgs) -> Result<()> {
    use moslora::adapter::export::{self, ExportFormat};
    use moslora::sdxl::sgm_names::Layout;
    let format = ExportFormat::parse(&a.format)?;
    let layout = match &a.model {
        Some(m) => {
            let dir = moslora::sdxl::convert::open_model(m, a.config.as_deref())?;
            Layout::unet(&dir.unet_config()?)
        }
        None => Layout::sdxl(),
    };
    let e = export::export(&a.adapter, format, &a.out, &layout)?;
    let folded = if e.mixer_folded {
        ", mixer folded into lora_down"
    } else {
        ""
    };
    println!(
        "wrote {} ({} LoRA, {} layers, rank {}, alpha {}{folded})",
        a.out.display(),
        format.name(),
        e.layers,
        e.rank,
        e.alpha
    );
    Ok(())
}

fn run_merge(a: MergeArgs) -> Result<()> {
    let model = moslora::sdxl::convert::open_model(&a.model, a.write.config.as_deref())?;
    let w = moslora::adapter::merged_model::merge(
        &model,
        &a.adapter,
        a.scale,
        &a.out,
        &a.write.options()?,
    )?;
    println!(
        "wrote {} ({}, {}, {} adapted layers merged at scale {})",
        w.path.display(),
        if w.single_file {
            "single file"
        } else {
            "diffusers folder"
        },
        moslora::runtime::dtype_name(w.dtype),
        w.merged_layers,
        a.scale
    );
    Ok(())
}

fn run_convert(a: ConvertArgs) -> Result<()> {
    let model = moslora::sdxl::convert::open_model(&a.model, a.write.config.as_deref())?;
    let w = moslora::sdxl::convert::convert(&model, &a.out, &a.write.options()?)?;
    println!(
        "wrote {} ({}, {}, {} tensors)",
        w.path.display(),
        if w.single_file {
            "single file"
        } else {
            "diffusers folder"
        },
        moslora::runtime::dtype_name(w.dtype),
        w.tensors
    );
    Ok(())
}
