//! Peer messages (spec §8.1), real-time messages (§8.5), and the delivery helpers that server-originated
//! messages (§8.6) share with them.
//!
//! A peer message is stored once, in the receiver's and the sender's queue, and ACKed only after the
//! store has made it durable. Then the receiver's sessions get `METADATA + IM(PUSH)` and `SYNC_NOTIFY`, the
//! sender's other sessions the same for the sender's copy, and the sending connection `METADATA + ACK`.
//! Sender exclusion is by connection, not by device id, so two web tabs of one user (device id 0)
//! still see each other's messages (spec §20 #19).

use std::sync::Arc;

use bytes::Bytes;
use proto::{cmd, flag, AckStatus, Body, Im, Metadata, Rt};
use store::{Appended, NewMessage, QueueId};

use crate::app::{now_secs, App, AppendResult, Stats};
use crate::route::Push;
use crate::session::{OpCtx, Session};

/// Flags a client may set that are echoed on pushes (TEXT, UNPERSISTENT).
const CLIENT_FLAGS: u8 = flag::TEXT | flag::UNPERSISTENT;

/// Encodes a SYNC_NOTIFY body.
pub fn sync_notify_push(key: i64) -> Push {
    Push::plain(cmd::SYNC_NOTIFY, 0, Body::SyncNotify(key).to_bytes(2))
}

/// Pushes a stored message (`msg`: command, client flags, body) to the sessions of user `(appid, uid)`
/// except connection `except`: METADATA + the message with PUSH, then SYNC_NOTIFY. Returns how many
/// sessions got it.
pub fn push_stored(
    app: &App,
    (appid, uid): (i64, i64),
    at: Appended,
    msg: &Push,
    except: u64,
) -> usize {
    let push = Push {
        cmd: msg.cmd,
        flag: msg.flag | flag::PUSH,
        body: msg.body.clone(),
        meta: Some(Metadata {
            sync_key: at.key,
            prev_sync_key: at.prev_key,
        }),
    };
    let n = app.deliver_user(appid, uid, &push, except);
    app.deliver_user(appid, uid, &sync_notify_push(at.key), except);
    Stats::add(&app.stats.deliveries, n as u64);
    n
}

/// Tells the user's sessions that their queue has new entries up to `key` (they sync to fetch them).
pub fn notify_sync(app: &App, appid: i64, uid: i64, key: i64) {
    app.deliver_user(appid, uid, &sync_notify_push(key), 0);
}

/// Stores a peer message from the server side (HTTP `/post_peer_message`): both copies, then
/// SYNC_NOTIFY to both users; there is no direct push (spec §8.6).
pub async fn post_peer(
    app: &Arc<App>,
    appid: i64,
    sender: i64,
    receiver: i64,
    content: Bytes,
) -> Result<(i64, i64), crate::app::StoreFailure> {
    let ts = now_secs();
    let body = Body::Im(Im {
        sender,
        receiver,
        timestamp: ts,
        msgid: 0,
        content,
    })
    .to_bytes(proto::STORAGE_VERSION);
    let body_copy = body.clone();
    let msg = NewMessage {
        queues: vec![
            QueueId::User {
                appid,
                uid: receiver,
            },
            QueueId::User { appid, uid: sender },
        ],
        device_id: 0,
        cmd: cmd::IM,
        flag: 0,
        timestamp: ts as i64,
        body,
    };
    let r = app.store.append(vec![msg]).await?;
    let (rk, sk) = keys_of(&r).ok_or_else(|| {
        crate::app::StoreFailure::Local(store::StoreError::InvalidArgument(
            "store returned no positions".into(),
        ))
    })?;
    Stats::inc(&app.stats.messages_stored);
    notify_sync(app, appid, receiver, rk.key);
    notify_sync(app, appid, sender, sk.key);
    crate::offline::peer(app, appid, sender, receiver, &body_copy);
    Ok((rk.key, sk.key))
}

/// Stores a system message for each receiver (device id 0) and notifies them (spec §8.6); the key
/// of each receiver's entry, in the order of `receivers`.
pub async fn post_system(
    app: &Arc<App>,
    appid: i64,
    receivers: &[i64],
    content: Bytes,
) -> Result<Vec<i64>, crate::app::StoreFailure> {
    let ts = now_secs() as i64;
    let content_copy = content.clone();
    let msg = NewMessage {
        queues: receivers
            .iter()
            .map(|&uid| QueueId::User { appid, uid })
            .collect(),
        device_id: 0,
        cmd: cmd::SYSTEM,
        flag: 0,
        timestamp: ts,
        body: content,
    };
    let r = app.store.append(vec![msg]).await?;
    Stats::inc(&app.stats.messages_stored);
    crate::offline::system(app, appid, receivers, &content_copy);
    let entries = r.first().map(Vec::as_slice).unwrap_or_default();
    for (uid, at) in receivers.iter().zip(entries) {
        notify_sync(app, appid, *uid, at.key);
    }
    Ok(entries.iter().map(|e| e.key).collect())
}

