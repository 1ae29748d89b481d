//! Group messages (GROUP_IM) and the server-side group posts (HTTP API). Super-group sync is in
//! [`super::sync`].
//!
//! Every GROUP_IM is checked — the group exists in the sender's app, the sender is a member, not muted and
//! not speak-banned — and refusals are answered with an ACK status in version-2 sessions.
//!
//! * **Normal groups**: the message is appended once to the store with every member's personal queue in
//!   the same append (the body is stored once), so it is durable in every queue before the sender's ACK;
//!   there is no intermediate pending queue that could lose or reorder it, whatever the group's size. Each
//!   member's sessions then get `METADATA + GROUP_IM(PUSH)` and `SYNC_NOTIFY`.
//! * **Super groups**: one append to the group's queue; members' sessions get
//!   `METADATA + GROUP_IM(PUSH|SUPER_GROUP)` and `SYNC_GROUP_NOTIFY`; the sender's ACK carries the
//!   SUPER_GROUP flag and the group queue's METADATA.

use std::sync::Arc;

use backend::groups::Group;
use bytes::Bytes;
use proto::{cmd, flag, Body, Im, Metadata};
use store::{Appended, NewMessage, QueueId};

use super::{Append, Conn, Handled, Refusal, Refused, Stored, To};
use crate::api::ApiError;
use crate::app::{now_secs, App, Stats, StoreFailure};
use crate::offline;
use crate::route::Push;

/// The personal queues of every member, in a fixed order (the order of the returned uids).
fn member_queues(group: &Group) -> (Vec<i64>, Vec<QueueId>) {
    let mut uids: Vec<i64> = group.members.keys().copied().collect();
    uids.sort_unstable();
    let queues = uids
        .iter()
        .map(|&uid| QueueId::User {
            appid: group.appid,
            uid,
        })
        .collect();
    (uids, queues)
}

/// The queues a group message is appended to, and the member uids in the order of their entries
/// (normal groups; none for a super group, whose one queue is the group's).
fn queues_of(group: &Group) -> (Vec<i64>, Vec<QueueId>) {
    if group.super_group {
        (
            Vec::new(),
            vec![QueueId::Group {
                appid: group.appid,
                gid: group.gid,
            }],
        )
    } else {
        member_queues(group)
    }
}

/// Delivers a stored normal-group entry to each member: METADATA + message (PUSH), then SYNC_NOTIFY.
fn deliver_normal(
    app: &App,
    group: &Group,
    uids: &[i64],
    entries: &[Appended],
    msg: &Push,
    except: u64,
) {
    for (&uid, &at) in uids.iter().zip(entries) {
        app.deliver_stored((group.appid, uid), at, msg, except);
    }
}

/// Delivers a stored super-group entry to every member's sessions.
fn deliver_super(app: &App, group: &Group, at: Appended, msg: &Push, except: u64) {
    let push = Push {
        cmd: msg.cmd,
        flag: msg.flag | flag::PUSH | flag::SUPER_GROUP,
        body: msg.body.clone(),
        meta: Some(Metadata {
            sync_key: at.key,
            prev_sync_key: at.prev_key,
        }),
    };
    let n = app.deliver_group(group, &push, except);
    app.deliver_group(group, &Push::group_sync_notify(group.gid, at.key), except);
    Stats::add(&app.stats.deliveries, n as u64);
}

/// Notifies members that their queue (normal group) or the group queue (super group) has new entries.
pub(super) fn notify_members(app: &App, group: &Group, uids: &[i64], entries: &[Appended]) {
    if group.super_group {
        if let Some(at) = entries.first() {
            app.deliver_group(group, &Push::group_sync_notify(group.gid, at.key), 0);
        }
    } else {
        for (&uid, at) in uids.iter().zip(entries) {
            app.notify_sync(group.appid, uid, at.key);
        }
    }
}

