//! The [`Store`] handle and the state its threads share: submission queue, writer state, reader
//! views, health and statistics. `Store::open` lives in `recovery`, the writer loop in `writer`,
//! the in-process recovery after a failed write in `resume`, reads in `read`, replication in
//! `replication`.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::error::StoreError;
use crate::format::message_record_len;
use crate::health::{Health, StoreHealth};
use crate::lock::DirLock;
use crate::log::{LogView, Segment};
use crate::options::{Role, StoreOptions};
use crate::queue::{Head, PublishedHeads, QueueMap};
use crate::replication::ReplicationBatch;
use crate::resources::FdReserve;
use crate::{AppendTicket, Appended, NewMessage, QueueId, SyncPage, Ticket};

/// The segment being appended to.
pub(crate) struct Active {
    pub file: Arc<File>,
    pub seg: Arc<Segment>,
    /// Made from a zero-filled spare: writes overwrite allocated blocks and never need space.
    pub preallocated: bool,
}

/// State owned by the writer thread (the checkpointer reads it between batches).
pub(crate) struct WriterState {
    pub heads: QueueMap<Head>,
    /// Position after the last record written.
    pub end: u64,
    pub active: Option<Active>,
    /// Written but not yet fsynced (Interval / None durability).
    pub unsynced: bool,
    /// A spare segment was requested for the next roll.
    pub spare_requested: bool,
    pub last_sync: Instant,
}

pub(crate) type AppendResult = Result<Vec<Vec<Appended>>, StoreError>;

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
}

impl Submission {
    pub fn bytes(&self) -> usize {
        match self {
            Submission::Append { bytes, .. } => *bytes,
            Submission::Replicate { batch, .. } => batch.data.len(),
            Submission::Jump { .. } => crate::format::JUMP_RECORD_LEN,
            Submission::Withdraw { .. } => 0,
        }
    }

    /// Processed by the writer on its own (never in a group commit with others): it moves the
    /// log to another position or reads back what was written.
    pub fn exclusive(&self) -> bool {
        match self {
            Submission::Append { .. } => false,
            Submission::Replicate { batch, .. } => batch.jump_from().is_some(),
            Submission::Jump { .. } | Submission::Withdraw { .. } => true,
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
        }
    }
}

#[derive(Default)]
pub(crate) struct Pending {
    pub queue: VecDeque<Submission>,
    pub bytes: usize,
    pub closing: bool,
}

/// The next segment's file (`segment.spare`), opened ahead of need so a roll needs no new
/// descriptor.
pub(crate) struct Spare {
    pub file: File,
    /// Zero-filled to `segment_bytes` and fsynced; otherwise empty (the segment grows as written).
    pub zero_filled: bool,
}

/// The preallocator thread's state.
#[derive(Default)]
pub(crate) struct PreallocState {
    /// The spare, ready for the next roll.
    pub spare: Option<Spare>,
    /// The writer wants a spare.
    pub wanted: bool,
    /// Bytes the active segment may still grow by (0 when it is preallocated), so a zero-filled
    /// spare is only written when both fit.
    pub active_growth: u64,
    pub stop: bool,
}

/// Checkpoint bookkeeping (guarded by its own mutex, which also serialises checkpoints).
pub(crate) struct CkptState {
    pub generation: u64,
    /// Position covered by the newest checkpoint on disk (0 and `has` false if none).
    pub position: u64,
    pub has: bool,
    /// Slot the next checkpoint goes to (0 = a, 1 = b).
    pub next_slot: u8,
    pub last_at: Instant,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub messages: AtomicU64,
    pub entries: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub checkpoints: AtomicU64,
    pub segments_dropped: AtomicU64,
}

/// Counters and sizes, for monitoring and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages appended since open.
    pub messages: u64,
    /// Queue entries appended since open.
    pub entries: u64,
    /// Group commits (writes) since open.
    pub batches: u64,
    /// fsyncs of the log since open.
    pub fsyncs: u64,
    pub bytes_written: u64,
    pub checkpoints: u64,
    pub segments_dropped: u64,
    /// Oldest retained position.
    pub log_start: u64,
    /// Position after the newest acknowledged record.
    pub log_end: u64,
    pub segments: usize,
    pub queues: usize,
    /// Position covered by the newest checkpoint.
    pub checkpoint_position: u64,
}

