//! The store node (`banter ims`): one message store served over the store link, a replication
//! listener, optionally a follow loop pulling from a leader, and an HTTP API (`/healthz`,
//! `/metrics`, `/summary`, `POST /promote`).
//!
//! [`run`] opens the store, binds every listener (port 0 works, the bound addresses are in the
//! returned [`RunningStoreNode`]) and starts the tasks; [`RunningStoreNode::wait`] returns after
//! `shutdown` is cancelled, every connection has finished its in-flight requests and the store
//! has been closed (final fsync and checkpoint).
//!
//! A node started with `follow` set opens its store as a follower: it refuses appends
//! (`not_leader`) and serves reads of what it has replicated. `POST /promote` stops the follow
//! loop (after the batches it submitted are durable) and makes the store a leader; its keys
//! continue above every position the old leader could have handed out (`Store::promote_past`
//! with the leader end the stream last reported), so a key a client holds from before the
//! fail-over is below every new key. Keep in mind that a restart with `follow` still set makes
//! it a follower again: update the config after a fail-over. Every node also serves
//! replication, so followers can be chained.
//!
//! The HTTP API is protected by `node::admin`, like the access node's and the router's: with
//! `http_secret` set every request but `/healthz` (so `POST /promote` too) needs
//! `Authorization: Bearer <secret>`; without one it may only listen on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use node::admin::{self, require_bearer, BearerAuth};
use serde::{Deserialize, Serialize};
use store::{Role, Store, StoreError, StoreOptions, StoreSettings};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::replication::{
    serve_replication, FollowOptions, FollowStatus, ReplicationHub, ReplicationServerOptions,
};
use crate::server::{serve, StoreServerMetrics, StoreServerOptions, SyncReplication};
use crate::state::NodeState;
pub use crate::state::{PromoteError, ReplicationMode};

/// The store node's configuration file (`banter ims --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreNodeConfig {
    /// This node's name in its log lines (`node=…`); empty = none.
    pub node_id: String,
    /// Directory of the message log; created if missing. Only one node may use it at a time.
    pub data_dir: PathBuf,
    /// Store link listener (access nodes connect here; `storage_addrs` on the access side).
    pub listen: String,
    /// Replication listener (followers connect here). Empty = do not serve replication.
    pub replication_listen: String,
    /// HTTP API listener (`/healthz`, `/metrics`, `/summary`, `POST /promote`). Empty = off.
    pub http_listen: String,
    /// When set, every HTTP request but `/healthz` must carry `Authorization: Bearer <secret>`.
    /// When empty, the HTTP API refuses to listen on anything but a loopback address.
    pub http_secret: String,
    /// The leader's replication address. Empty = this node is a leader. Set = this node is a
    /// follower: it refuses appends until promoted.
    pub follow: String,
    /// `"async"`: an append is acknowledged once durable here. `"sync"`: only once a follower
    /// has also acknowledged it durable, and readers see only what a follower confirmed; without
    /// a follower, appends fail after `sync_timeout_ms`.
    pub replication_mode: ReplicationMode,
    /// `sync` mode: how long an append waits for a follower before it fails with
    /// `replication_timeout` (its records are withdrawn: it is never delivered).
    pub sync_timeout_ms: u64,
    /// Most messages one sync returns.
    pub max_sync_limit: usize,
    /// Largest store link frame body in MiB (requests and replies; replies are cut to fit).
    pub max_frame_mb: usize,
    /// Most requests of one access connection executing at once; reading pauses at the limit.
    pub max_in_flight: usize,
    /// Largest replication batch in KiB (a larger single record is sent whole).
    pub replication_batch_kb: usize,
    /// Largest replication frame in MiB a follower accepts; must exceed the largest record.
    pub replication_max_frame_mb: usize,
    /// Leader: heartbeat period on an idle replication connection, in ms.
    pub replication_heartbeat_ms: u64,
    /// Both sides: drop a replication connection silent for this many ms.
    pub replication_idle_timeout_ms: u64,
    /// etcd endpoints (`http://host:port`). Set = membership and automatic fail-over: the node
    /// registers, the shard's leader is elected, followers follow it (`follow` must be empty).
    pub etcd: Vec<String>,
    /// Key prefix of this cluster in etcd.
    pub etcd_prefix: String,
    /// The shard this node serves (etcd mode): access nodes list shard names in
    /// `storage_shards` / `group_storage_shards`.
    pub shard: String,
    /// etcd lease TTL in seconds: a dead leader is replaced after about this long.
    pub lease_ttl_secs: u64,
    /// Host other nodes use to reach this one (etcd mode); "" = the listeners' own addresses,
    /// which then must not be wildcard addresses.
    pub advertise_host: String,
    /// `[store]`: the message store, the same section (and keys) as `banter serve`'s.
    pub store: StoreSettings,
    /// `[log]`: log level and format.
    pub log: node::log::LogSettings,
    /// `[runtime]`: worker threads.
    pub runtime: node::runtime::RuntimeSettings,
}

