//! Import of GoBelieve data directories (generated from the format description): every queue's
//! entries arrive in order, GoBelieve sync keys translate to exactly "what comes after", a second
//! run changes nothing, an interrupted run resumes (also after dying between the store append and
//! its checkpoint), and damaged block files are reported and skipped.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::BTreeMap;
use std::path::Path;

use store::gobelieve::gen::{generate, GenOptions, Generated};
use store::gobelieve::{import, GbQueue, ImportOptions, ImportReport};
use store::{QueueId, Store, StoreOptions};

fn gen(dir: &Path, messages: u64) -> Generated {
    generate(
        dir,
        &GenOptions {
            messages,
            users: 40,
            groups: 6,
            seed: 11,
            block_limit: 64 << 10,
            keep_truth: true,
            ..GenOptions::default()
        },
    )
    .unwrap()
}

fn qid(q: GbQueue) -> QueueId {
    match q {
        GbQueue::User { appid, uid } => QueueId::user(appid, uid),
        GbQueue::Group { appid, gid } => QueueId::group(appid, gid),
    }
}

/// Every entry of `q` after `key`, as (cmd, body), following `has_more`.
fn all_after(store: &Store, q: QueueId, key: i64) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut k = key;
    loop {
        let page = store.sync(q, k, 100).unwrap();
        out.extend(page.messages.iter().map(|m| (m.cmd, m.body.to_vec())));
        if !page.has_more {
            return out;
        }
        k = page.last_key;
    }
}

fn run(from: &Path, to: &Path, opts: ImportOptions) -> ImportReport {
    import(from, to, opts).unwrap()
}

fn small_batches() -> ImportOptions {
    ImportOptions {
        batch_messages: 97,
        ..ImportOptions::default()
    }
}

fn check_all(store_dir: &Path, g: &Generated) {
    let store = Store::open(store_dir, StoreOptions::default()).unwrap();
    for (q, entries) in &g.queues {
        let want: Vec<(u8, Vec<u8>)> = entries.iter().map(|e| (e.1, e.2.clone())).collect();
        assert_eq!(all_after(&store, qid(*q), 0), want, "queue {q:?}");
    }
    store.close().unwrap();
}

fn dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in [dir.to_path_buf(), dir.join("gobelieve")] {
        for e in std::fs::read_dir(&sub).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            if e.file_type().unwrap().is_file() && (name.ends_with(".seg") || sub != dir) {
                out.insert(name, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn imports_every_queue_in_order_and_translates_keys() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("gb"), t.path().join("store"));
    let g = gen(&src, 3000);
    assert!(
        std::fs::metadata(src.join("message_3")).is_ok(),
        "several blocks"
    );
    let r = run(&src, &dst, small_batches());
    assert_eq!(r.messages, g.entries);
    assert_eq!(r.total_entries, g.entries);
    // the legacy records of an older version are reported, nothing else
    assert_eq!(r.problem_count(), 2, "{r}");
    assert_eq!(
        r.problems.get("index record of an older GoBelieve version"),
        Some(&1)
    );
    assert_eq!(
        r.problems.get("deprecated customer-service record"),
        Some(&1)
    );
    check_all(&dst, &g);

    let store = Store::open(&dst, StoreOptions::default()).unwrap();
    let mut checked = 0;
    let all_ids: Vec<i64> = {
        let mut v: Vec<i64> = g.queues.values().flatten().map(|e| e.0).collect();
        v.sort_unstable();
        v
    };
    for (q, entries) in g.queues.iter().take(12) {
        let q = qid(*q);
        for cut in [0, 1, entries.len() / 2, entries.len() - 1, entries.len()] {
            // a client that synced up to entry `cut` holds that entry's GoBelieve id
            let key = if cut == 0 {
                entries[0].0 - 1
            } else {
                entries[cut - 1].0
            };
            let want: Vec<(u8, Vec<u8>)> =
                entries[cut..].iter().map(|e| (e.1, e.2.clone())).collect();
            assert_eq!(all_after(&store, q, key), want, "{q:?} after entry {cut}");
            // a key of another queue between two of this queue's entries
            if cut > 0 && cut < entries.len() {
                let other = all_ids
                    .iter()
                    .find(|&&id| id > entries[cut - 1].0 && id < entries[cut].0);
                if let Some(&other) = other {
                    assert_eq!(all_after(&store, q, other), want);
                }
            }
            // nothing is new: the translated key is the queue's newest entry, and unread is 0
            let t = store.translate_legacy_key(q, key).unwrap();
            if cut == entries.len() {
                assert_eq!(t, store.last_key(q));
                assert_eq!(store.new_count(q, key).unwrap(), 0);
            } else {
                assert_eq!(
                    store.new_count(q, key).unwrap(),
                    (entries.len() - cut) as u64
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 50);
    // banter keys are above every GoBelieve id and are left alone
    let q = qid(*g.queues.keys().next().unwrap());
    let last = store.last_key(q);
    assert!(last > *all_ids.last().unwrap());
    assert_eq!(store.translate_legacy_key(q, last).unwrap(), last);
    assert_eq!(store.translate_legacy_key(q, 0).unwrap(), 0);
    store.close().unwrap();
}

#[test]
fn a_second_run_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("gb"), t.path().join("store"));
    let g = gen(&src, 800);
    run(&src, &dst, small_batches());
    let before = dir_bytes(&dst);
    let r = run(&src, &dst, small_batches());
    assert_eq!(r.messages, 0, "{r}");
    assert_eq!(r.problem_count(), 0, "problems are not counted twice: {r}");
    assert_eq!(r.total_entries, g.entries);
    assert!(r.to_string().contains("already imported"));
    assert_eq!(dir_bytes(&dst), before);
    check_all(&dst, &g);
}

#[test]
fn an_interrupted_import_resumes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("gb"), t.path().join("store"));
    let g = gen(&src, 1500);
    let first = run(
        &src,
        &dst,
        ImportOptions {
            stop_after: Some(500),
            ..small_batches()
        },
    );
    assert!(first.messages >= 500 && first.messages < g.entries);
    // the run dies after the store took a batch but before its checkpoint: keep the old state
    let state = std::fs::read(dst.join("gobelieve/state")).unwrap();
    let second = run(
        &src,
        &dst,
        ImportOptions {
            stop_after: Some(300),
            ..small_batches()
        },
    );
    assert!(second.resumed);
    std::fs::write(dst.join("gobelieve/state"), state).unwrap();
    let last = run(&src, &dst, small_batches());
    assert!(last.resumed);
    assert_eq!(last.total_entries, g.entries, "{last}");
    check_all(&dst, &g);
    let store = Store::open(&dst, StoreOptions::default()).unwrap();
    for (q, entries) in g.queues.iter().take(10) {
        let k = entries[entries.len() / 2].0;
        let want: Vec<(u8, Vec<u8>)> = entries[entries.len() / 2 + 1..]
            .iter()
            .map(|e| (e.1, e.2.clone()))
            .collect();
        assert_eq!(all_after(&store, qid(*q), k), want);
    }
    store.close().unwrap();
}

