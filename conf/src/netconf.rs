//! Network configurations: one plugin's config as a runtime passes it on stdin (`NetConf`) and
//! the conflist files under /etc/cni/net.d (`NetConfList`).

use crate::error::{Error, Result};
use crate::result::{CniResult, Dns};
use crate::version::Version;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// One plugin's config. Plugin-specific keys stay in `raw` and are read with [`NetConf::plugin`];
/// unknown top-level keys (multus injects `deviceID`, `pciBusID`) are tolerated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub plugin_type: String,
    pub ipam: Option<Map<String, Value>>,
    pub dns: Option<Dns>,
    pub runtime_config: Map<String, Value>,
    pub capabilities: Map<String, Value>,
    pub args: Option<Value>,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub raw_prev_result: Option<Value>,
    pub raw: Map<String, Value>,
}

/// A `{containerID, ifname}` pair from a GC request's valid-attachments list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// GC keys: the spec's, and the one libcni also sends for plugins written against drafts.
const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
const LEGACY_ATTACHMENTS: &str = "cni.dev/attachments";

impl NetConf {
    /// Parses stdin. Malformed JSON is code 6; a bad or missing version code 1; a missing
    /// `name`/`type` or a mistyped well-known key code 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::decode(format!("network config is not valid JSON: {e}")))?;
        let Value::Object(raw) = value else {
            return Err(Error::decode("network config is not a JSON object"));
        };
        let cni_version = match raw.get("cniVersion") {
            None | Some(Value::Null) => Version::from_config_field(None)?,
            Some(Value::String(s)) => Version::parse(s)?,
            Some(_) => return Err(Error::decode("cniVersion is not a string")),
        };
        let name = required_string(&raw, "name")?;
        crate::env::validate_network_name(&name)?;
        let plugin_type = required_string(&raw, "type")?;
        if plugin_type.contains('/') || plugin_type == ".." || plugin_type == "." {
            return Err(Error::invalid_config(format!(
                "invalid plugin type {plugin_type:?}"
            )));
        }
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            ipam: optional_object(&raw, "ipam")?,
            dns: optional_typed(&raw, "dns")?,
            runtime_config: optional_object(&raw, "runtimeConfig")?.unwrap_or_default(),
            capabilities: optional_object(&raw, "capabilities")?.unwrap_or_default(),
            args: raw.get("args").cloned(),
            disable_check: optional_bool(&raw, "disableCheck")?,
            disable_gc: optional_bool(&raw, "disableGC")?,
            raw_prev_result: raw.get("prevResult").filter(|v| !v.is_null()).cloned(),
            raw,
        })
    }

    /// Decodes the plugin-specific keys of the config into the plugin's own type.
    pub fn plugin<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.raw.clone()))
            .map_err(|e| Error::invalid_config(format!("invalid {} config: {e}", self.plugin_type)))
    }

    /// Decodes the `ipam` section (code 7 when it is missing or malformed).
    pub fn ipam_section<T: DeserializeOwned>(&self) -> Result<T> {
        let ipam = self
            .ipam
            .as_ref()
            .ok_or_else(|| Error::invalid_config("config has no ipam section"))?;
        serde_json::from_value(Value::Object(ipam.clone()))
            .map_err(|e| Error::invalid_config(format!("invalid ipam config: {e}")))
    }

    /// The `ipam.type`, i.e. the delegate to exec.
    pub fn ipam_type(&self) -> Result<&str> {
        self.ipam
            .as_ref()
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && !t.contains('/'))
            .ok_or_else(|| Error::invalid_config("ipam section has no valid type"))
    }

    /// The previous plugin's result, decoded (it is passed raw by libcni, in whatever shape the
    /// previous plugin printed).
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        self.raw_prev_result
            .as_ref()
            .map(|v| CniResult::decode(v, self.cni_version))
            .transpose()
    }

    /// GC's list of attachments to keep. Absent means "keep nothing" per the spec; each entry
    /// must have both fields.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>> {
        let list = self
            .raw
            .get(VALID_ATTACHMENTS)
            .or_else(|| self.raw.get(LEGACY_ATTACHMENTS));
        match list {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::invalid_config(format!("invalid {VALID_ATTACHMENTS}: {e}"))),
        }
    }

    /// GC's attachments to keep, as keys of this network (GC is scoped to the network it is
    /// called for). An entry whose container ID or ifname could not be a key is code 7.
    pub fn valid_attachment_keys(&self) -> Result<std::collections::HashSet<crate::AttachmentKey>> {
        self.valid_attachments()?
            .into_iter()
            .map(|a| {
                crate::AttachmentKey::new(&self.name, &a.container_id, &a.ifname).map_err(|e| {
                    Error::invalid_config(format!("invalid {VALID_ATTACHMENTS} entry: {}", e.msg))
                })
            })
            .collect()
    }

    /// A runtimeConfig capability value, if the runtime passed it.
    pub fn runtime<T: DeserializeOwned>(&self, capability: &str) -> Result<Option<T>> {
        match self.runtime_config.get(capability) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                Error::invalid_config(format!("invalid runtimeConfig.{capability}: {e}"))
            }),
        }
    }
}

/// A conflist from /etc/cni/net.d.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfList {
    pub cni_version: Version,
    /// 1.1.0: every version the file is valid for; runtimes pick the newest they speak.
    pub cni_versions: Vec<Version>,
    pub name: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<Map<String, Value>>,
}