impl Default for StoreNodeConfig {
    fn default() -> Self {
        StoreNodeConfig {
            node_id: String::new(),
            data_dir: PathBuf::from("./ims-data"),
            listen: "0.0.0.0:13333".into(),
            replication_listen: "0.0.0.0:13334".into(),
            http_listen: "127.0.0.1:13335".into(),
            http_secret: String::new(),
            follow: String::new(),
            replication_mode: ReplicationMode::Async,
            sync_timeout_ms: 5000,
            max_sync_limit: 3000,
            max_frame_mb: 16,
            max_in_flight: 256,
            replication_batch_kb: 1024,
            replication_max_frame_mb: 64,
            replication_heartbeat_ms: 5000,
            replication_idle_timeout_ms: 30_000,
            etcd: Vec::new(),
            etcd_prefix: "/banter".into(),
            shard: "0".into(),
            lease_ttl_secs: 3,
            advertise_host: String::new(),
            store: StoreSettings::default(),
            log: node::log::LogSettings::default(),
            runtime: node::runtime::RuntimeSettings::default(),
        }
    }
}

const DEFAULT_TOML: &str = r#"# banter store node (ims). Every key is optional; shown here with its default.

# This node's name, added to every log line as node=<id> ("" = none).
node_id = ""

# Directory of the message log; created if missing. Only one node may use it at a time.
data_dir = "./ims-data"
# Store link listener: access nodes list this address in their storage_addrs.
listen = "0.0.0.0:13333"
# Replication listener: followers connect here ("" = do not serve replication).
replication_listen = "0.0.0.0:13334"
# HTTP API: /healthz, /metrics, /summary, POST /promote ("" = off). Keep it private.
http_listen = "127.0.0.1:13335"
# When set, every HTTP request except /healthz must carry `Authorization: Bearer <secret>`
# (`banter ims promote --secret`). When empty, the HTTP API refuses to listen on anything but a
# loopback address.
http_secret = ""

# The leader's replication_listen address. "" = this node is a leader. When set, this node is a
# follower: it replicates the leader's log, serves reads and refuses appends until promoted
# (POST /promote, or `banter ims promote --http URL --secret S`); its keys then continue at
# least 1 TiB above the old leader's, so none is ever reused. Clear it after a fail-over.
follow = ""
# "async": an append is acknowledged once durable on this node.
# "sync": only once a follower has acknowledged it durable as well, and clients are shown only
# what a follower confirmed; an append that no follower acknowledges within sync_timeout_ms fails
# with a replication_timeout error and is withdrawn (never delivered, by no node).
replication_mode = "async"
sync_timeout_ms = 5000

# Most messages one sync returns.
max_sync_limit = 3000

# Largest store link frame body in MiB (requests and replies; long replies are cut to fit).
max_frame_mb = 16
# Most requests of one access connection executing at once; reading pauses at the limit.
max_in_flight = 256
# Largest replication batch in KiB (a larger single record is sent whole).
replication_batch_kb = 1024
# Largest replication frame in MiB a follower accepts; must exceed the largest log record.
replication_max_frame_mb = 64
# Leader: heartbeat period on an idle replication connection.
replication_heartbeat_ms = 5000
# Both sides: drop a replication connection that has been silent this long.
replication_idle_timeout_ms = 30000

