//! A real Slurm on this machine, started and stopped by the test (tests/slurm_support): a job
//! array with a throttle and a failing task, a gather that waits on it with `afterany`, and
//! `scancel` of a running array task. Needs root; installs Debian's Slurm and munge packages
//! the first time.

mod slurm_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slurm_support::Slurm;

/// The job id `sbatch --parsable` printed (`id` or `id;cluster`).
fn job_id(parsable: &str) -> String {
    let id = parsable.trim().split(';').next().unwrap().to_string();
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "sbatch --parsable printed {parsable:?}"
    );
    id
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
}

/// Lines of `squeue -h --states=all -j <id> -o '%i %T'`: each task's id and state.
fn states(slurm: &Slurm, job: &str) -> Vec<(String, String)> {
    slurm
        .run("squeue", &["-h", "--states=all", "-j", job, "-o", "%i %T"])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(i, t)| (i.to_string(), t.trim().to_string()))
        .collect()
}

/// Polls `cond` every 100 ms until it holds; panics after `within`.
fn wait_for(what: &str, within: Duration, slurm: &Slurm, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !cond() {
        if Instant::now() > until {
            panic!("{what}: not within {within:?}\n{}", slurm.log_tails());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the process runs (a zombie, waiting for its parent, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.split_whitespace().next() != Some("Z"))
    })
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn a_job_array_and_an_afterany_gather_run_on_a_real_slurm() {
    let total = Instant::now();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("slurm-smoke");
    let mut phases: Vec<(&str, Duration)> = Vec::new();

    // The harness empties its own folder, after stopping what a crashed run left there.
    let t = Instant::now();
    let slurm = Slurm::start(&root.join("slurm"));
    let install = slurm.install_took();
    phases.push(("package install (when missing)", install));
    phases.push((
        "start: packages checked, stale runs stopped, daemons to idle",
        t.elapsed() - install,
    ));
    let work = root.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let w = work.display().to_string();

    // A 4-task array, 2 at a time; task 2 fails before writing its result.
    let t = Instant::now();
    write_script(
        &work.join("task.sh"),
        "echo \"$SLURM_ARRAY_TASK_ID\" > \"started-$SLURM_ARRAY_TASK_ID\"\n\
         [ \"$SLURM_ARRAY_TASK_ID\" = 2 ] && exit 1\n\
         echo \"$SLURM_ARRAY_TASK_ID\" > \"result-$SLURM_ARRAY_TASK_ID\"\n",
    );
    let array = job_id(&slurm.run(
        "sbatch",
        &[
            "--parsable",
            "--job-name=smoke-array",
            "--array=0-3%2",
            "--chdir",
            &w,
            "--output",
            &format!("{w}/task-%A_%a.log"),
            &format!("{w}/task.sh"),
        ],
    ));
    let shown = slurm.run("scontrol", &["show", "job", &array]);
    assert!(
        shown.contains("ArrayTaskThrottle=2"),
        "no throttle of 2 on the array:\n{shown}"
    );
    // The gather runs once every task has ended, failed or not; --wait returns its exit code.
    write_script(
        &work.join("gather.sh"),
        "ls result-* > gathered\necho \"$SLURM_JOB_ID\" > gather-ran\n",
    );
    let gather = job_id(&slurm.run(
        "sbatch",
        &[
            "--parsable",
            "--wait",
            "--job-name=smoke-gather",
            &format!("--dependency=afterany:{array}"),
            "--chdir",
            &w,
            "--output",
            &format!("{w}/gather-%j.log"),
            &format!("{w}/gather.sh"),
        ],
    ));
    phases.push((
        "array of 4 at %2 and an afterany gather (sbatch --wait)",
        t.elapsed(),
    ));

    for task in 0..4 {
        let started = std::fs::read_to_string(work.join(format!("started-{task}")))
            .unwrap_or_else(|e| panic!("task {task} did not start: {e}"));
        assert_eq!(started.trim(), task.to_string());
        assert_eq!(work.join(format!("result-{task}")).exists(), task != 2);
        assert!(work.join(format!("task-{array}_{task}.log")).exists());
    }
    assert_eq!(
        std::fs::read_to_string(work.join("gather-ran"))
            .unwrap()
            .trim(),
        gather
    );
    assert_eq!(
        std::fs::read_to_string(work.join("gathered")).unwrap(),
        "result-0\nresult-1\nresult-3\n"
    );
    // No accounting daemon, so no sacct: the controller still holds the ended jobs (MinJobAge).
    let mut got = states(&slurm, &array);
    got.sort();
    let want: Vec<(String, String)> = (0..4)
        .map(|i| {
            let state = if i == 2 { "FAILED" } else { "COMPLETED" };
            (format!("{array}_{i}"), state.to_string())
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        states(&slurm, &gather),
        [(gather.clone(), "COMPLETED".to_string())]
    );

    // scancel of one running array task: its processes end, the other task keeps running.
    let t = Instant::now();
    write_script(
        &work.join("sleeper.sh"),
        "sleep 300 &\necho $! > \"sleep-$SLURM_ARRAY_TASK_ID.pid\"\nwait\n",
    );
    let sleepers = job_id(&slurm.run(
        "sbatch",
        &[
            "--parsable",
            "--job-name=smoke-sleeper",
            "--array=0-1",
            "--chdir",
            &w,
            "--output",
            &format!("{w}/sleeper-%A_%a.log"),
            &format!("{w}/sleeper.sh"),
        ],
    ));
    let pid_file = |i: usize| work.join(format!("sleep-{i}.pid"));
    wait_for(
        "both sleepers running",
        Duration::from_secs(30),
        &slurm,
        || (0..2).all(|i| read_pid(&pid_file(i)).is_some_and(running)),
    );
    let pids = [0, 1].map(|i| read_pid(&pid_file(i)).unwrap());
    assert!(states(&slurm, &sleepers)
        .iter()
        .all(|(_, state)| state == "RUNNING"));
    slurm.run("scancel", &[&format!("{sleepers}_1")]);
    wait_for(
        "the cancelled task's sleep ends",
        Duration::from_secs(20),
        &slurm,
        || !running(pids[1]),
    );
    let task_state = |i: usize| {
        let id = format!("{sleepers}_{i}");
        states(&slurm, &id)
            .into_iter()
            .find(|(j, _)| *j == id)
            .map(|(_, s)| s)
    };
    wait_for(
        "the cancelled task shows CANCELLED",
        Duration::from_secs(20),
        &slurm,
        || task_state(1).as_deref() == Some("CANCELLED"),
    );
    assert!(running(pids[0]), "task 0's sleep ended with task 1's");
    assert_eq!(task_state(0).as_deref(), Some("RUNNING"));
    // The rest of the array.
    slurm.run("scancel", &[&sleepers]);
    wait_for(
        "task 0's sleep ends",
        Duration::from_secs(20),
        &slurm,
        || !running(pids[0]),
    );
    wait_for("the queue empties", Duration::from_secs(20), &slurm, || {
        slurm.run("squeue", &["-h", "-o", "%i"]).trim().is_empty()
    });
    phases.push((
        "scancel of a running array task, then the rest",
        t.elapsed(),
    ));

    let t = Instant::now();
    drop(slurm);
    phases.push(("stop the daemons", t.elapsed()));

    let total = total.elapsed();
    for (phase, took) in &phases {
        eprintln!("{took:>8.1?}  {phase}");
    }
    eprintln!("{total:>8.1?}  in all");
    assert!(
        total - install < Duration::from_secs(180),
        "took {:?} besides the package install",
        total - install
    );
}
