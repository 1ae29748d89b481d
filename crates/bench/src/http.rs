//! A small HTTP/1.1 client for the server's API (`/auth/grant`, `/summary`, `/healthz`, `/admin/groups`).
//!
//! Plain `http://` only, one keep-alive connection per [`HttpClient`], `Content-Length` or chunked
//! responses, every step bounded by a timeout. It is not a general-purpose client: it exists so the bench
//! needs no HTTP stack of its own for a handful of JSON calls.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body accepted.
const MAX_RESPONSE: usize = 16 << 20;

/// Why an HTTP call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0:?}: only http://host:port[/path] is supported")]
    BadUrl(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("I/O with {addr}: {err}")]
    Io { addr: String, err: std::io::Error },
    #[error("timed out talking to {0}")]
    Timeout(String),
    #[error("malformed HTTP response from {0}")]
    Malformed(String),
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

/// A keep-alive HTTP/1.1 connection to one API base URL.
pub struct HttpClient {
    base: BaseUrl,
    secret: Option<String>,
    timeout: Duration,
    conn: Option<(TcpStream, BytesMut)>,
}

impl HttpClient {
    /// A client for `base`; `secret` is sent as `Authorization: Bearer <secret>`.
    pub fn new(base: BaseUrl, secret: Option<String>) -> HttpClient {
        HttpClient {
            base,
            secret,
            timeout: Duration::from_secs(10),
            conn: None,
        }
    }

    /// Sets the bound on each request.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// GET `path`; returns status and body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), HttpError> {
        self.request("GET", path, None).await
    }

    /// POST `path` with a JSON body; returns status and body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let body = body.to_string();
        self.request("POST", path, Some(body.as_bytes())).await
    }

    /// POST `path` with a JSON body, expect 2xx and a JSON answer.
    pub async fn post_json_ok(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, HttpError> {
        let (status, resp) = self.post_json(path, body).await?;
        self.expect_json("POST", path, status, &resp)
    }

    /// GET `path`, expect 2xx and a JSON answer.
    pub async fn get_json(&mut self, path: &str) -> Result<serde_json::Value, HttpError> {
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

    /// One request. A failure on a reused connection is retried once on a fresh one.
    pub async fn request(
        &mut self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let reused = self.conn.is_some();
        match self.request_once(method, path, body).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.conn = None;
                if reused && !matches!(e, HttpError::Timeout(_)) {
                    self.request_once(method, path, body)
                        .await
                        .inspect_err(|_| {
                            self.conn = None;
                        })
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn request_once(
        &mut self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let timeout = self.timeout;
        let authority = self.base.authority.clone();
        match tokio::time::timeout(timeout, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(HttpError::Timeout(authority))
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let authority = self.base.authority.clone();
        let io = |err| HttpError::Io {
            addr: authority.clone(),
            err,
        };
        if self.conn.is_none() {
            let addr = self.base.resolve().await?;
            let s = TcpStream::connect(addr).await.map_err(io)?;
            s.set_nodelay(true).map_err(io)?;
            self.conn = Some((s, BytesMut::with_capacity(4096)));
        }
        let Some((stream, buf)) = self.conn.as_mut() else {
            return Err(HttpError::Malformed(authority));
        };
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: banter-bench\r\nAccept: application/json\r\n",
            self.base.prefix, self.base.authority
        );
        if let Some(secret) = &self.secret {
            req.push_str(&format!("Authorization: Bearer {secret}\r\n"));
        }
        let body = body.unwrap_or_default();
        if method != "GET" || !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        stream.write_all(&out).await.map_err(io)?;

        let malformed = || HttpError::Malformed(authority.clone());
        // Head.
        let head_end = loop {
            if let Some(i) = find(buf, b"\r\n\r\n") {
                break i;
            }
            if buf.len() > 64 * 1024 {
                return Err(malformed());
            }
            if stream.read_buf(buf).await.map_err(io)? == 0 {
                return Err(HttpError::Io {
                    addr: authority.clone(),
                    err: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| malformed())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().ok_or_else(malformed)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(malformed)?;
        let mut content_length = None;
        let mut chunked = false;
        let mut close = false;
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => content_length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        buf.advance(head_end + 4);
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    if stream.read_buf(buf).await.map_err(io)? == 0 {
                        return Err(malformed());
                    }
                };
                let size_str = std::str::from_utf8(&buf[..line_end]).map_err(|_| malformed())?;
                let size =
                    usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| malformed())?;
                if body.len() + size > MAX_RESPONSE {
                    return Err(malformed());
                }
                buf.advance(line_end + 2);
                while buf.len() < size + 2 {
                    if stream.read_buf(buf).await.map_err(io)? == 0 {
                        return Err(malformed());
                    }
                }
                body.extend_from_slice(&buf[..size]);
                buf.advance(size + 2);
                if size == 0 {
                    break;
                }
            }
            body
        } else if let Some(len) = content_length {
            if len > MAX_RESPONSE {
                return Err(malformed());
            }
            while buf.len() < len {
                if stream.read_buf(buf).await.map_err(io)? == 0 {
                    return Err(malformed());
                }
            }
            buf.split_to(len).to_vec()
        } else {
            // Read to EOF.
            loop {
                if buf.len() > MAX_RESPONSE {
                    return Err(malformed());
                }
                if stream.read_buf(buf).await.map_err(io)? == 0 {
                    break;
                }
            }
            close = true;
            buf.split().to_vec()
        };
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_base_urls() {
        let b = BaseUrl::parse("http://127.0.0.1:6666").unwrap();
        assert_eq!(b.authority, "127.0.0.1:6666");
        assert_eq!(b.prefix, "");
        assert_eq!(b.url("/summary"), "http://127.0.0.1:6666/summary");
        let b = BaseUrl::parse("http://localhost/api/").unwrap();
        assert_eq!(b.authority, "localhost:80");
        assert_eq!(b.prefix, "/api");
        assert_eq!(
            BaseUrl::parse("127.0.0.1:1").unwrap().authority,
            "127.0.0.1:1"
        );
        assert!(BaseUrl::parse("https://x").is_err());
        assert!(BaseUrl::parse("http://").is_err());
    }

    async fn serve_once(responses: Vec<&'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = BytesMut::new();
            for r in responses {
                // Wait for one whole request (head plus declared body).
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
                            break;
                        }
                    }
                    if s.read_buf(&mut buf).await.unwrap() == 0 {
                        return;
                    }
                }
                s.write_all(r.as_bytes()).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn content_length_chunked_and_keepalive() {
        let addr = serve_once(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 15\r\ncontent-type: application/json\r\n\r\n{\"token\":\"abc\"}",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
        ])
        .await;
        let mut c = HttpClient::new(BaseUrl::from_addr(addr), Some("s".into()));
        let v = c
            .post_json_ok("/auth/grant", &serde_json::json!({"uid": 1}))
            .await
            .unwrap();
        assert_eq!(v["token"], "abc");
        let v = c.get_json("/summary").await.unwrap();
        assert_eq!(v["a"], 1);
        let e = c.get_json("/x").await.unwrap_err();
        assert!(matches!(e, HttpError::Status { status: 404, .. }), "{e}");
    }
}
