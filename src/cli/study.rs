//! `moslora study make` and `moslora study tally`: blind pairs out, votes in.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use moslora::study;
use moslora::Result;

#[derive(Subcommand)]
pub enum StudyCommand {
    /// Pair two adapters' renders of the same prompt and seed into a blinded rater folder
    /// (index.html, images, reference photos); the key is written beside it as STUDY.key.json
    Make(StudyMakeArgs),
    /// Tally raters' votes files against the key: table, Markdown, CSV, JSON and a bar chart
    Tally(StudyTallyArgs),
}

#[derive(Args)]
pub struct StudyMakeArgs {
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
pub struct StudyTallyArgs {
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

pub fn run(c: StudyCommand) -> Result<()> {
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
