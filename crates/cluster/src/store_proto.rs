//! The store link protocol (access → store): command numbers, flags, error codes and the binary
//! body layouts of every request and reply, as pure functions (no I/O).
//!
//! Every message is one frame with the common 12-byte header (`proto::Header`): `seq` is the
//! request id chosen by the client (the reply carries the same `seq`, so requests are pipelined on
//! one connection and may be answered out of order), `cmd` is one of the `CMD_*` numbers below in
//! the private range 160–179, `version` is [`LINK_VERSION`], and `flag` is 0 on a request,
//! [`FLAG_REPLY`] on a successful reply and `FLAG_REPLY | FLAG_ERROR` on an error reply. Every
//! integer is big-endian. `docs/internal-protocols.md` §"store link" documents the same layouts
//! byte by byte; keep the two in step.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use store::{
    AppendKey, Appended, NewMessage, QueueId, StoreError, StoredMessage, SyncPage, APPEND_KEY_LEN,
};

/// Default frame body limit on the store link (both directions).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Version byte of every store link frame.
pub const LINK_VERSION: u8 = 1;

/// `Ping`: liveness and role. Empty request; reply [`PingInfo`].
pub const CMD_PING: u8 = 160;
/// `Append(Vec<NewMessage>) -> Vec<Vec<Appended>>`.
pub const CMD_APPEND: u8 = 161;
/// `Sync(queue, after, limit) -> SyncPage`.
pub const CMD_SYNC: u8 = 162;
/// `SyncSince(queue, after, limit, join_ts) -> SyncPage`.
pub const CMD_SYNC_SINCE: u8 = 163;
/// `Latest(queue, n) -> Vec<StoredMessage>`.
pub const CMD_LATEST: u8 = 164;
/// `LatestPeer(queue, n) -> Vec<StoredMessage>` (the peer-only chain).
pub const CMD_LATEST_PEER: u8 = 165;
/// `NewCount(queue, after) -> u64`.
pub const CMD_NEW_COUNT: u8 = 166;
/// `LastKey(queue) -> i64`.
pub const CMD_LAST_KEY: u8 = 167;
/// `AppendKeyed(Vec<NewMessage>) -> Vec<(stored_before, Vec<Appended>)>`: `Append` with each
/// message's idempotency key (`NewMessage::key`), answered with whether the store already held
/// it. A store that does not know it answers [`ErrorCode::Unsupported`].
pub const CMD_APPEND_KEYED: u8 = 168;

/// Header flag of a reply.
pub const FLAG_REPLY: u8 = 0x01;
/// Header flag of an error reply (always together with [`FLAG_REPLY`]).
pub const FLAG_ERROR: u8 = 0x02;

/// Encoded size of a queue id.
pub const QUEUE_LEN: usize = 17;
/// Fixed part of an encoded new message (before its queues and body).
const NEW_MESSAGE_FIXED: usize = 8 + 1 + 1 + 8 + 4 + 4;
/// Fixed part of an encoded stored message (before its body).
const STORED_FIXED: usize = 8 + 8 + 8 + 1 + 1 + 8 + 4;
/// Fixed part of an encoded sync page (before its messages).
pub const SYNC_PAGE_FIXED: usize = 8 + 1 + 8 + 4;
/// Fixed part of an encoded message list.
pub const LIST_FIXED: usize = 4;

/// A body that does not follow the layout. Always the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed store link body: {0}")]
pub struct BodyError(pub String);

fn bad(what: impl Into<String>) -> BodyError {
    BodyError(what.into())
}

