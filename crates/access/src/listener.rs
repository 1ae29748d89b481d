//! Client listeners: TCP, raw TLS, WebSocket (`/ws`) and WSS, all feeding [`crate::session::spawn`], and
//! the HTTP API's listener ([`serve_api`]).
//!
//! A connection permit is taken the moment a connection is accepted, before any TLS handshake or
//! WebSocket upgrade, and released when the connection ends, so `server.max_connections` bounds every
//! open client socket (a connection beyond it is closed at once; a plain WebSocket one gets a 503
//! first). One login deadline runs from accept to authentication (`server.login_timeout_secs`): the TLS
//! handshake, the HTTP upgrade and the session's wait for AUTH_TOKEN all count against it. Handshakes
//! and upgrades run in each connection's own task, so a stalled client never holds up an accept loop;
//! the session then gets a task of its own whose future is the session's as it is (it
//! holds the connection permit), so nothing of the accept, handshake or upgrade stays in an idle
//! connection's task.
//! HTTP request heads (WebSocket upgrades and API requests) are limited to [`MAX_HEADER_BYTES`]. Accept
//! errors (e.g. out of file descriptors) are logged and retried after a pause; they never end the
//! listener.
//!
//! The HTTP API has its own permits (`api.max_connections`; a connection beyond them gets a 503 with a
//! JSON error) and a header-read timeout (`api.header_timeout_secs`) from the connection's start and
//! between keep-alive requests; bodies are bounded by `http`.
//!
//! Every listener (and the HTTP API's) is bound by [`bind`] with a listen backlog of [`LISTEN_BACKLOG`],
//! so a burst of connects (a reconnect storm after a restart or a network blip) waits in the kernel's
//! accept queue instead of overflowing it and costing each client a SYN retransmission (1 s or more).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use crate::admission::{Admission, Permit};
use crate::app::{App, Stats};
use crate::session;
use crate::transport::{StreamTransport, WsTransport};

/// Largest WebSocket message accepted (docs/protocol.md §2.3).
const MAX_WS_MESSAGE: usize = 65536;

/// WebSocket read buffer per connection, which tungstenite keeps for the life of the connection and
/// also uses as the most it reads per call. tungstenite's default (128 KiB, zero-filled on the first
/// read) made an idle WebSocket connection cost about 140 KB, 4 KiB about 8 KB; at 512 bytes a read
/// still takes a few typical frames (clients send one message at a time), and larger messages grow
/// the buffer as needed (docs/benchmarks.md, Connections).
const WS_READ_BUFFER: usize = 512;

/// Bytes of outgoing WebSocket messages gathered before they are written (the buffer keeps its
/// capacity for the life of the connection; tungstenite's default is 128 KiB). A flush writes
/// everything regardless.
const WS_WRITE_BUFFER: usize = 4096;

/// Largest HTTP request head (request line and headers) accepted on the WebSocket and API listeners;
/// a larger one gets 431 and its connection is closed. Browsers' upgrade requests with cookies fit
/// easily; the bound keeps what a slow client can make the server buffer small.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;

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
    pub permits: Arc<Admission>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Ctx {
    fn permit(&self) -> Option<Permit> {
        match Permit::try_new(&self.permits) {
            Some(p) => Some(p),
            None => {
                Stats::inc(&self.app.stats.connections_rejected);
                debug!("connection refused: server.max_connections reached");
                None
            }
        }
    }

    /// The login deadline of a connection accepted now.
    fn login_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.app.server.login_timeout_secs)
    }
}

/// Loads a certificate chain and private key (PEM) into a TLS acceptor using the ring provider.
pub fn tls_acceptor(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read cert_file {cert_file}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read certificates from {cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {cert_file}"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read the private key from {key_file}: {e}"))?;
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

/// Answers a connection refused for lack of permits with `503` and `body` (JSON) and closes it, without
/// waiting for anything: what the client already sent is discarded first, so that closing the socket
/// does not reset the connection before the client reads the answer.
fn refuse_http(stream: TcpStream, body: &str) {
    let Ok(mut s) = stream.into_std() else {
        return;
    };
    // Non-blocking: read only what is already there, at most a few buffers' worth.
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        match s.read(&mut buf) {
            Ok(n) if n == buf.len() => continue,
            _ => break,
        }
    }
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write(response.as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// Accepts plain TCP (or, with `tls`, raw TLS) client connections until shutdown.
pub(crate) async fn serve_stream(listener: TcpListener, ctx: Ctx, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            c = accept_retry(&listener) => c,
        };
        let deadline = ctx.login_deadline();
        let Some(permit) = ctx.permit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = ctx.app.clone();
        let shutdown = ctx.shutdown.clone();
        let max_body = app.server.max_body;
        // The session future is spawned as it is (see `session::spawn`): it holds the permit itself.
        match &tls {
            None => {
                let t = StreamTransport::new(stream, max_body);
                session::spawn(&ctx.tracker, app, t, peer, deadline, permit);
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tracker = ctx.tracker.clone();
                // The handshake runs in a task of its own, which hands the connection to a new session
                // task: the handshake's state is not kept for the life of the connection.
                ctx.tracker.spawn(async move {
                    let handshake = tokio::select! {
                        _ = shutdown.cancelled() => None,
                        r = timeout_at(deadline, acceptor.accept(stream)) => Some(r),
                    };
                    match handshake {
                        Some(Ok(Ok(tls))) => {
                            let t = StreamTransport::new(tls, max_body);
                            session::spawn(&tracker, app, t, peer, deadline, permit);
                        }
                        Some(Ok(Err(e))) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Some(Err(_)) => debug!(%peer, "TLS handshake timed out (login timeout)"),
                        None => {}
                    }
                });
            }
        }
    }
}

