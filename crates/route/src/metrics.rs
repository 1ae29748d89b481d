//! The router's metrics, exported on `/metrics` through its Prometheus registry
//! ([`node::metrics::Registry`]): counters kept in atomics (copied in at scrape time), gauges, and the
//! histograms of writes to access nodes.

use std::sync::atomic::{AtomicU64, Ordering};

use node::metrics::Registry;

use crate::Router;

/// Counters since start, and the registry that renders them.
pub(crate) struct Metrics {
    pub registry: Registry,
    /// Frames per write to an access node.
    pub write_batch: metrics::Histogram,
    /// Duration of one write to an access node.
    pub write_seconds: metrics::Histogram,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub publish_in_user: AtomicU64,
    pub publish_in_group: AtomicU64,
    pub publish_in_room: AtomicU64,
    /// PUBLISH_STORED frames (stored messages for users, with their notification).
    pub publish_in_stored: AtomicU64,
    /// Frames queued for access nodes.
    pub publish_out: AtomicU64,
    /// Presence frames (REMOTE_PRESENCE, PEERS) queued for access nodes.
    pub presence_out: AtomicU64,
    /// Frames for access nodes dropped on a full outbox (receivers not told).
    pub dropped: AtomicU64,
    /// Persistent messages dropped on a full outbox whose receivers were owed a sync notification.
    pub coalesced: AtomicU64,
    pub push_requests: AtomicU64,
    pub push_jobs: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_commands: AtomicU64,
    pub write_timeouts: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new("router");
        Metrics {
            write_batch: registry.histogram(
                "banter_route_write_batch_messages",
                "Frames per write to an access node.",
            ),
            write_seconds: registry.histogram(
                "banter_route_write_seconds",
                "Duration of one write to an access node.",
            ),
            registry,
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            publish_in_user: AtomicU64::new(0),
            publish_in_group: AtomicU64::new(0),
            publish_in_room: AtomicU64::new(0),
            publish_in_stored: AtomicU64::new(0),
            publish_out: AtomicU64::new(0),
            presence_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            push_requests: AtomicU64::new(0),
            push_jobs: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            unknown_commands: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
        }
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The Prometheus text for `/metrics`.
pub(crate) fn render(r: &Router) -> String {
    let m = &r.metrics;
    let conns = r.table.conns();
    let subscriptions: usize = conns.iter().map(|c| c.users.load(Ordering::Relaxed)).sum();
    let room_subscriptions: usize = conns.iter().map(|c| c.rooms.load(Ordering::Relaxed)).sum();
    let (users, online, rooms) = r.table.counts();
    let reg = &m.registry;
    reg.set_gauge(
        "banter_route_connections",
        "Access-node connections open.",
        conns.len() as f64,
    );
    reg.set_counter(
        "banter_route_connections_accepted_total",
        "Access-node connections accepted.",
        get(&m.accepted),
    );
    reg.set_counter(
        "banter_route_connections_rejected_total",
        "Access-node connections refused at max_connections.",
        get(&m.rejected),
    );
    reg.set_gauge(
        "banter_route_subscriptions",
        "User subscriptions, summed over connections.",
        subscriptions as f64,
    );
    reg.set_gauge(
        "banter_route_room_subscriptions",
        "Room subscriptions, summed over connections.",
        room_subscriptions as f64,
    );
    reg.set_gauge(
        "banter_route_users",
        "Distinct subscribed users.",
        users as f64,
    );
    reg.set_gauge(
        "banter_route_online_users",
        "Distinct users subscribed online by some connection.",
        online as f64,
    );
    reg.set_gauge(
        "banter_route_rooms",
        "Distinct subscribed rooms.",
        rooms as f64,
    );
    reg.set_counter_with(
        "banter_route_publish_in_total",
        "Route messages received from access nodes.",
        &[("kind", "user".to_owned())],
        get(&m.publish_in_user),
    );
    reg.set_counter_with(
        "banter_route_publish_in_total",
        "Route messages received from access nodes.",
        &[("kind", "group".to_owned())],
        get(&m.publish_in_group),
    );
    reg.set_counter_with(
        "banter_route_publish_in_total",
        "Route messages received from access nodes.",
        &[("kind", "room".to_owned())],
        get(&m.publish_in_room),
    );
    reg.set_counter_with(
        "banter_route_publish_in_total",
        "Route messages received from access nodes.",
        &[("kind", "stored".to_owned())],
        get(&m.publish_in_stored),
    );
    reg.set_counter(
        "banter_route_publish_out_total",
        "Route messages queued for access nodes.",
        get(&m.publish_out),
    );
    reg.set_counter(
        "banter_route_presence_out_total",
        "Remote-presence frames (REMOTE_PRESENCE, PEERS) queued for access nodes that watch it.",
        get(&m.presence_out),
    );
    reg.set_gauge(
        "banter_route_presence_watchers",
        "Access-node connections that asked for remote presence.",
        r.table.watcher_count() as f64,
    );
    reg.set_counter(
        "banter_route_dropped_total",
        "Route messages dropped because an access node's outbox was full (receivers not told).",
        get(&m.dropped),
    );
    reg.set_counter(
        "banter_route_coalesced_total",
        "Persistent messages dropped on a full outbox whose receivers were sent a sync notification instead.",
        get(&m.coalesced),
    );
    reg.set_counter(
        "banter_route_write_timeouts_total",
        "Access nodes disconnected for not reading within the write deadline.",
        get(&m.write_timeouts),
    );
    reg.set_counter(
        "banter_route_push_requests_total",
        "PUSH requests received.",
        get(&m.push_requests),
    );
    reg.set_counter(
        "banter_route_push_jobs_total",
        "Offline-push jobs handed to the push sink.",
        get(&m.push_jobs),
    );
    reg.set_counter(
        "banter_route_push_delivered_total",
        "Offline pushes handed on by the push sink: jobs written (redis, webhook) or notifications sent (native).",
        r.push.delivered(),
    );
    reg.set_counter(
        "banter_route_push_dropped_total",
        "Offline pushes dropped by the push sink's full queues (jobs, and with native push also notifications).",
        r.push.dropped(),
    );
    reg.set_counter(
        "banter_route_malformed_frames_total",
        "Malformed frames (each closed its connection).",
        get(&m.malformed),
    );
    reg.set_counter(
        "banter_route_unknown_commands_total",
        "Frames with a command the router does not handle (ignored).",
        get(&m.unknown_commands),
    );
    reg.render()
}