/// Why a request failed, as carried in an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The store had a write or fsync failure and refuses appends until restarted.
    Poisoned,
    /// Too many appends are waiting; retry later.
    Overloaded,
    /// This store is a replication follower and refuses appends.
    NotLeader,
    /// The request was understood but its arguments are not acceptable (too large, no queue…).
    InvalidArgument,
    /// An internal store failure (I/O, corruption).
    Internal,
    /// The store is shutting down.
    Closed,
    /// `sync` replication: no follower acknowledged the append within the configured timeout;
    /// its records were withdrawn, so it is never delivered (retrying stores it afresh).
    ReplicationTimeout,
    /// The request body or header did not follow the protocol.
    BadRequest,
    /// Unknown command or link version.
    Unsupported,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::Poisoned => 1,
            ErrorCode::Overloaded => 2,
            ErrorCode::NotLeader => 3,
            ErrorCode::InvalidArgument => 4,
            ErrorCode::Internal => 5,
            ErrorCode::Closed => 6,
            ErrorCode::ReplicationTimeout => 7,
            ErrorCode::BadRequest => 8,
            ErrorCode::Unsupported => 9,
            ErrorCode::Other(c) => c,
        }
    }

    /// From the wire value.
    pub fn from_u16(c: u16) -> ErrorCode {
        match c {
            1 => ErrorCode::Poisoned,
            2 => ErrorCode::Overloaded,
            3 => ErrorCode::NotLeader,
            4 => ErrorCode::InvalidArgument,
            5 => ErrorCode::Internal,
            6 => ErrorCode::Closed,
            7 => ErrorCode::ReplicationTimeout,
            8 => ErrorCode::BadRequest,
            9 => ErrorCode::Unsupported,
            c => ErrorCode::Other(c),
        }
    }

    /// The code for a store error.
    pub fn of(e: &StoreError) -> ErrorCode {
        match e {
            StoreError::Poisoned(_) => ErrorCode::Poisoned,
            StoreError::Overloaded(_) => ErrorCode::Overloaded,
            StoreError::NotLeader => ErrorCode::NotLeader,
            StoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            StoreError::Closed => ErrorCode::Closed,
            StoreError::Io { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Locked(..)
            | StoreError::NotFollower
            | StoreError::Truncated { .. }
            | StoreError::ReplicationGap { .. } => ErrorCode::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorCode::Poisoned => "poisoned",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Internal => "internal",
            ErrorCode::Closed => "closed",
            ErrorCode::ReplicationTimeout => "replication_timeout",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Other(c) => return write!(f, "code {c}"),
        };
        f.write_str(s)
    }
}

/// The reply to `Ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingInfo {
    /// The store accepts appends (it is a leader).
    pub leader: bool,
    /// The store's `log_end()`.
    pub log_end: u64,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    /// Keys (`NewMessage::key`) are not sent: they decode as `None`.
    Append(Vec<NewMessage>),
    AppendKeyed(Vec<NewMessage>),
    Sync {
        queue: QueueId,
        after: i64,
        limit: u32,
    },
    SyncSince {
        queue: QueueId,
        after: i64,
        limit: u32,
        join_ts: i64,
    },
    Latest {
        queue: QueueId,
        n: u32,
    },
    LatestPeer {
        queue: QueueId,
        n: u32,
    },
    NewCount {
        queue: QueueId,
        after: i64,
    },
    LastKey {
        queue: QueueId,
    },
}

impl Request {
    /// The command number of this request.
    pub fn cmd(&self) -> u8 {
        match self {
            Request::Ping => CMD_PING,
            Request::Append(_) => CMD_APPEND,
            Request::AppendKeyed(_) => CMD_APPEND_KEYED,
            Request::Sync { .. } => CMD_SYNC,
            Request::SyncSince { .. } => CMD_SYNC_SINCE,
            Request::Latest { .. } => CMD_LATEST,
            Request::LatestPeer { .. } => CMD_LATEST_PEER,
            Request::NewCount { .. } => CMD_NEW_COUNT,
            Request::LastKey { .. } => CMD_LAST_KEY,
        }
    }

