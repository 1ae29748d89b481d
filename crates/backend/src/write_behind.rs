//! Write-behind buffer for client-reported hints: peer and group sync keys (kept only if greater)
//! and unread counts (last value wins). Reports land in a sharded in-memory map without I/O; a
//! background task persists the dirty entries in batches through a [`Sink`], then forgets the
//! entries it wrote (an entry updated meanwhile stays dirty). Reads consult the map first, so they
//! see reports that are not yet persisted.
//!
//! Memory is bounded: at most [`MAX_PENDING`] dirty entries. Past half of that the flusher is woken
//! early; at the limit, reports for *new* entries are dropped (they are hints, and the client
//! reports again with its next message) and counted.
//!
//! A flush that fails (disk full, database unreachable) keeps its entries and is retried with
//! back-off ([`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`]), not on every tick or wake-up; while
//! the backend is failing the flusher also probes it, so its health returns to ok by itself. The
//! final flush at shutdown is retried a few times before the entries are given up (and counted in
//! the log).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::health::HealthTracker;
use crate::BackendError;

/// Most dirty entries held in memory (≈ 100 bytes each).
pub const MAX_PENDING: usize = 1 << 18;

const SHARDS: usize = 64;

/// First retry of a failed flush after this long, doubling up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries of a failing flush.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts of a flush at shutdown (with back-off between them) before its entries are given up.
const FINAL_ATTEMPTS: u32 = 5;

/// Waits between retries of a failing flush: `first`, doubling up to `max`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub(crate) const DEFAULT: Backoff = Backoff {
        first: FIRST_BACKOFF,
        max: MAX_BACKOFF,
    };

    fn next(&self, after: Option<Duration>) -> Duration {
        after.map_or(self.first, |b| (b * 2).min(self.max))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Sync { appid: i64, uid: i64 },
    Group { appid: i64, uid: i64, gid: i64 },
    Unread { appid: i64, uid: i64 },
}

/// One batch of dirty entries to persist.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// (appid, uid, key): set the peer sync key if greater.
    pub sync: Vec<(i64, i64, i64)>,
    /// (appid, uid, gid, key): set the group sync key if greater.
    pub group: Vec<(i64, i64, i64, i64)>,
    /// (appid, uid, count): overwrite the unread count.
    pub unread: Vec<(i64, i64, i32)>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.sync.is_empty() && self.group.is_empty() && self.unread.is_empty()
    }

    fn len(&self) -> usize {
        self.sync.len() + self.group.len() + self.unread.len()
    }
}

