//! Bodies of the access ↔ router link (GoBelieve's im ↔ imr protocol; layouts in
//! docs/internal-protocols.md, *route link*), on the common 12-byte frame header. Wire compatible
//! with GoBelieve in both directions, with three compatible extensions:
//!
//! * **prev_msgid** (docs/compatibility.md, *Cluster*). The route message's `device_id` field
//!   (offset 24, always 0 and ignored by GoBelieve) carries banter's `prev_msgid`: the
//!   `prev_sync_key` of the METADATA that precedes the inner message. A banter receiver can then
//!   send `METADATA(msgid, prev)` and the SDK's fast path works across nodes. A Go node writes 0
//!   there, which means "unknown" (as before).
//! * **Inner frame length** (docs/compatibility.md, *Cluster*). The length of the inner frame is
//!   read as a `u16` (GoBelieve writes an `i16`, which wraps for inner frames of 32768 bytes or
//!   more), so a full 32767-byte client body plus its 12-byte header fits. The link's body limit is
//!   configurable (banter's default is 1 MiB instead of 32 KiB).
//! * **PUSH chunks.** Senders split receiver lists into chunks of at most [`MAX_PUSH_RECEIVERS`]
//!   ([`push_bodies`]), also kept under GoBelieve's 32 KiB frame limit when the inner frame allows.
//!
//! and one opt-in addition, **remote presence**: an access node that sends WATCH_PRESENCE (an empty
//! body, which GoBelieve's imr ignores like any unknown command) is told by a banter router which
//! users and rooms another connection subscribes (REMOTE_PRESENCE) and how many other connections
//! there are (PEERS), so it publishes only what some other node can receive. A router sends these
//! only on connections that asked, so a GoBelieve im never sees them.
//!
//! A second opt-in addition, **stored publishes**, folds the three frames a stored message for a
//! user on another node costs (its PUBLISH, the PUBLISH of its SYNC_NOTIFY and the PUSH for offline
//! push) into one PUBLISH_STORED. Both sides must offer it (STORED_PUBLISH, an empty body again);
//! a router turns it back into the PUBLISH pair ([`RoutedMessage::sync_notify`],
//! [`legacy_publishes`]) for a node that did not.
//!
//! Decoding never panics: short bodies, counts that run past the end and inner frames whose header
//! disagrees with their length are [`RouteProtoError`]s; the link that received them is closed.
//! This module does no I/O.

use bytes::{BufMut, Bytes, BytesMut};
use proto::{Frame, Header, HEADER_LEN};

/// Route command numbers (header byte 8 on the route link).
pub mod cmd {
    /// access → router: `(appid, uid, online)`.
    pub const SUBSCRIBE: u8 = 130;
    /// access → router: `(appid, uid)`.
    pub const UNSUBSCRIBE: u8 = 131;
    /// Both ways: a route message for a user.
    pub const PUBLISH: u8 = 132;
    /// access → router: offline-push request.
    pub const PUSH: u8 = 134;
    /// Both ways: a route message for a super group.
    pub const PUBLISH_GROUP: u8 = 135;
    /// access → router: `(appid, room)`.
    pub const SUBSCRIBE_ROOM: u8 = 136;
    /// access → router: `(appid, room)`.
    pub const UNSUBSCRIBE_ROOM: u8 = 137;
    /// Both ways: a route message for a room.
    pub const PUBLISH_ROOM: u8 = 138;
    /// access → router (banter): empty body; "tell me remote presence on this connection".
    pub const WATCH_PRESENCE: u8 = 139;
    /// router → access (banter, only after WATCH_PRESENCE): users or rooms that gained or lost
    /// their last subscriber on another connection.
    pub const REMOTE_PRESENCE: u8 = 140;
    /// router → access (banter, only after WATCH_PRESENCE): the number of other connections; the
    /// first one ends the snapshot that follows WATCH_PRESENCE.
    pub const PEERS: u8 = 141;
    /// Both ways (banter), empty body. From an access node (right after WATCH_PRESENCE): "I take
    /// PUBLISH_STORED". The router's answer: "send me PUBLISH_STORED; I deliver it to every node
    /// in the form that node takes".
    pub const STORED_PUBLISH: u8 = 142;
    /// Both ways (banter, only after STORED_PUBLISH both ways): a stored message for a user, as a
    /// PUBLISH body plus one byte `push` (1 = make an offline-push job for the receiver if no
    /// connection has them online). It stands for the PUBLISH of the message, the PUBLISH of its
    /// SYNC_NOTIFY and the PUSH: the receiving node sends the notification itself.
    pub const PUBLISH_STORED: u8 = 143;

