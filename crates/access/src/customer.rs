//! Customer-service messages, MSG_CUSTOMER_V2 (spec §8.4): a peer message across two apps, one of which
//! must be the configured customer-service app (`server.kefu_appid`). Stored in the receiver's queue in
//! the receiver's app and in the sender's queue in the sender's app, then pushed like a peer message.

use std::sync::Arc;

use bytes::Bytes;
use proto::{cmd, flag, AckStatus, Body, Customer, Metadata};
use store::{NewMessage, QueueId};

use crate::app::{now_secs, App, AppendResult, Stats};
use crate::peer::{notify_sync, push_stored};
use crate::route::Push;
use crate::session::{OpCtx, Session};

fn new_message(c: &Customer, device_id: i64, flags: u8, body: Bytes) -> NewMessage {
    NewMessage {
        queues: vec![
            QueueId::User {
                appid: c.receiver_appid,
                uid: c.receiver,
            },
            QueueId::User {
                appid: c.sender_appid,
                uid: c.sender,
            },
        ],
        device_id,
        cmd: cmd::CUSTOMER_V2,
        flag: flags,
        timestamp: c.timestamp as i64,
        body,
    }
}

/// Stores a customer message posted over HTTP (no kefu check, as in GoBelieve) and notifies both
/// sides; the receiver's and the sender's keys.
pub async fn post_customer(
    app: &Arc<App>,
    mut c: Customer,
) -> Result<Option<(i64, i64)>, crate::app::StoreFailure> {
    c.timestamp = now_secs();
    let body = Body::Customer(c.clone()).to_bytes(proto::STORAGE_VERSION);
    let body_copy = body.clone();
    let r = app.store.append(vec![new_message(&c, 0, 0, body)]).await?;
    let entries = r.first().map(|e| e.as_slice()).unwrap_or(&[]);
    if let [rk, sk] = entries {
        Stats::inc(&app.stats.messages_stored);
        crate::offline::customer(app, &c, &body_copy);
        notify_sync(app, c.receiver_appid, c.receiver, rk.key);
        notify_sync(app, c.sender_appid, c.sender, sk.key);
        return Ok(Some((rk.key, sk.key)));
    }
    Ok(None)
}

impl Session {
    pub(crate) fn on_customer(&mut self, seq: i32, flags: u8, c: Customer) {
        let Some(h) = self.handle.clone() else { return };
        Stats::inc(&self.app.stats.messages_in);
        if c.sender != h.uid || c.sender_appid != h.appid {
            return self.refuse(
                seq,
                AckStatus::INVALID_SENDER,
                "customer sender is not the session's user",
            );
        }
        let kefu = self.app.server.kefu_appid;
        if kefu == 0 || (c.sender_appid != kefu && c.receiver_appid != kefu) {
            return self.refuse(
                seq,
                AckStatus::NOT_ALLOWED,
                "neither side is the customer-service app",
            );
        }
        if c.receiver <= 0 || c.receiver_appid <= 0 {
            return self.refuse(seq, AckStatus::INVALID_RECEIVER, "invalid receiver");
        }
        if !self.rate_ok(seq) {
            return;
        }
        let c = Customer {
            timestamp: now_secs(),
            ..c
        };
        let flags = flags & (flag::TEXT | flag::UNPERSISTENT);
        let body = Body::Customer(c.clone()).to_bytes(proto::STORAGE_VERSION);
        let msg = new_message(&c, h.device_id, flags, body.clone());
        self.submit(
            OpCtx::Customer {
                seq,
                flag: flags,
                receiver_appid: c.receiver_appid,
                receiver: c.receiver,
                body,
            },
            vec![msg],
        );
    }

    pub(crate) fn complete_customer(
        &mut self,
        seq: i32,
        flags: u8,
        receiver_appid: i64,
        receiver: i64,
        body: Bytes,
        result: AppendResult,
    ) {
        let Some(h) = self.handle.clone() else { return };
        let app = self.app.clone();
        let entries = match &result {
            Ok(r) => r.first().map(|e| e.as_slice()).unwrap_or(&[]),
            Err(_) => &[],
        };
        let [r, s] = entries else {
            Stats::inc(&app.stats.store_errors);
            if let Err(e) = &result {
                node::warn_throttled!(error = %e, "storing a customer message failed");
            }
            return self.refuse(seq, AckStatus::STORAGE_FAILED, "store failed");
        };
        let (r, s) = (*r, *s);
        Stats::inc(&app.stats.messages_stored);
        if let Ok(Body::Customer(c)) = Body::decode(cmd::CUSTOMER_V2, proto::STORAGE_VERSION, &body)
        {
            crate::offline::customer(&app, &c, &body);
        }
        let msg = Push::plain(cmd::CUSTOMER_V2, flags, body.clone());
        push_stored(&app, (receiver_appid, receiver), r, &msg, self.conn_id);
        push_stored(&app, (h.appid, h.uid), s, &msg, self.conn_id);
        self.ack(
            seq,
            AckStatus::SUCCESS,
            0,
            Some(Metadata {
                sync_key: s.key,
                prev_sync_key: s.prev_key,
            }),
        );
    }
}
