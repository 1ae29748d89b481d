//! The sync thread, second half of the group commit: it takes every batch the writer has written
//! so far ([`SyncQueue`], the hand-off between the two), issues one `fdatasync` (durability
//! `Always`), and only then publishes them in order — recent-write cache, log end, queue heads
//! (`Shared::publish`) — and completes their tickets. A failed fsync refuses every batch it may
//! have covered and every later one until the writer has recovered (`resume`). When it is idle
//! and nothing is queued for it, the writer runs the same round for a small batch on its own
//! thread ([`Syncer::finish_inline`]) instead of handing it over.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::checkpoint::Checkpoints;
use crate::error::StoreError;
use crate::options::Durability;
use crate::queue::Published;
use crate::shared::{Shared, Stats};
use crate::submit::{AppendResult, Submissions};
use crate::{NewMessage, QueueId};

/// The ticket of a written submission and what it resolves to once durable.
pub(crate) enum Outcome {
    Append(tokio::sync::oneshot::Sender<AppendResult>, AppendResult),
    Replicate(
        tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
}

impl Outcome {
    pub fn complete(self) {
        match self {
            Outcome::Append(tx, r) => {
                let _ = tx.send(r);
            }
            Outcome::Replicate(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Outcome::Append(tx, _) => {
                let _ = tx.send(Err(e));
            }
            Outcome::Replicate(tx, _) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// Fails `outcomes`: the first gets `first`, the others a copy of it.
pub(crate) fn fail_all(outcomes: impl IntoIterator<Item = Outcome>, first: StoreError) {
    let copy = first.duplicate();
    let mut first = Some(first);
    for o in outcomes {
        o.fail(first.take().unwrap_or_else(|| copy.duplicate()));
    }
}

/// A written batch waiting to become durable and visible.
pub(crate) struct Written {
    pub start: u64,
    pub end: u64,
    pub buf: Vec<u8>,
    pub updates: Vec<(QueueId, Published)>,
    pub outcomes: Vec<Outcome>,
    /// The submitted messages, dropped by the sync thread after the tickets are completed (off
    /// the writer's path).
    pub spent: Vec<Vec<NewMessage>>,
    /// The segment the batch ended in (earlier segments were fsynced when they were sealed).
    pub file: Option<Arc<File>>,
    /// `Shared::fsync_epoch` when the batch was written.
    pub fsync_epoch: u64,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Written>,
    closing: bool,
    /// The sync thread is working on items it took from the queue.
    busy: bool,
    /// A batch was refused after a failed fsync: every later one is refused too (the log end is
    /// cumulative) until the writer has recovered.
    failing: bool,
}

/// The hand-off from the writer to the sync thread.
#[derive(Default)]
pub(crate) struct SyncQueue {
    q: Mutex<Queue>,
    cv: Condvar,
    /// The sync thread finished a round with nothing queued (waited for by recovery).
    idle_cv: Condvar,
}

impl SyncQueue {
    /// Hands a written batch to the sync thread.
    pub fn push(&self, w: Written) {
        self.q.lock().items.push_back(w);
        self.cv.notify_one();
    }

    /// The sync thread stops once it has handled what is queued.
    pub fn close(&self) {
        self.q.lock().closing = true;
        self.cv.notify_all();
    }

    /// Waits until the sync thread has acknowledged or refused everything handed to it.
    pub fn wait_idle(&self) {
        let mut q = self.q.lock();
        while q.busy || !q.items.is_empty() {
            self.idle_cv.wait_for(&mut q, Duration::from_millis(100));
        }
    }

    /// Claims the sync thread's turn for the writer when the sync thread is idle and nothing is
    /// queued for it (every earlier batch is acknowledged or refused), so the writer can make its
    /// batch durable itself, in order; returns the failing flag. [`SyncQueue::release`] ends it.
    pub fn claim_idle(&self) -> Option<bool> {
        let mut q = self.q.lock();
        if q.busy || !q.items.is_empty() || q.closing {
            return None;
        }
        q.busy = true;
        Some(q.failing)
    }

    /// Ends a turn taken with [`SyncQueue::claim_idle`].
    pub fn release(&self) {
        let mut q = self.q.lock();
        q.busy = false;
        if q.items.is_empty() {
            self.idle_cv.notify_all();
        }
    }

    /// The writer has recovered: batches written from now on may be acknowledged again.
    pub fn clear_failing(&self) {
        self.q.lock().failing = false;
    }

    fn set_failing(&self) {
        self.q.lock().failing = true;
    }

    /// The next items (with the failing flag), or `None` once closed and empty.
    fn take(&self) -> Option<(Vec<Written>, bool)> {
        let mut q = self.q.lock();
        q.busy = false;
        if q.items.is_empty() {
            self.idle_cv.notify_all();
        }
        while q.items.is_empty() && !q.closing {
            self.cv.wait(&mut q);
        }
        if q.items.is_empty() {
            self.idle_cv.notify_all();
            return None;
        }
        q.busy = true;
        Some((q.items.drain(..).collect(), q.failing))
    }
}

/// The sync thread's handles; the writer holds a copy to finish a batch itself when the sync
/// thread is idle ([`Syncer::finish_inline`]).
#[derive(Clone)]
pub(crate) struct Syncer {
    pub shared: Arc<Shared>,
    pub syncq: Arc<SyncQueue>,
    /// To wake the writer when an fsync failed.
    pub submissions: Arc<Submissions>,
    /// To wake the checkpointer when the log grew by `checkpoint_bytes`.
    pub checkpoints: Arc<Checkpoints>,
}

impl Syncer {
    /// A write or fsync failed: refuse appends and have the writer thread recover.
    fn enter_recovery(&self, e: &StoreError) {
        self.shared.health().fail(e);
        self.submissions.wake();
    }

    /// Body of the sync thread.
    pub fn run(self) {
        while let Some((items, failing)) = self.syncq.take() {
            self.finish(items, failing);
        }
    }

    /// Makes `w` durable, publishes it and completes its tickets on the calling thread (the
    /// writer) when the sync thread is idle with nothing queued, and returns `None`; otherwise
    /// hands it back. At one append in flight this saves the hand-off: a wake-up of the sync
    /// thread and a context switch per batch. Order holds: the claim succeeds only when every
    /// earlier batch is finished, and the writer writes nothing else meanwhile.
    pub fn finish_inline(&self, w: Written) -> Option<Written> {
        let Some(failing) = self.syncq.claim_idle() else {
            return Some(w);
        };
        self.finish(vec![w], failing);
        self.syncq.release();
        None
    }

    /// One round of the sync thread over `items` (in log order): one `fdatasync` for all of
    /// them (durability `Always`), then publication and tickets, or refusal after a failure.
    fn finish(&self, items: Vec<Written>, mut failing: bool) {
        let shared = &*self.shared;
        let mut failure: Option<StoreError> = None;
        if shared.health().is_failed() {
            failure = shared.health().refusal();
        }
        if failure.is_none() && !failing && shared.opts().durability == Durability::Always {
            if let Some(f) = items.last().and_then(|w| w.file.as_ref()) {
                self.submissions.set_syncing(true);
                let synced = shared.fsync(f, shared.dir(), true);
                self.submissions.set_syncing(false);
                match synced {
                    Ok(()) => Stats::add(&shared.stats().fsyncs, 1),
                    Err(err) => {
                        // name the segment rather than the directory
                        let err = match err {
                            StoreError::Io { op, source, .. } => StoreError::Io {
                                op,
                                path: shared
                                    .log()
                                    .segment_for(items[items.len() - 1].start)
                                    .map(|s| s.path.clone())
                                    .unwrap_or_else(|| shared.dir().to_path_buf()),
                                offset: None,
                                source,
                            },
                            e => e,
                        };
                        self.enter_recovery(&err);
                        failure = Some(err);
                    }
                }
            }
        }
        // A failed fsync anywhere (here, at a roll, in a checkpoint) since a batch was written
        // may have covered it: refuse it, and everything after it.
        let epoch = shared.fsync_epoch();
        let mut done = Vec::with_capacity(items.len());
        let mut spent = Vec::with_capacity(items.len());
        let mut end = 0;
        let mut published = false;
        for w in items {
            if failing || failure.is_some() || w.fsync_epoch != epoch {
                if !failing {
                    failing = true;
                    self.syncq.set_failing();
                    if !shared.health().is_refusing() {
                        let e = StoreError::Poisoned(
                            "an fsync failed before this append was durable".into(),
                        );
                        self.enter_recovery(&e);
                    }
                }
                let e = match failure.take() {
                    Some(e) => e,
                    None => shared.health().refusal().unwrap_or_else(|| {
                        StoreError::Poisoned(
                            "an fsync failed before this append was durable".into(),
                        )
                    }),
                };
                fail_all(w.outcomes, e);
                continue;
            }
            shared.publish(w.start, w.buf, w.end, &w.updates);
            end = w.end;
            published = true;
            done.push(w.outcomes);
            spent.push(w.spent);
        }
        if published {
            shared.notify_end();
        }
        for o in done.into_iter().flatten() {
            o.complete();
        }
        drop(spent);
        if published {
            // not the checkpoint's lock: a checkpoint in progress waits for this thread
            let ck = self.checkpoints.position();
            if end.saturating_sub(ck) >= shared.opts().checkpoint_bytes {
                self.checkpoints.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(start: u64) -> Written {
        Written {
            start,
            end: start,
            buf: Vec::new(),
            updates: Vec::new(),
            outcomes: Vec::new(),
            spent: Vec::new(),
            file: None,
            fsync_epoch: 0,
        }
    }

    #[test]
    fn the_writer_claims_the_sync_turn_only_when_nothing_is_in_progress_or_queued() {
        let q = SyncQueue::default();
        assert_eq!(
            q.claim_idle(),
            Some(false),
            "idle and empty: the writer may finish"
        );
        assert_eq!(
            q.claim_idle(),
            None,
            "a second claim while the first is held"
        );
        q.release();
        q.wait_idle();

        // A batch queued for the sync thread: finishing a later one first would break the order.
        q.push(written(0));
        assert_eq!(q.claim_idle(), None);
        let (items, failing) = q.take().expect("the queued batch");
        assert_eq!((items.len(), failing), (1, false));
        assert_eq!(q.claim_idle(), None, "the sync thread is working on it");

        // The sync thread comes back for more: idle again, and the failing flag travels along.
        q.set_failing();
        std::thread::scope(|s| {
            s.spawn(|| assert!(q.take().is_none(), "closed with nothing queued"));
            q.wait_idle();
            assert_eq!(q.claim_idle(), Some(true));
            q.release();
            q.close();
        });
    }
}
