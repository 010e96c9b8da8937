//! The weft image, built with Debian's podman from deploy/Containerfile (FROM scratch, via
//! deploy/build-image.sh), run the way deploy/weft.yaml runs it: the init container's and the
//! agent's commands and hostPath mounts are read from the manifest, privileged, host network.
//! The node's /opt/cni/bin, /etc/cni/net.d and /var/lib/cni are this test's temp dirs (with a
//! bridge + host-local primary already there, as a node with a primary CNI has), the pin root a
//! private one. It must install and chain, turn Ready, and a pod created afterwards through the
//! chained config must get the fast path (kmesh-cni record, redirected packets in the agent's
//! metrics).
//!
//! podman runs with its own image store (vfs, a temp dir), runc (crun refuses this kernel's
//! hybrid cgroup layout) and ulimits within what this sandbox lets root set.

mod common;

use common::deploy::{container, daemonset, host_mounts, pyvenv};
use common::{unique, TestNode};
use integration::cni::Cnitool;
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::plugins::{bin_dir, workspace_root, CniPath};
use integration::prereq::{require, require_netns_env};
use integration::proc::{run, Output};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A private podman: its own store, run dir, network config dir and temp dir, removed on drop
/// together with the containers and image of this test.
struct Podman {
    dir: tempfile::TempDir,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("weft-podman-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("net")).unwrap();
        Podman {
            dir,
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    fn global(&self) -> Vec<String> {
        let d = self.dir.path().display();
        vec![
            format!("--root={d}/root"),
            format!("--runroot={d}/run"),
            "--storage-driver=vfs".into(),
            "--runtime=runc".into(),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=none".into(),
            format!("--network-config-dir={d}/net"),
            format!("--tmpdir={d}/tmp"),
        ]
    }

    fn cmd(&self, args: &[&str]) -> Output {
        let mut c = Command::new(integration::prereq::program("podman"));
        c.args(self.global()).args(args);
        run(&mut c, b"").expect("run podman").0
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.cmd(&["rm", "-f", "-t", "2", c]);
        }
        for i in &self.images {
            let _ = self.cmd(&["rmi", "-f", i]);
        }
    }
}

/// Limits root may set here (no CAP_SYS_RESOURCE): nofile as it is, nproc no higher than what
/// podman lowers itself to.
fn ulimits() -> Vec<String> {
    let get = |r| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a local.
        unsafe { libc::getrlimit(r, &mut l) };
        l
    };
    let nofile = get(libc::RLIMIT_NOFILE);
    let nproc = get(libc::RLIMIT_NPROC).rlim_cur.min(32 * 1024);
    vec![
        format!("--ulimit=nofile={}:{}", nofile.rlim_max, nofile.rlim_max),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, resp.split_once("\r\n\r\n")?.1.to_owned()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// podman run arguments for `c` of the DaemonSet: its hostPath mounts (node paths mapped to
/// this test's stand-ins), its command as entrypoint + args.
fn run_args(ds: &Value, c: &Value, node: &TestNode, image: &str, extra: &[String]) -> Vec<String> {
    let map = |host: &str| -> PathBuf {
        match host {
            "/opt/cni/bin" => node.bin.clone(),
            "/etc/cni/net.d" => node.conf.clone(),
            "/var/lib/cni" => node.state.clone(),
            other => PathBuf::from(other),
        }
    };
    let mut args: Vec<String> = vec!["--privileged".into(), "--network=host".into()];
    args.extend(ulimits());
    for (host, mount, propagation) in host_mounts(ds, c) {
        let src = map(&host);
        std::fs::create_dir_all(&src).unwrap();
        let opt = match propagation.as_deref() {
            Some("Bidirectional") => ":rshared",
            Some("HostToContainer") => ":rslave",
            _ => "",
        };
        args.push(format!("--volume={}:{mount}{opt}", src.display()));
    }
    let cmd: Vec<String> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    args.push(format!("--entrypoint={}", cmd[0]));
    args.push("--env=NODENAME=weft-image-test".into());
    args.push(image.to_owned());
    for a in &cmd[1..] {
        // The agent listens on a private port here: other agents may run on this machine.
        if !a.starts_with("--listen=") {
            args.push(a.clone());
        }
    }
    args.extend_from_slice(extra);
    args
}

#[test]
fn image_installs_chains_and_pods_get_the_fast_path() {
    if !(require_netns_env() && require(&["podman", "runc", "ldd", "ping"])) {
        return;
    }
    let Some(venv) = pyvenv() else { return };
    let ds = daemonset(&venv);
    let podman = &mut Podman::new();
    let tag = format!("localhost/{}:test", unique("weft-image"));
    let start = Instant::now();
    let build = run(
        Command::new(workspace_root().join("deploy/build-image.sh"))
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--tag")
            .arg(&tag)
            .env(
                "PODMAN",
                format!(
                    "{} {}",
                    integration::prereq::program("podman"),
                    podman.global().join(" ")
                ),
            ),
        b"",
    )
    .unwrap()
    .0;
    podman.images.push(tag.clone());
    build.assert_success("deploy/build-image.sh");
    eprintln!("image {tag} built in {:?}", start.elapsed());

    // A node whose primary CNI (reference bridge + host-local) is installed and configured.
    let mut node = TestNode::with_bpffs();
    let cni_path = CniPath::new();
    let mut tool = Cnitool::new(&cni_path);
    let bridge = HostLink::adopt(&unique_ifname("wib"));
    let data = tempfile::tempdir().unwrap();
    let net = unique("wimg");
    let octet = (std::process::id() % 200) as u8 + 20;
    let primary = tool.write_conflist(&json!({
        "cniVersion": "1.0.0", "name": net,
        "plugins": [{"type": "bridge", "bridge": bridge.name(), "isGateway": true,
                     "ipam": {"type": "host-local", "subnet": format!("10.238.{octet}.0/24"),
                              "dataDir": data.path()}}]
    }));
    node.conf = primary.parent().unwrap().to_path_buf();
    for p in ["bridge", "host-local", "loopback"] {
        std::fs::copy(Path::new("/usr/lib/cni").join(p), node.bin.join(p)).unwrap();
    }
    let pin = format!("--pin-root={}", node.pin_root_str());

    // The init container, then the agent, as the DaemonSet runs them.
    let init = container(&ds, "install");
    let mut args = vec!["run".to_string(), "--rm".into()];
    args.extend(run_args(
        &ds,
        &init,
        &node,
        &tag,
        std::slice::from_ref(&pin),
    ));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    podman.cmd(&a).assert_success("the init container");
    assert!(node.bin.join("kmesh-cni").is_file() && node.bin.join("weft-ipam").is_file());
    assert_eq!(
        common::plugins(&std::fs::read_to_string(&primary).unwrap()).len(),
        1,
        "the init container only copies binaries"
    );

    let name = unique("weft-agent");
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = container(&ds, "agent");
    let mut args = vec![
        "run".to_string(),
        "--detach".into(),
        format!("--name={name}"),
    ];
    args.extend(run_args(
        &ds,
        &agent,
        &node,
        &tag,
        &[pin.clone(), format!("--listen={addr}")],
    ));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = podman.cmd(&a);
    podman.containers.push(name.clone());
    out.assert_success("the agent container");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = http_get(&addr, "/readyz") {
            break;
        }
        if Instant::now() > deadline {
            let logs = podman.cmd(&["logs", &name]);
            panic!("agent never ready:\n{}", logs.describe());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("agent ready {:?} after the build", start.elapsed());
    let text = std::fs::read_to_string(&primary).unwrap();
    let plugins = common::plugins(&text);
    assert_eq!(plugins.len(), 2, "{text}");
    assert_eq!(plugins[1]["type"], "kmesh-cni");
    assert_eq!(plugins[1]["pinRoot"], node.pin_root_str());

    // Pods created afterwards, through the chained config and the installed binaries.
    tool.set_env("CNI_PATH", node.bin.to_str().unwrap())
        .set_env("WEFT_STATE_DIR", node.state.to_str().unwrap());
    let pods: Vec<TestNetns> = (0..2).map(|_| TestNetns::new("wimg")).collect();
    let mut ips = Vec::new();
    for p in &pods {
        tool.set_env("CNI_CONTAINERID", p.name());
        let r = tool.add(&net, p.path());
        r.assert_success("ADD through the chain the image installed");
        ips.push(
            r.json()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned(),
        );
        assert!(
            node.state
                .join("kmesh-cni")
                .join(&net)
                .join(format!("{}:eth0", p.name()))
                .is_file(),
            "kmesh-cni record for {}",
            p.name()
        );
    }
    pods[0]
        .exec(&["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", &ips[1]])
        .assert_success("ping between the pods");
    let (_, metrics) = http_get(&addr, "/metrics").expect("metrics");
    let redirected: u64 = metrics
        .lines()
        .find(|l| l.starts_with("weft_fastpath_packets_total{path=\"redirected\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        redirected >= 6,
        "fast path not used ({redirected}):\n{metrics}"
    );
    assert!(metrics.contains("weft_agent_ready 1"), "{metrics}");
    let pid = podman
        .cmd(&["inspect", "--format", "{{.State.Pid}}", &name])
        .stdout;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
    eprintln!(
        "agent {}",
        status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for p in &pods {
        tool.set_env("CNI_CONTAINERID", p.name());
        tool.del(&net, p.path()).assert_success("DEL");
    }
    // SIGTERM (podman stop): the agent exits 0 and leaves the chain in place.
    podman
        .cmd(&["stop", "-t", "10", &name])
        .assert_success("podman stop");
    let code = podman
        .cmd(&["inspect", "--format", "{{.State.ExitCode}}", &name])
        .stdout;
    assert_eq!(code.trim(), "0", "agent exit code");
    assert_eq!(
        common::plugins(&std::fs::read_to_string(&primary).unwrap()).len(),
        2
    );
}
