//! Raw TLS and WebSocket-over-TLS listeners serve the same sessions as TCP.

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
