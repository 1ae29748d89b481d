//! The cluster roles besides the access node: `banter imr` (router) and `banter ims` (store node), and
//! `banter ims promote`. Each runs until SIGINT/SIGTERM and stops cleanly.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::signals::Signals;

fn log_version() {
    info!(
        "banter {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("BUILD_GIT_COMMIT")
    );
}

/// Waits for SIGINT, SIGTERM, or `stopped` (the node stopped itself).
async fn wait_for_stop(signals: &mut Signals, stopped: &CancellationToken) {
    tokio::select! {
        _ = signals.next() => {}
        _ = stopped.cancelled() => {}
    }
}

/// Runs a router until a stop signal.
pub async fn run_router(config: route::RouterConfig) -> anyhow::Result<()> {
    let mut signals = Signals::install(false)?;
    let shutdown = CancellationToken::new();
    let config_cluster = config.cluster.clone();
    let node_id = config.node_id.clone();
    let running = route::run(config, shutdown.clone()).await?;
    log_version();
    info!("listening: route tcp://{}", running.addr);
    if let Some(http) = running.http_addr {
        info!("listening: http http://{http}");
    }
    let registration = crate::discovery::register_router(
        &config_cluster,
        &node_id,
        running.addr,
        running.http_addr,
    )?;
    info!("router ready");
    wait_for_stop(&mut signals, &shutdown).await;
    info!("router shutting down");
    if let Some((reg, _)) = registration {
        // deregister first, so access nodes stop sending to this router
        reg.stop().await;
    }
    shutdown.cancel();
    running.wait().await;
    Ok(())
}

/// Runs a store node until a stop signal.
pub async fn run_store_node(config: ims::StoreNodeConfig) -> anyhow::Result<()> {
    let mut signals = Signals::install(false)?;
    let shutdown = CancellationToken::new();
    let data = config.data_dir.clone();
    let running = ims::run(config, shutdown.clone()).await?;
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
    wait_for_stop(&mut signals, &shutdown).await;
    info!("store node shutting down");
    shutdown.cancel();
    running.wait().await?;
    Ok(())
}

/// Asks a follower store node to become the leader (`POST /promote` on its HTTP API at `http`,
/// `http://host:port` or `host:port`), with `Authorization: Bearer <secret>` when a secret is given
/// (the node's `http_secret`). Returns the node's JSON answer.
pub async fn promote(http: &str, secret: Option<&str>) -> anyhow::Result<String> {
    let base = http.trim_end_matches('/');
    let url = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let client = node::http_client::client(Duration::from_secs(30))?;
    let mut req = client.post(format!("{url}/promote"));
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        req = req.bearer_auth(s);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("POST {url}/promote: {e}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if status.is_success() {
        Ok(body)
    } else {
        anyhow::bail!("promotion refused (HTTP {}): {body}", status.as_u16())
    }
}
