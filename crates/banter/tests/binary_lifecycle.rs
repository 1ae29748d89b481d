//! The `banter` binary: `banter config` prints a default that `banter serve` accepts, `serve` starts with
//! environment overrides only, and SIGTERM stops it cleanly without losing acknowledged messages.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use proto::cmd;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(data: &std::path::Path, tcp: u16, ws: u16, http: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(["serve", "--data"])
        .arg(data)
        .env("BANTER_SERVER__TCP", format!("127.0.0.1:{tcp}"))
        .env("BANTER_SERVER__WS", format!("127.0.0.1:{ws}"))
        .env("BANTER_API__LISTEN", format!("127.0.0.1:{http}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn banter")
}

async fn wait_healthy(http: u16) {
    let addr = format!("127.0.0.1:{http}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (st, _) = common::http(addr, "GET", "/healthz", &[], b"").await;
            if st == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not become healthy");
}

#[test]
fn config_prints_the_documented_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_banter"))
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[server]") && text.contains("durability = \"always\""));
    // A config file with an unknown key is refused with a message naming it.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nportt = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("portt"));
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_acknowledged_messages_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, ws, http) = (free_port(), free_port(), free_port());
    let mut child = spawn(dir.path(), tcp, ws, http);
    wait_healthy(http).await;
    let http_addr = format!("127.0.0.1:{http}").parse().unwrap();
    let grant = |uid: i64| async move {
        let (_, v) = post_json(
            http_addr,
            "/auth/grant",
            &serde_json::json!({"appid": APPID, "uid": uid}),
        )
        .await;
        v["token"].as_str().unwrap().to_string()
    };
    let mut a = Client::tcp(format!("127.0.0.1:{tcp}").parse().unwrap()).await;
    assert_eq!(a.auth(&grant(1).await, 2, 2, "a").await, 0);
    let token_b = grant(2).await;
    for i in 0..50 {
        a.send_im(1, 2, &format!("m{i}")).await;
    }
    for _ in 0..50 {
        a.recv_until(cmd::ACK).await;
    }
    // SIGTERM: the process exits 0 and closes the session.
    let pid = child.id() as i32;
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(a.closed_within(Duration::from_secs(5)).await);

    // Restarted on the same data, everything acknowledged is there.
    let (tcp, ws, http) = (free_port(), free_port(), free_port());
    let mut child = spawn(dir.path(), tcp, ws, http);
    wait_healthy(http).await;
    let mut b = Client::tcp(format!("127.0.0.1:{tcp}").parse().unwrap()).await;
    assert_eq!(
        b.auth(&token_b, 2, 2, "b").await,
        0,
        "tokens are stored durably"
    );
    let (msgs, _) = b.sync_all(0).await;
    assert_eq!(msgs.len(), 50);
    let _ = child.kill();
    let _ = child.wait();
}
