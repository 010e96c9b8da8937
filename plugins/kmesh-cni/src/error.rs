//! The one place bpf errors become CNI errors.

use conf::{code, Error};

pub fn from_bpf(context: &str, e: bpf::Error) -> Error {
    let code = match &e {
        bpf::Error::InvalidKey { .. } => code::INVALID_ENV,
        bpf::Error::StaleMap { .. } => code::STATE,
        _ => code::HOST,
    };
    Error::new(code, format!("{context}: {e}"))
}
