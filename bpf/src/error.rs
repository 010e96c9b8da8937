//! The crate's error type. The kmesh-cni plugin maps these to CNI error codes in one place.

use std::{io, path::PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("invalid attachment key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("loading BPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{context}: {source}")]
    Program {
        context: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "pinned map {path} has a different layout ({detail}); it was created by an incompatible \
         weft version: detach all attachments and remove the pins under its directory"
    )]
    StaleMap { path: PathBuf, detail: String },
    #[error("interface {name}: {source}")]
    Interface {
        name: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn program(context: impl Into<String>, source: aya::programs::ProgramError) -> Self {
        Error::Program {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

/// The errno behind an aya program/attach error, when there is one.
pub(crate) fn program_errno(e: &aya::programs::ProgramError) -> Option<i32> {
    use aya::programs::{tc::TcError, ProgramError as P};
    match e {
        P::SyscallError(s) => s.io_error.raw_os_error(),
        P::IOError(e) | P::TcError(TcError::IoError(e)) => e.raw_os_error(),
        P::NetlinkError(n) | P::TcError(TcError::NetlinkError(n)) => n.raw_os_error(),
        P::LoadError { io_error, .. } => io_error.raw_os_error(),
        _ => None,
    }
}
