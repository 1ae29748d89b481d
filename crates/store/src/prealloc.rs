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

use crate::engine::{Inner, Spare};
use crate::error::StoreError;
use crate::health::{Cause, Degradation};
use crate::resources::free_bytes;

pub(crate) const SPARE_NAME: &str = "segment.spare";
const SPARE_TMP_NAME: &str = "segment.spare.tmp";

/// Free space left over after a zero-filled spare and the active segment's remaining growth.
pub(crate) const SPARE_HEADROOM: u64 = 8 << 20;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(30);

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
fn write_spare(inner: &Inner, zero_fill: bool) -> Result<Made, StoreError> {
    let dir = &inner.dir;
    let tmp = dir.join(SPARE_TMP_NAME);
    let f = inner
        .open_file(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
            &tmp,
        )
        .map_err(|e| StoreError::io("create spare segment", &tmp, e))?;
    let r = fill_and_place(inner, &f, &tmp, zero_fill);
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
    inner: &Inner,
    f: &File,
    tmp: &Path,
    zero_fill: bool,
) -> Result<bool, StoreError> {
    if zero_fill {
        let chunk = vec![0u8; 1 << 20];
        let total = inner.opts.segment_bytes;
        let mut off = 0u64;
        while off < total {
            if inner.prealloc.lock().stop {
                return Ok(false);
            }
            let n = (total - off).min(chunk.len() as u64) as usize;
            f.write_all_at(&chunk[..n], off)
                .map_err(|e| StoreError::io_at("write spare segment", tmp, off, e))?;
            off += n as u64;
        }
    }
    // Not `Inner::fsync`: a failure here says nothing about the log's own pages.
    f.sync_all()
        .map_err(|e| StoreError::io("fsync spare segment", tmp, e))?;
    let spare = spare_path(&inner.dir);
    std::fs::rename(tmp, &spare).map_err(|e| StoreError::io("rename spare segment", &spare, e))?;
    inner
        .dir_file
        .sync_all()
        .map_err(|e| StoreError::io("fsync directory", &inner.dir, e))?;
    Ok(true)
}

/// Whether a zero-filled spare fits: the spare, what the active segment may still grow by, and
/// headroom. Degrades the store's health when it does not.
fn zero_fill_fits(inner: &Inner, active_growth: u64) -> bool {
    let need = inner
        .opts
        .segment_bytes
        .saturating_add(active_growth)
        .saturating_add(SPARE_HEADROOM);
    match free_bytes(&inner.dir_file) {
        Ok(free) if free < need => {
            inner.health.degrade(
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
            inner.health.clear(Degradation::PreallocSpace);
            true
        }
        // cannot tell: try, and fall back to an empty spare if the space is not there
        Err(_) => true,
    }
}

/// Body of the preallocator thread.
pub(crate) fn prealloc_loop(inner: Arc<Inner>) {
    let mut retry = FIRST_RETRY;
    loop {
        let growth = {
            let mut st = inner.prealloc.lock();
            while !st.stop && (!st.wanted || st.spare.is_some()) {
                inner.prealloc_cv.wait(&mut st);
            }
            if st.stop {
                return;
            }
            st.active_growth
        };
        let zero_fill = inner.opts.preallocate && zero_fill_fits(&inner, growth);
        let made = match write_spare(&inner, zero_fill) {
            Err(e) if zero_fill && Cause::of(&e) == Cause::NoSpace => {
                tracing::warn!(error = %e, "no space for a preallocated segment; the next segment grows as written");
                write_spare(&inner, false)
            }
            r => r,
        };
        match made {
            Ok(Made::Spare(spare)) => {
                inner.health.clear(Degradation::Preallocation);
                retry = FIRST_RETRY;
                let mut st = inner.prealloc.lock();
                st.spare = Some(spare);
                st.wanted = false;
            }
            Ok(Made::Stopped) => return,
            Err(e) => {
                // Not fatal: without a spare the writer creates the next segment itself.
                inner.health.degrade(
                    Degradation::Preallocation,
                    format!("cannot prepare the next segment: {e}"),
                );
                let mut st = inner.prealloc.lock();
                if !st.stop {
                    inner.prealloc_cv.wait_for(&mut st, retry);
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}
