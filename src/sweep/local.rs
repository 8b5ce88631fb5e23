//! `sweep run --local`: the tasks as child processes of this machine, N at a time. With CUDA
//! each child sees one GPU (`CUDA_VISIBLE_DEVICES`); on the CPU the threads are split between
//! them. Each child is the same task command a cluster would run, its output in the task's log.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::Sweep;
use crate::error::{Error, Result};

/// How one local sweep went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalRun {
    pub done: Vec<usize>,
    pub failed: Vec<usize>,
}

/// Run `indices` with at most `jobs` at a time; `on_end` hears of each task as it ends.
pub fn run(
    sweep: &Sweep,
    indices: &[usize],
    jobs: usize,
    exe: &Path,
    mut on_end: impl FnMut(usize, bool),
) -> Result<LocalRun> {
    let jobs = jobs.max(1);
    let gpu = sweep.base.device.starts_with("cuda");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads_per_task(cores, crate::runtime::thread_cap(), jobs, indices.len());
    let mut queue: VecDeque<usize> = indices.iter().copied().collect();
    let mut slots: Vec<Option<(usize, Child)>> = (0..jobs).map(|_| None).collect();
    let mut out = LocalRun::default();
    std::fs::create_dir_all(sweep.config.output.join("logs"))
        .map_err(|e| Error::io(&sweep.config.output, e))?;
    loop {
        for (slot, entry) in slots.iter_mut().enumerate() {
            if entry.is_none() {
                if let Some(i) = queue.pop_front() {
                    let log_path = sweep.log_path(i);
                    let log =
                        std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
                    let err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
                    let mut cmd = Command::new(exe);
                    cmd.args(["sweep", "task"])
                        .arg(&sweep.file)
                        .args(["--index", &i.to_string()])
                        .stdin(Stdio::null())
                        .stdout(log)
                        .stderr(err);
                    if gpu {
                        cmd.env("CUDA_VISIBLE_DEVICES", slot.to_string());
                    } else {
                        // The most threads the task may take (its `threads:`, auto or set,
                        // and MOSLORA_THREADS are capped by it): N tasks never oversubscribe.
                        cmd.env("OMP_NUM_THREADS", threads.to_string());
                    }
                    let child = cmd.spawn().map_err(|e| Error::io(exe, e))?;
                    *entry = Some((i, child));
                }
            }
        }
        if slots.iter().all(Option::is_none) {
            break;
        }
        for entry in slots.iter_mut() {
            if let Some((i, child)) = entry {
                if let Some(st) = child.try_wait().map_err(|e| Error::io(exe, e))? {
                    let ok = st.success();
                    if ok {
                        out.done.push(*i);
                    } else {
                        out.failed.push(*i);
                    }
                    on_end(*i, ok);
                    *entry = None;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    out.done.sort_unstable();
    out.failed.sort_unstable();
    Ok(out)
}

/// Each of `jobs` CPU tasks' share of the cores (of `cap`, this process's own OMP_NUM_THREADS,
/// when set): fewer tasks than jobs share among themselves; at least one thread each.
pub fn threads_per_task(cores: usize, cap: Option<usize>, jobs: usize, tasks: usize) -> usize {
    let budget = cap.unwrap_or(cores).max(1);
    (budget / jobs.max(1).min(tasks.max(1))).max(1)
}

#[cfg(test)]
mod tests {
    use super::threads_per_task;

    #[test]
    fn tasks_share_the_cores_without_oversubscribing() {
        assert_eq!(threads_per_task(2, None, 2, 10), 1);
        assert_eq!(threads_per_task(16, None, 4, 10), 4);
        assert_eq!(threads_per_task(16, None, 3, 10), 5);
        // Fewer tasks than jobs: the cores go to the tasks there are.
        assert_eq!(threads_per_task(16, None, 8, 2), 8);
        // This process's own OMP_NUM_THREADS is the budget.
        assert_eq!(threads_per_task(16, Some(4), 2, 10), 2);
        // More jobs than cores: one thread each (the jobs themselves oversubscribe).
        assert_eq!(threads_per_task(2, None, 4, 10), 1);
    }
}
