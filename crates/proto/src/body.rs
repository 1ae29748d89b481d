//! Typed bodies of every client-protocol command and their layouts per protocol version
//! (docs/protocol.md §4, §6).
//!
//! Decoding is zero-copy for content (`Bytes` slices of the frame body) and tolerant exactly where the
//! original is (an ACK's missing fields read as 0; trailing bytes of fixed layouts are ignored); anything
//! shorter than a layout's fixed part is a [`BodyError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::cmd;

/// Size of a METADATA body.
pub const METADATA_LEN: usize = 32;

/// Platform ids carried by AUTH_TOKEN (docs/protocol.md §7.2).
pub struct Platform;

impl Platform {
    pub const IOS: u8 = 1;
    pub const ANDROID: u8 = 2;
    pub const WEB: u8 = 3;

    /// iOS and Android count as mobile for the online flag (docs/protocol.md §7.2).
    pub const fn is_mobile(platform: u8) -> bool {
        platform == Self::IOS || platform == Self::ANDROID
    }
}

/// ACK status codes (docs/protocol.md §7.3), plus banter's own refusal codes, visible to v ≥ 2
/// sessions.
pub struct AckStatus;

impl AckStatus {
    pub const SUCCESS: i8 = 0;
    pub const NOT_MY_FRIEND: i8 = 1;
    pub const NOT_YOUR_FRIEND: i8 = 2;
    pub const IN_YOUR_BLACKLIST: i8 = 3;
    pub const NOT_GROUP_MEMBER: i8 = 64;
    pub const GROUP_NONEXIST: i8 = 65;
    /// banter: the sender is muted in the group.
    pub const GROUP_MUTED: i8 = 66;
    /// banter: the sender is forbidden to speak.
    pub const FORBIDDEN: i8 = 67;
    /// banter: the body's sender is not the session's user (or app).
    pub const INVALID_SENDER: i8 = 68;
    /// banter: the per-connection message rate limit was exceeded.
    pub const RATE_LIMITED: i8 = 69;
    /// banter: the message could not be stored; it was not accepted and should be retried.
    pub const STORAGE_FAILED: i8 = 70;
    /// banter: the message is not allowed (e.g. customer message outside the service app, wrong room).
    pub const NOT_ALLOWED: i8 = 71;
    /// banter: the receiver is not a valid user (or app) id — ids are positive.
    pub const INVALID_RECEIVER: i8 = 72;
}

/// Why a body does not match its command's layout. The peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("{name} body too short: {len} bytes, need at least {min}")]
    TooShort {
        name: &'static str,
        len: usize,
        min: usize,
    },
    #[error("{name} must have an empty body, got {len} bytes")]
    NotEmpty { name: &'static str, len: usize },
    #[error("AUTH_TOKEN field {field} runs past the end of the body")]
    AuthFieldOverrun { field: &'static str },
    #[error("command {0} has no client body layout")]
    UnknownCommand(u8),
}

/// MSG_AUTH_TOKEN (docs/protocol.md §6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthToken {
    pub platform_id: u8,
    pub token: Bytes,
    pub device_id: Bytes,
}

/// MSG_IM and MSG_GROUP_IM (docs/protocol.md §6.3). `receiver` is a group id for GROUP_IM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Im {
    pub sender: i64,
    pub receiver: i64,
    /// Unix seconds; absent (0) in version 0.
    pub timestamp: i32,
    /// The client's local id, opaque to the server.
    pub msgid: i32,
    pub content: Bytes,
}

/// MSG_ACK (docs/protocol.md §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: i32,
    pub status: i8,
}

/// MSG_RT and MSG_ROOM_IM (docs/protocol.md §6.6). `receiver` is a room id for ROOM_IM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rt {
    pub sender: i64,
    pub receiver: i64,
    pub content: Bytes,
}

/// Group sync-key bodies (docs/protocol.md §6.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSyncKey {
    pub group_id: i64,
    pub sync_key: i64,
}

/// MSG_METADATA (docs/protocol.md §6.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub sync_key: i64,
    pub prev_sync_key: i64,
}

/// MSG_CUSTOMER_V2 (docs/protocol.md §6.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub sender_appid: i64,
    pub sender: i64,
    pub receiver_appid: i64,
    pub receiver: i64,
    pub timestamp: i32,
    pub content: Bytes,
}

