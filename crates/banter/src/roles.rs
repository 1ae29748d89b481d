//! The cluster roles besides the access node: `banter imr` (router) and `banter ims` (store node), and
//! `banter ims promote`. Each runs until SIGINT/SIGTERM and stops cleanly.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

fn log_version() {
    info!(
        "banter {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("BUILD_GIT_COMMIT")
    );
}

async fn wait_for_stop() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// Runs a router until a stop signal.
pub async fn run_router(config: route::RouterConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let running = route::run(config, shutdown.clone()).await?;
    log_version();
    info!("listening: route tcp://{}", running.addr);
    if let Some(http) = running.http_addr {
        info!("listening: http http://{http}");
    }
    info!("router ready");
    wait_for_stop().await?;
    info!("router shutting down");
    shutdown.cancel();
    running.wait().await;
    Ok(())
}

/// Runs a store node until a stop signal.
pub async fn run_store_node(config: cluster::store_node::StoreNodeConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let data = config.data_dir.clone();
    let running = cluster::store_node::run(config, shutdown.clone()).await?;
    log_version();
    info!("data directory {}", data.display());
    info!("listening: store tcp://{}", running.listen_addr);
    if let Some(a) = running.replication_addr {
        info!("listening: replication tcp://{a}");
    }
    if let Some(a) = running.http_addr {
        info!("listening: http http://{a}");
    }
    info!(role = ?running.role(), "store node ready");
    wait_for_stop().await?;
    info!("store node shutting down");
    shutdown.cancel();
    running.wait().await?;
    Ok(())
}

/// Asks a follower store node to become the leader (`POST /promote` on its HTTP API), with
/// `Authorization: Bearer <secret>` when a secret is given (the node's `http_secret`).
pub async fn promote(http: &str, secret: Option<&str>) -> anyhow::Result<String> {
    let hostport = http
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addr: SocketAddr = tokio::net::lookup_host(&hostport)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {hostport}"))?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    let auth = match secret.filter(|s| !s.is_empty()) {
        Some(s) => {
            if s.contains(['\r', '\n']) {
                anyhow::bail!("the secret must not contain line breaks");
            }
            format!("Authorization: Bearer {s}\r\n")
        }
        None => String::new(),
    };
    let req = format!("POST /promote HTTP/1.1\r\nHost: {hostport}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).unwrap_or("");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    if status == "200" {
        Ok(body)
    } else {
        anyhow::bail!("promotion refused (HTTP {status}): {body}")
    }
}
