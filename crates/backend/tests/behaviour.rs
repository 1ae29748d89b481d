//! The same behaviour checks against both backend variants: embedded (SQLite in a temp dir) and
//! Redis (a private `redis-server` from testkit). Real files, real sockets.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backend::{
    AuthInfo, Backend, BackendError, EmbeddedOptions, JwtOptions, RedisOptions, UserFlags,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const GLOBAL_SECRET: &str = "global-secret";
const APP7_SECRET: &str = "secret-of-app-7";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Embedded,
    Redis,
}

/// Keeps the temp dir or the redis-server alive for the test.
enum Fixture {
    Dir(tempfile::TempDir),
    Redis(testkit::RedisServer),
}

fn jwt_options() -> JwtOptions {
    JwtOptions {
        secret: Some(GLOBAL_SECRET.to_owned()),
        app_secrets: BTreeMap::from([(7, APP7_SECRET.to_owned())]),
    }
}

async fn open(kind: Kind) -> (Backend, Fixture) {
    match kind {
        Kind::Embedded => {
            let dir = tempfile::tempdir().expect("tempdir");
            let backend = Backend::open_embedded(EmbeddedOptions {
                path: dir.path().join("nested/dir/backend.sqlite3"),
                jwt: jwt_options(),
                flush_interval_ms: 50,
            })
            .await
            .expect("open embedded");
            (backend, Fixture::Dir(dir))
        }
        Kind::Redis => {
            let server = testkit::RedisServer::start();
            let backend = Backend::open_redis(RedisOptions {
                url: server.url(),
                jwt: jwt_options(),
                flush_interval_ms: 50,
            })
            .await
            .expect("open redis");
            (backend, Fixture::Redis(server))
        }
    }
}

async fn raw_redis(server: &testkit::RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn jwt(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode jwt")
}

/// Runs one async check against both variants, as `<name>::embedded` and `<name>::redis`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::Kind::Embedded).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::Kind::Redis).await;
            }
        }
    )*};
}

both!(
    grant_authenticate_revoke,
    unknown_tokens,
    grant_rejects_bad_ids,
    jwt_tokens,
    user_flags,
    device_ids,
    sync_keys,
    sync_keys_concurrent,
    unread_counts,
    background_flush,
    expiring_tokens,
    revoke_every_token_of_a_user,
);

async fn expiring_tokens(kind: Kind) {
    let (b, _fx) = open(kind).await;
    let short = b.grant_expiring(7, 1, "s", Some(1)).await.expect("grant");
    let long = b
        .grant_expiring(7, 1, "l", Some(3600))
        .await
        .expect("grant");
    assert!(b.authenticate(&short).await.expect("auth").is_some());
    // Twice, so the embedded cache holds it when it expires.
    assert!(b.authenticate(&short).await.expect("auth").is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(b.authenticate(&short).await.expect("auth"), None, "expired");
    assert!(b.authenticate(&long).await.expect("auth").is_some());
    assert!(matches!(
        b.grant_expiring(7, 1, "z", Some(0)).await,
        Err(BackendError::InvalidArgument(_))
    ));
}

async fn revoke_every_token_of_a_user(kind: Kind) {
    let (b, _fx) = open(kind).await;
    let mine: Vec<String> = grant_n(&b, 7, 41, 3).await;
    let same_uid_other_app = b.grant(8, 41, "").await.expect("grant");
    let other_user = b.grant(7, 42, "").await.expect("grant");
    for t in &mine {
        assert!(b.authenticate(t).await.expect("auth").is_some());
    }
    assert_eq!(b.revoke_user(7, 41).await.expect("revoke_user"), 3);
    for t in &mine {
        assert_eq!(b.authenticate(t).await.expect("auth"), None);
    }
    assert!(b
        .authenticate(&same_uid_other_app)
        .await
        .expect("auth")
        .is_some());
    assert!(b.authenticate(&other_user).await.expect("auth").is_some());
    assert_eq!(b.revoke_user(7, 41).await.expect("again"), 0);
    assert!(matches!(
        b.revoke_user(7, 0).await,
        Err(BackendError::InvalidArgument(_))
    ));
}

async fn grant_n(b: &Backend, appid: i64, uid: i64, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(b.grant(appid, uid, &format!("t{i}")).await.expect("grant"));
    }
    out
}

