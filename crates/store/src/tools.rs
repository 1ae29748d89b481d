//! Offline tools behind `banter store check` and `banter store repair`.
//!
//! [`check`] reads every record of every segment (checksums, message layout, queue link
//! continuity) and every checkpoint, and reports the first problem with its file and offset.
//! [`repair`] truncates the log at that first bad record — removing the rest of that segment and
//! every later segment, and any checkpoint that covers more than what remains — and reports
//! exactly what it removed. Both take the directory lock, so they refuse to run on a store that
//! is open. The confirmation prompt belongs to the CLI.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::checkpoint::read_checkpoints;
use crate::error::StoreError;
use crate::format::{decode_segment_header, SEGMENT_HEADER_LEN};
use crate::lock::DirLock;
use crate::log::{list_segments, sync_dir};
use crate::queue::{Head, QueueHasherBuilder, QueueMap};
use crate::recovery::{analyze_tail, replay_record, scan_file, segment_jump_from, ScanStop, Tail};

/// One segment as found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub base: u64,
    pub file_len: u64,
    /// Valid records read (0 for segments after the first problem, which are not read).
    pub records: u64,
    pub entries: u64,
    pub scanned: bool,
}

/// One checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    pub path: PathBuf,
    pub generation: Option<u64>,
    pub position: Option<u64>,
    pub queues: Option<usize>,
    /// Why the file is unusable, if it is.
    pub error: Option<String>,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// File offset of the bad record (or header).
    pub offset: u64,
    /// Log position of the bad record.
    pub position: u64,
    pub reason: String,
    /// Nothing valid follows in the last segment: start-up would truncate this by itself.
    pub torn_tail: bool,
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub segments: Vec<SegmentReport>,
    pub checkpoints: Vec<CheckpointReport>,
    pub records: u64,
    pub entries: u64,
    pub queues: usize,
    pub log_start: u64,
    /// Position after the last valid record before any problem.
    pub valid_end: u64,
    pub problem: Option<Problem>,
}

impl CheckReport {
    /// No problem in the log and no checkpoint beyond its valid end.
    pub fn is_clean(&self) -> bool {
        self.problem.is_none()
            && self
                .checkpoints
                .iter()
                .all(|c| c.position.is_none_or(|p| p <= self.valid_end))
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "store {}", self.dir.display())?;
        writeln!(
            f,
            "  {} segment(s), {} record(s), {} queue entries, {} queue(s); positions {}..{}",
            self.segments.len(),
            self.records,
            self.entries,
            self.queues,
            self.log_start,
            self.valid_end
        )?;
        for s in &self.segments {
            writeln!(
                f,
                "  segment {} base {} size {}{}",
                s.path.display(),
                s.base,
                s.file_len,
                if s.scanned {
                    format!(" records {}", s.records)
                } else {
                    " (not read: after the problem)".into()
                }
            )?;
        }
        for c in &self.checkpoints {
            match &c.error {
                Some(e) => writeln!(f, "  checkpoint {} INVALID: {e}", c.path.display())?,
                None => writeln!(
                    f,
                    "  checkpoint {} generation {} position {} queues {}{}",
                    c.path.display(),
                    c.generation.unwrap_or(0),
                    c.position.unwrap_or(0),
                    c.queues.unwrap_or(0),
                    if c.position.is_some_and(|p| p > self.valid_end) {
                        " (BEYOND THE VALID LOG END)"
                    } else {
                        ""
                    }
                )?,
            }
        }
        match &self.problem {
            None => write!(f, "  OK: no problem found"),
            Some(p) => write!(
                f,
                "  PROBLEM in {} at offset {} (position {}): {}{}",
                p.file.display(),
                p.offset,
                p.position,
                p.reason,
                if p.torn_tail {
                    " [torn tail: start-up truncates it automatically]"
                } else {
                    " [corruption: start-up refuses; `repair` truncates here]"
                }
            ),
        }
    }
}

