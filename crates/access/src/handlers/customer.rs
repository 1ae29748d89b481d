//! Customer-service messages, CUSTOMER_V2: a peer message across two apps, one of which must be the
//! configured customer-service app (`server.kefu_appid`). Stored in the receiver's queue in the
//! receiver's app and in the sender's queue in the sender's app, then pushed like a peer message.

use std::sync::Arc;

use bytes::Bytes;
use proto::{cmd, flag, Body, Customer};
use store::{NewMessage, QueueId};

use super::{Append, Conn, Handled, Refusal, Refused, Stored, To};
use crate::app::{now_secs, App, Stats, StoreFailure};

fn new_message(c: &Customer, device_id: i64, flags: u8, body: Bytes) -> NewMessage {
    NewMessage {
        key: None,
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

/// CUSTOMER_V2 from a client.
pub(crate) fn on_customer(conn: &mut Conn, seq: i32, flags: u8, c: Customer) -> Handled {
    let Some(h) = conn.handle.clone() else {
        return Ok(None);
    };
    let refused = |why| Err(Refusal::acked(cmd::CUSTOMER_V2, seq, why));
    Stats::inc(&conn.app.stats.messages_in);
    if c.sender != h.uid || c.sender_appid != h.appid {
        return refused(Refused::InvalidSender);
    }
    let kefu = conn.app.server.kefu_appid;
    if kefu == 0 || (c.sender_appid != kefu && c.receiver_appid != kefu) {
        return refused(Refused::NotAllowed(
            "neither side is the customer-service app",
        ));
    }
    if c.receiver <= 0 || c.receiver_appid <= 0 {
        return refused(Refused::InvalidReceiver);
    }
    if let Err(why) = conn.rate_check() {
        return refused(why);
    }
    let c = Customer {
        timestamp: now_secs(),
        ..c
    };
    let flags = flags & flag::CLIENT;
    let body = Body::Customer(c.clone()).to_stored();
    let msg = new_message(&c, h.device_id, flags, body.clone());
    let to = To::Pair {
        cmd: cmd::CUSTOMER_V2,
        receiver: (c.receiver_appid, c.receiver),
    };
    Ok(Some(Append {
        batch: vec![msg],
        then: Stored::new(seq, flags, body, to),
    }))
}

/// Stores a customer message posted over HTTP (no kefu check, as in GoBelieve) and notifies both
/// sides; the receiver's and the sender's keys.
pub async fn post_customer(
    app: &Arc<App>,
    mut c: Customer,
) -> Result<Option<(i64, i64)>, StoreFailure> {
    c.timestamp = now_secs();
    let body = Body::Customer(c.clone()).to_stored();
    let r = app
        .store
        .append(vec![new_message(&c, 0, 0, body.clone())])
        .await?;
    let entries = r.first().map(|e| e.as_slice()).unwrap_or(&[]);
    if let [rk, sk] = entries {
        Stats::inc(&app.stats.messages_stored);
        crate::offline::stored(app, cmd::CUSTOMER_V2, (c.receiver_appid, c.receiver), &body);
        app.notify_sync(c.receiver_appid, c.receiver, rk.key);
        app.notify_sync(c.sender_appid, c.sender, sk.key);
        return Ok(Some((rk.key, sk.key)));
    }
    Ok(None)
}
