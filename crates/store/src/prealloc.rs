//! Segment preallocation. Appending to a file makes every `fdatasync` commit a size and extent
//! change to the filesystem journal; overwriting blocks that already exist does not, which makes
//! it about twice as fast here. So a background thread keeps one zero-filled, fsynced spare
//! segment (`segment.spare`) ready, and the writer turns it into the next segment at a roll
//! (header written and fsynced, then renamed into place). The spare is written only once the
//! active segment is half full, so small stores never pay for it.
//!
//! Consequence for the format: the last segment may end with zeros after its last record. A
//! record header of twelve zero bytes followed only by zeros is the clean end of the log.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::Inner;
use crate::error::StoreError;
use crate::log::sync_dir;

pub(crate) const SPARE_NAME: &str = "segment.spare";
const SPARE_TMP_NAME: &str = "segment.spare.tmp";

pub(crate) fn spare_path(dir: &Path) -> PathBuf {
    dir.join(SPARE_NAME)
}

/// At open: drop a half-written spare, keep a complete one. Returns whether a spare is ready.
pub(crate) fn check_spare(dir: &Path, segment_bytes: u64) -> Result<bool, StoreError> {
    let tmp = dir.join(SPARE_TMP_NAME);
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|e| StoreError::io("remove", &tmp, e))?;
    }
    let spare = spare_path(dir);
    match std::fs::metadata(&spare) {
        Ok(m) if m.len() == segment_bytes => Ok(true),
        Ok(_) => {
            std::fs::remove_file(&spare).map_err(|e| StoreError::io("remove", &spare, e))?;
            Ok(false)
        }
        Err(_) => Ok(false),
    }
}

fn write_spare(inner: &Inner) -> Result<bool, StoreError> {
    let dir = &inner.dir;
    let tmp = dir.join(SPARE_TMP_NAME);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StoreError::io("create spare segment", &tmp, e))?;
    let chunk = vec![0u8; 1 << 20];
    let total = inner.opts.segment_bytes;
    let mut off = 0u64;
    while off < total {
        if inner.prealloc.lock().stop {
            drop(f);
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        }
        let n = (total - off).min(chunk.len() as u64) as usize;
        f.write_all_at(&chunk[..n], off)
            .map_err(|e| StoreError::io_at("write spare segment", &tmp, off, e))?;
        off += n as u64;
    }
    f.sync_all()
        .map_err(|e| StoreError::io("fsync spare segment", &tmp, e))?;
    drop(f);
    let spare = spare_path(dir);
    std::fs::rename(&tmp, &spare).map_err(|e| StoreError::io("rename spare segment", &spare, e))?;
    sync_dir(dir)?;
    Ok(true)
}

/// Body of the preallocator thread.
pub(crate) fn prealloc_loop(inner: Arc<Inner>) {
    loop {
        {
            let mut st = inner.prealloc.lock();
            while !st.stop && (!st.wanted || st.ready) {
                inner.prealloc_cv.wait(&mut st);
            }
            if st.stop {
                return;
            }
        }
        match write_spare(&inner) {
            Ok(true) => {
                let mut st = inner.prealloc.lock();
                st.ready = true;
                st.wanted = false;
            }
            Ok(false) => return,
            Err(e) => {
                // Not fatal: the writer falls back to a plain, growing segment file.
                tracing::warn!(error = %e, "could not preallocate a segment");
                let mut st = inner.prealloc.lock();
                st.wanted = false;
            }
        }
    }
}
