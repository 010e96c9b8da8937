//! The runner's peak-RSS figure belongs to the exec'd program. Its own test binary on purpose:
//! the forked child starts with the harness's anonymous pages (see `proc::run`), so other tests
//! running in the same process would raise the floor of `true`'s figure at random.

use std::process::Command;

use integration::proc::run;

#[test]
fn peak_rss_is_the_child_not_the_harness() {
    // dd touches its whole 64 MiB buffer; true touches almost nothing. The figure must be the
    // exec'd program's, not a constant floor, and not carried over from the previous child.
    let (_, big) = run(
        Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]),
        b"",
    )
    .unwrap();
    let (_, small) = run(&mut Command::new("true"), b"").unwrap();
    assert!(
        big.max_rss_kib >= 64 * 1024,
        "dd peak {} KiB",
        big.max_rss_kib
    );
    assert!(
        small.max_rss_kib < 16 * 1024,
        "true peak {} KiB",
        small.max_rss_kib
    );
}
