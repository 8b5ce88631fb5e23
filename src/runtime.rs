//! Devices and dtypes as the user names them, and libtorch start-up.

use std::str::FromStr;

use tch::{Device, Kind};

use crate::error::{Error, Result};

/// Where the user named a device or dtype, so that advice names what they can change there:
/// a command-line flag (`--device cuda`) or a RUN.yaml field (`device: cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    Flag,
    RunFile,
}

impl Given {
    /// How the user would write `name` = `value` where they gave it.
    pub fn spell(self, name: &str, value: &str) -> String {
        match self {
            Given::Flag => format!("`--{name} {value}`"),
            Given::RunFile => format!("`{name}: {value}` (RUN.yaml)"),
        }
    }
}

/// `cpu|cuda|cuda:N`, given as `given` says.
pub fn parse_device(s: &str, given: Given) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0, given),
        _ => match s.strip_prefix("cuda:").map(usize::from_str) {
            Some(Ok(i)) => cuda(i, given),
            _ => Err(Error::setting(
                "device",
                format!("unknown device {s:?}: expected `cpu`, `cuda` or `cuda:N`"),
            )),
        },
    }
}

fn cuda(i: usize, given: Given) -> Result<Device> {
    let asked = given.spell(
        "device",
        &if i == 0 {
            "cuda".to_string()
        } else {
            format!("cuda:{i}")
        },
    );
    if !tch::Cuda::is_available() {
        return Err(Error::DeviceUnavailable {
            what: format!(
                "{asked} asked for, but libtorch sees no CUDA device (no NVIDIA GPU or driver \
                 on this machine): use {} to run on the CPU",
                given.spell("device", "cpu")
            ),
        });
    }
    let n = tch::Cuda::device_count() as usize;
    if i >= n {
        return Err(Error::DeviceUnavailable {
            what: format!(
                "{asked} asked for, but only {} {} (cuda:0 to cuda:{})",
                crate::words::count_as(n, "CUDA device", "CUDA devices"),
                crate::words::verb(n, "exists", "exist"),
                n.saturating_sub(1)
            ),
        });
    }
    Ok(Device::Cuda(i))
}

/// `--dtype f32|bf16|f16`: the dtype of the frozen weights (the VAE stays f32).
pub fn parse_dtype(s: &str) -> Result<Kind> {
    match s {
        "f32" | "fp32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "fp16" | "float16" => Ok(Kind::Half),
        _ => Err(Error::setting(
            "dtype",
            format!("unknown dtype {s:?}: expected `f32`, `bf16` or `f16`"),
        )),
    }
}

/// Half precision on the CPU is slow and loses accuracy for nothing: refuse it with a hint
/// in the words of where the dtype was given (`given`).
pub fn check_dtype_for_device(kind: Kind, device: Device, given: Given) -> Result<()> {
    if device == Device::Cpu && kind != Kind::Float {
        return Err(Error::setting(
            "dtype",
            format!(
                "dtype {} on the CPU is not supported: use {} on the CPU, bf16 or f16 on CUDA",
                dtype_name(kind),
                given.spell("dtype", "f32")
            ),
        ));
    }
    Ok(())
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "other",
    }
}

/// libtorch has one global random generator per process. A seed followed by draws gives the
/// seeded numbers only if no other thread seeds or draws in between: two runs in one process
/// (tests run in parallel threads, a library user's threads) would otherwise take each
/// other's numbers. Every seeded sequence of draws in moslora holds this lock: seed with it,
/// draw, drop the guard. Not reentrant: a function holding it must not call another that
/// takes it.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Lock the global generator and seed it; the draws made while the guard lives are the seed's.
pub fn seeded(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    let guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}

/// The current UTC time as ISO 8601 (`2024-05-01T12:34:56`), as the ModelSpec `date` field.
pub fn iso_date_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Set by the stop handler (Ctrl-C, SIGTERM, SIGHUP): long work stops at its next safe point
/// (training writes a checkpoint, rendering finishes its image). `train::INTERRUPTED` is this.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How many phases now running have nothing to save (loading a model, caching latents,
/// sampling a class image, scoring): a stop signal during one ends the process at once.
static NOTHING_TO_SAVE: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Held while a phase has nothing to save; see [`nothing_to_save`].
#[must_use = "the phase has nothing to save only while this is held"]
pub struct NothingToSave(());

