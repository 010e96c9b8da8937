//! weft-sriov's config: sriov-cni's keys, validated as sriov-cni validates them, plus `mtu`.
//!
//! | key | meaning |
//! | --- | --- |
//! | `deviceID` | the VF's PCI address (`0000:af:06.0`); `runtimeConfig.deviceID` wins, `pciBusID` is the fallback (multus injects both) |
//! | `vlan`, `vlanQoS`, `vlanProto` | VF VLAN 0–4094, PCP 0–7, `802.1Q` (default) or `802.1ad`, set through the PF |
//! | `mac` | MAC for the VF (admin MAC on the PF and the netdev's); `runtimeConfig.mac` > `CNI_ARGS` `MAC` > `mac` |
//! | `spoofchk`, `trust` | `on`/`off`, through the PF |
//! | `link_state` | `auto`, `enable`, `disable`, through the PF |
//! | `min_tx_rate`, `max_tx_rate` | Mbps (0 = no limit), through the PF |
//! | `mtu` | weft addition: MTU of the VF netdev in the pod (restored on DEL) |
//! | `ipam` | any IPAM delegate; without one the VF gets no addresses |
//! | `logLevel`, `logFile` | logs (never stdout) |
//!
//! `vlan_trunk` (a sriov-cni fork's key) is refused with code 2 rather than silently ignored.

use conf::{code, Error, Request, Result};
use host::sriov::{MacAddr, VfLinkState, VfSetting, VlanProto};
use host::PciAddress;
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;

/// The keys as they arrive; every number is read wide so a negative or huge value gets a
/// message about its range, not a serde type error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
    #[serde(rename = "pciBusID")]
    pci_bus_id: Option<String>,
    vlan: Option<i64>,
    #[serde(rename = "vlanQoS")]
    vlan_qos: Option<i64>,
    #[serde(rename = "vlanProto")]
    vlan_proto: Option<String>,
    mac: Option<String>,
    spoofchk: Option<String>,
    trust: Option<String>,
    link_state: Option<String>,
    min_tx_rate: Option<i64>,
    max_tx_rate: Option<i64>,
    mtu: Option<i64>,
    #[serde(rename = "logLevel")]
    log_level: Option<String>,
    #[serde(rename = "logFile")]
    log_file: Option<PathBuf>,
    vlan_trunk: Option<Value>,
}

/// The VLAN the VF gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vlan {
    pub id: u32,
    pub qos: u32,
    pub proto: VlanProto,
}

/// A validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SriovConf {
    pub device_id: PciAddress,
    /// After `runtimeConfig.mac` > `CNI_ARGS MAC` > `mac`.
    pub mac: Option<MacAddr>,
    pub vlan: Option<Vlan>,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<VfLinkState>,
    /// (min, max) Mbps when either is configured; the other is 0 then, as in sriov-cni.
    pub rate: Option<(u32, u32)>,
    pub mtu: Option<u32>,
    pub logging: Logging,
}

/// What every verb reads, even from a config that no longer validates (DEL and GC must run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Logging {
    pub level: Option<String>,
    pub file: Option<PathBuf>,
}

impl Logging {
    /// Never fails: a broken config must not stop DEL from logging or running.
    pub fn from_request(req: &Request) -> Logging {
        let raw = &req.conf.raw;
        Logging {
            level: raw
                .get("logLevel")
                .and_then(Value::as_str)
                .map(str::to_owned),
            file: raw
                .get("logFile")
                .and_then(Value::as_str)
                .map(PathBuf::from),
        }
    }

