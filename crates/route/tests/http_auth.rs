//! The router's HTTP API behind `http_secret` (`node::admin`): `/healthz` open, everything else
//! needs `Authorization: Bearer <secret>`; without a secret it may only listen on loopback.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::{http_get, TestRouter};
use route::{RouterConfig, RouterError};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn without_a_secret_only_loopback() {
    let c = RouterConfig {
        listen: "127.0.0.1:0".into(),
        http_listen: "0.0.0.0:0".into(),
        ..RouterConfig::default()
    };
    let err = route::run(c, CancellationToken::new())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, RouterError::Exposed(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("http_listen") && text.contains("http_secret"),
        "{text}"
    );

    // With a secret it may listen anywhere.
    let shutdown = CancellationToken::new();
    let running = route::run(
        RouterConfig {
            listen: "127.0.0.1:0".into(),
            http_listen: "0.0.0.0:0".into(),
            http_secret: "s".into(),
            ..RouterConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("starts");
    shutdown.cancel();
    running.wait().await;
}

#[tokio::test]
async fn the_secret_guards_everything_but_healthz() {
    let secret = "router-s3cret";
    let r = TestRouter::start(RouterConfig {
        http_secret: secret.into(),
        ..RouterConfig::default()
    })
    .await;
    assert_eq!(http_get(r.http, "/healthz").await.0, 200);
    let (code, body) = http_get(r.http, "/online?appid=7&uid=1").await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("http_secret"), "{body}");
    assert_eq!(http_get(r.http, "/metrics").await.0, 401);

    let client = node::http_client::client(Duration::from_secs(5)).expect("client");
    let url = format!("http://{}/online?appid=7&uid=1", r.http);
    let ok = client
        .get(&url)
        .bearer_auth(secret)
        .send()
        .await
        .expect("answer");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(
        ok.json::<serde_json::Value>().await.expect("json"),
        serde_json::json!({"online": false})
    );
    let wrong = client
        .get(&url)
        .bearer_auth("not-it")
        .send()
        .await
        .expect("answer");
    assert_eq!(wrong.status().as_u16(), 401);
    r.stop().await;
}
