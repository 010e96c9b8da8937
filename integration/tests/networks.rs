//! Many networks on one node (multus secondary networks, a conflist per tenant): every record,
//! reservation and map entry belongs to one network, and GC, DEL and the fast path of one network
//! never touch or reach another's. Real binaries: the reference bridge and host-local, weft-ipam
//! and kmesh-cni, chained by the libcni cnitool; GC (a 1.1.0 verb Debian's libcni 1.1.2 lacks) by
//! direct exec, as libcni >= 1.2 would send it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use common::kmesh_net::prerequisites;
use integration::cni::{exec_plugin, Cnitool, PluginEnv};
use integration::fixtures::bpffs::Isolation;
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::fixtures::pods::{netns_cookie, tcp_exchange, Listener};
use integration::plugins::CniPath;
use integration::proc::Output;
use serde_json::{json, Value};
use tempfile::TempDir;

/// How a network's chain gets its addresses.
#[derive(Clone)]
enum Ipam {
    /// host-local with its own data dir: every network starts at .2 of its subnet.
    HostLocal { subnet: String },
    /// weft-ipam's file store shared by the node, pools named by `network_name`.
    Weft { range: String, pool: String },
}

/// One node: a shared pin root and state dir (as /sys/fs/bpf/weft and /var/lib/cni are shared by
/// every network of a real node), a CNI_PATH, a cnitool and one conflist per network, each with
/// its own bridge.
///
/// Field order is drop order: pods (declared later by the tests) go first, then bridges, then
/// the stores, the pins and records last.
struct Node {
    tool: Cnitool,
    cni_path: CniPath,
    nets: BTreeMap<String, NetDef>,
    bridges: Vec<HostLink>,
    host_local: TempDir,
    weft_store: TempDir,
    iso: Isolation,
}

struct NetDef {
    ipam: Value,
}

/// A pod attached to one network.
struct Pod {
    net: String,
    cid: String,
    ip: IpAddr,
    ns: TestNetns,
}

impl Node {
    fn new() -> Node {
        let cni_path = CniPath::new();
        let iso = Isolation::new();
        let mut tool = Cnitool::new(&cni_path);
        tool.set_env("WEFT_STATE_DIR", iso.state_dir());
        Node {
            tool,
            cni_path,
            nets: BTreeMap::new(),
            bridges: Vec::new(),
            host_local: TempDir::new().unwrap(),
            weft_store: TempDir::new().unwrap(),
            iso,
        }
    }

    /// Writes conflist `name`: bridge (own bridge device) + IPAM, then kmesh-cni (tcx, enrolled
    /// by default so the `managed` map is exercised too).
    fn network(&mut self, name: &str, ipam: Ipam) {
        let bridge = HostLink::adopt(&unique_ifname("wnb"));
        let ipam = match ipam {
            Ipam::HostLocal { subnet } => json!({
                "type": "host-local", "subnet": subnet,
                "dataDir": self.host_local.path().join(name)
            }),
            Ipam::Weft { range, pool } => json!({
                "type": "weft-ipam", "range": range, "network_name": pool,
                "store": {"type": "file", "dir": self.weft_store.path()}
            }),
        };
        self.tool.write_conflist(&json!({
            "cniVersion": "1.0.0", "name": name,
            "plugins": [
                {"type": "bridge", "bridge": bridge.name(), "isGateway": true, "ipam": ipam},
                self.iso.plugin_conf(json!({"mode": "tcx", "enrolByDefault": true}))
            ]
        }));
        self.bridges.push(bridge);
        self.nets.insert(name.to_owned(), NetDef { ipam });
    }

    fn run(&mut self, verb: &str, net: &str, cid: &str, ns: &TestNetns) -> Output {
        self.tool.set_env("CNI_CONTAINERID", cid);
        self.tool.run(verb, net, ns.path())
    }

    /// ADD through network `net`'s chain, which must succeed.
    fn add(&mut self, net: &str, tag: &str) -> Pod {
        let ns = TestNetns::new("wn");
        let cid = format!("{}-{tag}", ns.name());
        let out = self.run("add", net, &cid, &ns);
        out.assert_success(&format!("ADD {cid} on {net}"));
        let result = out.json();
        let ip: IpAddr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {result}"));
        Pod {
            net: net.to_owned(),
            cid,
            ip,
            ns,
        }
    }

