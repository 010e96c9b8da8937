//! In-place upgrade: pods attached by the previous release (built from this repository's history,
//! `integration::previous`) keep working under the binaries under test, and everything that
//! release wrote (kmesh-cni records and layout-1 pinned maps, weft-ipam v1 pool files, bare-node
//! etcd block values) is read, served, DELeted and GCed, never discarded.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::kmesh_net::prerequisites;
use integration::cni::{exec_plugin, Cnitool, PluginEnv};
use integration::etcd::EtcdCluster;
use integration::fixtures::bpffs::Isolation;
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::fixtures::pods::{tcp_exchange, Listener};
use integration::plugins::CniPath;
use integration::proc::Output;
use serde_json::{json, Value};
use tempfile::TempDir;

const NET: &str = "upgrade";

struct Pod {
    cid: String,
    ip: IpAddr,
    ns: TestNetns,
}

/// One node whose binaries get replaced: the same conflist, state dir, pin root and libcni cache
/// before and after, only CNI_PATH changes.
struct Node {
    tool: Cnitool,
    // Kept alive: the cnitool ran the old binaries from here before the upgrade.
    _old: CniPath,
    new: CniPath,
    ipam: Value,
    _bridge: HostLink,
    _store: TempDir,
    iso: Isolation,
}

impl Node {
    fn new(range: &str) -> Node {
        let old = CniPath::with_bin_dir(
            &integration::previous::binaries().expect("build the previous release"),
        );
        let new = CniPath::new();
        let iso = Isolation::new();
        let store = TempDir::new().unwrap();
        let bridge = HostLink::adopt(&unique_ifname("wub"));
        let ipam = json!({"type": "weft-ipam", "range": range,
                          "store": {"type": "file", "dir": store.path()}});
        let mut tool = Cnitool::new(&old);
        tool.set_env("WEFT_STATE_DIR", iso.state_dir());
        tool.write_conflist(&json!({
            "cniVersion": "1.0.0", "name": NET,
            "plugins": [
                {"type": "bridge", "bridge": bridge.name(), "isGateway": true, "ipam": ipam},
                iso.plugin_conf(json!({"mode": "tcx", "enrolByDefault": true}))
            ]
        }));
        Node {
            tool,
            _old: old,
            new,
            ipam,
            _bridge: bridge,
            _store: store,
            iso,
        }
    }

    fn upgrade(&mut self) {
        self.tool.set_cni_path(&self.new);
    }

    fn run(&mut self, verb: &str, cid: &str, ns: &TestNetns) -> Output {
        self.tool.set_env("CNI_CONTAINERID", cid);
        self.tool.run(verb, NET, ns.path())
    }

    fn add(&mut self, tag: &str) -> Pod {
        let ns = TestNetns::new("wu");
        let cid = format!("{}-{tag}", ns.name());
        let out = self.run("add", &cid, &ns);
        out.assert_success(&format!("ADD {cid}"));
        let result = out.json();
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address: {result}"));
        Pod { cid, ip, ns }
    }

    /// GC at 1.1.0 to kmesh-cni and weft-ipam with the new binaries (direct exec).
    fn gc(&self, valid: &[&Pod]) {
        let list: Vec<Value> = valid
            .iter()
            .map(|p| json!({"containerID": p.cid, "ifname": "eth0"}))
            .collect();
        let env = PluginEnv::command("GC")
            .set("CNI_PATH", self.new.path_str())
            .set("WEFT_STATE_DIR", self.iso.state_dir());
        let mut kmesh = self
            .iso
            .plugin_conf(json!({"mode": "tcx", "enrolByDefault": true}));
        kmesh["cniVersion"] = json!("1.1.0");
        kmesh["name"] = json!(NET);
        kmesh["cni.dev/valid-attachments"] = json!(list);
        exec_plugin(
            &self.new.plugin("kmesh-cni"),
            &env,
            &serde_json::to_vec(&kmesh).unwrap(),
        )
        .assert_success("kmesh-cni GC");
        let ipam = json!({"cniVersion": "1.1.0", "name": NET, "type": "bridge",
                          "ipam": self.ipam, "cni.dev/valid-attachments": list});
        exec_plugin(
            &self.new.plugin("weft-ipam"),
            &env,
            &serde_json::to_vec(&ipam).unwrap(),
        )
        .assert_success("weft-ipam GC");
    }

