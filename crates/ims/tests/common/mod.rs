//! Helpers shared by the store link and replication tests: small stores in temp directories,
//! servers on 127.0.0.1:0, message builders and a byte-exact log dump.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ims::server::{serve, StoreServerOptions};
use store::{Durability, NewMessage, QueueId, Role, Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn opts(role: Role) -> StoreOptions {
    StoreOptions {
        durability: Durability::None,
        segment_bytes: 64 * 1024,
        cache_bytes: 256 * 1024,
        preallocate: false,
        role,
        ..StoreOptions::default()
    }
}

pub fn open(dir: &Path, o: StoreOptions) -> Arc<Store> {
    Arc::new(Store::open(dir, o).expect("store opens"))
}

pub fn msg(queues: &[QueueId], body: &str) -> NewMessage {
    NewMessage {
        key: None,
        queues: queues.to_vec(),
        device_id: 7,
        cmd: 4,
        flag: 0,
        timestamp: 1_700_000_000,
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

/// A store link server running on a loopback port.
pub struct Served {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub token: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Served {
    pub async fn stop(self) -> Arc<Store> {
        self.token.cancel();
        self.task.await.expect("server task");
        self.store
    }
}

pub async fn serve_store(store: Arc<Store>, sopts: StoreServerOptions) -> Served {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve_on(l, store, sopts)
}

pub fn serve_on(l: TcpListener, store: Arc<Store>, sopts: StoreServerOptions) -> Served {
    let addr = l.local_addr().expect("addr");
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(l, store.clone(), sopts, token.clone()));
    Served {
        addr,
        store,
        token,
        task,
    }
}

/// The whole log as bytes in position space (independent of segmentation).
pub fn log_bytes(s: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    let mut st = s.subscribe(s.log_start()).expect("subscribe");
    while let Some(b) = st.try_next().expect("read log") {
        out.extend_from_slice(&b.data);
    }
    out
}

/// Every entry of a queue, oldest first: (key, prev_key, body).
pub fn all(s: &Store, q: QueueId) -> Vec<(i64, i64, Bytes)> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let p = s.sync(q, after, 3000).expect("sync");
        out.extend(
            p.messages
                .iter()
                .map(|m| (m.key, m.prev_key, m.body.clone())),
        );
        after = p.last_key;
        if !p.has_more {
            return out;
        }
    }
}

/// Polls `f` every 10 ms until it is true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy whose connections can be cut, to break a link mid-stream.
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = l.local_addr().expect("addr");
        let conns: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().push(h);
            }
        });
        Proxy { addr, conns, task }
    }

    /// Drops every connection open now (new ones are still accepted).
    pub fn cut(&self) -> usize {
        let v: Vec<_> = self.conns.lock().drain(..).collect();
        let n = v.iter().filter(|h| !h.is_finished()).count();
        for h in v {
            h.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// Reads the next whole frame from `r` with the links' codec, keeping partial input in `buf`;
/// `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut bytes::BytesMut,
    max_body: usize,
) -> Result<Option<proto::Frame>, node::frame::FrameError> {
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;
    let mut codec = node::frame::FrameCodec::new(max_body);
    loop {
        if let Some(f) = codec.decode(buf)? {
            return Ok(Some(f));
        }
        if r.read_buf(buf).await? == 0 {
            return codec.decode_eof(buf);
        }
    }
}
