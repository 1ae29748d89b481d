//! The access node's metrics: its counters (kept in [`Stats`] atomics, copied in at scrape time),
//! gauges, the message latency histograms (receive → durable, receive → delivered), sync sizes, HTTP
//! request durations by route and status, and — with the embedded store — the store's own figures,
//! all rendered by one Prometheus registry per node ([`node::metrics::Registry`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::Histogram;
use node::metrics::Registry;

use backend::push::PushSink;
use backend::Backend;
use cluster::route_link::RouteLinks;

use crate::route::{RoomTable, RouteTable};
use crate::stats::Stats;
use crate::store_client::StoreClient;

/// The registry and the histograms recorded on the hot path.
pub struct AccessMetrics {
    pub registry: Registry,
    /// From a message's arrival to its store append being durable.
    pub durable: Histogram,
    /// From a message's arrival to its pushes and ACK being queued.
    pub delivered: Histogram,
    /// Messages returned by one sync.
    pub sync_messages: Histogram,
}

impl Default for AccessMetrics {
    fn default() -> Self {
        let registry = Registry::new("access");
        AccessMetrics {
            durable: registry.histogram(
                "banter_message_durable_seconds",
                "Time from a message's arrival to its append being durable (per the store's durability mode).",
            ),
            delivered: registry.histogram(
                "banter_message_delivered_seconds",
                "Time from a message's arrival to its pushes, notifications and ACK being queued for the sessions.",
            ),
            sync_messages: registry.histogram(
                "banter_sync_messages",
                "Messages returned by one SYNC or SYNC_GROUP answer.",
            ),
            registry,
        }
    }
}

impl AccessMetrics {
    /// The embedded store's histograms, recorded into this registry.
    pub fn store_histograms(&self) -> store::StoreHistograms {
        store::StoreHistograms::named(|name, help| self.registry.histogram(name, help))
    }

    /// Records one HTTP API request; `route` is the matched route template (bounded).
    pub fn http_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.registry
            .histogram_with(
                "banter_http_request_duration_seconds",
                "HTTP API request durations by route template, method and status.",
                &[
                    ("route", route.to_owned()),
                    ("method", method.to_owned()),
                    ("status", status.to_string()),
                ],
            )
            .record(took.as_secs_f64());
    }
}

/// What a scrape reads of the node besides the registry (`App::render_metrics` lends it).
pub struct NodeFigures<'a> {
    pub stats: &'a Stats,
    pub route: &'a RouteTable,
    pub rooms: &'a RoomTable,
    pub links: &'a RouteLinks,
    pub push: &'a PushSink,
    pub backend: &'a Backend,
    pub store: &'a StoreClient,
}

