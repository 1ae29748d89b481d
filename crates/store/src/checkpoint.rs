//! Checkpoints of the queue heads and the background checkpointer thread (which also applies
//! retention).
//!
//! Two slots, `checkpoint-a` and `checkpoint-b`, alternate; each is written to
//! `checkpoint.tmp`, fsynced, renamed over its slot and the directory fsynced, so a crash at any
//! moment leaves at least one valid checkpoint. The heads are snapshotted under the writer's lock
//! at a batch boundary, after fsyncing the log up to that point, and the checkpoint is written only
//! once the log is acknowledged up to there, so a checkpoint never refers to log data that could
//! be lost or that an in-process recovery (`resume`) would remove. A checkpoint that cannot be
//! written (no space, no descriptor) leaves no temporary file behind; the store is reported
//! degraded and the checkpointer tries again later.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::engine::Inner;
use crate::error::StoreError;
use crate::format::{
    begin_checkpoint, decode_checkpoint, encode_checkpoint_queue, finish_checkpoint, Checkpoint,
};
use crate::health::Degradation;
use crate::resources::free_bytes;

pub(crate) const SLOT_NAMES: [&str; 2] = ["checkpoint-a", "checkpoint-b"];
const TMP_NAME: &str = "checkpoint.tmp";

/// A checkpoint file found on disk.
pub(crate) struct FoundCheckpoint {
    pub slot: u8,
    pub path: PathBuf,
    pub result: Result<Checkpoint, String>,
}

/// Reads both slots (missing files are skipped).
pub(crate) fn read_checkpoints(dir: &Path) -> Result<Vec<FoundCheckpoint>, StoreError> {
    let mut v = Vec::new();
    for (slot, name) in SLOT_NAMES.iter().enumerate() {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => v.push(FoundCheckpoint {
                slot: slot as u8,
                path,
                result: decode_checkpoint(&bytes),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("read checkpoint", &path, e)),
        }
    }
    Ok(v)
}