    fn pool(&self) -> String {
        std::fs::read_to_string(self._store.path().join(NET).join("pool")).unwrap_or_default()
    }
}

#[test]
fn pods_of_the_previous_release_keep_working_and_are_cleaned_up_by_this_one() {
    if !prerequisites() {
        return;
    }
    let mut node = Node::new("10.236.20.0/24");
    // Before the upgrade: two pods attached by the previous release.
    let o1 = node.add("o1");
    let o2 = node.add("o2");
    assert!(
        node.pool().starts_with("weft-ipam pool v1\n"),
        "the previous release writes pool v1:\n{}",
        node.pool()
    );
    assert_eq!(
        node.iso.networks(),
        Vec::<String>::new(),
        "old records are flat"
    );
    assert_eq!(node.iso.records().len(), 2);
    let _listener = Listener::start_replying(&o2.ns, o2.ip, 7411, "o2");

    node.upgrade();
    // A new pod: the first exec of the new release moves the layout-1 maps aside; the old pods'
    // addresses are not handed out again.
    let n1 = node.add("n1");
    assert!(
        ![o1.ip, o2.ip].contains(&n1.ip),
        "duplicate address {}",
        n1.ip
    );
    assert!(node.iso.pin_root().join("legacy-v1/endpoints").exists());
    assert_eq!(node.iso.records_of(NET), vec![format!("{}:eth0", n1.cid)]);
    // The old pods still talk over their fast path (old program, layout-1 maps).
    let before = node.iso.legacy_counters().get("redirected_packets");
    assert_eq!(tcp_exchange(&o1.ns, o2.ip, 7411).as_deref(), Ok("o2"));
    assert!(
        node.iso.legacy_counters().get("redirected_packets") > before,
        "the old pods lost their fast path on upgrade"
    );
    // And everyone reaches everyone (old <-> new over the normal path).
    assert_eq!(tcp_exchange(&n1.ns, o2.ip, 7411).as_deref(), Ok("o2"));

    // CHECK of an old pod with the new binaries: record, link and layout-1 entries found.
    node.run("check", &o1.cid, &o1.ns)
        .assert_success("CHECK of an old pod after the upgrade");
    // DEL of an old pod: its layout-1 entries, link and record go; its address is freed.
    let links_before = node.iso.link_pins().len();
    node.run("del", &o1.cid, &o1.ns)
        .assert_success("DEL of an old pod after the upgrade");
    assert_eq!(
        node.iso.link_pins().len(),
        links_before - 1,
        "old pod's link pin left"
    );
    assert!(!node.iso.records().contains(&format!("{}:eth0", o1.cid)));
    assert!(
        !node.pool().contains(&o1.cid),
        "old pod's address kept:\n{}",
        node.pool()
    );

    // GC names o2 and n1: o2's legacy record and reservation are adopted into the network.
    node.gc(&[&o2, &n1]);
    let mut want: Vec<String> = [&o2, &n1]
        .iter()
        .map(|p| format!("{}:eth0", p.cid))
        .collect();
    want.sort();
    assert_eq!(node.iso.records_of(NET), want, "o2 adopted, n1 kept");
    assert!(
        node.pool().starts_with("weft-ipam pool v2\n")
            && node
                .pool()
                .contains(&format!("{} {NET} {} eth0", o2.ip, o2.cid)),
        "o2's reservation not adopted:\n{}",
        node.pool()
    );
    node.run("check", &o2.cid, &o2.ns)
        .assert_success("CHECK of the adopted old pod");
    for p in [&o2, &n1] {
        node.run("del", &p.cid, &p.ns)
            .assert_success(&format!("DEL {}", p.cid));
    }
    // Nothing left, and with the last legacy record gone GC drops the layout-1 pins.
    node.gc(&[]);
    assert!(node.iso.records().is_empty());
    assert!(node.iso.attached().is_empty());
    assert!(node.iso.endpoints().is_empty());
    assert!(!node.iso.pin_root().join("legacy-v1").exists());
    assert!(!node.pool().lines().any(|l| l.starts_with("10.")));
}

