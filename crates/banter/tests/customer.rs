//! Customer-service messages (MSG_CUSTOMER_V2) between a customer app and the service app, both ways.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use bytes::Bytes;
use common::*;
use proto::{cmd, flag, AckStatus, Body, Customer};

const KEFU: i64 = 1453;

async fn login_app(s: &TestServer, appid: i64, uid: i64) -> Client {
    let (st, v) = post_json(
        s.http,
        "/auth/grant",
        &serde_json::json!({"appid": appid, "uid": uid}),
    )
    .await;
    assert_eq!(st, 200);
    let mut c = Client::tcp(s.tcp).await;
    assert_eq!(
        c.auth(
            v["token"].as_str().unwrap(),
            2,
            proto::Platform::ANDROID,
            "d"
        )
        .await,
        0
    );
    c
}

fn customer(sa: i64, s: i64, ra: i64, r: i64, text: &str) -> Body {
    Body::Customer(Customer {
        sender_appid: sa,
        sender: s,
        receiver_appid: ra,
        receiver: r,
        timestamp: 0,
        content: Bytes::copy_from_slice(text.as_bytes()),
    })
}

#[tokio::test]
async fn customer_messages_both_ways_are_pushed_and_synced() {
    let s = TestServer::start_with(|c| c.server.kefu_appid = KEFU)
        .await
        .unwrap();
    let mut customer_user = login_app(&s, APPID, 10).await;
    let mut staff = login_app(&s, KEFU, 20).await;

    customer_user
        .send_body(&customer(APPID, 10, KEFU, 20, "help"), flag::TEXT)
        .await;
    let (ack, before) = customer_user.recv_until(cmd::ACK).await;
    assert_eq!(before.last().unwrap().cmd, cmd::METADATA);
    assert_eq!(ack.body.len(), 5);
    let (m, before) = staff.recv_until(cmd::CUSTOMER_V2).await;
    assert_eq!(before.last().unwrap().cmd, cmd::METADATA);
    assert_eq!(m.flag & flag::PUSH, flag::PUSH);

    staff
        .send_body(&customer(KEFU, 20, APPID, 10, "on it"), 0)
        .await;
    staff.recv_until(cmd::ACK).await;
    let (m, _) = customer_user.recv_until(cmd::CUSTOMER_V2).await;
    let Body::Customer(c) = body_of(&m) else {
        unreachable!()
    };
    assert_eq!(
        (c.sender_appid, c.sender, &c.content[..]),
        (KEFU, 20, &b"on it"[..])
    );

    // Both sides hold both messages in their own queues.
    for c in [&mut customer_user, &mut staff] {
        let (msgs, _) = c.sync(0).await;
        assert_eq!(msgs.len(), 2);
        assert!(msgs
            .iter()
            .all(|f| f.cmd == cmd::CUSTOMER_V2 && f.flag & flag::PUSH == 0));
        assert_eq!(msgs.iter().filter(|f| f.flag & flag::SELF != 0).count(), 1);
    }

    // HTTP post, then it is in the receiver's history.
    let (st, _) = post_json(s.http, "/post_customer_message", &serde_json::json!({"sender_appid": KEFU, "sender": 20, "receiver_appid": APPID, "receiver": 10, "content": "api"})).await;
    assert_eq!(st, 200);
    let (_, body) = http(
        s.http,
        "GET",
        "/load_latest_message?appid=7&uid=10&limit=10",
        &[],
        b"",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last = v["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"], "api");
    assert_eq!(last["sender_appid"], KEFU);
    s.stop().await;
}

#[tokio::test]
async fn customer_messages_outside_the_service_app_are_refused() {
    let s = TestServer::start_with(|c| c.server.kefu_appid = KEFU)
        .await
        .unwrap();
    let mut a = login_app(&s, APPID, 10).await;
    let seq = a.send_body(&customer(APPID, 10, 8, 20, "no"), 0).await;
    let (ack, _) = a.recv_until(cmd::ACK).await;
    assert_eq!(
        body_of(&ack),
        Body::Ack(proto::Ack {
            seq,
            status: AckStatus::NOT_ALLOWED
        })
    );
    let seq = a
        .send_body(&customer(APPID, 11, KEFU, 20, "spoof"), 0)
        .await;
    let (ack, _) = a.recv_until(cmd::ACK).await;
    assert_eq!(
        body_of(&ack),
        Body::Ack(proto::Ack {
            seq,
            status: AckStatus::INVALID_SENDER
        })
    );
    s.stop().await;
}