/// A decoded body. The variant determines the command number ([`Body::cmd`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    AuthStatus(i32),
    Im(Im),
    Ack(Ack),
    GroupNotification(Bytes),
    GroupIm(Im),
    Ping,
    Pong,
    AuthToken(AuthToken),
    Rt(Rt),
    EnterRoom(i64),
    LeaveRoom(i64),
    RoomIm(Rt),
    System(Bytes),
    UnreadCount(i32),
    /// Commands 24 and 25: any body, never handled.
    Deprecated {
        cmd: u8,
        body: Bytes,
    },
    Sync(i64),
    SyncBegin(i64),
    SyncEnd(i64),
    SyncNotify(i64),
    SyncGroup(GroupSyncKey),
    SyncGroupBegin(GroupSyncKey),
    SyncGroupEnd(GroupSyncKey),
    SyncGroupNotify(GroupSyncKey),
    SyncKey(i64),
    GroupSyncKey(GroupSyncKey),
    Notification(Bytes),
    Metadata(Metadata),
    Customer(Customer),
}

fn need(name: &'static str, body: &[u8], min: usize) -> Result<(), BodyError> {
    if body.len() < min {
        Err(BodyError::TooShort {
            name,
            len: body.len(),
            min,
        })
    } else {
        Ok(())
    }
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}

fn decode_im(name: &'static str, version: u8, b: &Bytes) -> Result<Im, BodyError> {
    if version == 0 {
        need(name, b, 20)?;
        Ok(Im {
            sender: i64_at(b, 0),
            receiver: i64_at(b, 8),
            timestamp: 0,
            msgid: i32_at(b, 16),
            content: b.slice(20..),
        })
    } else {
        need(name, b, 24)?;
        Ok(Im {
            sender: i64_at(b, 0),
            receiver: i64_at(b, 8),
            timestamp: i32_at(b, 16),
            msgid: i32_at(b, 20),
            content: b.slice(24..),
        })
    }
}

fn decode_rt(name: &'static str, b: &Bytes) -> Result<Rt, BodyError> {
    need(name, b, 16)?;
    Ok(Rt {
        sender: i64_at(b, 0),
        receiver: i64_at(b, 8),
        content: b.slice(16..),
    })
}

fn decode_key(name: &'static str, b: &[u8]) -> Result<i64, BodyError> {
    need(name, b, 8)?;
    Ok(i64_at(b, 0))
}

fn decode_group_key(name: &'static str, b: &[u8]) -> Result<GroupSyncKey, BodyError> {
    need(name, b, 16)?;
    Ok(GroupSyncKey {
        group_id: i64_at(b, 0),
        sync_key: i64_at(b, 8),
    })
}

fn decode_auth(b: &Bytes) -> Result<AuthToken, BodyError> {
    need("AUTH_TOKEN", b, 4)?;
    let platform_id = b[0];
    let t = b[1] as usize;
    if 2 + t + 1 > b.len() {
        return Err(BodyError::AuthFieldOverrun { field: "token" });
    }
    let token = b.slice(2..2 + t);
    let d = b[2 + t] as usize;
    let start = 3 + t;
    if start + d > b.len() {
        return Err(BodyError::AuthFieldOverrun { field: "device_id" });
    }
    Ok(AuthToken {
        platform_id,
        token,
        device_id: b.slice(start..start + d),
    })
}

fn empty(name: &'static str, b: &[u8], v: Body) -> Result<Body, BodyError> {
    if b.is_empty() {
        Ok(v)
    } else {
        Err(BodyError::NotEmpty { name, len: b.len() })
    }
}

