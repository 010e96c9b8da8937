//! Integration harness for weft: real network namespaces, the real CNI client (a cnitool built
//! from Debian's libcni), the Debian reference plugins as chain partners, and the benchmark runner.
//!
//! Everything a test creates is owned by a guard whose `Drop` undoes it, so a failing assertion
//! (a panic) still removes its netns, links and temp dirs.

pub mod bench;
pub mod cni;
pub mod etcd;
pub mod fixtures;
pub mod plugins;
pub mod prereq;
pub mod previous;
pub mod proc;
pub mod sriov;

pub use prereq::require_root;
