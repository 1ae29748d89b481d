//! Recovery: torn tails cut at every byte of the final records, zero-filled tails, corruption in
//! the middle (refused with file and offset), `check` and `repair`, lost checkpoints.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{copy_dir, msg};
use store::{tools, Durability, QueueId, Store, StoreError, StoreOptions};

const A: QueueId = QueueId::User { appid: 1, uid: 1 };
const B: QueueId = QueueId::User { appid: 1, uid: 2 };

fn opts() -> StoreOptions {
    StoreOptions {
        durability: Durability::None,
        ..StoreOptions::default()
    }
}

fn segment_path(dir: &Path) -> PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// Builds a store with `early` checkpointed records and `late` records after the checkpoint,
/// and returns a crash snapshot plus, for every record, (end position, keys per queue).
/// For each record: its end position and the (queue, key) of each of its entries.
type Records = Vec<(u64, Vec<(QueueId, i64)>)>;

fn build(root: &Path, early: usize, late: usize) -> (PathBuf, Records) {
    let live = root.join("live");
    let snap = root.join("snap");
    let s = Store::open(&live, opts()).unwrap();
    let mut recs = Vec::new();
    for i in 0..early + late {
        if i == early {
            s.checkpoint().unwrap();
        }
        let qs: &[QueueId] = if i % 2 == 0 { &[A, B] } else { &[B] };
        let r = s
            .append_blocking(vec![msg(qs, &"x".repeat(i * 7 % 40))])
            .unwrap();
        recs.push((
            s.log_end(),
            qs.iter().copied().zip(r[0].iter().map(|a| a.key)).collect(),
        ));
    }
    copy_dir(&live, &snap);
    drop(s);
    (snap, recs)
}

fn expected_keys(recs: &Records, upto: u64, q: QueueId) -> Vec<i64> {
    recs.iter()
        .filter(|(end, _)| *end <= upto)
        .flat_map(|(_, ks)| ks.iter().filter(|(qq, _)| *qq == q).map(|(_, k)| *k))
        .collect()
}

fn keys_of(s: &Store, q: QueueId) -> Vec<i64> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let p = s.sync(q, after, 3000).unwrap();
        out.extend(p.messages.iter().map(|m| m.key));
        after = p.last_key;
        if !p.has_more {
            return out;
        }
    }
}

#[test]
fn torn_tail_at_every_byte_of_the_final_records() {
    let root = tempfile::tempdir().unwrap();
    let (snap, recs) = build(root.path(), 20, 4);
    let seg = segment_path(&snap);
    let header = 32u64;
    let first_cut = recs[19].0; // end of the checkpointed records
    let last = recs.last().unwrap().0;
    for cut in first_cut..=last {
        let dir = root.path().join(format!("cut{cut}"));
        copy_dir(&snap, &dir);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(seg.file_name().unwrap()))
            .unwrap();
        f.set_len(header + cut).unwrap();
        drop(f);
        let s = Store::open(&dir, opts()).unwrap();
        let whole = recs
            .iter()
            .filter(|(e, _)| *e <= cut)
            .map(|r| r.0)
            .max()
            .unwrap_or(0);
        assert_eq!(s.log_end(), whole, "cut at {cut}");
        for q in [A, B] {
            assert_eq!(keys_of(&s, q), expected_keys(&recs, cut, q), "cut at {cut}");
        }
        // the log continues cleanly after the truncation
        let r = s.append_blocking(vec![msg(&[A], "after")]).unwrap();
        assert_eq!(
            r[0][0].prev_key,
            expected_keys(&recs, cut, A).last().copied().unwrap_or(0)
        );
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn zero_filled_tail_is_truncated() {
    let root = tempfile::tempdir().unwrap();
    let (snap, recs) = build(root.path(), 5, 3);
    let seg = segment_path(&snap);
    let cut = recs[6].0 + 10; // inside the last record
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(32 + cut).unwrap();
    f.write_all_at(&[0u8; 4096], 32 + cut).unwrap();
    drop(f);
    let s = Store::open(&snap, opts()).unwrap();
    assert_eq!(s.log_end(), recs[6].0);
    assert_eq!(keys_of(&s, B), expected_keys(&recs, recs[6].0, B));
}

#[test]
fn corruption_in_the_middle_stops_start_up_and_repair_truncates_there() {
    let root = tempfile::tempdir().unwrap();
    let (snap, recs) = build(root.path(), 2, 10);
    let seg = segment_path(&snap);
    // flip a body byte of record 5 (after the checkpoint, so replay reads it)
    let bad_pos = recs[4].0;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 32 + bad_pos + 50).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, 32 + bad_pos + 50).unwrap();
    drop(f);

    match Store::open(&snap, opts()) {
        Err(StoreError::Corrupt { file, offset, .. }) => {
            assert_eq!(file.file_name(), seg.file_name());
            assert_eq!(offset, 32 + bad_pos);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a corrupt record in the middle must stop start-up"),
    }
    let report = tools::check(&snap).unwrap();
    assert!(!report.is_clean());
    let p = report.problem.clone().unwrap();
    assert_eq!((p.offset, p.torn_tail), (32 + bad_pos, false));
    assert!(report.to_string().contains("PROBLEM"));

    let plan = tools::repair_plan(&snap).unwrap();
    assert_eq!(plan.truncated.as_ref().map(|t| t.1), Some(32 + bad_pos));
    let r = tools::repair(&snap).unwrap();
    assert!(r.changed());
    assert!(r.to_string().contains("truncated"));
    assert!(tools::check(&snap).unwrap().is_clean());
    let s = Store::open(&snap, opts()).unwrap();
    assert_eq!(s.log_end(), bad_pos);
    for q in [A, B] {
        assert_eq!(keys_of(&s, q), expected_keys(&recs, bad_pos, q));
    }
}

