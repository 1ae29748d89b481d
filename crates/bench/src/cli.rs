//! `banter bench <scenario>`: argument parsing, target set-up (an external server, or a `banter serve`
//! child on free ports with a temporary data directory), running the scenario, and output (progress bar,
//! human summary, `--json` line, `--report DIR` SVG and JSON).
//!
//! [`run`] is synchronous: it builds its own tokio runtime, so the binary just calls it. It returns an
//! error when the run failed its checks (lost, duplicated or reordered messages, failed connections), so
//! the process exits non-zero.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use crate::api::BaseUrl;
use crate::client::Endpoint;
use crate::env::{loopback_sources, random_uid_base, ClientProfile, Env};
use crate::report::Report;
use crate::scenario::{self, Fault};
use crate::server::{ChildOptions, ChildServer, MemorySource};
use crate::tokens::{TokenSource, TokenSpec};

/// `banter bench`: load generator that behaves like real SDK clients.
#[derive(Debug, Args)]
#[command(
    about = "Load generator that behaves like real SDK clients",
    long_about = "Load generator that behaves like real GoBelieve SDK clients (auth, SYNC on SYNC_NOTIFY, \
SYNC_KEY reports, METADATA fast path, PING) over TCP or WebSocket.\n\nWithout --addr/--ws, each scenario \
starts `banter serve` as a child process on free loopback ports with a temporary data directory and stops \
it at the end. Several --addr (or --ws) spread the connections over the access nodes of a cluster \
(scripts/bench-cluster starts one)."
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: ScenarioCmd,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum ScenarioCmd {
    /// P sender/receiver pairs, M messages each: throughput, latency, exactly-once in-order check.
    Peer(PeerArgs),
    /// Fan-out through groups (normal or super): messages/s, deliveries/s, latency, exactly-once check.
    Group(GroupArgs),
    /// Fan-out through chat rooms: messages/s, deliveries/s, latency, loss counts.
    Room(RoomArgs),
    /// Open, authenticate and hold N idle connections; server memory per connection.
    Connections(ConnectionsArgs),
    /// The in-process message store benchmark.
    Store(StoreArgs),
    /// The app API: concurrent clients upload and download images and voice clips; requests/s,
    /// MB/s, latency, server memory.
    Media(MediaArgs),
    /// Offline push: pushes/s to a local APNs stand-in for N offline users, and the IM rate beside it.
    Push(PushArgs),
}

/// Transport for client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Tcp,
    Ws,
}

/// Where the server is (or how to start one).
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// TCP address of a running server (host:port). Without --addr and --ws a child server is started.
    ///
    /// Repeat it (or give a comma-separated list) to load several access nodes of one cluster: connection
    /// i goes to node i mod N, except in `peer`, where pair i's sender goes to node i mod N and its
    /// receiver to node (i + 1) mod N, so that with two or more nodes every message crosses from one node
    /// to another and each node sends and receives the same share. The nodes must share their stores and
    /// tokens (e.g. --tokens redis=URL); `group` also needs a shared group directory.
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_delimiter = ',',
        visible_alias = "addrs"
    )]
    pub addr: Vec<String>,
    /// WebSocket URL of a running server (ws://host:port/ws); repeatable like --addr.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub ws: Vec<String>,
    /// The server's HTTP API (http://host:port): tokens (/auth/grant), groups (/admin/groups), /summary.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
    /// Transport the clients use (default: ws when only --ws is given, else tcp).
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
    /// Token source: redis=<url> (writes access_token_<t> hashes, for GoBelieve-compatible servers) or
    /// http=<url> (banter's /auth/grant). Default: http=<--http or the child's API>.
    #[arg(long, value_name = "SOURCE")]
    pub tokens: Option<String>,
    /// Secret for the server's HTTP API (sent as Authorization: Bearer <secret>).
    #[arg(long, env = "BANTER_API_SECRET", hide_env_values = true)]
    pub api_secret: Option<String>,
    /// The banter binary to start as a child server (default: this executable).
    #[arg(long, env = "BANTER_BIN", value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Extra environment for the child server, e.g. BANTER_SERVER__MAX_INFLIGHT=512 (repeatable).
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    pub server_env: Vec<String>,
    /// store.durability of the child server: always, interval or none.
    #[arg(long, default_value = "always")]
    pub durability: String,
    /// Keep the child server's data directory and log.
    #[arg(long)]
    pub keep_server_data: bool,
    /// Pid of the server, to read its resident memory from /proc.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// The server's /summary URL, to read its resident memory (rss_bytes).
    #[arg(long, value_name = "URL")]
    pub summary: Option<String>,
    /// Allow targets outside the loopback range (by default only 127.0.0.0/8 and ::1 are accepted).
    #[arg(long)]
    pub allow_remote: bool,
    /// Report the CPU time of this server process during the measured interval, e.g. each node of a
    /// cluster: NAME=PID (repeatable).
    #[arg(long = "cpu-pid", value_name = "NAME=PID")]
    pub cpu_pids: Vec<String>,
}

