//! The router node (`banter imr`, GoBelieve's `imr`): which access node holds which user and room,
//! cross-node forwarding, offline-push decisions, and online status over HTTP
//! (docs/internal-protocols.md, *route link*; docs/server-api.md, *Presence*).
//!
//! Access nodes dial [`RouterConfig::listen`] and speak the route protocol of
//! [`cluster::route_proto`] (GoBelieve's im and banter's access nodes alike). Per connection the
//! router keeps the users it subscribed (with their online flag) and its rooms (module `table`), and
//! forwards:
//!
//! * PUBLISH to every *other* connection that subscribed the user (whatever its online flag);
//! * PUBLISH_GROUP to every other connection;
//! * PUBLISH_ROOM to every other connection that subscribed the room;
//!
//! unchanged (the received body is shared by every receiver). PUSH requests become offline-push
//! jobs for receivers no connection has online (module `push`). Each connection has a bounded outbox
//! and a write deadline: a slow access node gets frames dropped (counted) and, if it stops reading,
//! is disconnected; it never stalls forwarding between the others (docs/compatibility.md, *Other
//! defects*: "`imr` writes to each `im`"). A closed connection's state is forgotten. A malformed
//! frame closes only its connection.
//!
//! The HTTP API is protected by `node::admin`: with `http_secret` set every request but `/healthz`
//! needs `Authorization: Bearer <secret>`; without one it may only listen on loopback.
//!
//! [`run`] binds the listeners and returns at once with their addresses; cancelling the shutdown
//! token stops accepting, closes the connections and flushes the push sink
//! ([`RunningRouter::wait`]).
#![forbid(unsafe_code)]

mod config;
mod conn;
mod http;
mod metrics;
mod push;
mod table;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use backend::push::PushSink;
use backend::BackendError;
use node::admin::{require_bearer, BearerAuth};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{
    default_toml, LimitsConfig, PushBackend, PushConfig, RouterClusterConfig, RouterConfig,
};

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Invalid configuration values (all of them).
    #[error("invalid router configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    /// The HTTP API would be exposed without a secret.
    #[error("invalid router configuration: {0}")]
    Exposed(String),
    /// The push sink could not be set up (e.g. Redis unreachable).
    #[error("offline push: {0}")]
    Push(#[from] BackendError),
}

/// Shared by every task of the router.
pub(crate) struct Router {
    config: RouterConfig,
    table: table::Table,
    push: PushSink,
    metrics: Arc<metrics::Metrics>,
    next_conn: AtomicU64,
}

/// A started router.
pub struct RunningRouter {
    /// The bound access-node listener.
    pub addr: SocketAddr,
    /// The bound HTTP listener, when enabled.
    pub http_addr: Option<SocketAddr>,
    tracker: TaskTracker,
    router: Arc<Router>,
}

/// How long [`RunningRouter::wait`] waits for the push sink to drain.
const PUSH_FLUSH: Duration = Duration::from_secs(10);

impl RunningRouter {
    /// Wait until the router has stopped (after the shutdown token is cancelled): listeners closed,
    /// connections closed, offline-push jobs flushed (bounded).
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
        match tokio::time::timeout(PUSH_FLUSH, self.router.push.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "offline push jobs not flushed at shutdown"),
            Err(_) => tracing::warn!("offline push flush timed out at shutdown"),
        }
        tracing::info!("router stopped");
    }

    /// Access-node connections open.
    pub fn connections(&self) -> usize {
        self.router.table.conns().len()
    }
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, RouterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RouterError::Bind {
            what,
            addr: addr.to_owned(),
            source,
        })
}

/// Start the router: validate the config, set up the push sink, bind the listeners, and serve
/// until `shutdown` is cancelled. Returns once listening.
pub async fn run(
    config: RouterConfig,
    shutdown: CancellationToken,
) -> Result<RunningRouter, RouterError> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(RouterError::Config(problems));
    }
    node::admin::check_exposure(
        &config.http_listen,
        &config.http_secret,
        "http_listen",
        "http_secret",
    )
    .await
    .map_err(RouterError::Exposed)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let push = match config.push.backend {
        PushBackend::None => PushSink::Disabled,
        PushBackend::Redis => PushSink::redis(config.push.redis.clone()).await?,
        PushBackend::Webhook => PushSink::webhook(config.push.webhook.clone())?,
        PushBackend::Native => {
            let backend = backend::Backend::open_redis(backend::RedisOptions {
                url: config.push.native_redis_url.clone(),
                ..backend::RedisOptions::default()
            })
            .await?;
            let dir = std::path::PathBuf::from(&config.push.native_data_dir);
            let meters = ::push::PushMetrics::register(&metrics.registry);
            let pusher = ::push::Pusher::start_with(&config.push.native, &dir, backend, meters)
                .await
                .map_err(|e| BackendError::InvalidArgument(e.to_string()))?;
            PushSink::Native(pusher)
        }
    };
    let listener = bind("access nodes", &config.listen).await?;
    let addr = listener.local_addr().map_err(|source| RouterError::Bind {
        what: "access nodes",
        addr: config.listen.clone(),
        source,
    })?;
    let http_listener = if config.http_listen.trim().is_empty() {
        None
    } else {
        Some(bind("HTTP", &config.http_listen).await?)
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let router = Arc::new(Router {
        config,
        table: table::Table::new(),
        push,
        metrics,
        next_conn: AtomicU64::new(0),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(conn::accept_loop(
        router.clone(),
        listener,
        shutdown.clone(),
        tracker.clone(),
    ));
    if let Some(l) = http_listener {
        let auth = BearerAuth::new(&router.config.http_secret, &["/healthz"], "http_secret");
        let app = http::router(router.clone())
            .layer(axum::middleware::from_fn_with_state(auth, require_bearer));
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = axum::serve(l, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "router HTTP listener stopped");
            }
        });
    }
    tracing::info!(%addr, http = ?http_addr, push = router.push.kind(), "router listening");
    Ok(RunningRouter {
        addr,
        http_addr,
        tracker,
        router,
    })
}
