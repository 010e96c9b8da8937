//! One validated address range and the allocator over it.
//!
//! Addresses are handled as `u128` offsets in their family (IPv4 in the low 32 bits), so an IPv6
//! range is usable over its whole extent (whereabouts stops at the first /65 of a /64).
//!
//! The allocator is a pure function: given the sorted addresses already held in the range, it
//! returns the lowest address that is neither held nor reserved (network, IPv4 broadcast,
//! gateway, `exclude`). It walks the held addresses and the reserved intervals in one merge, so
//! it touches only the leading run of occupied addresses and never materialises the range. Both
//! stores call it: the file store with its in-memory map, the etcd store with a key snapshot.

use crate::error::{IpamError, Result};
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// The address as an integer in its family.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Inverse of [`to_u128`]; `n` must fit the family (callers only pass values inside a range).
pub fn from_u128(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// A validated range: the subnet results are reported in, the allocatable span `[start, end]`,
/// and the sorted, merged, clipped intervals inside that span that are never handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
    reserved: Vec<(u128, u128)>,
    /// Prefix length of the per-node blocks the etcd store hands out (`node_slice_size`).
    pub slice: u8,
}

/// Default per-node block: 64 addresses in either family (/26, /122), or the whole subnet
/// when it is smaller than that.
pub const DEFAULT_SLICE_V4: u8 = 26;
pub const DEFAULT_SLICE_V6: u8 = 122;

/// One per-node block of the etcd store: the aligned CIDR `start/prefix` (see `store::etcd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub start: IpAddr,
    pub prefix: u8,
}

impl Block {
    /// First and last address as integers.
    pub fn span(&self) -> (u128, u128) {
        span(&IpNetwork::new(self.start, self.prefix).expect("block prefix is valid"))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (lo, hi) = self.span();
        Family::of(ip) == Family::of(self.start) && (lo..=hi).contains(&to_u128(ip))
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.start, self.prefix)
    }
}

impl std::str::FromStr for Block {
    type Err = String;
    /// `a.b.c.d/nn`, which must be the aligned network address of its prefix.
    fn from_str(s: &str) -> std::result::Result<Block, String> {
        let net: IpNetwork = s.parse().map_err(|e| format!("bad block {s:?}: {e}"))?;
        if net.network() != net.ip() {
            return Err(format!("block {s:?} is not aligned to its prefix"));
        }
        Ok(Block {
            start: net.ip(),
            prefix: net.prefix(),
        })
    }
}

/// What a config gives for one range, before validation.
#[derive(Debug, Clone, Default)]
pub struct RangeSpec {
    pub range: String,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub exclude: Vec<String>,
    pub gateway: Option<IpAddr>,
    /// `node_slice_size` as a prefix length; `None` = the default for the family.
    pub slice: Option<u8>,
    /// `allow_special_ranges`: hand out addresses no pod should get (see [`Subnet::special`]).
    pub allow_special: bool,
}

fn bad(msg: String) -> IpamError {
    IpamError::Config(msg)
}

/// Parses `a.b.c.d/nn`, `start-end/nn`, or a bare address (as a host route) into
/// (subnet, address as written, optional end address from the dash form).
fn parse_range_text(text: &str) -> Result<(IpNetwork, IpAddr, Option<IpAddr>)> {
    let text = text.trim();
    let (addrs, prefix) = text.rsplit_once('/').ok_or_else(|| {
        bad(format!(
            "range {text:?} is not a CIDR (expected a.b.c.d/nn or start-end/nn)"
        ))
    })?;
    let (first, last) = match addrs.split_once('-') {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (addrs.trim(), None),
    };
    let first: IpAddr = first
        .parse()
        .map_err(|_| bad(format!("range {text:?}: {first:?} is not an IP address")))?;
    let prefix: u8 = prefix
        .trim()
        .parse()
        .map_err(|_| bad(format!("range {text:?}: prefix {prefix:?} is not a number")))?;
    let subnet = IpNetwork::new(first, prefix)
        .map_err(|e| bad(format!("range {text:?} is not a valid CIDR: {e}")))?;
    let subnet = IpNetwork::new(subnet.network(), prefix).expect("masked network is valid");
    let last = match last {
        Some(l) => Some(
            l.parse::<IpAddr>()
                .map_err(|_| bad(format!("range {text:?}: {l:?} is not an IP address")))?,
        ),
        None => None,
    };
    Ok((subnet, first, last))
}