/// How the clients behave.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// App id of the bench users.
    #[arg(long, default_value_t = 7)]
    pub appid: i64,
    /// First uid (default: random, so every run uses fresh users).
    #[arg(long)]
    pub uid_base: Option<i64>,
    /// Protocol version sent in AUTH_TOKEN (2 like Android/iOS, 1 like JS).
    #[arg(long, default_value_t = 2)]
    pub protocol_version: u8,
    /// AUTH_TOKEN platform id (1 iOS, 2 Android, 3 Web).
    #[arg(long, default_value_t = 2)]
    pub platform: u8,
    /// PING after this long without writing (e.g. 20s, 500ms).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Do not ACK received messages (SDKs do).
    #[arg(long)]
    pub no_client_acks: bool,
    /// Source addresses: a range (127.0.0.1-127.0.0.255) or a comma-separated list. Default: the
    /// whole 127.0.0.1-127.0.0.255 range for an IPv4 loopback target.
    #[arg(long, value_name = "IPS")]
    pub source_ips: Option<String>,
    /// Bound on connect + authenticate + initial sync, per connection.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Most connections being set up at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// Output and bounds of a run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// End with one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write <DIR>/<scenario>.svg (latency distribution, throughput over time) and <scenario>.json.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Cap on the measured phase.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub duration: Duration,
    /// End the run when nothing has progressed for this long (then report what is missing).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Worker threads of the load generator (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `peer` arguments.
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Messages per pair.
    #[arg(long, short = 'm', default_value_t = 5_000)]
    pub messages: u64,
    /// Target total send rate (messages/s over all senders); default: as fast as the window allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Content bytes per message.
    #[arg(long, default_value_t = 128)]
    pub message_size: usize,
    /// Most un-ACKed messages per sender.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Deliberately skip message N of the first pair (proves the loss check; the run must fail).
    #[arg(long, hide = true)]
    pub withhold: Option<u64>,
    /// Deliberately send message N of the first pair twice (proves the duplicate check).
    /// Deliberately send message N of the first sender twice (proves the duplicate check).
    #[arg(long, hide = true)]
    pub duplicate: Option<u64>,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `group` arguments.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Groups to create and load.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Members per group.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Senders per group.
    #[arg(long, default_value_t = 5)]
    pub senders: usize,
    /// Messages per sender.
    #[arg(long, short = 'm', default_value_t = 1_000)]
    pub messages: u64,
    /// Super groups (one shared queue, flag SUPER_GROUP) instead of normal groups.
    #[arg(long = "super")]
    pub super_group: bool,
    /// First group id (default: the uid base).
    #[arg(long)]
    pub group_id_base: Option<i64>,
    /// Target total send rate (messages/s over all senders); default: as fast as the window allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Content bytes per message.
    #[arg(long, default_value_t = 128)]
    pub message_size: usize,
    /// Most un-ACKed messages per sender.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Deliberately skip message N of the first sender (proves the loss check; the run must fail).
    #[arg(long, hide = true)]
    pub withhold: Option<u64>,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `room` arguments.
