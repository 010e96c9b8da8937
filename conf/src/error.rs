//! CNI errors: the one type every verb returns, with the spec's numeric codes.
//!
//! Libraries below `conf` keep their own `thiserror` types and convert into [`Error`] in one
//! place each (`impl From<TheirError> for conf::Error`), so the code chosen for a failure is
//! decided once, not at every call site.

use serde::{Deserialize, Serialize};

/// Error codes from the CNI spec (SPEC.md "Error" section) plus weft's own (>= 100).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables, like CNI_COMMAND, CNI_CONTAINERID.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the plugin detected a transient condition.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available (cannot serve ADD).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin is not available, existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// weft: an operation on the host (netlink, netns, sysfs) failed.
    pub const HOST: u32 = 100;
    /// weft: a record under /var/lib/cni is unreadable or inconsistent.
    pub const STATE: u32 = 101;
    /// weft: a delegated plugin (IPAM) failed without a CNI error of its own.
    pub const DELEGATE: u32 = 102;
    /// weft: CHECK found our resources missing or different from what ADD made.
    pub const CHECK_FAILED: u32 = 103;
    /// weft: the address pool is exhausted.
    pub const POOL_EXHAUSTED: u32 = 104;
    /// weft: a panic inside the plugin, turned into an error instead of an empty stdout.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error as printed on stdout: `{"cniVersion", "code", "msg", "details"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct Error {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(code::INCOMPATIBLE_VERSION, msg)
    }
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(code::IO, msg)
    }
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE, msg)
    }
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }
    pub fn try_again(msg: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, msg)
    }

    /// The JSON printed on stdout, tagged with the version the caller speaks.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": if self.msg.is_empty() { "unknown error" } else { self.msg.as_str() },
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::decode(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_message_never_prints_empty() {
        let v = Error::new(code::IO, "").to_json("1.0.0");
        assert_eq!(v["msg"], "unknown error");
        assert!(v.get("details").is_none());
    }

    #[test]
    fn details_only_when_present() {
        let v = Error::invalid_config("bad")
            .with_details("why")
            .to_json("0.4.0");
        assert_eq!(v["details"], "why");
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "0.4.0");
    }
}