    fn check(&mut self, pod: &Pod) -> Output {
        let net = pod.net.clone();
        self.run("check", &net, &pod.cid, &pod.ns)
    }

    fn del(&mut self, pod: &Pod) {
        let net = pod.net.clone();
        self.run("del", &net, &pod.cid, &pod.ns)
            .assert_success(&format!("DEL {} on {}", pod.cid, pod.net));
    }

    /// GC of network `net` keeping `valid`, sent to kmesh-cni and to the network's weft-ipam
    /// (when it uses weft-ipam) by direct exec at 1.1.0, as libcni >= 1.2 sends it.
    fn gc(&self, net: &str, valid: &[&Pod]) {
        let attachments: Vec<Value> = valid
            .iter()
            .map(|p| {
                assert_eq!(p.net, net, "a valid attachment of another network");
                json!({"containerID": p.cid, "ifname": "eth0"})
            })
            .collect();
        let env = PluginEnv::command("GC")
            .set("CNI_PATH", self.cni_path.path_str())
            .set("WEFT_STATE_DIR", self.iso.state_dir());
        let mut kmesh = self
            .iso
            .plugin_conf(json!({"mode": "tcx", "enrolByDefault": true}));
        kmesh["cniVersion"] = json!("1.1.0");
        kmesh["name"] = json!(net);
        kmesh["cni.dev/valid-attachments"] = json!(attachments);
        exec_plugin(
            &self.cni_path.plugin("kmesh-cni"),
            &env,
            &serde_json::to_vec(&kmesh).unwrap(),
        )
        .assert_success(&format!("kmesh-cni GC of {net}"));
        let ipam = &self.nets[net].ipam;
        if ipam["type"] == "weft-ipam" {
            let conf = json!({
                "cniVersion": "1.1.0", "name": net, "type": "bridge", "ipam": ipam,
                "cni.dev/valid-attachments": attachments
            });
            exec_plugin(
                &self.cni_path.plugin("weft-ipam"),
                &env,
                &serde_json::to_vec(&conf).unwrap(),
            )
            .assert_success(&format!("weft-ipam GC of {net}"));
        }
    }
}

/// Issue 8, defect 1: kmesh-cni GC for `net1` removed a pod of `net2` (record, tcx link,
/// endpoints and managed entries), after which `cnitool check net2` failed.
#[test]
fn gc_of_one_network_leaves_the_pods_of_another() {
    if !prerequisites() {
        return;
    }
    let mut node = Node::new();
    node.network(
        "net1",
        Ipam::HostLocal {
            subnet: "10.236.1.0/24".into(),
        },
    );
    node.network(
        "net2",
        Ipam::HostLocal {
            subnet: "10.236.2.0/24".into(),
        },
    );
    let c7 = node.add("net2", "c7");
    let before = (
        node.iso.records_of("net2"),
        node.iso.attached(),
        node.iso.endpoints(),
        node.iso.managed(),
        node.iso.devices(),
    );
    assert_eq!(before.0, vec![format!("{}:eth0", c7.cid)]);
    assert_eq!(before.1.len(), 1, "one tcx link");
    assert_eq!(before.2.len(), 1, "one endpoint");
    assert_eq!(before.3.len(), 1, "one managed entry");

    // The request from the issue: GC for net1, whose only valid attachment is c1.
    let stranger = TestNetns::new("wn");
    let c1 = Pod {
        net: "net1".into(),
        cid: "c1".into(),
        ip: "10.236.1.2".parse().unwrap(),
        ns: stranger,
    };
    node.gc("net1", &[&c1]);

    let after = (
        node.iso.records_of("net2"),
        node.iso.attached(),
        node.iso.endpoints(),
        node.iso.managed(),
        node.iso.devices(),
    );
    assert_eq!(after, before, "GC of net1 changed net2's state");
    node.check(&c7)
        .assert_success("CHECK of net2's pod after net1's GC");

    // GC of net2 itself without c7 does remove it (the GC works; it is only scoped).
    node.gc("net2", &[]);
    assert!(node.iso.records_of("net2").is_empty());
    assert!(node.iso.endpoints().is_empty() && node.iso.managed().is_empty());
    assert!(node.iso.attached().is_empty() && node.iso.devices().is_empty());
    node.del(&c7);
}

