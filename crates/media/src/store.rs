//! The storage seam: [`Storage`], implemented by [`LocalStore`] (files under the data directory) and
//! `s3::S3Store` (any S3-compatible object store), plus [`Spool`], the temporary file every
//! upload is streamed into first.
//!
//! An upload never goes straight to its final name: its bytes are written to a spool file in
//! `<dir>/tmp` while they are hashed and counted, and only a complete, checked spool is committed
//! under its content address. The local store commits with fsync + rename + fsync of the directory,
//! so a reader sees either nothing or every byte; the S3 store with one PUT (or a completed
//! multipart upload), which S3 makes visible atomically. A spool that is dropped before it is
//! committed (the client disconnected, a limit was hit, the server is stopping) deletes its file.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::MediaError;

/// A stream of an object's bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// What a stored object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub modified: SystemTime,
}

/// What a prefix deletion removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub objects: u64,
    pub bytes: u64,
}

/// One way of keeping media objects. Keys are `/`-separated relative paths built by this crate
/// (`<appid>/<uid>/<sha256>.<ext>`, thumbnails under `<appid>/<uid>/thumbs/`).
pub trait Storage: Send + Sync + 'static {
    /// `"local"` or `"s3"`, for logs.
    fn kind(&self) -> &'static str;

    /// Makes the finished spool the object `key`. `Ok(false)`: an object with this key (so, with
    /// these bytes) already existed and the spool was discarded — the content is stored once.
    fn commit<'a>(
        &'a self,
        spool: Finished,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, MediaError>>;

    /// Stores a small object built in memory (a thumbnail), atomically.
    fn put_small<'a>(&'a self, key: &'a str, bytes: Bytes)
        -> BoxFuture<'a, Result<(), MediaError>>;

    /// The object's size and time, `None` when it does not exist.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>, MediaError>>;

    /// The bytes `range` of the object (the caller keeps it within the object's size); `None`
    /// when the object does not exist.
    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Option<ByteStream>, MediaError>>;

    /// Deletes every object whose key starts with `prefix/`.
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Removed, MediaError>>;

    /// Total bytes of the objects whose key starts with `prefix/`.
    fn usage<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64, MediaError>>;
}

/// Deletes its file on drop unless disarmed.
#[derive(Debug)]
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // A quick unlink; failing to remove a temporary file only leaves it for the start-up sweep.
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Why writing to a spool stopped.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// An upload being received: a temporary file, its SHA-256 and size so far, and its first bytes
/// (for sniffing). Dropping it deletes the file.
pub struct Spool {
    file: tokio::fs::File,
    guard: TempGuard,
    hasher: Sha256,
    size: u64,
    limit: u64,
    head: Vec<u8>,
}

/// A completely received upload, ready to be checked and committed. Dropping it deletes the file.
#[derive(Debug)]
pub struct Finished {
    path: PathBuf,
    guard: TempGuard,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
    /// The first [`crate::types::SNIFF_LEN`] bytes (fewer for a shorter upload).
    pub head: Vec<u8>,
}

