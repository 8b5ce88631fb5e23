//! The job runner: each job is `moslora compare DATA/jobs/ID/run.yaml --progress json`, a child
//! process of the app in its own process group, its events appended to `events.jsonl` and its
//! stderr to `log.txt` in the job's folder. One job runs at a time per device; the others wait
//! in queue order.
//!
//! The runner holds no state of its own that the database does not: after an app restart (or
//! a SIGKILL) it finds every job marked running. One whose process still runs is watched to
//! its end; one whose process is gone is queued again, and the same command resumes it from
//! its checkpoint (`compare` trains on from a matching checkpoint).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::store::{self, Store, DONE, FAILED, QUEUED, RUNNING, STOPPED, STOPPING};
use crate::error::{Error, Result};

/// How often the runner looks at its jobs.
pub const TICK: Duration = Duration::from_millis(200);

/// The files of job `id`.
pub struct JobFiles {
    pub dir: PathBuf,
}

impl JobFiles {
    pub fn new(data: &Path, id: i64) -> JobFiles {
        JobFiles {
            dir: store::job_dir(data, id),
        }
    }
    pub fn run_yaml(&self) -> PathBuf {
        self.dir.join("run.yaml")
    }
    pub fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.txt")
    }
    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// The command that runs (and reproduces) a job.
pub fn command_line(exe: &Path, files: &JobFiles) -> Vec<String> {
    vec![
        exe.display().to_string(),
        "compare".into(),
        files.run_yaml().display().to_string(),
        "--progress".into(),
        "json".into(),
    ]
}

/// The last event of a job's stream, if any.
pub fn last_event(files: &JobFiles) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(files.events()).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
}

/// Whether process `pid` is alive and is this job's command (a reused pid is not).
fn runs_job(pid: i64, files: &JobFiles) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line.
    let want = files.run_yaml().display().to_string();
    String::from_utf8_lossy(&cmd).split('\0').any(|a| a == want)
}

/// The app's runner: the database, the data folder, and the children it started.
pub struct Runner {
    pub data: PathBuf,
    pub exe: PathBuf,
    pub store: Arc<Mutex<Store>>,
    children: HashMap<i64, Child>,
}

impl Runner {
    pub fn new(data: &Path, exe: &Path, store: Arc<Mutex<Store>>) -> Runner {
        Runner {
            data: data.to_path_buf(),
            exe: exe.to_path_buf(),
            store,
            children: HashMap::new(),
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One look at every job: ended children recorded, orphans adopted or queued again,
    /// waiting jobs started where their device is free.
    pub fn tick(&mut self) -> Result<()> {
        let jobs = self.db().jobs()?;
        for j in jobs
            .iter()
            .filter(|j| j.state == RUNNING || j.state == STOPPING)
        {
            let files = JobFiles::new(&self.data, j.id);
            if let Some(child) = self.children.get_mut(&j.id) {
                let status = child.try_wait().map_err(|e| Error::msg(e.to_string()))?;
                let Some(status) = status else { continue };
                self.children.remove(&j.id);
                let code = status.code().map(i64::from);
                self.ended(j.id, &j.state, code, &files)?;
            } else if j.pid.is_some_and(|p| runs_job(p, &files)) {
                // Started by an app that died; it runs on, and is watched until it ends.
                continue;
            } else {
                let code = last_event(&files).and_then(|e| e["exit_code"].as_i64());
                self.ended(j.id, &j.state, code, &files)?;
            }
        }
        let jobs = self.db().jobs()?;
        let mut busy: Vec<String> = jobs
            .iter()
            .filter(|j| j.state == RUNNING || j.state == STOPPING)
            .map(|j| j.device.clone())
            .collect();
        for j in jobs.iter().filter(|j| j.state == QUEUED) {
            if busy.contains(&j.device) {
                continue;
            }
            busy.push(j.device.clone());
            self.start(j.id)?;
        }
        Ok(())
    }

    /// A job's process ended with `code` (None: killed, or not known).
    fn ended(&mut self, id: i64, state: &str, code: Option<i64>, files: &JobFiles) -> Result<()> {
        let last = last_event(files);
        let message = last
            .as_ref()
            .and_then(|e| e["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        let (to, msg) = match code {
            Some(0) => (DONE, message),
            Some(130) if state == STOPPING => (STOPPED, "stopped; a checkpoint is saved".into()),
            // Ended without being asked (the app's own Ctrl-C, a SIGKILL, a crash of the
            // machine): the checkpoint is there, so it goes back into the queue.
            Some(130) | None if state == RUNNING => (QUEUED, String::new()),
            None => (STOPPED, "stopped".into()),
            Some(_) => (FAILED, message),
        };
        self.db().set_state(id, to, None, code, &msg)
    }

    fn start(&mut self, id: i64) -> Result<()> {
        let files = JobFiles::new(&self.data, id);
        let cmd = command_line(&self.exe, &files);
        let open = |p: PathBuf| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| Error::io(&p, e))
        };
        let out = open(files.events())?;
        let err = open(files.log())?;
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a Ctrl-C meant for the app does not reach the job.
            c.process_group(0);
        }
        match c.spawn() {
            Ok(child) => {
                let pid = child.id() as i64;
                self.children.insert(id, child);
                self.db().set_state(id, RUNNING, Some(pid), None, "")
            }
            Err(e) => self.db().set_state(
                id,
                FAILED,
                None,
                None,
                &format!("could not start {}: {e}", cmd[0]),
            ),
        }
    }

