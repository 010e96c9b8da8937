//! `weft ipam release-node NODE` against a real 3-member etcd on loopback: the blocks two
//! simulated nodes claimed through weft-ipam ADDs, then one node released. Its block keys go,
//! the other node's stay, and this node's own blocks are refused without --force.

mod common;

use common::{unique, TestNode};
use integration::cni::{exec_plugin, PluginEnv};
use integration::etcd::EtcdCluster;
use integration::plugins::weft_binary;
use serde_json::json;

#[test]
fn release_node_frees_exactly_that_nodes_blocks() {
    if !EtcdCluster::require() {
        return;
    }
    let etcd = EtcdCluster::start().expect("start etcd");
    let node = TestNode::new();
    let prefix = format!("/{}", unique("weft-rn"));
    let store = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "rn", "plugins": [{
        "type": "bridge",
        "ipam": {"type": "weft-ipam", "range": "10.41.0.0/22", "node_slice_size": "/28",
                 "store": {"type": "etcd", "endpoints": etcd.endpoints(), "prefix": prefix,
                           "dir": store.path()}}}]});
    let file = node.write("10-rn.conflist", &conf.to_string());
    let single = json!({"cniVersion": "1.0.0", "name": "rn", "type": "bridge",
                        "ipam": conf["plugins"][0]["ipam"].clone()});
    for (n, who) in ["gone-node", "gone-node", "live-node"].iter().enumerate() {
        let env = PluginEnv::verb(
            "ADD",
            &format!("c{n}"),
            "/var/run/netns/x",
            "eth0",
            "/nonexistent",
        )
        .set("NODENAME", who);
        exec_plugin(
            &weft_binary("weft-ipam"),
            &env,
            single.to_string().as_bytes(),
        )
        .assert_success("weft-ipam ADD (etcd store)");
    }
    let keys = |etcd: &EtcdCluster| etcd.get_prefix(&format!("{prefix}/rn/blocks/")).unwrap();
    let before = keys(&etcd);
    assert_eq!(before.len(), 2, "one block per node: {before:?}");

    let run = |who: &str, extra: &[&str]| {
        let mut args = vec![
            "ipam",
            "release-node",
            who,
            "--config",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut c = node.weft_command(&args);
        c.env("NODENAME", "live-node");
        integration::proc::run(&mut c, b"").unwrap().0
    };
    let out = run("live-node", &[]);
    assert!(
        !out.success() && out.stderr.contains("this node"),
        "{}",
        out.describe()
    );
    let out = run("gone-node", &[]);
    out.assert_success("weft ipam release-node gone-node");
    assert!(out.stdout.contains("released"), "{}", out.describe());
    let after = keys(&etcd);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].1.contains("live-node"), "{after:?}");
    let again = run("gone-node", &[]);
    again.assert_success("again");
    assert!(
        again.stdout.contains("holds no block"),
        "{}",
        again.describe()
    );
}
