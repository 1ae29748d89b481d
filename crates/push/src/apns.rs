//! Apple Push Notification service over HTTP/2 with token authentication: an ES256 provider token
//! (`kid` = key id, `iss` = team id, `iat`) signed with the `.p8` key, cached and replaced after
//! 50 minutes (Apple accepts a token for an hour and refuses refreshing more than every 20
//! minutes), or at once when APNs answers `ExpiredProviderToken`.
//!
//! One request per device: `POST /3/device/<token>` with `apns-topic` (the bundle id, or the VoIP
//! topic for `pushkit` tokens with `apns-push-type: voip`), `apns-priority`, `apns-expiration`,
//! `apns-collapse-id` when configured, and `{"aps": {"alert": {"title", "body"}, "badge",
//! "sound"}, …}`. Answers: 200 sent; 410, or 400 `BadDeviceToken` / `DeviceTokenNotForTopic` /
//! `Unregistered`: the token is dead; 429 and 5xx retried (honouring `Retry-After`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::jws::Signer;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use parking_lot::Mutex;
use serde_json::json;

use crate::config::ApnsOptions;
use crate::http::{self, HttpsClient};
use crate::render::Notification;
use crate::{Outcome, PushError};

const PRODUCTION: &str = "https://api.push.apple.com";
const SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// Age at which the provider token is replaced.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// The cached ES256 provider token.
struct ProviderToken {
    key: Signer,
    key_id: String,
    team_id: String,
    cached: Mutex<Option<(HeaderValue, Instant)>>,
}

impl ProviderToken {
    fn get(&self) -> Result<HeaderValue, String> {
        let mut cached = self.cached.lock();
        if let Some((v, at)) = cached.as_ref() {
            if at.elapsed() < TOKEN_LIFETIME {
                return Ok(v.clone());
            }
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let jwt = self
            .key
            .sign(
                &json!({ "kid": self.key_id }),
                &json!({"iss": self.team_id, "iat": iat}),
            )
            .map_err(|e| format!("signing the APNs provider token: {e}"))?;
        let mut v = HeaderValue::from_str(&format!("bearer {jwt}"))
            .map_err(|e| format!("APNs provider token: {e}"))?;
        v.set_sensitive(true);
        *cached = Some((v.clone(), Instant::now()));
        Ok(v)
    }

    /// Forget the token APNs called expired (unless another task already replaced it).
    fn invalidate(&self, used: &HeaderValue) {
        let mut cached = self.cached.lock();
        if cached.as_ref().is_some_and(|(v, _)| v == used) {
            *cached = None;
        }
    }
}

/// The APNs sender of one app.
pub struct Apns {
    client: HttpsClient,
    base: String,
    token: ProviderToken,
    topic: HeaderValue,
    voip_topic: HeaderValue,
    priority: HeaderValue,
    expiration_secs: u64,
    collapse: bool,
    timeout: Duration,
}

fn header(what: &str, v: &str) -> Result<HeaderValue, PushError> {
    HeaderValue::from_str(v)
        .map_err(|_| PushError::Config(format!("apns {what} {v:?} is not a valid header value")))
}

impl Apns {
    /// Reads the key file and checks the options.
    pub fn new(o: &ApnsOptions, ca_file: &str, timeout: Duration) -> Result<Apns, PushError> {
        for (what, v) in [
            ("key_file", &o.key_file),
            ("key_id", &o.key_id),
            ("team_id", &o.team_id),
            ("topic", &o.topic),
        ] {
            if v.trim().is_empty() {
                return Err(PushError::Config(format!("apns.{what} is required")));
            }
        }
        if !matches!(o.priority, 5 | 10) {
            return Err(PushError::Config(format!(
                "apns.priority must be 5 or 10, got {}",
                o.priority
            )));
        }
        let pem = std::fs::read(&o.key_file)
            .map_err(|e| PushError::Config(format!("apns.key_file {}: {e}", o.key_file)))?;
        let key = Signer::es256_pem(&pem).map_err(|e| {
            PushError::Config(format!(
                "apns.key_file {} is not a PKCS#8 P-256 key: {e}",
                o.key_file
            ))
        })?;
        let base = if !o.endpoint.trim().is_empty() {
            o.endpoint.trim().trim_end_matches('/').to_string()
        } else if o.sandbox {
            SANDBOX.into()
        } else {
            PRODUCTION.into()
        };
        let voip = if o.voip_topic.trim().is_empty() {
            format!("{}.voip", o.topic)
        } else {
            o.voip_topic.clone()
        };
        let apns = Apns {
            client: http::client(ca_file, true, timeout)?,
            base,
            token: ProviderToken {
                key,
                key_id: o.key_id.clone(),
                team_id: o.team_id.clone(),
                cached: Mutex::new(None),
            },
            topic: header("topic", &o.topic)?,
            voip_topic: header("voip_topic", &voip)?,
            priority: HeaderValue::from(u16::from(o.priority)),
            expiration_secs: o.expiration_secs,
            collapse: o.collapse,
            timeout,
        };
        // Sign once now, so a key that cannot sign fails at start-up.
        apns.token.get().map_err(PushError::Config)?;
        Ok(apns)
    }

