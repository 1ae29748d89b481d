//! `room`: fan-out through chat rooms (MSG_ROOM_IM), which persist nothing (docs/protocol.md §9.4).
//!
//! R rooms of K members; member `i` of room `r` is uid `uid_base + r·K + i` and enters room
//! `room_base + r` (ENTER_ROOM, confirmed by a PING/PONG round trip before the run starts). The first S
//! members of each room send M messages each. Deliveries arrive with flag 0 and no sync key; rooms promise
//! no delivery to a member that cannot keep up, so lost deliveries are counted and reported but do not fail
//! the run. Duplicates (and messages never sent) do. With the server's API known, the server's own count
//! of what members lost (by cause) and of members disconnected for lagging is read from `/metrics` before
//! and after the run and reported beside the clients' count.

use serde::Serialize;

use super::{
    connect_all, round_trip, run_members, BenchError, ConnSpec, Fault, Role, SendPlan, Verify,
};
use crate::accounting::Book;
use crate::client::Kind;
use crate::env::Env;
use crate::report::Report;

/// Parameters of the `room` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RoomOptions {
    pub rooms: usize,
    /// Members per room.
    pub members: usize,
    /// Senders per room (the first members).
    pub senders: usize,
    /// Messages per sender.
    pub messages: u64,
    pub rate: Option<f64>,
    pub message_size: usize,
    pub window: usize,
    /// First room id; `None` derives one from the uid base.
    pub room_id_base: Option<i64>,
    #[serde(skip)]
    pub fault: Option<Fault>,
}

impl Default for RoomOptions {
    fn default() -> Self {
        RoomOptions {
            rooms: 1,
            members: 100,
            senders: 5,
            messages: 1_000,
            rate: None,
            message_size: 128,
            window: 64,
            room_id_base: None,
            fault: None,
        }
    }
}

/// Runs the scenario.
pub async fn run(env: &Env, o: &RoomOptions) -> Result<Report, BenchError> {
    if o.rooms == 0 || o.members < 2 || o.senders == 0 || o.senders > o.members {
        return Err(BenchError::Setup(
            "need --rooms ≥ 1, --members ≥ 2 and 1 ≤ --senders ≤ --members".into(),
        ));
    }
    let mut report = Report::new(
        "room",
        serde_json::to_value(o).unwrap_or_default(),
        env.transport(),
    );
    let room_base = o.room_id_base.unwrap_or(env.uid_base);
    let k = o.members as i64;
    let uids: Vec<i64> = (0..o.rooms as i64 * k).map(|i| env.uid_base + i).collect();
    let tokens = env.tokens.issue(env.appid, &uids).await?;
    let specs = uids
        .iter()
        .zip(tokens)
        .map(|(&uid, token)| ConnSpec {
            uid,
            token,
            super_groups: Vec::new(),
            node: None,
        })
        .collect();
    let mut clients = connect_all(env, specs).await?;
    // Enter the rooms; the PONG proves the server has processed ENTER_ROOM.
    let mut entered = tokio::task::JoinSet::new();
    for (i, mut c) in clients.drain(..).enumerate() {
        let room = room_base + (i / o.members) as i64;
        let bound = env.client.connect_timeout;
        entered.spawn(async move {
            c.enter_room(room);
            let r = round_trip(&mut c, bound).await;
            (i, c, r)
        });
    }
    let mut slots: Vec<Option<_>> = (0..uids.len()).map(|_| None).collect();
    let mut failed = 0;
    let mut first = None;
    while let Some(j) = entered.join_next().await {
        match j {
            Ok((i, c, Ok(()))) => slots[i] = Some(c),
            Ok((_, _, Err(e))) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if failed > 0 {
        return Err(BenchError::Connect {
            failed,
            total: uids.len(),
            first: first.unwrap_or_default(),
        });
    }
    let total_senders = o.rooms * o.senders;
    let per_sender_rate = o.rate.map(|r| (r / total_senders as f64).max(1e-3));
    let mut members = Vec::with_capacity(slots.len());
    for (i, c) in slots.into_iter().flatten().enumerate() {
        let r = (i / o.members) as i64;
        let idx = i % o.members;
        let room = room_base + r;
        let senders: Vec<i64> = (0..o.senders as i64)
            .map(|s| env.uid_base + r * k + s)
            .filter(|&s| s != c.uid())
            .collect();
        let send = (idx < o.senders).then(|| SendPlan {
            kind: Kind::Room,
            to: room,
            count: o.messages,
            rate: per_sender_rate,
            window: o.window.max(1),
            size: o.message_size,
            fault: if i == 0 { o.fault } else { None },
        });
        members.push((
            c,
            Role {
                send,
                book: Some(Book::new(&senders, o.messages)),
                accept_cmd: proto::cmd::ROOM_IM,
                verify: Verify::None,
            },
        ));
    }
    let planned = total_senders as u64 * o.messages;
    let expected = planned * (o.members as u64 - 1);
    let before = server_room_drops(env).await;
    run_members(env, &mut report, members, expected, planned, false).await;
    if let (Some(before), Some(after)) = (before, server_room_drops(env).await) {
        let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        report.extra.insert(
            "server_room_drops".into(),
            serde_json::json!({
                "bytes": d[0], "age": d[1], "disconnect": d[2], "lag_disconnects": d[3],
            }),
        );
    }
    Ok(report)
}

/// The server's room drop counters from `/metrics`: lost for size, for age, with a disconnected
/// member's backlog, and members disconnected for lagging. `None` without an API or when unreadable.
async fn server_room_drops(env: &Env) -> Option<[u64; 4]> {
    let (status, body) = env.api_client()?.get("/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Some([
        value("banter_room_messages_dropped_total{cause=\"bytes\"}"),
        value("banter_room_messages_dropped_total{cause=\"age\"}"),
        value("banter_room_messages_dropped_total{cause=\"disconnect\"}"),
        value("banter_room_lag_disconnects_total"),
    ])
}
