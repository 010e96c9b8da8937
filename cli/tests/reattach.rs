//! Pods keep their fast path across a lost pin root: two pods networked through a chain weft
//! installed (Debian's bridge + host-local, kmesh-cni), their pins removed (what a bpffs remount
//! does: tcx links detach, maps vanish), then `weft watch --once` re-attaches both from their
//! records, and traffic between them is redirected again. Also `weft inspect`, `weft doctor` and
//! `weft gc` on the same node.

mod common;

use common::{unique, TestNode};
use integration::cni::Cnitool;
use integration::fixtures::bpffs::AttachWatch;
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::plugins::{bin_dir, CniPath};
use integration::prereq::{require, require_netns_env};
use serde_json::{json, Value};

fn inspect(node: &TestNode) -> Value {
    let out = node.weft(&["inspect", "--json"]);
    out.assert_success("weft inspect --json");
    out.json()
}

fn redirected(node: &TestNode) -> u64 {
    inspect(node)["counters"]["redirected_packets"]
        .as_u64()
        .unwrap_or(0)
}

fn ping(from: &TestNetns, to: &str) {
    from.exec(&["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", to])
        .assert_success(&format!("ping {to} from {}", from.name()));
}

#[test]
fn reattach_after_pins_removed_then_inspect_doctor_gc() {
    if !(require_netns_env() && require(&["ping"])) {
        return;
    }
    let mut node = TestNode::with_bpffs();
    let cni_path = CniPath::new();
    let mut tool = Cnitool::new(&cni_path);
    tool.set_env("WEFT_STATE_DIR", node.state.to_str().unwrap());
    let bridge = HostLink::adopt(&unique_ifname("wcb"));
    let data = tempfile::tempdir().unwrap();
    let net = unique("wcli");
    let octet = (std::process::id() % 200) as u8 + 20;
    let conf = tool.write_conflist(&json!({
        "cniVersion": "1.0.0", "name": net,
        "plugins": [{"type": "bridge", "bridge": bridge.name(), "isGateway": true,
                     "ipam": {"type": "host-local", "subnet": format!("10.237.{octet}.0/24"),
                              "dataDir": data.path()}}]
    }));
    // weft manages the cnitool's conf dir as the node's conf dir.
    node.conf = conf.parent().unwrap().to_path_buf();
    let src = bin_dir();
    let out = node.weft(&["install", "--source-dir", src.to_str().unwrap()]);
    out.assert_success("weft install");
    let mut pods: Vec<TestNetns> = (0..2).map(|_| TestNetns::new("wcli")).collect();
    let mut ips = Vec::new();
    for p in &pods {
        tool.set_env("CNI_CONTAINERID", p.name());
        let r = tool.add(&net, p.path());
        r.assert_success("ADD through the chain weft installed");
        ips.push(
            r.json()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    // Whichever mode auto chose (tc here, tcx where the kernel lacks clsact).
    let watch = AttachWatch::new(&node.state, &node.pin_root);
    let attached = || watch.attached().len();
    assert_eq!(
        attached(),
        2,
        "a program attached per pod: {:?}",
        watch.attached()
    );
    ping(&pods[0], &ips[1]);
    assert!(redirected(&node) > 0, "fast path used before");

    // Lose every pin: tcx links detach, maps go (tc filters stay, running a program whose maps
    // nobody can update any more).
    std::fs::remove_dir_all(&node.pin_root).unwrap();
    let i = inspect(&node);
    assert!(i["counters"].is_null(), "maps gone: {i}");

    let out = node.weft(&["watch", "--once", "--source-dir", src.to_str().unwrap()]);
    out.assert_success("weft watch --once");
    assert_eq!(
        out.stdout.matches("re-attached the fast path").count(),
        2,
        "{}",
        out.describe()
    );
    assert_eq!(attached(), 2, "attached again: {:?}", watch.attached());
    let i = inspect(&node);
    for r in i["kmesh_cni"].as_array().unwrap() {
        assert_eq!(r["problems"], json!([]), "attachment complete again: {r}");
        assert_eq!(r["pod"], "alive");
    }
    assert_eq!(i["bpf_endpoints"].as_array().unwrap().len(), 2, "{i}");
    ping(&pods[0], &ips[1]);
    ping(&pods[1], &ips[0]);
    assert!(redirected(&node) >= 12, "redirected again after re-attach");
    // A second pass finds everything in place.
    let out = node.weft(&["watch", "--once", "--source-dir", src.to_str().unwrap()]);
    out.assert_success("second pass");
    assert!(!out.stdout.contains("re-attached"), "{}", out.describe());

    let text = node.weft(&["inspect"]);
    text.assert_success("inspect");
    assert!(
        text.stdout.contains("attached") && text.stdout.contains(&ips[0]),
        "{}",
        text.stdout
    );
    let doctor = node.weft(&["doctor"]);
    assert!(
        doctor.stdout.contains("kmesh-cni is the last plugin"),
        "{}",
        doctor.describe()
    );

    // Pod 1 vanishes without a DEL: gc reclaims its record, keeps pod 0's.
    tool.set_env("CNI_CONTAINERID", pods[0].name());
    drop(pods.remove(1));
    let dry = node.weft(&["gc", "--dry-run"]);
    dry.assert_success("gc --dry-run");
    assert!(dry.stdout.contains("would reclaim"), "{}", dry.stdout);
    let gc = node.weft(&["gc"]);
    gc.assert_success("gc");
    assert!(
        gc.stdout.contains("reclaimed") && gc.stdout.contains("kept: pod alive"),
        "{}",
        gc.stdout
    );
    assert_eq!(attached(), 1, "the dead pod's attachment is gone");
    tool.del(&net, pods[0].path())
        .assert_success("DEL of the live pod");
    assert_eq!(watch.attached(), Vec::<String>::new());
}
