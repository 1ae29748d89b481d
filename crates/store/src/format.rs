//! On-disk formats, as pure functions over byte slices (no I/O): the segment header, the record
//! frame, the MESSAGE payload with its queue entries, the three control records (JUMP: the log
//! continues at a higher position after a promotion; WITHDRAW: unconfirmed records taken back off
//! their queues; KEY: the idempotency key of the message before it), the checkpoint file, and the skew-binary jump function that gives every queue
//! entry its skip pointer.
//!
//! Every integer is little-endian. `docs/storage-format.md` describes the same layouts byte by
//! byte; keep the two in step.

use crate::QueueId;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"BNTRLOG\x01";
/// Segment format version.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes before the first record of a segment file. They are not part of the position space.
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// Record frame header: crc32c u32, payload length u32, type u8, 3 reserved bytes.
pub const RECORD_HEADER_LEN: usize = 12;
/// Fixed part of a MESSAGE payload (before the body).
pub const MESSAGE_META_LEN: usize = 32;
/// Record header plus message meta: the fixed per-record overhead.
pub const MESSAGE_FIXED_LEN: usize = RECORD_HEADER_LEN + MESSAGE_META_LEN;
/// One queue entry.
pub const ENTRY_LEN: usize = 56;
/// Record type of a message record.
pub const RECORD_MESSAGE: u8 = 1;
/// Record type of a position jump: the first record of a segment that starts above the end of
/// the log before it (written when a follower is promoted, so that no position is ever reused).
pub const RECORD_JUMP: u8 = 2;
/// Record type of a withdrawal: the records between two positions were never confirmed and are
/// taken back off their queues (sync replication refused them).
pub const RECORD_WITHDRAW: u8 = 3;
/// Record type of an idempotency key: the MESSAGE record just before it was appended with this
/// key (`crate::AppendKey`), so a retry of that append is answered from it (§4.3 of
/// `docs/storage-format.md`).
pub const RECORD_KEY: u8 = 4;
/// Last 4 bytes of every control record (JUMP, WITHDRAW): they end with the record's total length
/// (u32) and this magic, so a reader can recognise one from the position where it ends.
pub const CONTROL_MAGIC: [u8; 4] = *b"BNTC";
/// Bytes of the control trailer (length u32 + magic).
pub const CONTROL_TRAILER_LEN: usize = 8;
/// Payload length of a JUMP record: `from` u64 and the trailer.
pub const JUMP_PAYLOAD_LEN: usize = 8 + CONTROL_TRAILER_LEN;
/// Total length of a JUMP record.
pub const JUMP_RECORD_LEN: usize = RECORD_HEADER_LEN + JUMP_PAYLOAD_LEN;
/// Payload length of a KEY record: `at` u64, the 40-byte key and the trailer.
pub const KEY_PAYLOAD_LEN: usize = 8 + crate::APPEND_KEY_LEN + CONTROL_TRAILER_LEN;
/// Total length of a KEY record.
pub const KEY_RECORD_LEN: usize = RECORD_HEADER_LEN + KEY_PAYLOAD_LEN;
/// Fixed part of a WITHDRAW payload before its queue heads: from u64, to u64, n u32, reserved u32.
pub const WITHDRAW_FIXED_LEN: usize = 24;
/// A promoted store continues its log at a multiple of this (1 TiB), at least this far above the
/// end of everything it holds: see [`jump_target`].
pub const JUMP_ALIGN: u64 = 1 << 40;
/// Largest payload the format accepts (a sanity bound for readers; writers are bounded by options).
pub const MAX_RECORD_PAYLOAD: usize = 1 << 30;

/// Queue kind byte of an entry.
pub const KIND_USER: u8 = 1;
/// Queue kind byte of an entry.
pub const KIND_GROUP: u8 = 2;
/// Entry flag bit: the content is a group message, so this entry is not on the peer-only chain.
pub const ENTRY_FLAG_GROUP_CONTENT: u8 = 0x01;