#[test]
fn check_is_clean_on_a_healthy_store_and_tools_refuse_an_open_store() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let s = Store::open(
        &dir,
        StoreOptions {
            segment_bytes: 4096,
            ..opts()
        },
    )
    .unwrap();
    for i in 0..100 {
        s.append_blocking(vec![msg(&[A, B], &format!("{i}"))])
            .unwrap();
    }
    assert!(matches!(tools::check(&dir), Err(StoreError::Locked(..))));
    s.close().unwrap();
    drop(s);
    let r = tools::check(&dir).unwrap();
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.records, 100);
    assert_eq!(r.entries, 200);
    assert_eq!(r.queues, 2);
    assert!(r.segments.len() > 1);
    assert!(!tools::repair(&dir).unwrap().changed());
}

#[test]
fn missing_fsynced_data_is_reported_not_papered_over() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let s = Store::open(&dir, opts()).unwrap();
    for i in 0..10 {
        s.append_blocking(vec![msg(&[A], &format!("{i}"))]).unwrap();
    }
    s.close().unwrap();
    drop(s);
    // the checkpoint covers the whole log; lose its last bytes
    let seg = segment_path(&dir);
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    assert!(matches!(
        Store::open(&dir, opts()),
        Err(StoreError::Corrupt { .. })
    ));
    // repair drops the bad tail and the checkpoint that covered it
    let r = tools::repair(&dir).unwrap();
    assert!(!r.removed_checkpoints.is_empty());
    let s = Store::open(&dir, opts()).unwrap();
    assert_eq!(keys_of(&s, A).len(), 9);
}

#[test]
fn corrupt_checkpoint_falls_back_to_the_other_or_to_replay() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let s = Store::open(&dir, opts()).unwrap();
    for i in 0..30 {
        s.append_blocking(vec![msg(&[A], &format!("{i}"))]).unwrap();
        if i % 10 == 0 {
            s.checkpoint().unwrap();
        }
    }
    let want = keys_of(&s, A);
    s.close().unwrap();
    drop(s);
    for name in ["checkpoint-a", "checkpoint-b"] {
        let p = dir.join(name);
        if p.exists() {
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n / 2] ^= 1;
            std::fs::write(&p, b).unwrap();
            let s = Store::open(&dir, opts()).unwrap();
            assert_eq!(keys_of(&s, A), want);
            s.append_blocking(vec![msg(&[A], "more")]).unwrap();
            assert_eq!(keys_of(&s, A).len(), want.len() + 1);
            drop(s);
            break;
        }
    }
}
