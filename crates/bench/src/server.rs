//! Starting `banter serve` as a child process for a run, and reading a server's resident memory.
//!
//! [`ChildServer::start`] picks free loopback ports (bind `127.0.0.1:0`, read the port, drop), runs the
//! banter binary with `serve --data <temporary dir>` and the environment overrides
//! `BANTER_SERVER__TCP`, `BANTER_SERVER__WS`, `BANTER_API__LISTEN` and `BANTER_STORE__DURABILITY` (plus any
//! extra ones), and waits (bounded) until `GET /healthz` answers 200. [`ChildServer::stop`] sends SIGTERM,
//! waits a grace period, then kills. The server's output goes to `server.log` beside its data directory.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::api::{BaseUrl, HttpClient};

/// Why a child server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot find a free port: {0}")]
    Port(std::io::Error),
    #[error("cannot create the temporary data directory: {0}")]
    TempDir(std::io::Error),
    #[error("cannot start {bin}: {err}")]
    Spawn { bin: String, err: std::io::Error },
    #[error("the server exited during start-up ({status}); its log {log}:\n{tail}")]
    Exited {
        status: String,
        log: String,
        tail: String,
    },
    #[error("the server did not answer /healthz within {secs} s; its log {log}:\n{tail}")]
    NotReady {
        secs: u64,
        log: String,
        tail: String,
    },
}

/// How to start the child.
#[derive(Debug, Clone)]
pub struct ChildOptions {
    /// The banter binary.
    pub bin: PathBuf,
    /// `store.durability`: `always`, `interval` or `none`.
    pub durability: String,
    /// Extra `KEY=VALUE` environment variables (e.g. `BANTER_SERVER__MAX_INFLIGHT=512`).
    pub env: Vec<(String, String)>,
    /// Keep the data directory (and log) instead of deleting it.
    pub keep_data: bool,
    /// Bound on start-up.
    pub ready_timeout: Duration,
}

