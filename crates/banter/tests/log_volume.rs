//! A failure that refuses every message must not write a log line per message: during an outage the
//! log would otherwise grow by hundreds of thousands of lines (and refill a full disk). Repeated
//! failure lines are rate-limited and say how many were held back.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_addr, post_json, Client, APPID};
use proto::{cmd, AckStatus, Body};

#[tokio::test]
async fn refused_messages_do_not_each_write_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, http) = (free_addr(), free_addr());
    // The store node this access node is told to use is not running: every append fails.
    let nowhere = free_addr();
    let cfg = dir.path().join("banter.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ndir = {:?}\n[server]\ntcp = \"{tcp}\"\nws = \"\"\n[api]\nlisten = \"{http}\"\n[cluster]\nstorage_addrs = [\"{nowhere}\"]\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn banter serve");
    let mut up = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "banter serve did not start");
    let (st, v) = post_json(
        http,
        "/auth/grant",
        &serde_json::json!({"appid": APPID, "uid": 1}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let mut c = Client::tcp(tcp).await;
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
    const MESSAGES: usize = 300;
    for i in 0..MESSAGES {
        c.send_im(1, 2, &format!("m{i}")).await;
    }
    for _ in 0..MESSAGES {
        let (ack, _) = c.recv_until(cmd::ACK).await;
        match common::body_of(&ack) {
            Body::Ack(a) => assert_eq!(a.status, AckStatus::STORAGE_FAILED),
            other => panic!("{other:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        warnings.len() <= 10,
        "{MESSAGES} refused messages wrote {} warning lines:\n{}",
        warnings.len(),
        warnings
            .iter()
            .take(20)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !warnings.is_empty(),
        "the failure is still reported:\n{text}"
    );
}
