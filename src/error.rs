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

    #[error("{}: {what}", path.display())]
    Config { path: PathBuf, what: String },

    #[error("{0}")]
    Msg(String),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
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
            e => e,
        }
    }
}