    pub fn init(&self) {
        host::logging::init(self.level.as_deref(), self.file.as_deref());
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid_config(msg)
}

/// Capability `deviceID`, else top-level `deviceID`, else `pciBusID` (multus injects both).
fn device_id(req: &Request, raw: &Raw) -> Result<PciAddress> {
    let from_runtime: Option<String> = req.conf.runtime("deviceID")?;
    let id = [from_runtime, raw.device_id.clone(), raw.pci_bus_id.clone()]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .ok_or_else(|| invalid("deviceID (the VF's PCI address) is required"))?;
    PciAddress::parse(&id).map_err(|e| invalid(format!("deviceID: {e}")))
}

fn on_off(key: &str, v: Option<&str>) -> Result<Option<bool>> {
    match v {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(other) => Err(invalid(format!(
            "{key} must be \"on\" or \"off\", not {other:?}"
        ))),
    }
}

fn in_range(key: &str, v: i64, max: i64) -> Result<u32> {
    if (0..=max).contains(&v) {
        Ok(v as u32)
    } else {
        Err(invalid(format!("{key} {v} is out of range 0-{max}")))
    }
}

/// A MAC a VF can take: six bytes, unicast, not all zeros.
fn vf_mac(source: &str, s: &str) -> std::result::Result<MacAddr, String> {
    let mac = MacAddr::parse(s).map_err(|e| format!("{source}: {e}"))?;
    if mac.is_zero() || mac.is_multicast() {
        return Err(format!(
            "{source}: {mac} cannot be assigned to a VF (zero, multicast or broadcast)"
        ));
    }
    Ok(mac)
}

fn vlan(raw: &Raw) -> Result<Option<Vlan>> {
    let Some(id) = raw.vlan else {
        if raw.vlan_qos.is_some() {
            return Err(invalid("vlanQoS needs vlan to be set"));
        }
        if raw.vlan_proto.is_some() {
            return Err(invalid("vlanProto needs vlan to be set"));
        }
        return Ok(None);
    };
    let id = in_range("vlan", id, 4094)?;
    let qos = in_range("vlanQoS", raw.vlan_qos.unwrap_or(0), 7)?;
    if qos != 0 && id == 0 {
        return Err(invalid("a non-zero vlanQoS needs a non-zero vlan"));
    }
    let proto = match raw
        .vlan_proto
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("802.1q") => VlanProto::Dot1Q,
        Some("802.1ad") => VlanProto::Dot1Ad,
        Some(_) => {
            return Err(invalid(format!(
                "vlanProto {:?} must be \"802.1Q\" or \"802.1ad\"",
                raw.vlan_proto.as_deref().unwrap_or_default()
            )))
        }
    };
    if proto == VlanProto::Dot1Ad && id == 0 {
        return Err(invalid("vlanProto 802.1ad needs a non-zero vlan"));
    }
    Ok(Some(Vlan { id, qos, proto }))
}

