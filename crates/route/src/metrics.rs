//! The router's counters, exported on `/metrics` in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Router;

/// Counters since start.
#[derive(Default)]
pub(crate) struct Metrics {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub publish_in_user: AtomicU64,
    pub publish_in_group: AtomicU64,
    pub publish_in_room: AtomicU64,
    /// Frames queued for access nodes.
    pub publish_out: AtomicU64,
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

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// The Prometheus text for `/metrics`.
pub(crate) fn render(r: &Router) -> String {
    let m = &r.metrics;
    let conns = r.table.conns();
    let subscriptions: usize = conns.iter().map(|c| c.users.load(Ordering::Relaxed)).sum();
    let room_subscriptions: usize = conns.iter().map(|c| c.rooms.load(Ordering::Relaxed)).sum();
    let (users, online, rooms) = r.table.counts();
    let mut out = String::with_capacity(4096);
    let c = "counter";
    let g = "gauge";
    metric(
        &mut out,
        "banter_route_connections",
        g,
        "Access-node connections open.",
        &[("", conns.len() as u64)],
    );
    metric(
        &mut out,
        "banter_route_connections_accepted_total",
        c,
        "Access-node connections accepted.",
        &[("", get(&m.accepted))],
    );
    metric(
        &mut out,
        "banter_route_connections_rejected_total",
        c,
        "Access-node connections refused at max_connections.",
        &[("", get(&m.rejected))],
    );
    metric(
        &mut out,
        "banter_route_subscriptions",
        g,
        "User subscriptions, summed over connections.",
        &[("", subscriptions as u64)],
    );
    metric(
        &mut out,
        "banter_route_room_subscriptions",
        g,
        "Room subscriptions, summed over connections.",
        &[("", room_subscriptions as u64)],
    );
    metric(
        &mut out,
        "banter_route_users",
        g,
        "Distinct subscribed users.",
        &[("", users as u64)],
    );
    metric(
        &mut out,
        "banter_route_online_users",
        g,
        "Distinct users subscribed online by some connection.",
        &[("", online as u64)],
    );
    metric(
        &mut out,
        "banter_route_rooms",
        g,
        "Distinct subscribed rooms.",
        &[("", rooms as u64)],
    );
    metric(
        &mut out,
        "banter_route_publish_in_total",
        c,
        "Route messages received from access nodes.",
        &[
            ("{kind=\"user\"}", get(&m.publish_in_user)),
            ("{kind=\"group\"}", get(&m.publish_in_group)),
            ("{kind=\"room\"}", get(&m.publish_in_room)),
        ],
    );
    metric(
        &mut out,
        "banter_route_publish_out_total",
        c,
        "Route messages queued for access nodes.",
        &[("", get(&m.publish_out))],
    );
    metric(
        &mut out,
        "banter_route_dropped_total",
        c,
        "Route messages dropped because an access node's outbox was full (receivers not told).",
        &[("", get(&m.dropped))],
    );
    metric(
        &mut out,
        "banter_route_coalesced_total",
        c,
        "Persistent messages dropped on a full outbox whose receivers were sent a sync notification instead.",
        &[("", get(&m.coalesced))],
    );
    metric(
        &mut out,
        "banter_route_write_timeouts_total",
        c,
        "Access nodes disconnected for not reading within the write deadline.",
        &[("", get(&m.write_timeouts))],
    );
    metric(
        &mut out,
        "banter_route_push_requests_total",
        c,
        "PUSH requests received.",
        &[("", get(&m.push_requests))],
    );
    metric(
        &mut out,
        "banter_route_push_jobs_total",
        c,
        "Offline-push jobs handed to the push sink.",
        &[("", get(&m.push_jobs))],
    );
    metric(
        &mut out,
        "banter_route_push_delivered_total",
        c,
        "Offline-push jobs written by the push sink.",
        &[("", r.push.delivered())],
    );
    metric(
        &mut out,
        "banter_route_push_dropped_total",
        c,
        "Offline-push jobs dropped by the push sink.",
        &[("", r.push.dropped())],
    );
    metric(
        &mut out,
        "banter_route_malformed_frames_total",
        c,
        "Malformed frames (each closed its connection).",
        &[("", get(&m.malformed))],
    );
    metric(
        &mut out,
        "banter_route_unknown_commands_total",
        c,
        "Frames with a command the router does not handle (ignored).",
        &[("", get(&m.unknown_commands))],
    );
    out
}
