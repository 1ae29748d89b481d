//! Group commit, in two threads.
//!
//! * The **writer** drains pending submissions (up to `max_batch_bytes`), encodes them into one
//!   buffer with their keys and queue links, and writes it with one `pwrite` per segment touched.
//!   It owns the queue heads, the log end and the active segment ([`Writer`]), and rolls segments.
//! * The **sync thread** (`syncer`) takes every batch written so far, issues one `fdatasync`
//!   (durability `Always`), and only then publishes them in order — recent-write cache, log end,
//!   queue heads (a head is never visible before the log end covers it) — and completes their
//!   tickets.
//!
//! So the next batch is encoded and written while the previous one is being fsynced, and one
//! fsync covers every append that arrived meanwhile. Nothing is visible to readers or
//! acknowledged before it is durable. When a batch is small, nothing waits to be written and the
//! sync thread is idle — few appends in flight — the writer does the sync thread's part itself
//! (`hand_off`): there is no next batch to overlap with, and it saves waking a second thread per
//! batch.
//!
//! Two submissions are processed alone in a writer turn (`process_control`): a promotion, which
//! seals the log and opens a segment at a higher position with a JUMP record, and a withdrawal,
//! which reads back the unconfirmed records (written, maybe not yet durable), walks each touched
//! queue back to its newest entry before them and writes WITHDRAW records with those heads. A
//! replicated batch that opens with a JUMP is also processed alone, so the follower can open the
//! same segment first. Both control records then go through the sync thread like any batch. A
//! checkpoint's snapshot of the queue heads (`Submission::Snapshot`) is taken alone too, between
//! two batches, with the log fsynced up to there.
//!
//! **Failures.** A failed write (no space, no descriptor for the next segment, an I/O error) fails
//! the batch being written; batches written before it are still fsynced and acknowledged. A failed
//! fsync fails every batch written before it that is not yet acknowledged (the page cache can no
//! longer be trusted for them), and every later one until recovery. Either way the store then
//! refuses appends while the writer re-establishes its state from disk (`resume`), retrying with
//! back-off, and resumes by itself. When the active segment grows and the disk is full but a
//! zero-filled spare is ready, the writer seals the segment early and continues in the spare
//! instead of failing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::encode_heads;
use crate::error::StoreError;
use crate::format::{
    check_record, decode_key, decode_withdraw, encode_key, encode_segment_header, queue_parts,
    segment_file_name, Entry, MessageEncoder, MessageView, RecordCheck, ENTRY_FLAG_GROUP_CONTENT,
    RECORD_HEADER_LEN, RECORD_JUMP, RECORD_KEY, RECORD_MESSAGE, RECORD_WITHDRAW,
    SEGMENT_HEADER_LEN,
};
use crate::health::Cause;
use crate::log::Segment;
use crate::options::Durability;
use crate::prealloc::{spare_path, SpareSlot};
use crate::queue::{Head, Published, QueueMap};
use crate::shared::{Shared, Stats};
use crate::submit::{Snapshot, Submission, Submissions, Taken, Wait};
use crate::syncer::{fail_all, Outcome, Syncer, Written};
use crate::window::{Slot, Window};
use crate::{Appended, NewMessage, QueueId};

/// The most tickets a batch the writer makes durable itself may carry (see `Writer::hand_off`).
const INLINE_TICKETS: usize = 16;

/// The segment being appended to.
pub(crate) struct Active {
    pub file: Arc<File>,
    pub seg: Arc<Segment>,
    /// Made from a zero-filled spare: writes overwrite allocated blocks and never need space.
    pub preallocated: bool,
}

