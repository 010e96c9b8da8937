//! Attaching and detaching one pod's fast path: the tc program on its host veth, its entries in
//! the `endpoints` map and, when enrolled, its `managed` entry. The only module that calls bpf.

use crate::error::{KmeshError, Result};
use crate::pod::PodNet;
use crate::record::{EndpointEntry, Record, State};
use conf::AttachmentKey;
use host::RecordStore;

/// The tcx link pin name for an attachment: readable (container ID prefix) and unique (a hash
/// of every part, since `<cid>.<ifname>` could be read two ways).
pub fn attach_key(key: &AttachmentKey) -> String {
    let cid: String = key.container_id().chars().take(64).collect();
    format!("{cid}-{:016x}", owner(key))
}

/// The owner token stored in every map entry this attachment inserts.
pub fn owner(key: &AttachmentKey) -> u64 {
    bpf::owner_token(&[
        key.network().unwrap_or_default(),
        key.container_id(),
        key.ifname(),
    ])
}

/// Brings up the fast path for `pod` in `key`'s network, recording each step first. On failure
/// everything done so far is undone (and the record dropped) before the error is returned.
pub fn attach(
    store: &RecordStore,
    key: &AttachmentKey,
    pin_root: &bpf::PinRoot,
    mode: bpf::Mode,
    pod: &PodNet,
    enrol_cookie: Option<u64>,
) -> Result<Record> {
    let owner = owner(key);
    let network = key.network().expect("ADD keys name their network");
    let mut record = Record {
        layout: bpf::LAYOUT_VERSION,
        network: Some(network.to_owned()),
        network_id: bpf::network_id(network),
        pin_root: Some(pin_root.path().to_path_buf()),
        owner,
        state: State::Attaching,
        netns: pod.netns.display().to_string(),
        host_veth: pod.host_veth.name.clone(),
        host_ifindex: pod.host_veth.index,
        attach_key: attach_key(key),
        mode,
        attachment: None,
        endpoints: pod
            .ips
            .iter()
            .map(|&ip| EndpointEntry {
                ip,
                ifindex: pod.host_veth.index,
                pod_mac: pod.pod_mac,
                host_mac: pod.host_mac,
                routed: pod.routed,
                owner,
            })
            .collect(),
        netns_cookie: enrol_cookie,
    };
    store.write(key, &record)?;
    crate::steps::mark("record-attaching");
    let result = (|| -> Result<()> {
        let mut maps = bpf::Maps::open_or_create(pin_root).map_err(KmeshError::bpf("open maps"))?;
        crate::steps::mark("maps-open");
        // The device entry first: the program looks nothing up for a veth it cannot place
        // in a network, so until then it passes everything.
        maps.devices
            .insert(record.host_ifindex, &record.device())
            .map_err(KmeshError::bpf("insert device"))?;
        crate::steps::mark("device-entry");
        record.attachment = Some(
            maps.attach(&record.host_veth, mode, &record.attach_key)
                .map_err(KmeshError::bpf("attach"))?,
        );
        crate::steps::mark("attach");
        for ep in &record.endpoints {
            maps.endpoints
                .insert(record.network_id, ep.ip, &ep.to_bpf())
                .map_err(KmeshError::bpf("insert endpoint"))?;
        }
        if let Some(cookie) = enrol_cookie {
            maps.managed
                .insert(cookie, &record.managed())
                .map_err(KmeshError::bpf("enrol"))?;
        }
        crate::steps::mark("endpoint-entries");
        Ok(())
    })();
    match result {
        Ok(()) => {
            record.state = State::Attached;
            let written = final_write(store, key, &record);
            crate::steps::mark("record-attached");
            match written {
                Ok(()) => Ok(record),
                // Everything is in place but the record cannot say so (a full disk): a failed
                // ADD leaves nothing, so take it all back (the Attaching record on disk still
                // lists it all, and removing files needs no space).
                Err(e) => {
                    if let Err(undo) = detach(store, key, pin_root, &record) {
                        tracing::error!(error = %undo, "undoing an ADD whose record could not be finished");
                    }
                    Err(e.into())
                }
            }
        }
        Err(e) => {
            if let Err(undo) = detach(store, key, pin_root, &record) {
                tracing::error!(error = %undo, "undoing a failed attach");
            }
            Err(e)
        }
    }
}

