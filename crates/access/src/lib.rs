//! The access node (GoBelieve's `im`): client listeners, sessions, message handlers, the local route
//! table and the HTTP API. [`AccessNode::start`] binds every configured listener and returns their
//! addresses; [`AccessNode::shutdown`] stops accepting, lets in-flight appends finish and closes sessions.
#![forbid(unsafe_code)]

mod admin;
mod admission;
mod api;
pub mod app;
pub mod app_api;
pub mod config;
mod console;
mod handlers;
mod health;
pub mod http;
mod listener;
pub mod metrics;
mod offline;
mod openapi;
pub mod route;
mod routed;
mod server_api;
mod session;
mod stats;
mod store_client;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

pub use app::{App, Routers, Services, StoreClient, StoreFailure};
pub use app_api::{AppApi, AppApiConfig};
pub use config::{ApiConfig, RelationshipsConfig, ServerConfig, SyncConfig};
pub use web::{DevSignin, WebConfig};

/// Why the node could not start. The operator's fault (configuration) or the environment's (ports).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {what} address {addr:?}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The addresses the node actually listens on (useful with port 0).
#[derive(Debug, Clone, Default)]
pub struct Addrs {
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// The app API's own listener (`app_api.listen`), when configured.
    pub app_api: Option<SocketAddr>,
}

