//! Reading deploy/weft.yaml (through the PyPI venv's PyYAML, see prerequisites-pypi.list) and
//! the tools of that venv.

use integration::plugins::workspace_root;
use integration::prereq::missing;
use integration::proc::{run, Output};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The venv `prerequisites.sh pypi-install` fills: `$WEFT_PYVENV` or `target/pyvenv`.
pub fn pyvenv() -> Option<PathBuf> {
    let dir = std::env::var_os("WEFT_PYVENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/pyvenv"));
    if dir.join("bin/kubernetes-validate").exists() {
        Some(dir)
    } else {
        missing(&format!(
            "{}/bin/kubernetes-validate (./prerequisites.sh pypi-install test; run-tests.sh does it)",
            dir.display()
        ));
        None
    }
}

pub fn manifest_path() -> PathBuf {
    workspace_root().join("deploy/weft.yaml")
}

/// Every document of a YAML file, as JSON.
pub fn yaml_documents(venv: &std::path::Path, file: &std::path::Path) -> Vec<Value> {
    let script =
        "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out: Output = run(
        Command::new(venv.join("bin/python3"))
            .args(["-c", script])
            .arg(file),
        b"",
    )
    .expect("run the venv's python")
    .0;
    out.assert_success("YAML to JSON");
    match out.json() {
        Value::Array(a) => a,
        other => vec![other],
    }
}

/// The DaemonSet document.
pub fn daemonset(venv: &std::path::Path) -> Value {
    yaml_documents(venv, &manifest_path())
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("deploy/weft.yaml has a DaemonSet")
}

/// `(host path, container mount path, propagation)` of every hostPath volume a container mounts.
pub fn host_mounts(ds: &Value, container: &Value) -> Vec<(String, String, Option<String>)> {
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let v = volumes.iter().find(|v| v["name"] == m["name"])?;
            Some((
                v["hostPath"]["path"].as_str()?.to_owned(),
                m["mountPath"].as_str()?.to_owned(),
                m["mountPropagation"].as_str().map(str::to_owned),
            ))
        })
        .collect()
}

/// The container named `name` (init containers included).
pub fn container(ds: &Value, name: &str) -> Value {
    let spec = &ds["spec"]["template"]["spec"];
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// `--flag=value` of a command line.
pub fn flag(cmd: &Value, name: &str) -> Option<String> {
    cmd.as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_owned))
}
