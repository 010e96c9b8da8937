fn main() {
    conf::dispatch::run(
        &weft_sriov::Sriov::default(),
        concat!("CNI plugin weft-sriov v", env!("CARGO_PKG_VERSION")),
    )
}