    /// A name for logs.
    pub const fn name(cmd: u8) -> &'static str {
        match cmd {
            SUBSCRIBE => "SUBSCRIBE",
            UNSUBSCRIBE => "UNSUBSCRIBE",
            PUBLISH => "PUBLISH",
            PUSH => "PUSH",
            PUBLISH_GROUP => "PUBLISH_GROUP",
            SUBSCRIBE_ROOM => "SUBSCRIBE_ROOM",
            UNSUBSCRIBE_ROOM => "UNSUBSCRIBE_ROOM",
            PUBLISH_ROOM => "PUBLISH_ROOM",
            WATCH_PRESENCE => "WATCH_PRESENCE",
            REMOTE_PRESENCE => "REMOTE_PRESENCE",
            PEERS => "PEERS",
            STORED_PUBLISH => "STORED_PUBLISH",
            PUBLISH_STORED => "PUBLISH_STORED",
            _ => "UNKNOWN",
        }
    }
}

/// banter's default body limit on route links (GoBelieve: 32767).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// GoBelieve's body limit on route links; PUSH chunks stay under it when the inner frame allows.
pub const GOBELIEVE_MAX_BODY: usize = 32767;
/// Most receivers in one PUSH body sent by banter.
pub const MAX_PUSH_RECEIVERS: usize = 1000;
/// Fixed part of a route message (PUBLISH, PUBLISH_GROUP, PUBLISH_ROOM).
pub const ROUTE_MESSAGE_FIXED: usize = 42;
/// Most ids in one REMOTE_PRESENCE body.
pub const MAX_PRESENCE_IDS: usize = 1000;
/// Largest inner frame (header included) the `u16` length field can describe.
pub const MAX_INNER_FRAME: usize = u16::MAX as usize;

/// Why a route body cannot be decoded or encoded. Decoding errors are the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteProtoError {
    /// The body is shorter than its layout requires.
    #[error("{name} body of {len} bytes is shorter than {min}")]
    TooShort {
        name: &'static str,
        len: usize,
        min: usize,
    },
    /// The inner frame's own header disagrees with the length field, or is incomplete.
    #[error("{name}: malformed inner frame: {why}")]
    BadInner {
        name: &'static str,
        why: &'static str,
    },
    /// A field holds a value the layout does not define.
    #[error("{name}: {why}")]
    BadValue {
        name: &'static str,
        why: &'static str,
    },
    /// Not a route command (the receiver logs and ignores it).
    #[error("unknown route command {0}")]
    UnknownCommand(u8),
    /// Encoding: the inner frame does not fit the 16-bit length field.
    #[error("inner frame of {0} bytes exceeds {MAX_INNER_FRAME}")]
    InnerTooLong(usize),
    /// Encoding: more PUSH receivers than the 16-bit count can hold (use [`push_bodies`]).
    #[error("{0} PUSH receivers exceed 65535")]
    TooManyReceivers(usize),
}

/// Which kind of route message: the command it travels in and what its `receiver` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// PUBLISH (132): `receiver` is a uid.
    User,
    /// PUBLISH_GROUP (135): `receiver` is a super-group id.
    Group,
    /// PUBLISH_ROOM (138): `receiver` is a room id.
    Room,
}

impl RouteKind {
    /// The route command carrying this kind.
    pub const fn cmd(self) -> u8 {
        match self {
            RouteKind::User => cmd::PUBLISH,
            RouteKind::Group => cmd::PUBLISH_GROUP,
            RouteKind::Room => cmd::PUBLISH_ROOM,
        }
    }

    /// The kind carried by a route command, if it is a publish.
    pub const fn from_cmd(c: u8) -> Option<RouteKind> {
        match c {
            cmd::PUBLISH => Some(RouteKind::User),
            cmd::PUBLISH_GROUP => Some(RouteKind::Group),
            cmd::PUBLISH_ROOM => Some(RouteKind::Room),
            _ => None,
        }
    }
}

/// What a REMOTE_PRESENCE body names: users or rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceKind {
    /// `ids` are uids (wire value 1).
    User,
    /// `ids` are room ids (wire value 2).
    Room,
}

