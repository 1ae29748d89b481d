//! The API listener's OpenAPI document (`GET /openapi.json`): every route the router serves is in
//! it (the sources register routes only through the document, and every documented operation is
//! answered by its handler, not by the fallback), and `schemathesis` (PyPI, installed by
//! `scripts/test`) validates the running `banter serve` against it: no 5xx, no status, content type
//! or body the document does not describe.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

async fn document(addr: SocketAddr) -> Value {
    let (status, text) = http(addr, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(status, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{text}");
    doc
}

/// `(path, method)` of every documented operation.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "options", "head", "patch"] {
            if item.get(method).is_some() {
                out.push((path.clone(), method.to_ascii_uppercase()));
            }
        }
    }
    out
}

/// The path literals of `.route(…)` calls in the Rust sources under `dir`, with a catch-all
/// `{*name}` written as OpenAPI writes it (`{name}`). `skip`: files that serve other listeners.
fn route_literals(dir: &Path, skip: &[&str], out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            route_literals(&path, skip, out);
            continue;
        }
        let name = path.display().to_string();
        if !name.ends_with(".rs") || skip.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for call in [".route(", ".route_service(", ".nest_service("] {
            for (i, _) in text.match_indices(call) {
                let rest = text[i + call.len()..].trim_start();
                let literal = rest
                    .strip_prefix('"')
                    .and_then(|r| r.split_once('"'))
                    .map(|(lit, _)| lit.replace("{*", "{"));
                let literal = literal.unwrap_or_else(|| {
                    panic!("{name}: a route registered with a computed path ({call} …)")
                });
                out.push((name.clone(), literal));
            }
        }
    }
}

#[tokio::test]
async fn every_route_the_router_serves_is_in_the_document() {
    let s = TestServer::start().await.unwrap();
    let doc = document(s.http).await;
    let ops = operations(&doc);
    let paths: BTreeSet<&str> = ops.iter().map(|(p, _)| p.as_str()).collect();
    // A sample of each family, so an empty or partial document fails here.
    for p in [
        "/post_peer_message",
        "/auth/grant",
        "/admin/groups",
        "/admin/media/usage",
        "/load_group_history_message",
        "/metrics",
        "/healthz",
        "/openapi.json",
        "/v2/images",
        "/v2/{kind}/{appid}/{uid}/{name}",
        "/",
        "/assets/{path}",
        "/web/config",
    ] {
        assert!(paths.contains(p), "{p} is not documented: {paths:?}");
    }

    // Every documented operation reaches a handler: not the fallback (404 "no such …endpoint")
    // and not a 405.
    let token = grant(&s, 1).await;
    let auth = format!("Bearer {token}");
    for (path, method) in &ops {
        let concrete = path
            .replace("{kind}", "images")
            .replace("{appid}", "7")
            .replace("{uid}", "1")
            .replace("{name}", "x.png")
            .replace("{path}", "js/app.js");
        assert!(!concrete.contains('{'), "unexpected parameter in {path}");
        let (status, body) =
            http(s.http, method, &concrete, &[("Authorization", &auth)], b"").await;
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !(status == 404 && body.contains("endpoint\"")),
            "{method} {path} is answered by the fallback: {body}"
        );
    }

    // The sources register routes only through the document (`routes!`), except where a literal
    // path is given — which must then be documented too. listener.rs serves the WebSocket
    // listener (`/ws`), not the API listener.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut literals = Vec::new();
    route_literals(&root.join("access/src"), &["listener.rs"], &mut literals);
    route_literals(&root.join("web/src"), &[], &mut literals);
    for (file, literal) in literals {
        assert!(
            paths.contains(literal.as_str()),
            "{file}: route {literal} is not in the OpenAPI document; register it with routes!()"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn errors_are_in_the_documented_shape_everywhere() {
    let s = TestServer::start().await.unwrap();
    let doc = document(s.http).await;
    let shape = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(shape["required"], serde_json::json!(["meta"]), "{shape}");
    // 404 and 405 from the router itself, on the API, the app API and the web client; 400 from an
    // extractor of the app API (a path segment that is not UTF-8).
    for (method, path, want) in [
        ("GET", "/no/such/endpoint", 404),
        ("GET", "/v2/no/such", 404),
        ("DELETE", "/auth/grant", 405),
        ("DELETE", "/v2/images", 405),
        ("DELETE", "/web/config", 405),
        ("PUT", "/openapi.json", 405),
        ("GET", "/v2/images/7/1/%FF.png", 400),
        ("GET", "/assets/no-such.js", 404),
    ] {
        let (status, text) = http(s.http, method, path, &[], b"").await;
        assert_eq!(status, want, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text:?}"));
        assert_eq!(v["meta"]["code"], want, "{method} {path}: {text}");
        assert!(v["meta"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    s.stop().await;
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Examples per operation: enough to exercise each parameter's kinds of values, few enough that
/// the run takes about a minute on 2 cores.
const EXAMPLES: &str = "8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let st = testkit::find_binary("st", "`pip install schemathesis`");
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_banter"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BANTER_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.args(["serve", "--data"])
        .arg(dir.path().join("data"))
        .args(["--tcp", &format!("127.0.0.1:{}", free_port())])
        .args(["--ws", ""])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Killed(c.spawn().unwrap());
    let addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "banter serve never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    document(addr).await;
    // The app API's operations run as a user; the operator API needs no secret on loopback.
    let (status, text) = http(
        addr,
        "POST",
        "/auth/grant",
        &[],
        br#"{"appid": 7, "uid": 1}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let token = serde_json::from_str::<Value>(&text).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .arg("run")
            .arg(format!("http://{addr}/openapi.json"))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                EXAMPLES,
                "--seed",
                "1",
                // One worker: with two, CPython 3.11's `ast.parse` (hypothesis describes its
                // filters with it) raced between the worker threads once ("SystemError: AST
                // constructor recursion depth mismatch"), a crash of the tool, not a finding.
                "--workers",
                "1",
                "--request-timeout",
                "10",
                "--no-color",
                "--suppress-health-check",
                "all",
                "--generation-database",
                "none",
            ])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .current_dir(dir.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "{stdout}\n{stderr}");
}