    /// Writes the body of this request.
    pub fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Request::Ping => {}
            Request::Append(msgs) => encode_append(msgs, false, out),
            Request::AppendKeyed(msgs) => encode_append(msgs, true, out),
            Request::Sync {
                queue,
                after,
                limit,
            } => {
                put_queue(out, *queue);
                out.put_i64(*after);
                out.put_u32(*limit);
            }
            Request::SyncSince {
                queue,
                after,
                limit,
                join_ts,
            } => {
                put_queue(out, *queue);
                out.put_i64(*after);
                out.put_u32(*limit);
                out.put_i64(*join_ts);
            }
            Request::Latest { queue, n } | Request::LatestPeer { queue, n } => {
                put_queue(out, *queue);
                out.put_u32(*n);
            }
            Request::NewCount { queue, after } => {
                put_queue(out, *queue);
                out.put_i64(*after);
            }
            Request::LastKey { queue } => put_queue(out, *queue),
        }
    }

    /// Size of the encoded body (exact), to reserve before encoding.
    pub fn body_len(&self) -> usize {
        match self {
            Request::Ping => 0,
            Request::Append(msgs) => {
                4 + msgs
                    .iter()
                    .map(|m| NEW_MESSAGE_FIXED + m.queues.len() * QUEUE_LEN + m.body.len())
                    .sum::<usize>()
            }
            Request::AppendKeyed(msgs) => {
                4 + msgs
                    .iter()
                    .map(|m| {
                        1 + m.key.map_or(0, |_| APPEND_KEY_LEN)
                            + NEW_MESSAGE_FIXED
                            + m.queues.len() * QUEUE_LEN
                            + m.body.len()
                    })
                    .sum::<usize>()
            }
            Request::Sync { .. } => QUEUE_LEN + 12,
            Request::SyncSince { .. } => QUEUE_LEN + 20,
            Request::Latest { .. } | Request::LatestPeer { .. } => QUEUE_LEN + 4,
            Request::NewCount { .. } => QUEUE_LEN + 8,
            Request::LastKey { .. } => QUEUE_LEN,
        }
    }

    /// Parses a request body of command `cmd`. `Ok(None)` for an unknown command.
    pub fn decode(cmd: u8, body: Bytes) -> Result<Option<Request>, BodyError> {
        let mut r = Reader::new(body);
        let req = match cmd {
            CMD_PING => Request::Ping,
            CMD_APPEND => Request::Append(decode_append(&mut r, false)?),
            CMD_APPEND_KEYED => Request::AppendKeyed(decode_append(&mut r, true)?),
            CMD_SYNC => Request::Sync {
                queue: r.queue()?,
                after: r.i64()?,
                limit: r.u32()?,
            },
            CMD_SYNC_SINCE => Request::SyncSince {
                queue: r.queue()?,
                after: r.i64()?,
                limit: r.u32()?,
                join_ts: r.i64()?,
            },
            CMD_LATEST => Request::Latest {
                queue: r.queue()?,
                n: r.u32()?,
            },
            CMD_LATEST_PEER => Request::LatestPeer {
                queue: r.queue()?,
                n: r.u32()?,
            },
            CMD_NEW_COUNT => Request::NewCount {
                queue: r.queue()?,
                after: r.i64()?,
            },
            CMD_LAST_KEY => Request::LastKey { queue: r.queue()? },
            _ => return Ok(None),
        };
        r.finish()?;
        Ok(Some(req))
    }
}

/// Writes a queue id: kind u8 (1 user, 2 group), appid i64, id i64.
pub fn put_queue(out: &mut BytesMut, q: QueueId) {
    let (kind, appid, id) = match q {
        QueueId::User { appid, uid } => (1u8, appid, uid),
        QueueId::Group { appid, gid } => (2u8, appid, gid),
    };
    out.put_u8(kind);
    out.put_i64(appid);
    out.put_i64(id);
}

fn encode_append(msgs: &[NewMessage], keyed: bool, out: &mut BytesMut) {
    out.put_u32(msgs.len() as u32);
    for m in msgs {
        if keyed {
            match &m.key {
                Some(k) => {
                    out.put_u8(1);
                    out.put_slice(&k.0);
                }
                None => out.put_u8(0),
            }
        }
        out.put_i64(m.device_id);
        out.put_u8(m.cmd);
        out.put_u8(m.flag);
        out.put_i64(m.timestamp);
        out.put_u32(m.queues.len() as u32);
        for q in &m.queues {
            put_queue(out, *q);
        }
        out.put_u32(m.body.len() as u32);
        out.put_slice(&m.body);
    }
}

