//! The command line's command groups, one module each, and the one progress bar they share.

pub mod demo;
pub mod export;
pub mod generate;
pub mod progress;
pub mod render;
pub mod score;
pub mod study;
pub mod sweep;
pub mod toy;
pub mod train;

/// Lock the output folders a command writes, one run at a time in each (see
/// `moslora::run_lock`); the guards hold the locks until dropped. A folder listed twice is
/// locked once.
pub fn lock_outputs(dirs: &[&std::path::Path]) -> moslora::Result<Vec<moslora::run_lock::RunLock>> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut locks = Vec::new();
    let mut seen: Vec<std::path::PathBuf> = Vec::new();
    for dir in dirs {
        let canonical = std::fs::create_dir_all(dir)
            .and_then(|()| dir.canonicalize())
            .unwrap_or_else(|_| dir.to_path_buf());
        if !seen.contains(&canonical) {
            locks.push(moslora::run_lock::RunLock::acquire(dir, &command)?);
            seen.push(canonical);
        }
    }
    Ok(locks)
}
