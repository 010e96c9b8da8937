//! Every conflist we ship in conf/net.d parses, and every plugin config a runtime would build
//! from it parses as a single-plugin config.

use conf::{NetConf, NetConfList, Version};
use std::path::Path;

#[test]
fn every_shipped_conflist_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("net.d");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "conflist") {
            continue;
        }
        seen += 1;
        let list = NetConfList::parse(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Runtimes that read cniVersions pick the newest; older libcni reads cniVersion: both
        // must name the same version. (That every plugin of the list speaks every declared
        // version is asked of the plugin binaries in cli/tests/shipped_versions.rs.)
        let declared: Option<Version> = list.cni_versions.iter().max().copied();
        assert_eq!(Some(list.cni_version), declared, "{}", path.display());
        for i in 0..list.plugins.len() {
            let conf = serde_json::Value::Object(list.plugin_conf(i).unwrap());
            let parsed = NetConf::parse(conf.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{} plugin {i}: {e}", path.display()));
            assert_eq!(parsed.name, list.name);
        }
    }
    assert!(
        seen >= 2,
        "expected the shipped conflists in {}",
        dir.display()
    );
}
