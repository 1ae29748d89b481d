//! Wiring of `banter serve`: opens the store and the backend named by the configuration, starts the
//! access node on them, and shuts everything down in order (stop accepting, finish in-flight appends,
//! close sessions, flush write-behind state, close the store).

use std::sync::Arc;
use std::time::Duration;

use access::{AccessNode, App, Routers, Services, StoreClient};
use backend::groups::GroupDirectory;
use backend::moderation::{SharedWordFilter, WordFilter};
use backend::push::PushSink;
use backend::{Backend, EmbeddedGroupOptions, EmbeddedOptions, RedisOptions};
use cluster::store_client::{RemoteStore, StorePoolOptions};
use store::Store;
use tracing::{info, warn};

use crate::config::Config;

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
    /// The embedded store, unless the node uses store nodes (`cluster.storage_addrs`).
    pub store: Option<Arc<Store>>,
    pub backend: Backend,
    pub push: PushSink,
}

/// Opens the configured backend.
pub async fn open_backend(config: &Config) -> Result<Backend, ServeError> {
    let auth = &config.auth;
    Ok(match auth.backend.as_str() {
        "redis" => {
            Backend::open_redis(RedisOptions {
                url: auth.redis_url.clone(),
                jwt: auth.jwt.clone(),
                flush_interval_ms: auth.flush_interval_ms,
            })
            .await?
        }
        _ => {
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
async fn open_store(config: &Config) -> Result<(Option<Arc<Store>>, StoreClient), ServeError> {
    let c = &config.cluster;
    if !c.storage_addrs.is_empty() {
        let remote = RemoteStore::new(
            c.storage_addrs.clone(),
            c.group_storage_addrs.clone(),
            StorePoolOptions::default(),
        )?;
        return Ok((None, StoreClient::Remote(Arc::new(remote))));
    }
    let opts = config.store.options().map_err(ServeError::Config)?;
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
    Ok(match g.backend.as_str() {
        "mysql" => GroupDirectory::open_mysql(g.mysql.clone()).await?,
        _ => {
            GroupDirectory::open_embedded(EmbeddedGroupOptions {
                path: config.data.dir.join("groups.db"),
                cache_groups: g.cache_groups,
                max_members: g.max_members,
            })
            .await?
        }
    })
}

/// Opens the configured offline-push sink (the native senders read devices, unread counts and
/// do-not-disturb settings from `backend` and keep their journal in the data directory).
pub async fn open_push(config: &Config, backend: &Backend) -> Result<PushSink, ServeError> {
    let p = &config.push;
    Ok(match p.backend.as_str() {
        "redis" => PushSink::redis(p.redis.clone()).await?,
        "webhook" => PushSink::webhook(p.webhook.clone())?,
        "native" => {
            let pusher = push::Pusher::start(&p.native, &config.data.dir, backend.clone()).await?;
            PushSink::Native(pusher)
        }
        _ => PushSink::Disabled,
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
    if config.auth.backend == "embedded" {
        warn!("cluster mode with auth.backend = \"embedded\": tokens granted on this node are unknown to the other access nodes (JWTs work everywhere); use auth.backend = \"redis\" to share them");
    }
    if config.app_api.enabled && config.media.backend == "local" {
        warn!("cluster mode with media.backend = \"local\": files uploaded to this node can only be downloaded from it; use media.backend = \"s3\" to share them");
    }
    if config.groups.backend == "embedded" {
        warn!("cluster mode with groups.backend = \"embedded\": groups managed on this node are unknown to the other access nodes; use groups.backend = \"mysql\" to share them");
    }
}

/// Starts everything; returns once every listener is bound.
pub async fn start(config: &Config) -> Result<Running, ServeError> {
    let dir = config.data.dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| ServeError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    warn_unshared_state(config);
    let (store, store_client) = open_store(config).await?;
    let backend = open_backend(config).await?;
    let groups = open_groups(config).await?;
    let push = open_push(config, &backend).await?;
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
            push: push.clone(),
            words,
            app_api,
            web: config.web.clone(),
        },
    );
    follow_forbidden(&app, &backend);
    let node = AccessNode::start(app).await?;
    info!(data = %dir.display(), backend = backend.kind(), "banter is ready");
    Ok(Running {
        node,
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
) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let running = start(&config).await?;
    let mut current = config;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| ServeError::Config(format!("cannot install the SIGTERM handler: {e}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| ServeError::Config(format!("cannot install the SIGHUP handler: {e}")))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                let Some(path) = config_path.as_deref() else {
                    warn!("SIGHUP: no config file to reload (started without --config)");
                    continue;
                };
                match Config::load(Some(path)) {
                    Ok(mut new) => {
                        new.data.dir = current.data.dir.clone();
                        running.reload(&current, &new);
                        current = new;
                    }
                    Err(e) => warn!(error = %e, "SIGHUP: the new configuration is invalid; keeping the running one"),
                }
            }
        }
    }
    info!("shutting down");
    running.stop().await;
    Ok(())
}
