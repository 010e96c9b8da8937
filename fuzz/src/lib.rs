//! The bodies of weft's fuzz targets: one module per parser that reads bytes from outside, each
//! with a `run(&[u8])` that feeds the real parser and then checks what it promises (round trips,
//! invariants of what it accepted), not only that it does not panic. `fuzz_targets/<name>.rs` is
//! a one-line `fuzz_target!` calling `<name>::run`.
//!
//! A failed assertion or a panic anywhere (also one the CNI dispatcher would catch and turn into
//! code 999: libfuzzer-sys's panic hook aborts first) is a crash.

use conf::{Env, NetConf, Request};
use serde_json::{Map, Value};

/// The environment of an ADD as a runtime sets it (nothing here is exec'd or opened).
fn env(command: &str, cni_args: &str) -> Option<Env> {
    let vars = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/fuzz"),
        ("CNI_IFNAME", "net1"),
        ("CNI_PATH", "/nonexistent/weft-fuzz"),
        ("CNI_ARGS", cni_args),
    ];
    Env::from_vars(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .ok()
}

/// A request for an ADD with `stdin` as the config, as the dispatcher builds it; `None` when the
/// config does not parse (that part is the `netconf` target's).
fn request(stdin: &[u8]) -> Option<Request> {
    Some(Request {
        env: env(
            "ADD",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=fuzz",
        )?,
        conf: NetConf::parse(stdin).ok()?,
        stdin: stdin.to_vec(),
    })
}

/// `v` written out and read back, as the next process in a chain sees it.
fn through_text(v: &Value) -> Value {
    let text = serde_json::to_vec(v).expect("a Value always serialises");
    serde_json::from_slice(&text).expect("serde_json reads what it wrote")
}

