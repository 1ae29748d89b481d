//! Reading a GoBelieve `ims` data directory: its block files, front to back, in bounded memory.
//!
//! [`Source`] lists the block files (`message_<n>`) and their lengths when opened, so a directory
//! that a running GoBelieve still appends to is read up to that moment. [`Scanner`] reads the
//! records of every block from a position onwards through a fixed-size window (`pread`), and pairs
//! each queue index record (OFFLINE_V4, GROUP_OFFLINE) with its content record, which normally
//! directly precedes it (else it is read by its id). What cannot be read is reported as a
//! [`Problem`] with block, offset and reason and skipped: a bad record makes the scanner look for
//! the next valid record in the same block (GoBelieve itself would drop the rest of the block), a
//! bad header skips the block. Nothing is held in memory but the window and one pending content
//! record.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{
    check_block_header, decode_record_head, msgid, parse_block_file_name, split_msgid, IndexRecord,
    RecordHead, BLOCK_HEADER_LEN, CMD_GROUP_OFFLINE, CMD_OFFLINE_V4, CONTENT_CMDS,
    DEPRECATED_CONTENT_CMDS, INDEX_FLAG_GROUP, MAGIC, OLD_INDEX_CMDS, RECORD_OVERHEAD,
};

/// Largest body the scanner believes a record length for (larger: the frame is corrupt).
const MAX_FRAME_BODY: usize = 16 << 20;
/// Largest content body imported: GoBelieve never read back larger ones, and clients cannot
/// receive a frame body above 32767 bytes.
pub const MAX_CONTENT_BODY: usize = 32_767;
/// Read window.
const WINDOW: usize = 1 << 20;

/// A position in the block files: block number and offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub block: u32,
    pub offset: u64,
}

impl Pos {
    /// The message id of a record at this position.
    pub fn id(self) -> i64 {
        msgid(self.block, self.offset)
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message_{} offset {}", self.block, self.offset)
    }
}

/// Which queue an index record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GbQueue {
    User { appid: i64, uid: i64 },
    Group { appid: i64, gid: i64 },
}

/// One queue entry: an index record with its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GbEntry {
    pub queue: GbQueue,
    /// The content record's id: the sync key GoBelieve handed out for this entry.
    pub msgid: i64,
    pub device_id: i64,
    /// 1-based position in the queue, as GoBelieve recorded it.
    pub seq_id: i64,
    pub cmd: u8,
    /// The entry's content is a group message (index flag 0x04, or GROUP_IM).
    pub group_content: bool,
    pub body: Vec<u8>,
}

/// Something that could not be imported, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: Pos,
    pub kind: ProblemKind,
    pub detail: String,
}

/// Classes of problems, for the report's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemKind {
    /// Bytes that are not a valid record (skipped up to the next valid one).
    Corrupt,
    /// A block file shorter than its header, or with a bad header (skipped whole).
    BadBlock,
    /// A record cut short at the end of a block (a torn write).
    Truncated,
    /// An index record whose content record cannot be read.
    MissingContent,
    /// A content record that no index record refers to (not reachable in GoBelieve either).
    Unindexed,
    /// An index record of an older GoBelieve version (not reachable in GoBelieve either).
    OldIndex,
    /// Deprecated customer-service content (ignored by GoBelieve).
    Deprecated,
    /// A content body above 32767 bytes (GoBelieve could not read it back).
    Oversized,
    /// A record type GoBelieve does not write.
    UnknownCommand,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Corrupt => "corrupt bytes",
            ProblemKind::BadBlock => "unreadable block file",
            ProblemKind::Truncated => "truncated record",
            ProblemKind::MissingContent => "index record without readable content",
            ProblemKind::Unindexed => "content record without index record",
            ProblemKind::OldIndex => "index record of an older GoBelieve version",
            ProblemKind::Deprecated => "deprecated customer-service record",
            ProblemKind::Oversized => "content body over 32767 bytes",
            ProblemKind::UnknownCommand => "unknown record type",
        }
    }
}

/// What the scanner yields, each with the position after it (where a resumed scan continues).
#[derive(Debug)]
pub enum Item {
    Entry(GbEntry, Pos),
    Problem(Problem, Pos),
}

/// A GoBelieve data directory as it was when opened.
pub struct Source {
    dir: PathBuf,
    /// (block number, length), ascending.
    blocks: Vec<(u32, u64)>,
}

impl Source {
    /// Lists the block files of `dir` (a GoBelieve `storage_root`).
    pub fn open(dir: &Path) -> std::io::Result<Source> {
        let mut blocks = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(n) = name.to_str().and_then(parse_block_file_name) else {
                continue;
            };
            let meta = e.metadata()?;
            if meta.is_file() {
                blocks.push((n, meta.len()));
            }
        }
        blocks.sort_unstable();
        Ok(Source {
            dir: dir.to_path_buf(),
            blocks,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Block numbers and lengths, ascending.
    pub fn blocks(&self) -> &[(u32, u64)] {
        &self.blocks
    }

    /// Total bytes of block files.
    pub fn total_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.1).sum()
    }