fn decode_append(r: &mut Reader, keyed: bool) -> Result<Vec<NewMessage>, BodyError> {
    let n = r.count(NEW_MESSAGE_FIXED + usize::from(keyed))?;
    let mut msgs = Vec::with_capacity(n);
    for _ in 0..n {
        let key = if keyed {
            match r.u8()? {
                0 => None,
                1 => {
                    let b = r.bytes(APPEND_KEY_LEN)?;
                    let mut k = [0u8; APPEND_KEY_LEN];
                    k.copy_from_slice(&b);
                    Some(AppendKey(k))
                }
                other => return Err(bad(format!("append key marker {other} is neither 0 nor 1"))),
            }
        } else {
            None
        };
        let device_id = r.i64()?;
        let cmd = r.u8()?;
        let flag = r.u8()?;
        let timestamp = r.i64()?;
        let nq = r.count(QUEUE_LEN)?;
        let mut queues = Vec::with_capacity(nq);
        for _ in 0..nq {
            queues.push(r.queue()?);
        }
        let len = r.u32()? as usize;
        let body = r.bytes(len)?;
        msgs.push(NewMessage {
            key,
            queues,
            device_id,
            cmd,
            flag,
            timestamp,
            body,
        });
    }
    Ok(msgs)
}

/// Encodes the reply to `Append`: count u32, then per message n u32 and n × (key i64, prev i64).
pub fn encode_appended(res: &[Vec<Appended>], out: &mut BytesMut) {
    out.reserve(4 + res.iter().map(|v| 4 + v.len() * 16).sum::<usize>());
    out.put_u32(res.len() as u32);
    for v in res {
        out.put_u32(v.len() as u32);
        for a in v {
            out.put_i64(a.key);
            out.put_i64(a.prev_key);
        }
    }
}

/// Decodes the reply to `Append`.
pub fn decode_appended(body: Bytes) -> Result<Vec<Vec<Appended>>, BodyError> {
    decode_appended_with(body, false)
}

/// Encodes the reply to `AppendKeyed`: count u32, then per message n u32, flags u8 (bit 0: the
/// store already held it, nothing was written) and n × (key i64, prev i64).
pub fn encode_appended_keyed(res: &[Vec<Appended>], out: &mut BytesMut) {
    out.reserve(4 + res.iter().map(|v| 5 + v.len() * 16).sum::<usize>());
    out.put_u32(res.len() as u32);
    for v in res {
        out.put_u32(v.len() as u32);
        out.put_u8(u8::from(v.iter().any(|a| a.stored_before)));
        for a in v {
            out.put_i64(a.key);
            out.put_i64(a.prev_key);
        }
    }
}

/// Decodes the reply to `AppendKeyed`.
pub fn decode_appended_keyed(body: Bytes) -> Result<Vec<Vec<Appended>>, BodyError> {
    decode_appended_with(body, true)
}

fn decode_appended_with(body: Bytes, keyed: bool) -> Result<Vec<Vec<Appended>>, BodyError> {
    let mut r = Reader::new(body);
    let n = r.count(4 + usize::from(keyed))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.count(16)?;
        let stored_before = if keyed {
            match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(bad(format!("append reply flags {other:#x} are unknown"))),
            }
        } else {
            false
        };
        let mut v = Vec::with_capacity(k);
        for _ in 0..k {
            v.push(Appended {
                key: r.i64()?,
                prev_key: r.i64()?,
                stored_before,
            });
        }
        out.push(v);
    }
    r.finish()?;
    Ok(out)
}

/// Encoded size of one stored message.
pub fn stored_len(m: &StoredMessage) -> usize {
    STORED_FIXED + m.body.len()
}

fn put_stored(out: &mut BytesMut, m: &StoredMessage) {
    out.put_i64(m.key);
    out.put_i64(m.prev_key);
    out.put_i64(m.device_id);
    out.put_u8(m.cmd);
    out.put_u8(m.flag);
    out.put_i64(m.timestamp);
    out.put_u32(m.body.len() as u32);
    out.put_slice(&m.body);
}

fn get_stored(r: &mut Reader) -> Result<StoredMessage, BodyError> {
    let key = r.i64()?;
    let prev_key = r.i64()?;
    let device_id = r.i64()?;
    let cmd = r.u8()?;
    let flag = r.u8()?;
    let timestamp = r.i64()?;
    let len = r.u32()? as usize;
    Ok(StoredMessage {
        key,
        prev_key,
        device_id,
        cmd,
        flag,
        timestamp,
        body: r.bytes(len)?,
    })
}

