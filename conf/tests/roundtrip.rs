//! Property tests: every result the model can hold survives encode -> decode at every version,
//! minus exactly the fields that version cannot carry.

use conf::{CniResult, Dns, Interface, IpConfig, Route, Version};
use ipnetwork::IpNetwork;
use proptest::prelude::*;
use serde_json::Map;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn net() -> impl Strategy<Value = IpNetwork> {
    (ip(), any::<u8>()).prop_map(|(a, p)| {
        let max = if a.is_ipv4() { 32 } else { 128 };
        IpNetwork::new(a, p % (max + 1)).unwrap()
    })
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,14}"
}

fn interface() -> impl Strategy<Value = Interface> {
    (
        name(),
        proptest::option::of("[0-9a-f]{2}(:[0-9a-f]{2}){5}"),
        proptest::option::of(68u32..65536),
        proptest::option::of("/var/run/netns/[a-z0-9-]{1,20}"),
        proptest::option::of("/run/[a-z]{1,8}\\.sock"),
        proptest::option::of("0000:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]"),
    )
        .prop_map(|(name, mac, mtu, sandbox, socket_path, pci_id)| Interface {
            name,
            mac,
            mtu,
            sandbox,
            socket_path,
            pci_id,
            extra: Map::new(),
        })
}

fn route() -> impl Strategy<Value = Route> {
    (
        net(),
        proptest::option::of(ip()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(dst, gw, mtu, advmss, priority, table, scope)| Route {
            mtu,
            advmss,
            priority,
            table,
            scope,
            ..Route::new(dst, gw)
        })
}

fn result() -> impl Strategy<Value = CniResult> {
    (
        proptest::collection::vec(interface(), 0..3),
        proptest::collection::vec((net(), proptest::option::of(ip()), any::<u8>()), 0..4),
        proptest::collection::vec(route(), 0..4),
        proptest::collection::vec("[0-9.]{1,15}", 0..3),
        proptest::option::of("[a-z.]{1,20}"),
    )
        .prop_map(|(interfaces, ips, routes, nameservers, domain)| {
            let n = interfaces.len();
            let ips = ips
                .into_iter()
                .map(|(address, gateway, idx)| IpConfig {
                    // Only in-range indexes are valid results; out-of-range is tested apart.
                    interface: (n > 0).then(|| idx as usize % n),
                    ..IpConfig::new(address, gateway)
                })
                .collect();
            CniResult {
                interfaces,
                ips,
                routes,
                dns: Dns {
                    nameservers,
                    domain,
                    ..Dns::default()
                },
                extra: Map::new(),
            }
        })
}

/// What survives encoding for `v`: the 1.1.0-only fields are gone below 1.1.0.
fn representable(r: &CniResult, v: Version) -> CniResult {
    let mut r = r.clone();
    if !v.has_1_1_fields() {
        for i in &mut r.interfaces {
            (i.mtu, i.socket_path, i.pci_id) = (None, None, None);
        }
        for rt in &mut r.routes {
            (rt.mtu, rt.advmss, rt.priority, rt.table, rt.scope) = (None, None, None, None, None);
        }
    }
    r
}

proptest! {
    #[test]
    fn encode_decode_round_trip(r in result()) {
        for v in Version::ALL {
            let encoded = r.encode(v);
            prop_assert_eq!(encoded["cniVersion"].as_str(), Some(v.as_str()));
            for ip in encoded["ips"].as_array().into_iter().flatten() {
                prop_assert_eq!(ip.get("version").is_some(), v.has_ip_version_field());
            }
            let decoded = CniResult::decode(&encoded, v).unwrap();
            prop_assert_eq!(&decoded, &representable(&r, v));
            // Up- and down-conversion: decoding one version's shape and encoding another's
            // equals encoding the other directly.
            for w in Version::ALL {
                prop_assert_eq!(decoded.encode(w), representable(&r, v).encode(w));
            }
        }
    }
}
