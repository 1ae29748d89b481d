//! Shared state of one access node: configuration, the store and backend seams, the local route table
//! and the node's counters. Handlers receive an `Arc<App>` and never know whether the store or the
//! backend is in-process or remote.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use backend::groups::GroupDirectory;
use backend::moderation::SharedWordFilter;
use backend::push::PushSink;
use backend::Backend;
use store::{Appended, NewMessage, QueueId, Store, StoreError, StoredMessage, SyncPage};

use crate::config::{ApiConfig, ServerConfig, SyncConfig};
use crate::route::{RoomTable, RouteTable};

/// The message-store seam (DESIGN.md §1): in-process today; a remote variant joins with the cluster.
#[derive(Clone)]
pub enum StoreClient {
    Local(Arc<Store>),
}

/// Result of appending one batch: for each message, where each of its queue entries landed.
pub type AppendResult = Result<Vec<Vec<Appended>>, StoreError>;

impl StoreClient {
    /// Submits `batch`; the future resolves once the store has made it durable (per its durability mode).
    pub fn append(
        &self,
        batch: Vec<NewMessage>,
    ) -> Pin<Box<dyn Future<Output = AppendResult> + Send>> {
        match self {
            StoreClient::Local(s) => Box::pin(s.append(batch)),
        }
    }

    pub async fn sync(
        &self,
        queue: QueueId,
        after_key: i64,
        limit: usize,
    ) -> Result<SyncPage, StoreError> {
        match self {
            StoreClient::Local(s) => s.sync(queue, after_key, limit),
        }
    }

    pub async fn sync_since(
        &self,
        queue: QueueId,
        after_key: i64,
        limit: usize,
        join_ts: i64,
    ) -> Result<SyncPage, StoreError> {
        match self {
            StoreClient::Local(s) => s.sync_since(queue, after_key, limit, join_ts),
        }
    }

    pub async fn latest(&self, queue: QueueId, n: usize) -> Result<Vec<StoredMessage>, StoreError> {
        match self {
            StoreClient::Local(s) => s.latest(queue, n),
        }
    }

    pub async fn new_count(&self, queue: QueueId, after_key: i64) -> Result<u64, StoreError> {
        match self {
            StoreClient::Local(s) => s.new_count(queue, after_key),
        }
    }

    pub async fn last_key(&self, queue: QueueId) -> i64 {
        match self {
            StoreClient::Local(s) => s.last_key(queue),
        }
    }
}

/// Node counters, exported by `/summary` and `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub auth_ok: AtomicU64,
    pub auth_failed: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_stored: AtomicU64,
    pub messages_refused: AtomicU64,
    pub deliveries: AtomicU64,
    pub syncs: AtomicU64,
    pub synced_messages: AtomicU64,
    pub store_errors: AtomicU64,
    pub backend_errors: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub room_dropped: AtomicU64,
}

impl Stats {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The services an access node works with, chosen at start-up.
#[derive(Clone)]
pub struct Services {
    pub store: StoreClient,
    pub backend: Backend,
    pub groups: GroupDirectory,
    pub push: PushSink,
    /// The sensitive-word filter, when a word file is configured.
    pub words: Option<SharedWordFilter>,
}

/// Everything a handler needs.
pub struct App {
    pub server: ServerConfig,
    pub sync: SyncConfig,
    pub api: ApiConfig,
    pub store: StoreClient,
    pub backend: Backend,
    pub groups: GroupDirectory,
    pub push: PushSink,
    pub words: Option<SharedWordFilter>,
    pub route: RouteTable,
    pub rooms: RoomTable,
    pub stats: Stats,
    next_conn: AtomicU64,
}

impl App {
    pub fn new(
        server: ServerConfig,
        sync: SyncConfig,
        api: ApiConfig,
        services: Services,
    ) -> Arc<App> {
        Arc::new(App {
            server,
            sync,
            api,
            store: services.store,
            backend: services.backend,
            groups: services.groups,
            push: services.push,
            words: services.words,
            route: RouteTable::default(),
            rooms: RoomTable::default(),
            stats: Stats::default(),
            next_conn: AtomicU64::new(1),
        })
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Unix seconds, as the protocol's i32 timestamps.
pub fn now_secs() -> i32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i32)
        .unwrap_or(0)
}
