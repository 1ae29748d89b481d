//! Opening a store: lock the directory, check the segment headers and that segments follow each
//! other without a gap, load the newest usable checkpoint, replay only the records after it,
//! truncate a torn tail, refuse to start on corruption anywhere else (naming the file and
//! offset), and return the state as a [`Recovered`] value; `Store::open` (`engine`) then hands
//! each part to the thread that owns it and starts the writer, sync, checkpointer and
//! preallocator threads.
//!
//! Also hosts the record scanner shared with `tools`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::{read_checkpoints, CkptState};
use crate::error::StoreError;
use crate::format::{
    check_record, control_record_len_before, decode_segment_header, decode_withdraw, jump_from,
    MessageView, RecordCheck, CONTROL_TRAILER_LEN, JUMP_RECORD_LEN, RECORD_HEADER_LEN, RECORD_JUMP,
    RECORD_KEY, RECORD_MESSAGE, RECORD_WITHDRAW, SEGMENT_HEADER_LEN,
};
use crate::lock::DirLock;
use crate::log::{list_segments, sync_dir, LogView, Segment};
use crate::options::StoreOptions;
use crate::prealloc::{check_spare, Spare};
use crate::queue::{Head, Published, PublishedHeads, QueueHasherBuilder, QueueMap};
use crate::window::Window;
use crate::writer::Active;

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// Clean end of file at this file offset.
    End(u64),
    /// The record at this file offset is bad or incomplete.
    Bad {
        offset: u64,
        reason: String,
        incomplete: bool,
    },
}

const SCAN_CHUNK: usize = 8 << 20;

/// Positions stay far below `i64::MAX` so keys (positions) never overflow.
const MAX_POSITION: u64 = 1 << 60;

/// Reads records of `file` from `from` (a file offset) to its end, calling `on_record(offset,
/// record bytes)` for each valid one.
pub(crate) fn scan_file(
    file: &File,
    path: &Path,
    from: u64,
    mut on_record: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> Result<ScanStop, StoreError> {
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?
        .len();
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_off = from; // file offset of buf[0]
    let mut at = 0usize; // index in buf of the next record
    loop {
        let rec_off = buf_off + at as u64;
        if rec_off >= file_len {
            return Ok(ScanStop::End(rec_off));
        }
        match check_record(&buf[at..]) {
            RecordCheck::Valid { len, .. } => {
                on_record(rec_off, &buf[at..at + len])?;
                at += len;
            }
            RecordCheck::Bad(reason) => {
                return Ok(ScanStop::Bad {
                    offset: rec_off,
                    reason,
                    incomplete: false,
                })
            }
            RecordCheck::Incomplete { needed } => {
                let have = buf.len() - at;
                let avail = file_len - rec_off;
                if (needed as u64) > avail {
                    return Ok(ScanStop::Bad {
                        offset: rec_off,
                        reason: format!(
                            "incomplete record: needs {needed} bytes, the file has {avail} left"
                        ),
                        incomplete: true,
                    });
                }
                // refill: keep the unconsumed tail, read at least `needed`
                buf.drain(..at);
                buf_off = rec_off;
                at = 0;
                let want = (needed.max(SCAN_CHUNK) as u64).min(avail) as usize;
                let old = have;
                buf.resize(want.max(old), 0);
                if want > old {
                    file.read_exact_at(&mut buf[old..want], rec_off + old as u64)
                        .map_err(|e| StoreError::io_at("read", path, rec_off + old as u64, e))?;
                }
            }
        }
    }
}

/// What follows a record that is not valid, up to the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Only zeros: the preallocated end of the last segment, a clean end of the log.
    Zeros,
    /// Garbage up to `garbage_end` (a file offset), then only zeros, and no valid record in it:
    /// a torn write.
    Torn { garbage_end: u64 },
    /// A valid record starts somewhere after: this is corruption, not a torn tail.
    ValidFollows,
}

