//! In-process recovery after a failed write or fsync, run by the writer thread.
//!
//! After a failure nothing in memory beyond the acknowledged end of the log can be trusted: the
//! writer's queue heads already count the batch that failed, the active segment may hold part of
//! it, and after a failed fsync the page cache no longer says what is on disk. So the store does
//! what a restart would, without one:
//!
//! 1. wait until the sync thread has acknowledged or refused everything written before the
//!    failure; the acknowledged end of the log (`durable_end`) is then final;
//! 2. from the directory listing, remove segments that start after it, re-open the segment that
//!    holds it, truncate that to it (removing whatever was half-written) and fsync it;
//! 3. rebuild the queue heads from the newest checkpoint at or before it plus the records after
//!    it, read back from the files, and check them against the heads readers were shown;
//! 4. wait until what ran out (free space, descriptors) is back, then accept appends again.
//!
//! Any I/O error leaves the store recovering and the attempt is retried with back-off
//! ([`crate::health`]). Acknowledged data found damaged (a bad record or mismatching heads before
//! the acknowledged end) fails the store for good: that needs `banter store check`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::read_checkpoints;
use crate::error::StoreError;
use crate::format::{
    encode_segment_header, parse_segment_file_name, segment_file_name, SEGMENT_HEADER_LEN,
};
use crate::health::Cause;
use crate::log::Segment;
use crate::queue::{Head, QueueHasherBuilder, QueueMap};
use crate::recovery::{heads_from_checkpoint, replay_record, scan_file, ScanStop};
use crate::writer::{Active, Writer};

/// Free space needed before a store that ran out of it accepts appends again.
pub(crate) const RESUME_FREE_BYTES: u64 = 1 << 20;

impl Writer {
    /// Makes a recovery attempt if one is due (or at once with `now`). Returns when the next
    /// attempt is due while the store is still recovering, `None` once it accepts appends again
    /// (or has failed for good).
    pub(crate) fn recovery_step(&mut self, now: bool) -> Option<Instant> {
        if !self.shared.health().is_recovering() {
            return None;
        }
        if !now {
            if let Some(at) = self.shared.health().next_attempt() {
                if Instant::now() < at {
                    return Some(at);
                }
            }
        }
        if !self.shared.health().files_recovered() {
            match self.reestablish() {
                Ok(()) => self.shared.health().set_files_recovered(),
                Err(e @ StoreError::Corrupt { .. }) => {
                    self.shared.health().fail_for_good(format!(
                        "recovery after a failed write found acknowledged data damaged: {e} \
                         (inspect with `banter store check`)"
                    ));
                    return None;
                }
                Err(e) => return Some(self.shared.health().retry_later(e.to_string())),
            }
        }
        match self.shared.health().cause() {
            Some(Cause::NoSpace) => match self.shared.free_bytes() {
                Ok(free) if free < RESUME_FREE_BYTES => {
                    return Some(self.shared.health().retry_later(format!(
                        "free space on the store's filesystem (at least {} KiB)",
                        RESUME_FREE_BYTES >> 10
                    )));
                }
                _ => {}
            },
            Some(Cause::NoDescriptors) if !self.shared.replenish_reserve() => {
                return Some(
                    self.shared
                        .health()
                        .retry_later("a free file descriptor (the process is at its limit)".into()),
                );
            }
            _ => {}
        }
        self.shared.health().recovered();
        None
    }

    /// Steps 1–3 of the module documentation.
    fn reestablish(&mut self) -> Result<(), StoreError> {
        self.syncer.syncq.wait_idle();
        let good_end = self.shared.durable_end();
        let log_start = self.shared.log_start();
        // Keys of records beyond the acknowledged end were never acknowledged.
        self.window.truncate(good_end);

        let listed = self.list_segment_files()?;
        let active_base = match listed.iter().rev().find(|(b, _)| *b < good_end) {
            Some((b, _)) => *b,
            None => match listed.first() {
                Some((b, _)) if *b == good_end => *b,
                _ => {
                    return Err(StoreError::corrupt(
                        self.shared.dir(),
                        good_end,
                        format!("no segment file holds the log end {good_end}"),
                    ))
                }
            },
        };
        let mut removed = false;
        for (base, path) in &listed {
            if *base > active_base {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove segment", path, e)),
                }
                self.shared.log().remove_segment(*base);
                removed = true;
                tracing::info!(segment = %path.display(), "recovery removed a segment holding nothing acknowledged");
            }
        }
        let path = self.shared.dir().join(segment_file_name(active_base));
        let file = self
            .shared
            .open_file(OpenOptions::new().read(true).write(true), &path)
            .map_err(|e| StoreError::io("open segment", &path, e))?;
        let len = SEGMENT_HEADER_LEN + (good_end - active_base);
        file.set_len(len)
            .map_err(|e| StoreError::io_at("truncate segment", &path, len, e))?;
        if active_base == good_end {
            // holds nothing acknowledged; a roll that failed may have left its header unwritten
            file.write_all_at(&encode_segment_header(active_base), 0)
                .map_err(|e| StoreError::io_at("write segment header", &path, 0, e))?;
        }
        self.shared.fsync(&file, &path, false)?;
        if removed {
            self.shared.sync_dir()?;
        }

