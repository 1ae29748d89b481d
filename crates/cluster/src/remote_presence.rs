//! What one route link knows about the router's *other* connections — remote presence
//! (docs/internal-protocols.md, *route link*, *Remote presence*) — and the sync notifications owed
//! for the publishes it skipped because of it.
//!
//! After a link sends WATCH_PRESENCE, a banter router answers with a snapshot (REMOTE_PRESENCE
//! frames for every user and room another connection subscribes, then PEERS with the number of
//! other connections) and afterwards with deltas. Until that first PEERS the view is *unknown* and
//! [`RemoteView::wants`] says yes to everything, exactly as without the extension: a router that
//! ignores WATCH_PRESENCE (GoBelieve's imr, an older banter) never makes a node skip anything, and
//! neither does a link that just (re)connected.
//!
//! Once known, a user publish is wanted only if another connection subscribes the user, a room
//! publish only if another connection subscribes the room, a super-group publish only if there is
//! another connection at all. A skipped publish that announced a stored message (it carries a sync
//! key) is remembered for a while ([`SKIP_WINDOW`], two generations of [`NotifyBacklog`], highest
//! key per receiver): should the receiver turn out to be present elsewhere after all — a session
//! that came up on another node while the news was on its way here — the link sends it a
//! SYNC_NOTIFY with that key as soon as the router says so, and for super groups, once the router
//! has another connection again, a SYNC_GROUP_NOTIFY. The receiver syncs; nothing stored is missed.
//! Room messages are not stored and owe nothing, like elsewhere on the links.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::notify_backlog::{Noted, NotifyBacklog};
use crate::route_proto::{PresenceKind, RemotePresence, RouteKind};

/// How long a skipped publish stays remembered at least (at most twice as long).
pub const SKIP_WINDOW: Duration = Duration::from_secs(10);

/// One link's view of the router's other connections (see the module docs).
#[derive(Debug)]
pub struct RemoteView {
    /// The snapshot has been received on the current connection.
    known: bool,
    users: HashSet<(i64, i64)>,
    rooms: HashSet<(i64, i64)>,
    peers: u32,
    /// Skipped publishes: the current generation and the previous one.
    skipped: [NotifyBacklog; 2],
    rotated: Instant,
    cap: usize,
}

impl RemoteView {
    /// An unknown view whose skip memory holds at most `cap` receivers per generation.
    pub fn new(cap: usize) -> RemoteView {
        RemoteView {
            known: false,
            users: HashSet::new(),
            rooms: HashSet::new(),
            peers: 0,
            skipped: [NotifyBacklog::new(cap), NotifyBacklog::new(cap)],
            rotated: Instant::now(),
            cap,
        }
    }

    /// A connection came up (or went down): nothing is known until the router's next snapshot.
    /// What was skipped stays remembered: the snapshot may show its receivers present.
    pub fn reset(&mut self) {
        self.known = false;
        self.users = HashSet::new();
        self.rooms = HashSet::new();
        self.peers = 0;
    }

    /// Whether the router's snapshot has been received on the current connection.
    pub fn is_known(&self) -> bool {
        self.known
    }

    /// Users another connection subscribes (as far as known).
    pub fn remote_users(&self) -> usize {
        self.users.len()
    }

    /// Whether a route message for `receiver` can reach anyone: always while unknown.
    pub fn wants(&self, kind: RouteKind, appid: i64, receiver: i64) -> bool {
        if !self.known {
            return true;
        }
        match kind {
            RouteKind::User => self.users.contains(&(appid, receiver)),
            RouteKind::Room => self.rooms.contains(&(appid, receiver)),
            RouteKind::Group => self.peers > 0,
        }
    }

    /// Whether user `(appid, uid)` is subscribed by another connection: `None` while unknown.
    pub fn user(&self, appid: i64, uid: i64) -> Option<bool> {
        self.known.then(|| self.users.contains(&(appid, uid)))
    }

    /// Remembers a skipped route message (its fields, `inner` its inner frame) at `now`. False when
    /// it owed a notification that the full memory could not keep.
    pub fn note_skipped(
        &mut self,
        (kind, appid, receiver, msgid): (RouteKind, i64, i64, i64),
        inner: &[u8],
        now: Instant,
    ) -> bool {
        if now.duration_since(self.rotated) >= SKIP_WINDOW {
            self.skipped.swap(0, 1);
            self.skipped[0] = NotifyBacklog::new(self.cap);
            self.rotated = now;
        }
        self.skipped[0].note_parts(kind, appid, receiver, msgid, inner) != Noted::Full
    }

    /// Applies a REMOTE_PRESENCE; returns the notifications owed to users that are now present
    /// elsewhere (route frames `(cmd, body)` to send on the link).
    pub fn apply(&mut self, p: &RemotePresence) -> Vec<(u8, Bytes)> {
        let mut owed = Vec::new();
        let set = match p.kind {
            PresenceKind::User => &mut self.users,
            PresenceKind::Room => &mut self.rooms,
        };
        for &id in &p.ids {
            if p.present {
                set.insert((p.appid, id));
            } else {
                set.remove(&(p.appid, id));
            }
        }
        if p.present && p.kind == PresenceKind::User {
            for &id in &p.ids {
                for gen in &mut self.skipped {
                    owed.extend(gen.take_user(p.appid, id));
                }
            }
        }
        owed
    }

