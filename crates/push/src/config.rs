//! Options of the built-in push senders: `[push.native]` of `banter.toml` (serde with
//! `deny_unknown_fields` and defaults for every field). Options name credential *files*; their
//! contents are read at start-up and never logged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[push.native]`: queues, limits, retries, texts, and the providers of each app.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NativeOptions {
    /// Most jobs (messages) waiting to be resolved into device notifications; beyond it jobs are
    /// dropped and counted.
    pub queue_capacity: usize,
    /// Most device notifications waiting per provider (APNs, FCM); beyond it they are dropped and
    /// counted.
    pub provider_queue_capacity: usize,
    /// Most requests in flight per provider.
    pub concurrency: usize,
    /// Attempts per notification (the first included) on 429, 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    /// Base of the exponential back-off between attempts, in milliseconds (full jitter); a
    /// provider's `Retry-After` is honoured instead when present.
    pub backoff_ms: u64,
    /// Longest wait between attempts, in milliseconds (also caps `Retry-After`).
    pub max_backoff_ms: u64,
    /// Timeout of one request (connect, send, answer), in milliseconds.
    pub timeout_ms: u64,
    /// PEM file of extra trusted root certificates (beside the public web roots), for a TLS proxy
    /// in front of the providers or local test servers. `""` = none.
    pub ca_file: String,
    /// Push system messages (`/post_system_message`) too; off by default, as GoBelieve.
    pub push_system: bool,
    /// Texts per language; an app picks one with its `language`. Built in: `en` and `zh`.
    pub texts: BTreeMap<String, Texts>,
    /// The apps with providers; jobs of other apps are skipped.
    pub apps: Vec<AppPush>,
}

impl Default for NativeOptions {
    fn default() -> Self {
        NativeOptions {
            queue_capacity: 100_000,
            provider_queue_capacity: 100_000,
            concurrency: 64,
            max_attempts: 5,
            backoff_ms: 500,
            max_backoff_ms: 60_000,
            timeout_ms: 10_000,
            ca_file: String::new(),
            push_system: false,
            texts: BTreeMap::new(),
            apps: Vec::new(),
        }
    }
}

/// The body texts of non-text messages and titles without a sender name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Texts {
    pub image: String,
    pub voice: String,
    pub file: String,
    pub video: String,
    pub location: String,
    /// A message whose content is not recognised.
    pub message: String,
    /// Title of system messages.
    pub system: String,
}

impl Default for Texts {
    fn default() -> Self {
        Texts::english()
    }
}

impl Texts {
    /// The built-in English texts.
    pub fn english() -> Texts {
        Texts {
            image: "[image]".into(),
            voice: "[voice]".into(),
            file: "[file]".into(),
            video: "[video]".into(),
            location: "[location]".into(),
            message: "[message]".into(),
            system: "Notification".into(),
        }
    }

    /// The built-in Chinese texts.
    pub fn chinese() -> Texts {
        Texts {
            image: "[图片]".into(),
            voice: "[语音]".into(),
            file: "[文件]".into(),
            video: "[视频]".into(),
            location: "[位置]".into(),
            message: "[消息]".into(),
            system: "通知".into(),
        }
    }
}

/// The providers of one app.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppPush {
    pub appid: i64,
    /// Key of `texts` (`en`, `zh` built in).
    pub language: String,
    /// Apple push for `apns` and `pushkit` device tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsOptions>,
    /// Firebase Cloud Messaging for `gcm` device tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fcm: Option<FcmOptions>,
}

impl Default for AppPush {
    fn default() -> Self {
        AppPush {
            appid: 0,
            language: "en".into(),
            apns: None,
            fcm: None,
        }
    }
}

/// APNs with token authentication (a `.p8` signing key).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApnsOptions {
    /// The `.p8` file (PKCS#8 PEM of the P-256 key) downloaded from Apple.
    pub key_file: String,
    /// Its 10-character key id.
    pub key_id: String,
    /// The developer team id (the JWT's issuer).
    pub team_id: String,
    /// `apns-topic` of alerts: the app's bundle id.
    pub topic: String,
    /// `apns-topic` of VoIP pushes to `pushkit` tokens; `""` = `<topic>.voip`.
    pub voip_topic: String,
    /// The sandbox endpoint (development builds) instead of production.
    pub sandbox: bool,
    /// Base URL overriding the endpoint (`https://host:port`); `""` = Apple's.
    pub endpoint: String,
    /// `apns-expiration`: seconds APNs keeps trying an undeliverable notification; 0 = once only.
    pub expiration_secs: u64,
    /// `apns-priority` of alerts: 10 (immediately) or 5 (power considerations).
    pub priority: u8,
    /// Set `apns-collapse-id` to the conversation, so a phone shows only its newest notification.
    pub collapse: bool,
}

impl Default for ApnsOptions {
    fn default() -> Self {
        ApnsOptions {
            key_file: String::new(),
            key_id: String::new(),
            team_id: String::new(),
            topic: String::new(),
            voip_topic: String::new(),
            sandbox: false,
            endpoint: String::new(),
            expiration_secs: 86_400,
            priority: 10,
            collapse: false,
        }
    }
}

/// FCM HTTP v1 with a service-account key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmOptions {
    /// The service-account JSON key file (`project_id`, `client_email`, `private_key`,
    /// `token_uri`).
    pub service_account_file: String,
    /// Base URL overriding `https://fcm.googleapis.com`.
    pub endpoint: String,
    /// OAuth2 token endpoint overriding the key file's `token_uri`.
    pub token_uri: String,
    /// Send data messages only (the app builds the notification) instead of notification
    /// messages.
    pub data_only: bool,
    /// `android.ttl` in seconds.
    pub ttl_secs: u64,
    /// Set `android.collapse_key` to the conversation.
    pub collapse: bool,
}

impl Default for FcmOptions {
    fn default() -> Self {
        FcmOptions {
            service_account_file: String::new(),
            endpoint: String::new(),
            token_uri: String::new(),
            data_only: false,
            ttl_secs: 86_400,
            collapse: false,
        }
    }
}
