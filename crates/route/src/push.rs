//! PUSH requests (spec §10.5): which receivers are offline, and the offline-push job for them.
//!
//! A receiver is offline unless some access node subscribed it with online = 1. When at least one
//! is, the inner message becomes one job on the push sink (which never blocks; a full sink drops
//! and counts): a GROUP_IM lists the offline receivers; an IM names its own receiver; a SYSTEM
//! message the first offline receiver; a CUSTOMER_V2 its own fields. Other inner commands, or an
//! inner body that does not decode, produce nothing.

use std::sync::atomic::Ordering;

use backend::push::{PushJob, PushSink};
use cluster::route_proto::PushRequest;
use proto::{Body, Frame};

use crate::Router;

fn text(content: &[u8]) -> String {
    String::from_utf8_lossy(content).into_owned()
}

/// The job for `inner` with these offline receivers (non-empty), if its command gets one.
pub(crate) fn job(appid: i64, inner: &Frame, offline: Vec<i64>) -> Option<PushJob> {
    let first = *offline.first()?;
    match Body::decode(inner.cmd, inner.version, &inner.body).ok()? {
        Body::Im(im) => Some(PushJob::Peer {
            appid,
            sender: im.sender,
            receiver: im.receiver,
            content: text(&im.content),
        }),
        Body::GroupIm(im) => Some(PushJob::Group {
            appid,
            sender: im.sender,
            group_id: im.receiver,
            receivers: offline,
            content: text(&im.content),
        }),
        Body::System(content) => Some(PushJob::System {
            appid,
            receiver: first,
            content: text(&content),
        }),
        Body::Customer(c) => Some(PushJob::Customer {
            sender_appid: c.sender_appid,
            sender: c.sender,
            receiver_appid: c.receiver_appid,
            receiver: c.receiver,
            content: text(&c.content),
        }),
        _ => None,
    }
}

/// Handle one PUSH request.
pub(crate) fn handle(r: &Router, req: PushRequest) {
    r.metrics.push_requests.fetch_add(1, Ordering::Relaxed);
    if matches!(r.push, PushSink::Disabled) {
        return;
    }
    let offline: Vec<i64> = req
        .receivers
        .iter()
        .copied()
        .filter(|uid| !r.table.is_online(req.appid, *uid))
        .collect();
    if offline.is_empty() {
        return;
    }
    let Some(inner) = req.inner_frame() else {
        return;
    };
    match job(req.appid, &inner, offline) {
        Some(job) => {
            r.metrics.push_jobs.fetch_add(1, Ordering::Relaxed);
            r.push.push(job);
        }
        None => tracing::debug!(
            appid = req.appid,
            cmd = inner.cmd,
            "PUSH for a message that gets no offline-push job"
        ),
    }
}
