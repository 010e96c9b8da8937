//! CNI spec versions weft speaks, and what each one allows.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A spec version weft implements. Ordered oldest to newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const NEWEST: Version = Version::V1_1_0;
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// Parses a version string. Anything we do not implement (0.1.0, 0.2.0, a future 2.0.0,
    /// garbage) is the spec's "incompatible CNI version" (code 1), with the list we do speak.
    pub fn parse(s: &str) -> Result<Version> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                Error::incompatible_version(format!("incompatible CNI version {s:?}")).with_details(
                    format!(
                        "supported versions: {}",
                        Version::ALL.map(Version::as_str).join(", ")
                    ),
                )
            })
    }

    /// Parses the `cniVersion` of a config; an absent one means 0.1.0 by the spec, which we reject.
    pub fn from_config_field(field: Option<&str>) -> Result<Version> {
        match field {
            Some(s) => Version::parse(s),
            None => Err(Error::incompatible_version(
                "config has no cniVersion, which the spec reads as 0.1.0; weft supports 0.3.0 and later",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK arrived in 0.4.0.
    pub fn supports_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC arrived in 1.1.0.
    pub fn supports_gc_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// `ips[].version` ("4"/"6") is part of the result up to 0.4.0 and removed in 1.0.0.
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// Interface `mtu`, `socketPath`, `pciID` and route `mtu`, `advmss`, `priority`, `table`,
    /// `scope` exist from 1.1.0 on.
    pub fn has_1_1_fields(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The supported versions as the VERSION verb lists them.
pub fn supported_versions() -> Vec<&'static str> {
    Version::ALL.iter().map(|v| v.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code;

    #[test]
    fn parses_every_supported_version() {
        for v in Version::ALL {
            assert_eq!(Version::parse(v.as_str()).unwrap(), v);
        }
    }

    #[test]
    fn rejects_unsupported_with_code_1() {
        for s in ["0.1.0", "0.2.0", "2.0.0", "abc", "", "1.0"] {
            assert_eq!(
                Version::parse(s).unwrap_err().code,
                code::INCOMPATIBLE_VERSION,
                "{s}"
            );
        }
        assert_eq!(
            Version::from_config_field(None).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
    }

    #[test]
    fn verb_gates() {
        assert!(!Version::V0_3_1.supports_check());
        assert!(Version::V0_4_0.supports_check());
        assert!(!Version::V1_0_0.supports_gc_status());
        assert!(Version::V1_1_0.supports_gc_status());
        assert!(Version::V0_4_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_ip_version_field());
    }
}
