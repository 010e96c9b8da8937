//! deploy/weft.yaml against the Kubernetes API schemas (kubernetes-validate, offline, strict),
//! and the fields the agent relies on: host paths, privileges, readiness on the agent's port.

mod common;

use common::deploy::{container, daemonset, flag, host_mounts, manifest_path, pyvenv};
use integration::proc::run;
use serde_json::Value;
use std::process::Command;

#[test]
fn manifest_passes_the_kubernetes_schemas_and_a_broken_one_does_not() {
    let Some(venv) = pyvenv() else { return };
    let validate = |file: &std::path::Path| {
        run(
            Command::new(venv.join("bin/kubernetes-validate"))
                .args(["--strict", "--kubernetes-version", "1.30.0"])
                .arg(file),
            b"",
        )
        .expect("run kubernetes-validate")
        .0
    };
    let out = validate(&manifest_path());
    out.assert_success("kubernetes-validate --strict deploy/weft.yaml");
    assert!(out.stdout.contains("passed"), "{}", out.describe());
    // The validator does check: a misspelt field and a wrong type are refused.
    let text = std::fs::read_to_string(manifest_path()).unwrap();
    for (from, to) in [
        (
            "mountPropagation: Bidirectional",
            "mountPropagaton: Bidirectional",
        ),
        ("privileged: true", "privileged: yes-please"),
    ] {
        let tmp = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(tmp.path(), text.replacen(from, to, 1)).unwrap();
        let out = validate(tmp.path());
        assert!(!out.success(), "{to:?} accepted:\n{}", out.describe());
    }
}

#[test]
fn the_fields_the_agent_relies_on_are_there() {
    let Some(venv) = pyvenv() else { return };
    let ds = daemonset(&venv);
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostNetwork"], true,
        "plugins and probes live in the host netns"
    );
    let agent = container(&ds, "agent");
    let init = container(&ds, "install");
    for c in [&agent, &init] {
        assert_eq!(c["securityContext"]["privileged"], true, "{}", c["name"]);
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{}",
            c["name"]
        );
    }
    let cmd = &agent["command"];
    assert_eq!(cmd[1], "watch");
    assert_eq!(init["command"][1], "install");
    assert!(init["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--binaries-only"));
    // Readiness comes from weft watch's own endpoint.
    let listen = flag(cmd, "listen").expect("--listen");
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["port"], port);
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Every host path the agent needs, mounted where its flags point.
    let mounts = host_mounts(&ds, &agent);
    let mount_of = |host: &str| -> (String, Option<String>) {
        mounts
            .iter()
            .find(|(h, _, _)| h == host)
            .map(|(_, m, p)| (m.clone(), p.clone()))
            .unwrap_or_else(|| panic!("host path {host} not mounted into the agent: {mounts:?}"))
    };
    for c in [&agent, &init] {
        let cmd = &c["command"];
        let m = host_mounts(&ds, c);
        for (host, f) in [
            ("/opt/cni/bin", "bin-dir"),
            ("/etc/cni/net.d", "conf-dir"),
            ("/var/lib/cni", "state-dir"),
        ] {
            let dir = flag(cmd, f).unwrap_or_else(|| panic!("{}: no --{f}", c["name"]));
            assert!(
                m.iter().any(|(h, mp, _)| h == host && *mp == dir),
                "{}: --{f}={dir} is not where {host} is mounted: {m:?}",
                c["name"]
            );
        }
    }
    // Pins and netns paths are the host's own, at the same paths (records name them).
    assert_eq!(mount_of("/sys/fs/bpf").0, "/sys/fs/bpf");
    assert_eq!(mount_of("/sys/fs/bpf").1.as_deref(), Some("Bidirectional"));
    assert_eq!(mount_of("/run/netns").0, "/run/netns");
    assert_eq!(mount_of("/run/netns").1.as_deref(), Some("HostToContainer"));
    mount_of("/lib/modules");
    // The node name for weft-ipam's etcd blocks.
    let env = agent["env"].as_array().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "NODENAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"));
    assert_eq!(spec["automountServiceAccountToken"], Value::Bool(false));
}
