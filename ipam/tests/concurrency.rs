//! Many weft-ipam processes at once on one pool file, and processes killed with SIGKILL at
//! random points: never a duplicate, never an unreadable store.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};
use weft_ipam::store::file::FileStore;

fn conf(dir: &std::path::Path, net: &str) -> Value {
    json!({"cniVersion": "1.1.0", "name": net, "type": "bridge",
           "ipam": {"type": "weft-ipam", "range": "10.20.0.0/24", "ipRanges": [{"range": "fd20::/120"}],
                    "store": {"type": "file", "dir": dir}}})
}

fn run_parallel(n: usize, f: impl Fn(usize) -> Out + Sync) -> Vec<Out> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || f(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_256_adds_then_dels() {
    let tmp = state_dir();
    let c = conf(tmp.path(), "conc");
    let t = Instant::now();
    let outs = run_parallel(256, |i| Call::new("ADD", &format!("c{i}")).ipam(&c));
    let add_time = t.elapsed();

    // A /24 has 253 allocatable addresses (.0 network, .1 gateway, .255 broadcast), the /120
    // 254: exactly 253 ADDs succeed, 3 fail with 104 and hold nothing in either range.
    let mut seen: HashSet<String> = HashSet::new();
    let mut failed = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        if o.code() == 0 {
            for ip in result_ips(&o.json()) {
                assert!(seen.insert(ip.clone()), "duplicate address {ip}");
            }
        } else {
            let msg = o.err(104);
            assert!(msg.contains("exhausted"), "{msg}");
            failed.push(format!("c{i}"));
        }
    }
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(seen.len(), 253 * 2);
    let store = FileStore::new(tmp.path(), "conc").unwrap();
    let pool = store.list().unwrap();
    assert_eq!(pool.map.len(), 253 * 2);
    for id in &failed {
        assert!(
            pool.map.values().all(|o| o.container_id() != id),
            "{id} holds nothing"
        );
    }

    let t = Instant::now();
    let dels = run_parallel(256, |i| {
        Call::new("DEL", &format!("c{i}")).netns(None).ipam(&c)
    });
    let del_time = t.elapsed();
    assert!(dels.iter().all(|o| o.code() == 0), "every DEL succeeds");
    assert!(
        store.list().unwrap().map.is_empty(),
        "store empty after 256 DELs"
    );
    eprintln!(
        "FIGURE file store: 256 concurrent ADDs {add_time:?}, 256 concurrent DELs {del_time:?}"
    );
}

fn pool_owners(tmp: &tempfile::TempDir) -> usize {
    let pool = FileStore::new(tmp.path(), "killed")
        .unwrap()
        .list()
        .unwrap();
    pool.map
        .values()
        .map(|o| o.container_id())
        .collect::<HashSet<_>>()
        .len()
}

/// xorshift64: enough randomness for kill timing; the seed is printed to reproduce a run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_9_at_random_points_never_duplicates_or_corrupts() {
    let tmp = state_dir();
    let c = conf(tmp.path(), "killed");
    let seed = std::env::var("WEFT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 | 1
        });
    eprintln!("kill -9 test seed: WEFT_TEST_SEED={seed}");
    let rng = std::sync::Mutex::new(Rng(seed));
    let stdin = c.to_string();

    // Debug builds widen each step of the store transaction (see store/file.rs test_pause) so
    // kills also land between lock, temp write and rename.
    let add = |id: &str| Call::new("ADD", id).env("WEFT_IPAM_TEST_STEP_DELAY_US", "400");
    // Calibrate: how long one ADD takes here, so kills land anywhere from exec to exit.
    let t = Instant::now();
    for i in 0..5 {
        add(&format!("cal{i}")).ipam(&c).ok();
        Call::new("DEL", &format!("cal{i}")).ipam(&c).ok();
    }
    // Latency under concurrency is longer (lock queue): workers keep this updated from the
    // ADDs they did not kill.
    let span_us =
        std::sync::atomic::AtomicU64::new((t.elapsed().as_micros() as u64 / 10).max(500) * 3 / 2);

    // 200 ADDs, 16 at a time; about half are SIGKILLed after a random 0..1.5x ADD time.
    let results: Vec<(String, Option<Vec<String>>, bool)> = std::thread::scope(|s| {
        let chunks: Vec<_> = (0..16)
            .map(|w| {
                let (rng, stdin, add, span_us) = (&rng, &stdin, &add, &span_us);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in (w..200).step_by(16) {
                        let id = format!("k{i}");
                        let (kill, delay) = {
                            let mut r = rng.lock().unwrap();
                            let span = span_us.load(std::sync::atomic::Ordering::Relaxed);
                            (r.next() % 2 == 0, Duration::from_micros(r.next() % span))
                        };
                        let started = Instant::now();
                        let mut child = add(&id).command(&ipam_bin()).spawn().unwrap();
                        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
                        if kill {
                            std::thread::sleep(delay);
                            let _ = child.kill(); // SIGKILL to our own child, by PID
                        }
                        let o = child.wait_with_output().unwrap();
                        if !kill {
                            let us = started.elapsed().as_micros() as u64 * 3 / 2;
                            span_us.store(us.max(500), std::sync::atomic::Ordering::Relaxed);
                        }
                        let ips = o
                            .status
                            .success()
                            .then(|| result_ips(&serde_json::from_slice(&o.stdout).unwrap()));
                        let killed = o.status.code().is_none();
                        out.push((id, ips, killed));
                    }
                    out
                })
            })
            .collect();
        chunks.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let killed = results.iter().filter(|r| r.2).count();
    let ok: Vec<&(String, Option<Vec<String>>, bool)> =
        results.iter().filter(|r| r.1.is_some()).collect();
    let committed_then_killed = pool_owners(&tmp) - ok.len();
    eprintln!(
        "{} ADDs succeeded, {killed} killed ({committed_then_killed} of them after their reservation was written)",
        ok.len()
    );
    assert!(
        killed > 0,
        "the test must actually kill some ADDs (seed {seed})"
    );

    // Every printed address is unique and is exactly what the store holds for that owner.
    let store = FileStore::new(tmp.path(), "killed").unwrap();
    let pool = store.list().expect("store readable after kill -9");
    let mut printed: HashMap<String, String> = HashMap::new();
    for (id, ips, _) in &ok {
        for ip in ips.as_ref().unwrap() {
            assert!(
                printed.insert(ip.clone(), id.clone()).is_none(),
                "duplicate {ip}"
            );
            let owner = pool
                .map
                .get(&ip.parse().unwrap())
                .map(|o| o.container_id().to_owned());
            assert_eq!(
                owner.as_deref(),
                Some(id.as_str()),
                "{ip} held by its ADD's container"
            );
        }
    }
    // Reservations of killed ADDs (result never seen) exist at most once per owner and range.
    let mut per_owner: HashMap<&str, usize> = HashMap::new();
    for o in pool.map.values() {
        *per_owner.entry(o.container_id()).or_default() += 1;
    }
    assert!(
        per_owner.values().all(|&n| n == 2),
        "each owner holds one v4 + one v6: {per_owner:?}"
    );

    // GC with the successful attachments reclaims everything else.
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = ok
        .iter()
        .map(|(id, _, _)| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    Call::node_wide("GC").ipam(&gc).ok();
    let pool = store.list().unwrap();
    assert_eq!(
        pool.map.len(),
        ok.len() * 2,
        "GC left exactly the live attachments"
    );
    let live: HashSet<&str> = ok.iter().map(|r| r.0.as_str()).collect();
    assert!(pool.map.values().all(|o| live.contains(o.container_id())));
}
