//! Group commit, in two threads.
//!
//! * The **writer** drains pending submissions (up to `max_batch_bytes`), encodes them into one
//!   buffer with their keys and queue links, and writes it with one `pwrite` per segment touched.
//!   It owns the queue heads and rolls segments.
//! * The **sync thread** takes every batch written so far, issues one `fdatasync` (durability
//!   `Always`), and only then publishes them in order — recent-write cache, log end, queue heads
//!   (a head is never visible before the log end covers it) — and completes their tickets.
//!
//! So the next batch is encoded and written while the previous one is being fsynced, and one
//! fsync covers every append that arrived meanwhile. Nothing is visible to readers or
//! acknowledged before it is durable.
//!
//! Two submissions are processed alone in a writer turn (`process_control`): a promotion, which
//! seals the log and opens a segment at a higher position with a JUMP record, and a withdrawal,
//! which reads back the unconfirmed records (written, maybe not yet durable), walks each touched
//! queue back to its newest entry before them and writes WITHDRAW records with those heads. A
//! replicated batch that opens with a JUMP is also processed alone, so the follower can open the
//! same segment first. Both control records then go through the sync thread like any batch.
//!
//! **Failures.** A failed write (no space, no descriptor for the next segment, an I/O error) fails
//! the batch being written; batches written before it are still fsynced and acknowledged. A failed
//! fsync fails every batch written before it that is not yet acknowledged (the page cache can no
//! longer be trusted for them), and every later one until recovery. Either way the store then
//! refuses appends while the writer re-establishes its state from disk (`resume`), retrying with
//! back-off, and resumes by itself. When the active segment grows and the disk is full but a
//! zero-filled spare is ready, the writer seals the segment early and continues in the spare
//! instead of failing.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::{Active, AppendResult, Inner, Submission, WriterState};
use crate::error::StoreError;
use crate::format::{
    check_record, decode_withdraw, encode_segment_header, queue_parts, segment_file_name, Entry,
    MessageEncoder, MessageView, RecordCheck, ENTRY_FLAG_GROUP_CONTENT, RECORD_HEADER_LEN,
    RECORD_JUMP, RECORD_WITHDRAW, SEGMENT_HEADER_LEN,
};
use crate::health::Cause;
use crate::log::Segment;
use crate::options::Durability;
use crate::prealloc::spare_path;
use crate::queue::{Head, Published, QueueMap};
use crate::{Appended, NewMessage, QueueId};