    /// The JSON payload.
    pub fn payload(n: &Notification) -> serde_json::Value {
        let mut alert = serde_json::Map::new();
        if !n.title.is_empty() {
            alert.insert("title".into(), n.title.clone().into());
        }
        alert.insert("body".into(), n.body.clone().into());
        let mut v = json!({
            "aps": {"alert": alert, "badge": n.badge, "sound": "default"},
        });
        match n.conversation {
            crate::render::Conversation::Peer { sender } => v["sender"] = sender.into(),
            crate::render::Conversation::Group { sender, group_id } => {
                v["sender"] = sender.into();
                v["group_id"] = group_id.into();
            }
            crate::render::Conversation::Customer {
                sender_appid,
                sender,
            } => {
                v["sender"] = sender.into();
                v["sender_appid"] = sender_appid.into();
            }
            crate::render::Conversation::System => {}
        }
        v
    }

    /// One attempt to send `n` to `device` (`voip`: a PushKit token).
    pub async fn send(&self, device: &str, voip: bool, n: &Notification, body: &Bytes) -> Outcome {
        if device.is_empty() || !device.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Outcome::Unregistered("not an APNs device token (hex expected)".into());
        }
        let auth = match self.token.get() {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(e),
        };
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        let uri = format!("{}/3/device/{device}", self.base);
        match uri.parse() {
            Ok(u) => *req.uri_mut() = u,
            Err(e) => return Outcome::Failed(format!("APNs URL: {e}")),
        }
        let h = req.headers_mut();
        h.insert(AUTHORIZATION, auth.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if voip {
            h.insert("apns-topic", self.voip_topic.clone());
            h.insert("apns-push-type", HeaderValue::from_static("voip"));
            h.insert("apns-priority", HeaderValue::from_static("10"));
        } else {
            h.insert("apns-topic", self.topic.clone());
            h.insert("apns-push-type", HeaderValue::from_static("alert"));
            h.insert("apns-priority", self.priority.clone());
        }
        let expiration = if self.expiration_secs == 0 {
            0
        } else {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
                + self.expiration_secs
        };
        h.insert("apns-expiration", HeaderValue::from(expiration));
        if self.collapse {
            if let Ok(v) = HeaderValue::from_str(&n.conversation.collapse_id()) {
                h.insert("apns-collapse-id", v);
            }
        }
        let a = match http::exchange(&self.client, req, self.timeout).await {
            Ok(a) => a,
            Err(e) => {
                return Outcome::Retry {
                    why: e,
                    after: None,
                }
            }
        };
        let reason = serde_json::from_slice::<serde_json::Value>(&a.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default();
        match a.status {
            StatusCode::OK => Outcome::Sent,
            StatusCode::GONE => Outcome::Unregistered(format!("410 {reason}")),
            StatusCode::BAD_REQUEST
                if matches!(
                    reason.as_str(),
                    "BadDeviceToken" | "DeviceTokenNotForTopic" | "Unregistered"
                ) =>
            {
                Outcome::Unregistered(format!("400 {reason}"))
            }
            StatusCode::FORBIDDEN if reason == "ExpiredProviderToken" => {
                self.token.invalidate(&auth);
                Outcome::Retry {
                    why: "403 ExpiredProviderToken".into(),
                    after: Some(Duration::ZERO),
                }
            }
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => Outcome::Retry {
                why: format!("{} {reason}", s.as_u16()),
                after: a.retry_after,
            },
            s => Outcome::Failed(format!("{} {reason}", s.as_u16())),
        }
    }
}