#[derive(Debug, Clone, Args)]
pub struct RoomArgs {
    /// Rooms to load.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Members per room.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Senders per room.
    #[arg(long, default_value_t = 5)]
    pub senders: usize,
    /// Messages per sender.
    #[arg(long, short = 'm', default_value_t = 1_000)]
    pub messages: u64,
    /// First room id (default: the uid base).
    #[arg(long)]
    pub room_id_base: Option<i64>,
    /// Target total send rate (messages/s over all senders); default: as fast as the window allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Content bytes per message.
    #[arg(long, default_value_t = 128)]
    pub message_size: usize,
    /// Most un-ACKed messages per sender.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Deliberately send message N of the first sender twice (proves the duplicate check).
    #[arg(long, hide = true)]
    pub duplicate: Option<u64>,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `connections` arguments.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Connections to open and hold (one user each).
    #[arg(long, short = 'n', default_value_t = 1_000)]
    pub connections: usize,
    /// Connections per second during the ramp (default: as fast as --connect-concurrency allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to hold the connections once all are up.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Wait this long after the ramp before reading the server's memory.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `media` arguments.
#[derive(Debug, Clone, Args)]
pub struct MediaArgs {
    /// Concurrent clients (one user and one keep-alive HTTP connection each).
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Image uploads in all (each downloaded once afterwards).
    #[arg(long, default_value_t = 2_000)]
    pub images: u64,
    /// Bytes per image.
    #[arg(long, default_value_t = 100_000)]
    pub image_size: usize,
    /// Voice uploads in all (each downloaded once afterwards).
    #[arg(long, default_value_t = 500)]
    pub voices: u64,
    /// Bytes per voice clip.
    #[arg(long, default_value_t = 1_000_000)]
    pub voice_size: usize,
    /// Path prefix of the app API.
    #[arg(long, default_value = "/v2")]
    pub prefix: String,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `push` arguments.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Offline users, one APNs device each; each gets one message.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Online senders sharing the messages.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Un-ACKed messages per sender.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// `push.native.concurrency` of the child server.
    #[arg(long, default_value_t = 64)]
    pub push_concurrency: usize,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `store` arguments.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Messages to append.
    #[arg(long, short = 'm', default_value_t = 1_000_000)]
    pub messages: u64,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 256)]
    pub appenders: usize,
    /// Body bytes per message.
    #[arg(long, default_value_t = 200)]
    pub message_size: usize,
    /// always, none, interval (1 s) or interval=<ms>.
    #[arg(long, default_value = "always")]
    pub durability: String,
    /// Store directory (must not hold a store; default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Users the messages are spread over.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Keep the store directory afterwards.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `a.b.c.d-a.b.c.e` (IPv4 range, last octet varies) or a comma-separated list.
pub fn parse_source_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    if let Some((a, b)) = s.split_once('-') {
        let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
        let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| format!("bad address {b:?}"))?;
        let (ao, bo) = (a.octets(), b.octets());
        if ao[..3] != bo[..3] || ao[3] > bo[3] {
            return Err(format!(
                "range {s:?} must vary only the last octet, low to high"
            ));
        }
        return Ok((ao[3]..=bo[3])
            .map(|o| IpAddr::V4(std::net::Ipv4Addr::new(ao[0], ao[1], ao[2], o)))
            .collect());
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("bad address {p:?}"))
        })
        .collect()
}

/// Parses `NAME=PID` (`--cpu-pid`).
fn parse_cpu_pid(s: &str) -> anyhow::Result<(String, u32)> {
    let (name, pid) = s
        .split_once('=')
        .with_context(|| format!("--cpu-pid {s:?}: expected NAME=PID"))?;
    let pid: u32 = pid
        .trim()
        .parse()
        .with_context(|| format!("--cpu-pid {s:?}: bad pid"))?;
    Ok((name.trim().to_string(), pid))
}

fn resolve(hostport: &str) -> anyhow::Result<SocketAddr> {
    hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to no address"))
}

/// Splits `ws://host:port/path` into the socket address and the URL.
fn parse_ws_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--ws {url:?}: only ws:// URLs are supported"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((resolve(&authority)?, url.to_string()))
}

/// A prepared target: the environment, and the child server to stop afterwards.
pub struct Prepared {
    pub env: Env,
    pub child: Option<ChildServer>,
}

