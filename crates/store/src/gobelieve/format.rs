//! GoBelieve's `ims` block-file format (`docs/migration.md` §"The GoBelieve format"): block file
//! names, the 32-byte block header, the record frame, message ids and the 64-byte index
//! records. Pure encoding and decoding, no I/O. All integers are big-endian.

/// Magic at the start of a block file and around every record.
pub const MAGIC: u32 = 0x494D_494D;
/// Format version in the block header.
pub const BLOCK_VERSION: u32 = 0x0001_0000;
/// Block header length; the first record of a block sits here.
pub const BLOCK_HEADER_LEN: u64 = 32;
/// A message id is `block × BLOCK_SPAN + offset`.
pub const BLOCK_SPAN: i64 = 134_217_728;
/// Record framing around the body: magic, length, 12-byte header tail … magic.
pub const RECORD_OVERHEAD: usize = 20;
/// Body length of the index records (OFFLINE_V4, GROUP_OFFLINE).
pub const INDEX_BODY_LEN: usize = 64;

/// Per-user index record.
pub const CMD_OFFLINE_V4: u8 = 248;
/// Per-super-group index record.
pub const CMD_GROUP_OFFLINE: u8 = 247;
/// Index records of older versions: GoBelieve itself never reads them back.
pub const OLD_INDEX_CMDS: [u8; 6] = [249, 250, 252, 253, 254, 255];
/// Deprecated customer-service content, ignored by GoBelieve.
pub const DEPRECATED_CONTENT_CMDS: [u8; 3] = [23, 24, 25];
/// Content commands GoBelieve returns from a sync.
pub const CONTENT_CMDS: [u8; 5] = [4, 7, 8, 21, 64];
/// Index-record flag: the content is a group message.
pub const INDEX_FLAG_GROUP: u8 = 0x04;

/// The name of block file `n`.
pub fn block_file_name(n: u32) -> String {
    format!("message_{n}")
}

/// The block number of a block file name (`message_<n>`, decimal, no sign or padding).
pub fn parse_block_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("message_")?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// The message id of the record at `offset` of block `block`.
pub fn msgid(block: u32, offset: u64) -> i64 {
    block as i64 * BLOCK_SPAN + offset as i64
}

/// The block and offset a message id points at.
pub fn split_msgid(id: i64) -> Option<(u32, u64)> {
    if id <= 0 {
        return None;
    }
    let block = u32::try_from(id / BLOCK_SPAN).ok()?;
    Some((block, (id % BLOCK_SPAN) as u64))
}

/// The 32-byte block header.
pub fn encode_block_header() -> [u8; BLOCK_HEADER_LEN as usize] {
    let mut h = [0u8; BLOCK_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&BLOCK_VERSION.to_be_bytes());
    h
}

/// Checks a block header; the reason when it is not one.
pub fn check_block_header(h: &[u8]) -> Result<(), String> {
    if h.len() < BLOCK_HEADER_LEN as usize {
        return Err(format!("block header is {} bytes, expected 32", h.len()));
    }
    let magic = u32::from_be_bytes(h[0..4].try_into().expect("a slice of the exact length"));
    let version = u32::from_be_bytes(h[4..8].try_into().expect("a slice of the exact length"));
    if magic != MAGIC {
        return Err(format!("bad block magic {magic:#010x}"));
    }
    if version != BLOCK_VERSION {
        return Err(format!("unknown block version {version:#010x}"));
    }
    Ok(())
}

/// One record's header fields (what precedes the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHead {
    pub body_len: usize,
    pub cmd: u8,
    pub version: u8,
    pub flag: u8,
}

/// Decodes the 16 bytes before a record's body; the reason when they are not a record start.
/// `max_body` bounds the length a reader is willing to believe.
pub fn decode_record_head(b: &[u8; 16], max_body: usize) -> Result<RecordHead, String> {
    let magic = u32::from_be_bytes(b[0..4].try_into().expect("a slice of the exact length"));
    if magic != MAGIC {
        return Err(format!("bad record magic {magic:#010x}"));
    }
    let len = i32::from_be_bytes(b[4..8].try_into().expect("a slice of the exact length"));
    if len < 0 || len as usize > max_body {
        return Err(format!("implausible body length {len}"));
    }
    Ok(RecordHead {
        body_len: len as usize,
        cmd: b[12],
        version: b[13],
        flag: b[14],
    })
}

