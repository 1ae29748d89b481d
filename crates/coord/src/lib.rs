//! Cluster coordination on etcd (docs/cluster.md, *etcd*): membership, discovery and store shard
//! leadership for `banter im`, `banter imr` and `banter ims` when `etcd` endpoints are configured.
//!
//! * `etcd`: the client, over etcd's JSON gateway (no `protoc`, no generated code).
//! * `lease`: a lease renewed in the background, with a local validity deadline for fencing.
//! * `follow`: the keys under a prefix, kept current by a watch.
//! * `members`: the key layout, the records each role publishes, and their registration.
#![forbid(unsafe_code)]

pub mod etcd;
pub mod follow;
pub mod lease;
pub mod members;

pub use etcd::{Etcd, EtcdError, Event, KeyValue};
pub use follow::{follow_prefix, Snapshot};
pub use lease::{KeptLease, LeaseValidity};
pub use members::{AccessRecord, Layout, LeaderRecord, Registration, RouterRecord, StoreRecord};