/// Parses one `exclude` entry: a CIDR or a single address.
fn parse_exclude(text: &str) -> Result<(u128, u128, Family)> {
    let net: IpNetwork = if text.contains('/') {
        text.trim()
            .parse()
            .map_err(|e| bad(format!("exclude {text:?} is not a valid CIDR: {e}")))?
    } else {
        let ip: IpAddr = text
            .trim()
            .parse()
            .map_err(|_| bad(format!("exclude {text:?} is not an IP address or CIDR")))?;
        IpNetwork::from(ip)
    };
    let (lo, hi) = span(&net);
    Ok((lo, hi, Family::of(net.ip())))
}

/// First and last address of a subnet as integers (u128 arithmetic, no overflow at /0).
fn span(net: &IpNetwork) -> (u128, u128) {
    let family = Family::of(net.ip());
    let host_bits = u32::from(family.bits() - net.prefix());
    let base = to_u128(net.network());
    let size_minus_one = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (base, base + size_minus_one)
}

/// The parsed subnet of a spec and what the checks below need of it.
struct Subnet<'a> {
    name: &'a str,
    net: IpNetwork,
    family: Family,
    lo: u128,
    hi: u128,
}

impl Subnet<'_> {
    fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.lo..=self.hi).contains(&to_u128(ip))
    }

    fn host_bits(&self) -> u8 {
        self.family.bits() - self.net.prefix()
    }

    /// Network address (and the IPv4 broadcast) are never handed out, except in /31, /32, /127
    /// and /128 where every address is a host address (RFC 3021).
    fn unusable(&self) -> Vec<(u128, u128)> {
        let mut out = Vec::new();
        if self.host_bits() >= 2 {
            out.push((self.lo, self.lo));
            if self.family == Family::V4 {
                out.push((self.hi, self.hi));
            }
        }
        out
    }

    /// `[start, end]`: explicit range_start/range_end, else the dash form's ends or the host
    /// address written in the CIDR (whereabouts: "10.0.0.10/24" starts at .10), else the subnet.
    fn bounds(
        &self,
        spec: &RangeSpec,
        written: IpAddr,
        dash_end: Option<IpAddr>,
    ) -> Result<(IpAddr, IpAddr)> {
        let start = match (spec.range_start, dash_end, to_u128(written) != self.lo) {
            (Some(s), _, _) => s,
            (None, Some(_), _) | (None, None, true) => written,
            (None, None, false) => self.net.network(),
        };
        let end = spec
            .range_end
            .or(dash_end)
            .unwrap_or_else(|| from_u128(self.family, self.hi));
        for (what, ip) in [("range_start", start), ("range_end", end)] {
            if !self.contains(ip) {
                return Err(bad(format!(
                    "{what} {ip} is outside range {} ({})",
                    self.name, self.net
                )));
            }
        }
        if to_u128(start) > to_u128(end) {
            return Err(bad(format!(
                "range {}: range_start {start} is after range_end {end}",
                self.name
            )));
        }
        Ok((start, end))
    }

    /// Given explicitly, or by default the first host address like host-local and what the
    /// bridge plugin assumes when isGateway is set without one (whereabouts #601).
    fn gateway(&self, given: Option<IpAddr>) -> Result<Option<IpAddr>> {
        match given {
            Some(gw) if !self.contains(gw) => Err(bad(format!(
                "gateway {gw} is outside range {} ({})",
                self.name, self.net
            ))),
            Some(gw) => Ok(Some(gw)),
            None if self.host_bits() >= 2 => Ok(Some(from_u128(self.family, self.lo + 1))),
            None => Ok(None),
        }
    }

    fn excludes(&self, texts: &[String]) -> Result<Vec<(u128, u128)>> {
        texts
            .iter()
            .map(|text| {
                let (xlo, xhi, xfam) = parse_exclude(text)?;
                if xfam != self.family {
                    return Err(bad(format!(
                        "exclude {text} is not in the address family of range {}",
                        self.name
                    )));
                }
                if xhi < self.lo || xlo > self.hi {
                    return Err(bad(format!(
                        "exclude {text} does not overlap range {} ({})",
                        self.name, self.net
                    )));
                }
                Ok((xlo, xhi))
            })
            .collect()
    }

    /// What in `[start, end]` is no address a pod can use: the whole address space (/0), the
    /// unspecified address, the IPv4 limited broadcast, loopback, multicast. Refused unless the
    /// config says `allow_special_ranges` (labs that really want them).
    fn special(&self, start: IpAddr, end: IpAddr) -> Option<&'static str> {
        let (lo, hi) = (to_u128(start), to_u128(end));
        let overlaps = |net: &str| {
            let (a, b) = span(&net.parse::<IpNetwork>().expect("constant CIDR"));
            a <= hi && lo <= b
        };
        if self.net.prefix() == 0 {
            return Some("/0 (every address)");
        }
        match self.family {
            Family::V4 if overlaps("0.0.0.0/32") => Some("the unspecified address 0.0.0.0"),
            Family::V4 if overlaps("255.255.255.255/32") => Some("the broadcast 255.255.255.255"),
            Family::V4 if overlaps("127.0.0.0/8") => Some("loopback 127.0.0.0/8"),
            Family::V4 if overlaps("224.0.0.0/4") => Some("multicast 224.0.0.0/4"),
            Family::V6 if overlaps("::/128") => Some("the unspecified address ::"),
            Family::V6 if overlaps("::1/128") => Some("loopback ::1"),
            Family::V6 if overlaps("ff00::/8") => Some("multicast ff00::/8"),
            _ => None,
        }
    }

    /// `node_slice_size`, or the default (/26, /122; the whole subnet when it is smaller).
    fn slice(&self, given: Option<u8>) -> Result<u8> {
        let default = match self.family {
            Family::V4 => DEFAULT_SLICE_V4,
            Family::V6 => DEFAULT_SLICE_V6,
        };
        match given {
            Some(n) if n < self.net.prefix() || n > self.family.bits() => Err(bad(format!(
                "node_slice_size /{n} does not fit range {}: it must be between /{} and /{}",
                self.name,
                self.net.prefix(),
                self.family.bits()
            ))),
            Some(n) => Ok(n),
            None => Ok(default.max(self.net.prefix())),
        }
    }
}

