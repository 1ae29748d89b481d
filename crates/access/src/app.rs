//! Shared state of one access node: configuration, the store and backend seams, the local route table
//! and the node's counters, and delivery to a user's, a group's or a room's sessions here and on
//! other nodes. Handlers receive an `Arc<App>` and never know whether the store or the backend is
//! in-process or remote.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use backend::groups::{Group, GroupDirectory};
use backend::moderation::SharedWordFilter;
use backend::push::PushSink;
use backend::relations::RelationDirectory;
use backend::Backend;
use cluster::route_link::RouteLinkConfig;
use cluster::route_link::RouteLinks;
use cluster::route_proto::RoutedMessage;
use proto::{flag, Metadata};
use store::Appended;
use tokio::sync::mpsc;

use crate::config::{ApiConfig, RelationshipsConfig, ServerConfig, SyncConfig};
use crate::route::{Push, RoomDelivery, RoomTable, RouteTable};
use crate::routed::{Local, RoutedInbox};
pub use crate::stats::Stats;
pub use crate::store_client::{AppendResult, StoreClient, StoreFailure};

/// The routed-message inbox and the receiving end of its group queue (see [`crate::routed`]).
pub(crate) type RoutedDispatch = (Arc<RoutedInbox>, mpsc::Receiver<RoutedMessage>);

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
    /// Friend and blacklist relations (the admin API, and the checks when on).
    pub relations: RelationDirectory,
    /// `[relationships]`: which checks peer messages get.
    pub relationships: RelationshipsConfig,
    pub push: PushSink,
    /// The sensitive-word filter, when a word file is configured.
    pub words: Option<SharedWordFilter>,
    /// The app API (media, device binding, supporters), unless disabled.
    pub app_api: Option<Arc<crate::app_api::AppApi>>,
    /// `[web]`: the web chat client and admin console.
    pub web: web::WebConfig,
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
    /// Friend and blacklist relations.
    pub relations: RelationDirectory,
    /// `[relationships]`: which checks peer messages get.
    pub relationships: RelationshipsConfig,
    pub push: PushSink,
    pub words: Option<SharedWordFilter>,
    /// The app API the SDKs call (media, device binding, supporters), unless disabled.
    pub app_api: Option<Arc<crate::app_api::AppApi>>,
    /// `[web]`: the web chat client and admin console.
    pub web: web::WebConfig,
    /// Links to the routers: presence and cross-node delivery (no-ops on a single node).
    pub links: Arc<RouteLinks>,
    routed: parking_lot::Mutex<Option<RoutedDispatch>>,
    pub route: Arc<RouteTable>,
    pub rooms: Arc<RoomTable>,
    pub stats: Arc<Stats>,
    /// The node's Prometheus registry and hot-path histograms.
    pub metrics: Arc<crate::metrics::AccessMetrics>,
    /// Syncs that could not be answered (store or group directory failing), logged once per
    /// episode.
    pub(crate) sync_failures: node::episode::Episode,
    /// Cancelled when the node shuts down ([`crate::AccessNode::shutdown`]). Here rather than handed
    /// to every session: what a session holds, every idle connection's task holds.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
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
        let route = Arc::new(RouteTable::default());
        let rooms = Arc::new(RoomTable::new(server.room_policy()));
        let stats = Arc::new(Stats::default());
        let (inbox, rx) = RoutedInbox::new(Local {
            route: route.clone(),
            rooms: rooms.clone(),
            groups: services.groups.clone(),
            store: services.store.clone(),
            stats: stats.clone(),
        });
        let inbox = Arc::new(inbox);
        let links = Arc::new(RouteLinks::new(
            services.routers.route_addrs.clone(),
            services.routers.group_route_addrs.clone(),
            RouteLinkConfig::default(),
            inbox.clone(),
        ));
        Arc::new(App {
            links,
            routed: parking_lot::Mutex::new(Some((inbox, rx))),
            server,
            sync,
            api,
            store: services.store,
            backend: services.backend,
            groups: services.groups,
            relations: services.relations,
            relationships: services.relationships,
            push: services.push,
            words: services.words,
            app_api: services.app_api,
            web: services.web,
            route,
            rooms,
            stats,
            metrics: services.metrics,
            sync_failures: node::episode::Episode::new(std::time::Duration::from_secs(60)),
            shutdown: tokio_util::sync::CancellationToken::new(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// The Prometheus text of the node's `/metrics` (see [`crate::metrics::render`]).
    pub fn render_metrics(&self) -> String {
        crate::metrics::render(
            &self.metrics,
            crate::metrics::NodeFigures {
                stats: &self.stats,
                route: &self.route,
                rooms: &self.rooms,
                links: &self.links,
                push: &self.push,
                backend: &self.backend,
                store: &self.store,
            },
        )
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
            let frame = proto::stored_frame(proto::cmd::KICK, 0, &token_fp.to_be_bytes());
            if !self.links.publish_always(appid, uid, 0, 0, &frame) {
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
        self.route.deliver_group(group, push, except)
    }

    /// Delivers a room message to everyone in the room, here (except `except`) and on other nodes.
    /// Returns what the local delivery did (the room table counts what members lost).
    pub fn deliver_room(&self, appid: i64, room: i64, push: &Push, except: u64) -> RoomDelivery {
        if self.links.is_enabled() && !self.links.publish_room(appid, room, &inner_frame(push)) {
            Stats::inc(&self.stats.route_dropped);
        }
        self.rooms.deliver(appid, room, push, except)
    }
}

impl App {
    /// Pushes a stored message (`msg`: command, client flags, body) to the sessions of user
    /// `(appid, uid)` except connection `except`, here and on other nodes: METADATA + the message
    /// with PUSH, then SYNC_NOTIFY. Returns how many sessions here got it.
    pub fn deliver_stored(&self, to: (i64, i64), at: Appended, msg: &Push, except: u64) -> usize {
        self.deliver_stored_as(to, at, msg, except, false)
    }

    /// [`App::deliver_stored`] for the receiver of a peer message, whom the routers also make an
    /// offline-push job for when no node has them online (in a cluster; on a single node the
    /// caller decides, `offline::stored`).
    pub fn deliver_received(&self, to: (i64, i64), at: Appended, msg: &Push, except: u64) -> usize {
        self.deliver_stored_as(to, at, msg, except, true)
    }

    fn deliver_stored_as(
        &self,
        (appid, uid): (i64, i64),
        at: Appended,
        msg: &Push,
        except: u64,
        offline_push: bool,
    ) -> usize {
        let push = Push {
            cmd: msg.cmd,
            flag: msg.flag | flag::PUSH,
            body: msg.body.clone(),
            meta: Some(Metadata {
                sync_key: at.key,
                prev_sync_key: at.prev_key,
            }),
        };
        if self.links.is_enabled() {
            // Other nodes' sessions get the message and its SYNC_NOTIFY through the routers, which
            // also make the offline-push job if no node has the user online (asked only when the
            // user is not online here).
            let ask_push = offline_push && !self.route.is_online(appid, uid);
            let keys = (at.key, at.prev_key);
            if !self
                .links
                .publish_stored(appid, uid, keys, &inner_frame(&push), ask_push)
            {
                Stats::inc(&self.stats.route_dropped);
            }
        }
        let n = self.route.deliver(appid, uid, &push, except);
        // A session here that did not take the message is closing. Nobody else needs the
        // notification (the sender's own copy usually has no other session).
        if n > 0 {
            self.route
                .deliver(appid, uid, &Push::sync_notify(at.key), except);
        }
        Stats::add(&self.stats.deliveries, n as u64);
        n
    }

    /// Tells the user's sessions that their queue has new entries up to `key` (they sync to fetch
    /// them).
    pub fn notify_sync(&self, appid: i64, uid: i64, key: i64) {
        self.deliver_user(appid, uid, &Push::sync_notify(key), 0);
    }
}

fn meta_of(push: &Push) -> (i64, i64) {
    push.meta
        .map(|m| (m.sync_key, m.prev_sync_key))
        .unwrap_or((0, 0))
}

/// The frame a client would receive (seq 0, stored bodies), as routers carry it.
pub(crate) fn inner_frame(push: &Push) -> bytes::Bytes {
    proto::stored_frame(push.cmd, push.flag, &push.body)
}

/// Unix seconds, as the protocol's i32 timestamps.
pub fn now_secs() -> i32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i32)
        .unwrap_or(0)
}

/// A store failure in an HTTP request: 503 with the cause (logged, throttled).
impl From<StoreFailure> for crate::api::ApiError {
    fn from(e: StoreFailure) -> Self {
        node::warn_throttled!(error = %e, "store error in HTTP API");
        crate::api::ApiError::unavailable(format!("message store error: {e}"))
    }
}
