//! A real, private Slurm for tests: one node (this machine), one partition, started by the
//! test and stopped by it, by PID.
//!
//! `Slurm::start(dir)` installs Debian's slurmctld, slurmd, slurm-client and munge when they
//! are missing, writes a slurm.conf under `dir` (state, spool, logs and pid files all there,
//! free ports picked at start), starts munged when none answers, then slurmctld and slurmd as
//! child processes, and waits until the node is idle. Dropping the `Slurm` (also when the test
//! panics) cancels every job it still holds, stops slurmd, slurmctld and the munged it started
//! (SIGTERM, then SIGKILL), and leaves alone a munged that was already running.
//!
//! `dir` belongs to the harness: it is emptied at start. Before that, daemons a crashed earlier
//! run recorded in `dir/owned-pids` (pid and start time, so a reused pid is never hit) are
//! stopped. Needs root (apt-get, munge's key and /run/munge, SlurmUser=root).
//!
//! What mattered on these machines (Slurm 22.05.8, munge 0.5.15, no systemd, cgroup v1
//! controllers on a tmpfs), each tried:
//! - The node name is `hostname -s`, else slurmd exits ("Unable to determine this slurmd's
//!   NodeName"). CPUs or RealMemory above the machine's make the node INVAL ("Low CPUs",
//!   "Low RealMemory") and jobs pend for ever.
//! - The default cgroup proctrack/task plugins: the node is idle but every job fails
//!   ("Plugin initialization failed"); `proctrack/linuxproc` and `task/none` work.
//! - munged refuses to start without `/run/munge` owned by munge, with a key not owned by
//!   munge or readable by group or others, and as root (Debian's /var/log/munge is munge's).
//! - `accounting_storage/slurmdbd` without a slurmdbd kills slurmctld at start; 22.05's
//!   default is none, set explicitly here. No accounting means no `sacct`: job states come from
//!   `squeue --states=all` or `scontrol show job` while the controller holds them (MinJobAge).
//! - Without `MailProg=/bin/true` jobs still run; only `--mail-type` ones log a MailProg error.
//! - A job's slurmstepd is not slurmd's child (its parent is pid 1) and outlives slurmd: jobs
//!   are cancelled before slurmd stops, or their processes stay.
//! - Processes that end here stay zombies for a few seconds (pid 1 reaps late): a process
//!   counts as gone once /proc shows it as Z.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian 12 packages that make a one-node Slurm.
const PACKAGES: [&str; 4] = ["slurmctld", "slurmd", "slurm-client", "munge"];
/// How long the node may take to become idle.
const IDLE_WITHIN: Duration = Duration::from_secs(60);
/// How long a daemon gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
const MUNGE_KEY: &str = "/etc/munge/munge.key";
const MUNGE_RUN: &str = "/run/munge";

/// A daemon this harness started: the child, and its start time in /proc (clock ticks since
/// boot), which with the pid names the process for a later run.
struct Daemon {
    name: &'static str,
    child: Child,
    start_time: u64,
}

/// A running private Slurm; see the module comment.
pub struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
    node: String,
    /// Started in this order: munged (when we started it), slurmctld, slurmd.
    daemons: Vec<Daemon>,
    /// How long installing the packages took (zero when they were there).
    install_took: Duration,
    /// How long from starting munged to an idle node.
    start_took: Duration,
}

