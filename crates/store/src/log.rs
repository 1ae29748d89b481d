//! The log as readers see it: the ordered set of segment files (with a bounded set of open read
//! handles), the recent-write cache, and the two watermarks `log_start` (oldest retained position)
//! and `durable_end` (everything before it is acknowledged and readable). Reads take only short
//! read locks here and never the writer's lock.
//!
//! Positions are offsets in the log's record space: segment headers are not counted, so the
//! record after the last one of segment `n` is the first one of segment `n + 1` at the next
//! position — except after a promotion, when the next segment starts higher and opens with a JUMP
//! record (`docs/storage-format.md` §2). A segment file named `base.seg` holds positions
//! `base..base + (len − 32)`.
//!
//! Also the unit replication moves between stores: [`ReplicationBatch`], whole records at a
//! position.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::error::StoreError;
use crate::format::{
    check_record, encode_segment_header, jump_from, parse_segment_file_name, segment_file_name,
    RecordCheck, JUMP_RECORD_LEN, SEGMENT_HEADER_LEN,
};

/// One segment file.
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    /// End position of the readable records in this segment.
    pub end: AtomicU64,
    handle: Mutex<Option<Arc<File>>>,
    last_used: AtomicU64,
}

impl Segment {
    pub fn new(base: u64, path: PathBuf, end: u64) -> Segment {
        Segment {
            base,
            path,
            end: AtomicU64::new(end),
            handle: Mutex::new(None),
            last_used: AtomicU64::new(0),
        }
    }

    /// Creates the file of a new, empty segment starting at `base` in `dir` (it must not exist yet)
    /// through `open` (e.g. with the descriptor reserve) and writes its header. Nothing is synced:
    /// the caller fsyncs the file and the directory as its durability requires.
    pub fn create(
        dir: &Path,
        base: u64,
        open: impl FnOnce(&OpenOptions, &Path) -> std::io::Result<File>,
    ) -> Result<(Segment, File), StoreError> {
        let path = dir.join(segment_file_name(base));
        let file = open(
            OpenOptions::new().read(true).write(true).create_new(true),
            &path,
        )
        .map_err(|e| StoreError::io("create segment", &path, e))?;
        file.write_all_at(&encode_segment_header(base), 0)
            .map_err(|e| StoreError::io_at("write segment header", &path, 0, e))?;
        Ok((Segment::new(base, path, base), file))
    }

    /// File offset of a position in this segment.
    pub fn file_offset(&self, pos: u64) -> u64 {
        SEGMENT_HEADER_LEN + (pos - self.base)
    }
}

