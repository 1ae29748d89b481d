//! Firebase Cloud Messaging, HTTP v1 API, with a service-account key.
//!
//! The OAuth2 access token comes from the JWT-bearer grant (RFC 7523): an RS256 assertion signed
//! with the key's `private_key` (`iss` = `client_email`, `scope` = firebase.messaging, `aud` =
//! token URI) posted to the token URI; it is cached until five minutes before it expires, or
//! dropped when FCM answers 401. Only one task fetches a token at a time.
//!
//! One request per device: `POST /v1/projects/<project>/messages:send` with
//! `{"message": {"token", "notification": {"title", "body"}, "data": {…}, "android": {"ttl",
//! "priority", "collapse_key"?, "notification": {"notification_count"}}}}` (data messages leave
//! out both notification parts). Answers: 200 sent; `UNREGISTERED` (404) and `INVALID_ARGUMENT`
//! (400): the token is dead; 429 and 5xx retried (honouring `Retry-After`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::jws::Signer;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use metrics::Counter;
use serde::Deserialize;
use serde_json::json;

use crate::config::FcmOptions;
use crate::http::{self, HttpsClient};
use crate::render::{Conversation, Notification};
use crate::{Outcome, PushError};

const ENDPOINT: &str = "https://fcm.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// A token is replaced this long before it expires.
const EARLY: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    token_uri: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

/// The FCM sender of one app.
pub struct Fcm {
    client: HttpsClient,
    send_url: hyper::Uri,
    token_uri: hyper::Uri,
    client_email: String,
    key: Signer,
    /// The cached access token and when to replace it; the lock is held while fetching.
    token: tokio::sync::Mutex<Option<(HeaderValue, Instant)>>,
    data_only: bool,
    ttl_secs: u64,
    collapse: bool,
    timeout: Duration,
    /// Counts the access tokens fetched (`banter_push_oauth_tokens_total`).
    oauth_tokens: Counter,
}