/// Classifies the bytes of `file` from offset `from` to its end (bounded work).
pub(crate) fn analyze_tail(file: &File, path: &Path, from: u64) -> Result<Tail, StoreError> {
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?
        .len();
    if from >= file_len {
        return Ok(Tail::Zeros);
    }
    // cheap pass: is it all zeros?
    let mut chunk = vec![0u8; 1 << 20];
    let mut off = from;
    let mut last_nonzero = None;
    while off < file_len {
        let n = (file_len - off).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], off)
            .map_err(|e| StoreError::io_at("read", path, off, e))?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b != 0) {
            last_nonzero = Some(off + i as u64);
        }
        off += n as u64;
    }
    let Some(last) = last_nonzero else {
        return Ok(Tail::Zeros);
    };
    let garbage_end = last + 1;
    let n = (garbage_end - from).min(1 << 30) as usize;
    if (garbage_end - from) > (1 << 30) {
        return Ok(Tail::ValidFollows); // too much to examine: refuse rather than truncate
    }
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, from)
        .map_err(|e| StoreError::io_at("read", path, from, e))?;
    // a valid record may run into the zeros after the garbage: give the checker the zeros too
    let mut crc_budget: usize = 1 << 30;
    for i in 1..n {
        let rest = &buf[i..];
        if rest.len() < RECORD_HEADER_LEN {
            break;
        }
        if !matches!(
            rest[8],
            RECORD_MESSAGE | RECORD_JUMP | RECORD_WITHDRAW | RECORD_KEY
        ) || rest[9] != 0
            || rest[10] != 0
            || rest[11] != 0
        {
            continue;
        }
        let len = crate::format::u32_at(rest, 4) as usize;
        let avail = file_len - (from + i as u64);
        if (RECORD_HEADER_LEN + len) as u64 > avail {
            continue;
        }
        if crc_budget < len {
            return Ok(Tail::ValidFollows);
        }
        crc_budget -= len;
        let mut rec = rest[..rest.len().min(RECORD_HEADER_LEN + len)].to_vec();
        rec.resize(RECORD_HEADER_LEN + len, 0);
        if let RecordCheck::Valid { .. } = check_record(&rec) {
            return Ok(Tail::ValidFollows);
        }
    }
    Ok(Tail::Torn { garbage_end })
}

/// Overwrites `[from, to)` of `file` with zeros and fsyncs it.
pub(crate) fn zero_range(file: &File, path: &Path, from: u64, to: u64) -> Result<(), StoreError> {
    let chunk = vec![0u8; 1 << 20];
    let mut off = from;
    while off < to {
        let n = (to - off).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], off)
            .map_err(|e| StoreError::io_at("write", path, off, e))?;
        off += n as u64;
    }
    file.sync_all()
        .map_err(|e| StoreError::io("fsync", path, e))
}

/// If the first record of a segment file (`len` bytes long) is a JUMP, the position it jumps from.
pub(crate) fn segment_jump_from(
    file: &File,
    path: &Path,
    len: u64,
) -> Result<Option<u64>, StoreError> {
    if len < SEGMENT_HEADER_LEN + JUMP_RECORD_LEN as u64 {
        return Ok(None);
    }
    let mut rec = [0u8; JUMP_RECORD_LEN];
    file.read_exact_at(&mut rec, SEGMENT_HEADER_LEN)
        .map_err(|e| StoreError::io_at("read", path, SEGMENT_HEADER_LEN, e))?;
    match check_record(&rec) {
        RecordCheck::Valid { .. } => Ok(jump_from(&rec)),
        _ => Ok(None),
    }
}