impl Slurm {
    /// Starts Slurm with its configuration, state and logs under `dir` (emptied first) and
    /// waits until the node is idle; panics with the daemons' log tails when it does not get
    /// there.
    pub fn start(dir: &Path) -> Slurm {
        let t = Instant::now();
        install_if_missing();
        let install_took = t.elapsed();

        stop_leftovers(dir);
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("emptying {dir:?}: {e}"));
        }
        for sub in ["state", "spool"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let dir = dir.canonicalize().unwrap();
        let node = short_hostname();
        let conf = dir.join("slurm.conf");
        std::fs::write(&conf, slurm_conf(&dir, &node)).unwrap();

        // From here on the daemons belong to `slurm`: a panic drops it, and Drop stops them.
        let mut slurm = Slurm {
            dir,
            conf,
            node,
            daemons: Vec::new(),
            install_took,
            start_took: Duration::ZERO,
        };

        let t = Instant::now();
        slurm.start_munged();
        eprintln!("slurm: munge answering in {:.1?}", t.elapsed());
        for name in ["slurmctld", "slurmd"] {
            let mut cmd = Command::new(sbin(name));
            cmd.arg("-D").arg("-f").arg(&slurm.conf);
            slurm.spawn(name, cmd);
        }
        slurm.wait_idle();
        slurm.start_took = t.elapsed();
        eprintln!(
            "slurm: daemons started, node idle in {:.1?}",
            slurm.start_took
        );
        slurm
    }

    /// How long installing the packages took in `start` (zero when they were there).
    pub fn install_took(&self) -> Duration {
        self.install_took
    }

    /// How long `start` took from starting munged to an idle node.
    pub fn start_took(&self) -> Duration {
        self.start_took
    }

    /// The environment for commands that talk to this Slurm (sbatch, squeue, scancel, ...).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".into(), self.conf.display().to_string())]
    }

    /// `program` with this Slurm's environment, and without SLURM_* variables inherited from
    /// the test's own environment (a test run inside a Slurm job would otherwise pass its job's).
    pub fn command(&self, program: &str) -> Command {
        slurm_command(&self.conf, program)
    }

    /// Runs `program args` with this Slurm's environment; panics unless it exits 0. Its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The folder holding slurm.conf, the state, spool, logs and pid files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's name (`hostname -s`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The last lines of the daemons' logs, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        for name in [
            "slurmctld.log",
            "slurmctld.out",
            "slurmd.log",
            "slurmd.out",
            "munged.out",
        ] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            s += &format!(
                "--- {name} (last {} lines)\n{}\n",
                tail.len(),
                tail.join("\n")
            );
        }
        s
    }

    /// Starts munged as the munge user, unless one already answers (then it is not ours and
    /// is left running at the end).
    fn start_munged(&mut self) {
        if munge_answers() {
            eprintln!("slurm: a munged is already running; using it and leaving it running");
            return;
        }
        ensure_munge_key();
        let run = Path::new(MUNGE_RUN);
        std::fs::create_dir_all(run).unwrap();
        chown_munge(run);
        std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid) = munge_ids();
        let mut cmd = Command::new(sbin("munged"));
        // --force: a socket left by a munged that was killed does not stop it.
        cmd.args(["--foreground", "--force"]).uid(uid).gid(gid);
        self.spawn("munged", cmd);
        let until = Instant::now() + Duration::from_secs(15);
        while !munge_answers() {
            self.check_alive();
            if Instant::now() > until {
                panic!("munged did not answer within 15 s\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Spawns a daemon with stdout and stderr in `dir/<name>.out`, and records it.
    fn spawn(&mut self, name: &'static str, mut cmd: Command) {
        let out = std::fs::File::create(self.dir.join(format!("{name}.out"))).unwrap();
        without_inherited_slurm_env(&mut cmd);
        let child = cmd
            .envs(self.env())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}\n{}", self.log_tails()));
        let start_time = proc_start_time(child.id()).unwrap_or(0);
        self.daemons.push(Daemon {
            name,
            child,
            start_time,
        });
        self.record_pids()
            .unwrap_or_else(|e| panic!("writing owned-pids: {e}\n{}", self.log_tails()));
    }

    /// Writes `dir/owned-pids`: one `name pid start_time` line per daemon started, for the
    /// next run to stop them should this one end without its Drop (SIGKILL, abort).
    fn record_pids(&self) -> std::io::Result<()> {
        let lines: String = self
            .daemons
            .iter()
            .map(|d| format!("{} {} {}\n", d.name, d.child.id(), d.start_time))
            .collect();
        std::fs::write(self.dir.join("owned-pids"), lines)
    }

    /// Panics with the logs when a daemon we started has exited.
    fn check_alive(&mut self) {
        let exited = self
            .daemons
            .iter_mut()
            .find_map(|d| Some((d.name, d.child.try_wait().ok()??)));
        if let Some((name, status)) = exited {
            panic!("{name} exited ({status})\n{}", self.log_tails());
        }
    }

    /// Polls `sinfo` until the node is idle.
    fn wait_idle(&mut self) {
        let until = Instant::now() + IDLE_WITHIN;
        let mut last = String::new();
        loop {
            self.check_alive();
            if let Ok(out) = self.command("sinfo").args(["-h", "-o", "%t"]).output() {
                last = String::from_utf8_lossy(&out.stdout).trim().to_string()
                    + String::from_utf8_lossy(&out.stderr).trim();
                if out.status.success() && last == "idle" {
                    return;
                }
            }
            if Instant::now() > until {
                panic!(
                    "the node was not idle within {IDLE_WITHIN:?} (sinfo: {last:?})\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let t = Instant::now();
        let ctld_running = self
            .daemons
            .iter_mut()
            .any(|d| d.name == "slurmctld" && matches!(d.child.try_wait(), Ok(None)));
        if ctld_running {
            cancel_all_jobs(&self.conf);
        }
        // The reverse of the start order: slurmd, slurmctld, then munged.
        while let Some(mut d) = self.daemons.pop() {
            stop_child(d.name, &mut d.child);
            // Never panic here: Drop may run while the test unwinds.
            let _ = self.record_pids();
        }
        let _ = std::fs::remove_file(self.dir.join("owned-pids"));
        eprintln!("slurm: stopped in {:.1?}", t.elapsed());
    }
}

/// `program` with SLURM_CONF set to `conf`, without SLURM_* variables from our environment.
fn slurm_command(conf: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    without_inherited_slurm_env(&mut cmd);
    cmd.env("SLURM_CONF", conf);
    cmd
}

/// Drops the SLURM_* variables this process inherited (a test run inside a Slurm job would
/// otherwise hand its job's to sbatch and the daemons).
fn without_inherited_slurm_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLURM_") {
            cmd.env_remove(key);
        }
    }
}

/// Cancels every job the controller of `conf` holds and waits (bounded) until none is left,
/// so no job step (slurmstepd and the job's processes) outlives slurmd.
fn cancel_all_jobs(conf: &Path) {
    let squeue = || {
        slurm_command(conf, "squeue")
            .args(["-h", "-o", "%i"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match squeue() {
        Some(jobs) if !jobs.is_empty() => {}
        _ => return,
    }
    let _ = slurm_command(conf, "scancel")
        .args(["--user", "root"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        match squeue() {
            Some(jobs) if !jobs.is_empty() => std::thread::sleep(Duration::from_millis(200)),
            _ => return,
        }
    }
    eprintln!("slurm: jobs still listed 20 s after scancel");
}

/// SIGTERM, up to TERM_GRACE for it to exit, then SIGKILL; reaps the child.
fn stop_child(name: &str, child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), "TERM");
    let until = Instant::now() + TERM_GRACE;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "slurm: {name} (pid {}) ignored SIGTERM; killing it",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Stops the daemons an earlier run recorded in `dir/owned-pids` and that still run: those
/// whose pid and start time both match, so a pid the system gave to another process since is
/// left alone. When its slurmctld still runs, its jobs are cancelled first.
fn stop_leftovers(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("owned-pids")) else {
        return;
    };
    let mut alive: Vec<(String, u32, u64)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, pid, start] = f[..] else { continue };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            continue;
        };
        if proc_running(pid, start) {
            alive.push((name.to_string(), pid, start));
        }
    }
    let conf = dir.join("slurm.conf");
    if alive.iter().any(|(name, ..)| name == "slurmctld") && conf.exists() {
        eprintln!("slurm: cancelling the jobs of a Slurm left by an earlier run");
        cancel_all_jobs(&conf);
    }
    // The reverse of the start order: slurmd, slurmctld, then munged.
    for (name, pid, start) in alive.into_iter().rev() {
        eprintln!("slurm: stopping {name} (pid {pid}) left by an earlier run");
        signal(pid, "TERM");
        let until = Instant::now() + TERM_GRACE;
        while proc_running(pid, start) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        if proc_running(pid, start) {
            signal(pid, "KILL");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A process's start time from /proc/<pid>/stat (field 22), None when there is none.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` with that start time still runs (a zombie does not).
fn proc_running(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    rest.first() != Some(&"Z") && rest.get(19).and_then(|s| s.parse().ok()) == Some(start)
}

/// Whether a munged answers on the default socket: `munge -n | unmunge` succeeds.
fn munge_answers() -> bool {
    let Ok(cred) = Command::new("munge")
        .arg("-n")
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    if !cred.status.success() {
        return false;
    }
    let Ok(mut unmunge) = Command::new("unmunge")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let _ = unmunge.stdin.take().unwrap().write_all(&cred.stdout);
    unmunge.wait().map(|s| s.success()).unwrap_or(false)
}

/// Creates /etc/munge/munge.key (1 KiB from /dev/urandom, owned by munge, mode 0400) unless
/// there is one; Debian's munge package makes one when it installs.
fn ensure_munge_key() {
    let key = Path::new(MUNGE_KEY);
    if key.exists() {
        return;
    }
    let etc = key.parent().unwrap();
    std::fs::create_dir_all(etc).unwrap();
    chown_munge(etc);
    std::fs::set_permissions(etc, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut bytes = vec![0u8; 1024];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    std::fs::write(key, bytes).unwrap();
    chown_munge(key);
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o400)).unwrap();
}

fn chown_munge(path: &Path) {
    let ok = Command::new("chown")
        .arg("munge:munge")
        .arg(path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "chown munge:munge {path:?} failed");
}

/// The munge user's uid and gid.
fn munge_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "munge"]).output().unwrap();
        assert!(out.status.success(), "no munge user");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// The full path of a program from /usr/sbin or /usr/bin (the test's PATH may lack sbin).