impl Fcm {
    /// Reads the service-account key and checks the options; every access token fetched counts
    /// one on `oauth_tokens`.
    pub fn new(
        o: &FcmOptions,
        ca_file: &str,
        timeout: Duration,
        oauth_tokens: Counter,
    ) -> Result<Fcm, PushError> {
        if o.service_account_file.trim().is_empty() {
            return Err(PushError::Config(
                "fcm.service_account_file is required".into(),
            ));
        }
        let raw = std::fs::read(&o.service_account_file).map_err(|e| {
            PushError::Config(format!(
                "fcm.service_account_file {}: {e}",
                o.service_account_file
            ))
        })?;
        // The error never quotes the file: it holds the private key.
        let sa: ServiceAccount = serde_json::from_slice(&raw).map_err(|e| {
            PushError::Config(format!(
                "fcm.service_account_file {} is not a service-account key (line {}, column {})",
                o.service_account_file,
                e.line(),
                e.column()
            ))
        })?;
        let key = Signer::rs256_pem(sa.private_key.as_bytes()).map_err(|_| {
            PushError::Config(format!(
                "fcm.service_account_file {}: private_key is not an RSA PEM key",
                o.service_account_file
            ))
        })?;
        let endpoint = if o.endpoint.trim().is_empty() {
            ENDPOINT
        } else {
            o.endpoint.trim()
        };
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            endpoint.trim_end_matches('/'),
            sa.project_id
        )
        .parse()
        .map_err(|e| PushError::Config(format!("fcm endpoint: {e}")))?;
        let token_uri = if o.token_uri.trim().is_empty() {
            sa.token_uri.as_str()
        } else {
            o.token_uri.trim()
        };
        let token_uri = token_uri
            .parse()
            .map_err(|e| PushError::Config(format!("fcm token_uri {token_uri:?}: {e}")))?;
        Ok(Fcm {
            client: http::client(ca_file, false, timeout)?,
            send_url,
            token_uri,
            client_email: sa.client_email,
            key,
            token: tokio::sync::Mutex::new(None),
            data_only: o.data_only,
            ttl_secs: o.ttl_secs,
            collapse: o.collapse,
            timeout,
            oauth_tokens,
        })
    }

    async fn access_token(&self) -> Result<HeaderValue, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((v, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(v.clone());
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri.to_string(),
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = self
            .key
            .sign(&serde_json::json!({}), &claims)
            .map_err(|e| Outcome::Failed(format!("signing the FCM token request: {e}")))?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let mut req = Request::new(Full::new(Bytes::from(form)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.token_uri.clone();
        req.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let a = http::exchange(&self.client, req, self.timeout)
            .await
            .map_err(|e| Outcome::Retry {
                why: format!("FCM token endpoint: {e}"),
                after: None,
            })?;
        if a.status == StatusCode::TOO_MANY_REQUESTS || a.status.is_server_error() {
            return Err(Outcome::Retry {
                why: format!("FCM token endpoint: {}", a.status.as_u16()),
                after: a.retry_after,
            });
        }
        if !a.status.is_success() {
            return Err(Outcome::Failed(format!(
                "FCM token endpoint refused the key: {}",
                a.status.as_u16()
            )));
        }
        let t: TokenAnswer = serde_json::from_slice(&a.body)
            .map_err(|e| Outcome::Failed(format!("FCM token endpoint answer: {e}")))?;
        let mut v = HeaderValue::from_str(&format!("Bearer {}", t.access_token))
            .map_err(|_| Outcome::Failed("FCM access token is not a header value".into()))?;
        v.set_sensitive(true);
        let life = Duration::from_secs(t.expires_in.max(60));
        let until = Instant::now() + life.saturating_sub(EARLY).max(Duration::from_secs(30));
        *cached = Some((v.clone(), until));
        self.oauth_tokens.increment(1);
        Ok(v)
    }

    async fn forget_token(&self, used: &HeaderValue) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|(v, _)| v == used) {
            *cached = None;
        }
    }

    /// The JSON body for `device`.
    pub fn message(&self, device: &str, n: &Notification) -> serde_json::Value {
        let mut data = serde_json::Map::new();
        match n.conversation {
            Conversation::Peer { sender } => {
                data.insert("sender".into(), sender.to_string().into());
            }
            Conversation::Group { sender, group_id } => {
                data.insert("sender".into(), sender.to_string().into());
                data.insert("group_id".into(), group_id.to_string().into());
            }
            Conversation::Customer {
                sender_appid,
                sender,
            } => {
                data.insert("sender".into(), sender.to_string().into());
                data.insert("sender_appid".into(), sender_appid.to_string().into());
            }
            Conversation::System => {}
        }
        data.insert("badge".into(), n.badge.to_string().into());
        let mut android = json!({"ttl": format!("{}s", self.ttl_secs), "priority": "high"});
        if self.collapse {
            android["collapse_key"] = n.conversation.collapse_id().into();
        }
        let mut message = json!({"token": device});
        if self.data_only {
            data.insert("title".into(), n.title.clone().into());
            data.insert("body".into(), n.body.clone().into());
        } else {
            message["notification"] = json!({"title": n.title, "body": n.body});
            android["notification"] = json!({"notification_count": n.badge});
        }
        message["data"] = data.into();
        message["android"] = android;
        json!({ "message": message })
    }

    /// One attempt to send `n` to `device`.
    pub async fn send(&self, device: &str, n: &Notification) -> Outcome {
        let auth = match self.access_token().await {
            Ok(a) => a,
            Err(o) => return o,
        };
        let body = match serde_json::to_vec(&self.message(device, n)) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.send_url.clone();
        req.headers_mut().insert(AUTHORIZATION, auth.clone());
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let a = match http::exchange(&self.client, req, self.timeout).await {
            Ok(a) => a,
            Err(e) => {
                return Outcome::Retry {
                    why: e,
                    after: None,
                }
            }
        };
        if a.status.is_success() {
            return Outcome::Sent;
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        let status = v["error"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let code = v["error"]["details"]
            .as_array()
            .and_then(|d| d.iter().find_map(|x| x["errorCode"].as_str()))
            .unwrap_or_default()
            .to_string();
        let why = format!("{} {status} {code}", a.status.as_u16());
        if code == "UNREGISTERED"
            || status == "UNREGISTERED"
            || code == "INVALID_ARGUMENT"
            || status == "INVALID_ARGUMENT"
            || a.status == StatusCode::NOT_FOUND
        {
            return Outcome::Unregistered(why);
        }
        if a.status == StatusCode::UNAUTHORIZED {
            self.forget_token(&auth).await;
            return Outcome::Retry {
                why,
                after: Some(Duration::ZERO),
            };
        }
        if a.status == StatusCode::TOO_MANY_REQUESTS || a.status.is_server_error() {
            return Outcome::Retry {
                why,
                after: a.retry_after,
            };
        }
        Outcome::Failed(why)
    }
}
