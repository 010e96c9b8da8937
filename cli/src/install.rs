//! `weft install` and `weft uninstall`.

use crate::chain::{self, Defaults, Outcome, Target};
use crate::fsx::{self, Attrs};
use crate::node::{Binary, Manifest, Node, PLUGINS};
use crate::state;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

/// What install should do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Where the plugin binaries to install are (the directory of the `weft` binary by default).
    pub source_dir: PathBuf,
    pub target: Target,
    pub defaults: Defaults,
}

/// One line of the install/uninstall report.
pub type Report = Vec<String>;

/// The directory holding the running `weft` binary.
pub fn own_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("where is the weft binary")?;
    Ok(exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?
        .to_path_buf())
}

/// Copies the plugin binaries in (atomically), then chains kmesh-cni. Binaries first: the chain
/// must never name a plugin the runtime cannot find.
pub fn install(node: &Node, opts: &InstallOptions) -> Result<(Report, Outcome)> {
    let mut report = install_binaries(node, opts)?;
    let mut manifest = Manifest::load(node)?.unwrap_or_default();
    let outcome = chain::ensure(node, &opts.target, &opts.defaults, &mut manifest);
    manifest.save(node)?;
    let outcome = outcome?;
    report.push(outcome.to_string());
    Ok((report, outcome))
}

/// The binaries part of [`install`] (the DaemonSet's init container runs only this).
pub fn install_binaries(node: &Node, opts: &InstallOptions) -> Result<Report> {
    let mut manifest = Manifest::load(node)?.unwrap_or_default();
    let mut report = Report::new();
    for p in [
        node.bin_dir.clone(),
        node.conf_dir.clone(),
        node.state_dir.clone(),
        node.weft_state(),
        node.kmesh_store().dir().to_path_buf(),
        node.ipam_dir(),
        node.pin_root.clone(),
    ] {
        manifest.note_absent(&p);
    }
    std::fs::create_dir_all(&node.bin_dir)
        .with_context(|| format!("create {}", node.bin_dir.display()))?;
    let mut found = 0;
    for name in PLUGINS {
        let src = opts.source_dir.join(name);
        if !src.is_file() {
            continue;
        }
        found += 1;
        report.push(install_binary(node, &mut manifest, name, &src)?);
    }
    if found == 0 {
        return Err(anyhow!(
            "no plugin binary ({}) in {}",
            PLUGINS.join(", "),
            opts.source_dir.display()
        ));
    }
    if manifest.entry.is_none() {
        manifest.entry = Some(node.entry());
    }
    manifest.save(node)?;
    Ok(report)
}

fn install_binary(node: &Node, manifest: &mut Manifest, name: &str, src: &Path) -> Result<String> {
    let bytes = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
    let dst = node.bin_dir.join(name);
    let print = fsx::fingerprint(&bytes);
    let current = fsx::read_optional(&dst)?;
    let known = manifest.binaries.iter().position(|b| b.name == name);
    if current.as_deref() == Some(&bytes[..]) {
        if known.is_none() {
            // Already there byte for byte (an earlier setup put it there): ours from now on,
            // nothing to restore on uninstall.
            manifest.binaries.push(Binary {
                name: name.into(),
                fingerprint: print,
                backup: None,
            });
        }
        return Ok(format!("{}: up to date", dst.display()));
    }
    let mut backup = known.and_then(|i| manifest.binaries[i].backup.clone());
    if let (Some(old), None) = (&current, known) {
        // Somebody else's file of that name: keep it for uninstall.
        let dir = node.weft_state().join("backup");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(name);
        let attrs = Attrs::of(&dst).unwrap_or(Attrs::root(0o755));
        fsx::write_atomic(&path, old, attrs)?;
        backup = Some(path);
    }
    fsx::write_atomic(&dst, &bytes, Attrs::root(0o755))?;
    fsx::drop_cached(&dst);
    let entry = Binary {
        name: name.into(),
        fingerprint: print,
        backup,
    };
    match known {
        Some(i) => manifest.binaries[i] = entry,
        None => manifest.binaries.push(entry),
    }
    Ok(format!("{}: installed", dst.display()))
}

