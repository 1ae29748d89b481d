//! The HTTPS client the providers share the construction of: rustls with ring, the public web
//! roots plus an optional PEM file of extra roots, ALPN `h2` (and `http/1.1` where allowed).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;

use crate::PushError;

/// The client type of every provider.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Most bytes of an answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The TLS configuration: public roots plus those of `ca_file` (when not empty). ALPN is set by
/// the connector builder from the enabled HTTP versions.
pub fn tls_config(ca_file: &str) -> Result<rustls::ClientConfig, PushError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file)
            .map_err(|e| PushError::Config(format!("push ca_file {ca_file}: {e}")))?;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| PushError::Config(format!("push ca_file {ca_file}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| PushError::Config(format!("push ca_file {ca_file}: {e}")))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PushError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A pooled client; `h2_only` for APNs (which speaks nothing else).
pub fn client(ca_file: &str, h2_only: bool, timeout: Duration) -> Result<HttpsClient, PushError> {
    let tls = tls_config(ca_file)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if h2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().enable_http2().wrap_connector(http)
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new());
    b.pool_timer(TokioTimer::new());
    b.pool_idle_timeout(Duration::from_secs(600));
    if h2_only {
        b.http2_only(true);
        b.http2_keep_alive_interval(Some(Duration::from_secs(60)));
        b.http2_keep_alive_timeout(timeout);
    }
    Ok(b.build(connector))
}

/// An answer: status, `Retry-After` (seconds or HTTP date) if any, body (bounded).
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Sends `req` and reads the answer within `timeout`.
pub async fn exchange(
    client: &HttpsClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Answer, String> {
    let run = async {
        let resp = client.request(req).await.map_err(|e| {
            use std::error::Error;
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// `Retry-After`: delta seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}
