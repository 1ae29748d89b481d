//! Discovery through etcd (`[cluster] etcd = [...]`, docs/cluster.md, *etcd*): what every role
//! registers, what an access node follows, and `banter cluster status`.
//!
//! * An access node registers an `AccessRecord`, follows `<prefix>/routers/` (its router list
//!   becomes the live routers ordered by node id: links to new routers are dialled and users
//!   re-subscribed, exactly as after a SIGHUP) and `<prefix>/leaders/` (each configured store
//!   shard is served by its elected leader; a fail-over moves the shard's requests to the new
//!   leader as soon as its key appears).
//! * A router registers a `RouterRecord` (`banter imr` with `[cluster] etcd`).
//! * Store nodes register and elect themselves (`ims::election`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cluster::store_client::RemoteStore;
use coord::{
    AccessRecord, Etcd, Layout, LeaderRecord, Registration, RouterRecord, Snapshot, StoreRecord,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ClusterConfig;

/// The address a shard's requests go to while it has no leader: connections are refused at
/// once, so its requests fail fast as "unavailable" (clients resend; syncs are deferred).
pub const NO_LEADER: &str = "127.0.0.1:0";

/// An etcd client for `endpoints`.
pub fn client(endpoints: &[String]) -> anyhow::Result<Etcd> {
    Ok(Etcd::new(endpoints, Duration::from_secs(5))?)
}

/// `host:port` to register for a bound listener.
pub fn advertise(host: &str, addr: std::net::SocketAddr) -> String {
    if host.trim().is_empty() {
        addr.to_string()
    } else {
        format!("{}:{}", host.trim(), addr.port())
    }
}

/// Leader store addresses per shard, from a `<prefix>/leaders/` snapshot.
fn leader_addrs(layout: &Layout, snap: &Snapshot) -> BTreeMap<String, String> {
    snap.iter()
        .filter_map(|(k, kv)| {
            let shard = layout.shard_of_leader_key(k)?;
            let r: LeaderRecord = serde_json::from_slice(&kv.value).ok()?;
            Some((shard.to_string(), r.listen))
        })
        .collect()
}

/// Live router addresses ordered by node id, from a `<prefix>/routers/` snapshot.
fn router_addrs(snap: &Snapshot) -> Vec<String> {
    snap.values()
        .filter_map(|kv| serde_json::from_slice::<RouterRecord>(&kv.value).ok())
        .map(|r| r.listen)
        .collect()
}

fn map_shards(shards: &[String], leaders: &BTreeMap<String, String>) -> Vec<String> {
    shards
        .iter()
        .map(|s| leaders.get(s).cloned().unwrap_or_else(|| NO_LEADER.into()))
        .collect()
}

/// Reads the current leaders of `storage_shards` / `group_storage_shards`, waiting up to
/// `wait` for every shard to have one: the initial address lists of the store link.
pub async fn initial_store_addrs(
    c: &ClusterConfig,
    wait: Duration,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let etcd = client(&c.etcd)?;
    let layout = Layout::new(&c.etcd_prefix);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let leaders = match etcd.get_prefix(&layout.leaders()).await {
            Ok((_, kvs)) => {
                let snap: Snapshot =
                    Arc::new(kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect());
                leader_addrs(&layout, &snap)
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::anyhow!(
                    "cannot read the store leaders from etcd: {e}"
                ))
            }
            Err(_) => BTreeMap::new(),
        };
        let all = c
            .storage_shards
            .iter()
            .chain(c.group_storage_shards.iter())
            .all(|s| leaders.contains_key(s));
        if all || tokio::time::Instant::now() >= deadline {
            if !all {
                warn!("some store shards have no leader yet; their requests fail until one is elected");
            }
            return Ok((
                map_shards(&c.storage_shards, &leaders),
                map_shards(&c.group_storage_shards, &leaders),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An access node's part in discovery; stops (and deregisters) when dropped or stopped.
pub struct AccessDiscovery {
    stop: CancellationToken,
    registration: Option<Registration>,
    /// The registered record (it does not change; the registration ends if this is dropped).
    _record: watch::Sender<Vec<u8>>,
}

impl AccessDiscovery {
    /// Registers the access node and follows routers and store leaders.
    pub fn start(
        c: &ClusterConfig,
        record: AccessRecord,
        links: Arc<cluster::route_link::RouteLinks>,
        store: Option<Arc<RemoteStore>>,
    ) -> anyhow::Result<AccessDiscovery> {
        let etcd = client(&c.etcd)?;
        let layout = Layout::new(&c.etcd_prefix);
        let stop = CancellationToken::new();
        let (value_tx, value) = watch::channel(serde_json::to_vec(&record)?);
        let registration = Registration::start(
            etcd.clone(),
            layout.access(&record.node_id),
            value,
            Duration::from_secs(c.lease_ttl_secs.max(1)),
        );
        if c.route_addrs.is_empty() {
            let mut routers = coord::follow_prefix(etcd.clone(), layout.routers(), stop.clone());
            tokio::spawn(async move {
                let mut current: Option<Vec<String>> = None;
                while routers.changed().await.is_ok() {
                    let (ready, snap) = routers.borrow_and_update().clone();
                    if !ready {
                        continue;
                    }
                    let addrs = router_addrs(&snap);
                    if current.as_ref() != Some(&addrs) {
                        info!(routers = ?addrs, "live routers changed (etcd)");
                        links.set_live_routers(addrs.clone());
                        current = Some(addrs);
                    }
                }
            });
        }
        if let Some(store) = store.filter(|_| !c.storage_shards.is_empty()) {
            let mut leaders = coord::follow_prefix(etcd, layout.leaders(), stop.clone());
            let shards = c.storage_shards.clone();
            let group_shards = c.group_storage_shards.clone();
            tokio::spawn(async move {
                while leaders.changed().await.is_ok() {
                    let (ready, snap) = leaders.borrow_and_update().clone();
                    if !ready {
                        continue;
                    }
                    let map = leader_addrs(&layout, &snap);
                    let new = (map_shards(&shards, &map), map_shards(&group_shards, &map));
                    if store.addrs() != new {
                        info!(storage = ?new.0, group_storage = ?new.1, "store shard leaders changed (etcd)");
                        if let Err(e) = store.set_addrs(new.0, new.1) {
                            warn!(error = %e, "cannot apply the new store leaders");
                        }
                    }
                }
            });
        }
        Ok(AccessDiscovery {
            stop,
            registration: Some(registration),
            _record: value_tx,
        })
    }

    /// Deregisters and stops following.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(r) = self.registration.take() {
            r.stop().await;
        }
    }
}

impl Drop for AccessDiscovery {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Registers a router until the returned registration is stopped.
pub fn register_router(
    c: &route::RouterClusterConfig,
    node_id: &str,
    listen: std::net::SocketAddr,
    http: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<(Registration, watch::Sender<Vec<u8>>)>> {
    if c.etcd.is_empty() {
        return Ok(None);
    }
    if node_id.trim().is_empty() || node_id.contains('/') {
        anyhow::bail!("node_id must be set (without '/') to register the router in etcd");
    }
    if c.advertise_host.trim().is_empty() && listen.ip().is_unspecified() {
        anyhow::bail!(
            "listen {listen} is a wildcard address: set [cluster] advertise_host so access nodes can reach this router"
        );
    }
    let etcd = client(&c.etcd)?;
    let layout = Layout::new(&c.etcd_prefix);
    let rec = RouterRecord {
        node_id: node_id.to_string(),
        listen: advertise(&c.advertise_host, listen),
        http: http
            .map(|h| advertise(&c.advertise_host, h))
            .unwrap_or_default(),
    };
    let (tx, rx) = watch::channel(serde_json::to_vec(&rec)?);
    let reg = Registration::start(
        etcd,
        layout.router(node_id),
        rx,
        Duration::from_secs(c.lease_ttl_secs.max(1)),
    );
    info!(key = %layout.router(node_id), listen = %rec.listen, "registered in etcd");
    Ok(Some((reg, tx)))
}

/// `banter cluster status`: every registered node, each shard's leader and epoch, and every
/// store node's position and lag, as text.
pub async fn status(endpoints: &[String], prefix: &str) -> anyhow::Result<String> {
    use std::fmt::Write;
    let etcd = client(endpoints)?;
    let layout = Layout::new(prefix);
    let (rev, kvs) = etcd.get_prefix(&format!("{}/", layout.prefix())).await?;
    let mut out = String::new();
    let get = |p: String| kvs.iter().filter(move |kv| kv.key.starts_with(&p));
    writeln!(out, "cluster {} (etcd revision {rev})", layout.prefix())?;
    writeln!(out, "\nrouters:")?;
    for kv in get(layout.routers()) {
        if let Ok(r) = serde_json::from_slice::<RouterRecord>(&kv.value) {
            writeln!(
                out,
                "  {:<16} listen {:<22} http {}",
                r.node_id, r.listen, r.http
            )?;
        }
    }
    writeln!(out, "\naccess nodes:")?;
    for kv in get(layout.access_nodes()) {
        if let Ok(r) = serde_json::from_slice::<AccessRecord>(&kv.value) {
            writeln!(
                out,
                "  {:<16} tcp {:<22} ws {:<22} api {}",
                r.node_id, r.tcp, r.ws, r.api
            )?;
        }
    }
    let leaders: BTreeMap<String, (i64, LeaderRecord)> = get(layout.leaders())
        .filter_map(|kv| {
            let shard = layout.shard_of_leader_key(&kv.key)?.to_string();
            let r = serde_json::from_slice::<LeaderRecord>(&kv.value).ok()?;
            Some((shard, (kv.create_revision, r)))
        })
        .collect();
    let mut stores: BTreeMap<String, Vec<StoreRecord>> = BTreeMap::new();
    for kv in get(layout.stores()) {
        if let Ok(r) = serde_json::from_slice::<StoreRecord>(&kv.value) {
            stores.entry(r.shard.clone()).or_default().push(r);
        }
    }
    for shard in leaders.keys() {
        stores.entry(shard.clone()).or_default();
    }
    writeln!(out, "\nstore shards:")?;
    for (shard, members) in &stores {
        match leaders.get(shard) {
            Some((epoch, l)) => writeln!(
                out,
                "  shard {shard}: leader {} (epoch {epoch}) store {} replication {}",
                l.node_id, l.listen, l.replication
            )?,
            None => writeln!(out, "  shard {shard}: NO LEADER")?,
        }
        for m in members {
            writeln!(
                out,
                "    {:<16} {:<9} log_end {:<16} lag_bytes {:<10} epoch {:<8} {} store {}",
                m.node_id, m.role, m.log_end, m.lag_bytes, m.epoch, m.replication_mode, m.listen
            )?;
        }
    }
    Ok(out)
}
