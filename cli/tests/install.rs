//! `weft install` / `weft uninstall` on a private stand-in node: chaining into a Calico-like
//! conflist and a flannel-like .conf, refusing a truncated or invalid primary, writing the
//! default when there is none, idempotence, and uninstall giving back the original bytes.

mod common;

use common::{plugins, TestNode, KMESH_ENTRY_TYPE};
use integration::prereq::require;
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "datastore_type": "kubernetes",
      "mtu": 1440,
      "ipam": {
          "type": "calico-ipam"
      },
      "policy": {
          "type": "k8s"
      },
      "kubernetes": {
          "kubeconfig": "/etc/cni/net.d/calico-kubeconfig"
      }
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    },
    {
      "type": "bandwidth",
      "capabilities": {"bandwidth": true}
    }
  ]
}
"#;

const FLANNEL: &str = "{\n\t\"name\": \"cbr0\",\n\t\"cniVersion\": \"0.3.1\",\n\t\"type\": \"flannel\",\n\t\"delegate\": {\n\t\t\"hairpinMode\": true,\n\t\t\"isDefaultGateway\": true\n\t}\n}\n";

fn kmesh_entry(node: &TestNode) -> Value {
    json!({"type": KMESH_ENTRY_TYPE,
           "capabilities": {"io.kubernetes.cri.pod-annotations": true},
           "pinRoot": node.pin_root})
}

#[test]
fn calico_like_conflist_chain_twice_then_uninstall_restores_bytes() {
    let node = TestNode::new();
    let primary = node.write("10-calico.conflist", CALICO);
    // Mode and owner a primary CNI may use; weft keeps both.
    std::fs::set_permissions(&primary, std::fs::Permissions::from_mode(0o640)).unwrap();
    let root = nix::unistd::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(&primary, Some(4242), Some(4343)).unwrap();
    }
    let before = node.snapshot();

    let out = node.install(&[]);
    out.assert_success("weft install");
    let text = node.read("10-calico.conflist");
    let p = plugins(&text);
    assert_eq!(p.len(), 4, "{text}");
    assert_eq!(p[3], kmesh_entry(&node), "kmesh-cni is the last plugin");
    // Only the entry's bytes were added: the original text is intact around it.
    let (head, _) = CALICO.rsplit_once("\n    }\n  ]").unwrap();
    assert!(text.starts_with(head), "original bytes changed:\n{text}");
    assert!(
        text.contains("    },\n    {\n      \"type\": \"kmesh-cni\",\n"),
        "{text}"
    );
    let meta = std::fs::metadata(&primary).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640, "mode kept");
    if root {
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "owner kept");
    }
    for b in ["kmesh-cni", "weft-ipam"] {
        assert!(node.bin.join(b).is_file(), "{b} installed");
    }

    let first = node.snapshot();
    node.install(&[]).assert_success("second weft install");
    assert_eq!(node.snapshot(), first, "a second install changes no byte");

    node.weft(&["uninstall"]).assert_success("weft uninstall");
    assert_eq!(
        std::fs::read_to_string(&primary).unwrap(),
        CALICO,
        "uninstall gives back the original bytes"
    );
    assert_eq!(
        node.snapshot(),
        before,
        "uninstall leaves the node as it was"
    );
    assert!(!node.state.exists(), "state dir created by install is gone");
}

#[test]
fn flannel_like_conf_is_upgraded_to_a_list_and_restored() {
    let node = TestNode::new();
    node.write("10-flannel.conf", FLANNEL);
    node.write("20-other.conflist", CALICO);
    let before = node.snapshot();
    let out = node.install(&[]);
    out.assert_success("weft install");
    assert!(out.stdout.contains("upgraded"), "{}", out.describe());
    assert!(
        !node.conf.join("10-flannel.conf").exists(),
        "the .conf went aside"
    );
    assert_eq!(
        node.read("10-flannel.conf.weft_bak"),
        FLANNEL,
        "kept byte for byte"
    );
    let list: Value = serde_json::from_str(&node.read("10-flannel.conflist")).unwrap();
    assert_eq!(list["name"], "cbr0");
    assert_eq!(list["cniVersion"], "0.3.1");
    let original: Value = serde_json::from_str(FLANNEL).unwrap();
    assert_eq!(
        list["plugins"][0], original,
        "the single config is the first plugin"
    );
    assert_eq!(list["plugins"][1], kmesh_entry(&node));
    assert_eq!(
        node.read("20-other.conflist"),
        CALICO,
        "not the primary: untouched"
    );
    let first = node.snapshot();
    node.install(&[]).assert_success("second install");
    assert_eq!(node.snapshot(), first, "idempotent");

    node.weft(&["uninstall"]).assert_success("uninstall");
    assert_eq!(node.snapshot(), before);
}