impl Body {
    /// Decodes `body` as command `cmd`, in the layout of `version` (the frame's own version byte).
    pub fn decode(cmd: u8, version: u8, body: &Bytes) -> Result<Body, BodyError> {
        let b = body;
        Ok(match cmd {
            cmd::AUTH_STATUS => {
                need("AUTH_STATUS", b, 4)?;
                Body::AuthStatus(i32_at(b, 0))
            }
            cmd::IM => Body::Im(decode_im("IM", version, b)?),
            cmd::ACK => {
                // The original does not check an ACK's length: a field that is not wholly present reads
                // as 0 (docs/protocol.md §6.4), so 0–3 bytes give seq 0; the status exists only
                // from version 2.
                let seq = if b.len() >= 4 { i32_at(b, 0) } else { 0 };
                let status = if version >= 2 && b.len() >= 5 {
                    b[4] as i8
                } else {
                    0
                };
                Body::Ack(Ack { seq, status })
            }
            cmd::GROUP_NOTIFICATION => Body::GroupNotification(b.clone()),
            cmd::GROUP_IM => Body::GroupIm(decode_im("GROUP_IM", version, b)?),
            cmd::PING => return empty("PING", b, Body::Ping),
            cmd::PONG => return empty("PONG", b, Body::Pong),
            cmd::AUTH_TOKEN => Body::AuthToken(decode_auth(b)?),
            cmd::RT => Body::Rt(decode_rt("RT", b)?),
            cmd::ENTER_ROOM => Body::EnterRoom(decode_key("ENTER_ROOM", b)?),
            cmd::LEAVE_ROOM => Body::LeaveRoom(decode_key("LEAVE_ROOM", b)?),
            cmd::ROOM_IM => Body::RoomIm(decode_rt("ROOM_IM", b)?),
            cmd::SYSTEM => Body::System(b.clone()),
            cmd::UNREAD_COUNT => {
                need("UNREAD_COUNT", b, 4)?;
                Body::UnreadCount(i32_at(b, 0))
            }
            cmd::CUSTOMER_DEPRECATED | cmd::CUSTOMER_SUPPORT_DEPRECATED => Body::Deprecated {
                cmd,
                body: b.clone(),
            },
            cmd::SYNC => Body::Sync(decode_key("SYNC", b)?),
            cmd::SYNC_BEGIN => Body::SyncBegin(decode_key("SYNC_BEGIN", b)?),
            cmd::SYNC_END => Body::SyncEnd(decode_key("SYNC_END", b)?),
            cmd::SYNC_NOTIFY => Body::SyncNotify(decode_key("SYNC_NOTIFY", b)?),
            cmd::SYNC_GROUP => Body::SyncGroup(decode_group_key("SYNC_GROUP", b)?),
            cmd::SYNC_GROUP_BEGIN => Body::SyncGroupBegin(decode_group_key("SYNC_GROUP_BEGIN", b)?),
            cmd::SYNC_GROUP_END => Body::SyncGroupEnd(decode_group_key("SYNC_GROUP_END", b)?),
            cmd::SYNC_GROUP_NOTIFY => {
                Body::SyncGroupNotify(decode_group_key("SYNC_GROUP_NOTIFY", b)?)
            }
            cmd::SYNC_KEY => Body::SyncKey(decode_key("SYNC_KEY", b)?),
            cmd::GROUP_SYNC_KEY => Body::GroupSyncKey(decode_group_key("GROUP_SYNC_KEY", b)?),
            cmd::NOTIFICATION => Body::Notification(b.clone()),
            cmd::METADATA => {
                need("METADATA", b, 32)?;
                Body::Metadata(Metadata {
                    sync_key: i64_at(b, 0),
                    prev_sync_key: i64_at(b, 8),
                })
            }
            cmd::CUSTOMER_V2 => {
                need("CUSTOMER_V2", b, 36)?;
                Body::Customer(Customer {
                    sender_appid: i64_at(b, 0),
                    sender: i64_at(b, 8),
                    receiver_appid: i64_at(b, 16),
                    receiver: i64_at(b, 24),
                    timestamp: i32_at(b, 32),
                    content: b.slice(36..),
                })
            }
            other => return Err(BodyError::UnknownCommand(other)),
        })
    }

