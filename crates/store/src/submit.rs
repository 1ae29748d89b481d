//! The writer's input: what callers submit ([`Submission`]) and the bounded queue it waits in
//! ([`Submissions`]) until the writer thread takes it, alone or in a group commit.
//!
//! **Holding while the sync thread fsyncs.** Whatever arrives while an `fdatasync` is in progress
//! cannot become durable before the next one starts, so writing it at once gains nothing: the
//! writer leaves it queued (and submitters do not wake it) until that fsync returns, then takes
//! it all in one group commit — one `pwrite` and one wake-up instead of one per arrival — while
//! the sync thread publishes and acknowledges the batch it just made durable. Only up to
//! [`HOLD_BYTES`]: beyond that the writer writes at once, so the encoding done between two
//! fsyncs stays short. With the sync thread idle (one append in flight) nothing is held.

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

/// Up to this many bytes of appends wait for an fsync in progress to return before the writer
/// writes them (see the module documentation).
pub(crate) const HOLD_BYTES: usize = 64 << 10;

/// The longest the writer holds submissions for one fsync: a bound in case the sync thread
/// stalls (a slow disk), not a delay anyone should meet.
pub(crate) const HOLD_AT_MOST: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Pending {
    queue: VecDeque<Submission>,
    bytes: usize,
    closing: bool,
    /// The sync thread is in an `fdatasync`.
    syncing: bool,
    /// The writer waits for that fsync to return before it takes what is queued: a submission
    /// below [`HOLD_BYTES`] does not wake it.
    held: bool,
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
    /// Hold submissions while the sync thread fsyncs, at most this long (durability `Always`:
    /// [`HOLD_AT_MOST`]), or `None`.
    pub hold: Option<Duration>,
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
        let exclusive = sub.exclusive();
        p.bytes += bytes;
        p.queue.push_back(sub);
        let wake = !p.held || p.bytes >= HOLD_BYTES || exclusive;
        drop(p);
        if wake {
            self.cv.notify_one();
        }
    }

    /// The sync thread starts (`true`) or finished (`false`) an `fdatasync`; at its end, a
    /// writer holding submissions for it takes them.
    pub fn set_syncing(&self, syncing: bool) {
        let mut p = self.pending.lock();
        p.syncing = syncing;
        if !syncing && p.held {
            p.held = false;
            drop(p);
            self.cv.notify_one();
        }
    }

    /// Nothing is queued for the writer.
    pub fn is_empty(&self) -> bool {
        self.pending.lock().queue.is_empty()
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
                let Some(hold) = w.hold else { break };
                if !p.syncing || p.closing || p.bytes >= HOLD_BYTES {
                    break;
                }
                if p.queue.iter().any(Submission::exclusive) || (w.recovering)() {
                    break;
                }
                p.held = true;
                let timed_out = self.cv.wait_for(&mut p, hold).timed_out();
                p.held = false;
                if timed_out {
                    break;
                }
                continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn append(bytes: usize) -> Submission {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        Submission::Append {
            msgs: Vec::new(),
            results: Vec::new(),
            bytes,
            tx,
        }
    }

    /// Submits one small append while an fsync is in progress and starts the writer, which holds
    /// it: returns once the writer is waiting.
    fn holding_writer(subs: &Arc<Submissions>) -> std::thread::JoinHandle<(usize, Duration)> {
        subs.submit(append(100));
        let writer = take_on_thread(subs);
        while !subs.pending.lock().held {
            std::thread::yield_now();
        }
        writer
    }

    /// The writer's `take`, holding for up to 10 s, on its own thread.
    fn take_on_thread(subs: &Arc<Submissions>) -> std::thread::JoinHandle<(usize, Duration)> {
        let subs = subs.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let taken = subs.take(Wait {
                next_attempt: None,
                idle_sync: None,
                recovering: &|| false,
                max_batch_bytes: 8 << 20,
                hold: Some(Duration::from_secs(10)),
            });
            match taken {
                Taken::Batch(b) => (b.len(), started.elapsed()),
                _ => panic!("expected a batch"),
            }
        })
    }

    #[test]
    fn appends_arriving_during_an_fsync_wait_for_it_and_go_in_one_batch() {
        let subs = Arc::new(Submissions::new(1 << 30));
        subs.set_syncing(true);
        let writer = holding_writer(&subs);
        // These join the held one instead of waking the writer.
        subs.submit(append(100));
        subs.submit(append(100));
        subs.set_syncing(false);
        let (n, waited) = writer.join().unwrap();
        assert_eq!(n, 3, "the three appends are one group commit");
        assert!(
            waited < Duration::from_secs(5),
            "released by the fsync's end"
        );
    }

    #[test]
    fn a_full_hold_or_an_exclusive_submission_is_taken_during_the_fsync() {
        let subs = Arc::new(Submissions::new(1 << 30));
        subs.set_syncing(true);
        let writer = holding_writer(&subs);
        subs.submit(append(HOLD_BYTES));
        let (n, waited) = writer.join().unwrap();
        assert_eq!(n, 2);
        assert!(
            waited < Duration::from_secs(5),
            "woken by the bytes, not the time-out"
        );

        let (tx, _rx) = tokio::sync::oneshot::channel();
        let writer = holding_writer(&subs);
        subs.submit(Submission::Withdraw { from: 0, tx });
        let (n, waited) = writer.join().unwrap();
        assert_eq!(n, 1, "the append before the withdrawal goes alone");
        assert!(waited < Duration::from_secs(5));
        assert!(subs.pending.lock().syncing, "the fsync has not returned");
    }

    #[test]
    fn nothing_is_held_without_an_fsync_in_progress() {
        let subs = Arc::new(Submissions::new(1 << 30));
        subs.submit(append(100));
        let (n, waited) = take_on_thread(&subs).join().unwrap();
        assert_eq!(n, 1);
        assert!(waited < Duration::from_secs(5));
    }
}
