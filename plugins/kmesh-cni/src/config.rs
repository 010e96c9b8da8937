//! kmesh-cni's own config keys, and the per-pod decisions derived from them (fast path on or
//! off, mesh enrolment) without any Kubernetes API call on the ADD path.

use crate::error::{KmeshError, Result};
use conf::Request;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// How to attach the tc program to the pod's host-side veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// tcx where the kernel has it (probed at run time), else clsact + cls_bpf.
    #[default]
    Auto,
    Tcx,
    Tc,
    /// Attach nothing: a pure pass-through (the pods still network over the main plugin).
    Off,
}

/// What to do when the kernel refuses a program or a map operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Fail the ADD (the runtime retries the sandbox).
    #[default]
    Fail,
    /// Pass prevResult through and log: the pod works over the main plugin's normal path.
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KmeshConf {
    pub mode: Mode,
    pub failure_policy: FailurePolicy,
    /// Annotation (or CNI_ARGS key) whose value `enrolValue` enrols the pod in the mesh.
    pub enrol_annotation: String,
    pub enrol_value: String,
    /// Enrolment when neither annotations nor CNI_ARGS say anything.
    pub enrol_by_default: bool,
    /// Annotation (or CNI_ARGS key) that opts a pod out of the fast path with "false"/"off".
    pub fast_path_annotation: String,
    /// Where maps and links are pinned.
    pub pin_root: PathBuf,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
}

impl Default for KmeshConf {
    fn default() -> Self {
        KmeshConf {
            mode: Mode::Auto,
            failure_policy: FailurePolicy::Fail,
            enrol_annotation: "istio.io/dataplane-mode".into(),
            enrol_value: "kmesh".into(),
            enrol_by_default: false,
            fast_path_annotation: "weft.dev/fast-path".into(),
            pin_root: PathBuf::from("/sys/fs/bpf/weft"),
            log_level: None,
            log_file: None,
        }
    }
}

/// The capability containerd and CRI-O fill with the pod's annotations.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Per-pod decisions for one ADD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPolicy {
    pub fast_path: bool,
    pub enrolled: bool,
}

impl KmeshConf {
    pub fn from_request(req: &Request) -> Result<KmeshConf> {
        Ok(req.conf.plugin()?)
    }

    /// `pinRoot` must name a place on bpffs before anything is created there: absolute, no `..`
    /// components, and under /sys/fs/bpf (weft mounts bpffs there if needed) or on
    /// another bpffs mount. Code 7 otherwise: a config that can never work.
    pub fn check_pin_root(&self) -> Result<()> {
        let root = &self.pin_root;
        let bad = |why: &str| {
            Err(KmeshError::Config(format!(
                "pinRoot {:?} {why}",
                root.display().to_string()
            )))
        };
        if root.as_os_str().is_empty() || !root.is_absolute() {
            return bad("must be an absolute path on bpffs");
        }
        if root
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return bad("must not contain .. components");
        }
        if root.starts_with(bpf::BPFFS) {
            return Ok(());
        }
        // Elsewhere only on a bpffs mounted there already: the nearest existing ancestor.
        let existing = root
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        match bpf::is_bpffs(existing) {
            Ok(true) => Ok(()),
            _ => bad(&format!(
                "is not under {} nor on a BPF filesystem",
                bpf::BPFFS
            )),
        }
    }

    /// Decides fast path and enrolment: pod annotations first, then `CNI_ARGS`, then config.
    pub fn pod_policy(&self, req: &Request) -> Result<PodPolicy> {
        let annotations: BTreeMap<String, String> = req
            .conf
            .runtime(POD_ANNOTATIONS_CAPABILITY)?
            .unwrap_or_default();
        let lookup = |key: &str| -> Option<String> {
            annotations.get(key).cloned().or_else(|| req.arg(key))
        };
        let enrolled = match lookup(&self.enrol_annotation) {
            Some(v) => v == self.enrol_value,
            None => self.enrol_by_default,
        };
        let fast_path = self.mode != Mode::Off
            && !matches!(
                lookup(&self.fast_path_annotation).as_deref(),
                Some("false" | "off" | "disabled")
            );
        Ok(PodPolicy {
            fast_path,
            enrolled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conf::{Env, NetConf};
    use serde_json::{json, Value};

    fn request(conf: Value, cni_args: &str) -> Request {
        let stdin = conf.to_string().into_bytes();
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", cni_args),
        ];
        Request {
            env: Env::from_vars(|k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
            .unwrap(),
            conf: NetConf::parse(&stdin).unwrap(),
            stdin,
        }
    }

    fn policy(conf: Value, args: &str) -> PodPolicy {
        let req = request(conf, args);
        KmeshConf::from_request(&req)
            .unwrap()
            .pod_policy(&req)
            .unwrap()
    }

    #[test]
    fn defaults_fast_path_on_not_enrolled() {
        let p = policy(
            json!({"cniVersion":"1.0.0","name":"n","type":"kmesh-cni"}),
            "",
        );
        assert_eq!(
            p,
            PodPolicy {
                fast_path: true,
                enrolled: false
            }
        );
    }

    #[test]
    fn annotations_beat_args_beat_config() {
        let base = json!({"cniVersion":"1.0.0","name":"n","type":"kmesh-cni","enrolByDefault":true,
            "runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {"istio.io/dataplane-mode": "kmesh"}}});
        assert!(policy(base.clone(), "istio.io/dataplane-mode=none").enrolled);
        let mut no_annotations = base.clone();
        no_annotations
            .as_object_mut()
            .unwrap()
            .remove("runtimeConfig");
        assert!(!policy(no_annotations.clone(), "istio.io/dataplane-mode=none").enrolled);
        assert!(policy(no_annotations, "K8S_POD_NAME=x").enrolled);
    }

    #[test]
    fn opt_out_and_mode_off() {
        let c = json!({"cniVersion":"1.0.0","name":"n","type":"kmesh-cni",
            "runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {"weft.dev/fast-path": "false"}}});
        assert!(!policy(c, "").fast_path);
        let off = json!({"cniVersion":"1.0.0","name":"n","type":"kmesh-cni","mode":"off"});
        assert!(!policy(off, "").fast_path);
    }

    #[test]
    fn pin_roots_off_bpffs_are_invalid_config() {
        for bad in ["", "relative/weft", "/sys/fs/bpf/../../tmp/x", "/tmp/weft"] {
            let c = KmeshConf {
                pin_root: bad.into(),
                ..KmeshConf::default()
            };
            let e = c.check_pin_root().unwrap_err();
            assert_eq!(e.code(), 7, "{bad}: {e}");
        }
        for good in ["/sys/fs/bpf/weft", "/sys/fs/bpf/weft-test/x"] {
            let c = KmeshConf {
                pin_root: good.into(),
                ..KmeshConf::default()
            };
            c.check_pin_root().unwrap();
        }
    }

    #[test]
    fn bad_mode_is_invalid_config() {
        let req = request(
            json!({"cniVersion":"1.0.0","name":"n","type":"kmesh-cni","mode":"xdp"}),
            "",
        );
        assert_eq!(KmeshConf::from_request(&req).unwrap_err().code(), 7);
    }
}
