//! `sweep run --slurm`: one `sbatch --array` job of the task command, then a gather job that
//! waits for the whole array with `afterany` (with `afterok`, one failed task would leave the
//! gather pending forever). Per-task resources come from SWEEP.yaml's `slurm:`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::Sweep;
use crate::error::{Error, Result};

/// `slurm:` in SWEEP.yaml: what each array task asks for.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub partition: Option<String>,
    /// e.g. `gpu:1`.
    pub gres: Option<String>,
    /// e.g. `04:00:00`.
    pub time: Option<String>,
    pub cpus: Option<u32>,
    /// e.g. `32G`.
    pub mem: Option<String>,
    /// Tasks running at once (`--array=...%M`).
    pub max_parallel: Option<usize>,
    pub account: Option<String>,
    pub qos: Option<String>,
}

/// The submitted jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub array: String,
    pub gather: String,
    pub array_script: PathBuf,
    pub gather_script: PathBuf,
}

/// `0-5` for a whole sweep, `1,4,5` for some of its tasks.
pub fn array_spec(indices: &[usize], total: usize) -> String {
    if indices.len() == total && indices.iter().enumerate().all(|(i, &x)| i == x) {
        format!("0-{}", total - 1)
    } else {
        indices
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A shell word, single-quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_path(p: &Path) -> String {
    quote(&p.display().to_string())
}

/// The job-array script for `indices`.
pub fn array_script(sweep: &Sweep, indices: &[usize], exe: &Path) -> String {
    let r = &sweep.config.slurm;
    let mut spec = array_spec(indices, sweep.tasks.len());
    if let Some(m) = r.max_parallel {
        spec.push_str(&format!("%{m}"));
    }
    let logs = sweep.config.output.join("logs");
    let mut s = String::from("#!/bin/bash\n");
    s.push_str("#SBATCH --job-name=moslora-sweep\n");
    s.push_str(&format!("#SBATCH --array={spec}\n"));
    s.push_str(&format!(
        "#SBATCH --output={}/task-%a.log\n",
        logs.display()
    ));
    push_resources(&mut s, r, true);
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!(
        "exec {} sweep task {}\n",
        quote_path(exe),
        quote_path(&sweep.file)
    ));
    s
}

/// The gather script, run after the array whatever its tasks' fate.
pub fn gather_script(sweep: &Sweep, exe: &Path) -> String {
    let r = &sweep.config.slurm;
    let mut s = String::from("#!/bin/bash\n");
    s.push_str("#SBATCH --job-name=moslora-gather\n");
    s.push_str(&format!(
        "#SBATCH --output={}/gather.log\n",
        sweep.config.output.join("logs").display()
    ));
    push_resources(&mut s, r, false);
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!(
        "exec {} sweep gather {}\n",
        quote_path(exe),
        quote_path(&sweep.file)
    ));
    s
}

fn push_resources(s: &mut String, r: &Resources, task: bool) {
    let mut line = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            s.push_str(&format!("#SBATCH --{k}={v}\n"));
        }
    };
    line("partition", &r.partition);
    line("account", &r.account);
    line("qos", &r.qos);
    if task {
        line("gres", &r.gres);
        line("time", &r.time);
        line("mem", &r.mem);
        line("cpus-per-task", &r.cpus.map(|c| c.to_string()));
    }
}

/// Write both scripts under `<output>/slurm/` and submit them: the array, then the gather
/// with `--dependency=afterany:<array>`.
pub fn submit(sweep: &Sweep, indices: &[usize], exe: &Path) -> Result<Submitted> {
    if indices.is_empty() {
        return Err(Error::msg("no tasks to submit: every task is done"));
    }
    let dir = sweep.config.output.join("slurm");
    std::fs::create_dir_all(sweep.config.output.join("logs"))
        .map_err(|e| Error::io(&sweep.config.output, e))?;
    let array_path = dir.join("array.sh");
    let gather_path = dir.join("gather.sh");
    crate::fsutil::write_bytes(&array_path, array_script(sweep, indices, exe).as_bytes())?;
    crate::fsutil::write_bytes(&gather_path, gather_script(sweep, exe).as_bytes())?;
    let array = sbatch(&array_path, &[])?;
    let gather = sbatch(&gather_path, &[format!("--dependency=afterany:{array}")])?;
    Ok(Submitted {
        array,
        gather,
        array_script: array_path,
        gather_script: gather_path,
    })
}

/// `sbatch --parsable`: the job id, or sbatch's own message when it refuses.
fn sbatch(script: &Path, args: &[String]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script)
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::msg(
                    "sbatch not found: --slurm needs Slurm's client tools on this machine \
                     (e.g. Debian's slurm-client), or run the sweep with --local",
                )
            } else {
                Error::io(Path::new("sbatch"), e)
            }
        })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(Error::msg(format!(
            "sbatch refused {}: {}",
            script.display(),
            msg.trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::msg(format!(
            "sbatch gave no job id for {} (it printed {:?})",
            script.display(),
            text.trim()
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_sweeps_are_ranges_and_leftovers_are_lists() {
        assert_eq!(array_spec(&[0, 1, 2, 3], 4), "0-3");
        assert_eq!(array_spec(&[1, 3], 4), "1,3");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
