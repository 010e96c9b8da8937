//! weft-ipam as the IPAM delegate of the Debian reference `bridge`, driven through libcni
//! (cnitool) at every conflist version both speak: libcni execs bridge, bridge execs weft-ipam
//! from CNI_PATH, exactly as under a runtime. Two pods get distinct addresses that really sit on
//! their eth0, CHECK passes, DEL frees them in the store, a second DEL is fine. Then the same
//! with kmesh-cni chained after bridge: weft-ipam's addresses flow through the chain into
//! kmesh-cni's endpoint map.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use integration::cni::Cnitool;
use integration::fixtures::bpffs::Isolation;
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::plugins::CniPath;
use integration::prereq::require_netns_env;
use serde_json::{json, Value};
use tempfile::TempDir;

/// What weft-ipam's file store holds for `network` under `store_dir`, as (address, containerID).
/// The pool file is `<dir>/<network>/pool`: a header line, one `<address> <owning network>
/// <containerID> <ifname>` line per reservation, and an `end <count>` trailer. No file =
/// nothing reserved.
fn reservations(store_dir: &Path, network: &str) -> BTreeSet<(IpAddr, String)> {
    let path = store_dir.join(network).join("pool");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeSet::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("weft-ipam pool v2"), "{text}");
    let mut out = BTreeSet::new();
    for line in lines {
        if let Some(count) = line.strip_prefix("end ") {
            assert_eq!(count.parse::<usize>().ok(), Some(out.len()), "{text}");
            return out;
        }
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "pool line {line:?}");
        out.insert((f[0].parse().expect("pool address"), f[2].to_owned()));
    }
    panic!("pool file {} has no trailer:\n{text}", path.display());
}

fn version_at_least(version: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    parse(version) >= parse(min)
}

/// The addresses of a result as (address, prefix), checking the per-version shape of `ips`.
fn result_ips(result: &Value, version: &str) -> Vec<(IpAddr, u8)> {
    assert_eq!(result["cniVersion"], version, "result version: {result}");
    let ips = result["ips"].as_array().expect("result has ips");
    ips.iter()
        .map(|ip| {
            let (addr, prefix) = ip["address"]
                .as_str()
                .and_then(|a| a.split_once('/'))
                .unwrap_or_else(|| panic!("ips entry without a CIDR address: {ip}"));
            let addr: IpAddr = addr.parse().unwrap();
            // 0.3.x/0.4.0 name the family in ips[].version; 1.0.0 dropped the field.
            let family = if addr.is_ipv4() { "4" } else { "6" };
            if version_at_least(version, "1.0.0") {
                assert!(ip.get("version").is_none(), "{version}: {ip}");
            } else {
                assert_eq!(ip["version"], family, "{version}: {ip}");
            }
            (addr, prefix.parse().unwrap())
        })
        .collect()
}

/// `ip -o addr show dev eth0` in `ns` lists every address of `ips` with its prefix.
fn assert_on_eth0(ns: &TestNetns, ips: &[(IpAddr, u8)]) {
    let shown = ns.must(&["-o", "addr", "show", "dev", "eth0"]).stdout;
    for (addr, prefix) in ips {
        assert!(
            shown.contains(&format!(" {addr}/{prefix} ")),
            "{addr}/{prefix} is not on eth0 in {}:\n{shown}",
            ns.name()
        );
    }
}

fn assert_check(tool: &Cnitool, net: &str, ns: &TestNetns, version: &str) {
    let check = tool.check(net, ns.path());
    if version_at_least(version, "0.4.0") {
        check.assert_success("CHECK");
        assert!(check.stdout.is_empty(), "CHECK printed: {}", check.stdout);
    } else {
        // libcni refuses CHECK below 0.4.0 before any plugin runs.
        assert!(
            check.stderr.contains("does not support the CHECK command"),
            "CHECK at {version} must be refused by libcni: {}",
            check.describe()
        );
    }
}