pub(crate) enum Outcome {
    Append(tokio::sync::oneshot::Sender<AppendResult>, AppendResult),
    Replicate(
        tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
}

impl Outcome {
    fn complete(self) {
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
fn fail_all(outcomes: impl IntoIterator<Item = Outcome>, first: StoreError) {
    let copy = first.duplicate();
    let mut first = Some(first);
    for o in outcomes {
        o.fail(first.take().unwrap_or_else(|| copy.duplicate()));
    }
}

/// Body of the writer thread.
pub(crate) fn writer_loop(inner: Arc<Inner>) {
    loop {
        // While recovering, an attempt is made whenever one is due; submissions arriving
        // meanwhile are refused at once (never left waiting).
        let next_attempt = if inner.health.is_recovering() {
            inner.recovery_step(false)
        } else {
            None
        };
        let mut batch = Vec::new();
        let mut periodic_sync = false;
        let mut attempt_due = false;
        {
            let mut p = inner.pending.lock();
            loop {
                if !p.queue.is_empty() {
                    break;
                }
                if p.closing {
                    inner.syncq.lock().closing = true;
                    inner.sync_cv.notify_all();
                    return;
                }
                if let Some(at) = next_attempt {
                    if inner.pending_cv.wait_until(&mut p, at).timed_out() && p.queue.is_empty() {
                        attempt_due = true;
                        break;
                    }
                    continue;
                }
                if inner.health.is_recovering() {
                    // a failure was reported by another thread (sync thread, checkpointer)
                    attempt_due = true;
                    break;
                }
                match inner.opts.durability {
                    Durability::Interval(every) if inner_unsynced(&inner) => {
                        if inner.pending_cv.wait_for(&mut p, every).timed_out()
                            && p.queue.is_empty()
                        {
                            periodic_sync = true;
                            break;
                        }
                    }
                    _ => inner.pending_cv.wait(&mut p),
                }
            }
            let mut bytes = 0usize;
            // An exclusive submission (promotion, withdrawal, a replicated jump) is processed on
            // its own: it ends the batch before it, and nothing joins it.
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
                if exclusive || bytes >= inner.opts.max_batch_bytes {
                    break;
                }
            }
        }
        if attempt_due {
            continue;
        }
        if periodic_sync {
            inner.interval_sync();
            continue;
        }
        // A bug must not leave waiters hanging or the log half-written without anyone noticing:
        // fail the store for good and stop.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.process(batch)));
        if r.is_err() {
            inner
                .health
                .fail_for_good("the writer thread panicked".into());
            inner.syncq.lock().closing = true;
            inner.sync_cv.notify_all();
            let mut p = inner.pending.lock();
            p.bytes = 0;
            for s in p.queue.drain(..) {
                s.fail(StoreError::Poisoned("the writer thread panicked".into()));
            }
            return;
        }
    }
}

/// A written batch waiting to become durable and visible.
pub(crate) struct Written {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) buf: Vec<u8>,
    pub(crate) updates: Vec<(QueueId, Published)>,
    pub(crate) outcomes: Vec<Outcome>,
    /// The submitted messages, dropped by the sync thread after the tickets are completed (off
    /// the writer's path).
    pub(crate) spent: Vec<Vec<NewMessage>>,
    /// The segment the batch ended in (earlier segments were fsynced when they were sealed).
    pub(crate) file: Option<Arc<std::fs::File>>,
    /// `Inner::fsync_failures` when the batch was written.
    pub(crate) fsync_epoch: u64,
}

#[derive(Default)]
pub(crate) struct SyncQueue {
    pub items: std::collections::VecDeque<Written>,
    pub closing: bool,
    /// The sync thread is working on items it took from the queue.
    pub busy: bool,
    /// A batch was refused after a failed fsync: every later one is refused too (the log end is
    /// cumulative) until the writer has recovered.
    pub failing: bool,
}

/// Body of the sync thread: fsyncs once for everything written so far (durability `Always`),
/// then publishes the batches in order — cache, log end, queue heads — and completes their
/// tickets. A failed fsync refuses every batch it may have covered and starts a recovery.
pub(crate) fn sync_loop(inner: Arc<Inner>) {
    loop {
        let (items, mut failing) = {
            let mut q = inner.syncq.lock();
            q.busy = false;
            if q.items.is_empty() {
                inner.sync_idle_cv.notify_all();
            }
            while q.items.is_empty() && !q.closing {
                inner.sync_cv.wait(&mut q);
            }
            if q.items.is_empty() {
                inner.sync_idle_cv.notify_all();
                return;
            }
            q.busy = true;
            (q.items.drain(..).collect::<Vec<Written>>(), q.failing)
        };
        let mut failure: Option<StoreError> = None;
        if inner.health.is_failed() {
            failure = inner.health.refusal();
        }
        if failure.is_none() && !failing && inner.opts.durability == Durability::Always {
            if let Some(f) = items.last().and_then(|w| w.file.as_ref()) {
                match inner.fsync(f, &inner.dir, true) {
                    Ok(()) => {
                        inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        // name the segment rather than the directory
                        let err = match err {
                            StoreError::Io { op, source, .. } => StoreError::Io {
                                op,
                                path: inner
                                    .log
                                    .segment_for(items[items.len() - 1].start)
                                    .map(|s| s.path.clone())
                                    .unwrap_or_else(|| inner.dir.clone()),
                                offset: None,
                                source,
                            },
                            e => e,
                        };
                        inner.enter_recovery(&err);
                        failure = Some(err);
                    }
                }
            }
        }
        // A failed fsync anywhere (here, at a roll, in a checkpoint) since a batch was written
        // may have covered it: refuse it, and everything after it.
        let epoch = inner.fsync_failures.load(Ordering::Acquire);
        let mut done = Vec::with_capacity(items.len());
        let mut spent = Vec::with_capacity(items.len());
        let mut end = 0;
        let mut published = false;
        for w in items {
            if failing || failure.is_some() || w.fsync_epoch != epoch {
                if !failing {
                    failing = true;
                    inner.syncq.lock().failing = true;
                    if !inner.health.is_refusing() {
                        let e = StoreError::Poisoned(
                            "an fsync failed before this append was durable".into(),
                        );
                        inner.enter_recovery(&e);
                    }
                }
                let e = match failure.take() {
                    Some(e) => e,
                    None => inner.health.refusal().unwrap_or_else(|| {
                        StoreError::Poisoned(
                            "an fsync failed before this append was durable".into(),
                        )
                    }),
                };
                fail_all(w.outcomes, e);
                continue;
            }
            // Order matters: readers do not take the writer's locks. They look up a queue head
            // first and then read the log up to `durable_end`, so the log end must cover a
            // batch before any of its queue heads is published. (Publishing the heads first let
            // a sync that found a new head between the two steps read "beyond the log end" and
            // fail.) The head map's shard lock then orders the `durable_end` store before any
            // reader's later load of it.
            inner.log.cache_push(w.start, w.buf);
            inner.log.durable_end.store(w.end, Ordering::Release);
            inner.heads.set_many(&w.updates);
            end = w.end;
            published = true;
            done.push(w.outcomes);
            spent.push(w.spent);
        }
        if published {
            inner.notify_end();
        }
        for o in done.into_iter().flatten() {
            o.complete();
        }
        drop(spent);
        if published {
            // not the checkpoint's lock: a checkpoint in progress waits for this thread
            let ck = inner.ckpt_position.load(Ordering::Acquire);
            if end.saturating_sub(ck) >= inner.opts.checkpoint_bytes {
                inner.wake_checkpointer();
            }
        }
    }
}

fn inner_unsynced(inner: &Inner) -> bool {
    // A try_lock keeps the waiting writer from blocking on a checkpoint in progress.
    inner.state.try_lock().is_none_or(|st| st.unsynced)
}

impl Inner {
    fn interval_sync(&self) {
        let mut st = self.state.lock();
        if let Err(e) = self.sync_active(&mut st) {
            self.enter_recovery(&e);
        }
    }

