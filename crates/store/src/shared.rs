//! What the store's handle and its threads share: the read side (the log view, the published
//! queue heads, the commit index and the role), health and counters, the directory and its
//! descriptor reserve, fsyncs (and the count of failed ones), and the wake-up of readers when the
//! acknowledged end of the log moves. Every field is private: the writer and the sync thread
//! change it only through the methods here (`publish`, `become_leader`, …), and each thread keeps
//! its own state to itself (`writer`, `syncer`, `checkpoint`, `prealloc`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::StoreError;
use crate::health::Health;
use crate::lock::DirLock;
use crate::log::LogView;
use crate::options::{Role, StoreOptions};
use crate::queue::{Published, PublishedHeads};
use crate::resources::{free_bytes, FdReserve};
use crate::QueueId;

/// Counters since open, for [`crate::StoreStats`].
#[derive(Default)]
pub(crate) struct Stats {
    pub messages: AtomicU64,
    pub entries: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub checkpoints: AtomicU64,
    pub segments_dropped: AtomicU64,
    /// Keyed appends answered from the key window (retries: nothing written).
    pub repeated: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

const ROLE_LEADER: u8 = 0;
const ROLE_FOLLOWER: u8 = 1;

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Leader => ROLE_LEADER,
        Role::Follower => ROLE_FOLLOWER,
    }
}

/// Shared by the store handle, its threads and its replication streams.
pub(crate) struct Shared {
    opts: StoreOptions,
    dir: PathBuf,
    /// The store's directory, open for fsyncs of it and `fstatvfs` (no descriptor needed then).
    dir_file: File,
    /// A descriptor held in reserve for the store's own opens.
    reserve: FdReserve,
    log: LogView,
    heads: PublishedHeads,
    /// Accepting appends, recovering, or failed; and what degrades the store.
    health: Health,
    stats: Stats,
    /// fsync failures since open. A written batch records it; if it changed before the batch is
    /// acknowledged, a failed fsync may have covered the batch, which is therefore refused.
    fsync_failures: AtomicU64,
    /// Test hook: make the next fsyncs fail.
    inject_fsync_failure: AtomicBool,
    end_lock: Mutex<()>,
    end_cv: Condvar,
    end_watch: tokio::sync::watch::Sender<u64>,
    /// The writer thread has exited (after `close`).
    stopped: AtomicBool,
    role: AtomicU8,
    /// Readers see queue entries only below this position (`u64::MAX`: no limit). In `sync`
    /// replication the store server keeps it at what a follower confirmed (the commit index).
    visible_limit: AtomicU64,
    /// The commit index is maintained (`Store::enable_commit_visibility`): a leader starts at its
    /// log end, a promotion resets it to the end after the JUMP.
    commit_visibility: AtomicBool,
    _lock: DirLock,
}

impl Shared {
    /// `log` and `heads` as recovery re-established them.
    pub fn new(
        opts: StoreOptions,
        dir: PathBuf,
        dir_file: File,
        lock: DirLock,
        log: LogView,
        heads: PublishedHeads,
    ) -> Shared {
        let (end_watch, _) = tokio::sync::watch::channel(log.durable_end.load(Ordering::Acquire));
        Shared {
            role: AtomicU8::new(role_byte(opts.role)),
            opts,
            dir,
            dir_file,
            reserve: FdReserve::new(),
            log,
            heads,
            health: Health::new(),
            stats: Stats::default(),
            fsync_failures: AtomicU64::new(0),
            inject_fsync_failure: AtomicBool::new(false),
            end_lock: Mutex::new(()),
            end_cv: Condvar::new(),
            end_watch,
            stopped: AtomicBool::new(false),
            visible_limit: AtomicU64::new(u64::MAX),
            commit_visibility: AtomicBool::new(false),
            _lock: lock,
        }
    }

