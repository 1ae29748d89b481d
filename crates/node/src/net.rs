//! The accept loop and socket options of the node listeners (router, store link, replication).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pause after a failed accept (e.g. out of descriptors), so the loop does not spin.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// TCP_NODELAY, and keepalive probes after `keepalive` idle (then every `keepalive`) when given.
/// Failures are only logged: the connection works without them.
pub fn set_socket_options(stream: &TcpStream, keepalive: Option<Duration>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if let Some(k) = keepalive {
        let ka = socket2::TcpKeepalive::new().with_time(k).with_interval(k);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled, handing each to `on_accept`
/// with its socket options set. An accept error is logged (throttled) and retried after
/// [`ACCEPT_PAUSE`], never fatal.
pub async fn accept_loop(
    listener: &TcpListener,
    what: &'static str,
    keepalive: Option<Duration>,
    shutdown: &CancellationToken,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                set_socket_options(&stream, keepalive);
                on_accept(stream, peer);
            }
            Err(e) => {
                crate::warn_throttled!(listener = what, error = %e, "accept failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => {}
                }
            }
        }
    }
}