/// The record write that completes an ADD. Debug builds only: `WEFT_KMESH_TEST_FAIL_FINAL_WRITE`
/// makes it fail as a full disk would, which a test cannot time otherwise.
fn final_write(
    store: &RecordStore,
    key: &AttachmentKey,
    record: &Record,
) -> std::result::Result<(), host::HostError> {
    #[cfg(debug_assertions)]
    if std::env::var_os("WEFT_KMESH_TEST_FAIL_FINAL_WRITE").is_some() {
        return Err(host::HostError::Io {
            context: "test hook: final record write".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
    }
    store.write(key, record)
}

/// Undoes everything `record` (stored under `key`) lists that is still ours, then drops the
/// record. Everything already gone (veth deleted with the netns, pins removed, entry taken over
/// by a new pod) is fine. `configured` is the config's pin root, used only for layout-1 records,
/// which did not record theirs.
pub fn detach(
    store: &RecordStore,
    key: &AttachmentKey,
    configured: &bpf::PinRoot,
    record: &Record,
) -> Result<()> {
    let pin_root = record.pin_root(configured);
    // Map entries live in the pinned maps: if the pin root is gone (bpffs remounted, operator
    // rm) or never was on bpffs (a failed ADD with a bad pinRoot), there are none to remove,
    // and opening would only create empty maps or fail the DEL for nothing.
    if bpf::is_bpffs(pin_root.path()).unwrap_or(false) {
        if record.is_layout_1() {
            remove_layout_1_entries(&pin_root, record)?;
        } else {
            remove_entries(&pin_root, record)?;
        }
    }
    crate::steps::mark("map-entries");
    // The program itself must go whatever the pins say: a legacy tc filter lives on the veth,
    // not in bpffs, and nothing could find it again once the record is dropped.
    match &record.attachment {
        Some(att) => bpf::detach(&pin_root, att),
        // Crashed between recording intent and attaching: clear whatever may be there.
        None => bpf::detach_key(&pin_root, &record.attach_key, Some(&record.host_veth)),
    }
    .map_err(KmeshError::bpf("detach"))?;
    crate::steps::mark("detach");
    store.remove(key)?;
    crate::steps::mark("record-removed");
    Ok(())
}

fn remove_entries(pin_root: &bpf::PinRoot, record: &Record) -> Result<()> {
    let mut maps = bpf::Maps::open_or_create(pin_root).map_err(KmeshError::bpf("open maps"))?;
    for ep in &record.endpoints {
        maps.endpoints
            .remove_if_owner(record.network_id, ep.ip, &ep.to_bpf())
            .map_err(KmeshError::bpf("remove endpoint"))?;
    }
    if let Some(cookie) = record.netns_cookie {
        maps.managed
            .remove_if_owner(cookie, &record.managed())
            .map_err(KmeshError::bpf("unenrol"))?;
    }
    maps.devices
        .remove_if_owner(record.host_ifindex, &record.device())
        .map_err(KmeshError::bpf("remove device"))?;
    Ok(())
}

/// A record of a release before network scoping: its entries are in the layout-1 maps.
fn remove_layout_1_entries(pin_root: &bpf::PinRoot, record: &Record) -> Result<()> {
    let mut maps =
        bpf::LegacyMaps::open(pin_root).map_err(KmeshError::bpf("open layout-1 maps"))?;
    for ep in &record.endpoints {
        maps.remove_endpoint_if_owner(ep.ip, &ep.to_bpf())
            .map_err(KmeshError::bpf("remove endpoint"))?;
    }
    if let Some(cookie) = record.netns_cookie {
        maps.remove_managed(cookie)
            .map_err(KmeshError::bpf("unenrol"))?;
    }
    Ok(())
}

/// What CHECK compares: the program is still attached and every entry is still ours.
pub fn verify(configured: &bpf::PinRoot, record: &Record) -> Result<Vec<String>> {
    let pin_root = record.pin_root(configured);
    let mut problems = Vec::new();
    if record.state != State::Attached {
        problems.push("attachment never completed".to_string());
        return Ok(problems);
    }
    let tc_filter = |ifindex, priority, handle| {
        host::link::tc_ingress_filter_prog(None, ifindex, priority, handle)
            .map_err(std::io::Error::other)
    };
    match &record.attachment {
        Some(att)
            if bpf::is_attached(&pin_root, att, tc_filter)
                .map_err(KmeshError::bpf("query attachment"))? => {}
        _ => problems.push(format!("program not attached to {}", record.host_veth)),
    }
    let (found, enrolled) = if record.is_layout_1() {
        let maps =
            bpf::LegacyMaps::open(&pin_root).map_err(KmeshError::bpf("open layout-1 maps"))?;
        let mut found = Vec::new();
        for ep in &record.endpoints {
            found.push((
                ep,
                maps.endpoint(ep.ip)
                    .map_err(KmeshError::bpf("read endpoint"))?,
            ));
        }
        let enrolled = match record.netns_cookie {
            Some(cookie) => Some(
                maps.managed(cookie)
                    .map_err(KmeshError::bpf("read managed"))?
                    .is_some(),
            ),
            None => None,
        };
        (found, enrolled)
    } else {
        let maps = bpf::Maps::open_or_create(&pin_root).map_err(KmeshError::bpf("open maps"))?;
        let mut found = Vec::new();
        for ep in &record.endpoints {
            let got = maps
                .endpoints
                .get(record.network_id, ep.ip)
                .map_err(KmeshError::bpf("read endpoint"))?;
            found.push((ep, got));
        }
        match maps
            .devices
            .get(record.host_ifindex)
            .map_err(KmeshError::bpf("read device"))?
        {
            Some(d) if d == record.device() => {}
            Some(_) => problems.push(format!(
                "device entry of {} now belongs to another pod",
                record.host_veth
            )),
            None => problems.push(format!("device entry of {} missing", record.host_veth)),
        }
        let enrolled = match record.netns_cookie {
            Some(cookie) => Some(
                maps.managed
                    .get(cookie)
                    .map_err(KmeshError::bpf("read managed"))?
                    .is_some(),
            ),
            None => None,
        };
        (found, enrolled)
    };
    for (ep, got) in found {
        match got {
            Some(v) if v == ep.to_bpf() => {}
            Some(_) => problems.push(format!("endpoint {} now belongs to another pod", ep.ip)),
            None => problems.push(format!("endpoint {} missing", ep.ip)),
        }
    }
    if enrolled == Some(false) {
        problems.push("mesh enrolment missing".to_string());
    }
    Ok(problems)
}