    /// The command number of this body.
    pub fn cmd(&self) -> u8 {
        match self {
            Body::AuthStatus(_) => cmd::AUTH_STATUS,
            Body::Im(_) => cmd::IM,
            Body::Ack(_) => cmd::ACK,
            Body::GroupNotification(_) => cmd::GROUP_NOTIFICATION,
            Body::GroupIm(_) => cmd::GROUP_IM,
            Body::Ping => cmd::PING,
            Body::Pong => cmd::PONG,
            Body::AuthToken(_) => cmd::AUTH_TOKEN,
            Body::Rt(_) => cmd::RT,
            Body::EnterRoom(_) => cmd::ENTER_ROOM,
            Body::LeaveRoom(_) => cmd::LEAVE_ROOM,
            Body::RoomIm(_) => cmd::ROOM_IM,
            Body::System(_) => cmd::SYSTEM,
            Body::UnreadCount(_) => cmd::UNREAD_COUNT,
            Body::Deprecated { cmd, .. } => *cmd,
            Body::Sync(_) => cmd::SYNC,
            Body::SyncBegin(_) => cmd::SYNC_BEGIN,
            Body::SyncEnd(_) => cmd::SYNC_END,
            Body::SyncNotify(_) => cmd::SYNC_NOTIFY,
            Body::SyncGroup(_) => cmd::SYNC_GROUP,
            Body::SyncGroupBegin(_) => cmd::SYNC_GROUP_BEGIN,
            Body::SyncGroupEnd(_) => cmd::SYNC_GROUP_END,
            Body::SyncGroupNotify(_) => cmd::SYNC_GROUP_NOTIFY,
            Body::SyncKey(_) => cmd::SYNC_KEY,
            Body::GroupSyncKey(_) => cmd::GROUP_SYNC_KEY,
            Body::Notification(_) => cmd::NOTIFICATION,
            Body::Metadata(_) => cmd::METADATA,
            Body::Customer(_) => cmd::CUSTOMER_V2,
        }
    }

    /// Length of the body when encoded for `version`.
    pub fn encoded_len(&self, version: u8) -> usize {
        match self {
            Body::AuthStatus(_) | Body::UnreadCount(_) => 4,
            Body::Im(m) | Body::GroupIm(m) => {
                if version == 0 {
                    20 + m.content.len()
                } else {
                    24 + m.content.len()
                }
            }
            Body::Ack(_) => {
                if version >= 2 {
                    5
                } else {
                    4
                }
            }
            Body::GroupNotification(c) | Body::System(c) | Body::Notification(c) => c.len(),
            Body::Deprecated { body, .. } => body.len(),
            Body::Ping | Body::Pong => 0,
            // Both fields are truncated to 255 bytes by `encode`, and a body with both empty is padded
            // to the 4 bytes a decoder requires (docs/protocol.md §6.1); the length must agree with
            // `encode`.
            Body::AuthToken(a) => (3 + a.token.len().min(255) + a.device_id.len().min(255)).max(4),
            Body::Rt(r) | Body::RoomIm(r) => 16 + r.content.len(),
            Body::EnterRoom(_)
            | Body::LeaveRoom(_)
            | Body::Sync(_)
            | Body::SyncBegin(_)
            | Body::SyncEnd(_)
            | Body::SyncNotify(_)
            | Body::SyncKey(_) => 8,
            Body::SyncGroup(_)
            | Body::SyncGroupBegin(_)
            | Body::SyncGroupEnd(_)
            | Body::SyncGroupNotify(_)
            | Body::GroupSyncKey(_) => 16,
            Body::Metadata(_) => METADATA_LEN,
            Body::Customer(c) => 36 + c.content.len(),
        }
    }

