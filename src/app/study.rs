//! "Make a study": a finished job's renders become a blind study served live, through the
//! command line's own `study make` and `study serve` (child processes of the app, as jobs
//! are), so the app runs the served study's code, not a copy of it.
//!
//! Files under `DATA/studies/JOB/`: `study/` (the rater kit), `study.key.json` (kept here,
//! never served), `study.links.txt` (the rater links), `serve.log` (the server's output).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::jobs::JobFiles;
use crate::error::{Error, Result};

/// Raters a study made in the app starts with.
pub const RATERS: usize = 3;

pub struct StudyFiles {
    pub dir: PathBuf,
}

impl StudyFiles {
    pub fn new(data: &Path, job: i64) -> StudyFiles {
        StudyFiles {
            dir: data.join("studies").join(job.to_string()),
        }
    }
    pub fn study(&self) -> PathBuf {
        self.dir.join("study")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("study.key.json")
    }
    pub fn links(&self) -> PathBuf {
        self.dir.join("study.links.txt")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("serve.log")
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("serve.pid")
    }
}

/// The error line of a command's stderr.
fn error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| text.lines().last().unwrap_or("failed"))
        .to_string()
}

/// Whether the study server recorded in `pid` still runs.
fn serving(f: &StudyFiles) -> bool {
    let Some(pid) = std::fs::read_to_string(f.pid())
        .ok()
        .and_then(|p| p.trim().parse::<i64>().ok())
    else {
        return false;
    };
    let want = f.study().display().to_string();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).split('\0').any(|a| a == want))
        .unwrap_or(false)
}

/// Makes the study of job `job` (once) and serves it on `ip` (a free port), unless it is
/// served already.
pub fn make_and_serve(data: &Path, exe: &Path, job: i64, ip: std::net::IpAddr) -> Result<()> {
    let f = StudyFiles::new(data, job);
    let renders = JobFiles::new(data, job).out().join("renders");
    if !renders.join(crate::render::manifest::FILE).is_file() {
        return Err(Error::setting(
            "job",
            "the job has no renders yet: a study is made from a finished job",
        ));
    }
    std::fs::create_dir_all(&f.dir).map_err(|e| Error::io(&f.dir, e))?;
    if !f.study().join("index.html").is_file() {
        let kinds = super::presets::of_job(&JobFiles::new(data, job).run_yaml());
        let Some(((a, _), (b, _))) = super::presets::study_pair(&kinds) else {
            return Err(Error::setting(
                "job",
                "a study sets two adapters against each other: this job trained fewer",
            ));
        };
        let out = Command::new(exe)
            .args(["study", "make", "--renders"])
            .arg(&renders)
            .args(["--a", a, "--b", b, "--out"])
            .arg(f.study())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::msg(format!("running {}: {e}", exe.display())))?;
        if !out.status.success() {
            return Err(Error::setting("study", error_line(&out.stderr)));
        }
    }
    if serving(&f) {
        return Ok(());
    }
    // Served again (after an app restart) on the port it had, so that the links people were
    // sent keep working; on a free port where that one is taken.
    let port = address(&f)
        .and_then(|a| {
            a.rsplit_once(':')
                .and_then(|(_, p)| p.trim_end_matches('/').parse::<u16>().ok())
        })
        .filter(|&p| std::net::TcpListener::bind((ip, p)).is_ok())
        .unwrap_or(0);
    let log = std::fs::File::create(f.log()).map_err(|e| Error::io(&f.log(), e))?;
    let err = log.try_clone().map_err(|e| Error::io(&f.log(), e))?;
    let bind = std::net::SocketAddr::new(ip, port).to_string();
    let mut c = Command::new(exe);
    c.args(["study", "serve"])
        .arg(f.study())
        .arg("--key")
        .arg(f.key())
        .args(["--bind", &bind, "--raters", &RATERS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err));
    {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
    }
    let child = c
        .spawn()
        .map_err(|e| Error::msg(format!("running {}: {e}", exe.display())))?;
    crate::fsutil::write_bytes(&f.pid(), child.id().to_string().as_bytes())?;
    // Reaped by a thread of its own, so that it never lingers as a zombie.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    // Up once it prints its address (links are written before that).
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(20) {
        if address(&f).is_some() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::msg(format!(
        "the study server did not start: {}",
        crate::fsutil::read_to_string(&f.log()).unwrap_or_default()
    )))
}

/// The served study's address, once it listens.
pub fn address(f: &StudyFiles) -> Option<String> {
    let log = std::fs::read_to_string(f.log()).ok()?;
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("listening on ").map(str::to_string))
}

/// The links (name, url) of the study of job `job`, the organiser's first.
pub fn links(data: &Path, job: i64) -> Vec<(String, String)> {
    let f = StudyFiles::new(data, job);
    let mut out: Vec<(String, String)> = std::fs::read_to_string(f.links())
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, u)| (n.to_string(), u.to_string()))
        .collect();
    // The links file names the organiser "organiser" (`study serve`).
    out.sort_by_key(|(n, _)| n != "organiser");
    out
}

/// Serves again every study the app made whose server is gone (the app, or the machine,
/// restarted); each keeps its port where it is free, so the links sent stay good. A study
/// that cannot be served is reported and left as it is.
pub fn serve_again(data: &Path, exe: &Path, ip: std::net::IpAddr) {
    let Ok(dirs) = std::fs::read_dir(data.join("studies")) else {
        return;
    };
    for d in dirs.flatten() {
        let Some(job) = d.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let f = StudyFiles::new(data, job);
        if !f.study().join("index.html").is_file() || serving(&f) {
            continue;
        }
        if let Err(e) = make_and_serve(data, exe, job, ip) {
            eprintln!("warning: the study of job {job} is not served again: {e}");
        }
    }
}
