//! A client connection that behaves like a GoBelieve SDK (Android by default), over TCP or WebSocket.
//!
//! [`Client::connect`] dials (optionally from a given source address), authenticates with AUTH_TOKEN and
//! waits for AUTH_STATUS, then starts the initial SYNC (and SYNC_GROUP for the super groups it knows), as the
//! SDKs do on every connect. From then on the client keeps the SDKs' sync-key state machine
//! (docs/protocol.md §10.7):
//!
//! * **SYNC_NOTIFY(k)** with `k` above the current key sends `SYNC(current)`; at most one sync is in flight
//!   (the SDKs allow it 4 s), and the highest key announced meanwhile is remembered and synced after
//!   SYNC_END. The group variants work the same way, per group.
//! * **SYNC_END(k)** adopts `k` when it is higher and reports it with SYNC_KEY.
//! * A sync that gets no SYNC_END within the SDKs' 4 s is sent again. The SDKs do that on the next
//!   SYNC_NOTIFY, which in a live system soon comes; the bench does it on its own so that a dropped sync
//!   shows up as a late delivery and a count ([`ClientStats::sync_timeouts`]) rather than a stuck client.
//! * **METADATA** followed by a frame with `seq + 1` whose `prev_sync_key` equals the current key of that
//!   queue (the personal queue, or the group's when the frame has flag SUPER_GROUP) is the fast path: the
//!   pushed message is accepted and `sync_key` adopted. A METADATA with a zero key is ignored, as the SDKs do.
//!   A pushed message that misses the fast path is discarded (like the JS SDK), and the SYNC_NOTIFY that
//!   always follows it brings it in through a sync. While a sync is in flight, pushes are not fast-pathed:
//!   the sync or the next one delivers them, so nothing arrives twice.
//! * Keys adopted on the fast path are reported with SYNC_KEY / GROUP_SYNC_KEY once per write rather than
//!   once per message (the server keeps only the highest).
//! * Received IM, GROUP_IM, SYSTEM and CUSTOMER messages are ACKed with their frame's seq, as SDKs do
//!   (switchable with [`ConnectOptions::client_acks`]).
//! * PING after [`ConnectOptions::ping_interval`] without writing anything; a connection that then stays
//!   silent for [`ConnectOptions::pong_timeout`] is reported dead.
//!
//! The client is driven by one task. [`Client::next_event`] is the simple way; scenarios that also wait on
//! timers use the cancel-safe [`Client::fill`] inside `select!`, then [`Client::poll_event`] and
//! [`Client::flush`]. Outgoing frames are queued into one buffer and written with one `write` per flush
//! (one WebSocket message per frame, flushed together); buffers are reused, so the steady state allocates
//! nothing per message.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use proto::body::Ack;
use proto::{cmd, flag, Body, Frame, GroupSyncKey, Header, Im, Metadata, Rt, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// Largest frame body accepted from the server (its own limit is 32767; re-encoding may add a few bytes).
pub const MAX_SERVER_BODY: usize = 64 * 1024;
/// How long the SDKs let a sync stay in flight before they allow another.
pub const SYNC_IN_FLIGHT_LIMIT: Duration = Duration::from_secs(4);

const READ_RESERVE: usize = 4096;

/// Why a client connection failed. The server's fault unless said otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("WebSocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("bad frame from server: {0}")]
    Frame(#[from] proto::DecodeError),
    #[error("bad {cmd} body from server: {err}")]
    Body {
        cmd: &'static str,
        err: proto::BodyError,
    },
    #[error("server sent a text WebSocket message")]
    TextMessage,
    #[error("connection closed by the server")]
    Closed,
    #[error("authentication refused (AUTH_STATUS {0})")]
    AuthRefused(i32),
    #[error("first frame after AUTH_TOKEN was {0}, not AUTH_STATUS")]
    NotAuthStatus(&'static str),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Which transport a client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Plain TCP to this address.
    Tcp(SocketAddr),
    /// WebSocket: TCP to `addr`, then an upgrade request for `url` (e.g. `ws://127.0.0.1:13891/ws`).
    Ws { addr: SocketAddr, url: String },
}

impl Endpoint {
    /// The socket address dialled.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Endpoint::Tcp(a) => *a,
            Endpoint::Ws { addr, .. } => *addr,
        }
    }
}

