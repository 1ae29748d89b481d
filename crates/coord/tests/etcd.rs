//! The etcd client against a real `etcd` on loopback (testkit): keys, compare-and-swap, leases
//! (renewal, expiry, revocation), prefix following through a watch, registration, and an etcd
//! restart survived by a follower.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use coord::{follow_prefix, Etcd, KeptLease, Registration, Snapshot};
use tokio_util::sync::CancellationToken;

fn client(url: &str) -> Etcd {
    Etcd::new(&[url.to_string()], Duration::from_secs(5)).unwrap()
}

/// Waits (generously) until the followed snapshot satisfies `ok`.
async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<(bool, Snapshot)>,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let (ready, snap) = &*rx.borrow_and_update();
            if *ready && ok(snap) {
                return;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

#[tokio::test]
async fn keys_cas_and_leases() {
    let server = testkit::EtcdServer::start();
    let etcd = client(&server.url());
    assert_eq!(etcd.get("/t/a").await.unwrap(), None);
    etcd.put("/t/a", b"one", 0).await.unwrap();
    etcd.put("/t/b", b"two", 0).await.unwrap();
    etcd.put("/u/c", b"other prefix", 0).await.unwrap();
    let kv = etcd.get("/t/a").await.unwrap().unwrap();
    assert_eq!(kv.value, b"one");
    let (_, all) = etcd.get_prefix("/t/").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b"]);

    // compare-and-swap: the first creator wins, the second learns who holds it
    let lease = KeptLease::start(&etcd, Duration::from_secs(2))
        .await
        .unwrap();
    let rev = etcd
        .create("/t/leader", b"n1", lease.id())
        .await
        .unwrap()
        .unwrap();
    let held = etcd
        .create("/t/leader", b"n2", 0)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(held.value, b"n1");
    assert_eq!(held.create_revision, rev);
    assert_eq!(held.lease, lease.id());
    assert!(!etcd.delete_if_created("/t/leader", rev - 1).await.unwrap());

    // a kept lease outlives its TTL several times over
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(lease.valid());
    assert!(etcd.get("/t/leader").await.unwrap().is_some());
    // revoking deletes its keys at once
    lease.revoke().await;
    assert_eq!(etcd.get("/t/leader").await.unwrap(), None);

    // a lease that is not renewed expires with its keys
    let id = etcd.grant(Duration::from_secs(1)).await.unwrap();
    etcd.put("/t/ephemeral", b"x", id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while etcd.get("/t/ephemeral").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(etcd.keep_alive(id).await.unwrap(), None);
    assert!(etcd.delete("/t/a").await.unwrap());
    assert!(!etcd.delete("/t/a").await.unwrap());

    // errors are clear
    assert!(Etcd::new(&[], Duration::from_secs(1)).is_err());
    assert!(Etcd::new(&["127.0.0.1:2379".into()], Duration::from_secs(1)).is_err());
    let dead = client("http://127.0.0.1:9");
    assert!(matches!(
        dead.get("/x").await,
        Err(coord::EtcdError::Unavailable(_))
    ));
}

#[tokio::test]
async fn following_and_registration_survive_an_etcd_restart() {
    let mut server = testkit::EtcdServer::start();
    let etcd = client(&server.url());
    let stop = CancellationToken::new();
    let mut rx = follow_prefix(etcd.clone(), "/f/".into(), stop.clone());
    wait_for(&mut rx, "the first snapshot", |s| s.is_empty()).await;

    let (tx, value) = tokio::sync::watch::channel(b"v1".to_vec());
    let reg = Registration::start(
        etcd.clone(),
        "/f/node-1".into(),
        value,
        Duration::from_secs(2),
    );
    wait_for(&mut rx, "the registration", |s| {
        s.get("/f/node-1").map(|k| k.value.as_slice()) == Some(b"v1")
    })
    .await;
    tx.send_replace(b"v2".to_vec());
    wait_for(&mut rx, "the updated record", |s| {
        s.get("/f/node-1").map(|k| k.value.as_slice()) == Some(b"v2")
    })
    .await;
    etcd.put("/f/static", b"s", 0).await.unwrap();
    etcd.put("/g/elsewhere", b"s", 0).await.unwrap();
    wait_for(&mut rx, "a put", |s| {
        s.contains_key("/f/static") && s.len() == 2
    })
    .await;
    etcd.delete("/f/static").await.unwrap();
    wait_for(&mut rx, "a delete", |s| !s.contains_key("/f/static")).await;

    // etcd goes away and comes back (same data): the follower resumes, the registration
    // (whose lease may have expired meanwhile) is written again
    server.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();
    etcd.put("/f/after", b"a", 0).await.unwrap();
    wait_for(&mut rx, "changes after the restart", |s| {
        s.contains_key("/f/after") && s.contains_key("/f/node-1")
    })
    .await;

    // stopping a registration removes its record at once
    reg.stop().await;
    wait_for(&mut rx, "the record's removal", |s| {
        !s.contains_key("/f/node-1")
    })
    .await;
    stop.cancel();
}