/// A running access node.
pub struct AccessNode {
    pub app: Arc<App>,
    pub addrs: Addrs,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

async fn bind(what: &'static str, addr: &str) -> Result<Option<TcpListener>, StartError> {
    if addr.trim().is_empty() {
        return Ok(None);
    }
    listener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| StartError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

fn local(l: &Option<TcpListener>) -> Option<SocketAddr> {
    l.as_ref().and_then(|l| l.local_addr().ok())
}

/// The web client's router for one listener (`admin`: the operator API is served there too).
fn web_router(
    app: &Arc<App>,
    addrs: &Addrs,
    api: Option<&Arc<AppApi>>,
    admin: bool,
) -> utoipa_axum::router::OpenApiRouter {
    web::router(Arc::new(web::WebContext {
        config: app.web.clone(),
        backend: app.backend.clone(),
        ws: addrs.ws,
        wss: addrs.wss,
        app_api_prefix: api.map(|a| a.config.normalized_prefix()),
        app_api_public_url: api.map_or_else(String::new, |a| a.config.public_url.clone()),
        admin_api: admin,
        admin_secret_required: !app.api.secret.is_empty(),
        kefu_appid: app.server.kefu_appid,
        // Single-node mode: this node holds every session. In a cluster only the routers do.
        presence: (!app.links.is_enabled()).then(|| {
            let route = app.route.clone();
            let presence: web::Presence = Arc::new(move |appid, uid| route.is_online(appid, uid));
            presence
        }),
    }))
}

/// The API listener's router and its OpenAPI document (served at `/openapi.json`): the HTTP API with
/// the admin endpoints (groups, speak bans, the app API's data, the server API) behind the same
/// authentication and body limits, plus the app API and the web client when they are served there.
pub fn api_router(app: &Arc<App>, addrs: &Addrs) -> (axum::Router, utoipa::openapi::OpenApi) {
    let admin = admin::routes()
        .merge(app_api::admin_routes(
            app.backend.clone(),
            app.app_api.clone(),
        ))
        .merge(server_api::router())
        .merge(console::routes());
    let mut router = http::router(app.clone(), admin);
    let on_api = app.app_api.as_ref().filter(|a| a.config.on_api_listener);
    if let Some(api) = on_api {
        router = router.merge(app_api::router(
            app.backend.clone(),
            app.route.clone(),
            api.clone(),
            false,
        ));
    }
    if app.web.enabled {
        router = router.merge(web_router(app, addrs, on_api, true));
    }
    let (router, doc) = router.split_for_parts();
    let router = router
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(axum::Extension(openapi::Rendered::new(&doc)))
        .layer(axum::middleware::from_fn(openapi::json_errors));
    (router, doc)
}

impl AccessNode {
    /// Binds every configured listener, then starts serving.
    pub async fn start(app: Arc<App>) -> Result<AccessNode, StartError> {
        let cfg = &app.server;
        let needs_tls = !cfg.tls.trim().is_empty() || !cfg.wss.trim().is_empty();
        let acceptor = if needs_tls {
            if cfg.cert_file.is_empty() || cfg.key_file.is_empty() {
                return Err(StartError::Config(
                    "server.tls and server.wss need server.cert_file and server.key_file".into(),
                ));
            }
            Some(
                listener::tls_acceptor(&cfg.cert_file, &cfg.key_file)
                    .map_err(StartError::Config)?,
            )
        } else {
            None
        };
        if cfg.max_body == 0 || cfg.max_body > proto::MAX_BODY_LEN {
            return Err(StartError::Config(format!(
                "server.max_body must be between 1 and {}",
                proto::MAX_BODY_LEN
            )));
        }
        if app.api.max_body == 0
            || app.api.max_connections == 0
            || app.api.header_timeout_secs == 0
            || app.api.body_timeout_secs == 0
        {
            return Err(StartError::Config(
                "api.max_body, api.max_connections, api.header_timeout_secs and api.body_timeout_secs must be > 0".into(),
            ));
        }
        if cfg.max_connections == 0 || cfg.login_timeout_secs == 0 {
            return Err(StartError::Config(
                "server.max_connections and server.login_timeout_secs must be > 0".into(),
            ));
        }
        let api_listen = app.api.listen.trim().to_string();
        node::admin::check_exposure(&api_listen, &app.api.secret, "api.listen", "api.secret")
            .await
            .map_err(StartError::Config)?;
        let tcp = bind("server.tcp", &cfg.tcp).await?;
        let tls = bind("server.tls", &cfg.tls).await?;
        let ws = bind("server.ws", &cfg.ws).await?;
        let wss = bind("server.wss", &cfg.wss).await?;
        let http = bind("api.listen", &api_listen).await?;
        let app_api_listener = match &app.app_api {
            Some(api) => bind("app_api.listen", api.config.listen.trim()).await?,
            None => None,
        };
        let addrs = Addrs {
            tcp: local(&tcp),
            tls: local(&tls),
            ws: local(&ws),
            wss: local(&wss),
            http: local(&http),
            app_api: local(&app_api_listener),
        };
        let shutdown = app.shutdown.clone();
        let tracker = TaskTracker::new();
        if let Some((inbox, rx)) = app.take_routed() {
            let sd = shutdown.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = sd.cancelled() => {}
                    _ = routed::dispatch(inbox, rx) => {}
                }
            });
        }
        tracker.spawn(session::sweep(app.clone()));
        let ctx = listener::Ctx {
            app: app.clone(),
            permits: admission::Admission::new(cfg.max_connections, app.stats.clone(), |s| {
                &s.client_sockets
            }),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        if let Some(l) = tcp {
            tracker.spawn(listener::serve_stream(l, ctx.clone(), None));
        }
        if let (Some(l), Some(a)) = (tls, acceptor.clone()) {
            tracker.spawn(listener::serve_stream(l, ctx.clone(), Some(a)));
        }
        if let Some(l) = ws {
            tracker.spawn(listener::serve_ws(l, ctx.clone(), None));
        }
        if let (Some(l), Some(a)) = (wss, acceptor) {
            tracker.spawn(listener::serve_ws(l, ctx.clone(), Some(a)));
        }
        if let Some(l) = http {
            let (router, _) = api_router(&app, &addrs);
            tracker.spawn(listener::serve_api(
                l,
                app.clone(),
                router,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        if let (Some(l), Some(api)) = (app_api_listener, app.app_api.clone()) {
            // The same admission as the API listener: connection limit and header timeout.
            let web = web_router(&app, &addrs, Some(&api), false);
            let mut router = app_api::router(app.backend.clone(), app.route.clone(), api, true);
            if app.web.enabled {
                router = router.merge(web);
            }
            let (router, _) = router.split_for_parts();
            tracker.spawn(listener::serve_api(
                l,
                app.clone(),
                router.layer(axum::middleware::from_fn(openapi::json_errors)),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        tracing::debug!(?addrs, "access node listening");
        Ok(AccessNode {
            app,
            addrs,
            shutdown,
            tracker,
        })
    }

    /// Stops accepting, lets sessions finish what they are storing and closes them; waits at most `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("some sessions did not close within the grace period");
        }
    }
}
