//! Every conflist weft ships declares only CNI versions that every plugin in it answers to
//! (asked of the real binaries: Debian's reference plugins speak up to 1.0.0, so a list
//! declaring 1.1.0 makes libcni >= 1.2 fail every ADD with "incompatible CNI versions").

use integration::plugins::{bin_dir, workspace_root};
use integration::prereq::require;
use std::path::PathBuf;

#[test]
fn shipped_conflists_declare_only_versions_every_plugin_speaks() {
    if !require(&["/usr/lib/cni/bridge", "/usr/lib/cni/ptp"]) {
        return;
    }
    let dirs = vec![bin_dir(), PathBuf::from("/usr/lib/cni")];
    let mut seen = 0;
    for e in std::fs::read_dir(workspace_root().join("conf/net.d"))
        .unwrap()
        .flatten()
    {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "conflist") {
            continue;
        }
        seen += 1;
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let plugins = v["plugins"].as_array().unwrap().clone();
        let answers = weft::versions::ask_all(&weft::versions::types_of(&plugins), &dirs);
        let common =
            weft::versions::common(&answers).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (what, version) in weft::versions::effective(&v) {
            let version = version.unwrap_or_else(|| panic!("{}: {what}", path.display()));
            assert!(
                common.contains(&version),
                "{} declares {what}, not spoken by every plugin (common: {common:?})",
                path.display()
            );
        }
        for d in v["cniVersions"].as_array().into_iter().flatten() {
            let d = conf::Version::parse(d.as_str().unwrap()).unwrap();
            assert!(
                common.contains(&d),
                "{}: cniVersions lists {d}",
                path.display()
            );
        }
    }
    assert!(seen >= 2);
}