/// Checkpoint file magic.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"BNTRCKP\x01";
/// Checkpoint format version.
pub const CHECKPOINT_VERSION: u32 = 1;
/// Checkpoint header length.
pub const CHECKPOINT_HEADER_LEN: usize = 40;
/// Fixed part of one queue in a checkpoint.
pub const CHECKPOINT_QUEUE_FIXED: usize = 40;

#[inline]
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

#[inline]
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[inline]
pub(crate) fn i64_at(b: &[u8], at: usize) -> i64 {
    u64_at(b, at) as i64
}

/// Name of the segment file whose first record is at `base`.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// Parses a segment file name back into its base position.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The 32-byte header of a segment whose first record is at position `base`.
pub fn encode_segment_header(base: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header and returns the base position it records.
pub fn decode_segment_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < SEGMENT_HEADER_LEN as usize {
        return Err(format!("segment header is {} bytes, expected 32", h.len()));
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let crc = u32_at(h, 24);
    if crc != crc32c::crc32c(&h[0..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32_at(h, 8);
    if version != SEGMENT_VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    if u32_at(h, 12) as u64 != SEGMENT_HEADER_LEN {
        return Err("unsupported segment header length".into());
    }
    Ok(u64_at(h, 16))
}

/// Outcome of looking at the bytes where a record should start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordCheck {
    /// A whole, valid record of `len` bytes (header included) and type `kind`.
    Valid { len: usize, kind: u8 },
    /// The buffer ends before the record does (a torn tail if this is the end of the file).
    Incomplete { needed: usize },
    /// The bytes are not a valid record.
    Bad(String),
}

/// Validates the record that starts at `buf[0]`: frame, checksum and, for a MESSAGE, its layout.
pub fn check_record(buf: &[u8]) -> RecordCheck {
    if buf.len() < RECORD_HEADER_LEN {
        return RecordCheck::Incomplete {
            needed: RECORD_HEADER_LEN,
        };
    }
    let len = u32_at(buf, 4) as usize;
    let kind = buf[8];
    if buf[9] != 0 || buf[10] != 0 || buf[11] != 0 {
        return RecordCheck::Bad("reserved header bytes are not zero".into());
    }
    if !matches!(
        kind,
        RECORD_MESSAGE | RECORD_JUMP | RECORD_WITHDRAW | RECORD_KEY
    ) {
        return RecordCheck::Bad(format!("unknown record type {kind}"));
    }
    if len > MAX_RECORD_PAYLOAD {
        return RecordCheck::Bad(format!("record length {len} exceeds the format maximum"));
    }
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return RecordCheck::Incomplete { needed: total };
    }
    let crc = u32_at(buf, 0);
    if crc != crc32c::crc32c(&buf[4..total]) {
        return RecordCheck::Bad("record checksum mismatch".into());
    }
    let payload = &buf[RECORD_HEADER_LEN..total];
    let layout = match kind {
        RECORD_MESSAGE => MessageView::decode(payload)
            .map(|_| ())
            .map_err(String::from),
        RECORD_JUMP => decode_jump(payload).map(|_| ()),
        RECORD_KEY => decode_key(payload).map(|_| ()),
        _ => decode_withdraw(payload).map(|_| ()),
    };
    if let Err(e) = layout {
        return RecordCheck::Bad(e);
    }
    RecordCheck::Valid { len: total, kind }
}

/// Whether `len` and `kind` of a record are consistent with its control trailer.
fn check_trailer(payload: &[u8]) -> Result<(), String> {
    if payload.len() < CONTROL_TRAILER_LEN {
        return Err("control record too short".into());
    }
    let t = payload.len() - CONTROL_TRAILER_LEN;
    if payload[t + 4..] != CONTROL_MAGIC {
        return Err("control record trailer magic mismatch".into());
    }
    if u32_at(payload, t) as usize != RECORD_HEADER_LEN + payload.len() {
        return Err("control record trailer length mismatch".into());
    }
    Ok(())
}

/// Appends the trailer and frames a control record whose payload fields are `out[start + 12..]`.
fn finish_control(out: &mut Vec<u8>, start: usize, kind: u8) {
    let total = out.len() + CONTROL_TRAILER_LEN - start;
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&CONTROL_MAGIC);
    let len = (total - RECORD_HEADER_LEN) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    out[start + 8] = kind;
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Appends a JUMP record: the log before the segment it opens ended at `from`.
pub fn encode_jump(out: &mut Vec<u8>, from: u64) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out.extend_from_slice(&from.to_le_bytes());
    finish_control(out, start, RECORD_JUMP);
}

