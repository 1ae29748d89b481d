//! A sender that closes its connection right after sending — an app killed or a phone losing its
//! network just after "send" — must not cost the receiver the message: what the server read before the
//! close is stored and delivered to online receivers; only the sender's ACK is lost with the connection.
//! Peer, customer-service, normal-group and super-group messages, over TCP and WebSocket, with the store
//! in-process and on a store node (`banter ims`).
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use proto::{cmd, flag, Body, Customer, Im};
use serde_json::json;

const KEFU: i64 = 1453;
/// Messages per case: each sent by a fresh connection that closes at once.
const ROUNDS: usize = 10;

async fn login_app(s: &TestServer, appid: i64, uid: i64, ws: bool) -> Client {
    let (st, v) = post_json(s.http, "/auth/grant", &json!({"appid": appid, "uid": uid})).await;
    assert_eq!(st, 200, "grant: {v}");
    let mut c = if ws {
        Client::ws(s).await
    } else {
        Client::tcp(s.tcp).await
    };
    let token = v["token"].as_str().expect("token").to_string();
    assert_eq!(
        c.auth(&token, 2, proto::Platform::ANDROID, &format!("d{uid}"))
            .await,
        0
    );
    c
}

fn im(sender: i64, receiver: i64, text: &str) -> Body {
    Body::Im(Im {
        sender,
        receiver,
        timestamp: 0,
        msgid: 1,
        content: Bytes::copy_from_slice(text.as_bytes()),
    })
}

fn group_im(sender: i64, gid: i64, text: &str) -> Body {
    Body::GroupIm(Im {
        sender,
        receiver: gid,
        timestamp: 0,
        msgid: 1,
        content: Bytes::copy_from_slice(text.as_bytes()),
    })
}

fn customer(sender: i64, receiver: i64, text: &str) -> Body {
    Body::Customer(Customer {
        sender_appid: APPID,
        sender,
        receiver_appid: KEFU,
        receiver,
        timestamp: 0,
        content: Bytes::copy_from_slice(text.as_bytes()),
    })
}

/// The content of a pushed message, or `None` for frames that are not one.
fn pushed_text(f: &proto::Frame) -> Option<String> {
    if f.flag & flag::PUSH == 0 {
        return None;
    }
    let content = match body_of(f) {
        Body::Im(m) | Body::GroupIm(m) => m.content,
        Body::Customer(c) => c.content,
        _ => return None,
    };
    Some(String::from_utf8_lossy(&content).into_owned())
}

/// Waits until the receiver has been pushed `text` (the push is the proof the online receiver was
/// told; a later sync would find the message either way).
async fn expect_push(receiver: &mut Client, text: &str, what: &str) {
    loop {
        let f = receiver
            .recv()
            .await
            .unwrap_or_else(|| panic!("{what}: the receiver was never told of {text:?}"));
        if pushed_text(&f).as_deref() == Some(text) {
            return;
        }
    }
}

/// Sends `body` from a fresh connection of (`appid`, `sender`) and closes it without waiting.
async fn send_and_vanish(s: &TestServer, appid: i64, sender: i64, ws: bool, body: &Body) {
    let mut c = login_app(s, appid, sender, ws).await;
    c.send_body(body, flag::TEXT).await;
    drop(c);
}

async fn create_group(s: &TestServer, gid: i64, members: &[i64], super_group: bool) {
    let (st, v) = post_json(
        s.http,
        "/admin/groups",
        &json!({"appid": APPID, "group_id": gid, "name": format!("g{gid}"), "master": members[0], "super": super_group, "members": members}),
    )
    .await;
    assert_eq!(st, 200, "create group: {v}");
}

/// Every kind of message, over `ws` or TCP, each sent by a sender that closes at once.
async fn every_kind(s: &TestServer, ws: bool) {
    let tag = if ws { "ws" } else { "tcp" };
    create_group(s, 41, &[1, 2], false).await;
    create_group(s, 42, &[1, 2], true).await;
    let mut peer = login_app(s, APPID, 2, false).await;
    for i in 0..ROUNDS {
        let text = format!("{tag} peer {i}");
        send_and_vanish(s, APPID, 1, ws, &im(1, 2, &text)).await;
        expect_push(&mut peer, &text, "peer message").await;
    }
    for (gid, kind) in [(41, "normal group"), (42, "super group")] {
        for i in 0..ROUNDS {
            let text = format!("{tag} {kind} {i}");
            send_and_vanish(s, APPID, 1, ws, &group_im(1, gid, &text)).await;
            expect_push(&mut peer, &text, kind).await;
        }
    }
    let mut staff = login_app(s, KEFU, 20, false).await;
    for i in 0..ROUNDS {
        let text = format!("{tag} customer {i}");
        send_and_vanish(s, APPID, 1, ws, &customer(1, 20, &text)).await;
        expect_push(&mut staff, &text, "customer message").await;
    }
}

#[tokio::test]
async fn messages_of_a_sender_that_closes_at_once_reach_online_receivers() {
    for ws in [false, true] {
        let s = TestServer::start_with(|c| c.server.kefu_appid = KEFU)
            .await
            .unwrap();
        every_kind(&s, ws).await;
        s.stop().await;
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_same_when_messages_are_stored_on_a_store_node() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, repl, http_addr) = (free_addr(), free_addr(), free_addr());
    let cfg = dir.path().join("ims.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"{listen}\"\nreplication_listen = \"{repl}\"\nhttp_listen = \"{http_addr}\"\n",
            dir.path().join("ims-data")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("ims.log")).unwrap();
    let _ims = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_banter"))
            .args(["ims", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn banter ims"),
    );
    let mut up = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(http_addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up,
        "banter ims did not start: {}",
        std::fs::read_to_string(dir.path().join("ims.log")).unwrap_or_default()
    );
    for ws in [false, true] {
        let s = TestServer::start_with(|c| {
            c.server.kefu_appid = KEFU;
            c.cluster.storage_addrs = vec![listen.to_string()];
        })
        .await
        .unwrap();
        every_kind(&s, ws).await;
        s.stop().await;
    }
    // Nothing was delivered that was not stored, and nothing stored twice.
    let s = TestServer::start_with(|c| c.cluster.storage_addrs = vec![listen.to_string()])
        .await
        .unwrap();
    let mut r = login_app(&s, APPID, 2, false).await;
    let (msgs, _) = r.sync_all(0).await;
    let peers = msgs
        .iter()
        .filter(|f| f.cmd == cmd::IM)
        .filter(|f| im_of(f).receiver == 2)
        .count();
    assert_eq!(peers, 2 * ROUNDS, "every peer message is stored once");
    s.stop().await;
}
