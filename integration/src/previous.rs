//! The previous release's binaries, built from this repository's history, for upgrade tests:
//! state written by them (records, pool files, pinned maps, etcd keys) must keep working with
//! the binaries under test. Built once into `target/previous-release/` (kept between runs; a
//! file lock makes concurrent tests wait for one build).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{ensure, Context, Result};

use crate::plugins::workspace_root;
use crate::proc::command;

/// The last commit before records, reservations and map entries were scoped to their network
/// (map layout 1, pool file v1, bare-node etcd values): what nodes run before upgrading.
pub const PREVIOUS_RELEASE: &str = "7cd25bd";

/// The binaries the previous release shipped.
pub const BINARIES: &[&str] = &["kmesh-cni", "weft-ipam"];

/// Directory holding the previous release's `kmesh-cni` and `weft-ipam`, building them first
/// if needed (`git archive` of [`PREVIOUS_RELEASE`], then `cargo build`; a few minutes once).
pub fn binaries() -> Result<PathBuf> {
    let root = workspace_root();
    let base = root.join("target/previous-release");
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let lock = std::fs::File::create(base.join("lock")).context("previous-release lock")?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("flock previous-release lock: {e}"))?;
    // Built for the host tuple by name, as this workspace's .cargo/config.toml does (it applies
    // here too: the sources sit under target/), so where the binaries land does not depend on it.
    let tuple = host_tuple()?;
    let bin_dir = base.join("target").join(&tuple).join("debug");
    if BINARIES.iter().all(|b| bin_dir.join(b).is_file()) {
        return Ok(bin_dir);
    }
    let src = base.join("src");
    if !src.join("Cargo.toml").is_file() {
        extract(&root, &src)?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .args([
            "build",
            "--locked",
            "--target",
            &tuple,
            "--bins",
            "-p",
            "kmesh-cni",
            "-p",
            "weft-ipam",
        ])
        .stdin(Stdio::null());
    let out = build
        .output()
        .context("run cargo build for the previous release")?;
    ensure!(
        out.status.success(),
        "building the previous release ({PREVIOUS_RELEASE}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bin_dir)
}

/// `git archive PREVIOUS_RELEASE | tar -x -C dest`, through a temp dir renamed into place.
fn extract(root: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let archive = tmp.join("src.tar");
    let out = command("git")
        .arg("-C")
        .arg(root)
        .args(["archive", "--format=tar", "-o"])
        .arg(&archive)
        .arg(PREVIOUS_RELEASE)
        .output()
        .context("run git archive")?;
    ensure!(
        out.status.success(),
        "git archive {PREVIOUS_RELEASE} failed (is this a full clone?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = command("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&tmp)
        .output()
        .context("run tar")?;
    ensure!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&archive)?;
    std::fs::rename(&tmp, dest).with_context(|| format!("rename to {}", dest.display()))?;
    Ok(())
}

/// `rustc --print host-tuple`: the target cargo builds for when none is named.
fn host_tuple() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(rustc)
        .args(["--print", "host-tuple"])
        .stdin(Stdio::null())
        .output()
        .context("run rustc --print host-tuple")?;
    ensure!(out.status.success(), "rustc --print host-tuple failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