/// Issue 8, defect 4: the `endpoints` map was keyed by address alone, so a pod of another network
/// with the same address overwrote the entry (and its DEL then removed the first pod's fast
/// path). Now each network has its own entry, each pod keeps its own, and the fast path delivers
/// within the sender's network only.
#[test]
fn the_same_address_in_two_networks_keeps_two_entries_and_never_crosses() {
    if !prerequisites() {
        return;
    }
    let mut node = Node::new();
    for net in ["blue", "green"] {
        node.network(
            net,
            Ipam::HostLocal {
                subnet: "10.236.3.0/24".into(),
            },
        );
    }
    // Both networks hand out .2 and .3 (the same subnet on two bridges).
    let blue_a = node.add("blue", "ba");
    let blue_b = node.add("blue", "bb");
    let green_a = node.add("green", "ga");
    let green_b = node.add("green", "gb");
    assert_eq!(blue_a.ip, green_a.ip);
    assert_eq!(blue_b.ip, green_b.ip);
    let endpoints = node.iso.endpoints();
    let networks: BTreeSet<u64> = endpoints.iter().map(|e| e.network).collect();
    assert_eq!(endpoints.len(), 4, "{endpoints:?}");
    assert_eq!(networks.len(), 2, "entries of two networks: {endpoints:?}");

    // Each sender reaches the pod of its own network, over the fast path.
    let port = 7311;
    let _listeners: Vec<Listener> = [&blue_a, &green_a]
        .iter()
        .map(|p| Listener::start_replying(&p.ns, p.ip, port, &p.net))
        .collect();
    let c0 = node.iso.counters().get("redirected_packets");
    assert_eq!(
        tcp_exchange(&blue_b.ns, blue_a.ip, port).as_deref(),
        Ok("blue")
    );
    assert_eq!(
        tcp_exchange(&green_b.ns, green_a.ip, port).as_deref(),
        Ok("green")
    );
    let c1 = node.iso.counters().get("redirected_packets");
    assert!(c1 > c0, "the exchanges did not take the fast path");

    // A pod of green goes; blue's pod with the same address keeps its entry and its CHECK.
    node.del(&green_a);
    node.check(&blue_a)
        .assert_success("CHECK of blue's pod after green's pod with its address left");
    let left: Vec<_> = node
        .iso
        .endpoints()
        .into_iter()
        .filter(|e| e.ip == blue_a.ip)
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        tcp_exchange(&blue_b.ns, blue_a.ip, port).as_deref(),
        Ok("blue")
    );
    for p in [&blue_a, &blue_b, &green_b] {
        node.del(p);
    }
    assert!(node.iso.endpoints().is_empty() && node.iso.devices().is_empty());
}

/// Issue 8, defect 4: the record did not keep `pinRoot`, so a DEL under a config naming another
/// pin root deleted the record and left the link pin, the tcx link and the endpoint behind.
#[test]
fn del_undoes_what_the_record_says_not_what_the_config_says_now() {
    if !prerequisites() {
        return;
    }
    let mut node = Node::new();
    node.network(
        "pins",
        Ipam::HostLocal {
            subnet: "10.236.4.0/24".into(),
        },
    );
    let pod = node.add("pins", "p");
    assert_eq!(node.iso.link_pins().len(), 1);
    // The operator edits pinRoot; the runtime's DEL comes with the new config.
    let other = Isolation::new();
    let mut conf = other.plugin_conf(json!({"mode": "tcx"}));
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!("pins");
    let env = PluginEnv::verb(
        "DEL",
        &pod.cid,
        pod.ns.path_str(),
        "eth0",
        node.cni_path.path_str(),
    )
    .set("WEFT_STATE_DIR", node.iso.state_dir());
    exec_plugin(
        &node.cni_path.plugin("kmesh-cni"),
        &env,
        &serde_json::to_vec(&conf).unwrap(),
    )
    .assert_success("kmesh-cni DEL with another pinRoot");
    assert!(node.iso.records().is_empty(), "record left");
    assert!(
        node.iso.link_pins().is_empty(),
        "link pin left in the recorded root"
    );
    assert!(
        node.iso.endpoints().is_empty(),
        "endpoint left in the recorded root"
    );
    assert!(
        node.iso.devices().is_empty(),
        "device entry left in the recorded root"
    );
    assert!(
        !other.pin_root().join("links").exists() || other.link_pins().is_empty(),
        "DEL created state under the new pin root"
    );
    node.del(&pod);
}

