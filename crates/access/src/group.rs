//! Group messages (spec §8.2), super-group sync (§9.3) and group notifications (§8.6).
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
//!
//! Super-group sync returns the next entries after the member's key in bounded batches, never entries
//! from before the member joined, and asks the client to continue (SYNC_GROUP_NOTIFY) until caught up.

use std::sync::Arc;

use backend::groups::Group;
use bytes::Bytes;
use proto::{cmd, flag, AckStatus, Body, GroupSyncKey, Im, Metadata};
use store::{Appended, NewMessage, QueueId};
use tracing::warn;

use crate::app::{now_secs, App, AppendResult, Stats};
use crate::offline;
use crate::peer::push_stored;
use crate::route::Push;
use crate::session::{OpCtx, Session};
use crate::sync::Owed;

/// Client flags echoed on group pushes.
const CLIENT_FLAGS: u8 = flag::TEXT | flag::UNPERSISTENT;

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

/// Encodes a SYNC_GROUP_NOTIFY push.
fn group_notify(gid: i64, key: i64) -> Push {
    Push::plain(
        cmd::SYNC_GROUP_NOTIFY,
        0,
        Body::SyncGroupNotify(GroupSyncKey {
            group_id: gid,
            sync_key: key,
        })
        .to_bytes(2),
    )
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
        push_stored(app, (group.appid, uid), at, msg, except);
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
    app.deliver_group(group, &group_notify(group.gid, at.key), except);
    Stats::add(&app.stats.deliveries, n as u64);
}

/// Notifies members that their queue (normal group) or the group queue (super group) has new entries.
fn notify_members(app: &App, group: &Group, uids: &[i64], entries: &[Appended]) {
    if group.super_group {
        if let Some(at) = entries.first() {
            app.deliver_group(group, &group_notify(group.gid, at.key), 0);
        }
    } else {
        for (&uid, at) in uids.iter().zip(entries) {
            crate::peer::notify_sync(app, group.appid, uid, at.key);
        }
    }
}

