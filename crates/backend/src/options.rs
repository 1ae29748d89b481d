//! Start-up options of both backend variants. They double as sections of `banter.toml`
//! (serde with `deny_unknown_fields` and defaults for every field).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default write-behind flush interval for sync-key hints and unread counts.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 200;

/// JWT verification keys. A JWT is accepted when it is HMAC-signed (HS256, HS384 or HS512) with the
/// secret of the app named by its `appid` claim, or, when that app has no secret of its own, with the
/// global secret. With no secret configured at all, JWT authentication is off.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtOptions {
    /// Global HMAC secret (raw bytes of the string) for apps without a secret of their own.
    /// GoBelieve's `jwt_signing_key`. Unset: only apps listed in `app_secrets` accept JWTs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Per-app HMAC secrets, keyed by appid written as a string: `"7" = "secret-of-app-7"`.
    #[serde(
        serialize_with = "ser_app_secrets",
        deserialize_with = "de_app_secrets"
    )]
    pub app_secrets: BTreeMap<i64, String>,
}

/// Secrets are redacted, so logging the configuration does not leak them.
impl std::fmt::Debug for JwtOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtOptions")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("app_secrets", &self.app_secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl JwtOptions {
    /// True when at least one secret is configured, i.e. JWTs can be verified at all.
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || !self.app_secrets.is_empty()
    }
}

fn ser_app_secrets<S: Serializer>(map: &BTreeMap<i64, String>, s: S) -> Result<S::Ok, S::Error> {
    let as_strings: BTreeMap<String, &String> =
        map.iter().map(|(k, v)| (k.to_string(), v)).collect();
    as_strings.serialize(s)
}

fn de_app_secrets<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i64, String>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.trim()
                .parse::<i64>()
                .map(|appid| (appid, v))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "app_secrets key {k:?} is not an integer appid"
                    ))
                })
        })
        .collect()
}

/// The embedded backend: one SQLite file, nothing to install.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedOptions {
    /// The SQLite database file. Its parent directory is created when missing.
    pub path: PathBuf,
    /// JWT verification keys (also accepted in embedded mode).
    pub jwt: JwtOptions,
    /// How often (milliseconds) reported sync keys and unread counts are written to the file in one
    /// transaction. They are hints: a crash loses at most this much of them.
    pub flush_interval_ms: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            path: PathBuf::from("data/backend.sqlite3"),
            jwt: JwtOptions::default(),
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
        }
    }
}

/// The GoBelieve-compatible Redis backend (keys of spec §16.1), for running beside an existing
/// GoBelieve API server that issues tokens.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisOptions {
    /// `redis://[:password@]host:port/db` (password and database number in the URL).
    pub url: String,
    /// JWT verification keys (checked before the `access_token_<token>` lookup for JWT-shaped tokens).
    pub jwt: JwtOptions,
    /// How often (milliseconds) reported sync keys and unread counts are written to Redis in one
    /// pipeline. They are hints: a crash loses at most this much of them.
    pub flush_interval_ms: u64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379/0".to_owned(),
            jwt: JwtOptions::default(),
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
        }
    }
}
