//! The message-store seam: the store in this process, or store nodes over the network. Handlers
//! use [`StoreClient`] and never know which.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cluster::store_client::{RemoteStore, RemoteStoreError};
use store::{Appended, NewMessage, QueueId, Store, StoreError, StoredMessage, SyncPage};

/// The message-store seam (DESIGN.md §1): the store in this process, or store nodes over the network
/// (sharded by uid / group id, docs/cluster.md, *Access nodes*).
#[derive(Clone)]
pub enum StoreClient {
    Local(Arc<Store>),
    Remote(Arc<RemoteStore>),
}

/// Why a store operation failed, whichever variant of the seam was used.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    #[error(transparent)]
    Local(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] RemoteStoreError),
}

/// Result of appending one batch: for each message, where each of its queue entries landed.
pub type AppendResult = Result<Vec<Vec<Appended>>, StoreFailure>;

impl StoreClient {
    /// Submits `batch`; the future resolves once the store has made it durable (per its durability mode).
    pub fn append(
        &self,
        batch: Vec<NewMessage>,
    ) -> Pin<Box<dyn Future<Output = AppendResult> + Send>> {
        match self {
            StoreClient::Local(s) => {
                let ticket = s.append(batch);
                Box::pin(async move { Ok(ticket.await?) })
            }
            StoreClient::Remote(r) => {
                let r = r.clone();
                Box::pin(async move { Ok(r.append(batch).await?) })
            }
        }
    }

    pub async fn sync(
        &self,
        queue: QueueId,
        after_key: i64,
        limit: usize,
    ) -> Result<SyncPage, StoreFailure> {
        match self {
            StoreClient::Local(s) => Ok(s.sync(queue, after_key, limit)?),
            // Boxed: the remote request's future is several hundred bytes, and every session task
            // that syncs inline would carry that much while idle, local store or not.
            StoreClient::Remote(r) => Ok(Box::pin(r.sync(queue, after_key, limit)).await?),
        }
    }

    pub async fn sync_since(
        &self,
        queue: QueueId,
        after_key: i64,
        limit: usize,
        join_ts: i64,
    ) -> Result<SyncPage, StoreFailure> {
        match self {
            StoreClient::Local(s) => Ok(s.sync_since(queue, after_key, limit, join_ts)?),
            StoreClient::Remote(r) => {
                // Boxed for the same reason as in `sync`.
                Ok(Box::pin(r.sync_since(queue, after_key, limit, join_ts)).await?)
            }
        }
    }

    pub async fn latest(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<StoredMessage>, StoreFailure> {
        match self {
            StoreClient::Local(s) => Ok(s.latest(queue, n)?),
            StoreClient::Remote(r) => Ok(r.latest(queue, n).await?),
        }
    }

    pub async fn new_count(&self, queue: QueueId, after_key: i64) -> Result<u64, StoreFailure> {
        match self {
            StoreClient::Local(s) => Ok(s.new_count(queue, after_key)?),
            StoreClient::Remote(r) => Ok(r.new_count(queue, after_key).await?),
        }
    }

    pub async fn last_key(&self, queue: QueueId) -> Result<i64, StoreFailure> {
        match self {
            StoreClient::Local(s) => Ok(s.try_last_key(queue)?),
            StoreClient::Remote(r) => Ok(r.last_key(queue).await?),
        }
    }
}
