//! The kernel's floor for P1-chain (issue 12): the smallest program that does the kernel work
//! kmesh-cni's ADD and DEL do to a pod's veth, and nothing else. It attaches the redirect
//! program kmesh-cni pinned to a veth's ingress, or detaches it, in the mode kmesh-cni chose,
//! through the same functions kmesh-cni uses ([`bpf::attach_program`], [`bpf::detach`]), and
//! exits. `weft-bench chain` execs it beside the plugin and prints the two side by side.
//!
//!   weft-attach-floor attach|detach tc|tcx <pin root> <ifname>
//!
//! No maps, no records, no netns entry, no config; the tcx link is pinned under the key
//! `floor-<ifname>`.

use bpf::{Attachment, Mode, PinRoot};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [verb, mode, root, ifname] = args.as_slice() else {
        return Err("usage: weft-attach-floor attach|detach tc|tcx <pin root> <ifname>".into());
    };
    let mode = match mode.as_str() {
        "tc" => Mode::Tc,
        "tcx" => Mode::Tcx,
        other => return Err(format!("unknown mode {other}").into()),
    };
    let root = PinRoot::new(root);
    let key = format!("floor-{ifname}");
    match verb.as_str() {
        "attach" => {
            let mut prog = bpf::pinned_program(&root)?
                .ok_or("no pinned redirect program of this build: run a kmesh-cni ADD first")?;
            bpf::attach_program(&mut prog, &root, ifname, mode, &key)?;
        }
        "detach" => {
            let attachment = Attachment {
                key,
                ifname: ifname.clone(),
                ifindex: nix::net::if_::if_nametoindex(ifname.as_str())?,
                mode,
                prog_id: 0, // detach does not need it
            };
            bpf::detach(&root, &attachment)?;
        }
        other => return Err(format!("unknown verb {other}").into()),
    }
    Ok(())
}