/// Delivers a non-persistent NOTIFICATION to the user's online sessions (spec §8.6).
pub fn post_notification(app: &App, appid: i64, uid: i64, content: Bytes) -> usize {
    let n = app.deliver_user(appid, uid, &Push::plain(cmd::NOTIFICATION, 0, content), 0);
    Stats::add(&app.stats.deliveries, n as u64);
    n
}

/// Delivers an RT message to the receiver's sessions with flag 0 (spec §8.5); `except` excludes a connection.
pub fn deliver_rt(app: &App, appid: i64, rt: &Rt, except: u64) -> usize {
    let push = Push::plain(cmd::RT, 0, Body::Rt(rt.clone()).to_bytes(2));
    let n = app.deliver_user(appid, rt.receiver, &push, except);
    Stats::add(&app.stats.deliveries, n as u64);
    n
}

fn keys_of(r: &[Vec<Appended>]) -> Option<(Appended, Appended)> {
    let e = r.first()?;
    Some((*e.first()?, *e.get(1)?))
}

impl Session {
    /// MSG_IM from this connection.
    pub(crate) fn on_im(&mut self, seq: i32, flags: u8, im: Im) {
        let Some(h) = self.handle.clone() else { return };
        Stats::inc(&self.app.stats.messages_in);
        if im.sender != h.uid {
            return self.refuse(
                seq,
                AckStatus::INVALID_SENDER,
                "sender is not the session's user",
            );
        }
        if im.receiver <= 0 {
            return self.refuse(
                seq,
                AckStatus::INVALID_RECEIVER,
                "receiver id is not positive",
            );
        }
        if !self.rate_ok(seq) {
            return;
        }
        let ts = now_secs();
        let receiver = im.receiver;
        let content = self.filter_text(flags, im.content.clone());
        let body = Body::Im(Im {
            timestamp: ts,
            content,
            ..im
        })
        .to_bytes(proto::STORAGE_VERSION);
        let msg = NewMessage {
            queues: vec![
                QueueId::User {
                    appid: h.appid,
                    uid: receiver,
                },
                QueueId::User {
                    appid: h.appid,
                    uid: h.uid,
                },
            ],
            device_id: h.device_id,
            cmd: cmd::IM,
            flag: flags & CLIENT_FLAGS,
            timestamp: ts as i64,
            body: body.clone(),
        };
        self.submit(
            OpCtx::Im {
                seq,
                flag: flags & CLIENT_FLAGS,
                receiver,
                body,
            },
            vec![msg],
        );
    }

    pub(crate) fn complete_im(
        &mut self,
        seq: i32,
        flags: u8,
        receiver: i64,
        body: Bytes,
        result: AppendResult,
    ) {
        let Some(h) = self.handle.clone() else { return };
        let app = self.app.clone();
        let (r, s) = match result.as_deref().ok().and_then(keys_of) {
            Some(k) => k,
            None => {
                Stats::inc(&app.stats.store_errors);
                if let Err(e) = &result {
                    node::warn_throttled!(error = %e, "storing a peer message failed");
                }
                return self.refuse(seq, AckStatus::STORAGE_FAILED, "store failed");
            }
        };
        Stats::inc(&app.stats.messages_stored);
        crate::offline::peer(&app, h.appid, h.uid, receiver, &body);
        let msg = Push::plain(cmd::IM, flags, body.clone());
        push_stored(&app, (h.appid, receiver), r, &msg, self.conn_id);
        // When a user messages themself both entries are in the same queue; push both so their other
        // devices can follow the queue's METADATA chain without a sync.
        push_stored(&app, (h.appid, h.uid), s, &msg, self.conn_id);
        self.ack(
            seq,
            AckStatus::SUCCESS,
            0,
            Some(Metadata {
                sync_key: s.key,
                prev_sync_key: s.prev_key,
            }),
        );
    }

    /// MSG_RT: real-time, not persisted, not ACKed; only from the session's own user.
    /// RT has no ACK, so a refused RT is dropped (and counted).
    pub(crate) fn on_rt(&mut self, rt: Rt) {
        let Some(h) = self.handle.clone() else { return };
        if rt.sender != h.uid || rt.receiver <= 0 || !self.rate_allows() {
            Stats::inc(&self.app.stats.messages_refused);
            tracing::debug!(
                sender = rt.sender,
                receiver = rt.receiver,
                "RT dropped: spoofed sender, invalid receiver or rate limit"
            );
            return;
        }
        deliver_rt(&self.app, h.appid, &rt, self.conn_id);
    }
}