/// GROUP_IM from a client: checked against the group directory, then stored in every member's
/// queue (normal group) or the group's queue (super group).
pub(crate) async fn on_group_im(conn: &mut Conn, seq: i32, flags: u8, im: Im) -> Handled {
    let Some(h) = conn.handle.clone() else {
        return Ok(None);
    };
    let app = conn.app.clone();
    let refused = |why| Err(Refusal::acked(cmd::GROUP_IM, seq, why));
    Stats::inc(&app.stats.messages_in);
    if im.sender != h.uid {
        return refused(Refused::InvalidSender);
    }
    if im.receiver <= 0 {
        // Group ids are positive: no such group, and no directory lookup for it.
        return refused(Refused::NoSuchGroup);
    }
    if let Err(why) = conn.rate_check() {
        return refused(why);
    }
    if h.is_forbidden() {
        return refused(Refused::Forbidden);
    }
    let group = match app.groups.get(h.appid, im.receiver).await {
        Ok(Some(g)) => g,
        Ok(None) => return refused(Refused::NoSuchGroup),
        Err(e) => return refused(Refused::Directory(e)),
    };
    match group.member(h.uid) {
        None => return refused(Refused::NotGroupMember),
        Some(m) if m.mute => return refused(Refused::GroupMuted),
        Some(_) => {}
    }
    let flags = flags & flag::CLIENT;
    let key = super::peer::client_key(h.appid, h.uid, h.device_id, cmd::GROUP_IM, &im);
    let content = conn.filter_text(flags, im.content);
    let ts = now_secs();
    let body = Body::GroupIm(Im {
        timestamp: ts,
        content,
        ..im
    })
    .to_stored();
    let (uids, queues) = queues_of(&group);
    let msg = NewMessage {
        key,
        queues,
        device_id: h.device_id,
        cmd: cmd::GROUP_IM,
        flag: flags,
        timestamp: ts as i64,
        body: body.clone(),
    };
    Ok(Some(Append {
        batch: vec![msg],
        then: Stored::new(seq, flags, body, To::Group { group, uids }),
    }))
}

/// Delivers a client's stored group message to the members' sessions but connection `except`:
/// every member's own entry (normal group) or the group queue's entry (super group).
pub(super) fn deliver(
    app: &App,
    group: &Group,
    uids: &[i64],
    entries: &[Appended],
    msg: &Push,
    except: u64,
) {
    if group.super_group {
        if let Some(&at) = entries.first() {
            deliver_super(app, group, at, msg, except);
        }
    } else {
        deliver_normal(app, group, uids, entries, msg, except);
    }
}