/// Whether a control record (JUMP, WITHDRAW) ends at file offset `end_off` of `file`.
fn control_record_ends_at(file: &File, path: &Path, end_off: u64) -> Result<bool, StoreError> {
    if end_off < SEGMENT_HEADER_LEN + CONTROL_TRAILER_LEN as u64 {
        return Ok(false);
    }
    let mut t = [0u8; CONTROL_TRAILER_LEN];
    let at = end_off - CONTROL_TRAILER_LEN as u64;
    file.read_exact_at(&mut t, at)
        .map_err(|e| StoreError::io_at("read", path, at, e))?;
    let Some(len) = control_record_len_before(&t) else {
        return Ok(false);
    };
    if len as u64 > end_off - SEGMENT_HEADER_LEN || len > crate::format::MAX_RECORD_PAYLOAD {
        return Ok(false);
    }
    let mut rec = vec![0u8; len];
    let start = end_off - len as u64;
    file.read_exact_at(&mut rec, start)
        .map_err(|e| StoreError::io_at("read", path, start, e))?;
    Ok(matches!(check_record(&rec), RecordCheck::Valid { kind, .. } if kind != RECORD_MESSAGE))
}

/// Checks that a checkpoint position is plausibly the end of a record: the 56 bytes before it
/// must be a queue entry (or end a control record). Catches a log whose fsynced tail was lost and
/// replaced by zeros.
fn checkpoint_end_plausible(segs: &[SegInfo], position: u64) -> Result<(), StoreError> {
    let Some(seg) = segs
        .iter()
        .rev()
        .find(|s| s.base < position && position <= s.base + (s.len - SEGMENT_HEADER_LEN))
    else {
        return Ok(());
    };
    let end_off = SEGMENT_HEADER_LEN + (position - seg.base);
    if control_record_ends_at(&seg.file, &seg.path, end_off)? {
        return Ok(());
    }
    let entry_like = if position - seg.base >= crate::format::ENTRY_LEN as u64 {
        let off = end_off - crate::format::ENTRY_LEN as u64;
        let mut b = [0u8; crate::format::ENTRY_LEN];
        seg.file
            .read_exact_at(&mut b, off)
            .map_err(|e| StoreError::io_at("read", &seg.path, off, e))?;
        let e = crate::format::Entry::decode(&b);
        e.queue().is_some() && e.seq != 0 && (e.back as usize) >= crate::format::MESSAGE_FIXED_LEN
    } else {
        false
    };
    if !entry_like {
        return Err(StoreError::corrupt(
            &seg.path,
            end_off,
            format!(
                "the checkpoint covers the log up to position {position}, but no record ends \
                 there: fsynced data is missing (run `banter store check`)"
            ),
        ));
    }
    Ok(())
}