/// Shared by the store handle and its threads.
pub(crate) struct Inner {
    pub opts: StoreOptions,
    pub dir: PathBuf,
    pub log: LogView,
    pub heads: PublishedHeads,
    pub state: Mutex<WriterState>,
    pub pending: Mutex<Pending>,
    pub pending_cv: Condvar,
    pub syncq: Mutex<crate::writer::SyncQueue>,
    pub sync_cv: Condvar,
    pub end_lock: Mutex<()>,
    pub end_cv: Condvar,
    pub end_watch: tokio::sync::watch::Sender<u64>,
    /// The sync thread finished a round with nothing queued (waited for by recovery).
    pub sync_idle_cv: Condvar,
    /// Accepting appends, recovering, or failed; and what degrades the store.
    pub health: Health,
    /// fsync failures since open. A written batch records it; if it changed before the batch is
    /// acknowledged, a failed fsync may have covered the batch, which is therefore refused.
    pub fsync_failures: AtomicU64,
    /// The store's directory, open for fsyncs of it and `fstatvfs` (no descriptor needed then).
    pub dir_file: File,
    /// A descriptor held in reserve for the store's own opens.
    pub reserve: FdReserve,
    pub closed: AtomicBool,
    /// Test hook: make the next fsyncs fail.
    pub inject_fsync_failure: AtomicBool,
    /// The writer thread has exited (after `close`).
    pub stopped: AtomicBool,
    pub ckpt: Mutex<CkptState>,
    /// `ckpt.position`, readable without waiting for a checkpoint in progress.
    pub ckpt_position: AtomicU64,
    pub ckpt_signal: Mutex<bool>,
    pub ckpt_cv: Condvar,
    pub role: AtomicU8,
    /// Readers see queue entries only below this position (`u64::MAX`: no limit). In `sync`
    /// replication the store server keeps it at what a follower confirmed (the commit index).
    pub visible_limit: AtomicU64,
    /// The commit index is maintained ([`Store::enable_commit_visibility`]): a leader starts at
    /// its log end, a promotion resets it to the end after the JUMP.
    pub commit_visibility: AtomicBool,
    pub prealloc: Mutex<PreallocState>,
    pub prealloc_cv: Condvar,
    pub stats: Stats,
    pub _lock: DirLock,
}

const ROLE_LEADER: u8 = 0;
const ROLE_FOLLOWER: u8 = 1;

pub(crate) fn role_byte(r: Role) -> u8 {
    match r {
        Role::Leader => ROLE_LEADER,
        Role::Follower => ROLE_FOLLOWER,
    }
}

impl Inner {
    pub fn is_follower(&self) -> bool {
        self.role.load(Ordering::Acquire) == ROLE_FOLLOWER
    }

    /// A write or fsync failed: refuse appends and have the writer thread recover.
    pub fn enter_recovery(&self, e: &StoreError) {
        self.health.fail(e);
        // the writer may be waiting for submissions: it runs the recovery
        self.pending_cv.notify_all();
    }

