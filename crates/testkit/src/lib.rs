//! Test kit: private service processes for integration tests. Each helper starts its own server
//! on a free loopback port in a temporary directory, waits until it answers, and stops it (kill and
//! reap) on drop. Used only as a dev-dependency.
//!
//! * [`RedisServer`]: `redis-server` without persistence.
//! * [`MariaDb`]: `mariadbd` on a fresh data directory, with an empty database `test`.
//! * [`S3Server`]: an S3-compatible server (moto's `moto_server`, from PyPI `moto[server]`).
//! * [`Tmpfs`]: a small tmpfs to fill for full-disk tests (needs root).
//! * [`EtcdServer`]: a single-member `etcd` (Debian `etcd-server`) on a fresh data directory.
//! * [`netns`]: hosts in network namespaces on a private bridge, with partitions, packet loss and
//!   delay between them (the partition tests; needs root).
//! * [`history`]: the partition tests' history checker — no ACKed message lost, none duplicated,
//!   each sender's order kept.
//!
//! A missing binary fails with a message naming the package to install.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod history;
pub mod netns;

/// How many times a start is retried when the chosen port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// A free loopback port (bound, then released; the caller races for it, hence the retries).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .expect("testkit: cannot bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("testkit: local_addr of a bound listener")
        .port()
}

/// Full path of `name` on PATH (also searching the sbin directories), or a clear panic.
pub fn find_binary(name: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut extra_dirs = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        // Where `pip install --user` and pyenv put console scripts.
        extra_dirs.push(PathBuf::from(&home).join(".local/bin"));
        extra_dirs.push(PathBuf::from(&home).join(".pyenv/shims"));
    }
    dirs.extend(extra_dirs);
    for extra in [
        "/usr/sbin",
        "/usr/local/sbin",
        "/sbin",
        "/usr/bin",
        "/usr/local/bin",
    ] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("testkit: `{name}` not found on PATH; install it ({package}) to run these tests")
        })
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A private `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl RedisServer {
    /// Start `redis-server` and wait until it answers `PING` (panics with its log on failure).
    pub fn start() -> RedisServer {
        let bin = find_binary(
            "redis-server",
            "Debian/Ubuntu: `apt-get install -y redis-server`",
        );
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("testkit: cannot create a temporary directory");
            let port = free_port();
            let log = dir.path().join("redis.log");
            let mut child = Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args([
                    "--dir",
                    &dir.path().to_string_lossy(),
                    "--logfile",
                    &log.to_string_lossy(),
                ])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("testkit: cannot spawn {}: {e}", bin.display()));
            match wait_until(&mut child, Duration::from_secs(10), || redis_ping(port)) {
                Ok(()) => {
                    return RedisServer {
                        child,
                        port,
                        _dir: dir,
                    }
                }
                Err(why) => {
                    stop(&mut child);
                    last_error = format!("{why}; log:\n{}", log_tail(&log));
                }
            }
        }
        panic!("testkit: redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn redis_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Poll `ready` until it holds, the child exits, or the timeout passes.
fn wait_until(
    child: &mut Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the process exited early ({status})"));
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A private single-member `etcd` on free loopback ports (client and peer) with a fresh data
/// directory, killed on drop.
pub struct EtcdServer {
    child: Option<Child>,
    port: u16,
    peer_port: u16,
    dir: TempDir,
}

impl EtcdServer {
    /// Start `etcd` and wait until `/health` answers (panics with its log on failure).
    pub fn start() -> EtcdServer {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("testkit: cannot create a temporary directory");
            let mut server = EtcdServer {
                child: None,
                port: free_port(),
                peer_port: free_port(),
                dir,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(why) => last_error = why,
            }
        }
        panic!("testkit: etcd did not start: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = find_binary("etcd", "Debian/Ubuntu: `apt-get install -y etcd-server`");
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = self.dir.path().join("etcd.log");
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut child = Command::new(&bin)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", bin.display()))?;
        let port = self.port;
        match wait_until(&mut child, Duration::from_secs(20), || etcd_healthy(port)) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(why) => {
                stop(&mut child);
                Err(format!("{why}; log:\n{}", log_tail(&log)))
            }
        }
    }

    /// `http://127.0.0.1:<port>`, the client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data directory is kept), e.g. to test an etcd outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }

    /// Starts it again on the same ports and data after [`EtcdServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(why) => last_error = why,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("testkit: etcd did not restart: {last_error}");
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn etcd_healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1000)));
    let req =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200") && text.contains("\"health\":\"true\"")
}