struct SegInfo {
    base: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

/// Phase 1: the segment files, in order, with their headers and continuity checked (a last
/// segment that was created but never got a header, or the empty segment of an unfinished
/// promotion, is removed).
fn scan_segments(dir: &Path) -> Result<Vec<SegInfo>, StoreError> {
    let mut segs: Vec<SegInfo> = Vec::new();
    let listed = list_segments(dir)?;
    let count = listed.len();
    for (i, (base, path)) in listed.into_iter().enumerate() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("open segment", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("stat", &path, e))?
            .len();
        if base > MAX_POSITION || len > MAX_POSITION {
            return Err(StoreError::corrupt(
                &path,
                0,
                "segment position out of range",
            ));
        }
        if len < SEGMENT_HEADER_LEN {
            if i + 1 == count {
                // created but its header never made it: no record can be in it
                tracing::warn!(segment = %path.display(), "removing segment with a torn header");
                drop(file);
                std::fs::remove_file(&path)
                    .map_err(|e| StoreError::io("remove segment", &path, e))?;
                sync_dir(dir)?;
                continue;
            }
            return Err(StoreError::corrupt(
                &path,
                0,
                "segment file is shorter than its header",
            ));
        }
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|e| StoreError::io_at("read", &path, 0, e))?;
        let hbase = match decode_segment_header(&h) {
            Ok(b) => b,
            Err(_) if i + 1 == count && analyze_tail(&file, &path, 0)? == Tail::Zeros => {
                // created, but nothing (not even the header) reached the disk
                tracing::warn!(segment = %path.display(), "removing an all-zero segment");
                drop(file);
                std::fs::remove_file(&path)
                    .map_err(|e| StoreError::io("remove segment", &path, e))?;
                sync_dir(dir)?;
                continue;
            }
            Err(r) => return Err(StoreError::corrupt(&path, 0, r)),
        };
        if hbase != base {
            return Err(StoreError::corrupt(
                &path,
                16,
                format!("header says base {hbase} but the file name says {base}"),
            ));
        }
        if let Some(prev) = segs.last() {
            let prev_end = prev.base + (prev.len - SEGMENT_HEADER_LEN);
            // A segment above the previous end must open with a JUMP from that end (promotion).
            if prev_end != base && segment_jump_from(&file, &path, len)? != Some(prev_end) {
                if i + 1 == count
                    && base > prev_end
                    && analyze_tail(&file, &path, SEGMENT_HEADER_LEN)? == Tail::Zeros
                {
                    // A promotion created it but its JUMP never reached the disk: the promotion
                    // did not complete (and nothing was written after it).
                    tracing::warn!(segment = %path.display(), "removing the empty segment of an unfinished promotion");
                    drop(file);
                    std::fs::remove_file(&path)
                        .map_err(|e| StoreError::io("remove segment", &path, e))?;
                    sync_dir(dir)?;
                    continue;
                }
                return Err(StoreError::corrupt(
                    &path,
                    0,
                    format!(
                        "segment starts at position {base} but the previous one ({}) ends at {prev_end}",
                        prev.path.display()
                    ),
                ));
            }
        }
        segs.push(SegInfo {
            base,
            path,
            file,
            len,
        });
    }
    Ok(segs)
}

/// Phase 2: the newest valid checkpoint that fits the segments, as the queue heads to replay
/// from, the position replay starts at, the checkpointer's state, and whether replay may rebase
/// queues whose first entries were removed by retention (no checkpoint, log start above 0).
fn load_checkpoint(
    dir: &Path,
    segs: &[SegInfo],
) -> Result<(QueueMap<Head>, u64, CkptState, bool), StoreError> {
    let log_start = segs.first().map_or(0, |s| s.base);
    let files_end = segs
        .last()
        .map_or(0, |s| s.base + (s.len - SEGMENT_HEADER_LEN));

    let mut best: Option<(u8, crate::format::Checkpoint)> = None;
    for found in read_checkpoints(dir)? {
        match found.result {
            Ok(c) => {
                if best
                    .as_ref()
                    .is_none_or(|(_, b)| c.generation > b.generation)
                {
                    best = Some((found.slot, c));
                }
            }
            Err(why) => {
                tracing::warn!(checkpoint = %found.path.display(), reason = %why, "ignoring invalid checkpoint")
            }
        }
    }
    if let Some((_, c)) = &best {
        if c.position > files_end {
            let (file, offset) = match segs.last() {
                Some(s) => (s.path.clone(), s.len),
                None => (dir.to_path_buf(), 0),
            };
            return Err(StoreError::corrupt(
                file,
                offset,
                format!(
                    "the log ends at position {files_end} but the checkpoint covers up to {}: \
                     fsynced data is missing (run `banter store check`)",
                    c.position
                ),
            ));
        }
        if c.position > log_start {
            checkpoint_end_plausible(segs, c.position)?;
        }
        if c.position < log_start {
            tracing::warn!(
                position = c.position,
                log_start,
                "checkpoint predates the oldest segment; replaying all retained segments"
            );
            best = None;
        }
    }
    let hasher = QueueHasherBuilder::new();
    let mut heads: QueueMap<Head> = QueueMap::with_hasher(hasher);
    let (replay_from, ck_state) = match &best {
        Some((slot, c)) => {
            heads = heads_from_checkpoint(c);
            (
                c.position,
                CkptState {
                    generation: c.generation,
                    position: c.position,
                    has: true,
                    next_slot: 1 - slot,
                    last_at: Instant::now(),
                },
            )
        }
        None => (
            log_start,
            CkptState {
                generation: 0,
                position: 0,
                has: false,
                next_slot: 0,
                last_at: Instant::now(),
            },
        ),
    };
    let allow_rebase = best.is_none() && log_start > 0;

    Ok((heads, replay_from, ck_state, allow_rebase))
}