impl PresenceKind {
    const fn wire(self) -> u8 {
        match self {
            PresenceKind::User => 1,
            PresenceKind::Room => 2,
        }
    }
}

/// A REMOTE_PRESENCE (140): `ids` of `appid` are now subscribed by some other connection of the
/// router (`present`), or by none (`!present`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePresence {
    /// Users or rooms.
    pub kind: PresenceKind,
    /// Gained (true) or lost (false) their last subscriber elsewhere.
    pub present: bool,
    /// The app.
    pub appid: i64,
    /// At most [`MAX_PRESENCE_IDS`] ids.
    pub ids: Vec<i64>,
}

/// A route message (PUBLISH, PUBLISH_GROUP, PUBLISH_ROOM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedMessage {
    /// Which command, and what `receiver` is.
    pub kind: RouteKind,
    /// The app.
    pub appid: i64,
    /// A uid, a super-group id or a room id (see `kind`).
    pub receiver: i64,
    /// The METADATA `sync_key` of the inner message; 0 if it has none.
    pub msgid: i64,
    /// The METADATA `prev_sync_key` (banter's extension in the `device_id` field); 0 = unknown
    /// (always 0 from a GoBelieve node).
    pub prev_msgid: i64,
    /// Sender's clock in Unix nanoseconds, for latency logs only; 0 for rooms.
    pub timestamp_ns: i64,
    /// The complete inner frame (12-byte header plus body) exactly as a client receives it.
    pub inner: Bytes,
}

impl RoutedMessage {
    /// The inner frame, parsed without copying. `None` when `inner` is not one whole frame (never
    /// for a message produced by [`RouteBody::decode`], which checks it).
    pub fn inner_frame(&self) -> Option<Frame> {
        parse_inner(&self.inner).ok()
    }

    /// Whether the inner frame's flags are consistent with a message that carries metadata: with
    /// `msgid > 0` the flag must contain PUSH, plus SUPER_GROUP for a group message. GoBelieve's im
    /// aborts the process on a mismatch (docs/compatibility.md, *Cluster*); banter receivers should
    /// drop such a message with a log line instead.
    pub fn flags_consistent(&self) -> bool {
        if self.msgid <= 0 {
            return true;
        }
        let Some(frame) = self.inner_frame() else {
            return false;
        };
        let mut need = proto::flag::PUSH;
        if self.kind == RouteKind::Group {
            need |= proto::flag::SUPER_GROUP;
        }
        frame.flag & need == need
    }

    /// The SYNC_NOTIFY that follows a stored message for a user (`msgid` > 0): a route message
    /// to the same receiver, with no keys of its own, whose inner frame is SYNC_NOTIFY(`msgid`) —
    /// what an access node publishes after a stored message (and a receiving node delivers after
    /// a PUBLISH_STORED).
    pub fn sync_notify(&self) -> RoutedMessage {
        RoutedMessage {
            kind: RouteKind::User,
            appid: self.appid,
            receiver: self.receiver,
            msgid: 0,
            prev_msgid: 0,
            timestamp_ns: self.timestamp_ns,
            inner: sync_notify_frame(self.msgid),
        }
    }

    /// This message's body in its own command ([`route_message_body`]).
    pub fn encode_body(&self) -> Result<Bytes, RouteProtoError> {
        route_message_body(
            self.appid,
            self.receiver,
            self.msgid,
            self.prev_msgid,
            self.timestamp_ns,
            &self.inner,
        )
    }
}

/// The inner frame of a SYNC_NOTIFY(`key`), as a client receives it.
pub fn sync_notify_frame(key: i64) -> Bytes {
    proto::stored_frame(
        proto::cmd::SYNC_NOTIFY,
        0,
        &proto::Body::SyncNotify(key).to_stored(),
    )
}

/// A PUSH request (134): offline push for `receivers` of `inner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// The app.
    pub appid: i64,
    /// The uids to consider (each one gets a job only if it is offline).
    pub receivers: Vec<i64>,
    /// The complete inner frame: an IM, GROUP_IM, SYSTEM or CUSTOMER_V2 message.
    pub inner: Bytes,
}

impl PushRequest {
    /// The inner frame, parsed without copying.
    pub fn inner_frame(&self) -> Option<Frame> {
        parse_inner(&self.inner).ok()
    }
}