/// The writer thread and everything it owns: the queue heads as written (ahead of what readers
/// see), the log end, the active segment and the batch state. In-process recovery (`resume`) and
/// the control submissions (`control`) run on this thread too; at close the thread hands itself
/// back to `Store::close`, which fsyncs what is left and writes the final checkpoint with it.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub submissions: Arc<Submissions>,
    /// The sync thread's handles: its queue, and what the writer needs to finish a batch itself
    /// when that thread is idle.
    pub syncer: Syncer,
    pub spare: Arc<SpareSlot>,
    pub heads: QueueMap<Head>,
    /// The recent idempotency keys (`window`), as written (ahead of what is durable).
    pub window: Window,
    /// Position after the last record written.
    pub end: u64,
    pub active: Option<Active>,
    /// Written but not yet fsynced (Interval / None durability).
    pub unsynced: bool,
    /// A spare segment was requested for the next roll.
    pub spare_requested: bool,
    pub last_sync: Instant,
}

/// What the writer continues from: the queue heads and key window of a log recovered up to
/// `end`, and the segment it appends to.
pub(crate) struct WriterState {
    pub heads: QueueMap<Head>,
    pub window: Window,
    pub end: u64,
    pub active: Active,
}

impl Writer {
    /// The writer of a recovered log (`state`), handing its batches to `syncer`'s thread.
    pub fn new(
        shared: Arc<Shared>,
        submissions: Arc<Submissions>,
        syncer: Syncer,
        spare: Arc<SpareSlot>,
        state: WriterState,
    ) -> Writer {
        let WriterState {
            heads,
            window,
            end,
            active,
        } = state;
        Writer {
            shared,
            submissions,
            syncer,
            spare,
            heads,
            window,
            end,
            active: Some(active),
            unsynced: false,
            spare_requested: false,
            last_sync: Instant::now(),
        }
    }

    /// A write or fsync failed: refuse appends and recover (this thread runs the recovery).
    pub fn enter_recovery(&self, e: &StoreError) {
        self.shared.health().fail(e);
        self.submissions.wake();
    }

    /// Body of the writer thread; returns the writer once the store closes.
    pub fn run(mut self) -> Writer {
        loop {
            // While recovering, an attempt is made whenever one is due; submissions arriving
            // meanwhile are refused at once (never left waiting).
            let next_attempt = if self.shared.health().is_recovering() {
                self.recovery_step(false)
            } else {
                None
            };
            let idle_sync = match self.shared.opts().durability {
                Durability::Interval(every) if self.unsynced => Some(every),
                _ => None,
            };
            let shared = self.shared.clone();
            let recovering = || shared.health().is_recovering();
            let taken = self.submissions.take(Wait {
                next_attempt,
                idle_sync,
                recovering: &recovering,
                max_batch_bytes: self.shared.opts().max_batch_bytes,
                hold: (self.shared.opts().durability == Durability::Always)
                    .then_some(crate::submit::HOLD_AT_MOST),
            });
            let batch = match taken {
                Taken::Batch(b) => b,
                Taken::Closed => {
                    self.syncer.syncq.close();
                    return self;
                }
                Taken::AttemptDue => continue,
                Taken::IdleSync => {
                    self.interval_sync();
                    continue;
                }
            };
            // A bug must not leave waiters hanging or the log half-written without anyone
            // noticing: fail the store for good and stop.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process(batch)));
            if r.is_err() {
                let why = "the writer thread panicked";
                self.shared.health().fail_for_good(why.into());
                self.syncer.syncq.close();
                self.submissions.fail_all(&StoreError::Poisoned(why.into()));
                return self;
            }
        }
    }

    fn interval_sync(&mut self) {
        if let Err(e) = self.sync_active() {
            self.enter_recovery(&e);
        }
    }

    /// The queue heads for checkpoint `generation`, at this batch boundary, with the log fsynced
    /// up to here; `None` if the log still ends at `unchanged_at` (the last checkpoint's position).
    pub(crate) fn snapshot(
        &mut self,
        generation: u64,
        unchanged_at: Option<u64>,
    ) -> Result<Snapshot, StoreError> {
        if let Some(e) = self.shared.health().refusal() {
            return Err(e);
        }
        if unchanged_at == Some(self.end) {
            return Ok(None);
        }
        if let Err(e) = self.sync_active() {
            self.enter_recovery(&e);
            return Err(e);
        }
        Ok(Some((
            self.end,
            encode_heads(generation, self.end, &self.heads),
        )))
    }

