//! Exec another plugin (an IPAM delegate) the way a runtime would: found in `CNI_PATH`, given
//! the same environment with only `CNI_COMMAND` changed, and the full stdin config.

use crate::dispatch::Request;
use crate::env::Command;
use crate::error::{code, Error, Result};
use crate::result::CniResult;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

/// Finds `plugin_type` in the `CNI_PATH` directories, first match wins.
pub fn find_in_path(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.starts_with('.') {
        return Err(Error::invalid_config(format!(
            "invalid plugin type {plugin_type:?}"
        )));
    }
    path.iter()
        .map(|dir| dir.join(plugin_type))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            Error::invalid_env(format!(
                "plugin {plugin_type:?} not found in CNI_PATH {:?}",
                std::env::join_paths(path).unwrap_or_default()
            ))
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs the delegate for `command` and returns its stdout on success. A delegate's own CNI
/// error is passed up unchanged (its code is the truth); anything else becomes code 102.
pub fn exec(plugin_type: &str, command: Command, req: &Request) -> Result<Vec<u8>> {
    let binary = find_in_path(plugin_type, &req.env.path)?;
    let env = &req.env;
    let args: Vec<String> = env
        .args
        .pairs()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut child = Process::new(&binary)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", env.netns.as_deref().unwrap_or(Path::new("")))
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env(
            "CNI_PATH",
            std::env::join_paths(&env.path).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("cannot exec {}: {e}", binary.display())))?;
    // A delegate that exits without reading stdin makes this write fail; its exit status below
    // is the more useful error, so the write error is only reported if the delegate succeeded.
    let write = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&req.stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for {plugin_type}: {e}")))?;
    if !out.status.success() {
        return Err(delegate_error(plugin_type, command, &out.stdout));
    }
    write.map_err(|e| Error::io(format!("writing config to {plugin_type}: {e}")))?;
    Ok(out.stdout)
}

fn delegate_error(plugin_type: &str, command: Command, stdout: &[u8]) -> Error {
    match serde_json::from_slice::<Error>(stdout) {
        Ok(e) if e.code != 0 => e,
        _ => Error::new(
            code::DELEGATE,
            format!(
                "delegate {plugin_type} {} failed without a CNI error",
                command.as_str()
            ),
        )
        .with_details(
            String::from_utf8_lossy(stdout)
                .chars()
                .take(512)
                .collect::<String>(),
        ),
    }
}

/// ADD through the delegate; its result is decoded in any version it printed.
pub fn add(plugin_type: &str, req: &Request) -> Result<CniResult> {
    let stdout = exec(plugin_type, Command::Add, req)?;
    let value: Value = serde_json::from_slice(&stdout)
        .map_err(|e| Error::decode(format!("delegate {plugin_type} printed no result: {e}")))?;
    CniResult::decode(&value, req.conf.cni_version)
}

pub fn del(plugin_type: &str, req: &Request) -> Result<()> {
    exec(plugin_type, Command::Del, req).map(drop)
}

pub fn check(plugin_type: &str, req: &Request) -> Result<()> {
    exec(plugin_type, Command::Check, req).map(drop)
}

pub fn status(plugin_type: &str, req: &Request) -> Result<()> {
    exec(plugin_type, Command::Status, req).map(drop)
}

pub fn gc(plugin_type: &str, req: &Request) -> Result<()> {
    exec(plugin_type, Command::Gc, req).map(drop)
}

/// A delegated ADD that is undone (delegate DEL) unless [`DelegatedAdd::commit`] is called, so
/// a main plugin that fails after its IPAM succeeded never leaks the address.
pub struct DelegatedAdd<'a> {
    plugin_type: String,
    req: &'a Request,
    result: CniResult,
    committed: bool,
}

pub fn add_guarded<'a>(plugin_type: &str, req: &'a Request) -> Result<DelegatedAdd<'a>> {
    let result = add(plugin_type, req)?;
    Ok(DelegatedAdd {
        plugin_type: plugin_type.to_owned(),
        req,
        result,
        committed: false,
    })
}

impl DelegatedAdd<'_> {
    pub fn result(&self) -> &CniResult {
        &self.result
    }

    /// Keeps the delegate's reservation and hands back its result.
    pub fn commit(mut self) -> CniResult {
        self.committed = true;
        std::mem::take(&mut self.result)
    }
}

impl Drop for DelegatedAdd<'_> {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the ADD error that got us here is the one the runtime must see.
            if let Err(e) = del(&self.plugin_type, self.req) {
                eprintln!(
                    "rolling back delegate {} after failed ADD: {e}",
                    self.plugin_type
                );
            }
        }
    }
}
