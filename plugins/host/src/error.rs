//! `HostError`: every way touching the host can fail, and the one place it becomes a CNI error.

use std::{io, path::PathBuf};

use conf::code;

/// A failure while touching the host (netns, netlink, state records).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The netns path does not exist (or is an empty placeholder whose netns was unmounted).
    /// DEL and GC treat this as "nothing left to undo"; see [`HostError::is_netns_missing`].
    #[error("network namespace {} does not exist", path.display())]
    NetnsMissing { path: PathBuf },

    /// The path exists but is not a namespace file (bad `CNI_NETNS`).
    #[error("{} is not a network namespace", path.display())]
    NotANetns { path: PathBuf },

    /// `setns(2)` refused the namespace (wrong namespace type, missing CAP_SYS_ADMIN, ...).
    #[error("cannot enter network namespace {}: {source}", path.display())]
    Setns { path: PathBuf, source: nix::Error },

    /// The dedicated netns thread could not be spawned.
    #[error("cannot spawn netns thread: {0}")]
    Thread(#[source] io::Error),

    /// A netlink request failed; `op` says which one.
    #[error("netlink {op}: {source}")]
    Netlink {
        op: &'static str,
        source: rtnetlink::Error,
    },

    /// A link exists but is not the kind the caller needs.
    #[error("link {name} is {}, not a veth", kind.as_deref().unwrap_or("of unknown kind"))]
    NotVeth { name: String, kind: Option<String> },

    /// A container ID or ifname that must not become (part of) a file name.
    #[error("invalid {what}: {reason}")]
    InvalidKey {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// A record exists but cannot be decoded: someone else wrote it, or it was truncated by
    /// something other than our atomic write.
    #[error("corrupt state record {}: {reason}", path.display())]
    CorruptRecord { path: PathBuf, reason: String },

    /// Any other I/O failure; `context` names the file or operation.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl HostError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        HostError::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the network namespace is gone: DEL/GC should treat the netns part as done.
    pub fn is_netns_missing(&self) -> bool {
        matches!(self, HostError::NetnsMissing { .. })
    }

    /// The kernel errno behind a netlink or setns failure, if there is one (e.g. `EEXIST`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            HostError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            HostError::Setns { source, .. } => Some(*source as i32),
            HostError::Io { source, .. } | HostError::Thread(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The CNI code for each failure, decided here once.
///
/// - `NetnsMissing` → 3 (`UNKNOWN_CONTAINER`): the spec's meaning is exactly "the container does
///   not exist". DEL never returns it (a gone netns is nothing to undo); for ADD/CHECK it tells
///   the runtime the sandbox is gone rather than that the host is broken.
/// - `NotANetns`, `InvalidKey` → 4 (`INVALID_ENV`): both come from `CNI_NETNS`,
///   `CNI_CONTAINERID` or `CNI_IFNAME`.
/// - `Io` → 5 (`IO`).
/// - `CorruptRecord` → 101 (`STATE`).
/// - netlink, setns, thread, wrong link kind → 100 (`HOST`).
impl HostError {
    /// An I/O error that is a full filesystem (ENOSPC, EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(self, HostError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT)))
    }

    pub fn code(&self) -> u32 {
        match self {
            HostError::NetnsMissing { .. } => code::UNKNOWN_CONTAINER,
            HostError::NotANetns { .. } | HostError::InvalidKey { .. } => code::INVALID_ENV,
            HostError::Io { .. } => code::IO,
            HostError::CorruptRecord { .. } => code::STATE,
            HostError::Setns { .. }
            | HostError::Thread(_)
            | HostError::Netlink { .. }
            | HostError::NotVeth { .. } => code::HOST,
        }
    }
}

impl From<HostError> for conf::Error {
    fn from(e: HostError) -> Self {
        conf::Error::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let cases: Vec<(HostError, u32)> = vec![
            (
                HostError::NetnsMissing {
                    path: "/run/netns/x".into(),
                },
                3,
            ),
            (
                HostError::NotANetns {
                    path: "/etc".into(),
                },
                4,
            ),
            (
                HostError::InvalidKey {
                    what: "ifname",
                    value: "a/b".into(),
                    reason: "contains '/'".into(),
                },
                4,
            ),
            (HostError::io("x", io::Error::other("boom")), 5),
            (
                HostError::CorruptRecord {
                    path: "/r".into(),
                    reason: "eof".into(),
                },
                101,
            ),
            (
                HostError::Netlink {
                    op: "get link",
                    source: rtnetlink::Error::RequestFailed,
                },
                100,
            ),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            let c: conf::Error = e.into();
            assert_eq!(c.code, want, "{msg}");
            assert_eq!(c.msg, msg);
            assert!(!c.msg.is_empty());
        }
    }

    #[test]
    fn netns_missing_is_distinct() {
        assert!(HostError::NetnsMissing { path: "/x".into() }.is_netns_missing());
        assert!(!HostError::NotANetns { path: "/x".into() }.is_netns_missing());
    }
}
