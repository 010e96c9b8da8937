//! Small constructors the store unit tests share.

use super::Owner;
use crate::range::{Range, RangeSpec};
use std::net::IpAddr;

/// A range from its `range` string (`node_slice_size` given or default).
pub fn range_sliced(s: &str, slice: Option<u8>) -> Range {
    Range::new(&RangeSpec {
        range: s.into(),
        slice,
        ..Default::default()
    })
    .unwrap()
}

pub fn range(s: &str) -> Range {
    range_sliced(s, None)
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The owner `net1/<c>/eth0`.
pub fn owner(c: &str) -> Owner {
    Owner::new("net1", c, "eth0").unwrap()
}
