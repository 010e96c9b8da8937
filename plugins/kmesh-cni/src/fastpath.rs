//! Attaching and detaching one pod's fast path: the tc program on its host veth, its entries in
//! the `endpoints` map and, when enrolled, its `managed` entry. The only module that calls bpf.

use crate::error::from_bpf;
use crate::pod::PodNet;
use crate::record::{EndpointEntry, Record, State};
use conf::Result;
use host::{RecordKey, RecordStore};

/// The tcx link pin name for an attachment: readable (container ID prefix) and unique (a hash
/// of both parts, since `<cid>.<ifname>` could be read two ways).
pub fn attach_key(key: &RecordKey) -> String {
    let cid: String = key.container_id().chars().take(64).collect();
    format!("{cid}-{:016x}", owner(key))
}

/// The owner token stored in every map entry this attachment inserts.
pub fn owner(key: &RecordKey) -> u64 {
    bpf::owner_token(&[key.container_id(), key.ifname()])
}

/// Brings up the fast path for `pod`, recording each step first. On failure everything done so
/// far is undone (and the record dropped) before the error is returned.
pub fn attach(
    store: &RecordStore,
    key: &RecordKey,
    pin_root: &bpf::PinRoot,
    mode: bpf::Mode,
    pod: &PodNet,
    enrol_cookie: Option<u64>,
) -> Result<Record> {
    let owner = owner(key);
    let mut record = Record {
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
    let result = (|| -> Result<()> {
        let mut maps = bpf::Maps::open_or_create(pin_root).map_err(|e| from_bpf("open maps", e))?;
        record.attachment = Some(
            maps.attach(&record.host_veth, mode, &record.attach_key)
                .map_err(|e| from_bpf("attach", e))?,
        );
        for ep in &record.endpoints {
            maps.endpoints
                .insert(ep.ip, &ep.to_bpf())
                .map_err(|e| from_bpf("insert endpoint", e))?;
        }
        if let Some(cookie) = enrol_cookie {
            let value = bpf::Managed {
                flags: bpf::MANAGED_F_ENROLLED,
                ifindex: pod.host_veth.index,
            };
            maps.managed
                .insert(cookie, &value)
                .map_err(|e| from_bpf("enrol", e))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            record.state = State::Attached;
            store.write(key, &record)?;
            Ok(record)
        }
        Err(e) => {
            if let Err(undo) = detach(store, key, pin_root, &record) {
                tracing::error!(error = %undo, "undoing a failed attach");
            }
            Err(e)
        }
    }
}

/// Undoes everything `record` lists that is still ours, then drops the record. Everything
/// already gone (veth deleted with the netns, pins removed, entry taken over by a new pod) is
/// fine.
pub fn detach(
    store: &RecordStore,
    key: &RecordKey,
    pin_root: &bpf::PinRoot,
    record: &Record,
) -> Result<()> {
    // Map entries live in the pinned maps: if the pin root is gone (bpffs remounted, operator
    // rm) or never was on bpffs (a failed ADD with a bad pinRoot), there are none to remove,
    // and opening would only create empty maps or fail the DEL for nothing.
    if bpf::is_bpffs(pin_root.path()).unwrap_or(false) {
        let mut maps = bpf::Maps::open_or_create(pin_root).map_err(|e| from_bpf("open maps", e))?;
        for ep in &record.endpoints {
            maps.endpoints
                .remove_if_owner(ep.ip, &ep.to_bpf())
                .map_err(|e| from_bpf("remove endpoint", e))?;
        }
        if let Some(cookie) = record.netns_cookie {
            maps.managed
                .remove(cookie)
                .map_err(|e| from_bpf("unenrol", e))?;
        }
    }
    // The program itself must go whatever the pins say: a legacy tc filter lives on the veth,
    // not in bpffs, and nothing could find it again once the record is dropped.
    match &record.attachment {
        Some(att) => bpf::detach(pin_root, att),
        // Crashed between recording intent and attaching: clear whatever may be there.
        None => bpf::detach_key(pin_root, &record.attach_key, Some(&record.host_veth)),
    }
    .map_err(|e| from_bpf("detach", e))?;
    store.remove(key)?;
    Ok(())
}

/// What CHECK compares: the program is still attached and every entry is still ours.
pub fn verify(pin_root: &bpf::PinRoot, record: &Record) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    if record.state != State::Attached {
        problems.push("attachment never completed".to_string());
        return Ok(problems);
    }
    match &record.attachment {
        Some(att)
            if bpf::is_attached(pin_root, att).map_err(|e| from_bpf("query attachment", e))? => {}
        _ => problems.push(format!("program not attached to {}", record.host_veth)),
    }
    let maps = bpf::Maps::open_or_create(pin_root).map_err(|e| from_bpf("open maps", e))?;
    for ep in &record.endpoints {
        match maps
            .endpoints
            .get(ep.ip)
            .map_err(|e| from_bpf("read endpoint", e))?
        {
            Some(v) if v == ep.to_bpf() => {}
            Some(_) => problems.push(format!("endpoint {} now belongs to another pod", ep.ip)),
            None => problems.push(format!("endpoint {} missing", ep.ip)),
        }
    }
    if let Some(cookie) = record.netns_cookie {
        if maps
            .managed
            .get(cookie)
            .map_err(|e| from_bpf("read managed", e))?
            .is_none()
        {
            problems.push("mesh enrolment missing".to_string());
        }
    }
    Ok(problems)
}
