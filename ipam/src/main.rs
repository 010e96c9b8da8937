fn main() {
    conf::dispatch::run(
        &weft_ipam::IpamPlugin,
        "weft-ipam: whereabouts-style IPAM (file store, etcd store)",
    )
}
