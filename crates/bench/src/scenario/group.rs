//! `group`: fan-out through groups (MSG_GROUP_IM), normal or super.
//!
//! G groups of K members; member `i` of group `g` is uid `uid_base + g·K + i`, and the first S members of
//! each group send M messages each. Groups are created through the server's admin API with
//! [`create_group`] (`POST /admin/groups`), so the scenario needs `--http` (or a child server). Every member
//! expects every other sender's messages exactly once and in order: pushed with flag PUSH and METADATA
//! (personal queue for normal groups, the group's queue with flag SUPER_GROUP for super groups), or
//! through SYNC / SYNC_GROUP after SYNC_NOTIFY / SYNC_GROUP_NOTIFY. A member that has everything does a
//! final sync of that queue, which must return nothing new.

use serde::Serialize;

use super::{connect_all, run_members, BenchError, ConnSpec, Fault, Role, SendPlan, Verify};
use crate::accounting::Book;
use crate::api::HttpClient;
use crate::client::Kind;
use crate::env::Env;
use crate::report::Report;

/// Parameters of the `group` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct GroupOptions {
    pub groups: usize,
    /// Members per group.
    pub members: usize,
    /// Senders per group (the first members).
    pub senders: usize,
    /// Messages per sender.
    pub messages: u64,
    /// Super groups (one shared queue) rather than normal groups (a copy per member).
    pub super_group: bool,
    /// Target total send rate over all senders.
    pub rate: Option<f64>,
    pub message_size: usize,
    pub window: usize,
    /// First group id; `None` derives one from the uid base.
    pub group_id_base: Option<i64>,
    #[serde(skip)]
    pub fault: Option<Fault>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            groups: 1,
            members: 100,
            senders: 5,
            messages: 1_000,
            super_group: false,
            rate: None,
            message_size: 128,
            window: 64,
            group_id_base: None,
            fault: None,
        }
    }
}

/// Creates a group through the server's admin API:
/// `POST /admin/groups {"appid","group_id","name","master","members":[…],"super"}` (the master is the
/// first member).
pub async fn create_group(
    api: &mut HttpClient,
    appid: i64,
    group_id: i64,
    name: &str,
    members: &[i64],
    super_group: bool,
) -> Result<(), BenchError> {
    let body = serde_json::json!({
        "appid": appid,
        "group_id": group_id,
        "name": name,
        "master": members.first().copied().unwrap_or(0),
        "members": members,
        "super": super_group,
    });
    match api.post_json_ok("/admin/groups", &body).await {
        Ok(_) => Ok(()),
        Err(crate::api::HttpError::Status { status: 404, .. }) => Err(BenchError::Setup(format!(
            "{} has no group admin API (POST /admin/groups answered 404); the group scenario needs it",
            api.base()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Runs the scenario.
pub async fn run(env: &Env, o: &GroupOptions) -> Result<Report, BenchError> {
    if o.groups == 0 || o.members < 2 || o.senders == 0 || o.senders > o.members {
        return Err(BenchError::Setup(
            "need --groups ≥ 1, --members ≥ 2 and 1 ≤ --senders ≤ --members".into(),
        ));
    }
    let mut report = Report::new(
        "group",
        serde_json::to_value(o).unwrap_or_default(),
        env.transport(),
    );
    let Some(mut api) = env.api_client() else {
        return Err(BenchError::Setup(
            "the group scenario creates its groups through the server's admin API: give --http"
                .into(),
        ));
    };
    let gid_base = o.group_id_base.unwrap_or(env.uid_base);
    let k = o.members as i64;
    let mut specs = Vec::new();
    let mut uids = Vec::new();
    for g in 0..o.groups as i64 {
        let members: Vec<i64> = (0..k).map(|i| env.uid_base + g * k + i).collect();
        create_group(
            &mut api,
            env.appid,
            gid_base + g,
            &format!("bench group {}", gid_base + g),
            &members,
            o.super_group,
        )
        .await?;
        uids.extend(members);
    }
    let tokens = env.tokens.issue(env.appid, &uids).await?;
    for (i, (&uid, token)) in uids.iter().zip(tokens).enumerate() {
        let gid = gid_base + (i / o.members) as i64;
        specs.push(ConnSpec {
            uid,
            token,
            super_groups: if o.super_group { vec![gid] } else { Vec::new() },
            node: None,
        });
    }
    let clients = connect_all(env, specs).await?;
    let total_senders = o.groups * o.senders;
    let per_sender_rate = o.rate.map(|r| (r / total_senders as f64).max(1e-3));
    let mut members = Vec::with_capacity(clients.len());
    for (i, c) in clients.into_iter().enumerate() {
        let g = (i / o.members) as i64;
        let idx = i % o.members;
        let gid = gid_base + g;
        let senders: Vec<i64> = (0..o.senders as i64)
            .map(|s| env.uid_base + g * k + s)
            .filter(|&s| s != c.uid())
            .collect();
        let send = (idx < o.senders).then(|| SendPlan {
            kind: Kind::Group,
            to: gid,
            count: o.messages,
            rate: per_sender_rate,
            window: o.window.max(1),
            size: o.message_size,
            fault: if i == 0 { o.fault } else { None },
        });
        let verify = if o.super_group {
            Verify::Group(gid)
        } else {
            Verify::Personal
        };
        members.push((
            c,
            Role {
                send,
                book: Some(Book::new(&senders, o.messages)),
                accept_cmd: proto::cmd::GROUP_IM,
                verify,
            },
        ));
    }
    let planned = total_senders as u64 * o.messages;
    let expected = planned * (o.members as u64 - 1);
    run_members(env, &mut report, members, expected, planned, true).await;
    Ok(report)
}
