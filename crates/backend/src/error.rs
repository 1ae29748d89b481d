//! The backend's error type. Each variant says whose fault the failure is: the caller's
//! (`InvalidArgument`, `NotFound`), the storage service's (`Sqlite`, `Mysql`, `Redis`, `Io`, `Webhook`), the data another writer left
//! behind (`Corrupt`), or ours (`Internal`).

use std::path::PathBuf;

/// Everything that can go wrong in the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The caller passed a value the backend refuses (e.g. `appid <= 0`). The caller's fault.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The caller named something that does not exist (e.g. an unknown group, or a user who is not
    /// a member). The caller's fault; the HTTP layer answers 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// The embedded SQLite database failed (disk full, locked too long, corrupt file, …).
    #[error("embedded backend (SQLite) failed: {0}")]
    Sqlite(#[from] sqlx::Error),
    /// The MySQL/MariaDB group database failed or is unreachable.
    #[error("group database (MySQL) failed: {0}")]
    Mysql(sqlx::Error),
    /// Redis failed or is unreachable.
    #[error("redis backend failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Preparing the backend's files failed (e.g. creating the SQLite file's directory).
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path being prepared.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A stored value is not what this server or GoBelieve writes there (e.g. a non-integer
    /// `forbidden` flag). The fault of whoever wrote it.
    #[error("malformed data in the backend: {0}")]
    Corrupt(String),
    /// The push webhook failed (connection error, timeout, or a non-2xx answer).
    #[error("push webhook failed: {0}")]
    Webhook(String),
    /// A bug or an unexpected state inside the backend crate.
    #[error("internal backend error: {0}")]
    Internal(String),
}
