//! The fuzz seeds in `fuzz/seeds/recovery` are written by `fuzz/make_seeds.py` from the format
//! document, independently of the Rust encoder. Opening them here cross-checks
//! `docs/storage-format.md` against the code.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;

use store::format::{encode_segment_header, segment_file_name};
use store::{QueueId, Store, StoreOptions};

fn open_seed(name: &str, dir: &Path) -> Store {
    let input = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds/recovery")
            .join(name),
    )
    .unwrap();
    let ck_len = u16::from_le_bytes([input[1], input[2]]) as usize;
    let ck = &input[3..3 + ck_len];
    let mut seg = encode_segment_header(0).to_vec();
    seg.extend_from_slice(&input[3 + ck_len..]);
    std::fs::write(dir.join(segment_file_name(0)), seg).unwrap();
    if !ck.is_empty() {
        std::fs::write(dir.join("checkpoint-a"), ck).unwrap();
    }
    Store::open(dir, StoreOptions::default()).unwrap()
}

#[test]
fn records_written_from_the_format_document_are_read_back() {
    for seed in ["three_records", "with_checkpoint"] {
        let dir = tempfile::tempdir().unwrap();
        let s = open_seed(seed, dir.path());
        let u2 = s.sync(QueueId::user(1, 2), 0, 10).unwrap();
        assert_eq!(u2.messages.len(), 2, "{seed}");
        assert_eq!(u2.messages[0].body.as_ref(), br#"{"text":"hi"}"#);
        assert_eq!(u2.messages[1].prev_key, u2.messages[0].key);
        assert_eq!(u2.messages[1].device_id, 8);
        let u1 = s.sync(QueueId::user(1, 1), 0, 10).unwrap();
        assert_eq!(u1.messages.len(), 1);
        assert_eq!(u1.messages[0].timestamp, 1_700_000_000);
        let g = s.sync(QueueId::group(1, 1), 0, 10).unwrap();
        assert_eq!(g.messages[0].cmd, 8);
        assert_eq!(s.latest_peer(QueueId::user(1, 2), 10).unwrap().len(), 2);
        // and the store continues the queues written by the other encoder
        let r = s
            .append_blocking(vec![store::NewMessage {
                key: None,
                queues: vec![QueueId::user(1, 2)],
                device_id: 1,
                cmd: 4,
                flag: 0,
                timestamp: 1,
                body: "x".into(),
            }])
            .unwrap();
        assert_eq!(r[0][0].prev_key, u2.messages[1].key);
    }
}

#[test]
fn torn_seed_recovers_the_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_seed("torn", dir.path());
    assert_eq!(
        s.sync(QueueId::user(1, 2), 0, 10).unwrap().messages.len(),
        2
    );
    assert_eq!(
        s.sync(QueueId::group(1, 1), 0, 10).unwrap().messages.len(),
        0
    );
}
