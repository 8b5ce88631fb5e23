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

/// libtorch's threads for a command on `model` at these image sizes (pixels; None: the
/// model's native side): `setting` (RUN.yaml's `threads`; `MOSLORA_THREADS` overrides it),
/// by the size of the work when `auto` (`moslora::runtime::choose_threads`); a model whose
/// configuration cannot be read (a single-file checkpoint: full size) counts as large. Call
/// it first, before any lock or file: more than one thread on the CPU starts the program
/// again with OpenMP's passive wait policy (`moslora::runtime::passive_openmp_or_restart`).
pub fn set_threads(
    model: &std::path::Path,
    setting: moslora::runtime::Threads,
    device: tch::Device,
    sizes: &[(Option<i64>, Option<i64>)],
) -> moslora::Result<()> {
    let work = (|| -> moslora::Result<i64> {
        let dir = moslora::sdxl::model_dir::ModelDir::open(model)?;
        let (unet, scale) = (dir.unet_config()?, dir.vae_config()?.scale_factor());
        Ok(sizes
            .iter()
            .map(|&(w, h)| unet.first_map_elements(w, h, scale))
            .max()
            .unwrap_or(0))
    })()
    .ok();
    moslora::runtime::apply_threads(setting, device, work)?;
    Ok(())
}

/// [`set_threads`] for a run: its training resolution and its render size.
pub fn set_run_threads(
    cfg: &moslora::config::RunConfig,
    device: tch::Device,
) -> moslora::Result<()> {
    let train = Some(cfg.train.resolution);
    set_threads(
        &cfg.model,
        cfg.threads,
        device,
        &[(train, train), (cfg.render.width, cfg.render.height)],
    )
}