/// Decodes a JUMP payload: the end position of the log before it.
pub fn decode_jump(payload: &[u8]) -> Result<u64, String> {
    if payload.len() != JUMP_PAYLOAD_LEN {
        return Err(format!(
            "jump record payload is {} bytes, expected {JUMP_PAYLOAD_LEN}",
            payload.len()
        ));
    }
    check_trailer(payload)?;
    Ok(u64_at(payload, 0))
}

/// If `rec` (a whole, checked record) is a JUMP, the position it jumps from.
pub fn jump_from(rec: &[u8]) -> Option<u64> {
    if rec.len() == JUMP_RECORD_LEN && rec[8] == RECORD_JUMP {
        decode_jump(&rec[RECORD_HEADER_LEN..]).ok()
    } else {
        None
    }
}

/// Where a promoted store whose log (or the old leader's, as far as it knows) ends at `end`
/// continues: the second multiple of [`JUMP_ALIGN`] above `end`, so at least 1 TiB above
/// anything the old leader could have written that this store never received.
pub fn jump_target(end: u64) -> u64 {
    ((end / JUMP_ALIGN) + 2) * JUMP_ALIGN
}

/// Appends a KEY record: the MESSAGE record at position `at` (the record just before this one)
/// was appended with `key`.
pub fn encode_key(out: &mut Vec<u8>, at: u64, key: &crate::AppendKey) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&key.0);
    finish_control(out, start, RECORD_KEY);
}

/// Decodes a KEY payload: the position of the keyed MESSAGE record and its key.
pub fn decode_key(payload: &[u8]) -> Result<(u64, crate::AppendKey), String> {
    if payload.len() != KEY_PAYLOAD_LEN {
        return Err(format!(
            "key record payload is {} bytes, expected {KEY_PAYLOAD_LEN}",
            payload.len()
        ));
    }
    check_trailer(payload)?;
    let mut k = [0u8; crate::APPEND_KEY_LEN];
    k.copy_from_slice(&payload[8..8 + crate::APPEND_KEY_LEN]);
    Ok((u64_at(payload, 0), crate::AppendKey(k)))
}

/// A decoded WITHDRAW record: every record in `from..to` is withdrawn, and each queue they
/// touched is set back to the head given here (`last_seq` 0: the queue is empty again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdraw {
    pub from: u64,
    /// The position of the WITHDRAW record itself.
    pub to: u64,
    pub heads: Vec<CheckpointQueue>,
}

