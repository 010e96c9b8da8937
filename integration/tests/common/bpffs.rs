//! Isolation for tests that run kmesh-cni: every test gets its own pin root on bpffs and its own
//! `WEFT_STATE_DIR`, so tests never share (or leave behind) maps, programs, tcx links or records
//! in /sys/fs/bpf/weft and /var/lib/cni. Readers for what kmesh-cni left there go through
//! `bpftool`, the tool an operator would use, not through our own bpf crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use integration::proc::cmd;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The directory under which every test pin root is created (a bpffs mount).
const BPFFS: &str = "/sys/fs/bpf";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's private pin root and state dir. Both are removed on drop, also while a failing
/// test unwinds. Removing the pins detaches every tcx link pinned there and frees the maps and
/// program once nothing else holds them (legacy tc filters go with the veths they sit on).
pub struct Isolation {
    pin_root: PathBuf,
    state: TempDir,
}

impl Isolation {
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin_root = Path::new(BPFFS).join(format!("weft-it-{}-{n}", std::process::id()));
        // A leftover from a crashed run with the same pid would make counters meaningless.
        remove_tree(&pin_root);
        Isolation {
            pin_root,
            state: tempfile::Builder::new()
                .prefix("weft-state-")
                .tempdir()
                .expect("create WEFT_STATE_DIR temp dir"),
        }
    }

    /// The `pinRoot` to put in kmesh-cni's config (kmesh-cni creates it on first use).
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    pub fn pin_root_str(&self) -> &str {
        self.pin_root.to_str().expect("UTF-8 pin root")
    }

    /// The value of `WEFT_STATE_DIR` for kmesh-cni (records live in `<dir>/kmesh-cni/`).
    pub fn state_dir(&self) -> &str {
        self.state.path().to_str().expect("UTF-8 temp dir")
    }

    /// kmesh-cni's plugin entry for a conflist, with our pin root and `extra` keys merged in.
    pub fn plugin_conf(&self, extra: Value) -> Value {
        let mut conf = json!({"type": "kmesh-cni", "pinRoot": self.pin_root_str()});
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        conf
    }

    /// `<WEFT_STATE_DIR>/kmesh-cni/<network>/<cid>:<ifname>` of whichever network holds the
    /// attachment (a test attaches a container through one network; the legacy location
    /// `<WEFT_STATE_DIR>/kmesh-cni/<cid>:<ifname>` when none does).
    pub fn record_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        let name = format!("{container_id}:{ifname}");
        let plugin = self.state.path().join("kmesh-cni");
        self.networks()
            .into_iter()
            .map(|n| plugin.join(n).join(&name))
            .find(|p| p.exists())
            .unwrap_or_else(|| plugin.join(&name))
    }

    /// The networks kmesh-cni keeps records for (its subdirectories), sorted.
    pub fn networks(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.state.path().join("kmesh-cni"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    /// Names of the records of `network` (`<cid>:<ifname>`), sorted.
    pub fn records_of(&self, network: &str) -> Vec<String> {
        let mut out: Vec<String> =
            std::fs::read_dir(self.state.path().join("kmesh-cni").join(network))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(':'))
                .collect();
        out.sort();
        out
    }

    /// The record of one attachment, if present.
    pub fn record(&self, container_id: &str, ifname: &str) -> Option<Value> {
        let bytes = std::fs::read(self.record_path(container_id, ifname)).ok()?;
        Some(serde_json::from_slice(&bytes).expect("record is JSON"))
    }

    /// Names of every attachment record of every network and legacy ones
    /// (`<cid>:<ifname>`), sorted.
    pub fn records(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.state.path().join("kmesh-cni"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(':'))
            .collect();
        for net in self.networks() {
            out.extend(self.records_of(&net));
        }
        out.sort();
        out
    }

    /// Names of the tcx link pins under `<pinRoot>/links/`, sorted.
    pub fn link_pins(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.pin_root.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    fn map_pin(&self, name: &str) -> PathBuf {
        self.pin_root.join(name)
    }

    /// `bpftool map dump pinned <root>/<name> -j`; an empty list when the map was never pinned.
    fn dump(&self, name: &str) -> Vec<Value> {
        let pin = self.map_pin(name);
        if !pin.exists() {
            return Vec::new();
        }
        let out = cmd(
            "bpftool",
            &["-j", "map", "dump", "pinned", pin.to_str().unwrap()],
        );
        out.assert_success(&format!("bpftool map dump {}", pin.display()));
        match out.json() {
            Value::Array(a) => a,
            other => panic!("bpftool dump of {name} is not a list: {other}"),
        }
    }

    /// The `counters` map summed over all CPUs: field name -> total (all zero before the map
    /// exists). Needs the map's BTF (bpftool's "formatted" view), which our object carries.
    pub fn counters(&self) -> Counters {
        self.counters_in("counters")
    }

    /// The counters of the pods a release before network scoping attached (its maps are moved
    /// to `<root>/legacy-v1/` by the first exec of a newer release).
    pub fn legacy_counters(&self) -> Counters {
        self.counters_in("legacy-v1/counters")
    }

    fn counters_in(&self, pin: &str) -> Counters {
        let mut sum = Counters::default();
        for entry in self.dump(pin) {
            let per_cpu = entry
                .pointer("/formatted/values")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("counters dump without BTF-formatted values: {entry}"));
            for cpu in per_cpu {
                for (field, v) in cpu["value"].as_object().expect("counters value object") {
                    *sum.0.entry(field.clone()).or_default() +=
                        v.as_u64().expect("counter is a number");
                }
            }
        }
        sum
    }

    /// Every `endpoints` entry.
    pub fn endpoints(&self) -> Vec<EndpointEntry> {
        self.dump("endpoints")
            .iter()
            .map(|e| {
                let f = e
                    .get("formatted")
                    .unwrap_or_else(|| panic!("endpoints dump without BTF: {e}"));
                let addr: Vec<u8> = f["key"]["addr"]
                    .as_array()
                    .expect("key.addr")
                    .iter()
                    .map(|b| b.as_u64().expect("byte") as u8)
                    .collect();
                let ip = match f["key"]["family"].as_u64() {
                    Some(4) => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
                    Some(6) => IpAddr::V6(Ipv6Addr::from(
                        <[u8; 16]>::try_from(addr.as_slice()).expect("16 bytes"),
                    )),
                    other => panic!("endpoint key family {other:?}: {e}"),
                };
                EndpointEntry {
                    // 0: a layout-1 key (releases before network scoping had none).
                    network: f["key"]["network"].as_u64().unwrap_or(0),
                    ip,
                    ifindex: f["value"]["ifindex"].as_u64().expect("ifindex") as u32,
                    flags: f["value"]["flags"].as_u64().expect("flags") as u32,
                    owner: f["value"]["owner"].as_u64().expect("owner"),
                }
            })
            .collect()
    }

    /// The `endpoints` entry for `ip`, if any.
    pub fn endpoint(&self, ip: IpAddr) -> Option<EndpointEntry> {
        self.endpoints().into_iter().find(|e| e.ip == ip)
    }

    /// Every `devices` entry: (host veth ifindex, network id, owner).
    pub fn devices(&self) -> Vec<(u32, u64, u64)> {
        self.dump("devices")
            .iter()
            .map(|e| {
                let f = e
                    .get("formatted")
                    .unwrap_or_else(|| panic!("devices dump without BTF: {e}"));
                (
                    f["key"].as_u64().expect("ifindex") as u32,
                    f["value"]["network"].as_u64().expect("network"),
                    f["value"]["owner"].as_u64().expect("owner"),
                )
            })
            .collect()
    }

    /// Every `managed` entry: (netns cookie, flags, ifindex).
    pub fn managed(&self) -> Vec<(u64, u32, u32)> {
        self.dump("managed")
            .iter()
            .map(|e| {
                let f = e
                    .get("formatted")
                    .unwrap_or_else(|| panic!("managed dump without BTF: {e}"));
                (
                    f["key"].as_u64().expect("cookie"),
                    f["value"]["flags"].as_u64().expect("flags") as u32,
                    f["value"]["ifindex"].as_u64().expect("ifindex") as u32,
                )
            })
            .collect()
    }

    /// `max_entries` of a pinned map (bpftool map show).
    pub fn map_max_entries(&self, name: &str) -> u64 {
        let pin = self.map_pin(name);
        let out = cmd(
            "bpftool",
            &["-j", "map", "show", "pinned", pin.to_str().unwrap()],
        );
        out.assert_success(&format!("bpftool map show {}", pin.display()));
        out.json()["max_entries"]
            .as_u64()
            .unwrap_or_else(|| panic!("no max_entries for {name}: {}", out.stdout))
    }

    /// Inserts `count` `managed` entries with keys `first_key..` (value: enrolled, ifindex 0)
    /// in one `bpftool batch`, as another agent sharing the pinned map could.
    pub fn fill_managed(&self, first_key: u64, count: u64) {
        let pin = self.map_pin("managed");
        let mut batch = tempfile::NamedTempFile::new().expect("batch file");
        {
            use std::io::Write;
            let mut w = std::io::BufWriter::new(batch.as_file_mut());
            for key in first_key..first_key + count {
                let hex: Vec<String> = key
                    .to_le_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                writeln!(
                    w,
                    "map update pinned {} key hex {} value hex 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
                    pin.display(),
                    hex.join(" ")
                )
                .expect("write batch file");
            }
            w.flush().expect("flush batch file");
        }
        cmd(
            "bpftool",
            &["batch", "file", batch.path().to_str().unwrap()],
        )
        .assert_success(&format!("bpftool batch: fill {}", pin.display()));
    }

    /// Deletes one `managed` entry (bpftool map delete).
    pub fn delete_managed(&self, key: u64) {
        let pin = self.map_pin("managed");
        let mut args = vec![
            "map".to_owned(),
            "delete".into(),
            "pinned".into(),
            pin.to_str().unwrap().into(),
            "key".into(),
            "hex".into(),
        ];
        args.extend(key.to_le_bytes().iter().map(|b| format!("{b:02x}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cmd("bpftool", &args).assert_success("bpftool map delete");
    }

    /// The kernel program id of the tcx link pinned as `links/<pin>` (bpftool link show).
    pub fn link_prog_id(&self, pin: &str) -> u64 {
        let path = self.pin_root.join("links").join(pin);
        let out = cmd(
            "bpftool",
            &["-j", "link", "show", "pinned", path.to_str().unwrap()],
        );
        out.assert_success(&format!("bpftool link show pinned {}", path.display()));
        out.json()["prog_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no prog_id for link {pin}: {}", out.stdout))
    }
}

impl Default for Isolation {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        remove_tree(&self.pin_root);
        if self.pin_root.exists() {
            let msg = format!("could not remove test pin root {}", self.pin_root.display());
            // A second panic while unwinding would abort the whole test binary.
            if std::thread::panicking() {
                eprintln!("warning: {msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// `rm -rf` for a pin tree (bpffs allows unlink/rmdir of pins and directories).
fn remove_tree(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("warning: removing {}: {e}", path.display()),
    }
}

/// Per-CPU counters summed, by field name of `struct weft_counters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(pub std::collections::BTreeMap<String, u64>);

impl Counters {
    pub fn get(&self, field: &str) -> u64 {
        self.0.get(field).copied().unwrap_or(0)
    }
}

/// One `endpoints` map entry as bpftool shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointEntry {
    /// Network id (`bpf::network_id` of the CNI network name).
    pub network: u64,
    pub ip: IpAddr,
    pub ifindex: u32,
    pub flags: u32,
    pub owner: u64,
}