impl SriovConf {
    pub fn from_request(req: &Request) -> Result<SriovConf> {
        let raw: Raw = req.conf.plugin()?;
        if raw.vlan_trunk.is_some() {
            return Err(Error::new(
                code::UNSUPPORTED_FIELD,
                "vlan_trunk is not supported by weft-sriov (use vlan)",
            ));
        }
        let link_state = match raw.link_state.as_deref() {
            None => None,
            Some("auto") => Some(VfLinkState::Auto),
            Some("enable") => Some(VfLinkState::Enable),
            Some("disable") => Some(VfLinkState::Disable),
            Some(other) => {
                return Err(invalid(format!(
                    "link_state must be auto, enable or disable, not {other:?}"
                )))
            }
        };
        let rate = match (raw.min_tx_rate, raw.max_tx_rate) {
            (None, None) => None,
            (min, max) => {
                let min = in_range("min_tx_rate", min.unwrap_or(0), u32::MAX.into())?;
                let max = in_range("max_tx_rate", max.unwrap_or(0), u32::MAX.into())?;
                if max != 0 && min > max {
                    return Err(invalid(format!(
                        "min_tx_rate {min} is above max_tx_rate {max}"
                    )));
                }
                Some((min, max))
            }
        };
        let mtu = raw
            .mtu
            .map(|m| {
                if (68..=65535).contains(&m) {
                    Ok(m as u32)
                } else {
                    Err(invalid(format!("mtu {m} is out of range 68-65535")))
                }
            })
            .transpose()?;
        // sriov-cni's precedence: runtimeConfig.mac > CNI_ARGS MAC > mac.
        let runtime_mac: Option<String> = req.conf.runtime("mac")?;
        let mac = if let Some(m) = runtime_mac.filter(|m| !m.is_empty()) {
            Some(vf_mac("runtimeConfig.mac", &m).map_err(invalid)?)
        } else if let Some(m) = req.arg("MAC").filter(|m| !m.is_empty()) {
            Some(vf_mac("CNI_ARGS MAC", &m).map_err(Error::invalid_env)?)
        } else {
            raw.mac
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| vf_mac("mac", m).map_err(invalid))
                .transpose()?
        };
        Ok(SriovConf {
            device_id: device_id(req, &raw)?,
            mac,
            vlan: vlan(&raw)?,
            spoofchk: on_off("spoofchk", raw.spoofchk.as_deref())?,
            trust: on_off("trust", raw.trust.as_deref())?,
            link_state,
            rate,
            mtu,
            logging: Logging {
                level: raw.log_level,
                file: raw.log_file,
            },
        })
    }

    /// The PF-side settings, in the order they are applied (sriov-cni's): VLAN, admin MAC,
    /// rate, spoof check, trust, link state. Undone in reverse.
    pub fn pf_settings(&self) -> Vec<VfSetting> {
        let mut out = Vec::new();
        if let Some(v) = self.vlan {
            out.push(VfSetting::Vlan {
                vlan: v.id,
                qos: v.qos,
                proto: v.proto,
            });
        }
        if let Some(m) = self.mac {
            out.push(VfSetting::Mac(m));
        }
        if let Some((min, max)) = self.rate {
            out.push(VfSetting::Rate {
                min_tx_rate: min,
                max_tx_rate: max,
            });
        }
        if let Some(b) = self.spoofchk {
            out.push(VfSetting::Spoofchk(b));
        }
        if let Some(b) = self.trust {
            out.push(VfSetting::Trust(b));
        }
        if let Some(s) = self.link_state {
            out.push(VfSetting::LinkState(s));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conf::{Env, NetConf};
    use serde_json::json;

    fn request(conf: Value, cni_args: &str) -> Request {
        let stdin = conf.to_string().into_bytes();
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", cni_args),
        ];
        Request {
            env: Env::from_vars(|k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
            .unwrap(),
            conf: NetConf::parse(&stdin).unwrap(),
            stdin,
        }
    }

    fn base(extra: Value) -> Value {
        let mut c = json!({"cniVersion":"1.0.0","name":"sriov-net","type":"weft-sriov",
            "deviceID":"0000:af:06.0"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn parse(extra: Value) -> Result<SriovConf> {
        SriovConf::from_request(&request(base(extra), ""))
    }

    #[test]
    fn sriov_cnis_full_example() {
        let c = parse(json!({"mac":"CA:FE:C0:FF:EE:00","vlan":1000,"vlanQoS":4,
            "vlanProto":"802.1ad","min_tx_rate":100,"max_tx_rate":200,"spoofchk":"off",
            "trust":"on","link_state":"enable","logLevel":"debug","logFile":"/tmp/sriov.log"}))
        .unwrap();
        assert_eq!(c.device_id.as_str(), "0000:af:06.0");
        assert_eq!(
            c.pf_settings(),
            vec![
                VfSetting::Vlan {
                    vlan: 1000,
                    qos: 4,
                    proto: VlanProto::Dot1Ad
                },
                VfSetting::Mac(MacAddr::parse("ca:fe:c0:ff:ee:00").unwrap()),
                VfSetting::Rate {
                    min_tx_rate: 100,
                    max_tx_rate: 200
                },
                VfSetting::Spoofchk(false),
                VfSetting::Trust(true),
                VfSetting::LinkState(VfLinkState::Enable),
            ]
        );
        assert_eq!(c.logging.level.as_deref(), Some("debug"));
        let plain = parse(json!({})).unwrap();
        assert!(plain.pf_settings().is_empty());
        assert_eq!(plain.mac, None);
    }

    #[test]
    fn invalid_values_are_code_7() {
        for (extra, needle) in [
            (json!({"deviceID": null}), "deviceID"),
            (json!({"deviceID": "0000:af:06.9"}), "deviceID"),
            (json!({"deviceID": "../../etc"}), "deviceID"),
            (json!({"vlan": 4095}), "vlan 4095"),
            (json!({"vlan": -1}), "vlan -1"),
            (json!({"vlanQoS": 1}), "vlanQoS needs vlan"),
            (json!({"vlanProto": "802.1ad"}), "vlanProto needs vlan"),
            (json!({"vlan": 0, "vlanQoS": 2}), "non-zero vlan"),
            (json!({"vlan": 10, "vlanQoS": 8}), "vlanQoS 8"),
            (json!({"vlan": 0, "vlanProto": "802.1ad"}), "802.1ad needs"),
            (json!({"vlan": 10, "vlanProto": "qinq"}), "vlanProto"),
            (json!({"spoofchk": "yes"}), "spoofchk"),
            (json!({"trust": "true"}), "trust"),
            (json!({"link_state": "up"}), "link_state"),
            (json!({"min_tx_rate": 300, "max_tx_rate": 200}), "above"),
            (json!({"max_tx_rate": -5}), "max_tx_rate"),
            (json!({"mac": "ff:ff:ff:ff:ff:ff"}), "cannot be assigned"),
            (json!({"mac": "00:00:00:00:00:00"}), "cannot be assigned"),
            (json!({"mac": "01:00:5e:00:00:01"}), "cannot be assigned"),
            (json!({"mac": "ca:fe"}), "not a MAC"),
            (json!({"mtu": 20}), "mtu"),
            (json!({"vlan": "ten"}), "invalid"),
        ] {
            let e = parse(extra.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{extra}: {e}");
            assert!(e.msg.contains(needle), "{extra}: {e}");
        }
        let e = parse(json!({"vlan_trunk": "10-20"})).unwrap_err();
        assert_eq!(e.code, 2, "{e}");
    }

    #[test]
    fn mac_and_device_precedence() {
        let conf = base(json!({"mac":"02:00:00:00:00:01",
            "runtimeConfig": {"mac": "02:00:00:00:00:03", "deviceID": "0000:3b:02.1"}}));
        let c = SriovConf::from_request(&request(conf.clone(), "MAC=02:00:00:00:00:02")).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:03");
        assert_eq!(c.device_id.as_str(), "0000:3b:02.1");
        let c = SriovConf::from_request(&request(
            base(json!({"deviceID": null, "pciBusID": "0000:3b:02.2"})),
            "",
        ))
        .unwrap();
        assert_eq!(c.device_id.as_str(), "0000:3b:02.2");
        let c = SriovConf::from_request(&request(base(json!({"pciBusID": "0000:3b:02.2"})), ""))
            .unwrap();
        assert_eq!(
            c.device_id.as_str(),
            "0000:af:06.0",
            "deviceID wins over pciBusID"
        );
        let mut no_runtime = conf.clone();
        no_runtime.as_object_mut().unwrap().remove("runtimeConfig");
        let c = SriovConf::from_request(&request(
            no_runtime.clone(),
            "IgnoreUnknown=1;MAC=02:00:00:00:00:02",
        ))
        .unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:02");
        let c = SriovConf::from_request(&request(no_runtime.clone(), "K8S_POD_NAME=x")).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:01");
        let e = SriovConf::from_request(&request(no_runtime, "MAC=nope")).unwrap_err();
        assert_eq!(e.code, 4, "a bad CNI_ARGS value is an env error: {e}");
    }

    #[test]
    fn logging_survives_a_broken_config() {
        let req = request(base(json!({"vlan": 99999, "logLevel": "debug"})), "");
        assert!(SriovConf::from_request(&req).is_err());
        assert_eq!(Logging::from_request(&req).level.as_deref(), Some("debug"));
    }
}
