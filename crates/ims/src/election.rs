//! etcd mode (`etcd = [...]`): membership, shard leadership by election, fencing, automatic
//! fail-over (docs/cluster.md, *Automatic fail-over with etcd*).
//!
//! Every node of a shard starts as a follower and publishes a [`coord::StoreRecord`] (role, log
//! end, lag, epoch) under its own lease, refreshed twice a second. [`coordinate`] follows the
//! shard's leader key `<prefix>/leaders/<shard>`:
//!
//! * **A leader exists**: follow it, expecting its epoch (the key's create revision); a stream
//!   from an older epoch is refused (`replication`).
//! * **No leader** (none yet, or its lease lapsed): stop following, publish the final log end as
//!   a `candidate`, and after the others had time to do the same ([`SETTLE`]), campaign if no
//!   live member of the shard holds more log (ties: the smaller node id): compare-and-swap the
//!   leader key under a fresh lease. The winner promotes its store (`Store::promote_past`: keys
//!   continue above every position the old leader could have used) and streams with its epoch.
//! * **Leading**: appends are acknowledged only while the lease is certainly alive (the fence:
//!   until the lease TTL minus a margin after the last renewal was sent, so before etcd can
//!   expire it and let another node win; `fence`). When the lease is lost or the key is no longer this
//!   term's, the node stops acknowledging at once and shuts down with
//!   `StoreNodeError::Deposed`; restarted (by its supervisor), it rejoins as a follower.
//! * **Diverged log**: a node whose log holds records its new leader's history does not (an old
//!   leader's unreplicated tail) is refused by the leader. It records why next to its data
//!   directory and stops; at the next start [`reseed_if_diverged`] moves the old log aside (kept,
//!   and logged, for inspection) and the node copies the leader's log from position 0.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::{Etcd, KeptLease, Layout, LeaderRecord, Registration, StoreRecord};
use store::Role;
use tokio::sync::watch;

use crate::state::{NodeState, ReplicationMode};

/// How long a leaderless shard waits, from the moment a node sees it leaderless, before that node
/// campaigns: every live member has refreshed its record (twice a second) with its final log end.
pub const SETTLE: Duration = Duration::from_millis(1000);

/// What [`coordinate`] needs.
pub struct Settings {
    pub etcd: Etcd,
    pub layout: Layout,
    pub shard: String,
    /// This node's advertised addresses.
    pub me: LeaderRecord,
    pub ttl: Duration,
    pub data_dir: PathBuf,
}

fn marker(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".diverged");
    PathBuf::from(name)
}

/// At start-up: if the last run found this log diverged from its leader's, moves the data
/// directory aside (`<data_dir>.diverged-<unix seconds>`) so the node starts empty and copies its
/// leader's log; logs what was dropped.
pub fn reseed_if_diverged(dir: &Path) -> Result<(), String> {
    let m = marker(dir);
    let Ok(why) = std::fs::read_to_string(&m) else {
        return Ok(());
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".diverged-{secs}"));
    let aside = PathBuf::from(aside);
    if dir.exists() {
        std::fs::rename(dir, &aside).map_err(|e| {
            format!(
                "cannot move the diverged log {} aside to {}: {e}",
                dir.display(),
                aside.display()
            )
        })?;
    }
    tracing::warn!(
        moved_to = %aside.display(),
        leader_said = %why.trim(),
        "this store's log held records its shard leader's history does not (the unreplicated tail \
         of an earlier leadership: in sync mode never acknowledged, in async mode the stated loss \
         window); they are dropped from service and kept in the moved directory; copying the \
         leader's log from the start"
    );
    std::fs::remove_file(&m).map_err(|e| format!("cannot remove {}: {e}", m.display()))?;
    Ok(())
}

/// Stops the node for `why` (it rejoins as a follower when started again).
fn depose(state: &NodeState, why: String) {
    state.fence.set(None);
    tracing::error!(reason = %why, "stopping: no longer this shard's leader; restart the node to rejoin as a follower");
    *state.deposed.lock() = Some(why);
    state.shutdown.cancel();
}

