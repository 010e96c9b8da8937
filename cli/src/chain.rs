//! Putting kmesh-cni into the node's primary CNI network, keeping it there, and taking it out.
//!
//! The primary is what libcni and containerd pick: the lexically first `*.conf`, `*.conflist`
//! or `*.json` in the conf dir. A `.conflist` gets kmesh-cni appended as its last plugin
//! ([`crate::splice`]: only the entry's bytes are added). A `.conf`/`.json` holds one plugin
//! and runtimes read it as a single config, so it is upgraded: `<stem>.conflist` is written
//! with the original object as the first plugin (as libcni's `ConfListFromConf` would build
//! it) plus kmesh-cni, and the original is renamed to `<name>.weft_bak` (which no loader reads).
//! With no primary at all, weft writes its own default conflist (reference `bridge` +
//! `weft-ipam`, then kmesh-cni) declaring only versions every plugin in it answers to.
//!
//! A file that is not valid JSON (truncated, half-written) or not a config is never written:
//! the error says why and the file is left as it is.

use crate::fsx::{self, Attrs};
use crate::node::{Chained, Manifest, Node};
use crate::splice;
use crate::versions;
use anyhow::{anyhow, bail, Context, Result};
use conf::Version;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Extensions libcni loads.
pub const EXTENSIONS: &[&str] = &["conf", "conflist", "json"];
/// What an upgraded single config is renamed to.
pub const BACKUP_SUFFIX: &str = ".weft_bak";
/// weft's default conflist: sorts after every usual primary, so a primary CNI installed later
/// wins (and gets kmesh-cni chained into it).
pub const DEFAULT_FILE: &str = "99-weft.conflist";
pub const DEFAULT_NETWORK: &str = "weft";

/// Options of the default conflist.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub subnet: String,
    pub bridge: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            subnet: "10.85.0.0/16".into(),
            bridge: "weft0".into(),
        }
    }
}

/// Every config file libcni would consider, sorted as it sorts them.
pub fn config_files(conf_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("list {}", conf_dir.display())),
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e))
                && p.is_file()
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The primary config: the lexically first config file.
pub fn primary(conf_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(config_files(conf_dir)?.into_iter().next())
}

fn is_list_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "conflist")
}

/// A config file as read: bytes, text and the parsed value.
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub value: Value,
    pub attrs: Attrs,
}

/// Reads and validates a config file; a file that is not a usable config is an error that says
/// why, and nothing is written.
pub fn load(path: &Path) -> Result<Loaded> {
    // Write through a symlink to the file it names (Cilium and others link their config).
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow!("{} is not UTF-8 text; not touching it", path.display()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{} is not valid JSON ({e}){}; not touching it",
            path.display(),
            if e.is_eof() {
                ": truncated or still being written"
            } else {
                ""
            }
        )
    })?;
    validate(&path, &value)?;
    let attrs = Attrs::of(&path).unwrap_or(Attrs::root(0o644));
    Ok(Loaded {
        path,
        text,
        value,
        attrs,
    })
}

fn validate(path: &Path, v: &Value) -> Result<()> {
    let bad = |why: &str| Err(anyhow!("{} {why}; not touching it", path.display()));
    let Some(obj) = v.as_object() else {
        return bad("is not a JSON object");
    };
    if !obj.get("name").is_some_and(Value::is_string) {
        return bad("has no network name");
    }
    if is_list_file(path) {
        match obj.get("plugins").and_then(Value::as_array) {
            Some(p) if !p.is_empty() && p.iter().all(|x| x["type"].is_string()) => Ok(()),
            _ => bad("has no plugins list whose every entry has a type"),
        }
    } else if obj.get("type").is_some_and(Value::is_string) {
        Ok(())
    } else if obj.contains_key("plugins") {
        bad("holds a plugin list, but runtimes read a .conf/.json file as a single plugin")
    } else {
        bad("has no plugin type")
    }
}

