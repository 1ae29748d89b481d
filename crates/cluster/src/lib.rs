//! Internal links between banter nodes.

pub mod frame_io;
pub mod log_limit;
pub mod notify_backlog;
pub mod route_link;
pub mod route_proto;
pub mod store_client;
pub mod store_commit;
pub mod store_node;
pub mod store_proto;
pub mod store_replication;
pub mod store_server;
