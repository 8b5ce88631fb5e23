//! `moslora study make`, `serve` and `tally`: blind pairs out, votes in (as files or through
//! the server's database).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use moslora::study;
use moslora::Result;

#[derive(Subcommand)]
pub enum StudyCommand {
    /// Pair two adapters' renders of the same prompt and seed into a blinded rater folder
    /// (index.html, images, reference photos); the key is written beside it as STUDY.key.json
    Make(StudyMakeArgs),
    /// Serve a study folder live: one secret link per rater, answers saved as given (SQLite
    /// beside the study), an organiser's page with progress and the tally
    Serve(StudyServeArgs),
    /// Tally raters' votes (files, or a served study's database) against the key: table,
    /// Markdown, CSV, JSON and a bar chart
    Tally(StudyTallyArgs),
}

#[derive(Args)]
pub struct StudyServeArgs {
    /// The study folder (`moslora study make --out`)
    study: PathBuf,
    /// The study's key; never served (default: STUDY.key.json beside the study folder)
    #[arg(long)]
    key: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (the address is printed)
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Allow --bind beyond loopback (put a TLS reverse proxy in front: see the README)
    #[arg(long)]
    public: bool,
    /// Make sure raters rater-01 .. rater-N exist (each gets a secret link, printed once)
    #[arg(long)]
    raters: Option<usize>,
    /// Make sure a rater of this name exists (repeatable)
    #[arg(long = "rater")]
    rater: Vec<String>,
    /// Base of the printed links, e.g. the reverse proxy's https://study.example.org
    /// (default: http:// and the bound address)
    #[arg(long)]
    url: Option<String>,
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
    /// Replace an existing study folder and its key (the old key is kept as
    /// NAME.key.<study id>.json, so votes already given still tally)
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct StudyTallyArgs {
    /// The study folder (`moslora study make --out`): its key, STUDY.key.json beside it, is
    /// read (give this or --key)
    #[arg(long, required_unless_present = "key")]
    study: Option<PathBuf>,
    /// The study's key (default: STUDY.key.json beside --study)
    #[arg(long)]
    key: Option<PathBuf>,
    /// Votes files downloaded from the rater page
    votes: Vec<PathBuf>,
    /// A served study's votes database (default when no votes files are given: the
    /// STUDY.votes.sqlite beside the key, if there is one)
    #[arg(long)]
    db: Option<PathBuf>,
    /// Folder for tally.md, tally.csv, tally.json and tally.png (default: STUDY.tally beside the key)
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The key given with --key, or else the one beside the study folder (`STUDY.key.json`); a
/// missing default key is an error that names where it was looked for.
fn key_of(study: Option<&std::path::Path>, key: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(k) = key {
        return Ok(k);
    }
    let study = study.expect("clap requires --study or --key");
    let beside = study::key_path_for(study)?;
    if !beside.is_file() {
        return Err(moslora::Error::setting(
            "key",
            format!(
                "no key at {} (where `study make` writes the key of {}): give --key KEY.json",
                beside.display(),
                study.display()
            ),
        ));
    }
    Ok(beside)
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
                "wrote {}: {} trials ({} pairs of {} + {} repeated with sides swapped), {} vs {}",
                made.dir.display(),
                k.trials.len(),
                k.pairs(),
                moslora::words::count(k.subjects.len(), "subject"),
                k.trials.len() - k.pairs(),
                k.b.label,
                k.a.label
            );
            println!(
                "key: {} (keep it away from raters; tally with `moslora study tally --study {} VOTES.json...`)",
                made.key_path.display(),
                made.dir.display()
            );
            Ok(())
        }
        StudyCommand::Serve(a) => study::serve::serve(&study::serve::ServeOptions {
            key: key_of(Some(&a.study), a.key)?,
            study: a.study,
            bind: a.bind,
            public: a.public,
            raters: a.raters,
            rater_names: a.rater,
            url: a.url,
        }),
        StudyCommand::Tally(a) => {
            let key_path = key_of(a.study.as_deref(), a.key)?;
            let key = study::Key::load(&key_path)?;
            let beside = study::serve::db::db_path_for_key(&key_path);
            let db = match a.db {
                Some(db) => Some(db),
                None if a.votes.is_empty() && beside.is_file() => Some(beside),
                None if a.votes.is_empty() => {
                    return Err(moslora::Error::setting(
                        "votes",
                        format!(
                        "no votes: give votes files, or --db (no served study's database at {})",
                        beside.display()
                    ),
                    ))
                }
                None => None,
            };
            let mut sources: Vec<study::tally::Source> = a
                .votes
                .iter()
                .map(|p| (p.clone(), study::tally::read_votes(&key, p)))
                .collect();
            if let Some(db) = &db {
                sources.extend(study::serve::db::VoteDb::open_existing(db)?.sources(&key)?);
            }
            let count = sources.len();
            let (raters, notes) = study::tally::gather(&key, sources);
            let t = study::tally::compute(&key, &raters, notes);
            for f in &t.files {
                let mark = if f.tallied { "ok" } else { "SKIPPED" };
                eprintln!("{mark}: {}: {}", f.file.display(), f.message);
            }
            if t.raters == 0 {
                let what = match &db {
                    Some(db) => format!("votes file(s) and raters of {}", db.display()),
                    None => "votes file(s)".into(),
                };
                return Err(moslora::Error::msg(format!(
                    "none of the {count} {what} could be tallied (reasons above)"
                )));
            }
            print!("\n{}", study::report::text(&t));
            let out = match a.out {
                Some(o) => o,
                None => study::tally_dir_for(&key_path),
            };
            let files = study::report::write_all(&t, &out)?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            println!("\nwrote {}", names.join(", "));
            Ok(())
        }
    }
}
