//! A store node's shared state: the store, replication on both sides, the follow loop (started,
//! switched and stopped), promotion, the fence and the `/summary` and `/metrics` documents. Shared
//! by the HTTP API (`service`), the etcd coordination (`election`) and the start-up (`service::run`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use store::{Role, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fence::Fence;
use crate::replication::{follow, FollowOptions, FollowStatus, ReplicationHub};
use crate::server::StoreServerMetrics;

/// When an append is acknowledged, relative to replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Once durable on this node.
    #[default]
    Async,
    /// Once a follower has acknowledged it durable too (or fail after `sync_timeout_ms`).
    Sync,
}

/// Why a promotion was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    #[error("this store node is already a leader")]
    AlreadyLeader,
    /// The store could not start its new position range (e.g. a disk failure).
    #[error("the store could not be promoted: {0}")]
    Store(String),
}

/// State shared by the node's tasks and its HTTP API.
pub(crate) struct NodeState {
    /// The node's Prometheus registry.
    pub(crate) registry: node::metrics::Registry,
    pub(crate) store: Arc<Store>,
    pub(crate) hub: Arc<ReplicationHub>,
    pub(crate) server_metrics: Arc<StoreServerMetrics>,
    pub(crate) follow_status: Arc<FollowStatus>,
    /// The leader followed now ("" = none).
    pub(crate) follow_addr: parking_lot::Mutex<String>,
    pub(crate) mode: ReplicationMode,
    /// The follow loop and the token that stops it, while following.
    pub(crate) follower: tokio::sync::Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    /// Settings of the follow loops this node starts.
    pub(crate) follow_template: FollowOptions,
    /// Appends are acknowledged only while this holds (etcd mode: the leadership lease).
    pub(crate) fence: Arc<Fence>,
    /// Why the node stopped itself (etcd mode), reported by `wait`.
    pub(crate) deposed: parking_lot::Mutex<Option<String>>,
    /// Cancels the whole node.
    pub(crate) shutdown: CancellationToken,
    /// The leadership epoch this node leads or follows (etcd mode; 0 = none).
    pub(crate) epoch: std::sync::atomic::AtomicU64,
}

