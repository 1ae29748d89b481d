//! Crash test: a child process (this test binary, re-executed) appends under load with
//! durability `Always` and prints every acknowledgement; the parent `kill -9`s it at random
//! moments, 20 times, and after each kill reopens the store and checks that every acknowledged
//! append is present and readable, that everything visible is something the child really
//! submitted, and that what was visible once stays visible.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use store::{Durability, NewMessage, QueueId, Store, StoreOptions};

const CHILD_ENV: &str = "BANTER_STORE_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "BANTER_STORE_CRASH_ROUND";
const THREADS: i64 = 4;

fn body_for(round: u32, t: i64, i: u64) -> Vec<u8> {
    let head = format!("r{round}-t{t}-{i}|");
    let mut b = head.into_bytes();
    let n = (i % 90) as usize + 10;
    for j in 0..n {
        b.push(b'a' + ((i as usize + j * 7) % 26) as u8);
    }
    b
}

/// Parses a body and checks that its padding is what `body_for` generates.
fn parse_body(b: &[u8]) -> Option<(u32, i64, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let (head, _) = s.split_once('|')?;
    let mut it = head.split('-');
    let round = it.next()?.strip_prefix('r')?.parse().ok()?;
    let t = it.next()?.strip_prefix('t')?.parse().ok()?;
    let i = it.next()?.parse().ok()?;
    (body_for(round, t, i) == b).then_some((round, t, i))
}

fn queues_for(t: i64, i: u64) -> Vec<QueueId> {
    vec![QueueId::user(1, t), QueueId::user(1, 100 + (i % 3) as i64)]
}

fn child_opts() -> StoreOptions {
    StoreOptions {
        durability: Durability::Always,
        segment_bytes: 64 * 1024,
        checkpoint_interval: Duration::from_millis(30),
        checkpoint_bytes: 32 * 1024,
        ..StoreOptions::default()
    }
}

/// Not a test of its own: the body of the child process (a no-op unless the parent set the
/// environment variable).
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u32 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let store = std::sync::Arc::new(Store::open(&dir, child_opts()).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let m = NewMessage {
                        key: None,
                        queues: queues_for(t, i),
                        device_id: t,
                        cmd: 4,
                        flag: 0,
                        timestamp: i as i64,
                        body: Bytes::from(body_for(round, t, i)),
                    };
                    let r = store.append_blocking(vec![m]).unwrap();
                    let line = format!("ack {round} {t} {i} {} {}\n", r[0][0].key, r[0][1].key);
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

/// Every entry of every queue the child writes to: (queue, key) → body.
fn visible(dir: &Path) -> BTreeMap<(QueueId, i64), (i64, Bytes)> {
    let s = Store::open(
        dir,
        StoreOptions {
            durability: Durability::None,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let mut out = BTreeMap::new();
    let queues = (0..THREADS)
        .map(|t| QueueId::user(1, t))
        .chain((100..103).map(|u| QueueId::user(1, u)));
    for q in queues {
        let mut after = 0;
        let mut prev = 0;
        loop {
            let p = s.sync(q, after, 3000).unwrap();
            for m in &p.messages {
                assert_eq!(m.prev_key, prev, "queue links are continuous");
                prev = m.key;
                out.insert((q, m.key), (m.prev_key, m.body.clone()));
            }
            after = p.last_key;
            if !p.has_more {
                break;
            }
        }
        assert_eq!(s.last_key(q), prev);
    }
    s.close().unwrap();
    out
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    // (queue, key) → body of every acknowledged append
    let mut acked: HashMap<(QueueId, i64), Vec<u8>> = HashMap::new();
    let mut seen: BTreeMap<(QueueId, i64), (i64, Bytes)> = BTreeMap::new();
    let mut total_acks = 0;
    for round in 0..20u32 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("ack "))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for l in &lines {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 6 {
                continue; // a line cut by the kill was never acknowledged to anyone
            }
            let (t, i): (i64, u64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
            let keys = [f[4].parse::<i64>().unwrap(), f[5].parse::<i64>().unwrap()];
            for (q, k) in queues_for(t, i).into_iter().zip(keys) {
                acked.insert((q, k), body_for(round, t, i));
            }
            total_acks += 1;
        }

        let now = visible(&dir);
        for ((q, k), body) in &acked {
            let got = now.get(&(*q, *k));
            assert_eq!(
                got.map(|g| g.1.as_ref()),
                Some(body.as_slice()),
                "round {round}: acknowledged append {q:?}/{k} is missing or different"
            );
        }
        for (k, v) in &seen {
            assert_eq!(
                now.get(k),
                Some(v),
                "round {round}: a visible entry disappeared"
            );
        }
        for ((q, key), (_, body)) in &now {
            let (r, t, i) = parse_body(body)
                .unwrap_or_else(|| panic!("round {round}: garbage visible at {q:?}/{key}"));
            assert!(r <= round);
            assert!(
                queues_for(t, i).contains(q),
                "entry in a queue it was not sent to"
            );
            if !seen.contains_key(&(*q, *key)) && !acked.contains_key(&(*q, *key)) {
                assert_eq!(
                    r, round,
                    "an unacknowledged entry of an earlier round appeared late"
                );
            }
        }
        seen = now;
    }
    eprintln!(
        "{total_acks} acknowledged appends over 20 kills, {} entries visible",
        seen.len()
    );
    assert!(total_acks > 0, "the child never acknowledged anything");
}