# Automatic fail-over (docs/cluster.md, "etcd"): etcd endpoints, e.g. ["http://10.0.0.5:2379"].
# When set, this node registers in etcd, the nodes of one shard elect their leader (the leader's
# lease lapses: the follower with the most log takes over), followers follow whoever leads, and
# access nodes find the leaders by themselves; `follow` must then be empty.
etcd = []
# Key prefix of this cluster in etcd.
etcd_prefix = "/banter"
# The shard this node belongs to (access nodes list shard names in storage_shards).
shard = "0"
# Lease TTL: a leader that stops renewing its lease is replaced after about this long.
lease_ttl_secs = 3
# Host that other nodes use to reach this one; "" = the listen addresses as bound.
advertise_host = ""

# The message store: the same section, with the same keys, as `banter serve`'s [store].
[store]
# "always": fsync before acknowledging (group commit); "interval": fsync at most
# fsync_interval_ms after a write; "none": leave it to the OS.
durability = "always"
fsync_interval_ms = 100
# Size of one log segment file in MiB.
segment_mb = 64
# Seconds between background checkpoints of the queue heads (bounds restart replay).
checkpoint_interval_secs = 10
# MiB of recently written log kept in memory for reads and replication.
cache_mb = 64
# Largest stored message body in bytes.
max_body_bytes = 65536
# Drop whole sealed segments older than this many days (0 = keep forever). A follower further
# behind than the retained log cannot catch up and must be re-seeded from a copy.
retention_days = 0
# Drop the oldest sealed segments while the log exceeds this many GiB (0 = no limit).
retention_max_gb = 0
# Idempotency keys remembered, so a resent or retried message is stored once (about 120 bytes
# each; 0 = none), for records within the last dedupe_log_mb MiB of the log (read at start-up).
dedupe_keys = 100000
dedupe_log_mb = 64

[log]
# Log level or filter (RUST_LOG syntax): "info", "debug", "ims=debug,info", ... (--log-level
# overrides it; RUST_LOG, when set, wins over both).
level = "info"
# "text" or "json" (--log-format overrides it).
format = "text"

[runtime]
# Threads that run network and protocol work; 0 = one per CPU core. Fewer cost fewer wake-ups per
# request where traffic is light or several roles share a machine (docs/operations.md, Threads).
worker_threads = 0
"#;

/// The documented default configuration file; it parses to `StoreNodeConfig::default()`.
pub fn default_toml() -> &'static str {
    DEFAULT_TOML
}

