//! A local stand-in for APNs and FCM, for tests and `banter bench push`: one HTTPS server on
//! loopback (a fresh self-signed certificate; HTTP/2 and HTTP/1.1 by ALPN) implementing
//!
//! * APNs `POST /3/device/<token>`: checks the provider token (ES256, signed with the key of
//!   [`MockProvider::apns_key_pem`], `kid` and `iss` as configured), `apns-topic`, and records the
//!   request;
//! * the OAuth2 token endpoint `POST /token`: checks the JWT-bearer grant (RS256 assertion signed
//!   with the FCM test key, `scope`, `aud`) and issues an access token valid for an hour;
//! * FCM `POST /v1/projects/<project>/messages:send`: checks the bearer is an issued access token
//!   and records the request.
//!
//! Requests failing a check get 403 (APNs `InvalidProviderToken`) or 401. Scripted answers
//! ([`MockProvider::script`]) let tests make the next requests answer 410, 503 with `Retry-After`,
//! or hang. The keys here are test keys, never used elsewhere.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::jws::{self, Signer};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::config::{ApnsOptions, FcmOptions};

/// The FCM service account's private key (RSA, test only).
pub const FCM_TEST_KEY: &str = include_str!("testdata/fcm_test_key.pem");
/// APNs key id and team id the mock expects.
pub const APNS_KEY_ID: &str = "TESTKEY123";
pub const APNS_TEAM_ID: &str = "TEAM123456";
/// FCM project and service-account e-mail the mock expects.
pub const FCM_PROJECT: &str = "banter-test";
pub const FCM_CLIENT_EMAIL: &str = "push@banter-test.iam.gserviceaccount.com";

/// One recorded provider request.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `apns`, `fcm` or `token`.
    pub kind: &'static str,
    pub path: String,
    /// Lower-case header names.
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// Whether its credentials checked out.
    pub authorized: bool,
    /// `HTTP/2.0` or `HTTP/1.1`.
    pub version: String,
    pub at: Instant,
}

/// A scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer with this status, body and optional `Retry-After` seconds.
    Status {
        status: u16,
        body: Value,
        retry_after: Option<u64>,
    },
    /// Never answer (until the client gives up).
    Hang,
}

#[derive(Default)]
struct State {
    recorded: Vec<Recorded>,
    scripts: HashMap<&'static str, VecDeque<Reply>>,
    /// Answer every request of a kind with this, after the script is used up.
    always: HashMap<&'static str, Reply>,
    tokens: Vec<String>,
    delay: Duration,
}

/// The running mock; stops when dropped.
pub struct MockProvider {
    pub addr: SocketAddr,
    /// Its certificate (PEM), to trust as `ca_file`.
    pub ca_pem: String,
    /// The `.p8` (PKCS#8 PEM P-256) key APNs requests must be signed with.
    pub apns_key_pem: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockProvider {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> MockProvider {
        let ck = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("certificate");
        let apns_key = rcgen::KeyPair::generate().expect("P-256 key");
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server cert");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let keys = Arc::new(Keys {
            apns: Signer::es256_pem(apns_key.serialize_pem().as_bytes())
                .expect("apns key")
                .public_key(),
            fcm: Signer::rs256_pem(FCM_TEST_KEY.as_bytes())
                .expect("fcm key")
                .public_key(),
            token_uri: format!("https://{addr}/token"),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                let keys = keys.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        let keys = keys.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(req, &st, &keys).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        MockProvider {
            addr,
            ca_pem: ck.cert.pem(),
            apns_key_pem: apns_key.serialize_pem(),
            state,
            task,
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Writes the CA, the APNs key and the FCM service-account file into `dir`; returns options
    /// pointing at this mock: (ca_file, apns, fcm).
    pub fn write_credentials(
        &self,
        dir: &std::path::Path,
        topic: &str,
    ) -> (String, ApnsOptions, FcmOptions) {
        let ca = dir.join("mock-ca.pem");
        std::fs::write(&ca, &self.ca_pem).expect("write ca");
        let p8 = dir.join("AuthKey_TEST.p8");
        std::fs::write(&p8, &self.apns_key_pem).expect("write p8");
        let sa = dir.join("firebase-sa.json");
        let sa_json = json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "client_email": FCM_CLIENT_EMAIL,
            "private_key": FCM_TEST_KEY,
            "token_uri": format!("{}/token", self.url()),
        });
        std::fs::write(&sa, sa_json.to_string()).expect("write sa");
        let apns = ApnsOptions {
            key_file: p8.display().to_string(),
            key_id: APNS_KEY_ID.into(),
            team_id: APNS_TEAM_ID.into(),
            topic: topic.into(),
            endpoint: self.url(),
            ..ApnsOptions::default()
        };
        let fcm = FcmOptions {
            service_account_file: sa.display().to_string(),
            endpoint: self.url(),
            ..FcmOptions::default()
        };
        (ca.display().to_string(), apns, fcm)
    }

    /// Queue answers for the next requests of `kind` (`apns`, `fcm`, `token`).
    pub fn script(&self, kind: &'static str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .lock()
            .scripts
            .entry(kind)
            .or_default()
            .extend(replies);
    }

    /// Answer every further request of `kind` with `reply` (once the script is used up); `None`
    /// restores normal answers.
    pub fn always(&self, kind: &'static str, reply: Option<Reply>) {
        let mut s = self.state.lock();
        match reply {
            Some(r) => s.always.insert(kind, r),
            None => s.always.remove(kind),
        };
    }

    /// Delay every answer by this much (a slow provider).
    pub fn set_delay(&self, d: Duration) {
        self.state.lock().delay = d;
    }

    /// Requests recorded so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().recorded.clone()
    }

