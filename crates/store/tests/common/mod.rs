//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use store::{Durability, NewMessage, QueueId, StoreOptions};

pub fn small_opts() -> StoreOptions {
    StoreOptions {
        durability: Durability::None,
        segment_bytes: 4096,
        cache_bytes: 0,
        ..StoreOptions::default()
    }
}

pub fn msg(queues: &[QueueId], body: &str) -> NewMessage {
    NewMessage {
        key: None,
        queues: queues.to_vec(),
        device_id: 7,
        cmd: 4,
        flag: 0,
        timestamp: 1000,
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

pub fn msg_ts(queues: &[QueueId], body: &str, ts: i64) -> NewMessage {
    NewMessage {
        key: None,
        timestamp: ts,
        ..msg(queues, body)
    }
}

/// Copies every file of a store directory (a crash snapshot when taken while the store is open,
/// since acknowledged data is already in the files). Files that vanish mid-copy are skipped.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        // The store's background threads rename or remove temporary files (a checkpoint being
        // written, the spare segment) while it runs; one that vanished between the listing and
        // the copy was not part of the snapshot.
        match std::fs::copy(e.path(), to.join(e.file_name())) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("copy {}: {err}", e.path().display()),
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls one future on this thread.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Waits for a ticket at most `limit`; panics if it is not resolved by then (a hang).
pub fn wait_bounded<T>(
    mut t: store::Ticket<T>,
    limit: std::time::Duration,
) -> Result<T, store::StoreError> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(r) = t.try_take() {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an append was neither acknowledged nor refused within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Every entry of `q`, oldest first (syncing from key 0 until caught up).
pub fn read_queue(s: &store::Store, q: QueueId) -> Vec<store::StoredMessage> {
    let mut out = Vec::new();
    let mut key = 0;
    loop {
        let p = s.sync(q, key, 1000).unwrap();
        key = p.last_key;
        out.extend(p.messages);
        if !p.has_more {
            return out;
        }
    }
}

/// Waits (at most `limit`) until the store accepts appends again.
pub fn wait_accepting(s: &store::Store, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while !s.accepts_appends() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not resume within {limit:?}: {:?}",
            s.health()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
