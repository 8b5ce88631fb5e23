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
    /// Train what is missing or stale, then render: photos to gallery in one command
    Compare(cli::render::CompareArgs),
    /// The whole job in a browser: subjects, models, a queue of comparisons, results
    App(cli::app::AppArgs),
    /// Train DreamBooth adapters (LoRA and/or MoSLoRA) on a subject's photos
    Train(cli::train::TrainArgs),
    /// Render a prompt set through every adapter side by side: images, grids, gallery
    Render(cli::render::RenderArgs),
    /// Score a render folder: DINO, CLIP-I and CLIP-T per image, per adapter, paired
    Score(cli::score::ScoreArgs),
    /// Blind human evaluation: rater pairs out, votes in, win / tie / loss with statistics
    #[command(subcommand)]
    Study(cli::study::StudyCommand),
    /// Render one image from a prompt
    Generate(cli::generate::GenerateArgs),
    /// Export an adapter as a plain LoRA for ComfyUI, AUTOMATIC1111, Forge or diffusers
    Export(cli::export::ExportArgs),
    /// Merge an adapter into a model's weights, written as a diffusers folder or single file
    Merge(cli::export::MergeArgs),
    /// Many subjects at once: plan a sweep, run it locally or on Slurm, gather it
    #[command(subcommand)]
    Sweep(cli::sweep::SweepCommand),
    /// The whole job end to end on the toy world's pretrained model: train, render, gallery
    ///
    /// Trains LoRA and MoSLoRA on the bundled robot, renders them beside the base model,
    /// scores them with the toy world's judge and makes a blind study kit: a few minutes on a
    /// CPU, nothing to download.
    Demo(cli::demo::DemoArgs),
    /// Pretrain the toy world's small SDXL-architecture model from scratch (the demo's model)
    Pretrain(cli::toy::PretrainArgs),
    /// Draw a contact sheet of the toy world's captioned pictures
    World(cli::toy::WorldArgs),
    /// Train the toy world's judge: a small CLIP for `score` on toy-world renders
    Judge(cli::toy::JudgeArgs),
    /// Write a random SDXL-architecture model in the diffusers folder layout (for tests)
    InitModel(cli::generate::InitModelArgs),
    /// Convert a model between a single-file checkpoint and a diffusers folder
    Convert(cli::export::ConvertArgs),
}

/// The commands `moslora --help` lists after the user's own, by group: the toy world's tools
/// and the model tools.
const GROUPS: [(&str, &[&str]); 2] = [
    ("Toy-world tools", &["pretrain", "world", "judge"]),
    ("Model tools", &["init-model", "convert"]),
];

/// The command line with its help laid out for people: the user's commands first (in the
/// order of the enum), then each group of tools under its own heading. clap has no heading
/// per subcommand, so the grouped ones are hidden from the first list and listed, in the
/// same layout, after it.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command().subcommand_help_heading("Commands");
    let grouped = |name: &str| GROUPS.iter().any(|(_, names)| names.contains(&name));
    // clap aligns the first list to its longest name; each group lines up with it unless a
    // name of the group is longer.
    let width = cmd
        .get_subcommands()
        .map(|c| c.get_name())
        .filter(|n| !grouped(n))
        .map(str::len)
        .max()
        .unwrap_or(0);
    let header = *cmd.get_styles().get_header();
    let literal = *cmd.get_styles().get_literal();
    let mut after = String::new();
    for (title, names) in GROUPS {
        let width = names.iter().map(|n| n.len()).fold(width, usize::max);
        after.push_str(&format!("{header}{title}:{header:#}\n"));
        for name in names {
            let sub = cmd
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no command {name}"));
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            let pad = " ".repeat(width - name.len());
            after.push_str(&format!("  {literal}{name}{literal:#}{pad}  {about}\n"));
        }
        after.push('\n');
    }
    after.push_str("Run `moslora help COMMAND` for a command's options.");
    for (_, names) in GROUPS {
        for name in names {
            cmd = cmd.mut_subcommand(name, |c| c.hide(true));
        }
    }
    cmd.after_help(after)
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
    use clap::FromArgMatches;
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
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
            quit_now();
        };
        if moslora::train::INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            quit_now();
        }
        // Loading, caching latents, sampling class images, scoring: nothing to save, so
        // nothing to wait for.
        moslora::runtime::stop_if_nothing_to_save(|| {
            eprintln!(
                "\ninterrupted: stopped (nothing was being written; run the same command again)"
            );
            quit_now();
        });
        eprintln!("\ninterrupted: {what} (Ctrl-C again to quit at once)");
    });
}

/// Ends the process from the stop handler's thread with exit code 130, without running exit
/// handlers: libtorch's static destructors would run while the main thread is still inside
/// libtorch, and could crash (SIGSEGV instead of 130). Files are written atomically, so
/// nothing half-written is left; stderr is unbuffered (as `std::process::exit`, this does not
/// flush a part line of stdout).
fn quit_now() -> ! {
    // SAFETY: _exit takes no pointers and ends the process.
    unsafe { libc::_exit(130) }
}

/// Exit codes a script (a sweep, a scheduler) can act on: 2 for what the person invoking must
/// change (a setting, an existing output, an adapter or checkpoint of another run), as clap
/// exits 2 on a bad command line; 3 for a training loss that stopped being finite; 4 for a
/// device that is not there (the CPU would do); 5 for a full disk (free space, run again);
/// 6 for an output folder another live run holds (wait for it); 7 for a Hugging Face model
/// that cannot be had here now (not cached and offline, or the hub out of reach: download
/// it, then run again); 8 for a gated model (accept its licence, set HF_TOKEN); 1 for
/// everything else (files, libtorch). 130 is a run stopped by Ctrl-C, SIGTERM or SIGHUP at a safe point.
fn exit_code(e: &moslora::Error) -> u8 {
    use moslora::Error;
    match e {
        Error::Setting { .. }
        | Error::Config { .. }
        | Error::OutputExists { .. }
        | Error::AdapterMismatch { .. }
        | Error::StaleCheckpoint { .. }
        | Error::HubNotFound { .. } => 2,
        Error::Diverged { .. } => 3,
        Error::DeviceUnavailable { .. } => 4,
        Error::NoSpace { .. } => 5,
        Error::Locked { .. } => 6,
        Error::HubNotCached { .. } | Error::HubUnreachable { .. } => 7,
        Error::HubGated { .. } => 8,
        Error::Interrupted { .. } => 130,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command (and subcommand) says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for s in c.get_subcommands() {
                if s.get_about().is_none() && s.get_name() != "help" {
                    missing.push(format!("{path} {} (the command itself)", s.get_name()));
                }
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), "moslora", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }

    /// The user's commands come first; the toy-world and model tools are grouped after.
    #[test]
    fn help_lists_the_users_commands_first() {
        let help = command().render_help().to_string();
        let at = |s: &str| help.find(s).unwrap_or_else(|| panic!("{s} not in\n{help}"));
        let firsts = [
            "compare", "train", "render", "score", "study", "generate", "export",
        ];
        for w in firsts.windows(2) {
            assert!(
                at(&format!("  {}", w[0])) < at(&format!("  {}", w[1])),
                "{help}"
            );
        }
        assert!(at("  sweep") < at("Toy-world tools:"));
        assert!(at("  demo") < at("Toy-world tools:"));
        assert!(at("Toy-world tools:") < at("  pretrain"));
        assert!(at("Model tools:") < at("  init-model"));
        assert!(at("  judge") < at("Model tools:"));
        assert!(!help.contains("tiny random"), "{help}");
        command().debug_assert();
    }
}
