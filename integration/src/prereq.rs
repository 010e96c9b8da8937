//! Prerequisites of the tests and benches, from the one list: `prerequisites.list` at the
//! workspace root, which `integration/run-tests.sh` and `install.sh` install from.
//!
//! A test may only need what that list installs: asking for anything else panics in every
//! environment, so a new tool cannot be used without naming its Debian package there. Outside CI
//! a listed but missing path skips the test with a printed reason (a developer without root can
//! still run the unit tests); under `CI=true` it is a failure, because a test that silently skips
//! in CI proves nothing. `integration/tests/prerequisites.rs` checks the list against the code.

use std::path::Path;
use std::sync::OnceLock;

/// The list, compiled in so the tests read exactly the file the scripts install from.
pub const LIST: &str = include_str!("../../prerequisites.list");
/// Where the list lives, for messages.
pub const LIST_NAME: &str = "prerequisites.list";

/// One line of the list: `stage path package`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prerequisite {
    /// `build` (install.sh) or `test` (run-tests.sh installs both).
    pub stage: &'static str,
    /// Absolute path as the code uses it.
    pub path: &'static str,
    /// The Debian package that provides `path`.
    pub package: &'static str,
}

impl Prerequisite {
    /// The file name, which is also how a program is named on a command line.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('/').next().unwrap_or(self.path)
    }

    pub fn present(&self) -> bool {
        Path::new(self.path).exists()
    }
}

/// Parses the list text; errors name the offending line.
pub fn parse(text: &'static str) -> Result<Vec<Prerequisite>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&'static str> = line.split_whitespace().collect();
        let [stage, path, package] = fields[..] else {
            return Err(format!(
                "{LIST_NAME}:{}: want `stage path package`, got {line:?}",
                n + 1
            ));
        };
        if !matches!(stage, "build" | "test") {
            return Err(format!(
                "{LIST_NAME}:{}: stage {stage:?} is neither build nor test",
                n + 1
            ));
        }
        if !path.starts_with('/') {
            return Err(format!("{LIST_NAME}:{}: {path:?} is not absolute", n + 1));
        }
        out.push(Prerequisite {
            stage,
            path,
            package,
        });
    }
    Ok(out)
}

/// Every entry of the list.
pub fn listed() -> &'static [Prerequisite] {
    static PARSED: OnceLock<Vec<Prerequisite>> = OnceLock::new();
    PARSED.get_or_init(|| parse(LIST).unwrap_or_else(|e| panic!("{e}")))
}

/// The entry for `what`: an absolute path, or a program's bare name. None when unlisted.
pub fn find(what: &str) -> Option<&'static Prerequisite> {
    listed().iter().find(|p| {
        if what.contains('/') {
            p.path == what
        } else {
            p.name() == what
        }
    })
}

/// The entry for `what`; panics (in every environment) when the list does not install it.
#[track_caller]
pub fn lookup(what: &str) -> &'static Prerequisite {
    find(what).unwrap_or_else(|| {
        panic!(
            "{what} is not in {LIST_NAME}: add a line `test <path> <debian-package>` so \
             run-tests.sh installs it on a fresh machine"
        )
    })
}

/// Absolute path of a listed program (`ip`, `bpftool`, ...), for running it.
#[track_caller]
pub fn program(name: &str) -> &'static str {
    lookup(name).path
}

/// True when running under CI (`CI=true`, as GitHub/GitLab and our `.ci/run` set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Report a missing prerequisite: panics under CI, otherwise prints why the test is skipped and
/// returns false so the caller can `return`.
#[track_caller]
pub fn missing(reason: &str) -> bool {
    if in_ci() {
        panic!("prerequisite missing (CI=true makes this a failure): {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

/// Every one of `what` (paths or program names) is listed (else panic) and present (else
/// [`missing`], naming the package to install).
#[track_caller]
pub fn require(what: &[&str]) -> bool {
    let absent: Vec<String> = what
        .iter()
        .map(|w| lookup(w))
        .filter(|p| !p.present())
        .map(|p| format!("{} (Debian package {})", p.path, p.package))
        .collect();
    absent.is_empty()
        || missing(&format!(
            "{}; integration/run-tests.sh installs everything in {LIST_NAME}",
            absent.join(", ")
        ))
}

/// Tests that create netns and links need root. Use as `if !require_root() { return; }`.
#[track_caller]
pub fn require_root() -> bool {
    nix::unistd::geteuid().is_root() || missing("needs root (network namespaces, links)")
}

/// What every netns test needs: root, iproute2 and the Debian reference plugins that are the
/// real chain partners.
#[track_caller]
pub fn require_netns_env() -> bool {
    require_root()
        && require(&[
            "ip",
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local",
            "/usr/lib/cni/ptp",
        ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_names_each_path_once() {
        let all = listed();
        assert!(!all.is_empty());
        for (i, p) in all.iter().enumerate() {
            assert!(
                all[i + 1..].iter().all(|q| q.path != p.path),
                "{} listed twice",
                p.path
            );
        }
    }

    #[test]
    fn programs_are_found_by_name_and_path() {
        assert_eq!(lookup("etcdctl").package, "etcd-client");
        assert_eq!(lookup("/usr/bin/etcdctl").package, "etcd-client");
        assert!(find("no-such-tool").is_none());
        assert!(find("/usr/bin/no-such-tool").is_none());
    }

    #[test]
    #[should_panic(expected = "is not in prerequisites.list")]
    fn asking_for_an_unlisted_tool_fails_everywhere() {
        // Not a literal: tests/prerequisites.rs reads literals passed to require() as needs.
        let unlisted = String::from("no-such-tool");
        require(&[&unlisted]);
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert!(parse("build /usr/bin/x").is_err());
        assert!(parse("test usr/bin/x pkg").is_err());
        assert!(parse("runtime /usr/bin/x pkg").is_err());
        assert_eq!(parse("# c\n\ntest /usr/bin/x pkg\n").unwrap().len(), 1);
    }
}