impl StoreNodeConfig {
    /// Parses a configuration file's text (unknown keys are errors).
    pub fn from_toml(text: &str) -> Result<StoreNodeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Every problem with this configuration, all at once.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            errs.push("data_dir must be set".to_string());
        }
        if self.listen.trim().is_empty() {
            errs.push("listen must be set".to_string());
        }
        if self.replication_mode == ReplicationMode::Sync && self.sync_timeout_ms == 0 {
            errs.push("sync_timeout_ms must be > 0 with replication_mode \"sync\"".to_string());
        }
        if self.max_frame_mb == 0 || self.max_frame_mb > 1024 {
            errs.push("max_frame_mb must be between 1 and 1024".to_string());
        }
        if self.replication_max_frame_mb == 0 || self.replication_max_frame_mb > 1024 {
            errs.push("replication_max_frame_mb must be between 1 and 1024".to_string());
        }
        if self.max_in_flight == 0 {
            errs.push("max_in_flight must be > 0".to_string());
        }
        if self.replication_batch_kb == 0 {
            errs.push("replication_batch_kb must be > 0".to_string());
        }
        if self.replication_heartbeat_ms == 0 {
            errs.push("replication_heartbeat_ms must be > 0".to_string());
        }
        if !self.etcd.is_empty() {
            if !self.follow.trim().is_empty() {
                errs.push(
                    "follow must be empty with etcd: the shard's leader is elected".to_string(),
                );
            }
            if self.shard.trim().is_empty() || self.shard.contains('/') {
                errs.push("shard must be a non-empty name without '/'".to_string());
            }
            if self.node_id.trim().is_empty() || self.node_id.contains('/') {
                errs.push("node_id must be set (without '/') with etcd".to_string());
            }
            if self.replication_listen.trim().is_empty() {
                errs.push("replication_listen must be set with etcd".to_string());
            }
            let wildcard = |a: &str| {
                a.trim()
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip().is_unspecified())
            };
            if self.advertise_host.trim().is_empty()
                && (wildcard(&self.listen) || wildcard(&self.replication_listen))
            {
                errs.push(
                    "with etcd, listen and replication_listen must be specific addresses, or set \
                     advertise_host: other nodes reach this one at the addresses it registers"
                        .to_string(),
                );
            }
            if self.lease_ttl_secs == 0 || self.lease_ttl_secs > 60 {
                errs.push("lease_ttl_secs must be between 1 and 60".to_string());
            }
        }
        if self.replication_idle_timeout_ms <= self.replication_heartbeat_ms {
            errs.push(
                "replication_idle_timeout_ms must be larger than replication_heartbeat_ms"
                    .to_string(),
            );
        }
        errs.extend(self.store.validate("store"));
        let o = self.store_options();
        // The largest record / request must fit in a frame, or replication and appends
        // of such messages would fail forever (GoBelieve #26, #42).
        let record = o.max_body_bytes
            + o.max_queues_per_message * store::format::ENTRY_LEN
            + store::format::MESSAGE_FIXED_LEN;
        if (self.replication_max_frame_mb << 20) < record + 16 {
            errs.push(format!(
                "replication_max_frame_mb ({}) must hold the largest possible record \
                 ({record} bytes with max_body_bytes {})",
                self.replication_max_frame_mb, o.max_body_bytes
            ));
        }
        let request =
            o.max_body_bytes + o.max_queues_per_message * cluster::store_proto::QUEUE_LEN + 64;
        if (self.max_frame_mb << 20) < request {
            errs.push(format!(
                "max_frame_mb ({}) must hold the largest possible append ({request} bytes \
                 with max_body_bytes {})",
                self.max_frame_mb, o.max_body_bytes
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    /// The store engine's options for this configuration.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            max_sync_limit: self.max_sync_limit.max(1),
            // with etcd every node starts as a follower and the shard elects its leader
            role: if self.follow.trim().is_empty() && self.etcd.is_empty() {
                Role::Leader
            } else {
                Role::Follower
            },
            ..self.store.options()
        }
    }
}

/// Why the store node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StoreNodeError {
    #[error("invalid ims configuration: {0}")]
    Config(String),
    #[error("cannot open the store in {}: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("closing the store failed: {0}")]
    Close(#[source] StoreError),
    #[error("internal task failed: {0}")]
    Task(String),
    /// etcd mode: the node lost its shard leadership (or its log diverged from the new
    /// leader's) and stopped; started again, it rejoins as a follower.
    #[error("{0}")]
    Deposed(String),
}

/// A started store node.
pub struct RunningStoreNode {
    /// Bound store link address.
    pub listen_addr: SocketAddr,
    /// Bound replication address, if serving replication.
    pub replication_addr: Option<SocketAddr>,
    /// Bound HTTP address, if the API is on.
    pub http_addr: Option<SocketAddr>,
    /// The store (for in-process inspection and tests).
    pub store: Arc<Store>,
    /// The leader-side replication state.
    pub hub: Arc<ReplicationHub>,
    /// The follower-side replication state.
    pub follow_status: Arc<FollowStatus>,
    state: Arc<NodeState>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl RunningStoreNode {
    /// The store's current role.
    pub fn role(&self) -> Role {
        self.state.store.role()
    }

    /// Follower → leader (what `POST /promote` does).
    pub async fn promote(&self) -> Result<u64, PromoteError> {
        self.state.promote().await
    }

    /// The `/summary` document.
    pub fn summary(&self) -> serde_json::Value {
        self.state.summary()
    }

    /// The `/metrics` text.
    pub fn metrics_text(&self) -> String {
        self.state.metrics()
    }

    /// Waits for `shutdown`, lets every task finish (connections finish their in-flight
    /// requests), then closes the store.
    pub async fn wait(self) -> Result<(), StoreNodeError> {
        self.shutdown.cancelled().await;
        let follower = self.state.follower.lock().await.take();
        let mut tasks = self.tasks;
        if let Some((token, task)) = follower {
            token.cancel();
            tasks.push(task);
        }
        for t in tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "store node task failed");
            }
        }
        let store = self.state.store.clone();
        let deposed = self.state.deposed.lock().take();
        drop(self.state);
        match tokio::task::spawn_blocking(move || store.close()).await {
            Ok(Ok(())) => match deposed {
                Some(why) => Err(StoreNodeError::Deposed(why)),
                None => Ok(()),
            },
            Ok(Err(e)) => Err(StoreNodeError::Close(e)),
            Err(e) => Err(StoreNodeError::Task(e.to_string())),
        }
    }
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, StoreNodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StoreNodeError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

