//! Peer sync (spec §9.2) and sync-key reports (§9.5).
//!
//! `SYNC(k)` is answered with `SYNC_BEGIN(k)`, the next entries after `k` oldest first (flag 0 or SELF,
//! never PUSH, never METADATA) and `SYNC_END(k_end)`, in one ordered batch bounded by message count and
//! bytes. When more remain, `SYNC_NOTIFY(k_end + 1)` follows, so the client syncs again until it is caught
//! up; the store never skips an entry, whatever the backlog.
//!
//! A sync the server cannot answer (a store error) is logged and closes the session
//! ([`Session::abandon_sync`]): never an empty answer, never silence.

use proto::{cmd, Body};
use store::{QueueId, StoredMessage, SyncPage};
use tracing::warn;

use crate::app::Stats;
use crate::route::SessionHandle;
use crate::session::Session;

impl Session {
    pub(crate) async fn on_sync(&mut self, key: i64) {
        let Some(h) = self.handle.clone() else { return };
        let app = self.app.clone();
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
                warn!(error = %e, key, "sync failed; closing the session so that the client reconnects and syncs again");
                self.abandon_sync(&h);
                return;
            }
        };
        self.emit(&Body::SyncBegin(key), 0);
        let (last, truncated) = self.emit_synced(&page.messages);
        let k_end = end_key(&page, last, key);
        Stats::add(&app.stats.synced_messages, page.messages.len() as u64);
        self.emit(&Body::SyncEnd(k_end), 0);
        if page.has_more || truncated {
            self.emit(&Body::SyncNotify(k_end + 1), 0);
        }
    }

    /// A sync the server could not answer (the store or the group directory failed). An empty
    /// SYNC_END would tell the client it is caught up, and sending nothing leaves it waiting for a
    /// SYNC_END that never comes (the SDKs only sync again on a later notify, or on a reconnect,
    /// spec §9.6). So the session is closed: the SDK reconnects with its backoff and syncs from
    /// the key it has, which skips nothing. As on any disconnect, appends still in flight on
    /// this session get no ACK.
    pub(crate) fn abandon_sync(&mut self, h: &SessionHandle) {
        h.close("a sync failed on the server");
    }

    /// Queues synced messages (flag 0 or SELF, never PUSH) until the batch byte bound; returns the key of
    /// the last one queued and whether the bound cut the page short.
    pub(crate) fn emit_synced(&mut self, messages: &[StoredMessage]) -> (Option<i64>, bool) {
        let limit = self.app.sync.batch_bytes;
        let mut bytes = 0usize;
        let mut last = None;
        for m in messages {
            if last.is_some() && bytes + m.body.len() > limit {
                return (last, true);
            }
            bytes += m.body.len();
            if cmd::is_persistent(m.cmd) {
                let f = self.self_flag(m.cmd, &m.body, m.device_id);
                self.emit_raw(m.cmd, f, &m.body);
            }
            last = Some(m.key);
        }
        (last, false)
    }

    pub(crate) fn on_sync_key(&mut self, key: i64) {
        if let Some(h) = &self.handle {
            if key > 0 {
                self.app.backend.report_sync_key(h.appid, h.uid, key);
            }
        }
    }
}

/// The key SYNC_END / SYNC_GROUP_END carries (spec §9.2): the last message sent; else how far the store
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