    /// fsyncs the active segment if anything is unsynced.
    pub(crate) fn sync_active(&mut self) -> Result<(), StoreError> {
        if !self.unsynced {
            return Ok(());
        }
        if let Some(a) = self.active.as_ref() {
            self.shared.fsync(&a.file, &a.seg.path, true)?;
            Stats::add(&self.shared.stats().fsyncs, 1);
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn process(&mut self, mut batch: Vec<Submission>) {
        if let Some(e) = self.shared.health().refusal() {
            for s in batch {
                s.fail(e.duplicate());
            }
            return;
        }
        if batch.len() == 1 {
            if let Submission::Snapshot {
                generation,
                unchanged_at,
                ..
            } = batch[0]
            {
                let r = self.snapshot(generation, unchanged_at);
                if let Some(Submission::Snapshot { tx, .. }) = batch.pop() {
                    let _ = tx.send(r);
                }
                return;
            }
            if matches!(
                batch[0],
                Submission::Jump { .. } | Submission::Withdraw { .. }
            ) {
                if let Some(sub) = batch.pop() {
                    self.process_control(sub);
                }
                return;
            }
        }
        // A replicated batch opening with a JUMP from this log's end continues in a new segment
        // at the batch's start (it is alone in this call: see `Submission::exclusive`).
        let mut jumped = false;
        if let [Submission::Replicate { batch: b, .. }] = &batch[..] {
            if self.shared.is_follower() && b.start > self.end && b.jump_from() == Some(self.end) {
                let (from, to) = (self.end, b.start);
                if let Err(e) = self.roll_at(from, to) {
                    self.enter_recovery(&e);
                    for s in batch {
                        s.fail(e.duplicate());
                    }
                    return;
                }
                self.end = to;
                jumped = true;
            }
        }
        let start = self.end;
        let fsync_epoch = self.shared.fsync_epoch();
        let mut buf = self
            .shared
            .log()
            .take_buffer(batch.iter().map(|s| s.bytes()).sum());
        let mut bounds: Vec<usize> = Vec::new();
        let mut updates: Vec<(QueueId, Published)> = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut messages = 0u64;
        let mut entries = 0u64;
        let mut repeated = 0u64;
        let mut spent = Vec::with_capacity(batch.len());
        for sub in batch {
            match sub {
                Submission::Append {
                    msgs,
                    mut results,
                    tx,
                    ..
                } => {
                    if self.shared.is_follower() {
                        outcomes.push(Outcome::Append(tx, Err(StoreError::NotLeader)));
                        continue;
                    }
                    for (m, res) in msgs.iter().zip(results.iter_mut()) {
                        if let Some(found) = m
                            .key
                            .and_then(|k| self.window.get(&k))
                            .and_then(|slot| self.original(slot, start, &buf, m))
                        {
                            // A retry of an append this store holds: the original's positions,
                            // nothing written.
                            *res = found;
                            repeated += 1;
                            continue;
                        }
                        let pos = start + buf.len() as u64;
                        encode_message(&mut buf, pos, m, &mut self.heads, &mut updates, res);
                        // A keyed message and its KEY record are one unit: no segment ends
                        // between them, so no replication batch can carry one without the other.
                        if m.key.is_none() {
                            bounds.push(buf.len());
                        }
                        if let Some(k) = &m.key {
                            let len = (start + buf.len() as u64 - pos) as u32;
                            encode_key(&mut buf, pos, k);
                            bounds.push(buf.len());
                            self.window.insert(*k, pos, len);
                        }
                        messages += 1;
                        entries += m.queues.len() as u64;
                    }
                    outcomes.push(Outcome::Append(tx, Ok(results)));
                    spent.push(msgs);
                }
                Submission::Replicate { batch, tx } => {
                    let r = if self.shared.is_follower() {
                        let pos = start + buf.len() as u64;
                        apply_replicated(
                            &mut buf,
                            &mut bounds,
                            pos,
                            &batch.data,
                            batch.start,
                            jumped,
                            &mut self.heads,
                            &mut self.window,
                            &mut updates,
                        )
                    } else {
                        Err(StoreError::NotFollower)
                    };
                    outcomes.push(Outcome::Replicate(tx, r));
                }
                // Exclusive: dispatched to `process_control` or `snapshot` before this loop.
                other @ (Submission::Jump { .. }
                | Submission::Withdraw { .. }
                | Submission::Snapshot { .. }) => {
                    other.fail(StoreError::InvalidArgument(
                        "a control submission in a group commit".into(),
                    ));
                }
            }
        }
        if buf.is_empty() {
            Stats::add(&self.shared.stats().repeated, repeated);
            if repeated > 0 {
                // Only retries: answered once everything written before is durable (their
                // originals may still be on their way), in order, like any batch.
                self.hand_off(Written {
                    start,
                    end: start,
                    buf,
                    updates,
                    outcomes,
                    spent,
                    file: self.active.as_ref().map(|a| a.file.clone()),
                    fsync_epoch,
                });
                return;
            }
            for o in outcomes {
                o.complete();
            }
            return;
        }
        if let Err(e) = self.write_batch(start, &buf, &bounds) {
            // The queue heads already count this batch: the recovery rebuilds them from disk.
            self.enter_recovery(&e);
            fail_all(outcomes, e);
            return;
        }
        let end = start + buf.len() as u64;
        self.end = end;
        self.maybe_request_spare();
        if let Durability::Interval(every) = self.shared.opts().durability {
            // under continuous load the idle-time sync in the loop never fires
            if self.last_sync.elapsed() >= every {
                if let Err(e) = self.sync_active() {
                    self.enter_recovery(&e);
                    fail_all(outcomes, e);
                    return;
                }
            }
        }
        let file = self.active.as_ref().map(|a| a.file.clone());
        Stats::add(&self.shared.stats().messages, messages);
        Stats::add(&self.shared.stats().repeated, repeated);
        Stats::add(&self.shared.stats().entries, entries);
        Stats::add(&self.shared.stats().batches, 1);
        self.shared
            .opts()
            .histograms
            .batch_messages
            .record(messages as f64);
        self.shared
            .opts()
            .histograms
            .batch_bytes
            .record(buf.len() as f64);
        Stats::add(&self.shared.stats().bytes_written, buf.len() as u64);
        self.hand_off(Written {
            start,
            end,
            buf,
            updates,
            outcomes,
            spent,
            file,
            fsync_epoch,
        });
    }

    /// Hands a written batch on to become durable and visible. Normally the sync thread does it,
    /// so the next batch is encoded and written while this one is being fsynced and the last
    /// one's tickets are completed. When the batch is small (at most [`INLINE_TICKETS`] tickets),
    /// nothing waits to be written and the sync thread is idle — few appends in flight — this
    /// thread does it at once: the same fsync and publication, without waking another thread.
    /// Larger batches keep the hand-off: completing many tickets here would hold up the next
    /// batch (measured: −9 % messages/s at full speed without the bound).
    fn hand_off(&self, w: Written) {
        let w = if w.outcomes.len() <= INLINE_TICKETS && self.submissions.is_empty() {
            match self.syncer.finish_inline(w) {
                Some(w) => w,
                None => return,
            }
        } else {
            w
        };
        self.syncer.syncq.push(w);
    }

    /// Writes `buf` (records ending at `bounds`) at position `start`, rolling segments at record
    /// boundaries. Durability is the sync thread's job.
    pub(crate) fn write_batch(
        &mut self,
        start: u64,
        buf: &[u8],
        bounds: &[usize],
    ) -> Result<(), StoreError> {
        let seg_limit = self
            .shared
            .opts()
            .segment_bytes
            .saturating_sub(SEGMENT_HEADER_LEN);
        let mut off = 0usize;
        let mut bi = 0usize; // first bound > off
        let mut early_roll_tried = false;
        while off < buf.len() {
            let pos = start + off as u64;
            let active = self
                .active
                .as_ref()
                .ok_or_else(|| StoreError::Poisoned("no active segment".into()))?;
            let used = pos - active.seg.base;
            let room = seg_limit.saturating_sub(used) as usize;
            // largest record boundary that fits in the room left
            let fit = bounds[bi..].partition_point(|&b| b - off <= room);
            let cut = if fit > 0 {
                bounds[bi + fit - 1]
            } else if used == 0 {
                bounds[bi] // a single record larger than a segment gets a segment of its own
            } else {
                self.roll(pos)?;
                continue;
            };
            let file_off = SEGMENT_HEADER_LEN + used;
            if let Err(e) = active.file.write_all_at(&buf[off..cut], file_off) {
                let err = StoreError::io_at("write", &active.seg.path, file_off, e);
                // Out of space while the segment grows, with zero-filled space waiting in the
                // spare: seal this segment here and continue in the spare. Positions do not
                // depend on where segments end, so the batch stays as encoded.
                if !early_roll_tried
                    && used > 0
                    && !active.preallocated
                    && Cause::of(&err) == Cause::NoSpace
                    && self.spare.zero_filled_ready()
                {
                    early_roll_tried = true;
                    tracing::warn!(error = %err, "disk full: continuing in the preallocated spare segment");
                    self.roll(pos)?;
                    continue;
                }
                return Err(err);
            }
            active.seg.end.store(start + cut as u64, Ordering::Release);
            bi = bounds.partition_point(|&b| b <= cut);
            off = cut;
        }
        self.unsynced = true;
        Ok(())
    }

    /// Seals the active segment (trimmed to its records, fsynced) and starts a new one whose
    /// first record is at `base`, from the spare prepared ahead when one is ready.
    fn roll(&mut self, base: u64) -> Result<(), StoreError> {
        self.roll_at(base, base)
    }

    /// [`Self::roll`] for a log that ends at `end` and continues at `base` (above `end` after
    /// a promotion: the new segment then opens with a JUMP record).
    pub(crate) fn roll_at(&mut self, end: u64, base: u64) -> Result<(), StoreError> {
        let sync = self.shared.opts().durability != Durability::None;
        if sync {
            self.sync_active()?;
        }
        if let Some(old) = self.active.as_ref() {
            let len = SEGMENT_HEADER_LEN + (end - old.seg.base);
            old.file
                .set_len(len)
                .map_err(|e| StoreError::io_at("trim segment", &old.seg.path, len, e))?;
            if sync {
                self.shared.fsync(&old.file, &old.seg.path, false)?;
            }
        }
        let path = self.shared.dir().join(segment_file_name(base));
        let spare = self.spare.take();
        let (file, preallocated) = match spare {
            Some(spare) => {
                // header first, then the rename: a segment under its final name always has one
                let sp = spare_path(self.shared.dir());
                spare
                    .file
                    .write_all_at(&encode_segment_header(base), 0)
                    .map_err(|e| StoreError::io_at("write segment header", &sp, 0, e))?;
                if sync {
                    self.shared.fsync(&spare.file, &sp, spare.zero_filled)?;
                }
                std::fs::rename(&sp, &path)
                    .map_err(|e| StoreError::io("rename spare segment", &path, e))?;
                (spare.file, spare.zero_filled)
            }
            None => {
                let (seg, file) =
                    Segment::create(self.shared.dir(), base, |o, p| self.shared.open_file(o, p))?;
                if sync {
                    self.shared.fsync(&file, &seg.path, true)?;
                }
                (file, false)
            }
        };
        if sync {
            self.shared.sync_dir()?;
        }
        let seg = Arc::new(Segment::new(base, path, base));
        self.shared.log().add_segment(seg.clone());
        self.active = Some(Active {
            file: Arc::new(file),
            seg,
            preallocated,
        });
        self.spare_requested = false;
        Ok(())
    }

    /// The positions of the original of `m`, a keyed append remembered at `slot`: the record
    /// there (in this batch's `buf`, which starts at `start`, or in the files: written, maybe
    /// not yet durable) if it is a message with `m`'s command and queues. `None` (store `m`
    /// afresh) otherwise — the key was reused for another message, or the record cannot be read
    /// (removed by retention): storing twice is better than losing a message.
    fn original(
        &self,
        slot: Slot,
        start: u64,
        buf: &[u8],
        m: &NewMessage,
    ) -> Option<Vec<Appended>> {
        let len = slot.len as usize;
        let read;
        let rec: &[u8] = if slot.pos >= start {
            let off = (slot.pos - start) as usize;
            buf.get(off..off + len)?
        } else {
            match self.shared.log().read_written(slot.pos, len) {
                Ok(b) => {
                    read = b;
                    &read
                }
                Err(e) => {
                    tracing::debug!(error = %e, position = slot.pos, "the original of a retried append cannot be read; storing it again");
                    return None;
                }
            }
        };
        if rec.len() < RECORD_HEADER_LEN || rec[8] != RECORD_MESSAGE {
            return None;
        }
        let view = MessageView::decode(&rec[RECORD_HEADER_LEN..]).ok()?;
        if view.meta.cmd != m.cmd || view.entry_count() != m.queues.len() {
            return None;
        }
        let mut out = Vec::with_capacity(m.queues.len());
        for (i, q) in m.queues.iter().enumerate() {
            let e = view.entry(i);
            if e.queue() != Some(*q) {
                return None;
            }
            out.push(Appended {
                key: (slot.pos + e.back as u64) as i64,
                prev_key: e.prev_key,
                stored_before: true,
            });
        }
        Some(out)
    }

    /// Asks the preallocator for the next segment once the active one is half full.
    pub(crate) fn maybe_request_spare(&mut self) {
        if self.spare_requested {
            return;
        }
        let Some(a) = self.active.as_ref() else {
            return;
        };
        let used = self.end - a.seg.base;
        if used * 2 >= self.shared.opts().segment_bytes {
            self.spare_requested = true;
            let growth = if a.preallocated {
                0
            } else {
                self.shared.opts().segment_bytes.saturating_sub(used)
            };
            self.spare.want(growth);
        }
    }
}

/// Encodes one message record at log position `pos`, updating the writer's queue heads.
fn encode_message(
    buf: &mut Vec<u8>,
    pos: u64,
    m: &NewMessage,
    heads: &mut QueueMap<Head>,
    updates: &mut Vec<(QueueId, Published)>,
    out: &mut Vec<Appended>,
) {
    let group = m.is_group_content();
    let enc = MessageEncoder::begin(
        buf,
        m.device_id,
        m.timestamp,
        m.cmd,
        m.flag,
        &m.body,
        m.queues.len(),
    );
    for (i, q) in m.queues.iter().enumerate() {
        let back = enc.entry_back(i);
        let key = (pos + back as u64) as i64;
        let head = heads.entry(*q).or_default();
        let links = head.push(key, group);
        let (kind, appid, id) = queue_parts(*q);
        Entry {
            kind,
            flags: if group { ENTRY_FLAG_GROUP_CONTENT } else { 0 },
            back: back as u32,
            appid,
            id,
            seq: links.seq,
            prev_key: links.prev_key,
            jump_key: links.jump_key,
            prev_peer_key: links.prev_peer_key,
        }
        .encode_into(buf);
        updates.push((
            *q,
            Published {
                last_key: key,
                last_seq: links.seq,
            },
        ));
        out.push(Appended {
            key,
            prev_key: links.prev_key,
            stored_before: false,
        });
    }
    let _ = enc.finish(buf);
}

/// Validates replicated records that continue the log at `pos` and stages them in `buf`.
/// Records already present (before `pos`) are skipped; a gap is refused. Queue heads change only
/// if every record is valid and continues its queues.
#[allow(clippy::too_many_arguments)]
fn apply_replicated(
    buf: &mut Vec<u8>,
    bounds: &mut Vec<usize>,
    pos: u64,
    data: &[u8],
    start: u64,
    jumped: bool,
    heads: &mut QueueMap<Head>,
    window: &mut Window,
    updates: &mut Vec<(QueueId, Published)>,
) -> Result<u64, StoreError> {
    if start > pos {
        return Err(StoreError::ReplicationGap { start, end: pos });
    }
    let bad = |p: u64, why: String| {
        StoreError::InvalidArgument(format!("replicated record at position {p}: {why}"))
    };
    let mut off = 0usize;
    let mut p = start;
    let mut overlay: std::collections::HashMap<QueueId, Head> = std::collections::HashMap::new();
    let mut staged: Vec<(QueueId, Published)> = Vec::new();
    let mut records: Vec<(usize, usize)> = Vec::new();
    while off < data.len() {
        let len = match check_record(&data[off..]) {
            RecordCheck::Valid { len, .. } => len,
            RecordCheck::Incomplete { .. } => return Err(bad(p, "incomplete record".into())),
            RecordCheck::Bad(why) => return Err(bad(p, why)),
        };
        let kind = data[off + 8];
        if p < pos {
            if p + len as u64 > pos {
                return Err(bad(p, "does not end where this log ends".into()));
            }
        } else if kind == RECORD_JUMP {
            // Only as the first record of a segment this call just opened after a gap.
            if !(jumped && p == start && off == 0) {
                return Err(bad(p, "a JUMP record that does not open a segment".into()));
            }
            records.push((off, off + len));
        } else if kind == RECORD_WITHDRAW {
            let w = decode_withdraw(&data[off + RECORD_HEADER_LEN..off + len])
                .map_err(|e| bad(p, e))?;
            if w.to != p {
                return Err(bad(p, format!("withdraw record says it is at {}", w.to)));
            }
            for h in &w.heads {
                let head = Head::from_state(h).unwrap_or_default();
                staged.push((
                    h.queue,
                    Published {
                        last_key: head.last_key(),
                        last_seq: head.last_seq,
                    },
                ));
                overlay.insert(h.queue, head);
            }
            records.push((off, off + len));
        } else if kind == RECORD_KEY {
            let (at, _) =
                decode_key(&data[off + RECORD_HEADER_LEN..off + len]).map_err(|e| bad(p, e))?;
            if at >= p {
                return Err(bad(p, format!("a key record naming the record at {at}")));
            }
            records.push((off, off + len));
        } else {
            let view = MessageView::decode(&data[off + RECORD_HEADER_LEN..off + len])
                .map_err(|e| bad(p, e.to_string()))?;
            for i in 0..view.entry_count() {
                let e = view.entry(i);
                let key = (p + e.back as u64) as i64;
                let Some(q) = e.queue() else {
                    return Err(bad(p, "unknown queue kind".into()));
                };
                overlay
                    .entry(q)
                    .or_insert_with(|| heads.get(&q).cloned().unwrap_or_default())
                    .apply(&e, key)
                    .map_err(|why| bad(p, why))?;
                staged.push((
                    q,
                    Published {
                        last_key: key,
                        last_seq: e.seq,
                    },
                ));
            }
            records.push((off, off + len));
        }
        off += len;
        p += len as u64;
    }
    for (q, h) in overlay {
        if h.last_seq == 0 {
            heads.remove(&q);
        } else {
            heads.insert(q, h);
        }
    }
    for (i, &(a, b)) in records.iter().enumerate() {
        let p = start + a as u64;
        if let Err(why) = window.apply_record(p, &data[a..b]) {
            // checked above; cannot happen
            tracing::warn!(position = p, reason = %why, "a replicated record left the key window unchanged");
        }
        buf.extend_from_slice(&data[a..b]);
        // as on the leader: no segment ends between a message and the KEY record naming it
        let key_follows = records
            .get(i + 1)
            .is_some_and(|&(na, _)| data[na + 8] == RECORD_KEY);
        if !key_follows {
            bounds.push(buf.len());
        }
    }
    updates.extend(staged);
    Ok(pos.max(p))
}
