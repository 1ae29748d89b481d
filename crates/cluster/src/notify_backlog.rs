//! The sync notifications owed for persistent route messages that a bounded route queue had to
//! drop, so that overload costs receivers a sync, never a message.
//!
//! Every persistent message a client can miss is announced by a key: a PUBLISH or PUBLISH_GROUP
//! with `msgid > 0` (the METADATA key of a stored message), or one whose inner frame is a
//! SYNC_NOTIFY / SYNC_GROUP_NOTIFY. When such a frame cannot be queued, [`NotifyBacklog::note`]
//! keeps only the highest key per receiver (per `(kind, appid, receiver)` and, for group
//! notifications, group id), and [`NotifyBacklog::pop`] later turns each entry into one PUBLISH
//! (PUBLISH_GROUP) whose inner frame is `SYNC_NOTIFY(key)` (`SYNC_GROUP_NOTIFY(gid, key)`). A
//! client syncs when a notification's key is above its own (docs/protocol.md §10.4), so one late
//! notification stands for any number of dropped messages, and a notification that overtakes older
//! pushes only makes the client discard those pushes and sync once more. Room messages are not
//! stored and owe nothing. The backlog is bounded by entries: beyond `cap` receivers a drop is lost
//! and the caller must count and report it.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use proto::{Body, GroupSyncKey};

use crate::route_proto::{now_ns, route_message_body, RouteBody, RouteKind, RoutedMessage};

/// Bytes of owed notifications a writer takes ahead of its queue per write, so that under
/// sustained overload they still go out without starving the queue.
pub const OWED_CHUNK: usize = 16 * 1024;

/// Who a notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Target {
    kind: RouteKind,
    appid: i64,
    receiver: i64,
    /// The group of a SYNC_GROUP_NOTIFY; 0 for a SYNC_NOTIFY.
    group: i64,
}

/// What [`NotifyBacklog::note`] did with a dropped message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// A notification is owed (new entry, or a higher key for an existing one).
    Owed,
    /// The message announces nothing a client could miss (room or transient message).
    NotNeeded,
    /// The backlog is full: the drop is lost.
    Full,
}

/// Notifications owed, one per receiver, highest key kept (see the module docs).
#[derive(Debug)]
pub struct NotifyBacklog {
    keys: HashMap<Target, i64>,
    order: VecDeque<Target>,
    cap: usize,
}