/// Appends a WITHDRAW record. Queue heads use the checkpoint layout (`last_seq` 0 and no chain
/// for a queue that is empty again).
pub fn encode_withdraw(out: &mut Vec<u8>, w: &Withdraw) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out.extend_from_slice(&w.from.to_le_bytes());
    out.extend_from_slice(&w.to.to_le_bytes());
    out.extend_from_slice(&(w.heads.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for h in &w.heads {
        encode_checkpoint_queue(
            out,
            h.queue,
            h.last_seq,
            h.last_peer_key,
            h.chain_keys.iter().copied(),
        );
    }
    finish_control(out, start, RECORD_WITHDRAW);
}

/// Decodes a WITHDRAW payload.
pub fn decode_withdraw(payload: &[u8]) -> Result<Withdraw, String> {
    check_trailer(payload)?;
    let body = &payload[..payload.len() - CONTROL_TRAILER_LEN];
    if body.len() < WITHDRAW_FIXED_LEN {
        return Err("withdraw record too short".into());
    }
    let from = u64_at(body, 0);
    let to = u64_at(body, 8);
    let n = u32_at(body, 16) as usize;
    if u32_at(body, 20) != 0 {
        return Err("withdraw record reserved bytes are not zero".into());
    }
    if from >= to {
        return Err(format!("withdraw record range {from}..{to} is empty"));
    }
    if n > (body.len() - WITHDRAW_FIXED_LEN) / CHECKPOINT_QUEUE_FIXED {
        return Err("withdraw record queue count exceeds its size".into());
    }
    let mut heads = Vec::with_capacity(n);
    let mut at = WITHDRAW_FIXED_LEN;
    for _ in 0..n {
        let (h, next) = decode_queue_head(body, at, true)?;
        heads.push(h);
        at = next;
    }
    if at != body.len() {
        return Err("withdraw record has trailing bytes".into());
    }
    Ok(Withdraw { from, to, heads })
}

/// If the bytes just before some position (`before`, at least [`CONTROL_TRAILER_LEN`] of them)
/// end with a control trailer, the total length of the control record that ends there.
pub fn control_record_len_before(before: &[u8]) -> Option<usize> {
    let n = before.len();
    if n < CONTROL_TRAILER_LEN || before[n - 4..] != CONTROL_MAGIC {
        return None;
    }
    Some(u32_at(before, n - CONTROL_TRAILER_LEN) as usize)
}

/// The fixed fields of a message, decoded from the 32-byte meta block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta {
    pub device_id: i64,
    pub timestamp: i64,
    pub cmd: u8,
    pub flag: u8,
    pub body_len: usize,
    pub entry_count: usize,
    pub content_crc: u32,
}

impl MessageMeta {
    /// Decodes the meta block (`m` is at least 32 bytes: the payload's start).
    pub fn decode(m: &[u8]) -> Result<MessageMeta, &'static str> {
        if m.len() < MESSAGE_META_LEN {
            return Err("message meta truncated");
        }
        if m[18] != 0 || m[19] != 0 {
            return Err("message reserved bytes are not zero");
        }
        Ok(MessageMeta {
            device_id: i64_at(m, 0),
            timestamp: i64_at(m, 8),
            cmd: m[16],
            flag: m[17],
            body_len: u32_at(m, 20) as usize,
            entry_count: u32_at(m, 24) as usize,
            content_crc: u32_at(m, 28),
        })
    }

    /// Length of the payload this meta describes.
    pub fn payload_len(&self) -> usize {
        MESSAGE_META_LEN + self.body_len + ENTRY_LEN * self.entry_count
    }

    /// Distance from the record start to entry `i`.
    pub fn entry_back(&self, i: usize) -> usize {
        MESSAGE_FIXED_LEN + self.body_len + ENTRY_LEN * i
    }

    /// Checks the content checksum over the meta's first 28 bytes and the body.
    pub fn verify_content(&self, meta: &[u8], body: &[u8]) -> bool {
        crc32c::crc32c_append(crc32c::crc32c(&meta[0..28]), body) == self.content_crc
    }
}

/// A decoded MESSAGE payload borrowing the record bytes.
#[derive(Debug)]
pub struct MessageView<'a> {
    pub meta: MessageMeta,
    pub body: &'a [u8],
    entries: &'a [u8],
}

