//! Shared state of one access node: configuration, the store and backend seams, the local route table
//! and the node's counters. Handlers receive an `Arc<App>` and never know whether the store or the
//! backend is in-process or remote.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use backend::groups::{Group, GroupDirectory};
use backend::moderation::SharedWordFilter;
use backend::push::PushSink;
use backend::Backend;
use bytes::{Bytes, BytesMut};
use cluster::route_link::RouteLinkConfig;
use cluster::route_link::RouteLinks;
use cluster::route_proto::RoutedMessage;
use cluster::store_client::{RemoteStore, RemoteStoreError};
use store::{Appended, NewMessage, QueueId, Store, StoreError, StoredMessage, SyncPage};
use tokio::sync::mpsc;

use crate::config::{ApiConfig, ServerConfig, SyncConfig};
use crate::route::{Push, RoomTable, RouteTable};
use crate::routed::RoutedInbox;

/// The routed-message inbox and the receiving end of its group queue (see [`crate::routed`]).
pub(crate) type RoutedDispatch = (Arc<RoutedInbox>, mpsc::Receiver<RoutedMessage>);

/// The message-store seam (DESIGN.md §1): the store in this process, or store nodes over the network
/// (sharded by uid / group id, spec §1.2).
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

/// Node counters, exported by `/summary` and `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_rejected: AtomicU64,
    /// Client sockets holding a connection permit: sessions plus connections still in their TLS
    /// handshake or WebSocket upgrade (what `server.max_connections` bounds).
    pub client_sockets: AtomicU64,
    /// Open HTTP API connections (what `api.max_connections` bounds).
    pub api_connections: AtomicU64,
    /// HTTP API connections refused at `api.max_connections`.
    pub api_connections_rejected: AtomicU64,
    /// HTTP API requests refused for their body: over `api.max_body` or slower than
    /// `api.body_timeout_secs`.
    pub api_bodies_refused: AtomicU64,
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
    /// Syncs that could not be answered at once (store or group directory failing) and are
    /// answered later, the session kept.
    pub syncs_deferred: AtomicU64,
    pub store_errors: AtomicU64,
    pub backend_errors: AtomicU64,
    /// Sessions ended by a real protocol violation (not by a client disconnect).
    pub protocol_errors: AtomicU64,
    /// Sessions the client ended (a close, a reset, a connection cut mid-frame, a failed write).
    pub client_closes: AtomicU64,
    /// Sessions closed by the login or idle deadline.
    pub timeouts: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub room_dropped: AtomicU64,
    pub route_dropped: AtomicU64,
    pub routed_rejected: AtomicU64,
    /// Routed group messages dropped on a full dispatch queue whose members are owed a sync
    /// notification instead.
    pub routed_coalesced: AtomicU64,
    /// Routed group messages dropped with nobody told (queue and notification backlog full).
    pub routed_dropped: AtomicU64,
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
#[derive(Clone, Default)]
pub struct Routers {
    /// Routers (`banter imr`); empty = single node.
    pub route_addrs: Vec<String>,
    /// Routers for super-group publishes; empty = `route_addrs`.
    pub group_route_addrs: Vec<String>,
}

/// The services an access node works with, chosen at start-up.
#[derive(Clone)]
pub struct Services {
    /// Routers to other access nodes (cluster mode).
    pub routers: Routers,
    pub store: StoreClient,
    pub backend: Backend,
    pub groups: GroupDirectory,
    pub push: PushSink,
    /// The sensitive-word filter, when a word file is configured.
    pub words: Option<SharedWordFilter>,
    /// The app API (media, device binding, supporters), unless disabled.
    pub app_api: Option<Arc<crate::app_api::AppApi>>,
    /// The node's metrics (made first, so the embedded store can record into them).
    pub metrics: Arc<crate::metrics::AccessMetrics>,
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
    /// The app API the SDKs call (media, device binding, supporters), unless disabled.
    pub app_api: Option<Arc<crate::app_api::AppApi>>,
    /// Links to the routers: presence and cross-node delivery (no-ops on a single node).
    pub links: Arc<RouteLinks>,
    routed: parking_lot::Mutex<Option<RoutedDispatch>>,
    pub route: RouteTable,
    pub rooms: RoomTable,
    pub stats: Stats,
    /// The node's Prometheus registry and hot-path histograms.
    pub metrics: Arc<crate::metrics::AccessMetrics>,
    /// Syncs that could not be answered (store or group directory failing), logged once per
    /// episode.
    pub(crate) sync_failures: cluster::log_limit::Episode,
    next_conn: AtomicU64,
}

