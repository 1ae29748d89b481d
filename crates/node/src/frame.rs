//! Framed I/O of the node links (store link, replication, route link): a `tokio_util::codec`
//! decoder for the 12-byte-header frames with a body-size limit that is checked before anything is
//! reserved, a one-buffer frame encoder, and a writer task that coalesces everything queued into
//! as few `write` calls as possible.

use std::io;

use bytes::{Bytes, BytesMut};
use proto::{DecodeError, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, FramedRead};

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

/// Decodes whole frames; a declared body longer than `max_body` is an error before any memory is
/// reserved for it. At the end of the stream, leftover bytes are [`FrameError::Truncated`].
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_body: usize,
}

impl FrameCodec {
    pub fn new(max_body: usize) -> FrameCodec {
        FrameCodec { max_body }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        Ok(Frame::decode(src, self.max_body)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

/// A stream of frames read from `r` (`StreamExt::next` is cancel-safe: partial input stays in the
/// reader's buffer). It ends (`None`) on a clean end of stream at a frame boundary.
pub fn frame_reader<R: AsyncRead>(r: R, max_body: usize) -> FramedRead<R, FrameCodec> {
    FramedRead::with_capacity(r, FrameCodec::new(max_body), 8192)
}

/// Encodes a frame header plus `body` into one buffer.
pub fn encode_frame(seq: i32, cmd: u8, version: u8, flag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(proto::HEADER_LEN + body.len());
    proto::Header {
        len: body.len(),
        seq,
        cmd,
        version,
        flag,
    }
    .write(&mut b);
    b.extend_from_slice(body);
    b.freeze()
}

/// Something the writer task can write: encoded frame bytes plus whatever must stay alive until
/// they are written (e.g. an in-flight permit).
pub trait Outgoing: Send + 'static {
    fn bytes(&self) -> &[u8];
}

impl Outgoing for Bytes {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Items at least this large are written directly instead of being copied into the batch buffer.
const DIRECT_WRITE: usize = 64 * 1024;
/// Most bytes gathered into one write.
pub const MAX_COALESCE: usize = 256 * 1024;

/// Writes everything received on `rx` to `w`, draining all queued items into one buffer per
/// `write` call. Returns when every sender is gone (after shutting down the write side) or on the
/// first write error.
pub async fn write_loop<W, T>(mut w: W, mut rx: mpsc::UnboundedReceiver<T>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Outgoing,
{
    let mut buf = BytesMut::new();
    let mut written: Vec<T> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            if item.bytes().len() >= DIRECT_WRITE {
                if !buf.is_empty() {
                    w.write_all(&buf).await?;
                    buf.clear();
                    written.clear();
                }
                w.write_all(item.bytes()).await?;
            } else {
                buf.extend_from_slice(item.bytes());
                written.push(item);
            }
            if buf.len() < MAX_COALESCE {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            buf.clear();
        }
        written.clear();
        if buf.capacity() > 4 * MAX_COALESCE {
            buf = BytesMut::new();
        }
    }
    w.shutdown().await
}