impl<'a> MessageView<'a> {
    /// Decodes and checks a MESSAGE payload (the bytes after the record header).
    pub fn decode(payload: &'a [u8]) -> Result<MessageView<'a>, &'static str> {
        let meta = MessageMeta::decode(payload)?;
        if meta.entry_count == 0 {
            return Err("message has no queue entries");
        }
        let body_end = MESSAGE_META_LEN
            .checked_add(meta.body_len)
            .ok_or("message body length overflows")?;
        let expected = meta
            .entry_count
            .checked_mul(ENTRY_LEN)
            .and_then(|e| e.checked_add(body_end))
            .ok_or("message length overflows")?;
        if expected != payload.len() {
            return Err("message layout does not match the record length");
        }
        let body = &payload[MESSAGE_META_LEN..body_end];
        if !meta.verify_content(payload, body) {
            return Err("message content checksum mismatch");
        }
        let entries = &payload[body_end..];
        for i in 0..meta.entry_count {
            let e = Entry::decode(&entries[i * ENTRY_LEN..(i + 1) * ENTRY_LEN]);
            if e.back as usize != meta.entry_back(i) {
                return Err("entry back-distance does not match its place in the record");
            }
            if e.queue().is_none() {
                return Err("entry has an unknown queue kind");
            }
            if e.seq == 0 {
                return Err("entry has sequence number 0");
            }
        }
        Ok(MessageView {
            meta,
            body,
            entries,
        })
    }

    /// Number of queue entries.
    pub fn entry_count(&self) -> usize {
        self.meta.entry_count
    }

    /// Queue entry `i`.
    pub fn entry(&self, i: usize) -> Entry {
        Entry::decode(&self.entries[i * ENTRY_LEN..(i + 1) * ENTRY_LEN])
    }
}

/// One queue entry: where a message sits in one queue, with that queue's back links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: u8,
    pub flags: u8,
    /// Distance from the record start to this entry (so `key - back` is the record position).
    pub back: u32,
    pub appid: i64,
    pub id: i64,
    /// 1-based position of this entry in its queue.
    pub seq: u64,
    /// Key of the previous entry of the queue (seq - 1), 0 if none.
    pub prev_key: i64,
    /// Key of the entry at seq `jump_seq(seq)`, 0 if that is 0.
    pub jump_key: i64,
    /// Key of the newest earlier entry whose content is not a group message, 0 if none.
    pub prev_peer_key: i64,
}

impl Entry {
    /// Decodes 56 bytes (the caller guarantees the length).
    pub fn decode(b: &[u8]) -> Entry {
        Entry {
            kind: b[0],
            flags: b[1],
            back: u32_at(b, 4),
            appid: i64_at(b, 8),
            id: i64_at(b, 16),
            seq: u64_at(b, 24),
            prev_key: i64_at(b, 32),
            jump_key: i64_at(b, 40),
            prev_peer_key: i64_at(b, 48),
        }
    }

    /// Appends the 56-byte encoding.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.back.to_le_bytes());
        out.extend_from_slice(&self.appid.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.prev_key.to_le_bytes());
        out.extend_from_slice(&self.jump_key.to_le_bytes());
        out.extend_from_slice(&self.prev_peer_key.to_le_bytes());
    }

    /// The queue this entry belongs to.
    pub fn queue(&self) -> Option<QueueId> {
        match self.kind {
            KIND_USER => Some(QueueId::User {
                appid: self.appid,
                uid: self.id,
            }),
            KIND_GROUP => Some(QueueId::Group {
                appid: self.appid,
                gid: self.id,
            }),
            _ => None,
        }
    }

    /// Whether the content is a group message (excluded from the peer-only chain).
    pub fn group_content(&self) -> bool {
        self.flags & ENTRY_FLAG_GROUP_CONTENT != 0
    }
}

/// Kind byte and (appid, id) of a queue.
pub fn queue_parts(q: QueueId) -> (u8, i64, i64) {
    match q {
        QueueId::User { appid, uid } => (KIND_USER, appid, uid),
        QueueId::Group { appid, gid } => (KIND_GROUP, appid, gid),
    }
}

/// Encoder for one MESSAGE record appended to a buffer.
pub struct MessageEncoder {
    start: usize,
    body_len: usize,
}

