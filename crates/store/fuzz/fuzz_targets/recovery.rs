//! Feeds arbitrary bytes to store recovery: they become the body of a segment file (after a
//! valid header, or raw), optionally a second segment and a checkpoint file. Opening, reading
//! every queue the data mentions, streaming the log and `tools::check` must never panic or hang.
//!
//! Input layout: flags u8, checkpoint length u16 LE, checkpoint bytes, segment bytes.
//! flags bit 0: write the segment header; bit 1: split the segment bytes into two segments.

#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use store::format::{encode_segment_header, segment_file_name, Entry, ENTRY_LEN};
use store::{Durability, QueueId, Store, StoreOptions};

static N: AtomicU64 = AtomicU64::new(0);

fn queues_mentioned(data: &[u8]) -> Vec<QueueId> {
    // any 56-byte window that decodes as an entry names a queue worth querying
    let mut qs = vec![QueueId::user(1, 1), QueueId::group(1, 1)];
    let mut i = 0;
    while i + ENTRY_LEN <= data.len() && qs.len() < 16 {
        if let Some(q) = Entry::decode(&data[i..i + ENTRY_LEN]).queue() {
            if !qs.contains(&q) {
                qs.push(q);
            }
        }
        i += 1;
    }
    qs
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 3 {
        return;
    }
    let flags = input[0];
    let ck_len = (u16::from_le_bytes([input[1], input[2]]) as usize).min(input.len() - 3);
    let ck = &input[3..3 + ck_len];
    let seg = &input[3 + ck_len..];
    let root = std::path::PathBuf::from(format!(
        "/dev/shm/banter-store-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let write_seg = |base: u64, body: &[u8]| {
        let mut f = Vec::new();
        if flags & 1 != 0 {
            f.extend_from_slice(&encode_segment_header(base));
        }
        f.extend_from_slice(body);
        std::fs::write(root.join(segment_file_name(base)), f).unwrap();
    };
    if flags & 2 != 0 && seg.len() > 1 {
        let cut = seg.len() / 2;
        write_seg(0, &seg[..cut]);
        write_seg(cut as u64, &seg[cut..]);
    } else {
        write_seg(0, seg);
    }
    if !ck.is_empty() {
        std::fs::write(root.join("checkpoint-a"), ck).unwrap();
    }
    let opts = StoreOptions {
        durability: Durability::None,
        ..StoreOptions::default()
    };
    if let Ok(s) = Store::open(&root, opts) {
        for q in queues_mentioned(seg) {
            let mut after = 0;
            for _ in 0..8 {
                match s.sync(q, after, 100) {
                    Ok(p) if p.has_more => after = p.last_key,
                    _ => break,
                }
            }
            let _ = s.latest(q, 10);
            let _ = s.latest_peer(q, 10);
            let _ = s.new_count(q, 0);
            let _ = s.sync_since(q, 0, 10, 5);
        }
        if let Ok(mut stream) = s.subscribe(s.log_start()) {
            while let Ok(Some(_)) = stream.try_next() {}
        }
        let _ = s.close();
    }
    let _ = store::tools::check(&root);
    let _ = std::fs::remove_dir_all(&root);
});
