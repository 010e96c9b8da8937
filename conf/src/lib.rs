//! The CNI contract, spec versions 0.3.0 – 1.1.0, and nothing else: no netlink, no BPF.
//!
//! Every weft binary's `main()` hands a [`dispatch::Plugin`] to [`dispatch::run`]; the
//! dispatcher owns env parsing, version negotiation, result encoding and error printing.

pub mod attachment;
pub mod delegate;
pub mod dispatch;
pub mod env;
pub mod error;
pub mod netconf;
pub mod result;
pub mod version;

pub use attachment::AttachmentKey;
pub use dispatch::{Plugin, Request, Verbs};
pub use env::{Command, Env};
pub use error::{code, Error, Result};
pub use netconf::{Attachment, NetConf, NetConfList};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;