impl Range {
    /// Validates a range spec. Every failure is code 7 with the offending value in the message.
    pub fn new(spec: &RangeSpec) -> Result<Range> {
        let (net, written, dash_end) = parse_range_text(&spec.range)?;
        let (lo, hi) = span(&net);
        let subnet = Subnet {
            name: spec.range.trim(),
            family: Family::of(net.ip()),
            net,
            lo,
            hi,
        };
        let (start, end) = subnet.bounds(spec, written, dash_end)?;
        if let Some(what) = subnet.special(start, end).filter(|_| !spec.allow_special) {
            return Err(bad(format!(
                "range {} ({start}-{end}) includes {what}, which no pod can use; set \"allow_special_ranges\": true if that is really meant",
                subnet.name
            )));
        }
        let gateway = subnet.gateway(spec.gateway)?;
        let mut reserved = subnet.unusable();
        reserved.extend(gateway.map(|gw| (to_u128(gw), to_u128(gw))));
        reserved.extend(subnet.excludes(&spec.exclude)?);
        let range = Range {
            subnet: net,
            start,
            end,
            gateway,
            reserved: merge_clip(reserved, to_u128(start), to_u128(end)),
            slice: subnet.slice(spec.slice)?,
        };
        if range.lowest_free(std::iter::empty()).is_none() {
            return Err(bad(format!(
                "range {} ({start}-{end}) has no usable address: network, broadcast, gateway and exclude cover all of it",
                subnet.name
            )));
        }
        Ok(range)
    }

