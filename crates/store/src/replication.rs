//! Replication: a follower pulls the leader's log by position.
//!
//! [`Store::subscribe`] returns a [`ReplicationStream`] positioned after `P`. The stream only
//! ever reads by position, from the recent-write cache or the segment files, up to the
//! acknowledged end of the log, and waits when it has caught up. There is no separate "live"
//! registration, so the switch from catch-up to live cannot lose or repeat a record, and a slow
//! follower never holds up the leader. Batches hold whole, checksum-verified records.
//!
//! [`Store::apply_replicated`] (on a store opened with `Role::Follower`) writes those bytes
//! through the follower's own writer (group commit, durability, checkpoints): positions, and
//! therefore sync keys, are identical to the leader's. Re-applying records already present is a
//! no-op; a gap is refused. [`Store::promote`] turns a follower into a leader.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::engine::{role_byte, Inner, Store, Submission};
use crate::error::StoreError;
use crate::format::{check_record, RecordCheck, RECORD_HEADER_LEN};
use crate::options::Role;
use crate::Ticket;

/// Whole log records starting at position `start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationBatch {
    pub start: u64,
    pub data: Bytes,
}

impl ReplicationBatch {
    /// Position after the last record.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// A position-based reader of the log that follows it as it grows.
pub struct ReplicationStream {
    inner: Arc<Inner>,
    next: u64,
    max_bytes: usize,
    watch: tokio::sync::watch::Receiver<u64>,
}

/// Default largest batch a stream returns (a single larger record is returned whole).
pub const DEFAULT_REPLICATION_BATCH_BYTES: usize = 4 << 20;

impl Store {
    /// A stream of every record after log position `after_pos` (a record boundary, e.g. a
    /// follower's `log_end()`), first what exists, then live appends.
    pub fn subscribe(&self, after_pos: u64) -> Result<ReplicationStream, StoreError> {
        let start = self.inner.log.log_start.load(Ordering::Acquire);
        let end = self.inner.log.durable_end.load(Ordering::Acquire);
        if after_pos < start {
            return Err(StoreError::Truncated {
                requested: after_pos,
                first_available: start,
            });
        }
        if after_pos > end {
            return Err(StoreError::InvalidArgument(format!(
                "replication position {after_pos} is beyond this log's end {end}"
            )));
        }
        Ok(ReplicationStream {
            inner: self.inner.clone(),
            next: after_pos,
            max_bytes: DEFAULT_REPLICATION_BATCH_BYTES,
            watch: self.inner.end_watch.subscribe(),
        })
    }

    /// Appends replicated records (follower only). Resolves to the follower's new log end.
    pub fn apply_replicated(&self, batch: ReplicationBatch) -> Ticket<u64> {
        if !self.inner.is_follower() {
            return Ticket::ready(Err(StoreError::NotFollower));
        }
        if let Some(e) = self.inner.health.refusal() {
            return Ticket::ready(Err(e));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.submit(Submission::Replicate { batch, tx });
        Ticket::new(rx)
    }

    /// Makes a follower a leader: it stops accepting replicated data and accepts appends.
    pub fn promote(&self) {
        self.inner
            .role
            .store(role_byte(Role::Leader), Ordering::Release);
    }

    /// The current role.
    pub fn role(&self) -> Role {
        if self.inner.is_follower() {
            Role::Follower
        } else {
            Role::Leader
        }
    }
}

impl ReplicationStream {
    /// Position of the next record this stream returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Sets the largest batch size (at least one whole record is always returned).
    pub fn set_max_bytes(&mut self, n: usize) {
        self.max_bytes = n.max(RECORD_HEADER_LEN);
    }

    /// The next batch if one is available now.
    pub fn try_next(&mut self) -> Result<Option<ReplicationBatch>, StoreError> {
        let log = &self.inner.log;
        let end = log.durable_end.load(Ordering::Acquire);
        if self.next >= end {
            if self.inner.stopped.load(Ordering::Acquire)
                && log.durable_end.load(Ordering::Acquire) <= self.next
            {
                return Err(StoreError::Closed);
            }
            return Ok(None);
        }
        let start = log.log_start.load(Ordering::Acquire);
        if self.next < start {
            return Err(StoreError::Truncated {
                requested: self.next,
                first_available: start,
            });
        }
        // Read up to the end of the segment holding `next`, the log end and the size cap.
        let seg = log.segment_for(self.next).ok_or(StoreError::Truncated {
            requested: self.next,
            first_available: start,
        })?;
        let seg_end = seg.end.load(Ordering::Acquire).min(end);
        let avail = (seg_end - self.next) as usize;
        let mut want = avail.min(self.max_bytes).max(RECORD_HEADER_LEN.min(avail));
        let mut data = log.read(self.next, want)?;
        // cut at the last whole record; if the first record is larger, fetch it whole
        let mut off = 0usize;
        loop {
            match check_record(&data[off..]) {
                RecordCheck::Valid { len, .. } => off += len,
                RecordCheck::Incomplete { needed } if off == 0 => {
                    if needed > avail || needed <= want {
                        return Err(
                            self.bad_record(self.next, "record runs past the log end".to_string())
                        );
                    }
                    want = needed;
                    data = log.read(self.next, want)?;
                }
                RecordCheck::Incomplete { .. } => break,
                RecordCheck::Bad(why) => {
                    if off == 0 {
                        return Err(self.bad_record(self.next + off as u64, why));
                    }
                    break;
                }
            }
            if off == data.len() {
                break;
            }
        }
        if off == 0 {
            return Ok(None);
        }
        let batch = ReplicationBatch {
            start: self.next,
            data: data.slice(..off),
        };
        self.next += off as u64;
        Ok(Some(batch))
    }

    fn bad_record(&self, pos: u64, why: String) -> StoreError {
        let (file, offset) = self.inner.log.locate(pos);
        StoreError::corrupt(file, offset, why)
    }

    /// Waits up to `timeout` for the next batch; `Ok(None)` on timeout.
    pub fn next_blocking(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ReplicationBatch>, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = self.try_next()? {
                return Ok(Some(b));
            }
            let mut g = self.inner.end_lock.lock();
            if self.inner.log.durable_end.load(Ordering::Acquire) > self.next {
                continue;
            }
            if self.inner.stopped.load(Ordering::Acquire) {
                drop(g);
                return self.try_next();
            }
            if self.inner.end_cv.wait_until(&mut g, deadline).timed_out() {
                return Ok(None);
            }
        }
    }

    /// Waits for the next batch (async).
    pub async fn next(&mut self) -> Result<ReplicationBatch, StoreError> {
        loop {
            self.watch.borrow_and_update();
            if let Some(b) = self.try_next()? {
                return Ok(b);
            }
            if self.watch.changed().await.is_err() {
                return Err(StoreError::Closed);
            }
        }
    }
}