/// How to connect and how to behave.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub endpoint: Endpoint,
    /// Source address to bind before connecting (port chosen by the kernel).
    pub source_ip: Option<IpAddr>,
    /// The user this token belongs to (the protocol does not tell the client; used as the sender field).
    pub uid: i64,
    pub token: String,
    /// The SDK's device id string.
    pub device_id: String,
    /// AUTH_TOKEN platform id (docs/protocol.md §7.2); Android = 2.
    pub platform: u8,
    /// Protocol version sent in AUTH_TOKEN; 2 like Android and iOS, 1 like the JS SDK.
    pub version: u8,
    /// Bound on dialling, the WebSocket upgrade and authentication together.
    pub connect_timeout: Duration,
    /// Send PING after this long without writing anything.
    pub ping_interval: Duration,
    /// A connection silent for this long after a PING is dead.
    pub pong_timeout: Duration,
    /// ACK received persistent messages, as SDKs do.
    pub client_acks: bool,
    /// Send SYNC (and SYNC_GROUP for [`ConnectOptions::super_groups`]) right after authenticating.
    pub initial_sync: bool,
    /// Super groups this user belongs to (synced on connect; their keys are kept).
    pub super_groups: Vec<i64>,
}

impl ConnectOptions {
    /// Android-like defaults for `uid` with `token` at `endpoint`.
    pub fn new(endpoint: Endpoint, uid: i64, token: String) -> ConnectOptions {
        ConnectOptions {
            endpoint,
            source_ip: None,
            uid,
            device_id: format!("bench-{uid}"),
            token,
            platform: proto::Platform::ANDROID,
            version: 2,
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(60),
            pong_timeout: Duration::from_secs(30),
            client_acks: true,
            initial_sync: true,
            super_groups: Vec::new(),
        }
    }
}

/// How an accepted message reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Pushed (flag PUSH) and accepted on the METADATA fast path.
    Push,
    /// Returned by a SYNC or SYNC_GROUP.
    Sync,
    /// A non-persistent delivery (ROOM_IM, RT, NOTIFICATION) with no sync key.
    Direct,
}

/// A message the client accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub cmd: u8,
    pub flag: u8,
    pub seq: i32,
    pub via: Via,
    /// Sender uid (0 where the command has none).
    pub sender: i64,
    /// Receiver uid, group id or room id (0 where the command has none).
    pub receiver: i64,
    pub content: Bytes,
}

/// What the client reports to its driver; sync-protocol frames are handled inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An accepted message.
    Message(Message),
    /// The server acknowledged the client frame with this `seq`.
    Ack {
        seq: i32,
        status: i8,
        flag: u8,
    },
    /// A personal sync finished at `key` (already adopted).
    SyncEnd {
        key: i64,
    },
    /// A group sync finished.
    GroupSyncEnd {
        group_id: i64,
        key: i64,
    },
    Pong,
    /// Any other frame (e.g. an AUTH_STATUS after the first).
    Other(Frame),
}

/// Counters kept by every client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Pushed messages accepted on the fast path.
    pub fast_path: u64,
    /// Pushed messages discarded (no matching METADATA, or a sync in flight) and left to a sync.
    pub pushes_discarded: u64,
    /// SYNC / SYNC_GROUP requests sent, and SYNC_END / SYNC_GROUP_END received.
    pub syncs: u64,
    pub sync_ends: u64,
    /// Syncs given up after [`SYNC_IN_FLIGHT_LIMIT`] without an end (then retried on the next notify).
    pub sync_timeouts: u64,
    /// Messages received in sync responses.
    pub synced: u64,
    pub pings: u64,
}

/// The sync-key state of one queue.
#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    key: i64,
    /// When the sync in flight was sent.
    in_flight: Option<Instant>,
    /// Highest key announced while a sync was in flight.
    pending: i64,
    /// Adopted on the fast path and not yet reported.
    unreported: bool,
    /// Highest key any SYNC_NOTIFY or pushed METADATA announced (for reports on stuck receivers).
    announced: i64,
}

impl KeyState {
    fn syncing(&self, now: Instant) -> bool {
        matches!(self.in_flight, Some(t) if now.duration_since(t) < SYNC_IN_FLIGHT_LIMIT)
    }
}

enum Io {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<TcpStream>>),
}

