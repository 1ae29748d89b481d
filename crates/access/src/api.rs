//! The HTTP APIs' shared toolkit: the error type and its one JSON shape
//! (`{"meta":{"code","message"}}`, docs/http-api.md), strict query parameters, JSON bodies and the JSON
//! form of a stored message. It knows no handler and no node state, so every API module (`http`,
//! `admin`, `server_api`, `app_api`) builds on it without depending on another.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::Body;
use serde_json::{json, Value};
use store::StoredMessage;

use crate::openapi::ErrorBody;

/// An API error: HTTP status plus a message naming the problem.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ErrorBody::response(self.status, self.message)
    }
}

impl From<backend::BackendError> for ApiError {
    fn from(e: backend::BackendError) -> Self {
        match e {
            backend::BackendError::InvalidArgument(m) => ApiError::bad(m),
            backend::BackendError::NotFound(m) => ApiError::not_found(m),
            other => {
                node::warn_throttled!(error = %other, "backend error in HTTP API");
                ApiError::unavailable(format!("backend error: {other}"))
            }
        }
    }
}

/// A request's query parameters, decoded, in order.
pub(crate) struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::bad(format!("invalid query string: {e}")))?;
        Ok(Params(pairs))
    }
}

impl Params {
    /// The value of the first parameter called `name` (GoBelieve reads the first one too).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A plain decimal integer: an optional `-` and ASCII digits, nothing else (no spaces, no `+`), within
/// the range of i64.
pub(crate) fn parse_int(v: &str) -> Option<i64> {
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A required integer query parameter.
pub(crate) fn int(q: &Params, name: &str) -> Result<i64, ApiError> {
    let v = q
        .get(name)
        .ok_or_else(|| ApiError::bad(format!("missing query parameter `{name}`")))?;
    parse_int(v).ok_or_else(|| {
        ApiError::bad(format!(
            "query parameter `{name}` must be a decimal integer, got {v:?}"
        ))
    })
}

/// A required positive id.
pub(crate) fn id(q: &Params, name: &str) -> Result<i64, ApiError> {
    let v = int(q, name)?;
    if v <= 0 {
        return Err(ApiError::bad(format!(
            "query parameter `{name}` must be > 0"
        )));
    }
    Ok(v)
}

/// An optional integer query parameter. Missing and empty are the same (as in GoBelieve, whose
/// query lookup cannot tell them apart); any other value must be an integer.
pub(crate) fn opt_int(q: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    match q.get(name) {
        None | Some("") => Ok(None),
        Some(_) => int(q, name).map(Some),
    }
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid json: {e}")))
}

/// One stored message in the JSON shape of `/load_history_message` (docs/http-api.md); `None` for
/// kinds the API does not show.
pub(crate) fn message_json(m: &StoredMessage) -> Option<Value> {
    let body = Body::decode(m.cmd, proto::STORAGE_VERSION, &m.body).ok()?;
    let text = |c: &[u8]| String::from_utf8_lossy(c).into_owned();
    match body {
        Body::Im(im) | Body::GroupIm(im) => Some(json!({
            "command": m.cmd, "content": text(&im.content), "id": m.key,
            "receiver": im.receiver, "sender": im.sender, "timestamp": im.timestamp,
        })),
        Body::Customer(c) => Some(json!({
            "command": m.cmd, "content": text(&c.content), "id": m.key,
            "receiver": c.receiver, "sender": c.sender, "timestamp": c.timestamp,
            "sender_appid": c.sender_appid, "receiver_appid": c.receiver_appid,
        })),
        _ => None,
    }
}
