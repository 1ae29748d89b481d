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
//! no-op; a gap is refused, except the one a JUMP record opens.
//!
//! [`Store::promote`] turns a follower into a leader. It never reuses a position: the log
//! continues at `format::jump_target` of its end (at least 1 TiB higher, a multiple of 2^40),
//! in a new segment that opens with a JUMP record, so every key a client got from the old leader
//! — also one this follower never received — is below every key the new leader hands out.
//!
//! `sync` replication: [`Store::enable_commit_visibility`] makes readers see only entries below
//! a commit index that the store server raises as followers confirm
//! ([`Store::raise_visible_limit`]); [`Store::withdraw_unconfirmed`] takes records no follower
//! confirmed in time back off their queues (WITHDRAW records), so they are never delivered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::engine::Store;
use crate::error::StoreError;
use crate::format::{
    check_record, jump_from, RecordCheck, JUMP_RECORD_LEN, KEY_RECORD_LEN, RECORD_HEADER_LEN,
    RECORD_KEY, RECORD_MESSAGE,
};
use crate::log::ReplicationBatch;
use crate::options::Role;
use crate::shared::Shared;
use crate::submit::Submission;
use crate::Ticket;

/// A position-based reader of the log that follows it as it grows.
pub struct ReplicationStream {
    shared: Arc<Shared>,
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
        let start = self.shared.log_start();
        let end = self.shared.durable_end();
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
        if !self.shared.log().holds_position(after_pos) {
            return Err(StoreError::InvalidArgument(format!(
                "replication position {after_pos} lies in the gap this log jumped over at a \
                 promotion: that log diverged from this one"
            )));
        }
        Ok(ReplicationStream {
            shared: self.shared.clone(),
            next: after_pos,
            max_bytes: DEFAULT_REPLICATION_BATCH_BYTES,
            watch: self.shared.watch_end(),
        })
    }

    /// Appends replicated records (follower only). Resolves to the follower's new log end.
    pub fn apply_replicated(&self, batch: ReplicationBatch) -> Ticket<u64> {
        if !self.shared.is_follower() {
            return Ticket::ready(Err(StoreError::NotFollower));
        }
        if let Some(e) = self.shared.health().refusal() {
            return Ticket::ready(Err(e));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submissions.submit(Submission::Replicate { batch, tx });
        Ticket::new(rx)
    }

    /// Makes a follower a leader: it stops accepting replicated data and accepts appends, at
    /// positions above every one it holds (see the module docs). Resolves to the new log end.
    pub fn promote(&self) -> Ticket<u64> {
        self.promote_past(0)
    }

    /// [`Store::promote`], continuing above `leader_end` too: the old leader's end as the
    /// replication stream last reported it.
    pub fn promote_past(&self, leader_end: u64) -> Ticket<u64> {
        if !self.shared.is_follower() {
            return Ticket::ready(Err(StoreError::NotFollower));
        }
        if let Some(e) = self.shared.health().refusal() {
            return Ticket::ready(Err(e));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submissions.submit(Submission::Jump {
            min_end: leader_end,
            tx,
        });
        Ticket::new(rx)
    }

    /// `sync` replication: from now on readers see only entries below the commit index, which
    /// starts at the log end (a leader's) and is raised by [`Store::raise_visible_limit`]. A
    /// follower keeps serving everything it has until it is promoted; the commit index then
    /// starts at its new log end.
    pub fn enable_commit_visibility(&self) {
        self.shared.enable_commit_visibility();
    }

    /// Raises the commit index to `pos` (a record boundary a follower acknowledged as durable;
    /// never beyond the log end). No-op without commit visibility, or on a follower.
    pub fn raise_visible_limit(&self, pos: u64) {
        self.shared.raise_visible_limit(pos);
    }

    /// Bytes of log records between two positions, not counting the gaps that promotions jumped
    /// over (a replication lag in bytes).
    pub fn log_bytes_between(&self, from: u64, to: u64) -> u64 {
        self.shared
            .log()
            .segments()
            .iter()
            .map(|s| {
                let end = s.end.load(Ordering::Acquire).min(to);
                end.saturating_sub(s.base.max(from))
            })
            .sum::<u64>()
            .min(to.saturating_sub(from))
    }

    /// Readers see entries below this position: the commit index, or the log end without one.
    pub fn visible_limit(&self) -> u64 {
        self.shared.visible_limit().min(self.shared.durable_end())
    }

    /// Withdraws every record from position `from` (the commit index) to the log end: they were
    /// never confirmed by a follower, and their appends are answered with an error. Each queue
    /// they touched is set back to its newest entry before `from`, recorded in WITHDRAW records
    /// that replicate like any other, so followers (and a restart) take them back too. Resolves
    /// to the position of the first WITHDRAW record: every withdrawn record ends at or before it.
    pub fn withdraw_unconfirmed(&self, from: u64) -> Ticket<u64> {
        if self.shared.is_follower() {
            return Ticket::ready(Err(StoreError::NotLeader));
        }
        if let Some(e) = self.shared.health().refusal() {
            return Ticket::ready(Err(e));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submissions.submit(Submission::Withdraw { from, tx });
        Ticket::new(rx)
    }

    /// The current role.
    pub fn role(&self) -> Role {
        if self.shared.is_follower() {
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
        let log = self.shared.log();
        let end = self.shared.durable_end();
        if self.next >= end {
            if self.shared.is_stopped() && self.shared.durable_end() <= self.next {
                return Err(StoreError::Closed);
            }
            return Ok(None);
        }
        let start = self.shared.log_start();
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
        if self.next >= seg_end {
            // The end of a sealed segment below the log end: a promotion continued the log
            // higher up, in a segment that opens with a JUMP from here.
            return self.across_jump(end);
        }
        let avail = (seg_end - self.next) as usize;
        let mut want = avail.min(self.max_bytes).max(RECORD_HEADER_LEN.min(avail));
        let mut data = log.read(self.next, want)?;
        // cut at the last whole record; if the first record is larger, fetch it whole
        let mut off = 0usize;
        let mut last_kind = 0u8;
        loop {
            match check_record(&data[off..]) {
                RecordCheck::Valid { len, kind } => {
                    off += len;
                    last_kind = kind;
                }
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
        if last_kind == RECORD_MESSAGE && off < avail {
            data = self.with_following_key(data, off, avail)?;
            off = data.len();
        }
        let batch = ReplicationBatch {
            start: self.next,
            data: data.slice(..off),
        };
        self.next += off as u64;
        Ok(Some(batch))
    }

    /// `data` (whole records up to `off`, ending with a MESSAGE) extended by the KEY record
    /// that follows the message, if one does, and cut at `off` otherwise. A batch never ends
    /// between a message and its key: a follower promoted after holding only the message would
    /// store a retry of it a second time.
    fn with_following_key(
        &self,
        data: Bytes,
        off: usize,
        avail: usize,
    ) -> Result<Bytes, StoreError> {
        if avail < off + KEY_RECORD_LEN {
            return Ok(data.slice(..off));
        }
        let data = if data.len() >= off + KEY_RECORD_LEN {
            data
        } else {
            self.shared.log().read(self.next, off + KEY_RECORD_LEN)?
        };
        match check_record(&data[off..off + KEY_RECORD_LEN]) {
            RecordCheck::Valid { len, kind } if kind == RECORD_KEY => Ok(data.slice(..off + len)),
            _ => Ok(data.slice(..off)),
        }
    }

    /// Moves `next` from the end of a segment to the next segment, whose first record must be a
    /// JUMP from `next`, and reads from there.
    fn across_jump(&mut self, end: u64) -> Result<Option<ReplicationBatch>, StoreError> {
        let log = self.shared.log();
        let Some(next_seg) = log.segment_after(self.next).filter(|s| s.base < end) else {
            return Err(self.bad_record(
                self.next,
                format!("the log ends at {} below the log end {end}", self.next),
            ));
        };
        let rec = log.read(next_seg.base, JUMP_RECORD_LEN)?;
        let ok = matches!(check_record(&rec), RecordCheck::Valid { .. })
            && jump_from(&rec) == Some(self.next);
        if !ok {
            return Err(self.bad_record(
                next_seg.base,
                format!(
                    "segment at {} follows a log ending at {} without a JUMP from there",
                    next_seg.base, self.next
                ),
            ));
        }
        self.next = next_seg.base;
        self.try_next()
    }

    fn bad_record(&self, pos: u64, why: String) -> StoreError {
        let (file, offset) = self.shared.log().locate(pos);
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
            if self.shared.is_stopped() && self.shared.durable_end() <= self.next {
                return self.try_next();
            }
            if self.shared.wait_end_beyond(self.next, deadline) {
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
