//! `POST /images`, `POST /audios`, `POST /files`.
//!
//! The body is the raw bytes with their type in `Content-Type` (what the SDKs send to `/images` and
//! `/audios`), or `multipart/form-data` with the bytes in the part named `file` (what they send to
//! `/files`; accepted by every endpoint, as GoBelieve's own tests post images that way). The bytes
//! stream into a spool file chunk by chunk — never the whole file in memory — with the kind's size
//! limit checked as they arrive; an upload that stalls longer than `media.idle_timeout_secs`, or whose
//! client goes away, is abandoned and its spool deleted. Only then is the content sniffed, checked
//! against the claimed type, measured (images) and committed under its content address.
//!
//! The answer is `{"src", "src_url", "size", "content_type"}` plus, for images, `width`, `height`
//! and `thumbnail_url` (`docs/app-api.md`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::StreamExt;
use media::{Kind, Spool, SpoolError, ThumbSpec};
use serde_json::{json, Map, Value};

use super::{authenticate, base_url, AppError, AppResult, Ctx};
use crate::openapi::{Binary, ErrorBody};

#[utoipa::path(
    post,
    path = "/images",
    tag = "app",
    request_body(
        description = "The raw bytes with their type in `Content-Type`, or `multipart/form-data` with the bytes in the part named `file`",
        content(
            (Binary = "application/octet-stream"),
            (Binary = "multipart/form-data"),
        ),
    ),
    responses(
        (status = 200, description = "`{\"src\", \"src_url\", \"size\", \"content_type\"}` (images also `width`, `height`, `thumbnail_url`)", body = Object),
        (status = 408, description = "No upload data for `media.idle_timeout_secs`", body = ErrorBody),
        (status = 413, description = "Larger than the kind's limit (or an image with too many pixels), or over the user's quota", body = ErrorBody),
        (status = 415, description = "Not a supported image type, or unreadable", body = ErrorBody),
        (status = 429, description = "Too many uploads (per user per minute, or at once on this node); `Retry-After` says when to retry", body = ErrorBody),
    ),
)]
pub(crate) async fn images(State(ctx): State<Ctx>, req: Request) -> AppResult {
    upload(ctx, Kind::Image, req).await
}

#[utoipa::path(
    post,
    path = "/audios",
    tag = "app",
    request_body(
        description = "The raw bytes with their type in `Content-Type`, or `multipart/form-data` with the bytes in the part named `file`",
        content(
            (Binary = "application/octet-stream"),
            (Binary = "multipart/form-data"),
        ),
    ),
    responses(
        (status = 200, description = "`{\"src\", \"src_url\", \"size\", \"content_type\"}` (images also `width`, `height`, `thumbnail_url`)", body = Object),
        (status = 408, description = "No upload data for `media.idle_timeout_secs`", body = ErrorBody),
        (status = 413, description = "Larger than the kind's limit (or an image with too many pixels), or over the user's quota", body = ErrorBody),
        (status = 415, description = "Not a supported audio type, or unreadable", body = ErrorBody),
        (status = 429, description = "Too many uploads (per user per minute, or at once on this node); `Retry-After` says when to retry", body = ErrorBody),
    ),
)]
pub(crate) async fn audios(State(ctx): State<Ctx>, req: Request) -> AppResult {
    upload(ctx, Kind::Audio, req).await
}

#[utoipa::path(
    post,
    path = "/files",
    tag = "app",
    request_body(
        description = "The raw bytes with their type in `Content-Type`, or `multipart/form-data` with the bytes in the part named `file`",
        content(
            (Binary = "application/octet-stream"),
            (Binary = "multipart/form-data"),
        ),
    ),
    responses(
        (status = 200, description = "`{\"src\", \"src_url\", \"size\", \"content_type\"}` (images also `width`, `height`, `thumbnail_url`)", body = Object),
        (status = 408, description = "No upload data for `media.idle_timeout_secs`", body = ErrorBody),
        (status = 413, description = "Larger than the kind's limit (or an image with too many pixels), or over the user's quota", body = ErrorBody),
        (status = 415, description = "Not a file type this endpoint takes, or unreadable", body = ErrorBody),
        (status = 429, description = "Too many uploads (per user per minute, or at once on this node); `Retry-After` says when to retry", body = ErrorBody),
    ),
)]
pub(crate) async fn files(State(ctx): State<Ctx>, req: Request) -> AppResult {
    upload(ctx, Kind::File, req).await
}

fn too_large(limit: u64) -> AppError {
    AppError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload exceeds the limit of {limit} bytes"),
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn spool_err(e: SpoolError) -> AppError {
    match e {
        SpoolError::TooLarge { limit } => too_large(limit),
        SpoolError::Media(m) => m.into(),
    }
}

fn stalled(idle: Duration) -> AppError {
    AppError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!("no upload data for {} s; upload abandoned", idle.as_secs()),
    )
}

fn read_failed(e: impl std::fmt::Display) -> AppError {
    tracing::debug!(error = %e, "upload body ended early");
    AppError::bad(format!("the upload ended early: {e}"))
}

/// Bytes of a refused upload still read (and discarded) before the refusal is sent, so a client
/// that is still sending gets the answer instead of a connection reset.
const DRAIN_LIMIT: u64 = 1 << 20;
/// How long that draining may wait for the next chunk.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Reads and discards up to [`DRAIN_LIMIT`] more bytes of `stream`.
async fn drain<S, E>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let mut seen = 0u64;
    while seen <= DRAIN_LIMIT {
        match tokio::time::timeout(DRAIN_WAIT, stream.next()).await {
            Ok(Some(Ok(chunk))) => seen += chunk.len() as u64,
            _ => return,
        }
    }
}

