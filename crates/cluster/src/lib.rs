//! The links between banter nodes, on the common 12-byte frame:
//!
//! * the store link, access node → store node: `store_proto` (layouts), `store_client` (pipelined
//!   requests over a small pool, timeouts, `RemoteStore` sharding queues over the store list);
//! * the route link, access node → router: `route_proto` (bodies), `route_link` (per-router links
//!   with bounded queues, reconnect and full re-subscription, reference-counted presence),
//!   `remote_presence` (what a link knows of the router's other connections, so publishes nobody
//!   else can receive are skipped, and the notifications owed for them);
//! * `notify_backlog`: sync notifications owed for persistent route messages dropped on a full
//!   queue (access nodes and routers).
//!
//! The store node's side of the store link and replication live in the `ims` crate.

pub mod notify_backlog;
pub mod remote_presence;
pub mod route_link;
pub mod route_proto;
pub mod store_client;
pub mod store_proto;
