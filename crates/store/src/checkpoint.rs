//! Checkpoints of the queue heads and the background checkpointer thread (which also applies
//! retention).
//!
//! Two slots, `checkpoint-a` and `checkpoint-b`, alternate; each is written to
//! `checkpoint.tmp`, fsynced, renamed over its slot and the directory fsynced, so a crash at any
//! moment leaves at least one valid checkpoint. The writer snapshots its heads for a checkpoint
//! between two batches (a [`Submission::Snapshot`]), after fsyncing the log up to that point, and the checkpoint is written only
//! once the log is acknowledged up to there, so a checkpoint never refers to log data that could
//! be lost or that an in-process recovery (`resume`) would remove. A checkpoint that cannot be
//! written (no space, no descriptor) leaves no temporary file behind; the store is reported
//! degraded and the checkpointer tries again later.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::error::StoreError;
use crate::format::{
    begin_checkpoint, decode_checkpoint, encode_checkpoint_queue, finish_checkpoint, Checkpoint,
};
use crate::health::Degradation;
use crate::queue::{Head, QueueMap};
use crate::shared::{Shared, Stats};
use crate::submit::{Snapshot, Submission, Submissions};

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

/// Checkpoint bookkeeping.
pub(crate) struct CkptState {
    pub generation: u64,
    /// Position covered by the newest checkpoint on disk (0 and `has` false if none).
    pub position: u64,
    pub has: bool,
    /// Slot the next checkpoint goes to (0 = a, 1 = b).
    pub next_slot: u8,
    pub last_at: Instant,
}

/// The checkpoints of one store: their bookkeeping (whose lock also serialises checkpoints), the
/// position the newest one covers, and the checkpointer thread's wake-up and stop signal.
pub(crate) struct Checkpoints {
    state: Mutex<CkptState>,
    /// `state.position`, readable without waiting for a checkpoint in progress.
    position: AtomicU64,
    /// Set to stop the checkpointer thread.
    stop: Mutex<bool>,
    cv: Condvar,
}

/// The checkpoint data of `heads` at log position `end`, as checkpoint `generation` (without its
/// trailer: `Checkpoints::write` finishes it).
pub(crate) fn encode_heads(generation: u64, end: u64, heads: &QueueMap<Head>) -> Vec<u8> {
    let mut data = Vec::with_capacity(64 + heads.len() * 80);
    begin_checkpoint(&mut data, generation, end, heads.len() as u64);
    for (q, h) in heads.iter() {
        encode_checkpoint_queue(
            &mut data,
            *q,
            h.last_seq,
            h.last_peer_key,
            h.chain.iter().map(|c| c.1),
        );
    }
    data
}

impl Checkpoints {
    /// `state` as recovery found it.
    pub fn new(state: CkptState) -> Checkpoints {
        Checkpoints {
            position: AtomicU64::new(state.position),
            state: Mutex::new(state),
            stop: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    /// Position covered by the newest checkpoint.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Wakes the checkpointer thread (the log grew by `checkpoint_bytes`).
    pub fn wake(&self) {
        drop(self.stop.lock());
        self.cv.notify_one();
    }

    /// Stops the checkpointer thread.
    pub fn stop(&self) {
        *self.stop.lock() = true;
        self.cv.notify_all();
    }

    /// Writes a checkpoint if the log moved since the last one, with the heads the running
    /// writer snapshots between two batches.
    pub fn checkpoint(&self, shared: &Shared, writer: &Submissions) -> Result<(), StoreError> {
        self.write(shared, |generation, unchanged_at| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            writer.submit(Submission::Snapshot {
                generation,
                unchanged_at,
                tx,
            });
            rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
        })
    }

    /// Writes a checkpoint if the log moved since the last one. `snapshot(generation,
    /// unchanged_at)` returns the encoded heads and the position they cover (or `None` when the
    /// log still ends at `unchanged_at`), after fsyncing the log up to there.
    pub fn write(
        &self,
        shared: &Shared,
        snapshot: impl FnOnce(u64, Option<u64>) -> Result<Snapshot, StoreError>,
    ) -> Result<(), StoreError> {
        let mut ck = self.state.lock();
        if let Some(e) = shared.health().refusal() {
            return Err(e);
        }
        let generation = ck.generation + 1;
        let Some((position, mut data)) = snapshot(generation, ck.has.then_some(ck.position))?
        else {
            return Ok(());
        };
        shared.wait_acknowledged(position)?;
        finish_checkpoint(&mut data);
        let slot = ck.next_slot;
        if let Err(e) = write_checkpoint_file(shared, SLOT_NAMES[slot as usize], &data) {
            shared.health().degrade(
                Degradation::Checkpoint,
                format!("checkpoints fail (restart replay grows): {e}"),
            );
            return Err(e);
        }
        shared.health().clear(Degradation::Checkpoint);
        ck.generation = generation;
        ck.position = position;
        self.position.store(position, Ordering::Release);
        ck.has = true;
        ck.next_slot = 1 - slot;
        ck.last_at = Instant::now();
        Stats::add(&shared.stats().checkpoints, 1);
        tracing::debug!(
            position,
            generation,
            bytes = data.len(),
            "checkpoint written"
        );
        Ok(())
    }

    /// Drops sealed segments wholly covered by the newest checkpoint, oldest first, while the
    /// retention options say so. Returns how many were dropped.
    pub fn apply_retention(&self, shared: &Shared) -> Result<usize, StoreError> {
        let r = shared.opts().retention;
        if r.max_age.is_none() && r.max_total_bytes.is_none() {
            return Ok(0);
        }
        let covered = {
            let ck = self.state.lock();
            if !ck.has {
                return Ok(0);
            }
            ck.position
        };
        let log = shared.log();
        let segs = log.segments();
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
            log.log_start.store(next_base, Ordering::Release);
            log.remove_segment(s.base);
            std::fs::remove_file(&s.path)
                .map_err(|e| StoreError::io("remove segment", &s.path, e))?;
            remaining -= size;
            dropped += 1;
            tracing::info!(segment = %s.path.display(), "retention dropped segment");
        }
        if dropped > 0 {
            shared.sync_dir()?;
            Stats::add(&shared.stats().segments_dropped, dropped as u64);
        }
        Ok(dropped)
    }
}