fn record(state: &NodeState, s: &Settings, role: &str) -> Vec<u8> {
    let r = StoreRecord {
        node_id: s.me.node_id.clone(),
        shard: s.shard.clone(),
        listen: s.me.listen.clone(),
        replication: s.me.replication.clone(),
        http: s.me.http.clone(),
        role: role.to_string(),
        log_end: state.store.log_end(),
        lag_bytes: state.lag_bytes(),
        epoch: state.epoch.load(Ordering::Acquire) as i64,
        replication_mode: match state.mode {
            ReplicationMode::Async => "async".into(),
            ReplicationMode::Sync => "sync".into(),
        },
    };
    serde_json::to_vec(&r).unwrap_or_default()
}

/// Runs the node's part in its shard until the node stops (see the module docs).
pub(crate) async fn coordinate(state: Arc<NodeState>, s: Settings) {
    let shutdown = state.shutdown.clone();
    let leader_key = s.layout.leader(&s.shard);
    let mut leaders =
        coord::follow_prefix(s.etcd.clone(), leader_key.clone(), shutdown.child_token());
    let (status_tx, status_rx) = watch::channel(record(&state, &s, "follower"));
    let registration = Registration::start(
        s.etcd.clone(),
        s.layout.store(&s.shard, &s.me.node_id),
        status_rx,
        s.ttl,
    );
    let mut lease: Option<(KeptLease, i64)> = None;
    let mut following: Option<(i64, String)> = None;
    let mut leaderless_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(shard = %s.shard, prefix = %s.layout.prefix(), "joining the shard through etcd");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = leaders.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
        }
        let role = if lease.is_some() {
            "leader"
        } else if following.is_some() {
            "follower"
        } else {
            "candidate"
        };
        let rec = record(&state, &s, role);
        status_tx.send_if_modified(|v| {
            let changed = *v != rec;
            *v = rec;
            changed
        });
        let (ready, snap) = leaders.borrow().clone();
        if !ready {
            continue;
        }
        let current = snap.get(&leader_key).and_then(|kv| {
            serde_json::from_slice::<LeaderRecord>(&kv.value)
                .ok()
                .map(|r| (kv.create_revision, r))
        });

        if let Some((l, epoch)) = &lease {
            let why = if !l.valid() {
                Some("the leadership lease was lost (etcd unreachable or too slow)".to_string())
            } else {
                match &current {
                    Some((rev, _)) if rev == epoch => None,
                    Some((rev, r)) => Some(format!(
                        "the shard has a newer leader {} (epoch {rev}, this node held {epoch})",
                        r.node_id
                    )),
                    // The watch may not have delivered our own key yet: ask.
                    None => match s.etcd.get(&leader_key).await {
                        Ok(Some(kv)) if kv.create_revision == *epoch => None,
                        Ok(_) => Some("the leadership key is gone".to_string()),
                        Err(_) => None, // the lease deadline decides
                    },
                }
            };
            if let Some(why) = why {
                depose(&state, why);
                break;
            }
            continue;
        }

        if let Some(why) = state.follow_status.diverged.lock().take() {
            let m = marker(&s.data_dir);
            if let Err(e) = std::fs::write(&m, &why) {
                tracing::error!(path = %m.display(), error = %e, "cannot record the diverged log");
            }
            depose(
                &state,
                format!("this store's log diverged from the leader's ({why}); it is re-seeded at the next start"),
            );
            break;
        }

        match current {
            Some((epoch, r)) if r.node_id != s.me.node_id => {
                leaderless_since = None;
                if following.as_ref() != Some(&(epoch, r.replication.clone())) {
                    tracing::info!(leader = %r.node_id, epoch, replication = %r.replication, "following the shard's leader");
                    state.follow_leader(&r.replication, epoch as u64).await;
                    following = Some((epoch, r.replication));
                }
            }
            Some((epoch, _)) => {
                // Our own key from before a restart: this process does not hold its lease.
                tracing::info!(
                    epoch,
                    "removing this node's leadership key left from before its restart"
                );
                if let Err(e) = s.etcd.delete_if_created(&leader_key, epoch).await {
                    tracing::warn!(error = %e, "cannot remove the stale leadership key");
                }
            }
            None => {
                if following.take().is_some() {
                    tracing::warn!(shard = %s.shard, "the shard has no leader (its lease lapsed); stopping replication");
                    state.stop_following().await;
                }
                let since = *leaderless_since.get_or_insert_with(Instant::now);
                let rec = record(&state, &s, "candidate");
                status_tx.send_if_modified(|v| {
                    let changed = *v != rec;
                    *v = rec;
                    changed
                });
                if since.elapsed() < SETTLE {
                    continue;
                }
                if let Some(better) = better_candidate(&state, &s).await {
                    tracing::debug!(better = %better, "another member holds more log; not campaigning");
                    continue;
                }
                if let Some(won) = campaign(&state, &s).await {
                    leaderless_since = None;
                    let rec = record(&state, &s, "leader");
                    status_tx.send_replace(rec);
                    lease = Some(won);
                }
            }
        }
    }
    // A leader that stops cleanly hands over at once instead of after its TTL.
    if let Some((l, _)) = lease {
        state.fence.set(None);
        l.revoke().await;
    }
    registration.stop().await;
}