fn local(l: &TcpListener, what: &'static str, addr: &str) -> Result<SocketAddr, StoreNodeError> {
    l.local_addr().map_err(|source| StoreNodeError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

/// Starts a store node: opens the store, binds the listeners and spawns the store link server,
/// the replication server, the follow loop (when `follow` is set) and the HTTP API.
pub async fn run(
    config: StoreNodeConfig,
    shutdown: CancellationToken,
) -> Result<RunningStoreNode, StoreNodeError> {
    config.validate().map_err(StoreNodeError::Config)?;
    let registry = node::metrics::Registry::new("store");
    let opts = StoreOptions {
        histograms: store::StoreHistograms::named(|name, help| registry.histogram(name, help)),
        ..config.store_options()
    };
    let http_listen = config.http_listen.trim().to_string();
    admin::check_exposure(
        &http_listen,
        &config.http_secret,
        "http_listen",
        "http_secret",
    )
    .await
    .map_err(|e| StoreNodeError::Config(format!("{e} (it can promote this node)")))?;
    let dir = config.data_dir.clone();
    let etcd = if config.etcd.is_empty() {
        None
    } else {
        let client = coord::Etcd::new(&config.etcd, Duration::from_secs(5))
            .map_err(|e| StoreNodeError::Config(e.to_string()))?;
        crate::election::reseed_if_diverged(&dir).map_err(StoreNodeError::Config)?;
        Some(client)
    };
    let store = {
        let open_dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let dir = open_dir;
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError::Io {
                    op: "create directory",
                    path: dir.clone(),
                    offset: None,
                    source: e,
                })
                .and_then(|_| Store::open(&dir, opts))
        })
        .await
        .map_err(|e| StoreNodeError::Task(e.to_string()))?
        .map_err(|source| StoreNodeError::Open { dir, source })?
    };
    let store = Arc::new(store);
    // Bind everything before spawning anything, so a bind failure leaves nothing running.
    let link = bind("store link", &config.listen).await?;
    let listen_addr = local(&link, "store link", &config.listen)?;
    let repl = if config.replication_listen.trim().is_empty() {
        None
    } else {
        Some(bind("replication", &config.replication_listen).await?)
    };
    let replication_addr = match &repl {
        Some(l) => Some(local(l, "replication", &config.replication_listen)?),
        None => None,
    };
    let http = if config.http_listen.trim().is_empty() {
        None
    } else {
        Some(bind("http", &config.http_listen).await?)
    };
    let http_addr = match &http {
        Some(l) => Some(local(l, "http", &config.http_listen)?),
        None => None,
    };

    let hub = ReplicationHub::new();
    let server_metrics = Arc::new(StoreServerMetrics {
        append_seconds: crate::server::Hist(registry.histogram(
            "banter_ims_append_seconds",
            "Time from taking an append request to its reply (durable; in sync mode also confirmed by a follower).",
        )),
        append_messages: crate::server::Hist(registry.histogram(
            "banter_ims_append_messages",
            "Messages per append request.",
        )),
        ..StoreServerMetrics::default()
    });
    let follow_status = Arc::new(FollowStatus::default());
    let fence = Arc::new(crate::fence::Fence::new(etcd.is_some()));
    let state = Arc::new(NodeState {
        registry,
        store: store.clone(),
        hub: hub.clone(),
        server_metrics: server_metrics.clone(),
        follow_status: follow_status.clone(),
        follow_addr: parking_lot::Mutex::new(String::new()),
        mode: config.replication_mode,
        follower: tokio::sync::Mutex::new(None),
        follow_template: FollowOptions {
            max_frame_bytes: config.replication_max_frame_mb << 20,
            idle_timeout: Duration::from_millis(config.replication_idle_timeout_ms),
            status: follow_status.clone(),
            ..FollowOptions::default()
        },
        fence: fence.clone(),
        deposed: parking_lot::Mutex::new(None),
        shutdown: shutdown.clone(),
        epoch: std::sync::atomic::AtomicU64::new(0),
    });

    let mut tasks = Vec::new();
    let server_opts = StoreServerOptions {
        max_frame_bytes: config.max_frame_mb << 20,
        max_in_flight: config.max_in_flight,
        inline_read_window: ((config.store.cache_mb as u64) << 20) / 2,
        sync_replication: (config.replication_mode == ReplicationMode::Sync).then(|| {
            SyncReplication {
                hub: hub.clone(),
                timeout: Duration::from_millis(config.sync_timeout_ms),
            }
        }),
        metrics: server_metrics,
        fence: fence.clone(),
        // in-flight `sync` appends may wait up to sync_timeout for a follower
        shutdown_grace: Duration::from_millis(config.sync_timeout_ms) + Duration::from_secs(5),
    };
    tasks.push(tokio::spawn(serve(
        link,
        store.clone(),
        server_opts,
        shutdown.clone(),
    )));
    if let Some(l) = repl {
        let ropts = ReplicationServerOptions {
            hub: hub.clone(),
            max_batch_bytes: config.replication_batch_kb << 10,
            heartbeat: Duration::from_millis(config.replication_heartbeat_ms),
            idle_timeout: Duration::from_millis(config.replication_idle_timeout_ms),
            ..ReplicationServerOptions::default()
        };
        tasks.push(tokio::spawn(serve_replication(
            l,
            store.clone(),
            ropts,
            shutdown.clone(),
        )));
    }
    if !config.follow.trim().is_empty() {
        state.follow_leader(config.follow.trim(), 0).await;
    }
    if let Some(l) = http {
        let auth = BearerAuth::new(&config.http_secret, &["/healthz"], "http_secret");
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/summary", get(summary))
            .route("/promote", post(promote))
            .layer(axum::middleware::from_fn_with_state(auth, require_bearer))
            .with_state(state.clone());
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "ims HTTP API failed");
            }
        }));
    }
    if let Some(etcd) = etcd {
        let advertise = |a: Option<SocketAddr>| match a {
            Some(a) if !config.advertise_host.trim().is_empty() => {
                format!("{}:{}", config.advertise_host.trim(), a.port())
            }
            Some(a) => a.to_string(),
            None => String::new(),
        };
        let me = coord::LeaderRecord {
            node_id: config.node_id.trim().to_string(),
            listen: advertise(Some(listen_addr)),
            replication: advertise(replication_addr),
            http: advertise(http_addr),
        };
        let settings = crate::election::Settings {
            etcd,
            layout: coord::Layout::new(&config.etcd_prefix),
            shard: config.shard.trim().to_string(),
            me,
            ttl: Duration::from_secs(config.lease_ttl_secs),
            data_dir: config.data_dir.clone(),
        };
        tasks.push(tokio::spawn(crate::election::coordinate(
            state.clone(),
            settings,
        )));
    }
    tracing::info!(
        listen = %listen_addr,
        replication = ?replication_addr,
        http = ?http_addr,
        role = ?store.role(),
        log_end = store.log_end(),
        "store node started"
    );
    Ok(RunningStoreNode {
        listen_addr,
        replication_addr,
        http_addr,
        store,
        hub,
        follow_status,
        state,
        tasks,
        shutdown,
    })
}

async fn healthz(State(s): State<Arc<NodeState>>) -> Response {
    if s.store.is_poisoned() {
        (StatusCode::SERVICE_UNAVAILABLE, "store is poisoned\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<NodeState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics(),
    )
        .into_response()
}

async fn summary(State(s): State<Arc<NodeState>>) -> Response {
    axum::Json(s.summary()).into_response()
}

async fn promote(State(s): State<Arc<NodeState>>) -> Response {
    match s.promote().await {
        Ok(end) => {
            axum::Json(serde_json::json!({"role": "leader", "log_end": end})).into_response()
        }
        Err(e) => (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
