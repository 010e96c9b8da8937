//! Prerequisites. Outside CI a missing prerequisite skips the test with a printed reason (a
//! developer without root can still run the unit tests); under `CI=true` it is a failure, because
//! a test that silently skips in CI proves nothing.

use std::path::Path;

/// True when running under CI (`CI=true`, as GitHub/GitLab and our `.ci/run` set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Report a missing prerequisite: panics under CI, otherwise prints why the test is skipped and
/// returns false so the caller can `return`.
pub fn missing(reason: &str) -> bool {
    if in_ci() {
        panic!("prerequisite missing (CI=true makes this a failure): {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

/// Tests that create netns and links need root. Use as `if !require_root() { return; }`.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        missing("needs root (network namespaces, links)")
    }
}

/// The Debian reference plugins (apt `containernetworking-plugins`) are the real chain partners.
pub fn require_reference_plugins() -> bool {
    if Path::new(crate::plugins::REFERENCE_DIR)
        .join("bridge")
        .exists()
    {
        true
    } else {
        missing("reference plugins missing in /usr/lib/cni (apt-get install containernetworking-plugins)")
    }
}

/// Root plus the reference plugins: what every netns test needs.
pub fn require_netns_env() -> bool {
    require_root() && require_reference_plugins()
}
