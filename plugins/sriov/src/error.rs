//! `SriovError`: every way weft-sriov fails, and the one place each becomes a CNI code.

use conf::code;
use host::sysfs::SysfsError;
use host::{HostError, PciAddress, PfError};

#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    /// An error that already is a CNI error (config parsing, an IPAM delegate's own error).
    #[error(transparent)]
    Cni(#[from] conf::Error),

    #[error(transparent)]
    Host(#[from] HostError),

    #[error(transparent)]
    Sysfs(#[from] SysfsError),

    /// A PF-side operation on the VF failed (names the VF, the PF and the setting).
    #[error("VF {pci}: {source}")]
    Pf {
        pci: PciAddress,
        source: Box<PfError>,
    },

    /// The VF is attached to another container whose netns still exists.
    #[error(
        "VF {pci} is in use by {owner} (netns {netns}); a DEL of that attachment must come first"
    )]
    Busy {
        pci: PciAddress,
        owner: String,
        netns: String,
    },

    /// The per-VF lock was not free in time (another ADD/DEL of the same VF hangs).
    #[error("VF {pci} is locked by another weft-sriov call; try again")]
    LockTimeout { pci: PciAddress },

    /// `CNI_IFNAME` (or an altname equal to it) already exists in the pod's netns.
    #[error("interface {ifname} already exists in {netns}")]
    IfnameTaken { ifname: String, netns: String },

    /// The VF has no netdev in the host and is not bound to a user-space driver: it is in
    /// another netns (another pod's, without a record of ours), or unbound.
    #[error("VF {pci} has no netdev in the host netns and is not bound to a user-space driver (driver: {})", driver.as_deref().unwrap_or("none"))]
    NoNetdev {
        pci: PciAddress,
        driver: Option<String>,
    },

    /// PF-side settings were asked for but sysfs shows no PF netdev to send them to.
    #[error("VF {pci}: its PF {pf_pci} has no netdev in the host, so {what} cannot be set")]
    NoPfNetdev {
        pci: PciAddress,
        pf_pci: PciAddress,
        what: String,
    },

    /// CHECK found our attachment missing or different.
    #[error("{0}")]
    CheckFailed(String),
}

/// The CNI code for each failure, decided here once.
///
/// - `Cni` keeps its code; `Host` uses host's mapping (3 gone netns, 4 bad env, 5 I/O, 101
///   corrupt record, 100 netlink/setns).
/// - `Sysfs`: a malformed or absent PCI address, a device that is not a VF → 7 (the `deviceID`
///   in the config names no usable VF); a sysfs read error → 5.
/// - `Pf`: everything → 100 (host), including "not supported by the PF driver": the config is
///   fine, this host's NIC cannot do it.
/// - `Busy`, `LockTimeout` → 11 (try again later: a DEL of the previous owner is usually on its way).
/// - `IfnameTaken` → 4 (`CNI_IFNAME` cannot be used in that netns).
/// - `NoNetdev`, `NoPfNetdev` → 100. `CheckFailed` → 103.
impl SriovError {
    pub fn pf(pci: &PciAddress, source: PfError) -> Self {
        SriovError::Pf {
            pci: pci.clone(),
            source: Box::new(source),
        }
    }
}

impl From<SriovError> for conf::Error {
    fn from(e: SriovError) -> Self {
        // A PF operation that could not even open its socket is a host error like any other.
        let e = match e {
            SriovError::Pf { pci, source } => match *source {
                PfError::Host(h) => return h.into(),
                other => SriovError::pf(&pci, other),
            },
            other => other,
        };
        let code = match e {
            SriovError::Cni(c) => return c,
            SriovError::Host(h) => return h.into(),
            SriovError::Sysfs(SysfsError::Io { .. }) => code::IO,
            SriovError::Sysfs(_) => code::INVALID_CONFIG,
            SriovError::Pf { .. } => code::HOST,
            SriovError::Busy { .. } | SriovError::LockTimeout { .. } => code::TRY_AGAIN,
            SriovError::IfnameTaken { .. } => code::INVALID_ENV,
            SriovError::NoNetdev { .. } | SriovError::NoPfNetdev { .. } => code::HOST,
            SriovError::CheckFailed(_) => code::CHECK_FAILED,
        };
        conf::Error::new(code, e.to_string())
    }
}

pub type Result<T, E = SriovError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn pci() -> PciAddress {
        PciAddress::parse("0000:af:06.0").unwrap()
    }

    #[test]
    fn codes() {
        let cases: Vec<(SriovError, u32)> = vec![
            (conf::Error::invalid_config("x").into(), 7),
            (
                HostError::NetnsMissing {
                    path: "/run/netns/x".into(),
                }
                .into(),
                3,
            ),
            (SysfsError::NotAVf { pci: pci() }.into(), 7),
            (
                SysfsError::Io {
                    context: "x".into(),
                    source: std::io::Error::other("y"),
                }
                .into(),
                5,
            ),
            (
                SriovError::pf(
                    &pci(),
                    PfError::Unsupported {
                        pf: "veth0".into(),
                        what: "setting vlan".into(),
                    },
                ),
                100,
            ),
            (
                SriovError::Busy {
                    pci: pci(),
                    owner: "n/c/net1".into(),
                    netns: "/x".into(),
                },
                11,
            ),
            (SriovError::LockTimeout { pci: pci() }, 11),
            (
                SriovError::IfnameTaken {
                    ifname: "net1".into(),
                    netns: "/x".into(),
                },
                4,
            ),
            (SriovError::CheckFailed("x".into()), 103),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            let c: conf::Error = e.into();
            assert_eq!(c.code, want, "{msg}");
            assert!(!c.msg.is_empty());
        }
    }

    #[test]
    fn host_errors_keep_hosts_codes() {
        let e: conf::Error = SriovError::Host(HostError::Netlink {
            op: "set link",
            source: host::rtnetlink::Error::RequestFailed,
        })
        .into();
        assert_eq!(e.code, 100);
        assert!(e.msg.contains("set link"), "{e}");
        let e: conf::Error = SriovError::pf(
            &pci(),
            PfError::Host(HostError::NetnsMissing { path: "/x".into() }),
        )
        .into();
        assert_eq!(e.code, 3);
    }
}
