//! Operating the binary: command-line options of every role, `version`/`completions`/`man`, config
//! errors (all at once, with file:line, environment variable names and "did you mean"), checks made
//! before the store opens, the start-up lines, log formats, and the split of client disconnects from
//! protocol violations in logs and metrics.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_banter"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BANTER_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(c: &mut Command) -> (bool, String, String) {
    let out = c.output().expect("run banter");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child whose stderr lines are collected by a thread.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(c: &mut Command) -> Proc {
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn banter");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; panics with everything seen after 20 s.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n"));
    }

    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        self.seen
    }
}

#[test]
fn version_completions_and_man_page() {
    let (ok, out, _) = run(bin().arg("version"));
    assert!(ok);
    assert!(
        out.starts_with(&format!("banter {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains(", built 20"), "{out}");
    let (ok, out2, _) = run(bin().arg("--version"));
    assert!(ok);
    assert_eq!(out, out2, "`version` and `--version` agree");

    let (ok, out, _) = run(bin().args(["completions", "bash"]));
    assert!(ok);
    assert!(
        out.contains("_banter") && out.contains("--log-format"),
        "{out}"
    );
    let (ok, out, _) = run(bin().args(["completions", "zsh"]));
    assert!(ok && out.contains("#compdef banter"));
    let (ok, _, err) = run(bin().args(["completions", "tcsh"]));
    assert!(!ok && err.contains("tcsh"), "{err}");

    let (ok, out, _) = run(bin().arg("man"));
    assert!(ok);
    assert!(out.contains(".TH banter") && out.contains("serve"), "{out}");
}

#[test]
fn help_describes_the_listener_and_log_options() {
    for role in ["serve", "im"] {
        let (ok, out, _) = run(bin().args([role, "--help"]));
        assert!(ok);
        for flag in [
            "--tcp",
            "--ws",
            "--http",
            "--tls",
            "--wss",
            "--cert",
            "--key",
            "--data",
            "--log-level",
            "--log-format",
        ] {
            assert!(out.contains(flag), "{role} --help lacks {flag}:\n{out}");
        }
    }
    for role in ["imr", "ims"] {
        let (ok, out, _) = run(bin().args([role, "--help"]));
        assert!(ok);
        assert!(
            out.contains("--log-level") && out.contains("--log-format"),
            "{out}"
        );
        assert!(out.contains("Configuration file"), "{out}");
    }
}

#[test]
fn every_config_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("banter.toml");
    std::fs::write(
        &file,
        "[server]\ntcpp = \"127.0.0.1:0\"\n\n[store]\ndurability = \"alwayz\"\nsegment_mb = \"big\"\n[auth]\nbackend = \"ldap\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(bin()
        .args(["serve", "--config"])
        .arg(&file)
        .env("BANTER_SERVER_WS", "127.0.0.1:0")
        .env("BANTER_SERVER__MAX_INFLIGHT", "many"));
    assert!(!ok);
    let f = file.display().to_string();
    for want in [
        "6 configuration problems".to_string(),
        format!("{f}:2: unknown key `server.tcpp` (did you mean `server.tcp`?)"),
        format!("{f}:5: store.durability: \"alwayz\" is not one of \"always\", \"interval\", \"none\" (did you mean \"always\"?)"),
        format!("{f}:6: store.segment_mb: invalid type: string \"big\""),
        format!("{f}:8: auth.backend: \"ldap\" is not one of \"embedded\", \"redis\""),
        "environment variable BANTER_SERVER_WS: unknown key `server_ws` (did you mean BANTER_SERVER__WS?)".to_string(),
        "environment variable BANTER_SERVER__MAX_INFLIGHT: server.max_inflight: expected an integer, got \"many\"".to_string(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn environment_values_take_their_key_type() {
    // A port-only value is a string key's value, not an integer: refused by the address check,
    // which names the variable.
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(bin()
        .args(["serve", "--data"])
        .arg(dir.path())
        .env("BANTER_SERVER__TCP", "63000"));
    assert!(!ok);
    assert!(
        err.contains("environment variable BANTER_SERVER__TCP: server.tcp: \"63000\" is not a usable HOST:PORT address"),
        "{err}"
    );
    assert!(!err.contains("invalid type"), "{err}");
}

#[test]
fn checks_before_the_store_opens_report_everything() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let (ok, _, err) = run(bin()
        .args(["serve", "--data"])
        .arg(blocker.join("data"))
        .args([
            "--http",
            "0.0.0.0:0",
            "--tls",
            "127.0.0.1:0",
            "--ws",
            "nowhere",
        ]));
    assert!(!ok);
    for want in [
        "option --http: api.listen: \"0.0.0.0:0\" is not a loopback address; set api.secret",
        "option --ws: server.ws: \"nowhere\" is not a usable HOST:PORT address",
        "server.cert_file is required with server.tls or server.wss",
        "option --data: data.dir:",
        "is not a writable directory",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Nothing was created: the checks ran before anything was opened.
    assert!(!blocker.join("data").exists());
    // Each cause is printed once.
    assert_eq!(
        err.matches("Not a directory (os error 20)").count(),
        1,
        "{err}"
    );
}

fn serve_cmd(data: &Path, tcp: u16, ws: u16, http: u16) -> Command {
    let mut c = bin();
    c.args(["serve", "--data"])
        .arg(data)
        .args(["--tcp", &format!("127.0.0.1:{tcp}")])
        .args(["--ws", &format!("127.0.0.1:{ws}")])
        .args(["--http", &format!("127.0.0.1:{http}")]);
    c
}

#[test]
fn start_up_lines_name_version_data_dir_and_listener_urls() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, ws, http) = (free_port(), free_port(), free_port());
    let mut p = Proc::spawn(&mut serve_cmd(dir.path(), tcp, ws, http));
    let version = p.wait_for("banter 0.");
    assert!(
        version.contains(&dir.path().display().to_string()),
        "{version}"
    );
    p.wait_for(&format!("listening: tcp tcp://127.0.0.1:{tcp}"));
    p.wait_for(&format!("listening: ws ws://127.0.0.1:{ws}/ws"));
    p.wait_for(&format!("listening: http http://127.0.0.1:{http}"));
    p.wait_for("banter is ready");

    // A second server on the same data directory is refused, naming the holder.
    let pid = p.child.id();
    let (ok, _, err) = run(&mut serve_cmd(
        dir.path(),
        free_port(),
        free_port(),
        free_port(),
    ));
    assert!(!ok);
    assert!(err.contains(&format!("locked by process {pid}")), "{err}");

    let lines = p.stop();
    // Stderr is a pipe, not a terminal: no colour codes.
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:?}");
}

#[test]
fn json_logs_and_levels_on_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, ws, http) = (free_port(), free_port(), free_port());
    let mut c = serve_cmd(dir.path(), tcp, ws, http);
    c.args(["--log-format", "json", "--log-level", "debug"]);
    let mut p = Proc::spawn(&mut c);
    p.wait_for("banter is ready");
    let lines = p.stop();
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "{lines:?}"
    );
    for l in &lines {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }

    let (route, route_http) = (free_port(), free_port());
    let mut p = Proc::spawn(
        bin()
            .args(["imr", "--log-format", "json", "--log-level", "info"])
            .env("BANTER_LISTEN", format!("127.0.0.1:{route}"))
            .env("BANTER_HTTP_LISTEN", format!("127.0.0.1:{route_http}"))
            .env("BANTER_NODE_ID", "r1"),
    );
    let l = p.wait_for("router ready");
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["node"], "r1");
    p.wait_for(&format!("listening: route tcp://127.0.0.1:{route}"));
    p.stop();

    // The store node takes its `[log]` section from its configuration file like every role.
    let ims_dir = tempfile::tempdir().unwrap();
    let (store, http) = (free_port(), free_port());
    let ims_config = ims_dir.path().join("ims.toml");
    std::fs::write(&ims_config, "[log]\nformat = \"json\"\nlevel = \"debug\"\n").unwrap();
    let mut p = Proc::spawn(
        bin()
            .args(["ims", "--config"])
            .arg(&ims_config)
            .env("BANTER_DATA_DIR", ims_dir.path().join("data"))
            .env("BANTER_LISTEN", format!("127.0.0.1:{store}"))
            .env("BANTER_REPLICATION_LISTEN", "")
            .env("BANTER_HTTP_LISTEN", format!("127.0.0.1:{http}")),
    );
    let l = p.wait_for("store node ready");
    serde_json::from_str::<serde_json::Value>(&l).unwrap();
    p.wait_for(&format!("listening: store tcp://127.0.0.1:{store}"));
    // SIGTERM right after "ready" finds the handler installed: the node shuts down cleanly
    // (its final checkpoint logs at debug) instead of dying by the signal's default action.
    let lines = p.stop();
    assert!(
        lines.iter().any(|l| l.contains("store node shutting down")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "{lines:?}"
    );
    // ... and the router too; a bad level in the file is reported with the file's name and line.
    let imr_config = ims_dir.path().join("imr.toml");
    std::fs::write(
        &imr_config,
        "[log]\nformat = \"json\"\nlevel = \"info,=[\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(bin().args(["imr", "--config"]).arg(&imr_config));
    assert!(
        !ok && err.contains("imr.toml:3: log.level") && err.contains("not a log level"),
        "{err}"
    );

    let (ok, _, err) = run(bin().args(["imr", "--log-level", "info,=["]));
    assert!(!ok && err.contains("not a log level"), "{err}");
    let (ok, _, err) = run(bin().arg("imr").env("BANTER_LISTN", "127.0.0.1:0"));
    assert!(
        !ok && err.contains("BANTER_LISTN: unknown key `listn`"),
        "{err}"
    );
}

#[test]
fn worker_threads_come_from_each_roles_runtime_section() {
    // Tokio's own default, which its environment variable overrides.
    let cores = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let dir = tempfile::tempdir().unwrap();
    let (tcp, ws, http) = (free_port(), free_port(), free_port());
    // The default: one per core.
    let mut p = Proc::spawn(&mut serve_cmd(dir.path(), tcp, ws, http));
    p.wait_for(&format!("runtime started worker_threads={cores}"));
    p.wait_for("banter is ready");
    p.stop();
    let mut c = serve_cmd(dir.path(), tcp, ws, http);
    c.env("BANTER_RUNTIME__WORKER_THREADS", "1");
    let mut p = Proc::spawn(&mut c);
    p.wait_for("runtime started worker_threads=1");
    p.wait_for("banter is ready");
    p.stop();

    // The router and the store node read theirs from their files.
    let conf = dir.path().join("imr.toml");
    std::fs::write(&conf, "[runtime]\nworker_threads = 3\n").unwrap();
    let mut p = Proc::spawn(
        bin()
            .args(["imr", "--config"])
            .arg(&conf)
            .env("BANTER_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("BANTER_HTTP_LISTEN", ""),
    );
    p.wait_for("runtime started worker_threads=3");
    p.wait_for("router ready");
    p.stop();
    let conf = dir.path().join("ims.toml");
    std::fs::write(&conf, "[runtime]\nworker_threads = 1\n").unwrap();
    let mut p = Proc::spawn(
        bin()
            .args(["ims", "--config"])
            .arg(&conf)
            .env("BANTER_DATA_DIR", dir.path().join("ims"))
            .env("BANTER_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("BANTER_REPLICATION_LISTEN", "")
            .env("BANTER_HTTP_LISTEN", ""),
    );
    p.wait_for("runtime started worker_threads=1");
    p.wait_for("store node ready");
    p.stop();

    // An absurd count is refused before anything starts, with the key named.
    let (ok, _, err) =
        run(serve_cmd(dir.path(), tcp, ws, http).env("BANTER_RUNTIME__WORKER_THREADS", "5000"));
    assert!(
        !ok && err.contains("runtime.worker_threads = 5000"),
        "{err}"
    );
    std::fs::write(&conf, "[runtime]\nworker_threads = 5000\n").unwrap();
    let (ok, _, err) = run(bin().args(["ims", "--config"]).arg(&conf));
    assert!(
        !ok && err.contains("runtime.worker_threads = 5000"),
        "{err}"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

#[tokio::test]
async fn client_closes_are_not_protocol_errors() {
    let s = TestServer::start().await.unwrap();
    let token = grant(&s, 1).await;
    // A TCP client that logs in and goes away, one that vanishes mid-frame, and a WebSocket client
    // that drops its socket without a close handshake: all client closes.
    let mut c = Client::tcp(s.tcp).await;
    c.auth(&token, 2, 1, "d1").await;
    drop(c);
    let mut c = Client::tcp(s.tcp).await;
    c.send_raw(&[0, 0, 0, 40, 0, 0]).await;
    drop(c);
    let mut c = Client::ws(&s).await;
    c.auth(&token, 2, 1, "d2").await;
    drop(c);
    // A real violation: a frame clients may not send.
    let mut c = Client::tcp(s.tcp).await;
    c.send_raw(&[0, 0, 0, 0, 0, 0, 0, 1, 255, 2, 0, 0]).await;
    assert!(c.closed_within(WAIT).await);

    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = http(s.http, "GET", "/metrics", &[], b"").await;
        let closes = metric(&text, "banter_client_closes_total");
        let violations = metric(&text, "banter_protocol_errors_total");
        if closes >= 3.0 && violations >= 1.0 {
            assert_eq!(closes, 3.0, "{text}");
            assert_eq!(violations, 1.0, "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closes {closes}, violations {violations}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn http_errors_are_json_of_one_shape() {
    let s = TestServer::start_with(|c| c.api.max_body = 1024)
        .await
        .unwrap();
    let check = |st: u16, text: &str, want: u16| {
        assert_eq!(st, want, "{text}");
        let v: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        assert_eq!(v["meta"]["code"], want, "{text}");
        assert!(
            v["meta"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    };
    let (st, text) = http(s.http, "GET", "/auth/grant", &[], b"").await;
    check(st, &text, 405);
    let (st, text) = http(s.http, "GET", "/no/such/endpoint", &[], b"").await;
    check(st, &text, 404);
    let big = vec![b'x'; 4096];
    let (st, text) = http(s.http, "POST", "/post_system_message", &[], &big).await;
    check(st, &text, 413);
    // kefu_appid = 0 disables customer-service messages on the HTTP path too.
    let (st, text) = http(
        s.http,
        "POST",
        "/post_customer_message",
        &[],
        br#"{"sender_appid":7,"sender":1,"receiver_appid":8,"receiver":2,"content":"x"}"#,
    )
    .await;
    check(st, &text, 403);
    // A missing group: 404 on both group endpoints.
    let (st, text) = http(
        s.http,
        "POST",
        "/post_group_message?appid=7&sender=1&receiver=424242",
        &[],
        b"x",
    )
    .await;
    check(st, &text, 404);
    let (st, text) = http(
        s.http,
        "POST",
        "/post_group_notification",
        &[],
        br#"{"appid":7,"group_id":424242,"notification":"x"}"#,
    )
    .await;
    check(st, &text, 404);
    s.stop().await;
}