/// Where kmesh-cni sits in a conflist value, if anywhere.
pub fn kmesh_index(list: &Value) -> Option<usize> {
    list["plugins"]
        .as_array()?
        .iter()
        .position(|p| p["type"] == kmesh_cni::PLUGIN_NAME)
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// kmesh-cni already in the primary: nothing written.
    Present(PathBuf),
    Inserted(PathBuf),
    Upgraded {
        from: PathBuf,
        to: PathBuf,
    },
    DefaultWritten(PathBuf),
}

impl Outcome {
    pub fn path(&self) -> &Path {
        match self {
            Outcome::Present(p) | Outcome::Inserted(p) | Outcome::DefaultWritten(p) => p,
            Outcome::Upgraded { to, .. } => to,
        }
    }

    pub fn changed(&self) -> bool {
        !matches!(self, Outcome::Present(_))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Present(p) => write!(f, "kmesh-cni already chained in {}", p.display()),
            Outcome::Inserted(p) => write!(f, "kmesh-cni appended to {}", p.display()),
            Outcome::Upgraded { from, to } => write!(
                f,
                "{} upgraded to {} with kmesh-cni (original kept as {}{BACKUP_SUFFIX})",
                from.display(),
                to.display(),
                from.file_name().unwrap_or_default().to_string_lossy()
            ),
            Outcome::DefaultWritten(p) => {
                write!(
                    f,
                    "no primary CNI config: wrote weft's default {}",
                    p.display()
                )
            }
        }
    }
}

/// Where to chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The primary; weft's default conflist when there is none (and `default` allows it).
    Auto {
        default: bool,
    },
    File(PathBuf),
}

/// No primary config exists (and no default may be written).
#[derive(Debug)]
pub struct NoPrimary(pub PathBuf);

impl std::fmt::Display for NoPrimary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no CNI config (*.conf, *.conflist, *.json) in {}",
            self.0.display()
        )
    }
}
impl std::error::Error for NoPrimary {}

/// Makes sure kmesh-cni is the last plugin of the target network, recording in `manifest` what
/// was written. Idempotent: when the chain is in place nothing is written.
pub fn ensure(
    node: &Node,
    target: &Target,
    defaults: &Defaults,
    manifest: &mut Manifest,
) -> Result<Outcome> {
    let entry = manifest.entry.clone().unwrap_or_else(|| node.entry());
    let path = match target {
        Target::File(f) if f.is_absolute() => f.clone(),
        Target::File(f) => node.conf_dir.join(f),
        Target::Auto { default } => match primary(&node.conf_dir)? {
            Some(p) => p,
            None if *default => {
                let path = write_default(node, defaults, &entry)?;
                manifest.record_chain(Chained::Default { path: path.clone() });
                return Ok(Outcome::DefaultWritten(path));
            }
            None => return Err(NoPrimary(node.conf_dir.clone()).into()),
        },
    };
    let loaded = load(&path)?;
    if is_list_file(&loaded.path) {
        if kmesh_index(&loaded.value).is_some() {
            return Ok(Outcome::Present(loaded.path));
        }
        check_versions(node, &loaded.value)?;
        let text = splice::append(&loaded.text, &entry)
            .ok_or_else(|| anyhow!("{}: no plugins list to append to", loaded.path.display()))?;
        verify_append(&loaded.value, &text, &entry)?;
        commit(&loaded, &text)?;
        manifest.record_chain(Chained::Spliced {
            path: loaded.path.clone(),
        });
        Ok(Outcome::Inserted(loaded.path))
    } else {
        upgrade(node, &loaded, &entry, manifest)
    }
}

