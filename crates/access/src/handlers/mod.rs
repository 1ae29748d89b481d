//! The handlers of client commands, one module per command family, and the one table that routes a
//! decoded frame to its handler ([`dispatch`]).
//!
//! A handler sees the connection's state ([`Conn`]) and writes its answers to a [`Reply`]; it never
//! sees the session loop, the transport or the other appends in flight. A message that must be
//! stored goes decode → check → append → complete: the handler checks it and returns an [`Append`]
//! (the store batch and a [`Stored`], the one completion of every stored message family); the
//! session submits the batch and, once the store has made it durable, completes it, in submission
//! order, which delivers the message and writes the ACK. A refused message is a [`Refusal`],
//! answered in one place ([`refuse`]: ACK status, counter, log line).
//!
//! | Commands | Module |
//! |---|---|
//! | AUTH_TOKEN, PING, UNREAD_COUNT | [`auth`] |
//! | IM (with the friendship and blacklist checks); server-side peer, system and notification posts | [`peer`] |
//! | RT | [`rt`] |
//! | GROUP_IM; server-side group posts | [`group`] |
//! | ENTER_ROOM, LEAVE_ROOM, ROOM_IM | [`room`] |
//! | CUSTOMER_V2 | [`customer`] |
//! | SYNC, SYNC_GROUP, SYNC_KEY, GROUP_SYNC_KEY, syncs owed to the client | [`sync`] |
//! | completion of stored IM, CUSTOMER_V2 and GROUP_IM | [`stored`] |

pub(crate) mod auth;
pub(crate) mod customer;
pub(crate) mod group;
pub(crate) mod peer;
mod reply;
pub(crate) mod room;
pub(crate) mod rt;
mod stored;
pub(crate) mod sync;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use proto::{cmd, flag, AckStatus, Body, Frame};
use tokio::time::Instant;
use tracing::debug;

use crate::app::{App, AppendResult, Stats, StoreFailure};
use crate::route::SessionHandle;
pub(crate) use reply::Reply;
pub(crate) use stored::{Stored, To};

/// The state of one connection that handlers read and change. Owned by the session, lent to a
/// handler for one frame (or one completion).
pub(crate) struct Conn {
    pub(crate) app: Arc<App>,
    pub(crate) conn_id: u64,
    /// Set once authenticated; also this session's entry in the route table.
    pub(crate) handle: Option<Arc<SessionHandle>>,
    /// The chat room this connection is in.
    pub(crate) room: Option<std::num::NonZeroI64>,
    /// Boxed: most nodes run without a rate limit, and every idle connection holds this struct.
    rate: Option<Box<RateLimit>>,
    /// Syncs that could not be answered yet (their store shard is down): answered once due.
    pub(crate) owed: Option<Box<sync::OwedSyncs>>,
}

impl Conn {
    pub(crate) fn new(app: Arc<App>, conn_id: u64) -> Conn {
        let per_sec = app.server.rate_limit_per_sec;
        let rate = (per_sec > 0).then(|| {
            Box::new(RateLimit {
                per_sec: per_sec as f64,
                tokens: per_sec as f64,
                last: Instant::now(),
            })
        });
        Conn {
            app,
            conn_id,
            handle: None,
            room: None,
            rate,
            owed: None,
        }
    }

    /// Takes one message from the per-connection rate limit; false when it is exceeded.
    pub(crate) fn rate_allows(&mut self) -> bool {
        self.rate.as_mut().is_none_or(|r| r.allow())
    }

    /// The rate limit as a check.
    fn rate_check(&mut self) -> Result<(), Refused> {
        if self.rate_allows() {
            Ok(())
        } else {
            Err(Refused::RateLimited)
        }
    }

    /// Applies the sensitive-word filter to a TEXT message's content.
    pub(crate) fn filter_text(&self, flags: u8, content: bytes::Bytes) -> bytes::Bytes {
        if flags & flag::TEXT == 0 {
            return content;
        }
        match self
            .app
            .words
            .as_ref()
            .and_then(|w| w.filter_content(&content))
        {
            Some(filtered) => bytes::Bytes::from(filtered),
            None => content,
        }
    }
}