impl NotifyBacklog {
    /// A backlog of at most `cap` receivers.
    pub fn new(cap: usize) -> NotifyBacklog {
        NotifyBacklog {
            keys: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Receivers owed a notification.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Forgets everything owed.
    pub fn clear(&mut self) {
        self.keys = HashMap::new();
        self.order = VecDeque::new();
    }

    /// Records that `msg` was dropped.
    pub fn note(&mut self, msg: &RoutedMessage) -> Noted {
        self.note_parts(msg.kind, msg.appid, msg.receiver, msg.msgid, &msg.inner)
    }

    /// Records that the route frame `cmd`/`body` was dropped (frames that are not PUBLISH,
    /// PUBLISH_GROUP or PUBLISH_ROOM, or do not decode, owe nothing).
    pub fn note_frame(&mut self, cmd: u8, body: &Bytes) -> Noted {
        match RouteBody::decode(cmd, body) {
            Ok(RouteBody::Publish(m)) => self.note(&m),
            Ok(RouteBody::PublishStored { message, .. }) => self.note(&message),
            _ => Noted::NotNeeded,
        }
    }

    /// Records that a route message with these fields was dropped (`inner`: its inner frame).
    pub fn note_parts(
        &mut self,
        kind: RouteKind,
        appid: i64,
        receiver: i64,
        msgid: i64,
        inner: &[u8],
    ) -> Noted {
        let Some((target, key)) = owed(kind, appid, receiver, msgid, inner) else {
            return Noted::NotNeeded;
        };
        if let Some(k) = self.keys.get_mut(&target) {
            *k = (*k).max(key);
            return Noted::Owed;
        }
        if self.order.len() >= self.cap {
            return Noted::Full;
        }
        self.keys.insert(target, key);
        self.order.push_back(target);
        Noted::Owed
    }

    /// The oldest owed notification as a route frame `(cmd, body)`, removed from the backlog.
    pub fn pop(&mut self) -> Option<(u8, Bytes)> {
        loop {
            let t = self.order.pop_front()?;
            let Some(key) = self.keys.remove(&t) else {
                continue;
            };
            if self.order.is_empty() && self.keys.capacity() > 1024 {
                self.clear();
            }
            if let Some(frame) = notification(t, key) {
                return Some(frame);
            }
        }
    }

    /// Removes and returns the notification owed to user `(appid, uid)` for its personal queue,
    /// if any (its place in the order is skipped by [`NotifyBacklog::pop`] later).
    pub fn take_user(&mut self, appid: i64, uid: i64) -> Option<(u8, Bytes)> {
        let t = Target {
            kind: RouteKind::User,
            appid,
            receiver: uid,
            group: 0,
        };
        let key = self.keys.remove(&t)?;
        notification(t, key)
    }

    /// Removes and returns every notification owed for super groups (PUBLISH_GROUP).
    pub fn take_groups(&mut self) -> Vec<(u8, Bytes)> {
        let groups: Vec<(Target, i64)> = self
            .keys
            .iter()
            .filter(|(t, _)| t.kind == RouteKind::Group)
            .map(|(t, k)| (*t, *k))
            .collect();
        groups
            .into_iter()
            .filter_map(|(t, key)| {
                self.keys.remove(&t);
                notification(t, key)
            })
            .collect()
    }
}

/// The route frame `(cmd, body)` telling `t` to sync up to `key`: a PUBLISH (PUBLISH_GROUP) whose
/// inner frame is `SYNC_NOTIFY(key)` (`SYNC_GROUP_NOTIFY(gid, key)`).
fn notification(t: Target, key: i64) -> Option<(u8, Bytes)> {
    let body = if t.group == 0 {
        Body::SyncNotify(key)
    } else {
        Body::SyncGroupNotify(GroupSyncKey {
            group_id: t.group,
            sync_key: key,
        })
    };
    let mut inner = BytesMut::new();
    body.encode_frame(0, proto::STORAGE_VERSION, 0, &mut inner);
    // A notification is tiny: it always fits the route message limits.
    route_message_body(t.appid, t.receiver, 0, 0, now_ns(), &inner)
        .ok()
        .map(|b| (t.kind.cmd(), b))
}

/// The notification a dropped route message owes: its target and key, if any.
fn owed(
    kind: RouteKind,
    appid: i64,
    receiver: i64,
    msgid: i64,
    inner: &[u8],
) -> Option<(Target, i64)> {
    let target = |group| Target {
        kind,
        appid,
        receiver,
        group,
    };
    match kind {
        RouteKind::Room => None,
        RouteKind::User if msgid > 0 => Some((target(0), msgid)),
        RouteKind::Group if msgid > 0 => Some((target(receiver), msgid)),
        RouteKind::User | RouteKind::Group => {
            let frame = crate::route_proto::parse_inner(&Bytes::copy_from_slice(inner)).ok()?;
            match Body::decode(frame.cmd, frame.version, &frame.body).ok()? {
                Body::SyncNotify(k) if k > 0 => Some((target(0), k)),
                Body::SyncGroupNotify(g) if g.sync_key > 0 && g.group_id != 0 => {
                    Some((target(g.group_id), g.sync_key))
                }
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Frame;

    fn inner(body: Body, flag: u8) -> Bytes {
        let mut out = BytesMut::new();
        body.encode_frame(0, 2, flag, &mut out);
        out.freeze()
    }

    fn popped(b: &mut NotifyBacklog) -> Option<(RoutedMessage, Body)> {
        let (c, body) = b.pop()?;
        let RouteBody::Publish(m) = RouteBody::decode(c, &body).unwrap() else {
            panic!("not a publish");
        };
        let f: Frame = m.inner_frame().unwrap();
        let inner = Body::decode(f.cmd, f.version, &f.body).unwrap();
        assert_eq!(m.msgid, 0, "a notification carries no metadata");
        assert!(m.flags_consistent());
        Some((m, inner))
    }

    #[test]
    fn keeps_the_highest_key_per_receiver_in_first_drop_order() {
        let mut b = NotifyBacklog::new(10);
        let im = inner(Body::SyncNotify(1), proto::flag::PUSH);
        assert_eq!(b.note_parts(RouteKind::User, 1, 7, 100, &im), Noted::Owed);
        assert_eq!(b.note_parts(RouteKind::User, 1, 8, 50, &im), Noted::Owed);
        assert_eq!(b.note_parts(RouteKind::User, 1, 7, 90, &im), Noted::Owed);
        let n = inner(Body::SyncNotify(120), 0);
        assert_eq!(b.note_parts(RouteKind::User, 1, 7, 0, &n), Noted::Owed);
        assert_eq!(b.len(), 2);
        let (m, body) = popped(&mut b).unwrap();
        assert_eq!((m.kind, m.appid, m.receiver), (RouteKind::User, 1, 7));
        assert_eq!(body, Body::SyncNotify(120));
        let (m, body) = popped(&mut b).unwrap();
        assert_eq!(m.receiver, 8);
        assert_eq!(body, Body::SyncNotify(50));
        assert!(popped(&mut b).is_none());
        assert!(b.is_empty());
    }

    #[test]
    fn group_messages_owe_a_group_notification_and_rooms_nothing() {
        let mut b = NotifyBacklog::new(10);
        let gim = inner(Body::SyncNotify(1), proto::flag::PUSH);
        assert_eq!(b.note_parts(RouteKind::Group, 1, 33, 5, &gim), Noted::Owed);
        let gn = inner(
            Body::SyncGroupNotify(GroupSyncKey {
                group_id: 44,
                sync_key: 9,
            }),
            0,
        );
        assert_eq!(b.note_parts(RouteKind::User, 1, 7, 0, &gn), Noted::Owed);
        assert_eq!(
            b.note_parts(RouteKind::Room, 1, 3, 0, &gim),
            Noted::NotNeeded
        );
        let transient = inner(Body::SyncKey(4), 0);
        assert_eq!(
            b.note_parts(RouteKind::User, 1, 7, 0, &transient),
            Noted::NotNeeded
        );
        let (m, body) = popped(&mut b).unwrap();
        assert_eq!((m.kind, m.receiver), (RouteKind::Group, 33));
        assert_eq!(
            body,
            Body::SyncGroupNotify(GroupSyncKey {
                group_id: 33,
                sync_key: 5
            })
        );
        let (m, body) = popped(&mut b).unwrap();
        assert_eq!((m.kind, m.receiver), (RouteKind::User, 7));
        assert_eq!(
            body,
            Body::SyncGroupNotify(GroupSyncKey {
                group_id: 44,
                sync_key: 9
            })
        );
    }

    #[test]
    fn bounded_by_receivers_and_decodes_dropped_frames() {
        let mut b = NotifyBacklog::new(2);
        let im = inner(Body::SyncNotify(1), proto::flag::PUSH);
        let frame = |uid: i64, key: i64| {
            (
                RouteKind::User.cmd(),
                route_message_body(1, uid, key, key - 1, 0, &im).unwrap(),
            )
        };
        for (uid, key) in [(1, 10), (2, 20), (1, 11)] {
            let (c, body) = frame(uid, key);
            assert_eq!(b.note_frame(c, &body), Noted::Owed);
        }
        let (c, body) = frame(3, 30);
        assert_eq!(b.note_frame(c, &body), Noted::Full);
        assert_eq!(
            b.note_frame(crate::route_proto::cmd::SUBSCRIBE, &body),
            Noted::NotNeeded
        );
        assert_eq!(popped(&mut b).unwrap().1, Body::SyncNotify(11));
        assert_eq!(b.note_frame(c, &body), Noted::Owed);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn one_receivers_notification_or_every_groups_can_be_taken_out() {
        let mut b = NotifyBacklog::new(10);
        let im = inner(Body::SyncNotify(1), 0);
        assert_eq!(b.note_parts(RouteKind::User, 7, 1, 10, &im), Noted::Owed);
        assert_eq!(b.note_parts(RouteKind::User, 7, 2, 20, &im), Noted::Owed);
        assert_eq!(b.note_parts(RouteKind::Group, 7, 9, 30, &im), Noted::Owed);
        assert!(b.take_user(7, 3).is_none());
        let (c, body) = b.take_user(7, 1).unwrap();
        let RouteBody::Publish(m) = RouteBody::decode(c, &body).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!((m.kind, m.receiver), (RouteKind::User, 1));
        let f = m.inner_frame().unwrap();
        assert_eq!(
            Body::decode(f.cmd, f.version, &f.body).unwrap(),
            Body::SyncNotify(10)
        );
        assert_eq!(b.len(), 2);
        let groups = b.take_groups();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].0, crate::route_proto::cmd::PUBLISH_GROUP);
        // What is left pops in order, skipping what was taken.
        assert_eq!(popped(&mut b).unwrap().1, Body::SyncNotify(20));
        assert!(b.pop().is_none());
        assert!(b.is_empty());
    }
}
