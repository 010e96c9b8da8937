//! The one list of prerequisites (`prerequisites.list`) against the code that needs them.
//!
//! A test that needs a Debian package the list does not install passes on a machine where
//! somebody installed it by hand and fails on a fresh one (issue 7: etcdctl). These tests find
//! such a need in the source, without running it:
//! - every program or path the workspace's code asks the test kit for (`require(&[...])`,
//!   `program(..)`, `lookup(..)`, `command(..)`, `cmd(..)`, `must(..)`, `exec(&[..])`) is listed;
//! - what the build compiles with (clang, the libbpf headers the BPF sources include, protoc for
//!   the etcd client) is listed in stage `build`, which install.sh installs;
//! - every listed path belongs to the package named beside it (asked of dpkg);
//! - both scripts install from the list and nothing else installs packages.

use std::path::{Path, PathBuf};

use integration::plugins::workspace_root;
use integration::prereq::{self, find, listed, Prerequisite};

/// Source trees of the workspace (everything but target/ and VCS metadata).
fn sources(ext: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if path.is_dir() {
                walk(&path, ext, out);
            } else if name.ends_with(ext) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&workspace_root(), ext, &mut out);
    assert!(!out.is_empty(), "no *{ext} files under the workspace root");
    out
}

/// The string literals passed to the kit's prerequisite and process helpers in `text`.
fn needs_named_in(text: &str) -> Vec<String> {
    // Calls whose first argument is a program or path: `name("ip"` ...
    const SINGLE: &[&str] = &[
        "program(\"",
        "lookup(\"",
        "command(\"",
        "cmd(\"",
        "must(\"",
        "Command::new(\"",
    ];
    // ... and calls that take a list whose literals are all needs, or an argv.
    const LISTS: &[&str] = &["require(&["];
    const ARGV: &[&str] = &["exec(&[", ".command(&["];
    let mut out = Vec::new();
    for pat in SINGLE.iter().chain(ARGV) {
        for (i, _) in text.match_indices(pat) {
            let rest = &text[i + pat.len()..];
            let rest = rest.trim_start();
            let rest = if ARGV.contains(pat) {
                match rest.strip_prefix('"') {
                    Some(r) => r,
                    None => continue,
                }
            } else {
                rest
            };
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_owned());
            }
        }
    }
    // `netns_exec(ns, &["ping", ...])`: an argv after other arguments, on the same line.
    for (i, _) in text.match_indices("exec(") {
        let line = text[i..].lines().next().unwrap_or("");
        if let Some(j) = line.find(", &[\"") {
            let rest = &line[j + 5..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_owned());
            }
        }
    }
    for pat in LISTS {
        for (i, _) in text.match_indices(pat) {
            let rest = &text[i + pat.len()..];
            let Some(end) = rest.find(']') else { continue };
            out.extend(rest[..end].split('"').skip(1).step_by(2).map(str::to_owned));
        }
    }
    // A program is a bare word or an absolute path; anything else is a plugin under test, a
    // format string or an argument, not a prerequisite.
    out.retain(|s| {
        !s.is_empty()
            && !s.contains(['{', ' ', '$'])
            && (s.starts_with('/') || !s.contains('/'))
            && !s.starts_with('-')
            // CNI verbs go to helpers named like these (`cmd("ADD")`), programs are lowercase.
            && s.chars().any(|c| c.is_ascii_lowercase())
    });
    out
}

#[test]
fn finds_needs_in_helper_calls() {
    let text = r#"
        require(&["etcd", "/usr/bin/etcdctl"]);
        let c = command("ip");
        cmd("bpftool", &["map"]);
        ns.exec(&["ping", "-c", "1"]);
        ns.command(&["perl", "-e", script]);
        netns_exec(from, &["timeout", "10"]);
        Command::new(&self.bin);
        cmd("{x}", &[]);
    "#;
    let mut found = needs_named_in(text);
    found.sort();
    assert_eq!(
        found,
        [
            "/usr/bin/etcdctl",
            "bpftool",
            "etcd",
            "ip",
            "perl",
            "ping",
            "timeout"
        ]
    );
}

#[test]
fn every_need_named_in_the_code_is_in_the_list() {
    let this_file = Path::new(file!()).file_name().unwrap();
    let mut unlisted = Vec::new();
    let mut seen = 0;
    for file in sources(".rs") {
        if file.file_name() == Some(this_file) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for need in needs_named_in(&text) {
            seen += 1;
            // A plugin under test is found in CNI_PATH or the build dir, not from Debian.
            if need.starts_with("weft") || need == "kmesh-cni" {
                continue;
            }
            if find(&need).is_none() {
                unlisted.push(format!("{need} (needed by {})", file.display()));
            }
        }
    }
    assert!(
        seen > 20,
        "only {seen} needs found: has the helpers' naming changed?"
    );
    assert!(
        unlisted.is_empty(),
        "the code needs what {} does not install; add `test <path> <package>` lines:\n  {}",
        prereq::LIST_NAME,
        unlisted.join("\n  ")
    );
}

