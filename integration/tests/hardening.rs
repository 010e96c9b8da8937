//! Issue 11's findings, each reproduced against the real binaries: state files that cannot be
//! hijacked, bounds on every input, a STATUS that tells the truth, and a DEL (and a failed ADD)
//! that finishes on a full disk.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::Kmesh;
use integration::cni::{assert_cni_error, exec_plugin, PluginEnv};
use integration::fixtures::guards::Tmpfs;
use integration::plugins::CniPath;
use integration::prereq::{require, require_netns_env, require_root};
use integration::proc::Output;
use serde_json::{json, Value};
use tempfile::TempDir;

fn weft_ipam(cni_path: &CniPath, verb: &str, cid: &str, conf: &Value) -> Output {
    let env = if cid.is_empty() {
        PluginEnv::command(verb).set("CNI_PATH", cni_path.path_str())
    } else {
        PluginEnv::verb(verb, cid, "/proc/self/ns/net", "eth0", cni_path.path_str())
    };
    exec_plugin(
        &cni_path.plugin("weft-ipam"),
        &env,
        &serde_json::to_vec(conf).unwrap(),
    )
}

fn ipam_conf(store: &Path, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("weft-ipam");
    ipam["store"] = json!({"type": "file", "dir": store});
    json!({"cniVersion": "1.1.0", "name": "hard", "type": "bridge", "ipam": ipam})
}

/// A file that must never change, and a way to check it did not.
struct Victim {
    _dir: TempDir,
    path: std::path::PathBuf,
}

impl Victim {
    fn new() -> Victim {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("victim");
        std::fs::write(&path, b"precious").unwrap();
        Victim { _dir: dir, path }
    }

    fn untouched(&self) -> bool {
        std::fs::read(&self.path).unwrap() == b"precious"
    }
}

