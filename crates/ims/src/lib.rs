//! The store node (`banter ims`, GoBelieve's `ims`): one message store served to access nodes over
//! the store link, streamed to followers, promoted over HTTP.
//!
//! * `service`: configuration, startup and shutdown, the HTTP API (`/healthz`, `/metrics`, `/summary`,
//!   `POST /promote` behind `node::admin`'s bearer and loopback rules).
//! * `server`: the store link's server side (requests of `cluster::store_proto`, pipelined per
//!   connection, bounded in-flight work).
//! * `replication`: the leader's hub streaming the log to followers, and the follower loop.
//! * `state`: what the node's tasks share (store, replication, the follow loop, promotion).
//! * `fence`: whether appends may be acknowledged (etcd mode: the leadership lease).
//! * `election`: etcd mode — registration, the shard's leader election, the fencing of a
//!   deposed leader, re-seeding a diverged log.
//! * `commit`: `sync` replication's commit index (what readers may see) and the withdrawal of
//!   appends no follower confirmed in time.
//!
//! The access side of the store link (client, pool, sharding) is `cluster::store_client`.
#![forbid(unsafe_code)]

pub mod commit;
pub mod election;
pub mod fence;
pub mod replication;
pub mod server;
pub mod service;
pub(crate) mod state;

pub use service::{default_toml, run, RunningStoreNode, StoreNodeConfig, StoreNodeError};