/// One decoded route body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteBody {
    /// SUBSCRIBE (130).
    Subscribe { appid: i64, uid: i64, online: bool },
    /// UNSUBSCRIBE (131).
    Unsubscribe { appid: i64, uid: i64 },
    /// SUBSCRIBE_ROOM (136).
    SubscribeRoom { appid: i64, room: i64 },
    /// UNSUBSCRIBE_ROOM (137).
    UnsubscribeRoom { appid: i64, room: i64 },
    /// PUBLISH (132), PUBLISH_GROUP (135) or PUBLISH_ROOM (138), by the message's kind.
    Publish(RoutedMessage),
    /// PUSH (134).
    Push(PushRequest),
    /// WATCH_PRESENCE (139), empty.
    WatchPresence,
    /// REMOTE_PRESENCE (140).
    RemotePresence(RemotePresence),
    /// PEERS (141): other connections of the router.
    Peers { count: u32 },
    /// STORED_PUBLISH (142), empty.
    StoredPublish,
    /// PUBLISH_STORED (143): a stored message for a user (`message.kind` is User, `msgid` > 0)
    /// and whether its receiver wants an offline-push job if no connection has them online.
    PublishStored { message: RoutedMessage, push: bool },
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_be_bytes([b[at], b[at + 1]]) as usize
}

fn need(name: &'static str, b: &[u8], min: usize) -> Result<(), RouteProtoError> {
    if b.len() < min {
        Err(RouteProtoError::TooShort {
            name,
            len: b.len(),
            min,
        })
    } else {
        Ok(())
    }
}

pub(crate) fn parse_inner(inner: &Bytes) -> Result<Frame, &'static str> {
    let header = match Header::parse(inner, inner.len().saturating_sub(HEADER_LEN)) {
        Ok(Some(h)) => h,
        Ok(None) => return Err("shorter than a frame header"),
        Err(_) => return Err("header length exceeds the inner frame"),
    };
    if HEADER_LEN + header.len != inner.len() {
        return Err("header length does not match the inner frame length");
    }
    Ok(Frame {
        seq: header.seq,
        cmd: header.cmd,
        version: header.version,
        flag: header.flag,
        body: inner.slice(HEADER_LEN..),
    })
}

/// The route message at the start of `body` and where it ends.
fn route_message(
    name: &'static str,
    kind: RouteKind,
    body: &Bytes,
) -> Result<(RoutedMessage, usize), RouteProtoError> {
    let b = &body[..];
    need(name, b, ROUTE_MESSAGE_FIXED)?;
    let end = ROUTE_MESSAGE_FIXED + u16_at(b, 40);
    need(name, b, end)?;
    let inner = body.slice(ROUTE_MESSAGE_FIXED..end);
    check_inner(name, &inner)?;
    let message = RoutedMessage {
        kind,
        appid: i64_at(b, 0),
        receiver: i64_at(b, 8),
        msgid: i64_at(b, 16),
        prev_msgid: i64_at(b, 24),
        timestamp_ns: i64_at(b, 32),
        inner,
    };
    Ok((message, end))
}

fn check_inner(name: &'static str, inner: &Bytes) -> Result<(), RouteProtoError> {
    parse_inner(inner)
        .map(|_| ())
        .map_err(|why| RouteProtoError::BadInner { name, why })
}

impl RouteBody {
    /// The route command of this body.
    pub fn cmd(&self) -> u8 {
        match self {
            RouteBody::Subscribe { .. } => cmd::SUBSCRIBE,
            RouteBody::Unsubscribe { .. } => cmd::UNSUBSCRIBE,
            RouteBody::SubscribeRoom { .. } => cmd::SUBSCRIBE_ROOM,
            RouteBody::UnsubscribeRoom { .. } => cmd::UNSUBSCRIBE_ROOM,
            RouteBody::Publish(m) => m.kind.cmd(),
            RouteBody::Push(_) => cmd::PUSH,
            RouteBody::WatchPresence => cmd::WATCH_PRESENCE,
            RouteBody::RemotePresence(_) => cmd::REMOTE_PRESENCE,
            RouteBody::Peers { .. } => cmd::PEERS,
            RouteBody::StoredPublish => cmd::STORED_PUBLISH,
            RouteBody::PublishStored { .. } => cmd::PUBLISH_STORED,
        }
    }

