//! The bench's calls to the server's HTTP API (`/auth/grant`, `/summary`, `/healthz`,
//! `/admin/groups`), through the project's one HTTP client (`node::http_client`: reqwest, pooled
//! keep-alive connections, every request bounded by a timeout).

use std::net::SocketAddr;
use std::time::Duration;

use node::reqwest::{self, Method};

/// Largest response body accepted.
const MAX_RESPONSE: usize = 16 << 20;
/// Default bound on one request.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an HTTP call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0:?}: only http://host:port[/path] is supported")]
    BadUrl(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("{method} {url}: {err}")]
    Request {
        method: &'static str,
        url: String,
        err: String,
    },
    #[error("{method} {url}: the response body exceeds {MAX_RESPONSE} bytes")]
    TooLarge { method: &'static str, url: String },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: response is not the expected JSON: {err}")]
    Json { url: String, err: String },
}

/// A parsed `http://host:port/prefix` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `host:port` as written.
    pub authority: String,
    /// Path prefix without a trailing slash (may be empty).
    pub prefix: String,
}

impl BaseUrl {
    /// Parses `http://host[:port][/prefix]` (port 80 by default); a bare `host:port` is accepted too.
    pub fn parse(url: &str) -> Result<BaseUrl, HttpError> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if rest.contains("://") || rest.is_empty() {
            return Err(HttpError::BadUrl(url.to_string()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(HttpError::BadUrl(url.to_string()));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(BaseUrl {
            authority,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// For a socket address.
    pub fn from_addr(addr: SocketAddr) -> BaseUrl {
        BaseUrl {
            authority: addr.to_string(),
            prefix: String::new(),
        }
    }

    /// Resolves the authority to a socket address.
    pub async fn resolve(&self) -> Result<SocketAddr, HttpError> {
        tokio::net::lookup_host(&self.authority)
            .await
            .map_err(|_| HttpError::Resolve(self.authority.clone()))?
            .next()
            .ok_or_else(|| HttpError::Resolve(self.authority.clone()))
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}{}", self.authority, self.prefix, path)
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// JSON calls to one API base URL, with an optional bearer secret.
pub struct HttpClient {
    base: BaseUrl,
    secret: Option<String>,
    client: Result<reqwest::Client, String>,
}

fn build(timeout: Duration) -> Result<reqwest::Client, String> {
    node::http_client::builder(timeout)
        .user_agent("banter-bench")
        .build()
        .map_err(|e| e.to_string())
}

impl HttpClient {
    /// A client for `base`; `secret` is sent as `Authorization: Bearer <secret>`.
    pub fn new(base: BaseUrl, secret: Option<String>) -> HttpClient {
        HttpClient {
            base,
            secret,
            client: build(DEFAULT_TIMEOUT),
        }
    }

    /// Sets the bound on each request.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.client = build(timeout);
        self
    }

    /// The base URL.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// GET `path`; returns status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, Vec<u8>), HttpError> {
        self.request(Method::GET, path, None).await
    }

    /// POST `path` with a JSON body; returns status and body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// POST `path` with a JSON body, expect 2xx and a JSON answer.
    pub async fn post_json_ok(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, HttpError> {
        let (status, resp) = self.post_json(path, body).await?;
        self.expect_json("POST", path, status, &resp)
    }

    /// GET `path`, expect 2xx and a JSON answer.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, HttpError> {
        let (status, resp) = self.get(path).await?;
        self.expect_json("GET", path, status, &resp)
    }

    fn expect_json(
        &self,
        method: &'static str,
        path: &str,
        status: u16,
        resp: &[u8],
    ) -> Result<serde_json::Value, HttpError> {
        if !(200..300).contains(&status) {
            return Err(HttpError::Status {
                method,
                url: self.base.url(path),
                status,
                body: String::from_utf8_lossy(&resp[..resp.len().min(300)]).into_owned(),
            });
        }
        if resp.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(resp).map_err(|e| HttpError::Json {
            url: self.base.url(path),
            err: e.to_string(),
        })
    }

    /// One request; the body is read up to [`MAX_RESPONSE`] bytes.
    async fn request(
        &self,
        method: Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| HttpError::Client(e.clone()))?;
        let url = self.base.url(path);
        let name: &'static str = if method == Method::GET { "GET" } else { "POST" };
        let failed = |err: reqwest::Error| HttpError::Request {
            method: name,
            url: url.clone(),
            err: if err.is_timeout() {
                "timed out".to_string()
            } else {
                err.to_string()
            },
        };
        let mut req = client
            .request(method, &url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(secret) = &self.secret {
            req = req.bearer_auth(secret);
        }
        if let Some(body) = json {
            req = req.json(body);
        }
        let mut resp = req.send().await.map_err(failed)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(HttpError::TooLarge { method: name, url });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn base_urls() {
        let b = BaseUrl::parse("http://localhost/api/").unwrap();
        assert_eq!(b.authority, "localhost:80");
        assert_eq!(b.prefix, "/api");
        assert_eq!(b.url("/x"), "http://localhost:80/api/x");
        assert_eq!(
            BaseUrl::parse("127.0.0.1:1").unwrap().authority,
            "127.0.0.1:1"
        );
        assert!(BaseUrl::parse("https://x").is_err());
        assert!(BaseUrl::parse("http://").is_err());
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// Answers the requests of one connection with `responses`, in order; returns the request heads.
    async fn serve_once(
        responses: Vec<&'static str>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut heads = Vec::new();
            for r in responses {
                loop {
                    if let Some(i) = find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().unwrap())
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            buf.advance(i + 4 + len);
                            heads.push(head);
                            break;
                        }
                    }
                    if s.read_buf(&mut buf).await.unwrap() == 0 {
                        return heads;
                    }
                }
                s.write_all(r.as_bytes()).await.unwrap();
            }
            heads
        });
        (addr, task)
    }

    #[tokio::test]
    async fn content_length_chunked_keepalive_and_bearer() {
        let (addr, server) = serve_once(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 15\r\ncontent-type: application/json\r\n\r\n{\"token\":\"abc\"}",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
        ])
        .await;
        let c = HttpClient::new(BaseUrl::from_addr(addr), Some("s".into()));
        let v = c
            .post_json_ok("/auth/grant", &serde_json::json!({"uid": 1}))
            .await
            .unwrap();
        assert_eq!(v["token"], "abc");
        let v = c.get_json("/summary").await.unwrap();
        assert_eq!(v["a"], 1);
        let e = c.get_json("/x").await.unwrap_err();
        assert!(matches!(e, HttpError::Status { status: 404, .. }), "{e}");
        drop(c);
        // All three on one keep-alive connection (the server accepts only one).
        let heads = server.await.unwrap();
        assert_eq!(heads.len(), 3);
        assert!(heads[0].starts_with("post /auth/grant "), "{}", heads[0]);
        assert!(heads[0].contains("authorization: bearer s"), "{}", heads[0]);
        assert!(heads[0].contains("content-type: application/json"));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let c = HttpClient::new(BaseUrl::from_addr(addr), None)
            .with_timeout(Duration::from_millis(200));
        let e = c.get("/healthz").await.unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        hold.abort();
    }
}
