//! The router's configuration: the documented default file is the default, unknown keys and bad
//! values are rejected, and listeners bind to port 0 in tests.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use route::{default_toml, PushBackend, RouterConfig};
use tokio_util::sync::CancellationToken;

#[test]
fn default_toml_is_the_default() {
    let parsed = RouterConfig::from_toml(default_toml()).expect("parses");
    assert_eq!(parsed, RouterConfig::default());
    assert_eq!(parsed.listen, "0.0.0.0:4444");
    assert_eq!(parsed.http_listen, "127.0.0.1:4445");
    assert_eq!(parsed.push.backend, PushBackend::None);
    assert_eq!(parsed.limits.max_body, 1 << 20);
    assert_eq!(
        RouterConfig::from_toml("").expect("empty is default"),
        RouterConfig::default()
    );
    assert!(RouterConfig::default().problems().is_empty());
}

#[test]
fn unknown_keys_and_bad_values_are_rejected() {
    assert!(RouterConfig::from_toml("lsiten = \"x\"").is_err());
    assert!(RouterConfig::from_toml("[limits]\nmax_bdy = 1").is_err());
    assert!(RouterConfig::from_toml("[push]\nbackend = \"carrier pigeon\"").is_err());
    let c = RouterConfig::from_toml(
        "listen = \"\"\n[push]\nbackend = \"redis\"\n[push.redis]\nurl = \"redis://10.0.0.1/2\"\n[limits]\noutbox_frames = 0\nwrite_timeout_ms = 0\n",
    )
    .expect("parses");
    assert_eq!(c.push.backend, PushBackend::Redis);
    assert_eq!(c.push.redis.url, "redis://10.0.0.1/2");
    let problems = c.problems();
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[tokio::test]
async fn run_reports_bad_config_and_bind_errors() {
    let mut c = RouterConfig::default();
    c.limits.max_connections = 0;
    let err = route::run(c, CancellationToken::new())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("max_connections"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = RouterConfig {
        listen: taken.local_addr().expect("addr").to_string(),
        http_listen: String::new(),
        ..RouterConfig::default()
    };
    let err = route::run(c, CancellationToken::new())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cannot listen"), "{err}");

    let c = RouterConfig {
        listen: "127.0.0.1:0".into(),
        http_listen: String::new(),
        ..RouterConfig::default()
    };
    let shutdown = CancellationToken::new();
    let running = route::run(c, shutdown.clone()).await.expect("starts");
    assert!(running.http_addr.is_none());
    assert_ne!(running.addr.port(), 0);
    assert_eq!(running.connections(), 0);
    shutdown.cancel();
    running.wait().await;
}