impl App {
    /// Must be called inside a tokio runtime (the route links dial in the background).
    pub fn new(
        server: ServerConfig,
        sync: SyncConfig,
        api: ApiConfig,
        services: Services,
    ) -> Arc<App> {
        Arc::new_cyclic(|me| {
            let (inbox, rx) = RoutedInbox::new(me.clone());
            let inbox = Arc::new(inbox);
            let links = Arc::new(RouteLinks::new(
                services.routers.route_addrs.clone(),
                services.routers.group_route_addrs.clone(),
                RouteLinkConfig::default(),
                inbox.clone(),
            ));
            App {
                links,
                routed: parking_lot::Mutex::new(Some((inbox, rx))),
                server,
                sync,
                api,
                store: services.store,
                backend: services.backend,
                groups: services.groups,
                push: services.push,
                words: services.words,
                app_api: services.app_api,
                route: RouteTable::default(),
                rooms: RoomTable::default(),
                stats: Stats::default(),
                metrics: services.metrics,
                sync_failures: cluster::log_limit::Episode::new(std::time::Duration::from_secs(60)),
                next_conn: AtomicU64::new(1),
            }
        })
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes what the dispatch task of routed group messages needs (once).
    pub(crate) fn take_routed(&self) -> Option<RoutedDispatch> {
        self.routed.lock().take()
    }

    /// Delivers `push` to every session of the user: here (except connection `except`) and, through
    /// the user's router, on every other access node. Returns the local count.
    pub fn deliver_user(&self, appid: i64, uid: i64, push: &Push, except: u64) -> usize {
        if self.links.is_enabled() {
            let (msgid, prev) = meta_of(push);
            if !self
                .links
                .publish(appid, uid, msgid, prev, &inner_frame(push))
            {
                Stats::inc(&self.stats.route_dropped);
            }
        }
        self.route.deliver(appid, uid, push, except)
    }

    /// Closes the sessions of user (`appid`, `uid`) that logged in with the token of fingerprint
    /// `token_fp` (0: all of them), here and, through the user's router, on every other access node.
    /// Returns how many closed here. Across nodes this is as reliable as any route publish: a link
    /// that is down or full drops it (counted in `route_dropped`).
    pub fn kick(&self, appid: i64, uid: i64, token_fp: u64) -> usize {
        if self.links.is_enabled() {
            let body = token_fp.to_be_bytes();
            let mut b = BytesMut::with_capacity(proto::HEADER_LEN + body.len());
            proto::Header {
                len: body.len(),
                seq: 0,
                cmd: proto::cmd::KICK,
                version: proto::STORAGE_VERSION,
                flag: 0,
            }
            .write(&mut b);
            b.extend_from_slice(&body);
            if !self.links.publish(appid, uid, 0, 0, &b) {
                Stats::inc(&self.stats.route_dropped);
            }
        }
        self.route.kick(appid, uid, token_fp, crate::route::KICKED)
    }

    /// Delivers `push` to every session of every member of a super group, here and on other nodes
    /// (one PUBLISH_GROUP; each node resolves the members itself).
    pub fn deliver_group(&self, group: &Group, push: &Push, except: u64) -> usize {
        if self.links.is_enabled() {
            let (msgid, prev) = meta_of(push);
            if !self
                .links
                .publish_group(group.appid, group.gid, msgid, prev, &inner_frame(push))
            {
                Stats::inc(&self.stats.route_dropped);
            }
        }
        self.deliver_group_local(group, push, except)
    }

    pub(crate) fn deliver_group_local(&self, group: &Group, push: &Push, except: u64) -> usize {
        group
            .members
            .keys()
            .map(|&uid| self.route.deliver(group.appid, uid, push, except))
            .sum()
    }

    /// Delivers a room message to everyone in the room, here (except `except`) and on other nodes.
    /// Returns (local deliveries, slow members that dropped an older room message).
    pub fn deliver_room(&self, appid: i64, room: i64, push: &Push, except: u64) -> (usize, usize) {
        if self.links.is_enabled() && !self.links.publish_room(appid, room, &inner_frame(push)) {
            Stats::inc(&self.stats.route_dropped);
        }
        self.rooms.deliver(appid, room, push, except)
    }
}

fn meta_of(push: &Push) -> (i64, i64) {
    push.meta
        .map(|m| (m.sync_key, m.prev_sync_key))
        .unwrap_or((0, 0))
}

/// The frame a client would receive (seq 0, version 2 bodies), as routers carry it (spec §10.3).
pub(crate) fn inner_frame(push: &Push) -> Bytes {
    let mut b = BytesMut::with_capacity(proto::HEADER_LEN + push.body.len());
    proto::Header {
        len: push.body.len(),
        seq: 0,
        cmd: push.cmd,
        version: proto::STORAGE_VERSION,
        flag: push.flag,
    }
    .write(&mut b);
    b.extend_from_slice(&push.body);
    b.freeze()
}

/// Unix seconds, as the protocol's i32 timestamps.
pub fn now_secs() -> i32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i32)
        .unwrap_or(0)
}
