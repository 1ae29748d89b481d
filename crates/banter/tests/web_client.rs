//! The web chat client and admin console (`docs/web-client.md`).
//!
//! `web_client_in_chromium` runs the built `banter serve` binary and drives Debian's chromium through
//! playwright-core (`tests/web/web_client.mjs`): text and images both ways, a group of three, a super
//! group, a room, delivery within 1 s, typing, a second tab, hostile content, the admin console's
//! connection count and mute, a SIGKILL and restart of the server with nothing lost or duplicated,
//! 1,000 messages in one conversation, page load time and screenshots; sign-in through an app
//! server's token URL, contacts' online state, and the console's store figures, kick and revoke.
//! `scripts/test` installs the browsers and their drivers when they are missing.
//!
//! `web_client_in_firefox` runs the main two-user exchange in Debian's Firefox ESR, driven over
//! WebDriver BiDi by puppeteer-core (`tests/web/web_firefox.mjs`).
//!
//! The other tests check the HTTP side without a browser: security headers, the WebSocket origin
//! allow-list, where dev sign-in is allowed, what each listener serves, presence for a signed-in
//! user, the token URL, and the console's recent errors and node view.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http, post_json, TestServer, APPID};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A free port below the usual ephemeral range (32768–60999), so the outgoing connections of other
/// tests running meanwhile cannot take it while the server is down between a kill and a restart.
fn free_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos()) as usize;
    (0..12_000)
        .map(|i| 20_000 + ((seed + i * 7919) % 12_000) as u16)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port")
}

/// One `banter serve` process on fixed ports (so a restarted server is found by the same pages).
struct Serve {
    bin: PathBuf,
    data: PathBuf,
    ports: [u16; 3],
    log: PathBuf,
    /// More `BANTER_…` settings.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Serve {
    /// Starts the server; `fresh_ports`: if it cannot bind its ports, try other ones (before the
    /// pages know them), else retry the same ones a few times.
    fn start(&mut self, fresh_ports: bool) {
        for attempt in 0..5 {
            if self.try_start() {
                return;
            }
            self.kill();
            if fresh_ports {
                self.ports = [free_port(), free_port(), free_port()];
            }
            println!("banter serve did not start (attempt {attempt}); retrying");
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "banter serve did not become ready; log: {}",
            self.log_text()
        );
    }