#[test]
fn weft_ipam_never_writes_through_links_planted_in_its_store() {
    if !require_root() {
        return;
    }
    let cni_path = CniPath::new();
    for planted in ["pool.tmp", "pool", "lock", "log"] {
        let store = TempDir::new().unwrap();
        let net_dir = store.path().join("hard");
        std::fs::create_dir(&net_dir).unwrap();
        std::fs::set_permissions(&net_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let victim = Victim::new();
        std::os::unix::fs::symlink(&victim.path, net_dir.join(planted)).unwrap();
        let conf = ipam_conf(
            store.path(),
            json!({"range": "10.237.1.0/24", "log_file": net_dir.join("log"), "log_level": "debug"}),
        );
        let out = weft_ipam(&cni_path, "ADD", "c1", &conf);
        match planted {
            // The old fixed temp name means nothing now: random O_EXCL|O_NOFOLLOW temps.
            "pool.tmp" | "log" => {
                out.assert_success(&format!("ADD with {planted} planted"));
                let meta = std::fs::symlink_metadata(net_dir.join("pool")).unwrap();
                assert!(meta.is_file(), "{planted}: pool is not a regular file");
            }
            // Reading or locking through a planted link is refused (never followed).
            _ => assert!(!out.success(), "{planted}: ADD followed a planted link"),
        }
        assert!(victim.untouched(), "{planted}: the victim was written");
    }
}

#[test]
fn state_dirs_open_to_others_are_repaired_and_foreign_ones_refused() {
    if !require_root() {
        return;
    }
    let cni_path = CniPath::new();
    let store = TempDir::new().unwrap();
    std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = ipam_conf(store.path(), json!({"range": "10.237.2.0/24"}));
    weft_ipam(&cni_path, "ADD", "c1", &conf).assert_success("ADD in a 0755 store dir");
    for dir in [store.path().to_path_buf(), store.path().join("hard")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    // A store directory someone else owns is not ours to trust.
    let foreign = TempDir::new().unwrap();
    nix::unistd::chown(
        foreign.path(),
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    let conf = ipam_conf(foreign.path(), json!({"range": "10.237.2.0/24"}));
    let out = weft_ipam(&cni_path, "ADD", "c1", &conf);
    assert_cni_error(&out, 5, "ADD in a store dir owned by nobody");
    assert!(
        out.stdout.contains("owned by uid 65534"),
        "{}",
        out.describe()
    );
    assert_eq!(
        std::fs::read_dir(foreign.path()).unwrap().count(),
        0,
        "something written"
    );
    assert_eq!(std::fs::metadata(foreign.path()).unwrap().uid(), 65534);
}

#[test]
fn kmesh_cni_gc_sweeps_temps_of_killed_writers_and_its_cache_is_private() {
    if !require_netns_env() || !require(&["bpftool"]) {
        return;
    }
    let k = Kmesh::new("wkh");
    k.run_json(&k.env("ADD"), &k.conf("1.1.0"))
        .assert_success("ADD");
    let net_dir = Path::new(k.iso.state_dir()).join("kmesh-cni/weft-test");
    // What a writer killed mid-write leaves: pid 0 never names a live process.
    for stale in [".tmp-0-1", ".tmp-0-2"] {
        std::fs::write(net_dir.join(stale), b"half").unwrap();
    }
    let mut gc = k.base_conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": k.container_id, "ifname": "eth0"}]);
    k.run_json(&k.env_global("GC"), &gc).assert_success("GC");
    let names: Vec<String> = std::fs::read_dir(&net_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![format!("{}:eth0", k.container_id)], "{names:?}");
    let cache = Path::new(k.iso.state_dir()).join("kmesh-cni/features.json");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "features.json");
    k.run_json(&k.env("DEL"), &k.conf("1.1.0"))
        .assert_success("DEL");
}

/// libcni sets no limit on container IDs; a 300-byte one used to fail kmesh-cni's ADD after
/// bridge and IPAM succeeded, and its DEL too, so libcni stopped the chain's DEL and leaked.
#[test]
fn a_container_id_longer_than_a_file_name_goes_through_add_check_del() {
    if !require_netns_env() || !require(&["bpftool"]) {
        return;
    }
    let mut k = Kmesh::new("wkl");
    k.container_id = format!("{}{}", k.container_id, "x".repeat(300));
    let conf = k.conf("1.1.0");
    k.run_json(&k.env("ADD"), &conf)
        .assert_success("ADD with a 300-byte container ID");
    assert_eq!(k.iso.record_values().len(), 1);
    assert_eq!(k.iso.attached().len(), 1, "one program attached");
    k.run_json(&k.env("CHECK"), &conf).assert_success("CHECK");
    k.run_json(&k.env("DEL"), &conf).assert_success("DEL");
    k.run_json(&k.env("DEL"), &conf).assert_success("DEL again");
    assert!(k.iso.record_values().is_empty() && k.iso.attached().is_empty());
    // Nothing recorded under another long ID: DEL is still success.
    let mut other = k.env("DEL");
    other = other.set("CNI_CONTAINERID", &"y".repeat(400));
    k.run_json(&other, &conf)
        .assert_success("DEL of a never-recorded long ID");
}

/// kmesh-cni's records live in the page cache only (issue 12: what they list dies with the
/// kernel), so a power loss can leave one empty. DEL and GC of such a record succeed, take away
/// what they can still find (the pod's filter or link) and drop the file: a failing DEL would
/// stop the runtime's chain DEL and leak the address.
#[test]
fn an_empty_record_is_discarded_by_del_and_gc() {
    if !require_netns_env() || !require(&["bpftool"]) {
        return;
    }
    for verb in ["DEL", "GC"] {
        let k = Kmesh::new("wke");
        let conf = k.conf("1.1.0");
        k.run_json(&k.env("ADD"), &conf).assert_success("ADD");
        assert_eq!(k.iso.attached().len(), 1, "{verb}: attached after ADD");
        let record = k.iso.record_path(&k.container_id, "eth0");
        std::fs::write(&record, b"").unwrap();
        let out = match verb {
            "DEL" => k.run_json(&k.env("DEL"), &conf),
            _ => {
                let mut gc = k.base_conf("1.1.0");
                gc["cni.dev/valid-attachments"] = json!([]);
                k.run_json(&k.env_global("GC"), &gc)
            }
        };
        out.assert_success(&format!("{verb} of an empty record"));
        assert!(!record.exists(), "{verb}: the empty record is still there");
        if verb == "DEL" {
            // GC cannot name the veth without the record; DEL finds it through the pod.
            assert_eq!(
                k.iso.attached(),
                Vec::<String>::new(),
                "{verb}: left attached"
            );
        }
        k.run_json(&k.env("DEL"), &conf)
            .assert_success(&format!("DEL after {verb}"));
    }
}

#[test]
fn stdin_past_the_cap_fails_fast_with_code_7() {
    let cni_path = CniPath::new();
    // 100 MB on disk, never in this process (a forked child would count our pages as its own).
    let tmp = TempDir::new().unwrap();
    let huge = tmp.path().join("huge.json");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&huge).unwrap());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
    }
    for plugin in ["weft-ipam", "kmesh-cni", "weft-sriov"] {
        let bin = cni_path.plugin(plugin);
        let mut cmd = integration::proc::command("sh");
        cmd.args(["-c", "exec \"$0\" < \"$1\""])
            .arg(&bin)
            .arg(&huge);
        PluginEnv::verb(
            "ADD",
            "c1",
            "/proc/self/ns/net",
            "eth0",
            cni_path.path_str(),
        )
        .apply(&mut cmd);
        let (out, usage) = integration::proc::run(&mut cmd, b"").unwrap();
        assert_cni_error(&out, 7, &format!("{plugin} with 100 MB on stdin"));
        assert!(
            out.stdout.contains("larger than 4 MiB"),
            "{}",
            out.describe()
        );
        // It read 4 MiB and stopped: nowhere near the 1.6 GiB a full parse took.
        assert!(
            usage.max_rss_kib < 64 * 1024,
            "{plugin} peak RSS {} KiB",
            usage.max_rss_kib
        );
    }
}

