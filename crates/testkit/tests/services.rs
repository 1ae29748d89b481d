//! Starts and stops each private service and checks it answers on its port.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn redis_starts_answers_and_stops() {
    let redis = testkit::RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s.write_all(b"SET k v\r\nGET k\r\n").expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"v\r\n") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "redis closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+OK\r\n$1\r\nv\r\n");
    drop(s);
    drop(redis);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "redis still listening after drop"
    );
}

#[test]
fn mariadb_starts_creates_test_db_and_stops() {
    let db = testkit::MariaDb::start();
    let port = db.port();
    assert_eq!(db.url(), format!("mysql://root@127.0.0.1:{port}/test"));
    // The database `test` exists: ask the command-line client over TCP when it is installed,
    // else check the server greets on the port.
    match std::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "-u",
            "root",
            "-N",
            "-e",
        ])
        .arg("SHOW DATABASES LIKE 'test'")
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "mariadb client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "test");
        }
        Err(_) => {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to mariadb");
            let mut greeting = [0u8; 5];
            s.read_exact(&mut greeting).expect("greeting");
            assert_eq!(greeting[4], 10);
        }
    }
    drop(db);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "mariadb still listening after drop"
    );
}

#[test]
fn s3_server_starts_creates_buckets_and_stops() {
    let s3 = testkit::S3Server::start();
    let port = s3.port();
    assert_eq!(s3.endpoint(), format!("http://127.0.0.1:{port}"));
    s3.create_bucket("testkit-bucket");
    // The bucket is listed by the service.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to s3");
    s.write_all(
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.contains("<Name>testkit-bucket</Name>"), "{out}");
    drop(s3);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "s3 server still listening after drop"
    );
}