/// What the WebSocket upgrade handler learns about its connection: the client's address, the login
/// deadline set at accept, and the connection's permit, which the session takes over.
#[derive(Clone)]
struct WsConn {
    peer: SocketAddr,
    deadline: Instant,
    permit: Arc<Mutex<Option<Permit>>>,
}

async fn ws_upgrade(
    State(ctx): State<Ctx>,
    Extension(conn): Extension<WsConn>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Browser pages may open a session only from allowed origins (`server.ws_allowed_origins`).
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if !web::ws_origin_allowed(
        &ctx.app.server.ws_allowed_origins,
        text(header::ORIGIN),
        text(header::HOST),
    ) {
        debug!(peer = %conn.peer, origin = ?text(header::ORIGIN), "websocket origin refused");
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"this page's origin may not connect (server.ws_allowed_origins)"}"#,
        )
            .into_response();
    }
    let Some(permit) = conn.permit.lock().take() else {
        // A connection upgrades once; this cannot happen, but must not run a session without a permit.
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let app = ctx.app.clone();
    let tracker = ctx.tracker.clone();
    let (peer, deadline) = (conn.peer, conn.deadline);
    ws.max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            // The session gets a task of its own rather than running inside the upgrade's task, which
            // would keep the upgrade's state (and this closure's captures) beside it while idle.
            let t = WsTransport::new(socket, app.server.max_body);
            session::spawn(&tracker, app, t, peer, deadline, permit);
            std::future::ready(())
        })
}

fn ws_router(ctx: Ctx) -> Router {
    Router::new().route("/ws", get(ws_upgrade)).with_state(ctx)
}

/// Runs the HTTP side of one WebSocket-port connection until it upgrades (the session then runs in its
/// own task), fails, or reaches its login deadline.
async fn ws_http<I>(io: I, router: Router, conn: WsConn, shutdown: &CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (peer, deadline) = (conn.peer, conn.deadline);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        router.clone().call(req)
    });
    let http = http1::Builder::new()
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        r = http => if let Err(e) = r {
            debug!(%peer, error = %e, "websocket upgrade failed");
        },
        _ = sleep_until(deadline) => debug!(%peer, "websocket upgrade timed out (login timeout)"),
        _ = shutdown.cancelled() => {}
    }
}

/// Serves WebSocket (or, with `tls`, WebSocket-over-TLS) clients on `/ws` until shutdown.
pub(crate) async fn serve_ws(listener: TcpListener, ctx: Ctx, tls: Option<TlsAcceptor>) {
    let router = ws_router(ctx.clone());
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            c = accept_retry(&listener) => c,
        };
        let deadline = ctx.login_deadline();
        let Some(permit) = ctx.permit() else {
            if tls.is_none() {
                refuse_http(
                    stream,
                    r#"{"meta":{"code":503,"message":"too many connections (server.max_connections)"}}"#,
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = WsConn {
            peer,
            deadline,
            permit: Arc::new(Mutex::new(Some(permit))),
        };
        let router = router.clone();
        let shutdown = ctx.shutdown.clone();
        let acceptor = tls.clone();
        ctx.tracker.spawn(async move {
            let Some(acceptor) = acceptor else {
                return ws_http(stream, router, conn, &shutdown).await;
            };
            let handshake = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = timeout_at(deadline, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(tls)) => ws_http(tls, router, conn, &shutdown).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out (login timeout)"),
            }
        });
    }
}

/// Serves the HTTP API (`router`) until shutdown: at most `api.max_connections` connections, request
/// heads within `api.header_timeout_secs` and [`MAX_HEADER_BYTES`]. On shutdown, idle connections
/// close at once and requests in progress are finished.
pub(crate) async fn serve_api(
    listener: TcpListener,
    app: Arc<App>,
    router: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Admission::new(app.api.max_connections, app.stats.clone(), |s| {
        &s.api_connections
    });
    let header_timeout = Duration::from_secs(app.api.header_timeout_secs.max(1));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = accept_retry(&listener) => c,
        };
        let Some(permit) = Permit::try_new(&permits) else {
            Stats::inc(&app.stats.api_connections_rejected);
            debug!(%peer, "HTTP connection refused: api.max_connections reached");
            refuse_http(
                stream,
                r#"{"meta":{"code":503,"message":"too many connections (api.max_connections)"}}"#,
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                // The web client's dev sign-in is allowed by peer address.
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().call(req)
            });
            let http = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_header_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(http);
            let r = tokio::select! {
                r = http.as_mut() => r,
                _ = shutdown.cancelled() => {
                    http.as_mut().graceful_shutdown();
                    http.await
                }
            };
            if let Err(e) = r {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}