    pub fn family(&self) -> Family {
        Family::of(self.subnet.ip())
    }

    /// Whether `ip` lies in `[start, end]` (reserved or not).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// Whether `ip` is inside the span but never handed out (network, broadcast, gateway, exclude).
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        let n = to_u128(ip);
        let i = self.reserved.partition_point(|&(_, hi)| hi < n);
        self.contains(ip) && self.reserved.get(i).is_some_and(|&(lo, _)| lo <= n)
    }

    /// A stable identifier for store keys: family, start and end in fixed-width hex.
    pub fn id(&self) -> String {
        format!("{}-{}", key_hex(self.start), key_hex(self.end))
    }

    /// The aligned block of this range's slice size that holds `ip`.
    pub fn block_of(&self, ip: IpAddr) -> Block {
        let net = IpNetwork::new(ip, self.slice).expect("slice fits the family");
        Block {
            start: net.network(),
            prefix: self.slice,
        }
    }

    /// This range cut down to `[lo, hi]` (e.g. one block): same subnet, gateway and
    /// reservations. `None` when nothing in the cut can be handed out.
    pub fn restrict(&self, lo: u128, hi: u128) -> Option<Range> {
        let lo = lo.max(to_u128(self.start));
        let hi = hi.min(to_u128(self.end));
        if lo > hi {
            return None;
        }
        let family = self.family();
        let cut = Range {
            start: from_u128(family, lo),
            end: from_u128(family, hi),
            reserved: merge_clip(self.reserved.clone(), lo, hi),
            ..self.clone()
        };
        cut.lowest_free(std::iter::empty()).is_some().then_some(cut)
    }

    /// The blocks of this range that hold at least one usable address and are not in
    /// `taken` (block starts), lowest first, at most `limit` of them. Skips a run of taken or
    /// fully reserved blocks in one step each, so a mostly claimed or excluded IPv6 range costs
    /// O(taken + limit) steps, never O(blocks).
    pub fn free_blocks(
        &self,
        taken: &std::collections::BTreeSet<IpAddr>,
        limit: usize,
    ) -> Vec<Block> {
        let mut out = Vec::new();
        let mut cursor = to_u128(self.start);
        while out.len() < limit {
            let Some(usable) = self
                .restrict(cursor, to_u128(self.end))
                .and_then(|r| r.lowest_free(std::iter::empty()))
            else {
                break;
            };
            let block = self.block_of(usable);
            if !taken.contains(&block.start) {
                out.push(block);
            }
            match block.span().1.checked_add(1) {
                Some(next) => cursor = next,
                None => break,
            }
        }
        out
    }

    /// The lowest free address given `held`: the addresses already taken inside this range in
    /// ascending order (addresses outside `[start, end]` are ignored). `None` = exhausted.
    pub fn lowest_free(&self, held: impl IntoIterator<Item = IpAddr>) -> Option<IpAddr> {
        let end = to_u128(self.end);
        let mut cand = to_u128(self.start);
        let mut held = held.into_iter().map(to_u128).peekable();
        let mut r = 0;
        loop {
            while r < self.reserved.len() && self.reserved[r].1 < cand {
                r += 1;
            }
            if let Some(&(lo, hi)) = self.reserved.get(r) {
                if lo <= cand {
                    cand = hi.checked_add(1)?;
                    if cand > end {
                        return None;
                    }
                    continue;
                }
            }
            while held.next_if(|&h| h < cand).is_some() {}
            if held.peek() == Some(&cand) {
                cand = cand.checked_add(1)?;
                if cand > end {
                    return None;
                }
                continue;
            }
            return (cand <= end).then(|| from_u128(self.family(), cand));
        }
    }
}

/// Sorts and merges intervals and clips them to `[lo, hi]`, dropping those outside.
fn merge_clip(mut v: Vec<(u128, u128)>, lo: u128, hi: u128) -> Vec<(u128, u128)> {
    v.retain(|&(a, b)| b >= lo && a <= hi);
    v.iter_mut().for_each(|p| *p = (p.0.max(lo), p.1.min(hi)));
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Fixed-width, order-preserving text for an address: `4-0a000005`, `6-<32 hex digits>`.
/// Lexicographic order of these strings equals numeric order within a family, which the etcd
/// store relies on for range reads.
pub fn key_hex(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("4-{:08x}", u32::from(a)),
        IpAddr::V6(a) => format!("6-{:032x}", u128::from(a)),
    }
}