/// Two pods on bridge + weft-ipam through cnitool at `version`; `octet` keeps subnets, names and
/// container IDs apart from the other tests running at the same time.
fn two_pods_at(version: &str, octet: u8, dual_stack: bool) {
    if !require_netns_env() {
        return;
    }
    let cni_path = CniPath::new();
    cni_path.plugin("weft-ipam");
    let store = TempDir::with_prefix("weft-ipam-store-").unwrap();
    // bridge creates the bridge on first ADD and never deletes it: the guard does.
    let bridge = HostLink::adopt(&unique_ifname("wib"));
    let net = format!("weft-ipam-{octet}");
    let v4 = format!("10.241.{octet}");
    let v6 = format!("fd04:{octet}:");
    let mut ipam = json!({
        "type": "weft-ipam",
        "range": format!("{v4}.0/24"),
        "store": {"type": "file", "dir": store.path()},
    });
    if dual_stack {
        ipam["ipRanges"] = json!([{"range": format!("{v6}:/64")}]);
    }
    let mut tool = Cnitool::new(&cni_path);
    tool.write_conflist(&json!({
        "cniVersion": version,
        "name": net,
        "plugins": [{
            "type": "bridge", "bridge": bridge.name(), "isGateway": true, "ipMasq": false,
            "ipam": ipam,
        }],
    }));
    let pods = [TestNetns::new("weft-ipam"), TestNetns::new("weft-ipam")];
    let ids: Vec<String> = ["a", "b"]
        .iter()
        .map(|p| format!("weft-ipam-{}-{octet}-{p}", std::process::id()))
        .collect();
    let for_pod = |tool: &mut Cnitool, i: usize| {
        tool.set_env("CNI_CONTAINERID", &ids[i]);
    };

    // ADD: lowest free first (.0 is the network, .1 the gateway), one address per range.
    let mut held = BTreeSet::new();
    for (i, ns) in pods.iter().enumerate() {
        for_pod(&mut tool, i);
        let out = tool.add(&net, ns.path());
        out.assert_success(&format!("ADD pod {i} at {version}"));
        let result = out.json();
        let ips = result_ips(&result, version);
        let host = i + 2;
        let mut want = vec![(format!("{v4}.{host}").parse().unwrap(), 24)];
        if dual_stack {
            want.push((format!("{v6}:{host}").parse().unwrap(), 64));
        }
        assert_eq!(ips, want, "pod {i} at {version}: {result}");
        for ip in result["ips"].as_array().unwrap() {
            let gw = if ip["address"].as_str().unwrap().contains(':') {
                format!("{v6}:1")
            } else {
                format!("{v4}.1")
            };
            assert_eq!(ip["gateway"], gw.as_str(), "gateway: {ip}");
        }
        let eth0 = result["interfaces"]
            .as_array()
            .and_then(|l| l.iter().find(|i| i["name"] == "eth0"))
            .unwrap_or_else(|| panic!("no eth0 in result: {result}"));
        assert_eq!(eth0["sandbox"], ns.path_str());
        assert_on_eth0(ns, &ips);
        for (addr, _) in ips {
            assert!(
                held.insert((addr, ids[i].clone())),
                "{addr} handed out twice"
            );
        }
    }
    assert_eq!(
        reservations(store.path(), &net),
        held,
        "store holds exactly the handed-out addresses, owned by their pods"
    );
    // isGateway: bridge put the gateway weft-ipam reported on the bridge.
    let br = integration::proc::must("ip", &["-o", "addr", "show", "dev", bridge.name()]).stdout;
    assert!(br.contains(&format!(" {v4}.1/24 ")), "bridge: {br}");

    for (i, ns) in pods.iter().enumerate() {
        for_pod(&mut tool, i);
        assert_check(&tool, &net, ns, version);
    }

    // DEL frees exactly the pod's addresses; the other pod keeps its own.
    for (i, ns) in pods.iter().enumerate() {
        for_pod(&mut tool, i);
        tool.del(&net, ns.path())
            .assert_success(&format!("DEL pod {i}"));
        assert!(!ns.link_exists("eth0"), "DEL left eth0 in pod {i}");
        held.retain(|(_, id)| id != &ids[i]);
        assert_eq!(reservations(store.path(), &net), held, "after DEL pod {i}");
    }
    assert!(held.is_empty());
    // Nothing left to undo: a second DEL still succeeds and changes nothing.
    for (i, ns) in pods.iter().enumerate() {
        for_pod(&mut tool, i);
        tool.del(&net, ns.path())
            .assert_success(&format!("second DEL pod {i}"));
    }
    assert!(reservations(store.path(), &net).is_empty());
}

#[test]
fn bridge_weft_ipam_0_3_0() {
    two_pods_at("0.3.0", 30, false);
}

