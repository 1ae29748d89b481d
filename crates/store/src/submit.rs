//! The writer's input: what callers submit ([`Submission`]) and the bounded queue it waits in
//! ([`Submissions`]) until the writer thread takes it, alone or in a group commit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::StoreError;
use crate::log::ReplicationBatch;
use crate::{Appended, NewMessage};

pub(crate) type AppendResult = Result<Vec<Vec<Appended>>, StoreError>;

/// A checkpoint's encoded queue heads and the log position they cover, or `None` when the log
/// did not move since the last checkpoint.
pub(crate) type Snapshot = Option<(u64, Vec<u8>)>;

pub(crate) enum Submission {
    Append {
        msgs: Vec<NewMessage>,
        /// Result vectors allocated (with their final capacity) by the submitting thread, so the
        /// writer does not allocate per message and the caller frees what it allocated.
        results: Vec<Vec<Appended>>,
        bytes: usize,
        tx: tokio::sync::oneshot::Sender<AppendResult>,
    },
    Replicate {
        batch: ReplicationBatch,
        tx: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Promotion: continue the log at `jump_target(max(end, min_end))` with a JUMP record, then
    /// become a leader. Resolves to the new log end.
    Jump {
        min_end: u64,
        tx: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Withdraw every record from `from` to the log end (sync replication refused them): write
    /// WITHDRAW records setting the queues back. Resolves to the position of the first WITHDRAW
    /// record (every withdrawn record ends at or before it).
    Withdraw {
        from: u64,
        tx: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
    },
    /// A checkpoint wants the writer's queue heads at a batch boundary, with the log fsynced up
    /// to there: encoded as checkpoint `generation`, or nothing if the log still ends at
    /// `unchanged_at` (the position of the last checkpoint).
    Snapshot {
        generation: u64,
        unchanged_at: Option<u64>,
        tx: tokio::sync::oneshot::Sender<Result<Snapshot, StoreError>>,
    },
}

impl Submission {
    pub fn bytes(&self) -> usize {
        match self {
            Submission::Append { bytes, .. } => *bytes,
            Submission::Replicate { batch, .. } => batch.data.len(),
            Submission::Jump { .. } => crate::format::JUMP_RECORD_LEN,
            Submission::Withdraw { .. } | Submission::Snapshot { .. } => 0,
        }
    }

    /// Processed by the writer on its own (never in a group commit with others): it moves the
    /// log to another position, reads back what was written, or looks at the writer's state
    /// between batches.
    pub fn exclusive(&self) -> bool {
        match self {
            Submission::Append { .. } => false,
            Submission::Replicate { batch, .. } => batch.jump_from().is_some(),
            Submission::Jump { .. } | Submission::Withdraw { .. } | Submission::Snapshot { .. } => {
                true
            }
        }
    }

    pub fn fail(self, e: StoreError) {
        match self {
            Submission::Append { tx, .. } => {
                let _ = tx.send(Err(e));
            }
            Submission::Replicate { tx, .. }
            | Submission::Jump { tx, .. }
            | Submission::Withdraw { tx, .. } => {
                let _ = tx.send(Err(e));
            }
            Submission::Snapshot { tx, .. } => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

#[derive(Default)]
struct Pending {
    queue: VecDeque<Submission>,
    bytes: usize,
    closing: bool,
}

/// What the writer takes from the queue in one turn.
pub(crate) enum Taken {
    /// Submissions to process, in order: several for a group commit, or one exclusive one.
    Batch(Vec<Submission>),
    /// The queue was closed and is empty: the writer stops.
    Closed,
    /// A recovery attempt is due (its time came, or another thread reported a failure).
    AttemptDue,
    /// Nothing arrived within the durability interval while something is unsynced.
    IdleSync,
}

/// How the writer waits for the next batch.
pub(crate) struct Wait<'a> {
    /// While recovering: when the next attempt is due.
    pub next_attempt: Option<Instant>,
    /// Durability `Interval` with unsynced data: how long to wait before syncing anyway.
    pub idle_sync: Option<Duration>,
    /// Whether another thread put the store into recovery meanwhile.
    pub recovering: &'a dyn Fn() -> bool,
    /// A group commit takes submissions up to this many bytes.
    pub max_batch_bytes: usize,
}

/// The bounded queue between the submitting threads and the writer.
pub(crate) struct Submissions {
    pending: Mutex<Pending>,
    cv: Condvar,
    max_pending_bytes: usize,
}

impl Submissions {
    pub fn new(max_pending_bytes: usize) -> Submissions {
        Submissions {
            pending: Mutex::new(Pending::default()),
            cv: Condvar::new(),
            max_pending_bytes,
        }
    }

    /// Queues `sub` for the writer, or fails it at once: the queue is closed, or more than
    /// `max_pending_bytes` wait already (a snapshot for a checkpoint is never refused for that).
    pub fn submit(&self, sub: Submission) {
        let bytes = sub.bytes();
        let mut p = self.pending.lock();
        if p.closing {
            drop(p);
            sub.fail(StoreError::Closed);
            return;
        }
        let snapshot = matches!(sub, Submission::Snapshot { .. });
        if !snapshot && !p.queue.is_empty() && p.bytes + bytes > self.max_pending_bytes {
            drop(p);
            sub.fail(StoreError::Overloaded(format!(
                "more than {} bytes are waiting to be written",
                self.max_pending_bytes
            )));
            return;
        }
        p.bytes += bytes;
        p.queue.push_back(sub);
        drop(p);
        self.cv.notify_one();
    }

    /// Wakes the writer (another thread put the store into recovery).
    pub fn wake(&self) {
        self.cv.notify_all();
    }

    /// Refuses every later submission; the writer stops once it has processed what is queued.
    pub fn close(&self) {
        self.pending.lock().closing = true;
        self.cv.notify_all();
    }

    /// Fails everything queued with `e` (the writer is gone).
    pub fn fail_all(&self, e: &StoreError) {
        let mut p = self.pending.lock();
        p.bytes = 0;
        for s in p.queue.drain(..) {
            s.fail(e.duplicate());
        }
    }

    /// Waits for the writer's next turn (see [`Taken`]). An exclusive submission (promotion,
    /// withdrawal, a replicated jump, a checkpoint's snapshot) is taken on its own: it ends the
    /// batch before it, and nothing joins it.
    pub fn take(&self, w: Wait<'_>) -> Taken {
        let mut p = self.pending.lock();
        loop {
            if !p.queue.is_empty() {
                break;
            }
            if p.closing {
                return Taken::Closed;
            }
            if let Some(at) = w.next_attempt {
                if self.cv.wait_until(&mut p, at).timed_out() && p.queue.is_empty() {
                    return Taken::AttemptDue;
                }
                continue;
            }
            if (w.recovering)() {
                return Taken::AttemptDue;
            }
            match w.idle_sync {
                Some(every) => {
                    if self.cv.wait_for(&mut p, every).timed_out() && p.queue.is_empty() {
                        return Taken::IdleSync;
                    }
                }
                None => self.cv.wait(&mut p),
            }
        }
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while p
            .queue
            .front()
            .is_some_and(|s| batch.is_empty() || !s.exclusive())
        {
            let Some(s) = p.queue.pop_front() else { break };
            let b = s.bytes();
            let exclusive = s.exclusive();
            bytes += b;
            p.bytes -= b;
            batch.push(s);
            if exclusive || bytes >= w.max_batch_bytes {
                break;
            }
        }
        Taken::Batch(batch)
    }
}
