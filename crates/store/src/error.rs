//! The store's error type. Each variant says whose fault it is: the disk or OS (`Io`), the data on
//! disk (`Corrupt`), an earlier failure that makes the store refuse writes while it recovers, or for
//! good after a bug or corruption (`Poisoned`), the caller
//! (`InvalidArgument`, `Closed`, `Overloaded`, `NotLeader`/`NotFollower`), or a replication peer
//! (`Truncated`, `ReplicationGap`).

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call failed. `offset` is the file offset involved, when there is one.
    #[error("I/O error during {op} on {}{}: {source}", path.display(), fmt_offset(*offset))]
    Io {
        op: &'static str,
        path: PathBuf,
        offset: Option<u64>,
        #[source]
        source: std::io::Error,
    },
    /// Data on disk is not what the format says it must be.
    #[error("corrupt store data in {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// An earlier write or fsync failed and the store refuses appends: while it re-establishes its
    /// state from disk and waits for the resource that ran out (it then resumes by itself), or for
    /// good after a bug or corruption that only a restart (or `banter store repair`) can address.
    /// The message says which (see [`crate::Store::health`]).
    #[error("store refuses appends: {0}")]
    Poisoned(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// The caller passed something the store cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Too many appends are waiting for the writer; try again later.
    #[error("store is overloaded: {0}")]
    Overloaded(String),
    /// The directory is already opened by another store (in this or another process): the
    /// directory and who holds it ("process 1234", as its `LOCK` file records).
    #[error("store directory {} is locked by {}", .0.display(), .1)]
    Locked(PathBuf, String),
    /// Appends go to the leader; this store is a replication follower.
    #[error("store is a replication follower and does not accept appends")]
    NotLeader,
    /// Replicated data can only be applied to a follower.
    #[error("store is a leader and does not accept replicated data")]
    NotFollower,
    /// A replication reader asked for a position older than the oldest retained record.
    #[error(
        "position {requested} is no longer retained; the oldest available is {first_available}"
    )]
    Truncated {
        requested: u64,
        first_available: u64,
    },
    /// Replicated data does not continue this log where it ends.
    #[error("replicated data starts at {start} but this log ends at {end}")]
    ReplicationGap { start: u64, end: u64 },
}

fn fmt_offset(o: Option<u64>) -> String {
    match o {
        Some(o) => format!(" at offset {o}"),
        None => String::new(),
    }
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            offset: None,
            source,
        }
    }

    pub(crate) fn io_at(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: u64,
        source: std::io::Error,
    ) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            offset: Some(offset),
            source,
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StoreError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// A copy suitable for handing to several waiters (I/O errors become their description).
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io {
                op,
                path,
                offset,
                source,
            } => StoreError::Io {
                op,
                path: path.clone(),
                offset: *offset,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Corrupt {
                file,
                offset,
                reason,
            } => StoreError::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            StoreError::Poisoned(s) => StoreError::Poisoned(s.clone()),
            StoreError::Closed => StoreError::Closed,
            StoreError::InvalidArgument(s) => StoreError::InvalidArgument(s.clone()),
            StoreError::Overloaded(s) => StoreError::Overloaded(s.clone()),
            StoreError::Locked(p, h) => StoreError::Locked(p.clone(), h.clone()),
            StoreError::NotLeader => StoreError::NotLeader,
            StoreError::NotFollower => StoreError::NotFollower,
            StoreError::Truncated {
                requested,
                first_available,
            } => StoreError::Truncated {
                requested: *requested,
                first_available: *first_available,
            },
            StoreError::ReplicationGap { start, end } => StoreError::ReplicationGap {
                start: *start,
                end: *end,
            },
        }
    }
}
