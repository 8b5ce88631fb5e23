//! The `moslora` command line: parse, hand the command to its module under `cli/`, map
//! errors to exit codes.

use std::process::ExitCode;

mod cli;

use clap::{Parser, Subcommand};

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
    InitModel(cli::generate::InitModelArgs),
    /// Render one image from a prompt
    Generate(cli::generate::GenerateArgs),
    /// Export an adapter as a plain LoRA for ComfyUI, AUTOMATIC1111, Forge or diffusers
    Export(cli::export::ExportArgs),
    /// Merge an adapter into a model's weights, written as a diffusers folder or single file
    Merge(cli::export::MergeArgs),
    /// Convert a model between a single-file checkpoint and a diffusers folder
    Convert(cli::export::ConvertArgs),
    /// Train DreamBooth adapters (LoRA and/or MoSLoRA) on a subject's photos
    Train(cli::train::TrainArgs),
    /// Render a prompt set through every adapter side by side: images, grids, gallery
    Render(cli::render::RenderArgs),
    /// Train what is missing or stale, then render: photos to gallery in one command
    Compare(cli::render::CompareArgs),
    /// Score a render folder: DINO, CLIP-I and CLIP-T per image, per adapter, paired
    Score(cli::score::ScoreArgs),
    /// The whole job end to end on a tiny random model: train, render, gallery, study kit
    Demo(cli::demo::DemoArgs),
    /// Blind human evaluation: rater pairs out, votes in, win / tie / loss with statistics
    #[command(subcommand)]
    Study(cli::study::StudyCommand),
    /// The whole job in a browser: subjects, models, a queue of comparisons, results
    App(cli::app::AppArgs),
    /// Many subjects at once: plan a sweep, run it locally or on Slurm, gather it
    #[command(subcommand)]
    Sweep(cli::sweep::SweepCommand),
    /// Pretrain the toy world's small SDXL-architecture model from scratch (the demo's model)
    Pretrain(cli::toy::PretrainArgs),
    /// Draw a contact sheet of the toy world's captioned pictures
    World(cli::toy::WorldArgs),
    /// Train the toy world's judge: a small CLIP for `score` on toy-world renders
    Judge(cli::toy::JudgeArgs),
}

/// Runs the command; the exit code it ends with.
fn run(command: Command) -> moslora::Result<ExitCode> {
    match command {
        Command::InitModel(a) => cli::generate::run_init_model(a)?,
        Command::Generate(a) => cli::generate::run_generate(a)?,
        Command::Export(a) => cli::export::run_export(a)?,
        Command::Merge(a) => cli::export::run_merge(a)?,
        Command::Convert(a) => cli::export::run_convert(a)?,
        Command::Train(a) => {
            // Stopped by Ctrl-C: the checkpoint is saved, the run did not finish.
            if !cli::train::run(a)? {
                return Ok(ExitCode::from(130));
            }
        }
        Command::Render(a) => cli::render::run_render(a)?,
        Command::Compare(a) => cli::render::run_compare(a)?,
        Command::Score(a) => cli::score::run(a)?,
        Command::Demo(a) => cli::demo::run(a)?,
        Command::Study(c) => cli::study::run(c)?,
        Command::Sweep(c) => return cli::sweep::run(c),
        Command::App(a) => cli::app::run(a)?,
        Command::Pretrain(a) => cli::toy::run_pretrain(a)?,
        Command::World(a) => cli::toy::run_world(a)?,
        Command::Judge(a) => cli::toy::run_judge(a)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Errors print as one line: `error: what went wrong`.
fn report(e: &moslora::Error) {
    eprintln!("error: {}", one_line(e));
}

/// An error's message on one line.
fn one_line(e: &moslora::Error) -> String {
    let text = e.to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_stop_handler(&cli.command);
    run(cli.command).unwrap_or_else(|e| {
        report(&e);
        ExitCode::from(exit_code(&e))
    })
}

/// SIGINT (Ctrl-C), SIGTERM (what batch schedulers send before SIGKILL) and SIGHUP (a closed
/// terminal). Commands that can stop at a safe point do so on the first signal (training
/// saves a checkpoint, rendering finishes the image it is on) and exit 130; a second signal
/// ends them at once. The others end at once: they write each file atomically, so nothing
/// half-written is left.
fn install_stop_handler(command: &Command) {
    // A served study stops on Ctrl-C and SIGTERM by itself (every answer is already committed),
    // and so does the app (its jobs run on in their own process groups).
    if matches!(
        command,
        Command::Study(cli::study::StudyCommand::Serve(_)) | Command::App(_)
    ) {
        return;
    }
    let graceful: Option<&'static str> = match command {
        Command::Train(_) | Command::Pretrain(_) | Command::Judge(_) => Some("saving a checkpoint"),
        Command::Render(_) => Some("finishing the image being rendered"),
        Command::Compare(_) | Command::Demo(_) => {
            Some("saving a checkpoint, or finishing the image being rendered")
        }
        // The sweep's own tasks stop as their commands do.
        Command::Sweep(_) => Some("letting the running tasks stop"),
        _ => None,
    };
    let _ = ctrlc::set_handler(move || {
        let Some(what) = graceful else {
            std::process::exit(130);
        };
        if moslora::train::INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: {what} (Ctrl-C again to quit at once)");
    });
}

/// Exit codes a script (a sweep, a scheduler) can act on: 2 for what the person invoking must
/// change (a setting, an existing output, an adapter or checkpoint of another run), as clap
/// exits 2 on a bad command line; 3 for a training loss that stopped being finite; 4 for a
/// device that is not there (the CPU would do); 5 for a full disk (free space, run again);
/// 6 for an output folder another live run holds (wait for it); 1 for everything else
/// (files, libtorch). 130 is a run stopped by Ctrl-C, SIGTERM or SIGHUP at a safe point.
fn exit_code(e: &moslora::Error) -> u8 {
    use moslora::Error;
    match e {
        Error::Setting { .. }
        | Error::Config { .. }
        | Error::OutputExists { .. }
        | Error::AdapterMismatch { .. }
        | Error::StaleCheckpoint { .. } => 2,
        Error::Diverged { .. } => 3,
        Error::DeviceUnavailable { .. } => 4,
        Error::NoSpace { .. } => 5,
        Error::Locked { .. } => 6,
        Error::Interrupted { .. } => 130,
        _ => 1,
    }
}
