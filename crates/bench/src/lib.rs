//! `banter bench`: a load generator whose clients behave like real GoBelieve SDK clients, and the
//! library behind it (usable by tests).
//!
//! * [`client`]: one SDK-like connection over TCP or WebSocket (auth, sync-key state machine, METADATA fast
//!   path, SYNC_KEY reports, ACKs, PING), cheap enough to load a server from the same two cores.
//! * [`scenario`]: `peer`, `group`, `room`, `connections` and `store`, each returning a [`report::Report`].
//! * [`accounting`]: the exactly-once / in-order checker; [`content`]: the numbered, timestamped payload.
//! * [`env`]: the target and client profile of a run; [`server`]: a `banter serve` child process and server
//!   memory readings; [`tokens`]: login tokens over banter's HTTP API or GoBelieve's Redis keys;
//!   [`api`]: their calls to the HTTP API (the project's one HTTP client, `node::http_client`).
//! * [`report`] and [`svg`]: the human summary, the one-line JSON and the SVG plot.
//! * [`cli`]: the `banter bench` command line ([`cli::BenchArgs`], [`cli::run`]).
#![forbid(unsafe_code)]

pub mod accounting;
pub mod api;
pub mod cli;
pub mod client;
pub mod content;
pub mod env;
pub mod report;
pub mod scenario;
pub mod server;
pub mod svg;
pub mod tokens;

pub use client::{Client, ClientError, ConnectOptions, Endpoint, Event, Message, Via};
pub use env::Env;
pub use report::Report;
pub use scenario::BenchError;