/// Reads and verifies the whole store in `dir` (which must not be open).
pub fn check(dir: impl AsRef<Path>) -> Result<CheckReport, StoreError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(StoreError::InvalidArgument(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let _lock = DirLock::acquire(dir)?;
    check_locked(dir)
}

fn check_locked(dir: &Path) -> Result<CheckReport, StoreError> {
    let listed = list_segments(dir)?;
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        segments: Vec::new(),
        checkpoints: Vec::new(),
        records: 0,
        entries: 0,
        queues: 0,
        log_start: listed.first().map_or(0, |s| s.0),
        valid_end: listed.first().map_or(0, |s| s.0),
        problem: None,
    };
    let mut heads: QueueMap<Head> = QueueMap::with_hasher(QueueHasherBuilder::new());
    let allow_rebase = report.log_start > 0;
    let n = listed.len();
    for (i, (base, path)) in listed.into_iter().enumerate() {
        let file = File::open(&path).map_err(|e| StoreError::io("open segment", &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| StoreError::io("stat", &path, e))?
            .len();
        let mut seg = SegmentReport {
            path: path.clone(),
            base,
            file_len,
            records: 0,
            entries: 0,
            scanned: false,
        };
        if report.problem.is_some() {
            report.segments.push(seg);
            continue;
        }
        seg.scanned = true;
        let last = i + 1 == n;
        let header_problem = if base > (1 << 60) || file_len > (1 << 60) {
            Some("segment position out of range".to_string())
        } else if file_len < SEGMENT_HEADER_LEN {
            Some("segment file is shorter than its header".to_string())
        } else {
            let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
            file.read_exact_at(&mut h, 0)
                .map_err(|e| StoreError::io_at("read", &path, 0, e))?;
            match decode_segment_header(&h) {
                Err(r) => Some(r),
                Ok(b) if b != base => Some(format!("header says base {b}, the name says {base}")),
                Ok(_)
                    if base != report.valid_end
                        && (i == 0
                            || segment_jump_from(&file, &path, file_len)?
                                != Some(report.valid_end)) =>
                {
                    Some(format!(
                        "segment starts at position {base}, the log before it ends at {}",
                        report.valid_end
                    ))
                }
                Ok(_) => None,
            }
        };
        if let Some(reason) = header_problem {
            report.problem = Some(Problem {
                file: path.clone(),
                offset: 0,
                position: base,
                reason,
                torn_tail: last
                    && (file_len < SEGMENT_HEADER_LEN
                        || analyze_tail(&file, &path, 0)? == Tail::Zeros),
            });
            report.segments.push(seg);
            continue;
        }
        let mut records = 0u64;
        let mut entries = 0u64;
        let mut link_problem: Option<(u64, String)> = None;
        let stop = scan_file(&file, &path, SEGMENT_HEADER_LEN, |off, rec| {
            let pos = base + (off - SEGMENT_HEADER_LEN);
            if let Err(why) = replay_record(&mut heads, pos, rec, allow_rebase) {
                link_problem = Some((off, why));
                return Err(StoreError::Closed); // stop the scan
            }
            records += 1;
            if rec[8] == crate::format::RECORD_MESSAGE {
                entries += crate::format::u32_at(rec, crate::format::RECORD_HEADER_LEN + 24) as u64;
            }
            Ok(())
        });
        seg.records = records;
        seg.entries = entries;
        report.records += records;
        report.entries += entries;
        let stop = match (stop, link_problem) {
            (_, Some((offset, reason))) => ScanStop::Bad {
                offset,
                reason,
                incomplete: false,
            },
            (Ok(s), None) => s,
            (Err(e), None) => return Err(e),
        };
        match stop {
            ScanStop::End(off) => report.valid_end = base + (off - SEGMENT_HEADER_LEN),
            ScanStop::Bad {
                offset,
                reason,
                incomplete,
            } => {
                let position = base + (offset - SEGMENT_HEADER_LEN);
                report.valid_end = position;
                let tail = if !last {
                    Tail::ValidFollows
                } else if incomplete {
                    Tail::Torn {
                        garbage_end: file_len,
                    }
                } else {
                    analyze_tail(&file, &path, offset)?
                };
                if tail != Tail::Zeros {
                    report.problem = Some(Problem {
                        file: path.clone(),
                        offset,
                        position,
                        reason,
                        torn_tail: matches!(tail, Tail::Torn { .. }),
                    });
                }
            }
        }
        report.segments.push(seg);
    }
    report.queues = heads.len();
    for found in read_checkpoints(dir)? {
        report.checkpoints.push(match found.result {
            Ok(c) => CheckpointReport {
                path: found.path,
                generation: Some(c.generation),
                position: Some(c.position),
                queues: Some(c.queues.len()),
                error: None,
            },
            Err(e) => CheckpointReport {
                path: found.path,
                generation: None,
                position: None,
                queues: None,
                error: Some(e),
            },
        });
    }
    Ok(report)
}

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// The check that decided what to do.
    pub check: CheckReport,
    /// (file, offset it was truncated at, bytes removed from it).
    pub truncated: Option<(PathBuf, u64, u64)>,
    /// Whole segment files removed (with their sizes).
    pub removed_segments: Vec<(PathBuf, u64)>,
    /// Checkpoint files removed because they covered removed data.
    pub removed_checkpoints: Vec<PathBuf>,
}

