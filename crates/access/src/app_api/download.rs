//! `GET`/`HEAD` of media URLs (`<prefix>/<kind>/<appid>/<uid>/<sha256>.<ext>[@<w>w_<h>h_<c>c]`) and
//! `POST /media/sign`.
//!
//! Who may download: with `media.access = "app"`, a user of the media's app (Bearer token; another
//! app's user gets 403), or anyone holding a valid signed URL (`?expires=&sig=`); with `"public"`,
//! anyone. The bytes stream from storage with the stored type, a strong `ETag` (the content hash —
//! content never changes under a URL), long `Cache-Control`, `If-None-Match` (304) and single
//! `Range` requests (206, 416), so voice and video can seek.

use std::collections::HashMap;
use std::ops::Range;

use axum::body::Body;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use media::MediaRef;
use serde::Deserialize;
use serde_json::json;

use super::{authenticate, base_url, AppError, AppResult, Ctx};
use crate::openapi::{Binary, ErrorBody};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// No (usable) range: the whole object.
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

/// Parses a single-range `bytes=` header against an object of `size` bytes. Multiple ranges and
/// malformed headers are answered with the whole object, as RFC 9110 allows.
pub(crate) fn parse_range(value: &str, size: u64) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part(size.saturating_sub(n)..size)
            }
        }
        (false, Some(start), end) if b.trim().is_empty() || end.is_some() => {
            if start >= size {
                return Ranged::Unsatisfiable;
            }
            let end = end.map_or(size, |e| e.saturating_add(1).min(size));
            if end <= start {
                return Ranged::Whole;
            }
            Ranged::Part(start..end)
        }
        _ => Ranged::Whole,
    }
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag)
}

/// Checks that the request may read `r`.
async fn authorize(
    ctx: &Ctx,
    r: &MediaRef,
    path: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<bool, AppError> {
    let cfg = ctx.api.media.config();
    if let (Some(expires), Some(sig)) = (q.get("expires"), q.get("sig")) {
        let secret = &cfg.signing_secret;
        let expires: u64 = expires
            .trim()
            .parse()
            .map_err(|_| AppError::new(StatusCode::FORBIDDEN, "malformed `expires`"))?;
        if secret.is_empty() || !media::sign::verify(secret, path, expires, sig) {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "the URL's signature is not valid",
            ));
        }
        if expires < now_secs() {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "the signed URL has expired",
            ));
        }
        return Ok(true);
    }
    if cfg.access == media::MediaAccess::Public {
        return Ok(true);
    }
    let user = authenticate(&ctx.backend, headers).await?;
    if user.appid != r.appid {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "this media belongs to another app",
        ));
    }
    Ok(false)
}

