//! Wiring of `banter serve`: opens the store and the backend named by the configuration, starts the
//! access node on them, and shuts everything down in order (stop accepting, finish in-flight appends,
//! close sessions, flush write-behind state, close the store).

use std::sync::Arc;
use std::time::Duration;

use access::{AccessNode, App, Routers, Services, StoreClient};
use backend::groups::GroupDirectory;
use backend::moderation::{SharedWordFilter, WordFilter};
use backend::push::PushSink;
use backend::relations::{MysqlRelationOptions, RelationDirectory};
use backend::{Backend, EmbeddedGroupOptions, EmbeddedOptions, RedisOptions};
use cluster::store_client::{RemoteStore, StorePoolOptions};
use store::Store;
use tracing::{info, warn};

use crate::config::{AuthBackend, Config, GroupsBackend, PushBackend};
use crate::load::{ConfigError, Loaded, Override, Problem};
use crate::signals::Request;

/// Why the server could not start; each variant names the component at fault.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("message store: {0}")]
    Store(#[from] store::StoreError),
    #[error("backend: {0}")]
    Backend(#[from] backend::BackendError),
    #[error("listeners: {0}")]
    Access(#[from] access::StartError),
    #[error("store nodes: {0}")]
    Remote(#[from] cluster::store_client::RemoteStoreError),
    #[error("media storage: {0}")]
    Media(#[from] media::MediaError),
    #[error("offline push: {0}")]
    Push(#[from] push::PushError),
}

/// A running access node (a whole single-node server, or one access node of a cluster).
pub struct Running {
    pub node: AccessNode,
    /// Registration and discovery through etcd (`cluster.etcd`).
    pub discovery: Option<crate::discovery::AccessDiscovery>,
    /// The embedded store, unless the node uses store nodes (`cluster.storage_addrs`).
    pub store: Option<Arc<Store>>,
    pub backend: Backend,
    pub push: PushSink,
}

/// Opens the configured backend.
pub async fn open_backend(config: &Config) -> Result<Backend, ServeError> {
    let auth = &config.auth;
    Ok(match auth.backend {
        AuthBackend::Redis => {
            Backend::open_redis(RedisOptions {
                url: auth.redis_url.clone(),
                jwt: auth.jwt.clone(),
                flush_interval_ms: auth.flush_interval_ms,
            })
            .await?
        }
        AuthBackend::Embedded => {
            Backend::open_embedded(EmbeddedOptions {
                path: config.data.dir.join("banter.db"),
                jwt: auth.jwt.clone(),
                flush_interval_ms: auth.flush_interval_ms,
            })
            .await?
        }
    })
}

/// Opens the embedded store, or connects to the store nodes when `cluster.storage_addrs` is set.
async fn open_store(
    config: &Config,
    metrics: &access::metrics::AccessMetrics,
) -> Result<(Option<Arc<Store>>, StoreClient), ServeError> {
    let c = &config.cluster;
    if !c.storage_addrs.is_empty() || (!c.etcd.is_empty() && !c.storage_shards.is_empty()) {
        let (storage, group) = if c.storage_addrs.is_empty() {
            // the shards' elected leaders (docs/cluster.md, "etcd"); followed afterwards
            crate::discovery::initial_store_addrs(c, Duration::from_secs(10))
                .await
                .map_err(|e| ServeError::Config(format!("cluster.etcd: {e}")))?
        } else {
            (c.storage_addrs.clone(), c.group_storage_addrs.clone())
        };
        let remote = RemoteStore::new(storage, group, StorePoolOptions::default())?;
        return Ok((None, StoreClient::Remote(Arc::new(remote))));
    }
    let mut opts = config.store.options();
    opts.histograms = metrics.store_histograms();
    let store_dir = config.data.dir.join("store");
    let store = tokio::task::spawn_blocking(move || Store::open(store_dir, opts))
        .await
        .map_err(|e| ServeError::Config(format!("store open task failed: {e}")))??;
    let store = Arc::new(store);
    Ok((Some(store.clone()), StoreClient::Local(store)))
}

/// Opens the configured group directory.
pub async fn open_groups(config: &Config) -> Result<GroupDirectory, ServeError> {
    let g = &config.groups;
    Ok(match g.backend {
        GroupsBackend::Mysql => GroupDirectory::open_mysql(g.mysql.clone()).await?,
        GroupsBackend::Embedded => {
            GroupDirectory::open_embedded(EmbeddedGroupOptions {
                path: config.data.dir.join("groups.db"),
                cache_groups: g.cache_groups,
                max_members: g.max_members,
            })
            .await?
        }
    })
}

/// Opens the friend and blacklist relations where the group directory lives: the embedded file, or
/// GoBelieve's MySQL tables through `groups.mysql` (following `relationship_stream` when this node
/// checks relations).
pub async fn open_relations(config: &Config) -> Result<RelationDirectory, ServeError> {
    let r = &config.relationships;
    Ok(match config.groups.backend {
        GroupsBackend::Mysql => {
            let m = &config.groups.mysql;
            RelationDirectory::open_mysql(MysqlRelationOptions {
                url: m.url.clone(),
                redis_url: m.redis_url.clone(),
                max_connections: m.max_connections,
                stream_max_len: m.stream_max_len,
                cache_pairs: r.cache_pairs,
                follow: r.checks(),
            })
            .await?
        }
        GroupsBackend::Embedded => {
            RelationDirectory::open_embedded(&config.data.dir.join("relations.db"), r.cache_pairs)
                .await?
        }
    })
}

/// Opens the configured offline-push sink (the native senders read devices, unread counts and
/// do-not-disturb settings from `backend`, keep their journal in the data directory and record their
/// metrics in `registry`, the node's `/metrics`).
pub async fn open_push(
    config: &Config,
    backend: &Backend,
    registry: &node::metrics::Registry,
) -> Result<PushSink, ServeError> {
    let p = &config.push;
    Ok(match p.backend {
        PushBackend::Redis => PushSink::redis(p.redis.clone()).await?,
        PushBackend::Webhook => PushSink::webhook(p.webhook.clone())?,
        PushBackend::Native => {
            let pusher = push::Pusher::start_with(
                &p.native,
                &config.data.dir,
                backend.clone(),
                push::PushMetrics::register(registry),
            )
            .await?;
            PushSink::Native(pusher)
        }
        PushBackend::None => PushSink::Disabled,
    })
}

/// Loads the word filter, when configured; it reloads itself when the file changes.
pub fn open_words(config: &Config) -> Result<Option<SharedWordFilter>, ServeError> {
    let m = &config.moderation;
    if m.words_file.trim().is_empty() {
        return Ok(None);
    }
    let interval = Duration::from_secs(m.reload_secs.max(1));
    Ok(Some(WordFilter::try_watch(&m.words_file, interval)?))
}

/// Opens the app API and its media storage, unless `app_api.enabled` is false.
pub fn open_app_api(config: &Config) -> Result<Option<Arc<access::AppApi>>, ServeError> {
    if !config.app_api.enabled {
        return Ok(None);
    }
    let media = Arc::new(media::Media::open(&config.media, &config.data.dir)?);
    info!(backend = media.storage().kind(), "media storage ready");
    Ok(Some(Arc::new(access::AppApi::new(
        config.app_api.clone(),
        media,
    ))))
}

/// An access node that shares routers with others but keeps tokens or groups in its own embedded
/// databases would disagree with its peers (a token granted on one node unknown on the next, a group
/// created on one node refused on the others): say so at start-up.
fn warn_unshared_state(config: &Config) {
    if config.cluster.route_addrs.is_empty() {
        return;
    }
    if config.auth.backend == AuthBackend::Embedded {
        warn!("cluster mode with auth.backend = \"embedded\": tokens granted on this node are unknown to the other access nodes (JWTs work everywhere); use auth.backend = \"redis\" to share them");
    }
    if config.app_api.enabled && config.media.backend == media::MediaBackend::Local {
        warn!("cluster mode with media.backend = \"local\": files uploaded to this node can only be downloaded from it; use media.backend = \"s3\" to share them");
    }
    if config.groups.backend == GroupsBackend::Embedded {
        warn!("cluster mode with groups.backend = \"embedded\": groups managed on this node are unknown to the other access nodes; use groups.backend = \"mysql\" to share them");
        if config.relationships.checks() {
            warn!("cluster mode with groups.backend = \"embedded\": friend and blacklist relations managed on this node are unknown to the other access nodes; use groups.backend = \"mysql\" to share them");
        }
    }
}

/// Everything that can be checked before the store is opened: listener addresses resolve, TLS files
/// are readable, the HTTP API is not exposed without a secret, the data directory is writable. Each
/// message starts with the key it is about.
pub fn preflight(config: &Config) -> Vec<String> {
    use std::net::ToSocketAddrs;
    let mut errors = Vec::new();
    let s = &config.server;
    let listeners = [
        ("server.tcp", &s.tcp),
        ("server.tls", &s.tls),
        ("server.ws", &s.ws),
        ("server.wss", &s.wss),
        ("api.listen", &config.api.listen),
        ("app_api.listen", &config.app_api.listen),
    ];
    for (key, addr) in listeners {
        if addr.trim().is_empty() {
            continue;
        }
        if let Err(e) = addr.to_socket_addrs() {
            errors.push(format!(
                "{key}: {addr:?} is not a usable HOST:PORT address: {e}"
            ));
        }
    }
    if !s.tls.trim().is_empty() || !s.wss.trim().is_empty() {
        for (key, file) in [
            ("server.cert_file", &s.cert_file),
            ("server.key_file", &s.key_file),
        ] {
            if file.trim().is_empty() {
                errors.push(format!("{key} is required with server.tls or server.wss"));
            } else if let Err(e) = std::fs::File::open(file) {
                errors.push(format!("{key}: cannot read {file}: {e}"));
            }
        }
    }
    let api = &config.api.listen;
    if !api.trim().is_empty() && config.api.secret.is_empty() {
        if let Ok(mut addrs) = api.to_socket_addrs() {
            if !addrs.all(|a| a.ip().is_loopback()) {
                errors.push(format!("api.listen: {api:?} is not a loopback address; set api.secret to expose the HTTP API"));
            }
        }
    }
    let c = &config.cluster;
    if !c.etcd.is_empty() {
        if c.node_id.trim().is_empty() || c.node_id.contains('/') {
            errors.push("cluster.node_id must be set (without '/') with cluster.etcd".into());
        }
        if !c.storage_addrs.is_empty() && !c.storage_shards.is_empty() {
            errors.push(
                "cluster.storage_addrs and cluster.storage_shards exclude each other: with etcd, \
                 list shard names in storage_shards"
                    .into(),
            );
        }
    } else if !c.storage_shards.is_empty() || !c.group_storage_shards.is_empty() {
        errors.push(
            "cluster.storage_shards needs cluster.etcd (the shards' leaders are found there)"
                .into(),
        );
    }
    if c.storage_shards.is_empty() && !c.group_storage_shards.is_empty() {
        errors.push("cluster.group_storage_shards needs cluster.storage_shards".into());
    }
    let dir = &config.data.dir;
    let probe = dir.join(".banter-write-test");
    let writable = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::remove_file(&probe));
    if let Err(e) = writable {
        errors.push(format!(
            "data.dir: {} is not a writable directory: {e}",
            dir.display()
        ));
    }
    errors
}

/// [`preflight`]'s problems, each with the source of the key it is about.
pub fn preflight_loaded(loaded: &Loaded<Config>) -> Result<(), ConfigError> {
    let problems: Vec<Problem> = preflight(&loaded.value)
        .into_iter()
        .map(|message| {
            let key = message.split([':', ' ']).next().unwrap_or("");
            Problem {
                source: loaded.sources.of(key),
                message,
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(problems))
    }
}

/// The start-up lines: version, data directory, and each listener as a URL.
fn log_listeners(addrs: &access::Addrs) {
    let listeners = [
        ("tcp", addrs.tcp, "tcp://", ""),
        ("tls", addrs.tls, "tls://", ""),
        ("ws", addrs.ws, "ws://", "/ws"),
        ("wss", addrs.wss, "wss://", "/ws"),
        ("http", addrs.http, "http://", ""),
        ("app_api", addrs.app_api, "http://", ""),
    ];
    for (name, addr, scheme, path) in listeners {
        if let Some(a) = addr {
            info!("listening: {name} {scheme}{a}{path}");
        }
    }
}

/// Starts everything; returns once every listener is bound.
pub async fn start(config: &Config) -> Result<Running, ServeError> {
    let problems = preflight(config);
    if !problems.is_empty() {
        return Err(ServeError::Config(problems.join("; ")));
    }
    let dir = config.data.dir.clone();
    info!(
        "banter {} (commit {}), data directory {}",
        env!("CARGO_PKG_VERSION"),
        env!("BUILD_GIT_COMMIT"),
        dir.display()
    );
    warn_unshared_state(config);
    let metrics = Arc::new(access::metrics::AccessMetrics::default());
    let (store, store_client) = open_store(config, &metrics).await?;
    let backend = open_backend(config).await?;
    let groups = open_groups(config).await?;
    let relations = open_relations(config).await?;
    let push = open_push(config, &backend, &metrics.registry).await?;
    let words = open_words(config)?;
    let app_api = open_app_api(config)?;
    let app = App::new(
        config.server.clone(),
        config.sync.clone(),
        config.api.clone(),
        Services {
            routers: Routers {
                route_addrs: config.cluster.route_addrs.clone(),
                group_route_addrs: config.cluster.group_route_addrs.clone(),
            },
            store: store_client,
            backend: backend.clone(),
            groups,
            relations,
            relationships: config.relationships.clone(),
            push: push.clone(),
            words,
            app_api,
            web: config.web.clone(),
            metrics,
        },
    );
    follow_forbidden(&app, &backend);
    let node = AccessNode::start(app).await?;
    log_listeners(&node.addrs);
    let discovery = if config.cluster.etcd.is_empty() {
        None
    } else {
        let c = &config.cluster;
        let adv = |a: Option<std::net::SocketAddr>| {
            a.map(|a| crate::discovery::advertise(&c.advertise_host, a))
                .unwrap_or_default()
        };
        let record = coord::AccessRecord {
            node_id: c.node_id.clone(),
            tcp: adv(node.addrs.tcp),
            ws: adv(node.addrs.ws),
            api: adv(node.addrs.http),
        };
        let remote = match &node.app.store {
            StoreClient::Remote(r) => Some(r.clone()),
            StoreClient::Local(_) => None,
        };
        Some(
            crate::discovery::AccessDiscovery::start(c, record, node.app.links.clone(), remote)
                .map_err(|e| ServeError::Config(format!("cluster.etcd: {e}")))?,
        )
    };
    info!(backend = backend.kind(), "banter is ready");
    Ok(Running {
        node,
        discovery,
        store,
        backend,
        push,
    })
}

/// Applies live speak-ban changes (Redis `speak_forbidden`, or the admin API) to connected sessions.
fn follow_forbidden(app: &Arc<App>, backend: &Backend) {
    let mut events = backend.forbidden_events();
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) => match app.upgrade() {
                    Some(app) => app.route.set_forbidden(ev.appid, ev.uid, ev.forbidden),
                    None => return,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "missed speak-ban updates");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

impl Running {
    /// Graceful stop: sessions finish what they are storing and close, then backend and store flush.
    pub async fn stop(self) {
        if let Some(d) = self.discovery {
            d.stop().await;
        }
        self.node.shutdown(Duration::from_secs(10)).await;
        if let Err(e) = self.backend.flush().await {
            warn!(error = %e, "flushing the backend at shutdown failed");
        }
        if let Err(e) = self.push.flush().await {
            warn!(error = %e, "flushing offline-push jobs at shutdown failed");
        }
        if let Some(store) = self.store {
            match tokio::task::spawn_blocking(move || store.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "closing the store failed"),
                Err(e) => warn!(error = %e, "store close task failed"),
            }
        }
        info!("banter stopped");
    }
}

impl Running {
    /// Applies a reloaded configuration's cluster address lists without a restart: routers are
    /// dialled or closed (with a full re-subscription on new links), store requests move to the new
    /// store nodes. Other changes need a restart and are reported.
    pub fn reload(&self, old: &Config, new: &Config) {
        let (o, n) = (&old.cluster, &new.cluster);
        if o.route_addrs != n.route_addrs || o.group_route_addrs != n.group_route_addrs {
            info!(route_addrs = ?n.route_addrs, group_route_addrs = ?n.group_route_addrs, "applying new router addresses");
            self.node
                .app
                .links
                .set_addrs(n.route_addrs.clone(), n.group_route_addrs.clone());
        }
        if o.storage_addrs != n.storage_addrs || o.group_storage_addrs != n.group_storage_addrs {
            match &self.node.app.store {
                StoreClient::Remote(r) if !n.storage_addrs.is_empty() => {
                    info!(storage_addrs = ?n.storage_addrs, group_storage_addrs = ?n.group_storage_addrs, "applying new store addresses");
                    if let Err(e) =
                        r.set_addrs(n.storage_addrs.clone(), n.group_storage_addrs.clone())
                    {
                        warn!(error = %e, "new store addresses refused; keeping the old ones");
                    }
                }
                _ => warn!("switching between the embedded store and store nodes needs a restart"),
            }
        }
        let mut rest_old = old.clone();
        rest_old.cluster = new.cluster.clone();
        if &rest_old != new {
            warn!("configuration changes outside [cluster] take effect at the next restart");
        }
    }
}

/// Runs until SIGINT or SIGTERM; SIGHUP re-reads `config_path` and applies the cluster address lists.
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    overrides: Vec<Override>,
) -> Result<(), ServeError> {
    let mut signals = crate::signals::Signals::install(true)
        .map_err(|e| ServeError::Config(format!("cannot install the signal handlers: {e}")))?;
    let running = start(&config).await?;
    let mut current = config;
    while signals.next().await == Request::Reload {
        let Some(path) = config_path.as_deref() else {
            warn!("SIGHUP: no config file to reload (started without --config)");
            continue;
        };
        match Config::load(Some(path), &overrides) {
            Ok(Loaded { value: mut new, .. }) => {
                new.data.dir = current.data.dir.clone();
                running.reload(&current, &new);
                current = new;
            }
            Err(e) => {
                warn!(error = %e, "SIGHUP: the new configuration is invalid; keeping the running one")
            }
        }
    }
    info!("shutting down");
    running.stop().await;
    Ok(())
}