/// The id of a live member of the shard holding more log than this node (or as much, with a
/// smaller node id), if any; `Some` too when the members cannot be read.
async fn better_candidate(state: &NodeState, s: &Settings) -> Option<String> {
    let mine = state.store.log_end();
    let (_, members) = match s.etcd.get_prefix(&s.layout.shard_stores(&s.shard)).await {
        Ok(m) => m,
        Err(e) => return Some(format!("(members unreadable: {e})")),
    };
    members
        .iter()
        .filter_map(|kv| serde_json::from_slice::<StoreRecord>(&kv.value).ok())
        // a record still saying `leader` belongs to the leader whose key lapsed: it is gone
        .filter(|r| r.node_id != s.me.node_id && r.role != "leader")
        .find(|r| r.log_end > mine || (r.log_end == mine && r.node_id < s.me.node_id))
        .map(|r| r.node_id)
}

/// Tries to become the shard's leader; on success the store is promoted and the lease and
/// epoch are returned.
async fn campaign(state: &NodeState, s: &Settings) -> Option<(KeptLease, i64)> {
    let lease = match KeptLease::start(&s.etcd, s.ttl).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot campaign for the shard's leadership");
            return None;
        }
    };
    let value = serde_json::to_vec(&s.me).unwrap_or_default();
    let epoch = match s
        .etcd
        .create(&s.layout.leader(&s.shard), &value, lease.id())
        .await
    {
        Ok(Ok(rev)) => rev,
        Ok(Err(holder)) => {
            tracing::debug!(holder = %String::from_utf8_lossy(&holder.value), "another node won the election");
            lease.revoke().await;
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "campaign failed");
            lease.revoke().await;
            return None;
        }
    };
    let started = Instant::now();
    state.hub.set_epoch(epoch as u64);
    state.epoch.store(epoch as u64, Ordering::Release);
    if state.store.role() != Role::Leader {
        if let Err(e) = state.promote().await {
            tracing::error!(error = %e, "won the election but cannot promote the store; resigning");
            let _ = s
                .etcd
                .delete_if_created(&s.layout.leader(&s.shard), epoch)
                .await;
            lease.revoke().await;
            return None;
        }
    }
    state.fence.set(Some(lease.validity()));
    tracing::info!(
        shard = %s.shard,
        epoch,
        log_end = state.store.log_end(),
        promote_ms = started.elapsed().as_millis() as u64,
        "won the shard's leadership"
    );
    Some((lease, epoch))
}
