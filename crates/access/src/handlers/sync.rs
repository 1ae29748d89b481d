//! Peer sync (SYNC), super-group sync (SYNC_GROUP), sync-key reports (SYNC_KEY, GROUP_SYNC_KEY),
//! and the syncs a session owes its client.
//!
//! `SYNC(k)` is answered with `SYNC_BEGIN(k)`, the next entries after `k` oldest first (flag 0 or SELF,
//! never PUSH, never METADATA) and `SYNC_END(k_end)`, in one ordered batch bounded by message count and
//! bytes. When more remain, `SYNC_NOTIFY(k_end + 1)` follows, so the client syncs again until it is caught
//! up; the store never skips an entry, whatever the backlog. `SYNC_GROUP(gid, k)` works the same on
//! a super group's queue and never returns entries from before the member joined; other groups
//! have no group queue (their messages are in the members' own queues) and get an empty answer.
//!
//! A sync the server cannot answer now (its store shard is down, the group directory fails) is
//! never answered as caught up and never ends the session: it is owed ([`owe_sync`])
//! and answered later from the session loop, retried with back-off (0.5 s doubling to 8 s, a
//! little jitter per connection) until it succeeds. Meanwhile the session keeps serving
//! everything else. A client that sends SYNC again meanwhile is answered (or owed) for its newest
//! request. Failures are logged once per episode for the whole node, not once per sync.

use std::time::Duration;

use node::episode::FailureLog;
use proto::{cmd, flag, Body, GroupSyncKey};
use store::{QueueId, StoredMessage, SyncPage};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Conn, Reply};
use crate::app::Stats;

/// First wait before an owed sync is tried again; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// Syncs a session owes its client (boxed in the session: one pointer while nothing is owed).
pub(crate) struct OwedSyncs {
    /// The peer sync to answer (the key of the client's newest SYNC).
    peer: Option<i64>,
    /// Super-group syncs to answer, one per group (the newest request).
    groups: Vec<GroupSyncKey>,
    /// When to try again.
    pub(crate) at: Instant,
    delay: Duration,
}

/// What a sync that failed was for.
pub(crate) enum Owed {
    Peer(i64),
    Group(GroupSyncKey),
}

/// SYNC(key): the next entries of the user's queue after `key` (0: from the key the backend kept).
pub(crate) async fn on_sync(conn: &mut Conn, out: &mut Reply, key: i64) {
    let Some(h) = conn.handle.clone() else { return };
    let app = conn.app.clone();
    Stats::inc(&app.stats.syncs);
    let mut key = key;
    if key == 0 {
        key = match app.backend.sync_key(h.appid, h.uid).await {
            Ok(k) => k,
            Err(e) => {
                Stats::inc(&app.stats.backend_errors);
                warn!(error = %e, "reading the stored sync key failed; syncing from the start");
                0
            }
        };
    }
    let queue = QueueId::User {
        appid: h.appid,
        uid: h.uid,
    };
    let page = match app.store.sync(queue, key, app.sync.batch_messages).await {
        Ok(p) => p,
        Err(e) => {
            Stats::inc(&app.stats.store_errors);
            owe_sync(conn, Owed::Peer(key), &e);
            return;
        }
    };
    synced(conn, None);
    out.emit(&Body::SyncBegin(key), 0);
    let (last, truncated) = emit_synced(conn, out, &page.messages);
    let k_end = end_key(&page, last, key);
    Stats::add(&app.stats.synced_messages, page.messages.len() as u64);
    app.metrics.sync_messages.record(page.messages.len() as f64);
    out.emit(&Body::SyncEnd(k_end), 0);
    if page.has_more || truncated {
        out.emit(&Body::SyncNotify(k_end + 1), 0);
    }
}