/// Encodes a whole record (framing, header, body, trailing magic).
pub fn encode_record(out: &mut Vec<u8>, cmd: u8, version: u8, flag: u8, body: &[u8]) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&[cmd, version, flag, 0]);
    out.extend_from_slice(body);
    out.extend_from_slice(&MAGIC.to_be_bytes());
}

/// An OFFLINE_V4 or GROUP_OFFLINE record body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexRecord {
    pub appid: i64,
    /// uid (OFFLINE_V4) or group id (GROUP_OFFLINE).
    pub receiver: i64,
    /// Id of the content record.
    pub msgid: i64,
    pub device_id: i64,
    /// 1-based position in the queue.
    pub seq_id: i64,
    /// Id of the previous index record of the queue.
    pub prev_msgid: i64,
    pub prev_peer_msgid: i64,
    pub prev_batch_msgid: i64,
}

impl IndexRecord {
    pub fn encode(&self) -> [u8; INDEX_BODY_LEN] {
        let mut b = [0u8; INDEX_BODY_LEN];
        for (i, v) in [
            self.appid,
            self.receiver,
            self.msgid,
            self.device_id,
            self.seq_id,
            self.prev_msgid,
            self.prev_peer_msgid,
            self.prev_batch_msgid,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<IndexRecord, String> {
        if b.len() != INDEX_BODY_LEN {
            return Err(format!(
                "index record body is {} bytes, expected 64",
                b.len()
            ));
        }
        let f = |i: usize| {
            i64::from_be_bytes(
                b[i * 8..i * 8 + 8]
                    .try_into()
                    .expect("a slice of the exact length"),
            )
        };
        Ok(IndexRecord {
            appid: f(0),
            receiver: f(1),
            msgid: f(2),
            device_id: f(3),
            seq_id: f(4),
            prev_msgid: f(5),
            prev_peer_msgid: f(6),
            prev_batch_msgid: f(7),
        })
    }
}

/// The timestamp a content body carries (v2 layouts): IM and GROUP_IM at offset 16, CUSTOMER_V2
/// at offset 32; `None` for commands without one (GROUP_NOTIFICATION, SYSTEM).
pub fn content_timestamp(cmd: u8, body: &[u8]) -> Option<i64> {
    let at = match cmd {
        4 | 8 => 16,
        64 => 32,
        _ => return None,
    };
    let b: [u8; 4] = body.get(at..at + 4)?.try_into().ok()?;
    Some(i32::from_be_bytes(b) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(parse_block_file_name("message_0"), Some(0));
        assert_eq!(parse_block_file_name("message_12"), Some(12));
        assert_eq!(parse_block_file_name("message_012"), None);
        assert_eq!(parse_block_file_name("message_"), None);
        assert_eq!(parse_block_file_name("peer_index.v3"), None);
        assert_eq!(msgid(0, 32), 32);
        assert_eq!(msgid(2, 32), 2 * 134_217_728 + 32);
        assert_eq!(split_msgid(2 * 134_217_728 + 32), Some((2, 32)));
        assert_eq!(split_msgid(0), None);
    }

    #[test]
    fn record_and_index_round_trip() {
        let idx = IndexRecord {
            appid: 7,
            receiver: -3,
            msgid: 32,
            device_id: 9,
            seq_id: 1000,
            prev_msgid: 1,
            prev_peer_msgid: 2,
            prev_batch_msgid: 3,
        };
        let mut out = Vec::new();
        encode_record(&mut out, CMD_OFFLINE_V4, 0, INDEX_FLAG_GROUP, &idx.encode());
        assert_eq!(out.len(), RECORD_OVERHEAD + INDEX_BODY_LEN);
        let head = decode_record_head(
            out[..16].try_into().expect("a slice of the exact length"),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            head,
            RecordHead {
                body_len: 64,
                cmd: CMD_OFFLINE_V4,
                version: 0,
                flag: INDEX_FLAG_GROUP
            }
        );
        assert_eq!(IndexRecord::decode(&out[16..80]).unwrap(), idx);
        assert_eq!(&out[80..84], &MAGIC.to_be_bytes());
        assert!(check_block_header(&encode_block_header()).is_ok());
    }
}
