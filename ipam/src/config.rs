//! The `ipam` section, with whereabouts' field names, validated into [`Config`].
//!
//! ```json
//! "ipam": {
//!   "type": "weft-ipam",
//!   "range": "10.1.0.0/24", "range_start": "10.1.0.10", "range_end": "10.1.0.200",
//!   "exclude": ["10.1.0.64/28"], "gateway": "10.1.0.1",
//!   "ipRanges": [{"range": "fd10::/64", "exclude": ["fd10::100/120"]}],
//!   "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.1.0.1"]},
//!   "network_name": "pods", "log_file": "/var/log/weft-ipam.log", "log_level": "info",
//!   "store": {"type": "file", "dir": "/var/lib/cni/weft-ipam"}
//! }
//! ```
//! The top-level `range` (if any) is the first range; `ipRanges` entries follow. A `gateway` is
//! matched to the range whose subnet contains it. Every error is code 7 and names the value.
//!
//! `node_slice_size` (`"/26"`, `"26"` or `26`; top level or per `ipRanges` entry) sizes the
//! per-node blocks of the etcd store (default /26 and /122, see `store::etcd`). A top-level value
//! applies to every range it fits (subnet prefix <= n <= family bits), so `"/26"` in a dual-stack
//! config sizes the IPv4 blocks and leaves IPv6 at its default. All ranges of one family must end
//! up with one size. The file store ignores it.

use crate::error::{IpamError, Result};
use crate::range::{Family, Range, RangeSpec};
use conf::result::{Dns, Route};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawRange {
    range: Option<String>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    exclude: Vec<String>,
    gateway: Option<IpAddr>,
    /// `"/26"`, `"26"` or `26` (whereabouts writes `"/26"`).
    node_slice_size: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawIpam {
    #[serde(flatten)]
    top: RawRange,
    #[serde(rename = "ipRanges")]
    ip_ranges: Vec<RawRange>,
    routes: Vec<RawRoute>,
    dns: Option<Dns>,
    network_name: Option<String>,
    /// Allow ranges that include /0, unspecified, broadcast, loopback or multicast addresses.
    allow_special_ranges: bool,
    log_file: Option<PathBuf>,
    log_level: Option<String>,
    store: Option<RawStore>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawStore {
    #[serde(rename = "type")]
    kind: Option<String>,
    dir: Option<PathBuf>,
    endpoints: Vec<String>,
    prefix: Option<String>,
    tls: Option<EtcdTls>,
    username: Option<String>,
    username_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    timeout_ms: Option<u64>,
}

/// TLS material for etcd, as file paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// Credentials; the password is only ever read from a file so it stays out of configs.
    pub username: Option<Username>,
    pub password_file: Option<PathBuf>,
    /// Bound on one whole verb against etcd; past it the verb fails with code 11.
    pub timeout: Duration,
    /// Node-local directory (`store.dir`): this node's pool and block list live under
    /// `<lock_dir>/_etcd/<node>/<network>/` (see store::etcd).
    pub lock_dir: PathBuf,
}

/// `store.username`, or `store.username_file` (read when etcd is needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Username {
    Inline(String),
    File(PathBuf),
}

