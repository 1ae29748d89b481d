//! The router's configuration (`banter imr`): a TOML file with unknown keys rejected; every key has
//! a default, documented in [`default_toml`].

use backend::{RedisPushOptions, WebhookOptions};
use serde::{Deserialize, Serialize};

/// The documented default configuration file: parsing it yields [`RouterConfig::default`].
pub fn default_toml() -> &'static str {
    include_str!("default.toml")
}

/// The whole router configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// This node's name in its log lines (`node=…`); empty = none.
    pub node_id: String,
    /// TCP listener for access nodes (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// HTTP API listener; empty disables it.
    pub http_listen: String,
    /// When set, every HTTP request but `/healthz` must carry `Authorization: Bearer <secret>`.
    /// When empty, the HTTP API refuses to listen on anything but a loopback address.
    pub http_secret: String,
    /// Offline push.
    pub push: PushConfig,
    /// Bounds.
    pub limits: LimitsConfig,
    /// Registration in etcd (discovery by access nodes).
    pub cluster: RouterClusterConfig,
    /// Log level and format.
    pub log: node::log::LogSettings,
    /// Worker threads.
    pub runtime: node::runtime::RuntimeSettings,
}

/// `[cluster]`: registration in etcd, so access nodes find this router by themselves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RouterClusterConfig {
    /// etcd endpoints (`http://host:port`); empty = not registered (access nodes list it in
    /// `route_addrs`).
    pub etcd: Vec<String>,
    /// Key prefix of this cluster in etcd.
    pub etcd_prefix: String,
    /// Lease TTL in seconds: a dead router disappears from the access nodes' view after this.
    pub lease_ttl_secs: u64,
    /// Host registered for the listener; "" = the address as bound (must not be a wildcard).
    pub advertise_host: String,
}

impl Default for RouterClusterConfig {
    fn default() -> Self {
        RouterClusterConfig {
            etcd: Vec::new(),
            etcd_prefix: "/banter".into(),
            lease_ttl_secs: 3,
            advertise_host: String::new(),
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            node_id: String::new(),
            listen: "0.0.0.0:4444".to_owned(),
            http_listen: "127.0.0.1:4445".to_owned(),
            http_secret: String::new(),
            push: PushConfig::default(),
            limits: LimitsConfig::default(),
            cluster: RouterClusterConfig::default(),
            log: node::log::LogSettings::default(),
            runtime: node::runtime::RuntimeSettings::default(),
        }
    }
}

impl RouterConfig {
    /// Parses a TOML document (missing keys take their defaults).
    pub fn from_toml(text: &str) -> Result<RouterConfig, toml::de::Error> {
        toml::from_str(text)
    }
}

/// Which offline-push sink PUSH requests feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PushBackend {
    /// No jobs (GoBelieve's `push_disabled = true`).
    #[default]
    None,
    /// GoBelieve's Redis lists (docs/compatibility.md, *GoBelieve's shared state*).
    Redis,
    /// JSON batches POSTed to a webhook.
    Webhook,
    /// banter's own APNs/FCM senders (`docs/push.md`), reading devices from `push.native_backend`.
    Native,
}

/// `[push]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// `none`, `redis` or `webhook`.
    pub backend: PushBackend,
    /// Used when `backend = "redis"`.
    pub redis: RedisPushOptions,
    /// Used when `backend = "webhook"`.
    pub webhook: WebhookOptions,
    /// Used when `backend = "native"`.
    pub native: push::NativeOptions,
    /// `backend = "native"`: the GoBelieve Redis the access nodes use (`auth.redis_url`), where
    /// devices, unread counts, names and do-not-disturb settings are read.
    pub native_redis_url: String,
    /// `backend = "native"`: the directory of the push journal (jobs survive a restart).
    pub native_data_dir: String,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            backend: PushBackend::None,
            redis: RedisPushOptions::default(),
            webhook: WebhookOptions::default(),
            native: push::NativeOptions::default(),
            native_redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            native_data_dir: "data".to_owned(),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest frame body accepted from an access node; a bigger one closes that connection.
    pub max_body: usize,
    /// Frames waiting per access node; beyond it frames for that node are dropped and counted.
    pub outbox_frames: usize,
    /// Bytes waiting per access node; beyond it frames for that node are dropped and counted.
    pub outbox_bytes: usize,
    /// Receivers per access node that can be owed a sync notification for persistent messages
    /// dropped on a full outbox; beyond it such drops are lost (counted, warned).
    pub notify_backlog: usize,
    /// Milliseconds one write to an access node may take before it is disconnected.
    pub write_timeout_ms: u64,
    /// Access-node connections at once.
    pub max_connections: usize,
    /// TCP keepalive idle time and probe interval, in seconds.
    pub keepalive_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body: cluster::route_proto::DEFAULT_MAX_BODY,
            outbox_frames: 65_536,
            outbox_bytes: 64 << 20,
            notify_backlog: 262_144,
            write_timeout_ms: 10_000,
            max_connections: 1024,
            keepalive_secs: 60,
        }
    }
}

impl RouterConfig {
    /// Every problem with the values, at once (empty when fine).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.listen.trim().is_empty() {
            out.push("listen must not be empty".to_owned());
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_body", l.max_body),
            ("limits.outbox_frames", l.outbox_frames),
            ("limits.outbox_bytes", l.outbox_bytes),
            ("limits.notify_backlog", l.notify_backlog),
            ("limits.max_connections", l.max_connections),
        ] {
            if v == 0 {
                out.push(format!("{name} must be > 0"));
            }
        }
        if l.max_body < proto::HEADER_LEN + cluster::route_proto::ROUTE_MESSAGE_FIXED {
            out.push("limits.max_body must be at least 54".to_owned());
        }
        if l.max_body > i32::MAX as usize {
            out.push("limits.max_body must fit the 31-bit frame length".to_owned());
        }
        if l.write_timeout_ms == 0 {
            out.push("limits.write_timeout_ms must be > 0".to_owned());
        }
        if l.keepalive_secs == 0 {
            out.push("limits.keepalive_secs must be > 0".to_owned());
        }
        out
    }
}
