//! What ships is static-pie (.cargo/config.toml, issue 12): no dynamic loader, no shared object,
//! and host names still resolve. A static glibc binary that needed `libnss_*.so` would resolve
//! nothing on a node whose glibc differs, or in the FROM-scratch image; glibc >= 2.34 carries
//! nss_files and nss_dns in libc itself. These tests run the binaries in a chroot that holds only
//! the binary and a few files of /etc, so any shared object they tried to load is simply absent.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::cni::PluginEnv;
use integration::etcd::EtcdCluster;
use integration::plugins::weft_binary;
use integration::prereq::{require, require_root};
use integration::proc::{command, run, Output};
use serde_json::json;
use tempfile::TempDir;

const SHIPPED: [&str; 4] = ["weft", "kmesh-cni", "weft-ipam", "weft-sriov"];

/// Whether the ELF file at `path` names a program interpreter (PT_INTERP): a dynamically linked
/// executable does, a static or static-pie one does not.
fn has_interpreter(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(path).unwrap();
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF") && elf[4] == 2 && elf[5] == 1,
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == PT_INTERP
    })
}

/// A root directory holding one binary (`/<name>`) and the given files; nothing else, no
/// /lib, no /usr, no /proc.
struct Chroot {
    dir: TempDir,
    binary: PathBuf,
}

impl Chroot {
    fn with_binary(name: &str, files: &[(&str, &str)]) -> Chroot {
        let dir = TempDir::with_prefix("weft-chroot-").unwrap();
        let binary = Path::new("/").join(name);
        std::fs::copy(weft_binary(name), dir.path().join(name)).unwrap();
        for (path, text) in files {
            let at = dir.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(at, text).unwrap();
        }
        Chroot { dir, binary }
    }

    /// A private (0700) directory inside the root; returns its path as seen from inside.
    fn private_dir(&self, path: &str) -> PathBuf {
        let at = self.dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&at).unwrap();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o700)).unwrap();
        Path::new("/").join(path.trim_start_matches('/'))
    }

    /// The binary, to be started inside the root.
    fn command(&self) -> Command {
        let root = CString::new(self.dir.path().as_os_str().as_bytes()).unwrap();
        let mut cmd = Command::new(&self.binary);
        // SAFETY: chroot and chdir are raw syscalls (async-signal-safe); the path was
        // allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    fn run(&self, env: &PluginEnv, stdin: &[u8]) -> Output {
        let mut cmd = self.command();
        env.apply(&mut cmd);
        run(&mut cmd, stdin).unwrap().0
    }
}

#[test]
fn shipped_binaries_need_no_loader_and_no_shared_object() {
    if !require_root() {
        return;
    }
    for name in SHIPPED {
        let path = weft_binary(name);
        assert!(
            !has_interpreter(&path),
            "{} is dynamically linked (names a program interpreter); .cargo/config.toml builds \
             static-pie binaries",
            path.display()
        );
        let root = Chroot::with_binary(name, &[]);
        let out = if name == "weft" {
            let mut cmd = root.command();
            cmd.arg("--version");
            run(&mut cmd, b"").unwrap().0
        } else {
            root.run(&PluginEnv::command("VERSION"), b"")
        };
        out.assert_success(&format!("{name} in an empty chroot"));
        assert!(
            !out.stdout.is_empty(),
            "{name} printed nothing in an empty chroot"
        );
    }
}

/// dnsmasq on its own loopback address, answering `names` with 127.0.0.1 and nothing else
/// (no upstream, no /etc/hosts), logging every query. Killed by PID on drop.
struct Dns {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Dns {
    const ADDRESS: &'static str = "127.0.0.153";

    fn start(names: &[&str]) -> Dns {
        let dir = TempDir::with_prefix("weft-dns-").unwrap();
        let log = dir.path().join("queries.log");
        let mut cmd = command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
        ])
        .args([
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--pid-file",
        ])
        .arg(format!("--listen-address={}", Dns::ADDRESS))
        .arg("--log-queries")
        .arg(format!("--log-facility={}", log.display()));
        for name in names {
            cmd.arg(format!("--address=/{name}/127.0.0.1"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let dns = Dns {
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dns.queries().contains("started") {
            assert!(Instant::now() < deadline, "dnsmasq did not start in 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        dns
    }

    fn queries(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcd_endpoints_given_as_host_names_resolve_through_hosts_and_dns() {
    if !(require_root() && EtcdCluster::require() && require(&["dnsmasq"])) {
        return;
    }
    let cluster = EtcdCluster::start().unwrap();
    let dns = Dns::start(&["etcd.dns.weft.test"]);
    let root = Chroot::with_binary(
        "weft-ipam",
        &[
            (
                "/etc/hosts",
                "127.0.0.1 localhost\n127.0.0.1 etcd.hosts.weft.test\n",
            ),
            ("/etc/nsswitch.conf", "hosts: files dns\n"),
            (
                "/etc/resolv.conf",
                &format!(
                    "nameserver {}\noptions timeout:1 attempts:1\n",
                    Dns::ADDRESS
                ),
            ),
        ],
    );
    let locks = root.private_dir("/state");
    let by_name = |host: &str| -> Vec<String> {
        cluster
            .endpoints()
            .iter()
            .map(|url| url.replace("127.0.0.1", host))
            .collect()
    };
    let add = |cid: &str, host: &str| -> Output {
        let conf = json!({
            "cniVersion": "1.1.0", "name": "static-nss", "type": "bridge",
            "ipam": {"type": "weft-ipam", "range": "10.239.8.0/24",
                     "store": {"type": "etcd", "endpoints": by_name(host), "prefix": "/weft-static",
                               "timeout_ms": 3000, "dir": locks}},
        });
        let env = PluginEnv::verb("ADD", cid, "/proc/self/ns/net", "eth0", "/")
            .set("NODENAME", "static-node");
        root.run(&env, &serde_json::to_vec(&conf).unwrap())
    };

    // /etc/hosts (nss_files): the first ADD claims a block in etcd.
    let first = add("c-hosts", "etcd.hosts.weft.test");
    first.assert_success("ADD with etcd named in /etc/hosts");
    let address = first.json()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(address.starts_with("10.239.8."), "{address}");
    assert_eq!(
        cluster
            .count_keys("/weft-static/static-nss/blocks/")
            .unwrap(),
        1,
        "the ADD claimed its block in etcd"
    );
    assert!(
        !dns.queries().contains("etcd.hosts.weft.test"),
        "a name in /etc/hosts went to DNS"
    );

    // DNS (nss_dns): a name only the DNS server knows. A fresh store dir, so this ADD must talk
    // to etcd again (its node adopts the block etcd says it holds).
    std::fs::remove_dir_all(root.dir.path().join("state")).unwrap();
    root.private_dir("/state");
    let second = add("c-dns", "etcd.dns.weft.test");
    second.assert_success("ADD with etcd named only in DNS");
    assert!(
        dns.queries().contains("query[A] etcd.dns.weft.test"),
        "the static binary did not ask the DNS server; its log:\n{}",
        dns.queries()
    );

    // A name nobody knows fails as etcd being unreachable would (retry later), not as a crash.
    std::fs::remove_dir_all(root.dir.path().join("state")).unwrap();
    root.private_dir("/state");
    let unknown = add("c-nowhere", "etcd.nowhere.weft.test");
    unknown.err(11);
    assert!(dns.queries().contains("etcd.nowhere.weft.test"));
}
