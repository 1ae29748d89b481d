//! Exclusive lock on a store directory (`LOCK`, `flock(2)`), so two stores (in one process or
//! two) never append to the same log. Released when the lock object is dropped or the process
//! dies. This is the crate's only `unsafe`: one FFI call, justified because a second writer would
//! corrupt the log. The holder writes its process id into `LOCK`, so a refused opener can name it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::StoreError;

pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("open lock file", &path, e))?;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is a valid open descriptor owned by `file`, which outlives the call;
        // flock only reads its integer arguments.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(StoreError::Locked(dir.to_path_buf(), holder(dir)));
            }
            return Err(StoreError::io("lock", &path, e));
        }
        let mut file = file;
        // The pid is informational (for the error of the next opener); failing to write it is not
        // a reason to refuse the store.
        if file.set_len(0).is_ok() {
            let _ = writeln!(file, "{}", std::process::id());
        }
        Ok(DirLock { _file: file })
    }
}

/// Who holds the lock of `dir`, as recorded in its `LOCK` file: "process 1234", or a generic phrase
/// when no pid was recorded.
fn holder(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join("LOCK"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        Some(pid) if pid == std::process::id() => {
            format!("another instance in this process (pid {pid})")
        }
        Some(pid) => format!("process {pid}"),
        None => "another process or instance".into(),
    }
}