    /// fsyncs `file` (its data only, or also its metadata such as a changed length). A failure
    /// is counted so that batches written before it are not acknowledged.
    pub fn fsync(&self, file: &File, path: &Path, data_only: bool) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let r = if self.inject_fsync_failure.load(Ordering::Acquire) {
            Err(std::io::Error::other("injected fsync failure"))
        } else if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        };
        self.opts
            .histograms
            .fsync_seconds
            .record(started.elapsed().as_secs_f64());
        r.map_err(|e| {
            self.fsync_failures.fetch_add(1, Ordering::AcqRel);
            StoreError::io("fsync", path, e)
        })
    }

    /// fsyncs the store's directory so that creations, renames and removals in it are durable.
    pub fn sync_dir(&self) -> Result<(), StoreError> {
        self.fsync(&self.dir_file, &self.dir, false)
            .map_err(|e| match e {
                StoreError::Io { path, source, .. } => StoreError::Io {
                    op: "fsync directory",
                    path,
                    offset: None,
                    source,
                },
                e => e,
            })
    }

    /// Opens a file, using the descriptor reserve if the process has run out.
    pub fn open_file(&self, opts: &std::fs::OpenOptions, path: &Path) -> std::io::Result<File> {
        self.reserve.open_with(|| opts.open(path))
    }

    /// Wakes replication readers after `durable_end` moved (or the store closed).
    pub fn notify_end(&self) {
        drop(self.end_lock.lock());
        self.end_cv.notify_all();
        self.end_watch
            .send_replace(self.log.durable_end.load(Ordering::Acquire));
    }

    pub fn submit(&self, sub: Submission) {
        let bytes = sub.bytes();
        let mut p = self.pending.lock();
        if p.closing {
            drop(p);
            sub.fail(StoreError::Closed);
            return;
        }
        if !p.queue.is_empty() && p.bytes + bytes > self.opts.max_pending_bytes {
            drop(p);
            sub.fail(StoreError::Overloaded(format!(
                "more than {} bytes are waiting to be written",
                self.opts.max_pending_bytes
            )));
            return;
        }
        p.bytes += bytes;
        p.queue.push_back(sub);
        drop(p);
        self.pending_cv.notify_one();
    }

    fn validate(&self, m: &NewMessage) -> Result<usize, StoreError> {
        if m.queues.is_empty() {
            return Err(StoreError::InvalidArgument(
                "a message needs at least one queue".into(),
            ));
        }
        if m.queues.len() > self.opts.max_queues_per_message {
            return Err(StoreError::InvalidArgument(format!(
                "a message may go to at most {} queues, this one lists {}",
                self.opts.max_queues_per_message,
                m.queues.len()
            )));
        }
        if m.body.len() > self.opts.max_body_bytes {
            return Err(StoreError::InvalidArgument(format!(
                "message body of {} bytes exceeds the maximum of {}",
                m.body.len(),
                self.opts.max_body_bytes
            )));
        }
        Ok(message_record_len(m.body.len(), m.queues.len()))
    }

    pub fn wake_checkpointer(&self) {
        drop(self.ckpt_signal.lock());
        self.ckpt_cv.notify_one();
    }
}

/// The message store. `Send + Sync`; share it as `Arc<Store>`.
pub struct Store {
    pub(crate) inner: Arc<Inner>,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) close_result: Mutex<Option<Result<(), String>>>,
    /// Translation of GoBelieve sync keys, when the store was written by an import.
    pub(crate) legacy_keys: Option<crate::gobelieve::KeyMap>,
}