impl Username {
    pub fn resolve(&self) -> Result<String> {
        match self {
            Username::Inline(u) => Ok(u.clone()),
            Username::File(f) => std::fs::read_to_string(f)
                .map(|u| u.trim().to_string())
                .map_err(|e| bad(format!("store.username_file {}: {e}", f.display()))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    File { dir: PathBuf },
    Etcd(EtcdConfig),
}

/// The validated IPAM config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of the reservations: `network_name`, else the network's `name`.
    pub network: String,
    pub ranges: Vec<Range>,
    pub routes: Vec<Route>,
    pub dns: Option<Dns>,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub store: StoreConfig,
}

fn bad(msg: String) -> IpamError {
    IpamError::Config(msg)
}

/// The CNI rule for network names (`conf::env::validate_network_name`), here for `network_name`
/// and node names, which become directory names and etcd key segments, capped at 200 bytes so
/// every path built from them stays within NAME_MAX.
pub fn validate_network_name(name: &str) -> Result<()> {
    if name.len() <= 200 && conf::env::validate_network_name(name).is_ok() {
        Ok(())
    } else {
        Err(bad(format!(
            "network_name {name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 200 characters)"
        )))
    }
}

impl Config {
    /// Decodes and validates the `ipam` object. `net_name` is the config's `name`.
    pub fn from_ipam(
        ipam: &serde_json::Map<String, serde_json::Value>,
        net_name: &str,
    ) -> Result<Config> {
        let raw = decode(ipam)?;
        Ok(Config {
            network: pool_name(&raw, net_name)?,
            ranges: ranges(&raw)?,
            routes: routes(&raw.routes)?,
            dns: raw.dns,
            log_file: raw.log_file,
            log_level: raw.log_level,
            store: store_config(raw.store.unwrap_or_default())?,
        })
    }

    /// Only where the reservations live (`network_name`/`name` and `store`), for the verbs that
    /// never allocate: DEL and GC must still work after an operator broke the ranges.
    pub fn store_only(
        ipam: &serde_json::Map<String, serde_json::Value>,
        net_name: &str,
    ) -> Result<(String, StoreConfig)> {
        /// Just the two keys: a broken range or route must not stop a DEL.
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Where {
            network_name: Option<String>,
            store: Option<RawStore>,
        }
        let w: Where = serde_json::from_value(serde_json::Value::Object(ipam.clone()))
            .map_err(|e| bad(format!("invalid weft-ipam store config: {e}")))?;
        let network = w.network_name.unwrap_or_else(|| net_name.to_string());
        validate_network_name(&network)?;
        Ok((network, store_config(w.store.unwrap_or_default())?))
    }
}

fn decode(ipam: &serde_json::Map<String, serde_json::Value>) -> Result<RawIpam> {
    serde_json::from_value(serde_json::Value::Object(ipam.clone()))
        .map_err(|e| bad(format!("invalid weft-ipam config: {e}")))
}

/// The pool: `network_name`, else the network's `name`.
fn pool_name(raw: &RawIpam, net_name: &str) -> Result<String> {
    let network = raw
        .network_name
        .clone()
        .unwrap_or_else(|| net_name.to_string());
    validate_network_name(&network)?;
    Ok(network)
}

/// The top-level range (if any) and then the `ipRanges` entries, as given.
fn raw_ranges(raw: &RawIpam) -> Result<Vec<RawRange>> {
    let mut raws: Vec<RawRange> = Vec::new();
    if raw.top.range.is_some() {
        raws.push(raw.top.clone());
    } else if raw.top.range_start.is_some()
        || raw.top.range_end.is_some()
        || !raw.top.exclude.is_empty()
    {
        return Err(bad(
            "range_start, range_end and exclude need a \"range\"".into()
        ));
    }
    raws.extend(raw.ip_ranges.iter().cloned());
    if raws.is_empty() {
        return Err(bad("no address range: set \"range\" or \"ipRanges\"".into()));
    }
    Ok(raws)
}

/// Every range validated, with the top-level `gateway` and `node_slice_size` placed where they
/// belong, and checked against each other.
fn ranges(raw: &RawIpam) -> Result<Vec<Range>> {
    let raws = raw_ranges(raw)?;
    let allow_special = raw.allow_special_ranges;
    // Top-level gateway: attach it to the first range whose subnet contains it.
    let mut top_gw = raw.top.gateway.filter(|_| raw.top.range.is_none());
    let top_slice = parse_slice(raw.top.node_slice_size.as_ref())?;
    // The top-level range carries the top-level node_slice_size itself.
    let mut top_slice_used = raw.top.range.is_some();
    let mut ranges = Vec::with_capacity(raws.len());
    for (i, rr) in raws.iter().enumerate() {
        let mut spec = RangeSpec {
            allow_special,
            ..range_spec(i, rr)?
        };
        if spec.gateway.is_none() {
            if let Some(gw) = top_gw.filter(|gw| subnet_of(&spec).is_ok_and(|s| s.contains(*gw))) {
                spec.gateway = Some(gw);
                top_gw = None;
            }
        }
        // A top-level node_slice_size applies to every range it fits (subnet prefix <= n <=
        // family bits): "/26" sizes the IPv4 ranges of a dual-stack config, and the IPv6
        // ones keep their default instead of becoming one huge block.
        if spec.slice.is_none() {
            if let Some(n) = top_slice {
                let subnet = subnet_of(&spec)?;
                if n >= subnet.prefix() && n <= Family::of(subnet.ip()).bits() {
                    spec.slice = Some(n);
                    top_slice_used = true;
                }
            }
        }
        ranges.push(Range::new(&spec)?);
    }
    if let (Some(n), false) = (top_slice, top_slice_used) {
        return Err(bad(format!(
            "node_slice_size /{n} fits none of the configured ranges"
        )));
    }
    if let Some(gw) = top_gw {
        return Err(bad(format!(
            "gateway {gw} is not inside any configured range"
        )));
    }
    check_ranges_together(&ranges)?;
    Ok(ranges)
}

fn range_spec(i: usize, rr: &RawRange) -> Result<RangeSpec> {
    let text = rr
        .range
        .clone()
        .ok_or_else(|| bad(format!("ipRanges entry {i} has no \"range\"")))?;
    Ok(RangeSpec {
        range: text,
        range_start: rr.range_start,
        range_end: rr.range_end,
        exclude: rr.exclude.clone(),
        gateway: rr.gateway,
        slice: parse_slice(rr.node_slice_size.as_ref())?,
        allow_special: false,
    })
}

/// The subnet a spec describes (validated as a range without its gateway).
fn subnet_of(spec: &RangeSpec) -> Result<IpNetwork> {
    Ok(Range::new(&RangeSpec {
        gateway: None,
        ..spec.clone()
    })?
    .subnet)
}

/// One block size per family (blocks are etcd keys by their start: two sizes would overlap), and
/// no two ranges of a family overlapping (a container would get two addresses from one pool).
fn check_ranges_together(ranges: &[Range]) -> Result<()> {
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if a.family() == b.family() && a.slice != b.slice {
                return Err(bad(format!(
                    "ranges {}-{} and {}-{} have different node_slice_size (/{} and /{}); one family needs one block size",
                    a.start, a.end, b.start, b.end, a.slice, b.slice
                )));
            }
            if a.family() == b.family() && a.contains(b.start) | b.contains(a.start) {
                return Err(bad(format!(
                    "ranges {}-{} and {}-{} overlap: a container would get two addresses from one pool",
                    a.start, a.end, b.start, b.end
                )));
            }
        }
    }
    Ok(())
}

