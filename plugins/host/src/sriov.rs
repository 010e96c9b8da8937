//! The PF side of an SR-IOV VF: the `IFLA_VF_*` state a PF reports for one of its VFs (admin
//! MAC, VLAN, spoof check, trust, link state, rate limits) and changing it, over rtnetlink.
//!
//! Everything goes through the [`PfOps`] trait:
//! - [`NetlinkPf`] is the real thing: `RTM_GETLINK` with `IFLA_EXT_MASK = RTEXT_FILTER_VF` on the
//!   PF to read `IFLA_VFINFO_LIST`, one `RTM_SETLINK` carrying `IFLA_VFINFO_LIST { IFLA_VF_INFO {
//!   IFLA_VF_<setting> } }` per setting. The messages are built by [`vf_state_request`] and
//!   [`set_vf_request`] with netlink-packet-route's types, so tests can serialize them and check
//!   the bytes against the kernel uAPI without a PF.
//! - [`fake::FakePf`] is a recording fake (in memory, or a JSON file shared by processes) for
//!   tests: this kernel has no SR-IOV, and no PF here answers `IFLA_VF_*`. A PF whose driver has
//!   no VF support (a veth here; igb for `link_state`) makes [`NetlinkPf`] fail with
//!   [`PfError::Unsupported`] ("not supported by the PF driver").

use std::{fmt, str::FromStr};

use futures::StreamExt;
use netlink_packet_route::{
    link::{
        LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac,
        VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState as NlState, VfVlan,
        VfVlanInfo, VlanProtocol,
    },
    RouteNetlinkMessage,
};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use serde::{Deserialize, Serialize};

use crate::HostError;

/// An Ethernet address, written `aa:bb:cc:dd:ee:ff` (lowercase) in records and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, any case.
    pub fn parse(s: &str) -> Result<MacAddr, String> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let part = parts
                .next()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        Ok(MacAddr(out))
    }

    /// The first 6 bytes of a hardware address attribute; `None` when shorter.
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        bytes
            .get(..6)
            .map(|b| MacAddr(b.try_into().expect("6 bytes")))
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Group bit set (includes broadcast): not assignable to an interface.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MacAddr::parse(s)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        MacAddr::parse(&s)
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// The VLAN tag protocol of a VF VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VlanProto {
    #[default]
    #[serde(rename = "802.1Q")]
    Dot1Q,
    #[serde(rename = "802.1ad")]
    Dot1Ad,
}

impl fmt::Display for VlanProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VlanProto::Dot1Q => "802.1Q",
            VlanProto::Dot1Ad => "802.1ad",
        })
    }
}

/// `IFLA_VF_LINK_STATE_*`: follow the PF's link, force up, force down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VfLinkState {
    #[default]
    Auto,
    Enable,
    Disable,
    /// A value this code does not know, kept so it can be restored exactly.
    Other(u32),
}

impl From<NlState> for VfLinkState {
    fn from(s: NlState) -> Self {
        match s {
            NlState::Auto => VfLinkState::Auto,
            NlState::Enable => VfLinkState::Enable,
            NlState::Disable => VfLinkState::Disable,
            other => VfLinkState::Other(u32::from(other)),
        }
    }
}

impl From<VfLinkState> for NlState {
    fn from(s: VfLinkState) -> Self {
        match s {
            VfLinkState::Auto => NlState::Auto,
            VfLinkState::Enable => NlState::Enable,
            VfLinkState::Disable => NlState::Disable,
            VfLinkState::Other(n) => NlState::from(n),
        }
    }
}

/// What the PF reports about one VF (`IFLA_VF_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VfState {
    /// The administrative MAC the PF enforces; all zeros when none is set.
    pub mac: MacAddr,
    pub vlan: u32,
    pub qos: u32,
    pub vlan_proto: VlanProto,
    pub spoofchk: bool,
    pub trust: bool,
    pub link_state: VfLinkState,
    /// Mbps; 0 = no limit.
    pub min_tx_rate: u32,
    pub max_tx_rate: u32,
}

/// One PF-side setting of a VF: what one `IFLA_VF_*` attribute sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VfSetting {
    Vlan {
        vlan: u32,
        qos: u32,
        proto: VlanProto,
    },
    Mac(MacAddr),
    Rate {
        min_tx_rate: u32,
        max_tx_rate: u32,
    },
    Spoofchk(bool),
    Trust(bool),
    LinkState(VfLinkState),
}