fn sbin(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn installed() -> bool {
    [
        "slurmctld",
        "slurmd",
        "sbatch",
        "munged",
        "munge",
        "unmunge",
    ]
    .iter()
    .all(|p| sbin(p).is_absolute())
}

/// apt-get installs the packages when a program is missing, with a policy-rc.d that keeps
/// their postinst scripts from starting daemons (removed after, when it was ours).
fn install_if_missing() {
    if installed() {
        return;
    }
    let t = Instant::now();
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").unwrap();
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let apt = |args: &[&str]| {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .expect("running apt-get");
        (out.status.success(), out)
    };
    let (updated, update) = apt(&["update", "-q"]);
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(PACKAGES);
    let (done, install) = apt(&args);
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    assert!(
        updated && done && installed(),
        "installing {PACKAGES:?} failed\napt-get update: {}\n{}\napt-get install: {}\n{}",
        update.status,
        String::from_utf8_lossy(&update.stderr),
        install.status,
        String::from_utf8_lossy(&install.stderr)
    );
    eprintln!("slurm: installed {PACKAGES:?} in {:.1?}", t.elapsed());
}

fn short_hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    assert!(out.status.success(), "hostname -s failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// CPUs the node may declare: the CPUs this process may run on (nproc).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// RealMemory in MB: 90 % of MemTotal, so the node never declares more than it has.
fn real_memory_mb() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kb / 1024 * 9 / 10
}

/// A port nothing listens on now, so a Slurm already on this machine is not in the way.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn slurm_conf(dir: &Path, node: &str) -> String {
    let d = dir.display();
    let ctld_port = free_port();
    let mut slurmd_port = free_port();
    while slurmd_port == ctld_port {
        slurmd_port = free_port();
    }
    format!(
        "\
# Written by tests/slurm_support: a private one-node Slurm for tests.
ClusterName=moslora-test
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, cgroup v1 controllers on a tmpfs: keep cgroups out of it.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
# No slurmdbd: no accounting, no sacct.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName={node} CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
",
        cpus = cpus(),
        mem = real_memory_mb(),
    )
}
