//! Peer messages: IM from a client, and the server-side posts of peer, system and notification
//! messages (HTTP API).
//!
//! With `[relationships]` checks on, an IM from a client also passes the friendship and blacklist
//! checks, answered from the relation cache; a pair not cached yet is read first (the session
//! awaits it like a group load). Server-side posts are not checked.
//!
//! A peer message is stored once, in the receiver's and the sender's queue, and ACKed only after the
//! store has made it durable. Then the receiver's sessions get `METADATA + IM(PUSH)` and `SYNC_NOTIFY`, the
//! sender's other sessions the same for the sender's copy, and the sending connection `METADATA + ACK`.
//! Sender exclusion is by connection, not by device id, so two web tabs of one user (device id 0)
//! still see each other's messages (docs/compatibility.md).

use std::sync::Arc;

use backend::Relation;
use bytes::Bytes;
use proto::{cmd, flag, Body, Im};
use store::{AppendKey, Appended, NewMessage, QueueId};

use super::{Append, Conn, Handled, Refusal, Refused, Stored, To};
use crate::app::{now_secs, App, Stats, StoreFailure};
use crate::config::RelationshipsConfig;
use crate::route::Push;

/// What an IM's relationship checks need before [`on_im`] runs.
pub(crate) enum Relationship {
    /// No check applies: checks are off, or [`on_im`] refuses the message before them.
    Unchecked,
    /// The pair's relations, from the cache.
    Known(Relation),
    /// The pair is not cached: [`load_relation`] it first.
    Unknown,
}

/// The relations of the IM's sender and receiver, when the friendship or blacklist check is on
/// (docs/protocol.md §9.2); from the cache, so no I/O.
pub(crate) fn relationship(conn: &Conn, im: &Im) -> Relationship {
    let app = &conn.app;
    let Some(h) = &conn.handle else {
        return Relationship::Unchecked;
    };
    if !app.relationships.checks() || im.sender != h.uid || im.receiver <= 0 {
        return Relationship::Unchecked;
    }
    match app.relations.cached(h.appid, h.uid, im.receiver) {
        Some(r) => Relationship::Known(r),
        None => Relationship::Unknown,
    }
}

/// Reads the relations of a pair [`relationship`] found `Unknown`, then handles the IM.
pub(crate) async fn load_relation(conn: &mut Conn, seq: i32, flags: u8, im: Im) -> Handled {
    let Some(h) = conn.handle.clone() else {
        return Ok(None);
    };
    match conn.app.relations.load(h.appid, h.uid, im.receiver).await {
        Ok(r) => on_im(conn, seq, flags, im, Some(r)),
        Err(e) => Err(Refusal::acked(cmd::IM, seq, Refused::Directory(e))),
    }
}

/// GoBelieve's checks in its order: the sender lists the receiver as a friend, the receiver lists
/// the sender, and the receiver has not blacklisted the sender.
fn check_relation(cfg: &RelationshipsConfig, r: Relation) -> Result<(), Refused> {
    if cfg.friendship {
        if !r.a_lists_b {
            return Err(Refused::NotMyFriend);
        }
        if !r.b_lists_a {
            return Err(Refused::NotYourFriend);
        }
    }
    if cfg.blacklist && r.b_blocks_a {
        return Err(Refused::InYourBlacklist);
    }
    Ok(())
}

/// IM from a client: checked, then stored in the receiver's and the sender's queue. `relation`
/// (sender = `a`) is given whenever [`relationship`] is not `Unchecked`.
pub(crate) fn on_im(
    conn: &mut Conn,
    seq: i32,
    flags: u8,
    im: Im,
    relation: Option<Relation>,
) -> Handled {
    let Some(h) = conn.handle.clone() else {
        return Ok(None);
    };
    let refused = |why| Err(Refusal::acked(cmd::IM, seq, why));
    Stats::inc(&conn.app.stats.messages_in);
    if im.sender != h.uid {
        return refused(Refused::InvalidSender);
    }
    if im.receiver <= 0 {
        return refused(Refused::InvalidReceiver);
    }
    if let Err(why) = conn.rate_check() {
        return refused(why);
    }
    if let Some(r) = relation {
        if let Err(why) = check_relation(&conn.app.relationships, r) {
            return refused(why);
        }
    }
    let ts = now_secs();
    let receiver = im.receiver;
    let flags = flags & flag::CLIENT;
    let key = client_key(h.appid, h.uid, h.device_id, cmd::IM, &im);
    let content = conn.filter_text(flags, im.content.clone());
    let body = Body::Im(Im {
        timestamp: ts,
        content,
        ..im
    })
    .to_stored();
    let msg = NewMessage {
        key,
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
        flag: flags,
        timestamp: ts as i64,
        body: body.clone(),
    };
    let to = To::Pair {
        cmd: cmd::IM,
        receiver: (h.appid, receiver),
    };
    Ok(Some(Append {
        batch: vec![msg],
        then: Stored::new(seq, flags, body, to),
    }))
}