impl VfSetting {
    /// The config key the setting comes from (sriov-cni's names), for messages and fakes.
    pub fn name(&self) -> &'static str {
        match self {
            VfSetting::Vlan { .. } => "vlan",
            VfSetting::Mac(_) => "mac",
            VfSetting::Rate { .. } => "tx_rate",
            VfSetting::Spoofchk(_) => "spoofchk",
            VfSetting::Trust(_) => "trust",
            VfSetting::LinkState(_) => "link_state",
        }
    }

    /// Whether drivers reliably report this setting back. Spoof check and trust are reported
    /// as -1 ("unknown") by drivers that do not fill them, which reads as off.
    pub fn is_reported(&self) -> bool {
        !matches!(self, VfSetting::Spoofchk(_) | VfSetting::Trust(_))
    }

    /// The same setting with the value `original` had: what undoing `self` sets.
    pub fn restore_from(&self, original: &VfState) -> VfSetting {
        match self {
            VfSetting::Vlan { .. } => VfSetting::Vlan {
                vlan: original.vlan,
                qos: original.qos,
                proto: original.vlan_proto,
            },
            VfSetting::Mac(_) => VfSetting::Mac(original.mac),
            VfSetting::Rate { .. } => VfSetting::Rate {
                min_tx_rate: original.min_tx_rate,
                max_tx_rate: original.max_tx_rate,
            },
            VfSetting::Spoofchk(_) => VfSetting::Spoofchk(original.spoofchk),
            VfSetting::Trust(_) => VfSetting::Trust(original.trust),
            VfSetting::LinkState(_) => VfSetting::LinkState(original.link_state),
        }
    }

    /// Whether `state` shows this setting in effect.
    pub fn holds_in(&self, state: &VfState) -> bool {
        match *self {
            VfSetting::Vlan { vlan, qos, proto } => {
                // A cleared VLAN has no meaningful protocol.
                state.vlan == vlan && state.qos == qos && (vlan == 0 || state.vlan_proto == proto)
            }
            VfSetting::Mac(m) => state.mac == m,
            VfSetting::Rate {
                min_tx_rate,
                max_tx_rate,
            } => state.min_tx_rate == min_tx_rate && state.max_tx_rate == max_tx_rate,
            VfSetting::Spoofchk(b) => state.spoofchk == b,
            VfSetting::Trust(b) => state.trust == b,
            VfSetting::LinkState(s) => state.link_state == s,
        }
    }

    /// Writes the setting into `state` (what the hardware would then report).
    pub fn apply_to(&self, state: &mut VfState) {
        match *self {
            VfSetting::Vlan { vlan, qos, proto } => {
                state.vlan = vlan;
                state.qos = qos;
                state.vlan_proto = proto;
            }
            VfSetting::Mac(m) => state.mac = m,
            VfSetting::Rate {
                min_tx_rate,
                max_tx_rate,
            } => {
                state.min_tx_rate = min_tx_rate;
                state.max_tx_rate = max_tx_rate;
            }
            VfSetting::Spoofchk(b) => state.spoofchk = b,
            VfSetting::Trust(b) => state.trust = b,
            VfSetting::LinkState(s) => state.link_state = s,
        }
    }

    /// The `IFLA_VF_INFO` member carrying this setting for VF `vf`. 802.1Q VLANs use the
    /// classic `IFLA_VF_VLAN` (what every VF driver implements); 802.1ad needs
    /// `IFLA_VF_VLAN_LIST`, the only attribute with a protocol field.
    pub fn to_vf_info(&self, vf: u32) -> VfInfo {
        match *self {
            VfSetting::Vlan {
                vlan,
                qos,
                proto: VlanProto::Dot1Q,
            } => VfInfo::Vlan(VfInfoVlan::new(vf, vlan, qos)),
            VfSetting::Vlan {
                vlan,
                qos,
                proto: VlanProto::Dot1Ad,
            } => VfInfo::VlanList(vec![VfVlan::Info(VfVlanInfo::new(
                vf,
                vlan,
                qos,
                VlanProtocol::Ieee8021Ad,
            ))]),
            VfSetting::Mac(m) => VfInfo::Mac(VfInfoMac::new(vf, &m.0)),
            VfSetting::Rate {
                min_tx_rate,
                max_tx_rate,
            } => VfInfo::Rate(VfInfoRate::new(vf, min_tx_rate, max_tx_rate)),
            VfSetting::Spoofchk(b) => VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, b)),
            VfSetting::Trust(b) => VfInfo::Trust(VfInfoTrust::new(vf, b)),
            VfSetting::LinkState(s) => VfInfo::LinkState(VfInfoLinkState::new(vf, s.into())),
        }
    }
}