/// The etcd store: a block the previous release claimed (value = bare node name) stays that
/// node's under the new binaries: the node keeps serving from it, another node steps around it,
/// and GC releases it once empty.
#[test]
fn etcd_blocks_of_the_previous_release_are_served_and_released() {
    if !EtcdCluster::require() {
        return;
    }
    let cluster = EtcdCluster::start().expect("etcd cluster");
    let old = CniPath::with_bin_dir(
        &integration::previous::binaries().expect("build the previous release"),
    );
    let new = CniPath::new();
    let dir = TempDir::new().unwrap();
    let conf = |verb_version: &str| {
        json!({"cniVersion": verb_version, "name": "up-etcd", "type": "bridge", "ipam": {
            "type": "weft-ipam", "range": "10.236.21.0/24", "node_slice_size": "/28",
            "store": {"type": "etcd", "endpoints": cluster.endpoints(), "prefix": "/weft-up",
                      "dir": dir.path()}}})
    };
    let exec = |bins: &CniPath, verb: &str, node: &str, cid: &str| -> Output {
        let env = PluginEnv::verb(verb, cid, "/proc/self/ns/net", "eth0", bins.path_str())
            .set("NODENAME", node);
        exec_plugin(
            &bins.plugin("weft-ipam"),
            &env,
            &serde_json::to_vec(&conf("1.0.0")).unwrap(),
        )
    };
    let ip_of = |out: &Output| -> IpAddr {
        out.json()["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address: {}", out.describe()))
    };
    let a1 = exec(&old, "ADD", "node-a", "a1");
    a1.assert_success("old ADD on node-a");
    let keys = cluster.get_prefix("/weft-up/up-etcd/blocks/").unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys[0].1, "node-a",
        "the previous release writes a bare node name"
    );

    // New binaries on node-a keep serving from its block; node-b claims another one.
    let a2 = exec(&new, "ADD", "node-a", "a2");
    a2.assert_success("new ADD on node-a");
    let b1 = exec(&new, "ADD", "node-b", "b1");
    b1.assert_success("new ADD on node-b");
    let ips: BTreeSet<IpAddr> = [&a1, &a2, &b1].iter().map(|o| ip_of(o)).collect();
    assert_eq!(ips.len(), 3, "duplicate address");
    let block = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u32::from(v4) >> 4, // the /28 it lies in
        IpAddr::V6(_) => unreachable!("IPv4 range"),
    };
    assert_eq!(
        block(ip_of(&a2)),
        block(ip_of(&a1)),
        "node-a left its old block"
    );
    assert_ne!(
        block(ip_of(&b1)),
        block(ip_of(&a1)),
        "node-b served from node-a's old block"
    );
    let status = exec_plugin(
        &new.plugin("weft-ipam"),
        &PluginEnv::command("STATUS").set("NODENAME", "node-a"),
        &serde_json::to_vec(&conf("1.1.0")).unwrap(),
    );
    status.assert_success("STATUS with a block of the previous release");

    // Drained and GCed by the new binaries: the old block is released.
    for cid in ["a1", "a2"] {
        exec(&new, "DEL", "node-a", cid).assert_success("DEL");
    }
    let mut gc = conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    exec_plugin(
        &new.plugin("weft-ipam"),
        &PluginEnv::command("GC")
            .set("NODENAME", "node-a")
            .set("CNI_PATH", new.path_str()),
        &serde_json::to_vec(&gc).unwrap(),
    )
    .assert_success("GC on node-a");
    let keys = cluster.get_prefix("/weft-up/up-etcd/blocks/").unwrap();
    assert!(
        keys.iter().all(|(_, v)| !v.contains("node-a")),
        "node-a's old block not released: {keys:?}"
    );
}