/// The idempotency key of a client's IM or GROUP_IM (docs/compatibility.md, *Storage and
/// sync*; docs/protocol.md §6.3): its app, sender, session device id, command, local `msgid`
/// and content. `None` when the client gave no `msgid` (0), or when the session has no device id
/// (web sessions, logins without one): such a message cannot be told from a new one — a web page's
/// local ids start again at every load, so its `msgid` says nothing across sessions.
pub(crate) fn client_key(
    appid: i64,
    uid: i64,
    device_id: i64,
    cmd: u8,
    im: &Im,
) -> Option<AppendKey> {
    (im.msgid != 0 && device_id != 0)
        .then(|| AppendKey::client(appid, uid, device_id, cmd, im.msgid, &im.content))
}

/// The receiver's and the sender's entries of a peer message's append.
fn keys_of(r: &[Vec<Appended>]) -> Option<(Appended, Appended)> {
    let e = r.first()?;
    Some((*e.first()?, *e.get(1)?))
}

/// Stores a peer message from the server side (HTTP `/post_peer_message`): both copies, then
/// SYNC_NOTIFY to both users; there is no direct push.
pub async fn post_peer(
    app: &Arc<App>,
    appid: i64,
    sender: i64,
    receiver: i64,
    content: Bytes,
) -> Result<(i64, i64), StoreFailure> {
    let ts = now_secs();
    let body = Body::Im(Im {
        sender,
        receiver,
        timestamp: ts,
        msgid: 0,
        content,
    })
    .to_stored();
    let msg = NewMessage {
        key: None,
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
        body: body.clone(),
    };
    let r = app.store.append(vec![msg]).await?;
    let (rk, sk) = keys_of(&r).ok_or_else(|| {
        StoreFailure::Local(store::StoreError::InvalidArgument(
            "store returned no positions".into(),
        ))
    })?;
    Stats::inc(&app.stats.messages_stored);
    app.notify_sync(appid, receiver, rk.key);
    app.notify_sync(appid, sender, sk.key);
    crate::offline::stored(app, cmd::IM, (appid, receiver), &body);
    Ok((rk.key, sk.key))
}

/// Stores a system message for each receiver (device id 0) and notifies them; the key of each
/// receiver's entry, in the order of `receivers`.
pub async fn post_system(
    app: &Arc<App>,
    appid: i64,
    receivers: &[i64],
    content: Bytes,
) -> Result<Vec<i64>, StoreFailure> {
    let ts = now_secs() as i64;
    let msg = NewMessage {
        key: None,
        queues: receivers
            .iter()
            .map(|&uid| QueueId::User { appid, uid })
            .collect(),
        device_id: 0,
        cmd: cmd::SYSTEM,
        flag: 0,
        timestamp: ts,
        body: content.clone(),
    };
    let r = app.store.append(vec![msg]).await?;
    Stats::inc(&app.stats.messages_stored);
    crate::offline::system(app, appid, receivers, &content);
    let entries = r.first().map(Vec::as_slice).unwrap_or_default();
    for (uid, at) in receivers.iter().zip(entries) {
        app.notify_sync(appid, *uid, at.key);
    }
    Ok(entries.iter().map(|e| e.key).collect())
}

/// Delivers a non-persistent NOTIFICATION to the user's online sessions.
pub fn post_notification(app: &App, appid: i64, uid: i64, content: Bytes) -> usize {
    let n = app.deliver_user(appid, uid, &Push::plain(cmd::NOTIFICATION, 0, content), 0);
    Stats::add(&app.stats.deliveries, n as u64);
    n
}
