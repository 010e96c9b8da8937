//! A pod network for the kmesh-cni fast-path tests: a conflist of a veth main plugin (bridge or
//! ptp) with host-local IPAM, chained with kmesh-cni on the test's own pin root and state dir,
//! driven through the libcni cnitool; plus direct exec of kmesh-cni on the same root for the
//! cases a runtime cannot be made to produce on demand.

use std::net::IpAddr;

use integration::cni::{exec_plugin, Cnitool, PluginEnv};
use integration::fixtures::netns::{unique_ifname, HostLink, TestNetns};
use integration::plugins::CniPath;
use integration::prereq::{require, require_netns_env};
use integration::proc::Output;
use serde_json::{json, Value};
use tempfile::TempDir;

use integration::fixtures::bpffs::Isolation;
use integration::fixtures::pods::{host_veth, pod_ip};

/// The capability containerd and CRI-O fill with the pod's annotations.
/// `struct weft_endpoint.flags`: the pod is reached through host routing (ptp).
pub const EP_F_ROUTED: u32 = 1;
/// `struct weft_managed.flags`: enrolled in the mesh.
pub const MANAGED_F_ENROLLED: u32 = 1;

/// Netns tests plus bpftool, which reads the pinned maps back.
pub fn prerequisites() -> bool {
    require_netns_env() && require(&["bpftool", "tc", "ping", "perl"])
}

pub const ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Main {
    /// L2: the host veths are ports of a bridge.
    Bridge,
    /// Routed: the host routes to each pod over its veth (gateway = host side).
    Ptp,
}

/// One pod as the runtime knows it: a netns and a container ID, plus its annotations.
pub struct Pod {
    pub ns: TestNetns,
    pub cid: String,
    /// Value of `CAP_ARGS` for cnitool (empty: no capability args).
    pub cap_args: String,
}

impl Pod {
    pub fn new(tag: &str) -> Self {
        let ns = TestNetns::new("wk");
        Pod {
            cid: format!("{}-{tag}", ns.name()),
            ns,
            cap_args: String::new(),
        }
    }

    /// The pod carries these annotations (the CRI capability).
    pub fn annotated(tag: &str, annotations: Value) -> Self {
        let mut p = Pod::new(tag);
        p.cap_args = json!({ ANNOTATIONS: annotations }).to_string();
        p
    }
}

/// What ADD gave for a pod: the result, its address and host-side veth.
pub struct Added {
    pub result: Value,
    pub ip: IpAddr,
    pub host_veth: String,
}

/// The conflist `<name>` (main plugin + kmesh-cni) and `<name>-ref` (main plugin alone, its own
/// IPAM dataDir so it hands out the same first address), at one spec version.
///
/// Field order is drop order: the bridge goes after the pods' netns (declared by the test after
/// this value, so dropped before it), the pins and records last.
pub struct Net {
    pub main: Main,
    pub version: String,
    pub name: String,
    pub tool: Cnitool,
    _data: TempDir,
    _ref_data: TempDir,
    pub bridge: Option<HostLink>,
    pub cni_path: CniPath,
    pub iso: Isolation,
}

impl Net {
    /// `kmesh` holds kmesh-cni's own keys (mode, annotations config, ...); `octet` picks the
    /// test's private /24 (10.234.<octet>.0/24 for bridge, 10.235.<octet>.0/24 for ptp).
    pub fn new(main: Main, version: &str, kmesh: Value, octet: u8) -> Self {
        Self::build(main, version, kmesh, octet, false)
    }

    /// Like [`Net::new`], but host-local hands every pod two addresses: the same private /24
    /// and an IPv6 /64 (fd0e:0:0:<octet>::/64 for bridge, fd0f:0:0:<octet>::/64 for ptp).
    pub fn dual_stack(main: Main, version: &str, kmesh: Value, octet: u8) -> Self {
        Self::build(main, version, kmesh, octet, true)
    }

    fn build(main: Main, version: &str, kmesh: Value, octet: u8, dual_stack: bool) -> Self {
        let iso = Isolation::new();
        let cni_path = CniPath::new();
        cni_path.plugin("kmesh-cni");
        let mut tool = Cnitool::new(&cni_path);
        tool.set_env("WEFT_STATE_DIR", iso.state_dir());
        let bridge = (main == Main::Bridge).then(|| HostLink::adopt(&unique_ifname("wkb")));
        let data = TempDir::new().unwrap();
        let ref_data = TempDir::new().unwrap();
        let (v4, v6) = match main {
            Main::Bridge => (
                format!("10.234.{octet}.0/24"),
                format!("fd0e:0:0:{octet}::/64"),
            ),
            Main::Ptp => (
                format!("10.235.{octet}.0/24"),
                format!("fd0f:0:0:{octet}::/64"),
            ),
        };
        let ipam = |data: &TempDir| {
            if dual_stack {
                json!({"type": "host-local", "dataDir": data.path(),
                       "ranges": [[{"subnet": v4}], [{"subnet": v6}]]})
            } else {
                json!({"type": "host-local", "subnet": v4, "dataDir": data.path()})
            }
        };
        let main_plugin = |data: &TempDir| match main {
            Main::Bridge => json!({
                "type": "bridge",
                "bridge": bridge.as_ref().unwrap().name(),
                "isGateway": true,
                "ipam": ipam(data)
            }),
            Main::Ptp => json!({
                "type": "ptp",
                "ipam": ipam(data)
            }),
        };
        let name = format!("wk-{}-{octet}", std::process::id());
        let mut kmesh = kmesh;
        kmesh["capabilities"] = json!({ ANNOTATIONS: true });
        tool.write_conflist(&json!({
            "cniVersion": version, "name": name,
            "plugins": [main_plugin(&data), iso.plugin_conf(kmesh)]
        }));
        tool.write_conflist(&json!({
            "cniVersion": version, "name": format!("{name}-ref"),
            "plugins": [main_plugin(&ref_data)]
        }));
        Net {
            main,
            version: version.to_owned(),
            name,
            tool,
            _data: data,
            _ref_data: ref_data,
            bridge,
            cni_path,
            iso,
        }
    }

