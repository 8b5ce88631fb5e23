//! The command line's command groups, one module each, and the one progress bar they share.

pub mod app;
pub mod demo;
pub mod export;
pub mod generate;
pub mod models;
pub mod progress;
pub mod progress_json;
pub mod render;
pub mod score;
pub mod study;
pub mod sweep;
pub mod toy;
pub mod train;

/// The locks of a command's output folders, released in the reverse order of taking them: a
/// folder made inside another (`OUTPUT/renders`) is let go, and taken away if the run wrote
/// nothing, before the one around it.
pub struct Locks(Vec<moslora::run_lock::RunLock>);

impl Drop for Locks {
    fn drop(&mut self) {
        while let Some(lock) = self.0.pop() {
            drop(lock);
        }
    }
}

/// Lock the output folders a command writes, one run at a time in each (see
/// `moslora::run_lock`); the guards hold the locks until dropped. A folder listed twice is
/// locked once.
pub fn lock_outputs(dirs: &[&std::path::Path]) -> moslora::Result<Locks> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut locks = Locks(Vec::new());
    let mut seen: Vec<std::path::PathBuf> = Vec::new();
    for dir in dirs {
        // The same folder named twice is locked once (a second lock would refuse the first).
        let canonical = |d: &std::path::Path| d.canonicalize().unwrap_or_else(|_| d.to_path_buf());
        if dir.exists() && seen.contains(&canonical(dir)) {
            continue;
        }
        // The lock makes a missing folder itself, so that it can take it away again when the
        // run is refused before writing anything.
        locks
            .0
            .push(moslora::run_lock::RunLock::acquire(dir, &command)?);
        seen.push(canonical(dir));
    }
    Ok(locks)
}
