//! The `CNI_*` environment: which verb, for which container, and validation of everything that
//! later becomes part of a file name.

use crate::error::{Error, Result};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(Error::invalid_env(format!(
                    "unknown CNI_COMMAND: {other:?}"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// Which variables a verb cannot run without (libcni's skel table, extended for 1.1.0).
    fn requires(self, var: &str) -> bool {
        use Command::*;
        match var {
            "CNI_CONTAINERID" | "CNI_IFNAME" => matches!(self, Add | Del | Check),
            "CNI_NETNS" => matches!(self, Add | Check),
            "CNI_PATH" => matches!(self, Add | Del | Check | Gc),
            _ => false,
        }
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Unknown keys are always tolerated (runtimes send `K8S_POD_*` and
/// `IgnoreUnknown` to everyone); a pair without `=` is a runtime bug and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<CniArgs> {
        let mut pairs = Vec::new();
        for item in s.split(';').filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Error::invalid_env(format!("CNI_ARGS: invalid pair {item:?}")))?;
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok(CniArgs { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

/// The validated environment of one exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// Empty for VERSION, STATUS and GC.
    pub container_id: String,
    pub netns: Option<PathBuf>,
    /// Empty for VERSION, STATUS and GC.
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and validates the environment through `get` (so tests need not touch the process
    /// env). Empty strings count as absent, as in libcni.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command_str = var("CNI_COMMAND")
            .ok_or_else(|| Error::invalid_env("required env variable CNI_COMMAND missing"))?;
        let command = Command::parse(&command_str)?;
        let missing: Vec<&str> = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            .into_iter()
            .filter(|name| command.requires(name) && var(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid_env(format!(
                "required env variables [{}] missing for {}",
                missing.join(","),
                command.as_str()
            )));
        }
        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        let ifname = var("CNI_IFNAME").unwrap_or_default();
        if command.requires("CNI_CONTAINERID") {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let path = var("CNI_PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .filter(|d| !d.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns: var("CNI_NETNS").map(PathBuf::from),
            ifname,
            args: CniArgs::parse(&var("CNI_ARGS").unwrap_or_default())?,
            path,
        })
    }
}

/// libcni's container ID rule `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, which also rules out `/`, `..`
/// as a whole name, and a leading `-` or `.`.
pub(crate) fn is_valid_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn validate_container_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid_env("missing containerID"));
    }
    if !is_valid_id(id) {
        return Err(Error::invalid_env(format!(
            "invalid characters in containerID {id:?}"
        )));
    }
    Ok(())
}

/// libcni's rule for network names (the same characters as container IDs): they become
/// directory names and etcd key segments. Code 7: a name comes from the config.
pub fn validate_network_name(name: &str) -> Result<()> {
    if is_valid_id(name) {
        Ok(())
    } else {
        Err(Error::invalid_config(format!(
            "invalid network name {name:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )))
    }
}

/// Linux interface names: 1..=15 bytes (IFNAMSIZ - 1), not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    const IFNAMSIZ: usize = 16;
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() >= IFNAMSIZ {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(Error::invalid_env(format!("interface name {name:?} {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| map.get(k).cloned())
    }

    const FULL: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn full_add() {
        let e = env(&FULL).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn each_required_var_per_verb() {
        for (cmd, required) in [
            (
                "ADD",
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"][..],
            ),
            (
                "CHECK",
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"][..],
            ),
            ("DEL", &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"][..]),
            ("GC", &["CNI_PATH"][..]),
        ] {
            for missing in required {
                for blank in [true, false] {
                    let vars: Vec<(&str, &str)> = FULL
                        .iter()
                        .map(|&(k, v)| if k == "CNI_COMMAND" { (k, cmd) } else { (k, v) })
                        .filter(|(k, _)| blank || k != missing)
                        .map(|(k, v)| {
                            if blank && k == *missing {
                                (k, "")
                            } else {
                                (k, v)
                            }
                        })
                        .collect();
                    assert_eq!(env(&vars).unwrap_err().code, 4, "{cmd} without {missing}");
                }
            }
        }
        let del_without_netns: Vec<_> = FULL
            .iter()
            .map(|&(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert!(env(&del_without_netns).unwrap().netns.is_none());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
    }

    #[test]
    fn ids_and_ifnames() {
        for bad in ["../x", "a/b", "-x", ".", "..", "a b", ""] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
        assert!(validate_container_id("cnitool-0123abc_x.y-z").is_ok());
        for bad in ["", ".", "..", "a/b", "eth0:1", "eth 0", "0123456789abcdef"] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, 4, "{bad}");
        }
        assert!(validate_ifname("0123456789abcde").is_ok());
    }

    #[test]
    fn cni_args() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5").unwrap();
        assert_eq!(a.get("K8S_POD_NAME"), Some("web"));
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert_eq!(CniArgs::parse("FOO").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("=x").unwrap_err().code, 4);
        assert!(CniArgs::parse("").unwrap().pairs().is_empty());
    }
}
