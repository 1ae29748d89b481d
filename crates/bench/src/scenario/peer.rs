//! `peer`: P sender/receiver pairs, M messages per pair (MSG_IM), optionally at a target rate.
//!
//! Pair `i` is sender `uid_base + 2i` and receiver `uid_base + 2i + 1`. The receiver takes messages the way
//! an SDK does (METADATA fast path, otherwise SYNC after SYNC_NOTIFY) and checks that every one of its
//! sender's messages arrived exactly once and in order; once it has all of them it does a final SYNC that
//! must return nothing. Throughput is distinct messages received per second of the measured interval (from
//! the start to the last arrival); latency is from the moment the sender queued a message to the moment
//! the receiver accepted it. Any lost, duplicated or reordered message fails the run.
//!
//! Against several access nodes (a cluster), pair `i`'s sender connects to node `i mod N` and its
//! receiver to node `(i + 1) mod N` ([`peer_nodes`]): every message crosses the router, and every node
//! sends and receives the same share.

use serde::Serialize;

use super::{connect_all, run_members, BenchError, ConnSpec, Fault, Role, SendPlan, Verify};
use crate::accounting::Book;
use crate::client::Kind;
use crate::env::{peer_nodes, Env};
use crate::report::Report;

/// Parameters of the `peer` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct PeerOptions {
    pub pairs: usize,
    /// Messages per pair.
    pub messages: u64,
    /// Target total send rate (messages per second over all senders); `None` = as fast as the window allows.
    pub rate: Option<f64>,
    /// Content bytes per message.
    pub message_size: usize,
    /// Most un-ACKed messages per sender.
    pub window: usize,
    #[serde(skip)]
    pub fault: Option<Fault>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            pairs: 100,
            messages: 5_000,
            rate: None,
            message_size: 128,
            window: 64,
            fault: None,
        }
    }
}

/// Runs the scenario.
pub async fn run(env: &Env, o: &PeerOptions) -> Result<Report, BenchError> {
    if o.pairs == 0 {
        return Err(BenchError::Setup("--pairs must be at least 1".into()));
    }
    let mut params = serde_json::to_value(o).unwrap_or_default();
    if let (Some(f), Some(obj)) = (o.fault, params.as_object_mut()) {
        obj.insert("fault".into(), serde_json::Value::String(format!("{f:?}")));
    }
    let nodes = env.endpoints.len();
    if let (true, Some(obj)) = (nodes > 1, params.as_object_mut()) {
        obj.insert("access_nodes".into(), serde_json::Value::from(nodes));
    }
    let mut report = Report::new("peer", params, env.transport());
    if nodes > 1 {
        let addrs: Vec<String> = env.endpoints.iter().map(|e| e.addr().to_string()).collect();
        report.notes.push(format!(
            "{nodes} access nodes ({}): pair i sends on node i mod {nodes} and receives on node (i + 1) mod {nodes}; every message crosses nodes",
            addrs.join(", ")
        ));
    }
    let uids: Vec<i64> = (0..2 * o.pairs as i64).map(|i| env.uid_base + i).collect();
    let tokens = env.tokens.issue(env.appid, &uids).await?;
    let specs = uids
        .iter()
        .zip(tokens)
        .enumerate()
        .map(|(i, (&uid, token))| {
            let (sender_node, receiver_node) = peer_nodes(i / 2, nodes);
            ConnSpec {
                uid,
                token,
                super_groups: Vec::new(),
                node: Some(if i % 2 == 0 {
                    sender_node
                } else {
                    receiver_node
                }),
            }
        })
        .collect();
    let clients = connect_all(env, specs).await?;
    let per_sender_rate = o.rate.map(|r| (r / o.pairs as f64).max(1e-3));
    let mut members = Vec::with_capacity(clients.len());
    for (i, c) in clients.into_iter().enumerate() {
        let pair = i / 2;
        let sender = env.uid_base + 2 * pair as i64;
        let role = if i % 2 == 0 {
            Role {
                send: Some(SendPlan {
                    kind: Kind::Peer,
                    to: sender + 1,
                    count: o.messages,
                    rate: per_sender_rate,
                    window: o.window.max(1),
                    size: o.message_size,
                    fault: if pair == 0 { o.fault } else { None },
                }),
                book: None,
                accept_cmd: proto::cmd::IM,
                verify: Verify::None,
            }
        } else {
            Role {
                send: None,
                book: Some(Book::new(&[sender], o.messages)),
                accept_cmd: proto::cmd::IM,
                verify: Verify::Personal,
            }
        };
        members.push((c, role));
    }
    let expected = o.pairs as u64 * o.messages;
    run_members(env, &mut report, members, expected, expected, true).await;
    Ok(report)
}