    pub fn opts(&self) -> &StoreOptions {
        &self.opts
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> &LogView {
        &self.log
    }

    /// The queue heads readers see.
    pub fn heads(&self) -> &PublishedHeads {
        &self.heads
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Oldest retained position.
    pub fn log_start(&self) -> u64 {
        self.log.log_start.load(Ordering::Acquire)
    }

    /// Position after the newest acknowledged record.
    pub fn durable_end(&self) -> u64 {
        self.log.durable_end.load(Ordering::Acquire)
    }

    /// Makes a written, now durable batch visible: its bytes to the recent-write cache, then the
    /// log end, then its queue heads. Readers do not take the writer's locks: they look up a queue
    /// head first and then read the log up to the log end, so the end must cover a batch before
    /// any of its heads is published. (Publishing the heads first let a sync that found a new head
    /// between the two steps read "beyond the log end" and fail.) The head map's shard lock then
    /// orders the log-end store before any reader's later load of it.
    pub fn publish(&self, start: u64, buf: Vec<u8>, end: u64, updates: &[(QueueId, Published)]) {
        self.log.cache_push(start, buf);
        self.log.durable_end.store(end, Ordering::Release);
        self.heads.set_many(updates);
    }

    pub fn is_follower(&self) -> bool {
        self.role.load(Ordering::Acquire) == ROLE_FOLLOWER
    }

    /// A promotion completed with the log ending at `end`: everything this store holds is the
    /// truth now, so the commit index (if maintained) starts there, then appends are accepted.
    pub fn become_leader(&self, end: u64) {
        if self.commit_visibility.load(Ordering::Acquire) {
            self.visible_limit.store(end, Ordering::Release);
        }
        self.role.store(ROLE_LEADER, Ordering::Release);
    }

    /// Readers see only entries below the commit index from now on; a leader's starts at its log
    /// end, a follower's when it is promoted.
    pub fn enable_commit_visibility(&self) {
        self.commit_visibility.store(true, Ordering::Release);
        if !self.is_follower() {
            let end = self.durable_end();
            let _ = self
                .visible_limit
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    (v == u64::MAX).then_some(end)
                });
        }
    }

    /// Raises the commit index to `pos` (never beyond the log end); no-op without commit
    /// visibility, or on a follower.
    pub fn raise_visible_limit(&self, pos: u64) {
        if !self.commit_visibility.load(Ordering::Acquire) || self.is_follower() {
            return;
        }
        let pos = pos.min(self.durable_end());
        let _ = self
            .visible_limit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v != u64::MAX && pos > v).then_some(pos)
            });
    }

    /// The commit index (`u64::MAX`: none).
    pub fn visible_limit(&self) -> u64 {
        self.visible_limit.load(Ordering::Acquire)
    }

    /// fsyncs `file` (its data only, or also its metadata such as a changed length). A failure
    /// is counted so that batches written before it are not acknowledged.
    pub fn fsync(&self, file: &File, path: &Path, data_only: bool) -> Result<(), StoreError> {
        let started = Instant::now();
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

    /// fsync failures so far (see `fsync`).
    pub fn fsync_epoch(&self) -> u64 {
        self.fsync_failures.load(Ordering::Acquire)
    }

    /// Makes every later fsync of the log fail (`on`), or work again.
    pub fn inject_fsync_failure(&self, on: bool) {
        self.inject_fsync_failure.store(on, Ordering::Release);
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

    /// fsyncs the directory without counting a failure against the log (for files that are not
    /// part of it yet, such as the spare segment).
    pub fn sync_dir_uncounted(&self) -> Result<(), StoreError> {
        self.dir_file
            .sync_all()
            .map_err(|e| StoreError::io("fsync directory", &self.dir, e))
    }

    /// Free bytes on the store's filesystem.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        free_bytes(&self.dir_file)
    }

    /// Opens a file, using the descriptor reserve if the process has run out.
    pub fn open_file(&self, opts: &std::fs::OpenOptions, path: &Path) -> std::io::Result<File> {
        self.reserve.open_with(|| opts.open(path))
    }

    /// Runs an operation that needs a descriptor, using the reserve if the process has run out.
    pub fn with_reserve<T>(&self, op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
        self.reserve.open_with(op)
    }

    /// Restores the descriptor reserve if it was used; whether it is held now.
    pub fn replenish_reserve(&self) -> bool {
        self.reserve.replenish()
    }

    /// Wakes replication readers after the log end moved (or the store closed).
    pub fn notify_end(&self) {
        drop(self.end_lock.lock());
        self.end_cv.notify_all();
        self.end_watch.send_replace(self.durable_end());
    }

    /// A receiver of the log end, for async replication readers.
    pub fn watch_end(&self) -> tokio::sync::watch::Receiver<u64> {
        self.end_watch.subscribe()
    }

    /// Waits until the log end is beyond `pos`, the writer stopped or `deadline` passed; whether
    /// the deadline passed first.
    pub fn wait_end_beyond(&self, pos: u64, deadline: Instant) -> bool {
        let mut g = self.end_lock.lock();
        if self.durable_end() > pos || self.is_stopped() {
            return false;
        }
        self.end_cv.wait_until(&mut g, deadline).timed_out()
    }

    /// Waits until the log is acknowledged up to `position` (the sync thread is at most one fsync
    /// behind the writer); fails if the store starts refusing appends or has stopped first.
    pub fn wait_acknowledged(&self, position: u64) -> Result<(), StoreError> {
        let mut g = self.end_lock.lock();
        loop {
            if self.durable_end() >= position {
                return Ok(());
            }
            if let Some(e) = self.health.refusal() {
                return Err(e);
            }
            if self.is_stopped() {
                return Err(StoreError::Poisoned(format!(
                    "the log is not acknowledged up to position {position}"
                )));
            }
            self.end_cv.wait_for(&mut g, Duration::from_millis(20));
        }
    }

    /// The writer thread has exited.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}
