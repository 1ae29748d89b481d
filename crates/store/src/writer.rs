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
//! acknowledged before it is durable. A failed write or fsync poisons the store.
//!
//! Two submissions are processed alone in a writer turn (`process_control`): a promotion, which
//! seals the log and opens a segment at a higher position with a JUMP record, and a withdrawal,
//! which reads back the unconfirmed records (written, maybe not yet durable), walks each touched
//! queue back to its newest entry before them and writes WITHDRAW records with those heads. A
//! replicated batch that opens with a JUMP is also processed alone, so the follower can open the
//! same segment first. Both control records then go through the sync thread like any batch.

use std::fs::OpenOptions;
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
use crate::log::{sync_dir, Segment};
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

/// Body of the writer thread.
pub(crate) fn writer_loop(inner: Arc<Inner>) {
    loop {
        let mut batch = Vec::new();
        let mut periodic_sync = false;
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
        if periodic_sync {
            inner.interval_sync();
            continue;
        }
        // A bug must not leave waiters hanging or the log half-written without anyone noticing:
        // poison the store and stop.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.process(batch)));
        if r.is_err() {
            inner.set_poison("the writer thread panicked".into());
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
}

#[derive(Default)]
pub(crate) struct SyncQueue {
    pub items: std::collections::VecDeque<Written>,
    pub closing: bool,
}

/// Body of the sync thread: fsyncs once for everything written so far (durability `Always`),
/// then publishes the batches in order — cache, log end, queue heads — and completes their
/// tickets. A failed fsync poisons the store and fails every waiting ticket.
pub(crate) fn sync_loop(inner: Arc<Inner>) {
    loop {
        let items: Vec<Written> = {
            let mut q = inner.syncq.lock();
            while q.items.is_empty() && !q.closing {
                inner.sync_cv.wait(&mut q);
            }
            if q.items.is_empty() {
                return;
            }
            q.items.drain(..).collect()
        };
        let mut failure = inner.poison_error();
        if failure.is_none() && inner.opts.durability == Durability::Always {
            if let Some(f) = items.last().and_then(|w| w.file.as_ref()) {
                let r = if inner.inject_fsync_failure.load(Ordering::Acquire) {
                    Err(std::io::Error::other("injected fsync failure"))
                } else {
                    f.sync_data()
                };
                match r {
                    Ok(()) => {
                        inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let path = inner
                            .log
                            .segment_for(items[0].start)
                            .map(|s| s.path.clone())
                            .unwrap_or_else(|| inner.dir.clone());
                        let err = StoreError::io("fsync", path, e);
                        inner.set_poison(err.to_string());
                        failure = Some(err);
                    }
                }
            }
        }
        if let Some(err) = failure {
            let mut first = Some(err);
            for w in items {
                for o in w.outcomes {
                    let e = match first.take() {
                        Some(e) => e,
                        None => inner
                            .poison_error()
                            .unwrap_or(StoreError::Poisoned("fsync failed".into())),
                    };
                    o.fail(e);
                }
            }
            continue;
        }
        let end = items.last().map_or(0, |w| w.end);
        let mut done = Vec::with_capacity(items.len());
        let mut spent = Vec::with_capacity(items.len());
        for w in items {
            // Order matters: readers do not take the writer's locks. They look up a queue head
            // first and then read the log up to `durable_end`, so the log end must cover a
            // batch before any of its queue heads is published. (Publishing the heads first let
            // a sync that found a new head between the two steps read "beyond the log end" and
            // fail.) The head map's shard lock then orders the `durable_end` store before any
            // reader's later load of it.
            inner.log.cache_push(w.start, w.buf);
            inner.log.durable_end.store(w.end, Ordering::Release);
            inner.heads.set_many(&w.updates);
            done.push(w.outcomes);
            spent.push(w.spent);
        }
        inner.notify_end();
        for o in done.into_iter().flatten() {
            o.complete();
        }
        drop(spent);
        let ck = inner.ckpt.lock().position;
        if end.saturating_sub(ck) >= inner.opts.checkpoint_bytes {
            inner.wake_checkpointer();
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
            self.set_poison(e.to_string());
        }
    }

    /// fsyncs the active segment if anything is unsynced.
    pub(crate) fn sync_active(&self, st: &mut WriterState) -> Result<(), StoreError> {
        if !st.unsynced {
            return Ok(());
        }
        if let Some(a) = st.active.as_ref() {
            if self.inject_fsync_failure.load(Ordering::Acquire) {
                return Err(StoreError::io(
                    "fsync",
                    &a.seg.path,
                    std::io::Error::other("injected fsync failure"),
                ));
            }
            a.file
                .sync_data()
                .map_err(|e| StoreError::io("fsync", &a.seg.path, e))?;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        st.unsynced = false;
        st.last_sync = Instant::now();
        Ok(())
    }

    fn process(&self, mut batch: Vec<Submission>) {
        if let Some(e) = self.poison_error() {
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
                    self.set_poison(e.to_string());
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
            self.set_poison(e.to_string());
            drop(st);
            let mut first = Some(e);
            for o in outcomes {
                let err = match first.take() {
                    Some(e) => e,
                    None => self
                        .poison_error()
                        .unwrap_or(StoreError::Poisoned("write failed".into())),
                };
                o.fail(err);
            }
            return;
        }
        let end = start + buf.len() as u64;
        st.end = end;
        self.maybe_request_spare(&mut st);
        if let Durability::Interval(every) = self.opts.durability {
            // under continuous load the idle-time sync in the loop never fires
            if st.last_sync.elapsed() >= every {
                if let Err(e) = self.sync_active(&mut st) {
                    self.set_poison(e.to_string());
                }
            }
        }
        let file = st.active.as_ref().map(|a| a.file.clone());
        drop(st);
        self.stats.messages.fetch_add(messages, Ordering::Relaxed);
        self.stats.entries.fetch_add(entries, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
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
            active
                .file
                .write_all_at(&buf[off..cut], file_off)
                .map_err(|e| StoreError::io_at("write", &active.seg.path, file_off, e))?;
            active.seg.end.store(start + cut as u64, Ordering::Release);
            bi = bounds.partition_point(|&b| b <= cut);
            off = cut;
        }
        st.unsynced = true;
        Ok(())
    }

    /// Seals the active segment (trimmed to its records, fsynced) and starts a new one whose
    /// first record is at `base`, from the preallocated spare when one is ready.
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
                old.file
                    .sync_all()
                    .map_err(|e| StoreError::io("fsync", &old.seg.path, e))?;
            }
        }
        let path = self.dir.join(segment_file_name(base));
        let spare_ready = {
            let mut p = self.prealloc.lock();
            std::mem::replace(&mut p.ready, false)
        };
        let file = if spare_ready {
            // header first, then the rename: a segment under its final name always has one
            let spare = spare_path(&self.dir);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&spare)
                .map_err(|e| StoreError::io("open spare segment", &spare, e))?;
            file.write_all_at(&encode_segment_header(base), 0)
                .map_err(|e| StoreError::io_at("write segment header", &spare, 0, e))?;
            if sync {
                file.sync_data()
                    .map_err(|e| StoreError::io("fsync", &spare, e))?;
            }
            std::fs::rename(&spare, &path)
                .map_err(|e| StoreError::io("rename spare segment", &path, e))?;
            file
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StoreError::io("create segment", &path, e))?;
            file.write_all_at(&encode_segment_header(base), 0)
                .map_err(|e| StoreError::io_at("write segment header", &path, 0, e))?;
            if sync {
                file.sync_data()
                    .map_err(|e| StoreError::io("fsync", &path, e))?;
            }
            file
        };
        if sync {
            sync_dir(&self.dir)?;
        }
        let seg = Arc::new(Segment::new(base, path, base));
        self.log.add_segment(seg.clone());
        st.active = Some(Active {
            file: Arc::new(file),
            seg,
        });
        st.spare_requested = false;
        Ok(())
    }

    /// Asks the preallocator for a spare once the active segment is half full.
    pub(crate) fn maybe_request_spare(&self, st: &mut WriterState) {
        if !self.opts.preallocate || st.spare_requested {
            return;
        }
        let Some(a) = st.active.as_ref() else { return };
        if (st.end - a.seg.base) * 2 >= self.opts.segment_bytes {
            st.spare_requested = true;
            self.prealloc.lock().wanted = true;
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
