//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range|put|deleterange|txn`,
//! `/v3/lease/grant|keepalive|revoke`, the streaming `/v3/watch`), on the project's reqwest
//! client. Keys and values travel base64-encoded, 64-bit integers as JSON strings.
//!
//! Why the gateway and not gRPC: the `etcd-client` crate runs `protoc` in its build script, and
//! the README's two commands must work with only the Rust toolchain. The gateway is part of every
//! etcd server since 3.3 (enabled by default), needs no generated code, and the few calls used here
//! are plain request/response JSON except the watch, a newline-delimited stream of JSON objects
//! (docs/cluster.md, *etcd*).
//!
//! Every call tries the configured endpoints in turn, starting with the last one that answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// What went wrong talking to etcd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached (or none answered in time).
    #[error("etcd is unreachable: {0}")]
    Unavailable(String),
    /// etcd answered with an error.
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// The answer was not what the gateway documents.
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
    /// Invalid configuration (no endpoint).
    #[error("invalid etcd configuration: {0}")]
    Config(String),
}

/// One key as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the key's creation (the fencing epoch of a leadership key).
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease it is attached to (0 = none).
    pub lease: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, mod_revision: i64 },
}

/// An etcd client (cheap to clone).
#[derive(Clone)]
pub struct Etcd {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    client: reqwest::Client,
    current: AtomicUsize,
    timeout: Duration,
}

/// Reads a 64-bit integer the gateway writes as a string (or a number); absent = 0.
pub(crate) fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn unb64(v: &Value) -> Result<Vec<u8>, EtcdError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => B64
            .decode(s)
            .map_err(|e| EtcdError::Protocol(format!("bad base64: {e}"))),
        other => Err(EtcdError::Protocol(format!("expected base64, got {other}"))),
    }
}

pub(crate) fn parse_kv(v: &Value) -> Result<KeyValue, EtcdError> {
    let key = String::from_utf8(unb64(&v["key"])?)
        .map_err(|_| EtcdError::Protocol("key is not UTF-8".into()))?;
    Ok(KeyValue {
        key,
        value: unb64(&v["value"])?,
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    })
}

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