/// Streams a raw body into `spool`.
async fn spool_body(spool: &mut Spool, body: Body, idle: Duration) -> Result<(), AppError> {
    let mut stream = body.into_data_stream();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(stalled(idle)),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(read_failed(e)),
            Ok(Some(Ok(chunk))) => {
                if let Err(e) = spool.write(&chunk).await {
                    drain(&mut stream).await;
                    return Err(spool_err(e));
                }
            }
        }
    }
}

/// Streams the multipart part named `file` into `spool`; returns the part's content type.
async fn spool_multipart(
    spool: &mut Spool,
    mut form: Multipart,
    idle: Duration,
) -> Result<String, AppError> {
    loop {
        let field = match tokio::time::timeout(idle, form.next_field()).await {
            Err(_) => return Err(stalled(idle)),
            Ok(Err(e)) => return Err(AppError::bad(format!("malformed multipart body: {e}"))),
            Ok(Ok(None)) => {
                return Err(AppError::bad("the multipart body has no part named `file`"))
            }
            Ok(Ok(Some(f))) => f,
        };
        if field.name() != Some("file") {
            continue;
        }
        let claimed = field.content_type().unwrap_or("").to_string();
        let mut field = field;
        loop {
            match tokio::time::timeout(idle, field.chunk()).await {
                Err(_) => return Err(stalled(idle)),
                Ok(Err(e)) => return Err(read_failed(e)),
                Ok(Ok(None)) => return Ok(claimed),
                Ok(Ok(Some(chunk))) => {
                    if let Err(e) = spool.write(&chunk).await {
                        let mut rest =
                            Box::pin(futures_util::stream::unfold(field, |mut f| async move {
                                match f.chunk().await {
                                    Ok(Some(c)) => Some((Ok::<_, ()>(c), f)),
                                    _ => None,
                                }
                            }));
                        drain(&mut rest).await;
                        return Err(spool_err(e));
                    }
                }
            }
        }
    }
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

async fn upload(ctx: Ctx, kind: Kind, req: Request) -> AppResult {
    let headers = req.headers().clone();
    let user = authenticate(&ctx.backend, &headers).await?;
    let media = ctx.api.media.clone();
    let cfg = media.config();
    ctx.api
        .limiter
        .check(user.appid, user.uid)
        .map_err(|wait| {
            AppError::too_many(
                format!(
                    "at most {} uploads per minute; try again in {wait} s",
                    cfg.uploads_per_minute
                ),
                wait,
            )
        })?;
    let Some(_slot) = media.upload_slot() else {
        return Err(AppError::too_many(
            "too many uploads in progress on this server; try again shortly",
            1,
        ));
    };
    let limit = media.limit(kind);
    // Refused before reading when the declared length is far beyond the limit (the multipart
    // framing adds a little); a body just over it is read up to the limit and refused then.
    if content_length(&headers).is_some_and(|n| n > limit.saturating_add(DRAIN_LIMIT)) {
        return Err(too_large(limit));
    }
    let quota = cfg.user_quota_mb.saturating_mul(1 << 20);
    let used = if quota > 0 {
        let used = media.usage(user.appid, user.uid).await?;
        if used >= quota {
            return Err(quota_exceeded(quota));
        }
        used
    } else {
        0
    };
    let idle = Duration::from_secs(cfg.idle_timeout_secs.max(1));
    let mut spool = media.spool(kind).await?;
    let claimed = if is_multipart(&headers) {
        let form = Multipart::from_request(req, &())
            .await
            .map_err(|e| AppError::bad(format!("malformed multipart request: {e}")))?;
        spool_multipart(&mut spool, form, idle).await?
    } else {
        let claimed = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        spool_body(&mut spool, req.into_body(), idle).await?;
        claimed
    };
    if spool.size() == 0 {
        return Err(AppError::bad("the upload is empty"));
    }
    let finished = spool.finish().await?;
    if quota > 0 && used.saturating_add(finished.size) > quota {
        return Err(quota_exceeded(quota));
    }
    let stored = media
        .ingest(user.appid, user.uid, kind, &claimed, finished)
        .await?;
    if stored.created {
        media.prepare_bubble(&stored.media);
    }
    tracing::debug!(appid = user.appid, uid = user.uid, src = %stored.media.src(), size = stored.size, created = stored.created, "media stored");
    let base = base_url(&ctx.api, &headers);
    let src = stored.media.src();
    let mut body = Map::new();
    body.insert("src".into(), json!(src));
    body.insert("src_url".into(), json!(format!("{base}{src}")));
    body.insert("size".into(), json!(stored.size));
    body.insert("content_type".into(), json!(stored.media.media_type.mime));
    if let Some((w, h)) = stored.dimensions {
        body.insert("width".into(), json!(w));
        body.insert("height".into(), json!(h));
        if media.thumb_allowed(ThumbSpec::BUBBLE) {
            let thumb = stored.media.with_thumb(ThumbSpec::BUBBLE).src();
            body.insert("thumbnail_url".into(), json!(format!("{base}{thumb}")));
        }
    }
    Ok(Json(Value::Object(body)).into_response())
}

fn quota_exceeded(quota: u64) -> AppError {
    AppError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("this upload would exceed your storage quota of {quota} bytes"),
    )
}