#[utoipa::path(
    method(get, head),
    path = "/{kind}/{appid}/{uid}/{name}",
    tag = "app",
    params(
        ("kind" = String, Path, description = "`images`, `audios` or `files`"),
        ("appid" = String, Path, description = "The uploader's app"),
        ("uid" = String, Path, description = "The uploader"),
        ("name" = String, Path, description = "`<sha256>.<ext>`, for images optionally `@<w>w_<h>h_<0|1>c` (a thumbnail)"),
        ("expires" = Option<u64>, Query, description = "A signed URL's expiry (Unix seconds)"),
        ("sig" = Option<String>, Query, description = "A signed URL's signature"),
    ),
    responses(
        (status = 200, description = "The bytes, with their stored type", content((Binary = "*/*"))),
        (status = 206, description = "The requested range (`Range: bytes=…`)", content((Binary = "*/*"))),
        (status = 304, description = "`If-None-Match` matched"),
        (status = 403, description = "Media of another app, or an expired or wrong signature", body = ErrorBody),
        (status = 404, description = "No such media", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
    ),
)]
pub(crate) async fn download(
    State(ctx): State<Ctx>,
    Path((kind, appid, uid, name)): Path<(String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> AppResult {
    let Some(r) = MediaRef::parse(&format!("{kind}/{appid}/{uid}/{name}")) else {
        return Err(AppError::not_found("no such media"));
    };
    let media = ctx.api.media.clone();
    if let Some(spec) = r.thumb {
        if !media.thumb_allowed(spec) {
            return Err(AppError::bad(format!(
                "thumbnail size {} is not offered (media.thumbnail_sizes: {:?})",
                spec.suffix(),
                media.config().thumbnail_sizes
            )));
        }
    }
    let shared = authorize(&ctx, &r, uri.path(), &headers, &q).await?;
    let Some((key, media_type, info)) = media.locate(&r).await? else {
        return Err(AppError::not_found("no such media"));
    };
    let etag = match r.thumb {
        Some(t) => format!("\"{}-{}\"", r.sha256, t.suffix()),
        None => format!("\"{}\"", r.sha256),
    };
    let public = shared || media.config().access == media::MediaAccess::Public;
    let cache = format!(
        "{}, max-age={}, immutable",
        if public { "public" } else { "private" },
        media.config().cache_max_age_secs
    );
    let mut common: Vec<(header::HeaderName, HeaderValue)> = vec![
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        ),
    ];
    if let Ok(v) = HeaderValue::from_str(&etag) {
        common.push((header::ETAG, v));
    }
    if let Ok(v) = HeaderValue::from_str(&cache) {
        common.push((header::CACHE_CONTROL, v));
    }
    let header_str = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if header_str(header::IF_NONE_MATCH).is_some_and(|v| etag_matches(v, &etag)) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().extend(common);
        return Ok(resp);
    }
    let size = info.size;
    // A range applies only to the representation the client has (If-Range).
    let range_ok = header_str(header::IF_RANGE).is_none_or(|v| v.trim() == etag);
    let ranged = match header_str(header::RANGE) {
        Some(v) if range_ok => parse_range(v, size),
        _ => Ranged::Whole,
    };
    let (status, range) = match ranged {
        Ranged::Whole => (StatusCode::OK, 0..size),
        Ranged::Part(r) => (StatusCode::PARTIAL_CONTENT, r),
        Ranged::Unsatisfiable => {
            let mut e = AppError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range is outside the {size} bytes of this media"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                e.headers.push((header::CONTENT_RANGE, v));
            }
            return Err(e);
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let stream = media
            .storage()
            .get(&key, range.clone())
            .await?
            .ok_or_else(|| AppError::not_found("no such media"))?;
        Body::from_stream(stream)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.extend(common);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type.mime),
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(range.end - range.start),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{size}",
            range.start,
            range.end.saturating_sub(1)
        )) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignReq {
    /// The upload answer's `src` (`/images/7/1001/<sha256>.png`).
    src: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /media/sign {"src", "ttl_secs"?}` → `{"url", "expires"}`: a URL anyone may download until
/// `expires`, for a user of the media's app.
#[utoipa::path(
    post,
    path = "/media/sign",
    tag = "app",
    request_body = SignReq,
    responses(
        (status = 200, description = "`{\"url\", \"expires\"}`: a URL anyone may download until `expires`", body = Object),
        (status = 403, description = "Media of another app", body = ErrorBody),
        (status = 404, description = "Signed URLs are not enabled (`media.signing_secret`)", body = ErrorBody),
    ),
)]
pub(crate) async fn sign(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> AppResult {
    let user = authenticate(&ctx.backend, &headers).await?;
    let req: SignReq =
        serde_json::from_slice(&body).map_err(|e| AppError::bad(format!("invalid json: {e}")))?;
    let cfg = ctx.api.media.config();
    if cfg.signing_secret.is_empty() {
        return Err(AppError::not_found(
            "signed URLs are not enabled on this server (media.signing_secret)",
        ));
    }
    let r = MediaRef::parse(req.src.trim_start_matches('/'))
        .ok_or_else(|| AppError::bad("`src` is not a media path of this server"))?;
    if r.appid != user.appid {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "this media belongs to another app",
        ));
    }
    let ttl = req.ttl_secs.unwrap_or(cfg.signed_url_ttl_secs);
    if ttl == 0 || ttl > cfg.signed_url_max_ttl_secs {
        return Err(AppError::bad(format!(
            "`ttl_secs` must be between 1 and {}",
            cfg.signed_url_max_ttl_secs
        )));
    }
    let expires = now_secs() + ttl;
    let path = format!("{}{}", ctx.api.config.normalized_prefix(), r.src());
    let sig = media::sign::sign(&cfg.signing_secret, &path, expires);
    let base = base_url(&ctx.api, &headers);
    Ok(Json(json!({
        "url": format!("{base}{}?expires={expires}&sig={sig}", r.src()),
        "expires": expires,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ranged::Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Ranged::Part(90..100));
        assert_eq!(parse_range("bytes=90-500", 100), Ranged::Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Ranged::Part(90..100));
        assert_eq!(parse_range("bytes=-500", 100), Ranged::Part(0..100));
        assert_eq!(parse_range("bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), Ranged::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ranged::Whole);
        assert_eq!(parse_range("items=0-1", 100), Ranged::Whole);
        assert_eq!(parse_range("bytes=x-1", 100), Ranged::Whole);
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\""));
        assert!(etag_matches("W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(!etag_matches("\"c\"", "\"b\""));
    }
}
