//! The CNI contract, spec versions 0.3.0 – 1.1.0, and nothing else: no netlink, no BPF.
//!
//! Every weft binary's `main()` hands a [`Plugin`] to [`dispatch::run`]; the dispatcher owns
//! env parsing, version negotiation, result encoding and error printing.

pub mod error;

pub use error::{code, Error, Result};
