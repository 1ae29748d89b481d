//! What every scenario needs to know about its target and its clients: where to connect (TCP or
//! WebSocket, one access node or several, from which source addresses), where tokens come from, the
//! server's API (admin calls, memory), client behaviour (protocol version, platform, heartbeats, ACKs) and
//! the bounds of a run.
//!
//! Several access nodes (a cluster): connection `i` goes to node `i mod N` unless a scenario places it
//! ([`Env::connect_options_on`]); `peer` puts each pair's sender and receiver on different nodes
//! ([`peer_nodes`]).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::api::{BaseUrl, HttpClient};
use crate::client::{ConnectOptions, Endpoint};
use crate::server::MemorySource;
use crate::tokens::TokenSource;

/// Client behaviour shared by every connection of a run.
#[derive(Debug, Clone)]
pub struct ClientProfile {
    /// AUTH_TOKEN platform (2 = Android).
    pub platform: u8,
    /// Protocol version (2 like Android/iOS, 1 like JS).
    pub version: u8,
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// ACK received messages as SDKs do.
    pub client_acks: bool,
}

impl Default for ClientProfile {
    fn default() -> Self {
        ClientProfile {
            platform: proto::Platform::ANDROID,
            version: 2,
            connect_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(30),
            client_acks: true,
        }
    }
}

/// The environment of a run. Build one with [`Env::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct Env {
    /// The access nodes, never empty (one for a single server). Connections are spread over them.
    pub endpoints: Vec<Endpoint>,
    pub tokens: TokenSource,
    /// The server's HTTP API (for `/admin/groups`), with its secret.
    pub api: Option<(BaseUrl, Option<String>)>,
    /// Where the server's resident memory is read (`connections`).
    pub memory: Option<MemorySource>,
    pub appid: i64,
    /// First uid of this run; scenarios use consecutive uids from here.
    pub uid_base: i64,
    /// Tells this run's messages from any other's.
    pub run_id: u32,
    /// Source addresses spread over the connections (empty: let the kernel choose).
    pub source_ips: Vec<IpAddr>,
    pub client: ClientProfile,
    /// Bound on the measured phase.
    pub duration: Duration,
    /// End the run when nothing has progressed for this long.
    pub drain_timeout: Duration,
    /// Most connections being set up at once.
    pub connect_concurrency: usize,
    /// Draw a progress bar (only shown on a terminal).
    pub progress: bool,
    /// Epoch of message timestamps (monotonic, shared by all tasks).
    pub epoch: std::time::Instant,
    /// Server processes (name, pid) whose CPU time is reported for the measured interval, e.g. every
    /// node of a cluster.
    pub cpu_pids: Vec<(String, u32)>,
}

/// A random uid base in 10^9 .. 9·10^9, so runs against a long-lived server use fresh users.
pub fn random_uid_base() -> i64 {
    1_000_000_000 + i64::from(rand::random::<u32>() % 8_000_000) * 1000
}

/// The nodes of `peer` pair `pair` among `nodes` access nodes: (sender's, receiver's). With one node both
/// are 0; with more, the sender is on node `pair mod N` and the receiver on the next one,
/// `(pair + 1) mod N`, so every message crosses from one node to another and every node sends and
/// receives the same share.
pub fn peer_nodes(pair: usize, nodes: usize) -> (usize, usize) {
    if nodes <= 1 {
        return (0, 0);
    }
    (pair % nodes, (pair + 1) % nodes)
}

