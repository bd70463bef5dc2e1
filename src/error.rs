//! One error type for the library. Every message names the file, row or tensor it is about,
//! because the CLI prints it as the whole diagnosis.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad user input (text files, arguments, configs); the message carries file and line.
    #[error("{0}")]
    Input(String),
    /// A weights file that cannot be used: missing tensor, wrong shape or dtype, corrupt file.
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    /// An op the chosen backend does not implement (yet).
    #[error("backend {backend}: {op} is not supported")]
    Unsupported {
        backend: &'static str,
        op: &'static str,
    },
    /// A backend that cannot be opened on this machine, with the reason.
    #[error("{backend} backend unavailable: {reason}")]
    BackendUnavailable {
        backend: &'static str,
        reason: String,
    },
    /// A plot that could not be drawn or written.
    #[error("{}: cannot draw plot: {message}", path.display())]
    Plot { path: PathBuf, message: String },
    /// A device failed while running work (lost device, failed readback).
    #[error("{backend} device: {message}")]
    Device {
        backend: &'static str,
        message: String,
    },
    /// A run stopped by SIGTERM after checkpointing its finished work; the message says where
    /// and how to resume. The CLI exits with [`crate::io::preemption::EXIT_PREEMPTED`].
    #[error("{0}")]
    Preempted(String),
    /// Tokenizer failures (the tokenizers crate reports a boxed error).
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    /// Standard output was closed by its reader (`mscope … | head`): not a failure of the run,
    /// which the CLI ends quietly, as coreutils do, after its clean-up.
    #[error("standard output closed by its reader")]
    StdoutClosed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn weights(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Weights {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub fn input(message: impl Into<String>) -> Self {
        Error::Input(message.into())
    }
}
