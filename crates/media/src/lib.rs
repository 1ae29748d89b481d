//! Media storage of the app API: what `POST /images`, `/audios` and `/files` keep and `GET` serves.
//!
//! * [`store`]: the [`Storage`] trait, the local-disk backend and the upload [`Spool`];
//! * [`s3`]: the S3-compatible backend;
//! * [`types`]: sniffing and the claimed-type check; [`imaging`]: dimensions and thumbnails;
//! * [`keys`]: URLs and object keys; [`sign`]: signed, expiring URLs;
//! * [`Media`]: the façade the HTTP layer uses — limits, the ingest of a finished spool (type check,
//!   dimensions, commit), thumbnails (bounded concurrency), per-user usage and deletion.
#![forbid(unsafe_code)]

pub mod config;
pub mod imaging;
pub mod keys;
pub mod s3;
pub mod sign;
pub mod store;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use config::{MediaAccess, MediaBackend, MediaConfig, S3Config};
pub use imaging::{ImageProblem, ThumbSpec};
pub use keys::MediaRef;
pub use store::{ByteStream, Finished, ObjectInfo, Removed, Spool, SpoolError, Storage};
pub use types::{Kind, MediaType, TypeMismatch};

/// What went wrong in the media layer; says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The operator's configuration is unusable.
    #[error("media configuration: {0}")]
    Config(String),
    /// The local disk failed (full, read-only, permissions, …).
    #[error("media storage I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The S3-compatible service failed or refused.
    #[error("object storage: {0}")]
    S3(object_store::Error),
    /// A bug or an unexpected state.
    #[error("internal media error: {0}")]
    Internal(String),
}