impl Store {
    /// Opens (creating if missing) the store in `dir`: recovery (see `recovery`) re-establishes
    /// the state from the files, then the engine's threads start — the writer, the syncer, the
    /// checkpointer and the preallocator.
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store, StoreError> {
        let r = crate::recovery::open(dir.as_ref(), opts)?;
        let inner = r.inner;
        let dir = inner.dir.clone();
        let spawn = |name: &str, f: fn(Arc<Inner>)| {
            let i = inner.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(i))
                .map_err(|e| StoreError::io("spawn a store thread", &dir, e))
        };
        let threads = vec![
            spawn("store-writer", crate::writer::writer_loop)?,
            spawn("store-sync", crate::writer::sync_loop)?,
            spawn("store-checkpoint", crate::checkpoint::checkpointer_loop)?,
            spawn("store-prealloc", crate::prealloc::prealloc_loop)?,
        ];
        tracing::info!(
            dir = %dir.display(),
            log_start = r.log_start,
            log_end = r.end,
            replayed_records = r.replayed,
            elapsed_ms = r.started.elapsed().as_millis() as u64,
            "store opened"
        );
        let legacy_keys = match crate::gobelieve::KeyMap::open(&dir) {
            Ok(m) => m,
            Err(why) => {
                // The messages are all there; only the translation of GoBelieve keys is missing.
                tracing::error!(error = %why, "the GoBelieve key map cannot be read: clients still holding GoBelieve sync keys get their history again from the start");
                None
            }
        };
        if let Some(m) = &legacy_keys {
            tracing::info!(
                pairs = m.len(),
                base = m.base(),
                "GoBelieve sync keys below the base are translated"
            );
        }
        Ok(Store {
            inner,
            threads: Mutex::new(threads),
            close_result: Mutex::new(None),
            legacy_keys,
        })
    }

    /// Submits messages; they become durable together with every other concurrent submission
    /// (group commit). The ticket yields, for each message, one [`Appended`] per queue, in order.
    pub fn append(&self, batch: Vec<NewMessage>) -> AppendTicket {
        let inner = &self.inner;
        if batch.is_empty() {
            return Ticket::ready(Ok(Vec::new()));
        }
        if inner.is_follower() {
            return Ticket::ready(Err(StoreError::NotLeader));
        }
        if let Some(e) = inner.health.refusal() {
            return Ticket::ready(Err(e));
        }
        let mut bytes = 0usize;
        for m in &batch {
            match inner.validate(m) {
                Ok(n) => bytes += n,
                Err(e) => return Ticket::ready(Err(e)),
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let results = batch
            .iter()
            .map(|m| Vec::with_capacity(m.queues.len()))
            .collect();
        inner.submit(Submission::Append {
            msgs: batch,
            results,
            bytes,
            tx,
        });
        Ticket::new(rx)
    }

    /// [`Store::append`] and wait. Do not call from an async runtime thread.
    pub fn append_blocking(
        &self,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Vec<Appended>>, StoreError> {
        self.append(batch).wait()
    }

    /// The next entries of `queue` after `after_key`, oldest first, at most `limit`
    /// (clamped to `1..=max_sync_limit`). Nothing is ever skipped: `has_more` says whether to
    /// call again from `last_key`.
    pub fn sync(
        &self,
        queue: QueueId,
        after_key: i64,
        limit: usize,
    ) -> Result<SyncPage, StoreError> {
        let after_key = self.translate_legacy_key(queue, after_key)?;
        self.inner.sync_page(queue, after_key, limit, None)
    }

    /// Super-group sync honouring a member's join time: entries with `timestamp < join_ts` are
    /// never returned (but `last_key` moves past them). At most `max_sync_scan` entries are
    /// examined per call.
    pub fn sync_since(
        &self,
        queue: QueueId,
        after_key: i64,
        limit: usize,
        join_ts: i64,
    ) -> Result<SyncPage, StoreError> {
        let after_key = self.translate_legacy_key(queue, after_key)?;
        self.inner.sync_page(queue, after_key, limit, Some(join_ts))
    }

    /// The newest `n` entries (clamped to `max_latest`), oldest first.
    pub fn latest(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<crate::StoredMessage>, StoreError> {
        self.inner.latest(queue, n)
    }

    /// Newest entries walking the peer-only chain (entries whose content is not a group
    /// message), at most `n` (clamped to `max_latest`), oldest first.
    pub fn latest_peer(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<crate::StoredMessage>, StoreError> {
        self.inner.latest_peer(queue, n)
    }

    /// How many entries of `queue` are newer than `after_key`: O(log n) reads, no scan.
    pub fn new_count(&self, queue: QueueId, after_key: i64) -> Result<u64, StoreError> {
        let after_key = self.translate_legacy_key(queue, after_key)?;
        self.inner.new_count(queue, after_key)
    }

    /// The banter key equivalent to `key` for `queue`: `key` itself, unless the store was
    /// written by a GoBelieve import and `key` is a GoBelieve sync key (`1..base`), which is
    /// translated through the import's key map (`gobelieve::keymap`): to the newest entry of
    /// `queue` the client already had, or to the base when it had none. [`Store::sync`],
    /// [`Store::sync_since`] and [`Store::new_count`] apply it themselves.
    pub fn translate_legacy_key(&self, queue: QueueId, key: i64) -> Result<i64, StoreError> {
        let Some(map) = &self.legacy_keys else {
            return Ok(key);
        };
        if key <= 0 || key >= map.base() {
            return Ok(key);
        }
        let paired = map
            .lookup(key)
            .map_err(|e| StoreError::io("read the GoBelieve key map", self.dir(), e))?;
        let found = match paired {
            Some(b) => self.inner.key_at_or_before(queue, b)?,
            None => None,
        };
        Ok(found.unwrap_or(map.base()))
    }

    /// Newest visible key of `queue` (see [`Store::try_last_key`]); 0 if empty, or if the queue
    /// cannot be read.
    pub fn last_key(&self, queue: QueueId) -> i64 {
        self.try_last_key(queue).unwrap_or(0)
    }

    /// Newest visible key of `queue`, 0 if empty: the newest acknowledged entry, or with a commit
    /// index (`sync` replication) the newest one below it, found in O(log n) reads.
    pub fn try_last_key(&self, queue: QueueId) -> Result<i64, StoreError> {
        self.inner.visible_last_key(queue)
    }

    /// Writes a checkpoint of the queue heads now (no-op if nothing changed).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.checkpoint()
    }

    /// Drops old segments according to the retention options now (also done in the background).
    pub fn apply_retention(&self) -> Result<usize, StoreError> {
        self.inner.apply_retention()
    }

    /// Oldest retained log position.
    pub fn log_start(&self) -> u64 {
        self.inner.log.log_start.load(Ordering::Acquire)
    }

    /// Position after the newest acknowledged record.
    pub fn log_end(&self) -> u64 {
        self.inner.log.durable_end.load(Ordering::Acquire)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Counters and sizes.
    pub fn stats(&self) -> StoreStats {
        let i = &self.inner;
        let ck = i.ckpt_position.load(Ordering::Acquire);
        StoreStats {
            messages: i.stats.messages.load(Ordering::Relaxed),
            entries: i.stats.entries.load(Ordering::Relaxed),
            batches: i.stats.batches.load(Ordering::Relaxed),
            fsyncs: i.stats.fsyncs.load(Ordering::Relaxed),
            bytes_written: i.stats.bytes_written.load(Ordering::Relaxed),
            checkpoints: i.stats.checkpoints.load(Ordering::Relaxed),
            segments_dropped: i.stats.segments_dropped.load(Ordering::Relaxed),
            log_start: self.log_start(),
            log_end: self.log_end(),
            segments: i.log.segment_count(),
            queues: i.heads.len(),
            checkpoint_position: ck,
        }
    }

    /// Fault injection for tests: every later fsync of the log fails (as if the disk had).
    #[doc(hidden)]
    pub fn inject_fsync_failure(&self) {
        self.inner
            .inject_fsync_failure
            .store(true, Ordering::Release);
    }

    /// Ends [`Store::inject_fsync_failure`]: fsyncs work again (as after a disk was replaced).
    #[doc(hidden)]
    pub fn clear_injected_fsync_failure(&self) {
        self.inner
            .inject_fsync_failure
            .store(false, Ordering::Release);
    }

    /// Whether the store refuses appends now: it is recovering from a failed write or fsync
    /// (and resumes by itself), or it failed for good. See [`Store::health`].
    pub fn is_poisoned(&self) -> bool {
        self.inner.health.is_refusing()
    }

    /// Whether appends are accepted now.
    pub fn accepts_appends(&self) -> bool {
        !self.inner.health.is_refusing()
    }

    /// The store's health: accepting appends or not, the failure it is recovering from and since
    /// when, and what degrades it (little free space, no descriptor in reserve, failing
    /// checkpoints or preallocation). For health and readiness endpoints.
    pub fn health(&self) -> StoreHealth {
        self.inner.health.snapshot()
    }

    /// Flushes pending appends, fsyncs, writes a final checkpoint and stops the store's threads.
    /// Later appends fail with [`StoreError::Closed`]; reads keep working. Idempotent.
    pub fn close(&self) -> Result<(), StoreError> {
        let mut res = self.close_result.lock();
        if let Some(r) = res.as_ref() {
            return r.clone().map_err(StoreError::Poisoned);
        }
        let r = self.close_inner();
        *res = Some(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        r
    }

    /// Like [`Store::close`] but without the final checkpoint, leaving the directory as a crash
    /// right after the last acknowledged append would (everything acknowledged is durable; the
    /// next open replays the log since the last background checkpoint). For recovery benchmarks
    /// and tests.
    #[doc(hidden)]
    pub fn close_without_checkpoint(&self) -> Result<(), StoreError> {
        let mut res = self.close_result.lock();
        if let Some(r) = res.as_ref() {
            return r.clone().map_err(StoreError::Poisoned);
        }
        let r = self.stop_threads().and_then(|()| self.inner.final_sync());
        *res = Some(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        r
    }

    fn close_inner(&self) -> Result<(), StoreError> {
        self.stop_threads()?;
        self.inner.final_sync()?;
        self.inner.checkpoint()
    }

    fn stop_threads(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        {
            let mut p = inner.pending.lock();
            p.closing = true;
        }
        inner.pending_cv.notify_all();
        {
            let mut stop = inner.ckpt_signal.lock();
            *stop = true;
        }
        inner.ckpt_cv.notify_all();
        inner.prealloc.lock().stop = true;
        inner.prealloc_cv.notify_all();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        inner.stopped.store(true, Ordering::Release);
        inner.notify_end();
        if inner.health.is_recovering() {
            // one last attempt, so that a store whose disk came back closes cleanly
            inner.recovery_step(true);
        }
        match inner.health.refusal() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "store close on drop failed");
        }
    }
}

impl Inner {
    /// fsyncs whatever the writer left unsynced (used at close).
    pub fn final_sync(&self) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        self.sync_active(&mut st)
    }
}