impl fmt::Display for VfSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfSetting::Vlan { vlan, qos, proto } => {
                write!(f, "vlan {vlan} qos {qos} proto {proto}")
            }
            VfSetting::Mac(m) => write!(f, "mac {m}"),
            VfSetting::Rate {
                min_tx_rate,
                max_tx_rate,
            } => write!(f, "min_tx_rate {min_tx_rate} max_tx_rate {max_tx_rate}"),
            VfSetting::Spoofchk(b) => write!(f, "spoofchk {}", on_off(*b)),
            VfSetting::Trust(b) => write!(f, "trust {}", on_off(*b)),
            VfSetting::LinkState(s) => write!(f, "link_state {s:?}"),
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PfError {
    /// The PF's driver does not implement this (no `ndo_get_vf_config` / `ndo_set_vf_*`, or
    /// no SR-IOV at all: a veth, a PF without VFs).
    #[error("{what} is not supported by the PF driver of {pf}")]
    Unsupported { pf: String, what: String },

    #[error("PF netdev {pf} does not exist")]
    NoSuchPf { pf: String },

    #[error("PF {pf} has no VF {vf} (it reports {count} VFs)")]
    NoSuchVf { pf: String, vf: u32, count: usize },

    #[error("netlink {op} on PF {pf}: {source}")]
    Netlink {
        pf: String,
        op: &'static str,
        source: rtnetlink::Error,
    },

    /// The PF acknowledged a setting but kept reporting something else (see [`set_verified`]).
    #[error("PF {pf} acknowledged {setting} for VF {vf} but still reports {reported} after {tries} tries")]
    NotApplied {
        pf: String,
        vf: u32,
        setting: String,
        reported: String,
        tries: u32,
    },

    /// The netlink socket or runtime could not be set up.
    #[error(transparent)]
    Host(#[from] HostError),

    /// The recording fake's state file is unusable (tests only).
    #[error("fake PF state {path}: {reason}")]
    Fake { path: String, reason: String },
}

impl PfError {
    /// True when the PF driver lacks the operation: nothing was changed.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, PfError::Unsupported { .. })
    }
}

/// PF operations on one VF. The PF is named by its netdev in the caller's (host) netns.
pub trait PfOps: Send + Sync {
    /// The VF's state as the PF reports it.
    fn vf_state(&self, pf: &str, vf: u32) -> Result<VfState, PfError>;
    /// Applies one setting (one `RTM_SETLINK`).
    fn set(&self, pf: &str, vf: u32, setting: &VfSetting) -> Result<(), PfError>;
}

/// How often [`set_verified`] sends a setting that does not show up, and the first pause.
pub const SET_TRIES: u32 = 4;
const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Applies `setting` and reads it back. Some drivers acknowledge a VF change before it takes
/// effect, or drop one made too soon after another (mlx5 applies a VF MAC asynchronously), so a
/// reported setting that does not show up is sent again, up to [`SET_TRIES`] times with
/// doubling pauses. Settings drivers do not report reliably are trusted on the acknowledgement.
pub fn set_verified(
    ops: &dyn PfOps,
    pf: &str,
    vf: u32,
    setting: &VfSetting,
) -> Result<(), PfError> {
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=SET_TRIES {
        ops.set(pf, vf, setting)?;
        if !setting.is_reported() {
            return Ok(());
        }
        let state = ops.vf_state(pf, vf)?;
        if setting.holds_in(&state) {
            return Ok(());
        }
        if attempt == SET_TRIES {
            // The same setting with the value the PF reports.
            let now = setting.restore_from(&state);
            return Err(PfError::NotApplied {
                pf: pf.to_owned(),
                vf,
                setting: setting.to_string(),
                reported: now.to_string(),
                tries: SET_TRIES,
            });
        }
        tracing::debug!(%pf, vf, %setting, attempt, "setting not in effect yet: sending it again");
        std::thread::sleep(pause);
        pause *= 2;
    }
    unreachable!("the loop returns on its last attempt")
}

/// `RTM_GETLINK` for the PF `pf` by name, asking for its VF info (`RTEXT_FILTER_VF`).
pub fn vf_state_request(pf: &str) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(pf.to_owned()));
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(msg));
    req.header.flags = NLM_F_REQUEST;
    req
}

/// `RTM_SETLINK` on the PF `pf` (by name) setting one VF attribute, acknowledged.
pub fn set_vf_request(
    pf: &str,
    vf: u32,
    setting: &VfSetting,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(pf.to_owned()));
    msg.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![
            setting.to_vf_info(vf)
        ])]));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::SetLink(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req
}

