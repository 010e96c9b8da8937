//! The weft-ipam binary exec'd directly, as a main plugin would delegate to it: every verb,
//! every version, the error contract. No netns needed (IPAM never touches one).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use weft_ipam::store::file::FileStore;

fn conf(version: &str, dir: &std::path::Path, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = "weft-ipam".into();
    ipam["store"] = json!({"type": "file", "dir": dir});
    json!({"cniVersion": version, "name": "verbs-net", "type": "bridge", "ipam": ipam})
}

fn pool_len(dir: &std::path::Path, net: &str) -> usize {
    FileStore::new(dir, net).unwrap().list().unwrap().map.len()
}

#[test]
fn add_check_del_in_every_version() {
    let tmp = state_dir();
    for v in VERSIONS {
        let c = conf(
            v,
            tmp.path(),
            json!({"range": "10.10.0.0/24", "ipRanges": [{"range": "fd10::/120"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.10.0.1"]}}),
        );
        let id = format!("ctr-{}", v.replace('.', ""));
        let out = Call::new("ADD", &id).ipam(&c);
        let res = out.ok().json();
        assert_eq!(res["cniVersion"], v);
        assert!(
            res.get("interfaces").is_none(),
            "IPAM results carry no interfaces: {res}"
        );
        assert_eq!(
            result_ips(&res),
            vec!["10.10.0.2", "fd10::2"],
            "{v}: lowest free"
        );
        for ipc in res["ips"].as_array().unwrap() {
            assert!(ipc.get("interface").is_none(), "no interface index: {res}");
            assert_eq!(
                ipc.get("version").is_some(),
                v < "1.0.0",
                "{v}: ips[].version: {res}"
            );
        }
        assert_eq!(res["ips"][0]["gateway"], "10.10.0.1");
        assert_eq!(res["ips"][0]["address"], "10.10.0.2/24");
        assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(res["dns"]["nameservers"][0], "10.10.0.1");

        // Idempotent for the same containerID + ifname.
        let again = Call::new("ADD", &id).ipam(&c).ok().json();
        assert_eq!(result_ips(&again), result_ips(&res));

        if v >= "0.4.0" {
            let mut with_prev = c.clone();
            with_prev["prevResult"] = res.clone();
            assert_eq!(
                Call::new("CHECK", &id).ipam(&with_prev).ok().stdout,
                "",
                "CHECK prints nothing"
            );
            // A prevResult that differs from the reservation fails CHECK with 103.
            let mut wrong = with_prev.clone();
            wrong["prevResult"]["ips"][0]["address"] = "10.10.0.99/24".into();
            Call::new("CHECK", &id).ipam(&wrong).err(103);
        } else {
            Call::new("CHECK", &id).ipam(&c).err(1);
        }
        Call::new("DEL", &id).netns(None).ipam(&c).ok();
        assert_eq!(
            pool_len(tmp.path(), "verbs-net"),
            0,
            "{v}: DEL freed everything"
        );
        if v >= "0.4.0" {
            let msg = Call::new("CHECK", &id).ipam(&c).err(103);
            assert!(msg.contains("no address is reserved"), "{msg}");
        }
        // DEL with nothing held, twice, without netns: success.
        Call::new("DEL", &id).netns(None).ipam(&c).ok();
    }
}

#[test]
fn del_never_frees_another_container() {
    let tmp = state_dir();
    let c = conf("1.0.0", tmp.path(), json!({"range": "10.11.0.0/24"}));
    let a = result_ips(&Call::new("ADD", "a").ipam(&c).ok().json());
    let b = result_ips(&Call::new("ADD", "b").ipam(&c).ok().json());
    let b2 = result_ips(&Call::new("ADD", "b").ifname("net1").ipam(&c).ok().json());
    assert_eq!(
        (a[0].as_str(), b[0].as_str(), b2[0].as_str()),
        ("10.11.0.2", "10.11.0.3", "10.11.0.4")
    );
    Call::new("DEL", "b").ipam(&c).ok();
    let pool = FileStore::new(tmp.path(), "verbs-net")
        .unwrap()
        .list()
        .unwrap();
    let left: Vec<String> = pool.map.iter().map(|(ip, o)| format!("{ip} {o}")).collect();
    assert_eq!(
        left,
        vec!["10.11.0.2 verbs-net/a/eth0", "10.11.0.4 verbs-net/b/net1"]
    );
}

#[test]
fn bad_configs_are_code_7_and_change_nothing() {
    let tmp = state_dir();
    for (ipam, needle) in [
        (json!({"range": "10.0.0.0/33"}), "10.0.0.0/33"),
        (
            json!({"range": "10.0.0.0/24", "range_start": "10.0.5.1"}),
            "range_start 10.0.5.1 is outside",
        ),
        (
            json!({"range": "10.0.0.0/24", "exclude": ["10.0.0.0/24"]}),
            "no usable address",
        ),
        (json!({"range": "10.0.0.0/24", "store": "x"}), "invalid"),
    ] {
        let mut c = conf("1.0.0", tmp.path(), ipam.clone());
        if ipam.get("store").is_some() {
            c["ipam"]["store"] = ipam["store"].clone();
        }
        let out = Call::new("ADD", "bad").ipam(&c);
        let msg = out.err(7);
        assert!(msg.contains(needle), "{ipam}: {msg:?} lacks {needle:?}");
    }
    assert!(
        !tmp.path().join("verbs-net").join("pool").exists(),
        "nothing written"
    );
    // Bad container ID never reaches the disk.
    let c = conf("1.0.0", tmp.path(), json!({"range": "10.0.0.0/24"}));
    Call::new("ADD", "../../etc").ipam(&c).err(4);
    assert!(!tmp.path().join("verbs-net").join("pool").exists());
}

#[test]
fn exhaustion_is_104_and_reserves_nothing_in_the_other_range() {
    let tmp = state_dir();
    let c = conf(
        "1.1.0",
        tmp.path(),
        json!({"range": "10.12.0.0/30", "ipRanges": [{"range": "fd12::/120"}]}),
    );
    Call::new("ADD", "first").ipam(&c).ok();
    let msg = Call::new("ADD", "second").ipam(&c).err(104);
    assert!(
        msg.contains("exhausted") && msg.contains("10.12.0.0/30"),
        "{msg}"
    );
    assert_eq!(
        pool_len(tmp.path(), "verbs-net"),
        2,
        "only first's two addresses"
    );
}

#[test]
fn static_requests_from_runtime_config_and_cni_args() {
    let tmp = state_dir();
    let mut c = conf(
        "1.1.0",
        tmp.path(),
        json!({"range": "10.13.0.0/24", "ipRanges": [{"range": "fd13::/120"}]}),
    );
    c["runtimeConfig"] = json!({"ips": ["10.13.0.50/24", "fd13::50/120"]});
    let res = Call::new("ADD", "s1").ipam(&c).ok().json();
    assert_eq!(result_ips(&res), vec!["10.13.0.50", "fd13::50"]);
    // The same address for someone else: try again later (11), nothing reserved.
    Call::new("ADD", "s2").ipam(&c).err(11);
    c.as_object_mut().unwrap().remove("runtimeConfig");
    let res = Call::new("ADD", "s3")
        .args("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.13.0.60")
        .ipam(&c)
        .ok()
        .json();
    assert_eq!(
        result_ips(&res),
        vec!["10.13.0.60", "fd13::2"],
        "unrequested range gets the lowest free"
    );
    let msg = Call::new("ADD", "s4").args("IP=10.99.0.1").ipam(&c).err(7);
    assert!(msg.contains("not inside any configured range"), "{msg}");
    Call::new("ADD", "s4").args("IP=10.13.0.1").ipam(&c).err(7); // the gateway
    assert_eq!(pool_len(tmp.path(), "verbs-net"), 4);
}

#[test]
fn status_and_gc() {
    let tmp = state_dir();
    let c = conf("1.1.0", tmp.path(), json!({"range": "10.14.0.0/24"}));
    for id in ["g1", "g2", "g3"] {
        Call::new("ADD", id).ipam(&c).ok();
    }
    let status = Call::node_wide("STATUS");
    assert_eq!(status.ipam(&c).ok().stdout, "");
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g2", "ifname": "eth0"}]);
    Call::node_wide("GC").ipam(&gc).ok();
    let pool = FileStore::new(tmp.path(), "verbs-net")
        .unwrap()
        .list()
        .unwrap();
    let owners: HashSet<String> = pool
        .map
        .values()
        .map(|o| o.container_id().to_owned())
        .collect();
    assert_eq!(owners, HashSet::from(["g2".to_string()]));

    // A store directory that cannot be created: STATUS 50.
    let file = tmp.path().join("plainfile");
    std::fs::write(&file, "").unwrap();
    let mut bad = c.clone();
    bad["ipam"]["store"]["dir"] = json!(file.join("sub"));
    status.ipam(&bad).err(50);
}

/// Issue 8, defect 2: networks `ga` and `gb` share one pool through `network_name`. GC of `ga`
/// freed `gb`'s reservations (they were not on `ga`'s list), and the next ADD on `ga` got an
/// address `gb1` still used. GC frees only its own network's reservations.
#[test]
fn gc_of_one_network_never_frees_another_networks_addresses_in_a_shared_pool() {
    let tmp = state_dir();
    let net = |name: &str| {
        let mut c = conf(
            "1.1.0",
            tmp.path(),
            json!({"range": "10.231.85.0/24", "network_name": "shared"}),
        );
        c["name"] = json!(name);
        c
    };
    let (ga, gb) = (net("ga"), net("gb"));
    let ip = |out: Out| result_ips(&out.ok().json()).remove(0);
    assert_eq!(ip(Call::new("ADD", "ga1").ipam(&ga)), "10.231.85.2");
    assert_eq!(ip(Call::new("ADD", "gb1").ipam(&gb)), "10.231.85.3");
    let mut gc = ga.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ga1", "ifname": "eth0"}]);
    Call::node_wide("GC").ipam(&gc).ok();
    assert_eq!(
        pool_len(tmp.path(), "shared"),
        2,
        "GC of ga freed gb's address"
    );
    assert_eq!(
        ip(Call::new("ADD", "ga2").ipam(&ga)),
        "10.231.85.4",
        "an address gb1 holds was handed out again"
    );
    let mut check = gb.clone();
    check["prevResult"] = json!({"cniVersion": "1.1.0",
        "ips": [{"address": "10.231.85.3/24", "gateway": "10.231.85.1"}]});
    Call::new("CHECK", "gb1").ipam(&check).ok();
    // DEL through ga of a container attached through gb frees nothing of gb's.
    Call::new("DEL", "gb1").ipam(&ga).ok();
    assert_eq!(pool_len(tmp.path(), "shared"), 3);
    Call::new("DEL", "gb1").ipam(&gb).ok();
    assert_eq!(pool_len(tmp.path(), "shared"), 2);
}
