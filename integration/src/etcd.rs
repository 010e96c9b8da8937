//! A real 3-member etcd cluster on loopback (Debian's etcd-server 3.4), for the etcd store of
//! weft-ipam. Copied from ipam/tests/etcd.rs (that crate's tests cannot depend on this one and
//! vice versa) and turned into a `Result`-returning fixture for benchmarks: random free ports,
//! a temp data dir, every member killed by its PID and the data removed on drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

struct Member {
    client_url: String,
    child: Option<Child>,
}

/// Three members, `m0`..`m2`, each with its own client and peer port on 127.0.0.1.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("bind an ephemeral port")?
        .local_addr()?
        .port())
}

impl EtcdCluster {
    /// Starts the members and waits (up to 30 s) until the cluster answers `endpoint health`.
    pub fn start() -> Result<EtcdCluster> {
        ensure!(
            Path::new(ETCD).is_file() && Path::new(ETCDCTL).is_file(),
            "{ETCD} and {ETCDCTL} needed (apt-get install etcd-server etcd-client)"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::Builder::new()
            .prefix("weft-etcd-")
            .tempdir()
            .context("etcd data dir")?;
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push((free_port()?, free_port()?));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        // One token for all members: it seeds the cluster ID.
        let token = format!(
            "weft-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            dir,
        };
        for (i, (c, p)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let log = std::fs::File::create(cluster.dir.path().join(format!("{name}.log")))?;
            let client_url = format!("http://127.0.0.1:{c}");
            let peer_url = format!("http://127.0.0.1:{p}");
            let child = Command::new(ETCD)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(cluster.dir.path().join(&name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("start etcd")?;
            // Pushed right away: a later failure still kills the members started so far.
            cluster.members.push(Member {
                client_url,
                child: Some(child),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.healthy() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(cluster.dir.path().join("m0.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "etcd cluster did not become healthy in 30 s; m0.log tail:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(cluster)
    }

    /// Client URLs of every member, for `store.endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn etcdctl(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run etcdctl")
    }

    pub fn healthy(&self) -> bool {
        self.etcdctl(&["endpoint", "health"])
            .is_ok_and(|o| o.status.success())
    }

    /// How many keys start with `prefix`.
    pub fn count_keys(&self, prefix: &str) -> Result<usize> {
        // etcdctl 3.4 has no --count-only: list the keys, one per line.
        let o = self.etcdctl(&["get", "--prefix", "--keys-only", prefix])?;
        ensure!(
            o.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                // Our own child, by PID (std's Child never signals a reaped process).
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
