//! `moslora sweep`: plan, run (locally or on Slurm), one task, status and gather.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use moslora::sweep::status::{self, Report};
use moslora::sweep::{self, Sweep};
use moslora::{Error, Result};

use super::progress::Bar;

#[derive(Subcommand)]
pub enum SweepCommand {
    /// Expand SWEEP.yaml into its indexed tasks and print them as a table
    Plan(SweepArgs),
    /// Run the tasks: --local N at a time on this machine, or --slurm as a job array and a
    /// gather job
    Run(RunArgs),
    /// Run one task (what every backend runs); the index from --index, SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX
    Task(TaskArgs),
    /// Which tasks are done, failed (with the end of their log) and missing
    Status(SweepArgs),
    /// Put the finished tasks together: galleries, metric table, one blind study kit
    Gather(SweepArgs),
}

#[derive(Args)]
pub struct SweepArgs {
    /// The sweep: a base RUN.yaml, subjects and axes
    sweep: PathBuf,
}

#[derive(Args)]
pub struct RunArgs {
    /// The sweep: a base RUN.yaml, subjects and axes
    sweep: PathBuf,
    /// Run on this machine
    #[arg(long, conflicts_with = "slurm")]
    local: bool,
    /// Tasks at once with --local (one GPU each with CUDA; the CPU threads split otherwise)
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Submit to Slurm: an sbatch job array, then a gather job after it (afterany)
    #[arg(long)]
    slurm: bool,
    /// Only the tasks that are not done (failed, missing, or killed while running)
    #[arg(long)]
    only_missing: bool,
    /// Write the sweep for another scheduler instead of running it: `k8s` (a Kubernetes
    /// Indexed Job, from SWEEP.yaml's `k8s:` section)
    #[arg(long, value_parser = ["k8s"], conflicts_with_all = ["local", "slurm"])]
    emit: Option<String>,
}

#[derive(Args)]
pub struct TaskArgs {
    /// The sweep: a base RUN.yaml, subjects and axes
    sweep: PathBuf,
    /// The task's index, as `sweep plan` numbers them (default: SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX)
    #[arg(long)]
    index: Option<usize>,
}