impl Inner {
    /// Writes a checkpoint if the log moved since the last one.
    pub(crate) fn checkpoint(&self) -> Result<(), StoreError> {
        let mut ck = self.ckpt.lock();
        if let Some(e) = self.health.refusal() {
            return Err(e);
        }
        let generation = ck.generation + 1;
        let (position, data) = {
            let mut st = self.state.lock();
            if let Some(e) = self.health.refusal() {
                return Err(e);
            }
            if ck.has && st.end == ck.position {
                return Ok(());
            }
            if let Err(e) = self.sync_active(&mut st) {
                self.enter_recovery(&e);
                return Err(e);
            }
            let mut data = Vec::with_capacity(64 + st.heads.len() * 80);
            begin_checkpoint(&mut data, generation, st.end, st.heads.len() as u64);
            for (q, h) in st.heads.iter() {
                encode_checkpoint_queue(
                    &mut data,
                    *q,
                    h.last_seq,
                    h.last_peer_key,
                    h.chain.iter().map(|c| c.1),
                );
            }
            (st.end, data)
        };
        self.wait_acknowledged(position)?;
        let mut data = data;
        finish_checkpoint(&mut data);
        let slot = ck.next_slot;
        if let Err(e) = self.write_checkpoint_file(SLOT_NAMES[slot as usize], &data) {
            self.health.degrade(
                Degradation::Checkpoint,
                format!("checkpoints fail (restart replay grows): {e}"),
            );
            return Err(e);
        }
        self.health.clear(Degradation::Checkpoint);
        ck.generation = generation;
        ck.position = position;
        self.ckpt_position.store(position, Ordering::Release);
        ck.has = true;
        ck.next_slot = 1 - slot;
        ck.last_at = Instant::now();
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            position,
            generation,
            bytes = data.len(),
            "checkpoint written"
        );
        Ok(())
    }

    /// Waits until the log is acknowledged up to `position` (the sync thread is at most one fsync
    /// behind the writer); fails if the store starts refusing appends or has stopped first.
    fn wait_acknowledged(&self, position: u64) -> Result<(), StoreError> {
        let mut g = self.end_lock.lock();
        loop {
            if self.log.durable_end.load(Ordering::Acquire) >= position {
                return Ok(());
            }
            if let Some(e) = self.health.refusal() {
                return Err(e);
            }
            if self.stopped.load(Ordering::Acquire) {
                return Err(StoreError::Poisoned(format!(
                    "the log is not acknowledged up to position {position}"
                )));
            }
            self.end_cv.wait_for(&mut g, Duration::from_millis(20));
        }
    }

    /// [`write_atomically`] with the store's open directory and descriptor reserve; removes the
    /// temporary file if the checkpoint could not be completed.
    fn write_checkpoint_file(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.dir.join(TMP_NAME);
        let path = self.dir.join(name);
        let r = (|| {
            let mut f = self
                .open_file(
                    OpenOptions::new().write(true).create(true).truncate(true),
                    &tmp,
                )
                .map_err(|e| StoreError::io("create checkpoint", &tmp, e))?;
            f.write_all(data)
                .map_err(|e| StoreError::io("write checkpoint", &tmp, e))?;
            f.sync_all()
                .map_err(|e| StoreError::io("fsync checkpoint", &tmp, e))?;
            drop(f);
            std::fs::rename(&tmp, &path)
                .map_err(|e| StoreError::io("rename checkpoint", &path, e))?;
            self.sync_dir()
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    /// Periodic look at the resources the store needs: free space and the descriptor reserve.
    fn watch_resources(&self) {
        let seg = self.opts.segment_bytes;
        match free_bytes(&self.dir_file) {
            Ok(free) if free < seg => self.health.degrade(
                Degradation::LowSpace,
                format!(
                    "{} MiB free on the store's filesystem, less than one segment ({} MiB)",
                    free >> 20,
                    seg >> 20
                ),
            ),
            // a margin, so that a volume hovering at the threshold does not flap
            Ok(free) if free >= seg + seg / 4 => self.health.clear(Degradation::LowSpace),
            _ => {}
        }
        if self.reserve.replenish() {
            self.health.clear(Degradation::NoDescriptorReserve);
        } else {
            self.health.degrade(
                Degradation::NoDescriptorReserve,
                "the descriptor reserve is in use and cannot be restored (the process is at its                  open-file limit)"
                    .into(),
            );
        }
    }

    /// Drops sealed segments wholly covered by the newest checkpoint, oldest first, while the
    /// retention options say so. Returns how many were dropped.
    pub(crate) fn apply_retention(&self) -> Result<usize, StoreError> {
        let r = self.opts.retention;
        if r.max_age.is_none() && r.max_total_bytes.is_none() {
            return Ok(0);
        }
        let covered = {
            let ck = self.ckpt.lock();
            if !ck.has {
                return Ok(0);
            }
            ck.position
        };
        let segs = self.log.segments();
        let total: u64 = segs
            .iter()
            .map(|s| s.end.load(Ordering::Acquire) - s.base)
            .sum();
        let mut remaining = total;
        let mut dropped = 0;
        let now = SystemTime::now();
        // never the last (active) segment
        for (i, s) in segs.iter().enumerate() {
            if i + 1 >= segs.len() {
                break;
            }
            let next_base = segs[i + 1].base;
            if next_base > covered {
                break;
            }
            let size = s.end.load(Ordering::Acquire) - s.base;
            let too_big = r.max_total_bytes.is_some_and(|m| remaining > m);
            let too_old = match r.max_age {
                Some(age) => std::fs::metadata(&s.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|d| d > age),
                None => false,
            };
            if !too_big && !too_old {
                break;
            }
            // Readers stop using the segment before its file disappears.
            self.log.log_start.store(next_base, Ordering::Release);
            self.log.remove_segment(s.base);
            std::fs::remove_file(&s.path)
                .map_err(|e| StoreError::io("remove segment", &s.path, e))?;
            remaining -= size;
            dropped += 1;
            tracing::info!(segment = %s.path.display(), "retention dropped segment");
        }
        if dropped > 0 {
            self.sync_dir()?;
            self.stats
                .segments_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        Ok(dropped)
    }
}

/// Body of the checkpointer thread.
pub(crate) fn checkpointer_loop(inner: Arc<Inner>) {
    let interval = inner.opts.checkpoint_interval;
    let tick = interval.min(Duration::from_secs(1));
    loop {
        {
            let mut stop = inner.ckpt_signal.lock();
            if *stop {
                return;
            }
            inner.ckpt_cv.wait_for(&mut stop, tick);
            if *stop {
                return;
            }
        }
        inner.watch_resources();
        if inner.health.is_refusing() {
            continue;
        }
        let end = inner.log.durable_end.load(Ordering::Acquire);
        let (pos, last_at) = {
            let ck = inner.ckpt.lock();
            (ck.position, ck.last_at)
        };
        let due = end > pos
            && (last_at.elapsed() >= interval || end - pos >= inner.opts.checkpoint_bytes);
        if due {
            if let Err(e) = inner.checkpoint() {
                tracing::error!(error = %e, "background checkpoint failed");
                continue;
            }
        }
        if let Err(e) = inner.apply_retention() {
            tracing::error!(error = %e, "retention failed");
        }
    }
}
