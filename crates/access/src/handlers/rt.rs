//! Real-time messages (RT): delivered to the receiver's sessions with flag 0, never stored, never
//! ACKed. Only from the session's own user; a refused RT is dropped (and counted).

use proto::{cmd, Body, Rt};

use super::{Conn, Handled, Refusal, Refused};
use crate::app::{App, Stats};
use crate::route::Push;

/// RT from a client.
pub(crate) fn on_rt(conn: &mut Conn, rt: Rt) -> Handled {
    let Some(h) = conn.handle.clone() else {
        return Ok(None);
    };
    let why = if rt.sender != h.uid {
        Some(Refused::InvalidSender)
    } else if rt.receiver <= 0 {
        Some(Refused::InvalidReceiver)
    } else if !conn.rate_allows() {
        Some(Refused::RateLimited)
    } else {
        None
    };
    if let Some(why) = why {
        // RT has no ACK.
        return Err(Refusal {
            cmd: cmd::RT,
            seq: None,
            why,
        });
    }
    deliver_rt(&conn.app, h.appid, &rt, conn.conn_id);
    Ok(None)
}

/// Delivers an RT message to the receiver's sessions with flag 0; `except` excludes a connection.
pub fn deliver_rt(app: &App, appid: i64, rt: &Rt, except: u64) -> usize {
    let push = Push::plain(cmd::RT, 0, Body::Rt(rt.clone()).to_stored());
    let n = app.deliver_user(appid, rt.receiver, &push, except);
    Stats::add(&app.stats.deliveries, n as u64);
    n
}
