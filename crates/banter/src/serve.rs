//! Wiring of `banter serve`: opens the store and the backend named by the configuration, starts the
//! access node on them, and shuts everything down in order (stop accepting, finish in-flight appends,
//! close sessions, flush write-behind state, close the store).

use std::sync::Arc;
use std::time::Duration;

use access::{AccessNode, App, Services, StoreClient};
use backend::groups::GroupDirectory;
use backend::moderation::{SharedWordFilter, WordFilter};
use backend::push::PushSink;
use backend::{Backend, EmbeddedGroupOptions, EmbeddedOptions, RedisOptions};
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
}

/// A running single-node server.
pub struct Running {
    pub node: AccessNode,
    pub store: Arc<Store>,
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

/// Opens the configured offline-push sink.
pub async fn open_push(config: &Config) -> Result<PushSink, ServeError> {
    let p = &config.push;
    Ok(match p.backend.as_str() {
        "redis" => PushSink::redis(p.redis.clone()).await?,
        "webhook" => PushSink::webhook(p.webhook.clone())?,
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

/// Starts everything; returns once every listener is bound.
pub async fn start(config: &Config) -> Result<Running, ServeError> {
    let dir = config.data.dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| ServeError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let opts = config.store.options().map_err(ServeError::Config)?;
    let store_dir = dir.join("store");
    let store = tokio::task::spawn_blocking(move || Store::open(store_dir, opts))
        .await
        .map_err(|e| ServeError::Config(format!("store open task failed: {e}")))??;
    let store = Arc::new(store);
    let backend = open_backend(config).await?;
    let groups = open_groups(config).await?;
    let push = open_push(config).await?;
    let words = open_words(config)?;
    let app = App::new(
        config.server.clone(),
        config.sync.clone(),
        config.api.clone(),
        Services {
            store: StoreClient::Local(store.clone()),
            backend: backend.clone(),
            groups,
            push: push.clone(),
            words,
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
        let store = self.store;
        match tokio::task::spawn_blocking(move || store.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "closing the store failed"),
            Err(e) => warn!(error = %e, "store close task failed"),
        }
        info!("banter stopped");
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let running = start(&config).await?;
    wait_for_signal().await;
    info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot install the SIGTERM handler; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
