//! weft-ipam: a whereabouts-style IPAM delegate for any main plugin
//! (`"ipam": {"type": "weft-ipam", ...}`).
//!
//! - [`config`]: the `ipam` section (whereabouts field names), validated once.
//! - [`range`]: one address range and the allocator (lowest free address, u128 arithmetic).
//! - [`store`]: reservations: the embedded file store (default) and the etcd cluster store.
//! - [`plugin`]: the CNI verbs, handed to `conf::dispatch::run` by `main.rs`.

pub mod config;
pub mod error;
pub mod plugin;
pub mod range;
pub mod store;

pub use plugin::IpamPlugin;
