//! Offline push: a receiver without an online session gets an offline-push job.
//!
//! On a single node the decision is made here and the job goes to the backend's push sink (GoBelieve's
//! Redis push queues, or a webhook). In cluster mode only the routers know whether a user is online on
//! some node, so the message is sent to them as a PUSH (spec §10.3) and they decide. Neither path ever
//! blocks the message path; full queues drop and count (see `/metrics`).

use backend::groups::Group;
use backend::push::{PushJob, PushSink};
use bytes::Bytes;
use proto::{cmd, Body};

use crate::app::{inner_frame, App};
use crate::route::Push;

fn local_enabled(app: &App) -> bool {
    !matches!(app.push, PushSink::Disabled)
}

fn text(content: &[u8]) -> String {
    String::from_utf8_lossy(content).into_owned()
}

/// Hands the message to the routers as a PUSH for `receivers`; true when in cluster mode.
fn via_routers(app: &App, appid: i64, receivers: &[i64], cmd: u8, body: &Bytes) -> bool {
    if !app.links.is_enabled() {
        return false;
    }
    if !receivers.is_empty() {
        let inner = inner_frame(&Push::plain(cmd, 0, body.clone()));
        app.links.push(appid, receivers, &inner);
    }
    true
}

/// A stored peer message (`body`: v2 IM body) for `receiver`, if they are not online.
pub fn peer(app: &App, appid: i64, sender: i64, receiver: i64, body: &Bytes) {
    if via_routers(app, appid, &[receiver], cmd::IM, body) {
        return;
    }
    if !local_enabled(app) || app.route.is_online(appid, receiver) {
        return;
    }
    let content = body.get(24..).unwrap_or_default();
    app.push.push(PushJob::Peer {
        appid,
        sender,
        receiver,
        content: text(content),
    });
}

/// A system message for each receiver that is not online.
pub fn system(app: &App, appid: i64, receivers: &[i64], content: &Bytes) {
    if via_routers(app, appid, receivers, cmd::SYSTEM, content) || !local_enabled(app) {
        return;
    }
    for &receiver in receivers {
        if !app.route.is_online(appid, receiver) {
            app.push.push(PushJob::System {
                appid,
                receiver,
                content: text(content),
            });
        }
    }
}

/// A customer message (`body`: v2 CUSTOMER_V2 body) for its receiver, if not online.
pub fn customer(app: &App, c: &proto::Customer, body: &Bytes) {
    if via_routers(app, c.receiver_appid, &[c.receiver], cmd::CUSTOMER_V2, body) {
        return;
    }
    if !local_enabled(app) || app.route.is_online(c.receiver_appid, c.receiver) {
        return;
    }
    app.push.push(PushJob::Customer {
        sender_appid: c.sender_appid,
        sender: c.sender,
        receiver_appid: c.receiver_appid,
        receiver: c.receiver,
        content: text(&c.content),
    });
}

/// A group message (`body`: v2 GROUP_IM body) for every offline member but the sender. The sink (or
/// the router link) splits large receiver lists into bounded jobs.
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
    if receivers.is_empty() {
        return;
    }
    let content = match Body::decode(cmd::GROUP_IM, proto::STORAGE_VERSION, body) {
        Ok(Body::GroupIm(im)) => text(&im.content),
        _ => return,
    };
    app.push.push(PushJob::Group {
        appid: group.appid,
        sender,
        group_id: group.gid,
        receivers,
        content,
    });
}
