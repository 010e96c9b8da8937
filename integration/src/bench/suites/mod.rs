//! The benchmark suites: each describes a workload (what A and B run, which figures a run
//! yields, what must be true for a run to count) and hands it to the engine in `bench`.

pub mod chain;
pub mod exec;
pub mod fastpath;
pub mod ipam;
pub mod sriov;