    /// An id above every message id this directory can hold.
    pub fn id_bound(&self) -> i64 {
        self.blocks.last().map_or(0, |&(n, len)| msgid(n, len) + 1)
    }

    /// Bytes of the blocks before `pos` (for progress).
    pub fn bytes_before(&self, pos: Pos) -> u64 {
        self.blocks
            .iter()
            .map(|&(n, len)| match n.cmp(&pos.block) {
                std::cmp::Ordering::Less => len,
                std::cmp::Ordering::Equal => pos.offset.min(len),
                std::cmp::Ordering::Greater => 0,
            })
            .sum()
    }

    /// A scanner over every record at or after `from`.
    pub fn scan(&self, from: Pos) -> Scanner<'_> {
        let idx = self.blocks.partition_point(|b| b.0 < from.block);
        Scanner {
            src: self,
            idx,
            from,
            cur: None,
            pending: None,
            out: std::collections::VecDeque::new(),
        }
    }

    fn open_block(&self, n: u32) -> std::io::Result<File> {
        File::open(self.dir.join(super::format::block_file_name(n)))
    }

    /// Reads the content record with id `id` directly (for an index record that does not follow
    /// its content).
    fn read_content_at(&self, id: i64) -> Result<(RecordHead, Vec<u8>), String> {
        let (block, offset) = split_msgid(id).ok_or_else(|| format!("invalid message id {id}"))?;
        let len = self
            .blocks
            .iter()
            .find(|b| b.0 == block)
            .map(|b| b.1)
            .ok_or_else(|| format!("block message_{block} does not exist"))?;
        let f = self.open_block(block).map_err(|e| e.to_string())?;
        let mut head = [0u8; 16];
        if offset < BLOCK_HEADER_LEN || offset + 16 > len {
            return Err(format!("offset {offset} is outside block message_{block}"));
        }
        f.read_exact_at(&mut head, offset)
            .map_err(|e| e.to_string())?;
        let h = decode_record_head(&head, MAX_FRAME_BODY)?;
        let end = offset + (RECORD_OVERHEAD + h.body_len) as u64;
        if end > len {
            return Err("record runs past the end of its block".into());
        }
        let mut body = vec![0u8; h.body_len + 4];
        f.read_exact_at(&mut body, offset + 16)
            .map_err(|e| e.to_string())?;
        if body[h.body_len..] != MAGIC.to_be_bytes() {
            return Err("record has no trailing magic".into());
        }
        body.truncate(h.body_len);
        Ok((h, body))
    }
}

/// The block being read.
struct Cursor {
    n: u32,
    file: File,
    len: u64,
    off: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
}

impl Cursor {
    /// `n` bytes at `at` (at most [`WINDOW`] unless a record needs more).
    fn bytes(&mut self, at: u64, n: usize) -> std::io::Result<&[u8]> {
        let end = at + n as u64;
        if at < self.buf_at || end > self.buf_at + self.buf.len() as u64 {
            let want = (n.max(WINDOW) as u64).min(self.len - at) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, at)?;
            self.buf_at = at;
        }
        let s = (at - self.buf_at) as usize;
        Ok(&self.buf[s..s + n])
    }

    fn pos(&self, offset: u64) -> Pos {
        Pos {
            block: self.n,
            offset,
        }
    }

    /// The offset of the next valid record strictly after `from`, or the block's end.
    fn resync(&mut self, from: u64) -> std::io::Result<u64> {
        let magic = MAGIC.to_be_bytes();
        let mut at = from + 1;
        while at + RECORD_OVERHEAD as u64 <= self.len {
            let n = ((self.len - at) as usize).min(WINDOW);
            let window = self.bytes(at, n)?.to_vec();
            let mut found = None;
            for i in 0..window.len().saturating_sub(3) {
                if window[i..i + 4] == magic && self.valid_record_at(at + i as u64)? {
                    found = Some(at + i as u64);
                    break;
                }
            }
            if let Some(p) = found {
                return Ok(p);
            }
            at += (window.len().saturating_sub(3)).max(1) as u64;
        }
        Ok(self.len)
    }

    fn valid_record_at(&mut self, at: u64) -> std::io::Result<bool> {
        if at + RECORD_OVERHEAD as u64 > self.len {
            return Ok(false);
        }
        let head: [u8; 16] = self
            .bytes(at, 16)?
            .try_into()
            .expect("a slice of the exact length");
        let Ok(h) = decode_record_head(&head, MAX_FRAME_BODY) else {
            return Ok(false);
        };
        let end = at + (RECORD_OVERHEAD + h.body_len) as u64;
        if end > self.len {
            return Ok(false);
        }
        Ok(self.bytes(end - 4, 4)? == MAGIC.to_be_bytes())
    }
}

