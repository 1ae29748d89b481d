//! Client listeners: TCP, raw TLS, WebSocket (`/ws`) and WSS, all feeding [`crate::session::run`].
//!
//! A connection permit is taken before a session is spawned and released when it ends, so
//! `max_connections` is a hard bound. TLS handshakes run in their own tasks under the login timeout, so a
//! stalled handshake never holds up the accept loop. Accept errors (e.g. out of file descriptors) are
//! logged and retried after a pause; they never end the listener.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::app::{App, Stats};
use crate::session;
use crate::transport::{StreamTransport, WsTransport};

/// Largest WebSocket message accepted (spec §2.5).
const MAX_WS_MESSAGE: usize = 65536;

/// What the accept loops share.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub app: Arc<App>,
    pub permits: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Ctx {
    fn permit(&self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                Stats::inc(&self.app.stats.connections_rejected);
                debug!("connection refused: max_connections reached");
                None
            }
        }
    }
}

/// Loads a certificate chain and private key (PEM) into a TLS acceptor using the ring provider.
pub fn tls_acceptor(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, String> {
    let certs = {
        let f = std::fs::File::open(cert_file)
            .map_err(|e| format!("cannot open cert_file {cert_file}: {e}"))?;
        rustls_pemfile::certs(&mut io::BufReader::new(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot read certificates from {cert_file}: {e}"))?
    };
    if certs.is_empty() {
        return Err(format!("no certificate found in {cert_file}"));
    }
    let key = {
        let f = std::fs::File::open(key_file)
            .map_err(|e| format!("cannot open key_file {key_file}: {e}"))?;
        rustls_pemfile::private_key(&mut io::BufReader::new(f))
            .map_err(|e| format!("cannot read the private key from {key_file}: {e}"))?
            .ok_or_else(|| format!("no private key found in {key_file}"))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate/key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_retry(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Accepts plain TCP (or, with `tls`, raw TLS) client connections until shutdown.
pub(crate) async fn serve_stream(listener: TcpListener, ctx: Ctx, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            c = accept_retry(&listener) => c,
        };
        let Some(permit) = ctx.permit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = ctx.app.clone();
        let shutdown = ctx.shutdown.clone();
        let max_body = app.server.max_body;
        match &tls {
            None => {
                ctx.tracker.spawn(async move {
                    session::run(app, StreamTransport::new(stream, max_body), peer, shutdown).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let login = Duration::from_secs(app.server.login_timeout_secs);
                ctx.tracker.spawn(async move {
                    match tokio::time::timeout(login, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            session::run(app, StreamTransport::new(tls, max_body), peer, shutdown)
                                .await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// The client's address, for both plain and TLS WebSocket listeners.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

async fn ws_upgrade(
    State(ctx): State<Ctx>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(permit) = ctx.permit() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
        )
            .into_response();
    };
    let app = ctx.app.clone();
    let shutdown = ctx.shutdown.clone();
    let tracker = ctx.tracker.clone();
    ws.max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| {
            let max_body = app.server.max_body;
            tracker.track_future(async move {
                session::run(app, WsTransport::new(socket, max_body), peer, shutdown).await;
                drop(permit);
            })
        })
}

fn ws_router(ctx: Ctx) -> Router {
    Router::new().route("/ws", get(ws_upgrade)).with_state(ctx)
}

/// Serves WebSocket clients on `/ws` until shutdown.
pub(crate) async fn serve_ws(listener: TcpListener, ctx: Ctx) {
    let shutdown = ctx.shutdown.clone();
    let router = ws_router(ctx);
    if let Err(e) = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    {
        warn!(error = %e, "websocket listener stopped");
    }
}

/// A listener of completed TLS connections; handshakes run in their own tasks and feed a channel.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The handshake task ended (shutdown): wait for graceful shutdown to stop the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves WebSocket-over-TLS clients on `/ws` until shutdown.
pub(crate) async fn serve_wss(listener: TcpListener, ctx: Ctx, acceptor: TlsAcceptor) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "wss listener has no local address");
            return;
        }
    };
    let (tx, rx) = mpsc::channel(128);
    let login = Duration::from_secs(ctx.app.server.login_timeout_secs);
    let shutdown = ctx.shutdown.clone();
    ctx.tracker.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = accept_retry(&listener) => c,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(login, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let shutdown = ctx.shutdown.clone();
    let router = ws_router(ctx);
    info!(%local, "wss listening");
    if let Err(e) = axum::serve(
        TlsListener { rx, local },
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    {
        warn!(error = %e, "wss listener stopped");
    }
}