/// Phase 3: replays the records after `replay_from` into `heads`, zeroing a torn tail of the last
/// segment; returns the log end and the number of records replayed.
fn replay_tail(
    segs: &mut [SegInfo],
    heads: &mut QueueMap<Head>,
    replay_from: u64,
    allow_rebase: bool,
) -> Result<(u64, u64), StoreError> {
    let mut end = replay_from;
    let nsegs = segs.len();
    let mut replayed = 0u64;
    for (i, s) in segs.iter_mut().enumerate() {
        let seg_end = s.base + (s.len - SEGMENT_HEADER_LEN);
        if seg_end <= replay_from && i + 1 < nsegs {
            continue;
        }
        let from_pos = replay_from.max(s.base);
        let from_off = SEGMENT_HEADER_LEN + (from_pos - s.base);
        let path = s.path.clone();
        let base = s.base;
        let stop = scan_file(&s.file, &path, from_off, |off, rec| {
            let pos = base + (off - SEGMENT_HEADER_LEN);
            replay_record(heads, pos, rec, allow_rebase)
                .map_err(|why| StoreError::corrupt(&path, off, why))?;
            replayed += 1;
            Ok(())
        })?;
        match stop {
            ScanStop::End(off) => {
                end = base + (off - SEGMENT_HEADER_LEN);
            }
            ScanStop::Bad {
                offset,
                reason,
                incomplete,
            } => {
                let last = i + 1 == nsegs;
                let tail = if !last {
                    Tail::ValidFollows
                } else if incomplete {
                    Tail::Torn { garbage_end: s.len }
                } else {
                    analyze_tail(&s.file, &path, offset)?
                };
                match tail {
                    Tail::Zeros => {}
                    Tail::ValidFollows => {
                        return Err(StoreError::corrupt(
                            &path,
                            offset,
                            format!(
                                "{reason}; valid data follows, so this is not a torn tail \
                                 (inspect with `banter store check`, truncate with `banter store repair`)"
                            ),
                        ));
                    }
                    Tail::Torn { garbage_end } => {
                        tracing::warn!(
                            segment = %path.display(),
                            offset,
                            removed_bytes = garbage_end - offset,
                            reason = %reason,
                            "zeroing a torn tail"
                        );
                        zero_range(&s.file, &path, offset, garbage_end)?;
                    }
                }
                end = base + (offset - SEGMENT_HEADER_LEN);
            }
        }
    }
    if segs.is_empty() {
        end = replay_from;
    }

    Ok((end, replayed))
}

/// What recovery re-established, ready for the engine's threads (`Store::open` starts them),
/// and figures for the opening log line.
pub(crate) struct Recovered {
    /// The store's directory (canonical), open as `dir_file`, locked by `lock`.
    pub dir: PathBuf,
    pub dir_file: File,
    pub lock: DirLock,
    /// The readers' view of the segments, with the log start and the acknowledged end.
    pub log: LogView,
    /// The queue heads readers see (as `heads`).
    pub published: PublishedHeads,
    /// The writer's queue heads.
    pub heads: QueueMap<Head>,
    /// The recent idempotency keys.
    pub window: Window,
    /// Position after the last record.
    pub end: u64,
    /// The segment the writer continues in.
    pub active: Active,
    /// The newest checkpoint, for the checkpointer.
    pub checkpoint: CkptState,
    /// A complete spare segment left by the preallocator.
    pub spare: Option<Spare>,
    pub log_start: u64,
    /// Log records replayed after the checkpoint.
    pub replayed: u64,
    /// When recovery started.
    pub started: Instant,
}

