//! Delegation against a real delegate: the Debian reference `host-local` IPAM plugin. It needs
//! no root and no netns, only a data dir, so these run everywhere the package is installed;
//! under CI=true a missing package is a failure.

use conf::delegate;
use conf::{Env, NetConf, Request, Version};
use serde_json::json;
use std::path::{Path, PathBuf};

const REFERENCE_DIR: &str = "/usr/lib/cni";

fn have_host_local() -> bool {
    if Path::new(REFERENCE_DIR).join("host-local").exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {REFERENCE_DIR}/host-local is missing (apt containernetworking-plugins)"
    );
    eprintln!("skipping: {REFERENCE_DIR}/host-local missing (apt containernetworking-plugins)");
    false
}

fn request(data_dir: &Path, version: &str, command: &str, container: &str) -> Request {
    let conf = json!({
        "cniVersion": version,
        "name": "weft-delegate-test",
        "type": "bridge",
        "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": data_dir},
    });
    let stdin = conf.to_string().into_bytes();
    let vars = [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", container.to_string()),
        ("CNI_NETNS", "/var/run/netns/unused".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", format!("/nonexistent:{REFERENCE_DIR}")),
    ];
    Request {
        env: Env::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap(),
        conf: NetConf::parse(&stdin).unwrap(),
        stdin,
    }
}

fn reserved(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("weft-delegate-test"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("10.77.")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn add_then_del_through_host_local_at_every_version() {
    if !have_host_local() {
        return;
    }
    for v in Version::ALL.into_iter().filter(|v| *v <= Version::V1_0_0) {
        let dir = tempfile::tempdir().unwrap();
        let add = request(dir.path(), v.as_str(), "ADD", "c1");
        let result = delegate::add("host-local", &add).unwrap();
        assert_eq!(result.ips.len(), 1, "at {v}");
        assert_eq!(result.ips[0].address.to_string(), "10.77.0.2/24");
        assert!(
            result.interfaces.is_empty(),
            "IPAM results carry no interfaces"
        );
        assert_eq!(reserved(dir.path()).len(), 1);
        delegate::del("host-local", &request(dir.path(), v.as_str(), "DEL", "c1")).unwrap();
        assert!(
            reserved(dir.path()).is_empty(),
            "DEL at {v} left a reservation"
        );
    }
}

#[test]
fn guarded_add_rolls_back_unless_committed() {
    if !have_host_local() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let add = request(dir.path(), "1.0.0", "ADD", "c1");
    {
        let guard = delegate::add_guarded("host-local", &add).unwrap();
        assert_eq!(reserved(dir.path()).len(), 1);
        assert_eq!(guard.result().ips.len(), 1);
        // Dropped without commit: the main plugin "failed" after IPAM succeeded.
    }
    assert!(
        reserved(dir.path()).is_empty(),
        "rollback DEL did not free the IP"
    );
    let kept = delegate::add_guarded("host-local", &add).unwrap().commit();
    assert_eq!(kept.ips.len(), 1);
    assert_eq!(
        reserved(dir.path()).len(),
        1,
        "committed reservation must stay"
    );
}

#[test]
fn delegate_errors_keep_their_code() {
    if !have_host_local() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path(), "1.0.0", "ADD", "c1");
    // host-local refuses a subnet that does not parse; its own CNI error must come through.
    req.stdin = json!({"cniVersion":"1.0.0","name":"n","type":"bridge",
        "ipam":{"type":"host-local","subnet":"not-a-cidr","dataDir": dir.path()}})
    .to_string()
    .into_bytes();
    let err = delegate::add("host-local", &req).unwrap_err();
    assert_ne!(
        err.code,
        conf::code::DELEGATE,
        "host-local's own error was replaced: {err}"
    );
    assert!(!err.msg.is_empty());
    let missing = delegate::add("no-such-plugin", &req).unwrap_err();
    assert_eq!(missing.code, conf::code::INVALID_ENV);
    assert!(missing.msg.contains("no-such-plugin"));
}