    fn try_start(&mut self) -> bool {
        let [tcp, ws, api] = self.ports;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.bin)
            // Every other BANTER_… variable would be read as a setting (and refused).
            .env_remove("BANTER_SCREENSHOTS")
            .args(["serve", "--data"])
            .arg(&self.data)
            .env("BANTER_SERVER__TCP", format!("127.0.0.1:{tcp}"))
            .env("BANTER_SERVER__WS", format!("127.0.0.1:{ws}"))
            .env("BANTER_API__LISTEN", format!("127.0.0.1:{api}"))
            .env("BANTER_LOG__LEVEL", "warn")
            .env("BANTER_SERVER__KEFU_APPID", "100")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start banter serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if readyz(api) {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL: no graceful shutdown, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

fn readyz(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// The browser tests run one at a time: two browsers at once on a small machine would make the
/// delivery-time checks measure the machine.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_browser() -> std::sync::MutexGuard<'static, ()> {
    ONE_BROWSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The browser (`$var`, else Debian's `default` package at `/usr/bin/<default>`) and the node module
/// driving it, both installed by `scripts/test`; also holds the one-browser-at-a-time lock.
fn browser(var: &str, default: &str, module: &str) -> (String, std::sync::MutexGuard<'static, ()>) {
    let one = one_browser();
    let path = std::env::var(var).unwrap_or_else(|_| format!("/usr/bin/{default}"));
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: scripts/test installs Debian's {default} (apt-get install {default})"
    );
    let dir = web_dir();
    assert!(
        dir.join("node_modules").join(module).exists(),
        "{module} is missing: scripts/test installs it (npm ci in {})",
        dir.display()
    );
    (path, one)
}

/// Runs one of the node drivers against `server`, answering its CONTROL lines; returns its RESULT lines.
fn run_driver(
    server: &mut Serve,
    script: &str,
    env: &[(&str, String)],
    shots: &Path,
) -> Vec<String> {
    let mut node = Command::new("node")
        .arg(script)
        .current_dir(web_dir())
        .env(
            "BANTER_URL",
            format!("http://127.0.0.1:{}", server.ports[2]),
        )
        .env("BANTER_SCREENSHOTS", shots)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node (scripts/test installs nodejs)");
    let mut to_node = node.stdin.take().expect("stdin");
    let from_node = BufReader::new(node.stdout.take().expect("stdout"));
    let mut results = Vec::new();
    let started = Instant::now();
    for line in from_node.lines() {
        let line = line.expect("read node output");
        println!("{line}");
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the browser test ran for 10 minutes"
        );
        match line.strip_prefix("CONTROL ") {
            Some("kill") => {
                server.kill();
                writeln!(to_node, "ok").expect("answer node");
            }
            Some("start") => {
                server.start(false);
                writeln!(to_node, "ok").expect("answer node");
            }
            Some(other) => panic!("unknown control command {other:?}"),
            None => {
                if let Some(r) = line.strip_prefix("RESULT ") {
                    results.push(r.to_string());
                }
            }
        }
    }
    let status = node.wait().expect("node exit");
    assert!(
        status.success(),
        "{script} failed ({status}); server log:\n{}",
        server.log_text()
    );
    assert!(
        results.iter().any(|r| r == r#"{"ok":true}"#),
        "{script} did not finish: {results:?}"
    );
    results
}

fn screenshots_dir() -> PathBuf {
    std::env::var("BANTER_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots"))
}

fn serve_in(tmp: &Path, env: Vec<(String, String)>) -> Serve {
    let mut server = Serve {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_banter")),
        data: tmp.join("data"),
        ports: [free_port(), free_port(), free_port()],
        log: tmp.join("banter.log"),
        env,
        child: None,
    };
    server.start(true);
    server
}

#[test]
fn web_client_in_chromium() {
    let (chromium, _one) = browser("CHROMIUM", "chromium", "playwright-core");
    let tmp = tempfile::tempdir().expect("tempdir");
    // The app server of the token-URL sign-in is played by the driver on this port.
    let app_server = free_port();
    let mut server = serve_in(
        tmp.path(),
        vec![(
            "BANTER_WEB__TOKEN_URL".into(),
            format!("http://127.0.0.1:{app_server}/im/token"),
        )],
    );
    let shots = screenshots_dir();
    run_driver(
        &mut server,
        "web_client.mjs",
        &[
            ("CHROMIUM", chromium),
            ("APP_SERVER_PORT", app_server.to_string()),
        ],
        &shots,
    );
    println!("screenshots in {}", shots.display());
}

/// The main exchange in Debian's Firefox ESR, driven over WebDriver BiDi by puppeteer-core
/// (`tests/web/web_firefox.mjs`): page load time, two users signing in, text both ways within 1 s,
/// hostile content as text, the online state of the other user.
#[test]
fn web_client_in_firefox() {
    let (firefox, _one) = browser("FIREFOX", "firefox-esr", "puppeteer-core");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = serve_in(tmp.path(), Vec::new());
    run_driver(
        &mut server,
        "web_firefox.mjs",
        &[
            ("FIREFOX", firefox),
            ("HOME", tmp.path().display().to_string()),
        ],
        &screenshots_dir(),
    );
}

/// A raw HTTP/1.1 request with exactly these headers (Host included); returns the whole response.
async fn raw(addr: SocketAddr, head: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut out))
        .await
        .expect("timeout")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn pages_carry_a_strict_csp_and_assets_are_served() {
    let s = TestServer::start().await.expect("server");
    let host = format!("Host: {}", s.http);
    for path in ["/", "/admin", "/assets/js/app.js", "/assets/css/app.css"] {
        let r = raw(s.http, &format!("GET {path} HTTP/1.1\r\n{host}"), "").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
        let csp = header(&r, "content-security-policy").expect("CSP");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("ws://127.0.0.1:{}", s.ws.port())),
            "connect-src names the WebSocket endpoint: {csp}"
        );
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    }
    let r = raw(
        s.http,
        &format!("GET /assets/js/app.js HTTP/1.1\r\n{host}"),
        "",
    )
    .await;
    assert_eq!(
        header(&r, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let tag = header(&r, "etag").expect("etag").to_string();
    let r = raw(
        s.http,
        &format!("GET /assets/js/app.js HTTP/1.1\r\n{host}\r\nIf-None-Match: {tag}"),
        "",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 304"), "{r}");
    // No inline script in the pages themselves.
    let (st, index) = http(s.http, "GET", "/", &[], b"").await;
    assert_eq!(st, 200);
    assert!(index.contains(r#"<script type="module" src="/assets/js/app.js"></script>"#));
    assert_eq!(index.matches("<script").count(), 1);
    let (st, body) = http(s.http, "GET", "/assets/nope.js", &[], b"").await;
    assert_eq!(st, 404);
    assert!(body.contains(r#""meta""#), "{body}");
    let (st, body) = http(s.http, "GET", "/web/config", &[], b"").await;
    assert_eq!(st, 200);
    let cfg: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(cfg["ws_url"], format!("ws://127.0.0.1:{}/ws", s.ws.port()));
    assert_eq!(cfg["app_api"], "/v2");
    assert_eq!(cfg["dev_signin"], true);
    assert_eq!(cfg["admin_api"], true);
    s.stop().await;
}

#[tokio::test]
async fn dev_signin_only_from_loopback_with_json() {
    let s = TestServer::start().await.expect("server");
    let (st, body) = post_json(
        s.http,
        "/web/dev-signin",
        &serde_json::json!({"appid": APPID, "uid": 501, "name": "Ann"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_string();
    let mut c = common::Client::ws(&s).await;
    assert_eq!(c.auth(&token, 2, 3, "").await, 0, "the token logs in");

    let req = |host: &str, ctype: &str, origin: Option<&str>| {
        let mut head =
            format!("POST /web/dev-signin HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}");
        if let Some(o) = origin {
            head.push_str(&format!("\r\nOrigin: {o}"));
        }
        head
    };
    let json = r#"{"appid":7,"uid":502}"#;
    let local = s.http.to_string();
    // A page reached through a non-loopback name (DNS rebinding) is refused.
    let r = raw(
        s.http,
        &req("evil.example:80", "application/json", None),
        json,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("only available from this machine"),
        "{r}"
    );
    // A form post (no CORS preflight) is refused.
    let r = raw(s.http, &req(&local, "text/plain", None), json).await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("must be JSON"),
        "{r}"
    );
    // Another origin is refused.
    let r = raw(
        s.http,
        &req(&local, "application/json", Some("http://evil.example")),
        json,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("cross-origin"),
        "{r}"
    );
    // The page's own origin is fine.
    let origin = format!("http://{local}");
    let r = raw(
        s.http,
        &req(&local, "application/json", Some(&origin)),
        json,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Bad input: a clear 400.
    let r = raw(
        s.http,
        &req(&local, "application/json", None),
        r#"{"appid":7,"uid":0}"#,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains(r#""meta""#),
        "{r}"
    );
    let r = raw(s.http, &req(&local, "application/json", None), "{nope").await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("invalid json"),
        "{r}"
    );
    s.stop().await;

    let s = TestServer::start_with(|c| c.web.dev_signin = access::DevSignin::Off)
        .await
        .expect("server");
    let (st, body) = post_json(
        s.http,
        "/web/dev-signin",
        &serde_json::json!({"appid": 7, "uid": 1}),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(body["meta"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("disabled"));
    s.stop().await;
}

async fn ws_status(s: &TestServer, origin: Option<&str>) -> u16 {
    let mut req = s.ws_url().into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", o.parse().expect("origin"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("websocket: {e}"),
    }
}

#[tokio::test]
async fn websocket_origin_allow_list() {
    let s = TestServer::start().await.expect("server");
    let page = format!("http://127.0.0.1:{}", s.http.port());
    assert_eq!(ws_status(&s, None).await, 101, "SDKs send no Origin");
    assert_eq!(ws_status(&s, Some(&page)).await, 101, "the page's own host");
    assert_eq!(
        ws_status(&s, Some("http://localhost:9999")).await,
        101,
        "loopback pages"
    );
    assert_eq!(ws_status(&s, Some("https://evil.example")).await, 403);
    assert_eq!(ws_status(&s, Some("null")).await, 403);
    s.stop().await;

    let s = TestServer::start_with(|c| {
        c.server.ws_allowed_origins = vec!["https://app.example.com".into()]
    })
    .await
    .expect("server");
    assert_eq!(ws_status(&s, Some("https://app.example.com")).await, 101);
    assert_eq!(ws_status(&s, Some("https://evil.example")).await, 403);
    assert_eq!(
        ws_status(&s, Some("http://127.0.0.1:1")).await,
        403,
        "an explicit list replaces the default"
    );
    assert_eq!(ws_status(&s, None).await, 101);
    s.stop().await;
}

#[tokio::test]
async fn with_a_secret_the_pages_load_but_the_admin_api_needs_it() {
    let s = TestServer::start_with(|c| {
        c.api.secret = "s3cret".into();
        c.app_api.listen = "127.0.0.1:0".into();
    })
    .await
    .expect("server");
    let (st, _) = http(s.http, "GET", "/admin", &[], b"").await;
    assert_eq!(
        st, 200,
        "the console page itself is public; its data is not"
    );
    let (st, _) = http(s.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(st, 401);
    let (st, _) = http(
        s.http,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer s3cret")],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    let (_, body) = http(s.http, "GET", "/web/config", &[], b"").await;
    let cfg: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(cfg["admin_secret_required"], true);
    // The public app-API listener serves the client, not the console.
    let public = s.app_api.expect("app api listener");
    let (st, _) = http(public, "GET", "/", &[], b"").await;
    assert_eq!(st, 200);
    let (st, _) = http(public, "GET", "/admin", &[], b"").await;
    assert_eq!(st, 404);
    let (_, body) = http(public, "GET", "/web/config", &[], b"").await;
    let cfg: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(cfg["admin_api"], false);
    assert_eq!(cfg["app_api"], "/v2");
    s.stop().await;
}

#[tokio::test]
async fn presence_needs_the_users_own_token_and_is_bounded() {
    let s = TestServer::start().await.expect("server");
    let token = common::grant(&s, 601).await;
    let mut online = common::Client::ws(&s).await;
    let other = common::grant(&s, 602).await;
    assert_eq!(online.auth(&other, 2, 3, "").await, 0);
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let (st, body) = http(s.http, "GET", "/web/presence?uids=602,603", &auth, b"").await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["online"]["602"], true, "{v}");
    assert_eq!(v["online"]["603"], false, "{v}");
    // Only with a valid token, never without one (and never in the URL).
    let (st, body) = http(s.http, "GET", "/web/presence?uids=602", &[], b"").await;
    assert_eq!(st, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["meta"]["code"], 401, "{body}");
    let (st, _) = http(
        s.http,
        "GET",
        "/web/presence?uids=602",
        &[("Authorization", "Bearer not-a-token")],
        b"",
    )
    .await;
    assert_eq!(st, 401);
    // Bounded: at most 100 users a request; bad ids are a clear 400.
    let many: Vec<String> = (1..=101).map(|u| u.to_string()).collect();
    let path = format!("/web/presence?uids={}", many.join(","));
    let (st, body) = http(s.http, "GET", &path, &auth, b"").await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("at most 100"), "{body}");
    let (st, body) = http(s.http, "GET", "/web/presence?uids=x", &auth, b"").await;
    assert_eq!(st, 400, "{body}");
    // The page learns whether the server knows presence.
    let (_, body) = http(s.http, "GET", "/web/config", &[], b"").await;
    let cfg: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(cfg["presence"], true);
    assert_eq!(cfg["token_url"], "");
    drop(online);
    s.stop().await;
}

#[tokio::test]
async fn token_url_is_offered_and_allowed_by_the_csp() {
    let s = TestServer::start_with(|c| {
        c.web.token_url = "https://app.example.com/im/token".into();
    })
    .await
    .expect("server");
    let (_, body) = http(s.http, "GET", "/web/config", &[], b"").await;
    let cfg: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(cfg["token_url"], "https://app.example.com/im/token");
    let r = raw(s.http, &format!("GET / HTTP/1.1\r\nHost: {}", s.http), "").await;
    let csp = header(&r, "content-security-policy").expect("CSP");
    assert!(
        csp.contains("connect-src 'self'") && csp.contains(" https://app.example.com;"),
        "{csp}"
    );
    s.stop().await;
}

#[tokio::test]
async fn admin_console_sees_recent_errors_and_the_cluster_state() {
    use tracing_subscriber::layer::SubscriberExt;
    // The layer `banter serve` installs beside its log writer (crates/banter/src/logging.rs).
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(node::recent::layer()),
    );
    let s = TestServer::start_with(|c| c.api.secret = "s3cret".into())
        .await
        .expect("server");
    tracing::warn!(disk = "/data", "web-console-test: the disk is almost full");
    let auth = [("Authorization", "Bearer s3cret")];
    let (st, _) = http(s.http, "GET", "/admin/errors", &[], b"").await;
    assert_eq!(st, 401, "behind api.secret");
    let (st, body) = http(s.http, "GET", "/admin/errors", &auth, b"").await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let events = v["events"].as_array().expect("events");
    let ours = events
        .iter()
        .find(|e| {
            e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("web-console-test"))
        })
        .unwrap_or_else(|| panic!("the warning is in the ring: {v}"));
    assert_eq!(ours["level"], "WARN");
    assert_eq!(
        ours["text"],
        "web-console-test: the disk is almost full disk=/data"
    );
    assert_eq!(v["capacity"], 200);
    let (st, body) = http(s.http, "GET", "/admin/cluster", &auth, b"").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["mode"],
        "single"
    );
    s.stop().await;
}