/// The state of VF `vf` in the PF's `RTM_NEWLINK` answer to [`vf_state_request`].
pub fn vf_state_from(msg: &LinkMessage, pf: &str, vf: u32) -> Result<VfState, PfError> {
    let list = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::VfInfoList(l) => Some(l),
        _ => None,
    });
    let Some(list) = list else {
        // No IFLA_VFINFO_LIST at all: no parent device (veth, ...) or no ndo_get_vf_config.
        return Err(PfError::Unsupported {
            pf: pf.to_owned(),
            what: "reporting VF state (IFLA_VFINFO_LIST)".into(),
        });
    };
    let mut seen = 0;
    for LinkVfInfo(infos) in list {
        seen += 1;
        let id = infos.iter().find_map(|i| match i {
            VfInfo::Mac(m) => Some(m.vf_id),
            _ => None,
        });
        if id != Some(vf) {
            continue;
        }
        let mut state = VfState::default();
        let mut rate_seen = false;
        for info in infos {
            match info {
                VfInfo::Mac(m) => {
                    state.mac = MacAddr::from_slice(&m.mac).unwrap_or_default();
                }
                VfInfo::Vlan(v) => {
                    state.vlan = v.vlan_id;
                    state.qos = v.qos;
                }
                VfInfo::VlanList(l) => {
                    if let Some(VfVlan::Info(i)) = l.first() {
                        state.vlan = i.vlan_id;
                        state.qos = i.qos;
                        state.vlan_proto = match i.protocol {
                            VlanProtocol::Ieee8021Ad => VlanProto::Dot1Ad,
                            _ => VlanProto::Dot1Q,
                        };
                    }
                }
                VfInfo::SpoofCheck(s) => state.spoofchk = s.enabled,
                VfInfo::Trust(t) => state.trust = t.enabled,
                VfInfo::LinkState(l) => state.link_state = l.state.into(),
                VfInfo::Rate(r) => {
                    rate_seen = true;
                    state.min_tx_rate = r.min_tx_rate;
                    state.max_tx_rate = r.max_tx_rate;
                }
                VfInfo::TxRate(r) if !rate_seen => state.max_tx_rate = r.rate,
                _ => {}
            }
        }
        return Ok(state);
    }
    Err(PfError::NoSuchVf {
        pf: pf.to_owned(),
        vf,
        count: seen,
    })
}

/// The real PF: rtnetlink in the caller's network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetlinkPf;

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Sends `req` and returns the answers (an `RTM_NEWLINK` for a get; nothing for an acked set).
async fn roundtrip(
    h: &rtnetlink::Handle,
    req: NetlinkMessage<RouteNetlinkMessage>,
) -> Result<Vec<LinkMessage>, rtnetlink::Error> {
    let mut responses = h.clone().request(req)?;
    let mut links = Vec::new();
    while let Some(resp) = responses.next().await {
        match resp.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(rtnetlink::Error::NetlinkError(e))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => links.push(m),
            _ => {}
        }
    }
    Ok(links)
}

impl PfOps for NetlinkPf {
    fn vf_state(&self, pf: &str, vf: u32) -> Result<VfState, PfError> {
        let name = pf.to_owned();
        let answer = crate::link::netlink(None, move |h| async move {
            Ok(roundtrip(&h, vf_state_request(&name)).await)
        })?;
        let links = answer.map_err(|source| match errno_of(&source) {
            Some(libc::ENODEV) => PfError::NoSuchPf { pf: pf.to_owned() },
            _ => PfError::Netlink {
                pf: pf.to_owned(),
                op: "get VF state",
                source,
            },
        })?;
        let msg = links
            .first()
            .ok_or_else(|| PfError::NoSuchPf { pf: pf.to_owned() })?;
        vf_state_from(msg, pf, vf)
    }

    fn set(&self, pf: &str, vf: u32, setting: &VfSetting) -> Result<(), PfError> {
        let req = set_vf_request(pf, vf, setting);
        let answer =
            crate::link::netlink(None, move |h| async move { Ok(roundtrip(&h, req).await) })?;
        answer.map(drop).map_err(|source| match errno_of(&source) {
            Some(libc::EOPNOTSUPP) => PfError::Unsupported {
                pf: pf.to_owned(),
                what: format!("setting {setting} on VF {vf}"),
            },
            Some(libc::ENODEV) => PfError::NoSuchPf { pf: pf.to_owned() },
            _ => PfError::Netlink {
                pf: pf.to_owned(),
                op: "set VF",
                source,
            },
        })
    }
}

/// Environment variable selecting the file-backed recording fake instead of netlink: a **test
/// hook** (this kernel has no SR-IOV). Its value is the fake's JSON state file.
pub const FAKE_PF_ENV: &str = "WEFT_SRIOV_FAKE_PF";

/// The PF operations to use: the file-backed fake when [`FAKE_PF_ENV`] names a file, else
/// netlink.
pub fn pf_ops_from_env() -> Box<dyn PfOps> {
    match std::env::var_os(FAKE_PF_ENV).filter(|v| !v.is_empty()) {
        Some(path) => {
            tracing::warn!(
                path = %std::path::Path::new(&path).display(),
                "{FAKE_PF_ENV} is set: PF-side VF settings go to a recording fake, not the NIC"
            );
            Box::new(fake::FakePf::file(path))
        }
        None => Box::new(NetlinkPf),
    }
}

