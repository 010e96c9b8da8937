//! Several weft-sriov processes at once, and processes killed halfway: two pods racing for one
//! VF, 20 pods on 20 VFs, and `kill -9` at points spread over a whole ADD followed by DEL or GC.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use integration::cni::PluginEnv;
use integration::sriov::Kind;
use serde_json::json;

const IFNAME: &str = "net1";

/// Two pods ADD the same VF at the same moment: one gets it, the other a clear "in use" (11)
/// and nothing of either is disturbed; the loser's DEL does not touch the winner's VF.
#[test]
fn two_pods_race_for_one_vf() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    let pods = [Pod::new("wsr-race"), Pod::new("wsr-race")];
    let conf = rig.conf(
        "1.0.0",
        0,
        json!({"vlan": 77, "ipam": weft_ipam("10.71.0.0/24")}),
    );
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| {
                let (rig, conf) = (&rig, &conf);
                s.spawn(move || rig.run(&rig.env("ADD", pod, IFNAME), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = (0..2).filter(|&i| outs[i].success()).collect();
    assert_eq!(winners.len(), 1, "exactly one ADD wins: {outs:?}");
    let (w, l) = (winners[0], 1 - winners[0]);
    let msg = assert_code(&outs[l], 11, "losing ADD");
    assert!(
        msg.contains(&rig.fake.vfs[0].pci) && msg.contains("in use"),
        "{msg}"
    );
    assert!(pods[l].link(IFNAME).is_none(), "the loser got an interface");
    assert!(pods[w].link(IFNAME).is_some());
    assert_eq!(rig.ipam_held("sriov-test"), 1, "the loser kept an address");
    // The loser's runtime cleans up: its DEL must leave the winner alone.
    rig.run(&rig.env("DEL", &pods[l], IFNAME), &conf)
        .assert_success("loser DEL");
    assert!(
        pods[w].link(IFNAME).is_some(),
        "the loser's DEL took the winner's VF"
    );
    assert_eq!(rig.fake.vf_pf_state(0)["vlan"], 77);
    let mut check = conf.clone();
    check["prevResult"] = outs[w].json();
    rig.run(&rig.env("CHECK", &pods[w], IFNAME), &check)
        .assert_success("winner CHECK");
    rig.run(&rig.env("DEL", &pods[w], IFNAME), &conf)
        .assert_success("winner DEL");
    assert_eq!(rig.ipam_held("sriov-test"), 0);
}

/// 20 pods, 20 VFs, all ADDs at once (one weft-ipam range), then all DELs at once.
#[test]
fn twenty_concurrent_adds_on_twenty_vfs() {
    if !prerequisites() {
        return;
    }
    const N: usize = 20;
    let rig = Rig::new(N as u32, Kind::Veth);
    let before: Vec<_> = (0..N).map(|i| rig.fake.host_state(i).unwrap()).collect();
    let pods: Vec<Pod> = (0..N).map(|_| Pod::new("wsr-20")).collect();
    let confs: Vec<_> = (0..N)
        .map(|i| {
            rig.conf(
                "1.0.0",
                i,
                json!({"vlan": 100 + i, "mac": format!("02:00:00:00:20:{i:02x}"),
                       "ipam": weft_ipam("10.72.0.0/24")}),
            )
        })
        .collect();
    let verb = |verb: &str| -> Vec<_> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..N)
                .map(|i| {
                    let (rig, pod, conf) = (&rig, &pods[i], &confs[i]);
                    let verb = verb.to_owned();
                    s.spawn(move || rig.run(&rig.env(&verb, pod, IFNAME), conf))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let adds = verb("ADD");
    let mut addresses = std::collections::HashSet::new();
    for (i, out) in adds.iter().enumerate() {
        out.assert_success(&format!("ADD {i}"));
        let r = out.json();
        assert!(
            addresses.insert(r["ips"][0]["address"].as_str().unwrap().to_owned()),
            "duplicate address"
        );
        let inside = pods[i]
            .link(IFNAME)
            .unwrap_or_else(|| panic!("pod {i} has no VF"));
        assert_eq!(inside.mac, format!("02:00:00:00:20:{i:02x}"));
        assert_eq!(rig.fake.vf_pf_state(i as u32)["vlan"], 100 + i);
        assert!(rig.fake.host_state(i).is_none());
    }
    for (i, out) in verb("DEL").iter().enumerate() {
        out.assert_success(&format!("DEL {i}"));
        rig.assert_restored(i, &before[i], &format!("VF {i}"));
    }
    assert!(rig.records().is_empty());
    assert_eq!(rig.ipam_held("sriov-test"), 0);
}

/// Runs ADD as a child and SIGKILLs it (by its own PID) after `delay`; waits for it.
fn add_killed_after(rig: &Rig, env: &PluginEnv, conf: &[u8], delay: Duration) {
    let mut cmd = Command::new(&rig.bin);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for k in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
        "WEFT_SYSFS_ROOT",
        "WEFT_SRIOV_FAKE_PF",
        "WEFT_STATE_DIR",
    ] {
        if let Some(v) = env.get(k) {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weft-sriov");
    use std::io::Write;
    let _ = child.stdin.take().unwrap().write_all(conf);
    std::thread::sleep(delay);
    let _ = child.kill();
    child.wait().expect("reap weft-sriov");
}

/// kill -9 at points spread over a whole ADD (PF settings, an altname, MAC and MTU), then DEL
/// or GC: every time the stand-in is back in the host with its original name, MAC, MTU,
/// altname and up state, the PF-side state is a fresh VF's, and nothing of ours is left.
#[test]
fn kill_9_anywhere_in_add_then_del_or_gc_restores_the_vf() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new(1, Kind::Veth);
    rig.add_altname(0);
    let before = rig.fake.host_state(0).unwrap();
    let conf = rig.conf(
        "1.1.0",
        0,
        json!({"vlan": 300, "mac": "02:00:00:00:99:01", "spoofchk": "off", "mtu": 1280}),
    );
    let stdin = serde_json::to_vec(&conf).unwrap();
    // How long one undisturbed ADD takes here: the kill points spread over it.
    let pod = Pod::new("wsr-kill");
    let start = Instant::now();
    rig.run(&rig.env("ADD", &pod, IFNAME), &conf)
        .assert_success("timing ADD");
    let full = start.elapsed();
    rig.run(&rig.env("DEL", &pod, IFNAME), &conf)
        .assert_success("timing DEL");
    rig.assert_restored(0, &before, "timing run");
    const POINTS: u32 = 24;
    // Where the kills landed: before the record, halfway (record, VF not in the pod yet or not
    // configured), after the move.
    let (mut before_record, mut halfway, mut moved) = (0, 0, 0);
    for i in 0..=POINTS {
        let delay = full * i / POINTS;
        let what = format!("kill after {delay:?} of {full:?}");
        add_killed_after(&rig, &rig.env("ADD", &pod, IFNAME), &stdin, delay);
        match (rig.records().is_empty(), pod.link(IFNAME).is_some()) {
            (true, _) => before_record += 1,
            (false, false) => halfway += 1,
            (false, true) => moved += 1,
        }
        let out = if i % 2 == 0 {
            rig.run(&rig.env("DEL", &pod, IFNAME), &conf)
        } else {
            let mut gc = conf.clone();
            gc["cni.dev/valid-attachments"] = json!([]);
            rig.run(&rig.env_global("GC"), &gc)
        };
        out.assert_success(&format!("{what}: cleanup"));
        rig.assert_restored(0, &before, &what);
        assert!(pod.link(IFNAME).is_none(), "{what}: VF left in the pod");
        assert!(
            rig.records().is_empty(),
            "{what}: records {:?}",
            rig.records()
        );
    }
    eprintln!(
        "kill -9 points: {before_record} before the record, {halfway} halfway, {moved} after the move"
    );
    assert!(halfway + moved > 0, "no kill landed inside ADD");
}
