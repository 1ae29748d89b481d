//! Offline push: when a receiver has no online session here, an offline-push job is handed to the
//! backend's push sink (Redis push queues of spec §16.3, or a webhook). The sink never blocks the message
//! path; a full sink drops and counts (see `/metrics`).

use backend::groups::Group;
use backend::push::{PushJob, PushSink};
use proto::Body;

use crate::app::App;

fn enabled(app: &App) -> bool {
    !matches!(app.push, PushSink::Disabled)
}

fn text(content: &[u8]) -> String {
    String::from_utf8_lossy(content).into_owned()
}

/// A peer message for `receiver`, if they are not online.
pub fn peer(app: &App, appid: i64, sender: i64, receiver: i64, content: &[u8]) {
    if !enabled(app) || app.route.is_online(appid, receiver) {
        return;
    }
    app.push.push(PushJob::Peer {
        appid,
        sender,
        receiver,
        content: text(content),
    });
}

/// A system message for each receiver that is not online.
pub fn system(app: &App, appid: i64, receivers: &[i64], content: &[u8]) {
    if !enabled(app) {
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

/// A customer message for its receiver, if not online.
pub fn customer(app: &App, c: &proto::Customer) {
    if !enabled(app) || app.route.is_online(c.receiver_appid, c.receiver) {
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

/// A group message (stored `body`, v2 GROUP_IM layout) for every offline member but the sender. The
/// sink splits large receiver lists into bounded jobs.
pub fn group(app: &App, group: &Group, sender: i64, body: &bytes::Bytes) {
    if !enabled(app) {
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
    let content = match Body::decode(proto::cmd::GROUP_IM, proto::STORAGE_VERSION, body) {
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
