//! Fixtures for weft-sriov's tests: stand-in VFs behind a fake sysfs tree and a recording fake
//! PF (`integration::sriov`), pods as real network namespaces, and the plugin exec'd the way a
//! runtime does (direct exec or libcni's cnitool).
#![allow(dead_code, unused_imports)] // each test file uses a different part

use std::path::PathBuf;

use integration::cni::{exec_plugin, PluginEnv};
use integration::fixtures::netns::TestNetns;
use integration::plugins::CniPath;
use integration::proc::Output;
use integration::sriov::{FakeSriov, Kind, LinkState};
use serde_json::{json, Value};

pub use integration::cni::ALL_VERSIONS;

/// Root, iproute2 and the reference plugins (the chain partners and host-local).
pub fn prerequisites() -> bool {
    integration::prereq::require_netns_env()
}

pub fn version_at_least(version: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    parse(version) >= parse(min)
}

/// A fake SR-IOV NIC with `n` stand-in VFs and a CNI_PATH holding our binaries and the
/// reference plugins.
pub struct Rig {
    pub cni_path: CniPath,
    pub bin: PathBuf,
    pub fake: FakeSriov,
}

/// A pod: its netns and container ID.
pub struct Pod {
    pub ns: TestNetns,
    pub cid: String,
}

impl Pod {
    pub fn new(prefix: &str) -> Pod {
        let ns = TestNetns::new(prefix);
        Pod {
            cid: format!("{}-cid", ns.name()),
            ns,
        }
    }

    pub fn netns(&self) -> &str {
        self.ns.path_str()
    }

    /// `ifname`'s state inside the pod, if it is there.
    pub fn link(&self, ifname: &str) -> Option<LinkState> {
        integration::sriov::link_state(Some(self.ns.name()), ifname)
    }
}

impl Rig {
    pub fn new(n: u32, kind: Kind) -> Rig {
        let cni_path = CniPath::new();
        let bin = cni_path.plugin("weft-sriov");
        Rig {
            cni_path,
            bin,
            fake: FakeSriov::new(n, kind),
        }
    }

    /// The env of `verb` for `pod`'s `ifname`, pointed at this rig's fakes and state dir.
    pub fn env(&self, verb: &str, pod: &Pod, ifname: &str) -> PluginEnv {
        self.with_fakes(PluginEnv::verb(
            verb,
            &pod.cid,
            pod.netns(),
            ifname,
            self.cni_path.path_str(),
        ))
    }

    /// GC / STATUS env: no container, netns or ifname.
    pub fn env_global(&self, verb: &str) -> PluginEnv {
        self.with_fakes(PluginEnv::command(verb).set("CNI_PATH", self.cni_path.path_str()))
    }

    pub fn with_fakes(&self, mut env: PluginEnv) -> PluginEnv {
        for (k, v) in self.fake.env() {
            env = env.set(k, &v);
        }
        env
    }

    /// A weft-sriov config for VF `vf` in network `sriov-test`, plus `extra` keys.
    pub fn conf(&self, version: &str, vf: usize, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": "sriov-test",
            "type": "weft-sriov",
            "deviceID": self.fake.vfs[vf].pci,
        });
        for (k, v) in extra.as_object().expect("extra is an object") {
            c[k] = v.clone();
        }
        c
    }

    pub fn run(&self, env: &PluginEnv, conf: &Value) -> Output {
        exec_plugin(&self.bin, env, &serde_json::to_vec(conf).unwrap())
    }

    /// The record of (network, cid, ifname), if any.
    pub fn record(&self, network: &str, cid: &str, ifname: &str) -> Option<Value> {
        let path = self.record_path(network, cid, ifname);
        std::fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("record is JSON"))
    }

    pub fn record_path(&self, network: &str, cid: &str, ifname: &str) -> PathBuf {
        self.fake
            .state_dir()
            .join("weft-sriov")
            .join(network)
            .join(format!("{cid}:{ifname}"))
    }

    /// Records of every network (file names under `<state>/weft-sriov/<network>/`).
    pub fn records(&self) -> Vec<String> {
        let dir = self.fake.state_dir().join("weft-sriov");
        let mut out = Vec::new();
        for net in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = net.file_name().to_string_lossy().into_owned();
            if name == "_vf" || !net.path().is_dir() {
                continue;
            }
            for rec in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let file = rec.file_name().to_string_lossy().into_owned();
                if !file.starts_with('.') {
                    out.push(format!("{name}/{file}"));
                }
            }
        }
        out.sort();
        out
    }

    /// The owner file of VF `vf`, if it is allocated.
    pub fn owner(&self, vf: usize) -> Option<Value> {
        let key = self.fake.vfs[vf].pci.replace(':', "-");
        let path = self
            .fake
            .state_dir()
            .join("weft-sriov/_vf")
            .join(format!("{key}:owner"));
        std::fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("owner is JSON"))
    }

    /// weft-ipam's reservations in network `network` (the count trailer of its pool file).
    pub fn ipam_held(&self, network: &str) -> usize {
        let pool = self
            .fake
            .state_dir()
            .join("weft-ipam")
            .join(network)
            .join("pool");
        match std::fs::read_to_string(pool) {
            Ok(text) => text
                .lines()
                .find_map(|l| l.strip_prefix("end "))
                .and_then(|n| n.parse().ok())
                .expect("pool trailer"),
            Err(_) => 0,
        }
    }

    /// Adds an altname to VF `vf` (host side) and returns it.
    pub fn add_altname(&self, vf: usize) -> String {
        let alt = format!("{}-alt", self.fake.vfs[vf].name);
        integration::proc::must(
            "ip",
            &[
                "link",
                "property",
                "add",
                "dev",
                &self.fake.vfs[vf].name,
                "altname",
                &alt,
            ],
        );
        alt
    }

    /// VF `vf` is back in the host exactly as `before` (name, MAC, MTU, up, altnames), its
    /// PF-side state is a fresh VF's again, and nothing of ours remains for it.
    #[track_caller]
    pub fn assert_restored(&self, vf: usize, before: &LinkState, what: &str) {
        let now = self
            .fake
            .host_state(vf)
            .unwrap_or_else(|| panic!("{what}: VF {} not back in the host", before.name));
        assert_eq!(&now, before, "{what}: VF not restored");
        assert_eq!(
            self.fake.vf_pf_state(vf as u32),
            integration::sriov::fresh_vf_state(),
            "{what}: PF-side state not restored"
        );
        assert_eq!(self.owner(vf), None, "{what}: VF still allocated");
    }
}

/// The CNI error code of a failed call, with the whole output on mismatch.
#[track_caller]
pub fn assert_code(out: &Output, code: u64, what: &str) -> String {
    integration::cni::assert_cni_error(out, code, what);
    out.json()["msg"].as_str().unwrap().to_owned()
}

/// The weft-ipam section used by most tests: its own range in this rig's state dir.
pub fn weft_ipam(range: &str) -> Value {
    json!({"type": "weft-ipam", "range": range, "routes": [{"dst": "0.0.0.0/0"}]})
}
