//! Raw TLS and WebSocket-over-TLS listeners serve the same sessions as TCP.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::{SinkExt, StreamExt};
use proto::{cmd, Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

fn auth_frame(token: &str) -> BytesMut {
    let mut b = BytesMut::new();
    Body::AuthToken(proto::AuthToken {
        platform_id: 2,
        token: Bytes::copy_from_slice(token.as_bytes()),
        device_id: "tls-dev".into(),
    })
    .encode_frame(1, 2, 0, &mut b);
    Body::Ping.encode_frame(2, 2, 0, &mut b);
    b
}

#[tokio::test]
async fn tls_and_wss_listeners_authenticate_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let s = TestServer::start_with(|c| {
        c.server.tls = "127.0.0.1:0".into();
        c.server.wss = "127.0.0.1:0".into();
        c.server.cert_file = cert_path.display().to_string();
        c.server.key_file = key_path.display().to_string();
    })
    .await
    .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // Raw TLS: the same framing inside TLS.
    let token = grant(&s, 1).await;
    let tcp = tokio::net::TcpStream::connect(s.tls.unwrap())
        .await
        .unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(&auth_frame(&token)).await.unwrap();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        if let Some(f) = Frame::decode(&mut buf, 1 << 16).unwrap() {
            frames.push(f);
            continue;
        }
        assert!(
            tls.read_buf(&mut buf).await.unwrap() > 0,
            "tls closed early"
        );
    }
    assert_eq!(frames[0].cmd, cmd::AUTH_STATUS);
    assert_eq!(body_of(&frames[0]), Body::AuthStatus(0));
    assert_eq!(frames[1].cmd, cmd::PONG);

    // WSS: one frame per binary message on /ws.
    let tcp = tokio::net::TcpStream::connect(s.wss.unwrap())
        .await
        .unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/ws", s.wss.unwrap().port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let token = grant(&s, 2).await;
    let mut auth = BytesMut::new();
    Body::AuthToken(proto::AuthToken {
        platform_id: 3,
        token: token.into(),
        device_id: Bytes::new(),
    })
    .encode_frame(1, 1, 0, &mut auth);
    ws.send(Message::Binary(auth.freeze())).await.unwrap();
    let reply = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => break b,
            _ => continue,
        }
    };
    let f = Frame::decode(&mut BytesMut::from(&reply[..]), 1 << 16)
        .unwrap()
        .unwrap();
    assert_eq!(body_of(&f), Body::AuthStatus(0));
    s.stop().await;
}

#[tokio::test]
async fn tls_without_certificate_is_a_configuration_error() {
    let r = TestServer::start_with(|c| c.server.tls = "127.0.0.1:0".into()).await;
    let e = r.err().expect("must fail");
    assert!(e.to_string().contains("cert_file"), "{e}");
}

/// One login deadline runs from accept to authentication on every listener: a client whose TLS
/// handshake (or WebSocket upgrade) is slow has only what is left of `login_timeout_secs` to
/// authenticate, not a fresh period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_deadline_from_accept_for_tls_wss_and_ws() {
    use std::time::Duration;
    use tokio::time::Instant;
    const LOGIN: Duration = Duration::from_secs(4);
    const STALL: Duration = Duration::from_secs(3);
    // Closed at LOGIN from accept; with the deadline applied twice it would be STALL + LOGIN.
    const LATEST: Duration = Duration::from_millis(6000);

    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let s = TestServer::start_with(|c| {
        c.server.tls = "127.0.0.1:0".into();
        c.server.wss = "127.0.0.1:0".into();
        c.server.cert_file = cert_path.display().to_string();
        c.server.key_file = key_path.display().to_string();
        c.server.login_timeout_secs = LOGIN.as_secs();
    })
    .await
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    let tls = async {
        let tcp = tokio::net::TcpStream::connect(s.tls.unwrap())
            .await
            .unwrap();
        let opened = Instant::now();
        tokio::time::sleep(STALL).await;
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(LATEST * 2, tls.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "tls: {r:?}");
        opened.elapsed()
    };
    let wss = async {
        let tcp = tokio::net::TcpStream::connect(s.wss.unwrap())
            .await
            .unwrap();
        let opened = Instant::now();
        tokio::time::sleep(STALL).await;
        let tls = connector.connect(name.clone(), tcp).await.unwrap();
        let url = format!("wss://localhost:{}/ws", s.wss.unwrap().port());
        let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        let end = tokio::time::timeout(LATEST * 2, async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(end.is_ok(), "wss still open");
        opened.elapsed()
    };
    let ws = async {
        let tcp = tokio::net::TcpStream::connect(s.ws).await.unwrap();
        let opened = Instant::now();
        tokio::time::sleep(STALL).await;
        let (mut ws, _) = tokio_tungstenite::client_async(s.ws_url(), tcp)
            .await
            .unwrap();
        let end = tokio::time::timeout(LATEST * 2, async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(end.is_ok(), "ws still open");
        opened.elapsed()
    };
    let (tls, wss, ws) = tokio::join!(tls, wss, ws);
    eprintln!("closed after: tls {tls:?}, wss {wss:?}, ws {ws:?} (login timeout {LOGIN:?}, stalled {STALL:?})");
    for (what, lived) in [("tls", tls), ("wss", wss), ("ws", ws)] {
        assert!(
            lived >= LOGIN - Duration::from_millis(100) && lived < LATEST,
            "{what}: closed after {lived:?}, want about {LOGIN:?}"
        );
    }
    s.stop().await;
}