    /// Decodes the body of a route frame. Trailing bytes after a complete layout are ignored
    /// (as GoBelieve does). The inner frame of a publish or push must be exactly one frame.
    pub fn decode(c: u8, body: &Bytes) -> Result<RouteBody, RouteProtoError> {
        let b = &body[..];
        Ok(match c {
            cmd::SUBSCRIBE => {
                need("SUBSCRIBE", b, 17)?;
                RouteBody::Subscribe {
                    appid: i64_at(b, 0),
                    uid: i64_at(b, 8),
                    online: b[16] != 0,
                }
            }
            cmd::UNSUBSCRIBE => {
                need("UNSUBSCRIBE", b, 16)?;
                RouteBody::Unsubscribe {
                    appid: i64_at(b, 0),
                    uid: i64_at(b, 8),
                }
            }
            cmd::SUBSCRIBE_ROOM => {
                need("SUBSCRIBE_ROOM", b, 16)?;
                RouteBody::SubscribeRoom {
                    appid: i64_at(b, 0),
                    room: i64_at(b, 8),
                }
            }
            cmd::UNSUBSCRIBE_ROOM => {
                need("UNSUBSCRIBE_ROOM", b, 16)?;
                RouteBody::UnsubscribeRoom {
                    appid: i64_at(b, 0),
                    room: i64_at(b, 8),
                }
            }
            cmd::PUBLISH | cmd::PUBLISH_GROUP | cmd::PUBLISH_ROOM => {
                let kind = match c {
                    cmd::PUBLISH => RouteKind::User,
                    cmd::PUBLISH_GROUP => RouteKind::Group,
                    _ => RouteKind::Room,
                };
                RouteBody::Publish(route_message(cmd::name(c), kind, body)?.0)
            }
            cmd::PUBLISH_STORED => {
                let name = cmd::name(c);
                let (message, end) = route_message(name, RouteKind::User, body)?;
                need(name, b, end + 1)?;
                if message.msgid <= 0 {
                    return Err(RouteProtoError::BadValue {
                        name,
                        why: "a stored publish without a sync key",
                    });
                }
                RouteBody::PublishStored {
                    message,
                    push: b[end] != 0,
                }
            }
            cmd::PUSH => {
                need("PUSH", b, 12)?;
                let n = u16_at(b, 8);
                let at = 10 + 8 * n;
                need("PUSH", b, at + 2)?;
                let receivers = (0..n).map(|i| i64_at(b, 10 + 8 * i)).collect();
                let len = u16_at(b, at);
                need("PUSH", b, at + 2 + len)?;
                let inner = body.slice(at + 2..at + 2 + len);
                check_inner("PUSH", &inner)?;
                RouteBody::Push(PushRequest {
                    appid: i64_at(b, 0),
                    receivers,
                    inner,
                })
            }
            cmd::WATCH_PRESENCE => RouteBody::WatchPresence,
            cmd::STORED_PUBLISH => RouteBody::StoredPublish,
            cmd::REMOTE_PRESENCE => {
                need("REMOTE_PRESENCE", b, 12)?;
                let kind = match b[0] {
                    1 => PresenceKind::User,
                    2 => PresenceKind::Room,
                    _ => {
                        return Err(RouteProtoError::BadValue {
                            name: "REMOTE_PRESENCE",
                            why: "kind is neither 1 (users) nor 2 (rooms)",
                        })
                    }
                };
                let n = u16_at(b, 10);
                need("REMOTE_PRESENCE", b, 12 + 8 * n)?;
                RouteBody::RemotePresence(RemotePresence {
                    kind,
                    present: b[1] != 0,
                    appid: i64_at(b, 2),
                    ids: (0..n).map(|i| i64_at(b, 12 + 8 * i)).collect(),
                })
            }
            cmd::PEERS => {
                need("PEERS", b, 4)?;
                RouteBody::Peers {
                    count: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                }
            }
            other => return Err(RouteProtoError::UnknownCommand(other)),
        })
    }