/// Per-connection token bucket.
struct RateLimit {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A message to store: the store batch, and what to do once it is durable.
pub(crate) struct Append {
    pub(crate) batch: Vec<store::NewMessage>,
    /// Boxed: an append is held in the session task while a boxed handler runs, and inline its
    /// completion would add that much to every connection's task.
    pub(crate) then: Box<Stored>,
}

/// What a message handler decided: nothing more to do, an append, or a refusal.
pub(crate) type Handled = Result<Option<Append>, Refusal>;

/// Why a message was not accepted.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The body's sender is not the session's user (or app).
    InvalidSender,
    /// The receiver is not a valid id.
    InvalidReceiver,
    NoSuchGroup,
    NotGroupMember,
    /// Friendship check: the sender does not list the receiver as a friend.
    NotMyFriend,
    /// Friendship check: the receiver does not list the sender as a friend.
    NotYourFriend,
    /// Blacklist check: the receiver has blacklisted the sender.
    InYourBlacklist,
    GroupMuted,
    /// The sender is speak-banned.
    Forbidden,
    RateLimited,
    /// Not allowed here (the reason is logged).
    NotAllowed(&'static str),
    /// The group directory or the relation store failed.
    Directory(backend::BackendError),
    /// The store failed (the error, when it reported one) or returned no position.
    Store(Option<StoreFailure>),
}

impl Refused {
    /// The ACK status a version-2 client gets.
    pub(crate) fn status(&self) -> i8 {
        match self {
            Refused::InvalidSender => AckStatus::INVALID_SENDER,
            Refused::InvalidReceiver => AckStatus::INVALID_RECEIVER,
            Refused::NoSuchGroup => AckStatus::GROUP_NONEXIST,
            Refused::NotGroupMember => AckStatus::NOT_GROUP_MEMBER,
            Refused::NotMyFriend => AckStatus::NOT_MY_FRIEND,
            Refused::NotYourFriend => AckStatus::NOT_YOUR_FRIEND,
            Refused::InYourBlacklist => AckStatus::IN_YOUR_BLACKLIST,
            Refused::GroupMuted => AckStatus::GROUP_MUTED,
            Refused::Forbidden => AckStatus::FORBIDDEN,
            Refused::RateLimited => AckStatus::RATE_LIMITED,
            Refused::NotAllowed(_) => AckStatus::NOT_ALLOWED,
            Refused::Directory(_) | Refused::Store(_) => AckStatus::STORAGE_FAILED,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Refused::InvalidSender => "sender is not the session's user",
            Refused::InvalidReceiver => "invalid receiver",
            Refused::NoSuchGroup => "no such group",
            Refused::NotGroupMember => "not a member",
            Refused::NotMyFriend => "the receiver is not the sender's friend",
            Refused::NotYourFriend => "the sender is not the receiver's friend",
            Refused::InYourBlacklist => "the receiver has blacklisted the sender",
            Refused::GroupMuted => "muted",
            Refused::Forbidden => "speak-banned",
            Refused::RateLimited => "rate limit",
            Refused::NotAllowed(why) => why,
            Refused::Directory(_) => "group or relation directory unavailable",
            Refused::Store(_) => "store failed",
        }
    }
}

/// A refused message: which command, the client's seq when the command is ACKed, and why.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) cmd: u8,
    pub(crate) seq: Option<i32>,
    pub(crate) why: Refused,
}

impl Refusal {
    /// A refusal of an ACKed command.
    pub(crate) fn acked(cmd: u8, seq: i32, why: Refused) -> Refusal {
        Refusal {
            cmd,
            seq: Some(seq),
            why,
        }
    }
}

/// Answers a refused message — the one place that maps a refusal to its ACK status, counters and
/// log line. Version 2+ clients learn why from the status; older ACKs carry no status, so they get
/// no ACK at all rather than one that would read as success. Commands without ACK (RT) are dropped.
pub(crate) fn refuse(app: &App, out: &mut Reply, r: Refusal) {
    let stats = &app.stats;
    let command = cmd::name(r.cmd);
    match &r.why {
        Refused::Store(error) => {
            Stats::inc(&stats.store_errors);
            if let Some(error) = error {
                node::warn_throttled!(%error, command, "storing a message failed");
            }
        }
        Refused::Directory(error) => {
            Stats::inc(&stats.backend_errors);
            node::warn_throttled!(%error, command, "loading a group or relations failed");
        }
        _ => {}
    }
    Stats::inc(&stats.messages_refused);
    let status = r.why.status();
    debug!(
        command,
        seq = r.seq,
        status,
        what = r.why.what(),
        "message refused"
    );
    if let Some(seq) = r.seq {
        if out.version() >= 2 {
            out.ack(seq, status, 0, None);
        }
    }
}

/// What is left of a frame's handling after [`dispatch`].
pub(crate) enum Step<'a> {
    /// Handled.
    Done,
    /// A message to store.
    Append(Append),
    /// SYNC with this key: awaited inline by the session loop ([`sync::on_sync`]).
    Sync(i64),
    /// A rare handler with a large future, boxed; it may end in an append.
    Wait(Pin<Box<dyn Future<Output = Option<Append>> + Send + 'a>>),
}

/// A frame the session must close the connection for.
#[derive(Debug)]
pub(crate) struct ProtocolError(pub(crate) String);

/// Settles a message handler's decision: an append goes back to the session, a refusal is
/// answered.
fn settle<'a>(app: &App, out: &mut Reply, handled: Handled) -> Step<'a> {
    match handled {
        Ok(Some(append)) => Step::Append(append),
        Ok(None) => Step::Done,
        Err(r) => {
            refuse(app, out, r);
            Step::Done
        }
    }
}

