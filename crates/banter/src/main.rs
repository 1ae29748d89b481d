//! The `banter` command line: `serve`, `config`, `store`, `bench`. Parses arguments, sets up logging and
//! hands over to the library; nothing else happens here.

use std::path::PathBuf;
use std::process::ExitCode;

use banter::config::{load_role_config, Config, DEFAULT_TOML};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "banter",
    version,
    about = "A fast, durable IM server that GoBelieve clients use unchanged"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node server (TCP, WebSocket, HTTP API) on the embedded default or a config file.
    Serve {
        /// Configuration file (TOML); without it the documented defaults (`banter config`) apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory (overrides `data.dir`).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// An access node of a cluster (the same program as `serve`, with `[cluster]` addresses set).
    /// SIGHUP re-reads the config file and applies new router and store addresses.
    Im {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// A router: presence of users and rooms per access node, cross-node delivery, offline push.
    Imr {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A store node (message store over the network, with optional replication), or `promote`.
    Ims {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<ImsCommand>,
    },
    /// Print the full documented default configuration of a role.
    Config {
        /// serve (default), im, imr or ims.
        #[arg(long, default_value = "serve")]
        role: String,
    },
    /// Measure a server like real SDK clients would (starts one when no --addr is given).
    Bench(Box<bench::cli::BenchArgs>),
    /// Inspect or repair the message store of a stopped server.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
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
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        #[arg(long, default_value_t = 1_000)]
        users: i64,
        /// Groups (every other one a super group).
        #[arg(long, default_value_t = 10)]
        groups: i64,
        #[arg(long, default_value_t = 7)]
        appid: i64,
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

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn serve(path: Option<PathBuf>, data: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::load(path.as_deref()).map_err(anyhow::Error::msg)?;
    if let Some(d) = data {
        config.data.dir = d;
    }
    banter::logging::init(
        &config.log.level,
        &config.log.format,
        &config.cluster.node_id,
    );
    runtime()?.block_on(banter::serve::run(config, path))?;
    Ok(())
}

fn imr(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config: route::RouterConfig =
        load_role_config(path.as_deref()).map_err(anyhow::Error::msg)?;
    banter::logging::init("info", "text", &config.node_id);
    runtime()?.block_on(banter::roles::run_router(config))
}

fn ims(path: Option<PathBuf>, command: Option<ImsCommand>) -> anyhow::Result<()> {
    match command {
        Some(ImsCommand::Promote { http, secret }) => {
            let secret = match secret {
                Some(s) => Some(s),
                None if path.is_some() => {
                    let config: ims::service::StoreNodeConfig =
                        load_role_config(path.as_deref()).map_err(anyhow::Error::msg)?;
                    Some(config.http_secret)
                }
                None => None,
            };
            let answer = runtime()?.block_on(banter::roles::promote(&http, secret.as_deref()))?;
            println!("{answer}");
            Ok(())
        }
        None => {
            let config: ims::service::StoreNodeConfig =
                load_role_config(path.as_deref()).map_err(anyhow::Error::msg)?;
            banter::logging::init("info", "text", &config.node_id);
            runtime()?.block_on(banter::roles::run_store_node(config))
        }
    }
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, data } => serve(config, data),
        Command::Config { role } => print_config(&role),
        Command::Im { config, data } => serve(config, data),
        Command::Imr { config } => imr(config),
        Command::Ims { config, command } => ims(config, command),
        Command::Store { command } => store_command(command),
        Command::Bench(args) => bench::cli::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
