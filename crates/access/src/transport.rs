//! Transports: every client connection — TCP, TLS, WebSocket, WSS — is adapted into the same stream of
//! [`Frame`]s in and coalesced frame bytes out, so one session implementation serves them all.
//!
//! Stream transports (TCP, TLS) decode frames incrementally from a read buffer that is allocated only
//! while bytes are pending: an idle TCP connection holds no read buffer at all. A command outside the
//! client whitelist is refused from its header, before its body is read (spec §2.3). WebSocket carries
//! exactly one frame per binary message (spec §2.5).

use std::future::Future;
use std::io;

use axum::extract::ws::{Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use proto::{cmd, DecodeError, Frame, Header, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why reading from a client stopped. Only `Io` may be the server's problem; the rest is the client's.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("command {0} is not allowed from clients")]
    NotAllowed(u8),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("websocket: {0}")]
    WebSocket(String),
}

/// A client connection as the session sees it.
pub trait Transport: Send + 'static {
    /// The next frame; `Ok(None)` when the client closed the connection cleanly. Cancel-safe: a frame
    /// partly read when the future is dropped is kept for the next call.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Frame>, RecvError>> + Send;

    /// Writes the frames laid back to back in `buf`; `ends[i]` is the end offset of frame `i`. `buf` is
    /// emptied.
    fn send(
        &mut self,
        buf: &mut BytesMut,
        ends: &[usize],
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Best-effort clean close.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Streams that can wait for readability without a buffer (so idle connections hold none).
pub trait WaitReadable {
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }
}

impl WaitReadable for TcpStream {
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        // `poll_read_ready` rather than `readable()`: the session task is this socket's only reader,
        // and the future is one reference instead of a waiter node that every idle session would
        // carry in its task.
        std::future::poll_fn(|cx| self.poll_read_ready(cx))
    }
}

impl<S: Send + Sync> WaitReadable for tokio_rustls::server::TlsStream<S> {}

const READ_CHUNK: usize = 4096;

/// TCP or TLS: length-prefixed frames on a byte stream.
pub struct StreamTransport<S> {
    io: S,
    buf: BytesMut,
    max_body: usize,
}

impl<S> StreamTransport<S> {
    pub fn new(io: S, max_body: usize) -> Self {
        StreamTransport {
            io,
            buf: BytesMut::new(),
            max_body,
        }
    }
}

fn check_header(buf: &[u8], max_body: usize) -> Result<(), RecvError> {
    if let Some(h) = Header::parse(buf, max_body)? {
        if !cmd::client_allowed(h.cmd) {
            return Err(RecvError::NotAllowed(h.cmd));
        }
    }
    Ok(())
}

impl<S> Transport for StreamTransport<S>
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send + Sync + 'static,
{
    async fn recv(&mut self) -> Result<Option<Frame>, RecvError> {
        loop {
            check_header(&self.buf, self.max_body)?;
            if let Some(frame) = Frame::decode(&mut self.buf, self.max_body)? {
                return Ok(Some(frame));
            }
            if self.buf.is_empty() {
                // Nothing pending: give the buffer back while we wait.
                self.buf = BytesMut::new();
                self.io.wait_readable().await?;
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RecvError::Truncated)
                };
            }
        }
    }

    async fn send(&mut self, buf: &mut BytesMut, _ends: &[usize]) -> io::Result<()> {
        self.io.write_all(buf).await?;
        buf.clear();
        self.io.flush().await
    }

    async fn close(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

/// WebSocket or WSS: one frame per binary message.
pub struct WsTransport {
    ws: WebSocket,
    max_body: usize,
}

impl WsTransport {
    pub fn new(ws: WebSocket, max_body: usize) -> Self {
        WsTransport { ws, max_body }
    }
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Result<Option<Frame>, RecvError> {
        loop {
            let msg = match self.ws.recv().await {
                None => return Ok(None),
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(RecvError::WebSocket(e.to_string())),
            };
            match msg {
                Message::Binary(b) => {
                    let Some(h) = Header::parse(&b, self.max_body)? else {
                        return Err(RecvError::Truncated);
                    };
                    if !cmd::client_allowed(h.cmd) {
                        return Err(RecvError::NotAllowed(h.cmd));
                    }
                    if b.len() < HEADER_LEN + h.len {
                        return Err(RecvError::Truncated);
                    }
                    // Bytes after the first frame are ignored (spec §2.5).
                    let body: Bytes = b.slice(HEADER_LEN..HEADER_LEN + h.len);
                    return Ok(Some(Frame {
                        seq: h.seq,
                        cmd: h.cmd,
                        version: h.version,
                        flag: h.flag,
                        body,
                    }));
                }
                Message::Text(_) => {
                    return Err(RecvError::WebSocket(
                        "text messages are not accepted".into(),
                    ))
                }
                Message::Close(_) => return Ok(None),
                Message::Ping(_) | Message::Pong(_) => continue,
            }
        }
    }

    async fn send(&mut self, buf: &mut BytesMut, ends: &[usize]) -> io::Result<()> {
        let mut start = 0;
        for &end in ends {
            let frame = buf.split_to(end - start).freeze();
            start = end;
            self.ws
                .feed(Message::Binary(frame))
                .await
                .map_err(io::Error::other)?;
        }
        buf.clear();
        self.ws.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.ws.close().await;
    }
}