#[test]
fn truncated_or_invalid_primary_is_refused_and_untouched() {
    let cut = &CALICO[..CALICO.len() / 2];
    for (name, text, why) in [
        ("10-calico.conflist", cut, "not valid JSON"),
        ("10-calico.conflist", "", "not valid JSON"),
        (
            "10-x.conflist",
            r#"{"name":"x","cniVersion":"1.0.0","plugins":[]}"#,
            "plugins",
        ),
        (
            "10-x.conflist",
            r#"{"name":"x","cniVersion":"1.0.0","plugins":[{"bridge":"b"}]}"#,
            "type",
        ),
        (
            "10-x.conf",
            r#"{"name":"x","cniVersion":"1.0.0"}"#,
            "no plugin type",
        ),
        (
            "10-x.conflist",
            r#"{"name":"x","cniVersion":"0.2.0","plugins":[{"type":"bridge"}]}"#,
            "does not support",
        ),
    ] {
        let node = TestNode::new();
        let path = node.write(name, text);
        let out = node.install(&[]);
        assert!(
            !out.success(),
            "{name} {text:?} accepted:\n{}",
            out.describe()
        );
        assert!(
            out.stderr.contains(why),
            "{name}: no reason {why:?}:\n{}",
            out.describe()
        );
        assert!(out.stderr.contains("not touching"), "{}", out.describe());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "{name} was written"
        );
        let files: Vec<_> = std::fs::read_dir(&node.conf).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "no file added next to {name}");
    }
}

#[test]
fn no_primary_writes_the_default_with_versions_every_plugin_speaks() {
    if !require(&["/usr/lib/cni/bridge"]) {
        return;
    }
    let node = TestNode::new();
    let out = node.install(&[]);
    out.assert_success("weft install");
    let text = node.read("99-weft.conflist");
    let v: Value = serde_json::from_str(&text).unwrap();
    let types: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "kmesh-cni"]);
    assert_eq!(v["plugins"][0]["ipam"]["type"], "weft-ipam");
    // Debian's bridge (1.1.1) speaks up to 1.0.0: nothing newer may be declared.
    let declared: Vec<&str> = v["cniVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let bridge = integration::cni::exec_plugin(
        std::path::Path::new("/usr/lib/cni/bridge"),
        &integration::cni::PluginEnv::command("VERSION"),
        br#"{"cniVersion":"1.1.0"}"#,
    )
    .json();
    for d in declared.iter().chain([&v["cniVersion"].as_str().unwrap()]) {
        assert!(
            bridge["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == d),
            "declares {d}, which bridge does not speak: {text}"
        );
    }
    let first = node.snapshot();
    node.install(&[]).assert_success("again");
    assert_eq!(node.snapshot(), first);
    node.weft(&["uninstall"]).assert_success("uninstall");
    assert!(!node.conf.join("99-weft.conflist").exists());
    // --no-default: refuse instead.
    let out = node.install(&["--no-default"]);
    assert!(
        !out.success() && out.stderr.contains("no CNI config"),
        "{}",
        out.describe()
    );
}

#[test]
fn uninstall_keeps_a_binary_pods_still_need_and_restores_a_replaced_one() {
    let node = TestNode::new();
    node.write("10-calico.conflist", CALICO);
    // Somebody else's weft-ipam of that name was there first.
    std::fs::write(node.bin.join("weft-ipam"), b"#!/bin/sh\necho foreign\n").unwrap();
    std::fs::set_permissions(
        node.bin.join("weft-ipam"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    node.install(&[]).assert_success("install");
    // A pod attached through kmesh-cni (its record) keeps the binary for its DEL.
    let rec = node.state.join("kmesh-cni/k8s-pod-network/c1:eth0");
    std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
    std::fs::write(&rec, b"{}").unwrap();
    let out = node.weft(&["uninstall"]);
    out.assert_success("uninstall");
    assert!(out.stdout.contains("kept"), "{}", out.describe());
    assert!(node.bin.join("kmesh-cni").exists(), "still needed");
    assert_eq!(
        node.read("10-calico.conflist"),
        CALICO,
        "chain removed anyway"
    );
    assert_eq!(
        std::fs::read(node.bin.join("weft-ipam")).unwrap(),
        b"#!/bin/sh\necho foreign\n",
        "the replaced file is back"
    );
    assert_eq!(
        std::fs::metadata(node.bin.join("weft-ipam"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    std::fs::remove_file(&rec).unwrap();
    node.weft(&["uninstall"]).assert_success("second uninstall");
    assert!(!node.bin.join("kmesh-cni").exists(), "removed once unused");
}

#[test]
fn chain_into_a_named_file() {
    let node = TestNode::new();
    node.write(
        "05-first.conflist",
        &CALICO.replace("k8s-pod-network", "first"),
    );
    node.write("10-calico.conflist", CALICO);
    node.install(&["--chain-into", "10-calico.conflist"])
        .assert_success("install --chain-into");
    assert_eq!(plugins(&node.read("10-calico.conflist")).len(), 4);
    assert_eq!(plugins(&node.read("05-first.conflist")).len(), 3);
}

#[test]
fn help_teaches_with_examples() {
    let node = TestNode::new();
    for cmd in [
        &["--help"][..],
        &["install", "--help"],
        &["watch", "--help"],
        &["gc", "--help"],
    ] {
        let out = node.weft(cmd);
        out.assert_success("help");
        assert!(out.stdout.contains("Examples:"), "{cmd:?}:\n{}", out.stdout);
    }
}
