//! Who is in the cluster: the key layout under the configured prefix, the records nodes publish
//! there, and [`Registration`], which keeps one node's record alive under a lease.
//!
//! Layout (docs/cluster.md, *etcd*), every key but the leader keys' terms bound to its node's
//! lease, so a node that dies disappears within the lease TTL:
//!
//! * `<prefix>/routers/<node_id>` → [`RouterRecord`]
//! * `<prefix>/access/<node_id>` → [`AccessRecord`]
//! * `<prefix>/stores/<shard>/<node_id>` → [`StoreRecord`] (refreshed with its positions)
//! * `<prefix>/leaders/<shard>` → [`LeaderRecord`]: the shard's leader, created by compare-and-swap
//!   under the leader's lease; the key's create revision is the leadership's **epoch**.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::etcd::Etcd;
use crate::lease::KeptLease;

/// Key names under one cluster prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// `prefix` like `/banter` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Layout {
        let p = prefix.trim().trim_end_matches('/');
        Layout {
            prefix: if p.is_empty() {
                "/banter".into()
            } else {
                p.to_string()
            },
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn routers(&self) -> String {
        format!("{}/routers/", self.prefix)
    }
    pub fn router(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.routers())
    }
    pub fn access_nodes(&self) -> String {
        format!("{}/access/", self.prefix)
    }
    pub fn access(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.access_nodes())
    }
    pub fn stores(&self) -> String {
        format!("{}/stores/", self.prefix)
    }
    pub fn shard_stores(&self, shard: &str) -> String {
        format!("{}{shard}/", self.stores())
    }
    pub fn store(&self, shard: &str, node_id: &str) -> String {
        format!("{}{node_id}", self.shard_stores(shard))
    }
    pub fn leaders(&self) -> String {
        format!("{}/leaders/", self.prefix)
    }
    pub fn leader(&self, shard: &str) -> String {
        format!("{}{shard}", self.leaders())
    }
    /// The shard named by a leader key (`None` for keys of other kinds).
    pub fn shard_of_leader_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.leaders()[..])
            .filter(|s| !s.is_empty())
    }
}

/// A router (`banter imr`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterRecord {
    pub node_id: String,
    /// Route listener (access nodes dial it).
    pub listen: String,
    #[serde(default)]
    pub http: String,
}

/// An access node (`banter im`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    pub node_id: String,
    #[serde(default)]
    pub tcp: String,
    #[serde(default)]
    pub ws: String,
    #[serde(default)]
    pub api: String,
}

/// A store node (`banter ims`), refreshed while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoreRecord {
    pub node_id: String,
    pub shard: String,
    /// Store link listener.
    pub listen: String,
    /// Replication listener.
    pub replication: String,
    #[serde(default)]
    pub http: String,
    /// `leader`, `follower` or `candidate` (not following anyone: leaderless shard).
    pub role: String,
    /// Its log end (what it holds, durable).
    pub log_end: u64,
    /// Follower: bytes behind its leader as far as it knows; leader: behind its best follower.
    #[serde(default)]
    pub lag_bytes: u64,
    /// The epoch it leads or follows (0 = none yet).
    #[serde(default)]
    pub epoch: i64,
    /// `async` or `sync`.
    #[serde(default)]
    pub replication_mode: String,
}

/// The value of a shard's leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub node_id: String,
    pub listen: String,
    pub replication: String,
    #[serde(default)]
    pub http: String,
}

/// Publishes one node's record under a lease until stopped (then revokes the lease, so the
/// record disappears at once). A lost lease (etcd unreachable longer than the TTL) is replaced
/// and the record written again; changes sent on the value channel are written as they come.
pub struct Registration {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Registration {
    /// Starts publishing `value` (its current and every later content) at `key`.
    pub fn start(
        etcd: Etcd,
        key: String,
        mut value: watch::Receiver<Vec<u8>>,
        ttl: Duration,
    ) -> Registration {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut backoff =
                node::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
            let mut failing = false;
            loop {
                let lease = tokio::select! {
                    _ = token.cancelled() => return,
                    l = KeptLease::start(&etcd, ttl) => l,
                };
                let lease = match lease {
                    Ok(l) => l,
                    Err(e) => {
                        if !failing {
                            tracing::warn!(key = %key, error = %e, "cannot register in etcd; retrying");
                            failing = true;
                        }
                        tokio::select! {
                            _ = token.cancelled() => return,
                            _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        }
                    }
                };
                let lost = lease.lost();
                let mut dirty = true;
                loop {
                    if dirty {
                        let v = value.borrow_and_update().clone();
                        match etcd.put(&key, &v, lease.id()).await {
                            Ok(_) => {
                                dirty = false;
                                if failing {
                                    tracing::info!(key = %key, "registered in etcd again");
                                    failing = false;
                                }
                                backoff.reset();
                            }
                            Err(e) => {
                                if !failing {
                                    tracing::warn!(key = %key, error = %e, "cannot update the etcd registration; retrying");
                                    failing = true;
                                }
                            }
                        }
                    }
                    let retry = tokio::time::sleep(if dirty {
                        backoff.next_delay()
                    } else {
                        Duration::from_secs(3600)
                    });
                    tokio::select! {
                        _ = token.cancelled() => {
                            lease.revoke().await;
                            return;
                        }
                        _ = lost.cancelled() => break,
                        r = value.changed() => {
                            if r.is_err() {
                                lease.revoke().await;
                                return;
                            }
                            dirty = true;
                        }
                        _ = retry => {}
                    }
                }
                tracing::warn!(key = %key, "etcd registration lease lost; registering again");
            }
        });
        Registration {
            stop,
            task: Some(task),
        }
    }

    /// Removes the record (revokes its lease) and stops.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