    /// Encodes this body (without the frame header). Fails only when an inner frame exceeds
    /// [`MAX_INNER_FRAME`] or a PUSH has more than 65535 receivers (use [`push_bodies`]).
    pub fn encode(&self) -> Result<Bytes, RouteProtoError> {
        Ok(match self {
            RouteBody::Subscribe { appid, uid, online } => subscribe_body(*appid, *uid, *online),
            RouteBody::Unsubscribe { appid, uid } => pair_body(*appid, *uid),
            RouteBody::SubscribeRoom { appid, room }
            | RouteBody::UnsubscribeRoom { appid, room } => pair_body(*appid, *room),
            RouteBody::Publish(m) => m.encode_body()?,
            RouteBody::Push(p) => {
                if p.receivers.len() > u16::MAX as usize {
                    return Err(RouteProtoError::TooManyReceivers(p.receivers.len()));
                }
                push_body(p.appid, &p.receivers, &p.inner)?
            }
            RouteBody::WatchPresence => Bytes::new(),
            RouteBody::RemotePresence(p) => {
                if p.ids.len() > u16::MAX as usize {
                    return Err(RouteProtoError::TooManyReceivers(p.ids.len()));
                }
                presence_body(p.kind, p.present, p.appid, &p.ids)
            }
            RouteBody::Peers { count } => Bytes::copy_from_slice(&count.to_be_bytes()),
            RouteBody::StoredPublish => Bytes::new(),
            RouteBody::PublishStored { message: m, push } => publish_stored_body(
                m.appid,
                m.receiver,
                (m.msgid, m.prev_msgid),
                m.timestamp_ns,
                &m.inner,
                *push,
            )?,
        })
    }

    /// Encodes this body as a whole frame (outer version and flag 0) onto `dst`.
    pub fn encode_frame(&self, seq: i32, dst: &mut BytesMut) -> Result<(), RouteProtoError> {
        let body = self.encode()?;
        write_frame(dst, seq, self.cmd(), &body);
        Ok(())
    }
}

/// Writes one route frame: the 12-byte header (version and flag 0) and `body`.
pub fn write_frame(dst: &mut BytesMut, seq: i32, c: u8, body: &[u8]) {
    dst.reserve(HEADER_LEN + body.len());
    Header {
        len: body.len(),
        seq,
        cmd: c,
        version: 0,
        flag: 0,
    }
    .write(dst);
    dst.put_slice(body);
}

/// SUBSCRIBE body: appid, uid, online byte.
pub fn subscribe_body(appid: i64, uid: i64, online: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(17);
    b.put_i64(appid);
    b.put_i64(uid);
    b.put_u8(u8::from(online));
    b.freeze()
}

/// UNSUBSCRIBE, SUBSCRIBE_ROOM and UNSUBSCRIBE_ROOM body: two i64.
pub fn pair_body(appid: i64, id: i64) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_i64(appid);
    b.put_i64(id);
    b.freeze()
}

/// REMOTE_PRESENCE body: kind u8, present u8, appid i64, count u16, count × id i64. At most
/// 65535 ids (callers send chunks of [`MAX_PRESENCE_IDS`]).
pub fn presence_body(kind: PresenceKind, present: bool, appid: i64, ids: &[i64]) -> Bytes {
    let mut b = BytesMut::with_capacity(12 + 8 * ids.len());
    b.put_u8(kind.wire());
    b.put_u8(u8::from(present));
    b.put_i64(appid);
    b.put_u16(ids.len().min(u16::MAX as usize) as u16);
    for id in ids.iter().take(u16::MAX as usize) {
        b.put_i64(*id);
    }
    b.freeze()
}

/// Now in Unix nanoseconds: the timestamp of PUBLISH and PUBLISH_GROUP bodies.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A route message body (PUBLISH, PUBLISH_GROUP, PUBLISH_ROOM).
pub fn route_message_body(
    appid: i64,
    receiver: i64,
    msgid: i64,
    prev_msgid: i64,
    timestamp_ns: i64,
    inner: &[u8],
) -> Result<Bytes, RouteProtoError> {
    let mut b = BytesMut::with_capacity(ROUTE_MESSAGE_FIXED + inner.len());
    put_route_message(
        &mut b,
        [appid, receiver, msgid, prev_msgid, timestamp_ns],
        inner,
    )?;
    Ok(b.freeze())
}

/// A PUBLISH_STORED body: the route message of a stored message for user `uid` (`keys`: its
/// METADATA sync key and previous key) and the `push` byte.
pub fn publish_stored_body(
    appid: i64,
    uid: i64,
    (msgid, prev_msgid): (i64, i64),
    timestamp_ns: i64,
    inner: &[u8],
    push: bool,
) -> Result<Bytes, RouteProtoError> {
    let mut b = BytesMut::with_capacity(ROUTE_MESSAGE_FIXED + inner.len() + 1);
    put_route_message(&mut b, [appid, uid, msgid, prev_msgid, timestamp_ns], inner)?;
    b.put_u8(u8::from(push));
    Ok(b.freeze())
}