/// Builds the run environment from the arguments, starting a child server when no target is given.
pub async fn prepare(t: &TargetArgs, c: &ClientArgs, r: &RunArgs) -> anyhow::Result<Prepared> {
    let mut child = None;
    let external = !t.addr.is_empty() || !t.ws.is_empty();
    let (tcp, ws, http) = if external {
        let tcp = t
            .addr
            .iter()
            .map(|a| resolve(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ws =
            t.ws.iter()
                .map(|u| parse_ws_url(u))
                .collect::<anyhow::Result<Vec<_>>>()?;
        let http = t.http.as_deref().map(BaseUrl::parse).transpose()?;
        (tcp, ws, http)
    } else {
        let bin = match &t.server_bin {
            Some(b) => b.clone(),
            None => {
                std::env::current_exe().context("cannot find this executable; give --server-bin")?
            }
        };
        let mut opts = ChildOptions::new(bin);
        opts.durability = t.durability.clone();
        opts.keep_data = t.keep_server_data;
        for kv in &t.server_env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--server-env {kv:?}: expected KEY=VALUE"))?;
            opts.env.push((k.to_string(), v.to_string()));
        }
        if let Some(secret) = &t.api_secret {
            opts.env.push(("BANTER_API__SECRET".into(), secret.clone()));
        }
        let server = ChildServer::start(&opts)
            .await
            .context("starting the child server")?;
        let urls = (
            vec![server.tcp],
            vec![(server.ws, format!("ws://{}/ws", server.ws))],
            Some(BaseUrl::from_addr(server.http)),
        );
        if !r.quiet {
            eprintln!(
                "started banter serve (pid {}) on tcp {}, ws {}, http {}; data {}",
                server.pid,
                server.tcp,
                server.ws,
                server.http,
                server.data_dir.display()
            );
        }
        child = Some(server);
        urls
    };
    let transport = match t.transport {
        Some(x) => x,
        None if tcp.is_empty() && !ws.is_empty() => Transport::Ws,
        None => Transport::Tcp,
    };
    let endpoints: Vec<Endpoint> = match transport {
        Transport::Tcp => tcp.into_iter().map(Endpoint::Tcp).collect(),
        Transport::Ws => ws
            .into_iter()
            .map(|(addr, url)| Endpoint::Ws { addr, url })
            .collect(),
    };
    if endpoints.is_empty() {
        match transport {
            Transport::Tcp => bail!("--transport tcp needs --addr"),
            Transport::Ws => bail!("--transport ws needs --ws"),
        }
    }
    if !t.allow_remote {
        let mut targets: Vec<IpAddr> = endpoints.iter().map(|e| e.addr().ip()).collect();
        if let Some(h) = &http {
            if let Ok(a) = h.resolve().await {
                targets.push(a.ip());
            }
        }
        if let Some(ip) = targets.iter().find(|ip| !ip.is_loopback()) {
            bail!("target {ip} is not a loopback address; pass --allow-remote to load a remote server");
        }
    }
    let tokens = match t.tokens.as_deref() {
        Some(spec) => match spec.parse::<TokenSpec>()? {
            TokenSpec::Http(url) => TokenSource::Http {
                base: BaseUrl::parse(&url)?,
                secret: t.api_secret.clone(),
            },
            TokenSpec::Redis(url) => TokenSource::Redis { url },
        },
        None => TokenSource::Http {
            base: http
                .clone()
                .context("no token source: give --tokens redis=<url> or http=<url>, or --http")?,
            secret: t.api_secret.clone(),
        },
    };
    let mut env = Env::with_endpoints(endpoints, tokens);
    env.api = http.clone().map(|h| (h, t.api_secret.clone()));
    env.memory = if let Some(pid) = t.server_pid {
        Some(MemorySource::Pid(pid))
    } else if let Some(c) = &child {
        Some(MemorySource::Pid(c.pid))
    } else if let Some(url) = &t.summary {
        Some(MemorySource::summary_url(url, t.api_secret.clone())?)
    } else {
        http.map(|base| MemorySource::Summary {
            base,
            path: "/summary".into(),
            secret: t.api_secret.clone(),
        })
    };
    env.appid = c.appid;
    env.uid_base = c.uid_base.unwrap_or_else(random_uid_base);
    env.source_ips = match &c.source_ips {
        Some(s) => parse_source_ips(s).map_err(anyhow::Error::msg)?,
        None if env
            .endpoints
            .iter()
            .all(|e| e.addr().ip().is_loopback() && e.addr().is_ipv4()) =>
        {
            loopback_sources()
        }
        None => Vec::new(),
    };
    env.client = ClientProfile {
        platform: c.platform,
        version: c.protocol_version,
        connect_timeout: c.connect_timeout,
        ping_interval: c.ping_interval,
        client_acks: !c.no_client_acks,
        ..ClientProfile::default()
    };
    env.cpu_pids = t
        .cpu_pids
        .iter()
        .map(|s| parse_cpu_pid(s))
        .collect::<anyhow::Result<_>>()?;
    env.connect_concurrency = c.connect_concurrency.max(1);
    env.duration = r.duration;
    env.drain_timeout = r.drain_timeout;
    env.progress = !r.quiet;
    Ok(Prepared { env, child })
}

fn output(report: &Report, r: &RunArgs) -> anyhow::Result<()> {
    println!("{}", report.summary());
    if let Some(dir) = &r.report {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let svg = dir.join(format!("{}.svg", report.scenario));
        std::fs::write(&svg, crate::svg::render(report))
            .with_context(|| format!("writing {}", svg.display()))?;
        let json = dir.join(format!("{}.json", report.scenario));
        std::fs::write(&json, report.json_line() + "\n")
            .with_context(|| format!("writing {}", json.display()))?;
        println!("  report: {} and {}", svg.display(), json.display());
    }
    if r.json {
        println!("{}", report.json_line());
    }
    Ok(())
}

/// Runs one scenario to its report (no output). The child server, if any, is stopped afterwards.
pub async fn run_scenario(args: &BenchArgs) -> anyhow::Result<Report> {
    macro_rules! with_target {
        ($a:expr, |$env:ident| $body:expr) => {{
            let Prepared { env: $env, child } = prepare(&$a.target, &$a.client, &$a.run).await?;
            let result = $body.await;
            if let Some(child) = child {
                child.stop(Duration::from_secs(10)).await;
            }
            result?
        }};
    }
    let fault = |withhold: Option<u64>, duplicate: Option<u64>| {
        withhold
            .map(|n| Fault::Withhold { n })
            .or(duplicate.map(|n| Fault::Duplicate { n }))
    };
    Ok(match &args.scenario {
        ScenarioCmd::Peer(a) => {
            let o = scenario::peer::PeerOptions {
                pairs: a.pairs,
                messages: a.messages,
                rate: a.rate,
                message_size: a.message_size,
                window: a.window,
                fault: fault(a.withhold, a.duplicate),
            };
            with_target!(a, |env| scenario::peer::run(&env, &o))
        }
        ScenarioCmd::Group(a) => {
            let o = scenario::group::GroupOptions {
                groups: a.groups,
                members: a.members,
                senders: a.senders,
                messages: a.messages,
                super_group: a.super_group,
                rate: a.rate,
                message_size: a.message_size,
                window: a.window,
                group_id_base: a.group_id_base,
                fault: fault(a.withhold, None),
            };
            with_target!(a, |env| scenario::group::run(&env, &o))
        }
        ScenarioCmd::Room(a) => {
            let o = scenario::room::RoomOptions {
                rooms: a.rooms,
                members: a.members,
                senders: a.senders,
                messages: a.messages,
                rate: a.rate,
                message_size: a.message_size,
                window: a.window,
                room_id_base: a.room_id_base,
                fault: fault(None, a.duplicate),
            };
            with_target!(a, |env| scenario::room::run(&env, &o))
        }
        ScenarioCmd::Connections(a) => {
            let o = scenario::connections::ConnectionsOptions {
                connections: a.connections,
                rate: a.rate,
                hold: a.hold,
                settle: a.settle,
            };
            with_target!(a, |env| scenario::connections::run(&env, &o))
        }
        ScenarioCmd::Media(a) => {
            let o = scenario::media::MediaOptions {
                clients: a.clients,
                images: a.images,
                image_size: a.image_size,
                voices: a.voices,
                voice_size: a.voice_size,
                prefix: a.prefix.clone(),
            };
            with_target!(a, |env| scenario::media::run(&env, &o))
        }
        ScenarioCmd::Push(a) => {
            if !a.target.addr.is_empty() || !a.target.ws.is_empty() {
                bail!("bench push starts its own server (configured to push to a local APNs); do not give --addr or --ws");
            }
            let mock = push::mock::MockProvider::start().await;
            let creds = tempfile::tempdir().context("temporary directory")?;
            let (ca, apns, _) = mock.write_credentials(creds.path(), "com.example.bench");
            let mut a = a.clone();
            let apps = format!(
                "[{{appid = 7, apns = {{key_file = {:?}, key_id = {:?}, team_id = {:?}, topic = {:?}, endpoint = {:?}}}}}]",
                apns.key_file, apns.key_id, apns.team_id, apns.topic, apns.endpoint
            );
            a.target.server_env.extend([
                "BANTER_PUSH__BACKEND=native".to_string(),
                format!("BANTER_PUSH__NATIVE__CA_FILE={ca}"),
                format!("BANTER_PUSH__NATIVE__CONCURRENCY={}", a.push_concurrency),
                format!("BANTER_PUSH__NATIVE__APPS={apps}"),
            ]);
            let o = scenario::push::PushOptions {
                users: a.users,
                senders: a.senders,
                window: a.window,
            };
            with_target!(a, |env| scenario::push::run(&env, &o, &mock))
        }
        ScenarioCmd::Store(a) => {
            let o = scenario::store::StoreOptions {
                messages: a.messages,
                appenders: a.appenders,
                message_size: a.message_size,
                durability: a.durability.clone(),
                dir: a.dir.clone(),
                users: a.users,
                keep: a.keep,
            };
            scenario::store::run(&o, !a.run.quiet).await?
        }
    })
}

fn run_args(args: &BenchArgs) -> &RunArgs {
    match &args.scenario {
        ScenarioCmd::Peer(a) => &a.run,
        ScenarioCmd::Group(a) => &a.run,
        ScenarioCmd::Room(a) => &a.run,
        ScenarioCmd::Connections(a) => &a.run,
        ScenarioCmd::Store(a) => &a.run,
        ScenarioCmd::Media(a) => &a.run,
        ScenarioCmd::Push(a) => &a.run,
    }
}

/// Runs `banter bench …`: builds a runtime, runs the scenario, prints the summary (and the JSON line),
/// writes the report. Errors when the scenario could not run or failed its checks.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let r = run_args(&args).clone();
    let threads = r
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let report = rt.block_on(run_scenario(&args))?;
    output(&report, &r)?;
    if !report.ok {
        bail!(
            "bench {} failed: {}",
            report.scenario,
            report.failures.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        Bench(BenchArgs),
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn parses_source_ips() {
        let r = parse_source_ips("127.0.0.1-127.0.0.255").unwrap();
        assert_eq!(r.len(), 255);
        assert_eq!(r[0].to_string(), "127.0.0.1");
        assert_eq!(parse_source_ips("127.0.0.2,127.0.0.3").unwrap().len(), 2);
        assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_source_ips("127.0.1.1-127.0.0.1").is_err());
    }

    #[test]
    fn parses_the_command_lines() {
        let cli = Cli::try_parse_from([
            "banter",
            "bench",
            "peer",
            "--pairs",
            "3",
            "-m",
            "10",
            "--json",
            "--addr",
            "127.0.0.1:1",
            "--tokens",
            "http=http://127.0.0.1:2",
            "--rate",
            "1000",
        ])
        .unwrap();
        let Top::Bench(b) = cli.cmd;
        match b.scenario {
            ScenarioCmd::Peer(p) => {
                assert_eq!(p.pairs, 3);
                assert_eq!(p.messages, 10);
                assert!(p.run.json);
                assert_eq!(p.rate, Some(1000.0));
                assert_eq!(p.target.addr, ["127.0.0.1:1"]);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "banter",
            "bench",
            "connections",
            "-n",
            "19000",
            "--hold",
            "1m",
            "--report",
            "/tmp/x",
        ])
        .unwrap();
        let Top::Bench(b) = cli.cmd;
        match b.scenario {
            ScenarioCmd::Connections(c) => {
                assert_eq!(c.connections, 19000);
                assert_eq!(c.hold, Duration::from_secs(60));
                assert_eq!(c.run.report, Some(PathBuf::from("/tmp/x")));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["banter", "bench", "group", "--super", "--members", "10"]).is_ok()
        );
        assert!(Cli::try_parse_from(["banter", "bench", "store", "--messages", "10"]).is_ok());
        assert!(Cli::try_parse_from(["banter", "bench", "room", "--bogus"]).is_err());
    }

    #[test]
    fn addr_is_repeatable_and_takes_lists() {
        let peer = |args: &[&str]| {
            let mut all = vec!["banter", "bench", "peer"];
            all.extend_from_slice(args);
            let Top::Bench(b) = Cli::try_parse_from(all).unwrap().cmd;
            match b.scenario {
                ScenarioCmd::Peer(p) => p,
                other => panic!("{other:?}"),
            }
        };
        let want = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let p = peer(&[
            "--addr",
            "127.0.0.1:1",
            "--addr",
            "127.0.0.1:2",
            "--addr",
            "127.0.0.1:3",
        ]);
        assert_eq!(p.target.addr, want);
        let p = peer(&["--addr", "127.0.0.1:1,127.0.0.1:2", "--addr", "127.0.0.1:3"]);
        assert_eq!(p.target.addr, want);
        let p = peer(&["--addrs", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"]);
        assert_eq!(p.target.addr, want);
        let p = peer(&["--cpu-pid", "im1=10", "--cpu-pid", "ims1=11"]);
        assert_eq!(p.target.cpu_pids, ["im1=10", "ims1=11"]);
        assert!(peer(&[]).target.addr.is_empty());
        assert_eq!(parse_cpu_pid("im1=10").unwrap(), ("im1".to_string(), 10));
        assert!(parse_cpu_pid("im1").is_err());
        assert!(parse_cpu_pid("im1=x").is_err());
    }

    fn target(addr: &[&str]) -> TargetArgs {
        TargetArgs {
            addr: addr.iter().map(|a| a.to_string()).collect(),
            ws: vec![],
            http: None,
            transport: None,
            tokens: Some("redis=redis://127.0.0.1:1".into()),
            api_secret: None,
            server_bin: None,
            server_env: vec![],
            durability: "always".into(),
            keep_server_data: false,
            server_pid: None,
            summary: None,
            allow_remote: false,
            cpu_pids: vec!["im1=1".into()],
        }
    }

    fn client_args() -> ClientArgs {
        ClientArgs {
            appid: 7,
            uid_base: None,
            protocol_version: 2,
            platform: 2,
            ping_interval: Duration::from_secs(20),
            no_client_acks: false,
            source_ips: None,
            connect_timeout: Duration::from_secs(1),
            connect_concurrency: 1,
        }
    }

    fn run_args() -> RunArgs {
        RunArgs {
            json: false,
            report: None,
            quiet: true,
            duration: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            threads: None,
        }
    }

    #[tokio::test]
    async fn several_addresses_make_several_endpoints() {
        let p = prepare(
            &target(&["127.0.0.1:23001", "127.0.0.2:23002"]),
            &client_args(),
            &run_args(),
        )
        .await
        .unwrap();
        assert!(p.child.is_none());
        let addrs: Vec<String> = p
            .env
            .endpoints
            .iter()
            .map(|e| e.addr().to_string())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:23001", "127.0.0.2:23002"]);
        assert_eq!(p.env.cpu_pids, [("im1".to_string(), 1)]);
        assert_eq!(
            p.env.source_ips.len(),
            255,
            "loopback targets: loopback sources"
        );
        // A remote node among loopback ones is refused too.
        let e = prepare(
            &target(&["127.0.0.1:23001", "192.0.2.1:23000"]),
            &client_args(),
            &run_args(),
        )
        .await
        .err()
        .unwrap();
        assert!(e.to_string().contains("not a loopback"), "{e}");
    }

    #[test]
    fn parses_ws_urls() {
        let (addr, url) = parse_ws_url("ws://127.0.0.1:13891/ws").unwrap();
        assert_eq!(addr.port(), 13891);
        assert_eq!(url, "ws://127.0.0.1:13891/ws");
        assert!(parse_ws_url("wss://127.0.0.1:1/ws").is_err());
    }

    #[tokio::test]
    async fn refuses_remote_targets() {
        let mut t = target(&["192.0.2.1:23000"]);
        t.tokens = Some("http=http://127.0.0.1:1".into());
        t.cpu_pids.clear();
        let e = prepare(&t, &client_args(), &run_args())
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a loopback"), "{e}");
    }
}
