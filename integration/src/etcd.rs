//! A real 3-member etcd cluster on loopback (Debian's etcd-server 3.4), for the etcd store of
//! weft-ipam: its tests (a dev-dependency on this crate) and the P2-cluster bench. Random free
//! ports, a temp data dir, every member killed by its PID and the data removed on drop.

use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::proc::command;

struct Member {
    client_url: String,
    child: Option<Child>,
}

/// Three members, `m0`..`m2`, each with its own client and peer port on 127.0.0.1.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: TempDir,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("bind an ephemeral port")?
        .local_addr()?
        .port())
}

impl EtcdCluster {
    /// The etcd server and etcdctl are installed (see [`crate::prereq::require`]).
    #[track_caller]
    pub fn require() -> bool {
        crate::prereq::require(&["etcd", "etcdctl"])
    }

    /// Starts the members and waits (up to 30 s) until the cluster answers `endpoint health`.
    pub fn start() -> Result<EtcdCluster> {
        for tool in ["etcd", "etcdctl"] {
            let p = crate::prereq::lookup(tool);
            ensure!(
                p.present(),
                "{} needed (Debian package {})",
                p.path,
                p.package
            );
        }
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
            let child = command("etcd")
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

    /// Runs etcdctl (API v3) against the members still running.
    pub fn etcdctl(&self, args: &[&str]) -> Result<std::process::Output> {
        let live: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.as_str())
            .collect();
        command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", live.join(",")))
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
        Ok(self.keys(prefix)?.len())
    }

    /// The keys that start with `prefix` (etcdctl 3.4 has no --count-only).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let o = self.etcdctl(&["get", "--prefix", "--keys-only", prefix])?;
        ensure!(
            o.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Every (key, value) under `prefix`; values must be single-line.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let o = self.etcdctl(&["get", "--prefix", prefix])?;
        ensure!(
            o.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        ensure!(
            lines.len().is_multiple_of(2),
            "etcdctl printed an odd number of lines"
        );
        Ok(lines
            .chunks(2)
            .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
            .collect())
    }

    /// Index of the current leader (from `endpoint status`).
    pub fn leader(&self) -> Result<usize> {
        let o = self.etcdctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).context("endpoint status")?;
        let statuses = v.as_array().context("endpoint status is not a list")?;
        let leader = statuses
            .first()
            .and_then(|s| s["Status"]["leader"].as_u64())
            .context("no leader in endpoint status")?;
        let endpoint = statuses
            .iter()
            .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))
            .and_then(|s| s["Endpoint"].as_str())
            .context("leader not among the endpoints")?;
        self.members
            .iter()
            .position(|m| m.client_url == endpoint)
            .context("leader endpoint is not ours")
    }

    /// Kills member `i` (our child, by PID); the others keep running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // Our own children, by PID (std's Child never signals a reaped process).
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
