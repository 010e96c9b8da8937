fn main() {
    conf::dispatch::run(
        &kmesh_cni::KmeshCni,
        concat!("CNI plugin kmesh-cni v", env!("CARGO_PKG_VERSION")),
    )
}
