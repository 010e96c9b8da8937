//! Network namespace and host link fixtures. Each guard removes what it created in `Drop`, which
//! also runs while a failing test unwinds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::proc::{cmd, must, Output};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across concurrently running test processes (pid) and within one (counter).
fn unique_suffix() -> (u32, u32) {
    (std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// A unique interface name: `prefix` + base36(pid) + "x" + base36(counter). Linux limits names
/// to 15 bytes; pid ≤ 2^22 is at most 5 base36 digits, so keep `prefix` to 4 bytes or fewer.
pub fn unique_ifname(prefix: &str) -> String {
    let (pid, n) = unique_suffix();
    let name = format!("{prefix}{}x{}", base36(pid), base36(n));
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// A named network namespace at /var/run/netns/<name> (`ip netns add`).
pub struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    /// Creates `<prefix>-<pid>-<n>` and brings its loopback up.
    pub fn new(prefix: &str) -> Self {
        let (pid, n) = unique_suffix();
        let name = format!("{prefix}-{pid}-{n}");
        must("ip", &["netns", "add", &name]);
        let ns = TestNetns {
            path: Path::new("/var/run/netns").join(&name),
            name,
        };
        ns.must(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted netns file, as a runtime passes it in `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("netns path is UTF-8")
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        cmd("ip", &full)
    }

    /// `ip -n <ns> <args>` that must succeed.
    #[track_caller]
    pub fn must(&self, args: &[&str]) -> Output {
        let out = self.ip(args);
        out.assert_success(&format!("ip -n {} {}", self.name, args.join(" ")));
        out
    }

    /// `ip netns exec <ns> <argv>`: a program (listed in prerequisites.list) run inside.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let program = crate::prereq::program(argv[0]);
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(&argv[1..]);
        cmd("ip", &full)
    }

    /// The `Command` for `ip netns exec <ns> <argv>`, for a long-running server.
    pub fn command(&self, argv: &[&str]) -> std::process::Command {
        let mut c = crate::proc::command("ip");
        c.args(["netns", "exec", &self.name, crate::prereq::program(argv[0])])
            .args(&argv[1..]);
        c
    }

    /// Names of all links in the namespace (including `lo`).
    #[track_caller]
    pub fn links(&self) -> Vec<String> {
        self.try_links()
            .unwrap_or_else(|| panic!("cannot list links of netns {}", self.name))
    }

    /// Like `links` but never panics (used from `Drop`, where a panic would abort).
    fn try_links(&self) -> Option<Vec<String>> {
        let out = self.ip(&["-j", "link", "show"]);
        if !out.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        Some(
            v.as_array()?
                .iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    pub fn link_exists(&self, ifname: &str) -> bool {
        self.links().iter().any(|l| l == ifname)
    }

    /// Create a veth pair: `host_name` stays in the host netns, `ns_name` goes into this netns.
    /// Both ends are up. Returns a guard for the host end (deleting it also deletes the peer).
    pub fn add_veth(&self, host_name: &str, ns_name: &str) -> HostLink {
        must(
            "ip",
            &[
                "link", "add", host_name, "type", "veth", "peer", "name", ns_name, "netns",
                &self.name,
            ],
        );
        let guard = HostLink::adopt(host_name);
        must("ip", &["link", "set", host_name, "up"]);
        self.must(&["link", "set", ns_name, "up"]);
        guard
    }

    /// Links, addresses and routes of the namespace as text: compare two snapshots to prove a
    /// command changed nothing.
    pub fn snapshot(&self) -> String {
        let mut s = String::new();
        for args in [
            &["-d", "link", "show"][..],
            &["addr", "show"][..],
            &["route", "show", "table", "all"][..],
        ] {
            s.push_str(&self.must(args).stdout);
        }
        s
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Delete every link first: a veth's host end disappears with it right now, even if
        // something still holds a reference to the namespace and keeps it alive.
        if let Some(links) = self.try_links() {
            for link in links.iter().filter(|l| l.as_str() != "lo") {
                let _ = self.ip(&["link", "del", link]);
            }
        }
        let out = cmd("ip", &["netns", "del", &self.name]);
        if !out.success() {
            eprintln!(
                "warning: could not delete netns {}: {}",
                self.name, out.stderr
            );
        }
    }
}

/// A link in the host netns (bridge, veth host end) deleted on drop if it still exists.
pub struct HostLink {
    name: String,
}

impl HostLink {
    /// Take ownership of a link that exists or that a plugin will create under this name.
    pub fn adopt(name: &str) -> Self {
        HostLink {
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn exists(&self) -> bool {
        host_link_exists(&self.name)
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        if self.exists() {
            let _ = cmd("ip", &["link", "del", &self.name]);
        }
    }
}

pub fn host_link_exists(name: &str) -> bool {
    cmd("ip", &["link", "show", "dev", name]).success()
}
