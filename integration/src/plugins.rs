//! Where the binaries under test and their chain partners live, and the per-test `CNI_PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use tempfile::TempDir;

/// Debian's reference plugins (apt `containernetworking-plugins`).
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// Our binaries, linked into every test `CNI_PATH` when they have been built.
pub const WEFT_BINARIES: &[&str] = &["kmesh-cni", "weft-ipam", "weft-sriov"];

/// The cargo workspace root (this crate lives in `<root>/integration`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// `WEFT_BIN_DIR`, or [`built_bin_dir`]: the binaries built with this test or bench binary.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("WEFT_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => built_bin_dir(),
    }
}

/// Where cargo put the workspace's binaries in the build this process comes from:
/// `target/<host tuple>/<profile>` (see .cargo/config.toml), so `cargo test` finds the debug
/// plugins and `cargo test --release` or the release `weft-bench` the release ones. Test binaries
/// live one level down, in `<profile>/deps`.
pub fn built_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running executable");
    let dir = exe.parent().expect("an executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of one of our binaries; panics when it has not been built: the test cannot mean
/// anything without it, so this is a failure, never a skip.
#[track_caller]
pub fn weft_binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (`cargo build -p {name}` or integration/run-tests.sh), \
         or point WEFT_BIN_DIR at the directory holding it",
        path.display()
    );
    path
}

/// Path of a Debian reference plugin; panics when missing (check `require_reference_plugins`).
#[track_caller]
pub fn reference_plugin(name: &str) -> PathBuf {
    let path = Path::new(REFERENCE_DIR).join(name);
    assert!(
        path.is_file(),
        "{} not found (apt-get install containernetworking-plugins)",
        path.display()
    );
    path
}

/// A temp directory used as `CNI_PATH`: symlinks to our built binaries and to every Debian
/// reference plugin, so chains mix both exactly as in /opt/cni/bin. Removed on drop.
pub struct CniPath {
    dir: TempDir,
}

impl CniPath {
    /// Our binaries from `bin_dir()` plus the reference plugins.
    #[track_caller]
    pub fn new() -> Self {
        Self::with_bin_dir(&bin_dir())
    }

    /// Our binaries from `bins` (e.g. target/release for benchmarks) plus the reference plugins.
    #[track_caller]
    pub fn with_bin_dir(bins: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("weft-cni-path-")
            .tempdir()
            .expect("create CNI_PATH temp dir");
        for name in WEFT_BINARIES {
            let src = bins.join(name);
            if src.is_file() {
                std::os::unix::fs::symlink(&src, dir.path().join(name)).expect("symlink plugin");
            }
        }
        let reference = std::fs::read_dir(REFERENCE_DIR).unwrap_or_else(|e| {
            panic!("{REFERENCE_DIR}: {e} (apt-get install containernetworking-plugins)")
        });
        for entry in reference.flatten() {
            let link = dir.path().join(entry.file_name());
            if !link.exists() {
                std::os::unix::fs::symlink(entry.path(), link).expect("symlink reference plugin");
            }
        }
        CniPath { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().expect("temp path is UTF-8")
    }

    /// A plugin by type name, as libcni would find it.
    #[track_caller]
    pub fn plugin(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        assert!(p.exists(), "{name} is not in CNI_PATH {}", self.path_str());
        p
    }
}

impl Default for CniPath {
    fn default() -> Self {
        Self::new()
    }
}

static CNITOOL_BUILD: Mutex<()> = Mutex::new(());

/// The libcni cnitool: `WEFT_CNITOOL`, or `<workspace>/target/cnitool/cnitool`, (re)built with
/// `integration/cnitool/build.sh` when missing or older than its source. Needs apt golang-go and
/// golang-github-appc-cni-dev; without them this panics (run-tests.sh installs them).
#[track_caller]
pub fn cnitool() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_CNITOOL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let out_dir = root.join("target/cnitool");
    let bin = out_dir.join("cnitool");
    let src = root.join("integration/cnitool/cnitool.go");
    let _lock = CNITOOL_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = match (mtime(&bin), mtime(&src)) {
        (Some(b), Some(s)) => b < s,
        _ => true,
    };
    if stale {
        let out = crate::proc::run(
            Command::new(root.join("integration/cnitool/build.sh")).arg(&out_dir),
            b"",
        )
        .expect("run integration/cnitool/build.sh");
        out.0.assert_success(
            "building cnitool (needs apt golang-go golang-github-appc-cni-dev; see run-tests.sh)",
        );
    }
    bin
}
