//! An in-process `banter serve` for tests and benchmarks: every listener on `127.0.0.1:0`, a temporary
//! data directory, durability `always`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::Config;
use crate::serve::{self, Running, ServeError};

/// A running test server. Dropping it without [`TestServer::stop`] leaves its tasks to the runtime.
pub struct TestServer {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    /// Raw TLS and WSS listeners, when configured.
    pub tls: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    /// The app API's own listener, when `app_api.listen` is set.
    pub app_api: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub config: Config,
    /// The running node (its app, store and backend), for tests that look inside.
    pub running: Option<Running>,
    _tmp: Option<tempfile::TempDir>,
}

/// The configuration a test server uses in `dir`.
pub fn test_config(dir: PathBuf) -> Config {
    let mut c = Config::default();
    c.data.dir = dir;
    c.server.tcp = "127.0.0.1:0".into();
    c.server.ws = "127.0.0.1:0".into();
    c.api.listen = "127.0.0.1:0".into();
    c
}

impl TestServer {
    /// Starts a server with the default test configuration in a fresh temporary directory.
    pub async fn start() -> Result<TestServer, ServeError> {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after letting `adjust` change the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Result<TestServer, ServeError> {
        let tmp = tempfile::tempdir().map_err(|source| ServeError::DataDir {
            path: "<tempdir>".into(),
            source,
        })?;
        let mut config = test_config(tmp.path().to_path_buf());
        adjust(&mut config);
        let mut s = TestServer::start_config(config).await?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Starts a server with exactly `config`.
    pub async fn start_config(config: Config) -> Result<TestServer, ServeError> {
        let running = serve::start(&config).await?;
        let a = &running.node.addrs;
        let missing =
            |what: &str| ServeError::Config(format!("test server has no {what} listener"));
        Ok(TestServer {
            tcp: a.tcp.ok_or_else(|| missing("tcp"))?,
            ws: a.ws.ok_or_else(|| missing("ws"))?,
            http: a.http.ok_or_else(|| missing("http"))?,
            tls: a.tls,
            wss: a.wss,
            app_api: a.app_api,
            data_dir: config.data.dir.clone(),
            config,
            running: Some(running),
            _tmp: None,
        })
    }

    /// Base URL of the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// URL of the WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    /// Gracefully stops the server (the data directory stays until the value is dropped).
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Stops the server and starts it again on the same data directory (on new ports).
    pub async fn restart(mut self) -> Result<TestServer, ServeError> {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        let tmp = self._tmp.take();
        let mut config = self.config.clone();
        config.server.tcp = "127.0.0.1:0".into();
        config.server.ws = "127.0.0.1:0".into();
        config.api.listen = "127.0.0.1:0".into();
        if !config.app_api.listen.is_empty() {
            config.app_api.listen = "127.0.0.1:0".into();
        }
        let mut s = TestServer::start_config(config).await?;
        s._tmp = tmp;
        Ok(s)
    }
}
