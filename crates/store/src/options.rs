//! Store configuration: durability mode, segment size, checkpoint cadence, retention and every
//! bound on memory, batches and scans. All limits live here so the operator sees them in one place.

use std::time::Duration;

/// When an append is considered durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// An append is acknowledged only after an `fdatasync` that covers it. Concurrent appends
    /// share one write and one fsync (group commit).
    Always,
    /// Appends are acknowledged once written; the log is fsynced at most this long after a write.
    Interval(Duration),
    /// Never fsync the log (except when a segment is closed or a checkpoint is taken).
    None,
}

/// Which old segments may be dropped. A segment is dropped only when it is sealed and wholly
/// covered by the latest checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Drop sealed segments whose last write is older than this.
    pub max_age: Option<Duration>,
    /// Drop the oldest sealed segments while the log's total size exceeds this.
    pub max_total_bytes: Option<u64>,
}

/// Replication role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Accepts appends, serves replication streams.
    #[default]
    Leader,
    /// Accepts only replicated data (`apply_replicated`); can be promoted.
    Follower,
}

/// Histograms the store records into: no-ops unless the node hands in real ones (from its metrics
/// registry).
#[derive(Clone)]
pub struct StoreHistograms {
    /// Duration of each fsync of the log, a checkpoint or a directory.
    pub fsync_seconds: metrics::Histogram,
    /// Messages per group commit (one write).
    pub batch_messages: metrics::Histogram,
    /// Bytes per group commit.
    pub batch_bytes: metrics::Histogram,
}

impl Default for StoreHistograms {
    fn default() -> Self {
        StoreHistograms {
            fsync_seconds: metrics::Histogram::noop(),
            batch_messages: metrics::Histogram::noop(),
            batch_bytes: metrics::Histogram::noop(),
        }
    }
}

impl std::fmt::Debug for StoreHistograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreHistograms")
    }
}

/// Store options. `StoreOptions::default()` is a sensible production configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Where fsync durations and batch sizes are recorded. Default: nowhere.
    pub histograms: StoreHistograms,
    /// Durability of acknowledged appends. Default `Always`.
    pub durability: Durability,
    /// A segment is sealed and a new one started when the next write would make it larger than
    /// this. Default 64 MiB. A single record larger than this gets a segment of its own.
    pub segment_bytes: u64,
    /// Background checkpoint period (only when something was written). Default 10 s.
    pub checkpoint_interval: Duration,
    /// Also checkpoint when this many log bytes were written since the last checkpoint, which
    /// bounds restart replay. Default 64 MiB.
    pub checkpoint_bytes: u64,
    /// Largest `limit` honoured by `sync`. Default 3000.
    pub max_sync_limit: usize,
    /// Largest `n` honoured by `latest`. Default 1000.
    pub max_latest: usize,
    /// Most entries one `sync_since` call examines (entries before the join time are skipped
    /// but count against this). Default 10 000.
    pub max_sync_scan: usize,
    /// Segment retention. Default: keep everything.
    pub retention: Retention,
    /// Bytes of recently written log kept in memory for reads. Default 64 MiB.
    pub cache_bytes: usize,
    /// Most segment files kept open for reading. Default 256.
    pub max_open_files: usize,
    /// Largest message body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Most queues one message may be appended to. Default 100 000.
    pub max_queues_per_message: usize,
    /// Most encoded bytes waiting for the writer; further appends fail with `Overloaded`.
    /// Default 256 MiB.
    pub max_pending_bytes: usize,
    /// Most bytes the writer encodes into one write (one group commit). Default 8 MiB.
    pub max_batch_bytes: usize,
    /// Keep a zero-filled spare segment ready (written in the background once the active
    /// segment is half full) so appends overwrite allocated blocks: an `fdatasync` then does not
    /// have to commit file-size and extent changes, which roughly halves its cost on ext4/xfs.
    /// Default true.
    pub preallocate: bool,
    /// Replication role. Default leader.
    pub role: Role,
    /// Most idempotency keys remembered (`docs/storage-format.md` §4.3; about 120 bytes of
    /// memory each). A retry of a keyed append whose key is still remembered is answered with
    /// the original positions. Default 100 000; 0 remembers none.
    pub dedupe_keys: usize,
    /// Keys are remembered only for records within this many log bytes of the newest one (the
    /// positions a promotion jumped over do not count); it is
    /// also how much of the log's end `Store::open` reads to rebuild them. Default 64 MiB.
    pub dedupe_log_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Always,
            segment_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_bytes: 64 << 20,
            max_sync_limit: 3000,
            max_latest: 1000,
            max_sync_scan: 10_000,
            retention: Retention::default(),
            cache_bytes: 64 << 20,
            max_open_files: 256,
            max_body_bytes: 1 << 20,
            max_queues_per_message: 100_000,
            max_pending_bytes: 256 << 20,
            max_batch_bytes: 8 << 20,
            preallocate: true,
            role: Role::Leader,
            dedupe_keys: 100_000,
            dedupe_log_bytes: 64 << 20,
            histograms: StoreHistograms::default(),
        }
    }
}

impl StoreOptions {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 4096 {
            return Err("segment_bytes must be at least 4096".into());
        }
        if self.max_sync_limit == 0 || self.max_latest == 0 || self.max_sync_scan == 0 {
            return Err("max_sync_limit, max_latest and max_sync_scan must be positive".into());
        }
        if self.max_open_files < 2 {
            return Err("max_open_files must be at least 2".into());
        }
        if self.max_queues_per_message == 0 || self.max_queues_per_message > (1 << 24) {
            return Err("max_queues_per_message must be between 1 and 16777216".into());
        }
        if self.max_body_bytes > (256 << 20) {
            return Err("max_body_bytes must be at most 256 MiB".into());
        }
        if let Durability::Interval(d) = self.durability {
            if d.is_zero() {
                return Err("Durability::Interval needs a positive duration".into());
            }
        }
        if self.checkpoint_interval.is_zero() {
            return Err("checkpoint_interval must be positive".into());
        }
        Ok(())
    }
}