/// The entry for `path`, required to be in stage `build` (install.sh installs nothing else).
fn build_entry(path: &str, why: &str) -> Result<(), String> {
    match find(path) {
        Some(p) if p.stage == "build" => Ok(()),
        Some(p) => Err(format!(
            "{path} is listed in stage {}, but {why} needs it in stage build",
            p.stage
        )),
        None => Err(format!(
            "{path} is not listed, but {why} needs it (stage build)"
        )),
    }
}

#[test]
fn the_build_stage_covers_what_the_build_runs() {
    let root = workspace_root();
    let mut problems = Vec::new();
    // bpf/build.rs compiles the BPF objects with clang.
    let build_rs = std::fs::read_to_string(root.join("bpf/build.rs")).unwrap();
    assert!(
        build_rs.contains("\"clang\""),
        "bpf/build.rs no longer names clang"
    );
    problems.extend(build_entry("/usr/bin/clang", "bpf/build.rs").err());
    // System headers the BPF sources include.
    for file in sources(".bpf.c") {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let Some(header) = line
                .trim()
                .strip_prefix("#include <")
                .and_then(|r| r.strip_suffix('>'))
            else {
                continue;
            };
            // libc's and the compiler's own headers come with the toolchain; the others do not.
            if header.starts_with("bpf/") || header == "linux/bpf.h" {
                problems.extend(
                    build_entry(
                        &format!("/usr/include/{header}"),
                        &file.display().to_string(),
                    )
                    .err(),
                );
            }
        }
    }
    // etcd-client generates its gRPC code with prost-build, which runs protoc on etcd's protos;
    // they import google/protobuf/*.proto, which protoc finds in libprotobuf-dev (a Recommends
    // of protobuf-compiler, so not installed with --no-install-recommends).
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    if lock.contains("name = \"prost-build\"") {
        for path in [
            "/usr/bin/protoc",
            "/usr/include/google/protobuf/descriptor.proto",
        ] {
            problems.extend(build_entry(path, "prost-build (etcd-client)").err());
        }
    }
    // install.sh's smoke test runs ip and chains after the reference bridge.
    problems.extend(build_entry("/usr/bin/ip", "install.sh").err());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `/usr/bin/x` and `/bin/x` are one file on Debian 12 (merged /usr); dpkg knows one of them.
fn aliases(path: &str) -> Vec<String> {
    let mut out = vec![path.to_owned()];
    for (merged, legacy) in [("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")] {
        if let Some(rest) = path.strip_prefix(merged) {
            out.push(format!("{legacy}{rest}"));
        }
    }
    out
}

/// Files dpkg says `package` installed, or None when the package is not installed.
fn package_files(package: &str) -> Option<Vec<String>> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-L", package])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    })
}

/// Does `package` install `p.path`? A path made by update-alternatives (iptables-restore) is
/// not in the package's file list; the file it resolves to is.
fn provides(files: &[String], p: &Prerequisite) -> bool {
    let mut candidates = aliases(p.path);
    if let Ok(real) = std::fs::canonicalize(p.path) {
        candidates.extend(aliases(&real.to_string_lossy()));
    }
    candidates.iter().any(|a| files.iter().any(|f| f == a))
}

#[test]
fn each_listed_package_provides_its_path() {
    if !Path::new("/var/lib/dpkg/status").exists() {
        prereq::missing("dpkg (this list is for Debian)");
        return;
    }
    let mut wrong = Vec::new();
    let mut not_installed = Vec::new();
    for p in listed() {
        match package_files(p.package) {
            None => not_installed.push(p.package),
            Some(files) if !provides(&files, p) => {
                wrong.push(format!("{} does not install {}", p.package, p.path))
            }
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{} names the wrong package:\n  {}",
        prereq::LIST_NAME,
        wrong.join("\n  ")
    );
    if !not_installed.is_empty() {
        not_installed.sort();
        not_installed.dedup();
        prereq::missing(&format!(
            "packages not installed, so their paths cannot be checked: {}",
            not_installed.join(" ")
        ));
    }
}

#[test]
fn both_scripts_install_from_the_list_and_nothing_else_installs_packages() {
    let root = workspace_root();
    let install = std::fs::read_to_string(root.join("install.sh")).unwrap();
    assert!(
        install.contains("./prerequisites.sh install build\n"),
        "install.sh must install stage build from prerequisites.list"
    );
    let tests = std::fs::read_to_string(root.join("integration/run-tests.sh")).unwrap();
    assert!(
        tests.contains("./prerequisites.sh install build test\n"),
        "run-tests.sh must install stages build and test from prerequisites.list"
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.contains("exec bash integration/run-tests.sh"),
        ".ci/run must run exactly the README's test command"
    );
    for script in sources(".sh") {
        if script.ends_with("prerequisites.sh") {
            continue;
        }
        let text = std::fs::read_to_string(&script).unwrap();
        let installs = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains("apt-get install") || l.contains("apt install"));
        assert!(
            !installs,
            "{} installs packages itself: list them in {} instead",
            script.display(),
            prereq::LIST_NAME
        );
    }
}