impl NodeState {
    /// Follows `addr` (a leader's replication listener) holding leadership `epoch`, stopping the
    /// loop that followed another one first.
    pub(crate) async fn follow_leader(&self, addr: &str, epoch: u64) {
        let mut f = self.follower.lock().await;
        if let Some((token, task)) = f.take() {
            token.cancel();
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "follow task ended abnormally");
            }
        }
        if self.store.role() == Role::Leader {
            return;
        }
        let opts = FollowOptions {
            epoch,
            ..self.follow_template.clone()
        };
        let token = self.shutdown.child_token();
        let task = tokio::spawn(follow(
            addr.to_string(),
            self.store.clone(),
            opts,
            token.clone(),
        ));
        *f = Some((token, task));
        *self.follow_addr.lock() = addr.to_string();
        self.epoch.store(epoch, Ordering::Release);
    }

    /// Stops following (after the batches already received are durable).
    pub(crate) async fn stop_following(&self) {
        let mut f = self.follower.lock().await;
        if let Some((token, task)) = f.take() {
            token.cancel();
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "follow task ended abnormally");
            }
        }
        self.follow_addr.lock().clear();
    }

    /// Leader: the bytes between the best follower and the log end; follower: behind the leader.
    pub(crate) fn lag_bytes(&self) -> u64 {
        self.lag()
    }

    pub(crate) async fn promote(&self) -> Result<u64, PromoteError> {
        let mut f = self.follower.lock().await;
        if self.store.role() == Role::Leader {
            return Err(PromoteError::AlreadyLeader);
        }
        if let Some((token, task)) = f.take() {
            token.cancel();
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "follow task ended abnormally");
            }
        }
        // Continue above the old leader's end as well as it was last reported.
        let leader_end = self.follow_status.leader_end.load(Ordering::Acquire);
        let end = self
            .store
            .promote_past(leader_end)
            .await
            .map_err(|e| PromoteError::Store(e.to_string()))?;
        tracing::info!(
            log_end = end,
            leader_end,
            "store promoted to leader; its keys continue above every position the old leader could have used"
        );
        Ok(end)
    }

    pub(crate) fn summary(&self) -> serde_json::Value {
        let st = self.store.stats();
        let m = &self.server_metrics;
        let leader = self.store.role() == Role::Leader;
        let appends = m.appends.load(Ordering::Relaxed);
        let syncs = m.syncs.load(Ordering::Relaxed);
        let reads = m.reads.load(Ordering::Relaxed);
        let errors = m.errors.load(Ordering::Relaxed);
        let followers: Vec<serde_json::Value> = self
            .hub
            .followers()
            .into_iter()
            .map(|f| {
                serde_json::json!({
                    "peer": f.peer.to_string(),
                    "acked": f.acked,
                    "sent": f.sent,
                    "lag_bytes": self.store.log_bytes_between(f.acked, st.log_end),
                    "connected_secs": f.connected_for.as_secs(),
                })
            })
            .collect();
        let fs = &self.follow_status;
        serde_json::json!({
            "role": if leader { "leader" } else { "follower" },
            "replication_mode": match self.mode { ReplicationMode::Async => "async", ReplicationMode::Sync => "sync" },
            "poisoned": self.store.is_poisoned(),
            "log_start": st.log_start,
            "log_end": st.log_end,
            "commit_index": self.store.visible_limit(),
            "queues": st.queues,
            "segments": st.segments,
            "messages_appended": st.messages,
            "request_count": appends + syncs + reads + errors,
            "appends": appends,
            "appended_messages": m.appended_messages.load(Ordering::Relaxed),
            "syncs": syncs,
            "reads": reads,
            "errors": errors,
            "replication_timeouts": m.replication_timeouts.load(Ordering::Relaxed),
            "connections": m.connections.load(Ordering::Relaxed),
            "replication_lag_bytes": self.lag(),
            "followers": followers,
            "epoch": self.epoch.load(Ordering::Relaxed),
            "following": if self.follow_addr.lock().is_empty() || leader { serde_json::Value::Null } else {
                serde_json::json!({
                    "leader": self.follow_addr.lock().clone(),
                    "connected": fs.connected.load(Ordering::Relaxed),
                    "leader_end": fs.leader_end.load(Ordering::Relaxed),
                    "applied": fs.applied.load(Ordering::Relaxed),
                    "last_error": fs.last_error.lock().clone(),
                })
            },
        })
    }

    /// Leader: the log bytes between the best follower acknowledgement and its end (not
    /// counting the gap of a promotion's position jump). Follower: how far behind the leader it
    /// knows itself to be.
    fn lag(&self) -> u64 {
        if self.store.role() == Role::Leader {
            self.store
                .log_bytes_between(self.hub.best_acked(), self.store.log_end())
        } else {
            self.follow_status.lag()
        }
    }

    pub(crate) fn metrics(&self) -> String {
        let st = self.store.stats();
        let m = &self.server_metrics;
        let leader = self.store.role() == Role::Leader;
        let reg = &self.registry;
        let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        reg.set_gauge(
            "banter_ims_leader",
            "1 if this store accepts appends (leader), 0 if it is a follower.",
            (u64::from(leader)) as f64,
        );
        reg.set_counter(
            "banter_ims_appends_total",
            "Append requests answered successfully.",
            c(&m.appends),
        );
        reg.set_counter(
            "banter_ims_appended_messages_total",
            "Messages in successful append requests.",
            c(&m.appended_messages),
        );
        reg.set_counter(
            "banter_ims_syncs_total",
            "Sync requests answered successfully.",
            c(&m.syncs),
        );
        reg.set_counter(
            "banter_ims_reads_total",
            "Other read requests answered successfully.",
            c(&m.reads),
        );
        reg.set_counter(
            "banter_ims_errors_total",
            "Requests answered with an error.",
            c(&m.errors),
        );
        reg.set_counter(
            "banter_ims_replication_timeouts_total",
            "Appends not acknowledged by a follower in time (sync mode).",
            c(&m.replication_timeouts),
        );
        reg.set_counter(
            "banter_ims_protocol_errors_total",
            "Store link connections closed for a protocol violation.",
            c(&m.protocol_errors),
        );
        reg.set_gauge(
            "banter_ims_connections",
            "Store link connections open.",
            (c(&m.connections)) as f64,
        );
        reg.set_gauge(
            "banter_ims_log_end_bytes",
            "Position after the newest acknowledged record.",
            (st.log_end) as f64,
        );
        reg.set_gauge(
            "banter_ims_commit_index_bytes",
            "Readers see entries below this position: what a follower confirmed (sync mode), else the log end.",
            (self.store.visible_limit()) as f64,
        );
        reg.set_gauge(
            "banter_ims_log_start_bytes",
            "Oldest retained log position.",
            (st.log_start) as f64,
        );
        reg.set_gauge(
            "banter_ims_queues",
            "Queues in the store.",
            (st.queues as u64) as f64,
        );
        reg.set_counter("banter_ims_fsyncs_total", "fsyncs of the log.", st.fsyncs);
        reg.set_counter(
            "banter_ims_group_commits_total",
            "Group commits (writes) of the log.",
            st.batches,
        );
        reg.set_gauge(
            "banter_ims_replication_lag_bytes",
            "Leader: log end minus the best follower acknowledgement. Follower: leader end minus applied.",
            (self.lag()) as f64,
        );
        reg.set_gauge(
            "banter_ims_replication_followers",
            "Followers connected to this node.",
            (self.hub.followers().len() as u64) as f64,
        );
        reg.set_gauge(
            "banter_ims_replication_acked_bytes",
            "Highest position a follower acknowledged durable.",
            (self.hub.acked()) as f64,
        );
        reg.set_counter(
            "banter_ims_replication_sent_bytes_total",
            "Log bytes sent to followers.",
            c(&self.hub.bytes_sent),
        );
        reg.set_counter(
            "banter_ims_replication_received_bytes_total",
            "Log bytes received from the leader.",
            c(&self.follow_status.bytes),
        );
        reg.set_gauge(
            "banter_ims_replication_connected",
            "Follower: 1 while connected to its leader.",
            (u64::from(self.follow_status.connected.load(Ordering::Relaxed))) as f64,
        );
        for f in st.figures() {
            match f.kind {
                store::FigureKind::Counter => reg.set_counter(f.name, f.help, f.value),
                store::FigureKind::Gauge => reg.set_gauge(f.name, f.help, f.value as f64),
            }
        }
        reg.render()
    }
}