/// Where a variant persists batches.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Persist every entry of the batch (set-if-greater for sync keys). All or nothing is not
    /// required: a failed batch is retried whole, and every operation is idempotent.
    fn persist(&self, batch: &Batch) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// A cheap operation that fails while the storage service does (for writes, where that is
    /// what fails), used to notice that a failing backend works again.
    fn probe(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// The shared dirty map.
pub(crate) struct WriteBehind {
    shards: Box<[Mutex<HashMap<Slot, i64>>]>,
    /// Most dirty entries (normally [`MAX_PENDING`]).
    limit: usize,
    len: AtomicUsize,
    dropped: AtomicU64,
    drop_logged: AtomicBool,
    wake: Notify,
    /// Serialises flushes so an older snapshot never overwrites a newer unread count.
    flush_lock: tokio::sync::Mutex<()>,
    /// The backend's health, fed by its operations and by this buffer's flushes and probes.
    pub(crate) health: HealthTracker,
}

fn shard_of(appid: i64, uid: i64) -> usize {
    let h = (appid as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
        ^ (uid as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (h.wrapping_mul(0x1656_67B1_9E37_79F9) >> 58) as usize % SHARDS
}

impl Slot {
    fn shard(&self) -> usize {
        match *self {
            Slot::Sync { appid, uid }
            | Slot::Group { appid, uid, .. }
            | Slot::Unread { appid, uid } => shard_of(appid, uid),
        }
    }
}

impl WriteBehind {
    pub(crate) fn new() -> Arc<WriteBehind> {
        Self::with_limit(MAX_PENDING)
    }

    pub(crate) fn with_limit(limit: usize) -> Arc<WriteBehind> {
        Arc::new(WriteBehind {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            limit,
            len: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            drop_logged: AtomicBool::new(false),
            wake: Notify::new(),
            flush_lock: tokio::sync::Mutex::new(()),
            health: HealthTracker::default(),
        })
    }

    /// Record `value`; `greater` = keep the maximum, else last write wins.
    fn put(&self, slot: Slot, value: i64, greater: bool) {
        let mut shard = self.shards[slot.shard()].lock();
        if let Some(cur) = shard.get_mut(&slot) {
            if !greater || value > *cur {
                *cur = value;
            }
            return;
        }
        let len = self.len.load(Ordering::Relaxed);
        if len >= self.limit {
            drop(shard);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.drop_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limit = self.limit,
                    "write-behind buffer full: dropping sync-key/unread reports"
                );
            }
            self.wake.notify_one();
            return;
        }
        shard.insert(slot, value);
        drop(shard);
        if self.len.fetch_add(1, Ordering::Relaxed) + 1 >= self.limit / 2 {
            self.wake.notify_one();
        }
    }

    pub(crate) fn report_sync_key(&self, appid: i64, uid: i64, key: i64) {
        if key > 0 {
            self.put(Slot::Sync { appid, uid }, key, true);
        }
    }

    pub(crate) fn report_group_sync_key(&self, appid: i64, uid: i64, gid: i64, key: i64) {
        if key > 0 {
            self.put(Slot::Group { appid, uid, gid }, key, true);
        }
    }

    pub(crate) fn set_unread(&self, appid: i64, uid: i64, count: i32) {
        self.put(Slot::Unread { appid, uid }, i64::from(count), false);
    }

    fn get(&self, slot: Slot) -> Option<i64> {
        self.shards[slot.shard()].lock().get(&slot).copied()
    }

    pub(crate) fn sync_key(&self, appid: i64, uid: i64) -> Option<i64> {
        self.get(Slot::Sync { appid, uid })
    }

    pub(crate) fn group_sync_key(&self, appid: i64, uid: i64, gid: i64) -> Option<i64> {
        self.get(Slot::Group { appid, uid, gid })
    }

    pub(crate) fn unread(&self, appid: i64, uid: i64) -> Option<i32> {
        self.get(Slot::Unread { appid, uid })
            .and_then(|v| i32::try_from(v).ok())
    }

    /// Reports dropped because the buffer was full, since start.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Batch {
        let mut batch = Batch::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (slot, &v) in shard.iter() {
                match *slot {
                    Slot::Sync { appid, uid } => batch.sync.push((appid, uid, v)),
                    Slot::Group { appid, uid, gid } => batch.group.push((appid, uid, gid, v)),
                    Slot::Unread { appid, uid } => {
                        batch
                            .unread
                            .push((appid, uid, i32::try_from(v).unwrap_or_default()))
                    }
                }
            }
        }
        batch
    }

    /// Forget entries that still hold the value that was persisted.
    fn forget(&self, batch: &Batch) {
        let slots = batch
            .sync
            .iter()
            .map(|&(appid, uid, v)| (Slot::Sync { appid, uid }, v))
            .chain(
                batch
                    .group
                    .iter()
                    .map(|&(appid, uid, gid, v)| (Slot::Group { appid, uid, gid }, v)),
            )
            .chain(
                batch
                    .unread
                    .iter()
                    .map(|&(appid, uid, v)| (Slot::Unread { appid, uid }, i64::from(v))),
            );
        let mut removed = 0;
        for (slot, v) in slots {
            let mut shard = self.shards[slot.shard()].lock();
            if shard.get(&slot) == Some(&v) {
                shard.remove(&slot);
                removed += 1;
            }
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        self.drop_logged.store(false, Ordering::Relaxed);
    }

    /// Dirty entries held now.
    pub(crate) fn pending(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Persist everything dirty now (probing first while the backend is failing, so that an
    /// empty buffer does not report a failing backend as recovered). Records the outcome in the
    /// backend's health.
    pub(crate) async fn flush<S: Sink>(&self, sink: &S) -> Result<(), BackendError> {
        let r = self.flush_once(sink).await;
        self.health.observe(&r);
        r
    }

    async fn flush_once<S: Sink>(&self, sink: &S) -> Result<(), BackendError> {
        let _serial = self.flush_lock.lock().await;
        if self.health.is_failing() {
            sink.probe().await?;
        }
        let batch = self.snapshot();
        if batch.is_empty() {
            return Ok(());
        }
        sink.persist(&batch).await?;
        tracing::trace!(entries = batch.len(), "write-behind batch persisted");
        self.forget(&batch);
        Ok(())
    }

    /// [`WriteBehind::flush`], retried with back-off a few times (at shutdown, when there is no
    /// later flush). When every attempt fails the entries are given up and counted in the log.
    pub(crate) async fn flush_retrying<S: Sink>(
        &self,
        sink: &S,
        backoff: Backoff,
    ) -> Result<(), BackendError> {
        let mut wait = backoff.first;
        let mut attempt = 1;
        loop {
            match self.flush(sink).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= FINAL_ATTEMPTS => {
                    tracing::error!(
                        error = %e,
                        entries = self.pending(),
                        attempts = attempt,
                        "write-behind flush failed; sync-key hints and unread counts not persisted"
                    );
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "write-behind flush failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = backoff.next(Some(wait));
                    attempt += 1;
                }
            }
        }
    }
}

/// Spawn the background flusher. It flushes every `interval`, when woken by a filling buffer, and a
/// last time (retried a few times) when `shutdown` fires or its sender is dropped (the backend was
/// dropped). After a failure it waits out a back-off instead, probing the backend each time.
pub(crate) fn spawn_flusher<S: Sink>(
    wb: Arc<WriteBehind>,
    sink: S,
    interval: Duration,
    shutdown: oneshot::Receiver<()>,
) {
    spawn_flusher_with(wb, sink, interval, Backoff::DEFAULT, shutdown)
}

fn spawn_flusher_with<S: Sink>(
    wb: Arc<WriteBehind>,
    sink: S,
    interval: Duration,
    retry: Backoff,
    mut shutdown: oneshot::Receiver<()>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff: Option<Duration> = None;
        loop {
            tokio::select! {
                _ = tick.tick(), if backoff.is_none() => {}
                _ = wb.wake.notified(), if backoff.is_none() => {}
                _ = tokio::time::sleep(backoff.unwrap_or_default()), if backoff.is_some() => {}
                _ = &mut shutdown => {
                    let _ = wb.flush_retrying(&sink, retry).await;
                    return;
                }
            }
            match wb.flush(&sink).await {
                Ok(()) => {
                    if backoff.take().is_some() {
                        tracing::info!(entries = wb.pending(), "write-behind flushes work again");
                    }
                }
                Err(e) => {
                    let next = retry.next(backoff);
                    if backoff.is_none() {
                        tracing::warn!(error = %e, entries = wb.pending(), "write-behind flush failed; retrying with back-off");
                    } else {
                        tracing::debug!(error = %e, retry_in_ms = next.as_millis() as u64, "write-behind flush failed again");
                    }
                    backoff = Some(next);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Null;
    impl Sink for Null {
        async fn persist(&self, _batch: &Batch) -> Result<(), BackendError> {
            Ok(())
        }
        async fn probe(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    /// Fails every call until `failing` is cleared; records what it persisted and when it was
    /// called.
    #[derive(Default)]
    struct Flaky {
        failing: AtomicBool,
        calls: Mutex<Vec<tokio::time::Instant>>,
        persisted: Mutex<HashMap<(i64, i64), i64>>,
    }
    impl Sink for Arc<Flaky> {
        async fn persist(&self, batch: &Batch) -> Result<(), BackendError> {
            self.calls.lock().push(tokio::time::Instant::now());
            if self.failing.load(Ordering::SeqCst) {
                return Err(BackendError::Internal("database or disk is full".into()));
            }
            let mut p = self.persisted.lock();
            for &(appid, uid, key) in &batch.sync {
                p.insert((appid, uid), key);
            }
            Ok(())
        }
        async fn probe(&self) -> Result<(), BackendError> {
            self.calls.lock().push(tokio::time::Instant::now());
            if self.failing.load(Ordering::SeqCst) {
                return Err(BackendError::Internal("database or disk is full".into()));
            }
            Ok(())
        }
    }

    /// Short waits so that the tests run in real time: 10 ms doubling to 100 ms.
    const FAST: Backoff = Backoff {
        first: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn failed_flushes_back_off_keep_their_entries_and_recover() {
        let wb = WriteBehind::new();
        let sink = Arc::new(Flaky::default());
        sink.failing.store(true, Ordering::SeqCst);
        let (_stop, stop_rx) = oneshot::channel();
        // a tick every millisecond: without back-off that would be an attempt every millisecond
        spawn_flusher_with(
            wb.clone(),
            sink.clone(),
            Duration::from_millis(1),
            FAST,
            stop_rx,
        );
        wb.report_sync_key(1, 2, 10);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let attempts = sink.calls.lock().len();
        assert!(
            (2..=40).contains(&attempts),
            "{attempts} attempts in a second"
        );
        assert!(wb.health.snapshot().failing);
        // more reports while failing stay in memory, bounded as ever
        wb.report_sync_key(1, 2, 20);
        wb.report_sync_key(1, 3, 5);
        assert_eq!(wb.sync_key(1, 2), Some(20));
        sink.failing.store(false, Ordering::SeqCst);
        wait_until("flushed", || wb.pending() == 0).await;
        assert_eq!(sink.persisted.lock().get(&(1, 2)), Some(&20));
        assert_eq!(sink.persisted.lock().get(&(1, 3)), Some(&5));
        assert!(!wb.health.snapshot().failing);
    }

    #[tokio::test]
    async fn a_failing_backend_is_probed_back_to_health_with_nothing_to_flush() {
        let wb = WriteBehind::new();
        let sink = Arc::new(Flaky::default());
        wb.health
            .failed(&BackendError::Internal("database is locked".into()));
        sink.failing.store(true, Ordering::SeqCst);
        let (_stop, stop_rx) = oneshot::channel();
        spawn_flusher_with(
            wb.clone(),
            sink.clone(),
            Duration::from_millis(20),
            FAST,
            stop_rx,
        );
        wait_until("probed", || sink.calls.lock().len() >= 2).await;
        assert!(wb.health.snapshot().failing);
        sink.failing.store(false, Ordering::SeqCst);
        wait_until("healthy", || !wb.health.snapshot().failing).await;
    }

    #[tokio::test]
    async fn the_final_flush_is_retried() {
        let wb = WriteBehind::new();
        let sink = Arc::new(Flaky::default());
        sink.failing.store(true, Ordering::SeqCst);
        wb.report_sync_key(1, 2, 10);
        let s2 = sink.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(25)).await;
            s2.failing.store(false, Ordering::SeqCst);
        });
        let long = Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_secs(1),
        };
        // five attempts 20, 40, 80, 160 ms apart: the sink works again after 25 ms
        wb.flush_retrying(&sink, long)
            .await
            .expect("succeeds on a later attempt");
        assert_eq!(sink.persisted.lock().get(&(1, 2)), Some(&10));
    }

    #[tokio::test]
    async fn set_if_greater_and_forget_after_flush() {
        let wb = WriteBehind::new();
        wb.report_sync_key(1, 2, 10);
        wb.report_sync_key(1, 2, 5);
        wb.report_sync_key(1, 2, 0);
        assert_eq!(wb.sync_key(1, 2), Some(10));
        wb.set_unread(1, 2, 3);
        wb.set_unread(1, 2, 1);
        assert_eq!(wb.unread(1, 2), Some(1));
        wb.flush(&Null).await.expect("flush");
        assert_eq!(wb.sync_key(1, 2), None);
        assert_eq!(wb.len.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn bounded_dirty_set() {
        let wb = WriteBehind::with_limit(100);
        for uid in 1..=1000 {
            wb.report_sync_key(1, uid, 5);
        }
        assert_eq!(wb.len.load(Ordering::Relaxed), 100);
        assert_eq!(wb.dropped(), 900);
        // Updates of entries already held are never dropped.
        let held = (1..=1000)
            .find(|&uid| wb.sync_key(1, uid).is_some())
            .expect("one held");
        wb.report_sync_key(1, held, 50);
        assert_eq!(wb.sync_key(1, held), Some(50));
        assert_eq!(wb.dropped(), 900);
        // After a flush there is room again.
        wb.flush(&Null).await.expect("flush");
        wb.report_sync_key(1, 5000, 1);
        assert_eq!(wb.sync_key(1, 5000), Some(1));
    }
}