impl NetConfList {
    pub fn parse(bytes: &[u8]) -> Result<NetConfList> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::decode(format!("conflist is not valid JSON: {e}")))?;
        let Value::Object(raw) = value else {
            return Err(Error::decode("conflist is not a JSON object"));
        };
        let cni_versions: Vec<Version> = match raw.get("cniVersions") {
            None => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                // A file may list versions newer than we speak: ignore those, as libcni does.
                .filter_map(|s| Version::parse(s).ok())
                .collect(),
            Some(_) => return Err(Error::invalid_config("cniVersions is not an array")),
        };
        // As libcni >= 1.2 does: the newest entry of `cniVersions` we speak wins over `cniVersion`.
        let cni_version = match (cni_versions.iter().max(), raw.get("cniVersion")) {
            (Some(newest), _) => *newest,
            (None, Some(Value::String(s))) => Version::parse(s)?,
            (None, _) => {
                return Err(Error::incompatible_version(
                    "conflist has no usable cniVersion",
                ))
            }
        };
        let name = required_string(&raw, "name")?;
        crate::env::validate_network_name(&name)?;
        let plugins: Vec<Map<String, Value>> = match raw.get("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list
                .iter()
                .map(|p| match p {
                    Value::Object(o) if o.get("type").and_then(Value::as_str).is_some() => {
                        Ok(o.clone())
                    }
                    _ => Err(Error::invalid_config(
                        "every plugin needs an object with a type",
                    )),
                })
                .collect::<Result<_>>()?,
            _ => return Err(Error::invalid_config("conflist has no plugins")),
        };
        Ok(NetConfList {
            cni_version,
            cni_versions,
            name,
            disable_check: optional_bool(&raw, "disableCheck")?,
            disable_gc: optional_bool(&raw, "disableGC")?,
            plugins,
        })
    }

    /// The config a runtime would put on plugin `index`'s stdin: the plugin's keys plus the
    /// list's `name` and `cniVersion` (as libcni builds it; `prevResult` is added per call).
    pub fn plugin_conf(&self, index: usize) -> Option<Map<String, Value>> {
        let mut conf = self.plugins.get(index)?.clone();
        conf.insert("name".into(), self.name.clone().into());
        conf.insert("cniVersion".into(), self.cni_version.as_str().into());
        Some(conf)
    }
}

fn required_string(raw: &Map<String, Value>, key: &str) -> Result<String> {
    match raw.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(Error::invalid_config(format!("missing network {key}")))
        }
        Some(_) => Err(Error::invalid_config(format!("{key} is not a string"))),
    }
}

fn optional_object(raw: &Map<String, Value>, key: &str) -> Result<Option<Map<String, Value>>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(_) => Err(Error::invalid_config(format!("{key} is not an object"))),
    }
}

fn optional_typed<T: DeserializeOwned>(raw: &Map<String, Value>, key: &str) -> Result<Option<T>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| Error::invalid_config(format!("invalid {key}: {e}"))),
    }
}

/// `disableCheck` is the string "true" in the spec text and a bool in practice: accept both.
fn optional_bool(raw: &Map<String, Value>, key: &str) -> Result<bool> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| Error::invalid_config(format!("{key} must be true or false, not {s:?}"))),
        Some(_) => Err(Error::invalid_config(format!("{key} must be a boolean"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn minimal_and_unknown_keys() {
        let c = parse(json!({"cniVersion":"1.0.0","name":"n","type":"t","deviceID":"0000:01:00.1","pciBusID":"x"}))
            .unwrap();
        assert_eq!(c.cni_version, Version::V1_0_0);
        assert_eq!(c.raw["deviceID"], "0000:01:00.1");
        assert!(c.prev_result().unwrap().is_none());
    }

    #[test]
    fn error_codes() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        assert_eq!(parse(json!({"name":"n","type":"t"})).unwrap_err().code, 1);
        assert_eq!(
            parse(json!({"cniVersion":"0.2.0","name":"n","type":"t"}))
                .unwrap_err()
                .code,
            1
        );
        assert_eq!(
            parse(json!({"cniVersion":"1.0.0","type":"t"}))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            parse(json!({"cniVersion":"1.0.0","name":"n"}))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            parse(json!({"cniVersion":"1.0.0","name":"../n","type":"t"}))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            parse(json!({"cniVersion":"1.0.0","name":"n","type":"t","disableCheck":"maybe"}))
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn disable_check_bool_or_string() {
        for v in [json!(true), json!("true")] {
            let c = parse(json!({"cniVersion":"1.0.0","name":"n","type":"t","disableCheck":v}))
                .unwrap();
            assert!(c.disable_check);
        }
    }

    #[test]
    fn gc_attachments_both_keys() {
        let a = json!([{"containerID":"c1","ifname":"eth0"}]);
        for key in [VALID_ATTACHMENTS, LEGACY_ATTACHMENTS] {
            let c =
                parse(json!({"cniVersion":"1.1.0","name":"n","type":"t", key: a.clone()})).unwrap();
            assert_eq!(c.valid_attachments().unwrap()[0].container_id, "c1");
        }
    }

    #[test]
    fn conflist_versions() {
        let l = NetConfList::parse(
            json!({"cniVersions":["1.0.0","1.1.0","9.9.9"],"name":"n","plugins":[{"type":"bridge"}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(l.cni_version, Version::V1_1_0);
        assert_eq!(l.cni_versions, vec![Version::V1_0_0, Version::V1_1_0]);
        assert_eq!(l.plugin_conf(0).unwrap()["cniVersion"], "1.1.0");
    }
}