async fn grant_authenticate_revoke(kind: Kind) {
    let (b, _fx) = open(kind).await;
    let token = b.grant(7, 1001, "alice").await.expect("grant");
    assert!(token.len() >= 32 && token.len() <= 255, "{token}");
    assert!(token
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    let expected = AuthInfo {
        appid: 7,
        uid: 1001,
        user_name: "alice".to_owned(),
    };
    assert_eq!(
        b.authenticate(&token).await.expect("auth"),
        Some(expected.clone())
    );
    // Twice: the second one is served by the cache in embedded mode.
    assert_eq!(b.authenticate(&token).await.expect("auth"), Some(expected));
    let other = b.grant(7, 1002, "").await.expect("grant");
    assert_ne!(token, other);

    assert_eq!(b.revoke(&token).await.expect("revoke"), Some((7, 1001)));
    assert_eq!(
        b.authenticate(&token).await.expect("auth after revoke"),
        None
    );
    assert_eq!(b.revoke(&token).await.expect("second revoke"), None);
    // The other token still works.
    assert_eq!(
        b.authenticate(&other).await.expect("auth").map(|i| i.uid),
        Some(1002)
    );
}

async fn unknown_tokens(kind: Kind) {
    let (b, _fx) = open(kind).await;
    for token in [
        "",
        "nope",
        "a.b.c",
        &"x".repeat(5000),
        "with space",
        "é\u{0}",
    ] {
        assert_eq!(
            b.authenticate(token).await.expect("auth"),
            None,
            "{token:?}"
        );
    }
}

async fn grant_rejects_bad_ids(kind: Kind) {
    let (b, _fx) = open(kind).await;
    for (appid, uid) in [(0, 1), (1, 0), (-1, 5), (5, -1)] {
        let err = b.grant(appid, uid, "x").await.expect_err("must reject");
        assert!(matches!(err, BackendError::InvalidArgument(_)), "{err}");
    }
    assert!(matches!(
        b.set_forbidden(0, 0, true).await,
        Err(BackendError::InvalidArgument(_))
    ));
    assert!(matches!(
        b.device_id(&"d".repeat(5000), 1).await,
        Err(BackendError::InvalidArgument(_))
    ));
}

async fn jwt_tokens(kind: Kind) {
    let (b, _fx) = open(kind).await;
    let t = now();
    // Per-app secret for app 7, all three HMAC algorithms.
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = jwt(
            alg,
            APP7_SECRET,
            json!({"appid": 7, "uid": 42, "exp": t + 600, "iat": t}),
        );
        assert_eq!(
            b.authenticate(&token).await.expect("auth"),
            Some(AuthInfo {
                appid: 7,
                uid: 42,
                user_name: String::new()
            }),
            "{alg:?}"
        );
    }
    // The global secret for apps without their own; floats that are whole numbers count.
    let token = jwt(
        Algorithm::HS256,
        GLOBAL_SECRET,
        json!({"appid": 8.0, "uid": 43, "user_name": "bob"}),
    );
    assert_eq!(
        b.authenticate(&token).await.expect("auth"),
        Some(AuthInfo {
            appid: 8,
            uid: 43,
            user_name: "bob".to_owned()
        })
    );
    // App 7 has its own secret: the global one is not accepted for it.
    let token = jwt(
        Algorithm::HS256,
        GLOBAL_SECRET,
        json!({"appid": 7, "uid": 42}),
    );
    assert_eq!(
        b.authenticate(&token).await.expect("auth"),
        None,
        "global secret for app 7"
    );

    let rejected = [
        (
            "bad signature",
            jwt(Algorithm::HS256, "wrong", json!({"appid": 8, "uid": 1})),
        ),
        (
            "expired",
            jwt(
                Algorithm::HS256,
                GLOBAL_SECRET,
                json!({"appid": 8, "uid": 1, "exp": t - 5}),
            ),
        ),
        (
            "not yet valid",
            jwt(
                Algorithm::HS256,
                GLOBAL_SECRET,
                json!({"appid": 8, "uid": 1, "nbf": t + 600}),
            ),
        ),
        (
            "issued in the future",
            jwt(
                Algorithm::HS256,
                GLOBAL_SECRET,
                json!({"appid": 8, "uid": 1, "iat": t + 600}),
            ),
        ),
        (
            "missing uid",
            jwt(Algorithm::HS256, GLOBAL_SECRET, json!({"appid": 8})),
        ),
        (
            "uid 0",
            jwt(
                Algorithm::HS256,
                GLOBAL_SECRET,
                json!({"appid": 8, "uid": 0}),
            ),
        ),
        (
            "string uid",
            jwt(
                Algorithm::HS256,
                GLOBAL_SECRET,
                json!({"appid": 8, "uid": "5"}),
            ),
        ),
        (
            "malformed exp",
            jwt(
                Algorithm::HS256,
                GLOBAL_SECRET,
                json!({"appid": 8, "uid": 1, "exp": "soon"}),
            ),
        ),
    ];
    for (why, token) in rejected {
        assert_eq!(b.authenticate(&token).await.expect("auth"), None, "{why}");
    }

    // Wrong algorithms: an ES256 header with an HMAC-made signature, and alg "none".
    let good = jwt(
        Algorithm::HS256,
        GLOBAL_SECRET,
        json!({"appid": 8, "uid": 1}),
    );
    let mut parts = good.split('.');
    let (_, payload, sig) = (
        parts.next(),
        parts.next().expect("payload"),
        parts.next().expect("sig"),
    );
    for header in [
        r#"{"alg":"ES256","typ":"JWT"}"#,
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"RS256"}"#,
    ] {
        let h = base64url(header.as_bytes());
        for token in [format!("{h}.{payload}.{sig}"), format!("{h}.{payload}.")] {
            assert_eq!(
                b.authenticate(&token).await.expect("auth"),
                None,
                "{header}"
            );
        }
    }
}

fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

async fn user_flags(kind: Kind) {
    let (b, _fx) = open(kind).await;
    assert_eq!(
        b.user_flags(7, 1).await.expect("flags"),
        UserFlags::default()
    );
    b.set_forbidden(7, 1, true).await.expect("set");
    assert_eq!(
        b.user_flags(7, 1).await.expect("flags"),
        UserFlags {
            forbidden: true,
            notification_on: false
        }
    );
    b.set_notification_on(7, 1, true).await.expect("set");
    assert_eq!(
        b.user_flags(7, 1).await.expect("flags"),
        UserFlags {
            forbidden: true,
            notification_on: true
        }
    );
    b.set_forbidden(7, 1, false).await.expect("set");
    assert_eq!(
        b.user_flags(7, 1).await.expect("flags"),
        UserFlags {
            forbidden: false,
            notification_on: true
        }
    );
    // Other users and apps are untouched.
    assert_eq!(
        b.user_flags(7, 2).await.expect("flags"),
        UserFlags::default()
    );
    assert_eq!(
        b.user_flags(8, 1).await.expect("flags"),
        UserFlags::default()
    );
}

async fn device_ids(kind: Kind) {
    let (b, _fx) = open(kind).await;
    let a1 = b.device_id("device-a", 1).await.expect("id");
    assert!(a1 > 0);
    assert_eq!(b.device_id("device-a", 1).await.expect("id"), a1, "stable");
    let a2 = b.device_id("device-a", 2).await.expect("id");
    let bb = b.device_id("device-b", 1).await.expect("id");
    assert!(a2 != a1 && bb != a1 && bb != a2, "distinct: {a1} {a2} {bb}");

    // Concurrent first logins of one new device all get the same id.
    let b = Arc::new(b);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.device_id("device-new", 2).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("join").expect("id"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(![a1, a2, bb].contains(&ids[0]));
}

async fn sync_keys(kind: Kind) {
    let (b, _fx) = open(kind).await;
    assert_eq!(b.sync_key(7, 1).await.expect("key"), 0);
    assert_eq!(b.group_sync_key(7, 1, 99).await.expect("key"), 0);
    b.report_sync_key(7, 1, 100);
    b.report_sync_key(7, 1, 50);
    b.report_sync_key(7, 1, -3);
    b.report_group_sync_key(7, 1, 99, 500);
    b.report_group_sync_key(7, 1, 99, 400);
    b.report_group_sync_key(7, 1, 98, 1);
    // Seen before any flush.
    assert_eq!(b.sync_key(7, 1).await.expect("key"), 100);
    assert_eq!(b.group_sync_key(7, 1, 99).await.expect("key"), 500);
    b.flush().await.expect("flush");
    assert_eq!(b.sync_key(7, 1).await.expect("key"), 100);
    assert_eq!(b.group_sync_key(7, 1, 99).await.expect("key"), 500);
    assert_eq!(b.group_sync_key(7, 1, 98).await.expect("key"), 1);
    // A smaller key after the flush does not lower the stored one.
    b.report_sync_key(7, 1, 60);
    b.flush().await.expect("flush");
    assert_eq!(b.sync_key(7, 1).await.expect("key"), 100);
    // Large keys compare exactly (beyond 2^53).
    let big = (1i64 << 62) + 1;
    b.report_sync_key(7, 2, big);
    b.flush().await.expect("flush");
    b.report_sync_key(7, 2, big - 1);
    b.flush().await.expect("flush");
    assert_eq!(b.sync_key(7, 2).await.expect("key"), big);
    assert_eq!(b.sync_key(7, 3).await.expect("key"), 0, "other user");
}

async fn sync_keys_concurrent(kind: Kind) {
    let (b, _fx) = open(kind).await;
    // Interleaved, out-of-order keys from four tasks, with flushes in between.
    let key_of = |t: i64, i: i64| {
        if i % 2 == 0 {
            4 * i + t + 1
        } else {
            2000 - 4 * i - t
        }
    };
    let max = (0..4)
        .flat_map(|t| (0..500).map(move |i| key_of(t, i)))
        .max()
        .expect("keys");
    let reporters: Vec<_> = (0..4i64)
        .map(|t| {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..500i64 {
                    let key = key_of(t, i);
                    b.report_sync_key(7, 1, key);
                    b.report_group_sync_key(7, 1, 5, key);
                    if i % 100 == 0 {
                        b.flush().await.expect("flush");
                    }
                }
            })
        })
        .collect();
    for r in reporters {
        r.await.expect("join");
    }
    b.flush().await.expect("flush");
    assert_eq!(b.sync_key(7, 1).await.expect("key"), max);
    assert_eq!(b.group_sync_key(7, 1, 5).await.expect("key"), max);
}

