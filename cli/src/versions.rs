//! Which CNI spec versions a plugin binary speaks, asked the way libcni asks (VERSION with
//! `{"cniVersion":"1.1.0"}` on stdin), and the versions a whole conflist may declare.

use crate::fsx;
use anyhow::{bail, Context, Result};
use conf::Version;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Every version weft knows, oldest first.
pub fn known() -> BTreeSet<Version> {
    conf::version::supported_versions()
        .into_iter()
        .filter_map(|v| Version::parse(v).ok())
        .collect()
}

/// The versions `bin` says it supports (only those weft knows; a plugin may list older ones).
pub fn ask(bin: &Path) -> Result<BTreeSet<Version>> {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "VERSION")
        // libcni fills the other variables with "dummy" for VERSION.
        .env("CNI_CONTAINERID", "dummy")
        .env("CNI_NETNS", "dummy")
        .env("CNI_IFNAME", "dummy")
        .env("CNI_PATH", "dummy");
    let ran = fsx::run_bounded(
        &mut cmd,
        br#"{"cniVersion":"1.1.0"}"#,
        Duration::from_secs(5),
    )
    .with_context(|| format!("VERSION of {}", bin.display()))?;
    if !ran.ok {
        bail!(
            "VERSION of {} failed: {}{}",
            bin.display(),
            ran.stdout.trim(),
            ran.stderr.trim()
        );
    }
    let v: serde_json::Value = serde_json::from_str(ran.stdout.trim())
        .with_context(|| format!("VERSION of {} is not JSON: {:?}", bin.display(), ran.stdout))?;
    let list = v["supportedVersions"]
        .as_array()
        .with_context(|| format!("VERSION of {} lists no supportedVersions", bin.display()))?;
    Ok(list
        .iter()
        .filter_map(|s| s.as_str())
        .filter_map(|s| Version::parse(s).ok())
        .collect())
}

/// One plugin type of a conflist and what it answered.
#[derive(Debug, Clone)]
pub struct PluginVersions {
    pub plugin_type: String,
    pub binary: Option<PathBuf>,
    pub versions: Result<BTreeSet<Version>, String>,
}

/// Asks every plugin type (and IPAM delegate) in `types`, found in `dirs`.
pub fn ask_all(types: &[String], dirs: &[PathBuf]) -> Vec<PluginVersions> {
    types
        .iter()
        .map(|t| {
            let binary = fsx::find_in(dirs, t);
            let versions = match &binary {
                Some(b) => ask(b).map_err(|e| format!("{e:#}")),
                None => Err(format!(
                    "{t} not found in {}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                )),
            };
            PluginVersions {
                plugin_type: t.clone(),
                binary,
                versions,
            }
        })
        .collect()
}

/// The versions every answer shares; an error naming the plugins that could not be asked.
pub fn common(answers: &[PluginVersions]) -> Result<BTreeSet<Version>> {
    let mut all = known();
    let mut problems = Vec::new();
    for a in answers {
        match &a.versions {
            Ok(v) => all = all.intersection(v).copied().collect(),
            Err(e) => problems.push(e.clone()),
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(all)
}

/// Every plugin type a conflist runs: each plugin's `type` and its `ipam.type`, in order,
/// without duplicates.
pub fn types_of(plugins: &[serde_json::Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in plugins {
        for t in [p["type"].as_str(), p["ipam"]["type"].as_str()]
            .into_iter()
            .flatten()
        {
            if !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
    }
    out
}

/// The version a runtime resolves a conflist to: libcni >= 1.2 takes the newest entry of
/// `cniVersions` it speaks (we speak up to 1.1.0), older ones read `cniVersion`.
pub fn effective(list: &serde_json::Value) -> Vec<(String, Option<Version>)> {
    let mut out = Vec::new();
    if let Some(v) = list["cniVersion"].as_str() {
        out.push((format!("cniVersion {v}"), Version::parse(v).ok()));
    } else {
        out.push(("no cniVersion (0.1.0)".to_string(), None));
    }
    if let Some(vs) = list["cniVersions"].as_array() {
        let newest = vs
            .iter()
            .filter_map(|v| v.as_str())
            .filter_map(|v| Version::parse(v).ok())
            .max();
        if let Some(n) = newest {
            out.push((format!("cniVersions newest {n}"), Some(n)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_include_ipam_delegates_once() {
        let plugins = vec![
            json!({"type":"bridge","ipam":{"type":"weft-ipam"}}),
            json!({"type":"portmap"}),
            json!({"type":"bridge"}),
        ];
        assert_eq!(types_of(&plugins), ["bridge", "weft-ipam", "portmap"]);
    }

    #[test]
    fn effective_versions_of_both_fields() {
        let e = effective(&json!({"cniVersion":"1.0.0","cniVersions":["0.4.0","1.1.0","9.9.9"]}));
        assert_eq!(e[0].1, Some(Version::V1_0_0));
        assert_eq!(e[1].1, Some(Version::V1_1_0));
        assert_eq!(effective(&json!({}))[0].1, None);
    }
}
