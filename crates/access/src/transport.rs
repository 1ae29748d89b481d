//! Transports: every client connection — TCP, TLS, WebSocket, WSS — is adapted into the same stream of
//! [`Frame`]s in and coalesced frame bytes out, so one session implementation serves them all.
//!
//! Stream transports (TCP, TLS) decode frames incrementally from a read buffer that is allocated only
//! while bytes are pending: an idle TCP connection holds no read buffer at all. A command outside the
//! client whitelist is refused from its header, before its body is read (docs/protocol.md §3.3).
//! WebSocket carries exactly one frame per binary message (docs/protocol.md §2.3).
//!
//! A connection is closed with a [`CloseReason`]; WebSocket transports send it as the close frame's
//! status code (1002 for a WebSocket protocol violation, 1003 for a text message, 1009 for a message
//! or frame over the size limits, 1008 for a violation of the IM protocol inside a well-formed
//! message, 1001 on shutdown, 1000 otherwise), so a client learns why it was disconnected.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use proto::{cmd, DecodeError, Frame, Header, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};

/// How long closing a connection (TLS close_notify, WebSocket close frame) may take: a client that
/// does not read must not hold the session's task.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// A violation of the WebSocket protocol itself (bad opcode, unmasked frame, …).
    #[error("websocket: {0}")]
    WebSocket(String),
    /// A WebSocket message or frame larger than the limit (docs/protocol.md §2.3).
    #[error("websocket message too big: {0}")]
    WebSocketTooBig(String),
    /// A text message (only binary messages carry frames, docs/protocol.md §2.3).
    #[error("websocket text messages are not accepted")]
    WebSocketText,
}

impl RecvError {
    /// The close reason this error calls for.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            RecvError::Io(_) => CloseReason::Normal,
            RecvError::Decode(DecodeError::TooLong { .. }) | RecvError::WebSocketTooBig(_) => {
                CloseReason::TooBig
            }
            RecvError::Decode(_) | RecvError::NotAllowed(_) | RecvError::Truncated => {
                CloseReason::Policy
            }
            RecvError::WebSocket(_) => CloseReason::Protocol,
            RecvError::WebSocketText => CloseReason::Unsupported,
        }
    }

    /// Classifies an error of the WebSocket library.
    fn from_ws(e: axum::Error) -> RecvError {
        match e.into_inner().downcast::<WsError>() {
            Ok(e) => match *e {
                WsError::Io(e) => RecvError::Io(e),
                WsError::Capacity(e @ CapacityError::MessageTooLong { .. }) => {
                    RecvError::WebSocketTooBig(e.to_string())
                }
                WsError::Utf8(_) => RecvError::WebSocketText,
                // The client went away without a close handshake: a disconnect, not a violation.
                WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Protocol(
                    tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ) => RecvError::Io(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "client closed the connection without a close handshake",
                )),
                e => RecvError::WebSocket(e.to_string()),
            },
            Err(e) => RecvError::WebSocket(e.to_string()),
        }
    }
}

/// Why the server closes a connection; WebSocket transports send the matching close status code
/// (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: the session ended (client closed, timeout, write failure).
    Normal,
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1002: the WebSocket protocol was violated.
    Protocol,
    /// 1003: a data type the server does not accept (a text message).
    Unsupported,
    /// 1008: the IM protocol was violated (a bad frame, a command clients may not send), or the
    /// server disconnected the session (e.g. it could not keep up).
    Policy,
    /// 1009: a message or frame over the size limit.
    TooBig,
}

impl CloseReason {
    /// The WebSocket close status code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::GoingAway => 1001,
            CloseReason::Protocol => 1002,
            CloseReason::Unsupported => 1003,
            CloseReason::Policy => 1008,
            CloseReason::TooBig => 1009,
        }
    }

    /// The close frame's reason text.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "",
            CloseReason::GoingAway => "server shutting down",
            CloseReason::Protocol => "websocket protocol error",
            CloseReason::Unsupported => "only binary messages are accepted",
            CloseReason::Policy => "IM protocol violation or disconnected by the server",
            CloseReason::TooBig => "message too big",
        }
    }
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

    /// Best-effort clean close, telling the client `why` where the transport can (WebSocket). Bounded
    /// in time.
    fn close(&mut self, why: CloseReason) -> impl Future<Output = ()> + Send;
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

/// What a read after a pause reserves: enough for a few client frames, and small enough for glibc
/// to serve from its per-thread cache (at most 1,032 bytes) instead of its arena, whose large-chunk
/// path (`malloc_consolidate`) showed in profiles of one message per read.
const FIRST_READ: usize = 1024;
/// What a read reserves when the buffer has less than half a kilobyte left.
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
            if self.buf.capacity() == 0 {
                self.buf.reserve(FIRST_READ);
            } else if self.buf.capacity() - self.buf.len() < 512 {
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

    async fn close(&mut self, _why: CloseReason) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.io.shutdown()).await;
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
                Some(Err(e)) => return Err(RecvError::from_ws(e)),
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
                    // Bytes after the first frame are ignored (docs/protocol.md §2.3).
                    let body: Bytes = b.slice(HEADER_LEN..HEADER_LEN + h.len);
                    return Ok(Some(Frame {
                        seq: h.seq,
                        cmd: h.cmd,
                        version: h.version,
                        flag: h.flag,
                        body,
                    }));
                }
                Message::Text(_) => return Err(RecvError::WebSocketText),
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

    async fn close(&mut self, why: CloseReason) {
        let frame = CloseFrame {
            code: why.code(),
            reason: why.text().into(),
        };
        // Sends the close frame (ignored when the connection is already closed) and flushes.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.ws.send(Message::Close(Some(frame))).await.is_ok() {
                let _ = self.ws.close().await;
            }
        })
        .await;
    }
}