/// Decodes a frame from the client and runs its handler — the one table from command to handler.
/// Handlers that never wait run here; SYNC and the boxed handlers are returned for the session loop
/// to await.
///
/// Memory: an idle session task is as large as the largest state of everything it awaits inline,
/// so every handler awaited inline costs that much in every connection. Only SYNC (frequent, and
/// small) is awaited inline; the rare handlers with large futures (authentication, group messages,
/// group sync) are boxed: one allocation for such a frame instead of kilobytes held by every idle
/// session. The session's `session_future_stays_small` test keeps this in check.
pub(crate) fn dispatch<'a>(
    conn: &'a mut Conn,
    out: &'a mut Reply,
    frame: Frame,
) -> Result<Step<'a>, ProtocolError> {
    let body = Body::decode(frame.cmd, frame.version, &frame.body)
        .map_err(|e| ProtocolError(e.to_string()))?;
    let info = cmd::info(frame.cmd).filter(|c| c.from_client);
    let Some(info) = info else {
        // Server-to-client commands are not on the whitelist and never reach here.
        return Err(ProtocolError(format!(
            "command {} is not allowed from clients",
            frame.cmd
        )));
    };
    if conn.handle.is_none() && !info.before_auth {
        debug!(cmd = info.name, "ignored before authentication");
        return Ok(Step::Done);
    }
    let (seq, flags) = (frame.seq, frame.flag);
    Ok(match body {
        Body::Ping => {
            out.emit(&Body::Pong, 0);
            Step::Done
        }
        Body::AuthToken(a) if conn.handle.is_none() => {
            Step::Wait(Box::pin(auth::on_auth_token(conn, out, a, frame.version)))
        }
        Body::AuthToken(_) | Body::Ack(_) | Body::Pong | Body::Metadata(_) => Step::Done,
        Body::Deprecated { .. } => Step::Done,
        Body::UnreadCount(n) => {
            auth::on_unread_count(conn, n);
            Step::Done
        }
        Body::Im(im) => match peer::relationship(conn, &im) {
            peer::Relationship::Unchecked => {
                let handled = peer::on_im(conn, seq, flags, im, None);
                settle(&conn.app, out, handled)
            }
            peer::Relationship::Known(r) => {
                let handled = peer::on_im(conn, seq, flags, im, Some(r));
                settle(&conn.app, out, handled)
            }
            peer::Relationship::Unknown => Step::Wait(Box::pin(async move {
                let handled = peer::load_relation(conn, seq, flags, im).await;
                match settle(&conn.app, out, handled) {
                    Step::Append(a) => Some(a),
                    _ => None,
                }
            })),
        },
        Body::Rt(rt) => {
            let handled = rt::on_rt(conn, rt);
            settle(&conn.app, out, handled)
        }
        Body::Customer(c) => {
            let handled = customer::on_customer(conn, seq, flags, c);
            settle(&conn.app, out, handled)
        }
        Body::RoomIm(msg) => {
            let handled = room::on_room_im(conn, out, seq, msg);
            settle(&conn.app, out, handled)
        }
        Body::EnterRoom(room) => {
            room::on_enter_room(conn, room);
            Step::Done
        }
        Body::LeaveRoom(room) => {
            room::on_leave_room(conn, room);
            Step::Done
        }
        Body::Sync(key) => Step::Sync(key),
        Body::SyncKey(key) => {
            sync::on_sync_key(conn, key);
            Step::Done
        }
        Body::GroupIm(im) => Step::Wait(Box::pin(async move {
            let handled = group::on_group_im(conn, seq, flags, im).await;
            match settle(&conn.app, out, handled) {
                Step::Append(a) => Some(a),
                _ => None,
            }
        })),
        Body::SyncGroup(g) => Step::Wait(Box::pin(async move {
            sync::on_sync_group(conn, out, g).await;
            None
        })),
        Body::GroupSyncKey(g) => {
            sync::on_group_sync_key(conn, g);
            Step::Done
        }
        Body::AuthStatus(_)
        | Body::GroupNotification(_)
        | Body::System(_)
        | Body::Notification(_)
        | Body::SyncBegin(_)
        | Body::SyncEnd(_)
        | Body::SyncNotify(_)
        | Body::SyncGroupBegin(_)
        | Body::SyncGroupEnd(_)
        | Body::SyncGroupNotify(_) => {
            return Err(ProtocolError(format!(
                "command {} is not allowed from clients",
                frame.cmd
            )))
        }
    })
}

/// Finishes a completed append: its completion delivers and ACKs, or it is refused.
pub(crate) fn complete(conn: &Conn, out: &mut Reply, then: Stored, result: AppendResult) {
    if let Err(r) = then.complete(conn, out, result) {
        refuse(&conn.app, out, r);
    }
}