/// Re-establishes the store in `dir` from its files, in phases — the segments
/// ([`scan_segments`]), the checkpoint ([`load_checkpoint`]), the replay of the tail
/// ([`replay_tail`]), the readers' view and the active segment ([`reader_view`]), the published
/// heads ([`publish_heads`]) — and starts nothing.
pub(crate) fn open(dir: &Path, opts: &StoreOptions) -> Result<Recovered, StoreError> {
    opts.validate().map_err(StoreError::InvalidArgument)?;
    let started = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| StoreError::io("resolve directory", dir, e))?;
    let lock = DirLock::acquire(&dir)?;
    let dir_file = File::open(&dir).map_err(|e| StoreError::io("open directory", &dir, e))?;
    let spare = check_spare(&dir, opts.segment_bytes)?;

    let mut segs = scan_segments(&dir)?;
    let log_start = segs.first().map_or(0, |s| s.base);
    let (mut heads, replay_from, checkpoint, allow_rebase) = load_checkpoint(&dir, &segs)?;
    let (end, replayed) = replay_tail(&mut segs, &mut heads, replay_from, allow_rebase)?;
    let window = rebuild_window(&segs, end, opts);
    let (log, active) = reader_view(&dir, opts, segs, log_start, end)?;
    let published = publish_heads(&heads);
    Ok(Recovered {
        dir,
        dir_file,
        lock,
        log,
        published,
        heads,
        window,
        end,
        active,
        checkpoint,
        spare,
        log_start,
        replayed,
        started,
    })
}

/// Phase 3b: the recent idempotency keys (`window`), from the KEY, WITHDRAW and JUMP records of
/// the last `dedupe_log_bytes` of the log's bytes (whole segments, counted back from the end;
/// the positions a promotion jumped over hold no bytes and do not count). A record that cannot
/// be read there ends the scan of its segment with a warning: a key missed means a retry is
/// stored again, never a loss.
fn rebuild_window(segs: &[SegInfo], end: u64, opts: &StoreOptions) -> Window {
    let mut window = Window::new(opts.dedupe_keys, opts.dedupe_log_bytes);
    if opts.dedupe_keys == 0 {
        return window;
    }
    let seg_end = |s: &SegInfo| (s.base + (s.len - SEGMENT_HEADER_LEN)).min(end);
    // the first segment to scan: going back from the end until dedupe_log_bytes are covered
    let mut first = segs.len();
    let mut bytes = 0u64;
    while first > 0 && bytes < opts.dedupe_log_bytes {
        first -= 1;
        let s = &segs[first];
        bytes += seg_end(s).saturating_sub(s.base);
    }
    for s in &segs[first..] {
        if s.base >= end {
            continue;
        }
        let base = s.base;
        let stop = scan_file(&s.file, &s.path, SEGMENT_HEADER_LEN, |off, rec| {
            let pos = base + (off - SEGMENT_HEADER_LEN);
            if pos >= end {
                return Err(StoreError::Closed); // past the log end: stop
            }
            if let Err(why) = window.apply_record(pos, rec) {
                tracing::warn!(segment = %s.path.display(), offset = off, reason = %why, "ignoring a key record");
            }
            Ok(())
        });
        match stop {
            Ok(_) | Err(StoreError::Closed) => {}
            Err(e) => {
                tracing::warn!(segment = %s.path.display(), error = %e, "the recent idempotency keys of this segment cannot be read: retries of its messages are stored again");
            }
        }
    }
    window
}

