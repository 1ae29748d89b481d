//! The next segment, prepared ahead of need by a background thread.
//!
//! Appending to a file makes every `fdatasync` commit a size and extent change to the filesystem
//! journal; overwriting blocks that already exist does not, which makes it about twice as fast
//! here. So once the active segment is half full, the preallocator writes `segment.spare`: a
//! zero-filled, fsynced file of `segment_bytes`. The writer turns it into the next segment at a
//! roll (header written and fsynced, then renamed into place).
//!
//! A zero-filled spare is only written when the filesystem has room for it, for what the active
//! segment may still grow by, and some headroom; otherwise (and when `preallocate` is off) the
//! spare is an empty file and the next segment grows as it is written, so a small volume still
//! fills almost completely with messages. Either way the spare's file stays open, so a roll needs
//! no new descriptor. A spare that could not be finished is removed, and the attempt retried
//! with back-off.
//!
//! Consequence for the format: the last segment may end with zeros after its last record. A
//! record header of twelve zero bytes followed only by zeros is the clean end of the log.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::StoreError;
use crate::health::{Cause, Degradation};
use crate::shared::Shared;

pub(crate) const SPARE_NAME: &str = "segment.spare";
const SPARE_TMP_NAME: &str = "segment.spare.tmp";

/// Free space left over after a zero-filled spare and the active segment's remaining growth.
pub(crate) const SPARE_HEADROOM: u64 = 8 << 20;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The next segment's file (`segment.spare`), opened ahead of need so a roll needs no new
/// descriptor.
pub(crate) struct Spare {
    pub file: File,
    /// Zero-filled to `segment_bytes` and fsynced; otherwise empty (the segment grows as written).
    pub zero_filled: bool,
}

/// The preallocator thread's state.
#[derive(Default)]
struct PreallocState {
    /// The spare, ready for the next roll.
    spare: Option<Spare>,
    /// The writer wants a spare.
    wanted: bool,
    /// Bytes the active segment may still grow by (0 when it is preallocated), so a zero-filled
    /// spare is only written when both fit.
    active_growth: u64,
    stop: bool,
}

/// Where the preallocator leaves the spare and the writer takes it, and how the writer asks for
/// one.
#[derive(Default)]
pub(crate) struct SpareSlot {
    state: Mutex<PreallocState>,
    cv: Condvar,
}

impl SpareSlot {
    /// With the spare recovery found (`check_spare`).
    pub fn new(spare: Option<Spare>) -> SpareSlot {
        SpareSlot {
            state: Mutex::new(PreallocState {
                spare,
                ..PreallocState::default()
            }),
            cv: Condvar::new(),
        }
    }

    /// The spare, if one is ready (for a roll).
    pub fn take(&self) -> Option<Spare> {
        self.state.lock().spare.take()
    }

    /// Whether a zero-filled spare is ready.
    pub fn zero_filled_ready(&self) -> bool {
        self.state
            .lock()
            .spare
            .as_ref()
            .is_some_and(|s| s.zero_filled)
    }

    /// Asks for the next spare; the active segment may still grow by `active_growth` bytes.
    pub fn want(&self, active_growth: u64) {
        let mut p = self.state.lock();
        p.wanted = true;
        p.active_growth = active_growth;
        drop(p);
        self.cv.notify_one();
    }

    /// Stops the preallocator thread.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.cv.notify_all();
    }

    fn stopped(&self) -> bool {
        self.state.lock().stop
    }
}

pub(crate) fn spare_path(dir: &Path) -> PathBuf {
    dir.join(SPARE_NAME)
}

/// At open: drop a half-written or empty spare, keep (and open) a complete one.
pub(crate) fn check_spare(dir: &Path, segment_bytes: u64) -> Result<Option<Spare>, StoreError> {
    let tmp = dir.join(SPARE_TMP_NAME);
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|e| StoreError::io("remove", &tmp, e))?;
    }
    let spare = spare_path(dir);
    match std::fs::metadata(&spare) {
        Ok(m) if m.len() == segment_bytes => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&spare)
                .map_err(|e| StoreError::io("open spare segment", &spare, e))?;
            Ok(Some(Spare {
                file,
                zero_filled: true,
            }))
        }
        Ok(_) => {
            std::fs::remove_file(&spare).map_err(|e| StoreError::io("remove", &spare, e))?;
            Ok(None)
        }
        Err(_) => Ok(None),
    }
}

enum Made {
    Spare(Spare),
    Stopped,
}

