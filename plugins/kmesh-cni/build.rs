// See ../../.cargo/link-order-build.rs.
include!("../../.cargo/link-order-build.rs");
