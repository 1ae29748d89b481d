//! The `banter` command line: `serve`, `im`, `imr`, `ims`, `config`, `version`, `completions`, `man`,
//! `store`, `bench`. Parses arguments, sets up logging and hands over to the library; nothing else
//! happens here. Errors are printed once per cause.

mod allocator;

use std::path::PathBuf;
use std::process::ExitCode;

use banter::config::{load_role_config, Config, DEFAULT_TOML};
use banter::load::Override;
use banter::logging::LogFormat;
use clap::{Args, CommandFactory, Parser, Subcommand};
use ims::service::StoreNodeConfig;

/// `banter --version`: the version, the git commit and the build date.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ", built ",
    env!("BUILD_DATE_UTC"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "banter",
    version = LONG_VERSION,
    about = "A fast, durable IM server that GoBelieve clients use unchanged"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Log options every server role takes.
#[derive(Args, Clone, Default)]
struct LogArgs {
    /// Log level or filter directives, e.g. `info`, `debug` or `info,access=debug` (overrides
    /// `log.level`; RUST_LOG, when set, wins over both).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log line format (overrides `log.format`).
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

impl LogArgs {
    /// The options given, as overrides of the `[log]` section.
    fn overrides(&self) -> Vec<Override> {
        [
            ("log.level", "--log-level", self.log_level.clone()),
            (
                "log.format",
                "--log-format",
                self.log_format.map(|f| f.name().to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(key, flag, v)| v.map(|v| Override::string(key, flag, v)))
        .collect()
    }
}

/// Options of `serve` and `im`: the configuration, the data directory and the listeners.
#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Configuration file (TOML); without it the documented defaults (`banter config`) apply.
    /// BANTER_<SECTION>__<KEY> environment variables override the file, options override both.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory for the message store and the embedded databases (overrides `data.dir`).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Plain TCP listener for SDK clients, HOST:PORT (overrides `server.tcp`; "" disables it).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<String>,
    /// WebSocket listener; clients connect to ws://ADDR/ws (overrides `server.ws`; "" disables it).
    #[arg(long, value_name = "ADDR")]
    ws: Option<String>,
    /// HTTP API listener (overrides `api.listen`; "" disables it).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Raw TLS listener for SDK clients (overrides `server.tls`; needs --cert and --key).
    #[arg(long, value_name = "ADDR")]
    tls: Option<String>,
    /// WebSocket-over-TLS listener, wss://ADDR/ws (overrides `server.wss`; needs --cert and --key).
    #[arg(long, value_name = "ADDR")]
    wss: Option<String>,
    /// PEM certificate chain for --tls and --wss (overrides `server.cert_file`).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM private key for --tls and --wss (overrides `server.key_file`).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    #[command(flatten)]
    log: LogArgs,
}

impl ServeArgs {
    /// The options given, as configuration overrides.
    fn overrides(&self) -> Vec<Override> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("data.dir", "--data", path(&self.data)),
            ("server.tcp", "--tcp", self.tcp.clone()),
            ("server.ws", "--ws", self.ws.clone()),
            ("api.listen", "--http", self.http.clone()),
            ("server.tls", "--tls", self.tls.clone()),
            ("server.wss", "--wss", self.wss.clone()),
            ("server.cert_file", "--cert", path(&self.cert)),
            ("server.key_file", "--key", path(&self.key)),
        ]
        .into_iter()
        .filter_map(|(key, flag, v)| v.map(|v| Override::string(key, flag, v)))
        .chain(self.log.overrides())
        .collect()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node server (TCP, WebSocket, HTTP API) on the embedded default or a config file.
    Serve(Box<ServeArgs>),
    /// An access node of a cluster (the same program as `serve`, with `[cluster]` addresses set).
    /// SIGHUP re-reads the config file and applies new router and store addresses.
    Im(Box<ServeArgs>),
    /// A router: presence of users and rooms per access node, cross-node delivery, offline push.
    Imr {
        /// Configuration file (TOML, `banter config --role imr`); BANTER_<KEY> variables override it.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// A store node (message store over the network, with optional replication), or `promote`.
    Ims {
        /// Configuration file (TOML, `banter config --role ims`); BANTER_<KEY> variables override it.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        log: LogArgs,
        #[command(subcommand)]
        command: Option<ImsCommand>,
    },
    /// Print the full documented default configuration of a role.
    Config {
        /// The role whose configuration to print.
        #[arg(long, default_value = "serve", value_parser = ["serve", "im", "imr", "ims"])]
        role: String,
    },
    /// Print the version, the git commit and the build date.
    Version,
    /// Print a shell completion script, e.g. `banter completions bash > /etc/bash_completion.d/banter`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `banter man > banter.1; man ./banter.1`.
    Man,
    /// Measure a server like real SDK clients would (starts one when no --addr is given).
    Bench(Box<bench::cli::BenchArgs>),
    /// Inspect or repair the message store of a stopped server.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// A cluster coordinated through etcd (docs/cluster.md, "etcd").
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print every registered node, each store shard's leader and epoch, and every store node's
    /// log end and lag.
    Status {
        /// etcd endpoint(s), e.g. http://127.0.0.1:2379 (repeat or separate with commas).
        #[arg(long, required = true, value_delimiter = ',')]
        etcd: Vec<String>,
        /// The cluster's key prefix (`etcd_prefix`).
        #[arg(long, default_value = "/banter")]
        prefix: String,
    },
}

#[derive(Subcommand)]
enum ImsCommand {
    /// Make a follower store node the leader (after its leader was lost).
    Promote {
        /// The follower's HTTP API, e.g. http://127.0.0.1:13335
        #[arg(long)]
        http: String,
        /// The node's `http_secret`, sent as `Authorization: Bearer <secret>`. Default: the
        /// environment variable, else `http_secret` of the file given with `banter ims --config`.
        #[arg(long, env = "BANTER_IMS_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Verify every record, segment and checkpoint; report problems with file and offset.
    Check {
        /// Data directory of the server (or the store directory itself).
        #[arg(long, default_value = "./banter-data")]
        data: PathBuf,
    },
    /// Truncate the log at the first bad record, after showing what would be removed and asking.
    Repair {
        /// Data directory of the server (or the store directory itself).
        #[arg(long, default_value = "./banter-data")]
        data: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Import a GoBelieve deployment: the messages of an ims data directory (its `storage_root`),
    /// optionally its MySQL groups and its Redis tokens and user state (docs/migration.md).
    /// Resumable and idempotent: run it again to continue or to pick up what is new.
    ImportGobelieve {
        /// The GoBelieve ims `storage_root` (with message_0, message_1, …). Stop GoBelieve's ims
        /// first, or run again after stopping it to import what it wrote meanwhile.
        #[arg(long)]
        from: PathBuf,
        /// banter's data directory (the store goes to DIR/store); use a new one.
        #[arg(long, default_value = "./banter-data")]
        data: PathBuf,
        /// GoBelieve's MySQL (e.g. mysql://user:pass@host/gobelieve): its groups and members go to
        /// the embedded group directory (DIR/groups.db). Leave out when banter will use that
        /// MySQL itself (`[groups] mode = "mysql"`).
        #[arg(long)]
        mysql: Option<String>,
        /// GoBelieve's Redis (e.g. redis://host:6379): tokens, user flags, sync-key hints and
        /// device ids go to the embedded backend (DIR/banter.db). Leave out when banter will use
        /// that Redis itself (`[backend] mode = "redis"`).
        #[arg(long)]
        redis: Option<String>,
        /// Redis database number.
        #[arg(long, default_value_t = 0)]
        redis_db: i64,
        /// Messages per store write.
        #[arg(long, default_value_t = 4096)]
        batch: usize,
    },
    /// Write a GoBelieve ims data directory of generated messages (tests, benchmarks, rehearsals
    /// of a migration), plus groups.sql with the MySQL rows of its groups.
    GenGobelieve {
        /// Directory to write (must not hold block files yet).
        #[arg(long)]
        out: PathBuf,
        /// Messages to generate (peer, group and super-group messages mixed).
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        /// Users the messages are between (uids 1 ..= users).
        #[arg(long, default_value_t = 1_000)]
        users: i64,
        /// Groups (every other one a super group).
        #[arg(long, default_value_t = 10)]
        groups: i64,
        /// The app id of every user and group.
        #[arg(long, default_value_t = 7)]
        appid: i64,
        /// Seed of the generator: the same seed writes the same files.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Roll block files over at this many bytes (GoBelieve: 134217728).
        #[arg(long, default_value_t = 134_217_728)]
        block_bytes: u64,
    },
}

/// The store directory inside a data directory (or the directory itself if it is a store).
fn store_dir(data: PathBuf) -> PathBuf {
    let inner = data.join("store");
    if inner.is_dir() {
        inner
    } else {
        data
    }
}

fn store_command(cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Check { data } => {
            let report = store::tools::check(store_dir(data))?;
            println!("{report}");
            if report.is_clean() {
                Ok(())
            } else {
                anyhow::bail!(
                    "the store has problems (see above); `banter store repair` can fix them"
                )
            }
        }
        StoreCommand::Repair { data, yes } => {
            let dir = store_dir(data);
            let plan = store::tools::repair_plan(&dir)?;
            println!("{plan}");
            if !plan.changed() {
                return Ok(());
            }
            if !yes {
                use std::io::Write;
                print!("Apply this repair? Removed data cannot be recovered. [y/N] ");
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    anyhow::bail!("repair cancelled; nothing was changed");
                }
            }
            let done = store::tools::repair(&dir)?;
            println!("{done}");
            Ok(())
        }
        StoreCommand::ImportGobelieve {
            from,
            data,
            mysql,
            redis,
            redis_db,
            batch,
        } => {
            banter::migrate::import_gobelieve(banter::migrate::ImportArgs {
                from,
                data,
                mysql,
                redis,
                redis_db,
                batch,
                quiet: false,
            })?;
            Ok(())
        }
        StoreCommand::GenGobelieve {
            out,
            messages,
            users,
            groups,
            appid,
            seed,
            block_bytes,
        } => banter::migrate::gen_gobelieve(
            &out,
            &store::gobelieve::gen::GenOptions {
                appid,
                messages,
                users,
                groups,
                seed,
                block_limit: block_bytes,
                legacy_records: true,
                keep_truth: false,
            },
        ),
    }
}

/// A server role's runtime, as its `[runtime]` section says; its size is logged.
fn role_runtime(
    settings: &node::runtime::RuntimeSettings,
) -> std::io::Result<tokio::runtime::Runtime> {
    let rt = settings.build()?;
    tracing::info!(
        worker_threads = rt.metrics().num_workers(),
        "runtime started"
    );
    Ok(rt)
}

/// The runtime of a command that is not a server role (tools, the benchmark client).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    node::runtime::RuntimeSettings::default().build()
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = args.overrides();
    let loaded = Config::load(args.config.as_deref(), &overrides)?;
    banter::serve::preflight_loaded(&loaded)?;
    let config = loaded.value;
    init_logging(&config.log, &config.cluster.node_id)?;
    allocator::start();
    role_runtime(&config.runtime)?.block_on(banter::serve::run(config, args.config, overrides))?;
    Ok(())
}

/// Installs logging as a role's `[log]` section says (with the command line's overrides applied).
fn init_logging(log: &node::log::LogSettings, node_id: &str) -> anyhow::Result<()> {
    banter::logging::init(&log.level, log.format, node_id).map_err(anyhow::Error::msg)
}

fn imr(path: Option<PathBuf>, log: LogArgs) -> anyhow::Result<()> {
    let config: route::RouterConfig = load_role_config(
        path.as_deref(),
        &log.overrides(),
        |c: &route::RouterConfig| {
            let mut problems = banter::logging::problems(&c.log);
            problems.extend(c.runtime.problems());
            problems
        },
    )?;
    init_logging(&config.log, &config.node_id)?;
    allocator::start();
    role_runtime(&config.runtime)?.block_on(banter::roles::run_router(config))
}

fn ims(path: Option<PathBuf>, log: LogArgs, command: Option<ImsCommand>) -> anyhow::Result<()> {
    match command {
        Some(ImsCommand::Promote { http, secret }) => {
            let secret = match secret {
                Some(s) => Some(s),
                None if path.is_some() => {
                    let config: StoreNodeConfig =
                        load_role_config(path.as_deref(), &[], |_: &StoreNodeConfig| Vec::new())?;
                    Some(config.http_secret)
                }
                None => None,
            };
            let answer = runtime()?.block_on(banter::roles::promote(&http, secret.as_deref()))?;
            println!("{answer}");
            Ok(())
        }
        None => {
            let config: StoreNodeConfig =
                load_role_config(path.as_deref(), &log.overrides(), |c: &StoreNodeConfig| {
                    let mut problems = banter::logging::problems(&c.log);
                    problems.extend(c.runtime.problems());
                    problems
                })?;
            init_logging(&config.log, &config.node_id)?;
            allocator::start();
            role_runtime(&config.runtime)?.block_on(banter::roles::run_store_node(config))
        }
    }
}

fn cluster_status(etcd: &[String], prefix: &str) -> anyhow::Result<()> {
    let text = runtime()?.block_on(banter::discovery::status(etcd, prefix))?;
    print!("{text}");
    Ok(())
}

fn print_config(role: &str) -> anyhow::Result<()> {
    match role {
        "serve" | "im" => print!("{DEFAULT_TOML}"),
        "imr" => print!("{}", route::default_toml()),
        "ims" => print!("{}", ims::service::default_toml()),
        other => anyhow::bail!("unknown role {other:?}: use serve, im, imr or ims"),
    }
    Ok(())
}

/// An error and its causes on one line, each cause once: a cause whose text its parent already
/// shows ("…: Permission denied (os error 13)") is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    node::metrics::set_build_info(env!("CARGO_PKG_VERSION"), env!("BUILD_GIT_COMMIT"));
    let result = match cli.command {
        Command::Serve(args) | Command::Im(args) => serve(*args),
        Command::Config { role } => print_config(&role),
        Command::Version => {
            println!("banter {LONG_VERSION}");
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "banter", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
        Command::Imr { config, log } => imr(config, log),
        Command::Ims {
            config,
            log,
            command,
        } => ims(config, log, command),
        Command::Store { command } => store_command(command),
        Command::Cluster {
            command: ClusterCommand::Status { etcd, prefix },
        } => cluster_status(&etcd, &prefix),
        Command::Bench(args) => bench::cli::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banter: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option and argument of every subcommand has a description in `--help`.
    #[test]
    fn every_option_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (subcommand)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "banter", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:?}");
    }

    #[test]
    fn report_prints_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(13);
        let e =
            anyhow::Error::new(io).context("data directory /x: Permission denied (os error 13)");
        assert_eq!(
            report(&e),
            "data directory /x: Permission denied (os error 13)"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(report(&e), "outer: inner");
    }
}
