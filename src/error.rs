//! Errors that name the file, the component, the tensor or the field, and what was expected.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: {what}", path.display())]
    BadFile { path: PathBuf, what: String },

    #[error("{component}: tensor `{tensor}` is missing from {}", file.display())]
    MissingTensor {
        component: String,
        tensor: String,
        file: PathBuf,
    },

    #[error(
        "{component}: tensor `{tensor}` in {} has shape {found:?}, expected {expected:?}",
        file.display()
    )]
    ShapeMismatch {
        component: String,
        tensor: String,
        file: PathBuf,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    /// A weight holding NaN or infinity: the file is damaged, or was saved from a diverged run.
    #[error(
        "{component}: tensor `{tensor}` in {} holds {count} NaN or infinite value(s) of \
         {total}: the checkpoint is damaged or was saved from a diverged run; download or \
         export it again",
        file.display()
    )]
    NonFinite {
        component: String,
        tensor: String,
        file: PathBuf,
        count: u64,
        total: u64,
    },

    #[error("{}: {what}", path.display())]
    Config { path: PathBuf, what: String },

    /// A setting (a RUN.yaml field or a flag) has a value that cannot work; `field` names it
    /// (`adapter.rank`), `what` is the whole message.
    #[error("{what}")]
    Setting { field: String, what: String },

    /// The device asked for is not there (no CUDA, or fewer GPUs): the CPU would still work.
    #[error("{what}")]
    DeviceUnavailable { what: String },

    /// An output that would be replaced without being asked to.
    #[error("{} already exists: {hint}", path.display())]
    OutputExists { path: PathBuf, hint: String },

    /// An adapter file whose layers are not the model's (another architecture).
    #[error("adapter {} does not fit {model}: {what} (it was trained on `{trained_on}`)", adapter.display())]
    AdapterMismatch {
        adapter: PathBuf,
        model: String,
        what: String,
        trained_on: String,
    },

    /// A checkpoint left by a run with other settings: resuming it would mix two runs.
    /// `changed` names the settings that differ as RUN.yaml spells them (`subject.images`,
    /// `train.learning_rate`); empty when they are not known.
    #[error(
        "the checkpoint in {} was made with other settings (changed since: {}): restore them \
         to continue it, start afresh with --force instead of --resume (it replaces the \
         checkpoint), or set another `output:`",
        dir.display(),
        if changed.is_empty() {
            "model, seed, subject, train or adapter".to_string()
        } else {
            changed.join(", ")
        }
    )]
    StaleCheckpoint { dir: PathBuf, changed: Vec<String> },

    /// The training loss stopped being finite at `step`; `checkpoint` is the last good one kept.
    #[error(
        "{adapter}: the loss became {value} at step {step}; {}. Try a lower \
         train.learning_rate or f32 instead of f16",
        match checkpoint {
            Some(c) => format!("the last good checkpoint is kept in {}", c.display()),
            None => "no checkpoint had been written yet".to_string(),
        }
    )]
    Diverged {
        adapter: String,
        step: u64,
        value: f32,
        checkpoint: Option<PathBuf>,
    },

    /// The file system ran out of room (or a file-size limit was hit) while `path` was being
    /// written; the previous file at `path`, if any, is untouched and no temporary is left.
    #[error(
        "{reason} writing {}{}: {}",
        path.display(),
        space_note(*needed, *free),
        if reason.starts_with("file size limit") {
            "raise the file-size limit (`ulimit -f`) and run again"
        } else {
            "free some space (or point the output elsewhere) and run again"
        }
    )]
    NoSpace {
        path: PathBuf,
        reason: &'static str,
        /// Bytes the write needed, when known.
        needed: Option<u64>,
        /// Bytes free on that file system, when it could be asked.
        free: Option<u64>,
    },

    /// Another live process holds the output folder's lock.
    #[error(
        "{} is in use by another run ({holder}); wait for it to finish, or stop it, or use another output folder",
        dir.display()
    )]
    Locked { dir: PathBuf, holder: String },

    /// The run was stopped by SIGINT / SIGTERM / SIGHUP at a safe point (checkpoint saved,
    /// finished files in place); running the same command again continues it.
    #[error("{what}")]
    Interrupted { what: String },

    /// A Hugging Face id the hub does not have (or hides: a private repository without a
    /// token), and no folder of that name either.
    #[error(
        "model `{id}`: not found on {endpoint}: {what}; and no folder of that name exists \
         here. Check the spelling (org/name, as on the model's page), or give the path of a \
         downloaded folder"
    )]
    HubNotFound {
        id: String,
        endpoint: String,
        what: String,
    },

    /// A gated Hugging Face repository: its licence must be accepted and a token given.
    #[error(
        "model `{id}` is gated: {}",
        if *token_sent {
            format!("the token (HF_TOKEN or the token file) was refused: accept the licence on \
                     {page} with the account the token belongs to, or set HF_TOKEN to a token \
                     of an account that has")
        } else {
            format!("accept its licence on {page} (logged in), then set HF_TOKEN to an access \
                     token of that account and run again")
        }
    )]
    HubGated {
        id: String,
        /// The model's page, where the licence is accepted.
        page: String,
        token_sent: bool,
    },

    /// A Hugging Face id that is not (wholly) in the cache, where the network may not be used.
    #[error(
        "model `{id}`: no folder of that name exists here, and it is not in the Hugging Face \
         cache ({}){}{}",
        cache.display(),
        match missing {
            Some(m) => format!(": only part of it is there (missing {m})"),
            None => String::new(),
        },
        if *offline {
            format!("; HF_HUB_OFFLINE is set, so nothing is downloaded: run once without \
                     HF_HUB_OFFLINE, or download it where there is a network with \
                     `{command}` and bring that cache here")
        } else {
            format!("; download it with `{command}`")
        }
    )]
    HubNotCached {
        id: String,
        /// The repository's folder in the cache.
        cache: PathBuf,
        offline: bool,
        missing: Option<String>,
        /// The manual download command.
        command: String,
    },

    /// The hub could not be reached (no network, refused, a failing server) for an id that
    /// is not cached.
    #[error(
        "could not download model `{id}` from {endpoint}: {cause}. Check the network (or \
         HF_ENDPOINT), or download it where there is a network with `{command}` \
         (huggingface-cli download takes the same arguments) and bring that cache here"
    )]
    HubUnreachable {
        id: String,
        endpoint: String,
        cause: String,
        command: String,
    },

    #[error("{0}")]
    Msg(String),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// "(needs about 12.3 MB, 40 KB free)", or less when a figure is unknown.
