//! Issuing login tokens for bench users.
//!
//! * [`TokenSource::Http`]: banter's `POST /auth/grant` (`{"appid","uid","user_name"}` → `{"token"}`), over a
//!   few keep-alive connections in parallel.
//! * [`TokenSource::Redis`]: what GoBelieve-compatible servers read: random tokens written as
//!   `HSET access_token_<t> user_id <uid> app_id <appid> user_name <name>` plus
//!   `HSET users_<appid>_<uid> access_token <t> name <name>`, pipelined.
//!
//! Either way the same run can target banter and the original server.

use std::str::FromStr;

use rand::distr::{Alphanumeric, SampleString};

use crate::api::{BaseUrl, HttpClient, HttpError};

/// Parallel HTTP connections used to grant tokens.
const GRANT_CONNECTIONS: usize = 4;
/// Users per Redis pipeline.
const REDIS_CHUNK: usize = 500;

/// Why tokens could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("bad --tokens value {0:?}: expected redis=<url> or http=<url>")]
    BadSpec(String),
    #[error("granting a token over HTTP: {0}")]
    Http(#[from] HttpError),
    #[error("grant response has no \"token\" string: {0}")]
    NoToken(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("token task failed: {0}")]
    Task(String),
}

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// banter's `/auth/grant` at this API base URL.
    Http {
        base: BaseUrl,
        secret: Option<String>,
    },
    /// A Redis server shared with a GoBelieve-compatible server.
    Redis { url: String },
}

/// A `--tokens` value before the API secret is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSpec {
    Http(String),
    Redis(String),
}

impl FromStr for TokenSpec {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some(("http", url)) if !url.is_empty() => Ok(TokenSpec::Http(url.to_string())),
            Some(("redis", url)) if !url.is_empty() => Ok(TokenSpec::Redis(url.to_string())),
            _ => Err(TokenError::BadSpec(s.to_string())),
        }
    }
}

/// The name bench users get.
pub fn user_name(uid: i64) -> String {
    format!("bench{uid}")
}

impl TokenSource {
    /// Issues one token per uid, in order.
    pub async fn issue(&self, appid: i64, uids: &[i64]) -> Result<Vec<String>, TokenError> {
        match self {
            TokenSource::Http { base, secret } => {
                grant_http(base, secret.as_deref(), appid, uids).await
            }
            TokenSource::Redis { url } => write_redis(url, appid, uids).await,
        }
    }
}

async fn grant_http(
    base: &BaseUrl,
    secret: Option<&str>,
    appid: i64,
    uids: &[i64],
) -> Result<Vec<String>, TokenError> {
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    let chunk = uids.len().div_ceil(GRANT_CONNECTIONS);
    let mut tasks = Vec::new();
    for part in uids.chunks(chunk) {
        let part = part.to_vec();
        let client = HttpClient::new(base.clone(), secret.map(str::to_string));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(part.len());
            for uid in part {
                let v = client
                    .post_json_ok(
                        "/auth/grant",
                        &serde_json::json!({"appid": appid, "uid": uid, "user_name": user_name(uid)}),
                    )
                    .await?;
                match v.get("token").and_then(|t| t.as_str()) {
                    Some(t) => out.push(t.to_string()),
                    None => return Err(TokenError::NoToken(v.to_string())),
                }
            }
            Ok(out)
        }));
    }
    let mut tokens = Vec::with_capacity(uids.len());
    for t in tasks {
        tokens.extend(t.await.map_err(|e| TokenError::Task(e.to_string()))??);
    }
    Ok(tokens)
}

async fn write_redis(url: &str, appid: i64, uids: &[i64]) -> Result<Vec<String>, TokenError> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let mut rng = rand::rng();
    let tokens: Vec<String> = uids
        .iter()
        .map(|_| Alphanumeric.sample_string(&mut rng, 30))
        .collect();
    for (uids, tokens) in uids.chunks(REDIS_CHUNK).zip(tokens.chunks(REDIS_CHUNK)) {
        let mut pipe = redis::pipe();
        for (&uid, token) in uids.iter().zip(tokens) {
            let name = user_name(uid);
            pipe.hset_multiple(
                format!("access_token_{token}"),
                &[
                    ("user_id", uid.to_string()),
                    ("app_id", appid.to_string()),
                    ("user_name", name.clone()),
                ],
            )
            .ignore();
            pipe.hset_multiple(
                format!("users_{appid}_{uid}"),
                &[("access_token", token.clone()), ("name", name)],
            )
            .ignore();
        }
        let () = pipe.query_async(&mut con).await?;
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            "redis=redis://127.0.0.1:6379/0"
                .parse::<TokenSpec>()
                .unwrap(),
            TokenSpec::Redis("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(
            "http=http://127.0.0.1:6666".parse::<TokenSpec>().unwrap(),
            TokenSpec::Http("http://127.0.0.1:6666".into())
        );
        assert!("ftp=x".parse::<TokenSpec>().is_err());
        assert!("redis=".parse::<TokenSpec>().is_err());
        assert!("redis".parse::<TokenSpec>().is_err());
    }
}
