//! The access node's counters, exported by `/summary` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Resent messages the store already held (same idempotency key): ACKed again, not stored.
    pub messages_repeated: AtomicU64,
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
