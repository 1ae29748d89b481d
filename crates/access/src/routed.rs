//! Messages routed here from other access nodes (the route links' [`RouteHandler`]): checked, then
//! handed to local sessions.
//!
//! User and room messages, and super-group messages whose group is cached, are delivered on the
//! route link's own task, straight into the bounded session outboxes (nothing waits, nothing is
//! queued in between, so a busy node cannot fall behind its router in a queue of its own). A
//! super-group message whose group must first be loaded goes through a bounded channel to the
//! dispatch task; while any wait there, later group messages follow them, so one group's messages
//! keep their order. When that channel is full, a persistent message's receivers are owed one
//! coalesced sync notification instead ([`NotifyBacklog`]), which the dispatch task delivers once
//! the channel has drained: overload costs clients a sync, never a message.
//!
//! When a route link has (re)subscribed its users — after a router restart, a lost connection, at
//! start-up, or when a configuration reload moved them to another router — publishes that other nodes made before the router knew those users were dropped
//! there. So once the link has written its state (and a short settling time has passed, for the
//! router to apply it), each of those users still here is told its personal queue's newest key
//! with a SYNC_NOTIFY; clients that missed something sync, the others ignore it (docs/protocol.md
//! §10.4).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backend::groups::GroupDirectory;

use cluster::notify_backlog::{Noted, NotifyBacklog};
use cluster::route_link::RouteHandler;
use cluster::route_proto::{RouteBody, RouteKind, RoutedMessage};
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use store::QueueId;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::route::{Push, RoomTable, RouteTable};
use crate::stats::Stats;
use crate::store_client::StoreClient;

/// Group messages waiting for the dispatch task; beyond this their receivers are owed a sync
/// notification.
const GROUP_QUEUE: usize = 65_536;
/// Groups that can be owed a notification at once; beyond this a drop is lost (counted, warned).
const OWED_GROUPS: usize = 65_536;
/// Wait after a link has written its subscriptions before reading the users' keys, so that
/// messages stored meanwhile reach them as ordinary publishes (the router has applied the state).
const RESUBSCRIBE_SETTLE: Duration = Duration::from_millis(500);
/// Store lookups at once when notifying re-subscribed users.
const RESUBSCRIBE_LOOKUPS: usize = 32;

/// What routed messages are delivered with: the node's sessions, its group directory and store.
#[derive(Clone)]
pub(crate) struct Local {
    pub route: Arc<RouteTable>,
    pub rooms: Arc<RoomTable>,
    pub groups: GroupDirectory,
    pub store: StoreClient,
    pub stats: Arc<Stats>,
}

/// The handler the route links call (see the module docs).
pub(crate) struct RoutedInbox {
    app: Local,
    tx: mpsc::Sender<RoutedMessage>,
    /// Group messages handed to the dispatch task and not yet delivered.
    waiting: AtomicUsize,
    owed: Mutex<NotifyBacklog>,
}

impl RoutedInbox {
    /// The inbox delivering to `app` and the receiving end for [`dispatch`].
    pub(crate) fn new(app: Local) -> (RoutedInbox, mpsc::Receiver<RoutedMessage>) {
        let (tx, rx) = mpsc::channel(GROUP_QUEUE);
        let inbox = RoutedInbox {
            app,
            tx,
            waiting: AtomicUsize::new(0),
            owed: Mutex::new(NotifyBacklog::new(OWED_GROUPS)),
        };
        (inbox, rx)
    }

    fn to_dispatcher(&self, app: &Local, m: RoutedMessage) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let m = match self.tx.try_send(m) {
            Ok(()) => return,
            Err(TrySendError::Full(m) | TrySendError::Closed(m)) => m,
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match self.owed.lock().note(&m) {
            Noted::Owed => {
                let n = app.stats.routed_coalesced.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.checked_rem(10_000) == Some(0) {
                    tracing::warn!(
                        coalesced_total = n,
                        "routed group messages queue full; members will be sent a sync notification"
                    );
                }
            }
            Noted::Full | Noted::NotNeeded => {
                let n = app.stats.routed_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.checked_rem(1000) == Some(0) {
                    tracing::warn!(
                        dropped_total = n,
                        gid = m.receiver,
                        "routed group message dropped: queue and notification backlog full"
                    );
                }
            }
        }
    }
}

impl RouteHandler for RoutedInbox {
    fn on_publish(&self, m: RoutedMessage) {
        let app = &self.app;
        if m.kind == RouteKind::User {
            if let Some(f) = m.inner_frame().filter(|f| f.cmd == proto::cmd::KICK) {
                // Another node ended a revoked token's or a kicked user's sessions: end them here too.
                if let Ok(fp) = <[u8; 8]>::try_from(&f.body[..]) {
                    let n = app.route.kick(
                        m.appid,
                        m.receiver,
                        u64::from_be_bytes(fp),
                        crate::route::KICKED,
                    );
                    tracing::debug!(
                        appid = m.appid,
                        uid = m.receiver,
                        sessions = n,
                        "routed kick"
                    );
                } else {
                    Stats::inc(&app.stats.routed_rejected);
                }
                return;
            }
        }
        let Some(push) = checked_push(app, &m) else {
            return;
        };
        let n = match m.kind {
            RouteKind::User => app.route.deliver(m.appid, m.receiver, &push, 0),
            RouteKind::Room => app.rooms.deliver(m.appid, m.receiver, &push, 0).delivered,
            RouteKind::Group => {
                let cached = if self.waiting.load(Ordering::Acquire) == 0 {
                    app.groups.cached(m.appid, m.receiver)
                } else {
                    None
                };
                match cached {
                    Some(Some(g)) => app.route.deliver_group(&g, &push, 0),
                    Some(None) => 0,
                    None => {
                        self.to_dispatcher(app, m);
                        return;
                    }
                }
            }
        };
        Stats::add(&app.stats.deliveries, n as u64);
    }

