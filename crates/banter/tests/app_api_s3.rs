//! The app API against the S3-compatible backend (a private moto server from `testkit`): the same
//! suite as on local disk, uploads cut short, a multipart upload larger than one part, and two
//! access nodes sharing one bucket (either serves what the other stored).
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod media_common;

use media_common::*;
use serde_json::json;

const BUCKET: &str = "banter-media";

fn s3_config(c: &mut banter::config::Config, s3: &testkit::S3Server) {
    c.media.backend = media::MediaBackend::S3;
    c.media.s3.bucket = BUCKET.into();
    c.media.s3.endpoint = s3.endpoint();
    c.media.s3.allow_http = true;
    c.media.s3.access_key_id = "testing".into();
    c.media.s3.secret_access_key = "testing".into();
    c.media.s3.prefix = "media/".into();
    c.media.max_image_bytes = 1 << 20;
    c.media.idle_timeout_secs = 2;
}

fn spool_files(s: &TestServer) -> usize {
    std::fs::read_dir(s.data_dir.join("media").join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn uploads_downloads_and_refusals_on_s3() {
    let s3 = testkit::S3Server::start();
    s3.create_bucket(BUCKET);
    let s = TestServer::start_with(|c| s3_config(c, &s3))
        .await
        .expect("server starts");
    core_suite(&s).await;
    assert_eq!(spool_files(&s), 0, "no spool file left");
    s.stop().await;
}

#[tokio::test]
async fn uploads_cut_short_leave_nothing_in_the_bucket_and_large_files_go_in_parts() {
    let s3 = testkit::S3Server::start();
    s3.create_bucket(BUCKET);
    let s = TestServer::start_with(|c| {
        s3_config(c, &s3);
        c.media.s3.part_size_mb = 5;
    })
    .await
    .expect("server starts");
    let t = token(&s, 7, 1).await;
    // Disconnected mid-upload.
    {
        let head = format!(
            "POST /v2/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: 900000\r\n\r\n"
        );
        let mut c = tokio::net::TcpStream::connect(s.http)
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut c, head.as_bytes())
            .await
            .expect("head");
        tokio::io::AsyncWriteExt::write_all(&mut c, &noise(300_000, 1))
            .await
            .expect("body part");
        eventually("the upload to be spooled", || spool_files(&s) > 0).await;
    }
    eventually("the spool to be removed", || spool_files(&s) == 0).await;
    let usage = request(s.http, "GET", "/admin/media/usage?appid=7&uid=1", &[], b"").await;
    assert_eq!(usage.json()["bytes"], 0, "nothing reached the bucket");

    // 12 MiB: three parts of a multipart upload.
    let big = noise(12 << 20, 2);
    let r = upload(s.http, "/v2/files", &t, "application/octet-stream", &big).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let url = r.json()["src_url"].as_str().expect("url").to_string();
    let viewer = token(&s, 7, 2).await;
    let got = get_url(&url, Some(&viewer), &[]).await;
    assert_eq!(got.body.len(), big.len());
    assert!(got.body == big, "multipart upload read back byte for byte");
    let range = format!("bytes={}-{}", 5 << 20, (6 << 20) + 99);
    let part = get_url(&url, Some(&viewer), &[("Range", &range)]).await;
    assert_eq!(part.status, 206);
    assert!(
        part.body == big[5 << 20..(6 << 20) + 100],
        "range across a part boundary"
    );
    s.stop().await;
}

fn jwt(appid: i64, uid: i64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"appid": appid, "uid": uid}),
        &jsonwebtoken::EncodingKey::from_secret(b"cluster-jwt-secret"),
    )
    .expect("jwt")
}

#[tokio::test]
async fn two_access_nodes_share_one_bucket() {
    let s3 = testkit::S3Server::start();
    s3.create_bucket(BUCKET);
    let node = |s3: &testkit::S3Server| {
        let endpoint = s3.endpoint();
        move |c: &mut banter::config::Config| {
            c.media.backend = media::MediaBackend::S3;
            c.media.s3.bucket = BUCKET.into();
            c.media.s3.endpoint = endpoint;
            c.media.s3.allow_http = true;
            c.media.s3.access_key_id = "testing".into();
            c.media.s3.secret_access_key = "testing".into();
            c.media.signing_secret = "shared-signing-key".into();
            c.auth.jwt.secret = Some("cluster-jwt-secret".into());
        }
    };
    let a = TestServer::start_with(node(&s3)).await.expect("node a");
    let b = TestServer::start_with(node(&s3)).await.expect("node b");
    let (alice, bob) = (jwt(7, 1), jwt(7, 2));

    let photo = png(400, 300, 5);
    let r = upload(a.http, "/v2/images", &alice, "image/png", &photo).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let src = r.json()["src"].as_str().expect("src").to_string();
    // Node b serves what node a stored: whole, ranged, and a thumbnail it makes itself.
    let on_b = format!("http://{}/v2{src}", b.http);
    let got = get_url(&on_b, Some(&bob), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, photo);
    let part = get_url(&on_b, Some(&bob), &[("Range", "bytes=0-99")]).await;
    assert_eq!(part.body, &photo[..100]);
    let thumb = get_url(&format!("{on_b}@128w_128h_1c"), Some(&bob), &[]).await;
    assert_eq!(dims(&thumb.body), (128, 128));
    // The same bytes uploaded through node b are the same object.
    let again = upload(b.http, "/v2/images", &alice, "image/png", &photo).await;
    assert_eq!(again.json()["src"], src.as_str());
    // A URL signed on one node is honoured by the other.
    let auth = format!("Bearer {alice}");
    let signed = request(
        a.http,
        "POST",
        "/v2/media/sign",
        &[("Authorization", &auth)],
        json!({"src": src}).to_string().as_bytes(),
    )
    .await;
    let url = signed.json()["url"]
        .as_str()
        .expect("url")
        .replace(&a.http.to_string(), &b.http.to_string());
    assert_eq!(get_url(&url, None, &[]).await.body, photo);
    // Retention through one node applies to both.
    let del = request(
        b.http,
        "POST",
        "/admin/media/delete_user",
        &[],
        json!({"appid": 7, "uid": 1}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(del.status, 200);
    assert!(del.json()["deleted_objects"]
        .as_u64()
        .is_some_and(|n| n >= 1));
    get_url(&format!("http://{}/v2{src}", a.http), Some(&bob), &[])
        .await
        .assert_error(404);
    a.stop().await;
    b.stop().await;
}