/// Writes `segment.spare.tmp` (zero-filled when `zero_fill`), fsyncs it and renames it into
/// place. The temporary file is removed on any failure.
fn write_spare(shared: &Shared, slot: &SpareSlot, zero_fill: bool) -> Result<Made, StoreError> {
    let tmp = shared.dir().join(SPARE_TMP_NAME);
    let f = shared
        .open_file(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
            &tmp,
        )
        .map_err(|e| StoreError::io("create spare segment", &tmp, e))?;
    let r = fill_and_place(shared, slot, &f, &tmp, zero_fill);
    match r {
        Ok(true) => Ok(Made::Spare(Spare {
            file: f,
            zero_filled: zero_fill,
        })),
        Ok(false) => {
            drop(f);
            let _ = std::fs::remove_file(&tmp);
            Ok(Made::Stopped)
        }
        Err(e) => {
            drop(f);
            if let Err(re) = std::fs::remove_file(&tmp) {
                if re.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %re, file = %tmp.display(), "could not remove an unfinished spare segment");
                }
            }
            Err(e)
        }
    }
}

fn fill_and_place(
    shared: &Shared,
    slot: &SpareSlot,
    f: &File,
    tmp: &Path,
    zero_fill: bool,
) -> Result<bool, StoreError> {
    if zero_fill {
        let chunk = vec![0u8; 1 << 20];
        let total = shared.opts().segment_bytes;
        let mut off = 0u64;
        while off < total {
            if slot.stopped() {
                return Ok(false);
            }
            let n = (total - off).min(chunk.len() as u64) as usize;
            f.write_all_at(&chunk[..n], off)
                .map_err(|e| StoreError::io_at("write spare segment", tmp, off, e))?;
            off += n as u64;
        }
    }
    // Not `Shared::fsync`: a failure here says nothing about the log's own pages.
    f.sync_all()
        .map_err(|e| StoreError::io("fsync spare segment", tmp, e))?;
    let spare = spare_path(shared.dir());
    std::fs::rename(tmp, &spare).map_err(|e| StoreError::io("rename spare segment", &spare, e))?;
    shared.sync_dir_uncounted()?;
    Ok(true)
}

/// Whether a zero-filled spare fits: the spare, what the active segment may still grow by, and
/// headroom. Degrades the store's health when it does not.
fn zero_fill_fits(shared: &Shared, active_growth: u64) -> bool {
    let need = shared
        .opts()
        .segment_bytes
        .saturating_add(active_growth)
        .saturating_add(SPARE_HEADROOM);
    match shared.free_bytes() {
        Ok(free) if free < need => {
            shared.health().degrade(
                Degradation::PreallocSpace,
                format!(
                    "{} MiB free on the store's filesystem, less than a preallocated segment needs \
                     ({} MiB): segments grow as they are written",
                    free >> 20,
                    need >> 20
                ),
            );
            false
        }
        Ok(_) => {
            shared.health().clear(Degradation::PreallocSpace);
            true
        }
        // cannot tell: try, and fall back to an empty spare if the space is not there
        Err(_) => true,
    }
}

/// Body of the preallocator thread.
pub(crate) fn prealloc_loop(shared: Arc<Shared>, slot: Arc<SpareSlot>) {
    let mut retry = FIRST_RETRY;
    loop {
        let growth = {
            let mut st = slot.state.lock();
            while !st.stop && (!st.wanted || st.spare.is_some()) {
                slot.cv.wait(&mut st);
            }
            if st.stop {
                return;
            }
            st.active_growth
        };
        let zero_fill = shared.opts().preallocate && zero_fill_fits(&shared, growth);
        let made = match write_spare(&shared, &slot, zero_fill) {
            Err(e) if zero_fill && Cause::of(&e) == Cause::NoSpace => {
                tracing::warn!(error = %e, "no space for a preallocated segment; the next segment grows as written");
                write_spare(&shared, &slot, false)
            }
            r => r,
        };
        match made {
            Ok(Made::Spare(spare)) => {
                shared.health().clear(Degradation::Preallocation);
                retry = FIRST_RETRY;
                let mut st = slot.state.lock();
                st.spare = Some(spare);
                st.wanted = false;
            }
            Ok(Made::Stopped) => return,
            Err(e) => {
                // Not fatal: without a spare the writer creates the next segment itself.
                shared.health().degrade(
                    Degradation::Preallocation,
                    format!("cannot prepare the next segment: {e}"),
                );
                let mut st = slot.state.lock();
                if !st.stop {
                    slot.cv.wait_for(&mut st, retry);
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}
