//! Client listeners: TCP, raw TLS, WebSocket (`/ws`) and WSS, all feeding [`crate::session::run`].
//!
//! A connection permit is taken before a session is spawned and released when it ends, so
//! `max_connections` is a hard bound. TLS handshakes run in their own tasks under the login timeout, so a
//! stalled handshake never holds up the accept loop. Accept errors (e.g. out of file descriptors) are
//! logged and retried after a pause; they never end the listener.
//!
//! Every listener (and the HTTP API's) is bound by [`bind`] with a listen backlog of [`LISTEN_BACKLOG`],
//! so a burst of connects (a reconnect storm after a restart or a network blip) waits in the kernel's
//! accept queue instead of overflowing it and costing each client a SYN retransmission (1 s or more).

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
use tokio::net::{TcpListener, TcpSocket, TcpStream};
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

/// WebSocket read buffer per connection. tungstenite's default (128 KiB, zero-filled on the first
/// read) made an idle WebSocket connection cost about 140 KB; larger messages still grow it as needed.
const WS_READ_BUFFER: usize = 4096;

/// Bytes of outgoing WebSocket messages gathered before they are written (the buffer keeps its
/// capacity for the life of the connection; tungstenite's default is 128 KiB). A flush writes
/// everything regardless.
const WS_WRITE_BUFFER: usize = 4096;

/// Listen backlog of every listener: connections the kernel completes and queues while the accept
/// loop catches up. The kernel caps it at `net.core.somaxconn` (4096 by default since Linux 5.4), so
/// that sysctl is the knob for deployments that expect larger bursts; a backlog of 128 (the Rust
/// standard library's) overflowed at 256 simultaneous connects.
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` (`host:port`; the first resolved address that can be bound) with
/// SO_REUSEADDR, so a restarted server can listen again while old connections are in TIME_WAIT, and a
/// listen backlog of [`LISTEN_BACKLOG`].
pub(crate) async fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last_err = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match bind_addr(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

fn bind_addr(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

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
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
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
