//! The resources a store needs to keep writing, and how it copes when they run short.
//!
//! * **Descriptors.** The store keeps what a segment roll needs open ahead of time (the directory,
//!   for fsyncs of it, and the next segment's file, see `prealloc`), so a roll needs no new
//!   descriptor in the common case. Besides, [`FdReserve`] holds one spare descriptor: an open
//!   that fails with `EMFILE`/`ENFILE` releases it and tries once more, and it is taken back once
//!   descriptors are available again.
//! * **Space.** [`free_bytes`] (`fstatvfs`) decides whether a preallocated spare segment fits and
//!   whether a store that ran out of space may resume.

use std::fs::File;
use std::io;

use parking_lot::Mutex;

use crate::health::Cause;

/// One descriptor held in reserve (an open `/dev/null`), released when the store runs out.
pub(crate) struct FdReserve {
    fd: Mutex<Option<File>>,
}

impl FdReserve {
    pub(crate) fn new() -> FdReserve {
        FdReserve {
            fd: Mutex::new(File::open("/dev/null").ok()),
        }
    }

    /// Takes the reserve back if it was released; returns whether it is held now.
    pub(crate) fn replenish(&self) -> bool {
        let mut fd = self.fd.lock();
        if fd.is_none() {
            *fd = File::open("/dev/null").ok();
            if fd.is_some() {
                tracing::info!("store descriptor reserve restored");
            }
        }
        fd.is_some()
    }

    /// Runs `op` (which opens something); if it fails for lack of descriptors and the reserve is
    /// held, releases the reserve and runs it once more.
    pub(crate) fn open_with<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if Cause::of_io(&e) == Cause::NoDescriptors => {
                let released = self.fd.lock().take().is_some();
                if !released {
                    return Err(e);
                }
                tracing::warn!(error = %e, "out of descriptors: the store uses its reserve");
                op()
            }
            r => r,
        }
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &File) -> io::Result<u64> {
    let s = rustix::fs::fstatvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}
