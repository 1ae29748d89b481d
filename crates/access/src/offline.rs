//! Offline push: a receiver without an online session gets an offline-push job.
//!
//! On a single node the decision is made here and the job ([`PushJob::for_message`], the mapping the
//! router uses too) goes to the backend's push sink (GoBelieve's Redis push queues, or a webhook). In
//! cluster mode only the routers know whether a user is online on some node, so the message is sent
//! to them as a PUSH for the receivers not online here, and they decide. Neither path ever blocks the message path; full queues drop
//! and count (see `/metrics`).

use backend::groups::Group;
use backend::push::{PushJob, PushSink};
use bytes::Bytes;
use proto::cmd;

use crate::app::App;

/// Hands the message to the routers as a PUSH for those of `receivers` without an online session
/// here (a router makes no job for a user some node has online, and this node announced its
/// sessions); true when in cluster mode.
fn via_routers(app: &App, appid: i64, receivers: &[i64], cmd: u8, body: &Bytes) -> bool {
    if !app.links.is_enabled() {
        return false;
    }
    let offline_here: Vec<i64> = receivers
        .iter()
        .copied()
        .filter(|&r| !app.route.is_online(appid, r))
        .collect();
    if !offline_here.is_empty() {
        app.links
            .push(appid, &offline_here, &proto::stored_frame(cmd, 0, body));
    }
    true
}

/// Queues the job for a stored message (`body`) whose receivers `offline` are offline here.
fn push_local(app: &App, appid: i64, cmd: u8, body: &Bytes, offline: Vec<i64>) {
    if let Some(job) = PushJob::for_message(appid, cmd, proto::STORAGE_VERSION, body, offline) {
        app.push.push(job);
    }
}

/// Whether single-node offline push is on, and so worth deciding.
fn local_enabled(app: &App) -> bool {
    !matches!(app.push, PushSink::Disabled)
}

/// A stored peer or customer message (`cmd`, `body`) for `receiver` (app id, uid), if they are not
/// online.
pub fn stored(app: &App, cmd: u8, (appid, receiver): (i64, i64), body: &Bytes) {
    if via_routers(app, appid, &[receiver], cmd, body) {
        return;
    }
    if local_enabled(app) && !app.route.is_online(appid, receiver) {
        push_local(app, appid, cmd, body, vec![receiver]);
    }
}

/// A system message for each receiver that is not online.
pub fn system(app: &App, appid: i64, receivers: &[i64], content: &Bytes) {
    if via_routers(app, appid, receivers, cmd::SYSTEM, content) || !local_enabled(app) {
        return;
    }
    for &receiver in receivers {
        if !app.route.is_online(appid, receiver) {
            push_local(app, appid, cmd::SYSTEM, content, vec![receiver]);
        }
    }
}

/// A stored group message (`body`) for every offline member but the sender. The sink (or the
/// router link) splits large receiver lists into bounded jobs.
pub fn group(app: &App, group: &Group, sender: i64, body: &Bytes) {
    if app.links.is_enabled() {
        let receivers: Vec<i64> = group
            .members
            .keys()
            .copied()
            .filter(|&u| u != sender)
            .collect();
        via_routers(app, group.appid, &receivers, cmd::GROUP_IM, body);
        return;
    }
    if !local_enabled(app) {
        return;
    }
    let receivers: Vec<i64> = group
        .members
        .keys()
        .copied()
        .filter(|&uid| uid != sender && !app.route.is_online(group.appid, uid))
        .collect();
    if !receivers.is_empty() {
        push_local(app, group.appid, cmd::GROUP_IM, body, receivers);
    }
}