/// Appends a route message: the five i64 fields (appid, receiver, msgid, prev_msgid, timestamp),
/// the inner frame's length and the inner frame.
fn put_route_message(
    b: &mut BytesMut,
    fields: [i64; 5],
    inner: &[u8],
) -> Result<(), RouteProtoError> {
    if inner.len() > MAX_INNER_FRAME {
        return Err(RouteProtoError::InnerTooLong(inner.len()));
    }
    for f in fields {
        b.put_i64(f);
    }
    b.put_u16(inner.len() as u16);
    b.put_slice(inner);
    Ok(())
}

/// What a PUBLISH_STORED body stands for, for a node that does not take it: the message's own
/// PUBLISH (the body without its `push` byte), the PUBLISH of its SYNC_NOTIFY and, if the `push`
/// byte asks for one, the PUSH request naming its receiver. `None` when `body` is not a valid
/// PUBLISH_STORED body.
pub fn legacy_publishes(body: &Bytes) -> Option<LegacyPublishes> {
    let RouteBody::PublishStored { message, push } =
        RouteBody::decode(cmd::PUBLISH_STORED, body).ok()?
    else {
        return None;
    };
    let end = ROUTE_MESSAGE_FIXED + message.inner.len();
    let notify = message.sync_notify().encode_body().ok()?;
    Some(LegacyPublishes {
        frames: [(cmd::PUBLISH, body.slice(..end)), (cmd::PUBLISH, notify)],
        push: push.then(|| PushRequest {
            appid: message.appid,
            receivers: vec![message.receiver],
            inner: message.inner,
        }),
    })
}

/// What a PUBLISH_STORED stands for ([`legacy_publishes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyPublishes {
    /// The message's PUBLISH, then its SYNC_NOTIFY's.
    pub frames: [(u8, Bytes); 2],
    /// The PUSH its `push` byte asked for, naming its receiver.
    pub push: Option<PushRequest>,
}

fn push_body(appid: i64, receivers: &[i64], inner: &[u8]) -> Result<Bytes, RouteProtoError> {
    if inner.len() > MAX_INNER_FRAME {
        return Err(RouteProtoError::InnerTooLong(inner.len()));
    }
    let mut b = BytesMut::with_capacity(12 + 8 * receivers.len() + inner.len());
    b.put_i64(appid);
    b.put_u16(receivers.len() as u16);
    for r in receivers {
        b.put_i64(*r);
    }
    b.put_u16(inner.len() as u16);
    b.put_slice(inner);
    Ok(b.freeze())
}

/// The receivers per PUSH body for an inner frame of `inner_len` bytes: at most
/// [`MAX_PUSH_RECEIVERS`], and few enough that the body stays within GoBelieve's 32767-byte limit
/// when the inner frame leaves room for at least one receiver (never fewer than 1).
pub fn push_chunk_size(inner_len: usize) -> usize {
    let room = GOBELIEVE_MAX_BODY.saturating_sub(12 + inner_len) / 8;
    room.clamp(1, MAX_PUSH_RECEIVERS)
}

/// PUSH bodies for `receivers`, split into chunks of [`push_chunk_size`] receivers. No receivers,
/// no bodies.
pub fn push_bodies(
    appid: i64,
    receivers: &[i64],
    inner: &[u8],
) -> Result<Vec<Bytes>, RouteProtoError> {
    let size = push_chunk_size(inner.len());
    receivers
        .chunks(size)
        .map(|chunk| push_body(appid, chunk, inner))
        .collect()
}

/// `abs(id) mod n` without overflow for `i64::MIN` (docs/compatibility.md, *Other defects*:
/// sharding); `n` must be > 0.
pub fn shard_index(id: i64, n: usize) -> usize {
    (id.unsigned_abs() % n.max(1) as u64) as usize
}