impl Etcd {
    /// A client of the etcd cluster at `endpoints` (`http://host:port`); `timeout` bounds each
    /// request (connect included). Nothing is contacted yet.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Etcd, EtcdError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoint".into()));
        }
        if let Some(bad) = endpoints
            .iter()
            .find(|e| !e.starts_with("http://") && !e.starts_with("https://"))
        {
            return Err(EtcdError::Config(format!(
                "etcd endpoint {bad:?} must start with http:// or https://"
            )));
        }
        let client = node::http_client::builder(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| EtcdError::Config(format!("HTTP client: {e}")))?;
        Ok(Etcd {
            inner: std::sync::Arc::new(Inner {
                endpoints,
                client,
                current: AtomicUsize::new(0),
                timeout,
            }),
        })
    }

    /// The endpoints, as configured.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// Sends `body` to `path` on the first endpoint that answers; `timeout` overrides the
    /// client's. Returns the response (status 200) or the error.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, EtcdError> {
        let n = self.inner.endpoints.len();
        let first = self.inner.current.load(Ordering::Relaxed) % n;
        let mut last = String::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let url = format!("{}{path}", self.inner.endpoints[idx]);
            let mut req = self.inner.client.post(&url).json(body);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match req.send().await {
                Ok(resp) => {
                    self.inner.current.store(idx, Ordering::Relaxed);
                    let status = resp.status();
                    if status.is_success() {
                        return Ok(resp);
                    }
                    let text = resp.text().await.unwrap_or_default();
                    let msg = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or(text);
                    if status.is_server_error() && msg.contains("leader") {
                        // no raft leader on that member: try another
                        last = format!("{url}: {msg}");
                        continue;
                    }
                    return Err(EtcdError::Refused(format!("{path}: {msg}")));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(EtcdError::Unavailable(last))
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let resp = self.send(path, &body, None).await?;
        let text = resp
            .text()
            .await
            .map_err(|e| EtcdError::Unavailable(format!("{path}: reading the answer: {e}")))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| EtcdError::Protocol(format!("{path}: {e}: {text}")))?;
        if let Some(err) = v.get("error") {
            return Err(EtcdError::Refused(format!("{path}: {err}")));
        }
        Ok(v)
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1); returns its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/lease/grant",
                json!({"TTL": ttl.as_secs().max(1).to_string()}),
            )
            .await?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Protocol(format!(
                "lease grant without an ID: {v}"
            ))),
            id => Ok(id),
        }
    }

    /// Renews lease `id` once. `Ok(None)` = the lease no longer exists (expired or revoked).
    pub async fn keep_alive(&self, id: i64) -> Result<Option<Duration>, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
            .await?;
        let ttl = int(&v["result"]["TTL"]);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)))
    }

    /// Revokes lease `id`, deleting its keys at once. A lease already gone is not an error.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self
            .call("/v3/lease/revoke", json!({"ID": id.to_string()}))
            .await
        {
            Err(EtcdError::Refused(m)) if m.contains("not found") => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Sets `key` (attached to `lease` when not 0); returns the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let v = self.call("/v3/kv/put", body).await?;
        Ok(int(&v["header"]["revision"]))
    }

    /// The value of `key`, if set.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let v = self
            .call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
            .await?;
        match v["kvs"].as_array().and_then(|a| a.first()) {
            Some(kv) => parse_kv(kv).map(Some),
            None => Ok(None),
        }
    }

    /// Every key starting with `prefix`, in key order, and the revision they were read at.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
            )
            .await?;
        let kvs = match v["kvs"].as_array() {
            Some(a) => a.iter().map(parse_kv).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok((int(&v["header"]["revision"]), kvs))
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let v = self
            .call("/v3/kv/deleterange", json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(int(&v["deleted"]) > 0)
    }

    /// Creates `key` only if it does not exist (compare-and-swap on its create revision), attached
    /// to `lease`. `Ok(Ok(revision))` = created at that revision; `Ok(Err(existing))` = someone
    /// holds it.
    pub async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<Result<i64, KeyValue>, EtcdError> {
        let k = b64(key.as_bytes());
        let mut put = json!({"key": k, "value": b64(value)});
        if lease != 0 {
            put["lease"] = json!(lease.to_string());
        }
        let v = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                    "success": [{"request_put": put}],
                    "failure": [{"request_range": {"key": k}}],
                }),
            )
            .await?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(Ok(int(&v["header"]["revision"])));
        }
        let kv = v["responses"][0]["response_range"]["kvs"][0].clone();
        if kv.is_null() {
            // deleted between the compare and the range: not ours either way
            return Err(EtcdError::Protocol(format!(
                "compare-and-swap on {key} failed without a holder"
            )));
        }
        parse_kv(&kv).map(Err)
    }

    /// Deletes `key` only if its create revision is `create_revision` (so a leadership key is
    /// removed by the holder of that term only). Returns whether it was deleted.
    pub async fn delete_if_created(
        &self,
        key: &str,
        create_revision: i64,
    ) -> Result<bool, EtcdError> {
        let k = b64(key.as_bytes());
        let v = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": create_revision.to_string()}],
                    "success": [{"request_delete_range": {"key": k}}],
                }),
            )
            .await?;
        Ok(v["succeeded"].as_bool() == Some(true))
    }

    /// Opens a watch of every key starting with `prefix`, from `start_revision` on. The watch
    /// lasts until `max_duration` passes or the connection fails; [`WatchStream::next`] then
    /// returns an error and the caller re-reads and watches again.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
        max_duration: Duration,
    ) -> Result<WatchStream, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let resp = self
            .send("/v3/watch", &body, Some(max_duration + self.inner.timeout))
            .await?;
        Ok(WatchStream {
            resp,
            buf: Vec::new(),
        })
    }
}

/// An open watch: the gateway's stream of JSON objects, one per line.
pub struct WatchStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl WatchStream {
    /// The next batch of events (empty for the creation notice and progress reports), with the
    /// revision they bring the watcher to. An error ends the watch (connection lost, watch
    /// cancelled, or compacted past its start revision).
    pub async fn next(&mut self) -> Result<(i64, Vec<Event>), EtcdError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return parse_watch_message(&line);
            }
            match self.resp.chunk().await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c),
                Ok(None) => {
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Err(EtcdError::Unavailable("watch stream ended".into()));
                    }
                    let line = std::mem::take(&mut self.buf);
                    return parse_watch_message(&line);
                }
                Err(e) => return Err(EtcdError::Unavailable(format!("watch stream: {e}"))),
            }
        }
    }
}

fn parse_watch_message(line: &[u8]) -> Result<(i64, Vec<Event>), EtcdError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| EtcdError::Protocol(format!("watch message: {e}")))?;
    if let Some(err) = v.get("error") {
        return Err(EtcdError::Refused(format!("watch: {err}")));
    }
    let r = &v["result"];
    if r["canceled"].as_bool() == Some(true) || int(&r["compact_revision"]) > 0 {
        return Err(EtcdError::Refused(format!(
            "watch cancelled: {}",
            r["cancel_reason"].as_str().unwrap_or("compacted")
        )));
    }
    let rev = int(&r["header"]["revision"]);
    let mut events = Vec::new();
    for e in r["events"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let kv = parse_kv(&e["kv"])?;
        if e["type"].as_str() == Some("DELETE") {
            events.push(Event::Delete {
                key: kv.key,
                mod_revision: kv.mod_revision,
            });
        } else {
            events.push(Event::Put(kv));
        }
    }
    Ok((rev, events))
}