        let segs: Vec<(u64, PathBuf)> = listed
            .into_iter()
            .filter(|(b, _)| *b <= active_base)
            .collect();
        let heads = self.rebuild_heads(&segs, &file, good_end, log_start)?;
        self.check_against_published(&heads)?;

        self.shared.log().drop_handles();
        let seg = match self.shared.log().segment_at(active_base) {
            Some(s) => s,
            None => {
                let s = Arc::new(Segment::new(active_base, path, good_end));
                self.shared.log().add_segment(s.clone());
                s
            }
        };
        seg.end.store(good_end, Ordering::Release);
        self.heads = heads;
        self.end = good_end;
        self.active = Some(Active {
            file: Arc::new(file),
            seg,
            preallocated: false,
        });
        self.unsynced = false;
        self.spare_requested = false;
        self.last_sync = Instant::now();
        self.syncer.syncq.clear_failing();
        tracing::info!(log_end = good_end, "store state re-established from disk");
        Ok(())
    }

    /// Segment files in the directory, sorted by base (using the descriptor reserve if needed).
    fn list_segment_files(&self) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let rd = self
            .shared
            .with_reserve(|| std::fs::read_dir(self.shared.dir()))
            .map_err(|e| StoreError::io("list directory", self.shared.dir(), e))?;
        let mut v = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| StoreError::io("list directory", self.shared.dir(), e))?;
            if let Some(base) = ent.file_name().to_str().and_then(parse_segment_file_name) {
                v.push((base, ent.path()));
            }
        }
        v.sort();
        Ok(v)
    }

    /// Queue heads as of `good_end`: the newest checkpoint at or before it, then the records
    /// after it. `segs` are the segments up to the active one, whose open file is `active`.
    fn rebuild_heads(
        &self,
        segs: &[(u64, PathBuf)],
        active: &File,
        good_end: u64,
        log_start: u64,
    ) -> Result<QueueMap<Head>, StoreError> {
        let best = read_checkpoints(self.shared.dir())?
            .into_iter()
            .filter_map(|f| f.result.ok())
            .filter(|c| c.position <= good_end && c.position >= log_start)
            .max_by_key(|c| c.generation);
        let (mut heads, from, allow_rebase) = match best {
            Some(c) => (heads_from_checkpoint(&c), c.position, false),
            None => (
                QueueMap::with_hasher(QueueHasherBuilder::new()),
                log_start,
                log_start > 0,
            ),
        };
        let active_base = segs.last().map_or(good_end, |s| s.0);
        for (i, (base, path)) in segs.iter().enumerate() {
            let next = segs.get(i + 1).map_or(good_end, |s| s.0);
            if next <= from && *base != active_base {
                continue;
            }
            let opened;
            let file = if *base == active_base {
                active
            } else {
                opened = self
                    .shared
                    .open_file(OpenOptions::new().read(true), path)
                    .map_err(|e| StoreError::io("open segment", path, e))?;
                &opened
            };
            let base = *base;
            let from_off = SEGMENT_HEADER_LEN + (from.max(base) - base);
            let stop = scan_file(file, path, from_off, |off, rec| {
                let pos = base + (off - SEGMENT_HEADER_LEN);
                replay_record(&mut heads, pos, rec, allow_rebase)
                    .map_err(|why| StoreError::corrupt(path, off, why))
            })?;
            match stop {
                ScanStop::End(off) => {
                    let end = base + (off - SEGMENT_HEADER_LEN);
                    if end != next {
                        return Err(StoreError::corrupt(
                            path,
                            off,
                            format!("the segment ends at position {end}, expected {next}"),
                        ));
                    }
                }
                ScanStop::Bad { offset, reason, .. } => {
                    return Err(StoreError::corrupt(path, offset, reason));
                }
            }
        }
        Ok(heads)
    }

    /// The rebuilt heads must be exactly what readers were shown.
    fn check_against_published(&self, heads: &QueueMap<Head>) -> Result<(), StoreError> {
        let published = self.shared.heads().len();
        if published != heads.len() {
            return Err(StoreError::corrupt(
                self.shared.dir(),
                0,
                format!(
                    "the log on disk has {} queues but {published} were acknowledged",
                    heads.len()
                ),
            ));
        }
        for (q, h) in heads.iter() {
            let shown = self.shared.heads().get(q).map_or(0, |p| p.last_key);
            if shown != h.last_key() {
                return Err(StoreError::corrupt(
                    self.shared.dir(),
                    0,
                    format!(
                        "queue {q:?} ends at key {} on disk but {shown} was acknowledged",
                        h.last_key()
                    ),
                ));
            }
        }
        Ok(())
    }
}