async fn unread_counts(kind: Kind) {
    let (b, _fx) = open(kind).await;
    assert_eq!(b.unread(7, 1).await.expect("unread"), 0);
    b.set_unread(7, 1, 5);
    assert_eq!(b.unread(7, 1).await.expect("unread"), 5);
    b.flush().await.expect("flush");
    assert_eq!(b.unread(7, 1).await.expect("unread"), 5);
    b.set_unread(7, 1, 9);
    b.set_unread(7, 1, 0);
    b.flush().await.expect("flush");
    assert_eq!(
        b.unread(7, 1).await.expect("unread"),
        0,
        "last value wins, even when lower"
    );
}

async fn background_flush(kind: Kind) {
    let (b, fx) = open(kind).await;
    b.report_sync_key(7, 1, 77);
    b.set_unread(7, 1, 3);
    // The flusher (every 50 ms) persists without an explicit flush.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let persisted = match &fx {
            Fixture::Redis(server) => {
                let mut conn = raw_redis(server).await;
                let v: Option<i64> = redis::AsyncCommands::hget(&mut conn, "users_7_1", "sync_key")
                    .await
                    .expect("hget");
                v == Some(77)
            }
            Fixture::Dir(dir) => {
                // A second handle on the same file sees only what was persisted.
                let other = Backend::open_embedded(EmbeddedOptions {
                    path: dir.path().join("nested/dir/backend.sqlite3"),
                    ..EmbeddedOptions::default()
                })
                .await
                .expect("reopen");
                other.sync_key(7, 1).await.expect("key") == 77
                    && other.unread(7, 1).await.expect("unread") == 3
            }
        };
        if persisted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not flushed in the background"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = EmbeddedOptions {
        path: dir.path().join("b.sqlite3"),
        jwt: JwtOptions::default(),
        flush_interval_ms: 60_000,
    };
    let (token, device) = {
        let b = Backend::open_embedded(opts.clone()).await.expect("open");
        let token = b.grant(7, 5, "carol").await.expect("grant");
        b.set_forbidden(7, 5, true).await.expect("set");
        b.report_sync_key(7, 5, 1234);
        b.report_group_sync_key(7, 5, 9, 4321);
        b.set_unread(7, 5, 2);
        let device = b.device_id("phone", 1).await.expect("device");
        b.flush().await.expect("flush");
        (token, device)
    };
    let b = Backend::open_embedded(opts).await.expect("reopen");
    assert_eq!(
        b.authenticate(&token)
            .await
            .expect("auth")
            .map(|i| (i.appid, i.uid)),
        Some((7, 5))
    );
    assert!(b.user_flags(7, 5).await.expect("flags").forbidden);
    assert_eq!(b.sync_key(7, 5).await.expect("key"), 1234);
    assert_eq!(b.group_sync_key(7, 5, 9).await.expect("key"), 4321);
    assert_eq!(b.unread(7, 5).await.expect("unread"), 2);
    assert_eq!(b.device_id("phone", 1).await.expect("device"), device);
    assert_ne!(b.device_id("tablet", 1).await.expect("device"), device);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_stores_only_token_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.sqlite3");
    let b = Backend::open_embedded(EmbeddedOptions {
        path: path.clone(),
        ..EmbeddedOptions::default()
    })
    .await
    .expect("open");
    let token = b.grant(7, 5, "dave").await.expect("grant");
    b.flush().await.expect("flush");
    drop(b);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("read dir") {
        bytes.extend(std::fs::read(entry.expect("entry").path()).expect("read file"));
    }
    // The row is there (its user name is stored in clear)…
    assert!(
        bytes.windows(4).any(|w| w == b"dave"),
        "row not found in the database files"
    );
    // …but the token is not.
    let needle = token.as_bytes();
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle),
        "token stored in clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gobelieve_written_data() {
    let server = testkit::RedisServer::start();
    let mut conn = raw_redis(&server).await;
    redis::cmd("HSET")
        .arg("access_token_x")
        .arg("user_id")
        .arg(5)
        .arg("app_id")
        .arg(7)
        .exec_async(&mut conn)
        .await
        .expect("hset");
    redis::cmd("HSET")
        .arg("access_token_named")
        .arg(&["user_id", "6", "app_id", "7", "user_name", "eve"])
        .exec_async(&mut conn)
        .await
        .expect("hset");
    redis::cmd("HSET")
        .arg("access_token_zero")
        .arg(&["app_id", "7"])
        .exec_async(&mut conn)
        .await
        .expect("hset");
    redis::cmd("HSET")
        .arg("users_7_5")
        .arg(&[
            "forbidden",
            "1",
            "notification_on",
            "0",
            "sync_key",
            "not-a-number",
        ])
        .exec_async(&mut conn)
        .await
        .expect("hset");
    redis::cmd("SET")
        .arg("devices_id")
        .arg(40)
        .exec_async(&mut conn)
        .await
        .expect("set");
    redis::cmd("SET")
        .arg("devices_old_1")
        .arg(3)
        .exec_async(&mut conn)
        .await
        .expect("set");

    let b = Backend::open_redis(RedisOptions {
        url: server.url(),
        ..RedisOptions::default()
    })
    .await
    .expect("open");
    assert_eq!(
        b.authenticate("x").await.expect("auth"),
        Some(AuthInfo {
            appid: 7,
            uid: 5,
            user_name: String::new()
        })
    );
    assert_eq!(
        b.authenticate("named")
            .await
            .expect("auth")
            .map(|i| i.user_name),
        Some("eve".to_owned())
    );
    assert_eq!(
        b.authenticate("zero").await.expect("auth"),
        None,
        "missing user_id reads as 0"
    );
    assert_eq!(
        b.user_flags(7, 5).await.expect("flags"),
        UserFlags {
            forbidden: true,
            notification_on: false
        }
    );
    // Existing device ids are kept; new ones continue GoBelieve's counter.
    assert_eq!(b.device_id("old", 1).await.expect("device"), 3);
    assert_eq!(b.device_id("new", 1).await.expect("device"), 41);
    // A garbage sync key reads as no hint and is overwritten by the first report.
    assert_eq!(b.sync_key(7, 5).await.expect("key"), 0);
    b.report_sync_key(7, 5, 9);
    b.flush().await.expect("flush");
    let v: String = redis::AsyncCommands::hget(&mut conn, "users_7_5", "sync_key")
        .await
        .expect("hget");
    assert_eq!(v, "9");

    // What banter writes is what GoBelieve reads.
    let token = b.grant(7, 8, "frank").await.expect("grant");
    let fields: BTreeMap<String, String> =
        redis::AsyncCommands::hgetall(&mut conn, format!("access_token_{token}"))
            .await
            .expect("hgetall");
    assert_eq!(
        fields,
        BTreeMap::from([
            ("app_id".to_owned(), "7".to_owned()),
            ("user_id".to_owned(), "8".to_owned()),
            ("user_name".to_owned(), "frank".to_owned()),
        ])
    );
    b.report_group_sync_key(7, 8, 3, 12);
    b.set_unread(7, 8, 4);
    b.flush().await.expect("flush");
    let (g, u): (String, String) = redis::cmd("HMGET")
        .arg("users_7_8")
        .arg(&["group_sync_key_3", "unread"])
        .query_async(&mut conn)
        .await
        .expect("hmget");
    assert_eq!((g.as_str(), u.as_str()), ("12", "4"));
    let d: String = redis::AsyncCommands::get(&mut conn, "devices_new_1")
        .await
        .expect("get");
    assert_eq!(d, "41");

    // A token deleted by the API server stops working at once.
    redis::cmd("DEL")
        .arg("access_token_x")
        .exec_async(&mut conn)
        .await
        .expect("del");
    assert_eq!(b.authenticate("x").await.expect("auth"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_set_if_greater_is_atomic_across_nodes() {
    // Two access nodes on one Redis flush interleaved keys concurrently: the maximum wins.
    let server = testkit::RedisServer::start();
    let opts = RedisOptions {
        url: server.url(),
        flush_interval_ms: 5,
        ..RedisOptions::default()
    };
    let nodes = [
        Backend::open_redis(opts.clone()).await.expect("open"),
        Backend::open_redis(opts).await.expect("open"),
    ];
    let tasks: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, b)| {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..300i64 {
                    b.report_sync_key(7, 1, 2 * i + n as i64 + 1);
                    if i % 10 == 0 {
                        b.flush().await.expect("flush");
                    }
                }
                b.flush().await.expect("flush");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
    let mut conn = raw_redis(&server).await;
    let v: i64 = redis::AsyncCommands::hget(&mut conn, "users_7_1", "sync_key")
        .await
        .expect("hget");
    assert_eq!(v, 600);
}

#[tokio::test]
async fn redis_unreachable_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let started = std::time::Instant::now();
    let res = Backend::open_redis(RedisOptions {
        url: format!("redis://127.0.0.1:{port}/0"),
        ..RedisOptions::default()
    })
    .await;
    assert!(matches!(res, Err(BackendError::Redis(_))));
    assert!(started.elapsed() < Duration::from_secs(15));
}
