//! `moslora study serve`: the study folder as a live study. Each rater gets a secret link;
//! the rater page saves every answer to the server as it is given, so answers survive
//! reloads and follow the rater to another device; the organiser's page shows each rater's
//! progress and the current tally. Votes go to SQLite beside the study, where `study tally`
//! reads them too, into the same report as votes files.
//!
//! - [`db`]: the database (WAL, synced commits) and its mapping onto the tally's votes.
//! - [`tokens`]: secret tokens, stored as digests, compared in constant time (the shared
//!   HTTP toolkit's, `crate::serve`).
//! - [`links`]: the links file beside the key.
//! - [`files`]: which request paths reach which files of the study folder (`crate::serve`).
//! - [`lock`]: one server per study.
//! - [`writer`]: one writer thread, committing the answers that arrive together at once.
//! - [`routes`]: the HTTP routes.
//!
//! Files beside the study folder `STUDY`: `STUDY.votes.sqlite` (with its `-wal` and `-shm`),
//! `STUDY.votes.lock`, and `STUDY.links.txt` beside the key.

pub mod db;
pub mod links;
pub mod lock;
pub mod routes;
pub mod writer;

pub use crate::serve::{files, tokens};

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::study::Key;
use links::{Link, ORGANISER};
use tokens::{digest, new_token, TokenTable};

/// What `study serve` was asked.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub study: PathBuf,
    pub key: PathBuf,
    pub bind: SocketAddr,
    /// Allow an address beyond this machine.
    pub public: bool,
    /// Make sure raters `rater-01` .. `rater-N` exist.
    pub raters: Option<usize>,
    /// Make sure raters of these names exist.
    pub rater_names: Vec<String>,
    /// The base of the links (default: `http://` and the bound address), e.g. the reverse
    /// proxy's `https://study.example.org`.
    pub url: Option<String>,
}

/// Most raters one command may add (a study of thousands is a survey, not this tool).
pub const MAX_RATERS: usize = 1000;

/// `STUDY.links.txt` beside the key `STUDY.key.json`.
pub fn links_path_for_key(key: &Path) -> PathBuf {
    crate::study::beside_key(key, ".links.txt")
}

/// The rater names asked for, checked.
fn wanted_raters(o: &ServeOptions) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    if let Some(n) = o.raters {
        if n == 0 || n > MAX_RATERS {
            return Err(Error::setting(
                "--raters",
                format!("--raters {n}: give 1 to {MAX_RATERS} raters"),
            ));
        }
        let width = n.to_string().len().max(2);
        names.extend((1..=n).map(|i| format!("rater-{i:0width$}")));
    }
    for name in &o.rater_names {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > routes::MAX_NAME
            || name.chars().any(char::is_control)
            || name.eq_ignore_ascii_case(ORGANISER)
        {
            return Err(Error::setting(
                "--rater",
                format!(
                    "--rater {name:?}: a rater name is 1 to {} characters, no control characters, and not {ORGANISER:?}",
                    routes::MAX_NAME
                ),
            ));
        }
        names.push(name.to_string());
    }
    if names.len() > MAX_RATERS {
        return Err(Error::setting(
            "--rater",
            format!("{} raters: at most {MAX_RATERS}", names.len()),
        ));
    }
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

/// The page as served: the study's own `index.html`, with the script that saves to this server.
fn served_page(study: &Path) -> Result<String> {
    let index = study.join("index.html");
    let page = crate::fsutil::read_to_string(&index)?;
    let at = page.find("</head>").ok_or_else(|| {
        Error::config(
            &index,
            "not a study rater page (no </head>): remake it with `moslora study make`",
        )
    })?;
    Ok(format!(
        "{}<script src=\"serve.js\"></script>\n{}",
        &page[..at],
        &page[at..]
    ))
}