/// Writes checkpoint slot `name` atomically (temporary file, fsync, rename, directory fsync) with
/// the store's descriptor reserve; removes the temporary file if it could not be completed.
fn write_checkpoint_file(shared: &Shared, name: &str, data: &[u8]) -> Result<(), StoreError> {
    let tmp = shared.dir().join(TMP_NAME);
    let path = shared.dir().join(name);
    let r = (|| {
        let mut f = shared
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
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename checkpoint", &path, e))?;
        shared.sync_dir()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Periodic look at the resources the store needs: free space and the descriptor reserve.
fn watch_resources(shared: &Shared) {
    let seg = shared.opts().segment_bytes;
    let health = shared.health();
    match shared.free_bytes() {
        Ok(free) if free < seg => health.degrade(
            Degradation::LowSpace,
            format!(
                "{} MiB free on the store's filesystem, less than one segment ({} MiB)",
                free >> 20,
                seg >> 20
            ),
        ),
        // a margin, so that a volume hovering at the threshold does not flap
        Ok(free) if free >= seg + seg / 4 => health.clear(Degradation::LowSpace),
        _ => {}
    }
    if shared.replenish_reserve() {
        health.clear(Degradation::NoDescriptorReserve);
    } else {
        health.degrade(
            Degradation::NoDescriptorReserve,
            "the descriptor reserve is in use and cannot be restored (the process is at its open-file limit)"
                .into(),
        );
    }
}

/// Body of the checkpointer thread: checkpoints when `checkpoint_interval` passed or the log grew
/// by `checkpoint_bytes`, applies retention, and watches free space and descriptors.
pub(crate) fn checkpointer_loop(
    shared: Arc<Shared>,
    checkpoints: Arc<Checkpoints>,
    writer: Arc<Submissions>,
) {
    let interval = shared.opts().checkpoint_interval;
    let tick = interval.min(Duration::from_secs(1));
    loop {
        {
            let mut stop = checkpoints.stop.lock();
            if *stop {
                return;
            }
            checkpoints.cv.wait_for(&mut stop, tick);
            if *stop {
                return;
            }
        }
        watch_resources(&shared);
        if shared.health().is_refusing() {
            continue;
        }
        let end = shared.durable_end();
        let (pos, last_at) = {
            let ck = checkpoints.state.lock();
            (ck.position, ck.last_at)
        };
        let due = end > pos
            && (last_at.elapsed() >= interval || end - pos >= shared.opts().checkpoint_bytes);
        if due {
            match checkpoints.checkpoint(&shared, &writer) {
                Ok(()) => {}
                // the store is closing: its final checkpoint is written by `Store::close`
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::error!(error = %e, "background checkpoint failed");
                    continue;
                }
            }
        }
        if let Err(e) = checkpoints.apply_retention(&shared) {
            tracing::error!(error = %e, "retention failed");
        }
    }
}