/// A sync the server could not answer now (the store or the group directory failed). An
/// empty SYNC_END would tell the client it is caught up, and closing the session makes every
/// client of a dead shard reconnect and fail again at once (a reconnect storm). So the answer
/// is owed: the session loop tries again after a back-off and answers then (see the module
/// docs), serving everything else meanwhile.
pub(crate) fn owe_sync(conn: &mut Conn, what: Owed, error: &dyn std::fmt::Display) {
    let app = conn.app.clone();
    Stats::inc(&app.stats.syncs_deferred);
    match app.sync_failures.failure() {
        FailureLog::Started => {
            warn!(error = %error, "a sync could not be answered; it is answered once it can be (retried with back-off), further failures are counted")
        }
        FailureLog::Ongoing { failures, for_secs } => {
            warn!(failures, for_secs, last_error = %error, "syncs still cannot be answered; retrying")
        }
        FailureLog::Quiet => debug!(error = %error, "sync deferred"),
    }
    let now = Instant::now();
    let owed = conn.owed.get_or_insert_with(|| {
        Box::new(OwedSyncs {
            peer: None,
            groups: Vec::new(),
            at: now,
            delay: Duration::ZERO,
        })
    });
    match what {
        Owed::Peer(key) => owed.peer = Some(key),
        Owed::Group(g) => match owed.groups.iter_mut().find(|o| o.group_id == g.group_id) {
            Some(o) => *o = g,
            None => owed.groups.push(g),
        },
    }
    owed.delay = if owed.delay.is_zero() {
        RETRY_FIRST
    } else {
        (owed.delay * 2).min(RETRY_MAX)
    };
    // Spread the retries of many sessions of one dead shard over a quarter of a second.
    let jitter = Duration::from_millis(conn.conn_id.wrapping_mul(7919) % 250);
    owed.at = now + owed.delay + jitter;
}

/// A sync was answered: it supersedes what was owed for the same queue (`None`: the peer
/// queue, else that group's).
pub(crate) fn synced(conn: &mut Conn, group: Option<i64>) {
    if let Some(r) = conn.app.sync_failures.success() {
        info!(
            deferred_syncs = r.failures,
            after_secs = r.after_secs,
            "syncs are answered again"
        );
    }
    if let Some(owed) = conn.owed.as_mut() {
        match group {
            None => owed.peer = None,
            Some(gid) => owed.groups.retain(|g| g.group_id != gid),
        }
        if owed.peer.is_none() && owed.groups.is_empty() {
            conn.owed = None;
        }
    }
}

/// Whether syncs owed to the client are due to be tried again.
pub(crate) fn owed_due(conn: &Conn) -> bool {
    conn.owed.as_ref().is_some_and(|o| o.at <= Instant::now())
}

/// Answers the syncs owed to the client (called by the session loop once they are due).
/// Those that fail again are owed again, with a longer back-off.
pub(crate) async fn answer_owed_syncs(conn: &mut Conn, out: &mut Reply) {
    let Some(owed) = conn.owed.as_mut() else {
        return;
    };
    let peer = owed.peer.take();
    let groups = std::mem::take(&mut owed.groups);
    // Not due again unless something fails below.
    owed.at = Instant::now() + RETRY_MAX * 4;
    if let Some(key) = peer {
        on_sync(conn, out, key).await;
    }
    for g in groups {
        on_sync_group(conn, out, g).await;
    }
    if conn
        .owed
        .as_ref()
        .is_some_and(|o| o.peer.is_none() && o.groups.is_empty())
    {
        conn.owed = None;
    }
}

