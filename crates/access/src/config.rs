//! Configuration sections owned by the access node: client listeners, session limits, sync batching and
//! the HTTP API. They are embedded in `banter.toml` by the binary; every field has a documented default.

use serde::{Deserialize, Serialize};

/// `[server]`: client listeners and per-session limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Plain TCP listener for SDK clients (GoBelieve's `port`). Empty string disables it.
    pub tcp: String,
    /// Raw TLS listener (GoBelieve's `ssl_port`); needs `cert_file` and `key_file`. Empty disables it.
    pub tls: String,
    /// WebSocket listener; clients connect to `ws://HOST:PORT/ws`. Empty disables it.
    pub ws: String,
    /// WebSocket-over-TLS listener (`wss://HOST:PORT/ws`); needs `cert_file` and `key_file`. Empty disables it.
    pub wss: String,
    /// PEM certificate chain for `tls` and `wss`.
    pub cert_file: String,
    /// PEM private key for `tls` and `wss`.
    pub key_file: String,
    /// Most client connections held at once (all listeners together), counted from the moment they are
    /// accepted (before any TLS handshake or WebSocket upgrade); further connections are closed at once
    /// (a plain WebSocket connection gets an HTTP 503 first).
    pub max_connections: usize,
    /// Seconds a new connection has, from the moment it is accepted, to complete the TLS handshake, the
    /// WebSocket upgrade and authentication; one deadline for all three. It is closed when it runs out.
    pub login_timeout_secs: u64,
    /// Seconds without any frame from the client before the connection is closed (GoBelieve: 360).
    pub idle_timeout_secs: u64,
    /// Seconds a write to a client may take before the connection is considered dead (GoBelieve: 30).
    pub write_timeout_secs: u64,
    /// Most frames queued for one session by others (pushes, notifications). A session whose queue is
    /// full cannot keep up and is disconnected; it never slows anyone else down.
    pub outbox_frames: usize,
    /// Most bytes queued for one session by others; same policy as `outbox_frames`.
    pub outbox_bytes: usize,
    /// Most bytes of room messages queued for one session (their wire size plus 80 bytes of bookkeeping
    /// each). A member whose backlog is over it loses its oldest room messages (rooms are real-time only
    /// and promise no delivery); counted in `/metrics`.
    pub room_backlog_bytes: usize,
    /// Most seconds of room traffic queued for one session: a queued room message more than this older
    /// than the newest is dropped (counted). Whichever of the two bounds is smaller applies.
    pub room_backlog_secs: u64,
    /// A room member that loses room messages and does not catch up (write out its whole backlog
    /// without losing one) for this many seconds is disconnected (counted, logged). 0: never.
    pub room_lag_disconnect_secs: u64,
    /// The customer-service app (GoBelieve's `kefu_appid`): MSG_CUSTOMER_V2 is accepted only between this
    /// app and another. 0 disables customer-service messages.
    pub kefu_appid: i64,
    /// Most messages from one connection being stored at the same time; reading from that connection
    /// pauses while the limit is reached.
    pub max_inflight: usize,
    /// Largest accepted frame body in bytes (at most 32767, the protocol's limit).
    pub max_body: usize,
    /// Messages per second one connection may send (IM, RT); 0 disables the limit. Refused messages
    /// get an ACK with status 69 in protocol version 2 sessions.
    pub rate_limit_per_sec: u32,
    /// Browser origins allowed to open a WebSocket (the upgrade's `Origin` header). Empty: the same
    /// host as the WebSocket endpoint and loopback pages; `"*"`: any; otherwise exact origins. Requests
    /// without `Origin` (SDKs that are not browser pages) are always allowed.
    pub ws_allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tcp: "0.0.0.0:23000".into(),
            tls: String::new(),
            ws: "0.0.0.0:13891".into(),
            wss: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            max_connections: 100_000,
            login_timeout_secs: 60,
            idle_timeout_secs: 360,
            write_timeout_secs: 30,
            outbox_frames: 4096,
            outbox_bytes: 4 << 20,
            room_backlog_bytes: 1 << 20,
            room_backlog_secs: 10,
            room_lag_disconnect_secs: 15,
            kefu_appid: 0,
            max_inflight: 256,
            max_body: proto::MAX_BODY_LEN,
            rate_limit_per_sec: 0,
            ws_allowed_origins: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// The room backlog policy of every session.
    pub fn room_policy(&self) -> crate::route::RoomPolicy {
        use std::time::Duration;
        crate::route::RoomPolicy {
            bytes: self.room_backlog_bytes,
            age: Duration::from_secs(self.room_backlog_secs),
            lag_disconnect: (self.room_lag_disconnect_secs > 0)
                .then(|| Duration::from_secs(self.room_lag_disconnect_secs)),
        }
    }
}

/// `[sync]`: how sync requests are answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Most messages in one SYNC response. When more remain, SYNC_END is followed by SYNC_NOTIFY and the
    /// client syncs again, until it is caught up; nothing is ever skipped.
    pub batch_messages: usize,
    /// Most body bytes in one SYNC response (a batch always holds at least one message).
    pub batch_bytes: usize,
    /// Most messages `/load_latest_message` returns.
    pub max_latest: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_messages: 1000,
            batch_bytes: 1 << 20,
            max_latest: 1000,
        }
    }
}

/// `[api]`: the HTTP API for app servers and operators.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the HTTP API (GoBelieve's `http_listen_address`). Empty disables it.
    pub listen: String,
    /// When set, every request must carry `Authorization: Bearer <secret>` (except `/healthz` and `/readyz`). When empty,
    /// the API refuses to listen on anything but a loopback address.
    pub secret: String,
    /// Largest accepted request body in bytes; a larger one is answered 413 with a JSON error.
    pub max_body: usize,
    /// Most HTTP connections held at once; further connections get a 503 with a JSON error and are
    /// closed.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, counted from the connection's start or the
    /// end of its previous response (so an idle keep-alive connection is closed after this long too).
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body once its headers are in; a slower request
    /// is answered 408 with a JSON error and its connection closed.
    pub body_timeout_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:6666".into(),
            secret: String::new(),
            max_body: 64 * 1024,
            max_connections: 1024,
            header_timeout_secs: 30,
            body_timeout_secs: 30,
        }
    }
}

/// `[relationships]`: GoBelieve's friendship and blacklist checks of peer messages
/// (docs/protocol.md §9.2). Both are off by default; off, a message costs nothing extra.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelationshipsConfig {
    /// GoBelieve's `enable_friendship`: an IM is refused with ACK status 1 (NOT_MY_FRIEND) unless
    /// the sender lists the receiver as a friend, else with status 2 (NOT_YOUR_FRIEND) unless the
    /// receiver lists the sender.
    pub friendship: bool,
    /// GoBelieve's `enable_blacklist`: an IM is refused with ACK status 3 (IN_YOUR_BLACKLIST) when
    /// the receiver has blacklisted the sender.
    pub blacklist: bool,
    /// Most user pairs whose relations are kept in memory; others are read from the store on
    /// their next message.
    pub cache_pairs: usize,
}

impl RelationshipsConfig {
    /// Whether any check is on.
    pub fn checks(&self) -> bool {
        self.friendship || self.blacklist
    }
}

impl Default for RelationshipsConfig {
    fn default() -> Self {
        RelationshipsConfig {
            friendship: false,
            blacklist: false,
            cache_pairs: backend::relations::DEFAULT_CACHE_PAIRS,
        }
    }
}