/// Why a server-side group post failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupPostError {
    #[error("group {0} does not exist in this app")]
    NoSuchGroup(i64),
    #[error("the group has no members")]
    NoMembers,
    /// `enforce` was asked for and the sender may not post (not a member, muted, speak-banned).
    #[error("{0}")]
    Refused(&'static str),
    #[error("group directory: {0}")]
    Backend(#[from] backend::BackendError),
    #[error("message store: {0}")]
    Store(#[from] StoreFailure),
}

/// Posts a GROUP_IM from the server side (`/post_group_message`, trusted: the sender need not be a
/// member, as in GoBelieve): stored like a client's message with device id 0; normal-group members
/// get pushes, super-group members a SYNC_GROUP_NOTIFY. With `enforce` the sender gets a client's
/// checks (member, not muted, not speak-banned). Answers each queue with the key its entry got.
pub async fn post_group_message(
    app: &Arc<App>,
    appid: i64,
    sender: i64,
    gid: i64,
    content: Bytes,
    enforce: bool,
) -> Result<Vec<(QueueId, i64)>, GroupPostError> {
    let group = app
        .groups
        .get(appid, gid)
        .await?
        .ok_or(GroupPostError::NoSuchGroup(gid))?;
    if enforce {
        match group.member(sender) {
            None => {
                return Err(GroupPostError::Refused(
                    "the sender is not a member of the group",
                ))
            }
            Some(m) if m.mute => {
                return Err(GroupPostError::Refused("the sender is muted in the group"))
            }
            Some(_) => {}
        }
        if app.backend.user_flags(appid, sender).await?.forbidden {
            return Err(GroupPostError::Refused("the sender is speak-banned"));
        }
    }
    let ts = now_secs();
    let body = Body::GroupIm(Im {
        sender,
        receiver: gid,
        timestamp: ts,
        msgid: 0,
        content,
    })
    .to_stored();
    let (uids, queues) = queues_of(&group);
    let posted = queues.clone();
    let r = app
        .store
        .append(vec![NewMessage {
            key: None,
            queues,
            device_id: 0,
            cmd: cmd::GROUP_IM,
            flag: 0,
            timestamp: ts as i64,
            body: body.clone(),
        }])
        .await?;
    Stats::inc(&app.stats.messages_stored);
    let entries = r.into_iter().next().unwrap_or_default();
    let msg = Push::plain(cmd::GROUP_IM, 0, body.clone());
    if group.super_group {
        notify_members(app, &group, &uids, &entries);
    } else {
        deliver_normal(app, &group, &uids, &entries, &msg, 0);
    }
    offline::group(app, &group, sender, &body);
    Ok(stored_keys(posted, &entries))
}

/// Each queue with the key its entry got.
fn stored_keys(queues: Vec<QueueId>, entries: &[Appended]) -> Vec<(QueueId, i64)> {
    queues
        .into_iter()
        .zip(entries.iter().map(|e| e.key))
        .collect()
}

/// Posts a group notification (`/post_group_notification`): one GROUP_NOTIFICATION per member queue
/// (normal group) or one in the group queue (super group), then notifications to sync.
/// `members` are added to the group's own; `super_group` applies when the group is unknown.
pub async fn post_group_notification(
    app: &Arc<App>,
    appid: i64,
    gid: i64,
    notification: Bytes,
    members: &[i64],
    super_group: bool,
) -> Result<Vec<(QueueId, i64)>, GroupPostError> {
    let mut group = match app.groups.get(appid, gid).await? {
        Some(g) => (*g).clone(),
        None => Group {
            appid,
            gid,
            name: String::new(),
            master: 0,
            super_group,
            members: Default::default(),
        },
    };
    for &m in members.iter().filter(|&&m| m > 0) {
        group.members.entry(m).or_insert(backend::groups::Member {
            mute: false,
            joined_at: 0,
        });
    }
    if group.members.is_empty() {
        return Err(GroupPostError::NoMembers);
    }
    let (uids, queues) = queues_of(&group);
    let posted = queues.clone();
    let r = app
        .store
        .append(vec![NewMessage {
            key: None,
            queues,
            device_id: 0,
            cmd: cmd::GROUP_NOTIFICATION,
            flag: store::FLAG_GROUP,
            timestamp: now_secs() as i64,
            body: notification,
        }])
        .await?;
    Stats::inc(&app.stats.messages_stored);
    let entries = r.into_iter().next().unwrap_or_default();
    notify_members(app, &group, &uids, &entries);
    Ok(stored_keys(posted, &entries))
}

/// The HTTP answer to a refused group post (every API that posts to groups answers alike).
impl From<GroupPostError> for ApiError {
    fn from(e: GroupPostError) -> Self {
        use GroupPostError as E;
        match e {
            E::NoSuchGroup(_) => ApiError::not_found(e.to_string()),
            // A group nobody belongs to is answered like a missing group, on every endpoint.
            E::NoMembers => ApiError::not_found("group not found or without members"),
            E::Refused(why) => ApiError {
                status: axum::http::StatusCode::FORBIDDEN,
                message: why.into(),
            },
            E::Backend(b) => b.into(),
            E::Store(s) => s.into(),
        }
    }
}
