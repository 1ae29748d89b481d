//! Helpers of the app API suites (`app_api.rs`, `app_api_s3.rs`): a binary-safe HTTP/1.1 client,
//! test media (PNG, JPEG, AMR, multipart bodies), token helpers, and the suite both storage
//! backends must pass (`core_suite`).
#![allow(dead_code)]

use std::io::Cursor;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use banter::testing::TestServer;

pub const WAIT: Duration = Duration::from_secs(20);

/// An HTTP answer.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Http {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a refusal with GoBelieve's JSON error shape.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["meta"]["code"], json!(status), "{v}");
        assert!(
            v["meta"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(s, b"\r\n") {
        let size = std::str::from_utf8(&s[..i]).unwrap_or("0");
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let rest = &s[i + 2..];
        if n == 0 || rest.len() < n + 2 {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// One HTTP/1.1 request (`Connection: close`); `body` is sent as is.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Http {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw).await
}

/// Writes `raw` (a whole request, or its start) and reads the answer. A write the server cut short
/// (it answered early) is not an error.
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Http {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("http timeout");
    if out.is_empty() {
        read.expect("read http");
    }
    let split = find(&out, b"\r\n\r\n").expect("http head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw = &out[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Http {
        status,
        headers,
        body,
    }
}

/// Splits `http://host:port/path?q` into the address and the path.
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    (host.parse().expect("host:port"), format!("/{path}"))
}

/// GET of a full URL with an optional bearer token and extra headers.
pub async fn get_url(url: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Http {
    let (addr, path) = split_url(url);
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    request(addr, "GET", &path, &headers, b"").await
}

/// A token of user `uid` of app `appid` from `/auth/grant`.
pub async fn token(server: &TestServer, appid: i64, uid: i64) -> String {
    let body = json!({"appid": appid, "uid": uid}).to_string();
    let r = request(
        server.http,
        "POST",
        "/auth/grant",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "grant");
    r.json()["token"].as_str().expect("token").to_string()
}

/// POST of a raw upload.
pub async fn upload(
    addr: SocketAddr,
    path: &str,
    token: &str,
    content_type: &str,
    data: &[u8],
) -> Http {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if !content_type.is_empty() {
        headers.push(("Content-Type", content_type));
    }
    request(addr, "POST", path, &headers, data).await
}

/// A `multipart/form-data` body with one part `name` (file `filename`, type `ctype`): (content
/// type header, body).
pub fn multipart(name: &str, filename: &str, ctype: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "Boundary+0123456789ABCDEF";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Pseudo-random bytes (xorshift), deterministic per seed.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A noisy PNG of `w`×`h` (noise keeps it large: about 3·w·h bytes).
pub fn png(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let px = noise((w * h * 3) as usize, seed);
    let img = image::RgbImage::from_raw(w, h, px).expect("rgb image");
    let mut buf = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut buf, image::ImageFormat::Png)
        .expect("encode png");
    buf.into_inner()
}

/// A JPEG of `w`×`h`.
pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut buf = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut buf, image::ImageFormat::Jpeg)
        .expect("encode jpeg");
    buf.into_inner()
}

/// An AMR voice clip of about `n` bytes (header + noise frames).
pub fn amr(n: usize, seed: u64) -> Vec<u8> {
    let mut v = b"#!AMR\n".to_vec();
    v.extend(noise(n, seed));
    v
}

/// The dimensions of an encoded image.
pub fn dims(data: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(data).expect("decodes");
    (img.width(), img.height())
}

/// Uploads and downloads of every kind, whole and ranged, conditional requests, thumbnails,
/// refusals (401, 403, 413, 415), deduplication — against whatever storage `server` uses.
/// `usage(appid, uid)` reads the bytes stored for a user through the admin API.
pub async fn core_suite(server: &TestServer) {
    let api = server.http;
    let alice = token(server, 7, 1).await;
    let bob = token(server, 7, 2).await;
    let stranger = token(server, 8, 1).await;

    // An image, raw body, as the iOS SDK posts it.
    let img = png(300, 200, 1);
    let r = upload(api, "/v2/images", &alice, "image/png", &img).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let src = v["src"].as_str().expect("src");
    let src_url = v["src_url"].as_str().expect("src_url").to_string();
    assert!(
        src.starts_with("/images/7/1/") && src.ends_with(".png"),
        "{src}"
    );
    assert_eq!(src_url, format!("http://{api}/v2{src}"));
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(300), Some(200))
    );
    assert_eq!(v["size"].as_u64(), Some(img.len() as u64));
    assert_eq!(v["content_type"], "image/png");

    // Another user of the same app reads it back byte for byte.
    let got = get_url(&src_url, Some(&bob), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, img, "whole image");
    assert_eq!(got.header("content-type"), Some("image/png"));
    let etag = got.header("etag").expect("etag").to_string();
    assert!(got
        .header("cache-control")
        .is_some_and(|c| c.contains("max-age")));
    assert_eq!(got.header("accept-ranges"), Some("bytes"));

    // Ranged.
    let part = get_url(&src_url, Some(&bob), &[("Range", "bytes=100-1099")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &img[100..1100]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 100-1099/{}", img.len()).as_str())
    );
    let tail = get_url(&src_url, Some(&bob), &[("Range", "bytes=-10")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &img[img.len() - 10..]);
    let beyond = format!("bytes={}-", img.len() + 5);
    let bad = get_url(&src_url, Some(&bob), &[("Range", &beyond)]).await;
    bad.assert_error(416);
    assert_eq!(
        bad.header("content-range"),
        Some(format!("bytes */{}", img.len()).as_str())
    );

    // Conditional.
    let not_modified = get_url(&src_url, Some(&bob), &[("If-None-Match", &etag)]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());

    // The thumbnail the SDKs show.
    let thumb_url = v["thumbnail_url"].as_str().expect("thumbnail_url");
    assert_eq!(thumb_url, format!("{src_url}@256w_256h_0c"));
    let thumb = get_url(thumb_url, Some(&bob), &[]).await;
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.header("content-type"), Some("image/png"));
    let (tw, th) = dims(&thumb.body);
    assert!(tw == 256 && (170..=171).contains(&th), "{tw}x{th}");
    let cropped = get_url(&format!("{src_url}@128w_128h_1c.jpg"), Some(&bob), &[]).await;
    assert_eq!(cropped.status, 200);
    assert_eq!(dims(&cropped.body), (128, 128));
    get_url(&format!("{src_url}@100w_100h_0c"), Some(&bob), &[])
        .await
        .assert_error(400);

    // A voice clip as iOS posts it (application/plain) and as Android does (audio/amr).
    let voice = amr(40_000, 2);
    let r = upload(api, "/v2/audios", &alice, "application/plain", &voice).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let a = r.json();
    assert_eq!(a["content_type"], "audio/amr");
    let audio_url = a["src_url"].as_str().expect("audio url").to_string();
    let r2 = upload(api, "/v2/audios", &alice, "audio/amr", &voice).await;
    assert_eq!(
        r2.json()["src_url"].as_str(),
        Some(audio_url.as_str()),
        "same bytes, same URL"
    );
    let got = get_url(&audio_url, Some(&bob), &[]).await;
    assert_eq!(got.body, voice);
    assert_eq!(got.header("content-type"), Some("audio/amr"));
    let seek = get_url(&audio_url, Some(&bob), &[("Range", "bytes=30000-")]).await;
    assert_eq!(seek.status, 206);
    assert_eq!(seek.body, &voice[30_000..]);

    // A file, multipart, as the Android SDK posts it.
    let blob = noise(300_000, 3);
    let (ctype, body) = multipart("file", "notes.bin", "application/plain", &blob);
    let r = upload(api, "/v2/files", &alice, &ctype, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let f = r.json();
    assert_eq!(f["content_type"], "application/octet-stream");
    assert!(f["src"]
        .as_str()
        .is_some_and(|s| s.starts_with("/files/7/1/")));
    let got = get_url(f["src_url"].as_str().expect("file url"), Some(&bob), &[]).await;
    assert_eq!(got.body, blob);
    let middle = get_url(
        f["src_url"].as_str().expect("file url"),
        Some(&bob),
        &[("Range", "bytes=1000-199999")],
    )
    .await;
    assert_eq!(middle.body, &blob[1000..200_000]);

    // Images may come as multipart too (GoBelieve's own tests post them so).
    let photo = jpeg(64, 48);
    let (ctype, body) = multipart("file", "photo.jpg", "image/jpeg", &photo);
    let r = upload(api, "/v2/images", &alice, &ctype, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["content_type"], "image/jpeg");
    assert_eq!(r.json()["width"], 64);

    // Refusals.
    upload(api, "/v2/images", "", "image/png", &img)
        .await
        .assert_error(401);
    upload(api, "/v2/images", "not-a-token", "image/png", &img)
        .await
        .assert_error(401);
    get_url(&src_url, None, &[]).await.assert_error(401);
    get_url(&src_url, Some("not-a-token"), &[])
        .await
        .assert_error(401);
    get_url(&src_url, Some(&stranger), &[])
        .await
        .assert_error(403);
    // The body lies about its type.
    upload(api, "/v2/images", &alice, "image/png", &photo)
        .await
        .assert_error(415);
    upload(
        api,
        "/v2/images",
        &alice,
        "image/png",
        b"<html>not an image</html>",
    )
    .await
    .assert_error(415);
    upload(api, "/v2/images", &alice, "", &voice)
        .await
        .assert_error(415);
    upload(api, "/v2/audios", &alice, "audio/amr", &img)
        .await
        .assert_error(415);
    let (ctype, body) = multipart("file", "x.png", "image/png", b"plain text, not a png");
    upload(api, "/v2/files", &alice, &ctype, &body)
        .await
        .assert_error(415);
    // Too large (the test configuration allows images of at most 1 MiB).
    let big = noise(1_200_000, 4);
    upload(api, "/v2/images", &alice, "image/png", &big)
        .await
        .assert_error(413);
    // Nothing there.
    let missing = src_url.replace(
        &src[12..76],
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    get_url(&missing, Some(&bob), &[]).await.assert_error(404);
    request(
        api,
        "GET",
        "/v2/images/7/1/nothing.png",
        &[("Authorization", &format!("Bearer {bob}"))],
        b"",
    )
    .await
    .assert_error(404);

    // Stored once: the voice clip was posted twice, and one copy of each upload is kept.
    let thumbs = (thumb.body.len() + cropped.body.len()) as u64;
    let bubble = {
        // The JPEG's bubble thumbnail is made in the background; it may or may not exist yet.
        let small = get_url(
            &format!(
                "{}@256w_256h_0c",
                r.json()["src_url"].as_str().expect("jpeg url")
            ),
            Some(&bob),
            &[],
        )
        .await;
        small.body.len() as u64
    };
    let expected = (img.len() + voice.len() + blob.len() + photo.len()) as u64 + thumbs + bubble;
    // A thumbnail made in the background may still be on its way to the storage: wait for it, then
    // the total must be exact.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let usage = request(api, "GET", "/admin/media/usage?appid=7&uid=1", &[], b"").await;
        assert_eq!(usage.status, 200);
        let stored = usage.json()["bytes"].as_u64().expect("bytes");
        if stored == expected || tokio::time::Instant::now() > deadline {
            assert_eq!(stored, expected, "each upload stored once");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls `f` until it holds (or panics after `WAIT`).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