fn routes(raw: &[RawRoute]) -> Result<Vec<Route>> {
    raw.iter()
        .map(|r| {
            let dst = r
                .dst
                .as_deref()
                .ok_or_else(|| bad("route without \"dst\"".into()))?;
            let dst: IpNetwork = dst
                .parse()
                .map_err(|e| bad(format!("route dst {dst:?} is not a CIDR: {e}")))?;
            if let Some(gw) = r.gw.filter(|gw| Family::of(*gw) != Family::of(dst.ip())) {
                return Err(bad(format!(
                    "route {dst} has a gateway {gw} of another address family"
                )));
            }
            Ok(Route::new(dst, r.gw))
        })
        .collect()
}

/// `node_slice_size` as a prefix length: `"/26"`, `"26"` or `26`.
fn parse_slice(v: Option<&serde_json::Value>) -> Result<Option<u8>> {
    let Some(v) = v else { return Ok(None) };
    let n = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().trim_start_matches('/').parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n <= 128 => Ok(Some(n as u8)),
        _ => Err(bad(format!(
            "node_slice_size {v} is not a prefix length like \"/26\""
        ))),
    }
}

/// `store.dir`, else `$WEFT_STATE_DIR/weft-ipam`, else `/var/lib/cni/weft-ipam`.
fn local_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    match dir {
        Some(d) if d.is_relative() => Err(bad(format!(
            "store.dir {} must be an absolute path",
            d.display()
        ))),
        Some(d) => Ok(d),
        None => Ok(host::fsio::state_dir().join("weft-ipam")),
    }
}