/// A private MariaDB server on a free loopback port with an empty database `test`, killed on drop.
/// The user is `root` without a password.
pub struct MariaDb {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl MariaDb {
    /// Initialise a data directory, start `mariadbd`, wait until it accepts connections.
    /// Panics with the server's log on failure.
    pub fn start() -> MariaDb {
        let server = find_binary(
            "mariadbd",
            "Debian/Ubuntu: `apt-get install -y mariadb-server`",
        );
        let install = find_binary(
            "mariadb-install-db",
            "Debian/Ubuntu: `apt-get install -y mariadb-server`",
        );
        let dir = tempfile::tempdir().expect("testkit: cannot create a temporary directory");
        let data = dir.path().join("data");
        let install_log = dir.path().join("install.log");
        let status = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg("--skip-name-resolve")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(&install_log).expect("testkit: cannot create install log"))
            .stderr(Stdio::from(
                File::options()
                    .append(true)
                    .open(&install_log)
                    .expect("testkit: cannot open install log"),
            ))
            .status()
            .unwrap_or_else(|e| panic!("testkit: cannot run {}: {e}", install.display()));
        if !status.success() {
            panic!(
                "testkit: mariadb-install-db failed ({status}):\n{}",
                log_tail(&install_log)
            );
        }
        let init = dir.path().join("init.sql");
        std::fs::write(&init, "CREATE DATABASE IF NOT EXISTS test;\n")
            .expect("testkit: cannot write init.sql");

        let log = dir.path().join("mariadb.err");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut child = Command::new(&server)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--user=root",
                    "--skip-networking=0",
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--socket={}", dir.path().join("sock").display()))
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("mariadb.pid").display()
                ))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!("--init-file={}", init.display()))
                .args([
                    "--innodb-buffer-pool-size=16M",
                    "--skip-log-bin",
                    "--innodb-flush-log-at-trx-commit=2",
                ])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("testkit: cannot spawn {}: {e}", server.display()));
            match wait_until(&mut child, Duration::from_secs(60), || mysql_greeting(port)) {
                Ok(()) => return MariaDb { child, port, dir },
                Err(why) => {
                    stop(&mut child);
                    last_error = format!("{why}; log:\n{}", log_tail(&log));
                }
            }
        }
        panic!("testkit: mariadbd did not start: {last_error}");
    }

    /// `mysql://root@127.0.0.1:<port>/test`.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Unix socket path (for the `mariadb` command-line client).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// True when the server sends a MySQL protocol-10 handshake (not an error packet).
fn mysql_greeting(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1000)));
    let mut buf = [0u8; 5];
    // 3-byte length, sequence id, then the protocol version 10 (0xff would be an error packet).
    stream.read_exact(&mut buf).is_ok() && buf[4] == 10
}

/// A private S3-compatible server (moto's `moto_server`) on a free loopback port, killed on drop.
/// It keeps everything in memory and accepts any credentials; create buckets with
/// [`S3Server::create_bucket`].
pub struct S3Server {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl S3Server {
    /// Start `moto_server` and wait until it answers (panics with its log on failure).
    pub fn start() -> S3Server {
        let bin = find_binary("moto_server", "`pip install 'moto[server]'`");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("testkit: cannot create a temporary directory");
            let port = free_port();
            let log = dir.path().join("moto.log");
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(
                    File::create(&log).expect("testkit: cannot create moto.log"),
                ))
                .stderr(Stdio::from(
                    File::options()
                        .append(true)
                        .open(&log)
                        .expect("testkit: cannot open moto.log"),
                ))
                .spawn()
                .unwrap_or_else(|e| panic!("testkit: cannot spawn {}: {e}", bin.display()));
            match wait_until(&mut child, Duration::from_secs(60), || {
                http_status(port, "GET", "/") == Some(200)
            }) {
                Ok(()) => {
                    return S3Server {
                        child,
                        port,
                        _dir: dir,
                    }
                }
                Err(why) => {
                    stop(&mut child);
                    last_error = format!("{why}; log:\n{}", log_tail(&log));
                }
            }
        }
        panic!("testkit: moto_server did not start: {last_error}");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates bucket `name` (panics when the server refuses).
    pub fn create_bucket(&self, name: &str) {
        let status = http_status(self.port, "PUT", &format!("/{name}"));
        assert_eq!(status, Some(200), "testkit: creating bucket {name} failed");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The status of a body-less HTTP/1.1 request to the loopback port, `None` when it fails.
fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// A tmpfs of a given size mounted on a fresh temporary directory, unmounted on drop. Mounting
/// needs root (the CI runs the tests as root); without it the test fails saying so.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mb` MiB.
    pub fn mount(size_mb: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "this test mounts a {size_mb} MiB tmpfs to fill a real filesystem and needs root \
             (the CI runs the tests as root): mount said {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with `ballast` until no space is left; returns its size.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f =
            std::fs::File::create(self.path().join("ballast")).expect("create the ballast file");
        let chunk = vec![0x5au8; 64 << 10];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(w) => n += w as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        n
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.path().join("ballast")).expect("remove the ballast file");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // still busy (a store not yet closed): detach it so the directory can go
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
