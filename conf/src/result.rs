//! The CNI result: one model (the newest, 1.1.0), decoded from any supported version's shape and
//! encoded to exactly one version at the end of a verb.
//!
//! Unknown keys are kept in `extra` maps so a chained plugin passes a previous plugin's result
//! through without losing what it does not understand.

use crate::error::{Error, Result};
use crate::version::Version;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// `address` / `dst` fields: an address with its prefix length ("10.1.2.3/24"). A bare address
/// is not a valid CNI address, so it is rejected rather than silently given a /32.
mod cidr {
    use ipnetwork::IpNetwork;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &IpNetwork, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNetwork, D::Error> {
        let s = String::deserialize(d)?;
        if !s.contains('/') {
            return Err(D::Error::custom(format!(
                "address {s:?} lacks a prefix length"
            )));
        }
        s.parse()
            .map_err(|e| D::Error::custom(format!("invalid address {s:?}: {e}")))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0+
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0+
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// 1.1.0+
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`; absent in IPAM results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(with = "cidr")]
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl IpConfig {
    pub fn new(address: IpNetwork, gateway: Option<IpAddr>) -> Self {
        IpConfig {
            interface: None,
            address,
            gateway,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(with = "cidr")]
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0+
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1.0+
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// 1.1.0+
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 1.1.0+
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 1.1.0+
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Fields that exist only from 1.1.0 on; dropped when encoding for older versions.
const INTERFACE_1_1_FIELDS: [&str; 3] = ["mtu", "socketPath", "pciID"];
const ROUTE_1_1_FIELDS: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Always printed (as `{}` when empty), as the reference plugins do.
    #[serde(default)]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CniResult {
    /// Encodes the result for exactly `version`: `cniVersion` set, `ips[].version` present below
    /// 1.0.0 and absent from it, 1.1.0-only fields dropped below 1.1.0.
    pub fn encode(&self, version: Version) -> Value {
        let mut body = self.clone();
        body.extra.remove("cniVersion");
        let mut v = serde_json::to_value(&body).expect("a result always serializes");
        let obj = v.as_object_mut().expect("a result is an object");
        if let Some(Value::Array(ips)) = obj.get_mut("ips") {
            for (ip, model) in ips.iter_mut().zip(&self.ips) {
                let ip = ip.as_object_mut().expect("an ip config is an object");
                if version.has_ip_version_field() {
                    let family = if model.address.is_ipv4() { "4" } else { "6" };
                    ip.insert("version".into(), family.into());
                } else {
                    ip.remove("version");
                }
            }
        }
        if !version.has_1_1_fields() {
            strip_fields(obj.get_mut("interfaces"), &INTERFACE_1_1_FIELDS);
            strip_fields(obj.get_mut("routes"), &ROUTE_1_1_FIELDS);
        }
        obj.insert("cniVersion".into(), version.as_str().into());
        v
    }

    /// Decodes a result of any supported version. Either `ips` shape is accepted (with or
    /// without `version`); a result that declares a version we do not speak (0.1.0/0.2.0 results
    /// have `ip4`/`ip6` instead of `ips`) is refused with code 1 rather than half-read.
    /// `expected` is the version of the config that carries the result, used in messages only:
    /// libcni passes `prevResult` raw, so the shape may legitimately differ from the config.
    pub fn decode(value: &Value, expected: Version) -> Result<CniResult> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::decode("result is not a JSON object"))?;
        if let Some(declared) = obj.get("cniVersion") {
            let declared = declared
                .as_str()
                .ok_or_else(|| Error::decode("result cniVersion is not a string"))?;
            Version::parse(declared).map_err(|e| {
                Error::incompatible_version(format!(
                    "result has cniVersion {declared:?}, which cannot be read in a {expected} config"
                ))
                .with_details(e.details)
            })?;
        }
        let mut obj = obj.clone();
        obj.remove("cniVersion");
        if let Some(Value::Array(ips)) = obj.get_mut("ips") {
            for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
                ip.remove("version");
            }
        }
        let result: CniResult = serde_json::from_value(Value::Object(obj))
            .map_err(|e| Error::decode(format!("cannot decode result: {e}")))?;
        result.validate()?;
        Ok(result)
    }

    /// Every `ips[].interface` must index into `interfaces` (containerd indexes without a bound
    /// check, so an out-of-range index would crash a runtime, not just fail).
    pub fn validate(&self) -> Result<()> {
        for ip in &self.ips {
            if let Some(i) = ip.interface {
                if i >= self.interfaces.len() {
                    return Err(Error::invalid_config(format!(
                        "ips entry {} names interface {i}, but the result has {} interfaces",
                        ip.address,
                        self.interfaces.len()
                    )));
                }
            }
        }
        Ok(())
    }
}

fn strip_fields(list: Option<&mut Value>, fields: &[&str]) {
    if let Some(Value::Array(items)) = list {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            for f in fields {
                item.remove(*f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:01:00:02".into()),
                mtu: Some(1450),
                sandbox: Some("/var/run/netns/x".into()),
                socket_path: Some("/run/x.sock".into()),
                pci_id: Some("0000:00:01.0".into()),
                extra: Map::new(),
            }],
            ips: vec![IpConfig {
                interface: Some(0),
                address: "10.1.0.2/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                extra: Map::new(),
            }],
            routes: vec![Route {
                mtu: Some(1400),
                table: Some(100),
                ..Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.1.0.1".parse().unwrap()),
                )
            }],
            dns: Dns::default(),
            extra: Map::new(),
        }
    }

    #[test]
    fn encodes_each_version_exactly() {
        let r = sample();
        let v030 = r.encode(Version::V0_3_0);
        assert_eq!(v030["cniVersion"], "0.3.0");
        assert_eq!(v030["ips"][0]["version"], "4");
        assert!(v030["interfaces"][0].get("mtu").is_none());
        assert!(v030["routes"][0].get("table").is_none());
        assert_eq!(v030["dns"], json!({}));
        let v100 = r.encode(Version::V1_0_0);
        assert!(v100["ips"][0].get("version").is_none());
        assert!(v100["interfaces"][0].get("pciID").is_none());
        let v110 = r.encode(Version::V1_1_0);
        assert_eq!(v110["interfaces"][0]["mtu"], 1450);
        assert_eq!(v110["interfaces"][0]["socketPath"], "/run/x.sock");
        assert_eq!(v110["routes"][0]["table"], 100);
    }

    #[test]
    fn ipv6_version_field() {
        let mut r = sample();
        r.ips[0].address = "fd00::2/64".parse().unwrap();
        assert_eq!(r.encode(Version::V0_4_0)["ips"][0]["version"], "6");
    }

    #[test]
    fn decodes_either_shape() {
        let old =
            json!({"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.2/24"}],"dns":{}});
        let new = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}],"dns":{}});
        assert_eq!(
            CniResult::decode(&old, Version::V1_0_0).unwrap(),
            CniResult::decode(&new, Version::V0_3_1).unwrap()
        );
    }

    #[test]
    fn keeps_unknown_keys() {
        let v = json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","x-vendor":1}],"custom":{"a":1}});
        let r = CniResult::decode(&v, Version::V1_0_0).unwrap();
        let out = r.encode(Version::V1_0_0);
        assert_eq!(out["custom"], json!({"a":1}));
        assert_eq!(out["interfaces"][0]["x-vendor"], 1);
    }

    /// Found by the `netconf` fuzz target: serde_json's default float parser is not correctly
    /// rounded, so a number a chained plugin read, printed and the next one read again drifted
    /// by one ulp per hop. The workspace enables serde_json's `float_roundtrip`.
    #[test]
    fn unknown_numbers_pass_through_a_chain_unchanged() {
        let text = r#"{"cniVersion":"1.0.0","dns":{},"x-vendor":888888888888888888888888888888888888888888888888888888888888888888888881401}"#;
        let r = CniResult::decode(&serde_json::from_str(text).unwrap(), Version::V1_0_0).unwrap();
        let printed = serde_json::to_string(&r.encode(Version::V1_0_0)).unwrap();
        let next = serde_json::from_str(&printed).unwrap();
        assert_eq!(CniResult::decode(&next, Version::V1_0_0).unwrap(), r);
    }

    #[test]
    fn refuses_old_results_and_bad_indexes() {
        let v020 = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}});
        assert_eq!(
            CniResult::decode(&v020, Version::V1_0_0).unwrap_err().code,
            1
        );
        let bad_index =
            json!({"interfaces":[{"name":"eth0"}],"ips":[{"interface":1,"address":"10.0.0.2/24"}]});
        assert_eq!(
            CniResult::decode(&bad_index, Version::V1_0_0)
                .unwrap_err()
                .code,
            7
        );
        let bogus = json!({"ips":[{"address":"bogus"}]});
        assert_eq!(
            CniResult::decode(&bogus, Version::V1_0_0).unwrap_err().code,
            6
        );
        let bare = json!({"ips":[{"address":"10.0.0.2"}]});
        assert_eq!(
            CniResult::decode(&bare, Version::V1_0_0).unwrap_err().code,
            6
        );
    }
}
