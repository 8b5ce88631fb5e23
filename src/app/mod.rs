//! `moslora app`: the whole job in a browser. Subjects (photos, captions, checks), models,
//! new comparisons from presets, the job queue, each job live, and its results, served on
//! loopback by default, with its state in SQLite under the data folder.
//!
//! - [`store`]: the database: subjects, photos, models, jobs and their states.
//! - [`jobs`]: the runner: each job is `moslora compare RUN.yaml --progress json`, a child
//!   process, one at a time per device; found again after a restart.
//! - [`presets`]: the presets' RUN.yaml.
//! - [`photos`]: uploads checked by content (`image_file`), thumbnails, captions.
//! - [`pages`]: the HTML pages, escaped through `html.rs`.
//! - [`study`]: a finished job made into a served study (`study make`, `study serve`).
//! - [`routes`]: the HTTP routes, with the shared toolkit's checks (`crate::serve`).
//!
//! Files under `DATA`: `app.sqlite` (with `-wal`, `-shm`), `subjects/ID/photos/`,
//! `jobs/ID/{run.yaml,events.jsonl,log.txt,out/}`, `exports/`.

pub mod jobs;
pub mod pages;
pub mod photos;
pub mod presets;
pub mod routes;
pub mod store;
pub mod study;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// What `moslora app` was asked.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub data: PathBuf,
    pub bind: SocketAddr,
    /// Serve beyond loopback (needs `password`).
    pub public: bool,
    pub password: Option<String>,
    /// The `moslora` that runs the jobs (this one).
    pub exe: PathBuf,
}

/// The default data folder: `$XDG_DATA_HOME/moslora-app`, else `~/.local/share/moslora-app`,
/// else `./moslora-app`.
pub fn default_data() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("moslora-app");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/moslora-app"),
        None => PathBuf::from("moslora-app"),
    }
}

/// Checks the options: loopback unless `--public`, and `--public` only with a password.
pub fn check(o: &AppOptions) -> Result<()> {
    if !o.bind.ip().is_loopback() && !o.public {
        return Err(Error::setting(
            "--bind",
            format!(
                "--bind {}: not a loopback address; pass --public (with --password) to serve \
                 beyond this machine",
                o.bind
            ),
        ));
    }
    if o.public && o.password.as_deref().is_none_or(|p| p.len() < 8) {
        return Err(Error::setting(
            "--password",
            "--public needs --password (at least 8 characters, or MOSLORA_APP_PASSWORD): \
             anyone on the network could otherwise start jobs",
        ));
    }
    Ok(())
}

/// Opens the data folder: the database, the shipped toy model listed.
pub fn open_data(data: &Path) -> Result<store::Store> {
    for sub in ["subjects", "jobs", "exports"] {
        let d = data.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let s = store::Store::open(&data.join("app.sqlite"))?;
    s.add_model("Toy world (shipped)", &crate::shipped::toy_model())?;
    Ok(s)
}

/// Serves the app until Ctrl-C or SIGTERM; jobs run on in their own process groups and are
/// found again at the next start.
pub fn serve(o: &AppOptions) -> Result<()> {
    check(o)?;
    let store = Arc::new(Mutex::new(open_data(&o.data)?));
    let runner = jobs::Runner::new(&o.data, &o.exe, store.clone());
    std::thread::Builder::new()
        .name("jobs".into())
        .spawn(move || runner.run_forever())
        .map_err(|e| Error::msg(format!("starting the job runner: {e}")))?;
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
        let state = routes::AppState::new(o, store, addr)?;
        // The studies served before a restart are served again, on their own ports.
        let (data, exe) = (o.data.clone(), o.exe.clone());
        std::thread::spawn(move || study::serve_again(&data, &exe, addr.ip()));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "data in {}", o.data.display());
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
        drop(out);
        // On Ctrl-C or SIGTERM, answers in flight get a moment; open event streams (which
        // never end by themselves) do not hold the app up.
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let mut grace = rx.clone();
        tokio::spawn(async move {
            stopped().await;
            let _ = tx.send(true);
        });
        let server = axum::serve(listener, routes::router(Arc::new(state))).with_graceful_shutdown(
            async move {
                let _ = rx.changed().await;
            },
        );
        tokio::select! {
            r = server => r.map_err(|e| Error::msg(format!("serving on {addr}: {e}")))?,
            _ = async {
                let _ = grace.changed().await;
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            } => {}
        }
        println!("stopped; jobs run on and are found again at the next start");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn stopped() {
    let interrupt = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