/// The plan's table: each column as wide as its longest cell, so long subject or class names
/// never push the columns out of line; numbers aligned right.
fn plan_table(rows: &[[String; 6]]) -> String {
    const HEADER: [&str; 6] = ["task", "subject", "class", "adapter", "rank", "seed"];
    const RIGHT: [bool; 6] = [true, false, false, false, true, true];
    let mut width: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = width[i];
                if RIGHT[i] {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ");
        out.truncate(out.trim_end().len());
        out + "\n"
    };
    let mut out = line(HEADER.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

pub fn run(c: SweepCommand) -> Result<ExitCode> {
    match c {
        SweepCommand::Plan(a) => {
            let s = Sweep::load(&a.sweep)?;
            print!("{}", plan_table(&s.table()));
            println!(
                "{} tasks ({} subjects) into {}",
                s.tasks.len(),
                s.subjects.len(),
                s.config.output.display()
            );
        }
        SweepCommand::Run(a) => return run_sweep(a),
        SweepCommand::Task(a) => {
            let s = Sweep::load(&a.sweep)?;
            let index = match a.index {
                Some(i) => i,
                None => sweep::index_from_env()?,
            };
            let name = s.task_name(s.task(index)?);
            super::models::fetch_run(&s.base, true)?;
            let cfg = s.run_config(s.task(index)?)?;
            let device =
                moslora::runtime::parse_device(&cfg.device, moslora::runtime::Given::RunFile)?;
            super::set_run_threads(&cfg, device)?;
            match sweep::task::run(&s, index, &mut Bar::new(), &mut Bar::new())? {
                sweep::task::Outcome::AlreadyDone => println!("task {name}: already done"),
                sweep::task::Outcome::Done => println!("task {name}: done"),
                sweep::task::Outcome::Stopped => {
                    eprintln!("task {name}: stopped, checkpoint saved; run it again to continue");
                    return Ok(ExitCode::from(130));
                }
            }
        }
        SweepCommand::Status(a) => {
            let s = Sweep::load(&a.sweep)?;
            let reports = status::survey(&s);
            let count = |f: fn(&Report) -> bool| reports.iter().filter(|(_, r)| f(r)).count();
            println!(
                "{} tasks: {} done, {} failed, {} running, {} missing",
                reports.len(),
                count(|r| *r == Report::Done),
                count(|r| matches!(r, Report::Failed { .. })),
                count(|r| *r == Report::Running),
                count(|r| *r == Report::Missing)
            );
            for (i, r) in &reports {
                let name = s.task_name(&s.tasks[*i]);
                match r {
                    Report::Done => {}
                    Report::Running => println!("running  {name}"),
                    Report::Missing => println!("missing  {name}"),
                    Report::Failed { error, log_tail } => {
                        println!("failed   {name}: {error}");
                        for l in log_tail {
                            println!("           | {l}");
                        }
                    }
                }
            }
        }
        SweepCommand::Gather(a) => {
            let s = Sweep::load(&a.sweep)?;
            let g = sweep::gather::gather(&s)?;
            println!(
                "gathered {} render folders into {}",
                g.groups.len(),
                g.dir.display()
            );
            if let Some(t) = &g.table {
                println!("  metrics: {}", t.display());
            }
            if let Some(st) = &g.study {
                println!("  study:   {}", st.display());
            }
            if !g.missing.is_empty() {
                return Err(Error::msg(format!(
                    "{} of {} tasks are not done ({}); gathered the rest. `moslora sweep \
                     status` says why; `sweep run --only-missing` runs them",
                    g.missing.len(),
                    s.tasks.len(),
                    g.missing.join(", ")
                )));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_sweep(a: RunArgs) -> Result<ExitCode> {
    let s = Sweep::load(&a.sweep)?;
    if a.emit.is_some() {
        let path = s.emit_k8s()?;
        println!(
            "wrote {} ({} tasks as a Kubernetes Indexed Job): kubectl apply -f it, then \
             `moslora sweep gather` once it completes",
            path.display(),
            s.tasks.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let indices: Vec<usize> = if a.only_missing {
        status::not_done(&s)
    } else {
        (0..s.tasks.len()).collect()
    };
    let exe = std::env::current_exe().map_err(|e| Error::msg(format!("own path: {e}")))?;
    if !a.local && !a.slurm {
        return Err(Error::setting(
            "backend",
            "choose where the tasks run: --local [--jobs N], --slurm, or --emit k8s",
        ));
    }
    // Downloaded once here, not by every task at once (a cluster's tasks find it in the
    // shared cache).
    if !indices.is_empty() {
        super::models::fetch_run(&s.base, true)?;
    }
    if a.slurm {
        let sub = sweep::slurm::submit(&s, &indices, &exe)?;
        println!(
            "submitted {} tasks as job array {} ({}); gather job {} runs after it",
            indices.len(),
            sub.array,
            sub.array_script.display(),
            sub.gather
        );
        return Ok(ExitCode::SUCCESS);
    }
    if indices.is_empty() {
        println!("every task is done");
    }
    let total = indices.len();
    let mut ended = 0;
    let r = sweep::local::run(&s, &indices, a.jobs, &exe, |i, ok| {
        ended += 1;
        let name = s.task_name(&s.tasks[i]);
        println!(
            "[{ended}/{total}] {name}: {}",
            if ok { "done" } else { "failed" }
        );
    })?;
    let g = sweep::gather::gather(&s)?;
    println!(
        "gathered {} render folders into {}",
        g.groups.len(),
        g.dir.display()
    );
    if !r.failed.is_empty() {
        return Err(Error::msg(format!(
            "{} of {} tasks failed (their logs: {}); `moslora sweep status` shows why",
            r.failed.len(),
            total,
            s.config.output.join("logs").display()
        )));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn plan_columns_stay_in_line_with_long_names() {
        let rows: Vec<[String; 6]> = [
            [
                "0",
                "grey_sloth_plushie",
                "stuffed animal",
                "moslora:orthogonal",
                "4",
                "0",
            ],
            ["1", "cat", "cat", "lora", "16", "1234"],
        ]
        .iter()
        .map(|r| r.map(|c| c.to_string()))
        .collect();
        let t = super::plan_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        // Each column starts at the same place on every line; the last (seed, right-aligned)
        // ends at the same place.
        let at = |l: &str, what: &str| l.find(what).unwrap();
        assert_eq!(at(lines[0], "class"), at(lines[1], "stuffed"), "{t}");
        assert_eq!(at(lines[0], "adapter"), at(lines[1], "moslora"), "{t}");
        assert_eq!(at(lines[0], "adapter"), at(lines[2], "lora"), "{t}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        assert!(
            lines[1].contains("grey_sloth_plushie  stuffed animal"),
            "{t}"
        );
    }
}