/// Phase 4: the readers' view of the segments (log start, acknowledged end `end`) and the active
/// segment — the last one, or a new empty one at `end` when there is none.
fn reader_view(
    dir: &Path,
    opts: &StoreOptions,
    segs: Vec<SegInfo>,
    log_start: u64,
    end: u64,
) -> Result<(LogView, Active), StoreError> {
    let log = LogView::new(dir.to_path_buf(), opts.cache_bytes, opts.max_open_files);
    log.log_start.store(log_start, Ordering::Release);
    log.durable_end.store(end, Ordering::Release);
    let mut active = None;
    let nsegs = segs.len();
    for (i, s) in segs.into_iter().enumerate() {
        let seg_end = s.base + (s.len - SEGMENT_HEADER_LEN);
        let seg = Arc::new(Segment::new(s.base, s.path, seg_end));
        log.add_segment(seg.clone());
        if i + 1 == nsegs {
            // a zero tail after the records: the segment was made from a preallocated spare
            let preallocated = s.len > SEGMENT_HEADER_LEN + (end - s.base);
            active = Some(Active {
                file: Arc::new(s.file),
                seg,
                preallocated,
            });
        }
    }
    let active = match active {
        Some(a) => a,
        None => {
            let (seg, file) = Segment::create(dir, end, |o, p| o.open(p))?;
            file.sync_all()
                .map_err(|e| StoreError::io("fsync", &seg.path, e))?;
            sync_dir(dir)?;
            let seg = Arc::new(seg);
            log.add_segment(seg.clone());
            log.log_start.store(end, Ordering::Release);
            Active {
                file: Arc::new(file),
                seg,
                preallocated: false,
            }
        }
    };
    Ok((log, active))
}

/// Phase 5: the queue heads readers see, as replay left the writer's.
fn publish_heads(heads: &QueueMap<Head>) -> PublishedHeads {
    let published = PublishedHeads::new();
    let snapshot: Vec<_> = heads
        .iter()
        .map(|(q, h)| {
            (
                *q,
                Published {
                    last_key: h.last_key(),
                    last_seq: h.last_seq,
                },
            )
        })
        .collect();
    published.set_many(&snapshot);
    published
}

/// The queue heads a checkpoint records.
pub(crate) fn heads_from_checkpoint(c: &crate::format::Checkpoint) -> QueueMap<Head> {
    let mut heads: QueueMap<Head> = QueueMap::with_hasher(QueueHasherBuilder::new());
    heads.reserve(c.queues.len());
    for q in &c.queues {
        let seqs = crate::format::jump_chain_seqs(q.last_seq);
        heads.insert(
            q.queue,
            Head {
                last_seq: q.last_seq,
                last_peer_key: q.last_peer_key,
                chain: seqs.into_iter().zip(q.chain_keys.iter().copied()).collect(),
            },
        );
    }
    heads
}

/// Applies one record found during replay to the queue heads. A JUMP or KEY changes no queue (the
/// segment checks place it); a WITHDRAW sets the queues it names back to the heads it records.
pub(crate) fn replay_record(
    heads: &mut QueueMap<Head>,
    pos: u64,
    rec: &[u8],
    allow_rebase: bool,
) -> Result<(), String> {
    match rec[8] {
        // A KEY record changes no queue (the key window is rebuilt by `rebuild_window`).
        RECORD_JUMP | RECORD_KEY => return Ok(()),
        RECORD_WITHDRAW => {
            let w = decode_withdraw(&rec[RECORD_HEADER_LEN..])?;
            if w.to != pos {
                return Err(format!(
                    "withdraw record at position {pos} says it is at {}",
                    w.to
                ));
            }
            for h in &w.heads {
                match Head::from_state(h) {
                    Some(head) => {
                        heads.insert(h.queue, head);
                    }
                    None => {
                        heads.remove(&h.queue);
                    }
                }
            }
            return Ok(());
        }
        _ => {}
    }
    let view = MessageView::decode(&rec[RECORD_HEADER_LEN..]).map_err(|e| e.to_string())?;
    for i in 0..view.entry_count() {
        let e = view.entry(i);
        let q = e.queue().ok_or("unknown queue kind")?;
        let key = (pos + e.back as u64) as i64;
        let head = heads.entry(q).or_insert_with(|| {
            if e.seq != 1 && allow_rebase {
                Head::rebased(&e)
            } else {
                Head::default()
            }
        });
        head.apply(&e, key)?;
    }
    Ok(())
}