/// Removes exactly what install added. Binaries still needed by pods (records exist) are kept
/// unless `force`: the runtime must find them for those pods' DEL.
pub fn uninstall(node: &Node, force: bool) -> Result<Report> {
    let mut report = Report::new();
    let Some(mut manifest) = Manifest::load(node)? else {
        report.push(format!(
            "no install manifest at {}: nothing weft installed here",
            node.manifest_path().display()
        ));
        return Ok(report);
    };
    let entry = manifest.entry.clone().unwrap_or_else(|| node.entry());
    let mut failures = Vec::new();
    for c in std::mem::take(&mut manifest.chained) {
        match chain::undo(&c, &entry) {
            Ok(line) => report.push(line),
            Err(e) => {
                failures.push(format!("{e:#}"));
                manifest.chained.push(c);
            }
        }
    }
    let usage = state::usage(node);
    let mut kept = Vec::new();
    for b in std::mem::take(&mut manifest.binaries) {
        let path = node.bin_dir.join(&b.name);
        let users = usage.users_of(&b.name);
        if users > 0 && !force {
            report.push(format!(
                "{}: kept, {users} attachment(s) still use it (their DEL needs it); run uninstall again once they are gone, or --force",
                path.display()
            ));
            kept.push(b);
            continue;
        }
        match fsx::read_optional(&path)? {
            Some(now) if fsx::fingerprint(&now) != b.fingerprint => {
                report.push(format!(
                    "{}: left alone, changed since install",
                    path.display()
                ));
            }
            Some(_) => match &b.backup {
                Some(saved) => {
                    let bytes = std::fs::read(saved)
                        .with_context(|| format!("read {}", saved.display()))?;
                    let attrs = Attrs::of(saved).unwrap_or(Attrs::root(0o755));
                    fsx::write_atomic(&path, &bytes, attrs)?;
                    report.push(format!("{}: restored the file it replaced", path.display()));
                }
                None => {
                    fsx::remove_file(&path)?;
                    report.push(format!("{}: removed", path.display()));
                }
            },
            None => report.push(format!("{}: already gone", path.display())),
        }
    }
    manifest.binaries = kept;
    if !failures.is_empty() || !manifest.binaries.is_empty() {
        manifest.save(node)?;
        if !failures.is_empty() {
            return Err(anyhow!(
                "{}\nnot everything could be undone: {}",
                report.join("\n"),
                failures.join("; ")
            ));
        }
        return Ok(report);
    }
    // Nothing of weft's left in use: its own state, pins and the directories it created.
    if usage.kmesh_records == 0 {
        let pin_root = &node.pin_root;
        if manifest.was_absent(pin_root) && pin_root.exists() {
            // Unpinning detaches weft's leftovers (no record names them) and frees the maps.
            std::fs::remove_dir_all(pin_root)
                .with_context(|| format!("remove {}", pin_root.display()))?;
            report.push(format!("{}: pins removed", pin_root.display()));
        }
        let kmesh = node.kmesh_store().dir().to_path_buf();
        if manifest.was_absent(&kmesh) && kmesh.exists() {
            std::fs::remove_dir_all(&kmesh)
                .with_context(|| format!("remove {}", kmesh.display()))?;
            report.push(format!("{}: removed", kmesh.display()));
        }
    }
    let ipam = node.ipam_dir();
    if usage.ipam_reservations == 0 && manifest.was_absent(&ipam) && ipam.exists() {
        std::fs::remove_dir_all(&ipam).with_context(|| format!("remove {}", ipam.display()))?;
        report.push(format!("{}: removed", ipam.display()));
    }
    let weft = node.weft_state();
    std::fs::remove_dir_all(&weft).with_context(|| format!("remove {}", weft.display()))?;
    report.push(format!("{}: install manifest removed", weft.display()));
    for dir in [&node.bin_dir, &node.conf_dir, &node.state_dir] {
        if manifest.was_absent(dir) && std::fs::remove_dir(dir).is_ok() {
            report.push(format!(
                "{}: removed (empty, created by install)",
                dir.display()
            ));
        }
    }
    Ok(report)
}