/// Why a server-side group post failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupPostError {
    #[error("group {0} does not exist in this app")]
    NoSuchGroup(i64),
    #[error("the group has no members")]
    NoMembers,
    #[error("group directory: {0}")]
    Backend(#[from] backend::BackendError),
    #[error("message store: {0}")]
    Store(#[from] crate::app::StoreFailure),
}

/// Posts a GROUP_IM from the server side (`/post_group_message`, trusted: the sender need not be a
/// member, as in GoBelieve): stored like a client's message with device id 0; normal-group members get pushes, super-group members a SYNC_GROUP_NOTIFY (spec §8.6).
pub async fn post_group_message(
    app: &Arc<App>,
    appid: i64,
    sender: i64,
    gid: i64,
    content: Bytes,
) -> Result<(), GroupPostError> {
    let group = app
        .groups
        .get(appid, gid)
        .await?
        .ok_or(GroupPostError::NoSuchGroup(gid))?;
    let ts = now_secs();
    let body = Body::GroupIm(Im {
        sender,
        receiver: gid,
        timestamp: ts,
        msgid: 0,
        content,
    })
    .to_bytes(proto::STORAGE_VERSION);
    let (uids, queues) = if group.super_group {
        (Vec::new(), vec![QueueId::Group { appid, gid }])
    } else {
        member_queues(&group)
    };
    let r = app
        .store
        .append(vec![NewMessage {
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
    Ok(())
}

/// Posts a group notification (`/post_group_notification`): one GROUP_NOTIFICATION per member queue
/// (normal group) or one in the group queue (super group), then notifications to sync (spec §8.6).
/// `members` are added to the group's own; `super_group` applies when the group is unknown.
pub async fn post_group_notification(
    app: &Arc<App>,
    appid: i64,
    gid: i64,
    notification: Bytes,
    members: &[i64],
    super_group: bool,
) -> Result<(), GroupPostError> {
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
    let (uids, queues) = if group.super_group {
        (Vec::new(), vec![QueueId::Group { appid, gid }])
    } else {
        member_queues(&group)
    };
    let r = app
        .store
        .append(vec![NewMessage {
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
    Ok(())
}

impl Session {
    /// MSG_GROUP_IM from this connection.
    pub(crate) async fn on_group_im(&mut self, seq: i32, flags: u8, im: Im) {
        let Some(h) = self.handle.clone() else { return };
        let app = self.app.clone();
        Stats::inc(&app.stats.messages_in);
        if im.sender != h.uid {
            return self.refuse(
                seq,
                AckStatus::INVALID_SENDER,
                "group sender is not the session's user",
            );
        }
        if im.receiver <= 0 {
            // Group ids are positive: no such group, and no directory lookup for it.
            return self.refuse(seq, AckStatus::GROUP_NONEXIST, "group id is not positive");
        }
        if !self.rate_ok(seq) {
            return;
        }
        if h.is_forbidden() {
            return self.refuse(seq, AckStatus::FORBIDDEN, "speak-banned");
        }
        let group = match app.groups.get(h.appid, im.receiver).await {
            Ok(Some(g)) => g,
            Ok(None) => return self.refuse(seq, AckStatus::GROUP_NONEXIST, "no such group"),
            Err(e) => {
                Stats::inc(&app.stats.backend_errors);
                node::warn_throttled!(error = %e, gid = im.receiver, "loading a group failed");
                return self.refuse(
                    seq,
                    AckStatus::STORAGE_FAILED,
                    "group directory unavailable",
                );
            }
        };
        match group.member(h.uid) {
            None => return self.refuse(seq, AckStatus::NOT_GROUP_MEMBER, "not a member"),
            Some(m) if m.mute => return self.refuse(seq, AckStatus::GROUP_MUTED, "muted"),
            Some(_) => {}
        }
        let flags = flags & CLIENT_FLAGS;
        let content = self.filter_text(flags, im.content);
        let ts = now_secs();
        let body = Body::GroupIm(Im {
            timestamp: ts,
            content,
            ..im
        })
        .to_bytes(proto::STORAGE_VERSION);
        let (uids, queues) = if group.super_group {
            (
                Vec::new(),
                vec![QueueId::Group {
                    appid: h.appid,
                    gid: group.gid,
                }],
            )
        } else {
            member_queues(&group)
        };
        let msg = NewMessage {
            queues,
            device_id: h.device_id,
            cmd: cmd::GROUP_IM,
            flag: flags,
            timestamp: ts as i64,
            body: body.clone(),
        };
        self.submit(
            OpCtx::Group {
                seq,
                flag: flags,
                group,
                uids,
                body,
            },
            vec![msg],
        );
    }

    pub(crate) fn complete_group(
        &mut self,
        seq: i32,
        flags: u8,
        group: Arc<Group>,
        uids: Vec<i64>,
        body: Bytes,
        result: AppendResult,
    ) {
        let Some(h) = self.handle.clone() else { return };
        let app = self.app.clone();
        let entries = match result {
            Ok(r) => r.into_iter().next().unwrap_or_default(),
            Err(e) => {
                Stats::inc(&app.stats.store_errors);
                node::warn_throttled!(error = %e, gid = group.gid, "storing a group message failed");
                return self.refuse(seq, AckStatus::STORAGE_FAILED, "store failed");
            }
        };
        Stats::inc(&app.stats.messages_stored);
        let msg = Push::plain(cmd::GROUP_IM, flags, body.clone());
        let own = if group.super_group {
            let Some(&at) = entries.first() else {
                return self.refuse(seq, AckStatus::STORAGE_FAILED, "store returned no position");
            };
            deliver_super(&app, &group, at, &msg, self.conn_id);
            at
        } else {
            deliver_normal(&app, &group, &uids, &entries, &msg, self.conn_id);
            match uids
                .iter()
                .position(|&u| u == h.uid)
                .and_then(|i| entries.get(i))
            {
                Some(&at) => at,
                None => {
                    return self.refuse(
                        seq,
                        AckStatus::STORAGE_FAILED,
                        "store returned no position",
                    )
                }
            }
        };
        offline::group(&app, &group, h.uid, &body);
        let ack_flag = if group.super_group {
            flag::SUPER_GROUP
        } else {
            0
        };
        self.ack(
            seq,
            AckStatus::SUCCESS,
            ack_flag,
            Some(Metadata {
                sync_key: own.key,
                prev_sync_key: own.prev_key,
            }),
        );
    }

    /// SYNC_GROUP(gid, key): the member's next super-group entries after `key` (spec §9.3).
    pub(crate) async fn on_sync_group(&mut self, req: GroupSyncKey) {
        let Some(h) = self.handle.clone() else { return };
        let app = self.app.clone();
        Stats::inc(&app.stats.syncs);
        let gid = req.group_id;
        let empty = |s: &mut Session, key: i64| {
            s.synced(Some(gid));
            let g = GroupSyncKey {
                group_id: gid,
                sync_key: key,
            };
            s.emit(&Body::SyncGroupBegin(g), 0);
            s.emit(&Body::SyncGroupEnd(g), 0);
        };
        let group = match app.groups.get(h.appid, gid).await {
            Ok(Some(g)) => g,
            Ok(None) => return empty(self, req.sync_key),
            Err(e) => {
                // An empty answer would claim the client is caught up: answer later.
                Stats::inc(&app.stats.backend_errors);
                self.owe_sync(Owed::Group(req), &e);
                return;
            }
        };
        let Some(member) = group.member(h.uid) else {
            return empty(self, req.sync_key);
        };
        if !group.super_group {
            // Normal groups have no group queue: their messages are in members' personal queues.
            return empty(self, req.sync_key);
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
                self.owe_sync(Owed::Group(req), &e);
                return;
            }
        };
        self.synced(Some(gid));
        let begin = GroupSyncKey {
            group_id: gid,
            sync_key: key,
        };
        self.emit(&Body::SyncGroupBegin(begin), 0);
        let (last, truncated) = self.emit_synced(&page.messages);
        let k_end = crate::sync::end_key(&page, last, key);
        Stats::add(&app.stats.synced_messages, page.messages.len() as u64);
        app.metrics.sync_messages.record(page.messages.len() as f64);
        let end = GroupSyncKey {
            group_id: gid,
            sync_key: k_end,
        };
        self.emit(&Body::SyncGroupEnd(end), 0);
        if page.has_more || truncated {
            self.emit(
                &Body::SyncGroupNotify(GroupSyncKey {
                    group_id: gid,
                    sync_key: k_end + 1,
                }),
                0,
            );
        }
    }

    pub(crate) fn on_group_sync_key(&mut self, g: GroupSyncKey) {
        if let Some(h) = &self.handle {
            if g.sync_key > 0 {
                self.app
                    .backend
                    .report_group_sync_key(h.appid, h.uid, g.group_id, g.sync_key);
            }
        }
    }
}