    /// A stored message and its SYNC_NOTIFY (see [`RouteHandler::on_stored`]), handed to this
    /// node's sessions as the sending node hands them to its own.
    fn on_stored(&self, m: RoutedMessage) {
        let app = &self.app;
        let Some(push) = checked_push(app, &m) else {
            return;
        };
        let n = app.route.deliver(m.appid, m.receiver, &push, 0);
        if n > 0 {
            app.route
                .deliver(m.appid, m.receiver, &Push::sync_notify(m.msgid), 0);
        }
        Stats::add(&app.stats.deliveries, n as u64);
    }

    fn on_resubscribed(&self, users: Vec<(i64, i64)>) {
        tokio::spawn(notify_resubscribed(self.app.clone(), users));
    }
}

/// Tells every session of `users` its personal queue's newest key (see the module docs).
async fn notify_resubscribed(app: Local, users: Vec<(i64, i64)>) {
    tokio::time::sleep(RESUBSCRIBE_SETTLE).await;
    let total = users.len();
    // (sessions notified, the lookup's error): failures are summed up in one line at the end.
    let (notified, failed, last_error) = stream::iter(users)
        .map(|(appid, uid)| {
            let app = app.clone();
            async move {
                if !has_session(&app, appid, uid) {
                    return (0, None);
                }
                match app.store.last_key(QueueId::user(appid, uid)).await {
                    Ok(key) if key > 0 => (
                        app.route.deliver(appid, uid, &Push::sync_notify(key), 0),
                        None,
                    ),
                    Ok(_) => (0, None),
                    Err(e) => {
                        Stats::inc(&app.stats.store_errors);
                        tracing::debug!(error = %e, appid, uid, "reading a re-subscribed user's newest key failed");
                        (0, Some(e.to_string()))
                    }
                }
            }
        })
        .buffer_unordered(RESUBSCRIBE_LOOKUPS)
        .fold((0usize, 0usize, None), |(n, f, last), (d, e)| async move {
            let failed = e.is_some();
            (n + usize::from(d > 0), f + usize::from(failed), e.or(last))
        })
        .await;
    if let Some(error) = last_error {
        tracing::warn!(
            users = total,
            notified,
            failed,
            last_error = %error,
            "route link re-subscribed its users; reading the newest key of some failed (they sync at their next notification)"
        );
    } else {
        tracing::info!(
            users = total,
            notified,
            "route link re-subscribed its users; told their sessions to sync"
        );
    }
}

fn has_session(app: &Local, appid: i64, uid: i64) -> bool {
    let mut any = false;
    app.route.for_each(appid, uid, |_| any = true);
    any
}

/// The push a routed message makes, or `None` (counted, logged) when its inner frame or flags are
/// inconsistent: a message without PUSH that carries a sync key would make clients mis-track their
/// keys; GoBelieve's im aborts on it, banter drops it.
fn checked_push(app: &Local, m: &RoutedMessage) -> Option<Push> {
    let frame = match m.inner_frame() {
        Some(f) if m.flags_consistent() => f,
        _ => {
            Stats::inc(&app.stats.routed_rejected);
            tracing::warn!(
                kind = ?m.kind,
                appid = m.appid,
                receiver = m.receiver,
                msgid = m.msgid,
                "dropping a routed message whose inner frame or flags are inconsistent"
            );
            return None;
        }
    };
    Some(Push {
        cmd: frame.cmd,
        flag: frame.flag,
        body: frame.body,
        meta: (m.msgid > 0).then_some(proto::Metadata {
            sync_key: m.msgid,
            prev_sync_key: m.prev_msgid,
        }),
    })
}

/// Delivers one group message (no sender exclusion: the sender is on another node).
async fn deliver_group(app: &Local, m: &RoutedMessage) {
    let Some(push) = checked_push(app, m) else {
        return;
    };
    let n = match app.groups.get(m.appid, m.receiver).await {
        Ok(Some(g)) => app.route.deliver_group(&g, &push, 0),
        Ok(None) => 0,
        Err(e) => {
            Stats::inc(&app.stats.backend_errors);
            tracing::warn!(error = %e, gid = m.receiver, "loading a group for a routed message failed");
            0
        }
    };
    Stats::add(&app.stats.deliveries, n as u64);
}

/// The dispatch task: delivers the group messages the inbox could not deliver on the link's task,
/// in order, then the notifications owed for those it had to drop.
pub(crate) async fn dispatch(inbox: Arc<RoutedInbox>, mut rx: mpsc::Receiver<RoutedMessage>) {
    let app = &inbox.app;
    while let Some(m) = rx.recv().await {
        deliver_group(app, &m).await;
        inbox.waiting.fetch_sub(1, Ordering::AcqRel);
        if !rx.is_empty() {
            continue;
        }
        loop {
            let owed = inbox.owed.lock().pop();
            let Some((c, body)) = owed else {
                break;
            };
            if let Ok(RouteBody::Publish(n)) = RouteBody::decode(c, &body) {
                deliver_group(app, &n).await;
            }
        }
    }
}