#[test]
fn pin_roots_that_leave_bpffs_are_refused_before_anything_is_created() {
    if !require_netns_env() {
        return;
    }
    let k = Kmesh::new("wkp");
    let cwd = TempDir::new().unwrap();
    let outside = TempDir::new().unwrap();
    let escape = "/sys/fs/bpf/../../tmp/weft-escape-test".to_string();
    for root in [
        "".to_string(),
        "relative/weft".to_string(),
        escape.clone(),
        outside.path().join("weft").display().to_string(),
    ] {
        let mut conf = k.conf("1.1.0");
        conf["pinRoot"] = json!(root);
        let mut cmd = std::process::Command::new(&k.bin);
        k.env("ADD").apply(&mut cmd);
        cmd.current_dir(cwd.path());
        let out = integration::proc::run(&mut cmd, &serde_json::to_vec(&conf).unwrap())
            .unwrap()
            .0;
        assert_cni_error(&out, 7, &format!("pinRoot {root:?}"));
        assert_eq!(
            std::fs::read_dir(cwd.path()).unwrap().count(),
            0,
            "{root:?}: created in cwd"
        );
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "{root:?}"
        );
        // DEL with such a config still finishes (nothing recorded).
        k.run_json(&k.env("DEL"), &conf)
            .assert_success(&format!("DEL with pinRoot {root:?}"));
    }
    assert!(!Path::new("/tmp/weft-escape-test").exists());
}

#[test]
fn ranges_that_hand_out_unusable_addresses_are_refused() {
    let cni_path = CniPath::new();
    let store = TempDir::new().unwrap();
    for range in [
        "0.0.0.0/32",
        "255.255.255.255/32",
        "::/128",
        "10.0.0.0/0",
        "224.0.0.0/24",
    ] {
        let conf = ipam_conf(store.path(), json!({"range": range}));
        let out = weft_ipam(&cni_path, "ADD", "c1", &conf);
        assert_cni_error(&out, 7, &format!("range {range}"));
        assert!(
            out.stdout.contains("allow_special_ranges"),
            "{}",
            out.describe()
        );
    }
    // The documented key lets a lab have one anyway.
    let conf = ipam_conf(
        store.path(),
        json!({"range": "224.0.0.0/24", "allow_special_ranges": true}),
    );
    weft_ipam(&cni_path, "ADD", "c1", &conf).assert_success("allow_special_ranges");
}