#[test]
fn damaged_blocks_are_reported_and_skipped() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("gb"), t.path().join("store"));
    let g = gen(&src, 2000);
    // corrupt a record in the middle of block 1
    let b1 = src.join("message_1");
    let mut bytes = std::fs::read(&b1).unwrap();
    let mid = bytes.len() / 2;
    let at = mid
        + bytes[mid..]
            .windows(4)
            .position(|w| w == [0x49, 0x4D, 0x49, 0x4D])
            .unwrap();
    bytes[at..at + 8].copy_from_slice(&[0xFF; 8]);
    std::fs::write(&b1, &bytes).unwrap();
    // a block whose header is garbage
    let b2 = src.join("message_2");
    let mut bytes = std::fs::read(&b2).unwrap();
    bytes[0..4].copy_from_slice(b"XXXX");
    std::fs::write(&b2, &bytes).unwrap();
    // cut the last block in the middle of a record (a torn write)
    let last = (0..)
        .map(|n| src.join(format!("message_{n}")))
        .take_while(|p| p.exists())
        .last()
        .unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 30)
        .unwrap();
    let r = run(&src, &dst, small_batches());
    let text = r.to_string();
    assert!(r.problems.contains_key("corrupt bytes"), "{text}");
    assert!(r.problems.contains_key("unreadable block file"), "{text}");
    assert!(r.problems.contains_key("truncated record"), "{text}");
    assert!(text.contains("message_1 offset"), "{text}");
    assert!(text.contains("message_2 offset 0"), "{text}");
    // everything outside the damage is there, in order
    assert!(r.messages < g.entries);
    assert!(
        r.messages > g.entries - 600,
        "{} of {}",
        r.messages,
        g.entries
    );
    let store = Store::open(&dst, StoreOptions::default()).unwrap();
    let mut got_total = 0;
    for (q, entries) in &g.queues {
        let got = all_after(&store, qid(*q), 0);
        got_total += got.len() as u64;
        // a subsequence of the original queue
        let mut it = entries.iter();
        for m in &got {
            assert!(
                it.any(|e| e.1 == m.0 && e.2 == m.1),
                "{q:?}: order or content differs"
            );
        }
    }
    assert_eq!(got_total, r.messages);
    store.close().unwrap();
}

#[test]
fn refuses_a_store_with_other_data_and_a_directory_without_blocks() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("gb"), t.path().join("store"));
    gen(&src, 50);
    let s = Store::open(&dst, StoreOptions::default()).unwrap();
    s.append_blocking(vec![store::NewMessage {
        key: None,
        queues: vec![QueueId::user(1, 1)],
        device_id: 0,
        cmd: 4,
        flag: 0,
        timestamp: 0,
        body: bytes::Bytes::from_static(b"x"),
    }])
    .unwrap();
    s.close().unwrap();
    drop(s);
    let e = import(&src, &dst, ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("already holds messages"), "{e}");
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = import(&empty, &t.path().join("s2"), ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no GoBelieve block files"), "{e}");
}

/// The CI-sized version of the measured run (`docs/benchmarks.md`, "GoBelieve import"): 20,000
/// messages for 1,000 users and 20 groups, at GoBelieve's real block size, import completely.
#[test]
fn twenty_thousand_messages_import_completely() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("gb"), t.path().join("store"));
    let g = generate(
        &src,
        &GenOptions {
            messages: 20_000,
            users: 1000,
            groups: 20,
            seed: 3,
            keep_truth: true,
            ..GenOptions::default()
        },
    )
    .unwrap();
    let r = run(&src, &dst, ImportOptions::default());
    assert_eq!(r.messages, g.entries);
    assert_eq!(r.users + r.groups, g.queues.len() as u64);
    check_all(&dst, &g);
}
