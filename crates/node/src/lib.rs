//! Plumbing every node role (access, router, store node) shares, so each is written once:
//!
//! * [`net`]: the accept loop and socket options;
//! * [`frame`]: the framed codec of the node links and their coalescing writer;
//! * [`backoff`]: reconnect back-off with jitter;
//! * [`admin`]: bearer authentication and the loopback rule of the HTTP admin APIs;
//! * [`http_client`]: the one HTTP client;
//! * [`recent`]: the bounded in-memory ring of recent WARN and ERROR events (the admin console's view);
//! * [`log`]: the `[log]` section of every role's configuration;
//! * [`runtime`]: the `[runtime]` section of every role's configuration (worker threads);
//! * [`metrics`]: the Prometheus registry of a process, and the store's figures on it;
//! * [`throttle`] (`warn_throttled!`, `error_throttled!`) and [`episode`]: logging of failures that
//!   repeat per request, at most one line per interval or per failure episode.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backoff;
pub mod episode;
pub mod frame;
pub mod http_client;
pub mod log;
pub mod metrics;
pub mod net;
pub mod recent;
pub mod runtime;
pub mod throttle;

pub use reqwest;