impl MessageEncoder {
    /// Writes the header placeholder, the meta block and the body. Entries follow with
    /// [`MessageEncoder::entry_back`] / [`Entry::encode_into`], then [`MessageEncoder::finish`].
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        out: &mut Vec<u8>,
        device_id: i64,
        timestamp: i64,
        cmd: u8,
        flag: u8,
        body: &[u8],
        entry_count: usize,
    ) -> MessageEncoder {
        let start = out.len();
        out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        let meta_at = out.len();
        out.extend_from_slice(&device_id.to_le_bytes());
        out.extend_from_slice(&timestamp.to_le_bytes());
        out.push(cmd);
        out.push(flag);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&(entry_count as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[meta_at..meta_at + 28]), body);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(body);
        MessageEncoder {
            start,
            body_len: body.len(),
        }
    }

    /// Distance from the record start to entry `i`.
    pub fn entry_back(&self, i: usize) -> usize {
        MESSAGE_FIXED_LEN + self.body_len + ENTRY_LEN * i
    }

    /// Fills in the length and checksum; returns the record's total length.
    pub fn finish(self, out: &mut [u8]) -> usize {
        let total = out.len() - self.start;
        let len = (total - RECORD_HEADER_LEN) as u32;
        out[self.start + 4..self.start + 8].copy_from_slice(&len.to_le_bytes());
        out[self.start + 8] = RECORD_MESSAGE;
        let crc = crc32c::crc32c(&out[self.start + 4..]);
        out[self.start..self.start + 4].copy_from_slice(&crc.to_le_bytes());
        total
    }
}

/// Total record length of a message with `body_len` body bytes and `entries` queue entries.
pub fn message_record_len(body_len: usize, entries: usize) -> usize {
    MESSAGE_FIXED_LEN + body_len + ENTRY_LEN * entries
}

/// Skew-binary jump target of sequence number `s` (s ≥ 1): `s` minus the smallest term of the
/// greedy decomposition of `s` into numbers of the form 2^k − 1. Following `jump` when it does
/// not overshoot and `prev` otherwise reaches any earlier sequence number in O(log s) steps.
pub fn jump_seq(s: u64) -> u64 {
    if s == 0 {
        return 0;
    }
    let mut rem = s;
    let mut last = 0;
    while rem > 0 {
        // largest k with 2^k - 1 <= rem
        let k = 63 - (rem.saturating_add(1)).leading_zeros();
        let w = (1u64 << k) - 1;
        rem -= w;
        last = w;
    }
    s - last
}

/// The sequence numbers of the jump chain ending at `s`, oldest first, without 0.
pub fn jump_chain_seqs(s: u64) -> Vec<u64> {
    let mut v = Vec::new();
    let mut cur = s;
    while cur > 0 {
        v.push(cur);
        cur = jump_seq(cur);
    }
    v.reverse();
    v
}

/// A queue head as stored in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointQueue {
    pub queue: QueueId,
    pub last_seq: u64,
    pub last_peer_key: i64,
    /// Keys of the jump chain, oldest first; the last one is the queue's newest key.
    pub chain_keys: Vec<i64>,
}

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub generation: u64,
    /// Every record before this position is reflected in the queue heads.
    pub position: u64,
    pub queues: Vec<CheckpointQueue>,
}

/// Serialises a checkpoint header; queues follow via [`encode_checkpoint_queue`], then
/// [`finish_checkpoint`].
pub fn begin_checkpoint(out: &mut Vec<u8>, generation: u64, position: u64, queues: u64) {
    out.extend_from_slice(&CHECKPOINT_MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&queues.to_le_bytes());
}

