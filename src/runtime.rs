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
