//! `weft watch` on a private stand-in node: ready only once chained, re-inserts kmesh-cni within
//! 2 s after the primary CNI rewrites its file without it and after it deletes and recreates
//! it, serves /metrics and /readyz, leaves the chain on SIGTERM or uninstalls when asked to.

mod common;

use common::{plugins, TestNode};
use integration::plugins::bin_dir;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PRIMARY: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "prim",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

/// The agent, killed by its PID on drop if a test fails before stopping it.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: String,
}

impl Agent {
    fn start(node: &TestNode, extra: &[&str]) -> Agent {
        let src = bin_dir();
        let ready = node.state.parent().unwrap().join("ready");
        let mut args = vec![
            "watch",
            "--source-dir",
            src.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--resync",
            "30",
            "--ready-file",
            ready.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut child = node
            .weft_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weft watch");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("agent: {l}");
                let _ = tx.send(l);
            }
        });
        let mut agent = Agent {
            child,
            lines,
            addr: String::new(),
        };
        let line = agent.wait_line("serving", Duration::from_secs(20));
        agent.addr = line
            .split("http://")
            .nth(1)
            .expect("address in the serving line")
            .trim()
            .to_owned();
        agent
    }

    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("agent never printed {needle:?}"),
            }
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).expect("connect to the agent");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_owned();
        (code, body)
    }

    /// SIGTERM by PID, then wait for a clean exit.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "weft watch exited with {status}");
                return;
            }
            assert!(Instant::now() < end, "weft watch ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn chained(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .is_some_and(|t| plugins(&t).last().is_some_and(|p| p["type"] == "kmesh-cni"))
}

/// How long until the primary carries kmesh-cni again (panics past `limit`).
fn time_to_rechain(path: &Path, limit: Duration) -> Duration {
    let start = Instant::now();
    while !chained(path) {
        assert!(start.elapsed() < limit, "not re-chained within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// What a primary CNI does: write a temp file and rename it over its config.
fn rewrite_like_a_cni(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn rechains_within_two_seconds_and_serves_readiness_and_metrics() {
    let node = TestNode::new();
    let mut agent = Agent::start(&node, &[]);
    agent.wait_line("waiting for a primary", Duration::from_secs(20));
    let ready_file = node.state.parent().unwrap().join("ready");
    // No primary yet: installed binaries, not ready.
    assert_eq!(agent.get("/readyz").0, 503);
    assert!(!ready_file.exists());
    assert!(node.bin.join("kmesh-cni").is_file());

    let primary = node.write("10-prim.conflist", PRIMARY);
    let t = time_to_rechain(&primary, Duration::from_secs(2));
    agent.wait_line("kmesh-cni appended", Duration::from_secs(2));
    eprintln!("chained a new primary in {t:?}");
    agent.wait_line("ready (kmesh-cni chained)", Duration::from_secs(2));
    assert_eq!(agent.get("/readyz").0, 200);
    assert!(ready_file.exists());

    // The primary CNI rewrites its file (its own content, without kmesh-cni).
    rewrite_like_a_cni(&primary, PRIMARY);
    let t1 = time_to_rechain(&primary, Duration::from_secs(2));
    agent.wait_line("kmesh-cni appended", Duration::from_secs(2));
    // ... truncates and rewrites it in place.
    std::fs::write(&primary, PRIMARY.replace("10.1.0.0/24", "10.2.0.0/24")).unwrap();
    let t2 = time_to_rechain(&primary, Duration::from_secs(2));
    agent.wait_line("kmesh-cni appended", Duration::from_secs(2));
    assert!(
        node.read("10-prim.conflist").contains("10.2.0.0/24"),
        "its change kept"
    );
    // ... deletes it and recreates it a moment later.
    std::fs::remove_file(&primary).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(2);
    while agent.get("/readyz").0 != 503 {
        assert!(Instant::now() < deadline, "still ready without a primary");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !node.conf.join("99-weft.conflist").exists(),
        "no default written by the agent"
    );
    std::fs::write(&primary, PRIMARY).unwrap();
    let t3 = time_to_rechain(&primary, Duration::from_secs(2));
    // Each re-chain is counted before the agent prints it: the count below is then exact.
    agent.wait_line("kmesh-cni appended", Duration::from_secs(2));
    eprintln!("re-chained after rewrite {t1:?}, in-place write {t2:?}, delete+recreate {t3:?}");
    assert_eq!(
        plugins(&node.read("10-prim.conflist")).len(),
        3,
        "one entry, not two"
    );

    let (code, metrics) = agent.get("/metrics");
    assert_eq!(code, 200);
    for m in ["weft_agent_ready 1", "weft_chain_present 1"] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
    let rechains: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_rechains_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(rechains, 4, "re-chains counted:\n{metrics}");
    assert!(
        metrics.contains("# TYPE weft_ipam_addresses_used gauge"),
        "{metrics}"
    );
    assert_eq!(agent.get("/healthz").0, 200);

    // SIGTERM leaves the chain in place.
    agent.stop();
    assert!(chained(&primary), "the chain stays when the agent stops");
    assert!(!ready_file.exists(), "not ready once stopped");
}

#[test]
fn uninstall_on_exit_restores_the_primary() {
    let node = TestNode::new();
    let primary = node.write("10-prim.conflist", PRIMARY);
    let mut agent = Agent::start(&node, &["--uninstall-on-exit"]);
    agent.wait_line("ready (kmesh-cni chained)", Duration::from_secs(10));
    assert!(chained(&primary));
    agent.stop();
    assert_eq!(
        node.read("10-prim.conflist"),
        PRIMARY,
        "original bytes back"
    );
    assert!(!node.bin.join("kmesh-cni").exists(), "binaries removed");
}

#[test]
fn once_reports_whether_the_chain_is_in_place() {
    let node = TestNode::new();
    let src = bin_dir();
    let once = |n: &TestNode| n.weft(&["watch", "--once", "--source-dir", src.to_str().unwrap()]);
    let out = once(&node);
    assert!(
        !out.success(),
        "no primary: not chained:\n{}",
        out.describe()
    );
    node.write("10-prim.conflist", PRIMARY);
    once(&node).assert_success("watch --once with a primary");
    assert!(chained(&node.conf.join("10-prim.conflist")));
}
