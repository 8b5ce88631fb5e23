//! Helpers for the tests that stop, kill, crowd or starve real `moslora` processes: tiny run
//! files, spawned commands with their stderr kept, signals, and the leftovers a run may leave.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{repo, tiny_model};

/// How many prompts the runs of [`write_run`] render.
pub const PROMPTS: usize = 6;

/// A RUN.yaml in `dir` writing to `dir/out`: `steps` tiny LoRA/MoSLoRA steps with a checkpoint
/// every `checkpoint_every`, and renders with the base model column of [`PROMPTS`] prompts
/// (one seed, 4 sampler steps).
pub fn write_run(dir: &Path, steps: u64, checkpoint_every: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let prompts = dir.join("prompts.yaml");
    let list: String = ["snow", "beach", "city", "water", "forest", "kitchen"]
        .iter()
        .map(|w| format!("  - \"a [V] {{class}} in the {w}\"\n"))
        .collect();
    assert_eq!(list.lines().count(), PROMPTS);
    std::fs::write(&prompts, format!("prompts:\n{list}")).unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: {steps}\n  \
         resolution: 64\n  batch_size: 1\n  crops_per_image: 1\n  checkpoint_every: {checkpoint_every}\n\
         render:\n  prompts: {}\n  seeds: [0]\n  steps: 4\n  include_base: true\n",
        tiny_model().display(),
        dir.join("out").display(),
        repo().join("assets/subject").display(),
        prompts.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A running `moslora` whose stderr goes to a file (a pipe could fill up and stall it).
pub struct Running {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Running {
    pub fn start(args: &[&str], stderr: &Path) -> Running {
        Self::start_with(
            Command::new(env!("CARGO_BIN_EXE_moslora")).args(args),
            stderr,
        )
    }

    pub fn start_with(cmd: &mut Command, stderr: &Path) -> Running {
        let file = std::fs::File::create(stderr).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Running {
            child,
            stderr: stderr.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` (INT, TERM, KILL) as `kill -SIGNAL PID` does.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Wait for the end; the exit status and everything it wrote to stderr.
    pub fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        (status, std::fs::read_to_string(&self.stderr).unwrap())
    }

    /// Poll `ready` every 10 ms until it holds (true), or the process ended first (false).
    /// Fails the test after `limit`.
    pub fn wait_for(&mut self, limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let started = Instant::now();
        loop {
            if ready() {
                return true;
            }
            if !self.running() {
                return ready();
            }
            assert!(
                started.elapsed() < limit,
                "still waiting after {limit:?}: {}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Run `moslora` to its end: (exit code, stderr).
pub fn moslora(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `error: ...` lines of a command's stderr.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("error:"))
        .collect()
}

/// Every file or folder under `dir` named like a temporary (`.NAME.tmp-PID...`) or a
/// set-aside checkpoint (`.NAME.old-PID`): what a killed write leaves.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-")) {
            found.push(e.path());
        } else if e.path().is_dir() {
            found.extend(leftovers(&e.path()));
        }
    }
    found.sort();
    found
}

/// The step of the checkpoint in `dir`, if one is there and readable.
pub fn checkpoint_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["step"].as_u64()
}

/// Every PNG file (not hidden) in `dir`.
pub fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "png")
                        && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The inode of a file: a file rewritten (atomically, so renamed over) gets a new one.
pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}