    /// Appends the body, in the layout of `version`, to `dst`.
    ///
    /// AUTH_TOKEN's token and device id are truncated to 255 bytes (their length fields are one byte); an
    /// AUTH_TOKEN with both empty gets one trailing zero byte, because a body shorter than 4 bytes is
    /// rejected on decode (docs/protocol.md §6.1).
    pub fn encode(&self, version: u8, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len(version));
        match self {
            Body::AuthStatus(s) => dst.put_i32(*s),
            Body::UnreadCount(c) => dst.put_i32(*c),
            Body::Im(m) | Body::GroupIm(m) => {
                dst.put_i64(m.sender);
                dst.put_i64(m.receiver);
                if version != 0 {
                    dst.put_i32(m.timestamp);
                }
                dst.put_i32(m.msgid);
                dst.put_slice(&m.content);
            }
            Body::Ack(a) => {
                dst.put_i32(a.seq);
                if version >= 2 {
                    dst.put_i8(a.status);
                }
            }
            Body::GroupNotification(c) | Body::System(c) | Body::Notification(c) => {
                dst.put_slice(c)
            }
            Body::Deprecated { body, .. } => dst.put_slice(body),
            Body::Ping | Body::Pong => {}
            Body::AuthToken(a) => {
                let t = &a.token[..a.token.len().min(255)];
                let d = &a.device_id[..a.device_id.len().min(255)];
                dst.put_u8(a.platform_id);
                dst.put_u8(t.len() as u8);
                dst.put_slice(t);
                dst.put_u8(d.len() as u8);
                dst.put_slice(d);
                if t.is_empty() && d.is_empty() {
                    // The minimum AUTH_TOKEN body is 4 bytes; trailing bytes are ignored on read.
                    dst.put_u8(0);
                }
            }
            Body::Rt(r) | Body::RoomIm(r) => {
                dst.put_i64(r.sender);
                dst.put_i64(r.receiver);
                dst.put_slice(&r.content);
            }
            Body::EnterRoom(k)
            | Body::LeaveRoom(k)
            | Body::Sync(k)
            | Body::SyncBegin(k)
            | Body::SyncEnd(k)
            | Body::SyncNotify(k)
            | Body::SyncKey(k) => dst.put_i64(*k),
            Body::SyncGroup(g)
            | Body::SyncGroupBegin(g)
            | Body::SyncGroupEnd(g)
            | Body::SyncGroupNotify(g)
            | Body::GroupSyncKey(g) => {
                dst.put_i64(g.group_id);
                dst.put_i64(g.sync_key);
            }
            Body::Metadata(m) => {
                dst.put_i64(m.sync_key);
                dst.put_i64(m.prev_sync_key);
                dst.put_bytes(0, 16);
            }
            Body::Customer(c) => {
                dst.put_i64(c.sender_appid);
                dst.put_i64(c.sender);
                dst.put_i64(c.receiver_appid);
                dst.put_i64(c.receiver);
                dst.put_i32(c.timestamp);
                dst.put_slice(&c.content);
            }
        }
    }

    /// The body encoded for `version`, as its own buffer.
    pub fn to_bytes(&self, version: u8) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len(version));
        self.encode(version, &mut b);
        b.freeze()
    }

    /// The body in the layout messages are stored and passed between server roles in
    /// ([`crate::STORAGE_VERSION`]).
    pub fn to_stored(&self) -> Bytes {
        self.to_bytes(crate::STORAGE_VERSION)
    }
}

/// Where the timestamp of a stored IM / GROUP_IM body lies: version 0 has none.
const IM_TIMESTAMP: std::ops::Range<usize> = 16..20;

/// A stored body (version 2 layout) as the two slices to write for a session of `version`: an IM or
/// GROUP_IM for version 0 loses its timestamp (sender, receiver, msgid, content); everything else is
/// unchanged (the second slice is then empty).
pub fn relayout(cmd: u8, version: u8, body: &[u8]) -> (&[u8], &[u8]) {
    if version == 0 && (cmd == cmd::IM || cmd == cmd::GROUP_IM) && body.len() >= 24 {
        (&body[..IM_TIMESTAMP.start], &body[IM_TIMESTAMP.end..])
    } else {
        (body, &[])
    }
}

/// Who sent a stored message, read without decoding its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The sender's app, when the body names it (CUSTOMER_V2); else the app of the queue.
    pub appid: Option<i64>,
    pub uid: i64,
}

/// The sender of a stored (version 2) message body, for the commands that have one (IM, GROUP_IM,
/// CUSTOMER_V2); `None` for other commands and for bodies too short for their layout.
pub fn stored_sender(cmd: u8, body: &[u8]) -> Option<Sender> {
    match cmd {
        cmd::IM | cmd::GROUP_IM if body.len() >= 24 => Some(Sender {
            appid: None,
            uid: peek_i64(body, 0)?,
        }),
        cmd::CUSTOMER_V2 if body.len() >= 36 => Some(Sender {
            appid: Some(peek_i64(body, 0)?),
            uid: peek_i64(body, 8)?,
        }),
        _ => None,
    }
}

/// Reads the i64 at `at` of a body, if present (used to peek sender/receiver without a full decode).
pub fn peek_i64(body: &[u8], at: usize) -> Option<i64> {
    let mut s = body.get(at..at.checked_add(8)?)?;
    Some(s.get_i64())
}