/// Reads records and yields queue entries and problems; see the module docs.
pub struct Scanner<'a> {
    src: &'a Source,
    /// Index of the next block to open in `src.blocks`.
    idx: usize,
    from: Pos,
    cur: Option<Cursor>,
    /// The last content record read that no index record took yet: its id, head and body.
    pending: Option<(Pos, RecordHead, Vec<u8>)>,
    out: std::collections::VecDeque<Item>,
}

impl Iterator for Scanner<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(i) = self.out.pop_front() {
                return Some(i);
            }
            if !self.step() {
                return self.out.pop_front();
            }
        }
    }
}

impl Scanner<'_> {
    fn problem(&mut self, at: Pos, kind: ProblemKind, detail: impl Into<String>, next: Pos) {
        self.out.push_back(Item::Problem(
            Problem {
                at,
                kind,
                detail: detail.into(),
            },
            next,
        ));
    }

    /// A content record that no index record took.
    fn flush_pending(&mut self, next: Pos) {
        if let Some((at, h, _)) = self.pending.take() {
            self.problem(
                at,
                ProblemKind::Unindexed,
                format!("cmd {} content record is not on any queue", h.cmd),
                next,
            );
        }
    }

    /// Reads one record (or opens a block); false at the end.
    fn step(&mut self) -> bool {
        if self.cur.is_none() {
            let Some(&(n, len)) = self.src.blocks.get(self.idx) else {
                let end = self
                    .src
                    .blocks
                    .last()
                    .map_or(Pos::default(), |&(n, len)| Pos {
                        block: n,
                        offset: len,
                    });
                self.flush_pending(end);
                return false;
            };
            self.idx += 1;
            let start = if n == self.from.block {
                self.from.offset.max(BLOCK_HEADER_LEN)
            } else {
                BLOCK_HEADER_LEN
            };
            let at0 = Pos {
                block: n,
                offset: 0,
            };
            let end = Pos {
                block: n,
                offset: len,
            };
            let file = match self.src.open_block(n) {
                Ok(f) => f,
                Err(e) => {
                    self.problem(at0, ProblemKind::BadBlock, format!("cannot open: {e}"), end);
                    return true;
                }
            };
            if len < BLOCK_HEADER_LEN {
                if len > 0 {
                    self.problem(
                        at0,
                        ProblemKind::BadBlock,
                        format!("{len} bytes, shorter than the 32-byte header"),
                        end,
                    );
                }
                return true;
            }
            let mut h = [0u8; BLOCK_HEADER_LEN as usize];
            if let Err(e) = file.read_exact_at(&mut h, 0) {
                self.problem(at0, ProblemKind::BadBlock, format!("cannot read: {e}"), end);
                return true;
            }
            if let Err(why) = check_block_header(&h) {
                self.problem(at0, ProblemKind::BadBlock, why, end);
                return true;
            }
            self.cur = Some(Cursor {
                n,
                file,
                len,
                off: start,
                buf: Vec::new(),
                buf_at: 0,
            });
        }
        let cur = self.cur.as_mut().expect("a block file is open");
        if cur.off >= cur.len {
            self.cur = None;
            return true;
        }
        match self.read_record() {
            Ok(()) => {}
            Err(e) => {
                let cur = self.cur.take().expect("a block file is open");
                let at = cur.pos(cur.off);
                let end = cur.pos(cur.len);
                self.problem(at, ProblemKind::BadBlock, format!("read failed: {e}"), end);
            }
        }
        true
    }

    fn read_record(&mut self) -> std::io::Result<()> {
        let cur = self.cur.as_mut().expect("a block file is open");
        let off = cur.off;
        let at = cur.pos(off);
        let remaining = cur.len - off;
        if remaining < RECORD_OVERHEAD as u64 {
            let zeros = cur.bytes(off, remaining as usize)?.iter().all(|&b| b == 0);
            cur.off = cur.len;
            let next = cur.pos(cur.len);
            if !zeros {
                self.problem(
                    at,
                    ProblemKind::Truncated,
                    format!("{remaining} trailing bytes"),
                    next,
                );
            }
            return Ok(());
        }
        let head: [u8; 16] = cur
            .bytes(off, 16)?
            .try_into()
            .expect("a slice of the exact length");
        let bad = match decode_record_head(&head, MAX_FRAME_BODY) {
            Err(why) => Some(why),
            Ok(h) => {
                let end = off + (RECORD_OVERHEAD + h.body_len) as u64;
                if end > cur.len {
                    // cut short: a torn write at the end, or a corrupt length
                    let skip_to = cur.resync(off)?;
                    let kind = if skip_to >= cur.len {
                        ProblemKind::Truncated
                    } else {
                        ProblemKind::Corrupt
                    };
                    cur.off = skip_to;
                    let next = cur.pos(skip_to);
                    self.problem(
                        at,
                        kind,
                        format!(
                            "record of {} bytes runs past the end of the block; skipped {} bytes",
                            RECORD_OVERHEAD + h.body_len,
                            skip_to - off
                        ),
                        next,
                    );
                    return Ok(());
                }
                let rec = cur.bytes(off + 16, h.body_len + 4)?;
                if rec[h.body_len..] != MAGIC.to_be_bytes() {
                    Some("record has no trailing magic".to_string())
                } else {
                    let body = rec[..h.body_len].to_vec();
                    cur.off = end;
                    let next = cur.pos(end);
                    self.record(at, h, body, next);
                    return Ok(());
                }
            }
        };
        let why = bad.unwrap_or_default();
        let zeros_to_end = {
            let n = ((cur.len - off) as usize).min(WINDOW);
            cur.bytes(off, n)?.iter().all(|&b| b == 0) && cur.len - off <= WINDOW as u64
        };
        if zeros_to_end {
            // a zero-filled tail (a replica's gap filling or preallocation): the clean end
            cur.off = cur.len;
            return Ok(());
        }
        let skip_to = cur.resync(off)?;
        cur.off = skip_to;
        let next = cur.pos(skip_to);
        self.problem(
            at,
            ProblemKind::Corrupt,
            format!("{why}; skipped {} bytes", skip_to - off),
            next,
        );
        Ok(())
    }

    fn record(&mut self, at: Pos, h: RecordHead, body: Vec<u8>, next: Pos) {
        match h.cmd {
            CMD_OFFLINE_V4 | CMD_GROUP_OFFLINE => {
                let idx = match IndexRecord::decode(&body) {
                    Ok(i) => i,
                    Err(why) => {
                        self.problem(at, ProblemKind::Corrupt, why, next);
                        return;
                    }
                };
                let content = match self.pending.take() {
                    Some((p, ch, cb)) if p.id() == idx.msgid => Ok((ch, cb)),
                    other => {
                        if let Some((p, ch, cb)) = other {
                            self.pending = Some((p, ch, cb));
                            self.flush_pending(next);
                        }
                        self.src.read_content_at(idx.msgid)
                    }
                };
                let (ch, cb) = match content {
                    Ok(c) => c,
                    Err(why) => {
                        self.problem(
                            at,
                            ProblemKind::MissingContent,
                            format!("content {}: {why}", idx.msgid),
                            next,
                        );
                        return;
                    }
                };
                if !CONTENT_CMDS.contains(&ch.cmd) {
                    self.problem(
                        at,
                        ProblemKind::MissingContent,
                        format!(
                            "record {} is cmd {}, not message content",
                            idx.msgid, ch.cmd
                        ),
                        next,
                    );
                    return;
                }
                if cb.len() > MAX_CONTENT_BODY {
                    self.problem(
                        at,
                        ProblemKind::Oversized,
                        format!("content {} has {} bytes", idx.msgid, cb.len()),
                        next,
                    );
                    return;
                }
                let queue = if h.cmd == CMD_OFFLINE_V4 {
                    GbQueue::User {
                        appid: idx.appid,
                        uid: idx.receiver,
                    }
                } else {
                    GbQueue::Group {
                        appid: idx.appid,
                        gid: idx.receiver,
                    }
                };
                let group_content = ch.cmd == 8 || h.flag & INDEX_FLAG_GROUP != 0;
                self.out.push_back(Item::Entry(
                    GbEntry {
                        queue,
                        msgid: idx.msgid,
                        device_id: idx.device_id,
                        seq_id: idx.seq_id,
                        cmd: ch.cmd,
                        group_content,
                        body: cb,
                    },
                    next,
                ));
            }
            c if CONTENT_CMDS.contains(&c) => {
                self.flush_pending(at);
                self.pending = Some((at, h, body));
            }
            c if OLD_INDEX_CMDS.contains(&c) => {
                // its content (if just before) goes with it
                if self.pending.as_ref().is_some_and(|p| p.0 < at) {
                    self.pending = None;
                }
                self.problem(at, ProblemKind::OldIndex, format!("cmd {c}"), next);
            }
            c if DEPRECATED_CONTENT_CMDS.contains(&c) => {
                self.problem(at, ProblemKind::Deprecated, format!("cmd {c}"), next);
            }
            c => {
                self.problem(at, ProblemKind::UnknownCommand, format!("cmd {c}"), next);
            }
        }
    }
}