/// Marks the current phase as one with nothing to save, until the guard is dropped: a stop
/// signal then ends the process at once (exit 130) instead of waiting for a safe point that
/// may be minutes away. Drop the guard before writing a file; the stop handler and the drop
/// take one lock, so the process never ends between the two.
pub fn nothing_to_save() -> NothingToSave {
    *NOTHING_TO_SAVE.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    NothingToSave(())
}

impl Drop for NothingToSave {
    fn drop(&mut self) {
        *NOTHING_TO_SAVE.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}

/// For the stop handler: runs `stop` (which ends the process) if a phase with nothing to save
/// is running, holding the lock that keeps such a phase from ending meanwhile; returns
/// otherwise.
pub fn stop_if_nothing_to_save(stop: impl FnOnce()) {
    let n = NOTHING_TO_SAVE.lock().unwrap_or_else(|e| e.into_inner());
    if *n > 0 {
        stop();
    }
}

/// `Err(Interrupted)` once a stop was asked for: for loops with nothing to save between
/// their items (`what` says what stopped).
pub fn check_interrupted(what: &str) -> Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::Interrupted {
            what: format!(
                "interrupted {what}; nothing half-written is left: run the same command again"
            ),
        });
    }
    Ok(())
}

/// libtorch's intra-op threads: `threads:` in RUN.yaml, `MOSLORA_THREADS` in the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// Chosen by the work: see [`choose_threads`].
    #[default]
    Auto,
    /// Exactly this many (still at most `OMP_NUM_THREADS` when that is set).
    Fixed(usize),
}

/// The environment variable that overrides RUN.yaml's `threads`.
pub const THREADS_ENV: &str = "MOSLORA_THREADS";

/// Below this many elements in one image's first UNet feature map (channels x latent height
/// x latent width), one thread is fastest: the toy model (48 x 8 x 8 at 64 px) and the tiny
/// test models. It is libtorch's own grain (`at::internal::GRAIN_SIZE`): an element-wise
/// operation on fewer elements runs on one thread anyway, and the parallel regions left
/// (matrix products, convolutions) cost more to start than they save. At and above it (the
/// small bench model's 128 x 32 x 32 at 256 px, SDXL's 320 x 128 x 128) every core is used.
/// Measured: docs/benchmarks.md, "Threads".
pub const ONE_THREAD_BELOW: i64 = 32_768;

impl Threads {
    pub fn is_auto(&self) -> bool {
        *self == Threads::Auto
    }

    /// `auto` or a positive count.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Threads::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Threads::Fixed(n)),
            _ => Err(format!(
                "{s:?} is not a thread count: expected `auto` or a whole number from 1"
            )),
        }
    }
}

