//! Compiles the BPF C sources with clang into OUT_DIR (embedded by src/objects.rs) and
//! generates the C-side layout table of include/weft.h (checked by src/layout.rs tests).
//!
//! clang is required: the build fails with a clear message if it is missing. Set `CLANG`
//! to use a specific binary.

use std::{env, path::PathBuf, process::Command};

const BPF_SOURCES: &[&str] = &["redirect", "probe"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let include = manifest.join("include");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());

    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=include/weft.h");
    println!("cargo:rerun-if-changed=src/layout_gen.c");
    for src in BPF_SOURCES {
        println!("cargo:rerun-if-changed=src/{src}.bpf.c");
    }

    check_clang(&clang);

    // <asm/types.h> (pulled in by <linux/types.h>) lives in the multiarch include dir,
    // which clang does not search when targeting bpf.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let multiarch = format!("/usr/include/{arch}-linux-gnu");

    let mut hashes = String::new();
    for src in BPF_SOURCES {
        let obj = out.join(format!("{src}.bpf.o"));
        run(Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg("-I")
            .arg(&include)
            .arg("-idirafter")
            .arg(&multiarch)
            .arg("-c")
            .arg(manifest.join(format!("src/{src}.bpf.c")))
            .arg("-o")
            .arg(&obj));
        let bytes = std::fs::read(&obj).expect("read compiled BPF object");
        hashes.push_str(&format!(
            "pub const {}_OBJ_HASH: &str = \"{:016x}\";\n",
            src.to_uppercase(),
            fnv1a(&bytes)
        ));
    }
    std::fs::write(out.join("obj_hashes.rs"), hashes).expect("write obj_hashes.rs");

    // Layout table: compile the generator for the host and run it. (Cross builds would
    // need the target's layout; BPF and every 64-bit Linux ABI agree for these
    // fixed-width, explicitly padded structs.)
    let gen = out.join("layout_gen");
    run(Command::new(&clang)
        .args(["-O0", "-Wall", "-Werror"])
        .arg("-I")
        .arg(&include)
        .arg(manifest.join("src/layout_gen.c"))
        .arg("-o")
        .arg(&gen));
    let output = Command::new(&gen).output().expect("run layout_gen");
    assert!(output.status.success(), "layout_gen failed: {output:?}");
    std::fs::write(out.join("weft_layout.rs"), output.stdout).expect("write weft_layout.rs");
}

fn check_clang(clang: &str) {
    match Command::new(clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`{clang} --version` failed ({}): the bpf crate needs clang to compile its BPF programs \
             (Debian: apt-get install clang llvm libbpf-dev)",
            o.status
        ),
        Err(e) => panic!(
            "cannot run `{clang}` ({e}): the bpf crate needs clang to compile its BPF programs \
             (Debian: apt-get install clang llvm libbpf-dev), or set CLANG=/path/to/clang"
        ),
    }
}

fn run(cmd: &mut Command) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !output.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Identifies the program build in pin names, so a new build never reuses an old
/// build's pinned program.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