#[test]
fn etcd_configs_that_can_never_work_are_7_and_del_needs_nothing_of_add() {
    let cni_path = CniPath::new();
    let dir = TempDir::new().unwrap();
    let etcd = |store: Value| {
        let mut s = store;
        s["type"] = json!("etcd");
        s["dir"] = json!(dir.path());
        s["timeout_ms"] = json!(500);
        json!({"cniVersion": "1.1.0", "name": "hard-etcd", "type": "bridge",
               "ipam": {"type": "weft-ipam", "range": "10.237.3.0/24", "store": s}})
    };
    for endpoints in [json!(["not a url"]), json!([""])] {
        let out = weft_ipam(
            &cni_path,
            "ADD",
            "c1",
            &etcd(json!({"endpoints": endpoints})),
        );
        assert_cni_error(&out, 7, &format!("endpoints {endpoints}"));
    }
    let ca = dir.path().join("garbage-ca.pem");
    std::fs::write(&ca, b"this is not a certificate").unwrap();
    let conf = etcd(json!({"endpoints": ["http://127.0.0.1:1"], "tls": {"ca": ca}}));
    let out = weft_ipam(&cni_path, "ADD", "c1", &conf);
    assert_cni_error(&out, 7, "a CA file that is not PEM");
    // DEL is local: credentials files that are gone do not matter to it.
    let conf = etcd(json!({"endpoints": ["http://127.0.0.1:1"],
                           "username_file": "/nonexistent/user", "password_file": "/nonexistent/pw"}));
    weft_ipam(&cni_path, "DEL", "c1", &conf).assert_success("DEL without the credential files");
}

#[test]
fn kmesh_cni_status_fails_when_adds_would_and_a_failed_add_leaves_nothing() {
    if !require_netns_env() || !require(&["bpftool"]) {
        return;
    }
    let k = Kmesh::new("wks");
    let fs = Tmpfs::new(256 * 1024).unwrap();
    let state = fs.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let env = |verb: &str| k.env(verb).set("WEFT_STATE_DIR", state.to_str().unwrap());
    let status = |what: &str, code: Option<u64>| {
        let out = k.run_json(
            &k.env_global("STATUS")
                .set("WEFT_STATE_DIR", state.to_str().unwrap()),
            &k.base_conf("1.1.0"),
        );
        match code {
            None => {
                out.assert_success(what);
            }
            Some(c) => assert_cni_error(&out, c, what),
        }
    };
    status("STATUS on a healthy state dir", None);
    fs.fill().unwrap();
    status("STATUS on a full state dir", Some(50));
    let out = k.run_json(&env("ADD"), &k.conf("1.1.0"));
    assert!(!out.success(), "ADD on a full disk succeeded");
    fs.unfill();
    fs.read_only(true).unwrap();
    status("STATUS on a read-only state dir", Some(50));
    fs.read_only(false).unwrap();
    status("STATUS once the dir is writable again", None);

    // The last record write of an ADD fails (a full disk at that moment): nothing stays.
    let out = k.run_json(
        &env("ADD").set("WEFT_KMESH_TEST_FAIL_FINAL_WRITE", "1"),
        &k.conf("1.1.0"),
    );
    assert_cni_error(&out, 5, "ADD whose last record write fails");
    assert!(k.iso.attached().is_empty(), "program left attached");
    assert!(k.iso.endpoints().is_empty(), "endpoint left");
    assert!(k.iso.devices().is_empty(), "device entry left");
    let records = std::fs::read_dir(state.join("kmesh-cni/weft-test"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(records, 0, "record left");
    k.run_json(&env("DEL"), &k.conf("1.1.0"))
        .assert_success("DEL after the failed ADD");
}

#[test]
fn weft_ipam_del_and_gc_finish_on_a_full_disk() {
    if !require_root() {
        return;
    }
    let cni_path = CniPath::new();
    let fs = Tmpfs::new(512 * 1024).unwrap();
    let store = fs.path().join("store");
    let conf = ipam_conf(&store, json!({"range": "10.237.4.0/24"}));
    for c in ["c1", "c2", "c3"] {
        weft_ipam(&cni_path, "ADD", c, &conf).assert_success("ADD");
    }
    fs.fill().unwrap();
    let out = weft_ipam(&cni_path, "ADD", "c4", &conf);
    assert!(!out.success(), "ADD on a full disk succeeded");
    weft_ipam(&cni_path, "DEL", "c1", &conf).assert_success("DEL on a full disk");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c3", "ifname": "eth0"}]);
    weft_ipam(&cni_path, "GC", "", &gc).assert_success("GC on a full disk");
    let pool = std::fs::read_to_string(store.join("hard/pool")).unwrap();
    let held: Vec<&str> = pool.lines().filter(|l| l.starts_with("10.")).collect();
    assert_eq!(held, ["10.237.4.4 hard c3 eth0"], "{pool}");
    // With room again, ADD works and the spare comes back for the next full disk.
    fs.unfill();
    weft_ipam(&cni_path, "ADD", "c5", &conf).assert_success("ADD after the disk was freed");
    assert!(store.join("hard/spare").exists());
}