/// kmesh-cni must speak every version a runtime may resolve the list to.
fn check_versions(node: &Node, list: &Value) -> Result<()> {
    let kmesh = fsx::find_in(&node.plugin_dirs, kmesh_cni::PLUGIN_NAME).ok_or_else(|| {
        anyhow!(
            "kmesh-cni is not in {}: install the binaries first",
            node.bin_dir.display()
        )
    })?;
    let speaks = versions::ask(&kmesh)?;
    for (what, v) in versions::effective(list) {
        match v {
            Some(v) if speaks.contains(&v) => {}
            _ => bail!(
                "the primary config declares {what}, which kmesh-cni does not support ({}); not touching it",
                speaks.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    // The primary's own plugins are its business, but a mismatch breaks every pod: say so.
    let plugins: Vec<Value> = list["plugins"].as_array().cloned().unwrap_or_default();
    for answer in versions::ask_all(&versions::types_of(&plugins), &node.plugin_dirs) {
        if let Ok(vs) = &answer.versions {
            for (what, v) in versions::effective(list) {
                if let Some(v) = v {
                    if !vs.contains(&v) {
                        tracing::warn!(
                            plugin = %answer.plugin_type,
                            "the primary config declares {what}, which its plugin {} does not support: runtimes will fail ADD",
                            answer.plugin_type
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The new text must parse, equal the old list plus exactly our entry at the end.
fn verify_append(old: &Value, new_text: &str, entry: &Value) -> Result<()> {
    let new: Value =
        serde_json::from_str(new_text).context("the chained config does not parse (bug)")?;
    let mut expected = old.clone();
    expected["plugins"]
        .as_array_mut()
        .expect("validated list")
        .push(entry.clone());
    if new != expected {
        bail!("the chained config differs from the original plus kmesh-cni (bug); not writing");
    }
    Ok(())
}

/// Writes `text` over the loaded file, unless the file changed since it was read (the primary
/// CNI rewrote it meanwhile: the caller tries again on the new content).
fn commit(loaded: &Loaded, text: &str) -> Result<()> {
    let now = std::fs::read(&loaded.path).ok();
    if now.as_deref() != Some(loaded.text.as_bytes()) {
        bail!(
            "{} changed while weft was editing it; will retry",
            loaded.path.display()
        );
    }
    // Atomic: readers see the old or the new file. No read-back: a primary CNI that writes
    // again right after us is not our failure (the agent's inotify sees that write and looks
    // again); treating it as one under-counted re-chains and logged a false error.
    fsx::write_atomic(&loaded.path, text.as_bytes(), loaded.attrs)
}

fn upgrade(
    node: &Node,
    loaded: &Loaded,
    entry: &Value,
    manifest: &mut Manifest,
) -> Result<Outcome> {
    let original = loaded.path.clone();
    let stem = original
        .file_stem()
        .ok_or_else(|| anyhow!("{} has no name", original.display()))?
        .to_string_lossy()
        .into_owned();
    let to = original.with_file_name(format!("{stem}.conflist"));
    let backup = original.with_file_name(format!(
        "{}{BACKUP_SUFFIX}",
        original.file_name().unwrap_or_default().to_string_lossy()
    ));
    if to.exists() {
        let ours = manifest.chained.iter().any(|c| c.path() == to);
        if !ours {
            bail!(
                "cannot upgrade {} to a conflist: {} exists and is not weft's; not touching either",
                original.display(),
                to.display()
            );
        }
    }
    // As libcni's ConfListFromConf: the single config becomes the first plugin as it is.
    let mut list = json!({
        "cniVersion": loaded.value["cniVersion"].clone(),
        "name": loaded.value["name"].clone(),
        "plugins": [loaded.value.clone(), entry.clone()],
    });
    if loaded.value.get("cniVersion").is_none() {
        list.as_object_mut().expect("object").remove("cniVersion");
    }
    check_versions(node, &list)?;
    let mut text = serde_json::to_string_pretty(&list).expect("plain JSON");
    text.push('\n');
    let _ = node;
    fsx::write_atomic(&to, text.as_bytes(), loaded.attrs)?;
    // The original goes aside only after its replacement is complete: a reader always finds a
    // usable config. rename keeps its bytes, mode and owner for uninstall.
    std::fs::rename(&original, &backup)
        .with_context(|| format!("rename {} to {}", original.display(), backup.display()))?;
    fsx::sync_dir(node.conf_dir.as_path()).ok();
    manifest.record_chain(Chained::Upgraded {
        path: to.clone(),
        original: original.clone(),
        backup,
    });
    Ok(Outcome::Upgraded { from: original, to })
}

/// weft's default conflist, declaring only the versions every plugin in it answered with.
fn write_default(node: &Node, d: &Defaults, entry: &Value) -> Result<PathBuf> {
    let path = node.conf_dir.join(DEFAULT_FILE);
    let plugins = vec![
        json!({
            "type": "bridge",
            "bridge": d.bridge,
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "weft-ipam",
                "range": d.subnet,
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }),
        entry.clone(),
    ];
    let answers = versions::ask_all(&versions::types_of(&plugins), &node.plugin_dirs);
    let common = versions::common(&answers)
        .context("cannot write weft's default conflist: every plugin in it must answer VERSION")?;
    let newest =
        common.iter().max().copied().ok_or_else(|| {
            anyhow!("the plugins of weft's default conflist share no CNI version")
        })?;
    let list: Vec<&str> = common
        .iter()
        .filter(|v| **v >= Version::V0_4_0)
        .map(|v| v.as_str())
        .collect();
    let value = json!({
        "cniVersion": newest.as_str(),
        "cniVersions": list,
        "name": DEFAULT_NETWORK,
        "plugins": plugins,
    });
    let mut text = serde_json::to_string_pretty(&value).expect("plain JSON");
    text.push('\n');
    std::fs::create_dir_all(&node.conf_dir)
        .with_context(|| format!("create {}", node.conf_dir.display()))?;
    if fsx::read_optional(&path)?.as_deref() != Some(text.as_bytes()) {
        fsx::write_atomic(&path, text.as_bytes(), Attrs::root(0o644))?;
    }
    Ok(path)
}

/// Undoes one chain record. Returns what was done, for the report.
pub fn undo(c: &Chained, entry: &Value) -> Result<String> {
    match c {
        Chained::Spliced { path } => {
            let Some(bytes) = fsx::read_optional(path)? else {
                return Ok(format!("{}: gone, nothing to remove", path.display()));
            };
            let loaded = load(path)?;
            let _ = bytes;
            let plugins = loaded.value["plugins"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let Some(i) = plugins.iter().rposition(|p| p == entry) else {
                return Ok(format!(
                    "{}: no kmesh-cni entry of weft's left (the primary rewrote it)",
                    path.display()
                ));
            };
            let text = splice::remove(&loaded.text, i)
                .ok_or_else(|| anyhow!("{}: cannot remove plugin {i}", path.display()))?;
            let check: Value = serde_json::from_str(&text)
                .context("the config without kmesh-cni does not parse (bug)")?;
            let mut expected = loaded.value.clone();
            expected["plugins"].as_array_mut().expect("list").remove(i);
            if check != expected {
                bail!(
                    "{}: removal would change more than the entry (bug)",
                    path.display()
                );
            }
            commit(&loaded, &text)?;
            Ok(format!("{}: kmesh-cni entry removed", path.display()))
        }
        Chained::Upgraded {
            path,
            original,
            backup,
        } => {
            let mut done = Vec::new();
            if backup.exists() {
                if original.exists() {
                    // The primary CNI wrote a newer config meanwhile: that one stays.
                    fsx::remove_file(backup)?;
                    done.push(format!(
                        "{} dropped (a newer {} exists)",
                        backup.display(),
                        original.display()
                    ));
                } else {
                    std::fs::rename(backup, original).with_context(|| {
                        format!("rename {} to {}", backup.display(), original.display())
                    })?;
                    done.push(format!("{} restored", original.display()));
                }
            }
            if fsx::remove_file(path)? {
                done.push(format!("{} removed", path.display()));
            }
            Ok(done.join(", "))
        }
        Chained::Default { path } => {
            if fsx::remove_file(path)? {
                Ok(format!("{} removed", path.display()))
            } else {
                Ok(format!("{}: already gone", path.display()))
            }
        }
    }
}

/// Is the chain in place: the primary (or weft's default) carries kmesh-cni?
pub fn status(node: &Node) -> Result<(PathBuf, bool)> {
    let p = primary(&node.conf_dir)?.ok_or_else(|| NoPrimary(node.conf_dir.clone()))?;
    let loaded = load(&p)?;
    let present = is_list_file(&loaded.path) && kmesh_index(&loaded.value).is_some();
    Ok((loaded.path, present))
}