/// Why an upload was not stored. The client's fault except `Media`.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The content is not what was claimed, or not of the endpoint's kind (415).
    #[error(transparent)]
    Type(#[from] TypeMismatch),
    /// An image that cannot be read or is too large in pixels (415 / 413).
    #[error(transparent)]
    Image(#[from] ImageProblem),
    /// Storing failed.
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// A stored upload.
#[derive(Clone, Debug)]
pub struct Stored {
    pub media: MediaRef,
    pub size: u64,
    /// Image dimensions.
    pub dimensions: Option<(u32, u32)>,
    /// False when the same content was already stored (nothing new was written).
    pub created: bool,
}

/// The media service of one node.
pub struct Media {
    storage: Arc<dyn Storage>,
    spool_dir: PathBuf,
    cfg: MediaConfig,
    thumbs: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
}

impl Media {
    /// Opens the configured backend. `data_dir` is the default home of the local backend and of
    /// the spool directory; spool files a previous process left behind are removed.
    pub fn open(cfg: &MediaConfig, data_dir: &Path) -> Result<Media, MediaError> {
        let errors = cfg.validate();
        if !errors.is_empty() {
            return Err(MediaError::Config(errors.join("; ")));
        }
        let root = if cfg.dir.trim().is_empty() {
            data_dir.join("media")
        } else {
            PathBuf::from(&cfg.dir)
        };
        let spool_dir = root.join("tmp");
        let swept = store::sweep_spool_dir(&spool_dir)?;
        if swept > 0 {
            tracing::info!(files = swept, dir = %spool_dir.display(), "removed unfinished uploads");
        }
        let storage: Arc<dyn Storage> = match cfg.backend {
            MediaBackend::S3 => Arc::new(s3::S3Store::open(&cfg.s3)?),
            MediaBackend::Local => Arc::new(store::LocalStore::open(&root)?),
        };
        Ok(Media {
            storage,
            spool_dir,
            cfg: cfg.clone(),
            thumbs: Arc::new(Semaphore::new(cfg.thumbnail_workers.max(1))),
            uploads: Arc::new(Semaphore::new(cfg.max_concurrent_uploads.max(1))),
        })
    }

    pub fn config(&self) -> &MediaConfig {
        &self.cfg
    }

    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    /// The size limit of an upload of `kind`.
    pub fn limit(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Image => self.cfg.max_image_bytes,
            Kind::Audio => self.cfg.max_audio_bytes,
            Kind::File => self.cfg.max_file_bytes,
        }
    }

    /// A slot for one more upload in progress, `None` at `max_concurrent_uploads`.
    pub fn upload_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.uploads.clone().try_acquire_owned().ok()
    }

    /// A new spool for an upload of `kind`.
    pub async fn spool(&self, kind: Kind) -> Result<Spool, MediaError> {
        Spool::create(&self.spool_dir, self.limit(kind)).await
    }

    /// Checks a finished upload and stores it for user (`appid`, `uid`). The commit runs in its own
    /// task: once it has begun, a client that goes away does not interrupt it half-way.
    pub async fn ingest(
        &self,
        appid: i64,
        uid: i64,
        kind: Kind,
        claimed: &str,
        spool: Finished,
    ) -> Result<Stored, IngestError> {
        let media_type = types::resolve(kind, claimed, types::sniff(&spool.head))?;
        let dimensions = if media_type.family == types::Family::Image {
            let path = spool.path().to_path_buf();
            let max = self.cfg.max_image_pixels;
            let dims = tokio::task::spawn_blocking(move || imaging::dimensions(&path, max))
                .await
                .map_err(|e| MediaError::Internal(format!("image task failed: {e}")))??;
            Some(dims)
        } else {
            None
        };
        let media = MediaRef::new(kind, appid, uid, spool.sha256.clone(), media_type);
        let size = spool.size;
        let storage = self.storage.clone();
        let key = media.object_key();
        let created = tokio::spawn(async move { storage.commit(spool, &key).await })
            .await
            .map_err(|e| MediaError::Internal(format!("commit task failed: {e}")))??;
        Ok(Stored {
            media,
            size,
            dimensions,
            created,
        })
    }

    /// The object a URL names — the original, or the thumbnail (made now when missing) — with its
    /// key, content type and size; `None` when it does not exist (or is not an image, for a
    /// thumbnail).
    pub async fn locate(
        &self,
        r: &MediaRef,
    ) -> Result<Option<(String, &'static MediaType, ObjectInfo)>, IngestError> {
        let key = r.object_key();
        let Some((thumb_key, thumb_type)) = r.thumb_key() else {
            let info = self.storage.head(&key).await?;
            return Ok(info.map(|i| (key, r.media_type, i)));
        };
        if r.media_type.family != types::Family::Image {
            return Ok(None);
        }
        if let Some(info) = self.storage.head(&thumb_key).await? {
            return Ok(Some((thumb_key, thumb_type, info)));
        }
        let Some(orig) = self.storage.head(&key).await? else {
            return Ok(None);
        };
        if orig.size > self.cfg.max_image_bytes {
            return Ok(None);
        }
        let spec = r.thumb.unwrap_or(ThumbSpec::BUBBLE);
        let data = self.make_thumbnail(&key, r.media_type.ext, spec).await?;
        let size = data.len() as u64;
        self.storage.put_small(&thumb_key, data).await?;
        Ok(Some((
            thumb_key,
            thumb_type,
            ObjectInfo {
                size,
                modified: std::time::SystemTime::now(),
            },
        )))
    }

    /// Whether `spec` is one of the configured thumbnail sizes.
    pub fn thumb_allowed(&self, spec: ThumbSpec) -> bool {
        let sizes = &self.cfg.thumbnail_sizes;
        sizes.contains(&spec.width) && sizes.contains(&spec.height)
    }

    async fn make_thumbnail(
        &self,
        key: &str,
        ext: &'static str,
        spec: ThumbSpec,
    ) -> Result<Bytes, IngestError> {
        let _permit = self
            .thumbs
            .acquire()
            .await
            .map_err(|e| MediaError::Internal(format!("thumbnail workers closed: {e}")))?;
        let size = self
            .storage
            .head(key)
            .await?
            .map(|i| i.size)
            .unwrap_or_default();
        let stream =
            self.storage.get(key, 0..size).await?.ok_or_else(|| {
                MediaError::Internal(format!("{key} vanished while thumbnailing"))
            })?;
        let chunks: Vec<Bytes> = stream.try_collect().await.map_err(|e| MediaError::Io {
            path: PathBuf::from(key),
            source: e,
        })?;
        let data = chunks.concat();
        let max = self.cfg.max_image_pixels;
        let out = tokio::task::spawn_blocking(move || imaging::thumbnail(&data, ext, spec, max))
            .await
            .map_err(|e| MediaError::Internal(format!("thumbnail task failed: {e}")))??;
        Ok(Bytes::from(out))
    }

    /// Makes the thumbnail the SDKs show in a chat bubble, in the background (best effort: a
    /// thumbnail not made now is made at its first download).
    pub fn prepare_bubble(self: &Arc<Self>, media: &MediaRef) {
        if media.media_type.family != types::Family::Image || !self.thumb_allowed(ThumbSpec::BUBBLE)
        {
            return;
        }
        let me = self.clone();
        let r = media.with_thumb(ThumbSpec::BUBBLE);
        tokio::spawn(async move {
            if let Err(e) = me.locate(&r).await {
                node::warn_throttled!(error = %e, "preparing a thumbnail failed");
            }
        });
    }

    /// Bytes stored for a user (uploads and thumbnails).
    pub async fn usage(&self, appid: i64, uid: i64) -> Result<u64, MediaError> {
        self.storage.usage(&MediaRef::user_prefix(appid, uid)).await
    }

    /// Deletes everything a user uploaded.
    pub async fn delete_user(&self, appid: i64, uid: i64) -> Result<Removed, MediaError> {
        self.storage
            .delete_prefix(&MediaRef::user_prefix(appid, uid))
            .await
    }
}