/// Recently written log bytes, as the exact buffers the writer wrote (whole records each).
#[derive(Default)]
struct Cache {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Cache {
    fn get(&self, pos: u64, len: usize) -> Option<Bytes> {
        let first = self.chunks.front()?;
        if pos < first.0 {
            return None;
        }
        let idx = self.chunks.partition_point(|c| c.0 <= pos).checked_sub(1)?;
        let (p, d) = &self.chunks[idx];
        let off = (pos - p) as usize;
        if off.checked_add(len)? <= d.len() {
            Some(d.slice(off..off + len))
        } else {
            None
        }
    }
}

/// Read side of the log.
pub(crate) struct LogView {
    pub dir: PathBuf,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    cache: RwLock<Cache>,
    cache_limit: usize,
    pub log_start: AtomicU64,
    pub durable_end: AtomicU64,
    open_handles: AtomicUsize,
    max_open: usize,
    tick: AtomicU64,
    /// Write buffers recycled from evicted cache chunks (avoids large allocations per batch).
    pool: Mutex<Vec<Vec<u8>>>,
}

const POOL_BUFFERS: usize = 8;

impl LogView {
    pub fn new(dir: PathBuf, cache_limit: usize, max_open: usize) -> LogView {
        LogView {
            dir,
            segments: RwLock::new(BTreeMap::new()),
            cache: RwLock::new(Cache::default()),
            cache_limit,
            log_start: AtomicU64::new(0),
            durable_end: AtomicU64::new(0),
            open_handles: AtomicUsize::new(0),
            max_open,
            tick: AtomicU64::new(0),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer with at least `cap` bytes of capacity, recycled when possible.
    pub fn take_buffer(&self, cap: usize) -> Vec<u8> {
        let mut v = self.pool.lock().pop().unwrap_or_default();
        v.clear();
        v.reserve(cap);
        v
    }

    fn recycle(&self, v: Vec<u8>) {
        let mut pool = self.pool.lock();
        if pool.len() < POOL_BUFFERS && v.capacity() <= (16 << 20) {
            pool.push(v);
        }
    }

    pub fn add_segment(&self, seg: Arc<Segment>) {
        self.segments.write().insert(seg.base, seg);
    }

    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.read().values().cloned().collect()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// Removes a segment from the read set (its file may still be read through open handles).
    pub fn remove_segment(&self, base: u64) -> Option<Arc<Segment>> {
        let seg = self.segments.write().remove(&base)?;
        if seg.handle.lock().take().is_some() {
            self.open_handles.fetch_sub(1, Ordering::Relaxed);
        }
        Some(seg)
    }

    /// The segment whose base is `base`.
    pub fn segment_at(&self, base: u64) -> Option<Arc<Segment>> {
        self.segments.read().get(&base).cloned()
    }

    /// Closes every cached read handle, so later reads re-open the files (after an in-process
    /// recovery). Reads in progress keep theirs.
    pub fn drop_handles(&self) {
        for s in self.segments.read().values() {
            if s.handle.lock().take().is_some() {
                self.open_handles.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn segment_for(&self, pos: u64) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .range(..=pos)
            .next_back()
            .map(|(_, s)| s.clone())
    }

    /// The first segment whose base is above `pos` (the one after a position jump).
    pub fn segment_after(&self, pos: u64) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .range(pos + 1..)
            .next()
            .map(|(_, s)| s.clone())
    }

    /// Whether `pos` is a position this log has or continues at: inside a segment, at a segment's
    /// end, or the durable end. Positions in the gap a promotion jumped over are not.
    pub fn holds_position(&self, pos: u64) -> bool {
        pos == self.durable_end.load(Ordering::Acquire)
            || self
                .segment_for(pos)
                .is_some_and(|s| pos <= s.end.load(Ordering::Acquire))
    }

    /// Reads `len` bytes at `pos` that the writer has written but that may not be durable yet
    /// (the writer's own reads, e.g. to withdraw unconfirmed records). Goes to the segment files.
    pub fn read_written(&self, pos: u64, len: usize) -> Result<Bytes, StoreError> {
        let start = self.log_start.load(Ordering::Acquire);
        let seg = self
            .segment_for(pos)
            .filter(|s| pos + len as u64 <= s.end.load(Ordering::Acquire))
            .ok_or(StoreError::Truncated {
                requested: pos,
                first_available: start,
            })?;
        let f = self.handle(&seg)?;
        let mut buf = vec![0u8; len];
        let off = seg.file_offset(pos);
        f.read_exact_at(&mut buf, off)
            .map_err(|e| StoreError::io_at("read", &seg.path, off, e))?;
        Ok(Bytes::from(buf))
    }

    /// File and offset of a position, for error messages.
    pub fn locate(&self, pos: u64) -> (PathBuf, u64) {
        match self.segment_for(pos) {
            Some(s) => (s.path.clone(), s.file_offset(pos)),
            None => (self.dir.clone(), pos),
        }
    }

    /// Adds a freshly written buffer (whole records, starting at `pos`) to the cache.
    pub fn cache_push(&self, pos: u64, data: Vec<u8>) {
        if self.cache_limit == 0 || data.is_empty() {
            self.recycle(data);
            return;
        }
        let mut evicted = Vec::new();
        {
            let mut c = self.cache.write();
            c.bytes += data.len();
            c.chunks.push_back((pos, Bytes::from(data)));
            while c.bytes > self.cache_limit && c.chunks.len() > 1 {
                if let Some((_, d)) = c.chunks.pop_front() {
                    c.bytes -= d.len();
                    evicted.push(d);
                }
            }
        }
        for d in evicted {
            if let Ok(m) = d.try_into_mut() {
                self.recycle(Vec::from(m));
            }
        }
    }

    fn handle(&self, seg: &Segment) -> Result<Arc<File>, StoreError> {
        seg.last_used
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if let Some(f) = seg.handle.lock().as_ref() {
            return Ok(f.clone());
        }
        let f = Arc::new(
            File::open(&seg.path).map_err(|e| StoreError::io("open segment", &seg.path, e))?,
        );
        let evict;
        {
            let mut g = seg.handle.lock();
            match g.as_ref() {
                Some(existing) => return Ok(existing.clone()),
                None => {
                    *g = Some(f.clone());
                    evict = self.open_handles.fetch_add(1, Ordering::Relaxed) + 1 > self.max_open;
                }
            }
        }
        if evict {
            self.evict_one(seg.base);
        }
        Ok(f)
    }

    fn evict_one(&self, except: u64) {
        let segs = self.segments.read();
        let victim = segs
            .values()
            .filter(|s| s.base != except && s.handle.lock().is_some())
            .min_by_key(|s| s.last_used.load(Ordering::Relaxed));
        if let Some(v) = victim {
            if v.handle.lock().take().is_some() {
                self.open_handles.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Reads `len` bytes at log position `pos`, which must lie within one record area that is
    /// durable (below `durable_end`) and retained (at or after `log_start`).
    pub fn read(&self, pos: u64, len: usize) -> Result<Bytes, StoreError> {
        let start = self.log_start.load(Ordering::Acquire);
        if pos < start {
            return Err(StoreError::Truncated {
                requested: pos,
                first_available: start,
            });
        }
        let end = self.durable_end.load(Ordering::Acquire);
        if pos.saturating_add(len as u64) > end {
            let (file, offset) = self.locate(pos);
            return Err(StoreError::corrupt(
                file,
                offset,
                format!("reference to position {pos} (+{len}) beyond the log end {end}"),
            ));
        }
        if let Some(b) = self.cache.read().get(pos, len) {
            return Ok(b);
        }
        let seg = self.segment_for(pos).ok_or(StoreError::Truncated {
            requested: pos,
            first_available: start,
        })?;
        if pos + len as u64 > seg.end.load(Ordering::Acquire) {
            return Err(StoreError::corrupt(
                &seg.path,
                seg.file_offset(pos),
                format!("read of {len} bytes crosses the end of the segment"),
            ));
        }
        let f = self.handle(&seg)?;
        let mut buf = vec![0u8; len];
        let off = seg.file_offset(pos);
        f.read_exact_at(&mut buf, off)
            .map_err(|e| StoreError::io_at("read", &seg.path, off, e))?;
        Ok(Bytes::from(buf))
    }
}

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

    /// If the batch opens with a JUMP record (the leader was promoted and its log continues
    /// above a gap), the position the log before it ended at: the batch continues a log that
    /// ends there.
    pub fn jump_from(&self) -> Option<u64> {
        let rec = self.data.get(..JUMP_RECORD_LEN)?;
        match check_record(rec) {
            RecordCheck::Valid { .. } => jump_from(rec),
            _ => None,
        }
    }
}

/// Segment files in `dir`, sorted by base position.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut v = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| StoreError::io("list directory", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| StoreError::io("list directory", dir, e))?;
        let name = ent.file_name();
        if let Some(base) = name.to_str().and_then(parse_segment_file_name) {
            v.push((base, ent.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// fsyncs a directory so that file creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}