fn io_err(path: &Path, source: io::Error) -> MediaError {
    MediaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// A new spool file in `dir` accepting at most `limit` bytes.
    pub async fn create(dir: &Path, limit: u64) -> Result<Spool, MediaError> {
        let name = format!("upload-{}-{:016x}.part", std::process::id(), rand_u64());
        let path = dir.join(name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_err(&path, e))?;
        Ok(Spool {
            file,
            guard: TempGuard(Some(path)),
            hasher: Sha256::new(),
            size: 0,
            limit,
            head: Vec::new(),
        })
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a chunk; refuses it (and so the upload) when it would pass the limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        let new_size = self.size + chunk.len() as u64;
        if new_size > self.limit {
            return Err(SpoolError::TooLarge { limit: self.limit });
        }
        if self.head.len() < crate::types::SNIFF_LEN {
            let take = (crate::types::SNIFF_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(|e| self.io(e))?;
        self.size = new_size;
        Ok(())
    }

    fn io(&self, e: io::Error) -> MediaError {
        io_err(self.guard.0.as_deref().unwrap_or(Path::new("<spool>")), e)
    }

    /// Flushes and fsyncs the file; the content is then complete on disk.
    pub async fn finish(mut self) -> Result<Finished, MediaError> {
        self.file.flush().await.map_err(|e| self.io(e))?;
        self.file.sync_all().await.map_err(|e| self.io(e))?;
        let path = self.guard.0.clone().unwrap_or_default();
        Ok(Finished {
            path,
            guard: TempGuard(self.guard.0.take()),
            sha256: hex::encode(self.hasher.finalize_reset()),
            size: self.size,
            head: std::mem::take(&mut self.head),
        })
    }
}

impl Finished {
    /// The spool file (for reading image headers).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the content for reading from the start.
    pub async fn open(&self) -> Result<tokio::fs::File, MediaError> {
        tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| io_err(&self.path, e))
    }

    /// The file now belongs to someone else (it was renamed away): no deletion on drop.
    fn disarm(mut self) -> PathBuf {
        self.guard.0 = None;
        std::mem::take(&mut self.path)
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Removes spool files left by a process that died mid-upload (called at start-up).
pub fn sweep_spool_dir(dir: &Path) -> Result<usize, MediaError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".part") && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Media files under a directory: `<root>/objects/<key>`, spools in `<root>/tmp`.
pub struct LocalStore {
    objects: PathBuf,
}

impl LocalStore {
    /// Opens (creating) `root`; removes spool files a previous process left behind.
    pub fn open(root: &Path) -> Result<LocalStore, MediaError> {
        let objects = root.join("objects");
        std::fs::create_dir_all(&objects).map_err(|e| io_err(&objects, e))?;
        Ok(LocalStore { objects })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.objects.join(key)
    }
}

/// fsync of a directory, so a rename or a new entry in it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents under `stop`, fsyncing each parent that gained an entry.
fn create_dirs_durably(dir: &Path, stop: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.is_dir() && d.starts_with(stop) && d != stop {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for m in missing.iter().rev() {
        if let Some(parent) = m.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn blocking_err(e: tokio::task::JoinError) -> MediaError {
    MediaError::Internal(format!("storage task failed: {e}"))
}

fn walk(dir: &Path, out: &mut Removed) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&entry.path(), out)?;
        } else if ft.is_file() {
            out.objects += 1;
            out.bytes += entry.metadata()?.len();
        }
    }
    Ok(())
}

impl Storage for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn commit<'a>(
        &'a self,
        spool: Finished,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, MediaError>> {
        let target = self.path(key);
        let root = self.objects.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<bool, MediaError> {
                if target.is_file() {
                    // Same key, same bytes: stored once; the spool is deleted on drop.
                    return Ok(false);
                }
                let dir = target.parent().unwrap_or(&root).to_path_buf();
                create_dirs_durably(&dir, &root).map_err(|e| io_err(&dir, e))?;
                let from = spool.path().to_path_buf();
                std::fs::rename(&from, &target).map_err(|e| io_err(&target, e))?;
                spool.disarm();
                sync_dir(&dir).map_err(|e| io_err(&dir, e))?;
                Ok(true)
            })
            .await
            .map_err(blocking_err)?
        })
    }

    fn put_small<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), MediaError>> {
        let target = self.path(key);
        let root = self.objects.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<(), MediaError> {
                let dir = target.parent().unwrap_or(&root).to_path_buf();
                create_dirs_durably(&dir, &root).map_err(|e| io_err(&dir, e))?;
                let tmp = dir.join(format!(".{:016x}.tmp", rand_u64()));
                let mut guard = TempGuard(Some(tmp.clone()));
                let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
                std::io::Write::write_all(&mut f, &bytes).map_err(|e| io_err(&tmp, e))?;
                f.sync_all().map_err(|e| io_err(&tmp, e))?;
                std::fs::rename(&tmp, &target).map_err(|e| io_err(&target, e))?;
                guard.0 = None;
                sync_dir(&dir).map_err(|e| io_err(&dir, e))?;
                Ok(())
            })
            .await
            .map_err(blocking_err)?
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>, MediaError>> {
        let path = self.path(key);
        Box::pin(async move {
            match tokio::fs::metadata(&path).await {
                Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                    size: m.len(),
                    modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&path, e)),
            }
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Option<ByteStream>, MediaError>> {
        let path = self.path(key);
        Box::pin(async move {
            let mut file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(&path, e)),
            };
            if range.start > 0 {
                file.seek(io::SeekFrom::Start(range.start))
                    .await
                    .map_err(|e| io_err(&path, e))?;
            }
            let len = range.end.saturating_sub(range.start);
            let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
            Ok(Some(stream.boxed()))
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Removed, MediaError>> {
        let dir = self.path(prefix);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<Removed, MediaError> {
                let mut removed = Removed::default();
                walk(&dir, &mut removed).map_err(|e| io_err(&dir, e))?;
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&dir, e)),
                }
                if let Some(parent) = dir.parent() {
                    sync_dir(parent).map_err(|e| io_err(parent, e))?;
                }
                Ok(removed)
            })
            .await
            .map_err(blocking_err)?
        })
    }

    fn usage<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64, MediaError>> {
        let dir = self.path(prefix);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<u64, MediaError> {
                let mut seen = Removed::default();
                walk(&dir, &mut seen).map_err(|e| io_err(&dir, e))?;
                Ok(seen.bytes)
            })
            .await
            .map_err(blocking_err)?
        })
    }
}

/// Reads a whole spool file in parts of at most `part` bytes (used by the S3 commit).
pub(crate) async fn read_part(file: &mut tokio::fs::File, part: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(part.min(1 << 20));
    (&mut *file).take(part as u64).read_to_end(&mut buf).await?;
    Ok(Bytes::from(buf))
}
