//! kmesh-cni at spec 1.1.0, exec'd directly the way libcni ≥ 1.2, containerd and CRI-O call it:
//! STATUS, GC, and ADD/CHECK/DEL with a prevResult using every field 1.1.0 added.

mod common;

use common::Kmesh;
use integration::prereq::require_netns_env;
use serde_json::{json, Value};

/// A 1.1.0 result that uses the interface fields (mtu, socketPath, pciID) and route fields
/// (mtu, advmss, priority, table, scope) older versions do not have.
fn prev_result_1_1(k: &Kmesh) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": k.host_veth, "mac": "02:00:00:00:00:01", "mtu": 1500},
            {
                "name": "eth0",
                "mac": "02:00:00:00:00:02",
                "mtu": 1450,
                "sandbox": k.ns.path_str(),
                "socketPath": "/run/vhost-user/sock0",
                "pciID": "0000:03:00.1"
            }
        ],
        "ips": [
            {"address": "10.232.0.2/24", "gateway": "10.232.0.1", "interface": 1},
            {"address": "fd00:232::2/64", "gateway": "fd00:232::1", "interface": 1}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "10.232.0.1", "mtu": 1400, "advmss": 1360,
             "priority": 100, "table": 100, "scope": 0},
            {"dst": "10.233.0.0/16", "table": 200, "mtu": 9000}
        ],
        "dns": {
            "nameservers": ["10.232.0.53"],
            "domain": "cluster.local",
            "search": ["svc.cluster.local"],
            "options": ["ndots:5"]
        }
    })
}

fn conf_1_1(k: &Kmesh) -> Value {
    let mut conf = k.base_conf("1.1.0");
    conf["prevResult"] = prev_result_1_1(k);
    conf
}

#[test]
fn status_succeeds_silently() {
    if !require_netns_env() {
        return;
    }
    let k = Kmesh::new("weft-v11-status");
    let out = k.run_json(&k.env_global("STATUS"), &conf_1_1(&k));
    out.assert_success("STATUS");
    assert_eq!(out.stdout, "", "STATUS must print nothing on success");
}

#[test]
fn gc_with_valid_attachments_succeeds() {
    if !require_netns_env() {
        return;
    }
    let k = Kmesh::new("weft-v11-gc");
    let attachments = json!([{"containerID": k.container_id, "ifname": "eth0"}]);
    for (key, list) in [
        ("cni.dev/valid-attachments", attachments.clone()),
        // libcni also sends the legacy key; an empty list means "nothing is valid any more".
        ("cni.dev/attachments", attachments),
        ("cni.dev/valid-attachments", json!([])),
    ] {
        let mut conf = k.base_conf("1.1.0");
        conf[key] = list;
        let out = k.run_json(&k.env_global("GC"), &conf);
        out.assert_success(&format!("GC with {key}"));
        assert_eq!(out.stdout, "", "GC must print nothing on success");
    }
    assert!(
        k.ns.link_exists("eth0"),
        "GC of a valid attachment removed eth0"
    );
}

#[test]
fn add_check_del_keep_1_1_fields() {
    if !require_netns_env() {
        return;
    }
    let k = Kmesh::new("weft-v11-add");
    let conf = conf_1_1(&k);

    let out = k.run_json(&k.env("ADD"), &conf);
    out.assert_success("ADD at 1.1.0");
    assert_eq!(
        out.json(),
        prev_result_1_1(&k),
        "ADD must return the 1.1.0 prevResult unchanged"
    );

    let out = k.run_json(&k.env("CHECK"), &conf);
    out.assert_success("CHECK at 1.1.0");
    assert_eq!(out.stdout, "", "CHECK must print nothing on success");

    let out = k.run_json(&k.env("DEL"), &conf);
    out.assert_success("DEL at 1.1.0");
    assert_eq!(out.stdout, "", "DEL must print nothing on success");
    assert_eq!(k.iso.records(), Vec::<String>::new(), "DEL left a record");
    assert_eq!(
        k.iso.attached(),
        Vec::<String>::new(),
        "DEL left a program attached"
    );
    let out = k.run_json(&k.env("DEL"), &conf);
    out.assert_success("second DEL at 1.1.0");
}

#[test]
fn add_passes_prev_result_through_at_every_version() {
    if !require_netns_env() {
        return;
    }
    let k = Kmesh::new("weft-v11-each");
    for version in integration::cni::ALL_VERSIONS {
        let out = k.run_json(&k.env("ADD"), &k.conf(version));
        out.assert_success(&format!("ADD at {version}"));
        assert_eq!(out.json(), k.prev_result(version), "ADD at {version}");
        k.run_json(&k.env("DEL"), &k.conf(version))
            .assert_success(&format!("DEL at {version}"));
    }
}
