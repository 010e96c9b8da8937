//! VERSION, directly and through libcni's GetVersionInfo.

use integration::cni::{exec_plugin, Cnitool, PluginEnv, ALL_VERSIONS};
use integration::plugins::{weft_binary, CniPath};
use serde_json::{json, Value};

fn expected(version: &str) -> Value {
    json!({"cniVersion": version, "supportedVersions": ALL_VERSIONS})
}

#[test]
fn version_with_only_cni_command() {
    let bin = weft_binary("kmesh-cni");
    let env = PluginEnv::command("VERSION");
    for (stdin, version) in [
        ("", "1.1.0"),
        (r#"{"cniVersion":"1.1.0"}"#, "1.1.0"),
        (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
        (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
    ] {
        let out = exec_plugin(&bin, &env, stdin.as_bytes());
        out.assert_success(&format!("VERSION with stdin {stdin:?}"));
        assert_eq!(
            out.json(),
            expected(version),
            "VERSION with stdin {stdin:?}"
        );
    }
}

#[test]
fn version_with_libcni_dummy_env() {
    // libcni sets every other variable to "dummy" for VERSION: none of them may be validated.
    let bin = weft_binary("kmesh-cni");
    let env = PluginEnv::verb("VERSION", "dummy", "dummy", "dummy", "dummy");
    let out = exec_plugin(&bin, &env, br#"{"cniVersion":"1.0.0"}"#);
    out.assert_success("VERSION with dummy env");
    assert_eq!(out.json(), expected("1.0.0"));
}

#[test]
fn version_through_libcni() {
    let cni_path = CniPath::new();
    cni_path.plugin("kmesh-cni");
    let tool = Cnitool::new(&cni_path);
    let out = tool.version("kmesh-cni");
    out.assert_success("cnitool version kmesh-cni");
    assert_eq!(out.json(), json!({"supportedVersions": ALL_VERSIONS}));
}