/// One SDK-like client connection. See the module documentation.
pub struct Client {
    io: Io,
    rbuf: BytesMut,
    wbuf: BytesMut,
    scratch: BytesMut,
    uid: i64,
    version: u8,
    seq: i32,
    personal: KeyState,
    groups: Vec<(i64, KeyState)>,
    /// The last METADATA frame (its seq and body), valid for the next frame only.
    meta: Option<(i32, Metadata)>,
    /// GROUP_IM frames sent and not yet ACKed: (seq, group id), to place super-group ACK METADATA.
    group_sends: VecDeque<(i32, i64)>,
    client_acks: bool,
    ping_interval: Duration,
    pong_timeout: Duration,
    last_write: Instant,
    last_read: Instant,
    ping_sent: Option<Instant>,
    stats: ClientStats,
}

/// Kinds of message a client can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// MSG_IM to a user.
    Peer,
    /// MSG_GROUP_IM to a group.
    Group,
    /// MSG_ROOM_IM to the current room.
    Room,
    /// MSG_RT to a user.
    Rt,
}

fn body_err(cmd: u8) -> impl FnOnce(proto::BodyError) -> ClientError {
    move |err| ClientError::Body {
        cmd: cmd::name(cmd),
        err,
    }
}

impl Client {
    /// Dials, authenticates and (if asked) starts the initial sync. Bounded by `connect_timeout`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Client, ClientError> {
        match tokio::time::timeout(opts.connect_timeout, Self::connect_inner(opts)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout("connect and authenticate")),
        }
    }

    async fn connect_inner(opts: &ConnectOptions) -> Result<Client, ClientError> {
        let addr = opts.endpoint.addr();
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = opts.source_ip {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let io = match &opts.endpoint {
            Endpoint::Tcp(_) => Io::Tcp(stream),
            Endpoint::Ws { url, .. } => {
                let config = WebSocketConfig::default()
                    .read_buffer_size(READ_RESERVE)
                    .write_buffer_size(0)
                    .max_message_size(Some(MAX_SERVER_BODY + HEADER_LEN))
                    .max_frame_size(Some(MAX_SERVER_BODY + HEADER_LEN));
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                        .await?;
                Io::Ws(Box::new(ws))
            }
        };
        let now = Instant::now();
        let mut c = Client {
            io,
            rbuf: BytesMut::with_capacity(READ_RESERVE),
            wbuf: BytesMut::with_capacity(1024),
            scratch: BytesMut::new(),
            uid: opts.uid,
            version: opts.version,
            seq: 0,
            personal: KeyState::default(),
            groups: opts
                .super_groups
                .iter()
                .map(|&g| (g, KeyState::default()))
                .collect(),
            meta: None,
            group_sends: VecDeque::new(),
            client_acks: opts.client_acks,
            ping_interval: opts.ping_interval,
            pong_timeout: opts.pong_timeout,
            last_write: now,
            last_read: now,
            ping_sent: None,
            stats: ClientStats::default(),
        };
        let auth = Body::AuthToken(proto::AuthToken {
            platform_id: opts.platform,
            token: Bytes::copy_from_slice(opts.token.as_bytes()),
            device_id: Bytes::copy_from_slice(opts.device_id.as_bytes()),
        });
        c.queue(&auth, 0);
        c.flush().await?;
        let frame = loop {
            if let Some(f) = Frame::decode(&mut c.rbuf, MAX_SERVER_BODY)? {
                break f;
            }
            c.fill().await?;
        };
        c.stats.frames_in += 1;
        if frame.cmd != cmd::AUTH_STATUS {
            return Err(ClientError::NotAuthStatus(cmd::name(frame.cmd)));
        }
        match Body::decode(frame.cmd, frame.version, &frame.body).map_err(body_err(frame.cmd))? {
            Body::AuthStatus(0) => {}
            Body::AuthStatus(s) => return Err(ClientError::AuthRefused(s)),
            _ => return Err(ClientError::NotAuthStatus(cmd::name(frame.cmd))),
        }
        if opts.initial_sync {
            c.start_sync();
            for i in 0..c.groups.len() {
                c.start_group_sync(i);
            }
        }
        c.shrink_idle();
        Ok(c)
    }

    /// The uid this client sends as.
    pub fn uid(&self) -> i64 {
        self.uid
    }

    /// The session's protocol version.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The current personal sync key.
    pub fn sync_key(&self) -> i64 {
        self.personal.key
    }

    /// The current key of a super group, if the client knows the group.
    pub fn group_sync_key(&self, group_id: i64) -> Option<i64> {
        self.groups
            .iter()
            .find(|(g, _)| *g == group_id)
            .map(|(_, k)| k.key)
    }

    /// Whether a personal or group sync is in flight.
    pub fn is_syncing(&self) -> bool {
        let now = Instant::now();
        self.personal.syncing(now) || self.groups.iter().any(|(_, k)| k.syncing(now))
    }

    /// A one-line description of the sync state, for reports about receivers that did not finish.
    pub fn describe_sync_state(&self) -> String {
        let now = Instant::now();
        let one = |k: &KeyState| match k.in_flight {
            Some(t) => format!(
                "key {} (sync in flight for {:.1} s, pending {})",
                k.key,
                now.duration_since(t).as_secs_f64(),
                k.pending
            ),
            None => format!("key {} (idle)", k.key),
        };
        let one = |k: &KeyState| format!("{}, highest announced {}", one(k), k.announced);
        let mut s = format!("uid {}: personal {}", self.uid, one(&self.personal));
        for (g, k) in &self.groups {
            s.push_str(&format!("; group {g} {}", one(k)));
        }
        let st = &self.stats;
        s.push_str(&format!(
            "; {} syncs, {} ends, {} timed out",
            st.syncs, st.sync_ends, st.sync_timeouts
        ));
        s
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Bytes queued and not yet written.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    fn next_seq(&mut self) -> i32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Queues a frame with `body`; returns its seq.
    pub fn queue(&mut self, body: &Body, flag: u8) -> i32 {
        let seq = self.next_seq();
        body.encode_frame(seq, self.version, flag, &mut self.wbuf);
        self.stats.frames_out += 1;
        seq
    }

    /// Queues a message to `receiver` (a uid, group id or room id) whose content `content` writes; returns
    /// the frame's seq, which the server's ACK will echo.
    pub fn queue_message(
        &mut self,
        kind: Kind,
        receiver: i64,
        flag: u8,
        content: impl FnOnce(&mut BytesMut),
    ) -> i32 {
        self.scratch.clear();
        content(&mut self.scratch);
        let content = self.scratch.split().freeze();
        let body = match kind {
            Kind::Peer | Kind::Group => {
                let im = Im {
                    sender: self.uid,
                    receiver,
                    timestamp: 0,
                    msgid: 0,
                    content,
                };
                if kind == Kind::Peer {
                    Body::Im(im)
                } else {
                    Body::GroupIm(im)
                }
            }
            Kind::Room | Kind::Rt => {
                let rt = Rt {
                    sender: self.uid,
                    receiver,
                    content,
                };
                if kind == Kind::Room {
                    Body::RoomIm(rt)
                } else {
                    Body::Rt(rt)
                }
            }
        };
        let seq = self.queue(&body, flag);
        if kind == Kind::Group {
            self.group_sends.push_back((seq, receiver));
        }
        // `body` (and its content) is dropped here, so the scratch buffer is unique again and its next
        // `reserve` reuses the same allocation.
        drop(body);
        seq
    }

    /// Queues ENTER_ROOM.
    pub fn enter_room(&mut self, room_id: i64) -> i32 {
        self.queue(&Body::EnterRoom(room_id), 0)
    }

    /// Queues LEAVE_ROOM.
    pub fn leave_room(&mut self, room_id: i64) -> i32 {
        self.queue(&Body::LeaveRoom(room_id), 0)
    }

    /// Queues PING.
    pub fn ping(&mut self) -> i32 {
        self.stats.pings += 1;
        if self.ping_sent.is_none() {
            self.ping_sent = Some(Instant::now());
        }
        self.queue(&Body::Ping, 0)
    }

    /// Starts a personal sync from the current key unless one is in flight (then remembers to sync again).
    pub fn request_sync(&mut self) {
        if self.personal.syncing(Instant::now()) {
            self.personal.pending = self.personal.pending.max(self.personal.key + 1);
        } else {
            self.start_sync();
        }
    }

    /// Learns a super group (if new) and starts its sync.
    pub fn request_group_sync(&mut self, group_id: i64) {
        let i = self.group_index(group_id);
        if self.groups[i].1.syncing(Instant::now()) {
            let k = &mut self.groups[i].1;
            k.pending = k.pending.max(k.key + 1);
        } else {
            self.start_group_sync(i);
        }
    }

    fn group_index(&mut self, group_id: i64) -> usize {
        match self.groups.iter().position(|(g, _)| *g == group_id) {
            Some(i) => i,
            None => {
                self.groups.push((group_id, KeyState::default()));
                self.groups.len() - 1
            }
        }
    }

    fn start_sync(&mut self) {
        if self.personal.in_flight.is_some() {
            self.stats.sync_timeouts += 1;
        }
        self.personal.in_flight = Some(Instant::now());
        self.stats.syncs += 1;
        let key = self.personal.key;
        self.queue(&Body::Sync(key), 0);
    }

    fn start_group_sync(&mut self, i: usize) {
        let (group_id, ref mut k) = self.groups[i];
        if k.in_flight.is_some() {
            self.stats.sync_timeouts += 1;
        }
        k.in_flight = Some(Instant::now());
        let sync_key = k.key;
        self.stats.syncs += 1;
        self.queue(&Body::SyncGroup(GroupSyncKey { group_id, sync_key }), 0);
    }

    /// Reads more bytes from the server into the read buffer. Cancel-safe: use it inside `select!`.
    pub async fn fill(&mut self) -> Result<(), ClientError> {
        match &mut self.io {
            Io::Tcp(s) => {
                if self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE / 2 {
                    self.rbuf.reserve(READ_RESERVE);
                }
                let n = s.read_buf(&mut self.rbuf).await?;
                if n == 0 {
                    return Err(ClientError::Closed);
                }
                self.stats.bytes_in += n as u64;
            }
            Io::Ws(ws) => loop {
                match ws.next().await {
                    None => return Err(ClientError::Closed),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(WsMessage::Binary(b))) => {
                        self.stats.bytes_in += b.len() as u64;
                        self.rbuf.extend_from_slice(&b);
                        break;
                    }
                    Some(Ok(WsMessage::Text(_))) => return Err(ClientError::TextMessage),
                    Some(Ok(WsMessage::Close(_))) => return Err(ClientError::Closed),
                    // Pings are answered by the library on the next write; pongs are ignored.
                    Some(Ok(_)) => continue,
                }
            },
        }
        self.last_read = Instant::now();
        self.ping_sent = None;
        Ok(())
    }

    /// Writes everything queued (plus any sync-key reports due): one write call on TCP, one WebSocket
    /// message per frame flushed together.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.queue_key_reports();
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stats.bytes_out += self.wbuf.len() as u64;
        match &mut self.io {
            Io::Tcp(s) => {
                s.write_all(&self.wbuf).await?;
                self.wbuf.clear();
            }
            Io::Ws(ws) => {
                while !self.wbuf.is_empty() {
                    let len = match Header::parse(&self.wbuf, usize::MAX)? {
                        Some(h) => HEADER_LEN + h.len,
                        None => self.wbuf.len(),
                    };
                    let frame = self.wbuf.split_to(len.min(self.wbuf.len())).freeze();
                    ws.feed(WsMessage::Binary(frame)).await?;
                }
                ws.flush().await?;
            }
        }
        self.last_write = Instant::now();
        Ok(())
    }

    fn queue_key_reports(&mut self) {
        if self.personal.unreported {
            self.personal.unreported = false;
            let key = self.personal.key;
            self.queue(&Body::SyncKey(key), 0);
        }
        for i in 0..self.groups.len() {
            let (group_id, k) = self.groups[i];
            if k.unreported {
                self.groups[i].1.unreported = false;
                self.queue(
                    &Body::GroupSyncKey(GroupSyncKey {
                        group_id,
                        sync_key: k.key,
                    }),
                    0,
                );
            }
        }
    }

    /// When the next PING is due (or, after a PING, when the connection counts as dead), or when a sync in
    /// flight runs out of the SDKs' patience, whichever comes first.
    pub fn deadline(&self) -> Instant {
        let ping = match self.ping_sent {
            Some(t) => t + self.pong_timeout,
            None => self.last_write.max(self.last_read) + self.ping_interval,
        };
        let syncs = std::iter::once(&self.personal)
            .chain(self.groups.iter().map(|(_, k)| k))
            .filter_map(|k| k.in_flight)
            .map(|t| t + SYNC_IN_FLIGHT_LIMIT)
            .min();
        syncs.map_or(ping, |s| s.min(ping))
    }

    /// Called when [`Client::deadline`] has passed: retries a sync that got no SYNC_END within
    /// [`SYNC_IN_FLIGHT_LIMIT`] (as an SDK does on the next SYNC_NOTIFY; counted in
    /// [`ClientStats::sync_timeouts`]), queues a PING when idle, or fails if a PING went unanswered.
    pub fn on_deadline(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        if matches!(self.personal.in_flight, Some(t) if now.duration_since(t) >= SYNC_IN_FLIGHT_LIMIT)
        {
            self.start_sync();
        }
        for i in 0..self.groups.len() {
            if matches!(self.groups[i].1.in_flight, Some(t) if now.duration_since(t) >= SYNC_IN_FLIGHT_LIMIT)
            {
                self.start_group_sync(i);
            }
        }
        if let Some(t) = self.ping_sent {
            if now.duration_since(t) >= self.pong_timeout {
                return Err(ClientError::Timeout("no answer to PING"));
            }
            return Ok(());
        }
        if now >= self.last_write.max(self.last_read) + self.ping_interval {
            self.ping();
        }
        Ok(())
    }

    /// Releases buffer memory while the connection is idle.
    pub fn shrink_idle(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_RESERVE {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
    }

    /// The next event: handles sync-protocol frames, flushes replies, pings on idle.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(ev) = self.poll_event()? {
                return Ok(ev);
            }
            self.flush().await?;
            let deadline = self.deadline();
            tokio::select! {
                r = self.fill() => r?,
                _ = tokio::time::sleep_until(deadline) => self.on_deadline()?,
            }
        }
    }

    /// Decodes buffered frames until one yields an event; `Ok(None)` when the buffer holds no whole frame.
    /// Replies (SYNC, ACK) are queued, to be written by the next [`Client::flush`].
    pub fn poll_event(&mut self) -> Result<Option<Event>, ClientError> {
        while let Some(frame) = Frame::decode(&mut self.rbuf, MAX_SERVER_BODY)? {
            self.stats.frames_in += 1;
            if let Some(ev) = self.handle(frame)? {
                return Ok(Some(ev));
            }
        }
        Ok(None)
    }

    fn handle(&mut self, frame: Frame) -> Result<Option<Event>, ClientError> {
        // METADATA applies to the very next frame only (docs/protocol.md §11).
        let meta = self
            .meta
            .take()
            .filter(|(s, m)| {
                s.wrapping_add(1) == frame.seq && m.sync_key != 0 && m.prev_sync_key != 0
            })
            .map(|(_, m)| m);
        let body = Body::decode(frame.cmd, frame.version, &frame.body).map_err(body_err(frame.cmd));
        let body = match body {
            Ok(b) => b,
            // A command the client does not know is passed through as is.
            Err(ClientError::Body {
                err: proto::BodyError::UnknownCommand(_),
                ..
            }) => return Ok(Some(Event::Other(frame))),
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        let ev = match body {
            Body::Metadata(m) => {
                self.meta = Some((frame.seq, m));
                None
            }
            Body::Im(m) | Body::GroupIm(m) => {
                self.persistent(&frame, m.sender, m.receiver, m.content, meta, now)
            }
            Body::Customer(c) => {
                self.persistent(&frame, c.sender, c.receiver, c.content, meta, now)
            }
            Body::System(c) | Body::GroupNotification(c) => {
                self.persistent(&frame, 0, 0, c, meta, now)
            }
            Body::RoomIm(r) | Body::Rt(r) => Some(Event::Message(Message {
                cmd: frame.cmd,
                flag: frame.flag,
                seq: frame.seq,
                via: Via::Direct,
                sender: r.sender,
                receiver: r.receiver,
                content: r.content,
            })),
            Body::Notification(c) => Some(Event::Message(Message {
                cmd: frame.cmd,
                flag: frame.flag,
                seq: frame.seq,
                via: Via::Direct,
                sender: 0,
                receiver: 0,
                content: c,
            })),
            Body::Ack(Ack { seq, status }) => {
                self.on_ack(seq, frame.flag, meta, now);
                Some(Event::Ack {
                    seq,
                    status,
                    flag: frame.flag,
                })
            }
            Body::SyncBegin(_) | Body::SyncGroupBegin(_) => None,
            Body::SyncEnd(k) => {
                self.stats.sync_ends += 1;
                self.personal.in_flight = None;
                if k > self.personal.key {
                    self.personal.key = k;
                    self.personal.unreported = true;
                }
                if self.personal.pending > self.personal.key {
                    self.personal.pending = 0;
                    self.start_sync();
                } else {
                    self.personal.pending = 0;
                }
                Some(Event::SyncEnd {
                    key: self.personal.key,
                })
            }
            Body::SyncNotify(k) => {
                self.personal.announced = self.personal.announced.max(k);
                if k > self.personal.key {
                    if self.personal.syncing(now) {
                        self.personal.pending = self.personal.pending.max(k);
                    } else {
                        self.start_sync();
                    }
                }
                None
            }
            Body::SyncGroupEnd(g) => {
                self.stats.sync_ends += 1;
                let i = self.group_index(g.group_id);
                let k = &mut self.groups[i].1;
                k.in_flight = None;
                if g.sync_key > k.key {
                    k.key = g.sync_key;
                    k.unreported = true;
                }
                let again = k.pending > k.key;
                k.pending = 0;
                let key = k.key;
                if again {
                    self.start_group_sync(i);
                }
                Some(Event::GroupSyncEnd {
                    group_id: g.group_id,
                    key,
                })
            }
            Body::SyncGroupNotify(g) => {
                let i = self.group_index(g.group_id);
                let k = &mut self.groups[i].1;
                k.announced = k.announced.max(g.sync_key);
                if g.sync_key > k.key {
                    if k.syncing(now) {
                        k.pending = k.pending.max(g.sync_key);
                    } else {
                        self.start_group_sync(i);
                    }
                }
                None
            }
            Body::Pong => Some(Event::Pong),
            _ => Some(Event::Other(frame)),
        };
        Ok(ev)
    }

    /// A persistent message: pushed (fast path or discard) or synced.
    fn persistent(
        &mut self,
        frame: &Frame,
        sender: i64,
        receiver: i64,
        content: Bytes,
        meta: Option<Metadata>,
        now: Instant,
    ) -> Option<Event> {
        let via = if frame.flag & flag::PUSH != 0 {
            let state = if frame.flag & flag::SUPER_GROUP != 0 {
                let i = self.group_index(receiver);
                &mut self.groups[i].1
            } else {
                &mut self.personal
            };
            if let Some(m) = &meta {
                state.announced = state.announced.max(m.sync_key);
            }
            match meta {
                Some(m) if !state.syncing(now) && m.prev_sync_key == state.key => {
                    state.key = m.sync_key;
                    state.unreported = true;
                    self.stats.fast_path += 1;
                    Via::Push
                }
                _ => {
                    self.stats.pushes_discarded += 1;
                    return None;
                }
            }
        } else {
            self.stats.synced += 1;
            Via::Sync
        };
        if self.client_acks {
            self.queue(
                &Body::Ack(Ack {
                    seq: frame.seq,
                    status: 0,
                }),
                0,
            );
        }
        Some(Event::Message(Message {
            cmd: frame.cmd,
            flag: frame.flag,
            seq: frame.seq,
            via,
            sender,
            receiver,
            content,
        }))
    }

    /// An ACK of our own send: its METADATA moves our key past our own copy (personal or group queue).
    fn on_ack(&mut self, seq: i32, ack_flag: u8, meta: Option<Metadata>, now: Instant) {
        let mut group = None;
        while let Some(&(s, g)) = self.group_sends.front() {
            // Sequence numbers only grow (wrapping is irrelevant within a bench run's window).
            if s.wrapping_sub(seq) > 0 {
                break;
            }
            self.group_sends.pop_front();
            if s == seq {
                group = Some(g);
            }
        }
        let Some(m) = meta else { return };
        let state = if ack_flag & flag::SUPER_GROUP != 0 {
            match group {
                Some(g) => {
                    let i = self.group_index(g);
                    &mut self.groups[i].1
                }
                None => return,
            }
        } else {
            &mut self.personal
        };
        if !state.syncing(now) && m.prev_sync_key == state.key {
            state.key = m.sync_key;
            state.unreported = true;
        }
    }
}