impl ChildOptions {
    /// Defaults for `bin`: durability `always`, 30 s start-up bound.
    pub fn new(bin: PathBuf) -> ChildOptions {
        ChildOptions {
            bin,
            durability: "always".into(),
            env: Vec::new(),
            keep_data: false,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A running `banter serve` child.
pub struct ChildServer {
    child: Child,
    pub pid: u32,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<SocketAddr, std::io::Error> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

impl ChildServer {
    /// Starts the server and waits until it is ready.
    pub async fn start(opts: &ChildOptions) -> Result<ChildServer, ServerError> {
        let tcp = free_port().map_err(ServerError::Port)?;
        let ws = free_port().map_err(ServerError::Port)?;
        let http = free_port().map_err(ServerError::Port)?;
        let dir = tempfile::Builder::new()
            .prefix("banter-bench-")
            .tempdir()
            .map_err(ServerError::TempDir)?;
        let data_dir = dir.path().join("data");
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).map_err(ServerError::TempDir)?;
        let log_err = log_file.try_clone().map_err(ServerError::TempDir)?;
        let mut cmd = Command::new(&opts.bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(&data_dir)
            .env("BANTER_SERVER__TCP", tcp.to_string())
            .env("BANTER_SERVER__WS", ws.to_string())
            .env("BANTER_API__LISTEN", http.to_string())
            .env("BANTER_STORE__DURABILITY", &opts.durability)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|err| ServerError::Spawn {
            bin: opts.bin.display().to_string(),
            err,
        })?;
        let pid = child.id().unwrap_or(0);
        let (dir, data_dir, log) = if opts.keep_data {
            let path = dir.keep();
            (None, path.join("data"), path.join("server.log"))
        } else {
            (Some(dir), data_dir, log)
        };
        let deadline = Instant::now() + opts.ready_timeout;
        let api =
            HttpClient::new(BaseUrl::from_addr(http), None).with_timeout(Duration::from_secs(2));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ServerError::Exited {
                    status: status.to_string(),
                    log: log.display().to_string(),
                    tail: log_tail(&log),
                });
            }
            if let Ok((200, _)) = api.get("/healthz").await {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(ServerError::NotReady {
                    secs: opts.ready_timeout.as_secs(),
                    log: log.display().to_string(),
                    tail: log_tail(&log),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ChildServer {
            child,
            pid,
            tcp,
            ws,
            http,
            data_dir,
            log,
            _dir: dir,
        })
    }

    /// Stops the server: SIGTERM, up to `grace` to exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Resident memory of process `pid` in bytes, from `/proc/<pid>/status` (`VmRSS`).
pub fn rss_of_pid(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system, seconds) process `pid` has used so far, from `/proc/<pid>/stat`
/// (clock ticks of `USER_HZ` = 100, the fixed unit Linux reports there).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Kernel memory of this host that grows with TCP connections: slab (`Slab` of `/proc/meminfo`, which
/// holds socket structures) and TCP buffer pages (`mem` of the `TCP:` line of `/proc/net/sockstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelMemory {
    pub slab_bytes: u64,
    pub tcp_buffer_bytes: u64,
}

/// Reads [`KernelMemory`] (Linux only; `None` elsewhere).
pub fn kernel_memory() -> Option<KernelMemory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let slab_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = tcp.split_whitespace();
    let mut pages = None;
    while let Some(w) = it.next() {
        if w == "mem" {
            pages = it.next().and_then(|p| p.parse::<u64>().ok());
        }
    }
    Some(KernelMemory {
        slab_bytes: slab_kb * 1024,
        tcp_buffer_bytes: pages? * 4096,
    })
}

/// Where a server's resident memory can be read.
#[derive(Debug, Clone)]
pub enum MemorySource {
    /// `/proc/<pid>/status`.
    Pid(u32),
    /// A `/summary` endpoint with `rss_bytes` (banter), read with an optional API secret.
    Summary {
        base: BaseUrl,
        path: String,
        secret: Option<String>,
    },
}

impl MemorySource {
    /// Reads the server's resident memory.
    pub async fn rss(&self) -> Option<u64> {
        match self {
            MemorySource::Pid(pid) => rss_of_pid(*pid),
            MemorySource::Summary { base, path, secret } => {
                let c = HttpClient::new(base.clone(), secret.clone());
                let v = c.get_json(path).await.ok()?;
                v.get("rss_bytes").and_then(|r| r.as_u64())
            }
        }
    }

    /// Parses a `/summary` URL (`http://host:port/summary`).
    pub fn summary_url(
        url: &str,
        secret: Option<String>,
    ) -> Result<MemorySource, crate::api::HttpError> {
        let full = BaseUrl::parse(url)?;
        Ok(MemorySource::Summary {
            base: BaseUrl {
                authority: full.authority,
                prefix: String::new(),
            },
            path: if full.prefix.is_empty() {
                "/summary".into()
            } else {
                full.prefix
            },
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        let rss = rss_of_pid(std::process::id()).unwrap();
        assert!(rss > 100_000, "{rss}");
    }

    #[test]
    fn reads_own_cpu_time() {
        let before = cpu_secs(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_secs(std::process::id()).unwrap() >= before);
    }

    #[test]
    fn reads_kernel_memory() {
        let k = kernel_memory().unwrap();
        assert!(k.slab_bytes > 0);
    }

    #[test]
    fn summary_url_forms() {
        match MemorySource::summary_url("http://127.0.0.1:6666/summary", None).unwrap() {
            MemorySource::Summary { base, path, .. } => {
                assert_eq!(base.authority, "127.0.0.1:6666");
                assert_eq!(path, "/summary");
            }
            MemorySource::Pid(_) => unreachable!(),
        }
        match MemorySource::summary_url("http://127.0.0.1:6666", None).unwrap() {
            MemorySource::Summary { path, .. } => assert_eq!(path, "/summary"),
            MemorySource::Pid(_) => unreachable!(),
        }
    }

    #[tokio::test]
    async fn missing_binary_is_reported() {
        let opts = ChildOptions::new(PathBuf::from("/nonexistent/banter"));
        let e = ChildServer::start(&opts).await.err().unwrap();
        assert!(matches!(e, ServerError::Spawn { .. }), "{e}");
    }
}
