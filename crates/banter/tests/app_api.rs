//! The app API the SDKs call, end to end over real HTTP against `banter serve` with the local-disk
//! media backend: uploads of every kind read back whole and ranged, refusals (401, 403, 413, 415,
//! 429), uploads cut short leave nothing behind, deduplication, signed URLs and public access,
//! device binding visible to the push path (embedded and Redis), supporters, retention, the
//! separate public listener, and an image message between two SDK-like clients.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;
mod media_common;

use std::path::Path;
use std::time::Duration;

use common::{body_of, Client};
use media_common::*;
use proto::{cmd, Body, Im};
use serde_json::json;

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.media.max_image_bytes = 1 << 20;
        c.media.idle_timeout_secs = 2;
    })
    .await
    .expect("server starts")
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

fn spool_dir(s: &TestServer) -> std::path::PathBuf {
    s.data_dir.join("media").join("tmp")
}

#[tokio::test]
async fn uploads_downloads_and_refusals_on_local_disk() {
    let s = server().await;
    core_suite(&s).await;
    assert!(files_under(&spool_dir(&s)).is_empty(), "no spool file left");
    s.stop().await;
}

#[tokio::test]
async fn a_revoked_token_stops_working() {
    let s = server().await;
    let t = token(&s, 7, 5).await;
    let img = png(20, 20, 9);
    let r = upload(s.http, "/v2/images", &t, "image/png", &img).await;
    assert_eq!(r.status, 200);
    let url = r.json()["src_url"].as_str().expect("url").to_string();
    let body = json!({"token": t}).to_string();
    let rv = request(s.http, "POST", "/auth/revoke", &[], body.as_bytes()).await;
    assert_eq!(rv.json()["revoked"], true);
    upload(s.http, "/v2/images", &t, "image/png", &img)
        .await
        .assert_error(401);
    get_url(&url, Some(&t), &[]).await.assert_error(401);
    s.stop().await;
}

#[tokio::test]
async fn oversized_uploads_are_refused_however_they_arrive() {
    let s = server().await;
    let t = token(&s, 7, 6).await;
    let auth = format!("Authorization: Bearer {t}\r\n");
    // Declared far beyond the limit: refused before a byte of the body is read.
    let head = format!(
        "POST /v2/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        500u64 << 20
    );
    send_raw(s.http, head.as_bytes()).await.assert_error(413);
    // Chunked, no length: refused once the limit is passed.
    let data = noise((1 << 20) + 50_000, 11);
    let mut raw = format!(
        "POST /v2/images HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in data.chunks(64 * 1024) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    send_raw(s.http, &raw).await.assert_error(413);
    // Image dimensions beyond the pixel limit are refused too.
    let s2 = TestServer::start_with(|c| c.media.max_image_pixels = 10_000)
        .await
        .expect("server starts");
    let t2 = token(&s2, 7, 6).await;
    upload(s2.http, "/v2/images", &t2, "image/png", &png(200, 100, 1))
        .await
        .assert_error(413);
    let spool = spool_dir(&s);
    eventually("spool files removed", || files_under(&spool).is_empty()).await;
    let objects = s.data_dir.join("media").join("objects");
    assert!(files_under(&objects).is_empty(), "nothing stored");
    s.stop().await;
    s2.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_or_stalls_mid_upload_leaves_nothing_behind() {
    let s = server().await;
    let t = token(&s, 7, 7).await;
    let head = format!(
        "POST /v2/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: application/octet-stream\r\nContent-Length: 600000\r\n\r\n"
    );
    let spool = spool_dir(&s);
    {
        let mut c = tokio::net::TcpStream::connect(s.http)
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut c, head.as_bytes())
            .await
            .expect("head");
        tokio::io::AsyncWriteExt::write_all(&mut c, &noise(200_000, 5))
            .await
            .expect("part of the body");
        // The spool file exists while the upload is under way.
        eventually("the upload to be spooled", || {
            !files_under(&spool).is_empty()
        })
        .await;
        // Gone mid-upload.
    }
    eventually("the abandoned spool to be removed", || {
        files_under(&spool).is_empty()
    })
    .await;
    // A client that stops sending is cut off after media.idle_timeout_secs.
    let mut raw = head.into_bytes();
    raw.extend(noise(100_000, 6));
    let r = send_raw(s.http, &raw).await;
    r.assert_error(408);
    eventually("the stalled spool to be removed", || {
        files_under(&spool).is_empty()
    })
    .await;
    let usage = request(s.http, "GET", "/admin/media/usage?appid=7&uid=7", &[], b"").await;
    assert_eq!(usage.json()["bytes"], 0);
    s.stop().await;
}

#[tokio::test]
async fn the_same_upload_twice_is_stored_once() {
    let s = server().await;
    let t = token(&s, 7, 8).await;
    let data = noise(150_000, 8);
    let (ctype, body) = multipart("file", "a.bin", "application/octet-stream", &data);
    let first = upload(s.http, "/v2/files", &t, &ctype, &body).await;
    let second = upload(s.http, "/v2/files", &t, "application/octet-stream", &data).await;
    assert_eq!(first.json()["src"], second.json()["src"]);
    let objects = s.data_dir.join("media").join("objects").join("7").join("8");
    let stored = files_under(&objects);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        std::fs::read(&stored[0]).expect("stored file"),
        data,
        "stored byte for byte"
    );
    s.stop().await;
}