/// The JSON object `data` holds, if it is one.
fn object(data: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(data).ok()? {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

/// A network config (`NetConf::parse`, what every plugin reads on stdin).
pub mod netconf {
    use super::*;

    pub fn run(data: &[u8]) {
        let Ok(c) = NetConf::parse(data) else {
            return;
        };
        assert!(conf::env::validate_network_name(&c.name).is_ok(), "{c:?}");
        assert!(
            !c.plugin_type.is_empty() && !c.plugin_type.contains('/'),
            "{c:?}"
        );
        // Written back (as multus and libcni re-serialise it), it is the same config.
        let again = NetConf::parse(&serde_json::to_vec(&Value::Object(c.raw.clone())).unwrap())
            .expect("a re-serialised config parses");
        assert_eq!(again, c);
        // Everything a verb reads from it: no panic, whatever the answer.
        let _ = c.ipam_type();
        if let Ok(Some(prev)) = c.prev_result() {
            crate::result::check(&prev);
        }
        let _ = c.valid_attachment_keys();
        let _ = c.runtime::<Value>("portMappings");
        let _ = c.ipam_section::<Map<String, Value>>();
    }
}

/// A conflist from /etc/cni/net.d (`NetConfList::parse`).
pub mod conflist {
    use super::*;
    use conf::NetConfList;

    pub fn run(data: &[u8]) {
        let Ok(l) = NetConfList::parse(data) else {
            return;
        };
        assert!(conf::env::validate_network_name(&l.name).is_ok());
        assert!(!l.plugins.is_empty());
        if let Some(newest) = l.cni_versions.iter().max() {
            assert_eq!(*newest, l.cni_version, "cniVersions' newest wins");
        }
        for i in 0..l.plugins.len() {
            let pc = l.plugin_conf(i).expect("index in range");
            assert_eq!(pc["name"], Value::from(l.name.as_str()));
            assert_eq!(pc["cniVersion"], Value::from(l.cni_version.as_str()));
            // The stdin a runtime hands plugin i: when a plugin can read it, it reads the
            // list's name and version.
            if let Ok(c) = NetConf::parse(&serde_json::to_vec(&pc).unwrap()) {
                assert_eq!(
                    (c.name.as_str(), c.cni_version),
                    (l.name.as_str(), l.cni_version)
                );
            }
        }
        assert!(l.plugin_conf(l.plugins.len()).is_none());
        // Written back with what was understood, it is the same list.
        let mut out = Map::new();
        out.insert("cniVersion".into(), l.cni_version.as_str().into());
        if !l.cni_versions.is_empty() {
            let vs = l.cni_versions.iter().map(|v| Value::from(v.as_str()));
            out.insert("cniVersions".into(), vs.collect());
        }
        out.insert("name".into(), l.name.clone().into());
        out.insert("disableCheck".into(), l.disable_check.into());
        out.insert("disableGC".into(), l.disable_gc.into());
        let plugins = l.plugins.iter().cloned().map(Value::Object);
        out.insert("plugins".into(), plugins.collect());
        let again = NetConfList::parse(&serde_json::to_vec(&out).unwrap())
            .expect("a conflist written back parses");
        assert_eq!(again, l);
    }
}

/// A result of any version, as a `prevResult` or a delegate's stdout (`CniResult::decode`). The
/// first byte picks the version of the config that carries it.
pub mod result {
    use super::*;
    use conf::{CniResult, Version};

    pub fn run(data: &[u8]) {
        let Some((&sel, json)) = data.split_first() else {
            return;
        };
        let expected = Version::ALL[usize::from(sel) % Version::ALL.len()];
        let Ok(value) = serde_json::from_slice::<Value>(json) else {
            return;
        };
        if let Ok(r) = CniResult::decode(&value, expected) {
            check(&r);
        }
    }

    /// What holds for every result weft accepted: at every version, what we print reads back
    /// (the next plugin of the chain decodes it), prints the same again, and at 1.1.0 (the
    /// model's own version) loses nothing.
    pub fn check(r: &CniResult) {
        assert!(r.validate().is_ok(), "decode returned an invalid result");
        for v in Version::ALL {
            let printed = r.encode(v);
            assert_eq!(printed["cniVersion"], Value::from(v.as_str()));
            assert!(printed.get("dns").is_some_and(Value::is_object));
            let ips = printed.get("ips").and_then(Value::as_array);
            for ip in ips.into_iter().flatten() {
                assert_eq!(
                    ip.get("version").is_some(),
                    v.has_ip_version_field(),
                    "{v}: {ip}"
                );
            }
            let back = CniResult::decode(&through_text(&printed), v)
                .unwrap_or_else(|e| panic!("{v}: our own output {printed} does not decode: {e}"));
            assert_eq!(back.encode(v), printed, "{v}: printing is not stable");
            if v == Version::NEWEST {
                assert_eq!(&back, r, "a 1.1.0 round trip lost something");
            }
        }
    }
}

/// `CNI_ARGS` (`K=V;K=V`), alone and inside the whole environment.
pub mod cni_args {
    use super::*;
    use conf::env::CniArgs;

    pub fn run(data: &[u8]) {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        let parsed = CniArgs::parse(s);
        if let Ok(a) = &parsed {
            for (k, _) in a.pairs() {
                assert!(!k.is_empty() && !k.contains(';') && !k.contains('='));
                assert!(a.get(k).is_some());
            }
            let written: Vec<String> = a.pairs().iter().map(|(k, v)| format!("{k}={v}")).collect();
            let again = CniArgs::parse(&written.join(";")).expect("written back, it parses");
            assert_eq!(&again, a);
        }
        // The dispatcher's view: the env is valid exactly when CNI_ARGS is.
        let e = env("ADD", s);
        assert_eq!(e.is_some(), parsed.is_ok(), "{s:?}");
        if let (Some(e), Ok(a)) = (e, parsed) {
            assert_eq!(e.args, a);
        }
    }
}

/// GC's list of attachments to keep (`cni.dev/valid-attachments`, or the draft's
/// `cni.dev/attachments`: the first byte picks the key), inside a GC config.
pub mod gc_attachments {
    use super::*;
    use conf::AttachmentKey;

    pub fn run(data: &[u8]) {
        let Some((&sel, json)) = data.split_first() else {
            return;
        };
        let Ok(list) = serde_json::from_slice::<Value>(json) else {
            return;
        };
        let key = if sel & 1 == 0 {
            "cni.dev/valid-attachments"
        } else {
            "cni.dev/attachments"
        };
        let mut stdin =
            serde_json::json!({"cniVersion": "1.1.0", "name": "net1", "type": "weft-ipam"});
        stdin[key] = list;
        let c = NetConf::parse(&serde_json::to_vec(&stdin).unwrap()).expect("fixed GC config");
        let keys = c.valid_attachment_keys();
        match c.valid_attachments() {
            Ok(list) => {
                let all_valid = list
                    .iter()
                    .all(|a| AttachmentKey::new("net1", &a.container_id, &a.ifname).is_ok());
                assert_eq!(keys.is_ok(), all_valid);
                for k in keys.iter().flatten() {
                    assert_eq!(k.network(), Some("net1"));
                    assert!(list
                        .iter()
                        .any(|a| a.container_id == k.container_id() && a.ifname == k.ifname()));
                }
            }
            Err(e) => {
                assert_eq!(e.code, conf::code::INVALID_CONFIG);
                assert!(keys.is_err());
            }
        }
    }
}

/// The whole exec contract (`conf::dispatch::run_with`): env + stdin in, exit code and one JSON
/// line out, for a pass-through plugin. The first byte picks the verb.
pub mod dispatch {
    use super::*;
    use conf::{CniResult, Plugin, Version};

    /// Returns prevResult on ADD (or an empty result), reads the GC list on GC.
    struct Echo;

    impl Plugin for Echo {
        fn add(&self, req: &Request) -> conf::Result<CniResult> {
            Ok(req.conf.prev_result()?.unwrap_or_default())
        }
        fn del(&self, _: &Request) -> conf::Result<()> {
            Ok(())
        }
        fn check(&self, req: &Request) -> conf::Result<()> {
            req.conf.prev_result().map(drop)
        }
        fn gc(&self, req: &Request) -> conf::Result<()> {
            req.conf.valid_attachment_keys().map(drop)
        }
    }

    const VERBS: [&str; 7] = ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "BOGUS"];

    pub fn run(data: &[u8]) {
        let Some((&sel, mut stdin)) = data.split_first() else {
            return;
        };
        let verb = VERBS[usize::from(sel) % VERBS.len()];
        let vars = |k: &str| {
            let v = match k {
                "CNI_COMMAND" => verb,
                "CNI_CONTAINERID" => "c0ffee",
                "CNI_NETNS" => "/var/run/netns/fuzz",
                "CNI_IFNAME" => "eth0",
                "CNI_PATH" => "/nonexistent/weft-fuzz",
                "CNI_ARGS" => "IgnoreUnknown=1",
                _ => return None,
            };
            Some(v.to_owned())
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code =
            conf::dispatch::run_with(&Echo, "weft-fuzz", vars, &mut stdin, &mut out, &mut err);
        let text = String::from_utf8(out).expect("stdout is UTF-8");
        match code {
            0 if matches!(verb, "ADD" | "VERSION") => {
                let line = one_line(&text);
                let v: Value = serde_json::from_str(line).expect("stdout is JSON");
                let said = v["cniVersion"].as_str().expect("cniVersion is printed");
                if verb == "ADD" {
                    let version = Version::parse(said).expect("ADD answers in a version we speak");
                    let r = CniResult::decode(&v, version).expect("our ADD output decodes");
                    assert_eq!(r.encode(version), v);
                }
            }
            0 => assert!(text.is_empty(), "{verb} printed {text:?}"),
            1 => {
                let v: Value = serde_json::from_str(one_line(&text)).expect("errors are JSON");
                let code = v["code"].as_u64().expect("an error has a code");
                assert!(code != 0 && code != u64::from(conf::code::INTERNAL), "{v}");
                assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
                let said = v["cniVersion"].as_str().expect("errors carry cniVersion");
                assert!(Version::parse(said).is_ok(), "{v}");
            }
            other => panic!("exit code {other}"),
        }
    }

    /// stdout is exactly one line.
    fn one_line(text: &str) -> &str {
        let line = text.strip_suffix('\n').expect("stdout ends with a newline");
        assert!(!line.contains('\n'), "more than one line: {text:?}");
        line
    }
}

/// weft-ipam's `ipam` section (`Config::from_ipam`, and `Config::store_only` that DEL and GC use).
pub mod ipam_config {
    use super::*;
    use weft_ipam::config::Config;

    pub fn run(data: &[u8]) {
        let Some(mut ipam) = object(data) else {
            return;
        };
        // from_ipam reads store.username_file from disk: not parsing, and a fuzzer would have it
        // read /dev/zero. Everything else in the section is parsed without I/O.
        if let Some(Value::Object(store)) = ipam.get_mut("store") {
            store.remove("username_file");
        }
        let full = Config::from_ipam(&ipam, "net1");
        let only = Config::store_only(&ipam, "net1");
        let Ok(c) = full else {
            return;
        };
        // DEL and GC must work whenever ADD does, and find the same reservations.
        let (network, store) = only.expect("store_only accepts what from_ipam accepts");
        assert_eq!((&network, &store), (&c.network, &c.store));
        assert!(!c.ranges.is_empty());
        for (i, a) in c.ranges.iter().enumerate() {
            crate::ipam_range::check(a);
            for b in &c.ranges[i + 1..] {
                if a.family() == b.family() {
                    assert_eq!(a.slice, b.slice, "one block size per family");
                    assert!(
                        !a.contains(b.start) && !b.contains(a.start),
                        "ranges overlap"
                    );
                }
            }
        }
    }
}

/// One range (`Range::new` over a `RangeSpec`) and the allocator over it. Structured input:
/// the fuzzer picks a subnet and places start, end, gateway, excludes and held addresses
/// relative to it, so most inputs are ranges that validate and the allocator gets exercised.
pub mod ipam_range {
    use arbitrary::{Arbitrary, Unstructured};
    use std::net::IpAddr;
    use weft_ipam::range::{from_u128, key_hex, parse_key_hex, to_u128, Family, Range, RangeSpec};

    /// An address relative to the subnet: near its low or high end, anywhere in the family, or
    /// in the other family.
    #[derive(Arbitrary, Debug, Clone, Copy)]
    enum At {
        Low(u16),
        High(u16),
        Any(u128),
        OtherFamily(u128),
    }

    #[derive(Arbitrary, Debug)]
    enum Text {
        /// `<network>/<prefix>`
        Cidr,
        /// `<an address of the subnet>/<prefix>` (whereabouts: starts there)
        Host(At),
        /// `<a>-<b>/<prefix>`
        Dash(At, At),
        /// anything
        Raw(String),
    }

    #[derive(Arbitrary, Debug)]
    enum Exclude {
        Cidr(At, u8),
        Bare(At),
        Raw(String),
    }

    #[derive(Arbitrary, Debug)]
    struct Input {
        v6: bool,
        base: u128,
        prefix: u8,
        text: Text,
        start: Option<At>,
        end: Option<At>,
        gateway: Option<At>,
        exclude: Vec<Exclude>,
        slice: Option<u8>,
        held: Vec<At>,
        cut: (At, At),
        allow_special: bool,
    }

    struct Frame {
        family: Family,
        lo: u128,
        hi: u128,
    }

    impl Frame {
        fn ip(&self, at: At) -> IpAddr {
            let bits = u32::from(self.family.bits());
            let mask = if bits == 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            match at {
                At::Low(n) => from_u128(self.family, self.lo.saturating_add(n.into()).min(self.hi)),
                At::High(n) => {
                    from_u128(self.family, self.hi.saturating_sub(n.into()).max(self.lo))
                }
                At::Any(n) => from_u128(self.family, n & mask),
                At::OtherFamily(n) => match self.family {
                    Family::V4 => from_u128(Family::V6, n),
                    Family::V6 => from_u128(Family::V4, n & u128::from(u32::MAX)),
                },
            }
        }
    }

    pub fn run(data: &[u8]) {
        let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
            return;
        };
        let family = if input.v6 { Family::V6 } else { Family::V4 };
        let bits = family.bits();
        let prefix = input.prefix % (bits + 1);
        let host_bits = u32::from(bits - prefix);
        let size_minus_one = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let family_mask = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        let lo = input.base & family_mask & !size_minus_one;
        let f = Frame {
            family,
            lo,
            hi: lo + size_minus_one,
        };
        let range = match input.text {
            Text::Cidr => format!("{}/{prefix}", f.ip(At::Low(0))),
            Text::Host(at) => format!("{}/{prefix}", f.ip(at)),
            Text::Dash(a, b) => format!("{}-{}/{prefix}", f.ip(a), f.ip(b)),
            Text::Raw(s) => s,
        };
        let exclude = input
            .exclude
            .into_iter()
            .map(|x| match x {
                Exclude::Cidr(at, p) => format!("{}/{p}", f.ip(at)),
                Exclude::Bare(at) => f.ip(at).to_string(),
                Exclude::Raw(s) => s,
            })
            .collect();
        let spec = RangeSpec {
            range,
            range_start: input.start.map(|a| f.ip(a)),
            range_end: input.end.map(|a| f.ip(a)),
            exclude,
            gateway: input.gateway.map(|a| f.ip(a)),
            slice: input.slice,
            allow_special: input.allow_special,
        };
        let Ok(r) = Range::new(&spec) else {
            return;
        };
        check(&r);
        if !input.allow_special {
            no_special_address(&r);
        }
        let mut held: Vec<IpAddr> = input.held.into_iter().map(|a| f.ip(a)).collect();
        held.sort_by_key(|ip| (Family::of(*ip), to_u128(*ip)));
        held.dedup();
        allocator(&r, &held, f.ip(input.cut.0), f.ip(input.cut.1));
    }

    /// What every range `Range::new` accepted promises.
    pub fn check(r: &Range) {
        let family = r.family();
        let (start, end) = (to_u128(r.start), to_u128(r.end));
        assert!(start <= end, "{r:?}");
        assert!(
            r.subnet.contains(r.start) && r.subnet.contains(r.end),
            "{r:?}"
        );
        assert_eq!(Family::of(r.start), family);
        assert_eq!(Family::of(r.end), family);
        if let Some(gw) = r.gateway {
            assert!(r.subnet.contains(gw), "{r:?}");
            assert!(
                !r.contains(gw) || r.is_reserved(gw),
                "gateway handed out: {r:?}"
            );
        }
        assert!(
            r.slice >= r.subnet.prefix() && r.slice <= family.bits(),
            "{r:?}"
        );
        let first = r
            .lowest_free(std::iter::empty())
            .expect("a valid range has a free address");
        assert!(
            r.contains(first) && !r.is_reserved(first),
            "{first} in {r:?}"
        );
        assert!(r.block_of(first).contains(first));
        for ip in [r.start, r.end, first] {
            assert_eq!(parse_key_hex(&key_hex(ip)), Some(ip));
        }
        let _ = r.id();
    }

    /// Without `allow_special_ranges`, no address a pod cannot use is ever in the range: not /0,
    /// not the unspecified address, broadcast, loopback or multicast.
    fn no_special_address(r: &Range) {
        assert!(r.subnet.prefix() > 0, "/0 accepted: {r:?}");
        let (lo, hi) = (to_u128(r.start), to_u128(r.end));
        let forbidden: &[&str] = match r.family() {
            Family::V4 => &[
                "0.0.0.0/32",
                "255.255.255.255/32",
                "127.0.0.0/8",
                "224.0.0.0/4",
            ],
            Family::V6 => &["::/128", "::1/128", "ff00::/8"],
        };
        for net in forbidden {
            let net: ipnetwork::IpNetwork = net.parse().unwrap();
            let (a, b) = (to_u128(net.network()), to_u128(net.broadcast()));
            assert!(hi < a || b < lo, "{net} can be handed out: {r:?}");
        }
    }

    /// The allocator against a brute-force reading of the same range (small ranges), and its
    /// promises on any range.
    fn allocator(r: &Range, held: &[IpAddr], cut_a: IpAddr, cut_b: IpAddr) {
        let family = r.family();
        let (start, end) = (to_u128(r.start), to_u128(r.end));
        let mine: Vec<IpAddr> = held
            .iter()
            .copied()
            .filter(|ip| Family::of(*ip) == family)
            .collect();
        let got = r.lowest_free(mine.iter().copied());
        if let Some(ip) = got {
            assert!(
                r.contains(ip) && !r.is_reserved(ip) && !mine.contains(&ip),
                "{ip} {r:?}"
            );
        }
        if end - start < 2048 {
            let expect = (start..=end)
                .map(|n| from_u128(family, n))
                .find(|ip| !r.is_reserved(*ip) && !mine.contains(ip));
            assert_eq!(got, expect, "lowest free of {r:?} holding {mine:?}");
        }
        let (a, b) = (to_u128(cut_a), to_u128(cut_b));
        if let Some(cut) = r.restrict(a.min(b), a.max(b)) {
            let ip = cut
                .lowest_free(std::iter::empty())
                .expect("restrict keeps a usable address");
            assert!(r.contains(ip) && !r.is_reserved(ip) && cut.contains(ip));
            assert!((a.min(b)..=a.max(b)).contains(&to_u128(ip)));
        }
        let blocks = r.free_blocks(&Default::default(), 4);
        for w in blocks.windows(2) {
            assert!(w[0].span().1 < w[1].span().0, "blocks ascend: {blocks:?}");
        }
        for b in &blocks {
            assert_eq!(b.prefix, r.slice);
            assert_eq!(r.block_of(b.start), *b, "aligned");
            let (lo, hi) = b.span();
            assert!(
                r.restrict(lo, hi).is_some(),
                "block {b} has nothing to hand out"
            );
        }
        if let Some(first) = blocks.first() {
            let free = r.lowest_free(std::iter::empty()).unwrap();
            assert!(
                first.contains(free),
                "the first free block holds the first free address"
            );
        }
    }
}

/// weft-ipam's pool file (`store::file::parse`): what it reads back from disk on every verb.
pub mod pool_file {
    use weft_ipam::store::file::{parse, render};
    use weft_ipam::store::PoolFile;

    pub fn run(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(pool) = parse(text) else {
            // The verbs' fast reader may accept more (owners are checked when used), but
            // never a file that says something else: what it accepts renders to itself.
            if let Ok(file) = PoolFile::read(text.to_owned()) {
                let out = file.render();
                let again = PoolFile::read(out.clone()).expect("rendered file reads back");
                assert_eq!(again.render(), out);
            }
            return;
        };
        // The verbs read with PoolFile::read, GC and inspect with parse: they must agree, and
        // an edit spliced into the read text must equal the same edit of the parsed pool.
        let mut file = PoolFile::read(text.to_owned())
            .unwrap_or_else(|e| panic!("parse accepts {text:?}, PoolFile::read does not: {e}"));
        assert_eq!(file.to_pool().as_ref(), Ok(&pool));
        assert_eq!(parse(&file.render()).as_ref(), Ok(&pool));
        let owner = conf::AttachmentKey::new("net-fuzz", "c-fuzz", "eth9").expect("valid key");
        let free = ["10.255.255.254", "fd00::fffe", "0.0.0.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .find(|ip| !pool.map.contains_key(ip));
        // (A legacy line of the same container would answer to the owner too.)
        let owner_unused = pool.map.values().all(|o| o.container_id() != "c-fuzz");
        if let (Some(ip), true) = (free, owner_unused) {
            file.insert(ip, &owner);
            let mut expected = pool.clone();
            expected.map.insert(ip, owner.clone());
            assert_eq!(parse(&file.render()).as_ref(), Ok(&expected));
            assert_eq!(file.release(&owner), vec![ip]);
            assert_eq!(parse(&file.render()).as_ref(), Ok(&pool));
        }
        let out = render(&pool);
        let again = parse(&out).unwrap_or_else(|e| panic!("rendered pool {out:?} fails: {e}"));
        assert_eq!(again, pool);
        assert_eq!(render(&again), out);
        for o in pool.map.values() {
            assert!(conf::AttachmentKey::legacy(o.container_id(), o.ifname()).is_ok());
            if let Some(n) = o.network() {
                assert!(conf::env::validate_network_name(n).is_ok());
            }
        }
    }
}

/// The etcd store's node-local block list (`store::blocks::parse`).
pub mod block_list {
    use weft_ipam::store::blocks::{parse, render};

    pub fn run(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(list) = parse(text) else {
            return;
        };
        let out = render(&list);
        assert_eq!(parse(&out).as_ref(), Ok(&list), "{out:?}");
        for b in &list {
            let (lo, hi) = b.span();
            assert!(lo <= hi);
            assert!(b.contains(b.start));
        }
    }
}

/// Block keys and holder values read back from etcd (`store::etcd::check_listing`,
/// `Holder::decode`), against one of a few configured ranges.
pub mod etcd_listing {
    use arbitrary::{Arbitrary, Unstructured};
    use weft_ipam::range::{from_u128, key_hex, Family, Range, RangeSpec};
    use weft_ipam::store::etcd::{check_listing, Holder};

    const RANGES: [(&str, Option<u8>); 6] = [
        ("10.40.0.0/16", None),
        ("fd40::/64", None),
        ("10.0.0.0/30", None),
        ("10.1.0.0/24", Some(28)),
        ("fd00::/120", Some(124)),
        ("100.64.0.0/10", Some(32)),
    ];

    #[derive(Arbitrary, Debug)]
    enum Key {
        /// `<prefix>/<network>/blocks/<key_hex>` of an address of either family.
        Block {
            v6: bool,
            at: u128,
        },
        Raw(String),
    }

    #[derive(Arbitrary, Debug)]
    enum Val {
        Json { node: String, prefix: u8 },
        Bare(String),
        Raw(Vec<u8>),
    }

    #[derive(Arbitrary, Debug)]
    struct Input {
        range: u8,
        keys: Vec<(Key, Val, i64)>,
    }

    pub fn run(data: &[u8]) {
        let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
            return;
        };
        let (text, slice) = RANGES[usize::from(input.range) % RANGES.len()];
        let Ok(r) = Range::new(&RangeSpec {
            range: text.into(),
            slice,
            ..Default::default()
        }) else {
            return;
        };
        let keys: Vec<(String, Vec<u8>, i64)> = input
            .keys
            .into_iter()
            .map(|(k, v, rev)| {
                let key = match k {
                    Key::Block { v6: false, at } => {
                        key_hex(from_u128(Family::V4, at & u128::from(u32::MAX)))
                    }
                    Key::Block { v6: true, at } => key_hex(from_u128(Family::V6, at)),
                    Key::Raw(s) => s,
                };
                let value = match v {
                    Val::Json { node, prefix } => {
                        serde_json::json!({"node": node, "prefix": prefix})
                            .to_string()
                            .into_bytes()
                    }
                    Val::Bare(s) => s.into_bytes(),
                    Val::Raw(b) => b,
                };
                (format!("/weft-ipam/net1/blocks/{key}"), value, rev)
            })
            .collect();
        for (_, value, _) in &keys {
            if let Ok(h) = Holder::decode(value, r.slice) {
                assert!(weft_ipam::config::validate_network_name(&h.node).is_ok());
                let again = Holder::decode(h.encode().as_bytes(), r.slice.wrapping_add(1));
                assert_eq!(again.as_ref(), Ok(&h), "holder round trip");
            }
        }
        match check_listing(&r, &keys) {
            Ok(blocks) => {
                assert!(blocks.len() <= keys.len());
                for (start, holder) in &blocks {
                    assert_eq!(Family::of(*start), r.family());
                    assert_eq!(holder.prefix, r.slice);
                    assert_eq!(r.block_of(*start).start, *start, "aligned");
                }
            }
            Err(conflicts) => assert!(!conflicts.is_empty()),
        }
    }
}

/// kmesh-cni's attachment record, as `RecordStore::read` decodes it (serde JSON).
pub mod kmesh_record {
    use kmesh_cni::record::Record;

    pub fn run(data: &[u8]) {
        let Ok(r) = serde_json::from_slice::<Record>(data) else {
            return;
        };
        // As RecordStore::write writes it: reads back the same.
        let text = serde_json::to_vec_pretty(&r).expect("a record serialises");
        let back: Record = serde_json::from_slice(&text).expect("a written record reads back");
        assert_eq!(back, r);
        // What DEL and GC derive from it.
        let _ = (r.is_layout_1(), r.device(), r.managed());
        let _ = r.pin_root(&bpf::PinRoot::new("/sys/fs/bpf/weft"));
        for e in &r.endpoints {
            let _ = e.to_bpf();
        }
    }
}

/// kmesh-cni's config keys and per-pod policy (annotations, `args.cni`).
pub mod kmesh_config {
    use kmesh_cni::config::{KmeshConf, Mode};

    pub fn run(data: &[u8]) {
        let Some(req) = super::request(data) else {
            return;
        };
        let Ok(c) = KmeshConf::from_request(&req) else {
            return;
        };
        if let Ok(p) = c.pod_policy(&req) {
            assert!(!(c.mode == Mode::Off && p.fast_path));
        }
    }
}

/// weft-sriov's config (sriov-cni's keys, `runtimeConfig`, `args.cni`).
pub mod sriov_config {
    use host::PciAddress;
    use weft_sriov::config::{Logging, SriovConf};

    pub fn run(data: &[u8]) {
        let Some(req) = super::request(data) else {
            return;
        };
        let _ = Logging::from_request(&req);
        let Ok(c) = SriovConf::from_request(&req) else {
            return;
        };
        if let Some(v) = c.vlan {
            assert!(v.id <= 4094 && v.qos <= 7, "{v:?}");
        }
        if let Some(m) = c.mtu {
            assert!((68..=65535).contains(&m));
        }
        if let Some(mac) = c.mac {
            assert!(!mac.is_zero() && !mac.is_multicast(), "{mac}");
        }
        if let Some((min, max)) = c.rate {
            assert!(max == 0 || min <= max);
        }
        assert_eq!(
            PciAddress::parse(c.device_id.as_str()).ok(),
            Some(c.device_id.clone())
        );
        let _ = c.pf_settings();
    }
}

/// weft-sriov's record and VF owner file (serde JSON, read back by DEL and GC). The first byte
/// picks which.
pub mod sriov_record {
    use serde::{de::DeserializeOwned, Serialize};
    use std::fmt::Debug;
    use weft_sriov::record::{Record, VfOwner};

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) -> Option<T> {
        let v: T = serde_json::from_slice(data).ok()?;
        let text = serde_json::to_vec_pretty(&v).expect("a record serialises");
        let back: T = serde_json::from_slice(&text).expect("a written record reads back");
        assert_eq!(back, v);
        Some(v)
    }

    pub fn run(data: &[u8]) {
        let Some((&sel, json)) = data.split_first() else {
            return;
        };
        if sel & 1 == 0 {
            round_trip::<Record>(json);
        } else if let Some(owner) = round_trip::<VfOwner>(json) {
            let _ = owner.key();
        }
    }
}
