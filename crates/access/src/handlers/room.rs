//! Chat rooms: enter and leave (one room per connection), and room messages delivered with flag 0
//! to everyone in the room but the sender. Nothing is persisted. The sender must be the session's
//! user (GoBelieve does not check; docs/compatibility.md), in the room, and not speak-banned;
//! refusals are answered. What a member that falls behind loses is the room table's policy
//! ([`crate::route::RoomPolicy`]).

use std::num::NonZeroI64;

use bytes::Bytes;
use proto::{cmd, AckStatus, Body, Rt};

use super::{Conn, Handled, Refusal, Refused, Reply};
use crate::app::{App, Stats};
use crate::route::Push;

/// ENTER_ROOM: leaves the current room, if any, and enters `room` (0 and the current room are
/// ignored).
pub(crate) fn on_enter_room(conn: &mut Conn, room: i64) {
    let Some(h) = conn.handle.clone() else { return };
    let Some(id) = NonZeroI64::new(room) else {
        return;
    };
    if conn.room == Some(id) {
        return;
    }
    leave_current_room(conn);
    // Another connection of the same device is displaced; it simply stops receiving the room
    // (its own presence count is released when it leaves or closes).
    conn.app.rooms.enter(h.appid, room, h.clone());
    conn.app.links.enter_room(h.conn_id, h.appid, room);
    conn.room = Some(id);
}

/// LEAVE_ROOM: leaves `room` if the connection is in it.
pub(crate) fn on_leave_room(conn: &mut Conn, room: i64) {
    if conn.room.map(NonZeroI64::get) == Some(room) {
        leave_current_room(conn);
    }
}

/// Leaves the connection's room, if any (also when the session ends).
pub(crate) fn leave_current_room(conn: &mut Conn) {
    if let (Some(h), Some(room)) = (&conn.handle, conn.room.take().map(NonZeroI64::get)) {
        conn.app.rooms.leave(h.appid, room, h.conn_id);
        conn.app.links.leave_room(h.conn_id, h.appid, room);
    }
}

/// ROOM_IM from a client: delivered to the room, then ACKed.
pub(crate) fn on_room_im(conn: &mut Conn, out: &mut Reply, seq: i32, msg: Rt) -> Handled {
    let Some(h) = conn.handle.clone() else {
        return Ok(None);
    };
    let refused = |why| Err(Refusal::acked(cmd::ROOM_IM, seq, why));
    Stats::inc(&conn.app.stats.messages_in);
    if msg.sender != h.uid {
        return refused(Refused::InvalidSender);
    }
    let in_room = conn.room.map(NonZeroI64::get) == Some(msg.receiver)
        && conn.app.rooms.contains(h.appid, msg.receiver, h.conn_id);
    if !in_room {
        return refused(Refused::NotAllowed("not in this room"));
    }
    if h.is_forbidden() {
        return refused(Refused::Forbidden);
    }
    if let Err(why) = conn.rate_check() {
        return refused(why);
    }
    deliver_room(&conn.app, h.appid, &msg, conn.conn_id);
    out.ack(seq, AckStatus::SUCCESS, 0, None);
    Ok(None)
}

/// Delivers a room message to everyone in the room but connection `except`.
pub fn deliver_room(app: &App, appid: i64, msg: &Rt, except: u64) -> usize {
    let push = Push::plain(cmd::ROOM_IM, 0, Body::RoomIm(msg.clone()).to_stored());
    let n = app
        .deliver_room(appid, msg.receiver, &push, except)
        .delivered;
    Stats::add(&app.stats.deliveries, n as u64);
    n
}

/// Posts a room message from the HTTP API (no sender exclusion).
pub fn post_room(app: &App, appid: i64, uid: i64, room: i64, content: Bytes) -> usize {
    deliver_room(
        app,
        appid,
        &Rt {
            sender: uid,
            receiver: room,
            content,
        },
        0,
    )
}
