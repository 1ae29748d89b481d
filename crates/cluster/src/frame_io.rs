//! Framed I/O shared by the internal links: reading whole frames with a body-size limit that is
//! checked before anything is reserved, and a writer task that coalesces everything queued into
//! as few `write` calls as possible.

use std::io;

use bytes::{Bytes, BytesMut};
use proto::{DecodeError, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

/// Reads the next whole frame from `r`, keeping partial input in `buf` (so it is cancel-safe when
/// `buf` outlives the call). `Ok(None)` on a clean end of stream at a frame boundary. A declared
/// body length above `max_body` fails before any memory is reserved.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<Frame>, FrameIoError> {
    loop {
        if let Some(f) = Frame::decode(buf, max_body)? {
            return Ok(Some(f));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        if r.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(FrameIoError::Truncated)
            };
        }
    }
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
pub(crate) const MAX_COALESCE: usize = 256 * 1024;

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