/// Rendezvous (highest random weight) hashing of `id` over addresses given by their
/// [`addr_hash`]: the index of the address with the highest score for `id`. Removing an address
/// moves only the ids it held; adding one moves only the ids it wins (about 1/N). Used for
/// routers discovered through etcd, whose list changes as routers come and go; static
/// `route_addrs` keep GoBelieve's `mod N`. Fixed functions, so every access node agrees.
pub fn rendezvous_index(id: i64, addr_hashes: &[u64]) -> usize {
    let score = |h: u64| {
        let mut z = h ^ (id as u64);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    addr_hashes
        .iter()
        .enumerate()
        .max_by_key(|(_, h)| score(**h))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// FNV-1a of an address, for [`rendezvous_index`].
pub fn addr_hash(addr: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner_frame(body: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        Frame {
            seq: 0,
            cmd: proto::cmd::IM,
            version: 2,
            flag: proto::flag::PUSH,
            body: Bytes::copy_from_slice(body),
        }
        .encode(&mut b);
        b.freeze()
    }

    #[test]
    fn rendezvous_moves_only_the_ids_of_a_removed_address() {
        let three: Vec<u64> = ["a:1", "b:1", "c:1"].map(addr_hash).to_vec();
        let two: Vec<u64> = ["a:1", "c:1"].map(addr_hash).to_vec();
        let mut counts = [0usize; 3];
        for id in -5000..5000i64 {
            let i = rendezvous_index(id, &three);
            counts[i] += 1;
            let j = rendezvous_index(id, &two);
            if i != 1 {
                // not on the removed address: stays where it was
                assert_eq!(two[j], three[i], "id {id} moved");
            }
        }
        // roughly even
        assert!(counts.iter().all(|&c| c > 2500), "{counts:?}");
        assert_eq!(rendezvous_index(7, &[]), 0);
    }

    #[test]
    fn presence_bodies_round_trip_and_bad_ones_are_errors() {
        for body in [
            RouteBody::WatchPresence,
            RouteBody::Peers { count: 3 },
            RouteBody::RemotePresence(RemotePresence {
                kind: PresenceKind::Room,
                present: false,
                appid: 7,
                ids: vec![1, -2, i64::MAX],
            }),
        ] {
            let b = body.encode().unwrap();
            assert_eq!(RouteBody::decode(body.cmd(), &b).unwrap(), body);
        }
        let mut bad = presence_body(PresenceKind::User, true, 7, &[1, 2]).to_vec();
        bad[0] = 9;
        assert!(matches!(
            RouteBody::decode(cmd::REMOTE_PRESENCE, &Bytes::from(bad)),
            Err(RouteProtoError::BadValue { .. })
        ));
        let short = presence_body(PresenceKind::User, true, 7, &[1, 2]).slice(..20);
        assert!(matches!(
            RouteBody::decode(cmd::REMOTE_PRESENCE, &short),
            Err(RouteProtoError::TooShort { .. })
        ));
        assert!(RouteBody::decode(cmd::PEERS, &Bytes::from_static(&[0, 1])).is_err());
    }

    #[test]
    fn shard_index_handles_min() {
        assert_eq!(shard_index(-7, 3), 1);
        assert_eq!(shard_index(7, 3), 1);
        assert_eq!(shard_index(i64::MIN, 3), (1u64 << 63) as usize % 3);
        assert_eq!(shard_index(5, 0), 0);
    }

    #[test]
    fn push_chunks() {
        assert_eq!(push_chunk_size(100), MAX_PUSH_RECEIVERS);
        assert_eq!(push_chunk_size(32_000), (32767 - 12 - 32_000) / 8);
        assert_eq!(push_chunk_size(40_000), 1);
        let inner = inner_frame(b"x");
        let bodies = push_bodies(1, &(0..2500).collect::<Vec<_>>(), &inner).unwrap();
        let n: Vec<usize> = bodies
            .iter()
            .map(|b| match RouteBody::decode(cmd::PUSH, b).unwrap() {
                RouteBody::Push(p) => p.receivers.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(n, vec![1000, 1000, 500]);
        assert!(push_bodies(1, &[], &inner).unwrap().is_empty());
    }

    #[test]
    fn inner_length_is_unsigned() {
        // A 40 000-byte inner frame: GoBelieve's i16 would read it as negative.
        let inner = inner_frame(&vec![7u8; 40_000 - HEADER_LEN]);
        let body = route_message_body(1, 2, 3, 4, 5, &inner).unwrap();
        assert_eq!(&body[40..42], &(40_000u16).to_be_bytes());
        match RouteBody::decode(cmd::PUBLISH, &body).unwrap() {
            RouteBody::Publish(m) => assert_eq!(m.inner.len(), 40_000),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            route_message_body(1, 2, 3, 4, 5, &vec![0u8; 70_000]),
            Err(RouteProtoError::InnerTooLong(70_000))
        );
    }
}