impl std::fmt::Display for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threads::Auto => f.write_str("auto"),
            Threads::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl serde::Serialize for Threads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Threads::Auto => s.serialize_str("auto"),
            Threads::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Word(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Count(n) => n.to_string(),
            Raw::Word(w) => w,
        };
        Threads::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The intra-op thread count for a run: `setting` (`MOSLORA_THREADS` when set, else
/// RUN.yaml's), on `device`, for work whose first UNet feature map holds `work` elements per
/// image (None: not known, as for a single-file checkpoint, which is full size), at most
/// `cap` threads (`OMP_NUM_THREADS` when set). None: leave libtorch's own choice (CUDA, where
/// the CPU threads only feed the GPU).
pub fn choose_threads(
    setting: Threads,
    device: Device,
    work: Option<i64>,
    cores: usize,
    cap: Option<usize>,
) -> Option<usize> {
    let limit = cap.unwrap_or(cores).max(1);
    match setting {
        Threads::Fixed(n) => Some(cap.map_or(n, |c| n.min(c.max(1)))),
        Threads::Auto if device != Device::Cpu => None,
        Threads::Auto => match work {
            Some(w) if w < ONE_THREAD_BELOW => Some(1),
            _ => Some(limit),
        },
    }
}

/// `OMP_NUM_THREADS` when it holds a positive count: the most threads this process may use
/// (what `sweep --local --jobs N` gives each task, what a CI job or a scheduler allows).
pub fn thread_cap() -> Option<usize> {
    std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().split(',').next()?.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// `MOSLORA_THREADS` when set, else `configured`; an unreadable value is a setting error.
pub fn threads_setting(configured: Threads) -> Result<Threads> {
    match std::env::var(THREADS_ENV) {
        Ok(v) => Threads::parse(&v)
            .map_err(|e| Error::setting(THREADS_ENV, format!("{THREADS_ENV}: {e}"))),
        Err(_) => Ok(configured),
    }
}

/// Set libtorch's intra-op threads as [`choose_threads`] says, for the command line at a
/// command's start, before it has done anything: more than one thread on the CPU first
/// restarts the program with OpenMP's passive wait policy ([`passive_openmp_or_restart`]).
/// The count set (None: left to libtorch).
pub fn apply_threads(setting: Threads, device: Device, work: Option<i64>) -> Result<Option<usize>> {
    let setting = threads_setting(setting)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = choose_threads(setting, device, work, cores, thread_cap());
    if let Some(n) = n {
        if n > 1 && device == Device::Cpu {
            passive_openmp_or_restart();
        }
        tch::set_num_threads(n as i32);
    }
    Ok(n)
}

/// OpenMP's wait policy for this process. libgomp (libtorch's OpenMP) reads
/// `OMP_WAIT_POLICY` once, when it is loaded, before `main` runs; unset, its idle threads
/// spin for up to 300,000 turns between parallel regions, taking the cores other processes
/// need and, on a busy machine, the very cores their own team waits for (docs/benchmarks.md:
/// up to 6 times the CPU time of a toy render). When this process will run more than one
/// thread on the CPU and the policy is unset, it is started again (`exec`, same arguments
/// and process id) with `OMP_WAIT_POLICY=PASSIVE`: threads then sleep when there is no work.
/// Returns only if nothing was done (the policy is set, by the user or an earlier start, or
/// the program cannot be started again: it then goes on with libgomp's default).
pub fn passive_openmp_or_restart() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    let _cannot = cmd.args(args).env("OMP_WAIT_POLICY", "PASSIVE").exec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_work_runs_on_one_thread_large_work_on_every_core_allowed() {
        let cpu = Device::Cpu;
        // The toy model at 64 px (48 channels x 8 x 8) and the tiny test models: one thread.
        assert_eq!(
            choose_threads(Threads::Auto, cpu, Some(48 * 8 * 8), 2, None),
            Some(1)
        );
        assert_eq!(
            choose_threads(Threads::Auto, cpu, Some(32 * 8 * 8), 16, Some(4)),
            Some(1)
        );
        // The small bench model at 256 px, SDXL at 1024 px, an unreadable (full-size) model:
        // every core, or OMP_NUM_THREADS's share.
        assert_eq!(
            choose_threads(Threads::Auto, cpu, Some(128 * 32 * 32), 2, None),
            Some(2)
        );
        assert_eq!(
            choose_threads(Threads::Auto, cpu, Some(320 * 128 * 128), 8, Some(4)),
            Some(4)
        );
        assert_eq!(choose_threads(Threads::Auto, cpu, None, 2, None), Some(2));
        // A fixed count is kept, and still capped by OMP_NUM_THREADS (a sweep's share).
        assert_eq!(
            choose_threads(Threads::Fixed(3), cpu, Some(10), 2, None),
            Some(3)
        );
        assert_eq!(
            choose_threads(Threads::Fixed(3), cpu, Some(10), 8, Some(2)),
            Some(2)
        );
        // CUDA: libtorch's own choice.
        let gpu = Device::Cuda(0);
        assert_eq!(choose_threads(Threads::Auto, gpu, Some(10), 2, None), None);
        assert_eq!(
            choose_threads(Threads::Fixed(2), gpu, None, 8, None),
            Some(2)
        );
    }

    #[test]
    fn thread_settings_parse() {
        assert_eq!(Threads::parse("auto"), Ok(Threads::Auto));
        assert_eq!(Threads::parse(" AUTO "), Ok(Threads::Auto));
        assert_eq!(Threads::parse("4"), Ok(Threads::Fixed(4)));
        for bad in ["0", "-1", "two", ""] {
            assert!(Threads::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Threads::Fixed(4).to_string(), "4");
        assert_eq!(Threads::Auto.to_string(), "auto");
    }
}
