//! The bench client against a scripted fake server: it must behave like a GoBelieve SDK (auth, initial
//! sync, SYNC on SYNC_NOTIFY with one sync in flight, SYNC_END adoption and SYNC_KEY reports, the METADATA
//! fast path for personal and super-group queues, ACKs of received messages, PING on idle) over TCP and
//! WebSocket.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::net::SocketAddr;
use std::time::Duration;

use bench::client::{Client, ClientError, ConnectOptions, Endpoint, Event, Kind, Via};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use proto::body::Ack;
use proto::{cmd, flag, Body, Frame, GroupSyncKey, Im, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const T: Duration = Duration::from_secs(5);

/// The fake server's side of one TCP connection.
struct Peer {
    s: TcpStream,
    buf: BytesMut,
    seq: i32,
    version: u8,
}

impl Peer {
    async fn accept(l: &TcpListener) -> Peer {
        let (s, _) = tokio::time::timeout(T, l.accept()).await.unwrap().unwrap();
        Peer {
            s,
            buf: BytesMut::new(),
            seq: 0,
            version: 0,
        }
    }

    async fn read(&mut self) -> Frame {
        loop {
            if let Some(f) = Frame::decode(&mut self.buf, 1 << 16).unwrap() {
                return f;
            }
            let n = tokio::time::timeout(T, self.s.read_buf(&mut self.buf))
                .await
                .expect("client frame in time")
                .unwrap();
            assert!(n > 0, "client closed");
        }
    }

    async fn expect(&mut self, want: Body) -> Frame {
        let f = self.read().await;
        let got = Body::decode(f.cmd, f.version, &f.body).unwrap();
        assert_eq!(got, want, "frame seq {}", f.seq);
        f
    }

    /// Sends frames; returns the seq of each.
    async fn send(&mut self, frames: &[(Body, u8)]) -> Vec<i32> {
        let mut out = BytesMut::new();
        let mut seqs = Vec::new();
        for (b, fl) in frames {
            self.seq += 1;
            seqs.push(self.seq);
            b.encode_frame(self.seq, self.version, *fl, &mut out);
        }
        self.s.write_all(&out).await.unwrap();
        seqs
    }

    /// Reads AUTH_TOKEN, answers `status`.
    async fn auth(&mut self, status: i32) -> proto::AuthToken {
        let f = self.read().await;
        assert_eq!(f.cmd, cmd::AUTH_TOKEN);
        self.version = f.version;
        let Body::AuthToken(a) = Body::decode(f.cmd, f.version, &f.body).unwrap() else {
            panic!("not AUTH_TOKEN")
        };
        self.send(&[(Body::AuthStatus(status), 0)]).await;
        a
    }
}

fn im(sender: i64, receiver: i64, content: &str) -> Im {
    Im {
        sender,
        receiver,
        timestamp: 1_700_000_000,
        msgid: 0,
        content: Bytes::from(content.to_string()),
    }
}

fn meta(sync_key: i64, prev_sync_key: i64) -> Body {
    Body::Metadata(Metadata {
        sync_key,
        prev_sync_key,
    })
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Drives the client until `stop` says so, collecting events (bounded).
async fn collect(c: &mut Client, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(T, c.next_event())
            .await
            .expect("event in time")
            .unwrap();
        let done = stop(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn contents(evs: &[Event]) -> Vec<(String, Via)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some((String::from_utf8_lossy(&m.content).into_owned(), m.via)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn sync_protocol_like_an_sdk() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        let a = p.auth(0).await;
        assert_eq!(a.platform_id, proto::Platform::ANDROID);
        assert_eq!(&a.token[..], b"tok");
        assert_eq!(&a.device_id[..], b"bench-1");
        assert_eq!(p.version, 2);
        // Initial sync.
        p.expect(Body::Sync(0)).await;
        p.send(&[(Body::SyncBegin(0), 0), (Body::SyncEnd(0), 0)])
            .await;

        // A push whose METADATA has prev 0 is ignored; the SYNC_NOTIFY makes the client sync.
        p.send(&[
            (meta(100, 0), 0),
            (Body::Im(im(9, 1, "a")), flag::PUSH),
            (Body::SyncNotify(100), 0),
        ])
        .await;
        p.expect(Body::Sync(0)).await;
        let s = p
            .send(&[
                (Body::SyncBegin(0), 0),
                (Body::Im(im(9, 1, "a")), 0),
                (Body::SyncEnd(100), 0),
            ])
            .await;
        p.expect(Body::Ack(Ack {
            seq: s[1],
            status: 0,
        }))
        .await;
        p.expect(Body::SyncKey(100)).await;

        // Fast path: METADATA(prev == current) + push on the next seq is accepted; its notify is a no-op.
        let s = p
            .send(&[
                (meta(200, 100), 0),
                (Body::Im(im(9, 1, "b")), flag::PUSH),
                (Body::SyncNotify(200), 0),
            ])
            .await;
        p.expect(Body::Ack(Ack {
            seq: s[1],
            status: 0,
        }))
        .await;
        p.expect(Body::SyncKey(200)).await;

        // A push that does not directly follow its METADATA is discarded and synced instead.
        p.send(&[(meta(300, 200), 0)]).await;
        p.seq += 1; // a gap in the server's seq
        p.send(&[
            (Body::Im(im(9, 1, "c")), flag::PUSH),
            (Body::SyncNotify(300), 0),
        ])
        .await;
        p.expect(Body::Sync(200)).await;
        let s = p
            .send(&[
                (Body::SyncBegin(200), 0),
                (Body::Im(im(9, 1, "c")), 0),
                (Body::SyncEnd(300), 0),
            ])
            .await;
        p.expect(Body::Ack(Ack {
            seq: s[1],
            status: 0,
        }))
        .await;
        p.expect(Body::SyncKey(300)).await;

        // One sync in flight: pushes meanwhile are left to the sync, the highest notified key is
        // remembered and synced after SYNC_END.
        p.send(&[(Body::SyncNotify(400), 0)]).await;
        p.expect(Body::Sync(300)).await;
        p.send(&[
            (meta(400, 300), 0),
            (Body::Im(im(9, 1, "d")), flag::PUSH),
            (Body::SyncNotify(500), 0),
        ])
        .await;
        let s = p
            .send(&[
                (Body::SyncBegin(300), 0),
                (Body::Im(im(9, 1, "d")), 0),
                (Body::SyncEnd(400), 0),
            ])
            .await;
        p.expect(Body::Ack(Ack {
            seq: s[1],
            status: 0,
        }))
        .await;
        p.expect(Body::Sync(400)).await;
        p.expect(Body::SyncKey(400)).await;
        let s = p
            .send(&[
                (Body::SyncBegin(400), 0),
                (Body::Im(im(9, 1, "e")), 0),
                (Body::SyncEnd(500), 0),
            ])
            .await;
        p.expect(Body::Ack(Ack {
            seq: s[1],
            status: 0,
        }))
        .await;
        p.expect(Body::SyncKey(500)).await;
    });

    let opts = ConnectOptions::new(Endpoint::Tcp(addr), 1, "tok".into());
    let mut c = Client::connect(&opts).await.unwrap();
    assert!(c.is_syncing());
    let evs = collect(&mut c, |e| *e == Event::SyncEnd { key: 500 }).await;
    assert_eq!(
        contents(&evs),
        vec![
            ("a".into(), Via::Sync),
            ("b".into(), Via::Push),
            ("c".into(), Via::Sync),
            ("d".into(), Via::Sync),
            ("e".into(), Via::Sync),
        ]
    );
    assert_eq!(c.sync_key(), 500);
    let st = c.stats();
    assert_eq!(st.fast_path, 1);
    assert_eq!(st.pushes_discarded, 3);
    assert_eq!(st.syncs, 5);
    // Flush the last ACK and SYNC_KEY for the server to see.
    c.flush().await.unwrap();
    tokio::time::timeout(T, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn super_group_keys_and_ack_metadata() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        p.auth(0).await;
        p.expect(Body::Sync(0)).await;
        p.expect(Body::SyncGroup(GroupSyncKey {
            group_id: 77,
            sync_key: 0,
        }))
        .await;
        p.send(&[
            (Body::SyncEnd(0), 0),
            (
                Body::SyncGroupEnd(GroupSyncKey {
                    group_id: 77,
                    sync_key: 40,
                }),
                0,
            ),
        ])
        .await;
        p.expect(Body::GroupSyncKey(GroupSyncKey {
            group_id: 77,
            sync_key: 40,
        }))
        .await;
        // A super-group push advances the group key, not the personal one.
        let s = p
            .send(&[
                (meta(50, 40), 0),
                (
                    Body::GroupIm(im(9, 77, "g")),
                    flag::PUSH | flag::SUPER_GROUP,
                ),
            ])
            .await;
        // The client then sends to the group; the key report goes out in the same write.
        p.expect(Body::Ack(Ack {
            seq: s[1],
            status: 0,
        }))
        .await;
        let f = p.read().await;
        assert_eq!(f.cmd, cmd::GROUP_IM);
        p.expect(Body::GroupSyncKey(GroupSyncKey {
            group_id: 77,
            sync_key: 50,
        }))
        .await;
        // The ACK's METADATA moves the sender's group key past its own message.
        p.send(&[
            (meta(60, 50), 0),
            (
                Body::Ack(Ack {
                    seq: f.seq,
                    status: 0,
                }),
                flag::SUPER_GROUP,
            ),
        ])
        .await;
        p.expect(Body::GroupSyncKey(GroupSyncKey {
            group_id: 77,
            sync_key: 60,
        }))
        .await;
    });
    let mut opts = ConnectOptions::new(Endpoint::Tcp(addr), 1, "tok".into());
    opts.super_groups = vec![77];
    let mut c = Client::connect(&opts).await.unwrap();
    let evs = collect(&mut c, |e| matches!(e, Event::Message(_))).await;
    assert!(evs.contains(&Event::GroupSyncEnd {
        group_id: 77,
        key: 40
    }));
    assert_eq!(contents(&evs), vec![("g".into(), Via::Push)]);
    assert_eq!(c.group_sync_key(77), Some(50));
    assert_eq!(c.sync_key(), 0);
    let seq = c.queue_message(Kind::Group, 77, 0, |b| b.extend_from_slice(b"mine"));
    let evs = collect(&mut c, |e| matches!(e, Event::Ack { .. })).await;
    assert_eq!(
        evs.last(),
        Some(&Event::Ack {
            seq,
            status: 0,
            flag: flag::SUPER_GROUP
        })
    );
    assert_eq!(c.group_sync_key(77), Some(60));
    c.flush().await.unwrap();
    tokio::time::timeout(T, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn pings_when_idle_and_detects_a_dead_link() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        p.auth(0).await;
        p.expect(Body::Ping).await;
        p.send(&[(Body::Pong, 0)]).await;
        // The second PING goes unanswered; keep the socket open until the client gives up.
        p.expect(Body::Ping).await;
        let mut rest = [0u8; 64];
        let _ = tokio::time::timeout(T, p.s.read(&mut rest)).await;
    });
    let mut opts = ConnectOptions::new(Endpoint::Tcp(addr), 1, "tok".into());
    opts.initial_sync = false;
    opts.ping_interval = Duration::from_millis(100);
    opts.pong_timeout = Duration::from_millis(300);
    let mut c = Client::connect(&opts).await.unwrap();
    let ev = tokio::time::timeout(T, c.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, Event::Pong);
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(T, c.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(c);
    tokio::time::timeout(T, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn refused_and_odd_authentication() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        p.auth(1).await;
        let mut p = Peer::accept(&l).await;
        let _ = p.read().await;
        p.send(&[(Body::Pong, 0)]).await;
        let mut p = Peer::accept(&l).await;
        let _ = p.read().await;
        // Close without answering.
        drop(p);
    });
    let opts = ConnectOptions::new(Endpoint::Tcp(addr), 1, "tok".into());
    assert!(matches!(
        Client::connect(&opts).await,
        Err(ClientError::AuthRefused(1))
    ));
    assert!(matches!(
        Client::connect(&opts).await,
        Err(ClientError::NotAuthStatus("MSG_PONG")) | Err(ClientError::NotAuthStatus(_))
    ));
    assert!(matches!(
        Client::connect(&opts).await,
        Err(ClientError::Closed) | Err(ClientError::Io(_))
    ));
    tokio::time::timeout(T, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn connect_times_out_against_a_silent_server() {
    let (l, addr) = listener().await;
    let _server = tokio::spawn(async move {
        let (_s, _) = l.accept().await.unwrap();
        tokio::time::sleep(T).await;
    });
    let mut opts = ConnectOptions::new(Endpoint::Tcp(addr), 1, "tok".into());
    opts.connect_timeout = Duration::from_millis(200);
    assert!(matches!(
        Client::connect(&opts).await,
        Err(ClientError::Timeout(_))
    ));
}

#[tokio::test]
async fn websocket_one_frame_per_message() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        let mut frames = Vec::new();
        let mut seq = 0;
        while frames.len() < 4 {
            let b = match tokio::time::timeout(T, ws.next()).await.unwrap() {
                Some(Ok(WsMessage::Binary(b))) => b,
                other => panic!("{other:?}"),
            };
            let mut buf = BytesMut::from(&b[..]);
            let f = Frame::decode(&mut buf, 1 << 16).unwrap().unwrap();
            assert!(buf.is_empty(), "one frame per WebSocket message");
            if f.cmd == cmd::AUTH_TOKEN {
                let mut out = BytesMut::new();
                seq += 1;
                Body::AuthStatus(0).encode_frame(seq, f.version, 0, &mut out);
                ws.send(WsMessage::Binary(out.freeze())).await.unwrap();
            }
            frames.push(f);
        }
        // Two frames in two messages reach the client.
        for body in [Body::SyncEnd(0), Body::Pong] {
            let mut out = BytesMut::new();
            seq += 1;
            body.encode_frame(seq, 1, 0, &mut out);
            ws.send(WsMessage::Binary(out.freeze())).await.unwrap();
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
        frames
    });
    let mut opts = ConnectOptions::new(
        Endpoint::Ws {
            addr,
            url: format!("ws://{addr}/ws"),
        },
        1,
        "tok".into(),
    );
    opts.version = 1;
    opts.platform = proto::Platform::WEB;
    let mut c = Client::connect(&opts).await.unwrap();
    c.ping();
    c.queue_message(Kind::Peer, 2, 0, |b| b.extend_from_slice(b"hi"));
    c.flush().await.unwrap();
    let evs = collect(&mut c, |e| *e == Event::Pong).await;
    assert!(evs.contains(&Event::SyncEnd { key: 0 }));
    drop(c);
    let frames = tokio::time::timeout(T, server).await.unwrap().unwrap();
    let cmds: Vec<u8> = frames.iter().map(|f| f.cmd).collect();
    assert_eq!(cmds, vec![cmd::AUTH_TOKEN, cmd::SYNC, cmd::PING, cmd::IM]);
    assert!(frames.iter().all(|f| f.version == 1));
    let Body::AuthToken(a) = Body::decode(cmd::AUTH_TOKEN, 1, &frames[0].body).unwrap() else {
        panic!()
    };
    assert_eq!(a.platform_id, proto::Platform::WEB);
    // Client seqs count every frame from 1.
    let seqs: Vec<i32> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_sync_without_an_end_is_sent_again_after_four_seconds() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        p.auth(0).await;
        // The initial SYNC goes unanswered.
        p.expect(Body::Sync(0)).await;
        let started = std::time::Instant::now();
        let f = tokio::time::timeout(Duration::from_secs(6), p.read())
            .await
            .expect("the client syncs again");
        assert_eq!(
            Body::decode(f.cmd, f.version, &f.body).unwrap(),
            Body::Sync(0)
        );
        assert!(started.elapsed() >= Duration::from_millis(3900));
        p.send(&[(Body::SyncBegin(0), 0), (Body::SyncEnd(7), 0)])
            .await;
        p.expect(Body::SyncKey(7)).await;
    });
    let opts = ConnectOptions::new(Endpoint::Tcp(addr), 1, "tok".into());
    let mut c = Client::connect(&opts).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(8), c.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, Event::SyncEnd { key: 7 });
    assert_eq!(c.stats().sync_timeouts, 1);
    assert!(c.describe_sync_state().contains("key 7 (idle)"));
    c.flush().await.unwrap();
    tokio::time::timeout(T, server).await.unwrap().unwrap();
}