/// Encodes a sync page: last_key i64, has_more u8, queue_last_key i64, count u32, messages.
///
/// The page is cut so that the body stays within `max_body` bytes: messages that do not fit are
/// left out, `has_more` is set and `last_key` becomes the key of the last message included (the
/// caller continues from there, so nothing is skipped). At least one message is always included.
pub fn encode_sync_page(page: &SyncPage, max_body: usize, out: &mut BytesMut) {
    let mut size = SYNC_PAGE_FIXED;
    let mut n = 0;
    for m in &page.messages {
        let l = stored_len(m);
        if n > 0 && size + l > max_body {
            break;
        }
        size += l;
        n += 1;
    }
    let (last_key, has_more) = if n < page.messages.len() {
        (page.messages[n - 1].key, true)
    } else {
        (page.last_key, page.has_more)
    };
    out.reserve(size);
    out.put_i64(last_key);
    out.put_u8(u8::from(has_more));
    out.put_i64(page.queue_last_key);
    out.put_u32(n as u32);
    for m in &page.messages[..n] {
        put_stored(out, m);
    }
}

/// Decodes a sync page.
pub fn decode_sync_page(body: Bytes) -> Result<SyncPage, BodyError> {
    let mut r = Reader::new(body);
    let last_key = r.i64()?;
    let has_more = match r.u8()? {
        0 => false,
        1 => true,
        b => return Err(bad(format!("has_more byte {b}"))),
    };
    let queue_last_key = r.i64()?;
    let n = r.count(STORED_FIXED)?;
    let mut messages = Vec::with_capacity(n);
    for _ in 0..n {
        messages.push(get_stored(&mut r)?);
    }
    r.finish()?;
    Ok(SyncPage {
        messages,
        last_key,
        has_more,
        queue_last_key,
    })
}

/// Encodes a message list (`Latest`): count u32, messages. When the whole list does not fit in
/// `max_body` bytes, the oldest messages are left out (the newest are the point of `Latest`).
pub fn encode_messages(msgs: &[StoredMessage], max_body: usize, out: &mut BytesMut) {
    let mut size = LIST_FIXED;
    let mut first = msgs.len();
    while first > 0 {
        let l = stored_len(&msgs[first - 1]);
        if first < msgs.len() && size + l > max_body {
            break;
        }
        size += l;
        first -= 1;
    }
    out.reserve(size);
    out.put_u32((msgs.len() - first) as u32);
    for m in &msgs[first..] {
        put_stored(out, m);
    }
}

/// Decodes a message list.
pub fn decode_messages(body: Bytes) -> Result<Vec<StoredMessage>, BodyError> {
    let mut r = Reader::new(body);
    let n = r.count(STORED_FIXED)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get_stored(&mut r)?);
    }
    r.finish()?;
    Ok(out)
}

/// Encodes the reply to `Ping`: role u8 (0 leader, 1 follower), log_end u64.
pub fn encode_ping(p: PingInfo, out: &mut BytesMut) {
    out.put_u8(if p.leader { 0 } else { 1 });
    out.put_u64(p.log_end);
}

/// Decodes the reply to `Ping`.
pub fn decode_ping(body: Bytes) -> Result<PingInfo, BodyError> {
    let mut r = Reader::new(body);
    let leader = match r.u8()? {
        0 => true,
        1 => false,
        b => return Err(bad(format!("role byte {b}"))),
    };
    let log_end = r.u64()?;
    r.finish()?;
    Ok(PingInfo { leader, log_end })
}

/// Decodes a u64 reply (`NewCount`).
pub fn decode_u64(body: Bytes) -> Result<u64, BodyError> {
    let mut r = Reader::new(body);
    let v = r.u64()?;
    r.finish()?;
    Ok(v)
}

/// Decodes an i64 reply (`LastKey`).
pub fn decode_i64(body: Bytes) -> Result<i64, BodyError> {
    let mut r = Reader::new(body);
    let v = r.i64()?;
    r.finish()?;
    Ok(v)
}

/// Encodes an error reply body: code u16, message length u32, message (UTF-8).
pub fn encode_error(code: ErrorCode, message: &str, out: &mut BytesMut) {
    let msg = &message.as_bytes()[..message.len().min(64 * 1024)];
    out.reserve(6 + msg.len());
    out.put_u16(code.as_u16());
    out.put_u32(msg.len() as u32);
    out.put_slice(msg);
}