/// Inverse of [`key_hex`].
pub fn parse_key_hex(s: &str) -> Option<IpAddr> {
    match s.split_once('-')? {
        ("4", h) if h.len() == 8 => Some(from_u128(
            Family::V4,
            u32::from_str_radix(h, 16).ok()? as u128,
        )),
        ("6", h) if h.len() == 32 => Some(from_u128(Family::V6, u128::from_str_radix(h, 16).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(range: &str) -> RangeSpec {
        RangeSpec {
            range: range.into(),
            ..Default::default()
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_skips_network_gateway_broadcast() {
        let range = Range::new(&r("10.0.0.0/30")).unwrap();
        assert_eq!(range.gateway, Some(ip("10.0.0.1")));
        assert_eq!(range.lowest_free([]), Some(ip("10.0.0.2")));
        assert_eq!(
            range.lowest_free([ip("10.0.0.2")]),
            None,
            ".3 is the broadcast"
        );
        assert!(range.is_reserved(ip("10.0.0.3")));
        assert!(range.is_reserved(ip("10.0.0.0")));
    }

    #[test]
    fn lowest_free_fills_holes_in_order() {
        let range = Range::new(&r("10.0.0.0/24")).unwrap();
        let held = [ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.5")];
        assert_eq!(range.lowest_free(held), Some(ip("10.0.0.4")));
        let held = [ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4")];
        assert_eq!(range.lowest_free(held), Some(ip("10.0.0.5")));
    }

    #[test]
    fn ranges_no_pod_can_use_are_refused_unless_allowed() {
        for text in [
            "0.0.0.0/32",
            "255.255.255.255/32",
            "::/128",
            "10.0.0.0/0",
            "127.0.0.0/24",
            "224.1.0.0/24",
            "ff02::/120",
            "0.0.0.0/24",
        ] {
            let e = Range::new(&r(text)).unwrap_err();
            assert_eq!(e.code(), 7, "{text}");
            assert!(
                e.to_string().contains("allow_special_ranges"),
                "{text}: {e}"
            );
            Range::new(&RangeSpec {
                allow_special: true,
                ..r(text)
            })
            .unwrap_or_else(|e| panic!("{text} with allow_special_ranges: {e}"));
        }
        // The edge of a normal range is fine.
        Range::new(&r("223.255.255.0/24")).unwrap();
        Range::new(&r("1.0.0.0/24")).unwrap();
    }

    #[test]
    fn excludes_and_start_end() {
        let spec = RangeSpec {
            range: "10.0.0.0/24".into(),
            range_start: Some(ip("10.0.0.10")),
            range_end: Some(ip("10.0.0.20")),
            exclude: vec!["10.0.0.8/30".into(), "10.0.0.12".into()],
            gateway: None,
            slice: None,
            allow_special: false,
        };
        let range = Range::new(&spec).unwrap();
        assert_eq!(range.lowest_free([]), Some(ip("10.0.0.13")));
        assert_eq!(range.lowest_free([ip("10.0.0.13")]), Some(ip("10.0.0.14")));
        let all: Vec<IpAddr> = (13..=20).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(range.lowest_free(all), None);
    }

    #[test]
    fn dash_form_and_host_address_form() {
        let a = Range::new(&r("10.0.0.10-10.0.0.12/24")).unwrap();
        assert_eq!((a.start, a.end), (ip("10.0.0.10"), ip("10.0.0.12")));
        assert_eq!(a.subnet.to_string(), "10.0.0.0/24");
        let b = Range::new(&r("192.168.2.225/28")).unwrap();
        assert_eq!(b.start, ip("192.168.2.225"));
        assert_eq!(
            b.lowest_free([]),
            Some(ip("192.168.2.226")),
            ".225 is the default gateway"
        );
    }

    #[test]
    fn ipv6_whole_range_u128() {
        let range = Range::new(&r("fd00::/64")).unwrap();
        assert_eq!(range.lowest_free([]), Some(ip("fd00::2")));
        // The upper half of a /64 is reachable (whereabouts cannot go past the first /65).
        let spec = RangeSpec {
            range: "fd00::/64".into(),
            range_start: Some(ip("fd00::ffff:ffff:ffff:fffe")),
            ..Default::default()
        };
        let top = Range::new(&spec).unwrap();
        assert_eq!(top.lowest_free([]), Some(ip("fd00::ffff:ffff:ffff:fffe")));
        assert_eq!(
            top.lowest_free([ip("fd00::ffff:ffff:ffff:fffe")]),
            Some(ip("fd00::ffff:ffff:ffff:ffff")),
            "no broadcast in IPv6"
        );
        // ::/0 must not overflow (a range only `allow_special_ranges` lets through).
        let all = Range::new(&RangeSpec {
            allow_special: true,
            ..r("::/0")
        })
        .unwrap();
        assert_eq!(all.lowest_free([]), Some(ip("::2")));
        let last = RangeSpec {
            range: "::/0".into(),
            range_start: Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            allow_special: true,
            ..Default::default()
        };
        let last = Range::new(&last).unwrap();
        assert_eq!(last.lowest_free([last.start]), None);
    }

    #[test]
    fn point_to_point_prefixes_use_every_address() {
        let range = Range::new(&r("10.0.0.0/31")).unwrap();
        assert_eq!(range.gateway, None);
        assert_eq!(range.lowest_free([]), Some(ip("10.0.0.0")));
        assert_eq!(range.lowest_free([ip("10.0.0.0")]), Some(ip("10.0.0.1")));
    }

    #[test]
    fn invalid_configs_are_code_7_with_the_value() {
        let cases: Vec<(RangeSpec, &str)> = vec![
            (r("10.0.0.0/33"), "10.0.0.0/33"),
            (r("10.0.0.300/24"), "10.0.0.300"),
            (r("10.0.0.0"), "not a CIDR"),
            (r("banana/24"), "banana"),
            (
                RangeSpec {
                    range: "10.0.0.0/24".into(),
                    range_start: Some(ip("10.0.1.5")),
                    ..Default::default()
                },
                "range_start 10.0.1.5 is outside",
            ),
            (
                RangeSpec {
                    range: "10.0.0.0/24".into(),
                    range_start: Some(ip("10.0.0.9")),
                    range_end: Some(ip("10.0.0.5")),
                    ..Default::default()
                },
                "after range_end",
            ),
            (
                RangeSpec {
                    range: "10.0.0.0/24".into(),
                    exclude: vec!["10.0.0.0/24".into()],
                    ..Default::default()
                },
                "no usable address",
            ),
            (
                RangeSpec {
                    range: "10.0.0.0/24".into(),
                    exclude: vec!["fd00::/64".into()],
                    ..Default::default()
                },
                "address family",
            ),
            (
                RangeSpec {
                    range: "10.0.0.0/24".into(),
                    gateway: Some(ip("10.9.9.9")),
                    ..Default::default()
                },
                "gateway 10.9.9.9 is outside",
            ),
        ];
        for (spec, needle) in cases {
            let e = Range::new(&spec).unwrap_err();
            assert_eq!(e.code(), conf::code::INVALID_CONFIG, "{spec:?}");
            assert!(
                e.to_string().contains(needle),
                "{:?} should mention {needle:?}",
                e.to_string()
            );
        }
    }

    #[test]
    fn key_hex_orders_like_numbers() {
        let a = key_hex(ip("10.0.0.9"));
        let b = key_hex(ip("10.0.0.10"));
        assert!(a < b);
        assert_eq!(parse_key_hex(&b), Some(ip("10.0.0.10")));
        assert_eq!(parse_key_hex(&key_hex(ip("fd00::1"))), Some(ip("fd00::1")));
        assert_eq!(parse_key_hex("4-zz"), None);
    }
}