#[test]
fn bridge_weft_ipam_0_3_1() {
    two_pods_at("0.3.1", 31, false);
}

#[test]
fn bridge_weft_ipam_0_4_0() {
    two_pods_at("0.4.0", 40, false);
}

#[test]
fn bridge_weft_ipam_1_0_0() {
    two_pods_at("1.0.0", 100, false);
}

#[test]
fn bridge_weft_ipam_dual_stack_0_4_0() {
    two_pods_at("0.4.0", 41, true);
}

#[test]
fn bridge_weft_ipam_dual_stack_1_0_0() {
    two_pods_at("1.0.0", 101, true);
}

/// bridge + weft-ipam + kmesh-cni at 1.0.0: the delegate's result (dual-stack) is what libcni
/// hands back at the end of the chain, and kmesh-cni put exactly those addresses in its endpoint
/// map. weft-ipam's store sits under WEFT_STATE_DIR (no `store` key), kmesh-cni's pins under
/// this test's own root in /sys/fs/bpf; both go away with `iso`.
#[test]
fn chain_bridge_weft_ipam_kmesh_1_0_0() {
    if !require_netns_env() {
        return;
    }
    let version = "1.0.0";
    // Dropped last: the pins outlive the netns and bridge they were attached to only briefly.
    let iso = Isolation::new();
    let cni_path = CniPath::new();
    cni_path.plugin("weft-ipam");
    cni_path.plugin("kmesh-cni");
    let bridge = HostLink::adopt(&unique_ifname("wib"));
    let ns = TestNetns::new("weft-ipam-chain");
    let net = "weft-ipam-chain";
    let container_id = format!("weft-ipam-chain-{}", std::process::id());
    let mut tool = Cnitool::new(&cni_path);
    tool.set_env("CNI_CONTAINERID", &container_id);
    tool.set_env("WEFT_STATE_DIR", iso.state_dir());
    tool.write_conflist(&json!({
        "cniVersion": version,
        "name": net,
        "plugins": [
            {
                "type": "bridge", "bridge": bridge.name(), "isGateway": true, "ipMasq": false,
                "ipam": {"type": "weft-ipam", "range": "10.241.200.0/24",
                         "ipRanges": [{"range": "fd04:200::/64"}]},
            },
            iso.plugin_conf(json!({})),
        ],
    }));
    let store = Path::new(iso.state_dir()).join("weft-ipam");

    let out = tool.add(net, ns.path());
    out.assert_success("chain ADD");
    let result = out.json();
    let ips = result_ips(&result, version);
    let want: Vec<(IpAddr, u8)> = vec![
        ("10.241.200.2".parse().unwrap(), 24),
        ("fd04:200::2".parse().unwrap(), 64),
    ];
    assert_eq!(ips, want, "chain result: {result}");
    let reserved: BTreeSet<(IpAddr, String)> = want
        .iter()
        .map(|(a, _)| (*a, container_id.clone()))
        .collect();
    assert_eq!(
        reservations(&store, net),
        reserved,
        "the chain's result is what weft-ipam reserved under WEFT_STATE_DIR"
    );
    assert_on_eth0(&ns, &ips);
    assert_eq!(
        iso.records(),
        vec![format!("{container_id}:eth0")],
        "kmesh-cni record"
    );
    assert_eq!(iso.attached().len(), 1, "kmesh-cni attached one program");
    for (addr, _) in &ips {
        assert!(
            iso.endpoint(*addr).is_some(),
            "kmesh-cni has no endpoint for weft-ipam's {addr}: {:?}",
            iso.endpoints()
        );
    }
    assert_eq!(iso.endpoints().len(), ips.len(), "{:?}", iso.endpoints());

    // CHECK runs all three plugins against the cached result.
    assert_check(&tool, net, &ns, version);

    tool.del(net, ns.path()).assert_success("chain DEL");
    assert!(
        reservations(&store, net).is_empty(),
        "DEL left weft-ipam reservations"
    );
    assert_eq!(iso.records(), Vec::<String>::new(), "DEL left a record");
    assert_eq!(
        iso.attached(),
        Vec::<String>::new(),
        "DEL left a program attached"
    );
    assert!(iso.endpoints().is_empty(), "DEL left endpoints");
    assert!(!ns.link_exists("eth0"), "DEL left eth0");
    tool.del(net, ns.path()).assert_success("second chain DEL");
    assert!(reservations(&store, net).is_empty());
}