    /// fsyncs the active segment if anything is unsynced.
    pub(crate) fn sync_active(&self, st: &mut WriterState) -> Result<(), StoreError> {
        if !st.unsynced {
            return Ok(());
        }
        if let Some(a) = st.active.as_ref() {
            self.fsync(&a.file, &a.seg.path, true)?;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        st.unsynced = false;
        st.last_sync = Instant::now();
        Ok(())
    }

    fn process(&self, mut batch: Vec<Submission>) {
        if let Some(e) = self.health.refusal() {
            for s in batch {
                s.fail(e.duplicate());
            }
            return;
        }
        if batch.len() == 1
            && matches!(
                batch[0],
                Submission::Jump { .. } | Submission::Withdraw { .. }
            )
        {
            if let Some(sub) = batch.pop() {
                self.process_control(sub);
            }
            return;
        }
        let mut st = self.state.lock();
        // A replicated batch opening with a JUMP from this log's end continues in a new segment
        // at the batch's start (it is alone in this call: see `Submission::exclusive`).
        let mut jumped = false;
        if let [Submission::Replicate { batch: b, .. }] = &batch[..] {
            if self.is_follower() && b.start > st.end && b.jump_from() == Some(st.end) {
                let (from, to) = (st.end, b.start);
                if let Err(e) = self.roll_at(&mut st, from, to) {
                    self.enter_recovery(&e);
                    drop(st);
                    for s in batch {
                        s.fail(e.duplicate());
                    }
                    return;
                }
                st.end = to;
                jumped = true;
            }
        }
        let start = st.end;
        let fsync_epoch = self.fsync_failures.load(Ordering::Acquire);
        let mut buf = self.log.take_buffer(batch.iter().map(|s| s.bytes()).sum());
        let mut bounds: Vec<usize> = Vec::new();
        let mut updates: Vec<(QueueId, Published)> = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut messages = 0u64;
        let mut entries = 0u64;
        let mut spent = Vec::with_capacity(batch.len());
        for sub in batch {
            match sub {
                Submission::Append {
                    msgs,
                    mut results,
                    tx,
                    ..
                } => {
                    if self.is_follower() {
                        outcomes.push(Outcome::Append(tx, Err(StoreError::NotLeader)));
                        continue;
                    }
                    for (m, res) in msgs.iter().zip(results.iter_mut()) {
                        let pos = start + buf.len() as u64;
                        encode_message(&mut buf, pos, m, &mut st.heads, &mut updates, res);
                        bounds.push(buf.len());
                        messages += 1;
                        entries += m.queues.len() as u64;
                    }
                    outcomes.push(Outcome::Append(tx, Ok(results)));
                    spent.push(msgs);
                }
                Submission::Replicate { batch, tx } => {
                    let r = if self.is_follower() {
                        let pos = start + buf.len() as u64;
                        apply_replicated(
                            &mut buf,
                            &mut bounds,
                            pos,
                            &batch.data,
                            batch.start,
                            jumped,
                            &mut st.heads,
                            &mut updates,
                        )
                    } else {
                        Err(StoreError::NotFollower)
                    };
                    outcomes.push(Outcome::Replicate(tx, r));
                }
                // Exclusive: dispatched to `process_control` before this loop.
                other @ (Submission::Jump { .. } | Submission::Withdraw { .. }) => {
                    other.fail(StoreError::InvalidArgument(
                        "a control submission in a group commit".into(),
                    ));
                }
            }
        }
        if buf.is_empty() {
            drop(st);
            for o in outcomes {
                o.complete();
            }
            return;
        }
        if let Err(e) = self.write_batch(&mut st, start, &buf, &bounds) {
            // The queue heads already count this batch: the recovery rebuilds them from disk.
            self.enter_recovery(&e);
            drop(st);
            fail_all(outcomes, e);
            return;
        }
        let end = start + buf.len() as u64;
        st.end = end;
        self.maybe_request_spare(&mut st);
        if let Durability::Interval(every) = self.opts.durability {
            // under continuous load the idle-time sync in the loop never fires
            if st.last_sync.elapsed() >= every {
                if let Err(e) = self.sync_active(&mut st) {
                    self.enter_recovery(&e);
                    drop(st);
                    fail_all(outcomes, e);
                    return;
                }
            }
        }
        let file = st.active.as_ref().map(|a| a.file.clone());
        drop(st);
        self.stats.messages.fetch_add(messages, Ordering::Relaxed);
        self.stats.entries.fetch_add(entries, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.opts.histograms.batch_messages.record(messages as f64);
        self.opts.histograms.batch_bytes.record(buf.len() as f64);
        self.stats
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        // Durability and publication happen on the sync thread, so the next batch can be
        // encoded and written while this one is being fsynced.
        let mut q = self.syncq.lock();
        q.items.push_back(Written {
            start,
            end,
            buf,
            updates,
            outcomes,
            spent,
            file,
            fsync_epoch,
        });
        drop(q);
        self.sync_cv.notify_one();
    }

    /// Writes `buf` (records ending at `bounds`) at position `start`, rolling segments at record
    /// boundaries. Durability is the sync thread's job.
    pub(crate) fn write_batch(
        &self,
        st: &mut WriterState,
        start: u64,
        buf: &[u8],
        bounds: &[usize],
    ) -> Result<(), StoreError> {
        let seg_limit = self.opts.segment_bytes.saturating_sub(SEGMENT_HEADER_LEN);
        let mut off = 0usize;
        let mut bi = 0usize; // first bound > off
        let mut early_roll_tried = false;
        while off < buf.len() {
            let pos = start + off as u64;
            let active = st
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
                self.roll(st, pos)?;
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
                    && self
                        .prealloc
                        .lock()
                        .spare
                        .as_ref()
                        .is_some_and(|s| s.zero_filled)
                {
                    early_roll_tried = true;
                    tracing::warn!(error = %err, "disk full: continuing in the preallocated spare segment");
                    self.roll(st, pos)?;
                    continue;
                }
                return Err(err);
            }
            active.seg.end.store(start + cut as u64, Ordering::Release);
            bi = bounds.partition_point(|&b| b <= cut);
            off = cut;
        }
        st.unsynced = true;
        Ok(())
    }

    /// Seals the active segment (trimmed to its records, fsynced) and starts a new one whose
    /// first record is at `base`, from the spare prepared ahead when one is ready.
    fn roll(&self, st: &mut WriterState, base: u64) -> Result<(), StoreError> {
        self.roll_at(st, base, base)
    }

    /// [`Self::roll`] for a log that ends at `end` and continues at `base` (above `end` after
    /// a promotion: the new segment then opens with a JUMP record).
    pub(crate) fn roll_at(
        &self,
        st: &mut WriterState,
        end: u64,
        base: u64,
    ) -> Result<(), StoreError> {
        let sync = self.opts.durability != Durability::None;
        if sync {
            self.sync_active(st)?;
        }
        if let Some(old) = st.active.as_ref() {
            let len = SEGMENT_HEADER_LEN + (end - old.seg.base);
            old.file
                .set_len(len)
                .map_err(|e| StoreError::io_at("trim segment", &old.seg.path, len, e))?;
            if sync {
                self.fsync(&old.file, &old.seg.path, false)?;
            }
        }
        let path = self.dir.join(segment_file_name(base));
        let spare = self.prealloc.lock().spare.take();
        let (file, preallocated) = match spare {
            Some(spare) => {
                // header first, then the rename: a segment under its final name always has one
                let sp = spare_path(&self.dir);
                spare
                    .file
                    .write_all_at(&encode_segment_header(base), 0)
                    .map_err(|e| StoreError::io_at("write segment header", &sp, 0, e))?;
                if sync {
                    self.fsync(&spare.file, &sp, spare.zero_filled)?;
                }
                std::fs::rename(&sp, &path)
                    .map_err(|e| StoreError::io("rename spare segment", &path, e))?;
                (spare.file, spare.zero_filled)
            }
            None => {
                let (seg, file) = Segment::create(&self.dir, base, |o, p| self.open_file(o, p))?;
                if sync {
                    self.fsync(&file, &seg.path, true)?;
                }
                (file, false)
            }
        };
        if sync {
            self.sync_dir()?;
        }
        let seg = Arc::new(Segment::new(base, path, base));
        self.log.add_segment(seg.clone());
        st.active = Some(Active {
            file: Arc::new(file),
            seg,
            preallocated,
        });
        st.spare_requested = false;
        Ok(())
    }

    /// Asks the preallocator for the next segment once the active one is half full.
    pub(crate) fn maybe_request_spare(&self, st: &mut WriterState) {
        if st.spare_requested {
            return;
        }
        let Some(a) = st.active.as_ref() else { return };
        let used = st.end - a.seg.base;
        if used * 2 >= self.opts.segment_bytes {
            st.spare_requested = true;
            let growth = if a.preallocated {
                0
            } else {
                self.opts.segment_bytes.saturating_sub(used)
            };
            let mut p = self.prealloc.lock();
            p.wanted = true;
            p.active_growth = growth;
            drop(p);
            self.prealloc_cv.notify_one();
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
    for (a, b) in records {
        buf.extend_from_slice(&data[a..b]);
        bounds.push(buf.len());
    }
    updates.extend(staged);
    Ok(pos.max(p))
}
