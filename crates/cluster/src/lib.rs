//! Internal links between banter nodes.

pub mod route_link;
pub mod route_proto;
