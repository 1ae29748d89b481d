//! Chat rooms (spec §8.3): enter and leave (one room per connection), and room messages delivered with
//! flag 0 to everyone in the room but the sender. Nothing is persisted. The sender must be the session's
//! user (GoBelieve does not check, §20 #18), in the room, and not speak-banned; refusals are answered.

use bytes::Bytes;
use proto::{cmd, AckStatus, Body, Rt};

use crate::app::{App, Stats};
use crate::route::Push;
use crate::session::Session;

/// Delivers a room message to everyone in the room but connection `except`.
pub fn deliver_room(app: &App, appid: i64, msg: &Rt, except: u64) -> usize {
    let push = Push::plain(cmd::ROOM_IM, 0, Body::RoomIm(msg.clone()).to_bytes(2));
    let (n, dropped) = app.deliver_room(appid, msg.receiver, &push, except);
    Stats::add(&app.stats.deliveries, n as u64);
    Stats::add(&app.stats.room_dropped, dropped as u64);
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

impl Session {
    pub(crate) fn on_enter_room(&mut self, room: i64) {
        let Some(h) = self.handle.clone() else { return };
        if room == 0 || self.room == Some(room) {
            return;
        }
        self.leave_current_room();
        // Another connection of the same device is displaced; it simply stops receiving the room
        // (its own presence count is released when it leaves or closes).
        self.app.rooms.enter(h.appid, room, h.clone());
        self.app.links.enter_room(h.conn_id, h.appid, room);
        self.room = Some(room);
    }

    pub(crate) fn on_leave_room(&mut self, room: i64) {
        if self.room == Some(room) {
            self.leave_current_room();
        }
    }

    pub(crate) fn leave_current_room(&mut self) {
        if let (Some(h), Some(room)) = (&self.handle, self.room.take()) {
            self.app.rooms.leave(h.appid, room, h.conn_id);
            self.app.links.leave_room(h.conn_id, h.appid, room);
        }
    }

    pub(crate) fn on_room_im(&mut self, seq: i32, msg: Rt) {
        let Some(h) = self.handle.clone() else { return };
        Stats::inc(&self.app.stats.messages_in);
        if msg.sender != h.uid {
            return self.refuse(
                seq,
                AckStatus::INVALID_SENDER,
                "room sender is not the session's user",
            );
        }
        let in_room = self.room == Some(msg.receiver)
            && self.app.rooms.contains(h.appid, msg.receiver, h.conn_id);
        if !in_room {
            return self.refuse(seq, AckStatus::NOT_ALLOWED, "not in this room");
        }
        if h.is_forbidden() {
            return self.refuse(seq, AckStatus::FORBIDDEN, "speak-banned");
        }
        if !self.rate_ok(seq) {
            return;
        }
        deliver_room(&self.app, h.appid, &msg, self.conn_id);
        self.ack(seq, AckStatus::SUCCESS, 0, None);
    }
}