/// An etcd endpoint as etcd and its clients write them: `[http[s]://]host[:port]`, the host a
/// DNS name, an IPv4 address or a bracketed IPv6 address. Code 7 otherwise: a config that can
/// never connect is not a reason to retry (11).
fn check_endpoint(e: &str) -> Result<()> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .unwrap_or(e);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => (h, p.strip_prefix(':')),
            _ => ("", None),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if host_ok && port_ok && !rest.contains('/') {
        Ok(())
    } else {
        Err(bad(format!(
            "store.endpoints entry {e:?} is not an etcd endpoint (http[s]://host:port)"
        )))
    }
}

fn store_config(raw: RawStore) -> Result<StoreConfig> {
    match raw.kind.as_deref().unwrap_or("file") {
        "file" => Ok(StoreConfig::File {
            dir: local_dir(raw.dir)?,
        }),
        "etcd" => {
            if raw.endpoints.is_empty() {
                return Err(bad("store type etcd needs \"endpoints\"".into()));
            }
            let prefix = raw.prefix.unwrap_or_else(|| "/weft-ipam".into());
            if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
                return Err(bad(format!(
                    "store.prefix {prefix:?} must start with '/' and not end with '/'"
                )));
            }
            for e in &raw.endpoints {
                check_endpoint(e)?;
            }
            // Files are read when etcd is needed (ADD, STATUS, GC), never by DEL and CHECK,
            // which are local and must work without what only ADD needs.
            let username = match (raw.username, raw.username_file) {
                (Some(u), None) => Some(Username::Inline(u)),
                (None, Some(f)) => Some(Username::File(f)),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "set store.username or store.username_file, not both".into()
                    ))
                }
            };
            if username.is_some() != raw.password_file.is_some() {
                return Err(bad(
                    "etcd credentials need both a username and store.password_file".into(),
                ));
            }
            let timeout_ms = raw.timeout_ms.unwrap_or(5000);
            if !(100..=120_000).contains(&timeout_ms) {
                return Err(bad(format!(
                    "store.timeout_ms {timeout_ms} must be within 100..=120000"
                )));
            }
            Ok(StoreConfig::Etcd(EtcdConfig {
                endpoints: raw.endpoints,
                prefix,
                tls: raw.tls,
                username,
                password_file: raw.password_file,
                timeout: Duration::from_millis(timeout_ms),
                lock_dir: local_dir(raw.dir)?,
            }))
        }
        other => Err(bad(format!(
            "unknown store type {other:?} (expected \"file\" or \"etcd\")"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Config> {
        Config::from_ipam(v.as_object().unwrap(), "net1")
    }

    #[test]
    fn whereabouts_fields_dual_stack() {
        let c = parse(json!({
            "type": "weft-ipam",
            "range": "10.1.0.0/24", "range_start": "10.1.0.10", "exclude": ["10.1.0.12/32"],
            "gateway": "10.1.0.1",
            "ipRanges": [{"range": "fd10::/120"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd10::1"}],
            "dns": {"nameservers": ["10.1.0.1"]},
            "store": {"type": "file", "dir": "/tmp/x"}
        }))
        .unwrap();
        assert_eq!(c.network, "net1");
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(
            c.ranges[0].lowest_free([]),
            Some("10.1.0.10".parse().unwrap())
        );
        assert_eq!(
            c.ranges[1].lowest_free([]),
            Some("fd10::2".parse().unwrap())
        );
        assert_eq!(c.routes.len(), 2);
        assert_eq!(
            c.store,
            StoreConfig::File {
                dir: "/tmp/x".into()
            }
        );
    }

    #[test]
    fn top_level_gateway_goes_to_the_containing_range() {
        let c = parse(json!({"ipRanges": [{"range": "10.2.0.0/24"}, {"range": "fd20::/64"}], "gateway": "fd20::fe"}))
            .unwrap();
        assert_eq!(c.ranges[1].gateway, Some("fd20::fe".parse().unwrap()));
        assert_eq!(c.ranges[0].gateway, Some("10.2.0.1".parse().unwrap()));
        let e = parse(json!({"ipRanges": [{"range": "10.2.0.0/24"}], "gateway": "10.3.0.1"}))
            .unwrap_err();
        assert!(e.to_string().contains("10.3.0.1"), "{}", e.to_string());
    }

    #[test]
    fn errors_are_code_7() {
        for (v, needle) in [
            (json!({}), "no address range"),
            (
                json!({"range": "10.0.0.0/24", "network_name": "../etc"}),
                "network_name",
            ),
            (
                json!({"range": "10.0.0.0/24", "store": {"type": "redis"}}),
                "redis",
            ),
            (
                json!({"range": "10.0.0.0/24", "store": {"type": "etcd"}}),
                "endpoints",
            ),
            (
                json!({"range": "10.0.0.0/24", "store": {"dir": "rel"}}),
                "absolute",
            ),
            (
                json!({"range": "10.0.0.0/24", "ipRanges": [{"range": "10.0.0.128/25"}]}),
                "overlap",
            ),
            (
                json!({"range": "10.0.0.0/24", "routes": [{"dst": "nope"}]}),
                "nope",
            ),
            (json!({"range": 5}), "invalid weft-ipam config"),
            (json!({"range_start": "10.0.0.1"}), "need a \"range\""),
        ] {
            refused(v, needle);
        }
    }

    /// `v` is refused with code 7 and a message naming `needle`.
    fn refused(v: serde_json::Value, needle: &str) {
        let e = parse(v.clone()).unwrap_err();
        assert_eq!(e.code(), 7, "{v}");
        let msg = e.to_string();
        assert!(msg.contains(needle), "{v}: {msg:?} lacks {needle:?}");
    }

    #[test]
    fn node_slice_size_per_family() {
        let c = parse(json!({"range": "10.0.0.0/16", "node_slice_size": "/24",
                             "ipRanges": [{"range": "fd00::/64"}, {"range": "10.1.0.0/16"}]}))
        .unwrap();
        let slices: Vec<u8> = c.ranges.iter().map(|r| r.slice).collect();
        assert_eq!(slices, vec![24, 122, 24]);
        let c = parse(json!({"ipRanges": [{"range": "fd00::/64", "node_slice_size": 120}, {"range": "10.1.0.0/30"}]}))
            .unwrap();
        let slices: Vec<u8> = c.ranges.iter().map(|r| r.slice).collect();
        assert_eq!(
            slices,
            vec![120, 30],
            "a subnet smaller than the default is one block"
        );
        for (v, needle) in [
            (
                json!({"range": "10.0.0.0/24", "node_slice_size": "/16"}),
                "/16",
            ),
            (
                json!({"range": "10.0.0.0/24", "node_slice_size": "big"}),
                "big",
            ),
            (
                json!({"ipRanges": [{"range": "10.0.0.0/24"}], "node_slice_size": 20}),
                "fits none",
            ),
            (
                json!({"range": "10.0.0.0/24", "node_slice_size": 28,
                       "ipRanges": [{"range": "10.1.0.0/24", "node_slice_size": 27}]}),
                "one block size",
            ),
        ] {
            refused(v, needle);
        }
    }

    #[test]
    fn etcd_endpoints_that_can_never_connect_are_code_7() {
        for bad in [
            "not a url",
            "",
            "http://",
            "http://h:99999",
            "http://h:2379/x",
            "[zz]:1",
        ] {
            refused(
                json!({"range": "10.0.0.0/24", "store": {"type": "etcd", "endpoints": [bad]}}),
                "store.endpoints",
            );
        }
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd-0.etcd.svc:2379",
            "http://[::1]:2379",
            "localhost:2379",
        ] {
            parse(json!({"range": "10.0.0.0/24", "store": {"type": "etcd", "endpoints": [good]}}))
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        // A username_file is read when etcd is needed, not when the config is parsed (DEL).
        parse(json!({"range": "10.0.0.0/24", "store": {"type": "etcd",
            "endpoints": ["http://127.0.0.1:2379"], "username_file": "/nonexistent/user",
            "password_file": "/nonexistent/pw"}}))
        .unwrap();
    }

    #[test]
    fn etcd_store_defaults() {
        let c = parse(json!({"range": "10.0.0.0/24", "store": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"]}}))
            .unwrap();
        let StoreConfig::Etcd(e) = c.store else {
            panic!()
        };
        assert_eq!(e.prefix, "/weft-ipam");
        assert_eq!(e.timeout, Duration::from_secs(5));
    }
}
