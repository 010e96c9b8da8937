//! Shared fixture for the tests that exec kmesh-cni directly: a real netns holding a veth named
//! eth0 (as the main plugin would have left it) and a CNI_PATH with our binaries.

#![allow(dead_code)] // each test file uses a different part

pub mod kmesh_net;

use std::path::PathBuf;

use integration::cni::{exec_plugin, PluginEnv};
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::plugins::CniPath;
use integration::proc::Output;
use serde_json::{json, Value};

use integration::fixtures::bpffs::Isolation;

pub struct Kmesh {
    pub bin: PathBuf,
    pub cni_path: CniPath,
    pub container_id: String,
    pub host_veth: String,
    // Field order is drop order: the veth goes before its netns, the pins after both.
    _veth: HostLink,
    pub ns: TestNetns,
    /// This fixture's own pinRoot and WEFT_STATE_DIR: nothing lands in /sys/fs/bpf/weft or
    /// /var/lib/cni, and everything goes away with the fixture.
    pub iso: Isolation,
}

impl Kmesh {
    pub fn new(prefix: &str) -> Self {
        let cni_path = CniPath::new();
        let bin = cni_path.plugin("kmesh-cni");
        let ns = TestNetns::new(prefix);
        let host_veth = unique_ifname("wkv");
        let veth = ns.add_veth(&host_veth, "eth0");
        ns.must(&["addr", "add", "10.232.0.2/24", "dev", "eth0"]);
        Kmesh {
            bin,
            cni_path,
            container_id: format!("{prefix}-{}", std::process::id()),
            host_veth,
            _veth: veth,
            ns,
            iso: Isolation::new(),
        }
    }

    /// The env libcni would send for `verb` on eth0 of our netns.
    pub fn env(&self, verb: &str) -> PluginEnv {
        PluginEnv::verb(
            verb,
            &self.container_id,
            self.ns.path_str(),
            "eth0",
            self.cni_path.path_str(),
        )
        .set("WEFT_STATE_DIR", self.iso.state_dir())
    }

    /// The env of GC / STATUS: no container, netns or ifname.
    pub fn env_global(&self, verb: &str) -> PluginEnv {
        PluginEnv::command(verb)
            .set("CNI_PATH", self.cni_path.path_str())
            .set("WEFT_STATE_DIR", self.iso.state_dir())
    }

    /// A kmesh-cni config without prevResult, pinned under this fixture's own root.
    pub fn base_conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "weft-test",
            "type": "kmesh-cni",
            "pinRoot": self.iso.pin_root_str(),
        })
    }

    pub fn run(&self, env: &PluginEnv, stdin: &[u8]) -> Output {
        exec_plugin(&self.bin, env, stdin)
    }

    pub fn run_json(&self, env: &PluginEnv, conf: &Value) -> Output {
        self.run(env, &serde_json::to_vec(conf).unwrap())
    }

    /// A main plugin's result for our netns in `version`'s shape.
    pub fn prev_result(&self, version: &str) -> Value {
        let mut ip = json!({"address": "10.232.0.2/24", "gateway": "10.232.0.1", "interface": 1});
        if version.starts_with("0.") {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": self.host_veth, "mac": "02:00:00:00:00:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": self.ns.path_str()}
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.232.0.1"}],
            "dns": {"nameservers": ["10.232.0.53"]}
        })
    }

    /// A chained config for kmesh-cni with a prevResult of the same version.
    pub fn conf(&self, version: &str) -> Value {
        let mut conf = self.base_conf(version);
        conf["prevResult"] = self.prev_result(version);
        conf
    }
}