/// SYNC_GROUP(gid, key): the member's next super-group entries after `key`.
pub(crate) async fn on_sync_group(conn: &mut Conn, out: &mut Reply, req: GroupSyncKey) {
    let Some(h) = conn.handle.clone() else { return };
    let app = conn.app.clone();
    Stats::inc(&app.stats.syncs);
    let gid = req.group_id;
    let empty = |conn: &mut Conn, out: &mut Reply, key: i64| {
        synced(conn, Some(gid));
        let g = GroupSyncKey {
            group_id: gid,
            sync_key: key,
        };
        out.emit(&Body::SyncGroupBegin(g), 0);
        out.emit(&Body::SyncGroupEnd(g), 0);
    };
    let group = match app.groups.get(h.appid, gid).await {
        Ok(Some(g)) => g,
        Ok(None) => return empty(conn, out, req.sync_key),
        Err(e) => {
            // An empty answer would claim the client is caught up: answer later.
            Stats::inc(&app.stats.backend_errors);
            owe_sync(conn, Owed::Group(req), &e);
            return;
        }
    };
    let Some(member) = group.member(h.uid) else {
        return empty(conn, out, req.sync_key);
    };
    if !group.super_group {
        // Normal groups have no group queue: their messages are in members' personal queues.
        return empty(conn, out, req.sync_key);
    }
    let mut key = req.sync_key;
    if key == 0 {
        key = match app.backend.group_sync_key(h.appid, h.uid, gid).await {
            Ok(k) => k,
            Err(e) => {
                Stats::inc(&app.stats.backend_errors);
                warn!(error = %e, "reading the stored group sync key failed; syncing from the start");
                0
            }
        };
    }
    let queue = QueueId::Group {
        appid: h.appid,
        gid,
    };
    let page = match app
        .store
        .sync_since(queue, key, app.sync.batch_messages, member.joined_at)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            Stats::inc(&app.stats.store_errors);
            owe_sync(conn, Owed::Group(req), &e);
            return;
        }
    };
    synced(conn, Some(gid));
    let begin = GroupSyncKey {
        group_id: gid,
        sync_key: key,
    };
    out.emit(&Body::SyncGroupBegin(begin), 0);
    let (last, truncated) = emit_synced(conn, out, &page.messages);
    let k_end = end_key(&page, last, key);
    Stats::add(&app.stats.synced_messages, page.messages.len() as u64);
    app.metrics.sync_messages.record(page.messages.len() as f64);
    let end = GroupSyncKey {
        group_id: gid,
        sync_key: k_end,
    };
    out.emit(&Body::SyncGroupEnd(end), 0);
    if page.has_more || truncated {
        out.emit(
            &Body::SyncGroupNotify(GroupSyncKey {
                group_id: gid,
                sync_key: k_end + 1,
            }),
            0,
        );
    }
}

/// GROUP_SYNC_KEY: the client reports how far it synced a super group.
pub(crate) fn on_group_sync_key(conn: &mut Conn, g: GroupSyncKey) {
    if let Some(h) = &conn.handle {
        if g.sync_key > 0 {
            conn.app
                .backend
                .report_group_sync_key(h.appid, h.uid, g.group_id, g.sync_key);
        }
    }
}

/// Queues synced messages (flag 0 or SELF, never PUSH) until the batch byte bound; returns the key of
/// the last one queued and whether the bound cut the page short.
pub(crate) fn emit_synced(
    conn: &Conn,
    out: &mut Reply,
    messages: &[StoredMessage],
) -> (Option<i64>, bool) {
    let limit = conn.app.sync.batch_bytes;
    let mut bytes = 0usize;
    let mut last = None;
    for m in messages {
        if last.is_some() && bytes + m.body.len() > limit {
            return (last, true);
        }
        bytes += m.body.len();
        if cmd::is_persistent(m.cmd) {
            let f = self_flag(conn, m);
            out.emit_stored(m.cmd, f, &m.body);
        }
        last = Some(m.key);
    }
    (last, false)
}

/// The SELF flag for a synced message: sent by this user from this very device. Device 0 (web
/// clients, HTTP posts) never matches, so HTTP-originated messages are not marked SELF.
fn self_flag(conn: &Conn, m: &StoredMessage) -> u8 {
    let Some(h) = &conn.handle else { return 0 };
    if m.device_id == 0 || m.device_id != h.device_id {
        return 0;
    }
    match proto::body::stored_sender(m.cmd, &m.body) {
        Some(s) if s.uid == h.uid && s.appid.is_none_or(|a| a == h.appid) => flag::SELF,
        _ => 0,
    }
}

/// SYNC_KEY: the client reports how far it synced its queue.
pub(crate) fn on_sync_key(conn: &mut Conn, key: i64) {
    if let Some(h) = &conn.handle {
        if key > 0 {
            conn.app.backend.report_sync_key(h.appid, h.uid, key);
        }
    }
}

/// The key SYNC_END / SYNC_GROUP_END carries: the last message sent; else how far the store
/// looked (entries before a member's join time are passed over); else the server's newest key when the
/// client's key is ahead of it; else the request key.
pub(crate) fn end_key(page: &SyncPage, last_sent: Option<i64>, key: i64) -> i64 {
    match last_sent {
        Some(k) => k,
        None if page.last_key > key => page.last_key,
        None if page.queue_last_key > 0 && page.queue_last_key < key => page.queue_last_key,
        None => key,
    }
}
