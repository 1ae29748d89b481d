//! The 12-byte frame header and incremental frame decoding (docs/protocol.md §3).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::body::{relayout, Body, METADATA_LEN};

/// Size of the frame header.
pub const HEADER_LEN: usize = 12;
/// Largest body a client may send (docs/protocol.md §3.2: `length >= 32768` closes the connection).
pub const MAX_BODY_LEN: usize = 32767;

/// Why a byte stream is not a valid sequence of frames. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("negative body length {0}")]
    NegativeLength(i32),
    #[error("body length {len} exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub seq: i32,
    pub cmd: u8,
    pub version: u8,
    pub flag: u8,
}

impl Header {
    /// Parses and validates a header from the first 12 bytes of `buf`. `Ok(None)` if fewer are there.
    pub fn parse(buf: &[u8], max_body: usize) -> Result<Option<Header>, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 0 {
            return Err(DecodeError::NegativeLength(len));
        }
        let len = len as usize;
        if len > max_body {
            return Err(DecodeError::TooLong { len, max: max_body });
        }
        Ok(Some(Header {
            len,
            seq: i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            cmd: buf[8],
            version: buf[9],
            flag: buf[10],
        }))
    }

    /// Writes this header; `len` is taken as is.
    pub fn write(&self, dst: &mut BytesMut) {
        dst.put_i32(self.len as i32);
        dst.put_i32(self.seq);
        dst.put_u8(self.cmd);
        dst.put_u8(self.version);
        dst.put_u8(self.flag);
        dst.put_u8(0);
    }
}

/// The bytes a pushed message takes on the wire: its frame and, when it carries sync keys, the
/// METADATA frame before it. Used to bound outboxes and to size write buffers.
pub const fn pushed_len(body_len: usize, with_metadata: bool) -> usize {
    let meta = if with_metadata {
        HEADER_LEN + METADATA_LEN
    } else {
        0
    };
    meta + HEADER_LEN + body_len
}

/// Writes a frame for a session of `version` whose body is stored (in [`crate::STORAGE_VERSION`]
/// layout): IM and GROUP_IM bodies are re-laid for version 0, which has no timestamp
/// ([`crate::body::relayout`]); every other body is written as is. The one frame writer of the
/// client path, the route link's inner frames (version 2) and pushes.
pub fn write_stored(dst: &mut BytesMut, seq: i32, version: u8, cmd: u8, flag: u8, body: &[u8]) {
    let (head, tail) = relayout(cmd, version, body);
    let len = head.len() + tail.len();
    dst.reserve(HEADER_LEN + len);
    Header {
        len,
        seq,
        cmd,
        version,
        flag,
    }
    .write(dst);
    dst.put_slice(head);
    dst.put_slice(tail);
}

/// A whole frame with seq 0 in the storage version: what routers carry inside a publish.
pub fn stored_frame(cmd: u8, flag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN + body.len());
    write_stored(&mut b, 0, crate::STORAGE_VERSION, cmd, flag, body);
    b.freeze()
}

/// One protocol message: header fields plus the raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: i32,
    pub cmd: u8,
    pub version: u8,
    pub flag: u8,
    pub body: Bytes,
}

impl Frame {
    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` (reserving room for the rest of
    /// the frame) when more bytes are needed. The length is checked against `max_body` before any
    /// reservation, so a hostile length never allocates.
    pub fn decode(buf: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, DecodeError> {
        let Some(header) = Header::parse(buf, max_body)? else {
            return Ok(None);
        };
        let total = HEADER_LEN + header.len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let body = buf.split_to(header.len).freeze();
        Ok(Some(Frame {
            seq: header.seq,
            cmd: header.cmd,
            version: header.version,
            flag: header.flag,
            body,
        }))
    }

    /// Appends header and body to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(HEADER_LEN + self.body.len());
        Header {
            len: self.body.len(),
            seq: self.seq,
            cmd: self.cmd,
            version: self.version,
            flag: self.flag,
        }
        .write(dst);
        dst.put_slice(&self.body);
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        self.encode(&mut b);
        b.freeze()
    }
}

impl Body {
    /// Appends a whole frame (header with `seq`, `version`, `flag`, then this body) to `dst`.
    pub fn encode_frame(&self, seq: i32, version: u8, flag: u8, dst: &mut BytesMut) {
        let len = self.encoded_len(version);
        dst.reserve(HEADER_LEN + len);
        Header {
            len,
            seq,
            cmd: self.cmd(),
            version,
            flag,
        }
        .write(dst);
        self.encode(version, dst);
    }
}