    pub fn bridge_name(&self) -> Option<&str> {
        self.bridge.as_ref().map(HostLink::name)
    }

    /// `cnitool <verb>` on the chain for `pod`.
    pub fn run(&mut self, verb: &str, pod: &Pod) -> Output {
        let net = self.name.clone();
        self.run_on(verb, &net, &pod.cid, &pod.cap_args, pod.ns.path_str())
    }

    /// `cnitool <verb> <net> <netns>` for container `cid` with `CAP_ARGS` `cap_args`; the netns
    /// path need not exist any more.
    pub fn run_on(
        &mut self,
        verb: &str,
        net: &str,
        cid: &str,
        cap_args: &str,
        netns: &str,
    ) -> Output {
        self.tool
            .set_env("CNI_CONTAINERID", cid)
            .set_env("CAP_ARGS", cap_args);
        self.tool.run(verb, net, std::path::Path::new(netns))
    }

    /// ADD through the chain, which must succeed.
    pub fn add(&mut self, pod: &Pod) -> Added {
        let out = self.run("add", pod);
        out.assert_success(&format!(
            "{:?} + kmesh-cni ADD at {}",
            self.main, self.version
        ));
        let result = out.json();
        Added {
            ip: pod_ip(&result),
            host_veth: host_veth(&result, self.bridge_name()),
            result,
        }
    }

    /// The main plugin alone: ADD then DEL in `pod`'s netns; returns the ADD result.
    pub fn reference(&mut self, pod: &Pod) -> Value {
        let net = format!("{}-ref", self.name);
        let ns = pod.ns.path_str();
        let out = self.run_on("add", &net, &pod.cid, &pod.cap_args, ns);
        out.assert_success(&format!("{:?} alone ADD", self.main));
        let result = out.json();
        self.run_on("del", &net, &pod.cid, &pod.cap_args, ns)
            .assert_success(&format!("{:?} alone DEL", self.main));
        assert!(!pod.ns.link_exists("eth0"), "reference DEL left eth0");
        result
    }

    /// Env for a direct exec of kmesh-cni on this network's pin root and state dir.
    pub fn direct_env(&self, verb: &str, cid: &str, netns: &str) -> PluginEnv {
        direct_env(&self.iso, &self.cni_path, verb, cid, netns)
    }

    /// Direct exec of kmesh-cni with `conf` on stdin.
    pub fn direct(&self, env: &PluginEnv, conf: &Value) -> Output {
        exec_plugin(
            &self.cni_path.plugin("kmesh-cni"),
            env,
            &serde_json::to_vec(conf).unwrap(),
        )
    }
}

/// Env for a direct exec of kmesh-cni with the isolation's state dir.
pub fn direct_env(
    iso: &Isolation,
    cni_path: &CniPath,
    verb: &str,
    cid: &str,
    netns: &str,
) -> PluginEnv {
    PluginEnv::verb(verb, cid, netns, "eth0", cni_path.path_str())
        .set("WEFT_STATE_DIR", iso.state_dir())
}

/// A pod wired by hand the way a veth main plugin leaves it (host veth up, eth0 up with an
/// address in the netns), for direct-exec tests that need a real veth but no main plugin.
pub struct VethPod {
    pub cid: String,
    pub host_veth: String,
    pub ip: IpAddr,
    // Field order is drop order: the veth before its netns.
    pub veth: HostLink,
    pub ns: TestNetns,
}

impl VethPod {
    /// `addr` is put on eth0 only when `assign` is true (a pod can also just *claim* an address
    /// in a crafted prevResult).
    pub fn new(tag: &str, addr: &str, assign: bool) -> Self {
        let ns = TestNetns::new("wk");
        let host_veth = unique_ifname("wkv");
        let veth = ns.add_veth(&host_veth, "eth0");
        if assign {
            ns.must(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        }
        VethPod {
            cid: format!("{}-{tag}", ns.name()),
            host_veth,
            ip: addr.parse().unwrap(),
            veth,
            ns,
        }
    }

    /// A main plugin's result for this pod at `version` claiming `addr`/24 on eth0.
    pub fn prev_result(&self, version: &str, addr: IpAddr) -> Value {
        let mut ip = json!({"address": format!("{addr}/24"), "interface": 1});
        if version.starts_with("0.") {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": self.host_veth},
                {"name": "eth0", "sandbox": self.ns.path_str()}
            ],
            "ips": [ip]
        })
    }

    /// kmesh-cni's config for a direct exec on `iso`'s pin root, with a prevResult.
    pub fn conf(&self, iso: &Isolation, version: &str, addr: IpAddr, extra: Value) -> Value {
        let mut conf = iso.plugin_conf(extra);
        conf["cniVersion"] = json!(version);
        conf["name"] = json!("weft-kmesh-test");
        conf["prevResult"] = self.prev_result(version, addr);
        conf
    }
}