/// All of 127.0.0.1 – 127.0.0.255.
pub fn loopback_sources() -> Vec<IpAddr> {
    (1..=255u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// This process's limit on open files (soft `RLIMIT_NOFILE`, from `/proc/self/limits`).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Files kept free for everything but client connections (runtime, HTTP, logs).
const SPARE_FILES: u64 = 64;

/// Checks that `n` client connections fit under this process's open-file limit.
pub fn check_connection_budget(n: usize) -> Result<(), String> {
    match open_files_limit() {
        Some(limit) if n as u64 + SPARE_FILES > limit => Err(format!(
            "{n} connections do not fit under this process's limit of {limit} open files \
             (keep {SPARE_FILES} spare); raise `ulimit -n` or run fewer connections"
        )),
        _ => Ok(()),
    }
}

impl Env {
    /// Defaults: app 7, a random uid base and run id, Android-like clients, 300 s cap, 10 s drain.
    pub fn new(endpoint: Endpoint, tokens: TokenSource) -> Env {
        Env::with_endpoints(vec![endpoint], tokens)
    }

    /// Like [`Env::new`] with several access nodes (connections are spread over them).
    ///
    /// # Panics
    /// If `endpoints` is empty.
    pub fn with_endpoints(endpoints: Vec<Endpoint>, tokens: TokenSource) -> Env {
        assert!(!endpoints.is_empty(), "at least one endpoint");
        let source_ips = if endpoints
            .iter()
            .all(|e| e.addr().ip().is_loopback() && e.addr().is_ipv4())
        {
            loopback_sources()
        } else {
            Vec::new()
        };
        Env {
            endpoints,
            tokens,
            api: None,
            memory: None,
            appid: 7,
            uid_base: random_uid_base(),
            run_id: rand::random::<u32>(),
            source_ips,
            client: ClientProfile::default(),
            duration: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(10),
            connect_concurrency: 256,
            progress: false,
            epoch: std::time::Instant::now(),
            cpu_pids: Vec::new(),
        }
    }

    /// The first access node (the only one of a single server).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoints[0]
    }

    /// The node connection `i` goes to when the scenario does not place it: `i mod N`.
    pub fn node_for(&self, i: usize) -> usize {
        i % self.endpoints.len()
    }

    /// Connect options for the `i`-th connection of the run, as `uid` with `token`, on node
    /// [`Env::node_for`]`(i)`.
    pub fn connect_options(&self, i: usize, uid: i64, token: String) -> ConnectOptions {
        self.connect_options_on(self.node_for(i), i, uid, token)
    }

    /// Connect options for the `i`-th connection of the run on access node `node` (taken mod N).
    pub fn connect_options_on(
        &self,
        node: usize,
        i: usize,
        uid: i64,
        token: String,
    ) -> ConnectOptions {
        let endpoint = self.endpoints[node % self.endpoints.len()].clone();
        let mut o = ConnectOptions::new(endpoint, uid, token);
        if !self.source_ips.is_empty() {
            o.source_ip = Some(self.source_ips[i % self.source_ips.len()]);
        }
        o.platform = self.client.platform;
        o.version = self.client.version;
        o.connect_timeout = self.client.connect_timeout;
        o.ping_interval = self.client.ping_interval;
        o.pong_timeout = self.client.pong_timeout;
        o.client_acks = self.client.client_acks;
        o
    }

    /// Nanoseconds since the run's epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A client for the server's API, if one is known.
    pub fn api_client(&self) -> Option<HttpClient> {
        self.api
            .as_ref()
            .map(|(base, secret)| HttpClient::new(base.clone(), secret.clone()))
    }

    /// "tcp" or "ws".
    pub fn transport(&self) -> &'static str {
        match self.endpoint() {
            Endpoint::Tcp(_) => "tcp",
            Endpoint::Ws { .. } => "ws",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: u16) -> Endpoint {
        Endpoint::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn env_of(nodes: usize) -> Env {
        Env::with_endpoints(
            (0..nodes).map(|n| tcp(20_000 + n as u16)).collect(),
            TokenSource::Redis {
                url: "redis://127.0.0.1:1".into(),
            },
        )
    }

    #[test]
    fn connections_are_spread_round_robin() {
        let env = env_of(3);
        let ports: Vec<u16> = (0..7)
            .map(|i| {
                env.connect_options(i, i as i64, String::new())
                    .endpoint
                    .addr()
                    .port()
            })
            .collect();
        assert_eq!(
            ports,
            [20_000, 20_001, 20_002, 20_000, 20_001, 20_002, 20_000]
        );
        // Placing a connection overrides the spread; the source address still follows `i`.
        let o = env.connect_options_on(4, 0, 1, String::new());
        assert_eq!(o.endpoint.addr().port(), 20_001);
        assert_eq!(o.source_ip, Some(env.source_ips[0]));
        // One node: everything goes there.
        let one = env_of(1);
        assert!((0..5).all(|i| one
            .connect_options(i, 1, String::new())
            .endpoint
            .addr()
            .port()
            == 20_000));
        assert_eq!(one.endpoint().addr().port(), 20_000);
    }

    #[test]
    fn peer_pairs_cross_nodes_and_share_the_work() {
        assert_eq!(peer_nodes(0, 1), (0, 0));
        assert_eq!(peer_nodes(7, 1), (0, 0));
        for nodes in 2..=5 {
            let mut sends = vec![0usize; nodes];
            let mut receives = vec![0usize; nodes];
            for pair in 0..10 * nodes {
                let (s, r) = peer_nodes(pair, nodes);
                assert_ne!(s, r, "pair {pair} of {nodes} nodes is cross-node");
                assert!(s < nodes && r < nodes);
                sends[s] += 1;
                receives[r] += 1;
            }
            assert!(sends.iter().all(|&n| n == 10), "{sends:?}");
            assert!(receives.iter().all(|&n| n == 10), "{receives:?}");
        }
        // Two nodes: pairs alternate direction.
        assert_eq!(peer_nodes(0, 2), (0, 1));
        assert_eq!(peer_nodes(1, 2), (1, 0));
    }

    #[test]
    fn connection_budget_follows_the_file_limit() {
        let limit = open_files_limit().expect("Linux reports the limit");
        assert!(check_connection_budget(10).is_ok());
        let e = check_connection_budget(limit as usize).unwrap_err();
        assert!(e.contains("open files"), "{e}");
    }
}