    /// Applies a PEERS: the view is known from now on. Returns the super-group notifications owed
    /// when the router has another connection again.
    pub fn set_peers(&mut self, count: u32) -> Vec<(u8, Bytes)> {
        let rising = count > 0 && (self.peers == 0 || !self.known);
        self.known = true;
        self.peers = count;
        if !rising {
            return Vec::new();
        }
        self.skipped
            .iter_mut()
            .flat_map(NotifyBacklog::take_groups)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_proto::RouteBody;
    use bytes::BytesMut;
    use proto::Body;

    fn im() -> Bytes {
        let mut b = BytesMut::new();
        Body::SyncNotify(1).encode_frame(0, 2, 0, &mut b);
        b.freeze()
    }

    fn presence(kind: PresenceKind, present: bool, ids: Vec<i64>) -> RemotePresence {
        RemotePresence {
            kind,
            present,
            appid: 7,
            ids,
        }
    }

    fn sync_key(frame: &(u8, Bytes)) -> (RouteKind, i64, Body) {
        let RouteBody::Publish(m) = RouteBody::decode(frame.0, &frame.1).unwrap() else {
            panic!("not a publish");
        };
        let f = m.inner_frame().unwrap();
        (
            m.kind,
            m.receiver,
            Body::decode(f.cmd, f.version, &f.body).unwrap(),
        )
    }

    #[test]
    fn unknown_wants_everything_known_only_what_others_subscribe() {
        let mut v = RemoteView::new(100);
        assert!(v.wants(RouteKind::User, 7, 1));
        assert!(v.wants(RouteKind::Group, 7, 5));
        assert_eq!(v.user(7, 1), None);
        assert!(v
            .apply(&presence(PresenceKind::User, true, vec![1, 2]))
            .is_empty());
        v.apply(&presence(PresenceKind::Room, true, vec![100]));
        // Still unknown until PEERS.
        assert!(v.wants(RouteKind::User, 7, 3));
        assert!(v.set_peers(0).is_empty());
        assert!(v.wants(RouteKind::User, 7, 1));
        assert!(!v.wants(RouteKind::User, 7, 3));
        assert!(v.wants(RouteKind::Room, 7, 100));
        assert!(!v.wants(RouteKind::Room, 7, 101));
        assert!(!v.wants(RouteKind::Group, 7, 5));
        v.apply(&presence(PresenceKind::User, false, vec![1]));
        assert_eq!(v.user(7, 1), Some(false));
        assert_eq!(v.user(7, 2), Some(true));
        v.set_peers(2);
        assert!(v.wants(RouteKind::Group, 7, 5));
        v.reset();
        assert!(v.wants(RouteKind::User, 7, 3));
        assert_eq!(v.remote_users(), 0);
    }

    #[test]
    fn skipped_messages_owe_a_notification_when_their_receiver_shows_up() {
        let mut v = RemoteView::new(100);
        v.set_peers(0);
        let now = Instant::now();
        assert!(v.note_skipped((RouteKind::User, 7, 1, 10), &im(), now));
        assert!(v.note_skipped((RouteKind::User, 7, 1, 12), &im(), now));
        assert!(v.note_skipped((RouteKind::Group, 7, 50, 30), &im(), now));
        // A room message owes nothing.
        assert!(v.note_skipped((RouteKind::Room, 7, 100, 0), &im(), now));
        // Another user shows up: nothing owed to it.
        assert!(v
            .apply(&presence(PresenceKind::User, true, vec![2]))
            .is_empty());
        let owed = v.apply(&presence(PresenceKind::User, true, vec![1]));
        assert_eq!(owed.len(), 1);
        assert_eq!(
            sync_key(&owed[0]),
            (RouteKind::User, 1, Body::SyncNotify(12))
        );
        // Taken: not owed twice.
        assert!(v
            .apply(&presence(PresenceKind::User, true, vec![1]))
            .is_empty());
        let groups = v.set_peers(1);
        assert_eq!(groups.len(), 1);
        assert_eq!(sync_key(&groups[0]).0, RouteKind::Group);
        assert!(v.set_peers(2).is_empty());
    }

    #[test]
    fn skips_are_forgotten_after_two_windows() {
        let mut v = RemoteView::new(100);
        v.set_peers(0);
        let t0 = Instant::now();
        v.note_skipped((RouteKind::User, 7, 1, 10), &im(), t0);
        // One window later: still remembered (previous generation).
        v.note_skipped((RouteKind::User, 7, 2, 11), &im(), t0 + SKIP_WINDOW);
        // Two windows later: the first generation is gone.
        v.note_skipped((RouteKind::User, 7, 3, 12), &im(), t0 + SKIP_WINDOW * 2);
        assert!(v
            .apply(&presence(PresenceKind::User, true, vec![1]))
            .is_empty());
        assert_eq!(
            v.apply(&presence(PresenceKind::User, true, vec![2, 3]))
                .len(),
            2
        );
        // A full memory says so.
        let mut small = RemoteView::new(1);
        assert!(small.note_skipped((RouteKind::User, 7, 1, 10), &im(), t0));
        assert!(!small.note_skipped((RouteKind::User, 7, 2, 10), &im(), t0));
    }
}