fn space_note(needed: Option<u64>, free: Option<u64>) -> String {
    let mb = |b: u64| {
        if b >= 1_000_000 {
            format!("{:.1} MB", b as f64 / 1e6)
        } else {
            format!("{} KB", b.div_ceil(1000))
        }
    };
    match (needed, free) {
        (Some(n), Some(f)) => format!(" (needs about {}, {} free)", mb(n), mb(f)),
        (Some(n), None) => format!(" (needs about {})", mb(n)),
        (None, Some(f)) => format!(" ({} free)", mb(f)),
        (None, None) => String::new(),
    }
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An invalid value of the setting `field`; `what` is the whole message.
    pub fn setting(field: &str, what: impl Into<String>) -> Self {
        Error::Setting {
            field: field.to_string(),
            what: what.into(),
        }
    }

    pub fn config(path: &Path, what: impl Into<String>) -> Self {
        Error::Config {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    /// Attach the model component (`unet`, `text_encoder`, ...) to a tensor error.
    pub fn in_component(self, name: &str) -> Self {
        match self {
            Error::MissingTensor { tensor, file, .. } => Error::MissingTensor {
                component: name.to_string(),
                tensor,
                file,
            },
            Error::ShapeMismatch {
                tensor,
                file,
                expected,
                found,
                ..
            } => Error::ShapeMismatch {
                component: name.to_string(),
                tensor,
                file,
                expected,
                found,
            },
            Error::NonFinite {
                tensor,
                file,
                count,
                total,
                ..
            } => Error::NonFinite {
                component: name.to_string(),
                tensor,
                file,
                count,
                total,
            },
            e => e,
        }
    }
}