#[tokio::test]
async fn signed_urls_share_media_outside_the_app_until_they_expire() {
    let s = TestServer::start_with(|c| c.media.signing_secret = "test-signing-key".into())
        .await
        .expect("server starts");
    let t = token(&s, 7, 3).await;
    let voice = amr(5_000, 1);
    let r = upload(s.http, "/v2/audios", &t, "audio/amr", &voice).await;
    let src = r.json()["src"].as_str().expect("src").to_string();
    let auth = format!("Bearer {t}");
    let body = json!({"src": src, "ttl_secs": 600}).to_string();
    let signed = request(
        s.http,
        "POST",
        "/v2/media/sign",
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(
        signed.status,
        200,
        "{}",
        String::from_utf8_lossy(&signed.body)
    );
    let url = signed.json()["url"].as_str().expect("url").to_string();
    let got = get_url(&url, None, &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, voice);
    assert!(got
        .header("cache-control")
        .is_some_and(|c| c.starts_with("public")));
    // Tampered or expired: refused.
    let tampered = url.replace("sig=", "sig=00");
    get_url(&tampered, None, &[]).await.assert_error(403);
    let path = format!("/v2{src}");
    let past = 1_000_000u64;
    let sig = media::sign::sign("test-signing-key", &path, past);
    let expired = format!("http://{}{path}?expires={past}&sig={sig}", s.http);
    get_url(&expired, None, &[]).await.assert_error(403);
    // Another app's user cannot sign this app's media.
    let other = format!("Bearer {}", token(&s, 8, 3).await);
    request(
        s.http,
        "POST",
        "/v2/media/sign",
        &[("Authorization", &other)],
        body.as_bytes(),
    )
    .await
    .assert_error(403);
    s.stop().await;

    // Public media need no token at all.
    let p = TestServer::start_with(|c| c.media.access = media::MediaAccess::Public)
        .await
        .expect("server starts");
    let t = token(&p, 7, 3).await;
    let r = upload(p.http, "/v2/audios", &t, "audio/amr", &voice).await;
    let got = get_url(r.json()["src_url"].as_str().expect("url"), None, &[]).await;
    assert_eq!(got.body, voice);
    p.stop().await;
}

#[tokio::test]
async fn rate_limit_quota_and_retention() {
    let s = TestServer::start_with(|c| {
        c.media.uploads_per_minute = 3;
        c.media.user_quota_mb = 1;
    })
    .await
    .expect("server starts");
    let t = token(&s, 7, 4).await;
    let first = upload(s.http, "/v2/files", &t, "", &noise(700_000, 1)).await;
    assert_eq!(first.status, 200);
    // Over the quota.
    upload(s.http, "/v2/files", &t, "", &noise(700_000, 2))
        .await
        .assert_error(413);
    let small = upload(s.http, "/v2/files", &t, "", &noise(1000, 3)).await;
    assert_eq!(small.status, 200);
    // The fourth upload in a minute.
    let limited = upload(s.http, "/v2/files", &t, "", &noise(1000, 4)).await;
    limited.assert_error(429);
    assert!(limited.header("retry-after").is_some());
    // Retention: the operator deletes the user's media.
    let body = json!({"appid": 7, "uid": 4}).to_string();
    let del = request(
        s.http,
        "POST",
        "/admin/media/delete_user",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["deleted_objects"], 2);
    assert_eq!(del.json()["deleted_bytes"], 701_000);
    let usage = request(s.http, "GET", "/admin/media/usage?appid=7&uid=4", &[], b"").await;
    assert_eq!(usage.json()["bytes"], 0);
    let viewer = token(&s, 7, 40).await;
    get_url(
        first.json()["src_url"].as_str().expect("url"),
        Some(&viewer),
        &[],
    )
    .await
    .assert_error(404);
    s.stop().await;
}

async fn bind(s: &TestServer, token: &str, path: &str, body: serde_json::Value) -> Http {
    let auth = format!("Bearer {token}");
    request(
        s.http,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

async fn devices(s: &TestServer, uid: i64) -> Vec<(String, String)> {
    let backend = &s.running.as_ref().expect("running").backend;
    backend
        .devices(7, uid)
        .await
        .expect("devices")
        .into_iter()
        .map(|d| (d.provider.name().to_string(), d.token))
        .collect()
}

/// Bind and unbind as the Android and iOS SDKs do; what offline push reads follows.
async fn device_binding_suite(s: &TestServer) {
    let t = token(s, 7, 21).await;
    let other = token(s, 7, 22).await;
    let r = bind(s, &t, "/v2/device/bind", json!({"gcm_device_token": "gcm-1", "xm_device_token": "xm-1", "ng_device_token": "", "hw_device_token": null})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["success"], true);
    bind(
        s,
        &t,
        "/v2/device/bind",
        json!({"apns_device_token": "apns-phone"}),
    )
    .await;
    bind(
        s,
        &t,
        "/v2/device/bind",
        json!({"apns_device_token": "apns-tablet", "pushkit_device_token": "voip-1"}),
    )
    .await;
    let mut got = devices(s, 21).await;
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("apns", "apns-phone"),
        ("apns", "apns-tablet"),
        ("gcm", "gcm-1"),
        ("pushkit", "voip-1"),
        ("xm", "xm-1"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    want.sort();
    assert_eq!(got, want, "several devices per user");
    let admin = request(
        s.http,
        "GET",
        "/admin/users/devices?appid=7&uid=21",
        &[],
        b"",
    )
    .await;
    assert_eq!(admin.json()["devices"].as_array().map(Vec::len), Some(5));

    // Unbind removes exactly the named tokens.
    let r = bind(
        s,
        &t,
        "/v2/device/unbind",
        json!({"gcm_device_token": "gcm-1"}),
    )
    .await;
    assert_eq!(r.json()["removed"], 1);
    assert!(!devices(s, 21).await.iter().any(|(p, _)| p == "gcm"));
    // A phone that logs in as another user takes its token along.
    bind(
        s,
        &other,
        "/v2/device/bind",
        json!({"apns_device_token": "apns-phone"}),
    )
    .await;
    assert!(!devices(s, 21).await.iter().any(|(_, t)| t == "apns-phone"));
    assert_eq!(
        devices(s, 22).await,
        vec![("apns".to_string(), "apns-phone".to_string())]
    );

    // Refusals.
    bind(s, &t, "/v2/device/bind", json!({}))
        .await
        .assert_error(400);
    bind(s, &t, "/v2/device/bind", json!({"apns_device_token": 5}))
        .await
        .assert_error(400);
    bind(
        s,
        "bad-token",
        "/v2/device/bind",
        json!({"apns_device_token": "x"}),
    )
    .await
    .assert_error(401);
    let raw = request(
        s.http,
        "POST",
        "/v2/device/bind",
        &[("Authorization", &format!("Bearer {t}"))],
        b"{not json",
    )
    .await;
    raw.assert_error(400);
}

#[tokio::test]
async fn device_binding_reaches_the_embedded_push_path() {
    let s = server().await;
    device_binding_suite(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn device_binding_writes_gobelieves_redis_fields() {
    let redis_server = testkit::RedisServer::start();
    let url = redis_server.url();
    let s = TestServer::start_with(move |c| {
        c.auth.backend = banter::config::AuthBackend::Redis;
        c.auth.redis_url = url;
    })
    .await
    .expect("server starts");
    device_binding_suite(&s).await;
    // What an existing GoBelieve push service reads.
    let client = redis::Client::open(redis_server.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let fields: Vec<Option<String>> = redis::cmd("HMGET")
        .arg("users_7_21")
        .arg("apns_device_token")
        .arg("pushkit_device_token")
        .arg("xm_device_token")
        .arg("gcm_device_token")
        .arg("xm_timestamp")
        .query_async(&mut con)
        .await
        .expect("hmget");
    assert_eq!(
        fields[0].as_deref(),
        Some("apns-tablet"),
        "latest apns token"
    );
    assert_eq!(fields[1].as_deref(), Some("voip-1"));
    assert_eq!(fields[2].as_deref(), Some("xm-1"));
    assert_eq!(fields[3], None, "unbound");
    assert!(fields[4]
        .as_deref()
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|ts| ts > 0));
    let moved: Option<String> = redis::cmd("HGET")
        .arg("users_7_22")
        .arg("apns_device_token")
        .query_async(&mut con)
        .await
        .expect("hget");
    assert_eq!(moved.as_deref(), Some("apns-phone"));
    // A token GoBelieve's API server wrote directly is seen by the push path too.
    let _: () = redis::cmd("HSET")
        .arg("users_7_30")
        .arg("hw_device_token")
        .arg("hw-direct")
        .arg("hw_timestamp")
        .arg(1234)
        .query_async(&mut con)
        .await
        .expect("hset");
    assert_eq!(
        devices(&s, 30).await,
        vec![("hw".to_string(), "hw-direct".to_string())]
    );
    s.stop().await;
}

#[tokio::test]
async fn supporters_from_configuration_and_the_admin_api() {
    let s = TestServer::start_with(|c| {
        c.app_api.supporters = vec![backend::Supporter {
            store_id: 1,
            seller_id: 100,
            appid: 17,
            name: "Configured".into(),
            appname: "Shop".into(),
        }];
    })
    .await
    .expect("server starts");
    let t = token(&s, 7, 50).await;
    let auth = format!("Bearer {t}");
    let get = |q: &'static str| {
        let auth = auth.clone();
        let addr = s.http;
        async move { request(addr, "GET", q, &[("Authorization", &auth)], b"").await }
    };
    let r = get("/v2/supporters?store_id=1").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (v["id"].clone(), v["appid"].clone()),
        (json!(100), json!(17))
    );
    assert_eq!(v["name"], "Configured");
    assert_eq!(v["appname"], "Shop");
    assert_eq!(v["data"]["seller_id"], 100);
    assert_eq!(v["status"], "offline");
    // The admin API adds a store whose supporter is online.
    let body = json!({"store_id": 2, "supporters": [{"seller_id": 200, "appid": 17, "name": "Bo"}, {"seller_id": 201, "appid": 17, "name": "Cy"}]});
    let set = request(
        s.http,
        "POST",
        "/admin/supporters",
        &[],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(set.status, 200);
    let online = {
        let mut c = common::Client::tcp(s.tcp).await;
        let st = token(&s, 17, 201).await;
        assert_eq!(c.auth(&st, 2, proto::Platform::ANDROID, "desk").await, 0);
        c
    };
    for uid in 60..64 {
        let u = token(&s, 7, uid).await;
        let r = request(
            s.http,
            "GET",
            "/v2/supporters?store_id=2",
            &[("Authorization", &format!("Bearer {u}"))],
            b"",
        )
        .await;
        assert_eq!(r.json()["id"], 201, "the online supporter is preferred");
        assert_eq!(r.json()["status"], "online");
    }
    drop(online);
    let listed = request(s.http, "GET", "/admin/supporters?store_id=2", &[], b"").await;
    assert_eq!(
        listed.json()["supporters"].as_array().map(Vec::len),
        Some(2)
    );
    get("/v2/supporters?store_id=3").await.assert_error(404);
    get("/v2/supporters").await.assert_error(400);
    get("/v2/supporters?store_id=abc").await.assert_error(400);
    request(s.http, "GET", "/v2/supporters?store_id=1", &[], b"")
        .await
        .assert_error(401);
    s.stop().await;
}

#[tokio::test]
async fn the_app_api_can_have_a_public_listener_of_its_own() {
    let s = TestServer::start_with(|c| {
        c.app_api.listen = "127.0.0.1:0".into();
        c.app_api.on_api_listener = false;
        c.app_api.public_url = "https://im.example.com/v2".into();
    })
    .await
    .expect("server starts");
    let public = s.app_api.expect("app API listener");
    let t = token(&s, 7, 70).await;
    let img = png(10, 10, 2);
    // Not on the API listener.
    let r = upload(s.http, "/v2/images", &t, "image/png", &img).await;
    assert_eq!(r.status, 404);
    // Only the app API on the public one.
    let r = upload(public, "/v2/images", &t, "image/png", &img).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let src = v["src"].as_str().expect("src");
    assert_eq!(v["src_url"], format!("https://im.example.com/v2{src}"));
    let got = request(
        public,
        "GET",
        &format!("/v2{src}"),
        &[("Authorization", &format!("Bearer {t}"))],
        b"",
    )
    .await;
    assert_eq!(got.body, img);
    request(public, "GET", "/summary", &[], b"")
        .await
        .assert_error(404);
    // Browser apps get CORS answers.
    let pre = request(
        public,
        "OPTIONS",
        "/v2/images",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        b"",
    )
    .await;
    assert!(pre.status < 300, "preflight {}", pre.status);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    s.stop().await;
}

#[tokio::test]
async fn an_image_message_carries_its_url_to_another_client_who_downloads_it() {
    let s = server().await;
    let mut alice = Client::login(&s, 91, 2, false, "alice-phone").await;
    let mut bob = Client::login(&s, 92, 2, true, "bob-browser").await;
    // The tokens the sessions use are the ones the app API takes (same backend); grant fresh ones.
    let alice_token = common::grant(&s, 91).await;
    let bob_token = common::grant(&s, 92).await;
    let photo = png(320, 240, 7);
    let r = upload(s.http, "/v2/images", &alice_token, "image/png", &photo).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let content = json!({
        "image2": {"url": v["src_url"], "width": v["width"], "height": v["height"]},
        "uuid": "5b1a7c0e-0000-4000-8000-000000000001",
    })
    .to_string();
    alice
        .send_body(
            &Body::Im(Im {
                sender: 91,
                receiver: 92,
                timestamp: 0,
                msgid: 1,
                content: bytes::Bytes::from(content.clone()),
            }),
            0,
        )
        .await;
    alice.recv_until(cmd::ACK).await;
    let (frame, _) = bob.recv_until(cmd::IM).await;
    let Body::Im(im) = body_of(&frame) else {
        panic!("not an IM")
    };
    let received: serde_json::Value =
        serde_json::from_slice(&im.content).expect("message content is JSON");
    let url = received["image2"]["url"].as_str().expect("image url");
    assert_eq!(received["image2"]["width"], 320);
    let got = get_url(url, Some(&bob_token), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, photo, "the receiver downloads the exact image");
    let thumb = get_url(&format!("{url}@256w_256h_0c"), Some(&bob_token), &[]).await;
    assert_eq!(dims(&thumb.body), (256, 192));
    drop((alice, bob));
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.stop().await;
}

#[tokio::test]
async fn a_large_slow_upload_does_not_stall_other_requests() {
    let s = server().await;
    let t = token(&s, 7, 80).await;
    let other = token(&s, 7, 81).await;
    let big = noise(3_000_000, 12);
    let head = format!(
        "POST /v2/files HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {t}\r\nContent-Length: {}\r\n\r\n",
        s.http,
        big.len()
    );
    let mut slow = tokio::net::TcpStream::connect(s.http)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut slow, head.as_bytes())
        .await
        .expect("head");
    tokio::io::AsyncWriteExt::write_all(&mut slow, &big[..1_000_000])
        .await
        .expect("first third");
    // While it is under way, other users upload and download as usual.
    for i in 0..5 {
        let img = png(50, 50, 100 + i);
        let started = tokio::time::Instant::now();
        let r = upload(s.http, "/v2/images", &other, "image/png", &img).await;
        assert_eq!(r.status, 200);
        let got = get_url(
            r.json()["src_url"].as_str().expect("url"),
            Some(&other),
            &[],
        )
        .await;
        assert_eq!(got.body, img);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a request waited behind the slow upload"
        );
    }
    // The slow upload then completes normally.
    tokio::io::AsyncWriteExt::write_all(&mut slow, &big[1_000_000..])
        .await
        .expect("the rest");
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut out)
        .await
        .expect("answer");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("head end") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    let got = get_url(v["src_url"].as_str().expect("url"), Some(&other), &[]).await;
    assert!(got.body == big, "the large upload stored byte for byte");
    s.stop().await;
}