/// The Prometheus text of the node's `/metrics`: the registry, with the node's counters and
/// gauges copied in from `app`.
pub fn render(metrics: &AccessMetrics, app: NodeFigures<'_>) -> String {
    let r = &metrics.registry;
    let st = app.stats;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (users, clients) = app.route.counts(None);
    let links = app.links.stats();
    r.set_gauge(
        "banter_connections",
        "Open client connections.",
        (g(&st.connections)) as f64,
    );
    r.set_gauge(
        "banter_authenticated_sessions",
        "Authenticated sessions.",
        clients as f64,
    );
    r.set_gauge(
        "banter_online_users",
        "Distinct users with a session here.",
        users as f64,
    );
    r.set_counter(
        "banter_connections_total",
        "Client connections accepted.",
        g(&st.connections_total),
    );
    r.set_counter(
        "banter_connections_rejected_total",
        "Connections refused at max_connections.",
        g(&st.connections_rejected),
    );
    r.set_gauge(
        "banter_client_sockets",
        "Client sockets counted against server.max_connections (sessions, TLS handshakes and WebSocket upgrades in progress).",
        (g(&st.client_sockets)) as f64,
    );
    r.set_gauge(
        "banter_api_connections",
        "Open HTTP API connections (bounded by api.max_connections).",
        (g(&st.api_connections)) as f64,
    );
    r.set_counter(
        "banter_api_connections_rejected_total",
        "HTTP API connections refused at api.max_connections.",
        g(&st.api_connections_rejected),
    );
    r.set_counter(
        "banter_api_bodies_refused_total",
        "HTTP API requests refused for their body (over api.max_body, or slower than api.body_timeout_secs).",
        g(&st.api_bodies_refused),
    );
    r.set_counter(
        "banter_auth_ok_total",
        "Successful authentications.",
        g(&st.auth_ok),
    );
    r.set_counter(
        "banter_auth_failed_total",
        "Failed authentications.",
        g(&st.auth_failed),
    );
    r.set_counter(
        "banter_frames_in_total",
        "Frames received from clients.",
        g(&st.frames_in),
    );
    r.set_counter(
        "banter_frames_out_total",
        "Frames written to clients.",
        g(&st.frames_out),
    );
    r.set_counter(
        "banter_messages_in_total",
        "Messages received from clients.",
        g(&st.messages_in),
    );
    r.set_counter(
        "banter_messages_stored_total",
        "Messages durably stored.",
        g(&st.messages_stored),
    );
    r.set_counter(
        "banter_messages_repeated_total",
        "Resent messages the store already held (same idempotency key): acknowledged again, not stored twice.",
        g(&st.messages_repeated),
    );
    r.set_counter(
        "banter_messages_refused_total",
        "Messages refused (bad sender, rate limit, store failure).",
        g(&st.messages_refused),
    );
    r.set_counter(
        "banter_deliveries_total",
        "Frames pushed to sessions.",
        g(&st.deliveries),
    );
    let drops = &app.rooms.drops;
    for (cause, n) in [
        ("bytes", &drops.bytes),
        ("age", &drops.age),
        ("disconnect", &drops.disconnect),
    ] {
        r.set_counter_with(
            "banter_room_messages_dropped_total",
            "Room messages members lost, by cause: the oldest dropped from a backlog over its byte bound (bytes) or its age bound (age), or discarded with the backlog of a member disconnected for lagging (disconnect).",
            &[("cause", cause.to_owned())],
            g(n),
        );
    }
    r.set_counter(
        "banter_room_lag_disconnects_total",
        "Room members disconnected because they kept losing room messages without catching up (server.room_lag_disconnect_secs).",
        g(&drops.disconnected),
    );
    r.set_counter(
        "banter_slow_consumers_total",
        "Sessions disconnected because their outbox overflowed.",
        g(&st.slow_consumers),
    );
    r.set_counter(
        "banter_syncs_total",
        "Sync requests answered.",
        g(&st.syncs),
    );
    r.set_counter(
        "banter_synced_messages_total",
        "Messages returned by syncs.",
        g(&st.synced_messages),
    );
    r.set_counter(
        "banter_syncs_deferred_total",
        "Syncs that could not be answered at once (store or group directory failing) and were answered later on the same session.",
        g(&st.syncs_deferred),
    );
    r.set_counter(
        "banter_store_errors_total",
        "Store operations that failed.",
        g(&st.store_errors),
    );
    r.set_counter(
        "banter_backend_errors_total",
        "Backend operations that failed.",
        g(&st.backend_errors),
    );
    r.set_counter(
        "banter_route_dropped_total",
        "Publishes to routers dropped with their receivers not told (route link queue and notification backlog full, frame too large, no router).",
        g(&st.route_dropped),
    );
    r.set_counter(
        "banter_route_coalesced_total",
        "Publishes dropped on a full route link queue whose receivers were sent a sync notification instead.",
        links.iter().map(|l| l.coalesced).sum(),
    );
    r.set_counter(
        "banter_route_skipped_total",
        "Publishes not sent because the router said no other node subscribes their receiver (remote presence).",
        links.iter().map(|l| l.skipped).sum(),
    );
    r.set_counter(
        "banter_route_skip_notified_total",
        "Sync notifications sent for skipped messages whose receivers then showed up on another node.",
        links.iter().map(|l| l.skip_notified).sum(),
    );
    r.set_counter(
        "banter_route_skip_unnoted_total",
        "Skipped messages that could not be remembered (memory full); a receiver showing up elsewhere meanwhile learns of them at its next sync.",
        links.iter().map(|l| l.skip_unnoted).sum(),
    );
    r.set_gauge(
        "banter_route_presence_known_links",
        "Route links on which the router's remote presence is known (others publish everything).",
        links.iter().filter(|l| l.presence_known).count() as f64,
    );
    r.set_gauge(
        "banter_route_stored_publish_links",
        "Route links whose router takes stored publishes (one frame per stored message for a user on another node; others get the message, its SYNC_NOTIFY and a PUSH).",
        links.iter().filter(|l| l.stored_publish).count() as f64,
    );
    r.set_gauge(
        "banter_route_owed_notifications",
        "Receivers currently owed a sync notification by the route links.",
        (links.iter().map(|l| l.owed as u64).sum::<u64>()) as f64,
    );
    r.set_counter(
        "banter_routed_coalesced_total",
        "Routed group messages dropped on a full dispatch queue whose members were sent a sync notification instead.",
        g(&st.routed_coalesced),
    );
    r.set_counter(
        "banter_routed_dropped_total",
        "Routed group messages dropped with nobody told (dispatch queue and notification backlog full).",
        g(&st.routed_dropped),
    );
    r.set_counter(
        "banter_routed_rejected_total",
        "Messages from routers dropped as malformed (inner frame or flags inconsistent).",
        g(&st.routed_rejected),
    );
    r.set_counter(
        "banter_protocol_errors_total",
        "Connections closed for protocol violations.",
        g(&st.protocol_errors),
    );
    r.set_counter(
        "banter_client_closes_total",
        "Sessions ended by the client (close, reset, connection cut mid-frame, failed write).",
        g(&st.client_closes),
    );
    r.set_counter(
        "banter_session_timeouts_total",
        "Sessions closed by the login or idle deadline.",
        g(&st.timeouts),
    );
    r.set_counter(
        "banter_offline_push_delivered_total",
        "Offline-push jobs handed to the push queue or webhook.",
        app.push.delivered(),
    );
    r.set_counter(
        "banter_offline_push_dropped_total",
        "Offline-push jobs dropped (queue full or retries exhausted).",
        app.push.dropped(),
    );
    r.set_counter(
        "banter_write_behind_dropped_total",
        "Sync-key and unread reports dropped because the backend's write-behind buffer was full.",
        app.backend.dropped_reports(),
    );
    if let StoreClient::Local(store) = app.store {
        for f in store.stats().figures() {
            match f.kind {
                store::FigureKind::Counter => r.set_counter(f.name, f.help, f.value),
                store::FigureKind::Gauge => r.set_gauge(f.name, f.help, f.value as f64),
            }
        }
    }
    let mut text = r.render();
    room_drop_series(app.rooms, &mut text);
    text
}

/// Rooms exported with their own drop counter: the ones whose members lost the most.
pub const ROOM_DROP_SERIES: usize = 10;

/// Appends `banter_room_top_dropped_messages{appid,room}` for the [`ROOM_DROP_SERIES`] rooms whose
/// members lost the most room messages. Room ids are chosen by clients and unbounded, so a series per
/// room would grow without limit; these series are written at each scrape rather than registered (a
/// registered series would stay forever), so a room that leaves the top — or empties, which resets
/// its count — simply stops being exported. The exact total is `banter_room_messages_dropped_total`.
fn room_drop_series(rooms: &RoomTable, text: &mut String) {
    use std::fmt::Write as _;
    let top = rooms.top_dropped(ROOM_DROP_SERIES);
    if top.is_empty() {
        return;
    }
    text.push_str(
        "# HELP banter_room_top_dropped_messages Room messages lost by the members of the rooms that lost the most (at most 10 rooms; a room's count starts when it is created).\n\
         # TYPE banter_room_top_dropped_messages gauge\n",
    );
    for (appid, room, n) in top {
        let _ = writeln!(
            text,
            "banter_room_top_dropped_messages{{appid=\"{appid}\",room=\"{room}\"}} {n}"
        );
    }
}