    /// Runs ticks until the process ends.
    pub fn run_forever(mut self) {
        loop {
            if let Err(e) = self.tick() {
                eprintln!("warning: the job runner: {e}");
            }
            std::thread::sleep(TICK);
        }
    }
}

/// Asks a running job to stop (SIGTERM: it saves a checkpoint and exits 130); a waiting one
/// is simply taken out of the queue. Whether anything changed.
pub fn stop(store: &Store, data: &Path, id: i64) -> Result<bool> {
    let Some(j) = store.job(id)? else {
        return Ok(false);
    };
    if j.state == QUEUED {
        return store.transition(id, &[QUEUED], STOPPED);
    }
    if j.state != RUNNING {
        return Ok(false);
    }
    let files = JobFiles::new(data, id);
    if !store.transition(id, &[RUNNING], STOPPING)? {
        return Ok(false);
    }
    if let Some(pid) = j.pid.filter(|&p| runs_job(p, &files)) {
        // SAFETY: kill(2) with a pid just checked to be this job's command.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    Ok(true)
}

/// Asks a running job for a training sample at its next step (the request file
/// `RunPaths::sample_request` of the adapter it trains now); it appears on the job's page
/// as the samples of `sample_every` do. Whether a request was made.
pub fn sample_now(store: &Store, data: &Path, id: i64) -> Result<bool> {
    let Some(j) = store.job(id)? else {
        return Ok(false);
    };
    if j.state != RUNNING {
        return Err(Error::setting(
            "job",
            "a sample is drawn while the job trains",
        ));
    }
    let files = JobFiles::new(data, id);
    let cfg = crate::config::RunConfig::load(&files.run_yaml())?;
    if cfg.train.sample_every == 0 {
        return Err(Error::setting(
            "train.sample_every",
            "this job's RUN.yaml has train.sample_every: 0, so it draws no samples",
        ));
    }
    // The adapter it trains now: the last `train` event's.
    let text = std::fs::read_to_string(files.events()).unwrap_or_default();
    let kind = text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event"] == "train").then(|| v["adapter"].as_str().map(str::to_string))?
    });
    let Some(kind) = kind.and_then(|k| crate::train::AdapterKind::parse(&k).ok()) else {
        return Err(Error::setting(
            "job",
            "the job has not started training yet: ask again in a moment",
        ));
    };
    let paths = crate::train::RunPaths::new(&cfg, kind);
    std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
    crate::fsutil::write_bytes(&paths.sample_request(), b"")?;
    Ok(true)
}

/// Puts a stopped or failed job back into the queue (where it was).
pub fn resume(store: &Store, id: i64) -> Result<bool> {
    store.transition(id, &[STOPPED, FAILED], QUEUED)
}
