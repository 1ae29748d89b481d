//! What a stored message does once the store has made its append durable — the one completion of
//! IM, CUSTOMER_V2 and GROUP_IM: take the message's entries from the append's result (a failed or
//! empty append is refused with STORAGE_FAILED), count it stored, deliver it and queue offline
//! pushes (per family), then ACK the sender with the METADATA of the sender's own entry. A message
//! the store already held whole (a resend with the same idempotency key) is ACKed with the
//! original positions and only notified (SYNC_NOTIFY), never pushed or counted twice.
//!
//! One type for every family (a match, not a trait object's virtual call).

use std::sync::Arc;

use backend::groups::Group;
use bytes::Bytes;
use proto::{cmd, flag};
use store::Appended;

use super::{group, Conn, Refusal, Refused, Reply};
use crate::app::{AppendResult, Stats};
use crate::offline;
use crate::route::Push;

/// A message waiting for its append (see the module docs).
pub(crate) struct Stored {
    /// The client's frame seq, echoed by the ACK.
    seq: i32,
    /// The client flags kept on deliveries.
    flags: u8,
    body: Bytes,
    to: To,
}

/// Who a stored message goes to.
pub(crate) enum To {
    /// IM or CUSTOMER_V2 (`cmd`): one entry in the queue of `receiver` (app id, uid), then one in
    /// the sender's.
    Pair { cmd: u8, receiver: (i64, i64) },
    /// GROUP_IM: one entry per member (normal group, members in the order of `uids`) or one in the
    /// group's queue (super group).
    Group { group: Arc<Group>, uids: Vec<i64> },
}

impl Stored {
    /// A message for `to`: the client's `seq` and flags, and the stored body.
    pub(crate) fn new(seq: i32, flags: u8, body: Bytes, to: To) -> Box<Self> {
        Box::new(Stored {
            seq,
            flags,
            body,
            to,
        })
    }

    /// The stored message's command.
    fn cmd(&self) -> u8 {
        match &self.to {
            To::Pair { cmd, .. } => *cmd,
            To::Group { .. } => cmd::GROUP_IM,
        }
    }

    /// Delivers the stored message and ACKs it, or says why it is refused.
    pub(crate) fn complete(
        self,
        conn: &Conn,
        out: &mut Reply,
        result: AppendResult,
    ) -> Result<(), Refusal> {
        let Some(h) = &conn.handle else {
            return Ok(());
        };
        let (cmd, seq) = (self.cmd(), self.seq);
        let Stored {
            flags, body, to, ..
        } = self;
        let refused = |e| Refusal::acked(cmd, seq, Refused::Store(e));
        // One message per append: its entries, one per queue.
        let entries = match result {
            Ok(r) => r.into_iter().next().unwrap_or_default(),
            Err(e) => return Err(refused(Some(e))),
        };
        let app = &conn.app;
        // Every entry was stored by an earlier append with the same key (the client resent a
        // message whose ACK it never got): ACK it again, with the original positions, and
        // notify instead of pushing it a second time — its content was pushed when it was first
        // stored whole, or the receivers sync it now (docs/compatibility.md, *Storage and sync*).
        let repeated = !entries.is_empty() && entries.iter().all(|a| a.stored_before);
        if repeated {
            Stats::inc(&app.stats.messages_repeated);
            tracing::debug!(
                cmd,
                uid = h.uid,
                "a resent message was stored before: ACK only"
            );
        }
        let msg = Push::plain(cmd, flags, body);
        let (own, ack_flag) = match &to {
            To::Pair { receiver, .. } => {
                let &[r, s] = entries.as_slice() else {
                    return Err(refused(None));
                };
                if repeated {
                    app.notify_sync(receiver.0, receiver.1, r.key);
                    app.notify_sync(h.appid, h.uid, s.key);
                    out.ack_stored(seq, 0, s);
                    return Ok(());
                }
                Stats::inc(&app.stats.messages_stored);
                if !app.links.is_enabled() {
                    // In a cluster the routers decide, from the stored publish.
                    offline::stored(app, cmd, *receiver, &msg.body);
                }
                app.deliver_received(*receiver, r, &msg, conn.conn_id);
                // When a user messages themself both entries are in the same queue; push both so
                // their other devices can follow the queue's METADATA chain without a sync.
                app.deliver_stored((h.appid, h.uid), s, &msg, conn.conn_id);
                (s, 0)
            }
            To::Group { group, uids } => {
                let own = own_entry(group, uids, &entries, h.uid).ok_or_else(|| refused(None))?;
                let ack_flag = if group.super_group {
                    flag::SUPER_GROUP
                } else {
                    0
                };
                if repeated {
                    group::notify_members(app, group, uids, &entries);
                    out.ack_stored(seq, ack_flag, own);
                    return Ok(());
                }
                Stats::inc(&app.stats.messages_stored);
                group::deliver(app, group, uids, &entries, &msg, conn.conn_id);
                offline::group(app, group, h.uid, &msg.body);
                (own, ack_flag)
            }
        };
        out.ack_stored(seq, ack_flag, own);
        Ok(())
    }
}

/// The sender's entry of a group message: the group queue's (super group) or the sender's own
/// (normal group).
fn own_entry(group: &Group, uids: &[i64], entries: &[Appended], uid: i64) -> Option<Appended> {
    if group.super_group {
        entries.first().copied()
    } else {
        let i = uids.iter().position(|&u| u == uid)?;
        entries.get(i).copied()
    }
}