/// Three networks on one node, two of them sharing one weft-ipam pool (`network_name`) and the
/// third using the same CIDR with a pool of its own; ADD, DEL and GC interleaved on all of them.
/// Afterwards every live pod's CHECK passes, no address is held twice in a pool, every live pod
/// has exactly its own endpoint entry, and each pool holds exactly its live pods.
#[test]
fn three_networks_overlapping_cidrs_and_a_shared_pool() {
    if !prerequisites() {
        return;
    }
    let mut node = Node::new();
    let range = "10.236.10.0/24".to_string();
    for (net, pool) in [
        ("tenant-a", "shared"),
        ("tenant-b", "shared"),
        ("tenant-c", "own"),
    ] {
        node.network(
            net,
            Ipam::Weft {
                range: range.clone(),
                pool: pool.into(),
            },
        );
    }
    let p1 = node.add("tenant-a", "p1");
    let q1 = node.add("tenant-b", "q1");
    let p2 = node.add("tenant-a", "p2");
    let r1 = node.add("tenant-c", "r1");
    let q2 = node.add("tenant-b", "q2");
    let r2 = node.add("tenant-c", "r2");
    let q3 = node.add("tenant-b", "q3");
    // The shared pool hands out distinct addresses across its two networks; the third network's
    // own pool starts again at .2.
    let shared: BTreeSet<IpAddr> = [&p1, &q1, &p2, &q2, &q3].iter().map(|p| p.ip).collect();
    assert_eq!(shared.len(), 5, "duplicate in the shared pool");
    assert_eq!(r1.ip, "10.236.10.2".parse::<IpAddr>().unwrap());

    node.del(&p2);
    // tenant-b's runtime lost q2: its GC frees q2 and nothing of tenant-a or tenant-c.
    node.gc("tenant-b", &[&q1, &q3]);
    let p3 = node.add("tenant-a", "p3");
    node.gc("tenant-a", &[&p1, &p3]);
    node.gc("tenant-c", &[&r1, &r2]);
    let r3 = node.add("tenant-c", "r3");
    // q2's netns and veth are still there: its DEL must still succeed after GC.
    node.del(&q2);
    node.gc("tenant-b", &[&q1, &q3]);

    let live = [&p1, &p3, &q1, &q3, &r1, &r2, &r3];
    for pod in live {
        node.check(pod)
            .assert_success(&format!("CHECK of {} on {}", pod.cid, pod.net));
    }
    // Pools: exactly the live pods, each address once.
    let store = node.weft_store.path().to_path_buf();
    let pool = |name: &str| -> Vec<(IpAddr, String, String)> {
        let text = std::fs::read_to_string(store.join(name).join("pool")).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("10."))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0].parse().unwrap(), f[1].to_owned(), f[2].to_owned())
            })
            .collect()
    };
    let want = |pods: &[&Pod]| -> Vec<(IpAddr, String, String)> {
        let mut v: Vec<_> = pods
            .iter()
            .map(|p| (p.ip, p.net.clone(), p.cid.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(pool("shared"), want(&[&p1, &p3, &q1, &q3]));
    assert_eq!(pool("own"), want(&[&r1, &r2, &r3]));
    // Endpoints: one per live pod, in its own network, on its own veth.
    let endpoints = node.iso.endpoints();
    assert_eq!(endpoints.len(), live.len(), "{endpoints:?}");
    let per_network: BTreeMap<u64, usize> = endpoints.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.network).or_default() += 1;
        m
    });
    assert_eq!(
        per_network.len(),
        3,
        "three networks' entries: {per_network:?}"
    );
    let cookies: BTreeSet<u64> = node.iso.managed().iter().map(|m| m.0).collect();
    for pod in live {
        assert!(
            cookies.contains(&netns_cookie(&pod.ns)),
            "{} not enrolled",
            pod.cid
        );
    }
    for pod in live {
        node.del(pod);
    }
    assert!(node.iso.records().is_empty());
    assert!(node.iso.endpoints().is_empty() && node.iso.managed().is_empty());
    assert_eq!(pool("shared"), vec![]);
    assert_eq!(pool("own"), vec![]);
}