pub mod fake {
    //! A recording fake PF for tests: VF states per PF, settings its "driver" refuses, and a
    //! log of every call. In memory, or in a JSON file (locked per call) so a test can hand it
    //! to the plugin binary through [`super::FAKE_PF_ENV`] and read it back.

    use std::{
        collections::BTreeMap,
        path::{Path, PathBuf},
        sync::Mutex,
    };

    use serde::{Deserialize, Serialize};

    use super::{PfError, PfOps, VfSetting, VfState};

    /// One fake PF: its VFs by index, what its driver does not support (setting names,
    /// [`VfSetting::name`], and `"state"` for reporting VF state), and how many sets of a
    /// setting it acknowledges without applying them (a driver that applies lazily).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct FakePfDevice {
        pub vfs: BTreeMap<u32, VfState>,
        #[serde(default)]
        pub unsupported: Vec<String>,
        #[serde(default)]
        pub flaky: BTreeMap<String, u32>,
    }

    /// One call as the fake saw it (also refused ones).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "lowercase")]
    pub enum PfCall {
        Get {
            pf: String,
            vf: u32,
        },
        Set {
            pf: String,
            vf: u32,
            setting: VfSetting,
        },
    }

    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct FakeState {
        pub pfs: BTreeMap<String, FakePfDevice>,
        #[serde(default)]
        pub calls: Vec<PfCall>,
    }

    impl FakeState {
        /// The `set` calls, in order.
        pub fn sets(&self) -> Vec<(String, u32, VfSetting)> {
            self.calls
                .iter()
                .filter_map(|c| match c {
                    PfCall::Set { pf, vf, setting } => Some((pf.clone(), *vf, *setting)),
                    PfCall::Get { .. } => None,
                })
                .collect()
        }

        fn vf_state(&mut self, pf: &str, vf: u32) -> Result<VfState, PfError> {
            self.calls.push(PfCall::Get {
                pf: pf.to_owned(),
                vf,
            });
            let dev = self.device(pf, "state", || {
                "reporting VF state (IFLA_VFINFO_LIST)".to_string()
            })?;
            dev.vfs.get(&vf).copied().ok_or(PfError::NoSuchVf {
                pf: pf.to_owned(),
                vf,
                count: dev.vfs.len(),
            })
        }

        fn set(&mut self, pf: &str, vf: u32, setting: &VfSetting) -> Result<(), PfError> {
            self.calls.push(PfCall::Set {
                pf: pf.to_owned(),
                vf,
                setting: *setting,
            });
            let dev = self.device(pf, setting.name(), || {
                format!("setting {setting} on VF {vf}")
            })?;
            if let Some(n) = dev.flaky.get_mut(setting.name()).filter(|n| **n > 0) {
                *n -= 1;
                return Ok(());
            }
            let count = dev.vfs.len();
            let state = dev.vfs.get_mut(&vf).ok_or(PfError::NoSuchVf {
                pf: pf.to_owned(),
                vf,
                count,
            })?;
            setting.apply_to(state);
            Ok(())
        }

        /// The PF, unless it is unknown (a netdev without SR-IOV) or refuses `name`; the error
        /// reads like [`super::NetlinkPf`]'s, with `describe()` saying what was refused.
        fn device(
            &mut self,
            pf: &str,
            name: &str,
            describe: impl Fn() -> String,
        ) -> Result<&mut FakePfDevice, PfError> {
            let unsupported = || PfError::Unsupported {
                pf: pf.to_owned(),
                what: format!("{} (recording fake)", describe()),
            };
            let dev = self.pfs.get_mut(pf).ok_or_else(unsupported)?;
            if dev.unsupported.iter().any(|u| u == name) {
                return Err(unsupported());
            }
            Ok(dev)
        }
    }

    enum Backing {
        Memory(Mutex<FakeState>),
        File(PathBuf),
    }

    /// The recording fake.
    pub struct FakePf {
        backing: Backing,
    }

    impl FakePf {
        pub fn in_memory(state: FakeState) -> Self {
            FakePf {
                backing: Backing::Memory(Mutex::new(state)),
            }
        }

        /// Backed by the JSON file `path` (which must exist), locked per call through
        /// `<path>.lock`, so concurrent plugin processes see one consistent PF.
        pub fn file(path: impl Into<PathBuf>) -> Self {
            FakePf {
                backing: Backing::File(path.into()),
            }
        }

        /// Writes `state` as a fresh state file at `path`.
        pub fn create_file(path: &Path, state: &FakeState) -> Result<(), PfError> {
            write_state(path, state)
        }

        /// The current state, including the call log.
        pub fn state(&self) -> Result<FakeState, PfError> {
            self.with(|s| Ok(s.clone()))
        }

        fn with<T>(
            &self,
            f: impl FnOnce(&mut FakeState) -> Result<T, PfError>,
        ) -> Result<T, PfError> {
            match &self.backing {
                Backing::Memory(m) => f(&mut m.lock().unwrap_or_else(|e| e.into_inner())),
                Backing::File(path) => {
                    let mut lock_path = path.clone().into_os_string();
                    lock_path.push(".lock");
                    let _lock = crate::lock::lock_file(Path::new(&lock_path), true)?;
                    let mut state = read_state(path)?;
                    let out = f(&mut state);
                    write_state(path, &state)?;
                    out
                }
            }
        }
    }

    fn fake_err(path: &Path, reason: impl ToString) -> PfError {
        PfError::Fake {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn read_state(path: &Path) -> Result<FakeState, PfError> {
        let bytes = std::fs::read(path).map_err(|e| fake_err(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| fake_err(path, e))
    }

    fn write_state(path: &Path, state: &FakeState) -> Result<(), PfError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| fake_err(path, e))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| fake_err(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| fake_err(path, e))
    }

    impl PfOps for FakePf {
        fn vf_state(&self, pf: &str, vf: u32) -> Result<VfState, PfError> {
            self.with(|s| s.vf_state(pf, vf))
        }

        fn set(&self, pf: &str, vf: u32, setting: &VfSetting) -> Result<(), PfError> {
            self.with(|s| s.set(pf, vf, setting))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakePf, FakePfDevice, FakeState, PfCall};
    use super::*;

    /// A netlink attribute as the kernel lays it out: u16 len, u16 type, value, padded to 4.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn u32s(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    /// nlmsghdr (len, type, flags, seq 0, pid 0) + ifinfomsg (all zero: by name) + attributes.
    fn message(kind: u16, flags: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = std::iter::repeat_n(0u8, 16)
            .chain(attrs.iter().flatten().copied())
            .collect();
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&body);
        out
    }

    fn bytes(mut msg: NetlinkMessage<RouteNetlinkMessage>) -> Vec<u8> {
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    // uAPI numbers (linux/rtnetlink.h, linux/if_link.h, linux/netlink.h).
    const RTM_GETLINK: u16 = 18;
    const RTM_SETLINK: u16 = 19;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_VFINFO_LIST: u16 = 22;
    const IFLA_EXT_MASK: u16 = 29;
    const IFLA_VF_INFO: u16 = 1;
    const IFLA_VF_MAC: u16 = 1;
    const IFLA_VF_VLAN: u16 = 2;
    const IFLA_VF_SPOOFCHK: u16 = 4;
    const IFLA_VF_LINK_STATE: u16 = 5;
    const IFLA_VF_RATE: u16 = 6;
    const IFLA_VF_TRUST: u16 = 9;
    const IFLA_VF_VLAN_LIST: u16 = 12;
    const IFLA_VF_VLAN_INFO: u16 = 1;
    const RTEXT_FILTER_VF: u32 = 1;

    fn mac_field(mac: [u8; 6]) -> Vec<u8> {
        let mut v = mac.to_vec();
        v.resize(32, 0);
        v
    }

    #[test]
    fn get_request_asks_for_vf_info_by_name() {
        let want = message(
            RTM_GETLINK,
            1,
            &[
                nla(IFLA_IFNAME, b"ens1f0\0"),
                nla(IFLA_EXT_MASK, &u32s(&[RTEXT_FILTER_VF])),
            ],
        );
        assert_eq!(bytes(vf_state_request("ens1f0")), want);
    }

    #[test]
    fn set_requests_match_the_uapi_layout() {
        let mac = [0xca, 0xfe, 0xc0, 0xff, 0xee, 0x01];
        let cases: Vec<(VfSetting, Vec<u8>)> = vec![
            (
                VfSetting::Vlan {
                    vlan: 100,
                    qos: 3,
                    proto: VlanProto::Dot1Q,
                },
                nla(IFLA_VF_VLAN, &u32s(&[7, 100, 3])),
            ),
            (
                VfSetting::Vlan {
                    vlan: 200,
                    qos: 0,
                    proto: VlanProto::Dot1Ad,
                },
                nla(
                    IFLA_VF_VLAN_LIST,
                    &nla(
                        IFLA_VF_VLAN_INFO,
                        &[u32s(&[7, 200, 0]), vec![0x88, 0xa8, 0, 0]].concat(),
                    ),
                ),
            ),
            (
                VfSetting::Mac(MacAddr(mac)),
                nla(IFLA_VF_MAC, &[u32s(&[7]), mac_field(mac)].concat()),
            ),
            (
                VfSetting::Rate {
                    min_tx_rate: 100,
                    max_tx_rate: 1000,
                },
                nla(IFLA_VF_RATE, &u32s(&[7, 100, 1000])),
            ),
            (
                VfSetting::Spoofchk(false),
                nla(IFLA_VF_SPOOFCHK, &u32s(&[7, 0])),
            ),
            (VfSetting::Trust(true), nla(IFLA_VF_TRUST, &u32s(&[7, 1]))),
            (
                VfSetting::LinkState(VfLinkState::Disable),
                nla(IFLA_VF_LINK_STATE, &u32s(&[7, 2])),
            ),
        ];
        for (setting, vf_attr) in cases {
            let want = message(
                RTM_SETLINK,
                1 | 4,
                &[
                    nla(IFLA_IFNAME, b"ens1f0\0"),
                    nla(IFLA_VFINFO_LIST, &nla(IFLA_VF_INFO, &vf_attr)),
                ],
            );
            assert_eq!(
                bytes(set_vf_request("ens1f0", 7, &setting)),
                want,
                "{setting}"
            );
        }
    }

    /// One IFLA_VF_INFO as rtnl_fill_vfinfo() emits it.
    fn kernel_vf_info(vf: u32, mac: [u8; 6], vlan: u32, qos: u32, spoofchk: u32) -> Vec<u8> {
        nla(
            IFLA_VF_INFO,
            &[
                nla(IFLA_VF_MAC, &[u32s(&[vf]), mac_field(mac)].concat()),
                nla(
                    13, /* IFLA_VF_BROADCAST */
                    &[[0xff; 6].to_vec(), vec![0; 26]].concat(),
                ),
                nla(IFLA_VF_VLAN, &u32s(&[vf, vlan, qos])),
                nla(
                    IFLA_VF_VLAN_LIST,
                    &nla(
                        IFLA_VF_VLAN_INFO,
                        &[u32s(&[vf, vlan, qos]), vec![0x81, 0x00, 0, 0]].concat(),
                    ),
                ),
                nla(3 /* IFLA_VF_TX_RATE */, &u32s(&[vf, 500])),
                nla(IFLA_VF_RATE, &u32s(&[vf, 10, 500])),
                nla(IFLA_VF_SPOOFCHK, &u32s(&[vf, spoofchk])),
                nla(IFLA_VF_LINK_STATE, &u32s(&[vf, 1])),
                nla(IFLA_VF_TRUST, &u32s(&[vf, u32::MAX])),
            ]
            .concat(),
        )
    }

    #[test]
    fn parses_the_kernels_vf_info() {
        let mac0 = [2, 0, 0, 0, 0, 0x10];
        let mac1 = [2, 0, 0, 0, 0, 0x11];
        let raw = message(
            16, /* RTM_NEWLINK */
            0,
            &[
                nla(IFLA_IFNAME, b"ens1f0\0"),
                nla(21 /* IFLA_NUM_VF */, &u32s(&[2])),
                nla(
                    IFLA_VFINFO_LIST,
                    &[
                        kernel_vf_info(0, mac0, 0, 0, 1),
                        kernel_vf_info(1, mac1, 42, 5, 0),
                    ]
                    .concat(),
                ),
            ],
        );
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&raw).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg.payload else {
            panic!("not a link message: {msg:?}");
        };
        let vf1 = vf_state_from(&link, "ens1f0", 1).unwrap();
        assert_eq!(
            vf1,
            VfState {
                mac: MacAddr(mac1),
                vlan: 42,
                qos: 5,
                vlan_proto: VlanProto::Dot1Q,
                spoofchk: false,
                // u32::MAX: the driver does not report trust.
                trust: false,
                link_state: VfLinkState::Enable,
                min_tx_rate: 10,
                max_tx_rate: 500,
            }
        );
        assert!(vf_state_from(&link, "ens1f0", 0).unwrap().spoofchk);
        assert!(matches!(
            vf_state_from(&link, "ens1f0", 2),
            Err(PfError::NoSuchVf { count: 2, .. })
        ));
        // A link without IFLA_VFINFO_LIST (veth, no SR-IOV driver) does not support it.
        let plain = LinkMessage::default();
        let e = vf_state_from(&plain, "veth0", 0).unwrap_err();
        assert!(e.is_unsupported());
        assert!(
            e.to_string().contains("not supported by the PF driver"),
            "{e}"
        );
    }

    #[test]
    fn settings_restore_and_compare() {
        let original = VfState {
            vlan: 5,
            spoofchk: true,
            ..VfState::default()
        };
        let set = VfSetting::Vlan {
            vlan: 100,
            qos: 2,
            proto: VlanProto::Dot1Ad,
        };
        let mut state = original;
        set.apply_to(&mut state);
        assert!(set.holds_in(&state));
        let undo = set.restore_from(&original);
        assert!(!undo.holds_in(&state));
        undo.apply_to(&mut state);
        assert_eq!(state, original);
        let json =
            serde_json::to_string(&VfSetting::Mac(MacAddr([0xca, 0xfe, 0, 0, 0, 1]))).unwrap();
        assert_eq!(json, r#"{"mac":"ca:fe:00:00:00:01"}"#);
        assert_eq!(
            serde_json::from_str::<VfSetting>(r#"{"link_state":"disable"}"#).unwrap(),
            VfSetting::LinkState(VfLinkState::Disable)
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            MacAddr::parse("CA:FE:C0:FF:EE:00").unwrap().to_string(),
            "ca:fe:c0:ff:ee:00"
        );
        assert_eq!(MacAddr::parse("ca-fe-c0-ff-ee-00").unwrap().0[0], 0xca);
        for bad in [
            "",
            "ca:fe",
            "ca:fe:c0:ff:ee:00:11",
            "zz:fe:c0:ff:ee:00",
            "cafe:c0:ff:ee:00:1",
        ] {
            assert!(MacAddr::parse(bad).is_err(), "{bad}");
        }
        assert!(MacAddr::parse("01:00:5e:00:00:01").unwrap().is_multicast());
        assert!(MacAddr::ZERO.is_zero());
    }

    fn fake_state() -> FakeState {
        let mut pf = FakePfDevice::default();
        pf.vfs.insert(0, VfState::default());
        pf.vfs.insert(1, VfState::default());
        pf.unsupported.push("trust".into());
        let mut s = FakeState::default();
        s.pfs.insert("pf0".into(), pf);
        s
    }

    #[test]
    fn fake_records_applies_and_refuses() {
        let fake = FakePf::in_memory(fake_state());
        let vlan = VfSetting::Vlan {
            vlan: 10,
            qos: 0,
            proto: VlanProto::Dot1Q,
        };
        fake.set("pf0", 1, &vlan).unwrap();
        assert_eq!(fake.vf_state("pf0", 1).unwrap().vlan, 10);
        assert!(fake
            .set("pf0", 1, &VfSetting::Trust(true))
            .unwrap_err()
            .is_unsupported());
        assert!(matches!(
            fake.vf_state("pf0", 9),
            Err(PfError::NoSuchVf { .. })
        ));
        assert!(fake.vf_state("eth0", 0).unwrap_err().is_unsupported());
        let state = fake.state().unwrap();
        assert_eq!(state.calls.len(), 5);
        assert_eq!(
            state.sets(),
            vec![
                ("pf0".to_string(), 1, vlan),
                ("pf0".to_string(), 1, VfSetting::Trust(true))
            ]
        );
        assert_eq!(
            state.calls[1],
            PfCall::Get {
                pf: "pf0".into(),
                vf: 1
            }
        );
    }

    #[test]
    fn set_verified_resends_what_a_lazy_driver_dropped() {
        let mut state = fake_state();
        let pf = state.pfs.get_mut("pf0").unwrap();
        pf.flaky.insert("mac".into(), 2);
        pf.flaky.insert("spoofchk".into(), 1);
        let fake = FakePf::in_memory(state);
        let mac = VfSetting::Mac(MacAddr([2, 0, 0, 0, 0, 9]));
        set_verified(&fake, "pf0", 0, &mac).unwrap();
        assert_eq!(
            fake.vf_state("pf0", 0).unwrap().mac,
            MacAddr([2, 0, 0, 0, 0, 9])
        );
        let sets = fake.state().unwrap().sets();
        assert_eq!(sets.len(), 3, "two dropped, the third applied: {sets:?}");
        // Not reported reliably: trusted on the acknowledgement (and here silently dropped).
        set_verified(&fake, "pf0", 0, &VfSetting::Spoofchk(true)).unwrap();
        assert!(!fake.vf_state("pf0", 0).unwrap().spoofchk);
        // A driver that never applies it: a clear error after SET_TRIES sends.
        let mut state = fake_state();
        state
            .pfs
            .get_mut("pf0")
            .unwrap()
            .flaky
            .insert("vlan".into(), 99);
        let fake = FakePf::in_memory(state);
        let vlan = VfSetting::Vlan {
            vlan: 7,
            qos: 0,
            proto: VlanProto::Dot1Q,
        };
        let e = set_verified(&fake, "pf0", 1, &vlan).unwrap_err();
        assert!(
            matches!(
                e,
                PfError::NotApplied {
                    tries: SET_TRIES,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("still reports vlan 0"), "{e}");
    }

    #[test]
    fn file_fake_is_shared_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pf.json");
        FakePf::create_file(&path, &fake_state()).unwrap();
        FakePf::file(&path)
            .set("pf0", 0, &VfSetting::Spoofchk(true))
            .unwrap();
        let again = FakePf::file(&path);
        assert!(again.vf_state("pf0", 0).unwrap().spoofchk);
        assert_eq!(again.state().unwrap().calls.len(), 2);
    }
}