/// Serve the study until Ctrl-C or SIGTERM.
pub fn serve(o: &ServeOptions) -> Result<()> {
    let key = Key::load(&o.key)?;
    if !o.study.join("index.html").is_file() {
        return Err(Error::config(
            &o.study,
            "not a study folder (no index.html): make one with `moslora study make`",
        ));
    }
    if !o.bind.ip().is_loopback() && !o.public {
        return Err(Error::setting(
            "--bind",
            format!(
                "--bind {}: not a loopback address; pass --public to serve beyond this machine \
                 (and put a TLS reverse proxy in front: see the README)",
                o.bind
            ),
        ));
    }
    let wanted = wanted_raters(o)?;
    let page = served_page(&o.study)?;
    let db_path = db::db_path_for(&o.study);
    let lock_path = db::beside(&o.study, ".votes.lock");
    let links_path = links_path_for_key(&o.key);
    let mut lock = lock::ServerLock::acquire(&lock_path, &o.study)?;
    let mut vote_db = db::VoteDb::open(&db_path, &key)?;

    // Who exists, whose links are still known, and who is new.
    let organiser_digest = vote_db.organiser_digest()?;
    let known = vote_db.raters()?;
    let expected = |name: &str| {
        if name == ORGANISER {
            organiser_digest
        } else {
            known
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.token_sha256)
        }
    };
    let mut all_links = links::matching(links::read(&links_path)?, expected);
    let mut fresh: Vec<Link> = Vec::new();
    // The organiser's link is minted again when the links file lost it: whoever can start
    // the server holds the study anyway. A rater's is not (the rater may still hold it).
    let organiser_known = all_links.iter().any(|l| l.name == ORGANISER);
    let new_organiser = match organiser_digest {
        Some(_) if organiser_known => None,
        _ => {
            let l = Link {
                name: ORGANISER.into(),
                token: new_token()?,
            };
            fresh.push(l.clone());
            Some(digest(&l.token))
        }
    };
    let mut new_raters = Vec::new();
    for name in &wanted {
        if !known.iter().any(|r| &r.name == name) {
            let l = Link {
                name: name.clone(),
                token: new_token()?,
            };
            new_raters.push((name.clone(), digest(&l.token)));
            fresh.push(l);
        }
    }
    if known.is_empty() && new_raters.is_empty() {
        return Err(Error::setting(
            "--raters",
            "no raters yet: name them with --rater NAME (repeatable) or --raters N",
        ));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::msg(format!("starting the server's runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(o.bind)
            .await
            .map_err(|e| Error::msg(format!("--bind {}: {e}", o.bind)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::msg(format!("--bind {}: {e}", o.bind)))?;
        lock.record(&format!("pid {}, http://{addr}", std::process::id()))?;
        let base = o.url.clone().unwrap_or_else(|| format!("http://{addr}"));

        // The links file first, then the digests: a link in the file whose digest did not
        // reach the database is dropped at the next start, never the other way round.
        all_links.extend(fresh.iter().cloned());
        links::write(&links_path, &key.study_id, &base, &all_links)?;
        vote_db.register(&key.study_id, new_organiser, &new_raters)?;

        let raters = vote_db.raters()?;
        let lost: Vec<&str> = raters
            .iter()
            .filter(|r| !all_links.iter().any(|l| l.name == r.name))
            .map(|r| r.name.as_str())
            .collect();
        let organiser = TokenTable::new(vec![(
            vote_db
                .organiser_digest()?
                .ok_or_else(|| Error::msg("the organiser's token was not stored"))?,
            0,
        )]);
        let rater_table = TokenTable::new(raters.iter().map(|r| (r.token_sha256, r.id)).collect());
        let reader = db::VoteDb::open_existing(&db_path)?;
        let secrets = [o.key.as_path(), db_path.as_path(), links_path.as_path()];
        let files =
            files::SafeFiles::new(&o.study, &secrets).map_err(|e| Error::io(&o.study, e))?;
        let app = Arc::new(routes::App {
            trials: key.trials.iter().map(|t| t.id.clone()).collect(),
            key,
            writer: writer::Writer::start(vote_db)
                .map_err(|e| Error::msg(format!("starting the votes writer: {e}")))?,
            reader: Mutex::new(reader),
            raters: rater_table,
            rater_names: raters.iter().map(|r| (r.id, r.name.clone())).collect(),
            organiser,
            files,
            page,
        });

        let mut out = std::io::stdout().lock();
        // New links are printed this once; afterwards they are only in the links file.
        for l in &fresh {
            let _ = writeln!(out, "new link: {}\t{}", l.name, links::url(&base, l));
        }
        let _ = writeln!(
            out,
            "{}; links in {} (private, like the key); votes in {}",
            crate::words::count(raters.len(), "rater"),
            links_path.display(),
            db_path.display()
        );
        if !lost.is_empty() {
            let _ = writeln!(
                out,
                "note: the links of {} are not in the links file any more; their answers stay",
                lost.join(", ")
            );
        }
        if o.public {
            eprintln!(
                "warning: serving beyond this machine over plain HTTP. Put a reverse proxy with \
                 TLS (Caddy, nginx) in front and send raters its https:// links (--url); the \
                 tokens travel in every answer."
            );
        }
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
        drop(out);

        axum::serve(listener, routes::router(app))
            .with_graceful_shutdown(stopped())
            .await
            .map_err(|e| Error::msg(format!("serving on {addr}: {e}")))?;
        println!(
            "stopped: every acknowledged answer is in {}",
            db_path.display()
        );
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn stopped() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
