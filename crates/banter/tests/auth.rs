//! Authentication: good, bad, revoked and JWT tokens; nothing runs before authentication.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::*;
use std::time::Duration;

use proto::{cmd, Body, Platform};

#[tokio::test]
async fn good_token_gets_status_zero_first() {
    let s = TestServer::start().await.unwrap();
    for ws in [false, true] {
        let token = grant(&s, 1).await;
        let mut c = if ws {
            Client::ws(&s).await
        } else {
            Client::tcp(s.tcp).await
        };
        assert_eq!(c.auth(&token, 2, Platform::ANDROID, "dev-a").await, 0);
        // PING still works after auth.
        c.send_body(&Body::Ping, 0).await;
        assert_eq!(c.recv().await.unwrap().cmd, cmd::PONG);
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_token_fails_and_the_socket_stays_open_for_a_retry() {
    let s = TestServer::start().await.unwrap();
    let mut c = Client::tcp(s.tcp).await;
    assert_eq!(c.auth("no-such-token", 1, Platform::ANDROID, "d").await, 1);
    assert_eq!(c.auth("", 1, Platform::ANDROID, "d").await, 1);
    let token = grant(&s, 5).await;
    assert_eq!(c.auth(&token, 1, Platform::ANDROID, "d").await, 0);
    // A repeated AUTH_TOKEN is ignored with no reply: the next frame is the PONG.
    c.send_body(
        &Body::AuthToken(proto::AuthToken {
            platform_id: 2,
            token: token.clone().into(),
            device_id: "d".into(),
        }),
        0,
    )
    .await;
    c.send_body(&Body::Ping, 0).await;
    assert_eq!(c.recv().await.unwrap().cmd, cmd::PONG);
    s.stop().await;
}

#[tokio::test]
async fn revoked_token_is_refused() {
    let s = TestServer::start().await.unwrap();
    let token = grant(&s, 9).await;
    let (st, v) = post_json(s.http, "/auth/revoke", &serde_json::json!({"token": token})).await;
    assert_eq!(st, 200);
    assert_eq!(v["revoked"], true);
    let mut c = Client::tcp(s.tcp).await;
    assert_eq!(c.auth(&token, 2, Platform::IOS, "d").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn jwt_tokens_signed_with_the_app_secret_are_accepted() {
    let s = TestServer::start_with(|c| {
        c.auth.jwt.app_secrets.insert(APPID, "app-7-secret".into());
    })
    .await
    .unwrap();
    let claims = serde_json::json!({"appid": APPID, "uid": 42, "exp": 4_000_000_000u64});
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"app-7-secret"),
    )
    .unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"wrong"),
    )
    .unwrap();
    let mut c = Client::tcp(s.tcp).await;
    assert_eq!(c.auth(&forged, 2, Platform::ANDROID, "d").await, 1);
    assert_eq!(c.auth(&good, 2, Platform::ANDROID, "d").await, 0);
    s.stop().await;
}

#[tokio::test]
async fn commands_before_auth_are_not_executed() {
    let s = TestServer::start().await.unwrap();
    let mut c = Client::tcp(s.tcp).await;
    // An IM, a SYNC and an RT before authentication: no reply, nothing stored.
    c.send_im(1, 2, "sneaky").await;
    c.send_body(&Body::Sync(0), 0).await;
    c.send_body(
        &Body::Rt(proto::Rt {
            sender: 1,
            receiver: 2,
            content: "x".into(),
        }),
        0,
    )
    .await;
    c.send_body(&Body::Ping, 0).await;
    // The only answer is the PONG.
    assert_eq!(c.recv().await.unwrap().cmd, cmd::PONG);
    let mut r = Client::login(&s, 2, 2, false, "r").await;
    let (msgs, _) = r.sync(0).await;
    assert!(msgs.is_empty(), "nothing was stored before auth: {msgs:?}");
    s.stop().await;
}

#[tokio::test]
async fn login_timeout_closes_unauthenticated_connections() {
    let s = TestServer::start_with(|c| c.server.login_timeout_secs = 1)
        .await
        .unwrap();
    let mut idle = Client::tcp(s.tcp).await;
    assert!(idle.closed_within(std::time::Duration::from_secs(5)).await);
    s.stop().await;
}

#[tokio::test]
async fn idle_timeout_closes_silent_sessions() {
    let s = TestServer::start_with(|c| c.server.idle_timeout_secs = 1)
        .await
        .unwrap();
    let mut c = Client::login(&s, 3, 1, false, "d").await;
    assert!(c.closed_within(std::time::Duration::from_secs(5)).await);
    s.stop().await;
}

#[tokio::test]
async fn revoking_a_token_ends_the_sessions_that_logged_in_with_it() {
    let s = TestServer::start().await.unwrap();
    let revoked = grant(&s, 30).await;
    let kept = grant(&s, 30).await;
    let mut a1 = Client::tcp(s.tcp).await;
    assert_eq!(a1.auth(&revoked, 2, Platform::ANDROID, "a1").await, 0);
    let mut a2 = Client::ws(&s).await;
    assert_eq!(a2.auth(&revoked, 2, Platform::WEB, "").await, 0);
    let mut b = Client::tcp(s.tcp).await;
    assert_eq!(b.auth(&kept, 2, Platform::IOS, "b").await, 0);

    let (st, v) = post_json(
        s.http,
        "/auth/revoke",
        &serde_json::json!({"token": revoked}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["revoked"], true);
    assert_eq!(v["sessions_closed"], 2);
    assert!(
        a1.closed_within(Duration::from_secs(5)).await,
        "TCP session ended"
    );
    assert!(
        a2.closed_within(Duration::from_secs(5)).await,
        "WebSocket session ended"
    );
    // The same user's session with another token is untouched and still sends.
    let seq = b.send_im(30, 31, "still here").await;
    let (ack, _) = b.recv_until(cmd::ACK).await;
    assert_eq!(
        body_of(&ack),
        Body::Ack(proto::body::Ack { seq, status: 0 })
    );
    // And the revoked token cannot log in again.
    let mut again = Client::tcp(s.tcp).await;
    assert_eq!(again.auth(&revoked, 2, Platform::ANDROID, "a1").await, 1);
    s.stop().await;
}