/// Decodes an error reply body.
pub fn decode_error(body: Bytes) -> Result<(ErrorCode, String), BodyError> {
    let mut r = Reader::new(body);
    let code = ErrorCode::from_u16(r.u16()?);
    let len = r.u32()? as usize;
    let msg = r.bytes(len)?;
    r.finish()?;
    Ok((code, String::from_utf8_lossy(&msg).into_owned()))
}

/// A bounds-checked big-endian reader over a body.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    fn need(&self, n: usize) -> Result<(), BodyError> {
        if self.buf.remaining() < n {
            Err(bad(format!(
                "needs {n} more bytes, {} left",
                self.buf.remaining()
            )))
        } else {
            Ok(())
        }
    }

    pub fn u8(&mut self) -> Result<u8, BodyError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, BodyError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, BodyError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub fn u64(&mut self) -> Result<u64, BodyError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    pub fn i64(&mut self) -> Result<i64, BodyError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }

    pub fn bytes(&mut self, n: usize) -> Result<Bytes, BodyError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Reads a u32 element count and checks that `count × min_each` bytes can still follow, so a
    /// hostile count never makes us reserve memory.
    pub fn count(&mut self, min_each: usize) -> Result<usize, BodyError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_each) > self.buf.remaining() {
            return Err(bad(format!(
                "count {n} cannot fit in the {} bytes left",
                self.buf.remaining()
            )));
        }
        Ok(n)
    }

    pub fn queue(&mut self) -> Result<QueueId, BodyError> {
        let kind = self.u8()?;
        let appid = self.i64()?;
        let id = self.i64()?;
        match kind {
            1 => Ok(QueueId::user(appid, id)),
            2 => Ok(QueueId::group(appid, id)),
            k => Err(bad(format!("queue kind {k}"))),
        }
    }

    pub fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    pub fn finish(&self) -> Result<(), BodyError> {
        if self.buf.has_remaining() {
            Err(bad(format!("{} trailing bytes", self.buf.remaining())))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(key: i64, body: &'static [u8]) -> StoredMessage {
        StoredMessage {
            key,
            prev_key: key - 1,
            device_id: 7,
            cmd: 4,
            flag: 1,
            timestamp: 1_700_000_000,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn requests_round_trip() {
        let reqs = vec![
            Request::Ping,
            Request::Append(vec![NewMessage {
                key: None,
                queues: vec![QueueId::user(1, -5), QueueId::group(1, i64::MIN)],
                device_id: 3,
                cmd: 4,
                flag: 0,
                timestamp: -1,
                body: Bytes::from_static(b"hello"),
            }]),
            Request::AppendKeyed(vec![
                NewMessage {
                    key: Some(AppendKey::client(1, 2, 3, 4, 5, b"hello")),
                    queues: vec![QueueId::user(1, -5)],
                    device_id: 3,
                    cmd: 4,
                    flag: 0,
                    timestamp: 7,
                    body: Bytes::from_static(b"hello"),
                },
                NewMessage {
                    key: None,
                    queues: vec![QueueId::group(1, 9)],
                    device_id: 0,
                    cmd: 8,
                    flag: 0,
                    timestamp: 7,
                    body: Bytes::from_static(b"x"),
                },
            ]),
            Request::Sync {
                queue: QueueId::user(2, 3),
                after: 9,
                limit: 100,
            },
            Request::SyncSince {
                queue: QueueId::group(2, 3),
                after: 9,
                limit: 100,
                join_ts: 5,
            },
            Request::Latest {
                queue: QueueId::user(2, 3),
                n: 4,
            },
            Request::LatestPeer {
                queue: QueueId::user(2, 3),
                n: 4,
            },
            Request::NewCount {
                queue: QueueId::user(2, 3),
                after: 1,
            },
            Request::LastKey {
                queue: QueueId::group(2, 3),
            },
        ];
        for req in reqs {
            let mut b = BytesMut::new();
            req.encode_body(&mut b);
            assert_eq!(b.len(), req.body_len(), "{req:?}");
            let back = Request::decode(req.cmd(), b.freeze());
            assert_eq!(back, Ok(Some(req)));
        }
        assert_eq!(Request::decode(179, Bytes::new()), Ok(None));
    }

    #[test]
    fn hostile_bodies_are_rejected() {
        // a count claiming far more messages than the body holds
        let mut b = BytesMut::new();
        b.put_u32(u32::MAX);
        assert!(Request::decode(CMD_APPEND, b.freeze()).is_err());
        // truncated sync
        assert!(Request::decode(CMD_SYNC, Bytes::from_static(&[1, 0, 0])).is_err());
        // trailing bytes
        assert!(Request::decode(CMD_PING, Bytes::from_static(&[0])).is_err());
        // bad queue kind
        let mut b = BytesMut::new();
        b.put_u8(9);
        b.put_i64(1);
        b.put_i64(1);
        assert!(Request::decode(CMD_LAST_KEY, b.freeze()).is_err());
        // a key marker that is neither 0 nor 1
        let mut b = BytesMut::new();
        b.put_u32(1);
        b.put_u8(5);
        b.put_slice(&[0u8; 80]);
        assert!(Request::decode(CMD_APPEND_KEYED, b.freeze()).is_err());
    }

    #[test]
    fn sync_page_is_cut_to_the_frame_limit() {
        let page = SyncPage {
            messages: vec![msg(10, b"aaaa"), msg(20, b"bbbb"), msg(30, b"cccc")],
            last_key: 30,
            has_more: false,
            queue_last_key: 40,
        };
        let mut b = BytesMut::new();
        encode_sync_page(&page, 1 << 20, &mut b);
        assert_eq!(decode_sync_page(b.freeze()), Ok(page.clone()));
        let two = SYNC_PAGE_FIXED + 2 * (STORED_FIXED + 4);
        let mut b = BytesMut::new();
        encode_sync_page(&page, two, &mut b);
        assert_eq!(b.len(), two);
        let cut = decode_sync_page(b.freeze()).expect("decodes");
        assert_eq!(cut.messages.len(), 2);
        assert_eq!(cut.last_key, 20);
        assert!(cut.has_more);
        // at least one message even when it alone is too large
        let mut b = BytesMut::new();
        encode_sync_page(&page, 1, &mut b);
        let cut = decode_sync_page(b.freeze()).expect("decodes");
        assert_eq!(cut.messages.len(), 1);
        assert_eq!(cut.last_key, 10);
    }

    #[test]
    fn latest_keeps_the_newest_when_cut() {
        let msgs = vec![msg(10, b"aaaa"), msg(20, b"bbbb"), msg(30, b"cccc")];
        let mut b = BytesMut::new();
        encode_messages(&msgs, LIST_FIXED + 2 * (STORED_FIXED + 4), &mut b);
        let back = decode_messages(b.freeze()).expect("decodes");
        assert_eq!(back, msgs[1..].to_vec());
    }

    #[test]
    fn errors_and_small_replies_round_trip() {
        let mut b = BytesMut::new();
        encode_error(ErrorCode::NotLeader, "follower", &mut b);
        assert_eq!(
            decode_error(b.freeze()),
            Ok((ErrorCode::NotLeader, "follower".to_string()))
        );
        for c in 0..20u16 {
            assert_eq!(ErrorCode::from_u16(c).as_u16(), c);
        }
        let mut b = BytesMut::new();
        encode_ping(
            PingInfo {
                leader: false,
                log_end: 99,
            },
            &mut b,
        );
        assert_eq!(
            decode_ping(b.freeze()),
            Ok(PingInfo {
                leader: false,
                log_end: 99
            })
        );
        let mut b = BytesMut::new();
        let fresh = Appended {
            key: 5,
            prev_key: 0,
            stored_before: false,
        };
        encode_appended(&[vec![fresh]], &mut b);
        assert_eq!(decode_appended(b.freeze()), Ok(vec![vec![fresh]]));
        let again = Appended {
            key: 9,
            prev_key: 5,
            stored_before: true,
        };
        let mut b = BytesMut::new();
        encode_appended_keyed(&[vec![fresh], vec![again, again]], &mut b);
        assert_eq!(
            decode_appended_keyed(b.freeze()),
            Ok(vec![vec![fresh], vec![again, again]])
        );
        let mut b = BytesMut::new();
        encode_appended_keyed(&[vec![fresh]], &mut b);
        let mut bad = b.to_vec();
        bad[8] = 7; // the flags byte
        assert!(decode_appended_keyed(Bytes::from(bad)).is_err());
    }
}
