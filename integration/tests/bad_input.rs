//! Bad input against the kmesh-cni binary: each case must print a CNI error (JSON on stdout with
//! cniVersion, the expected code and a message), exit non-zero, and change nothing in the netns.

mod common;

use common::Kmesh;
use integration::cni::{check_cni_error, PluginEnv, ALL_VERSIONS};
use integration::prereq::require_netns_env;
use serde_json::{json, Value};

const VERSION: u64 = 1;
const INVALID_ENV: u64 = 4;
const DECODE: u64 = 6;
const INVALID_CONFIG: u64 = 7;

struct Case {
    name: String,
    env: PluginEnv,
    stdin: Vec<u8>,
    code: u64,
}

fn case(name: impl Into<String>, env: PluginEnv, stdin: impl Into<Vec<u8>>, code: u64) -> Case {
    Case {
        name: name.into(),
        env,
        stdin: stdin.into(),
        code,
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn cases(k: &Kmesh) -> Vec<Case> {
    let good = bytes(&k.conf("1.0.0"));
    let add = || k.env("ADD");
    let mut c = vec![
        // Decoding stdin.
        case(
            "malformed JSON",
            add(),
            &br#"{"cniVersion": "1.0.0", "name""#[..],
            DECODE,
        ),
        case("empty stdin on ADD", add(), &b""[..], DECODE),
        case("JSON array", add(), &b"[1, 2]"[..], DECODE),
        case("JSON string", add(), &br#""kmesh""#[..], DECODE),
        // Environment.
        case(
            "missing CNI_COMMAND",
            add().unset("CNI_COMMAND"),
            good.clone(),
            INVALID_ENV,
        ),
        case(
            "empty CNI_COMMAND",
            add().set("CNI_COMMAND", ""),
            good.clone(),
            INVALID_ENV,
        ),
        case(
            "unknown CNI_COMMAND",
            add().set("CNI_COMMAND", "FROB"),
            good.clone(),
            INVALID_ENV,
        ),
        case(
            "malformed CNI_ARGS pair",
            add().set("CNI_ARGS", "FOO"),
            good.clone(),
            INVALID_ENV,
        ),
    ];
    for verb in ["ADD", "DEL", "CHECK"] {
        for var in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"] {
            let env = k.env(verb);
            c.push(case(
                format!("{verb} missing {var}"),
                env.clone().unset(var),
                good.clone(),
                INVALID_ENV,
            ));
            c.push(case(
                format!("{verb} empty {var}"),
                env.set(var, ""),
                good.clone(),
                INVALID_ENV,
            ));
        }
    }
    for verb in ["ADD", "CHECK"] {
        let env = k.env(verb);
        c.push(case(
            format!("{verb} missing CNI_NETNS"),
            env.clone().unset("CNI_NETNS"),
            good.clone(),
            INVALID_ENV,
        ));
        c.push(case(
            format!("{verb} empty CNI_NETNS"),
            env.set("CNI_NETNS", ""),
            good.clone(),
            INVALID_ENV,
        ));
    }
    let gc_conf = bytes(&k.base_conf("1.1.0"));
    c.push(case(
        "GC missing CNI_PATH",
        k.env_global("GC").unset("CNI_PATH"),
        gc_conf.clone(),
        INVALID_ENV,
    ));
    // Container IDs and ifnames become file names: reject path tricks and what the kernel refuses.
    for id in ["../x", "a/b", "-x", "."] {
        c.push(case(
            format!("container ID {id:?}"),
            add().set("CNI_CONTAINERID", id),
            good.clone(),
            INVALID_ENV,
        ));
    }
    for ifname in ["abcdefghijklmnop", ".", "..", "a/b", "eth0:1", "eth 0"] {
        c.push(case(
            format!("ifname {ifname:?}"),
            add().set("CNI_IFNAME", ifname),
            good.clone(),
            INVALID_ENV,
        ));
    }
    // Versions.
    for version in ["0.2.0", "0.1.0", "2.0.0", "abc"] {
        let mut conf = k.conf("1.0.0");
        conf["cniVersion"] = json!(version);
        c.push(case(
            format!("cniVersion {version}"),
            add(),
            bytes(&conf),
            VERSION,
        ));
    }
    let mut conf = k.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("cniVersion");
    c.push(case("missing cniVersion", add(), bytes(&conf), VERSION));
    for version in ["0.3.0", "0.3.1"] {
        c.push(case(
            format!("CHECK at {version}"),
            k.env("CHECK"),
            bytes(&k.conf(version)),
            VERSION,
        ));
    }
    for verb in ["GC", "STATUS"] {
        for version in ["1.0.0", "0.4.0"] {
            let conf = k.base_conf(version);
            c.push(case(
                format!("{verb} at {version}"),
                k.env_global(verb),
                bytes(&conf),
                VERSION,
            ));
        }
    }
    // Config.
    for key in ["name", "type"] {
        let mut conf = k.conf("1.0.0");
        conf.as_object_mut().unwrap().remove(key);
        c.push(case(
            format!("missing {key}"),
            add(),
            bytes(&conf),
            INVALID_CONFIG,
        ));
    }
    let mut conf = k.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("prevResult");
    c.push(case(
        "ADD without prevResult (kmesh-cni is chained only)",
        add(),
        bytes(&conf),
        INVALID_CONFIG,
    ));
    // prevResult.
    let mut conf = k.conf("1.0.0");
    conf["prevResult"] =
        json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.232.0.2/24", "gateway": "10.232.0.1"}});
    c.push(case(
        "prevResult of spec 0.2.0",
        add(),
        bytes(&conf),
        VERSION,
    ));
    let mut conf = k.conf("1.0.0");
    conf["prevResult"]["ips"][0]["address"] = json!("bogus");
    c.push(case(
        "prevResult address does not decode",
        add(),
        bytes(&conf),
        DECODE,
    ));
    let mut conf = k.conf("1.0.0");
    conf["prevResult"]["ips"][0]["interface"] = json!(5);
    c.push(case(
        "prevResult ips[].interface out of range",
        add(),
        bytes(&conf),
        INVALID_CONFIG,
    ));
    c
}

/// When the config names a version we support, the error must be in that version: a runtime
/// speaking 0.3.1 must be able to read it (multus #875 broke on a newer version than it sent).
fn check_error_version(stdout: &str, stdin: &[u8], what: &str) -> Result<(), String> {
    let Ok(conf) = serde_json::from_slice::<Value>(stdin) else {
        return Ok(());
    };
    let Some(version) = conf["cniVersion"]
        .as_str()
        .filter(|v| ALL_VERSIONS.contains(v))
    else {
        return Ok(());
    };
    let error: Value = serde_json::from_str(stdout).map_err(|e| e.to_string())?;
    if error["cniVersion"] == version {
        Ok(())
    } else {
        Err(format!(
            "{what}: error in version {} for a {version} config:\n{stdout}",
            error["cniVersion"]
        ))
    }
}

#[test]
fn bad_input_gets_a_cni_error_and_changes_nothing() {
    if !require_netns_env() {
        return;
    }
    let k = Kmesh::new("weft-bad");
    let table = cases(&k);
    assert!(table.len() >= 30, "only {} cases", table.len());
    let before = k.ns.snapshot();
    let mut failures = Vec::new();
    for c in &table {
        let out = k.run(&c.env, &c.stdin);
        if let Err(e) = check_cni_error(&out, c.code, &c.name)
            .and_then(|()| check_error_version(&out.stdout, &c.stdin, &c.name))
        {
            failures.push(e);
        }
    }
    assert_eq!(k.ns.snapshot(), before, "bad input changed the netns");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        table.len(),
        failures.join("\n\n")
    );
}

#[test]
fn del_without_netns_is_fine() {
    if !require_netns_env() {
        return;
    }
    let k = Kmesh::new("weft-del-nons");
    for env in [
        k.env("DEL").unset("CNI_NETNS"),
        k.env("DEL").set("CNI_NETNS", ""),
    ] {
        let out = k.run_json(&env, &k.conf("1.0.0"));
        out.assert_success("DEL without CNI_NETNS");
        assert_eq!(out.stdout, "", "DEL printed: {}", out.stdout);
    }
}