/// Serialises one queue head into a checkpoint.
pub fn encode_checkpoint_queue(
    out: &mut Vec<u8>,
    queue: QueueId,
    last_seq: u64,
    last_peer_key: i64,
    chain_keys: impl ExactSizeIterator<Item = i64>,
) {
    let (kind, appid, id) = queue_parts(queue);
    out.push(kind);
    out.push(chain_keys.len() as u8);
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&appid.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&last_seq.to_le_bytes());
    out.extend_from_slice(&last_peer_key.to_le_bytes());
    for k in chain_keys {
        out.extend_from_slice(&k.to_le_bytes());
    }
}

/// Appends the trailing checksum.
pub fn finish_checkpoint(out: &mut Vec<u8>) {
    let crc = crc32c::crc32c(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes the queue head at `body[at..]` (checkpoint layout); returns it and the offset after it.
/// `allow_empty`: a head with `last_seq` 0 and no chain (a queue emptied by a withdrawal).
fn decode_queue_head(
    body: &[u8],
    at: usize,
    allow_empty: bool,
) -> Result<(CheckpointQueue, usize), String> {
    if body.len() < at + CHECKPOINT_QUEUE_FIXED {
        return Err("queue head truncated".into());
    }
    let kind = body[at];
    let chain_len = body[at + 1] as usize;
    let appid = i64_at(body, at + 8);
    let id = i64_at(body, at + 16);
    let last_seq = u64_at(body, at + 24);
    let last_peer_key = i64_at(body, at + 32);
    let mut at = at + CHECKPOINT_QUEUE_FIXED;
    if body.len() < at + 8 * chain_len {
        return Err("queue head truncated".into());
    }
    let chain_keys: Vec<i64> = (0..chain_len).map(|i| i64_at(body, at + 8 * i)).collect();
    at += 8 * chain_len;
    let queue = match kind {
        KIND_USER => QueueId::User { appid, uid: id },
        KIND_GROUP => QueueId::Group { appid, gid: id },
        _ => return Err(format!("unknown queue kind {kind} in a queue head")),
    };
    let empty_ok = allow_empty && last_seq == 0 && chain_len == 0;
    if !empty_ok && (last_seq == 0 || jump_chain_seqs(last_seq).len() != chain_len) {
        return Err("queue head chain does not match its sequence number".into());
    }
    Ok((
        CheckpointQueue {
            queue,
            last_seq,
            last_peer_key,
            chain_keys,
        },
        at,
    ))
}

/// Decodes and validates a checkpoint file.
pub fn decode_checkpoint(b: &[u8]) -> Result<Checkpoint, String> {
    if b.len() < CHECKPOINT_HEADER_LEN + 4 {
        return Err("checkpoint file is too short".into());
    }
    let body = &b[..b.len() - 4];
    if u32_at(b, b.len() - 4) != crc32c::crc32c(body) {
        return Err("checkpoint checksum mismatch".into());
    }
    if body[0..8] != CHECKPOINT_MAGIC {
        return Err("bad checkpoint magic".into());
    }
    if u32_at(body, 8) != CHECKPOINT_VERSION {
        return Err("unsupported checkpoint version".into());
    }
    let generation = u64_at(body, 16);
    let position = u64_at(body, 24);
    let count = u64_at(body, 32);
    if count > (body.len() / CHECKPOINT_QUEUE_FIXED) as u64 {
        return Err("checkpoint queue count exceeds its size".into());
    }
    let mut queues = Vec::with_capacity(count as usize);
    let mut at = CHECKPOINT_HEADER_LEN;
    for _ in 0..count {
        let (q, next) = decode_queue_head(body, at, false)?;
        queues.push(q);
        at = next;
    }
    if at != body.len() {
        return Err("checkpoint has trailing bytes".into());
    }
    Ok(Checkpoint {
        generation,
        position,
        queues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recursive definition of skew-binary jump pointers (Myers 1983).
    fn reference_jumps(n: usize) -> Vec<u64> {
        let mut jump = vec![0u64; n + 1];
        for d in 1..=n {
            let p = d - 1;
            let jp = jump[p] as usize;
            let jjp = jump[jp] as usize;
            jump[d] = if p - jp == jp - jjp {
                jjp as u64
            } else {
                p as u64
            };
        }
        jump
    }

    #[test]
    fn jump_seq_matches_recursive_definition() {
        let r = reference_jumps(20_000);
        for (d, &expected) in r.iter().enumerate().skip(1) {
            assert_eq!(jump_seq(d as u64), expected, "d = {d}");
        }
    }

    #[test]
    fn jump_chain_is_short() {
        for s in [1u64, 2, 3, 1000, 1 << 20, u32::MAX as u64, u64::MAX / 3] {
            assert!(jump_chain_seqs(s).len() <= 2 * 64);
        }
    }

    #[test]
    fn record_roundtrip_and_corruption() {
        let mut out = Vec::new();
        let enc = MessageEncoder::begin(&mut out, 7, 1_700_000_000, 4, 1, b"hello", 2);
        for i in 0..2 {
            Entry {
                kind: KIND_USER,
                flags: 0,
                back: enc.entry_back(i) as u32,
                appid: 1,
                id: 10 + i as i64,
                seq: 1,
                prev_key: 0,
                jump_key: 0,
                prev_peer_key: 0,
            }
            .encode_into(&mut out);
        }
        let len = enc.finish(&mut out);
        assert_eq!(len, message_record_len(5, 2));
        assert_eq!(
            check_record(&out),
            RecordCheck::Valid {
                len,
                kind: RECORD_MESSAGE
            }
        );
        for cut in 0..len {
            assert!(matches!(
                check_record(&out[..cut]),
                RecordCheck::Incomplete { .. }
            ));
        }
        for i in 0..len {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(
                !matches!(check_record(&bad), RecordCheck::Valid { .. }),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn control_records_roundtrip_and_corruption() {
        let mut jump = Vec::new();
        encode_jump(&mut jump, 12_345);
        assert_eq!(jump.len(), JUMP_RECORD_LEN);
        assert_eq!(
            check_record(&jump),
            RecordCheck::Valid {
                len: JUMP_RECORD_LEN,
                kind: RECORD_JUMP
            }
        );
        assert_eq!(jump_from(&jump), Some(12_345));
        assert_eq!(control_record_len_before(&jump), Some(JUMP_RECORD_LEN));
        let w = Withdraw {
            from: 100,
            to: 900,
            heads: vec![
                CheckpointQueue {
                    queue: QueueId::user(1, 2),
                    last_seq: 2,
                    last_peer_key: 77,
                    chain_keys: vec![50, 77],
                },
                CheckpointQueue {
                    queue: QueueId::group(1, 9),
                    last_seq: 0,
                    last_peer_key: 0,
                    chain_keys: Vec::new(),
                },
            ],
        };
        let mut rec = Vec::new();
        encode_withdraw(&mut rec, &w);
        assert!(matches!(
            check_record(&rec),
            RecordCheck::Valid {
                kind: RECORD_WITHDRAW,
                ..
            }
        ));
        assert_eq!(decode_withdraw(&rec[RECORD_HEADER_LEN..]), Ok(w));
        assert_eq!(control_record_len_before(&rec), Some(rec.len()));
        for r in [&jump, &rec] {
            for i in 0..r.len() {
                let mut bad = r.to_vec();
                bad[i] ^= 0x10;
                assert!(
                    !matches!(check_record(&bad), RecordCheck::Valid { .. }),
                    "flip at {i}"
                );
            }
        }
        assert_eq!(jump_target(0), 2 * JUMP_ALIGN);
        assert_eq!(jump_target(JUMP_ALIGN - 1), 2 * JUMP_ALIGN);
        assert_eq!(jump_target(JUMP_ALIGN), 3 * JUMP_ALIGN);
    }

    #[test]
    fn segment_header_roundtrip() {
        let h = encode_segment_header(123_456);
        assert_eq!(decode_segment_header(&h), Ok(123_456));
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
    }
}