    /// Recorded requests of `kind`.
    pub fn requests_of(&self, kind: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .recorded
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    /// Number of recorded requests of `kind`.
    pub fn count(&self, kind: &str) -> usize {
        self.state
            .lock()
            .recorded
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    }

    /// Waits until at least `n` requests of `kind` were recorded (or `limit` passes).
    pub async fn wait_for(&self, kind: &str, n: usize, limit: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.requests_of(kind);
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Keys {
    /// The uncompressed P-256 point of the APNs key.
    apns: Vec<u8>,
    /// The FCM key's `RSAPublicKey` DER.
    fcm: Vec<u8>,
    token_uri: String,
}

fn answer(status: u16, body: Value, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(s) = retry_after {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, s.into());
    }
    if status == 200 && body.is_null() {
        *r.body_mut() = Full::new(Bytes::new());
    }
    r
}

fn bearer(headers: &HashMap<String, String>) -> Option<String> {
    let v = headers.get("authorization")?;
    let (scheme, t) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| t.trim().to_string())
}

fn check_apns(headers: &HashMap<String, String>, keys: &Keys) -> bool {
    let Some(jwt) = bearer(headers) else {
        return false;
    };
    let Some((h, claims)) = jws::verify(&jwt, "ES256", &keys.apns) else {
        return false;
    };
    h["kid"] == APNS_KEY_ID
        && claims["iss"] == APNS_TEAM_ID
        && claims["iat"].as_u64().is_some()
        && headers.contains_key("apns-topic")
}

fn check_grant(body: &str, keys: &Keys) -> bool {
    let mut grant = None;
    let mut assertion = None;
    for pair in body.split('&') {
        match pair.split_once('=') {
            Some(("grant_type", g)) => grant = Some(g.to_string()),
            Some(("assertion", a)) => assertion = Some(a.to_string()),
            _ => {}
        }
    }
    if grant.as_deref() != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return false;
    }
    let Some(a) = assertion else { return false };
    let Some((_, claims)) = jws::verify(&a, "RS256", &keys.fcm) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    claims["aud"] == keys.token_uri.as_str()
        && claims["iss"] == FCM_CLIENT_EMAIL
        && claims["exp"].as_u64().is_some_and(|exp| exp > now)
        && claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
}

async fn handle(req: Request<Incoming>, st: &Mutex<State>, keys: &Keys) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let raw = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let kind: &'static str = if path.starts_with("/3/device/") {
        "apns"
    } else if path == "/token" {
        "token"
    } else if path.starts_with("/v1/projects/") && path.ends_with("/messages:send") {
        "fcm"
    } else {
        return answer(404, json!({"error": "no such endpoint"}), None);
    };
    let (authorized, body) = match kind {
        "apns" => (
            check_apns(&headers, keys),
            serde_json::from_slice(&raw).unwrap_or(Value::Null),
        ),
        "token" => {
            let text = String::from_utf8_lossy(&raw).into_owned();
            (check_grant(&text, keys), Value::String(text))
        }
        _ => {
            let ok = bearer(&headers).is_some_and(|t| st.lock().tokens.contains(&t))
                && path == format!("/v1/projects/{FCM_PROJECT}/messages:send");
            (ok, serde_json::from_slice(&raw).unwrap_or(Value::Null))
        }
    };
    let (reply, delay) = {
        let mut s = st.lock();
        s.recorded.push(Recorded {
            kind,
            path: path.clone(),
            headers,
            body,
            authorized,
            version,
            at: Instant::now(),
        });
        let scripted = s.scripts.get_mut(kind).and_then(VecDeque::pop_front);
        (scripted.or_else(|| s.always.get(kind).cloned()), s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match reply {
        Some(Reply::Hang) => return std::future::pending().await,
        Some(Reply::Status {
            status,
            body,
            retry_after,
        }) => return answer(status, body, retry_after),
        None => {}
    }
    match kind {
        "apns" if !authorized => answer(403, json!({"reason": "InvalidProviderToken"}), None),
        "apns" => {
            let mut r = answer(200, Value::Null, None);
            r.headers_mut().insert(
                "apns-id",
                hyper::header::HeaderValue::from_static("00000000-0000-0000-0000-000000000000"),
            );
            r
        }
        "token" if !authorized => answer(400, json!({"error": "invalid_grant"}), None),
        "token" => {
            let n = st.lock().tokens.len();
            let token = format!("ya29.mock-{n}-{}", rand::random::<u64>());
            st.lock().tokens.push(token.clone());
            answer(
                200,
                json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"}),
                None,
            )
        }
        _ if !authorized => answer(
            401,
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
            None,
        ),
        _ => answer(
            200,
            json!({"name": format!("projects/{FCM_PROJECT}/messages/{}", rand::random::<u32>())}),
            None,
        ),
    }
}
