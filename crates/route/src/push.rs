//! PUSH requests (docs/internal-protocols.md, *route link*): which receivers are offline, and the
//! offline-push job for them.
//!
//! A receiver is offline unless some access node subscribed it with online = 1. When at least one
//! is, the inner message becomes one job on the push sink (which never blocks; a full sink drops
//! and counts), made by [`PushJob::for_message`] (shared with the access node's single-node path):
//! a GROUP_IM lists the offline receivers; an IM names its own receiver; a SYSTEM message the first
//! offline receiver; a CUSTOMER_V2 its own fields. Other inner commands, or an inner body that does
//! not decode, produce nothing.

use std::sync::atomic::Ordering;

use backend::push::{PushJob, PushSink};
use cluster::route_proto::PushRequest;

use crate::Router;

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
    match PushJob::for_message(req.appid, inner.cmd, inner.version, &inner.body, offline) {
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
