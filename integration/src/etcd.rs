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
    Ok(free_ports(1)?[0])
}

/// `n` loopback ports nothing listens on right now, all different: every one is held until all
/// are chosen. (Ports taken one after another may repeat: a port released is free to be handed
/// out again, and a cluster whose client and peer URLs share a port never becomes healthy.)
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port"))
        .collect::<Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// How often [`EtcdCluster::start_in`] starts a cluster afresh when a member exits during
/// start-up: between choosing its ports and binding them, another process may take one.
const START_ATTEMPTS: u32 = 3;

impl EtcdCluster {
    /// The etcd server and etcdctl are installed (see [`crate::prereq::require`]).
    #[track_caller]
    pub fn require() -> bool {
        crate::prereq::require(&["etcd", "etcdctl"])
    }

    /// Starts the members and waits (up to 30 s) until the cluster answers `endpoint health`.
    pub fn start() -> Result<EtcdCluster> {
        Self::start_in(&std::env::temp_dir())
    }

    /// [`EtcdCluster::start`] with the members' data under `parent` (e.g. a tmpfs, to take
    /// etcd's own fsyncs out of a measurement).
    pub fn start_in(parent: &std::path::Path) -> Result<EtcdCluster> {
        let mut attempt = 1;
        loop {
            match Self::start_once(parent)? {
                Ok(cluster) => return Ok(cluster),
                Err(exited) if attempt < START_ATTEMPTS => {
                    eprintln!("etcd: {exited}; starting the cluster again on other ports");
                    attempt += 1;
                }
                Err(exited) => bail!("{exited} ({START_ATTEMPTS} attempts)"),
            }
        }
    }

    /// One start: `Ok(Err(why))` when a member exited before the cluster became healthy (worth
    /// another try on new ports; everything started is killed on drop).
    fn start_once(parent: &std::path::Path) -> Result<std::result::Result<EtcdCluster, String>> {
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
            .tempdir_in(parent)
            .with_context(|| format!("etcd data dir in {}", parent.display()))?;
        let ports: Vec<(u16, u16)> = free_ports(6)?.chunks(2).map(|p| (p[0], p[1])).collect();
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
            if let Some(i) = cluster.exited_member() {
                let log = std::fs::read_to_string(cluster.dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Ok(Err(format!(
                    "member m{i} exited during start-up; its log ends:\n{}",
                    tail.join("\n")
                )));
            }
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
        Ok(Ok(cluster))
    }

    /// The first member that was started and has exited since (reaped here).
    fn exited_member(&mut self) -> Option<usize> {
        self.members.iter_mut().position(|m| {
            m.child
                .as_mut()
                .is_some_and(|c| c.try_wait().is_ok_and(|status| status.is_some()))
        })
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

    /// The Prometheus text of member `i`'s `/metrics` (served on its client URL).
    pub fn metrics(&self, i: usize) -> Result<String> {
        http(&self.members[i].client_url, "GET", "/metrics", "")
    }

    /// The sum over the running members of every sample of `name` whose labels contain all of
    /// `labels` (`key="value"` strings): e.g. the KV requests served, to count round trips.
    pub fn counter(&self, name: &str, labels: &[&str]) -> Result<f64> {
        let mut sum = 0.0;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            sum += sum_samples(&self.metrics(i)?, name, labels);
        }
        Ok(sum)
    }

    /// Writes `kvs` through member 0's JSON gateway, 128 puts per transaction (etcd's default
    /// `--max-txn-ops`): seeding thousands of keys takes seconds, not one etcdctl per key.
    pub fn put_many(&self, kvs: &[(String, String)]) -> Result<()> {
        let url = &self.members[0].client_url;
        for chunk in kvs.chunks(128) {
            let ops: Vec<serde_json::Value> = chunk
                .iter()
                .map(|(k, v)| {
                    serde_json::json!({"request_put": {"key": base64(k.as_bytes()), "value": base64(v.as_bytes())}})
                })
                .collect();
            let body = serde_json::json!({ "success": ops }).to_string();
            let reply = http(url, "POST", "/v3/kv/txn", &body)?;
            ensure!(
                reply.contains("\"succeeded\":true"),
                "etcd txn of {} puts: {reply}",
                chunk.len()
            );
        }
        Ok(())
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

/// The sum of the samples of metric `name` whose label set contains every one of `labels`.
fn sum_samples(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_set) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| label_set.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// One HTTP/1.1 request to a member's plain-text client URL (`http://127.0.0.1:port`); the
/// body of a 200 answer. Loopback only: enough for `/metrics` and the JSON gateway.
fn http(url: &str, method: &str, path: &str, body: &str) -> Result<String> {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").context("not an http:// URL")?;
    let mut conn = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let (head, rest) = reply.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{method} {path}: {head}");
    // The gateway may answer chunked: join the chunks.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
            if n == 0 {
                break;
            }
            out.push_str(tail.get(..n).context("short chunk")?);
            rest = tail.get(n + 2..).unwrap_or_default();
        }
        return Ok(out);
    }
    Ok(rest.to_owned())
}

/// Standard base64 with padding (the JSON gateway's encoding of keys and values).
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // Our own children, by PID (std's Child never signals a reaped process).
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(64).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 64, "{ports:?}");
        assert!(ports.iter().all(|&p| p != 0));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain:?}");
        }
    }

    #[test]
    fn seeded_keys_and_request_counters_of_a_real_cluster() {
        if !EtcdCluster::require() {
            return;
        }
        let c = EtcdCluster::start().unwrap();
        let kv_requests = || {
            c.counter(
                "grpc_server_handled_total",
                &["grpc_service=\"etcdserverpb.KV\""],
            )
        };
        let before = kv_requests().unwrap();
        let kvs: Vec<(String, String)> = (0..300)
            .map(|i| {
                (
                    format!("/seed/{i:04}"),
                    format!("{{\"node\":\"n{i}\",\"prefix\":26}}"),
                )
            })
            .collect();
        c.put_many(&kvs).unwrap();
        assert_eq!(c.count_keys("/seed/").unwrap(), 300);
        let got = c.get_prefix("/seed/0007").unwrap();
        assert_eq!(got, vec![kvs[7].clone()]);
        // Three gateway transactions (128 + 128 + 44 puts) and etcdctl's two reads.
        assert!(kv_requests().unwrap() >= before + 5.0);
    }

    #[test]
    fn counters_sum_the_matching_series() {
        let text = "# HELP x\nreq_total{m=\"Txn\",code=\"OK\"} 3\nreq_total{m=\"Range\",code=\"OK\"} 2\nreq_total_other 9\n";
        assert_eq!(sum_samples(text, "req_total", &[]), 5.0);
        assert_eq!(sum_samples(text, "req_total", &["m=\"Txn\""]), 3.0);
    }
}
