//! The S3-compatible backend (AWS S3, MinIO, Ceph RGW, …) through the `object_store` crate, with
//! ring for request signing and TLS. Every access node configured with the same bucket serves every
//! file. Keys are the crate's keys under an optional prefix.
//!
//! A commit first asks whether the key exists (content addressing: the same bytes are uploaded once),
//! then uploads the spool file with one PUT when it fits in one part, else as a multipart upload of
//! `part_size` parts with at most two parts in flight, so memory per upload is bounded whatever the
//! file's size. A failed multipart upload is aborted.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};

use crate::config::S3Config;
use crate::store::{read_part, ByteStream, Finished, ObjectInfo, Removed, Storage};
use crate::MediaError;

/// Objects in an S3-compatible bucket.
pub struct S3Store {
    store: Arc<AmazonS3>,
    prefix: String,
    part_size: usize,
}

impl S3Store {
    /// Builds the client (no request is made).
    pub fn open(cfg: &S3Config) -> Result<S3Store, MediaError> {
        if cfg.bucket.trim().is_empty() {
            return Err(MediaError::Config("media.s3.bucket is required".into()));
        }
        // reqwest's rustls needs a process-wide provider; ring is the only one in the graph.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_allow_http(cfg.allow_http),
            );
        if !cfg.endpoint.is_empty() {
            b = b.with_endpoint(&cfg.endpoint);
        }
        if !cfg.access_key_id.is_empty() {
            b = b
                .with_access_key_id(&cfg.access_key_id)
                .with_secret_access_key(&cfg.secret_access_key);
        }
        let store = b.build().map_err(MediaError::S3)?;
        let mut prefix = cfg.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(S3Store {
            store: Arc::new(store),
            prefix,
            part_size: (cfg.part_size_mb.max(5) as usize) << 20,
        })
    }

    fn path(&self, key: &str) -> Result<Path, MediaError> {
        Path::parse(format!("{}{}", self.prefix, key))
            .map_err(|e| MediaError::Internal(format!("bad object key {key:?}: {e}")))
    }

    async fn upload(&self, spool: &Finished, path: &Path, mime: &str) -> Result<(), MediaError> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, mime.to_string().into());
        let opts = PutOptions {
            attributes: attributes.clone(),
            ..PutOptions::default()
        };
        let mut file = spool.open().await?;
        let io = |e: io::Error| MediaError::Io {
            path: spool.path().to_path_buf(),
            source: e,
        };
        if spool.size <= self.part_size as u64 {
            let data = read_part(&mut file, self.part_size).await.map_err(io)?;
            self.store
                .put_opts(path, PutPayload::from(data), opts)
                .await
                .map_err(MediaError::S3)?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart_opts(path, PutMultipartOptions::from(attributes))
            .await
            .map_err(MediaError::S3)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let res: Result<(), MediaError> = async {
            loop {
                w.wait_for_capacity(2).await.map_err(MediaError::S3)?;
                let chunk = read_part(&mut file, 1 << 20).await.map_err(io)?;
                if chunk.is_empty() {
                    return Ok(());
                }
                w.put(chunk);
            }
        }
        .await;
        match res {
            Ok(()) => {
                w.finish().await.map_err(MediaError::S3)?;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = w.abort().await {
                    node::warn_throttled!(error = %abort, "aborting a failed multipart upload failed");
                }
                Err(e)
            }
        }
    }
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Storage for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn commit<'a>(
        &'a self,
        spool: Finished,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, MediaError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match self.store.head(&path).await {
                Ok(_) => return Ok(false),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(MediaError::S3(e)),
            }
            let mime = key
                .rsplit_once('.')
                .and_then(|(_, ext)| crate::types::by_ext(ext))
                .unwrap_or_else(crate::types::octet_stream)
                .mime;
            self.upload(&spool, &path, mime).await?;
            Ok(true)
        })
    }

    fn put_small<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), MediaError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(MediaError::S3)?;
            Ok(())
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>, MediaError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match self.store.head(&path).await {
                Ok(m) => Ok(Some(ObjectInfo {
                    size: m.size,
                    modified: SystemTime::from(m.last_modified),
                })),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(MediaError::S3(e)),
            }
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Option<ByteStream>, MediaError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            if range.is_empty() {
                return Ok(Some(futures_util::stream::empty().boxed()));
            }
            let opts = GetOptions {
                range: Some(GetRange::Bounded(range)),
                ..GetOptions::default()
            };
            match self.store.get_opts(&path, opts).await {
                Ok(r) => Ok(Some(r.into_stream().map_err(io::Error::other).boxed())),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(MediaError::S3(e)),
            }
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Removed, MediaError>> {
        Box::pin(async move {
            let dir = self.path(prefix)?;
            let metas: Vec<_> = self
                .store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(MediaError::S3)?;
            let removed = Removed {
                objects: metas.len() as u64,
                bytes: metas.iter().map(|m| m.size).sum(),
            };
            let locations = futures_util::stream::iter(metas.into_iter().map(|m| Ok(m.location)));
            self.store
                .delete_stream(locations.boxed())
                .try_collect::<Vec<_>>()
                .await
                .map_err(MediaError::S3)?;
            Ok(removed)
        })
    }

    fn usage<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64, MediaError>> {
        Box::pin(async move {
            let dir = self.path(prefix)?;
            self.store
                .list(Some(&dir))
                .try_fold(0u64, |acc, m| async move { Ok(acc + m.size) })
                .await
                .map_err(MediaError::S3)
        })
    }
}
