//! `host`: what weft's plugins share for touching the host.
//!
//! - [`netns`]: run code inside a network namespace on a dedicated thread; netns cookies.
//! - [`link`]: links and addresses over rtnetlink (the only netlink code in weft's libraries),
//!   including the host-side peer of a pod's veth.
//! - [`lock`]: lock files (blocking, or with a timeout) for state shared between execs.
//! - [`record`]: attachment records under `/var/lib/cni/<plugin>/` with validated keys, atomic
//!   writes and a store lock.
//! - [`error`]: [`HostError`] and its single mapping to CNI error codes.

pub mod announce;
pub mod error;
pub mod fsio;
pub mod link;
pub mod lock;
pub mod logging;
pub mod netdev;
pub mod netns;
pub mod record;
pub mod sriov;
pub mod sysfs;

pub use error::HostError;
pub use link::{addresses, find_veth_pair, link_by_index, link_by_name, links, LinkInfo, VethPair};
pub use netns::{netns_cookie, netns_exists, run_in_netns};
pub use record::{RecordStore, StoreLock};
/// The rtnetlink version [`link::netlink`] hands out handles of.
pub use rtnetlink;
pub use sriov::{PfError, PfOps};
pub use sysfs::{PciAddress, Sysfs, SysfsError};