impl RepairReport {
    /// Whether anything was changed.
    pub fn changed(&self) -> bool {
        self.truncated.is_some()
            || !self.removed_segments.is_empty()
            || !self.removed_checkpoints.is_empty()
    }
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.check)?;
        if !self.changed() {
            return write!(f, "repair: nothing to do");
        }
        if let Some((p, off, n)) = &self.truncated {
            writeln!(
                f,
                "repair: truncated {} at offset {off}, removing {n} bytes",
                p.display()
            )?;
        }
        for (p, n) in &self.removed_segments {
            writeln!(f, "repair: removed segment {} ({n} bytes)", p.display())?;
        }
        for p in &self.removed_checkpoints {
            writeln!(f, "repair: removed checkpoint {}", p.display())?;
        }
        write!(
            f,
            "repair: the log now ends at position {}",
            self.check.valid_end
        )
    }
}

/// Describes what [`repair`] would remove, without changing anything.
pub fn repair_plan(dir: impl AsRef<Path>) -> Result<RepairReport, StoreError> {
    let dir = dir.as_ref();
    let _lock = DirLock::acquire(dir)?;
    let check = check_locked(dir)?;
    Ok(plan(check))
}

fn plan(check: CheckReport) -> RepairReport {
    let mut r = RepairReport {
        truncated: None,
        removed_segments: Vec::new(),
        removed_checkpoints: Vec::new(),
        check,
    };
    if let Some(p) = &r.check.problem {
        let mut after = false;
        for s in &r.check.segments {
            if after {
                r.removed_segments.push((s.path.clone(), s.file_len));
            } else if s.path == p.file {
                after = true;
                if p.offset < SEGMENT_HEADER_LEN {
                    r.removed_segments.push((s.path.clone(), s.file_len));
                } else {
                    r.truncated = Some((s.path.clone(), p.offset, s.file_len - p.offset));
                }
            }
        }
    }
    for c in &r.check.checkpoints {
        if c.position.is_some_and(|p| p > r.check.valid_end) {
            r.removed_checkpoints.push(c.path.clone());
        }
    }
    r
}

/// Truncates the log at its first bad record (see the module docs). Safe: never touches data
/// before the first problem.
pub fn repair(dir: impl AsRef<Path>) -> Result<RepairReport, StoreError> {
    let dir = dir.as_ref();
    let _lock = DirLock::acquire(dir)?;
    let check = check_locked(dir)?;
    let r = plan(check);
    if let Some((path, off, _)) = &r.truncated {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io("open segment", path, e))?;
        f.set_len(*off)
            .map_err(|e| StoreError::io_at("truncate", path, *off, e))?;
        f.sync_all().map_err(|e| StoreError::io("fsync", path, e))?;
    }
    for (p, _) in &r.removed_segments {
        std::fs::remove_file(p).map_err(|e| StoreError::io("remove segment", p, e))?;
    }
    for p in &r.removed_checkpoints {
        std::fs::remove_file(p).map_err(|e| StoreError::io("remove checkpoint", p, e))?;
    }
    if r.changed() {
        sync_dir(dir)?;
    }
    Ok(r)
}
